"""Multi-label classification (`data.task = "multi_label"`): rows hold a set of labels, not one.

Label sets are read from a list (JSON, JSONL, Parquet, pickles) or a string joined by `data.label_delimiter`
(CSV/TSV), as class ids or names, and held as multi-hot rows. The head is the single-label head (one output per
label, so the budget counts are the same); the loss is sigmoid/BCE, with per-label positive weights under
train.class_weight = "balanced". A label is predicted when its probability reaches its own threshold, chosen on
the validation split to maximize that label's F1 and saved in the run (thresholds.json) for evaluate, predict,
export and serve.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from . import untrusted
from .errors import UserError

TASKS = ("single_label", "multi_label")
THRESHOLDS = "thresholds.json"
DEFAULT_THRESHOLD = 0.5


def is_multi(cfg) -> bool:
    return cfg.data.task == "multi_label"


# ------------------------------------------------------------------------------------------ data

def _items(v, delimiter: str):
    """The labels of one cell, or None when the cell is not a label set."""
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return list(v)
    if isinstance(v, str):
        return [p.strip() for p in v.split(delimiter) if p.strip()]
    return None


def label_sets(t, label_col: str, names: list[str], delimiter: str, origin: str = "",
               numbers_are_ids: bool = False) -> tuple[list[list[int]], list[str], bool]:
    """A label column of sets (lists, or strings joined by `delimiter`) -> multi-hot rows, the label names, and
    whether the labels were written as names. Ids, numbers and names as data.load reads single labels
    (data.class_map); a row may hold no label (an empty list)."""
    from . import data
    if label_col not in t.columns:
        raise UserError(f"{t.where} has no column {data.column_label(label_col)!r} (columns: {data.column_list(t.columns)})",
                        data.LABEL_COLUMN_FIX)
    rows, raws = [], []
    for i, v in enumerate(t.columns[label_col]):
        if data.is_blank(v):
            raise UserError(f"{data.row_label(t, i)} column {label_col!r}: missing labels",
                            "fill in the labels (an empty list [] in JSON for none) or remove the row")
        items = _items(v, delimiter)
        if items is None:
            items = [v]  # a single id or name: a set of one
        values = []
        for x in items:
            try:
                values.append(data.class_id_or_name(x, names))
            except data.NotALabel as e:
                raise UserError(f"{data.row_label(t, i)} column {label_col!r}: label {untrusted.show(x)} {e}",
                                f"give each row a list of class ids or names (in CSV joined by {delimiter!r})") from None
        rows.append(values)
        raws.append(items)
    words = data.labels_are_words([x for r in rows for x in r])  # as written: before positions become names
    try:
        rows = [data.positions_to_names(r, t) for r in rows]
        index, names = data.class_map([x for r in rows for x in r], names, t.labels_one_based, origin, numbers_are_ids)
    except data.BadLabel as e:
        i = next(i for i, r in enumerate(rows) if e.value in r)
        raw = raws[i][rows[i].index(e.value)]
        raise UserError(f"{data.row_label(t, i)} column {label_col!r}: "
                        + e.problem.replace("{label}", data.shown_label(e.value, raw), 1), e.fix) from None
    hot = []
    for r in rows:
        row = [0] * len(names)
        for x in r:
            row[index[x]] = 1
        hot.append(row)
    return hot, list(names), words


def refuse_label_sets(t, label_col: str, names: list[str], delimiter: str) -> None:
    """A single-label task given label sets: one line that says so, before the labels are read as classes."""
    from . import data
    for i, v in enumerate(t.columns.get(label_col, ())):
        several = isinstance(v, (list, tuple, np.ndarray)) or (
            isinstance(v, str) and v.strip() not in names and len(_items(v, delimiter)) > 1)
        if several:
            fix = "for multi-label data --set data.task=multi_label"
            if isinstance(v, str):
                fix += f"; if {delimiter!r} is part of a class name, --set data.label_delimiter to another character"
            raise UserError(f"{data.row_label(t, i)} column {label_col!r}: label {untrusted.show(v)} is a set of "
                            "labels, but data.task is single_label", fix)


def check_classes(examples, sources: list[str]) -> None:
    hot = np.asarray(examples.labels)
    if len(examples.label_names) < 2 or hot.size == 0 or not hot.any():
        raise UserError(f"the training data ({', '.join(sources)}) has fewer than two labels or no row with a label",
                        "give rows with labels from at least two labels (and check data.label_column)")


# ------------------------------------------------------------------------------------------ loss

def check_pos_weight(cfg, label_names: list[str]) -> None:
    n = len(cfg.train.pos_weight)
    if n and n != len(label_names):
        raise UserError(f"train.pos_weight gives {n} weights for {len(label_names)} labels ({', '.join(label_names)})",
                        "give one positive weight per label, in label order")


def loss_fn(labels, num_labels: int, class_weight: str, smoothing: float, device, weights=()):
    """BCE with logits; the positives of label k weighted by `weights`[k] (train.pos_weight), or with `balanced` by
    its n_negative / n_positive (torch's pos_weight); label smoothing pulls targets towards 1/2."""
    import torch
    import torch.nn.functional as F
    pos_weight = torch.tensor(list(weights), dtype=torch.float32, device=device) if len(weights) else None
    if class_weight == "balanced":
        hot = np.asarray(labels, dtype=np.float64).reshape(-1, num_labels)
        pos = hot.sum(0)
        pos_weight = torch.tensor((len(hot) - pos) / np.maximum(pos, 1), dtype=torch.float32, device=device)

    def loss(logits, y):
        target = y.float()
        if smoothing:
            target = target * (1 - smoothing) + smoothing / 2
        return F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
    return loss


# ------------------------------------------------------------------------------------------ thresholds

def probabilities(logits) -> np.ndarray:
    from scipy.special import expit
    return expit(np.asarray(logits, dtype=np.float64))


def decide(logits, thresholds) -> np.ndarray:
    """Multi-hot predictions: a label where its probability reaches its threshold."""
    return (probabilities(logits) >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)


def tune_thresholds(logits, labels) -> list[float]:
    """Per label, the threshold that maximizes its F1 on these (validation) rows: halfway between the probability
    that starts the best positive set and the next lower one. A label without positives keeps 0.5."""
    from sklearn.metrics import precision_recall_curve
    probs, hot = probabilities(logits), np.asarray(labels)
    out = []
    for k in range(probs.shape[1]):
        if hot[:, k].sum() == 0:
            out.append(DEFAULT_THRESHOLD)
            continue
        precision, recall, cuts = precision_recall_curve(hot[:, k], probs[:, k])
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[: len(cuts)]
        best = int(np.argmax(f1))  # the first maximum: the lowest cut, so ties keep more recall
        lower = cuts[best - 1] if best > 0 else 0.0
        out.append(float((cuts[best] + lower) / 2))
    return out


def save_thresholds(run_dir: Path, label_names: list[str], thresholds: list[float], chosen_on: str) -> None:
    from . import rundir
    rundir.write_json(Path(run_dir) / THRESHOLDS, {"labels": list(label_names), "thresholds": list(thresholds),
                                                   "chosen_on": chosen_on})


def check_thresholds(doc, label_names: list[str], where: str) -> list[float]:
    """A thresholds document ({"labels": [...], "thresholds": [...]}) checked against the model's labels."""
    fix = "restore it from the run, or retrain the run"
    if not isinstance(doc, dict) or not isinstance(doc.get("thresholds"), list):
        raise UserError(f"{where} is not a thresholds file (an object with a \"thresholds\" list)", fix)
    values = doc["thresholds"]
    if doc.get("labels") != list(label_names) or len(values) != len(label_names):
        raise UserError(f"{where} holds {len(values)} thresholds for other labels than the model's {len(label_names)}", fix)
    for name, v in zip(label_names, values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 1:
            raise UserError(f"{where}: the threshold of {name!r} is {untrusted.show(v)}, not a number in [0, 1]", fix)
    return [float(v) for v in values]


def read_thresholds(run_dir: Path, label_names: list[str]) -> list[float]:
    path = Path(run_dir) / THRESHOLDS
    if not path.is_file():
        raise UserError(f"{path} is missing: a multi-label run needs its per-label thresholds",
                        "restore it from the run, or retrain the run")
    try:
        doc = untrusted.loads(path.read_bytes())
    except untrusted.JSONError as e:
        raise UserError(f"{path} is not valid JSON ({e.message})", "restore it from the run, or retrain the run") from None
    return check_thresholds(doc, label_names, str(path))


def export_meta(run_dir: Path, cfg, label_names: list[str]) -> dict:
    """What an export records of a multi-label run: the task and its thresholds."""
    if not is_multi(cfg):
        return {}
    return {"task": "multi_label", "thresholds": read_thresholds(run_dir, label_names),
            "label_delimiter": cfg.data.label_delimiter}


# ------------------------------------------------------------------------------------------ metrics

def metrics(logits, labels, label_names: list[str], thresholds=None) -> dict:
    """BCE loss, micro/macro/sample F1, subset accuracy (also as `accuracy`), hamming loss, per-label P/R/F1."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss, precision_recall_fscore_support
    logits = np.asarray(logits, dtype=np.float64)
    hot = np.asarray(labels, dtype=np.int64).reshape(len(logits), len(label_names))
    thresholds = [DEFAULT_THRESHOLD] * len(label_names) if thresholds is None else list(thresholds)
    pred = decide(logits, thresholds)
    # BCE from logits, stably: log(1 + e^x) - y x
    loss = float((np.logaddexp(0, logits) - hot * logits).mean()) if len(hot) else float("nan")
    p, r, f, s = precision_recall_fscore_support(hot, pred, zero_division=0)
    f1 = {avg: float(f1_score(hot, pred, average=avg, zero_division=0)) if len(hot) else 0.0
          for avg in ("micro", "macro", "samples")}
    subset = float(accuracy_score(hot, pred)) if len(hot) else 0.0
    return {
        "task": "multi_label",
        "n": int(len(hot)),
        "loss": loss,
        "accuracy": subset,
        "subset_accuracy": subset,
        "macro_f1": f1["macro"],
        "micro_f1": f1["micro"],
        "samples_f1": f1["samples"],
        "hamming_loss": float(hamming_loss(hot, pred)) if len(hot) else 0.0,
        "per_class": {name: {"precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
                             "support": int(s[k]), "threshold": float(thresholds[k])}
                      for k, name in enumerate(label_names)},
        "label_names": list(label_names),
    }


def metrics_table(m: dict, title: str = "") -> str:
    names = m["label_names"]
    w = max(10, *(len(n) for n in names))
    out = [title] if title else []
    out.append(f"loss {m['loss']:.4f}   micro-F1 {m['micro_f1']:.4f}   macro-F1 {m['macro_f1']:.4f}   "
               f"samples-F1 {m['samples_f1']:.4f}   subset accuracy {100 * m['subset_accuracy']:.2f}%   "
               f"hamming loss {m['hamming_loss']:.4f}   (n={m['n']})")
    out.append(f"{'label':<{w}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8} {'threshold':>9}")
    for n in names:
        c = m["per_class"][n]
        out.append(f"{n:<{w}} {c['precision']:>9.4f} {c['recall']:>9.4f} {c['f1']:>9.4f} {c['support']:>8} "
                   f"{c['threshold']:>9.4f}")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ outputs

def label_set(row, label_names: list[str], names: bool, delimiter: str) -> str:
    return delimiter.join(label_names[k] if names else str(k) for k in np.flatnonzero(row))


def submission_csv(ids, logits, label_names: list[str], thresholds, delimiter: str, names: bool = False,
                   probs: bool = False) -> str:
    """`ID,Labels`: each row's predicted label set joined by `delimiter` (+ one probability per label)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ID", "Labels"] + ([f"p_{n}" for n in label_names] if probs else []))
    pred, p = decide(logits, thresholds), probabilities(logits)
    for i, id_ in enumerate(ids):
        w.writerow([id_, label_set(pred[i], label_names, names, delimiter)] + ([f"{v:.6f}" for v in p[i]] if probs else []))
    return buf.getvalue()


def predictions_csv(examples, logits, label_names: list[str], thresholds, delimiter: str) -> str:
    """One row per example: id, true and predicted label sets (names), text, probabilities (for reports)."""
    from . import scoring
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "labels", "pred", "text"] + [f"p_{n}" for n in label_names])
    pred, p = decide(logits, thresholds), probabilities(logits)
    for i, id_ in enumerate(scoring.row_ids(examples)):
        true = label_set(examples.labels[i], label_names, True, delimiter) if examples.labels is not None else ""
        w.writerow([id_, true, label_set(pred[i], label_names, True, delimiter), examples.texts[i]]
                   + [f"{v:.6f}" for v in p[i]])
    return buf.getvalue()


def response(logits, label_names: list[str], thresholds) -> dict:
    """serve's /predict answer for a multi-label model: label sets as ids and names, sigmoid probabilities."""
    pred, p = decide(logits, thresholds), probabilities(logits)
    ids = [np.flatnonzero(r).tolist() for r in pred]
    return {"labels": ids, "names": [[label_names[k] for k in r] for r in ids], "probabilities": p.tolist()}
