"""Where commands write, and what a tampered run, export, model folder or config makes them do: --overwrite
replaces only runs and puts the old one back when the new one fails; SIGTERM stops a run as Ctrl-C does; output
paths never land on the command's own inputs, special files or links; the adapter's shape comes from the run's
checked config.json, never from adapter_config.json; exports, model configs, class names and search spaces are
checked before use; reports draw class names as text."""
from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from conftest import LABELS, train_tiny_run
from loraclf import cli, pipeline, train

WORDS = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_bert):
    return train_tiny_run(tmp_path_factory.mktemp("hostile-outputs"), tiny_bert)


@pytest.fixture
def copy(run, tmp_path):
    def make(name: str = "run"):
        return shutil.copytree(run, tmp_path / name)
    return make


def _csv(path, n=24):
    path.write_text("label,text\n" + "".join(f"{i % 4},{WORDS[i % 4]} {i}\n" for i in range(n)))
    return path


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("loraclf: error:")]
    assert len(lines) == 1 and "Traceback" not in err and "unexpected" not in lines[0], err
    return lines[0]


def _train_args(tmp_path, tiny_bert, out, *more):
    return ["train", "--data", str(_csv(tmp_path / "train.csv")), "--out", str(out), "--no-report", "--epochs", "1",
            "--set", f"model.name={tiny_bert}", "--set", f"data.label_names={json.dumps(LABELS)}",
            "--set", "data.max_length=32", "--set", "train.batch_size=8", *more]


# ------------------------------------------------------------------------------------------ --overwrite

def test_overwrite_replaces_the_whole_run(copy, tmp_path, tiny_bert):
    out = copy()
    (out / "eval-old.json").write_text("{}")
    assert cli.main(_train_args(tmp_path, tiny_bert, out, "--overwrite")) == 0
    assert not (out / "eval-old.json").exists() and json.loads((out / "inputs.json").read_text())["test_data"] == []
    assert [p.name for p in tmp_path.iterdir() if ".replaced-" in p.name] == []


def test_a_failed_overwrite_puts_the_old_run_back(copy, tmp_path, tiny_bert, capsys):
    out = copy()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    bad = _csv(tmp_path / "bad.csv")
    bad.write_text(bad.read_text() + "9,unknown class row\n")
    args = _train_args(tmp_path, tiny_bert, out, "--overwrite")
    args[args.index("--data") + 1] = str(bad)
    assert cli.main(args) == 2
    assert "label 9 is out of range" in _one_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if ".replaced-" in p.name] == []


@pytest.mark.parametrize("what", ["model folder", "export folder", "other files"])
def test_overwrite_replaces_only_run_directories(tmp_path, tiny_bert, run, capsys, what):
    out = tmp_path / "target"
    if what == "model folder":
        shutil.copytree(tiny_bert, out)
    elif what == "export folder":
        assert cli.main(["export", str(run), "--merged", str(out)]) == 0
        capsys.readouterr()
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in out.iterdir())
    assert cli.main(_train_args(tmp_path, tiny_bert, out, "--overwrite")) == 2
    assert "is not a loraclf run directory, and --overwrite replaces only those" in _one_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == before


# ------------------------------------------------------------------------------------------ SIGTERM

def test_sigterm_stops_a_run_with_a_checkpoint_to_resume(tmp_path, tiny_bert, monkeypatch, capsys):
    sent = []
    flush = train._flush_history

    def flush_then_terminate(run_dir, prog):
        flush(run_dir, prog)
        if not sent:
            sent.append(prog.step)
            signal.raise_signal(signal.SIGTERM)
    monkeypatch.setattr(train, "_flush_history", flush_then_terminate)
    out = tmp_path / "run"
    assert cli.main(_train_args(tmp_path, tiny_bert, out, "--set", "train.epochs=50")) == 130
    assert "a checkpoint is in" in capsys.readouterr().err
    assert pipeline.resumable(out) and signal.getsignal(signal.SIGTERM) is not None
    monkeypatch.setattr(train, "_flush_history", flush)
    assert cli.main(["train", "--resume", "--out", str(out), "--set", "train.epochs=1"]) == 2
    assert "--resume continues a run exactly as it started, so --set cannot apply" in _one_line(capsys)


# ------------------------------------------------------------------------------------------ output paths

@pytest.mark.parametrize("target", ["input", "inside run", "fifo", "symlink", "device"])
def test_predict_output_never_replaces_inputs_links_or_special_files(copy, tmp_path, capsys, target):
    out = copy()
    data = _csv(tmp_path / "in.csv", 8)
    if target == "input":
        path, message = data, "would overwrite the input"
    elif target == "inside run":
        path, message = out / "config.json", "would overwrite a file inside"
    elif target == "fifo":
        path, message = tmp_path / "fifo", "is not a regular file"
        os.mkfifo(path)
    elif target == "symlink":
        path, message = tmp_path / "link.csv", "is a symbolic link"
        (tmp_path / "real.csv").write_text("keep")
        path.symlink_to(tmp_path / "real.csv")
    else:
        path, message = "/dev/null", "is not a regular file"
    before = data.read_text(), (out / "config.json").read_text()
    assert cli.main(["predict", str(out), str(data), "-o", str(path)]) == 2
    assert message in _one_line(capsys)
    assert (data.read_text(), (out / "config.json").read_text()) == before


@pytest.mark.parametrize("where", ["the run", "inside the run", "above the run"])
def test_export_never_lands_on_its_run(copy, capsys, where):
    out = copy()
    target = {"the run": out, "inside the run": out / "adapter", "above the run": out.parent}[where]
    assert cli.main(["export", str(out), "--merged", str(target), "--overwrite"]) == 2
    assert "overlaps the run" in _one_line(capsys)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("name", ["/../../victim/config", "../x", ".hidden", "a/b", "x" * 101])
def test_evaluate_name_is_a_file_name_inside_the_run(copy, tmp_path, capsys, name):
    out = copy()
    assert cli.main(["evaluate", str(out), "--data", str(_csv(tmp_path / "t.csv", 8)), "--name", name,
                     "--no-report"]) == 2
    assert "is not a plain name" in _one_line(capsys)


def test_export_opset_is_checked(run, tmp_path, capsys):
    pytest.importorskip("onnx")
    assert cli.main(["export", str(run), "--onnx", str(tmp_path / "o"), "--opset", "-7"]) == 2
    assert "--opset -7 is not an ONNX opset" in _one_line(capsys)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------ tampered files

def test_adapter_config_json_is_never_read(copy, tmp_path, capsys):
    """A tampered adapter_config.json changes nothing: no module is imported, the scale stays the trained one."""
    out = copy()
    data = _csv(tmp_path / "in.csv", 8)
    assert cli.main(["predict", str(out), str(data), "-o", str(tmp_path / "a.csv"), "--probs"]) == 0
    path = out / "adapter" / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg |= {"lora_alpha": 8000.0, "use_rslora": True, "megatron_config": {"a": 1}, "megatron_core": "megatron.evil"}
    path.write_text(json.dumps(cfg))
    assert cli.main(["predict", str(out), str(data), "-o", str(tmp_path / "b.csv"), "--probs"]) == 0
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


@pytest.mark.parametrize("change, message", [
    ({"labels": list("abcdef")}, "names 6 classes, but its model has 4 outputs"),
    ({"labels": None}, "has no list of two or more distinct class names"),
    ({"labels": ["a", "a", "b", "c"]}, "has no list of two or more distinct class names"),
    ({"max_length": -5}, "has a max_length of -5, not a token count"),
    ({"max_length": 10**6}, "more than its model's 130 positions"),
    ({"kind": "pickle"}, "has an unknown kind"),
])
def test_an_export_meta_file_is_checked(run, tmp_path, capsys, change, message):
    export = tmp_path / "export"
    assert cli.main(["export", str(run), "--merged", str(export)]) == 0
    meta = json.loads((export / "loraclf.json").read_text())
    (export / "loraclf.json").write_text(json.dumps(meta | change))
    assert cli.main(["predict", str(export), str(_csv(tmp_path / "in.csv", 8)), "-o", str(tmp_path / "p.csv")]) == 2
    assert message in _one_line(capsys)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("key, value, message", [
    ("hidden_dropout_prob", float("nan"), "hidden_dropout_prob = nan is not a finite number"),
    ("attention_probs_dropout_prob", 1.5, "is not a probability"),
    ("num_hidden_layers", 10**7, "num_hidden_layers = 10000000 is not a count from 1 to 1,000"),
    ("num_attention_heads", 0, "num_attention_heads = 0 is not a count"),
    ("layer_norm_eps", float("nan"), "layer_norm_eps = nan is not a finite number"),
])
def test_a_model_config_is_checked_before_anything_is_built(tmp_path, tiny_bert, capsys, key, value, message):
    model = shutil.copytree(tiny_bert, tmp_path / "model")
    conf = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(conf | {key: value}))
    assert cli.main(["plan", "--set", f"model.name={model}", "--set", "data.max_length=32"]) == 2
    assert message in _one_line(capsys)


def test_weights_are_read_from_safetensors_only(tmp_path, tiny_bert, capsys):
    import torch
    from safetensors.torch import load_file
    model = shutil.copytree(tiny_bert, tmp_path / "model")
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    out = tmp_path / "run"
    args = _train_args(tmp_path, tiny_bert, out)
    args[args.index(f"model.name={tiny_bert}")] = f"model.name={model}"
    assert cli.main(args) == 2
    assert "no file named model.safetensors" in _one_line(capsys) and not out.exists()


@pytest.mark.parametrize("setting, message", [
    ('data.label_names=["", "a", "b", "c"]', "data.label_names has '', not a class name"),
    ('adapter.rank_pattern={"(": 2}', "is not a regular expression"),
])
def test_config_values_that_would_break_later_are_refused(tmp_path, tiny_bert, capsys, setting, message):
    assert cli.main(_train_args(tmp_path, tiny_bert, tmp_path / "run", "--set", setting)) == 2
    assert message in _one_line(capsys) and not (tmp_path / "run").exists()


def test_a_config_files_preset_is_a_name_not_a_path(tmp_path, capsys):
    conf = tmp_path / "c.toml"
    conf.write_text('preset = "../../escape"\n')
    assert cli.main(["plan", "--config", str(conf)]) == 2
    assert "is not a preset name" in _one_line(capsys)


def test_ids_that_print_alike_are_duplicates(run, tmp_path, capsys):
    data = tmp_path / "in.jsonl"
    data.write_text('{"id": "1", "text": "a"}\n{"id": 1, "text": "b"}\n')
    assert cli.main(["predict", str(run), str(data), "-o", str(tmp_path / "p.csv")]) == 2
    assert "duplicate id 1" in _one_line(capsys)


# ------------------------------------------------------------------------------------------ reports and search

def test_class_names_are_drawn_as_text(tmp_path, tiny_bert):
    """A class named like mathtext ($\\frac{$) would make matplotlib fail after training."""
    from loraclf import report
    names = ["$\\frac{$", "$x$", "a_b^c", "plain"]
    out = train_tiny_run(tmp_path, tiny_bert, f"data.label_names={json.dumps(names)}")
    assert report.write(out).is_file() and (out / "plots" / "confusion_val.png").stat().st_size > 0


def test_a_report_with_tampered_records_writes_nothing(copy, capsys):
    out = copy()
    (out / "budget.json").write_text('{"trainable": "many"}')
    shutil.rmtree(out / "plots", ignore_errors=True)
    assert cli.main(["report", str(out)]) == 2
    assert "cannot draw the report" in _one_line(capsys)
    assert not (out / "plots").exists()
    assert cli.main(["compare", str(out), "--out", str(out.parent / "cmp")]) == 2
    assert "cannot compare" in _one_line(capsys) and not (out.parent / "cmp").exists()


def test_a_report_does_not_write_through_a_linked_plots_folder(copy, tmp_path, capsys):
    out = copy()
    shutil.rmtree(out / "plots", ignore_errors=True)
    (tmp_path / "elsewhere").mkdir()
    (out / "plots").symlink_to(tmp_path / "elsewhere")
    assert cli.main(["report", str(out)]) == 2
    assert "is a symbolic link" in _one_line(capsys) and not any((tmp_path / "elsewhere").iterdir())


def test_a_search_space_must_be_a_file_and_a_failed_search_leaves_no_folder(tmp_path, tiny_bert, capsys):
    pytest.importorskip("optuna")
    fifo = tmp_path / "space.toml"
    os.mkfifo(fifo)
    base = ["search", "--data", str(_csv(tmp_path / "train.csv")), "--trials", "1", "--set", f"model.name={tiny_bert}",
            "--set", f"data.label_names={json.dumps(LABELS)}", "--set", "data.max_length=32"]
    assert cli.main(base + ["--out", str(tmp_path / "s1"), "--space", str(fifo)]) == 2
    assert "is not a file" in _one_line(capsys)
    assert cli.main(base + ["--out", str(tmp_path / "s2"), "--storage", "notaurl"]) == 2
    assert "cannot open the study storage" in _one_line(capsys) and not (tmp_path / "s2").exists()



# ------------------------------------------------------------------------------------------ second round

@pytest.mark.parametrize("how", ["cwd", "parent of cwd", "symlink", "data inside"])
def test_overwrite_refuses_what_it_could_not_put_back(copy, tmp_path, tiny_bert, capsys, monkeypatch, how):
    out = copy()
    before = sorted(p.name for p in out.iterdir())
    target, message = out, ""
    args = _train_args(tmp_path, tiny_bert, out, "--overwrite")
    if how == "cwd":
        monkeypatch.chdir(out)
        target, message = ".", "is the folder this command runs in"
    elif how == "parent of cwd":
        monkeypatch.chdir(out / "tokenizer")
        target, message = "..", "is the folder this command runs in"
    elif how == "symlink":
        target, message = tmp_path / "link", "is a symbolic link"
        target.symlink_to(out)
    else:
        shutil.copy(tmp_path / "train.csv", out / "train.csv")
        before.append("train.csv")
        args[args.index("--data") + 1], message = str(out / "train.csv"), "is inside the run directory"
    args[args.index("--out") + 1] = str(target)
    assert cli.main(args) == 2
    assert message in _one_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_exports_inside_each_other_are_refused(run, tmp_path, capsys):
    assert cli.main(["export", str(run), "--merged", str(tmp_path / "a"), "--onnx", str(tmp_path / "a" / "b")]) == 2
    assert "one export folder is inside another" in _one_line(capsys) and not (tmp_path / "a").exists()


def test_predict_output_never_lands_in_the_base_model(tmp_path, tiny_bert, capsys):
    model = shutil.copytree(tiny_bert, tmp_path / "model")
    out = train_tiny_run(tmp_path, model)
    target = model / "model.safetensors"
    before = target.read_bytes()
    assert cli.main(["predict", str(out), str(_csv(tmp_path / "in.csv", 8)), "-o", str(target)]) == 2
    assert "would overwrite a file inside" in _one_line(capsys) and target.read_bytes() == before


def test_many_classes_are_tabled_not_drawn(tmp_path, tiny_bert):
    """1,000 classes would make figures metres wide and a confusion matrix of a million cells in the log."""
    from loraclf import metrics, plots, report
    n = plots.MAX_DRAWN_CLASSES + 1
    train = tmp_path / "train.csv"
    train.write_text("label,text\n" + "".join(f"c{i % n},word{i % n} row {i}\n" for i in range(3 * n)))
    out = tmp_path / "run"
    from conftest import tiny_config
    result = pipeline.train_run(tiny_config(tiny_bert, "data.label_names=[]", "data.val_size=0.34"), [str(train)], out,
                                log=lambda *a, **k: None)
    assert "confusion matrix: 61 classes" in metrics.metrics_table(result["val"])
    report.write(out)
    drawn = sorted(p.name for p in (out / "plots").iterdir())
    assert "curves.png" in drawn and not any(p.startswith(("confusion", "per_class")) for p in drawn)
