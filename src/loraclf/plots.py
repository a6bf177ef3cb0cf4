"""The report's figures (matplotlib, Agg backend). Each function takes plain run-directory data and returns a
Figure; `png(fig)` renders and closes it. Sizes grow with the number of classes, tick labels are class names
(shortened when very long), and `overlapping_labels(fig)` checks that no two tick labels collide."""
from __future__ import annotations

import io
import textwrap

import matplotlib

matplotlib.use("Agg")  # no display; must come before pyplot
import matplotlib.pyplot as plt  # noqa: E402

# class names come from data files: "$\frac{$" is a class name to print, not mathtext to parse (and fail on)
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

COLORS = {"train": "#1f77b4", "val": "#d62728", "test": "#2ca02c", "precision": "#4c72b0", "recall": "#dd8452",
          "f1": "#55a868"}
MAX_DRAWN_CLASSES = 60  # per-class and confusion figures past this would be metres wide (1,000 classes: 10^6 cells)
WRAP, LINES = 20, 3  # a class name on an axis: wrapped at 20 characters, at most 3 lines (full names in the tables)


def short(name: str, width: int = WRAP, lines: int = LINES) -> str:
    parts = textwrap.wrap(" ".join(str(name).split()), width, break_long_words=True) or [""]
    if len(parts) > lines:
        parts = parts[:lines]
        parts[-1] = parts[-1][: width - 1].rstrip() + "…"
    return "\n".join(parts)


def class_labels(names) -> list[str]:
    """Axis labels for class names: wrapped, shortened, and prefixed by the id where shortening made two equal."""
    out = [short(n) for n in names]
    if len(set(out)) < len(out):
        out = [short(f"{i}: {n}") for i, n in enumerate(names)]
    return out


def _style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11, fontweight="bold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.set_axisbelow(True)


def _series(records: list[dict], key: str):
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None and r.get("step") is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _marker(xs) -> str:
    return "o" if len(xs) <= 30 else ""


def _steps_axis(ax) -> None:
    """Optimizer steps: integers, from 0 (a run with one log step still gets a sensible axis)."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(left=0, right=max(ax.get_xlim()[1], 1))


def curves(records: list[dict], best_step: int | None = None):
    """Loss (train and validation) and validation accuracy / macro-F1 against optimizer steps."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for key, label, color in (("train_loss", "train loss", COLORS["train"]), ("val_loss", "validation loss", COLORS["val"])):
        xs, ys = _series(records, key)
        if xs:
            a1.plot(xs, ys, marker=_marker(xs), ms=4, color=color, label=label)
    _style(a1, "Loss", "optimizer step", "cross-entropy loss")
    for key, label, style in (("val_accuracy", "validation accuracy", "-"), ("val_macro_f1", "validation macro-F1", "--")):
        xs, ys = _series(records, key)
        if xs:
            a2.plot(xs, ys, style, marker=_marker(xs), ms=4, color=COLORS["val"], label=label)
    _style(a2, "Validation accuracy and macro-F1", "optimizer step", "score")
    a2.set_ylim(0, 1.02)
    for ax in (a1, a2):
        _steps_axis(ax)
        if best_step is not None:
            ax.axvline(best_step, color="grey", ls=":", lw=1, label=f"best step ({best_step})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no records yet", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle("Training curves (no per-step train accuracy is recorded)", fontsize=9, color="dimgrey")
    return fig


def lr_schedule(records: list[dict], scheduler: str = "", peak: float | None = None):
    """The learning rate of each train record (sampled at log steps), with the configured peak for reference."""
    fig, ax = plt.subplots(figsize=(7, 3.5), layout="constrained")
    xs, ys = _series(records, "lr")
    if xs:
        ax.plot(xs, ys, marker=_marker(xs), ms=4, color=COLORS["train"], label="learning rate used")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    else:
        ax.text(0.5, 0.5, "no learning-rate records", ha="center", va="center", transform=ax.transAxes, color="grey")
    if peak:
        ax.axhline(peak, color="grey", ls=":", lw=1, label=f"configured lr ({peak:g})")
    top = max([*ys, peak or 0]) or 1e-3
    ax.set_ylim(0, 1.15 * top)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    _steps_axis(ax)
    _style(ax, f"Learning rate used{f' ({scheduler} schedule)' if scheduler else ''}, at each log step",
           "optimizer step", "learning rate")
    return fig


def per_class(m: dict, split: str):
    """Horizontal grouped bars of precision / recall / F1 per class (names on the y axis stay readable)."""
    names = m["label_names"]
    n = len(names)
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.55 * n + 1.4)), layout="constrained")
    y = np.arange(n)
    h = 0.27
    for i, key in enumerate(("precision", "recall", "f1")):
        vals = [m["per_class"].get(c, {}).get(key, 0.0) for c in names]
        bars = ax.barh(y + (i - 1) * h, vals, h, label=key if key != "f1" else "F1", color=COLORS[key])
        if n <= 12:
            ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
    ax.set_yticks(y, class_labels(names))
    ax.set_ylim(n - 0.5, -0.5)  # first class on top, no empty margins
    ax.set_xlim(0, 1.12)
    _style(ax, f"Per-class precision, recall and F1 ({split}, n={m.get('n', '?')})", "score", "class")
    ax.grid(True, axis="x", alpha=0.3)
    ax.grid(False, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def confusion(m: dict, split: str, normalized: bool):
    names = class_labels(m["label_names"])
    n = len(names)
    cm = np.asarray(m["confusion_normalized"] if normalized else m["confusion"], dtype=float)
    side = max(5.0, 0.5 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    vmax = 1.0 if normalized else max(cm.max(), 1)
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=vmax)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="fraction of the true class (diagonal: recall)" if normalized else "examples")
    fs = 10 if n <= 6 else 8 if n <= 12 else 6
    for i in range(n):
        for j in range(n):
            v = cm[i, j]
            text = ("0" if v == 0 else f"{v:.2f}") if normalized else f"{int(v)}"
            ax.text(j, i, text, ha="center", va="center", fontsize=fs,
                    color="white" if v > 0.55 * vmax else "black")
    ax.set_xticks(range(n), names, fontsize=fs + 1)
    ax.set_yticks(range(n), names, fontsize=fs + 1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    kind = "normalized by true class" if normalized else "counts"
    ax.set_title(f"Confusion matrix, {split} ({kind})", fontsize=11, fontweight="bold")
    _fit_xticklabels(fig, ax)
    return fig


def splits(rows: dict[str, dict]):
    """Accuracy and macro-F1 of every evaluated split (validation, test, eval-*) side by side."""
    names = list(rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) + 2), 4), layout="constrained")
    x = np.arange(len(names))
    w = 0.38
    for i, (key, label, color) in enumerate((("accuracy", "accuracy", "#4c72b0"), ("macro_f1", "macro-F1", "#dd8452"))):
        bars = ax.bar(x + (i - 0.5) * w, [rows[s].get(key, 0.0) for s in names], w, label=label, color=color)
        ax.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    ax.set_xticks(x, ["\n".join(textwrap.wrap(f"{s} (n={rows[s].get('n', '?')})", 18)) for s in names])
    ax.set_ylim(0, 1.12)
    _style(ax, "Validation vs test", "split", "score")
    ax.grid(False, axis="x")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _fit_xticklabels(fig, ax)
    return fig


def png(fig, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def _fit_xticklabels(fig, ax) -> None:
    """Rotate x tick labels (45 degrees, then 90) only when they would overlap horizontally."""
    for rotation, ha in ((0, "center"), (45, "right"), (90, "center")):
        for t in ax.get_xticklabels():
            t.set_rotation(rotation)
            t.set_ha(ha)
            t.set_rotation_mode("anchor" if rotation == 45 else "default")
        if not _overlaps(drawn_ticklabels(ax, "x"), fig.canvas.get_renderer()):
            return


def _overlaps(texts, renderer) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text()]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]


def drawn_ticklabels(ax, axis: str) -> list:
    """The tick labels of ax.xaxis or ax.yaxis that are actually drawn (inside the view limits, non-empty)."""
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    labels = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    pos = (lambda t: t.get_position()[0]) if axis == "x" else (lambda t: t.get_position()[1])
    eps = 1e-9 * max(1.0, hi - lo)
    return [t for t in labels if t.get_visible() and t.get_text() and lo - eps <= pos(t) <= hi + eps]


def overlapping_labels(fig) -> list[tuple[str, str]]:
    """Pairs of drawn tick labels (within one axis of one subplot) whose boxes overlap; [] when readable."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found = []
    for ax in fig.axes:
        for axis in "xy":
            found += _overlaps(drawn_ticklabels(ax, axis), renderer)
    return found
