"""What this machine's kernels allow (`python bench/bench.py --levers --lever ceiling`, docs/performance.md).

Two measurements that bound the benchmark's targets from above, on the benchmark's own model and batches:

- training: the frozen matmuls of fit's step alone. A forward hook records the rows of every frozen nn.Linear
  call in the step (the first-token last layer's short calls included) and whether autograd needs that call's
  input gradient; then exactly those products (forward, and input gradient where needed) run back to back in
  the step's dtype, nothing else. However cheap everything around them became, the step cannot take less
  time, so the benchmark's nominal 4N FLOPs per non-padding token over that time bounds `train_peak_fraction`.
  The same products in two row halves each are timed too: oneDNN runs some batch-16 shapes on one of two
  threads (docs/performance.md, "split matmuls"), and the halves show how far that trick could lift the bound.
- scoring: loraclf's scoring against the same rows' frozen matmuls alone (the forward products only), against
  `Trainer.predict` as the benchmark runs it, and, where the optional `openvino` package is installed, against
  OpenVINO's CPU runtime (Intel's inference engine: fused transformer kernels, bf16 on AMX) on the same rows and
  batches: what the best-optimised runtime available for this CPU reaches, next to loraclf.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from contenders import hf_dataset, make_trainer, report_a_model, step_timer, trainer_args
from measure import infer_flops_per_token, matmul_peak, non_embedding_params, timed, train_flops_per_token


def frozen_linear_calls(model, step) -> list[tuple[int, int, int, bool]]:
    """(rows, in_features, out_features, input_needs_grad) of every frozen nn.Linear call during one `step()`,
    in call order. Trainable linears (a LoRA A/B, the head's) are not recorded."""
    calls, hooks = [], []

    def hook(module, args, _out):
        x = args[0]
        calls.append((x.numel() // x.shape[-1], module.in_features, module.out_features, bool(x.requires_grad)))
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.requires_grad:
            hooks.append(m.register_forward_hook(hook))
    try:
        step()
    finally:
        for h in hooks:
            h.remove()
    return calls


def _halves(rows: int) -> list[slice]:
    h = (rows // 2 + 7) // 8 * 8
    return [slice(0, h), slice(h, rows)] if 8 <= h < rows else [slice(0, rows)]


def matmul_pass(calls, dtype: torch.dtype, split: bool = False):
    """One pass over the calls' products: forward x @ W.T + b, and the input gradient g @ W (as autograd computes
    it for nn.Linear) where the call needs it. Operands are random and shared between calls of one shape (memory
    stays small; a shared operand is at most cache-warmer than the step's own, so the bound errs generous).
    `split`: each product in two row halves written into one output. `run(keep=True)` returns the outputs."""
    gen = torch.Generator().manual_seed(0)
    tensors = {}

    def operand(*shape):
        if shape not in tensors:
            tensors[shape] = (torch.randn(*shape, generator=gen) * 0.02).to(dtype)
        return tensors[shape]
    ops = []
    for rows, n_in, n_out, needs_grad in calls:
        w, b = operand(n_out, n_in), operand(n_out)
        ops.append((operand(rows, n_in), w.t(), b))
        if needs_grad:
            ops.append((operand(rows, n_out), w, None))

    def run(keep: bool = False) -> list[torch.Tensor]:
        outs = []
        for a, m, bias in ops:
            parts = _halves(a.shape[0]) if split else [slice(0, a.shape[0])]
            if len(parts) == 1:
                out = torch.addmm(bias, a, m) if bias is not None else torch.mm(a, m)
            else:
                out = torch.empty(a.shape[0], m.shape[1], dtype=dtype)
                for s in parts:
                    if bias is not None:
                        torch.addmm(bias, a[s], m, out=out[s])
                    else:
                        torch.mm(a[s], m, out=out[s])
            if keep:
                outs.append(out)
        return outs
    return run


def flops(calls) -> int:
    """What the pass computes: 2 * rows * in * out per product."""
    return sum(2 * r * i * o * (2 if g else 1) for r, i, o, g in calls)


def openvino_scorer(merged_model, encoded, pad_id: int, precision: str, max_rows: int, max_tokens: int):
    """A function scoring `encoded` as `loraclf predict --backend openvino` does (logits in input order), and the
    seconds the conversion and compilation took; (None, 0) where openvino is not installed."""
    import importlib.util
    from loraclf import scoring
    if importlib.util.find_spec("openvino") is None:
        return None, 0.0
    tick = time.perf_counter()
    request = scoring.openvino_compile(merged_model, precision)
    setup = time.perf_counter() - tick
    return (lambda: scoring.openvino_scores(request, encoded, pad_id, max_rows, max_tokens)), setup


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose predicted class is the same."""
    return float((a.argmax(1) == b.argmax(1)).mean())


def ceiling_lever(model, steps, tokens: int, many, scorer, trainer_side, fast: str, peak_size: int, record, log,
                  reps: int) -> None:
    """What the kernels allow (py): fit's fast step over `steps` (length-grouped batches of 16) against its
    frozen matmuls alone, as torch runs them and in row halves, with the fractions of the bf16 peak they imply
    for the benchmark's nominal 4N FLOPs per non-padding token; then loraclf's scoring of `many` against its
    matmuls alone, `Trainer.predict` as the benchmark runs it (`trainer_side`: tokenizer, the rows' texts,
    the Trainer contender's config; the dataset built beforehand) and, where installed, OpenVINO; alternated twice."""
    import shutil
    from loraclf import precision as precision_mod
    from loraclf import scoring
    dtype = precision_mod.autocast_dtype(fast) or torch.float32
    peak = matmul_peak("bf16" if fast == "bf16" else "fp32", peak_size)
    n = non_embedding_params(model)
    samples = 16 * len(steps)
    calls = [c for s in steps for c in frozen_linear_calls(model, s)]
    lever = f"ceiling ({fast} fast train, {len(steps)} batches)"

    def fraction(seconds):
        return train_flops_per_token(n) * tokens / seconds / peak
    for _ in range(2):
        step_s = timed(lambda: [s() for s in steps], reps)
        record(lever, "fit's whole step", step_s, samples, "samples")["fraction_of_peak"] = fraction(step_s)
        alone = record(lever, "its frozen matmuls alone", timed(matmul_pass(calls, dtype), reps), samples,
                       "samples")
        halves = record(lever, "the same in row halves", timed(matmul_pass(calls, dtype, split=True), reps),
                        samples, "samples")
        for row in (alone, halves):
            row["fraction_of_peak"] = fraction(row["seconds"])
            row["own_flops_fraction_of_peak"] = flops(calls) / row["seconds"] / peak  # padded rows included
        log(f"  -> step {fraction(step_s):.1%} of the {fast} peak ({peak / 1e9:,.0f} GFLOP/s); matmuls alone "
            f"{alone['fraction_of_peak']:.1%}, in halves {halves['fraction_of_peak']:.1%} (counting their own FLOPs, "
            f"padding included: {alone['own_flops_fraction_of_peak']:.1%}, {halves['own_flops_fraction_of_peak']:.1%}); "
            f"matmuls' share of the step {alone['seconds'] / step_s:.0%}")
    tok, texts, trainer_cfg = trainer_side
    pad_id = tok.pad_token_id
    work = Path(tempfile.mkdtemp(prefix="loraclf-ceiling-"))
    ds = hf_dataset(tok, texts, None, trainer_cfg.data.max_length)
    args, _ = trainer_args(work, trainer_cfg, 1, trainer_cfg.scoring.batch_size, trainer_cfg.train.seed)
    trainer = make_trainer(report_a_model(trainer_cfg), args, ds, tok, step_timer())
    merged = model.merge_and_unload().eval()
    go = scorer(merged)
    scoring_calls = frozen_linear_calls(merged, go)
    ov_score, setup = openvino_scorer(merged, many, pad_id, fast, 64, scoring.cpu_scoring_tokens())
    lever = f"ceiling ({fast} scoring, merged, {len(many)} rows)"
    if ov_score is None:
        log('  OpenVINO: not installed (pip install -e ".[openvino]"), its scoring row skipped')
    else:  # loraclf's logits only to compare OpenVINO's with
        with torch.inference_mode():
            reference = scoring.predict_logits(merged, many, 64, pad_id, torch.device("cpu"), fast,
                                               max_tokens=scoring.cpu_scoring_tokens(), full_cast=True)
        ov_logits = ov_score()
        log(f"  OpenVINO: converted and compiled in {setup:.1f} s; its predictions agree with loraclf's on "
            f"{agreement(ov_logits, reference):.2%} of the rows; logits differ by at most "
            f"{np.abs(ov_logits - reference).max():.3g} (loraclf's own spread: {np.ptp(reference):.3g})")
    for _ in range(2):
        mine = record(lever, "loraclf predict's scoring", timed(go, max(1, reps - 1)), len(many), "rows")
        with torch.inference_mode():
            bound = record(lever, "its frozen matmuls alone", timed(
                matmul_pass(scoring_calls, dtype), max(1, reps - 1)), len(many), "rows")
        for row in (mine, bound):
            row["fraction_of_peak"] = infer_flops_per_token(n) * int(many.lengths.sum()) / row["seconds"] / peak
        theirs = record(lever, "Trainer.predict (bf16_full_eval where bf16)", timed(
            lambda: trainer.predict(ds), max(1, reps - 1)), len(many), "rows")
        ov = (record(lever, "predict --backend openvino", timed(ov_score, max(1, reps - 1)), len(many), "rows")
              if ov_score is not None else None)
        log(f"  -> over Trainer.predict: loraclf {theirs['seconds'] / mine['seconds']:.2f}x, its matmuls alone "
            f"{theirs['seconds'] / bound['seconds']:.2f}x ({bound['fraction_of_peak']:.1%} of the {fast} peak)"
            + (f", OpenVINO {theirs['seconds'] / ov['seconds']:.2f}x" if ov else ""))
    shutil.rmtree(work, ignore_errors=True)
