"""Scoring: logits for encoded rows or raw texts, in input order, behind one predictor for every backend.

Used by training's evaluation, `evaluate`, `predict` and `serve` alike (training imports scoring, never the
reverse). Batches are length-sorted, at most `batch_size` rows and `scoring_tokens` padded tokens; precision
comes from the precision policy; the last layer may compute only the row the head reads
(fastpath.cls_only_last_layer).

Backends (`load_predictor`): torch on a run directory (adapter merged on load) or a --merged export; openvino,
the same merged model converted in-process for OpenVINO's CPU runtime; onnx, onnxruntime on an --onnx export.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import data as data_mod
from . import fastpath
from . import int8
from . import longtext
from . import metrics as metrics_mod
from . import precision as precision_mod
from . import rundir
from .errors import UserError

# padded tokens per CPU scoring batch, by CPU kind (precision.cpu_kind): the fastest cap that `python bench/bench.py
# --levers --lever scoring` measured on that kind (docs/performance.md); `other` (not measured) takes the cap every
# kind without AMX measured fastest
CPU_SCORING_TOKENS = {"amx": 2048, "avx512-bf16": 1024, "avx512": 1024, "avx2": 1024, "other": 1024}
PREDICT_BACKENDS = ("torch", "openvino", "onnx")


# ------------------------------------------------------------------------------------------ small rules

def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_batching(batch_size: int, max_tokens: int) -> None:
    """The limits of the config's scoring.batch_size and scoring.max_tokens, for the same flags of predict,
    evaluate and serve."""
    if not 1 <= batch_size <= 2**20 or not -1 <= max_tokens <= 2**31 - 1:
        raise UserError(f"batch size {batch_size} / max tokens {max_tokens} is not allowed",
                        "use a batch size of 1 to 1,048,576 and max tokens >= 1, 0 (no cap) or -1 (auto)")


def cpu_scoring_tokens() -> int:
    """This CPU kind's cap on padded tokens per scoring batch (CPU_SCORING_TOKENS)."""
    return CPU_SCORING_TOKENS[precision_mod.cpu_kind()]


def scoring_tokens(max_tokens: int, device) -> int:
    """scoring.max_tokens resolved: -1 (auto) caps CPU batches at this CPU kind's cpu_scoring_tokens() padded tokens
    (smaller activations measured faster there than 64 long rows at once) and leaves GPU batches uncapped; 0: no
    cap."""
    if max_tokens < 0:
        return cpu_scoring_tokens() if torch.device(device).type == "cpu" else 0
    return max_tokens


def infer_length(cfg) -> int:
    """The token length texts are cut to for scoring: data.max_length_infer, else data.max_length."""
    return cfg.data.max_length_infer or cfg.data.max_length


def scoring_options(cfg) -> dict:
    """A run config's scoring switches as logits_for's keyword arguments."""
    return {"full_cast": cfg.scoring.bf16_full_cast, "cls_only": cfg.scoring.cls_only_last_layer,
            "tune_malloc": cfg.cpu.tune_malloc}


def row_ids(examples) -> list:
    """The examples' own ids, else their row numbers."""
    return list(examples.ids) if examples.ids is not None else list(range(len(examples)))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def in_input_order(index: list[int], parts: list[np.ndarray]) -> np.ndarray:
    """The rows of `parts` (concatenated; row k belongs to input `index[k]`) put back in input order."""
    logits = np.concatenate(parts)
    result = np.empty_like(logits)
    result[np.asarray(index)] = logits
    return result


# ------------------------------------------------------------------------------------------ torch

@torch.no_grad()
def predict_logits(model, encoded: data_mod.Encoded, batch_size: int, pad_id: int, device, precision: str,
                   accelerator=None, max_tokens: int = -1, full_cast: bool = False, cls_only: bool = True,
                   pad_to_multiple: int = data_mod.PAD_MULTIPLE) -> np.ndarray:
    """Logits in input order (one row per document for longtext's windows: pooled). Batches are length-sorted, at
    most `batch_size` rows and (see scoring_tokens) `max_tokens` padded tokens; with several processes each takes
    a share. `precision` is a resolved one (precision.resolve). Under bf16/fp16 the frozen weights are cast once
    per call rather than by autocast on every batch (the same numbers; inside fit they already are), so one model
    must not score two precisions at once. `full_cast` (bf16 only, scoring.bf16_full_cast): the whole frozen model in bf16 for the call, residual
    stream and LayerNorms too. `cls_only` (scoring.cls_only_last_layer): the last layer computes only the row the
    head reads. `pad_to_multiple`: what batch widths are rounded up to (`--levers` measures the choice)."""
    model.eval()
    batches = data_mod.scoring_batches(encoded.lengths, batch_size, scoring_tokens(max_tokens, device), pad_to_multiple)
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    mine = batches[rank::world]
    out_idx, out = [], []
    whole = precision_mod.casts_whole_model(precision, full_cast)
    with fastpath.frozen_weights_as(model, precision_mod.autocast_dtype(precision), whole), \
            fastpath.cls_only_last_layer(model, cls_only):
        for index in mine:
            batch = data_mod.collate(encoded, index, pad_id, pad_to_multiple)
            with precision_mod.autocast(device, precision):
                logits = model(**model_inputs(batch, device)).logits
            out.append(logits.float().cpu().numpy())
            out_idx += index
    if world > 1:
        from accelerate.utils import gather_object
        parts = gather_object([(out_idx, np.concatenate(out) if out else np.zeros((0, 0), np.float32))])
        out_idx = [i for idx, _ in parts for i in idx]
        out = [a for _, a in parts if len(a)]
    return longtext.pooled(in_input_order(out_idx, out), encoded)


def model_inputs(batch: dict, device) -> dict:
    """A collated batch's model inputs (token_type_ids only for sentence pairs), on `device`."""
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


def evaluate_encoded(model, encoded, cfg, label_names, pad_id, device, precision, accelerator=None,
                     thresholds=None) -> dict:
    """Metrics (metrics.classification; multilabel.metrics at `thresholds`, default 0.5, for a multi-label run) and
    logits of `model` on labelled encoded rows, as the run's config says to score (scoring.batch_size, max_tokens,
    bf16_full_cast, cls_only_last_layer)."""
    from . import multilabel
    if accelerator is not None:  # DDP's forward is a collective; ranks score different batch counts
        model = accelerator.unwrap_model(model)
    logits = predict_logits(model, encoded, cfg.scoring.batch_size, pad_id, device, precision, accelerator,
                            cfg.scoring.max_tokens, cfg.scoring.bf16_full_cast, cfg.scoring.cls_only_last_layer)
    if multilabel.is_multi(cfg):
        return multilabel.metrics(logits, longtext.row_labels(encoded), label_names, thresholds) | {"logits": logits}
    return metrics_mod.classification(logits, longtext.row_labels(encoded), label_names) | {"logits": logits}


def logits_for(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64,
               precision: str = "auto", device: torch.device | None = None, max_tokens: int = -1,
               full_cast: bool = True, cls_only: bool = True, tune_malloc: bool = True,
               treatment: longtext.Treatment = longtext.Treatment(), stats: dict | None = None) -> np.ndarray:
    """Logits in input order; batches of at most `batch_size` rows and `max_tokens` padded tokens (-1: auto,
    scoring_tokens). `precision`: a choice from precision.PRECISION_CHOICES. In bf16 the whole model is cast unless
    `full_cast` is False (scoring.bf16_full_cast); the last layer computes only the head's row unless `cls_only`
    is False (scoring.cls_only_last_layer). On CPU, `tune_malloc` (cpu.tune_malloc) fixes glibc's malloc
    thresholds for the process, as fit does. `texts` may be (a, b) pairs; `treatment` (longtext) says what happens
    to rows past max_length, and `stats`, when given, receives how many there were (longtext.Encoding.summary)."""
    check_batching(batch_size, max_tokens)
    device = device or inference_device()
    if device.type == "cpu" and tune_malloc:
        fastpath.tune_malloc()
    model.to(device)
    enc = longtext.encode(tokenizer, data_mod.Examples(texts, None, []), max_length, treatment)
    if stats is not None:
        stats.update(enc.summary())
    with torch.inference_mode():
        return predict_logits(model, enc, batch_size, tokenizer.pad_token_id, device,
                              precision_mod.resolve_for(precision, device, model), max_tokens=max_tokens, full_cast=full_cast,
                              cls_only=cls_only)


# ------------------------------------------------------------------------------------------ OpenVINO

def require_openvino():
    try:
        import openvino as ov
    except ImportError:
        raise UserError("OpenVINO scoring needs the openvino package, which is not installed",
                        'install it with pip install -e ".[openvino]" (or pip install openvino), or use --backend torch')
    return ov


def openvino_convert(model, cls_only: bool = True, types: bool = False):
    """The merged `model` converted to an OpenVINO model (an ov.Model, in memory). `cls_only`: the last layer
    computes only the head's row (scoring.cls_only_last_layer), as the torch backend scores. `types`: a third
    input, token_type_ids (pairs)."""
    ov = require_openvino()
    import warnings

    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.m(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if types else [])
    example = {n: torch.ones(2, 16, dtype=torch.long) for n in names}
    dims = [(n, [-1, -1], ov.Type.i64) for n in names]
    model = model.to("cpu").eval()
    with torch.no_grad(), warnings.catch_warnings(), fastpath.cls_only_last_layer(model, cls_only):
        warnings.simplefilter("ignore")  # the tracer's notes on shape checks that hold for every input
        return ov.convert_model(Logits(model), example_input=example, input=dims)


def openvino_request(ir, precision: str = "auto"):
    """An OpenVINO model (an ov.Model, or the path of a saved model.xml) compiled for the CPU: an infer request.
    `precision` as predict's on CPU (precision.openvino_hint); OpenVINO runs its own fused kernels in it."""
    ov = require_openvino()
    hint = getattr(ov.Type, precision_mod.openvino_hint(precision))
    core = ov.Core()
    if not isinstance(ir, ov.Model):
        ir = core.read_model(str(ir))
    return core.compile_model(ir, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}) \
        .create_infer_request()


def openvino_compile(model, precision: str = "auto", cls_only: bool = True, types: bool = False):
    """The merged `model` converted and compiled in-process (a few seconds; nothing is written): an infer request.
    `loraclf export --openvino` converts once and saves the model instead."""
    return openvino_request(openvino_convert(model, cls_only, types), precision)


def openvino_scores(request, encoded, pad_id: int, batch_size: int = 64, max_tokens: int = -1) -> np.ndarray:
    """Logits in input order from a compiled OpenVINO model, in predict's length-sorted scoring batches."""
    out_idx, out = [], []
    for index in data_mod.scoring_batches(encoded.lengths, batch_size, scoring_tokens(max_tokens, "cpu")):
        batch = data_mod.collate(encoded, index, pad_id)
        res = request.infer({k: v.numpy() for k, v in batch.items() if k != "labels"})
        out.append(np.array(next(iter(res.values())), dtype=np.float32))
        out_idx += index
    return longtext.pooled(in_input_order(out_idx, out), encoded)


# ------------------------------------------------------------------------------------------ one predictor

def load_for_inference(run_dir):
    """A run's model with its adapter merged, its tokenizer, config and class names; `run_dir` a path or an
    opened rundir.RunDir."""
    from .model import load_run_model
    run = run_dir if isinstance(run_dir, rundir.RunDir) else rundir.RunDir.open(run_dir)
    tokenizer = run.tokenizer()
    model, cfg, label_names = load_run_model(run, merged=True)
    return model, tokenizer, cfg, label_names


@dataclass
class Predictor:
    """Logits for a list of texts from one backend, with the class names, what `serve`'s /info shows, and the
    data settings (text_column, label_column, encoding) inputs are read with. The model is loaded on the first
    `logits` call, or by `load()`, so input files can be checked before that cost."""
    labels: list[str]
    info: dict
    data: dict
    make_logits: Callable[[], Callable[[list[str]], np.ndarray]]
    thresholds: list[float] | None = None  # a multi-label model's per-label decision thresholds (multilabel.py)
    label_delimiter: str = "|"             # a multi-label model's: what joins a row's labels in files
    _fn: Callable | None = field(default=None, repr=False)
    stats: dict = field(default_factory=dict)   # the last call's longtext.Encoding.summary (rows past max_length)

    @property
    def pairs(self) -> bool:
        """Whether each input is a (text_a, text_b) pair."""
        return len(self.data.get("text_columns", ())) == 2

    @property
    def loaded(self) -> bool:
        return self._fn is not None

    def load(self) -> "Predictor":
        if self._fn is None:
            self._fn = self.make_logits()
        return self

    def logits(self, texts: list[str]) -> np.ndarray:
        return self.load()._fn(list(texts))


def load_predictor(path, backend: str = "auto", batch_size: int = 64, precision: str = "auto", threads: int = 0,
                   max_tokens: int = -1) -> Predictor:
    """The one dispatch for every backend. `path`: a run directory or a folder from `loraclf export`. `backend`:
    torch or openvino on a run directory or a --merged export, onnx on an --onnx export, auto the folder's own
    (onnx for an --onnx export, else torch). Nothing heavy is loaded until the predictor is first used."""
    from . import export
    if backend != "auto" and backend not in PREDICT_BACKENDS:
        raise UserError(f"unknown backend {backend!r}", f"use one of: {', '.join(PREDICT_BACKENDS)}")
    check_batching(batch_size, max_tokens)
    path = Path(path)
    if threads:
        torch.set_num_threads(threads)
    if not path.is_dir():
        raise UserError(f"{path} does not exist or is not a folder", "give a run directory or an export folder")
    kind = export.read_meta(path)["kind"] if export.is_export(path) else "run"
    if backend == "onnx" and kind != "onnx":
        raise UserError(f"{path} is not an ONNX export (no model.onnx and {export.META})",
                        "export the run first with `loraclf export RUN --onnx DIR`, then give DIR to --backend onnx")
    if backend in ("torch", "openvino") and kind == "onnx":
        raise UserError(f"{path} is an ONNX export: it runs on onnxruntime only",
                        "use --backend onnx, or give the run directory")
    if backend in ("torch", "onnx") and kind == "openvino":
        raise UserError(f"{path} is an OpenVINO export: it runs on OpenVINO only",
                        "use --backend openvino (or auto), or give the run directory")
    backend = backend if backend != "auto" else kind if kind in ("onnx", "openvino") else "torch"
    if precision == int8.PRECISION and backend != "torch":
        raise UserError(f"int8 scoring runs on the torch backend, and {path} would score on {backend}",
                        "give a run directory or a --merged export with --backend torch, or another precision")
    if kind == "run":
        return _run_predictor(path, backend, batch_size, precision, max_tokens)
    return _export_predictor(path, export.read_meta(path), backend, batch_size, precision, threads, max_tokens)


def _run_predictor(path: Path, backend: str, batch_size: int, precision: str, max_tokens: int) -> Predictor:
    from . import export
    from . import multilabel
    run = rundir.RunDir.open(path)
    cfg, labels = run.config, run.labels
    thresholds = multilabel.read_thresholds(path, labels) if multilabel.is_multi(cfg) else None
    info = {"model": cfg.model.name, "source": str(path), "kind": "run", "labels": labels,
            "budget": run.optional_json("budget.json"), "budget_limit": cfg.budget.max_trainable,
            "adapter": {"method": cfg.adapter.method, "r": cfg.adapter.r, "alpha": cfg.adapter.alpha,
                        "target_modules": list(cfg.adapter.target_modules)},
            "metrics": export.metrics_summary(path), "max_length": infer_length(cfg), "task": cfg.data.task} \
        | ({"thresholds": thresholds} if thresholds is not None else {})
    settings, stats = _data_settings(cfg.data.__dict__, run.config_dict.get("resolved")), {}
    info |= {"text_columns": settings["text_columns"], "long_text": cfg.data.long_text}

    def make():
        model, tokenizer, cfg, _ = load_for_inference(run)
        return _model_logits(model, tokenizer, infer_length(cfg), backend, batch_size, precision, max_tokens,
                             **scoring_options(cfg), treatment=longtext.Treatment.of(cfg.data), stats=stats,
                             pairs=len(settings["text_columns"]) == 2)
    return Predictor(labels, info | _backend_info(backend, precision), settings, make, thresholds,
                     cfg.data.label_delimiter, stats=stats)


def _export_predictor(path: Path, meta: dict, backend: str, batch_size: int, precision: str, threads: int,
                      max_tokens: int) -> Predictor:
    from . import export
    from . import multilabel
    thresholds, delimiter = None, meta.get("label_delimiter", "|")
    if meta.get("task") == "multi_label":
        thresholds = multilabel.check_thresholds({"labels": meta["labels"], "thresholds": meta.get("thresholds")},
                                                 meta["labels"], f"the thresholds in {path / export.META}")
        if not isinstance(delimiter, str) or not delimiter.strip():
            raise UserError(f"{path / export.META} has no usable label delimiter for a multi-label model",
                            "export the run again")
    info = {"model": meta.get("base_model"), "source": str(path), "kind": meta["kind"], "labels": meta["labels"],
            "budget": meta.get("budget"), "budget_limit": meta.get("budget_limit"), "adapter": meta.get("adapter"),
            "metrics": meta.get("metrics"), "max_length": meta["max_length"],
            "task": "multi_label" if thresholds is not None else "single_label"} \
        | ({"thresholds": thresholds} if thresholds is not None else {})
    data = (meta.get("run_config") or {}).get("data", {})
    settings, stats = _data_settings(data, (meta.get("run_config") or {}).get("resolved")), {}
    treatment = longtext.Treatment.of(data)
    info |= {"text_columns": settings["text_columns"], "long_text": treatment.mode}
    max_length = int(meta["max_length"])
    if meta["kind"] == "openvino":
        def make_openvino():
            from . import export
            tokenizer = export.export_tokenizer(path)
            request = openvino_request(path / export.OPENVINO_XML, precision)
            return _openvino_logits(request, tokenizer, max_length, batch_size, max_tokens, treatment, stats)
        return Predictor(meta["labels"], info | _backend_info("openvino", precision), settings, make_openvino,
                         thresholds, delimiter, stats=stats)
    if backend == "onnx":
        def make_onnx():
            clf = export.OnnxClassifier(path, threads=threads)
            return lambda texts: clf.logits(texts, max_length, batch_size=batch_size, stats=stats)
        return Predictor(meta["labels"], info | {"backend": "onnxruntime"}, settings, make_onnx, thresholds, delimiter,
                         stats=stats)

    def make():
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
        from . import remote_code
        from .model import attention_for
        remote_code.check_folder(path)
        config = AutoConfig.from_pretrained(str(path), local_files_only=True, **remote_code.kwargs())
        model = AutoModelForSequenceClassification.from_pretrained(str(path), config=config,
                                                                   attn_implementation=attention_for("auto", config),
                                                                   use_safetensors=True, local_files_only=True,
                                                                   **remote_code.kwargs()).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, **remote_code.kwargs())
        return _model_logits(model, tokenizer, max_length, backend, batch_size, precision, max_tokens,
                             treatment=treatment, stats=stats, pairs=len(settings["text_columns"]) == 2)
    return Predictor(meta["labels"], info | _backend_info(backend, precision), settings, make, thresholds, delimiter,
                     stats=stats)


def _model_logits(model, tokenizer, max_length: int, backend: str, batch_size: int, precision: str, max_tokens: int,
                  full_cast: bool = True, cls_only: bool = True, tune_malloc: bool = True,
                  treatment: longtext.Treatment = longtext.Treatment(), stats: dict | None = None, pairs: bool = False):
    """texts (or pairs) -> logits for a loaded (merged) model on torch or OpenVINO; torch's int8 precision
    quantizes the model once here (int8.py) and scores it in fp32 activations around int8 matmuls."""
    if precision == int8.PRECISION:
        int8.check_device(inference_device())
        model, precision = int8.quantize(model), "fp32"
    if backend == "openvino":
        request = openvino_compile(model, precision, cls_only, pairs and "token_type_ids" in tokenizer.model_input_names)
        return _openvino_logits(request, tokenizer, max_length, batch_size, max_tokens, treatment, stats)
    precision_mod.resolve_for(precision, inference_device(), model)  # refused at load, not on the first request
    return lambda texts: logits_for(model, tokenizer, texts, max_length, batch_size, precision, max_tokens=max_tokens,
                                    full_cast=full_cast, cls_only=cls_only, tune_malloc=tune_malloc,
                                    treatment=treatment, stats=stats)


def _openvino_logits(request, tokenizer, max_length: int, batch_size: int, max_tokens: int,
                     treatment: longtext.Treatment, stats: dict | None):
    """texts (or pairs) -> logits on a compiled OpenVINO model, encoded and batched as the torch backend does."""
    def openvino_fn(texts):
        enc = longtext.encode(tokenizer, data_mod.Examples(list(texts), None, []), max_length, treatment)
        if stats is not None:
            stats.update(enc.summary())
        return openvino_scores(request, enc, tokenizer.pad_token_id, batch_size, max_tokens)
    return openvino_fn


def _backend_info(backend: str, precision: str) -> dict:
    return {"backend": backend, "precision": precision}


def _data_settings(data: dict, resolved=None) -> dict:
    """How inputs are read (columns, encoding) and how predictions write a class: "names" or "ids" as the run's
    config.json records (pipeline.label_output), None for a run from before that record (ids, and numbers in
    its label columns read as class ids)."""
    output = resolved.get("predict.labels") if isinstance(resolved, dict) else None
    return {"text_column": data.get("text_column", "text"), "label_column": data.get("label_column", "label"),
            "encoding": data.get("encoding", "utf-8"), "text_columns": longtext.text_columns(data),
            "label_output": output if output in ("names", "ids") else None}
