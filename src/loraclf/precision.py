"""The precision policy: what each precision choice means on this device, asked by training, scoring, export
backends and the benchmark alike.

Choices are PRECISION_CHOICES. `auto` is bf16 on CUDA that supports it (else fp16), and on CPU bf16 only with native bf16
units (AMX or AVX512-BF16), since emulated bf16 is slower than fp32 there; fp16 on CPU falls back to fp32.
Measured per CPU kind (docs/performance.md): native bf16 trained and scored faster than fp32 on `amx` and on a real
`avx512-bf16` CPU, emulated bf16 was several times slower. Training and scoring each have their own setting
(train.precision, scoring.precision), resolved by the same rule.
Under bf16/fp16 matmuls run in autocast (`autocast_dtype`), frozen Linear weights are held in that dtype, and
bf16 scoring may cast the whole model (`casts_whole_model`). OpenVINO scores in fp32 or bf16 (`openvino_hint`).
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError, first_line

if TYPE_CHECKING:
    import torch

# torch is imported where it is used: the command line reads the choices before anything heavy is loaded
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
OPENVINO_CHOICES = ("auto", "fp32", "bf16")
# predict and serve may also score int8 (int8.py): opt-in, CPU only, the torch backend
SCORING_CHOICES = PRECISION_CHOICES + ("int8",)


# CPU kinds, fastest matmul units first: what decides whether bf16 is native and how CPU scoring batches
CPU_KINDS = ("amx", "avx512-bf16", "avx512", "avx2", "other")
# oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA) as the kind it leaves: a capped AMX CPU runs the kernels of the kind named
_ONEDNN_ISA_KIND = {"AVX512_CORE_AMX_FP16": "amx", "AVX512_CORE_AMX": "amx", "AVX10_1_512_AMX_FP16": "amx",
                    "AVX10_1_512_AMX": "amx", "AVX512_CORE_FP16": "avx512-bf16", "AVX10_1_512": "avx512-bf16",
                    "AVX512_CORE_BF16": "avx512-bf16", "AVX512_CORE_VNNI": "avx512", "AVX512_CORE": "avx512",
                    "AVX2_VNNI_2": "avx2", "AVX2_VNNI": "avx2", "AVX2": "avx2", "AVX": "other", "SSE41": "other"}


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return frozenset(line.partition(":")[2].split())


def cpu_kind() -> str:
    """This CPU's kind (CPU_KINDS) from its flags: amx (AMX bf16 tiles), avx512-bf16 (native bf16 dot products, no
    AMX), avx512, avx2 or other; lowered to oneDNN's ISA cap where ONEDNN_MAX_CPU_ISA sets one, since the
    kernels that run are then the cap's."""
    flags = _cpu_flags()
    if "amx_bf16" in flags and "amx_tile" in flags:
        kind = "amx"
    elif "avx512_bf16" in flags:
        kind = "avx512-bf16"
    elif {"avx512f", "avx512bw"} <= flags:
        kind = "avx512"
    elif "avx2" in flags:
        kind = "avx2"
    else:
        kind = "other"
    cap = _ONEDNN_ISA_KIND.get(os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper())
    return max(kind, cap, key=CPU_KINDS.index) if cap else kind


def cpu_has_native_bf16() -> bool:
    return cpu_kind() in ("amx", "avx512-bf16")


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


HALF_FIX = ("use fp32 or auto: --set train.precision=... and scoring.precision=... for a run, --precision for "
            "evaluate, predict and serve")


def resolve_for(precision: str, device, model_or_config) -> str:
    """resolve(), then fp32 for a model that cannot run under bf16/fp16 autocast: a family whose table row says so
    (families.Family.half_autocast), or an inferred family (no row) whose probe forward fails in that dtype
    (half_precision_problem). `auto` says so once, an explicit bf16 or fp16 is refused in one line."""
    from . import families
    resolved = resolve(precision, device)
    family = families.family_of(model_or_config)
    if resolved == "fp32" or family is None:
        return resolved
    if not family.half_autocast:
        why = f"transformers fills its attention mask with the fp32 minimum, which overflows {resolved}"
    else:
        problem = half_precision_problem(model_or_config, family, resolved)
        if problem is None:
            return resolved
        why = f"its forward fails under {resolved} autocast ({problem})"
    if precision != "auto":
        raise UserError(f"{family.name} cannot run in {resolved}: {why}", HALF_FIX)
    families.note_once(f"{family.name}: precision auto runs in fp32 here ({why})")
    return "fp32"


_PROBED: dict[tuple, str | None] = {}


def half_precision_problem(model, family, precision: str) -> str | None:
    """For an inferred family (no table row, so never checked): a two-row forward of `model` with its frozen
    weights in `precision` under autocast, as training and scoring run it. The first line of what it raised, or
    None when it runs (or when it cannot be tried: a config, a model on the meta device, a forward that fails in
    fp32 too). Asked once per model class and precision in a process."""
    import torch
    from . import families, fastpath
    if not family.name.endswith("(inferred)") or not isinstance(model, torch.nn.Module):
        return None
    try:
        param = next(model.parameters())
    except StopIteration:
        return None
    if param.device.type == "meta":
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    key = (type(base).__name__, getattr(base.config, "model_type", ""), precision)
    if key not in _PROBED:
        inputs = families.probe_batch(model, 8)

        def forward(dtype):
            cast = torch.autocast(device_type=param.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with torch.no_grad(), fastpath.frozen_weights_as(model, dtype), cast:
                model(**inputs)

        was_training = model.training
        model.eval()
        try:
            forward(autocast_dtype(precision))
            _PROBED[key] = None
        except Exception as e:  # whatever the model raises: it is told to the user, or it fails in fp32 as well
            try:
                forward(None)
                _PROBED[key] = (first_line(e, 160) or type(e).__name__).rstrip(".")
            except Exception:
                _PROBED[key] = None
        finally:
            model.train(was_training)
    return _PROBED[key]


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
