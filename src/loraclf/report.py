"""`loraclf report RUN` and `loraclf compare RUN...`: plots, a self-contained report.html (images embedded as
base64) and report.md, from the run directory alone (no model is loaded). Every file except config.json is
optional; missing ones just drop their section. All text taken from the data is HTML-escaped."""
from __future__ import annotations

import base64
import csv
import html
import json
import math
import time
from pathlib import Path

from . import longtext
from . import rundir
from .errors import UserError, first_line

TOP_PAIRS, TOP_EXAMPLES, MAX_TEXT = 8, 4, 400


# ---------------------------------------------------------------- reading
def load(run_dir) -> dict:
    opened = rundir.RunDir.open(run_dir, model=False)
    run = opened.path
    d = {"dir": run, "name": run.resolve().name, "config": opened.config_dict,
         "labels": opened.labels, "budget": _json(run / "budget.json", None),
         "records": _jsonl(run / "metrics.jsonl"), "metrics": _json(run / "metrics.json", {}) or {}}
    d["budget"] = d["budget"] or d["metrics"].get("budget")
    d["splits"] = {k: d["metrics"][k] for k in ("val", "test") if isinstance(d["metrics"].get(k), dict)}
    for p in sorted(run.glob("eval-*.json")):
        m = _json(p, None)
        if isinstance(m, dict) and "accuracy" in m:
            d["splits"][p.stem] = m
    if not d["records"] and not d["splits"] and "train" not in d["metrics"]:
        raise UserError(f"{run} has no metrics yet (no metrics.jsonl records, no metrics.json)",
                        "wait for the first log step of the run, or train it to the end")
    d["labels"] = d["labels"] or next((m["label_names"] for m in d["splits"].values() if m.get("label_names")), None)
    return d


def _json(path: Path, default):
    try:
        return rundir.read_json(path) if path.is_file() else default
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e})", "the run directory is damaged; rerun or restore the file") from None


def _jsonl(path: Path) -> list[dict]:
    try:
        return rundir.read_jsonl(path)
    except (OSError, ValueError):  # a run being written: keep the lines that parse
        out = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out


def misclassified(path: Path, pairs: int = TOP_PAIRS, per_pair: int = TOP_EXAMPLES) -> list[dict]:
    """The most confident wrong predictions of predictions.csv, per (true, predicted) pair, pairs by error count."""
    if not path.is_file():
        return []
    csv.field_size_limit(2**31 - 1)
    found: dict[tuple[str, str], list] = {}
    with path.open(newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.DictReader(f):
            if row.get("label") in (None, "") or row.get("label") == row.get("pred"):
                continue
            try:
                conf = float(row.get("confidence") or "nan")
            except ValueError:
                conf = float("nan")
            found.setdefault((row["label"], row["pred"]), []).append((conf, row.get("id", ""), row.get("text", "")))
    ranked = sorted(found.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:pairs]
    return [{"true": t, "pred": p, "count": len(rows),
             "examples": [{"confidence": c, "id": i, "text": x}
                          for c, i, x in sorted(rows, key=lambda r: -r[0] if r[0] == r[0] else 0)[:per_pair]]}
            for (t, p), rows in ranked]


# ---------------------------------------------------------------- writing
# what reading a run's metrics files raises where someone edited them into shapes loraclf never writes
TAMPERED = (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError)


def not_as_written(what: str, e: Exception, fix: str) -> UserError:
    return UserError(f"{what}: its metrics files are not as loraclf writes them ({type(e).__name__}: "
                     f"{first_line(e, 120)})", fix)


def write(run_dir) -> Path:
    """Write plots/*.png, report.md and report.html into the run directory; returns the report.html path. Every
    figure is drawn before any file is written, so a run whose records cannot be drawn keeps what it had."""
    import matplotlib
    from . import plots
    run = Path(run_dir)
    if (run / "plots").is_symlink():
        raise UserError(f"{run / 'plots'} is a symbolic link: the report writes only inside the run directory",
                        "remove the link, then rerun `loraclf report`")
    try:
        d = load(run_dir)
        run = d["dir"]
        with matplotlib.rc_context(plots.PLAIN_TEXT):
            images = _draw(d, plots)
        d["images"] = images
        d["errors"] = misclassified(run / "predictions.csv")
        sections = _sections(d)
        markdown, html = _markdown(d, sections), _html(d, sections)
    except TAMPERED as e:
        raise not_as_written(f"cannot draw the report of {run}", e, "rerun the run, or restore its metrics.json and "
                             "metrics.jsonl") from None
    for key, (_, data) in images.items():
        rundir.write_bytes(run / "plots" / f"{key}.png", data)
    rundir.write_text(run / "report.md", markdown)
    rundir.write_text(run / "report.html", html)
    return run / "report.html"


def _draw(d: dict, plots) -> dict:
    """{figure key: (title, PNG bytes)} of a loaded run (load)."""
    figs = {}
    if d["records"]:
        figs["curves"] = ("Training curves", plots.curves(d["records"], d["metrics"].get("train", {}).get("best_step")))
        if any("lr" in r for r in d["records"]):
            tc = d["config"].get("train", {})
            figs["lr"] = ("Learning rate", plots.lr_schedule(d["records"], tc.get("scheduler", ""), tc.get("lr")))
    if d["splits"]:
        figs["splits"] = ("Validation vs test", plots.splits(d["splits"]))
    for split, m in d["splits"].items():
        if len(m.get("label_names") or ()) > plots.MAX_DRAWN_CLASSES:  # the tables below still list every class
            continue
        if m.get("per_class") and m.get("label_names"):
            figs[f"per_class_{split}"] = (f"Per-class scores ({split})", plots.per_class(m, split))
        if m.get("confusion") and m.get("label_names"):
            figs[f"confusion_{split}"] = (f"Confusion matrix ({split})", plots.confusion(m, split, normalized=False))
            if m.get("confusion_normalized"):
                figs[f"confusion_normalized_{split}"] = (f"Confusion matrix, normalized ({split})",
                                                         plots.confusion(m, split, normalized=True))
    return {key: (title, plots.png(fig)) for key, (title, fig) in figs.items()}


def _fmt(v, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if kind == "pct":
        return f"{100 * v:.2f}%"
    if kind == "int":
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.1f}"
    return str(v)


def _method(cfg: dict) -> str:
    a = cfg.get("adapter", {})
    if not a:
        return "?"
    s = f"{a.get('method', '?')} r={a.get('r', '?')} alpha={a.get('alpha', '?')}"
    if a.get("target_modules"):
        s += " on " + ",".join(map(str, a["target_modules"]))
    return s


def _sections(d: dict) -> list[tuple[str, list]]:
    """The report as (title, blocks); a block is ("table", header, rows), ("pre", text), ("img", key) or ("p", text)."""
    cfg, m, t = d["config"], d["metrics"], d["metrics"].get("train", {})
    model = cfg.get("model", {}).get("name", "?")
    out = [("Summary", [("table", ["", ""], [
        ["run", d["name"]], ["preset", cfg.get("preset") or "–"], ["model", model], ["method", _method(cfg)],
        ["classes", ", ".join(d["labels"] or []) or "–"],
        ["trainable parameters", _fmt((d["budget"] or {}).get("trainable"), "int")],
        *[[f"{s} accuracy", _fmt(x.get("accuracy"), "pct")] for s, x in d["splits"].items()]])])]
    if d["splits"]:
        rows = [[s, _fmt(x.get("n"), "int"), _fmt(x.get("loss")), _fmt(x.get("accuracy"), "pct"), _fmt(x.get("macro_f1"))]
                for s, x in d["splits"].items()]
        blocks = [("table", ["split", "n", "loss", "accuracy", "macro-F1"], rows)]
        multi = {s: x for s, x in d["splits"].items() if x.get("task") == "multi_label"}
        if multi:  # accuracy above is subset accuracy; the scores multi-label data is judged by
            blocks.append(("table", ["split", "micro-F1", "macro-F1", "samples-F1", "subset accuracy", "hamming loss"],
                           [[s, _fmt(x.get("micro_f1")), _fmt(x.get("macro_f1")), _fmt(x.get("samples_f1")),
                             _fmt(x.get("subset_accuracy"), "pct"), _fmt(x.get("hamming_loss"))] for s, x in multi.items()]))
        for s, x in d["splits"].items():
            if x.get("per_class"):
                extra = ["threshold"] if s in multi else []
                blocks += [("p", f"Per {'label' if extra else 'class'}, {s}:"),
                           ("table", ["label" if extra else "class", "precision", "recall", "F1", "support"] + extra,
                           [[c, _fmt(v.get("precision")), _fmt(v.get("recall")), _fmt(v.get("f1")), _fmt(v.get("support"), "int")]
                            + [_fmt(v.get("threshold")) for _ in extra] for c, v in x["per_class"].items()])]
        out.append(("Metrics", blocks))
    if isinstance(m.get("long_text"), dict) and m["long_text"]:
        out.append(("Rows longer than max_length", [("table", ["split", "what was done"],
                    [[s, longtext.describe(x, "rows")] for s, x in m["long_text"].items() if _long_rows(x)])]))
    if d["images"]:
        out.append(("Plots", [("img", k) for k in d["images"]]))
    if d["errors"]:
        blocks = [("p", "The most confident wrong test predictions, per (true class → predicted class) pair, "
                        "pairs ordered by how often they occur.")]
        for e in d["errors"]:
            blocks += [("h3", f"{e['true']} → {e['pred']} ({e['count']} errors)"),
                       ("table", ["id", "confidence", "text"],
                        [[x["id"], _fmt(x["confidence"]), _clip(x["text"])] for x in e["examples"]])]
        out.append(("Most confident misclassifications", blocks))
    b = d["budget"]
    if b:
        rows = [[g, _fmt(n, "int"), f"{100 * n / b['trainable']:.1f}%" if b.get("trainable") else "–"]
                for g, n in (b.get("groups") or {}).items()]
        rows += [["trainable (total)", _fmt(b.get("trainable"), "int"), "100%"],
                 ["all parameters", _fmt(b.get("total"), "int"), f"trainable = {b.get('percent', '?')}%"]]
        if b.get("frozen_head_copy"):
            rows.append(["(frozen original head, in all)", _fmt(b["frozen_head_copy"], "int"), ""])
        out.append(("Parameter budget", [("table", ["group", "parameters", "share"], rows)]))
    if t:
        rows = [["optimizer steps", _fmt(t.get("steps"), "int")], ["epochs done", _fmt(t.get("epochs_done"))],
                ["stopped early", _fmt(t.get("stopped_early"))], ["best step", _fmt(t.get("best_step"))],
                ["wall time", _secs(t.get("wall_seconds"))], ["training time", _secs(t.get("train_seconds"))],
                ["samples/s", _fmt(t.get("samples_per_s"))], ["tokens/s", _fmt(t.get("tokens_per_s"))],
                ["processes", _fmt(t.get("processes"))]]
        rows += [[f"{s} evaluation time", _secs(x["seconds"])] for s, x in d["splits"].items() if "seconds" in x]
        out.append(("Throughput and wall time", [("table", ["", ""], rows)]))
    if m.get("environment"):
        out.append(("Environment", [("table", ["", ""], [[k, _fmt(v)] for k, v in m["environment"].items()])]))
    out.append(("Resolved config", [("pre", json.dumps(cfg, indent=2, ensure_ascii=False))]))
    return out


def _long_rows(x) -> bool:
    """A split's record of rows past max_length, as training writes it (a hand-edited metrics.json may not hold one)."""
    return isinstance(x, dict) and all(isinstance(x.get(k), int) for k in ("rows", "longer", "max_length")) \
        and (x.get("long_text") != "chunks" or all(k in x for k in ("windows", "chunk_stride", "chunk_pool")))


def _secs(v) -> str:
    return "–" if v is None else f"{v:.1f} s" if v < 120 else f"{v:.0f} s ({v / 60:.1f} min)"


def _clip(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def _md_cell(v) -> str:
    return html.escape(str(v), quote=False).replace("|", "\\|").replace("\n", " ")


def _md_table(header, rows) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows])


def _markdown(d: dict, sections) -> str:
    parts = [f"# Report: {_md_cell(d['name'])}", f"_generated {time.strftime('%Y-%m-%d %H:%M:%S')} by loraclf report_"]
    for title, blocks in sections:
        parts.append(f"## {title}")
        for b in blocks:
            if b[0] == "table":
                parts.append(_md_table(b[1], b[2]))
            elif b[0] == "img":
                parts.append(f"![{_md_cell(d['images'][b[1]][0])}](plots/{b[1]}.png)")
            elif b[0] == "pre":
                parts.append("```json\n" + b[1].replace("```", "ʼʼʼ") + "\n```")
            elif b[0] == "h3":
                parts.append(f"### {_md_cell(b[1])}")
            else:
                parts.append(_md_cell(b[1]))
    return "\n\n".join(parts) + "\n"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222}h1{border-bottom:2px solid #4c72b0}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ddd;padding:.3em .7em;text-align:left;
vertical-align:top}th{background:#f3f5f9}tr:nth-child(even) td{background:#fafafa}td.text{max-width:760px}
img{max-width:100%;border:1px solid #eee;margin:.5em 0;display:block}pre{background:#f6f8fa;padding:1em;
overflow:auto;font-size:.85em}figure{margin:1em 0}figcaption{color:#555;font-size:.9em}.muted{color:#777}"""


def _html_table(header, rows, cls: str = "") -> str:
    e = html.escape
    head = "" if not any(header) else "<tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f'<td{" class=text" if h == "text" else ""}>{e(str(c))}</td>'
                                    for h, c in zip(header, r)) + "</tr>" for r in rows)
    return f'<table class="{cls}">{head}{body}</table>'


def _html(d: dict, sections) -> str:
    e = html.escape
    parts = [f"<h1>Report: {e(d['name'])}</h1>",
             f"<p class=muted>generated {time.strftime('%Y-%m-%d %H:%M:%S')} by loraclf report</p>"]
    for title, blocks in sections:
        parts.append(f'<h2 id="{e(title.lower().replace(" ", "-"))}">{e(title)}</h2>')
        for b in blocks:
            if b[0] == "table":
                parts.append(_html_table(b[1], b[2], "metrics" if b[1][:2] == ["split", "n"] else ""))
            elif b[0] == "img":
                cap, data = d["images"][b[1]]
                parts.append(f'<figure><img alt="{e(cap)}" src="data:image/png;base64,'
                             f'{base64.b64encode(data).decode()}"><figcaption>{e(cap)}</figcaption></figure>')
            elif b[0] == "pre":
                parts.append(f"<pre>{e(b[1])}</pre>")
            elif b[0] == "h3":
                parts.append(f"<h3>{e(b[1])}</h3>")
            else:
                parts.append(f"<p>{e(b[1])}</p>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>loraclf report: {e(d["name"])}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


# ---------------------------------------------------------------- compare
SORT_KEYS = {  # name -> (column, higher is better)
    "test_accuracy": ("test accuracy", True), "test_macro_f1": ("test macro-F1", True),
    "val_accuracy": ("val accuracy", True), "val_macro_f1": ("val macro-F1", True),
    "trainable": ("trainable", False), "train_seconds": ("train time (s)", False),
    "samples_per_s": ("samples/s", True),
}


def _row(d: dict) -> dict:
    t, s = d["metrics"].get("train", {}), d["splits"]
    return {"run": d["name"], "model": d["config"].get("model", {}).get("name", "?"), "method": _method(d["config"]),
            "trainable": (d["budget"] or {}).get("trainable"),
            "val_accuracy": s.get("val", {}).get("accuracy"), "val_macro_f1": s.get("val", {}).get("macro_f1"),
            "test_accuracy": s.get("test", {}).get("accuracy"), "test_macro_f1": s.get("test", {}).get("macro_f1"),
            "train_seconds": t.get("train_seconds", t.get("wall_seconds")), "samples_per_s": t.get("samples_per_s")}


def compare(run_dirs, sort_by: str = "test_accuracy") -> tuple[str, str]:
    """A leaderboard of several runs as (markdown, html), best first by `sort_by` (runs lacking it go last)."""
    if sort_by not in SORT_KEYS:
        raise UserError(f"cannot sort by {sort_by!r}", f"choose one of {', '.join(SORT_KEYS)}")
    if not run_dirs:
        raise UserError("no runs to compare", "give one or more run directories")
    rows = []
    for r in run_dirs:
        try:
            row = _row(load(r))
            rows.append(row | {"_cells": [row["run"], row["model"], row["method"], _fmt(row["trainable"], "int"),
                                          _fmt(row["val_accuracy"], "pct"), _fmt(row["val_macro_f1"]),
                                          _fmt(row["test_accuracy"], "pct"), _fmt(row["test_macro_f1"]),
                                          "–" if row["train_seconds"] is None else f"{row['train_seconds']:.1f}",
                                          "–" if row["samples_per_s"] is None else f"{row['samples_per_s']:.1f}"]})
            float(row[sort_by] or 0)
        except TAMPERED as e:
            raise not_as_written(f"cannot compare {r}", e, "leave that run out, or rerun it") from None
    higher = SORT_KEYS[sort_by][1]
    rows.sort(key=lambda r: (r[sort_by] is None, -(r[sort_by] or 0) if higher else (r[sort_by] or 0)))
    header = ["#", "run", "model", "method", "trainable", "val accuracy", "val macro-F1", "test accuracy",
              "test macro-F1", "train time (s)", "samples/s"]
    table = [[i + 1, *r["_cells"]] for i, r in enumerate(rows)]
    title = f"Leaderboard of {len(rows)} run(s), sorted by {SORT_KEYS[sort_by][0]} ({'higher' if higher else 'lower'} first)"
    md = f"# {title}\n\n{_md_table(header, table)}\n"
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>loraclf compare</title>'
            f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
            f'{_html_table(header, table, "leaderboard")}\n</body></html>\n')
    return md, page


def write_compare(run_dirs, sort_by: str, out_dir) -> tuple[str, Path, Path]:
    md, page = compare(run_dirs, sort_by)
    out = Path(out_dir)
    rundir.write_text(out / "compare.md", md)
    rundir.write_text(out / "compare.html", page)
    return md, out / "compare.md", out / "compare.html"
