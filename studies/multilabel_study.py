"""Multi-label AG News: two articles of different classes in one row, labelled with both classes.

Rows are built deterministically (--pair-seed) from the shared AG News pool (training, a JSONL file with list
labels) and from the original test set (scoring, a CSV file with "World|Sports" labels): each row takes one unused
article from each of two different classes (the pair of classes drawn uniformly), in random order. MiniLM (the
agnews-quick preset with data.task=multi_label, 1 epoch) is compared with TF-IDF + one-vs-rest logistic regression
trained on the same training rows; both tune per-label thresholds on the same validation rows (the run's split)
and are also scored at a plain 0.5.

    .venv/bin/python studies/multilabel_study.py            # the committed table; rewrites results/multilabel-study.*
    .venv/bin/python studies/multilabel_study.py --train-rows 400 --test-rows 200 --seeds 0

Each run's metrics are appended to --out (JSON lines); an interrupted study resumes, and the markdown table
(mean +- sample std over seeds) is rewritten after every run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402

from loraclf import config, data, multilabel, pipeline  # noqa: E402

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
METRICS = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")
# MiniLM rows: the agnews-quick preset (batch 32) with these overrides on top of overrides() below
VARIANTS = {"minilm": [], "minilm-batch16": ["train.batch_size=16"]}
MODELS = ("tfidf-ovr-logreg", *VARIANTS)


def pairs(examples, n: int, seed: int) -> list[dict]:
    """n rows of two articles of different classes, each article used once."""
    rng = random.Random(seed)
    by_class = {k: [i for i, y in enumerate(examples.labels) if y == k] for k in range(len(LABELS))}
    for rows in by_class.values():
        rng.shuffle(rows)
    combos = [(a, b) for a in range(len(LABELS)) for b in range(a + 1, len(LABELS))]
    out = []
    while len(out) < n:
        a, b = rng.choice(combos)
        if not by_class[a] or not by_class[b]:
            if sum(1 for c in combos if by_class[c[0]] and by_class[c[1]]) == 0:
                raise SystemExit(f"only {len(out)} pairs can be made; ask for fewer rows")
            continue
        first, second = by_class[a].pop(), by_class[b].pop()
        if rng.random() < 0.5:
            first, second = second, first
        out.append({"id": f"p{len(out)}", "text": examples.texts[first] + " " + examples.texts[second],
                    "label": [LABELS[a], LABELS[b]]})
    return out


def build_data(args, folder: Path) -> tuple[Path, Path]:
    pool = data.load_many([str(args.agnews / "train_pool.csv"), str(args.agnews / "train_pool_text.csv")],
                          label_names=LABELS)
    test = data.load(str(args.agnews / "test.csv"), label_names=LABELS, split="test")
    folder.mkdir(parents=True, exist_ok=True)
    train_path, test_path = folder / "train.jsonl", folder / "test.csv"
    train_path.write_text("".join(json.dumps(r) + "\n" for r in pairs(pool, args.train_rows, args.pair_seed)))
    import csv
    with open(test_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        for r in pairs(test, args.test_rows, args.pair_seed + 1):
            w.writerow([r["id"], r["text"], "|".join(r["label"])])
    return train_path, test_path


def overrides(args, seed: int) -> list[str]:
    return ["data.task=multi_label", f"train.epochs={args.epochs}", f"data.max_length={args.max_length}",
            "data.val_size=0.1", "train.eval_every=0", f"train.seed={seed}"]


def scores(logits, labels, thresholds) -> dict:
    m = multilabel.metrics(logits, labels, LABELS, thresholds)
    return {k: m[k] for k in METRICS}


def run_minilm(args, seed: int, train_path: Path, test_path: Path, variant: str = "minilm") -> dict:
    out = args.runs / f"{variant}-seed{seed}"
    cfg = config.load("agnews-quick", None, overrides(args, seed) + VARIANTS[variant])
    t0 = time.perf_counter()
    result = pipeline.train_run(cfg, [str(train_path)], out, test_data=[str(test_path)], overwrite=True,
                                log=lambda *a, **k: None)
    wall = time.perf_counter() - t0
    test = pipeline.load_eval_data(cfg, [str(test_path)], LABELS)
    probs = _probs(out / "predictions.csv")  # the run's test probabilities, to score them at 0.5 too
    logits = np.log(probs) - np.log1p(-probs)
    tuned = multilabel.read_thresholds(out, LABELS)
    return {"model": variant, "seed": seed, "trainable": result["budget"]["trainable"], "wall_s": round(wall, 1),
            "train_s": result["train"]["train_seconds"], "thresholds": tuned,
            "tuned": {k: result["test"][k] for k in METRICS}, "at_0.5": scores(logits, test.labels, [0.5] * 4)}


def _probs(path: Path) -> np.ndarray:
    import csv
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    p = np.array([[float(r[f"p_{n}"]) for n in LABELS] for r in rows])
    return np.clip(p, 1e-7, 1 - 1e-7)


def run_tfidf(args, seed: int, train_path: Path, test_path: Path) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    cfg = config.load("agnews-quick", None, overrides(args, seed))
    train, val = pipeline.load_training_data(cfg, [str(train_path)])  # the run's own train/validation split
    test = pipeline.load_eval_data(cfg, [str(test_path)], LABELS)
    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    clf = OneVsRestClassifier(LogisticRegression(C=10.0, max_iter=2000))
    clf.fit(vec.fit_transform(train.texts), np.asarray(train.labels))
    val_logits = clf.decision_function(vec.transform(val.texts))
    logits = clf.decision_function(vec.transform(test.texts))
    tuned = multilabel.tune_thresholds(val_logits, val.labels)
    return {"model": "tfidf-ovr-logreg", "seed": seed, "trainable": None, "wall_s": round(time.perf_counter() - t0, 1),
            "thresholds": tuned, "tuned": scores(logits, test.labels, tuned),
            "at_0.5": scores(logits, test.labels, [0.5] * 4)}


def summarize(rows: list[dict], args) -> str:
    def ms(values, pct=True):
        values = [100 * v if pct else v for v in values]
        if len(values) == 1:
            return f"{values[0]:.2f}" if pct else f"{values[0]:.4f}"
        mean, sd = statistics.mean(values), statistics.stdev(values)
        return f"{mean:.2f} ± {sd:.2f}" if pct else f"{mean:.4f} ± {sd:.4f}"
    lines = [f"Multi-label AG News pairs: {args.train_rows} training rows (10% validation), {args.test_rows} test rows, "
             f"2 labels a row; {args.epochs} epoch(s), max_length {args.max_length}.", "",
             "| model | thresholds | seeds | micro-F1 % | macro-F1 % | samples-F1 % | subset accuracy % | hamming loss |",
             "|---|---|---:|---|---|---|---|---|"]
    for model in MODELS:
        mine = [r for r in rows if r["model"] == model]
        for kind, label in (("tuned", "tuned on validation"), ("at_0.5", "0.5")):
            if mine:
                lines.append(f"| {model} | {label} | {len(mine)} | "
                             + " | ".join(ms([r[kind][k] for r in mine], k != "hamming_loss") for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agnews", type=Path, default=Path(os.environ.get("AGNEWS_DIR", REPO.parent / "shared/data/ag_news")))
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--test-rows", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated rows to run, of: {', '.join(MODELS)}")
    p.add_argument("--pair-seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=REPO / "runs" / "multilabel-study")
    p.add_argument("--out", type=Path, default=REPO / "studies" / "results" / "multilabel-study.jsonl")
    args = p.parse_args(argv)
    args.runs = args.work / "runs"
    train_path, test_path = build_data(args, args.work / "data")
    done = [json.loads(x) for x in args.out.read_text().splitlines() if x.strip()] if args.out.is_file() else []
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        for model in [m for m in args.models.split(",") if m]:
            if model not in MODELS:
                raise SystemExit(f"unknown model {model!r}; choose from {', '.join(MODELS)}")
            if any(r["model"] == model and r["seed"] == seed for r in done):
                continue
            row = run_tfidf(args, seed, train_path, test_path) if model == "tfidf-ovr-logreg" \
                else run_minilm(args, seed, train_path, test_path, model)
            print(json.dumps(row), flush=True)
            done.append(row)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text("".join(json.dumps(r) + "\n" for r in done))
            args.out.with_suffix(".md").write_text(summarize(done, args))
    print(summarize(done, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
