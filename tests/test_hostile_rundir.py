"""Damaged, tampered or incomplete run directories: every command that opens a run (predict, evaluate, export,
serve's loader, report) refuses with one line on stderr and exit 2, before writing anything."""
import json
import pickle
import shutil
from pathlib import Path

import pytest

from conftest import train_tiny_run
from loraclf import cli, scoring
from loraclf.errors import UserError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert):
    return train_tiny_run(tmp_path_factory.mktemp("hostile-rundir"), tiny_bert)


@pytest.fixture(scope="module")
def wide_bert(tmp_path_factory, tiny_bert):
    """Same architecture and module names as tiny_bert, another hidden size: the adapter's shapes do not fit."""
    from transformers import AutoTokenizer, BertConfig, BertModel
    out = tmp_path_factory.mktemp("wide-bert")
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=130)).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _edit_json(path: Path, edit) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled",))


def _pickle_weights(name):
    def corrupt(run, models):
        (run / "adapter" / name).write_bytes(pickle.dumps({"weight": _Evil()}))
    return corrupt


def _replace_with_bin(run, models):
    (run / "adapter" / "adapter_model.safetensors").unlink()
    _pickle_weights("adapter_model.bin")(run, models)


def _base(key):
    def corrupt(run, models):
        _edit_json(run / "config.json", lambda c: c | {"model": c["model"] | {"name": str(models[key])}})
    return corrupt


# name -> (corruption, whether `report` (which reads no weights) must refuse it too)
CORRUPTIONS = {
    "adapter-truncated": (lambda run, m: _truncate(run / "adapter" / "adapter_model.safetensors"), False),
    "adapter-garbage": (lambda run, m: (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00" * 64), False),
    "adapter-empty": (lambda run, m: (run / "adapter" / "adapter_model.safetensors").write_bytes(b""), False),
    "head-dense-truncated": (lambda run, m: _truncate(run / "adapter" / "head_dense_base.safetensors"), False),
    "adapter-pickle-bin": (_replace_with_bin, False),
    "pickle-bin-beside": (_pickle_weights("adapter_model.bin"), False),
    "pickle-pt-beside": (_pickle_weights("extra.pt"), False),
    "pickle-pth-beside": (_pickle_weights("weights.pth"), False),
    "no-adapter": (lambda run, m: shutil.rmtree(run / "adapter"), False),
    "base-other-shapes": (_base("wide"), False),
    "base-other-architecture": (_base("roberta"), False),
    "labels-three": (lambda run, m: _edit_json(run / "labels.json", lambda names: names[:3]), False),
    "no-tokenizer": (lambda run, m: shutil.rmtree(run / "tokenizer"), False),
    "tokenizer-empty": (lambda run, m: [f.unlink() for f in (run / "tokenizer").iterdir()], False),
    "config-missing": (lambda run, m: (run / "config.json").unlink(), True),
    "config-not-json": (lambda run, m: (run / "config.json").write_text("{not json"), True),
    "config-list": (lambda run, m: (run / "config.json").write_text("[1, 2]"), True),
    "config-deep": (lambda run, m: (run / "config.json").write_text("[" * 100_000 + "]" * 100_000), True),
    "config-not-utf8": (lambda run, m: (run / "config.json").write_bytes(b'{"model": "\xff\xfe"}'), True),
    "config-unknown-section": (lambda run, m: _edit_json(run / "config.json", lambda c: c | {"evil": {}}), True),
    "config-wrong-type": (lambda run, m: _edit_json(run / "config.json", lambda c: c | {"adapter": "lora"}), True),
    "labels-missing": (lambda run, m: (run / "labels.json").unlink(), True),
    "labels-one": (lambda run, m: (run / "labels.json").write_text('["only"]'), True),
    "labels-empty": (lambda run, m: (run / "labels.json").write_text("[]"), True),
    "labels-not-json": (lambda run, m: (run / "labels.json").write_text("World, Sports"), True),
    "labels-object": (lambda run, m: (run / "labels.json").write_text('{"0": "World", "1": "Sports"}'), True),
    "labels-duplicate": (lambda run, m: (run / "labels.json").write_text('["a", "a"]'), True),
    "not-a-folder": (lambda run, m: (shutil.rmtree(run), run.write_text("x")), True),
}


def _predict(run, tmp):
    src = tmp / "in.csv"
    src.write_text("text\nfootball goal\nelection war\n")
    return ["predict", str(run), str(src), "-o", str(tmp / "out.csv")]


def _evaluate(run, tmp):
    src = tmp / "labelled.csv"
    src.write_text("label,text\nSports,football goal\nWorld,election war\n")
    return ["evaluate", str(run), "--data", str(src), "--no-report"]


def _export(run, tmp):
    return ["export", str(run), "--merged", str(tmp / "merged")]


def _report(run, tmp):
    return ["report", str(run)]


COMMANDS = {"predict": _predict, "evaluate": _evaluate, "export": _export, "serve": None, "report": _report}


def _outputs(run: Path, tmp: Path) -> list[str]:
    """Anything a command could have written: its output file or folder, or new files in the run."""
    written = [p.name for p in (tmp / "out.csv", tmp / "merged") if p.exists()]
    if run.is_dir():
        written += [p.name for p in run.iterdir() if p.name.startswith(("eval-", "report", "plots", "."))]
    return written


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_damaged_run_is_refused_in_one_line(tmp_path, tiny_run, tiny_roberta, wide_bert, capsys, corruption, command):
    corrupt, refused_by_report = CORRUPTIONS[corruption]
    if command == "report" and not refused_by_report:
        pytest.skip("report reads no weights or tokenizer")
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    corrupt(run, {"wide": wide_bert, "roberta": tiny_roberta})
    capsys.readouterr()
    if command == "serve":
        with pytest.raises(UserError) as e:
            scoring.load_predictor(run).load()
        message, code = str(e.value), 2
    else:
        code = cli.main(COMMANDS[command](run, tmp_path))
        message = capsys.readouterr().err.strip()
        assert message.startswith("loraclf: error: ")
    assert code == 2
    assert "\n" not in message and "Traceback" not in message
    assert "unpickled" not in capsys.readouterr().out
    assert _outputs(run, tmp_path) == []


def test_the_messages_name_the_cause(tmp_path, tiny_run, wide_bert, capsys):
    cases = {"adapter-truncated": "damaged", "adapter-pickle-bin": "safetensors only", "base-other-shapes": "do not fit",
             "labels-one": "two or more", "no-tokenizer": "no tokenizer", "config-missing": "no config.json",
             "config-not-json": "not valid JSON"}
    for name, words in cases.items():
        run = tmp_path / name
        shutil.copytree(tiny_run, run)
        CORRUPTIONS[name][0](run, {"wide": wide_bert})
        assert cli.main(_predict(run, tmp_path)) == 2
        assert words in capsys.readouterr().err, name


def test_missing_tokenizer_never_reaches_the_hub(tmp_path, tiny_run, monkeypatch):
    """With the run's tokenizer gone, loraclf must not ask the Hub for a repo named like the folder."""
    import huggingface_hub
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: calls.append(a) or 1 / 0)
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.rmtree(run / "tokenizer")
    with pytest.raises(UserError, match="no tokenizer"):
        scoring.load_predictor(run).load()
    assert calls == []


def test_an_intact_copy_still_loads(tmp_path, tiny_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    assert cli.main(_predict(run, tmp_path)) == 0
    assert (tmp_path / "out.csv").is_file()
