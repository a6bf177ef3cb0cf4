"""The benchmark harness (bench/) on a tiny random RoBERTa (2 layers, hidden 32): FLOP counting, the JSON
schema, report A's padding, a --quick-like smoke run, the CUDA path (skipped without a GPU), and the library
carrying none of it."""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # the harness's modules import each other as siblings, as when run as a script

import bench  # noqa: E402
import contenders  # noqa: E402
import levers as bench_levers  # noqa: E402
import measure  # noqa: E402
import rows as bench_rows  # noqa: E402
import summary  # noqa: E402

TINY_MAX = 64  # the tiny model has 130 positions; every contender gets data.max_length=64


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, roberta_dir) -> Path:
    """A 2-layer, hidden-32 RobertaConfig saved with the real roberta-base tokenizer."""
    from transformers import AutoTokenizer, RobertaConfig
    tok = AutoTokenizer.from_pretrained(str(roberta_dir))
    out = tmp_path_factory.mktemp("bench-tiny")
    RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=132, pad_token_id=tok.pad_token_id, bos_token_id=0, eos_token_id=2,
                  type_vocab_size=1).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


def _opts(tiny_dir, agnews_dir, out_dir, **kw) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    bench.add_args(ap)
    args = ap.parse_args(["--quick", "--agnews-dir", str(agnews_dir), "--roberta-dir", str(tiny_dir),
                          "--out-dir", str(out_dir), "--no-guard", "--in-process", "--set", f"data.max_length={TINY_MAX}",
                          "--infer-rows", "24", "--report-a-infer-rows", "4", "--peak-size", "128"])
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_non_embedding_params_and_flops(tiny_dir):
    cfg = contenders.bench_config(str(tiny_dir), "loraclf", [f"data.max_length={TINY_MAX}"])
    from loraclf import model as model_mod
    model = model_mod.build(cfg, contenders.LABELS)
    n = measure.non_embedding_params(model)
    emb = sum(p.numel() for name, p in model.named_parameters() if "embeddings." in name and "LayerNorm" not in name)
    head = sum(p.numel() for name, p in model.named_parameters() if "classifier" in name)
    total = sum(p.numel() for p in model.parameters())
    assert n == total - emb - head
    h, i, layers, r = 32, 37, 2, cfg.adapter.r
    per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h + 3 * 2 * r * h  # attn, ffn, 2 LN, LoRA q/k/v
    assert n == layers * per_layer + 2 * h  # + the embeddings' LayerNorm
    assert measure.train_flops_per_token(n) == 4 * n
    assert measure.infer_flops_per_token(n) == 2 * n


def test_report_a_pads_to_configured_length(tiny_dir):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    ids, mask, labels = contenders.report_a_tensors(tok, ["short text", "a somewhat longer text " * 3], [0, 1], 48)
    assert ids.shape == (2, 48) and mask.shape == (2, 48)
    assert int(mask[0].sum()) < 48 and labels.tolist() == [0, 1]
    cfg = contenders.bench_config(str(tiny_dir), "report_a", ["data.max_length=48"])
    model = contenders.report_a_model(cfg)
    r = contenders.run_report_a_train(model, cfg, ids.repeat(8, 1), mask.repeat(8, 1), labels.repeat(8), 0, 1,
                                 torch.device("cpu"))
    assert r["padded_width"] == 48 and r["steps"] == 1 and r["samples"] == 16 and r["precision"] == "fp32"
    assert r["tokens"] == int(mask.repeat(8, 1).sum())
    inf = contenders.run_report_a_infer(model, tok, ["one", "two words"], 48, 16, torch.device("cpu"))
    assert inf["padded_width"] == 48 and inf["rows"] == 2


def test_summary_schema_and_speedups():
    def run(c, sps, rps, tokens_per_sample=50):
        return {"contender": c, "non_embedding_params": 1000, "peak_rss_mb": 100.0, "rss_setup_mb": 50.0,
                "train": {"samples": 16, "tokens": 16 * tokens_per_sample, "seconds": 16 / sps, "steps": 1, "precision": "fp32"},
                "infer": {"rows": 10, "tokens": 500, "seconds": 10 / rps, "batch_size": 16}}
    runs = [run("loraclf", 8, 40), run("loraclf", 10, 60), run("report_a", 1, 2), run("trainer", 5, 20)]
    res = summary.summarize(runs, {"fp32_flops_per_s": 1e6, "bf16_flops_per_s": 2.5e5}, {"repeats": 2})
    for key in summary.REQUIRED_KEYS:
        assert key in res
    assert res["train_speedup_vs_report_a"] == pytest.approx(9.0)     # median 9 samples/s vs 1
    assert res["train_speedup_vs_trainer"] == pytest.approx(9 / 5)
    assert res["infer_speedup_vs_report_a"] == pytest.approx(25.0)    # median 50 rows/s vs 2
    assert res["infer_speedup_vs_trainer"] == pytest.approx(2.5)
    achieved = 9 * 50 * 4 * 1000                                      # tokens/s * 4N
    assert res["train_peak_fraction"] == pytest.approx(achieved / 1e6)  # the machine's (faster) peak
    assert res["train_fraction_of_bf16_peak"] == pytest.approx(achieved / 2.5e5)
    assert set(res["targets"]) == set(summary.TARGETS)


def test_matmul_peak_positive():
    assert measure.matmul_peak("fp32", size=64, repeats=2) > 0
    assert measure.matmul_peak("bf16", size=64, repeats=2) > 0


def test_warmup_rows_are_the_longest_timed_rows():
    lengths = [10, 50, 20, 90, 30, 70, 40, 60, 80, 5]
    rows = bench_rows.train_spec_rows(list(range(10)), lengths, warmup_steps=1, steps=3, bs=2)
    assert rows[2:] == [2, 3, 4, 5, 6, 7]                      # timed: the same rows as before, after the warmup's
    assert rows[:2] == [3, 5]                                   # warmup: the two longest of those (90, 70)
    assert bench_rows.train_spec_rows(list(range(10)), lengths, 0, 3, 2) == [0, 1, 2, 3, 4, 5]


def test_levers_measure_every_lever(tiny_dir, agnews_dir, tmp_path):
    rows = bench_levers.levers(_opts(tiny_dir, agnews_dir, tmp_path, infer_rows=16, repeats=1), log=lambda *a, **k: None)
    levers = {r["lever"] for r in rows}
    assert {"precision (train step)", "padding (inference)", "bf16 inference weights", "merged LoRA (inference)",
            "encoder dropout (train step)", "adapted layers (train step)", "threads (train step)"} <= levers
    assert all(r["seconds"] > 0 for r in rows)
    assert {r["variant"] for r in rows if r["lever"] == "adapted layers (train step)"} == {"all 2", "top 1 only"}
    from loraclf.precision import cpu_has_native_bf16
    n_precisions = 2 if cpu_has_native_bf16() else 1                 # bf16 where it is native, and fp32
    assert len([r for r in rows if r["lever"].startswith("scoring batches")]) == 4 * n_precisions
    assert len([r for r in rows if r["lever"].startswith("dropout apply")]) == 2
    last = [r["variant"] for r in rows if r["lever"].startswith("last layer")]     # scoring.cls_only_last_layer
    assert last == ["every row", "first token only"] * 6                # train median, longest; inference; twice each
    padding = [r["variant"][-1] for r in rows if r["lever"].startswith("padding multiple")]   # data.PAD_MULTIPLE
    assert padding == ["8", "1"] * 4                                     # train, inference; twice each
    whole = [r["variant"] for r in rows if r["lever"].startswith("bf16 inference, 2,048")]  # scoring.bf16_full_cast
    assert whole == (["linears cast once", "whole model bf16"] * 2 if n_precisions == 2 else [])
    probes = [r["variant"] for r in rows if r["lever"].startswith("glibc malloc thresholds")]
    train, scoring = _malloc_probe_variants()
    assert probes == train + scoring


def _malloc_probe_variants():
    """fit's step (median and longest batch a process), then scoring: fresh processes, alternated, twice."""
    if platform.libc_ver()[0] != "glibc":                           # elsewhere the tuned probe has nothing to do
        return ["glibc"] * 4, ["glibc"] * 2
    return ["glibc", "glibc", "tuned", "tuned"] * 2, ["glibc", "tuned"] * 2


def test_levers_frozen_cache_alone_times_fit_with_and_without_it(tiny_dir, agnews_dir, tmp_path, monkeypatch):
    from loraclf import layercache
    fed = []
    original = layercache.FrozenLayerCache.feeding
    monkeypatch.setattr(layercache.FrozenLayerCache, "feeding", lambda self, *a: fed.append(1) or original(self, *a))
    opts = _opts(tiny_dir, agnews_dir, tmp_path, infer_rows=8, repeats=1)
    opts.lever = "frozen-cache"
    rows = bench_levers.levers(opts, log=lambda *a, **k: None)
    assert [r["variant"].split("=")[1] for r in rows] == ["off", "auto", "auto", "off"] * 2     # 1 epoch, then 3
    assert all(r["lever"].startswith("frozen layers 0-0 kept across epochs") and r["seconds"] > 0 for r in rows)
    assert len(fed) == 2 * 2 * 2          # 32 texts, 2 batches an epoch: epochs 2 and 3 of both 3-epoch auto runs fed


def test_levers_tokenize_alone_times_tokenizing_against_reading_ids(tiny_dir, agnews_dir, tmp_path):
    opts = _opts(tiny_dir, agnews_dir, tmp_path, repeats=1)
    opts.lever = "tokenize"
    rows = bench_levers.levers(opts, log=lambda *a, **k: None)   # (the lever itself checks the ids read back are the same)
    assert [r["variant"] for r in rows] == ["tokenize (fast tokenizer)", "read token ids from disk"]
    assert all(r["lever"] == "pre-tokenized data (7,600 texts, max length 256)" and r["rows_per_s"] > 0 for r in rows)


def test_levers_malloc_alone_runs_only_the_fresh_process_probes(tiny_dir, agnews_dir, tmp_path):
    opts = _opts(tiny_dir, agnews_dir, tmp_path, infer_rows=16, repeats=1)
    opts.lever = "malloc"
    rows = bench_levers.levers(opts, log=lambda *a, **k: None)
    train, scoring = _malloc_probe_variants()
    assert [r["variant"] for r in rows] == train + scoring
    assert ["inference, merged" in r["lever"] for r in rows] == [False] * len(train) + [True] * len(scoring)
    assert all(r["seconds"] > 0 for r in rows)


def test_quick_smoke(tiny_dir, agnews_dir, tmp_path, capsys):
    res = bench.run(_opts(tiny_dir, agnews_dir, tmp_path))
    for key in summary.REQUIRED_KEYS:
        assert res[key] is not None and res[key] > 0
    assert set(res["train"]) == set(contenders.CONTENDERS) and set(res["infer"]) == set(contenders.CONTENDERS)
    assert res["infer"]["loraclf"]["rows_measured"] == 24 and res["infer"]["trainer"]["rows_measured"] == 24
    assert res["infer"]["report_a"]["rows_measured"] == 8                 # 4 rows x 2 repeats, extrapolated
    ra = [r for r in res["runs"] if r["contender"] == "report_a"]
    assert all(r["train"]["padded_width"] == TINY_MAX for r in ra)        # report A pads to the configured length
    written = json.loads(Path(res["written"]).read_text())
    assert set(summary.REQUIRED_KEYS) <= set(written)
    text = summary.markdown(res)
    assert "| loraclf |" in text and "report A eval measured on 8 rows" in text


def test_cli_json_with_subprocess_workers(tiny_dir, agnews_dir, tmp_path, capsys):
    """--json through main(), with one contender in its own subprocess (the real isolation path)."""
    rc = bench.main(["--quick", "--json", "--agnews-dir", str(agnews_dir), "--roberta-dir", str(tiny_dir),
                     "--out-dir", "-", "--no-guard", "--set", f"data.max_length={TINY_MAX}", "--repeats", "1",
                     "--contenders", "loraclf", "--infer-rows", "8", "--peak-size", "128", "--onnx"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert set(summary.REQUIRED_KEYS) <= set(res)
    assert res["infer"]["loraclf_onnx"]["rows_measured"] == 8 and res["infer"]["loraclf_onnx"]["rows_per_s"] > 0
    assert res["train"]["loraclf"]["peak_rss_mb"] > 0 and res["train_speedup_vs_report_a"] is None


def test_openvino_row_times_predict_on_an_openvino_export_with_its_setup_apart(tiny_dir, agnews_dir, tmp_path):
    pytest.importorskip("openvino")
    res = bench.run(_opts(tiny_dir, agnews_dir, tmp_path, contenders=["loraclf", "trainer"], repeats=1, infer_rows=8,
                          openvino=True))
    ov = res["infer"]["loraclf_openvino"]
    assert ov["rows_measured"] == 8 and ov["rows_per_s"] > ov["rows_per_s_with_setup"] > 0 and ov["setup_seconds"] > 0
    assert res["infer_openvino_speedup_vs_trainer"] > res["infer_openvino_with_setup_speedup_vs_trainer"] > 0
    assert all(r["infer_openvino"]["export_seconds"] > 0 for r in res["runs"] if r.get("infer_openvino"))
    assert "loraclf_openvino: `loraclf predict` on a `loraclf export --openvino` folder" in summary.markdown(res)


@pytest.mark.parametrize("name", ["bench", "ceiling", "contenders", "levers", "guard", "worker"])
def test_the_library_carries_no_benchmark_code(name):
    """`import loraclf, loraclf.cli` loads nothing of the harness, and `loraclf` has no bench subcommand."""
    code = ("import sys, loraclf, loraclf.cli; "
            f"assert not [m for m in sys.modules if m.split('.')[-1] == {name!r}], sorted(sys.modules); "
            "sub = loraclf.cli.parser()._subparsers._group_actions[0]; assert 'bench' not in sub.choices")
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=BENCH.parent / "src",
                          env={"PYTHONPATH": src, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_harness_runs_as_a_script_from_anywhere(tmp_path):
    """`python bench/bench.py` finds its sibling modules whatever the working directory."""
    import os
    proc = subprocess.run([sys.executable, str(BENCH / "bench.py"), "--help"], capture_output=True, text=True,
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(BENCH.parent / "src")))
    assert proc.returncode == 0 and "--agnews-dir" in proc.stdout and "--levers" in proc.stdout


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the GPU path is tested only where one exists")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_train_step_and_predict(tiny_dir, agnews_dir, tmp_path, precision):
    """One loraclf training step and one predict on the GPU under fp16/bf16 autocast."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    from transformers import AutoTokenizer
    from loraclf import data as data_mod
    from loraclf import model as model_mod
    from loraclf import scoring
    ex = data_mod.load(str(Path(agnews_dir) / "test.csv"), label_names=contenders.LABELS).subset(range(32))
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    cfg = contenders.bench_config(str(tiny_dir), "loraclf", [f"data.max_length={TINY_MAX}", f"train.precision={precision}"])
    assert model_mod.attention_for(cfg.model.attn_implementation) == "sdpa"
    model = model_mod.build(cfg, contenders.LABELS)
    enc = data_mod.encode(tok, ex, TINY_MAX)
    r = contenders.run_loraclf_train(model, cfg, enc, tok.pad_token_id, 0, 1, tmp_path)
    assert r["steps"] == 1 and r["precision"] == precision
    assert next(model.parameters()).device.type == "cuda"
    logits = scoring.logits_for(model, tok, ex.texts[:8], TINY_MAX, 4, precision, torch.device("cuda"))
    assert logits.shape == (8, 4) and torch.isfinite(torch.from_numpy(logits)).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU: the GPU path is tested only where one exists")
def test_cuda_fit_starts_later_epochs_at_the_kept_layer(tiny_dir, agnews_dir, tmp_path, monkeypatch):
    """train.cache_frozen_layers on the GPU: kept on the CPU, copied to the device for each later forward."""
    from transformers import AutoTokenizer
    from loraclf import data as data_mod
    from loraclf import layercache
    from loraclf import model as model_mod
    fed = []
    original = layercache.FrozenLayerCache.feeding
    monkeypatch.setattr(layercache.FrozenLayerCache, "feeding", lambda self, *a: fed.append(a[-1]) or original(self, *a))
    ex = data_mod.load(str(Path(agnews_dir) / "test.csv"), label_names=contenders.LABELS).subset(range(32))
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    cfg = contenders.bench_config(str(tiny_dir), "loraclf", [f"data.max_length={TINY_MAX}", "adapter.layers=1",
                                                         "model.encoder_dropout=0", "train.epochs=2"])
    model = model_mod.build(cfg, contenders.LABELS)
    r = contenders.run_loraclf_train(model, cfg, data_mod.encode(tok, ex, TINY_MAX), tok.pad_token_id, 0, 2, tmp_path)
    assert r["steps"] == 4 and len(fed) == 2 and all(d.type == "cuda" for d in fed)
    assert all(torch.isfinite(p).all() for p in model.parameters() if p.requires_grad)


def test_gpu_script_parses_and_passes_only_flags_bench_knows():
    """bench/gpu.sh runs only on a lent GPU machine, so a typo there would surface only after the device time is
    spent: its shell syntax and every flag it gives `python bench/bench.py` are checked here."""
    import re
    import shutil
    import subprocess
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu.sh"
    if shutil.which("bash"):
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    parser = argparse.ArgumentParser()
    bench.add_args(parser)
    known = {s for a in parser._actions for s in a.option_strings}
    text = script.read_text().replace("\\\n", " ")
    calls = [line.split("bench/bench.py", 1)[1] for line in text.splitlines() if "python bench/bench.py" in line]
    assert len(calls) == 3
    used = {f for call in calls for f in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", call)}
    assert used and used <= known, f"unknown to bench/bench.py: {sorted(used - known)}"


@pytest.mark.parametrize("args", [[], ["no-such-folder", "out"]])
def test_gpu_script_refuses_bad_arguments_with_one_line(tmp_path, args):
    import shutil
    import subprocess
    if not shutil.which("bash"):
        pytest.skip("no bash")
    script = Path(__file__).resolve().parents[1] / "bench" / "gpu.sh"
    proc = subprocess.run(["bash", str(script), *args], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("usage: bash bench/gpu.sh ASSETS OUT") and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stdout == "" and not any(tmp_path.iterdir())
