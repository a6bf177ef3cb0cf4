"""Scoring backends on a trained run, on this CPU: speed and accuracy side by side, alternated in one process.

    python bench/backends.py RUN --data test.csv [--rows 2000] [--rounds 3] [--backends int8,openvino,onnx] [--out FILE]

Rows, each scoring the same labelled rows through `loraclf predict`'s own predictor (scoring.load_predictor):
- torch, the precision `auto` resolves to on this CPU kind: the reference every ratio is against
- torch int8 (`--precision int8`): the encoder's linears quantized at load
- OpenVINO, from `loraclf export RUN --openvino DIR` (converted once; the export's seconds are shown apart)
- ONNX Runtime, from `loraclf export RUN --onnx DIR`, where onnxruntime is installed
Each backend is loaded and warmed once, then the rounds alternate between them; the table shows the median
rows/s, its ratio to the reference, test accuracy and its difference in points. A backend is offered as faster
on this CPU kind only where its ratio is above 1 and its accuracy is within --guard points of the reference's.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from loraclf import data, export, metrics, pipeline, precision, rundir, scoring  # noqa: E402
from loraclf.errors import UserError  # noqa: E402


def labelled_rows(run_path: Path, source: str, rows: int):
    """The run's class names and a fixed stratified subset (`rows`; 0: all) of a labelled file, read as the run
    reads test data."""
    run = rundir.RunDir.open(run_path)
    examples = pipeline.load_eval_data(run.config, [source], run.labels)
    if rows and rows < len(examples):
        _, examples = data.split(examples, rows, 0)
    return run.labels, examples


BACKENDS = ("int8", "openvino", "onnx")


def contenders(run: Path, tmp: Path, batch_size: int, which=BACKENDS) -> list[tuple[str, float, object]]:
    """(name, export seconds, predictor): torch in `auto`'s precision, then each of `which` this machine can run."""
    auto = precision.resolve("auto", "cpu")
    out = [(f"torch {auto} (auto)", 0.0, scoring.load_predictor(run, "torch", batch_size, "auto"))]
    if "int8" in which:
        out.append(("torch int8", 0.0, scoring.load_predictor(run, "torch", batch_size, "int8")))
    exports = [(f"openvino {precision.openvino_hint('auto')} (export)", "openvino", export.export_openvino, "auto"),
               ("onnxruntime fp32 (export)", "onnx", export.export_onnx, "fp32")]
    for name, backend, make, prec in (e for e in exports if e[1] in which):
        if not all(importlib.util.find_spec(m) for m in {"openvino": ("openvino",),
                                                         "onnx": ("onnx", "onnxruntime")}[backend]):
            print(f"{name}: not installed here, left out", flush=True)
            continue
        t0 = time.perf_counter()
        try:
            make(run, tmp / backend)
        except UserError as e:  # a family the exporter cannot take: the row is left out, with why
            print(f"{name}: left out ({e})", flush=True)
            continue
        out.append((name, time.perf_counter() - t0, scoring.load_predictor(tmp / backend, backend, batch_size, prec)))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a trained run directory")
    p.add_argument("--data", required=True, help="labelled data the run can read (e.g. AG News test.csv)")
    p.add_argument("--rows", type=int, default=2000, help="a fixed stratified subset of --data; 0: all rows")
    p.add_argument("--rounds", type=int, default=3, help="timed passes over the rows per backend, alternated")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--guard", type=float, default=0.3, help="accuracy points a faster backend may lose")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help=f"which to compare with torch, comma-separated (default: {','.join(BACKENDS)})")
    p.add_argument("--out", help="also write the result as JSON here")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.rows < 0 or args.batch_size < 1 or not 0 <= args.guard < 100:
        p.error("--rounds and --batch-size must be at least 1, --rows at least 0, --guard in [0, 100)")
    which = [b for b in args.backends.split(",") if b]
    if any(b not in BACKENDS for b in which):
        p.error(f"--backends takes {', '.join(BACKENDS)}")
    run = Path(args.run)
    names, examples = labelled_rows(run, args.data, args.rows)
    texts, labels = examples.texts, examples.labels
    kind = precision.cpu_kind()
    with tempfile.TemporaryDirectory(prefix="loraclf-backends-") as tmp:
        rows = []
        for name, export_s, predictor in contenders(run, Path(tmp), args.batch_size, which):
            t0 = time.perf_counter()
            predictor.load().logits(texts[:64])  # load and warm: conversion, compilation, first-call allocations
            rows.append({"backend": name, "export_s": round(export_s, 1),
                         "load_s": round(time.perf_counter() - t0, 1), "predictor": predictor, "seconds": []})
        for i in range(args.rounds):
            for r in rows:
                t0 = time.perf_counter()
                logits = r["predictor"].logits(texts)
                r["seconds"].append(time.perf_counter() - t0)
                if i == 0:
                    r["accuracy"] = 100 * metrics.classification(logits, labels, names)["accuracy"]
            print(f"round {i + 1}: " + "  ".join(f"{r['backend']} {len(texts) / r['seconds'][-1]:.1f}"
                                                 for r in rows), flush=True)
    ref = rows[0]
    ref_rate = len(texts) / statistics.median(ref["seconds"])
    print(f"\n{len(texts)} rows of {args.data}, {args.rounds} rounds, CPU kind {kind}, {torch.get_num_threads()} "
          f"threads; median rows/s\n")
    print("| backend | rows/s | vs reference | accuracy % | points | export s | load s | offered |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        r["rows_per_s"] = len(texts) / statistics.median(r["seconds"])
        r["ratio"] = r["rows_per_s"] / ref_rate
        r["points"] = r["accuracy"] - ref["accuracy"]
        r["offered"] = r is ref or (r["ratio"] > 1 and r["points"] >= -args.guard)
        print(f"| {r['backend']} | {r['rows_per_s']:.1f} | {r['ratio']:.2f}x | {r['accuracy']:.2f} | "
              f"{r['points']:+.2f} | {r['export_s']:.0f} | {r['load_s']:.0f} | "
              f"{'reference' if r is ref else 'yes' if r['offered'] else 'no'} |")
    if args.out:
        keep = [{k: v for k, v in r.items() if k != "predictor"} for r in rows]
        Path(args.out).write_text(json.dumps({"cpu_kind": kind, "rows": len(texts), "rounds": args.rounds,
                                              "data": args.data, "run": str(run), "backends": keep}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
