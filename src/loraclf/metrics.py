"""Classification metrics (scikit-learn underneath) and their printed table."""
from __future__ import annotations

import numpy as np


MAX_PRINTED_CLASSES = 30  # a wider confusion matrix is no use as text (1,000 classes: a 9 MB log)


def classification(logits: np.ndarray, labels, label_names: list[str]) -> dict:
    """Loss, accuracy, macro-F1, per-class P/R/F1/support, confusion matrix raw and row-normalized."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    ids = list(range(len(label_names)))
    preds = logits.argmax(-1)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    loss = float(-log_probs[np.arange(len(labels)), labels].mean()) if len(labels) else float("nan")
    p, r, f, s = precision_recall_fscore_support(labels, preds, labels=ids, zero_division=0)
    cm = confusion_matrix(labels, preds, labels=ids)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.nan_to_num(cm / cm.sum(1, keepdims=True))
    return {
        "n": int(len(labels)),
        "loss": loss,
        "accuracy": float(accuracy_score(labels, preds)),
        "macro_f1": macro_f1(labels, preds),
        "per_class": {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, name in enumerate(label_names)},
        "confusion": cm.tolist(),
        "confusion_normalized": np.round(norm, 6).tolist(),
        "label_names": list(label_names),
    }


def macro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
    """F1 averaged over the classes that occur among the labels or the predictions (scikit-learn's default):
    a class of the model that neither the data nor the model uses (an id skipped in the labels, a class absent
    from this file) would count as a zero and pull the mean down for nothing."""
    from sklearn.metrics import f1_score
    occur = np.union1d(labels, preds)
    return float(f1_score(labels, preds, labels=occur, average="macro", zero_division=0)) if len(occur) else 0.0


def metrics_table(m: dict, title: str = "") -> str:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix, as text."""
    if m.get("task") == "multi_label":
        from . import multilabel
        return multilabel.metrics_table(m, title)
    names = m["label_names"]
    w = max(10, *(len(n) for n in names))
    out = [title] if title else []
    out.append(f"loss {m['loss']:.4f}   accuracy {100 * m['accuracy']:.2f}%   macro-F1 {m['macro_f1']:.4f}   (n={m['n']})")
    out.append(f"{'class':<{w}} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for n in names:
        c = m["per_class"][n]
        out.append(f"{n:<{w}} {c['precision']:>9.4f} {c['recall']:>9.4f} {c['f1']:>9.4f} {c['support']:>8}")
    if len(names) > MAX_PRINTED_CLASSES:
        out.append(f"confusion matrix: {len(names)} classes, in the metrics JSON (`confusion`)")
        return "\n".join(out)
    out.append("confusion (rows: true, columns: predicted)")
    out.append(" " * (w + 1) + " ".join(f"{n[:8]:>8}" for n in names))
    for n, row in zip(names, m["confusion"]):
        out.append(f"{n:<{w}} " + " ".join(f"{v:>8}" for v in row))
    return "\n".join(out)
