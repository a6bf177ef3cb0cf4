"""Bad input: one line on stderr naming the problem and the fix, exit code 2, nothing written."""
import subprocess
import sys

import pytest

from loraclf import cli

CASES = {
    "missing file": (None, "does not exist"),
    "empty file": ("", "is empty"),
    "header only": ("label,text\n", "has a header but no rows"),
    "missing column": ("label,body\n0,hello\n", "has no column 'text' (columns: label, body)"),
    "empty text": ('label,text\n0,hello\n1,"  "\n', "line 3 column 'text': empty or missing text"),
    "unknown label": ("label,text\nWorld,a\nPolitics,b\n", "line 3 column 'label': unknown label 'Politics'"),
    "label out of range": ("label,text\n0,a\n7,b\n", "line 3 column 'label': label 7 is out of range 0..3"),
    "mixed label types": ("label,text\n0,a\nSports,b\n", "labels mix class ids and class names"),
    "bad encoding": (b"label,text\n0,caf\xe9 au lait\n", "line 2: byte 0xe9 is not valid utf-8"),
    "wrong field count": ("label,text\n0,a\n1,b,c\n", "line 3: 3 fields where the header has 2"),
    "bad quoting": ('label,text\n0,"a\n', "malformed CSV"),
    "jsonl not json": ('{"label": 0, "text": "a"}\n{oops\n', "line 2: not valid JSON"),
    "duplicate ids": ("id,label,text\n1,0,a\n1,1,b\n", "duplicate id '1'"),
}


def _write(tmp_path, content, suffix=".csv"):
    path = tmp_path / f"bad{suffix}"
    if content is None:
        return path
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_training_data_exits_2_and_writes_nothing(tmp_path, capsys, case, tiny_bert):
    content, message = CASES[case]
    path = _write(tmp_path, content, ".jsonl" if "jsonl" in case else ".csv")
    out = tmp_path / "run"
    code = cli.main(["train", "--data", str(path), "--out", str(out), "--set", f"model.name={tiny_bert}",
                     "--set", 'data.label_names=["World","Sports","Business","Sci/Tech"]'])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and str(path) in err
    assert err.count("\n") == 1 and err.startswith("loraclf: error: ")
    assert not out.exists()


def test_unknown_target_and_over_budget_write_nothing(tmp_path, capsys, small_csv, tiny_bert):
    out = tmp_path / "run"
    base = ["train", "--data", str(small_csv), "--out", str(out), "--set", f"model.name={tiny_bert}",
            "--set", "data.max_length=32"]
    assert cli.main(base + ["--set", "adapter.target_modules=q_proj"]) == 2
    assert "matches no linear module" in capsys.readouterr().err
    assert cli.main(base + ["--budget", "100"]) == 2
    assert "exceed the budget of 100" in capsys.readouterr().err
    assert not out.exists()


def test_cli_prints_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "loraclf.cli", "train", "--data", str(tmp_path / "nope.csv"),
                        "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "nope.csv does not exist" in r.stderr


def test_a_model_failing_inside_its_forward_is_one_line_and_leaves_no_run(tmp_path, capsys, small_csv, tiny_bert,
                                                                         monkeypatch):
    """A model whose forward breaks in a way no check foresaw (Nystromformer's landmarks need a fixed length):
    one line, exit 2, no run directory; LORACLF_TRACEBACK=1 gives the traceback."""
    from loraclf import train

    def broken(*a, **k):
        raise RuntimeError("The size of tensor a (16) must match the size of tensor b (4)\nmore detail")
    monkeypatch.setattr(train, "fit", broken)
    out = tmp_path / "run"
    args = ["train", "--data", str(small_csv), "--out", str(out), "--set", f"model.name={tiny_bert}",
            "--set", "data.max_length=32"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("loraclf: error: unexpected RuntimeError: The size of tensor a (16)") and "LORACLF_TRACEBACK" in err
    assert not out.exists()
    monkeypatch.setenv("LORACLF_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="size of tensor"):
        cli.main(args)
    assert not out.exists()


def test_an_unforeseen_failure_after_a_checkpoint_keeps_it_and_says_how_to_resume(tmp_path, capsys, small_csv,
                                                                                 tiny_bert, monkeypatch):
    from loraclf import scoring

    def broken(*a, **k):
        raise RuntimeError("scoring broke")
    monkeypatch.setattr(scoring, "predict_logits", broken)  # after training, while scoring --predict-data
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(small_csv), "--predict-data", str(small_csv), "--out", str(out),
                     "--set", f"model.name={tiny_bert}", "--set", "data.max_length=32", "--set", "train.save_every=2",
                     "--no-report"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unexpected RuntimeError: scoring broke" in err and "keeps the checkpoint" in err and "--resume" in err
    assert (out / "checkpoint").is_dir() and not (out / "metrics.json").exists()


def test_a_pruned_search_trial_keeps_its_run(tmp_path, small_csv, tiny_bert, monkeypatch):
    """optuna.TrialPruned is how a search stops a trial, not a failure: the trial's folder keeps what it wrote."""
    optuna = pytest.importorskip("optuna")
    from loraclf import config, pipeline, train

    def pruned(*a, **k):
        raise optuna.TrialPruned("pruned at step 4")
    monkeypatch.setattr(train, "fit", pruned)
    cfg = config.load(None, None, [f"model.name={tiny_bert}", "data.max_length=32",
                                   'data.label_names=["World","Sports","Business","Sci/Tech"]'])
    with pytest.raises(optuna.TrialPruned):
        pipeline.train_run(cfg, [str(small_csv)], tmp_path / "trial", log=lambda *a, **k: None)
    assert (tmp_path / "trial" / "config.json").is_file()


def test_a_closed_pipe_exits_quietly(monkeypatch, capsys):
    """`loraclf presets | head`: the reader went away; no error line, no traceback."""
    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")
    monkeypatch.setattr(cli, "cmd_presets", closed)
    assert cli.main(["presets"]) == 1
    assert capsys.readouterr().err == ""


def test_predict_on_missing_run(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path), str(tmp_path / "x.csv")]) == 2
    assert "not a run directory (no config.json)" in capsys.readouterr().err


def test_every_command_is_registered():
    actions = [a for a in cli.parser()._actions if a.dest == "command"][0]
    assert {"train", "evaluate", "predict", "plan", "search", "presets", "report", "compare", "export", "serve"} \
        <= set(actions.choices)


def test_runs_in_one_process_may_use_different_precisions():
    """Accelerate keeps one mixed-precision setting per process; a second run (the Python API, the benchmark)
    that wants another gets it instead of accelerate's "already been initialized" error."""
    from loraclf import train
    assert train.make_accelerator("bf16", "cpu").mixed_precision == "bf16"
    assert train.make_accelerator("fp32", "cpu").mixed_precision == "no"
    assert train.make_accelerator("fp32", "cpu").mixed_precision == "no"
