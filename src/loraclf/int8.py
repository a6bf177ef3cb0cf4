"""INT8 scoring on CPU (`--precision int8` for predict and serve): the merged encoder's linear layers with int8
weights (one scale per output channel) and activations quantized per batch (torch's dynamic quantization on its
fbgemm/x86 kernels); the feed-forward's output projections stay fp32 (quantized_linears).

Opt-in and scoring-only: it changes the numbers, so nothing picks it by itself. The classifier head stays in
fp32. docs/performance.md has its measured speed and accuracy against fp32 per CPU kind
(`python bench/backends.py RUN --data FILE --backends int8`).
"""
from __future__ import annotations

import warnings

from .errors import UserError

PRECISION = "int8"


def check_device(device) -> None:
    import torch
    if torch.device(device).type != "cpu":
        raise UserError("int8 scoring runs on the CPU only, and this process sees a GPU",
                        "use --precision auto on a GPU, or hide it (CUDA_VISIBLE_DEVICES=) to score int8 on the CPU")


def quantized_engines() -> list[str]:
    import torch
    return list(torch.backends.quantized.supported_engines)


def quantize(model):
    """`model` (a merged sequence classifier, eval mode) with its encoder's quantized_linears replaced by
    dynamically quantized int8 ones, in place; the head keeps its fp32 layers. Returns the model."""
    import torch
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:  # torch moves eager quantization to torchao: say so instead of a traceback
        raise UserError(f"this torch ({torch.__version__}) has no dynamic int8 quantization ({e})",
                        "score in fp32 or bf16 (--precision auto), or install the torch version in pyproject.toml")
    engines = quantized_engines()
    if not any(e in engines for e in ("x86", "fbgemm", "onednn")):
        raise UserError(f"this torch build has no x86 int8 kernels (engines: {', '.join(engines)})",
                        "score in fp32 or bf16 (--precision auto)")
    encoder = model.base_model
    if encoder is model:
        raise UserError(f"{type(model).__name__} has no separate encoder to quantize",
                        "score in fp32 or bf16 (--precision auto)")
    with warnings.catch_warnings():  # torch marks eager quantization deprecated in favour of torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig
        quantize_dynamic(encoder.eval(), {name: per_channel_dynamic_qconfig for name in quantized_linears(encoder)},
                         dtype=torch.qint8, inplace=True)
    return model


def quantized_linears(encoder) -> list[str]:
    """The encoder's linear layers that go to int8: all but the ones that narrow (in_features > out_features),
    which in every family are the feed-forward's output projection. Those read the activation after GELU, whose
    few large outliers one int8 scale per row cannot hold: on MPNet-base quantizing them too cost 2.3 points of
    accuracy, keeping them fp32 0.5 (docs/performance.md). Weights get one scale per output channel."""
    import torch
    return [name for name, m in encoder.named_modules()
            if type(m) is torch.nn.Linear and m.in_features <= m.out_features]
