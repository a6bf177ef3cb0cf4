"""The precision policy (precision.py): what each choice resolves to per device kind, and that the other modules
take their choices and decisions from it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from loraclf import cli, config, precision
from loraclf.errors import UserError

SRC = Path(precision.__file__).parent


@pytest.mark.parametrize("choice, device, cuda_bf16, native_bf16, expected", [
    ("auto", "cuda", True, False, "bf16"),
    ("auto", "cuda", False, True, "fp16"),
    ("bf16", "cuda", False, False, "fp16"),
    ("fp16", "cuda", True, False, "fp16"),
    ("fp32", "cuda", True, True, "fp32"),
    ("auto", "cpu", True, True, "bf16"),
    ("auto", "cpu", True, False, "fp32"),
    ("bf16", "cpu", False, False, "bf16"),
    ("fp16", "cpu", True, True, "fp32"),
    ("fp32", "cpu", True, True, "fp32"),
])
def test_resolution_table(monkeypatch, choice, device, cuda_bf16, native_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native_bf16)
    assert precision.resolve(choice, device) == expected
    assert precision.resolve(choice, torch.device(device)) == expected
    assert precision.auto_is_bf16(device) == (precision.resolve("auto", device) == "bf16")


AMX = {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx512bw", "avx2"}
ZEN4 = {"avx512_bf16", "avx512f", "avx512bw", "avx2"}
ICE_LAKE = {"avx512f", "avx512bw", "avx2"}


@pytest.mark.parametrize("flags, cap, kind", [
    (AMX, None, "amx"),
    (AMX, "AVX512_CORE_BF16", "avx512-bf16"),   # oneDNN held to the non-AMX kernels: that kind's choices
    (AMX, "avx512_core", "avx512"),
    (AMX, "AVX2", "avx2"),
    (ZEN4, None, "avx512-bf16"),
    (ICE_LAKE, None, "avx512"),
    ({"avx2", "fma"}, None, "avx2"),
    ({"avx2"}, "AVX512_CORE_AMX", "avx2"),      # a cap lowers the kind, never raises it
    ({"avx2"}, "ALL", "avx2"),
    (set(), None, "other"),
])
def test_cpu_kind_from_flags_and_onednn_cap(monkeypatch, flags, cap, kind):
    from loraclf import scoring
    monkeypatch.setattr(precision, "_cpu_flags", lambda: frozenset(flags))
    if cap:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    else:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert precision.cpu_kind() == kind
    assert precision.resolve("auto", "cpu") == ("bf16" if kind in ("amx", "avx512-bf16") else "fp32")
    assert scoring.scoring_tokens(-1, "cpu") == scoring.CPU_SCORING_TOKENS[kind] == (2048 if kind == "amx" else 1024)


def test_this_machines_cpu_kind_is_one_of_the_kinds():
    from loraclf import scoring
    assert precision.cpu_kind() in precision.CPU_KINDS
    assert set(scoring.CPU_SCORING_TOKENS) == set(precision.CPU_KINDS)  # every kind has its cap


def test_unknown_choice_is_a_user_error():
    with pytest.raises(UserError, match="not one of auto, fp32, bf16, fp16"):
        precision.resolve("int8", "cpu")


@pytest.mark.parametrize("resolved, dtype, whole_if_asked, mixed", [
    ("fp32", None, False, "no"), ("bf16", torch.bfloat16, True, "bf16"), ("fp16", torch.float16, False, "fp16")])
def test_dtypes_whole_model_cast_and_accelerate(resolved, dtype, whole_if_asked, mixed):
    assert precision.autocast_dtype(resolved) is dtype
    assert precision.casts_whole_model(resolved, True) is whole_if_asked
    assert precision.casts_whole_model(resolved, False) is False
    assert precision.to_accelerate(resolved) == mixed and precision.from_accelerate(mixed) == resolved


@pytest.mark.parametrize("resolved", ["fp32", "bf16"])
def test_autocast_runs_matmuls_in_the_precisions_dtype(resolved):
    a = torch.randn(4, 8)
    with precision.autocast("cpu", resolved):
        out = torch.nn.functional.linear(a, torch.randn(3, 8))
    assert out.dtype == (precision.autocast_dtype(resolved) or torch.float32)


@pytest.mark.parametrize("choice, kind, hint", [
    ("auto", "amx", "bf16"), ("auto", "avx512-bf16", "bf16"), ("auto", "avx2", "f32"), ("bf16", "avx2", "bf16"),
    ("fp32", "amx", "f32")])
def test_openvino_hint(monkeypatch, choice, kind, hint):
    monkeypatch.setattr(precision, "cpu_kind", lambda: kind)
    assert precision.openvino_hint(choice) == hint


def test_openvino_refuses_fp16():
    with pytest.raises(UserError, match="fp32 or bf16, not fp16"):
        precision.openvino_hint("fp16")


def test_every_choice_list_is_the_policys():
    assert config.CHOICES["train.precision"] is precision.PRECISION_CHOICES
    assert config.CHOICES["scoring.precision"] is precision.PRECISION_CHOICES
    parser = cli.parser()
    subs = [a for a in parser._actions if a.dest == "command"][0].choices
    for command in ("predict", "serve"):
        (opt,) = [a for a in subs[command]._actions if a.dest == "precision"]
        assert tuple(opt.choices) == precision.SCORING_CHOICES and opt.default == "auto"
    assert precision.SCORING_CHOICES == precision.PRECISION_CHOICES + ("int8",)
    (opt,) = [a for a in subs["evaluate"]._actions if a.dest == "precision"]
    assert tuple(opt.choices) == precision.PRECISION_CHOICES and opt.default is None  # None: the run's own


def test_no_other_module_decides_precision():
    """What `auto` means (native bf16 flags, CUDA's bf16 support) and the autocast dtypes are read only here."""
    decisions = re.compile(r"amx_bf16|avx512_bf16|is_bf16_supported|torch\.autocast\(device_type=[^,]+, dtype=")
    offenders = [p.name for p in SRC.glob("*.py") if p.name != "precision.py" and decisions.search(p.read_text())]
    assert offenders == []


def test_a_run_trains_and_scores_each_in_its_own_precision(monkeypatch, tiny_bert, small_csv, tmp_path):
    """train.precision=auto (bf16 on this CPU kind) and scoring.precision=fp32: the run's config records both, its
    test figures come from fp32 scoring, and `evaluate` (the run's scoring.precision by default) reproduces them."""
    import json
    from conftest import tiny_config
    from loraclf import pipeline
    monkeypatch.setattr(precision, "cpu_kind", lambda: "avx512-bf16")
    out = tmp_path / "run"
    result = pipeline.train_run(tiny_config(tiny_bert, "scoring.precision=fp32"), [str(small_csv)], out,
                                test_data=[str(small_csv)],
                                log=lambda *a, **k: None)
    r = json.loads((out / "config.json").read_text())["resolved"]
    assert (r["cpu_kind"], r["train.precision"], r["scoring.precision"], r["scoring.bf16_full_cast"]) == \
        ("avx512-bf16", "bf16", "fp32", False)
    again = pipeline.evaluate_run(out, [str(small_csv)])
    # to fp32 rounding (evaluate merges the adapter into the weights): bf16 autocast left on the trained model's
    # forward moved this loss by 8e-6, the merge by 2e-10
    assert (again["accuracy"], again["confusion"]) == (result["test"]["accuracy"], result["test"]["confusion"])
    assert again["loss"] == pytest.approx(result["test"]["loss"], rel=1e-8, abs=0)
