"""What this machine's kernels allow (`loraclf bench --levers --lever ceiling`, bench/NOTES.md).

Two measurements that bound the benchmark's targets from above, on the benchmark's own model and batches:

- training: the frozen matmuls of fit's step alone. A forward hook records the rows of every frozen nn.Linear
  call in the step (the first-token last layer's short calls included) and whether autograd needs that call's
  input gradient; then exactly those products (forward, and input gradient where needed) run back to back in
  the step's dtype, nothing else. However cheap everything around them became, the step cannot take less
  time, so the benchmark's nominal 4N FLOPs per non-padding token over that time bounds `train_peak_fraction`.
  The same products in two row halves each are timed too: oneDNN runs some batch-16 shapes on one of two
  threads (NOTES, "split matmuls"), and the halves show how far that trick could lift the bound.
- scoring: loraclf's scoring against the same rows' frozen matmuls alone (the forward products only), against
  `Trainer.predict` as the benchmark runs it, and, where the optional `openvino` package is installed, against
  OpenVINO's CPU runtime (Intel's inference engine: fused transformer kernels, bf16 on AMX) on the same rows and
  batches: what the best-optimised runtime available for this CPU reaches, next to loraclf.
"""
from __future__ import annotations

import time

import numpy as np
import torch


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
    from . import scoring
    if importlib.util.find_spec("openvino") is None:
        return None, 0.0
    tick = time.perf_counter()
    request = scoring.openvino_compile(merged_model, precision)
    setup = time.perf_counter() - tick
    return (lambda: scoring.openvino_scores(request, encoded, pad_id, max_rows, max_tokens)), setup


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose predicted class is the same."""
    return float((a.argmax(1) == b.argmax(1)).mean())

