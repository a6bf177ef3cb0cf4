"""`accelerate launch --multi_gpu --num_processes 2` on CPU (accelerate's torchrun launcher; loraclf asks for
gloo when there is no GPU): one run directory, written by rank 0 only."""
import json
import os
import subprocess
import sys

from conftest import tiny_config


def test_two_cpu_processes_write_one_run(tmp_path, tiny_bert, small_csv):
    cfg = tiny_config(tiny_bert, "train.epochs=2", "train.batch_size=4")
    conf = tmp_path / "c.json"
    conf.write_text(cfg.to_json())
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "loraclf.cli", "train",
           "--config", str(conf), "--data", str(small_csv), "--test-data", str(small_csv), "--out", str(out), "--no-report"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("run: ") == 1  # only rank 0 reports
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["processes"] == 2
    assert metrics["test"]["n"] == 40  # every test row scored once, across both ranks
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["adapter", "budget.json", "config.json", "inputs.json", "labels.json", "metrics.json", "metrics.jsonl",
                            "predictions.csv", "submission.csv", "tokenizer"])
    assert len((out / "submission.csv").read_text().splitlines()) == 41
