"""The benchmark's ratios for two versions of loraclf, alternated on this machine: did a change move them?

    python bench/before_after.py REV [--rounds 2] [--full] --agnews-dir DIR --roberta-dir DIR

REV (any git revision) is checked out into a temporary worktree; each round runs `--quick` (or the full
benchmark) once for REV and once for the working tree, alternating, each in its own process with the same
virtual environment. Before the harness moved out of the package the benchmark was `loraclf bench`; that is
what runs where REV has no bench/bench.py. Prints each run's five ratios and the median of each version's.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RATIOS = ("train_speedup_vs_report_a", "train_speedup_vs_trainer", "infer_speedup_vs_report_a",
          "infer_speedup_vs_trainer", "train_peak_fraction")
HEADS = ("train / report A", "train / Trainer", "score / report A", "score / Trainer.predict", "train / bf16 peak")


def bench_json(tree: Path, args, out_dir: Path) -> dict:
    """One benchmark run of the loraclf in `tree`; its result dict."""
    env = os.environ | {"PYTHONPATH": str(tree / "src")}
    opts = ["--json", "--out-dir", str(out_dir), "--agnews-dir", args.agnews_dir, "--roberta-dir", args.roberta_dir]
    opts += [] if args.full else ["--quick"]
    cmd = ([sys.executable, str(tree / "bench" / "bench.py")] if (tree / "bench" / "bench.py").is_file()
           else [sys.executable, "-m", "loraclf.cli", "bench"])
    out = subprocess.run(cmd + opts, cwd=tree, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the benchmark failed in {tree}:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout[out.stdout.index("{"):])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rev", help="the version to compare against (a git revision)")
    p.add_argument("--rounds", type=int, default=2, help="runs of each version, alternated")
    p.add_argument("--full", action="store_true", help="the full benchmark instead of --quick")
    p.add_argument("--agnews-dir", default=str(REPO.parent / "shared" / "data" / "ag_news"))
    p.add_argument("--roberta-dir", default=str(REPO.parent / "shared" / "models" / "roberta-base"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="loraclf-before-") as tmp:
        before = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.rev], cwd=REPO, check=True,
                       capture_output=True)
        try:
            runs = {"before": [], "after": []}
            for i in range(args.rounds):
                for name, tree in (("before", before), ("after", REPO)):
                    runs[name].append(bench_json(tree, args, Path(tmp)))
                    print(f"round {i + 1}, {name}: " + "  ".join(
                        f"{h} {runs[name][-1].get(k, float('nan')):.3g}" for h, k in zip(HEADS, RATIOS)), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, capture_output=True)
    print(f"\n| version | {' | '.join(HEADS)} |\n|---|" + "---:|" * len(HEADS))
    for name in ("before", "after"):
        meds = [statistics.median(r[k] for r in runs[name]) for k in RATIOS]
        label = f"{args.rev} (before)" if name == "before" else "working tree (after)"
        print(f"| {label} | " + " | ".join(f"{m:.3g}" for m in meds) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
