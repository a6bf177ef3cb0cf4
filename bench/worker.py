"""One (repeat, contender) in its own process, so that its peak RSS is its own."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from contenders import (LABELS, bench_config, report_a_model, report_a_tensors, run_loraclf_infer,
                        run_loraclf_train, run_onnx_infer, run_openvino_infer, run_report_a_infer,
                        run_report_a_train, run_trainer_infer, run_trainer_train)
from measure import current_rss_mb, non_embedding_params, peak_rss_mb, torch_device

ENTRY = Path(__file__).resolve().with_name("bench.py")


def worker(spec: dict) -> dict:
    """One (repeat, contender): build, train (timed steps), record peak RSS, then infer (timed)."""
    import torch
    from transformers import AutoTokenizer
    from loraclf import data as data_mod
    from loraclf import model as model_mod
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    contender = spec["contender"]
    device = torch_device()
    ex = data_mod.load(str(Path(spec["agnews_dir"]) / "test.csv"), label_names=LABELS)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    cfg = bench_config(spec["model_dir"], contender, spec.get("overrides", []))
    train_texts = [ex.texts[i] for i in spec["train_rows"]]
    train_labels = [ex.labels[i] for i in spec["train_rows"]]
    infer_texts = [ex.texts[i] for i in spec["infer_rows"]]
    result = {"contender": contender, "repeat": spec.get("repeat", 0), "threads": torch.get_num_threads()}
    work = Path(tempfile.mkdtemp(prefix=f"loraclf-bench-{contender}-"))
    try:
        if contender == "report_a":
            model = report_a_model(cfg)
            ids, mask, labels = report_a_tensors(tokenizer, train_texts, train_labels, cfg.data.max_length)
            result["rss_setup_mb"] = current_rss_mb()
            result["train"] = run_report_a_train(model, cfg, ids, mask, labels, spec["warmup_steps"], spec["train_steps"],
                                                 device, cfg.train.seed)
            result["peak_rss_mb"] = peak_rss_mb()
            result["infer"] = run_report_a_infer(model, tokenizer, infer_texts, cfg.data.max_length,
                                                 cfg.train.batch_size, device)
        elif contender == "loraclf":
            model = model_mod.build(cfg, LABELS)
            enc = data_mod.encode(tokenizer, data_mod.Examples(train_texts, train_labels, LABELS), cfg.data.max_length)
            result["rss_setup_mb"] = current_rss_mb()
            result["train"] = run_loraclf_train(model, cfg, enc, tokenizer.pad_token_id, spec["warmup_steps"],
                                                spec["train_steps"], work)
            result["peak_rss_mb"] = peak_rss_mb()
            result["infer"] = run_loraclf_infer(model, cfg, tokenizer, infer_texts, work / "run")
            if spec.get("onnx"):
                result["infer_onnx"] = run_onnx_infer(work / "run", tokenizer, infer_texts, work / "onnx", cfg)
            if spec.get("openvino"):
                result["infer_openvino"] = run_openvino_infer(work / "run", infer_texts, work / "openvino")
        elif contender == "trainer":
            model = report_a_model(cfg)  # the same peft model a Trainer user builds
            result["rss_setup_mb"] = current_rss_mb()
            result["train"], trainer = run_trainer_train(model, cfg, tokenizer, train_texts, train_labels,
                                                         spec["warmup_steps"], spec["train_steps"], work)
            result["peak_rss_mb"] = peak_rss_mb()
            result["infer"] = run_trainer_infer(trainer, tokenizer, infer_texts, cfg.data.max_length)
        else:
            raise ValueError(f"unknown contender {contender!r}")
        result["non_embedding_params"] = non_embedding_params(model)
        if device.type == "cuda":
            result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    finally:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return result


def subprocess_env() -> dict:
    """The environment of a child harness process: offline, importing the same loraclf as this process."""
    import loraclf
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    src = str(Path(loraclf.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_worker(spec: dict, isolate: bool, log) -> dict:
    if not isolate:
        return worker(spec)
    proc = subprocess.run([sys.executable, str(ENTRY), "--worker"], input=json.dumps(spec),
                          capture_output=True, text=True, env=subprocess_env())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench worker {spec['contender']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])
