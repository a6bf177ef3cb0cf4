"""A model folder that asks to run its own Python code (an auto_map in its config) is refused in one line, exit 2,
without prompting, unless `--trust-remote-code` is on the command line of that very command."""
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, train_tiny_run
from loraclf import cli, remote_code, scoring
from loraclf.errors import UserError

CUSTOM_CODE = '''
from pathlib import Path
Path({marker!r}).write_text("custom code ran")
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast


class EvilConfig(BertConfig):
    model_type = "evil-bert"


class EvilModel(BertForSequenceClassification):
    config_class = EvilConfig


class EvilTokenizer(BertTokenizerFast):
    pass
'''
MODEL_MAP = {"AutoConfig": "custom_code.EvilConfig", "AutoModelForSequenceClassification": "custom_code.EvilModel"}
TOKENIZER_MAP = {"AutoTokenizer": [None, "custom_code.EvilTokenizer"]}


def _add_custom_code(folder: Path, marker: Path, config: bool = True, tokenizer: bool = False) -> Path:
    (folder / "custom_code.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    for name, auto_map, on in (("config.json", MODEL_MAP, config), ("tokenizer_config.json", TOKENIZER_MAP, tokenizer)):
        if on:
            data = json.loads((folder / name).read_text()) | {"auto_map": auto_map}
            if name == "config.json":  # a model type transformers does not know: only the folder's code can load it
                data["model_type"] = "evil-bert"
            (folder / name).write_text(json.dumps(data))
    return folder


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "MARKER"


@pytest.fixture
def evil_model(tmp_path, tiny_bert, marker) -> Path:
    return _add_custom_code(Path(shutil.copytree(tiny_bert, tmp_path / "evil-model")), marker)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert):
    return train_tiny_run(tmp_path_factory.mktemp("remote-code"), tiny_bert)


@pytest.fixture
def answer_yes(monkeypatch):
    """Whatever asks y/N on stdin gets 'y'."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n" * 10))


def _one_line_refusal(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("loraclf: error: ") and "\n" not in err and "Traceback" not in err, err
    assert "--trust-remote-code" in err and "own Python code" in err
    return err


def _train_args(tmp_path, model: Path, small_csv) -> list[str]:
    return ["train", "--model", str(model), "--data", str(small_csv), "--out", str(tmp_path / "run"), "--epochs", "1",
            "--set", "adapter.target_modules=query,value", "--set", "data.max_length=32", "--no-report"]


@pytest.mark.parametrize("where", ["config", "tokenizer", "both"])
@pytest.mark.parametrize("command", ["plan", "train"])
def test_custom_code_model_is_refused(tmp_path, tiny_bert, marker, small_csv, capsys, answer_yes, command, where):
    model = _add_custom_code(Path(shutil.copytree(tiny_bert, tmp_path / "m")), marker, config=where != "tokenizer",
                             tokenizer=where != "config")
    args = ["plan", "--model", str(model)] if command == "plan" else _train_args(tmp_path, model, small_csv)
    assert cli.main(args) == 2
    _one_line_refusal(capsys)
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def _run_on(tmp_path, tiny_run, evil_model, marker, case: str) -> Path:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    if case == "base-model":  # the run's config.json names a model folder with custom code
        cfg = json.loads((run / "config.json").read_text())
        cfg["model"]["name"] = str(evil_model)
        (run / "config.json").write_text(json.dumps(cfg))
    else:  # the run's own tokenizer asks for custom code
        _add_custom_code(run / "tokenizer", marker, config=False, tokenizer=True)
    return run


@pytest.mark.parametrize("case", ["base-model", "run-tokenizer"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "serve"])
def test_run_that_needs_custom_code_is_refused(tmp_path, tiny_run, evil_model, marker, capsys, answer_yes, case, command):
    run = _run_on(tmp_path, tiny_run, evil_model, marker, case)
    data = tmp_path / "data.csv"
    data.write_text("label,text\nSports,football goal\nWorld,election war\n")
    capsys.readouterr()
    if command == "serve":
        with pytest.raises(UserError, match="--trust-remote-code"):
            scoring.load_predictor(run).load()
    else:
        args = {"predict": ["predict", str(run), str(data), "-o", str(tmp_path / "out.csv")],
                "evaluate": ["evaluate", str(run), "--data", str(data), "--no-report"],
                "export": ["export", str(run), "--merged", str(tmp_path / "merged")]}[command]
        assert cli.main(args) == 2
        _one_line_refusal(capsys)
    assert not marker.exists()
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "merged").exists()
    assert not list(run.glob("eval-*.json"))


def test_merged_export_with_custom_code_is_refused_by_serve(tmp_path, tiny_run, marker, answer_yes):
    out = tmp_path / "merged"
    assert cli.main(["export", str(tiny_run), "--merged", str(out)]) == 0
    _add_custom_code(out, marker)
    with pytest.raises(UserError, match="--trust-remote-code"):
        scoring.load_predictor(out).load()
    assert not marker.exists()


def test_the_opt_in_is_never_read_from_a_saved_config(tmp_path, tiny_run, evil_model, marker, capsys, answer_yes):
    run = _run_on(tmp_path, tiny_run, evil_model, marker, "base-model")
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["trust_remote_code"] = True
    (run / "config.json").write_text(json.dumps(cfg))
    assert cli.main(["predict", str(run), str(tmp_path / "x.csv"), "-o", str(tmp_path / "out.csv")]) == 2
    assert cli.main(["plan", "--model", str(evil_model), "--set", "model.trust_remote_code=true"]) == 2
    assert not marker.exists() and not (tmp_path / "out.csv").exists()
    assert not remote_code.trusted()  # nothing stays switched on after a command


def test_every_model_loading_command_has_the_flag():
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    for name in ("train", "evaluate", "predict", "plan", "search", "export", "serve"):
        assert "--trust-remote-code" in sub.choices[name]._option_string_actions, name


def test_transformers_refusal_is_recognised():
    """Hub names are not read before loading: transformers' own error (trust_remote_code=False) becomes ours."""
    error = ValueError("The repository org/model contains custom code which must be executed to correctly load the "
                       "model. Please pass the argument `trust_remote_code=True` to allow custom code to be run.")
    assert remote_code.is_refusal(error) and not remote_code.is_refusal(OSError("no such file"))
    assert "--trust-remote-code" in str(remote_code.refusal("org/model"))


def _cli(args: list[str], tmp_path: Path, stdin: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1",
                        "HF_MODULES_CACHE": str(tmp_path / "modules")}  # where transformers copies trusted code
    return subprocess.run([sys.executable, "-m", "loraclf.cli", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=300)


def test_piped_yes_does_not_run_code_and_the_flag_does(tmp_path, evil_model, marker):
    refused = _cli(["plan", "--model", str(evil_model)], tmp_path, "y\n")
    assert refused.returncode == 2 and not marker.exists()
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--trust-remote-code" in lines[0], refused.stderr
    allowed = _cli(["plan", "--model", str(evil_model), "--trust-remote-code", "--set", "data.max_length=64",
                    "--set", "adapter.target_modules=query,value"], tmp_path, "")
    assert allowed.returncode == 0, allowed.stderr
    assert marker.read_text() == "custom code ran"
