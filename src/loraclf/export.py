"""`loraclf export RUN --merged DIR`, `--onnx DIR` and `--openvino DIR`: a run's adapter merged into its base
model, as a plain Hugging Face folder (loads with transformers alone, no peft), as an ONNX graph for onnxruntime,
or as an OpenVINO model converted once (so `predict --backend openvino` does not convert on every call).

An export folder holds:
  config.json            the Hugging Face config (id2label/label2id = the run's class names; nothing about peft)
  model.safetensors      merged fp32 weights (--merged only)
  model.onnx             the graph, inputs input_ids + attention_mask (+ token_type_ids for sentence pairs where the
                         tokenizer makes them; int64), output logits (--onnx only)
  openvino_model.xml/.bin  the OpenVINO model, same inputs and output, fp32 weights, the last layer computing only
                         the head's row where that is exact for the family (--openvino only)
  tokenizer files        the run's tokenizer
  labels.json            class names, in id order
  loraclf.json           what serving and `predict` need: kind, max_length, labels, budget, metrics,
                         the run's config
  README.md              model card: base model, data, budget breakdown, metrics, intended use

The merge is done in fp32. Every export is checked before it is put in place: the merged folder reloaded by
transformers must give the unmerged peft model's logits within 1e-4, onnxruntime the PyTorch logits within
1e-3, and the saved OpenVINO model (reloaded, fp32) the PyTorch logits within 1e-3. The folder is written to a temp folder and swapped in, so a failed export leaves nothing half-written.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np

from . import longtext, multilabel
from . import rundir
from . import scoring
from .errors import UserError, first_line

META = "loraclf.json"
EXPORT_FORMAT = "loraclf-export"
MERGED_ATOL, ONNX_ATOL, OPENVINO_ATOL = 1e-4, 1e-3, 1e-3
OPENVINO_XML = "openvino_model.xml"
# Texts of varied length (so the check batches mix padding and none) for the built-in export checks.
CHECK_TEXTS = [
    "Stocks rallied on Wall Street after the central bank held interest rates steady.",
    "The home side scored twice in the final ten minutes to win the cup.",
    "A new chip promises faster machine learning on phones.",
    "Talks between the two governments broke down on Tuesday, officials said, and the ministers left "
    "the summit without a joint statement on the border dispute or the refugee crisis.",
    "ok",
    "",
    "Oil prices fell.",
    "Researchers released an open-source compiler that cuts build times in half for large projects.",
]


# ------------------------------------------------------------------------------------------ helpers

def is_export(path) -> bool:
    return (Path(path) / META).is_file()


KINDS = ("merged", "onnx", "openvino")


def read_meta(export_dir) -> dict:
    """An export's loraclf.json, checked as a run directory's files are: its kind, its classes (as many as the
    model's outputs), its scoring length and the run config it carries (config.from_dict's checks)."""
    from . import config as config_mod
    export_dir = Path(export_dir)
    meta = rundir.read_json_or(export_dir / META)
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise UserError(f"{export_dir} is not a loraclf export (no valid {META})",
                        "give a folder written by `loraclf export RUN --merged DIR`, `--onnx DIR` or `--openvino DIR`")

    def refuse(what: str):
        return UserError(f"{export_dir / META} {what}", "export the run again")

    labels, max_length = meta.get("labels"), meta.get("max_length")
    if meta.get("kind") not in KINDS:
        raise refuse(f"has an unknown kind {str(meta.get('kind'))[:30]!r}")
    if (not isinstance(labels, list) or len(labels) < 2 or len(set(map(str, labels))) != len(labels)
            or not all(isinstance(n, str) and n.strip() for n in labels)):
        raise refuse("has no list of two or more distinct class names")
    model_config = rundir.read_json_or(export_dir / "config.json", {}) or {}
    outputs = model_config.get("id2label") if isinstance(model_config, dict) else None
    if isinstance(outputs, dict) and len(outputs) != len(labels):
        raise refuse(f"names {len(labels)} classes, but its model has {len(outputs)} outputs")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length <= 1_000_000:
        raise refuse(f"has a max_length of {str(max_length)[:30]}, not a token count")
    try:
        config_mod.from_dict(meta.get("run_config") or {})
    except UserError as e:
        raise refuse(f"carries a run config that loraclf refuses ({e.what})") from None
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as e:
        raise refuse(f"carries a run config that is not a loraclf config ({type(e).__name__})") from None
    positions = model_config.get("max_position_embeddings") if isinstance(model_config, dict) else None
    if isinstance(positions, int) and max_length > positions:
        raise refuse(f"has a max_length of {max_length}, more than its model's {positions} positions")
    return meta


def _check_run(run_dir) -> "rundir.RunDir":
    return run_dir if isinstance(run_dir, rundir.RunDir) else rundir.RunDir.open(run_dir)


def _check_out(out: Path, overwrite: bool, run: Path | None = None) -> None:
    """An export folder: new, empty, or (with --overwrite) an earlier export; never the run it exports from, a
    folder inside it or one holding it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"export folder {out} is a file", "give a folder path")
    if run is not None and (rundir.inside(out, run) or rundir.inside(run, out)):
        raise UserError(f"export folder {out} overlaps the run {run} it exports", "give a folder outside the run")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"export folder {out} already exists and is not empty",
                            "pass --overwrite to replace it, or choose another folder")
        if not (out / META).is_file():
            raise UserError(f"export folder {out} is not a loraclf export, and --overwrite replaces only those",
                            "choose another folder (or empty that one yourself)")


def merged_model(run_dir):
    """The run's model with its adapter merged into the base weights, in fp32, in eval mode.
    Returns (merged, unmerged_or_None, cfg, label_names); unmerged is the peft model (for checking)."""
    from .model import load_run_model
    model, cfg, label_names = load_run_model(_check_run(run_dir), merged=False)
    model = model.float()
    if not hasattr(model, "merge_and_unload"):  # adapter.method == "none": a full model already
        return model.eval(), None, cfg, label_names
    import copy
    unmerged = copy.deepcopy(model).eval()
    merged = model.merge_and_unload().eval()
    return merged, unmerged, cfg, label_names


def _clean_config(model, label_names: list[str]) -> None:
    """config.json of the export: the class names, fp32, nothing that points at peft or the adapter."""
    c = model.config
    c.id2label = dict(enumerate(label_names))
    c.label2id = {n: i for i, n in enumerate(label_names)}
    c.num_labels = len(label_names)
    for attr in ("_name_or_path",):
        if hasattr(c, attr):
            setattr(c, attr, "")
    try:
        c.dtype = "float32"
    except Exception:  # noqa: BLE001 - older transformers call it torch_dtype
        c.torch_dtype = "float32"


def _copy_tokenizer(run_dir: Path, out: Path) -> None:
    src = run_dir / "tokenizer"
    if not src.is_dir():
        raise UserError(f"{run_dir} has no tokenizer/ folder", "re-run training with this version of loraclf")
    for f in src.iterdir():
        if f.is_file() and f.name not in ("config.json", "README.md", META):
            shutil.copy2(f, out / f.name)


def metrics_summary(run_dir: Path) -> dict:
    m = rundir.read_json_or(run_dir / "metrics.json", {}) or {}
    out = {}
    for split in ("val", "test"):
        s = m.get(split)
        if isinstance(s, dict) and "accuracy" in s:
            out[split] = {k: s[k] for k in ("n", "accuracy", "macro_f1", "loss") if k in s}
    for p in sorted(run_dir.glob("eval-*.json")):
        s = rundir.read_json_or(p)
        if isinstance(s, dict) and "accuracy" in s:
            out[p.stem] = {k: s[k] for k in ("n", "accuracy", "macro_f1", "loss") if k in s}
    return out


def _meta(kind: str, run_dir: Path, cfg, label_names: list[str], extra: dict | None = None) -> dict:
    from dataclasses import asdict
    budget = rundir.read_json_or(run_dir / "budget.json") or (rundir.read_json_or(run_dir / "metrics.json", {}) or {}).get("budget")
    cfg_dict = rundir.read_json_or(run_dir / "config.json") or asdict(cfg)
    return {"format": EXPORT_FORMAT, "version": 1, "kind": kind, "source_run": str(run_dir.resolve()),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "base_model": cfg.model.name,
            "adapter": {"method": cfg.adapter.method, "r": cfg.adapter.r, "alpha": cfg.adapter.alpha,
                        "target_modules": list(cfg.adapter.target_modules)},
            "max_length": scoring.infer_length(cfg), "labels": list(label_names), "budget": budget,
            "budget_limit": cfg.budget.max_trainable, "metrics": metrics_summary(run_dir),
            "inputs": rundir.read_json_or(run_dir / "inputs.json"), "run_config": cfg_dict} \
        | multilabel.export_meta(run_dir, cfg, label_names) | (extra or {})


def _write_common(out: Path, run_dir: Path, meta: dict, model_config) -> None:
    _copy_tokenizer(run_dir, out)
    rundir.write_json(out / "labels.json", meta["labels"])
    rundir.write_json(out / META, meta)
    rundir.write_text(out / "README.md", model_card(meta))
    if model_config is not None and not (out / "config.json").exists():
        model_config.save_pretrained(str(out))


def _build(out: Path, overwrite: bool, fill, staged: list | None = None) -> Path:
    """Write an export into a temp folder beside `out`, then swap it into place; with `staged` (export_run's
    several exports) the (temp, out) pair is kept there instead, to be swapped in once every export succeeded."""
    out = Path(out)
    _check_out(out, overwrite)
    tmp = rundir.temp_dir(out)
    try:
        fill(tmp)
        mode = 0o666 & ~rundir.umask()
        for f in tmp.iterdir():  # some writers (safetensors) make 0600 files
            if f.is_file():
                os.chmod(f, mode)
        if staged is not None:
            staged.append((tmp, out))
        else:
            rundir.replace_dir(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # a full disk while the export was being written
            raise rundir.write_error(out, e) from None
        raise
    return out


def _torch_logits(model, tokenizer, texts: list[str], cfg, batch_size: int = 64) -> np.ndarray:
    import torch
    return scoring.logits_for(model, tokenizer, texts, scoring.infer_length(cfg), batch_size, precision="fp32",
                              device=torch.device("cpu"), treatment=longtext.Treatment.of(cfg.data))


def _check_texts(cfg, texts: list[str]) -> list:
    """The export check's inputs as the run takes them: texts, or pairs of them."""
    if len(longtext.text_columns(cfg.data)) == 2:
        return list(zip(texts, texts[1:] + texts[:1]))
    return texts


def export_tokenizer(path: Path):
    """An export's tokenizer, from its folder only."""
    from transformers import AutoTokenizer
    from . import remote_code
    remote_code.check_folder(path)
    return AutoTokenizer.from_pretrained(str(path), local_files_only=True, **remote_code.kwargs())


# ------------------------------------------------------------------------------------------ merged

def export_merged(run_dir, out, overwrite: bool = False, check_texts: list[str] | None = None, _loaded=None,
                  _staged: list | None = None) -> Path:
    """A plain Hugging Face folder: AutoModelForSequenceClassification.from_pretrained(out) needs no peft."""
    run = _check_run(run_dir)
    _check_out(Path(out), overwrite, run.path)
    run_dir = run.path
    merged, unmerged, cfg, label_names = _loaded or merged_model(run)
    tokenizer = run.tokenizer()
    texts = _check_texts(cfg, list(check_texts or CHECK_TEXTS))
    reference = _torch_logits(unmerged if unmerged is not None else merged, tokenizer, texts, cfg)

    def fill(tmp: Path) -> None:
        from transformers import AutoModelForSequenceClassification
        _clean_config(merged, label_names)
        merged.save_pretrained(str(tmp), safe_serialization=True)
        for f in tmp.glob("*.bin"):  # weights only as safetensors
            f.unlink()
        meta = _meta("merged", run_dir, cfg, label_names, {"weights": "model.safetensors", "dtype": "float32"})
        _write_common(tmp, run_dir, meta, None)
        from . import remote_code
        reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp), attn_implementation="eager",
                                                                      use_safetensors=True, **remote_code.kwargs()).eval()
        diff = float(np.abs(_torch_logits(reloaded, tokenizer, texts, cfg) - reference).max())
        if not diff <= MERGED_ATOL:
            raise UserError(f"the merged model's logits differ from the run's by {diff:.2e} (limit {MERGED_ATOL:g})",
                            "this adapter cannot be merged exactly; serve or predict from the run directory instead")

    return _build(Path(out), overwrite, fill, _staged)


# ------------------------------------------------------------------------------------------ ONNX

def _onnx_export(model, path: Path, opset: int, exporter: str, types: bool = False) -> str:
    """torch.onnx.export with batch and sequence dynamic. exporter: 'dynamo' (torch.export based, the default
    in torch>=2.9, needs onnxscript), 'legacy' (TorchScript based) or 'auto' (dynamo, else legacy). `types`:
    token_type_ids as a third input (sentence pairs)."""
    import logging

    import torch
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2460, 102, 0, 0, 0]])  # one padded row
    ids = ids.clamp(max=model.config.vocab_size - 1)
    mask = torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]])
    inputs = (ids, mask) + ((torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 0, 0]]),) if types else ())
    names = dict(input_names=["input_ids", "attention_mask"] + (["token_type_ids"] if types else []),
                 output_names=["logits"])
    onnx_log = logging.getLogger("torch.onnx")
    # torch.onnx's notes ("torchvision is not installed") and torch.export's graph dumps on a failed trace are not
    # for users: a failure is the one line this module raises
    quiet = [onnx_log] + [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
                          if n.startswith(("torch._dynamo", "torch._export", "torch.export", "torch.fx", "torch._subclasses"))]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    try:
        return _try_exporters(model, path, opset, exporter, inputs, names)
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)


def _try_exporters(model, path: Path, opset: int, exporter: str, inputs: tuple, names: dict) -> str:
    import warnings

    import torch
    errors = []
    for kind in (["dynamo", "legacy"] if exporter == "auto" else [exporter]):
        try:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                warnings.simplefilter("ignore")
                if kind == "dynamo":
                    import onnxscript  # noqa: F401 - the dynamo exporter needs it; fail early and clearly
                    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
                    small = sum(p.numel() * p.element_size() for p in model.parameters()) < 1.5 * 2**30
                    torch.onnx.export(model, inputs, str(path), dynamo=True, opset_version=opset,
                                      external_data=not small,  # one file below protobuf's 2 GB limit
                                      dynamic_shapes=tuple({0: batch, 1: seq} for _ in inputs), verbose=False, **names)
                else:
                    axes = {n: {0: "batch", 1: "sequence"} for n in names["input_names"]}
                    torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=opset,
                                      dynamic_axes=axes | {"logits": {0: "batch"}}, **names)
            return kind
        except ImportError as e:
            errors.append(f"{kind}: {e}")
        except Exception as e:  # noqa: BLE001 - exporter failures are many kinds; try the other one
            first = re.sub(r"\x1b\[[0-9;]*m", "", first_line(e, 300))[:200]  # no colour codes
            errors.append(f"{kind}: {type(e).__name__}: {first}")
        for f in path.parent.glob(path.name + "*"):
            f.unlink()
    raise UserError(f"ONNX export failed ({'; '.join(errors)})",
                    "pip install 'loraclf[onnx]' (onnx, onnxruntime, onnxscript), or try --onnx-exporter legacy")


def export_onnx(run_dir, out, overwrite: bool = False, opset: int = 18, exporter: str = "auto",
                check_texts: list[str] | None = None, _loaded=None, _staged: list | None = None) -> Path:
    """ONNX graph of the merged fp32 model; checked against PyTorch with onnxruntime before it is kept."""
    _require_onnxruntime()
    _check_opset(opset)
    run = _check_run(run_dir)
    _check_out(Path(out), overwrite, run.path)
    run_dir = run.path
    merged, _, cfg, label_names = _loaded or merged_model(run)
    from . import families
    family = families.family_of(merged)
    if family is not None and not family.onnx:
        raise UserError(f"ONNX export does not support {family.name} models (torch.onnx cannot trace them)",
                        "use the --merged export, or predict from the run")
    tokenizer = run.tokenizer()
    texts = _check_texts(cfg, list(check_texts or CHECK_TEXTS))
    types = len(longtext.text_columns(cfg.data)) == 2 and "token_type_ids" in tokenizer.model_input_names

    def fill(tmp: Path) -> None:
        import torch
        model = merged
        if getattr(model.config, "_attn_implementation", "eager") != "eager":  # trace the plain-math attention
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation("eager")
            else:
                model.config._attn_implementation = "eager"
        _clean_config(model, label_names)
        reference = _torch_logits(model, tokenizer, texts, cfg)
        problems = []
        # auto: the dynamo exporter, and the legacy one where dynamo's graph fails the check (it may fix a shape
        # that should stay dynamic: Canine's, Funnel's sequence length)
        for kind in (["dynamo", "legacy"] if exporter == "auto" else [exporter]):
            try:
                with torch.no_grad():
                    _onnx_export(model, tmp / "model.onnx", opset, kind, types)
                meta = _meta("onnx", run_dir, cfg, label_names, {"onnx": "model.onnx", "opset": opset, "exporter": kind})
                _write_common(tmp, run_dir, meta, model.config)
                problem = _onnx_check(tmp, texts, reference)
            except UserError as e:
                problem = e.what.removeprefix("ONNX export failed (").removesuffix(")").removeprefix(f"{kind}: ")
            if problem is None:
                return
            problems.append(f"{kind}: {problem}")
            for f in tmp.iterdir():
                if f.is_dir():
                    shutil.rmtree(f)
                else:
                    f.unlink()
        raise UserError(f"ONNX export failed ({'; '.join(problems)})",
                        ("try another --opset" if exporter == "auto" else "try --onnx-exporter auto or another --opset")
                        + ", or use the --merged export")

    return _build(Path(out), overwrite, fill, _staged)


MIN_OPSET = 14  # scaled_dot_product attention and the ops transformers' encoders trace to need it


def _check_opset(opset: int) -> None:
    """--opset within what both exporters write and this onnx reads (an opset outside is not an ONNX graph here)."""
    try:
        import onnx
    except ImportError:
        raise UserError("onnx is not installed", "pip install 'loraclf[onnx]' (onnx, onnxruntime, onnxscript)") from None
    top = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= top:
        raise UserError(f"--opset {opset} is not an ONNX opset loraclf can export to", f"give --opset {MIN_OPSET} to {top}")


def _onnx_check(folder: Path, texts: list[str], reference: np.ndarray) -> str | None:
    """What is wrong with an exported graph on texts of several lengths under onnxruntime, or None."""
    try:
        got = OnnxClassifier(folder).logits(texts)
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors (a shape the export fixed, a missing kernel)
        return f"onnxruntime cannot run it: {type(e).__name__}: {first_line(e, 160)}"
    diff = float(np.abs(got - reference).max())
    return None if diff <= ONNX_ATOL else f"onnxruntime's logits differ from PyTorch's by {diff:.2e} (limit {ONNX_ATOL:g})"


# ------------------------------------------------------------------------------------------ OpenVINO

def export_openvino(run_dir, out, overwrite: bool = False, check_texts: list[str] | None = None, _loaded=None,
                    _staged: list | None = None) -> Path:
    """The merged fp32 model converted to OpenVINO once and saved (openvino_model.xml + .bin); reloaded and checked
    against PyTorch before it is kept. `predict --backend openvino` on the folder compiles it without converting."""
    scoring.require_openvino()
    run = _check_run(run_dir)
    _check_out(Path(out), overwrite, run.path)
    run_dir = run.path
    merged, _, cfg, label_names = _loaded or merged_model(run)
    tokenizer = run.tokenizer()
    texts = _check_texts(cfg, list(check_texts or CHECK_TEXTS))
    types = len(longtext.text_columns(cfg.data)) == 2 and "token_type_ids" in tokenizer.model_input_names
    from . import fastpath
    cls_only = bool(cfg.scoring.cls_only_last_layer) and fastpath.first_token_layer_applies(merged)

    def fill(tmp: Path) -> None:
        import openvino as ov
        _clean_config(merged, label_names)
        reference = _torch_logits(merged, tokenizer, texts, cfg)
        ov.save_model(scoring.openvino_convert(merged, cls_only, types), str(tmp / OPENVINO_XML), compress_to_fp16=False)
        meta = _meta("openvino", run_dir, cfg, label_names, {"openvino": OPENVINO_XML, "dtype": "float32",
                                                                "token_type_ids": types, "cls_only_last_layer": cls_only})
        _write_common(tmp, run_dir, meta, merged.config)
        got = scoring.load_predictor(tmp, "openvino", precision="fp32").logits(texts)
        diff = float(np.abs(got - reference).max())
        if not diff <= OPENVINO_ATOL:
            raise UserError(f"OpenVINO's logits differ from PyTorch's by {diff:.2e} (limit {OPENVINO_ATOL:g})",
                            "use the --merged export and predict with --backend torch")

    return _build(Path(out), overwrite, fill, _staged)


def _require_onnxruntime():
    try:
        import onnxruntime
        return onnxruntime
    except ImportError:
        raise UserError("onnxruntime is not installed", "pip install 'loraclf[onnx]' (onnx, onnxruntime, onnxscript)") from None


class OnnxClassifier:
    """onnxruntime inference on an ONNX export: same tokenization, truncation and length-sorted batching as
    `loraclf predict`, results in input order."""

    def __init__(self, export_dir, threads: int = 0):
        ort = _require_onnxruntime()
        self.dir = Path(export_dir)
        self.meta = read_meta(self.dir)
        if not (self.dir / "model.onnx").is_file():
            raise UserError(f"{self.dir} has no model.onnx", "export one with `loraclf export RUN --onnx DIR`")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 4  # fatal only: a kernel that fails is reported once, by the check, in one line
        self.session = ort.InferenceSession(str(self.dir / "model.onnx"), opts, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = export_tokenizer(self.dir)
        self.labels = self.meta["labels"]
        self.max_length = int(self.meta["max_length"])
        self.treatment = longtext.Treatment.of((self.meta.get("run_config") or {}).get("data", {}))

    def logits(self, texts: list, max_length: int | None = None, batch_size: int = 64,
               stats: dict | None = None) -> np.ndarray:
        """Logits of texts (or (a, b) pairs for a run on sentence pairs), treated as the run was (longtext)."""
        from . import data as data_mod
        if not texts:
            return np.zeros((0, len(self.labels)), np.float32)
        enc = longtext.encode(self.tokenizer, data_mod.Examples(list(texts), None, []), max_length or self.max_length,
                              self.treatment)
        if stats is not None:
            stats.update(enc.summary())
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = np.zeros((len(enc), len(self.labels)), np.float32)
        for index in data_mod.scoring_batches(enc.lengths, batch_size):
            rows = [enc.input_ids[i] for i in index]
            width = max(len(r) for r in rows)
            ids = np.full((len(rows), width), pad, np.int64)
            mask = np.zeros((len(rows), width), np.int64)
            types = np.zeros((len(rows), width), np.int64)
            for j, r in enumerate(rows):
                ids[j, :len(r)] = r
                mask[j, :len(r)] = 1
                if enc.token_type_ids is not None:
                    types[j, :len(r)] = enc.token_type_ids[index[j]]
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            out[index] = self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.inputs})[0]
        return longtext.pooled(out, enc)


_SESSIONS: dict = {}


def onnx_logits(export_dir, texts: list[str], max_length: int | None = None, batch_size: int = 64) -> np.ndarray:
    """Logits (n, classes) from an ONNX export, in input order (the session is cached per folder)."""
    key = str(Path(export_dir).resolve())
    if key not in _SESSIONS:
        _SESSIONS[key] = OnnxClassifier(export_dir)
    return _SESSIONS[key].logits(texts, max_length, batch_size)




# ------------------------------------------------------------------------------------------ model card

def _source_name(s: str) -> str:
    return os.path.basename(s.rstrip("/")) if os.path.isabs(s) or os.path.exists(s) else s


def _pct(v) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) else "-"


def model_card(meta: dict) -> str:
    """README.md of an export: base model, data, budget breakdown, metrics, intended use, how to load it."""
    base = meta.get("base_model", "?")
    a = meta.get("adapter", {})
    labels = meta.get("labels", [])
    kind = meta.get("kind")
    hub_base = not (os.path.isabs(base) or base.startswith((".", "pkg:")) or os.path.exists(base))
    title = {"merged": "merged", "onnx": "ONNX", "openvino": "OpenVINO"}.get(kind, kind)
    front = ["---", "library_name: " + {"merged": "transformers", "openvino": "openvino"}.get(kind, "onnx"),
             "pipeline_tag: text-classification", "tags: [loraclf, lora, text-classification]"]
    if hub_base:
        front.append(f"base_model: {base}")
    front.append("---")
    run_name = Path(meta.get("source_run", "run")).name
    lines = front + ["", f"# {run_name}: {_source_name(base)} + {a.get('method', 'lora')} ({title})", ""]
    lines += ["## Model", "",
              f"- Base model: `{_source_name(base)}`",
              f"- Adapter: {a.get('method')} r={a.get('r')} alpha={a.get('alpha')} on "
              f"{', '.join(a.get('target_modules', []))}, merged into the base weights in fp32",
              f"- Maximum input length: {meta.get('max_length')} tokens (longer texts: "
              f"{(meta.get('run_config') or {}).get('data', {}).get('long_text', 'truncate')}, as loraclf predict does)",
              f"- Classes ({len(labels)}): " + ", ".join(f"{i} = {n}" for i, n in enumerate(labels)), ""]
    multi = meta.get("task") == "multi_label"
    if multi:
        lines[-1:] = ["- Multi-label: a label is predicted when its sigmoid probability reaches its threshold, chosen on "
                      "validation (" + ", ".join(f"{n} {t:.4f}" for n, t in zip(labels, meta.get("thresholds") or [])) + ")", ""]
    if kind == "merged":
        lines += ["Plain Hugging Face format (config.json, model.safetensors, tokenizer); peft is not needed to load it.", ""]
    elif kind == "openvino":
        lines += ["OpenVINO IR (openvino_model.xml + .bin, fp32 weights): inputs `input_ids`, `attention_mask` (int64, "
                  "batch x sequence), output logits (batch x classes). OpenVINO's CPU runtime may compute in bf16 "
                  "where the CPU has native bf16 (its INFERENCE_PRECISION_HINT).", ""]
    else:
        lines += [f"ONNX (opset {meta.get('opset')}, {meta.get('exporter')} exporter): inputs `input_ids`, `attention_mask` "
                  "(int64, batch x sequence), output `logits` (batch x classes).", ""]
    inputs = meta.get("inputs") or {}
    dcfg = (meta.get("run_config") or {}).get("data", {})
    lines += ["## Data", ""]
    train = [_source_name(s) for s in inputs.get("data") or []]
    test = [_source_name(s) for s in inputs.get("test_data") or []]
    lines.append(f"- Training data: {', '.join(train) if train else 'not recorded'}"
                 + (f" (at most {dcfg['max_train_samples']} rows)" if dcfg.get("max_train_samples") else ""))
    if dcfg.get("val_size") is not None:
        lines.append(f"- Validation: {dcfg['val_size']} of the training data held out")
    lines.append(f"- Test data: {', '.join(test) if test else 'none given'}")
    lines.append("")
    b = meta.get("budget") or {}
    lines += ["## Trainable-parameter budget", ""]
    if b:
        lines += ["| group | trainable parameters |", "|---|---:|"]
        lines += [f"| {g} | {n:,} |" for g, n in (b.get("groups") or {}).items()]
        lines += [f"| **total trainable** | **{b.get('trainable', 0):,}** |", "",
                  f"{b.get('trainable', 0):,} of {b.get('total', 0):,} parameters trained ({b.get('percent', '?')}%)"
                  + (f"; budget {meta['budget_limit']:,}" if meta.get("budget_limit") else "") + ".", ""]
    else:
        lines += ["not recorded", ""]
    lines += ["## Metrics", ""]
    m = meta.get("metrics") or {}
    if m:
        lines += ["| split | n | accuracy | macro-F1 |", "|---|---:|---:|---:|"]
        for split, s in m.items():
            f1 = s.get("macro_f1")
            lines.append(f"| {split} | {s.get('n', '-')} | {_pct(s.get('accuracy'))} | {f'{f1:.4f}' if isinstance(f1, float) else '-'} |")
    else:
        lines.append("no evaluation recorded")
    lines += ["", "## Intended use", "",
              f"Classifying short English texts similar to the training data into: {', '.join(labels)}. "
              + ("Every input gets the labels whose probability reaches their threshold (possibly none); check the "
                 if multi else "Every input gets one of these classes, so out-of-domain texts are still assigned one; check the ")
              + "probabilities, and evaluate on your own data before relying on it. Not for decisions about people.", "",
              "## How to use", "", "```python"]
    if kind == "merged":
        lines += ["from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                  "model = AutoModelForSequenceClassification.from_pretrained(\"EXPORT_DIR\").eval()",
                  "tok = AutoTokenizer.from_pretrained(\"EXPORT_DIR\")",
                  f"enc = tok([\"some text\"], truncation=True, max_length={meta.get('max_length')}, padding=True, return_tensors=\"pt\")",
                  "label = model.config.id2label[model(**enc).logits.argmax(-1).item()]" if not multi else
                  f"labels = [model.config.id2label[k] for k, p in enumerate(model(**enc).logits.sigmoid()[0]) "
                  f"if p >= {[round(t, 6) for t in meta.get('thresholds') or []]}[k]]"]
    elif kind == "openvino":
        lines += ["import openvino as ov",
                  "from transformers import AutoTokenizer",
                  "tok = AutoTokenizer.from_pretrained(\"EXPORT_DIR\")",
                  "model = ov.Core().compile_model(\"EXPORT_DIR/openvino_model.xml\", \"CPU\")",
                  f"enc = tok([\"some text\"], truncation=True, max_length={meta.get('max_length')}, padding=True, return_tensors=\"np\")",
                  "logits = model({\"input_ids\": enc[\"input_ids\"], \"attention_mask\": enc[\"attention_mask\"]})[0]"]
    else:
        lines += ["import onnxruntime as ort",
                  "from transformers import AutoTokenizer",
                  "tok = AutoTokenizer.from_pretrained(\"EXPORT_DIR\")",
                  "sess = ort.InferenceSession(\"EXPORT_DIR/model.onnx\")",
                  f"enc = tok([\"some text\"], truncation=True, max_length={meta.get('max_length')}, padding=True, return_tensors=\"np\")",
                  "logits = sess.run([\"logits\"], {\"input_ids\": enc[\"input_ids\"], \"attention_mask\": enc[\"attention_mask\"]})[0]"]
    lines += ["```", "", "Or: `loraclf serve EXPORT_DIR`, `loraclf predict EXPORT_DIR INPUT`.",
              "", f"Exported by loraclf from run `{run_name}` on {meta.get('created', '')}.", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ both

def export_run(run_dir, merged_dir=None, onnx_dir=None, overwrite: bool = False, opset: int = 18,
               exporter: str = "auto", openvino_dir=None) -> dict:
    """`loraclf export`: the run merged once, written as a --merged folder and/or an --onnx one; every output
    folder and onnxruntime are checked before the merge starts. Returns {"merged": path, "onnx": path} of what
    was written."""
    if not merged_dir and not onnx_dir and not openvino_dir:
        raise UserError("nothing to export", "give --merged DIR, --onnx DIR and/or --openvino DIR")
    dirs = [Path(d).resolve() for d in (merged_dir, onnx_dir, openvino_dir) if d]
    if len(set(dirs)) < len(dirs):
        raise UserError("two exports were given the same folder", "give each of --merged, --onnx, --openvino its own")
    if any(a != b and rundir.inside(b, a) for a in dirs for b in dirs):
        raise UserError("one export folder is inside another", "give --merged, --onnx and --openvino separate folders")
    run = _check_run(Path(run_dir))
    for d in dirs:
        _check_out(d, overwrite, run.path)
    if onnx_dir:
        _require_onnxruntime()
        _check_opset(opset)
    if openvino_dir:
        scoring.require_openvino()
    loaded = merged_model(run)
    written, staged = {}, []  # all or nothing: the folders are swapped in once every export has passed its check
    try:
        if merged_dir:
            written["merged"] = export_merged(run, merged_dir, overwrite, _loaded=loaded, _staged=staged)
        if onnx_dir:
            written["onnx"] = export_onnx(run, onnx_dir, overwrite, opset, exporter, _loaded=loaded, _staged=staged)
        if openvino_dir:
            written["openvino"] = export_openvino(run, openvino_dir, overwrite, _loaded=loaded, _staged=staged)
        for i, (tmp, out) in enumerate(staged):
            rundir.replace_dir(tmp, out)
            staged[i] = (None, out)
    except BaseException:
        for tmp, _ in staged:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written
