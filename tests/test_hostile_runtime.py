"""Hostile conditions at run time: a loss or weights that turn NaN/infinite, a full disk while writing outputs or
mid-training, `-o` that is a folder, and a train that fails after creating its run directory. Each ends in one
line on stderr and exit 2, with no half-written file and no half-written run directory."""
import errno
import json
import math
import os

import pytest

from conftest import tiny_config

WORDS = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile-runtime")
    csv = tmp / "d.csv"
    csv.write_text("label,text\n" + "".join(f"{i % 4},{WORDS[i % 4]} {i}\n" for i in range(30)))
    return csv


def _args(tmp_path, model_dir, csv, *overrides):
    cfg = tiny_config(model_dir, "train.batch_size=3", *overrides)  # 24 training rows: 8 steps
    conf = tmp_path / "c.json"
    conf.write_text(cfg.to_json())
    return ["train", "--config", str(conf), "--data", str(csv), "--test-data", str(csv), "--no-report"]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]  # earlier lines: library progress bars
    assert line.startswith("loraclf: error: ")
    return line


def _no_temporaries(folder):
    assert [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------------------- non-finite loss or weights

def _counting_steps(monkeypatch, hook):
    """Calls hook(optimizer, steps_done) after every optimizer step of the run."""
    from loraclf import train
    real = train.make_optimizer

    def make_optimizer(model, cfg):
        opt = real(model, cfg)
        calls = {"n": 0}

        def post(optimizer, args, kwargs):
            calls["n"] += 1
            hook(optimizer, calls["n"])
        opt.register_step_post_hook(post)
        return opt
    monkeypatch.setattr(train, "make_optimizer", make_optimizer)


def _nan_loss_from(monkeypatch, step: int):
    """The training loss is NaN from optimizer step `step` on."""
    import torch.nn.functional as F
    real, done = F.cross_entropy, {"steps": 0}

    def cross_entropy(logits, *a, **k):
        out = real(logits, *a, **k)
        return out * float("nan") if out.requires_grad and done["steps"] >= step - 1 else out
    monkeypatch.setattr(F, "cross_entropy", cross_entropy)
    _counting_steps(monkeypatch, lambda optimizer, n: done.update(steps=n))


def _inf_weights_after(monkeypatch, step: int):
    """A trainable weight becomes infinite after optimizer step `step`; the loss of that step was finite."""
    def hook(optimizer, n):
        if n == step:
            optimizer.param_groups[0]["params"][0].data.fill_(float("inf"))
    _counting_steps(monkeypatch, hook)


@pytest.mark.parametrize("inject, at, fails_at", [("loss", 5, 5), ("weights", 4, 4), ("weights", 8, 8)])
@pytest.mark.parametrize("save_every", [0, 2])
def test_a_run_that_turns_non_finite_stops_and_keeps_the_last_good_checkpoint(
        tmp_path, tiny_bert, data, capsys, monkeypatch, inject, at, fails_at, save_every):
    from loraclf import checkpoint, cli
    args = _args(tmp_path, tiny_bert, data, f"train.save_every={save_every}", "train.eval_every=2")
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        (_nan_loss_from if inject == "loss" else _inf_weights_after)(m, at)
        assert cli.main(args + ["--out", str(out)]) == 2
    line = _one_line(capsys)
    assert f"training diverged at step {fails_at}: the {inject} became NaN or infinite" in line
    if not save_every:  # nothing resumable: no run directory is left behind
        assert not out.exists()
        return
    good = (fails_at - 1) // save_every * save_every  # the last save before the failure
    assert f"keeps the checkpoint of step {good}" in line and "--resume" in line
    assert checkpoint.newest(out / "checkpoint")[1] == good
    assert not (out / "adapter").exists() and not (out / "metrics.json").exists()
    from safetensors.torch import load_file
    for name in ("trainable.safetensors", "best.safetensors"):
        assert all(bool(v.isfinite().all()) for v in load_file(str(out / "checkpoint" / name)).values())
    for record in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()):
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float)), record
    _no_temporaries(out)
    # the run directory stays usable: without the fault, --resume finishes the run
    assert cli.main(["train", "--resume", "--out", str(out), "--no-report"]) == 0
    assert (out / "metrics.json").is_file() and (out / "adapter").is_dir()


@pytest.mark.parametrize("value, best", [(float("nan"), None), (float("inf"), 0.5), (float("-inf"), None)])
def test_a_non_finite_score_never_becomes_the_best(value, best):
    from loraclf import train
    for monitor in ("val_loss", "val_accuracy"):
        assert not train.better(monitor, value, best)


# ------------------------------------------------------------------------------- full disk

class _FullDisk:
    """A file whose write stores half the bytes, then fails as a full disk does."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()
        return False

    def write(self, b):
        self.f.write(b[: len(b) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        self.f.flush()

    def fileno(self):
        return self.f.fileno()


def _disk_full_for(monkeypatch, name: str, after: int = 0):
    """Writes of files named `name` (through loraclf's atomic writer) hit a full disk, from the (after+1)-th on."""
    real, seen = os.fdopen, {"n": 0}

    def fdopen(fd, *a, **k):
        f = real(fd, *a, **k)
        try:
            target = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            return f
        if target.startswith(f".{name}.") and target.endswith(".tmp"):
            seen["n"] += 1
            if seen["n"] > after:
                return _FullDisk(f)
        return f
    monkeypatch.setattr(os, "fdopen", fdopen)


@pytest.mark.parametrize("name, after, kept", [
    ("metrics.jsonl", 0, False),         # the 1st step's metrics flush: nothing resumable yet
    ("metrics.jsonl", 3, True),          # the 4th step's: the checkpoint of step 2 stays resumable
    ("trainable.safetensors", 1, True),  # the 2nd checkpoint save: the 1st stays resumable
    ("progress.json", 0, False),         # the 1st checkpoint save
    ("metrics.json", 0, True),           # after training: the run's final files
    ("submission.csv", 0, True),
])
def test_disk_full_mid_training(tmp_path, tiny_bert, data, capsys, monkeypatch, name, after, kept):
    from loraclf import checkpoint, cli
    args = _args(tmp_path, tiny_bert, data, "train.save_every=2")
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _disk_full_for(m, name, after)
        assert cli.main(args + ["--out", str(out)]) == 2
    line = _one_line(capsys)
    assert "the disk is full" in line and name in line
    if not kept:
        assert not out.exists()
        return
    step = checkpoint.newest(out / "checkpoint")[1]
    assert step and f"keeps the checkpoint of step {step}" in line
    assert not (out / name).exists() or name == "metrics.jsonl"
    _no_temporaries(out)
    for f in out.glob("*.json"):
        json.loads(f.read_text())
    assert cli.main(["train", "--resume", "--out", str(out), "--no-report"]) == 0
    assert (out / "metrics.json").is_file() and (out / "submission.csv").is_file()


def test_disk_full_while_saving_the_adapter(tmp_path, tiny_bert, data, capsys, monkeypatch):
    """The model save (peft's own writer) fails half way: no adapter/ and no temp folder is left."""
    from loraclf import cli, model
    args = _args(tmp_path, tiny_bert, data)
    out = tmp_path / "run"

    def save(m, out_dir):
        (out_dir / "adapter_model.safetensors").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / "adapter_model.safetensors"))
    with monkeypatch.context() as m:
        m.setattr(model, "save", save)
        assert cli.main(args + ["--out", str(out)]) == 2
    assert "the disk is full" in _one_line(capsys)
    assert not out.exists()


# ------------------------------------------------------------------------------- outputs of other commands

@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    from conftest import train_tiny_run
    return train_tiny_run(tmp_path_factory.mktemp("trained"), tiny_bert)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_predict_output_that_is_a_folder(trained, data, tmp_path, capsys, backend):
    from loraclf import cli
    folder = tmp_path / "out"
    folder.mkdir()
    assert cli.main(["predict", str(trained), str(data), "-o", str(folder), "--backend", backend]) == 2
    assert "is a folder, not a file" in _one_line(capsys)
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("command, name", [
    ("predict", "submission.csv"), ("evaluate", "eval-d.json"), ("report", "report.html"), ("compare", "compare.md")])
@pytest.mark.parametrize("existing", [False, True])
def test_disk_full_while_writing_an_output(trained, data, tmp_path, capsys, monkeypatch, command, name, existing):
    from loraclf import cli
    target = {"predict": tmp_path / name, "compare": tmp_path / name}.get(command, trained / name)
    before = b"an earlier version\n"
    if existing:
        target.write_bytes(before)
    elif target.exists():
        target.unlink()
    argv = {"predict": ["predict", str(trained), str(data), "-o", str(target)],
            "evaluate": ["evaluate", str(trained), "--data", str(data), "--no-report"],
            "report": ["report", str(trained)],
            "compare": ["compare", str(trained), "--out", str(tmp_path)]}[command]
    with monkeypatch.context() as m:
        _disk_full_for(m, name)
        assert cli.main(argv) == 2
    line = _one_line(capsys)
    assert "the disk is full" in line and name in line
    assert (target.read_bytes() == before) if existing else not target.exists()
    _no_temporaries(target.parent)
    target.unlink(missing_ok=True)  # the run directory is shared by these tests (report reads eval-*.json)


# ------------------------------------------------------------------------------- a train that fails part way

@pytest.mark.parametrize("out_exists", [False, True])
@pytest.mark.parametrize("where", ["train.fit", "scoring.evaluate_encoded"])
def test_a_failed_train_leaves_no_half_written_run_directory(tmp_path, tiny_bert, data, capsys, monkeypatch,
                                                             out_exists, where):
    """A UserError once the run directory is written (in training, or after it) removes what this call wrote."""
    import importlib
    from loraclf import cli, train
    args = _args(tmp_path, tiny_bert, data)
    out = tmp_path / "run"
    if out_exists:
        out.mkdir()

    def fail(*a, **k):
        assert (out / "config.json").is_file()
        raise train.UserError("a mistake found late", "fix it")
    module, name = where.split(".")
    monkeypatch.setattr(importlib.import_module(f"loraclf.{module}"), name, fail)
    assert cli.main(args + ["--out", str(out)]) == 2
    assert "a mistake found late" in _one_line(capsys)
    assert (list(out.iterdir()) == []) if out_exists else not out.exists()


def test_ctrl_c_before_training_leaves_no_run_directory(tmp_path, tiny_bert, data, capsys, monkeypatch):
    from loraclf import cli, train
    args = _args(tmp_path, tiny_bert, data)
    out = tmp_path / "run"

    def ctrl_c(*a, **k):
        assert (out / "config.json").is_file()
        raise KeyboardInterrupt
    monkeypatch.setattr(train, "fit", ctrl_c)
    assert cli.main(args + ["--out", str(out)]) == 130
    assert "Traceback" not in capsys.readouterr().err
    assert not out.exists()
