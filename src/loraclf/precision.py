"""The precision policy: what each precision choice means on this device, asked by training, scoring, export
backends and the benchmark alike.

Choices are PRECISION_CHOICES. `auto` is bf16 on CUDA that supports it (else fp16), and on CPU bf16 only with native bf16
units (AMX or AVX512-BF16), since emulated bf16 is slower than fp32 there; fp16 on CPU falls back to fp32.
Under bf16/fp16 matmuls run in autocast (`autocast_dtype`), frozen Linear weights are held in that dtype, and
bf16 scoring may cast the whole model (`casts_whole_model`). OpenVINO scores in fp32 or bf16 (`openvino_hint`).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: the command line reads the choices before anything heavy is loaded
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
OPENVINO_CHOICES = ("auto", "fp32", "bf16")


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve(precision: str, device) -> str:
    """A choice from PRECISION_CHOICES resolved for `device` to the precision that runs: "fp32", "bf16" or "fp16"."""
    if precision not in PRECISION_CHOICES:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISION_CHOICES)}",
                        f"use one of: {', '.join(PRECISION_CHOICES)}")
    import torch
    if torch.device(device).type == "cuda":
        if precision in ("auto", "bf16"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return precision
    if precision == "auto":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    return "fp32" if precision == "fp16" else precision


def auto_is_bf16(device) -> bool:
    """Whether `auto` means bf16 on `device` (native bf16 there)."""
    return resolve("auto", device) == "bf16"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; None for fp32."""
    import torch
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


@contextlib.contextmanager
def autocast(device, precision: str):
    """Autocast in a resolved precision's dtype where it has one; a no-op for fp32."""
    import torch
    dtype = autocast_dtype(precision)
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
        yield


def casts_whole_model(precision: str, full_cast: bool) -> bool:
    """Whether scoring casts the whole frozen model (scoring.bf16_full_cast): bf16 only, since fp16's range is too
    small for a residual stream."""
    return full_cast and precision == "bf16"


def to_accelerate(precision: str) -> str:
    """A resolved precision as Accelerate's mixed_precision setting."""
    return {"fp32": "no"}.get(precision, precision)


def from_accelerate(mixed_precision: str) -> str:
    """Accelerate's mixed_precision setting as a resolved precision."""
    return "fp32" if mixed_precision == "no" else mixed_precision


def openvino_hint(precision: str) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT type name ("bf16" or "f32") for a choice, resolved on the CPU."""
    if precision not in OPENVINO_CHOICES:
        raise UserError(f"--backend openvino scores in fp32 or bf16, not {precision}", "use --precision auto, fp32 or bf16")
    return {"bf16": "bf16", "fp32": "f32"}[resolve(precision, "cpu")]
