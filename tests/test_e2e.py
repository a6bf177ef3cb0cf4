"""End to end with the real all-MiniLM-L6-v2 weights on the shared AG News pool (a few minutes on CPU)."""
import csv
import json

import pytest

from loraclf import cli

pytestmark = pytest.mark.slow


def test_minilm_learns_ag_news_and_predicts(tmp_path, agnews_dir, minilm_dir):
    test_rows = (agnews_dir / "test.csv").read_text().splitlines(keepends=True)[:1000]
    test = tmp_path / "test1000.csv"
    test.write_text("".join(test_rows))
    out = tmp_path / "run"
    code = cli.main(["train", "--preset", "agnews-quick", "--data", str(agnews_dir / "train_pool_text.csv"),
                     "--test-data", str(test), "--out", str(out), "--max-train-samples", "1500", "--epochs", "2",
                     "--set", "data.max_length=64", "--set", "train.batch_size=16", "--set", "data.val_size=0.05",
                     "--no-report"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 1000
    assert metrics["test"]["accuracy"] >= 0.80, metrics["test"]["accuracy"]

    sub = tmp_path / "submission.csv"
    assert cli.main(["predict", str(out), str(test), "-o", str(sub)]) == 0
    with open(sub, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ID", "Label"] and len(rows) == 1001
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(1000)]
    assert {r[1] for r in rows[1:]} <= {"0", "1", "2", "3"}
    # predict (merged weights, a fresh load) agrees with the in-training evaluation
    truth = [int(r[0]) - 1 for r in csv.reader(test_rows)]
    acc = sum(int(r[1]) == y for r, y in zip(rows[1:], truth)) / 1000
    assert abs(acc - metrics["test"]["accuracy"]) <= 0.002
