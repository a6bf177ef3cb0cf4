"""What a search leaves to act on, in its folder: best-config.toml (the best trial's full config, for
`loraclf train --config`), leaderboard.md, results.json, and report.html (the leaderboard and Optuna's plots:
optimisation history, parameter importances, validation accuracy against trainable parameters)."""
from __future__ import annotations

import html
import json
import warnings
from pathlib import Path

from . import rundir
from .config import SECTIONS

COLUMNS = ("trial", "state", "val accuracy", "val macro-F1", "trainable", "plan", "r", "alpha", "dropout", "lr",
           "epochs", "warmup", "seconds")


def write(study, out: Path, budget: int) -> dict:
    rows = leaderboard(study)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    best = done[0] if done else None
    summary = {"study": study.study_name, "budget": budget, "finished": sum(r["state"] in ("COMPLETE", "PRUNED") for r in rows),
               "best": best, "trials": rows}
    if best and best.get("run_dir") and (Path(best["run_dir"]) / "config.json").is_file():
        cfg = rundir.read_json(Path(best["run_dir"]) / "config.json")
        head = (f"# trial {best['number']} of study {study.study_name!r}: val accuracy {100 * best['value']:.2f}%, "
                f"{best['trainable']:,} trainable (budget {budget:,})\n"
                f"# loraclf train --config best-config.toml --data ...\n")
        rundir.write_text(out / "best-config.toml", head + to_toml(cfg))
    md = markdown(rows, study.study_name, budget)
    rundir.write_text(out / "leaderboard.md", md)
    rundir.write_json(out / "results.json", summary)
    rundir.write_text(out / "report.html", page(study, rows, budget))
    return summary


def leaderboard(study) -> list[dict]:
    """Every trial, best first: complete by validation accuracy, then pruned by their last reported value."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        a, p = t.user_attrs, t.params
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        rows.append({"number": t.number, "state": t.state.name, "value": t.value, "last_reported": last,
                     "val_macro_f1": a.get("val_macro_f1"), "trainable": a.get("trainable"), "plan": p.get("plan"),
                     "r": a.get("r"), "alpha": a.get("alpha"), "dropout": a.get("dropout"), "lr": a.get("lr"),
                     "epochs": a.get("epochs"), "warmup_ratio": a.get("warmup_ratio"), "seconds": a.get("seconds"),
                     "run_dir": a.get("run_dir"), "retry_of": t.system_attrs.get("failed_trial")})
    order = {"COMPLETE": 0, "PRUNED": 1}
    return sorted(rows, key=lambda r: (order.get(r["state"], 2), -(r["value"] if r["value"] is not None else
                                                                    r["last_reported"] or 0), r["number"]))


def _cells(r: dict) -> list[str]:
    def num(v, fmt):
        return "" if v is None else format(v, fmt)
    value = num(r["value"], ".2%") if r["value"] is not None else (
        f"({r['last_reported']:.2%})" if r["last_reported"] is not None else "")
    return [str(r["number"]), r["state"].lower(), value,
            num(r["val_macro_f1"], ".4f"), num(r["trainable"], ","), r["plan"] or "", num(r["r"], "d"),
            num(r["alpha"], ".3g"), num(r["dropout"], ".3f"), num(r["lr"], ".2e"), num(r["epochs"], "g"),
            num(r["warmup_ratio"], ".3f"), num(r["seconds"], ".0f")]


def markdown(rows: list[dict], name: str, budget: int) -> str:
    lines = [f"# Study {name}: budget {budget:,} trainable parameters", "",
             "Validation accuracy on the split cut from the training data (never the test data). "
             "A pruned trial shows (in brackets) the last accuracy it reported before it was stopped.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---:" if c not in ("state", "plan") else "---" for c in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def page(study, rows: list[dict], budget: int) -> str:
    table = "<table><tr>" + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in rows) + "</table>"
    figures = plots(study, rows)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>loraclf search: "
            f"{html.escape(study.study_name)}</title><style>body{{font-family:sans-serif;margin:2em}}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head>"
            f"<body><h1>Study {html.escape(study.study_name)}</h1><p>Budget {budget:,} trainable parameters; "
            "objective: validation accuracy (a split of the training data).</p>"
            f"{table}{figures}</body></html>\n")


def plots(study, rows: list[dict]) -> str:
    """Optuna's plots as plotly HTML (plotly.js inlined once, so the page works offline); a note where one cannot
    be drawn (plotly missing, too few trials)."""
    try:
        import plotly.graph_objects as go
        from optuna import visualization as vis
    except ImportError:
        return "<p>Plots need plotly: pip install plotly</p>"
    done = [r for r in rows if r["state"] == "COMPLETE"]
    makers = [("Optimisation history", lambda: vis.plot_optimization_history(study)),
              ("Parameter importances", lambda: vis.plot_param_importances(study)),
              ("Validation accuracy vs trainable parameters", lambda: go.Figure(
                  go.Scatter(x=[r["trainable"] for r in done], y=[r["value"] for r in done], mode="markers",
                             text=[f"trial {r['number']}: {r['plan']} r={r['r']}" for r in done]),
                  layout={"xaxis_title": "trainable parameters", "yaxis_title": "validation accuracy"}))]
    parts, inline = [], True
    for title, make in makers:
        try:
            with warnings.catch_warnings():  # Optuna's notes on few trials per regime: the plot is still worth drawing
                warnings.simplefilter("ignore")
                fig = make()
        except Exception as e:  # e.g. importances need two complete trials whose parameters vary
            parts.append(f"<h2>{title}</h2><p>not drawn: {html.escape(str(e).splitlines()[0][:200] if str(e) else type(e).__name__)}</p>")
            continue
        parts.append(f"<h2>{title}</h2>" + fig.to_html(full_html=False, include_plotlyjs=inline))
        inline = False
    return "".join(parts)


def to_toml(cfg: dict) -> str:
    """A config dict (config.Config.to_dict) as TOML that config.load reads back to the same config."""
    lines = [f"preset = {json.dumps(cfg['preset'])}"] if cfg.get("preset") else []
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {_value(v)}" for k, v in (cfg.get(section) or {}).items()]
    return "\n".join(lines) + "\n"


def _value(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)  # finite (config validation): 0.0002, 1e-05 are TOML floats
    return json.dumps(v)  # strings (JSON escapes are TOML's), ints, booleans
