"""Crash safety: SIGKILL mid-epoch (or Ctrl-C), then --resume, gives the uninterrupted run's final metrics."""
import json
import signal
import subprocess
import sys

import pytest

from conftest import tiny_config

# Runs the CLI, and once two checkpoints exist, sends itself SIG on the 3rd batch after: a crash between
# checkpoints, in the middle of an epoch. Test-side patching only: loraclf has no kill switch.
WRAPPER = """
import os, signal, sys
from loraclf import cli, data, train
state = {"saves": 0, "batches": 0}
real_save, real_collate = train.save_checkpoint, data.collate
def save(*a, **k):
    real_save(*a, **k)
    state["saves"] += 1
def collate(*a, **k):
    if state["saves"] >= 2:
        state["batches"] += 1
        if state["batches"] == 3:
            os.kill(os.getpid(), signal.SIG)
    return real_collate(*a, **k)
train.save_checkpoint, data.collate = save, collate
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture
def setup(tmp_path, tiny_bert):
    words = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]
    csv = tmp_path / "d.csv"
    csv.write_text("label,text\n" + "".join(f"{i % 4},{words[i % 4]} {i} {'x ' * (i % 5)}\n" for i in range(120)))
    cfg = tiny_config(tiny_bert, "train.epochs=2", "train.batch_size=4", "train.save_every=5", "train.eval_every=10",
                      "adapter.dropout=0.1", "train.patience=3")
    conf = tmp_path / "c.json"
    conf.write_text(cfg.to_json())
    return ["train", "--config", str(conf), "--data", str(csv), "--test-data", str(csv), "--no-report"]


def _final(out):
    m = json.loads((out / "metrics.json").read_text())
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    timeless = [{k: v for k, v in r.items() if k not in ("samples_per_s", "tokens_per_s")} for r in records]
    test = {k: v for k, v in m["test"].items() if k != "seconds"}
    return m["val"], test, timeless, (out / "submission.csv").read_text()


@pytest.mark.parametrize("sig, code", [("SIGKILL", -signal.SIGKILL), ("SIGINT", 130)])
def test_resume_after_crash_matches_uninterrupted(tmp_path, setup, sig, code):
    from loraclf import cli
    clean = tmp_path / "clean"
    assert cli.main(setup + ["--out", str(clean)]) == 0

    out = tmp_path / "crashed"
    r = subprocess.run([sys.executable, "-c", WRAPPER.replace("SIG)", f"{sig})"), *setup, "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == code, r.stderr[-2000:]
    progress = json.loads((out / "checkpoint" / "progress.json").read_text())
    assert 0 < progress["batch_in_epoch"] and progress["step"] < 48, "the crash must fall mid-epoch, mid-run"
    assert not (out / "metrics.json").exists()
    if sig == "SIGINT":
        assert "interrupted at step" in r.stderr and "--resume" in r.stderr and "Traceback" not in r.stderr

    r = subprocess.run([sys.executable, "-m", "loraclf.cli", "train", "--resume", "--out", str(out), "--no-report"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _final(out) == _final(clean)


def test_resume_without_checkpoint_is_a_user_error(tmp_path, capsys):
    from loraclf import cli
    assert cli.main(["train", "--resume", "--out", str(tmp_path / "none")]) == 2
    assert "nothing to resume" in capsys.readouterr().err
