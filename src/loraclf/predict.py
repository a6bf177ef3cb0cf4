"""Batched inference with merged LoRA weights: length-sorted batches, results in input order."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from . import data as data_mod
from . import rundir
from .errors import UserError


def device_for_inference() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_batching(batch_size: int, max_tokens: int) -> None:
    if batch_size < 1 or max_tokens < -1:
        raise UserError(f"batch size {batch_size} / max tokens {max_tokens} is not allowed",
                        "use a batch size of at least 1 and max tokens >= 1, 0 (no cap) or -1 (auto)")


def logits_for(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64,
               precision: str = "auto", device: torch.device | None = None, max_tokens: int = -1,
               full_cast: bool = True, cls_only: bool = True, tune_malloc: bool = True) -> np.ndarray:
    """Logits in input order; batches of at most `batch_size` rows and `max_tokens` padded tokens (-1: auto,
    train.scoring_tokens). In bf16 the whole model is cast unless `full_cast` is False (scoring.bf16_full_cast);
    the last layer computes only the head's row unless `cls_only` is False (scoring.cls_only_last_layer). On CPU,
    `tune_malloc` (cpu.tune_malloc) fixes glibc's malloc thresholds for the process, as fit does."""
    from .model import resolve_precision
    from .train import predict_logits
    check_batching(batch_size, max_tokens)
    device = device or device_for_inference()
    if device.type == "cpu" and tune_malloc:
        from . import fastpath
        fastpath.tune_malloc()
    model.to(device)
    enc = data_mod.encode(tokenizer, data_mod.Examples(texts, None, []), max_length)
    with torch.inference_mode():
        return predict_logits(model, enc, batch_size, tokenizer.pad_token_id, device, resolve_precision(precision, device),
                              max_tokens=max_tokens, full_cast=full_cast, cls_only=cls_only)


def openvino_compile(model, precision: str = "auto", cls_only: bool = True):
    """The merged `model` converted to OpenVINO and compiled for the CPU (a few seconds; nothing is written):
    an infer request. `precision` as predict's on CPU (auto: bf16 where the CPU has native bf16 units, else
    fp32); OpenVINO runs its own fused kernels in that precision. `cls_only`: converted with the last layer
    computing only the head's row (scoring.cls_only_last_layer), as the torch backend scores."""
    try:
        import openvino as ov
    except ImportError:
        raise UserError("--backend openvino needs the openvino package, which is not installed",
                        'install it with pip install -e ".[openvino]" (or pip install openvino), or use --backend torch')
    import warnings
    from . import fastpath
    from .model import resolve_precision
    if precision == "fp16":
        raise UserError("--backend openvino scores in fp32 or bf16, not fp16", "use --precision auto, fp32 or bf16")
    hint = {"bf16": ov.Type.bf16, "fp32": ov.Type.f32}[resolve_precision(precision, torch.device("cpu"))]

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).logits

    example = {"input_ids": torch.ones(2, 16, dtype=torch.long), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    dims = [("input_ids", [-1, -1], ov.Type.i64), ("attention_mask", [-1, -1], ov.Type.i64)]
    model = model.to("cpu").eval()
    with torch.no_grad(), warnings.catch_warnings(), fastpath.cls_only_last_layer(model, cls_only):
        warnings.simplefilter("ignore")  # the tracer's notes on shape checks that hold for every input
        ir = ov.convert_model(Logits(model), example_input=example, input=dims)
    return ov.Core().compile_model(ir, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}) \
        .create_infer_request()


def openvino_scores(request, encoded, pad_id: int, batch_size: int = 64, max_tokens: int = -1) -> np.ndarray:
    """Logits in input order from a compiled OpenVINO model, in predict's length-sorted scoring batches."""
    from .train import in_input_order, scoring_tokens
    out_idx, out = [], []
    for index in data_mod.scoring_batches(encoded.lengths, batch_size, scoring_tokens(max_tokens, "cpu")):
        batch = data_mod.collate(encoded, index, pad_id)
        res = request.infer({"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()})
        out.append(np.array(next(iter(res.values())), dtype=np.float32))
        out_idx += index
    return in_input_order(out_idx, out)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def submission_csv(ids, logits: np.ndarray, label_names: list[str], names: bool = False, probs: bool = False) -> str:
    """`ID,Label` (+ one probability column per class with probs=True)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ID", "Label"] + ([f"p_{n}" for n in label_names] if probs else []))
    preds = logits.argmax(-1)
    p = softmax(logits) if probs else None
    for i, (id_, y) in enumerate(zip(ids, preds)):
        row = [id_, label_names[y] if names else int(y)]
        if probs:
            row += [f"{v:.6f}" for v in p[i]]
        w.writerow(row)
    return buf.getvalue()


def predictions_csv(examples, logits: np.ndarray, label_names: list[str]) -> str:
    """One row per example with its text, true and predicted class and confidence (for reports)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    p = softmax(logits)
    w.writerow(["id", "label", "pred", "confidence", "text"] + [f"p_{n}" for n in label_names])
    ids = examples.ids if examples.ids is not None else range(len(examples))
    for i, id_ in enumerate(ids):
        y = label_names[examples.labels[i]] if examples.labels is not None else ""
        k = int(p[i].argmax())
        w.writerow([id_, y, label_names[k], f"{p[i, k]:.6f}", examples.texts[i]] + [f"{v:.6f}" for v in p[i]])
    return buf.getvalue()


def load_for_inference(run_dir):
    """(merged model, tokenizer, config, class names) of a run; `run_dir` a path or an opened rundir.RunDir."""
    from .model import load_run_model
    run = run_dir if isinstance(run_dir, rundir.RunDir) else rundir.RunDir.open(run_dir)
    tokenizer = run.tokenizer()
    model, cfg, label_names = load_run_model(run, merged=True)
    return model, tokenizer, cfg, label_names


def run(run_dir: Path, source: str, out: Path, names: bool = False, probs: bool = False, batch_size: int = 64,
        precision: str = "auto", trust_pickle: bool = False, text_column: str | None = None, max_tokens: int = -1,
        backend: str = "torch") -> dict:
    """Predict every row of `source` and write the submission atomically. `backend`: torch, or openvino (the
    merged model converted in-process and run on OpenVINO's CPU runtime)."""
    if backend not in ("torch", "openvino"):
        raise UserError(f"unknown backend {backend!r} for a run directory", "use torch or openvino "
                        "(onnx takes a folder from `loraclf export RUN --onnx DIR`)")
    rundir.check_output_file(Path(out), "-o")
    run = rundir.RunDir.open(run_dir)
    cfg, label_names = run.config, run.labels
    examples = data_mod.load(source, text_column=text_column or cfg.data.text_column, label_column=cfg.data.label_column,
                             label_names=label_names, split="test", labelled=False, encoding=cfg.data.encoding,
                             trust_pickle=trust_pickle)
    model, tokenizer, cfg, label_names = load_for_inference(run)
    max_len = cfg.data.max_length_infer or cfg.data.max_length
    if backend == "openvino":
        check_batching(batch_size, max_tokens)
        request = openvino_compile(model, precision, cfg.scoring.cls_only_last_layer)
        enc = data_mod.encode(tokenizer, data_mod.Examples(examples.texts, None, []), max_len)
        logits = openvino_scores(request, enc, tokenizer.pad_token_id, batch_size, max_tokens)
    else:
        logits = logits_for(model, tokenizer, examples.texts, max_len, batch_size, precision, max_tokens=max_tokens,
                            full_cast=cfg.scoring.bf16_full_cast, cls_only=cfg.scoring.cls_only_last_layer,
                            tune_malloc=cfg.cpu.tune_malloc)
    ids = examples.ids if examples.ids is not None else list(range(len(examples)))
    rundir.write_text(Path(out), submission_csv(ids, logits, label_names, names, probs))
    return {"rows": len(ids), "out": str(out), "logits": logits, "labels": examples.labels}
