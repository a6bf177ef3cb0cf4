"""The checkpoint swap survives a kill at every point: --resume then finds the newest complete checkpoint, deletes
the leftovers, and ends with the uninterrupted run's metrics."""
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import tiny_config

KILLED_SAVE = 2  # the kill falls in the second checkpoint save (step 4), so an older one (step 2) is on disk
OLD, NEW = 2, 4


class Killed(BaseException):
    """Stands for SIGKILL: nothing in loraclf catches it, so no cleanup code runs after it either."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("swap")
    words = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]
    csv = tmp / "d.csv"
    csv.write_text("label,text\n" + "".join(f"{i % 4},{words[i % 4]} {i} {'x ' * (i % 5)}\n" for i in range(30)))
    cfg = tiny_config(tiny_bert, "train.epochs=1", "train.batch_size=3", "train.save_every=2", "train.eval_every=2",
                      "adapter.dropout=0.1")
    conf = tmp / "c.json"
    conf.write_text(cfg.to_json())
    args = ["train", "--config", str(conf), "--data", str(csv), "--test-data", str(csv), "--no-report"]
    from loraclf import cli
    clean = tmp / "clean"
    assert cli.main(args + ["--out", str(clean)]) == 0
    return args, _final(clean)


def _final(out):
    m = json.loads((out / "metrics.json").read_text())
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    timeless = [{k: v for k, v in r.items() if k not in ("samples_per_s", "tokens_per_s")} for r in records]
    return m["val"], {k: v for k, v in m["test"].items() if k != "seconds"}, timeless, (out / "submission.csv").read_text()


def _leftovers(out):
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".checkpoint."))


def _step(out):
    return json.loads((out / "checkpoint" / "progress.json").read_text())["step"]


# The file operations of one save, in order: 5 files written (each a temp file renamed in: trainable, best, state,
# progress, marker), then checkpoint/ -> .checkpoint.old, temp folder -> checkpoint/, and .checkpoint.old deleted.
OPS = [("replace", k) for k in range(1, 8)] + [("rmtree", 1)]
SEALED_FROM = 6  # a kill before rename #6 or later: the marker is in place, so the new checkpoint is the one to resume


def _kill_in_save(monkeypatch, op: str, nth: int):
    """Patch the checkpoint save so its `nth` os.replace (or shutil.rmtree, after deleting half the files) dies."""
    from loraclf import checkpoint, train
    state = {"saves": 0, "in_save": False, "count": 0}
    real_save, real_replace, real_rmtree = train.save_checkpoint, os.replace, shutil.rmtree

    def save(*a, **k):
        state["saves"] += 1
        state["in_save"] = state["saves"] == KILLED_SAVE
        try:
            return real_save(*a, **k)
        finally:
            state["in_save"] = False

    def replace(src, dst, *a, **k):
        if state["in_save"] and op == "replace":
            state["count"] += 1
            if state["count"] == nth:
                raise Killed(f"killed before os.replace #{nth}")
        return real_replace(src, dst, *a, **k)

    def rmtree(path, *a, **k):
        if state["in_save"] and op == "rmtree" and os.path.basename(path) == ".checkpoint.old":
            state["count"] += 1
            if state["count"] == nth:
                files = sorted(os.listdir(path), reverse=True)
                for name in files[: len(files) // 2]:  # half deleted, its complete.json still there
                    os.unlink(os.path.join(path, name))
                raise Killed("killed while deleting the old checkpoint")
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(train, "save_checkpoint", save)
    monkeypatch.setattr(checkpoint.os, "replace", replace)  # os is one module: this patches every caller
    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)


@pytest.mark.parametrize("op, nth", OPS)
def test_kill_at_each_step_of_the_swap_then_resume(tmp_path, setup, monkeypatch, op, nth):
    from loraclf import checkpoint, cli
    args, clean = setup
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _kill_in_save(m, op, nth)
        with pytest.raises(Killed):
            cli.main(args + ["--out", str(out)])
    assert not (out / "metrics.json").exists()
    expected = NEW if op == "rmtree" or nth >= SEALED_FROM else OLD
    assert checkpoint.newest(out / "checkpoint")[1] == expected

    assert cli.main(["train", "--resume", "--out", str(out), "--no-report"]) == 0
    assert _final(out) == clean
    assert _leftovers(out) == []


def test_resume_picks_the_newest_complete_of_several_and_cleans_stale_temporaries(tmp_path, setup, monkeypatch):
    """checkpoint/ at step 2, .checkpoint.old damaged, a sealed temp folder at step 4, an unsealed one at 6."""
    from loraclf import checkpoint, cli
    args, clean = setup
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _kill_in_save(m, "replace", 7)  # checkpoint/ (2) moved to .checkpoint.old, sealed temp (4) beside it
        with pytest.raises(Killed):
            cli.main(args + ["--out", str(out)])
    [sealed] = [p for p in out.iterdir() if p.name.endswith(".tmp")]
    os.replace(out / ".checkpoint.old", out / "checkpoint")
    shutil.copytree(out / "checkpoint", out / ".checkpoint.old")
    (out / ".checkpoint.old" / "state.pt").write_bytes(b"cut short")
    shutil.copytree(sealed, out / ".checkpoint.zzzz.tmp")
    (out / ".checkpoint.zzzz.tmp" / checkpoint.MARKER).unlink()
    (out / ".checkpoint.zzzz.tmp" / "progress.json").write_text('{"step": 6}')
    assert _step(out) == OLD

    assert checkpoint.recover(out / "checkpoint") == NEW
    assert _step(out) == NEW and _leftovers(out) == []
    assert cli.main(["train", "--resume", "--out", str(out), "--no-report"]) == 0
    assert _final(out) == clean


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_marker_no_old"])
def test_a_damaged_checkpoint_is_never_resumed(tmp_path, setup, capsys, damage):
    from loraclf import checkpoint, cli
    args, _ = setup
    out = tmp_path / "run"
    with pytest.MonkeyPatch.context() as m:
        _kill_in_save(m, "replace", 1)  # dies in the 2nd save: checkpoint/ holds step 2, sealed
        with pytest.raises(Killed):
            cli.main(args + ["--out", str(out)])
    ckpt = out / "checkpoint"
    weights = ckpt / "trainable.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    else:
        (ckpt / "state.pt").unlink()
        (ckpt / checkpoint.MARKER).unlink()
    assert checkpoint.newest(ckpt) == (None, None)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(out), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "incomplete or damaged" in err.strip().splitlines()[-1] and "Traceback" not in err


def test_an_unsealed_checkpoint_from_before_markers_still_resumes(tmp_path, setup, monkeypatch):
    """checkpoint/ folders written before checkpoints were sealed (no complete.json) resume as they did."""
    from loraclf import checkpoint, cli
    args, clean = setup
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _kill_in_save(m, "replace", 1)
        with pytest.raises(Killed):
            cli.main(args + ["--out", str(out)])
    (out / "checkpoint" / checkpoint.MARKER).unlink()
    assert cli.main(["train", "--resume", "--out", str(out), "--no-report"]) == 0
    assert _final(out) == clean


# A real SIGKILL in the middle of the swap: the CLI in a subprocess kills itself just before the k-th rename of
# its second checkpoint save.
WRAPPER = """
import os, signal, sys
from loraclf import cli, train
state = {"saves": 0, "count": 0}
real_save, real_replace = train.save_checkpoint, os.replace
def save(*a, **k):
    state["saves"] += 1
    return real_save(*a, **k)
def replace(src, dst, *a, **k):
    if state["saves"] == KILLED_SAVE:
        state["count"] += 1
        if state["count"] == NTH:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *a, **k)
train.save_checkpoint, os.replace = save, replace
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigkill_between_the_two_renames_then_resume(tmp_path, setup, capsys):
    """The case of the report: checkpoint/ renamed away, the new one not yet renamed in."""
    from loraclf import cli
    args, clean = setup
    nth, expected = 7, NEW
    out = tmp_path / "run"
    code = WRAPPER.replace("KILLED_SAVE", str(KILLED_SAVE)).replace("NTH", str(nth))
    r = subprocess.run([sys.executable, "-c", code, *args, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert _leftovers(out), "the kill must fall mid-swap, with a temporary on disk"
    assert not (out / "checkpoint").exists() and (out / ".checkpoint.old").is_dir()
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(out), "--no-report"]) == 0
    assert f"resumed at step {expected}" in capsys.readouterr().out
    assert _final(out) == clean
    assert _leftovers(out) == []
