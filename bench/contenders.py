"""The contenders, each training and scoring the same rows as a user of it would.

roberta-base architecture with random weights, its real tokenizer, real AG News test texts, preset A's LoRA
config (r=6, alpha 24 on query/key/value, batch 16):

- ``loraclf``: the library's own code paths: ``train.fit`` (length-grouped batches, per-batch padding, the
  precision ``auto`` resolves to) and, for inference, a saved run reloaded by ``scoring.load_for_inference``
  (merged LoRA weights) scored by ``scoring.logits_for``; also its ONNX export on onnxruntime and
  ``predict --backend openvino`` where those are installed.
- ``report_a``: a faithful re-implementation of report A's loop: every text padded to 256, fp32, batch 16,
  shuffled DataLoader, plain PyTorch step (forward with labels, backward, clip, AdamW, linear schedule);
  its eval loop pads to 256 too, batch 16, unmerged peft model under ``torch.no_grad``.
- ``trainer``: Hugging Face ``Trainer`` + peft with its own best settings: ``DataCollatorWithPadding``,
  ``group_by_length``, bf16 only where the CPU has native bf16 (or on a GPU), same batch size;
  ``Trainer.predict`` with the same (trained, unmerged) model and loraclf's eval batch size, and where it
  trains in bf16 its ``bf16_full_eval`` (the whole model cast to bf16, as loraclf's ``scoring.bf16_full_cast``).
"""
from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

from measure import sync, torch_device

LABELS = ["World", "Sports", "Business", "Sci/Tech"]
PRESET = "agnews-a"
CONTENDERS = ("loraclf", "report_a", "trainer")


def bench_config(model_dir: str, contender: str, extra: list[str] = ()):
    """Preset A on random weights; loraclf runs at its own default precision (auto), the others as reported."""
    from loraclf import config
    overrides = [f"model.name={model_dir}", "model.init=random", "train.epochs=1", "train.patience=0",
                 "data.val_size=0"]
    if contender == "loraclf":
        overrides.append("train.precision=auto")
    return config.load(PRESET, None, overrides + list(extra))


def run_loraclf_train(model, cfg, enc, pad_id, warmup_steps: int, steps: int, run_dir: Path) -> dict:
    """train.fit on warmup_steps batches (not timed), then on `steps` batches: fit's own step timing."""
    import torch
    from loraclf import data as data_mod
    from loraclf import precision as precision_mod
    from loraclf import train as train_mod
    bs = cfg.train.batch_size
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision = precision_mod.resolve_for(cfg.train.precision, device_type, model)
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
    from loraclf.model import resolve_model_path
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
            sync(device)
            done += 1
            if done > warmup_steps:
                seconds += time.perf_counter() - tick
                samples += len(b_y)
                tokens += int(b_mask.sum())
            if done >= total:
                break
    return {"steps": done - warmup_steps, "samples": samples, "tokens": tokens, "seconds": seconds,
            "padded_width": int(ids.shape[1]), "precision": "fp32"}


def trainer_args(out_dir: Path, cfg, steps: int, eval_batch: int, seed: int):
    import torch
    from transformers import TrainingArguments
    from loraclf import precision as precision_mod
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


def step_timer():
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
        args, _ = trainer_args(work / "warmup", cfg, warmup_steps, cfg.scoring.batch_size, cfg.train.seed)
        make_trainer(model, args, ds, tokenizer, step_timer()).train()
    ds = hf_dataset(tokenizer, texts[n - steps * bs:], labels[n - steps * bs:], cfg.data.max_length)
    args, precision = trainer_args(work / "measured", cfg, steps, cfg.scoring.batch_size, cfg.train.seed)
    timer = step_timer()
    trainer = make_trainer(model, args, ds, tokenizer, timer)
    trainer.train()
    return {"steps": len(timer.times), "samples": trainer.samples, "tokens": trainer.tokens,
            "seconds": sum(timer.times), "precision": precision}, trainer


def run_loraclf_infer(model, cfg, tokenizer, texts, run_dir: Path) -> dict:
    """Save the trained run as pipeline.train_run does, reload it merged, score with scoring.logits_for."""
    from loraclf import model as model_mod
    from loraclf import rundir
    from loraclf import scoring
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_json(run_dir / "config.json", cfg.to_dict() | {"format_version": rundir.FORMAT_VERSION})
    rundir.write_json(run_dir / "labels.json", LABELS)
    tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    model_mod.save(model, run_dir / "adapter")
    inf_model, inf_tok, inf_cfg, _ = scoring.load_for_inference(run_dir)
    max_len = scoring.infer_length(inf_cfg)
    device = torch_device()
    inf_model.to(device)
    tick = time.perf_counter()
    logits = scoring.logits_for(inf_model, inf_tok, list(texts), max_len, inf_cfg.scoring.batch_size, "auto",
                                max_tokens=inf_cfg.scoring.max_tokens, **scoring.scoring_options(inf_cfg))
    sync(device)
    seconds = time.perf_counter() - tick
    tokens = sum(len(x) for x in inf_tok(list(texts), truncation=True, max_length=max_len)["input_ids"])
    cap = scoring.scoring_tokens(inf_cfg.scoring.max_tokens, device)
    batch = f"{inf_cfg.scoring.batch_size}" + (f", <= {cap} tokens" if cap else "")
    return {"rows": len(texts), "tokens": tokens, "seconds": seconds, "batch_size": batch,
            "merged": True, "logits_shape": list(logits.shape)}


def run_onnx_infer(run_dir: Path, tokenizer, texts, out: Path, cfg) -> dict:
    """`loraclf export --onnx` of the same trained run, then onnxruntime over the same texts (export untimed)."""
    from loraclf import export, scoring
    export.export_onnx(run_dir, out)
    r = onnx_throughput(out, list(texts), batch_size=cfg.scoring.batch_size)
    max_len = scoring.infer_length(cfg)
    tokens = sum(len(x) for x in tokenizer(list(texts), truncation=True, max_length=max_len)["input_ids"])
    return {"rows": len(texts), "tokens": tokens, "seconds": r["seconds"], "batch_size": cfg.scoring.batch_size}


def onnx_throughput(export_dir, texts: list[str], batch_size: int = 64) -> dict:
    """onnxruntime's scoring of `texts` on an ONNX export, after one warm-up batch."""
    from loraclf import export
    clf = export.OnnxClassifier(export_dir)
    clf.logits(texts[:batch_size], batch_size=batch_size)
    tick = time.perf_counter()
    clf.logits(texts, batch_size=batch_size)
    return {"rows": len(texts), "seconds": time.perf_counter() - tick}


def run_openvino_infer(run_dir: Path, texts, out: Path) -> dict:
    """`loraclf export RUN --openvino OUT` (timed: `export_seconds`, paid once), then `loraclf predict OUT` on the
    same texts: compiling the saved model timed apart (`setup_seconds`, paid by every predict call), then the
    scoring (tokenizing included, as for loraclf's own row)."""
    from loraclf import export, scoring
    tick = time.perf_counter()
    export.export_openvino(run_dir, out, overwrite=True)
    exported = time.perf_counter() - tick
    tick = time.perf_counter()
    predictor = scoring.load_predictor(out).load()
    setup = time.perf_counter() - tick
    tick = time.perf_counter()
    predictor.logits(list(texts))
    seconds = time.perf_counter() - tick
    meta = export.read_meta(out)
    cfg = meta["run_config"]["scoring"]
    cap = scoring.scoring_tokens(cfg["max_tokens"], "cpu")
    ids = export.export_tokenizer(out)(list(texts), truncation=True, max_length=meta["max_length"])["input_ids"]
    return {"rows": len(texts), "tokens": sum(len(x) for x in ids), "seconds": seconds,
            "setup_seconds": setup, "export_seconds": exported,
            "batch_size": f"{cfg['batch_size']}" + (f", <= {cap} tokens" if cap else "")}


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
    sync(device)
    seconds = time.perf_counter() - tick
    return {"rows": len(texts), "tokens": int(t["attention_mask"].sum()), "seconds": seconds,
            "padded_width": int(t["input_ids"].shape[1]), "batch_size": batch_size}


def run_trainer_infer(trainer, tokenizer, texts, max_length: int) -> dict:
    tick = time.perf_counter()
    ds = hf_dataset(tokenizer, texts, None, max_length)
    out = trainer.predict(ds)
    sync(torch_device())
    seconds = time.perf_counter() - tick
    return {"rows": len(texts), "tokens": int(sum(len(x) for x in ds["input_ids"])), "seconds": seconds,
            "batch_size": trainer.args.per_device_eval_batch_size, "logits_shape": list(out.predictions.shape)}


def has_onnxruntime() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
