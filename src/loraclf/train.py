"""The training loop, on Accelerate: AdamW, warmup schedule, AMP, accumulation, clipping, evaluation,
early stopping with best weights restored, resumable checkpoints, throughput.

Batches are sharded by hand (rank r takes every world-th batch), so resuming is "skip k batches" and
the loop reads top to bottom. Rank 0 alone writes to the run directory.
"""
from __future__ import annotations

import math
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint
from . import data as data_mod
from . import fastpath
from . import layercache
from . import precision as precision_mod
from . import rundir
from . import scoring
from .config import Config
from .errors import Interrupted, UserError

RECORDS_PER_RUN = 300  # train-loss/lr records per run: every step for short runs, sparser for long ones


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model, cfg: Config) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms; LoRA+ puts lora_B in its own group at lr * ratio."""
    t = cfg.train
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if (p.ndim < 2 or "norm" in name.lower()) else t.weight_decay
        lr = t.lr * cfg.adapter.lr_ratio_b if "lora_B" in name else t.lr
        groups.setdefault((lr, decay), []).append(p)
    params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    return torch.optim.AdamW(params, lr=t.lr, eps=t.eps, weight_decay=t.weight_decay, foreach=True)


def make_scheduler(optimizer, cfg: Config, total_steps: int):
    from transformers import get_scheduler
    t = cfg.train
    warmup = t.warmup_steps or int(math.ceil(t.warmup_ratio * total_steps))
    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[t.scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total_steps)


def class_weights(labels, num_classes: int, mode: str) -> torch.Tensor:
    """balanced: n / (K * n_k), so every class weighs the same in the loss (a balanced test set's prior)."""
    if mode == "none":
        return torch.ones(num_classes)
    counts = np.bincount(np.asarray(labels), minlength=num_classes).astype(np.float64)
    w = len(labels) / (num_classes * np.maximum(counts, 1))
    return torch.tensor(w, dtype=torch.float32)


def task_loss(cfg: Config, labels, num_labels: int, device):
    """(logits, labels) -> the training loss: cross-entropy with class weights, or for data.task = multi_label
    BCE with per-label positive weights (multilabel.loss_fn)."""
    t = cfg.train
    if cfg.data.task == "multi_label":
        from . import multilabel
        return multilabel.loss_fn(labels, num_labels, t.class_weight, t.label_smoothing, device, t.pos_weight)
    weight = class_weights(labels, num_labels, t.class_weight).to(device)
    return lambda logits, y: F.cross_entropy(logits, y, weight=weight, label_smoothing=t.label_smoothing)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, v in state.items():
            params[n].copy_(v)


@dataclass
class Progress:
    """Everything needed to continue a run exactly where it stopped."""
    step: int = 0                 # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0       # batches of this rank's epoch already consumed
    best: float | None = None
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    samples: int = 0
    tokens: int = 0
    running_loss: float = 0.0     # train loss summed since the last record
    running_n: int = 0
    history: list[dict] = field(default_factory=list)


def better(monitor: str, value: float, best: float | None) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if monitor == "val_loss" else value > best


def make_accelerator(precision: str, device_type: str):
    """Accelerate's Accelerator for `precision` ("fp32" | "bf16" | "fp16"). Accelerate keeps one mixed-precision
    setting per process and refuses another, so a second run in the same process (the Python API, the benchmark)
    that wants a different one would stop with its error; outside a multi-process launch the old state is reset.
    cpu=True lets `accelerate launch --multi_gpu --num_processes N` run N gloo processes without a GPU."""
    import os
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    mixed = precision_mod.to_accelerate(precision)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed) != mixed and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed, cpu=device_type == "cpu")


def frozen_layer_cache(model, cfg: Config, encoded: data_mod.Encoded, world: int,
                       log=print) -> layercache.FrozenLayerCache | None:
    """train.cache_frozen_layers: where it applies (layercache.plan), the store that keeps the frozen lower layers'
    output for each training row from the first forward that computes it; else None."""
    k = layercache.plan(model, cfg.train.cache_frozen_layers, int(encoded.lengths.sum()), world, log)
    if not k:
        return None
    log(f"frozen layers 0-{k - 1}: their outputs are kept from the first epoch, and later epochs start at layer {k}")
    return layercache.FrozenLayerCache(model, k, encoded.lengths)


def fit(model, cfg: Config, train_enc: data_mod.Encoded, val_enc: data_mod.Encoded | None, label_names: list[str],
        pad_id: int, run_dir: Path, accelerator, resume: bool = False, log=print, callbacks=()) -> Progress:
    """callbacks: live.Callback objects, each told every metrics.jsonl record as it is made (live tracking, pruning)."""
    t = cfg.train
    device = accelerator.device
    precision = precision_mod.from_accelerate(accelerator.mixed_precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    main = accelerator.is_main_process

    batches_per_epoch = math.ceil(len(train_enc) / t.batch_size) // world
    if batches_per_epoch == 0:
        raise UserError(f"{len(train_enc)} training rows make no batch of {t.batch_size} per process",
                        "use more data or a smaller train.batch_size")
    steps_per_epoch = math.ceil(batches_per_epoch / t.grad_accum)
    total_steps = max(1, math.ceil(t.epochs * steps_per_epoch))
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, total_steps)
    model, optimizer = accelerator.prepare(model, optimizer)

    prog = Progress()
    ckpt_dir = Path(run_dir) / "checkpoint"
    best_state = None
    if resume:
        if world > 1:  # rank 0 alone puts the newest complete checkpoint in place; the others then read it
            if main:
                checkpoint.recover(ckpt_dir)
            accelerator.wait_for_everyone()
        prog, best_state = load_checkpoint(ckpt_dir, accelerator.unwrap_model(model), optimizer, scheduler,
                                           recover=world == 1)
        log(f"resumed at step {prog.step} (epoch {prog.epoch}, batch {prog.batch_in_epoch})")
    elif main:
        checkpoint.discard(ckpt_dir)

    lengths = train_enc.lengths
    loss_fn = task_loss(cfg, train_enc.labels, len(label_names), device)
    eval_every = t.eval_every or steps_per_epoch
    log_every = max(1, total_steps // RECORDS_PER_RUN)
    interrupted = {"flag": False}

    def emit(record: dict) -> None:
        prog.history.append(record)
        for cb in callbacks:
            cb.on_record(record)

    def on_stop(signum, frame):  # Ctrl-C or SIGTERM (a scheduler, `kill`): finish the step, checkpoint, leave
        interrupted["flag"] = True
    old_handlers = {}
    if main and world == 1 and threading.current_thread() is threading.main_thread():
        old_handlers = {sig: signal.signal(sig, on_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    unwrapped = accelerator.unwrap_model(model)
    train_attn = fastpath.training_attention(cfg.model.attn_implementation, device, unwrapped)
    cheap_dropout = fastpath.cheap_dropout_applies(device, cfg.cpu.fast_dropout, t.gradient_checkpointing)
    if device.type == "cpu" and cfg.cpu.tune_malloc:
        fastpath.tune_malloc()
    # frozen weights held in the autocast dtype for the whole loop: the same numbers, no per-step casts
    frozen = fastpath.frozen_weights_as(unwrapped, precision_mod.autocast_dtype(precision))
    from tqdm.auto import tqdm
    bar = tqdm(total=total_steps, initial=prog.step, disable=not main or None, desc="train", unit="step", leave=False)
    try:
        with frozen, fastpath.cls_only_last_layer(unwrapped, cfg.scoring.cls_only_last_layer):
            cache = frozen_layer_cache(unwrapped, cfg, train_enc, world, log)
            while prog.step < total_steps and not prog.stopped_early:
                epoch_seed = t.seed + prog.epoch
                if t.group_by_length:
                    batches = data_mod.length_grouped_batches(lengths, t.batch_size, epoch_seed)
                else:
                    batches = data_mod.random_batches(len(train_enc), t.batch_size, epoch_seed)
                batches = batches[: batches_per_epoch * world][rank::world]
                model.train()
                b = prog.batch_in_epoch
                while b < len(batches) and prog.step < total_steps:
                    group = batches[b: b + t.grad_accum]
                    tick = time.perf_counter()
                    n_rows = sum(len(ix) for ix in group)
                    step_loss = 0.0
                    for k, index in enumerate(group):
                        batch = data_mod.collate(train_enc, index, pad_id)
                        batch = {key: v.to(device, non_blocking=True) for key, v in batch.items()}
                        sync = accelerator.no_sync(model) if k < len(group) - 1 and world > 1 else _null()
                        start = cache.forward_for(index, batch["input_ids"].shape[1], device) if cache else _null()
                        # backward inside the same attention: gradient checkpointing recomputes the forward there
                        with sync, start, fastpath.cpu_dropout(cheap_dropout, cfg.cpu.share_dropout_masks), \
                                fastpath.attention(unwrapped, train_attn):
                            with accelerator.autocast():
                                logits = model(**scoring.model_inputs(batch, device)).logits
                            loss = loss_fn(logits.float(), batch["labels"])
                            accelerator.backward(loss * len(index) / n_rows)
                        step_loss += loss.item() * len(index) / n_rows
                        prog.tokens += int(batch["attention_mask"].sum())
                    if world == 1 and not math.isfinite(step_loss):  # several processes: the weights check below
                        raise diverged("loss", prog.step + 1)
                    if t.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    prog.train_seconds += time.perf_counter() - tick
                    prog.samples += n_rows
                    prog.step += 1
                    b += len(group)
                    prog.batch_in_epoch = b
                    prog.running_loss += step_loss
                    prog.running_n += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss:.4f}", samples_s=f"{world * prog.samples / max(prog.train_seconds, 1e-9):.1f}")

                    if prog.step % log_every == 0 or prog.step == total_steps:
                        emit(_record(prog, scheduler, prog.running_loss / prog.running_n, world, steps_per_epoch))
                        prog.running_loss, prog.running_n = 0.0, 0
                    if prog.step % eval_every == 0 or prog.step == total_steps:
                        if val_enc is not None:  # a best model is never kept from non-finite weights
                            check_finite_weights(unwrapped, prog.step)
                        best_state = _eval_step(model, cfg, val_enc, label_names, pad_id, device, precision, accelerator,
                                                prog, best_state, steps_per_epoch, log, bar, emit)
                        model.train()
                    if main:
                        _flush_history(run_dir, prog)
                    if b >= len(batches):  # epoch done: a checkpoint taken now resumes at the next epoch
                        prog.epoch += 1
                        prog.batch_in_epoch = 0
                    if (t.save_every and prog.step % t.save_every == 0) or interrupted["flag"]:
                        save_checkpoint(ckpt_dir, accelerator, model, optimizer, scheduler, prog, best_state, main)
                    if interrupted["flag"]:
                        bar.close()
                        raise Interrupted(f"interrupted at step {prog.step}; a checkpoint is in {ckpt_dir}",
                                          f"continue with: loraclf train --resume --out {run_dir}")
                    if prog.stopped_early:
                        break
    except KeyboardInterrupt:  # several processes: no handler, so no consistent point to save at
        bar.close()
        raise Interrupted(f"interrupted at step {prog.step}", "rerun; with train.save_every set, --resume continues "
                          "from the last checkpoint") from None
    finally:
        bar.close()
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
    check_finite_weights(unwrapped, prog.step)
    if best_state is not None:
        load_trainable_state(unwrapped, best_state)
        log(f"restored best weights from step {prog.best_step} ({t.monitor} {prog.best:.4f})")
    return prog


def check_finite_weights(model, step: int) -> None:
    """Stop the run if a trainable weight is NaN or infinite (one device sync; the same verdict on every rank)."""
    params = [p.detach() for p in model.parameters() if p.requires_grad]
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        raise diverged("weights", step)


def diverged(what: str, step: int) -> UserError:
    """The one-line error of a run whose loss or weights became non-finite. Nothing more is saved: the last
    checkpoint (if any) stays as it is, and holds finite weights (save_checkpoint checks)."""
    return UserError(f"training diverged at step {step}: the {what} became NaN or infinite",
                     "lower train.lr (or adapter.alpha, adapter.lr_ratio_b), keep train.max_grad_norm above 0, "
                     "check the data, and start a new run")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _record(prog: Progress, scheduler, loss: float, world: int, steps_per_epoch: int) -> dict:
    return {"step": prog.step, "epoch": round(prog.step / steps_per_epoch, 4), "train_loss": loss,
            "lr": scheduler.get_last_lr()[0],
            "samples_per_s": world * prog.samples / max(prog.train_seconds, 1e-9),
            "tokens_per_s": world * prog.tokens / max(prog.train_seconds, 1e-9)}


def _eval_step(model, cfg, val_enc, label_names, pad_id, device, precision, accelerator, prog, best_state,
               steps_per_epoch, log, bar, emit):
    if val_enc is None:
        return best_state
    m = scoring.evaluate_encoded(model, val_enc, cfg, label_names, pad_id, device, precision, accelerator)
    rec = {"step": prog.step, "epoch": round(prog.step / steps_per_epoch, 4), "val_loss": m["loss"],
           "val_accuracy": m["accuracy"], "val_macro_f1": m["macro_f1"]}
    value = rec[cfg.train.monitor]
    if better(cfg.train.monitor, value, prog.best):
        prog.best, prog.best_step, prog.bad_evals = value, prog.step, 0
        best_state = trainable_state(accelerator.unwrap_model(model))
    else:
        prog.bad_evals += 1
        if cfg.train.patience and prog.bad_evals >= cfg.train.patience:
            prog.stopped_early = True
    msg = (f"step {prog.step} epoch {rec['epoch']:.2f}: val_loss {m['loss']:.4f} val_acc {100 * m['accuracy']:.2f}% "
           f"val_f1 {m['macro_f1']:.4f}" + ("  (stopping early)" if prog.stopped_early else ""))
    (bar.write if bar is not None and not bar.disable else log)(msg)
    emit(rec)  # last: a pruner that stops the run here sees the record, and the run keeps what came before
    return best_state


def _flush_history(run_dir: Path, prog: Progress) -> None:
    rundir.write_jsonl(Path(run_dir) / "metrics.jsonl", prog.history)


# ---------------------------------------------------------------------------------- checkpoints

def save_checkpoint(ckpt_dir: Path, accelerator, model, optimizer, scheduler, prog: Progress, best_state, main: bool):
    """Adapter+head weights, optimizer, scheduler, RNG states, data position and metrics, all or nothing
    (checkpoint.py: written into a temp folder, sealed, then swapped in). Non-finite weights are never saved."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    check_finite_weights(unwrapped, prog.step)
    if not main:
        return
    import io
    from safetensors.torch import save as st_bytes
    tmp = rundir.temp_dir(ckpt_dir)
    try:
        rundir.write_bytes(tmp / "trainable.safetensors",
                           st_bytes({k: v.contiguous() for k, v in trainable_state(unwrapped).items()}))
        if best_state is not None:
            rundir.write_bytes(tmp / "best.safetensors", st_bytes({k: v.contiguous() for k, v in best_state.items()}))
        buf = io.BytesIO()
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": {"torch": torch.get_rng_state(), "numpy": _np_state(), "python": _py_state()}}, buf)
        rundir.write_bytes(tmp / "state.pt", buf.getvalue())
        rundir.write_json(tmp / "progress.json", prog.__dict__)
        checkpoint.seal(tmp, prog.step)
    except BaseException:
        if checkpoint.sealed_step(tmp) is None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    checkpoint.swap_in(tmp, ckpt_dir)


def load_checkpoint(ckpt_dir: Path, model, optimizer, scheduler, recover: bool = True):
    """The newest complete checkpoint (checkpoint.recover: also one a crash left mid-swap), loaded into place.
    recover=False: only read what is at `ckpt_dir` (another process recovered it)."""
    from safetensors.torch import load_file
    ckpt_dir = Path(ckpt_dir)
    found, step = (ckpt_dir, checkpoint.recover(ckpt_dir)) if recover else checkpoint.newest(ckpt_dir)
    if found != ckpt_dir:
        step = None
    if step is None:
        if ckpt_dir.exists():
            raise UserError(f"the checkpoint in {ckpt_dir} is incomplete or damaged",
                            "start the run again without --resume (with --overwrite, or another --out)")
        raise UserError(f"no checkpoint to resume in {ckpt_dir}", "run without --resume (set train.save_every to get checkpoints)")
    try:
        load_trainable_state(model, load_file(str(ckpt_dir / "trainable.safetensors")))
        best = load_file(str(ckpt_dir / "best.safetensors")) if (ckpt_dir / "best.safetensors").is_file() else None
        state = torch.load(ckpt_dir / "state.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(_np_unstate(state["rng"]["numpy"]))
        random.setstate(_py_unstate(state["rng"]["python"]))
        return Progress(**rundir.read_json(ckpt_dir / "progress.json")), best
    except UserError:
        raise
    except Exception as e:  # a legacy (unsealed) checkpoint that was cut short, or one from another model
        raise UserError(f"cannot load the checkpoint in {ckpt_dir} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
                        "start the run again without --resume (with --overwrite, or another --out)") from None


def _np_state():
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": gauss}


def _np_unstate(s):
    return (s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"])


def _py_state():
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _py_unstate(s):
    return (s["version"], tuple(int(x) for x in s["internal"].tolist()), s["gauss"])
