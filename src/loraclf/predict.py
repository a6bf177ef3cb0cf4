"""`loraclf predict`: every row of an input scored by one of scoring's predictors, written as a submission; and the
submission and predictions CSV formats."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from . import data as data_mod
from . import multilabel
from . import rundir
from . import scoring
from .errors import UserError


def submission_csv(ids, logits: np.ndarray, label_names: list[str], names: bool = False, probs: bool = False,
                   thresholds=None, delimiter: str = "|") -> str:
    """`ID,Label` (+ one probability column per class with probs=True); with per-label `thresholds` (a multi-label
    model) `ID,Labels`, each row's label set joined by `delimiter` (multilabel.submission_csv). A label is the
    class id, or its name with `names` (for classes that are numbers, such as -1/0/1, the number)."""
    if thresholds is not None:
        return multilabel.submission_csv(ids, logits, label_names, thresholds, delimiter, names, probs)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ID", "Label"] + ([f"p_{n}" for n in label_names] if probs else []))
    preds = logits.argmax(-1)
    p = scoring.softmax(logits) if probs else None
    for i, (id_, y) in enumerate(zip(ids, preds)):
        row = [id_, label_names[y] if names else int(y)]
        if probs:
            row += [f"{v:.6f}" for v in p[i]]
        w.writerow(row)
    return buf.getvalue()


def predictions_csv(examples, logits: np.ndarray, label_names: list[str], thresholds=None, delimiter: str = "|") -> str:
    """One row per example with its text, true and predicted class and confidence (for reports); label sets for a
    multi-label model (multilabel.predictions_csv)."""
    if thresholds is not None:
        return multilabel.predictions_csv(examples, logits, label_names, thresholds, delimiter)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    p = scoring.softmax(logits)
    w.writerow(["id", "label", "pred", "confidence", "text"] + [f"p_{n}" for n in label_names])
    ids = scoring.row_ids(examples)
    for i, id_ in enumerate(ids):
        y = label_names[examples.labels[i]] if examples.labels is not None else ""
        k = int(p[i].argmax())
        text = examples.texts[i] if isinstance(examples.texts[i], str) else " || ".join(examples.texts[i])  # a pair
        w.writerow([id_, y, label_names[k], f"{p[i, k]:.6f}", text] + [f"{v:.6f}" for v in p[i]])
    return buf.getvalue()


def write_predictions(path: Path, source: str, out: Path, names: bool | None = None, probs: bool = False,
                      batch_size: int = 64, precision: str = "auto", trust_pickle: bool = False,
                      text_column: str | list[str] | None = None, max_tokens: int = -1, backend: str = "auto") -> dict:
    """Predict every row of `source` and write the submission atomically. `path`: a run directory or an export;
    `backend` (scoring.load_predictor): auto (the folder's own), torch, openvino (an --openvino export, or the
    merged model converted in-process, on OpenVINO's CPU runtime) or onnx (an --onnx export on onnxruntime). `text_column`: the input's text column
    (two for a run on sentence pairs) when it is not the run's."""
    rundir.check_output_file(Path(out), "-o", inputs=[path] + ([source] if Path(source).exists() else [])
                             + _model_folder(path))
    predictor = scoring.load_predictor(path, backend, batch_size, precision, max_tokens=max_tokens)
    d = predictor.data
    columns = input_columns(text_column, d["text_columns"])
    examples = data_mod.load(source, text_column=columns[0], label_column=d["label_column"],
                             label_names=predictor.labels, split="test", labelled=False, encoding=d["encoding"],
                             trust_pickle=trust_pickle, text_columns=columns,
                             task="single_label" if predictor.thresholds is None else "multi_label",
                             label_delimiter=predictor.label_delimiter,
                             numbers_are_ids=predictor.data["label_output"] is None)
    logits = predictor.logits(examples.texts)
    ids = scoring.row_ids(examples)
    if names is None:  # as the run's training labels were written (names, or ids)
        names = predictor.data["label_output"] == "names"
    rundir.write_text(Path(out), submission_csv(ids, logits, predictor.labels, names, probs, predictor.thresholds,
                                                predictor.label_delimiter))
    return {"rows": len(ids), "out": str(out), "logits": logits, "labels": examples.labels,
            "long_text": dict(predictor.stats)}


def _model_folder(path: Path) -> list:
    """The local base model folder a run reads (its config.json's model.name), which -o must not land in."""
    config = rundir.read_json_or(Path(path) / "config.json", {})
    name = (config.get("model") or {}).get("name") if isinstance(config, dict) else None
    return [name] if isinstance(name, str) and Path(name).is_dir() else []


def input_columns(given, run_columns: list[str]) -> list[str]:
    """The text columns to read: the ones given on the command line (as many as the run takes), else the run's."""
    if not given:
        return list(run_columns)
    given = [given] if isinstance(given, str) else list(given)
    if len(given) == len(run_columns):
        return given
    if len(run_columns) == 2:
        raise UserError(f"{len(given)} text column given, but this run scores sentence pairs",
                        "give two --text-column (first, then second text)")
    raise UserError(f"{len(given)} text columns given, but this run scores one text per row", "give one --text-column")
