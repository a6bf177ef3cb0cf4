"""Which linear layers int8 scoring may quantize, and how: accuracy and time of each variant on a trained run.

    python bench/int8_variants.py RUN --data test.csv [--rows 400]

Variants of torch's dynamic int8 quantization over the run's merged encoder, each scored on the same fixed
stratified rows as fp32: every linear with one weight scale per tensor, every linear with one scale per output
channel, and both again with the narrowing linears (in_features > out_features: the feed-forward's output
projection) kept in fp32. `--precision int8` uses the variant chosen from this (loraclf/int8.py).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import torch  # noqa: E402
from backends import labelled_rows  # noqa: E402

from loraclf import int8, metrics, scoring  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", help="a trained run directory")
    p.add_argument("--data", required=True, help="labelled data the run can read (e.g. AG News test.csv)")
    p.add_argument("--rows", type=int, default=400, help="a fixed stratified subset of --data; 0: all rows")
    args = p.parse_args(argv)
    if args.rows < 0:
        p.error("--rows must be at least 0")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig
    names, examples = labelled_rows(Path(args.run), args.data, args.rows)

    model, tok, cfg, _ = scoring.load_for_inference(args.run)

    def score(model, tok):
        t0 = time.perf_counter()
        logits = scoring.logits_for(model, tok, examples.texts, scoring.infer_length(cfg), precision="fp32")
        return logits, time.perf_counter() - t0

    ref, ref_s = score(model, tok)
    ref_acc = 100 * metrics.classification(ref, examples.labels, names)["accuracy"]
    print(f"{len(examples.texts)} rows, {torch.get_num_threads()} threads\n")
    print("| variant | accuracy % | points | same prediction as fp32 | seconds | speed vs fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| fp32 | {ref_acc:.2f} | +0.00 | 100.0% | {ref_s:.0f} | 1.00x |", flush=True)
    linears = [n for n, m in model.base_model.named_modules() if type(m) is torch.nn.Linear]
    narrowing = set(linears) - set(int8.quantized_linears(model.base_model))  # what --precision int8 keeps fp32
    for label, qconfig, keep in (("every linear, per tensor", default_dynamic_qconfig, set()),
                                 ("every linear, per channel", per_channel_dynamic_qconfig, set()),
                                 ("narrowing linears fp32, per tensor", default_dynamic_qconfig, narrowing),
                                 ("narrowing linears fp32, per channel", per_channel_dynamic_qconfig, narrowing)):
        m, tok, _, _ = scoring.load_for_inference(args.run)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.quantization import quantize_dynamic
            quantize_dynamic(m.base_model, {n: qconfig for n in linears if n not in keep}, dtype=torch.qint8,
                             inplace=True)
        logits, s = score(m, tok)
        acc = 100 * metrics.classification(logits, examples.labels, names)["accuracy"]
        same = 100 * float((logits.argmax(1) == ref.argmax(1)).mean())
        print(f"| {label} | {acc:.2f} | {acc - ref_acc:+.2f} | {same:.1f}% | {s:.0f} | {ref_s / s:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
