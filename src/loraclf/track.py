"""Experiment tracking, post hoc from the run directory: `--track mlflow`, `--track tensorboard` or `--track wandb`
(live.py streams the same metrics while a run trains; this module logs what a finished run directory holds).

MLflow: params = the resolved config (flattened, e.g. adapter.r) and the budget; metrics = every metrics.jsonl
record at its step, plus the final val/test/eval-* metrics and throughput from metrics.json; artifacts = the
report, plots and metrics files. One MLflow run per run directory (tagged loraclf.run_dir): logging the same
directory again (train, then evaluate) continues that MLflow run and adds only what is new.

TensorBoard: event files in RUN/tensorboard (rewritten whole on every call, so they never hold duplicates).
W&B: an offline run in RUN/wandb (never online; `wandb sync` uploads it) with every record and the final metrics."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from . import rundir
from .errors import UserError

BACKENDS = ("mlflow", "tensorboard", "wandb")
DEFAULT_URI = "sqlite:///mlruns.db"
ARTIFACTS = ("report.html", "report.md", "metrics.json", "metrics.jsonl", "config.json", "budget.json", "labels.json")


def log_run(run_dir, backend: str, tracking_uri: str | None = None, experiment: str = "loraclf") -> str:
    """Log a run directory; returns the MLflow run id, or the TensorBoard log folder."""
    run = rundir.RunDir.open(run_dir, model=False).path
    if backend == "mlflow":
        return _mlflow(run, tracking_uri or DEFAULT_URI, experiment)
    if backend == "tensorboard":
        return str(_tensorboard(run))
    if backend == "wandb":
        return str(_wandb(run))
    raise UserError(f"unknown tracking backend {backend!r}", f"use one of {', '.join(BACKENDS)}")


def flatten(obj, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in (obj or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out |= flatten(v, key + ".")
        else:
            out[key] = ",".join(map(str, v)) if isinstance(v, list) else str(v)
    return out


def step_metrics(run: Path) -> list[tuple[str, float, int]]:
    """(name, value, step) for every numeric field of every metrics.jsonl record."""
    out = []
    for r in rundir.read_jsonl(run / "metrics.jsonl"):
        step = int(r.get("step", 0))
        out += [(k, float(v), step) for k, v in r.items() if k != "step" and _num(v)]
    return out


def final_metrics(run: Path) -> dict[str, float]:
    """metrics.json (and eval-*.json) as flat names: test.accuracy, val.macro_f1, test.f1.<class>, train.samples_per_s..."""
    m = rundir.read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
    splits = {k: m[k] for k in ("val", "test") if isinstance(m.get(k), dict)}
    splits |= {p.stem: rundir.read_json(p) for p in sorted(run.glob("eval-*.json"))}
    out = {}
    for s, x in splits.items():
        out |= {f"{s}.{k}": float(x[k]) for k in ("accuracy", "macro_f1", "micro_f1", "samples_f1", "hamming_loss", "loss", "n", "seconds") if _num(x.get(k))}
        for c, v in (x.get("per_class") or {}).items():
            out |= {f"{s}.{k}.{c}": float(v[k]) for k in ("precision", "recall", "f1") if _num(v.get(k))}
    out |= {f"train.{k}": float(v) for k, v in (m.get("train") or {}).items() if _num(v)}
    b = m.get("budget") or (rundir.read_json(run / "budget.json") if (run / "budget.json").is_file() else {})
    out |= {f"budget.{k}": float(b[k]) for k in ("trainable", "total", "percent") if _num(b.get(k))}
    return out


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def run_params(run: Path) -> dict[str, str]:
    """The resolved config of a run directory as MLflow params (flattened, within MLflow's length limits)."""
    p = flatten(rundir.read_json(run / "config.json"))
    return {k[:250]: v[:6000] for k, v in p.items()}


def mlflow_client(uri: str, experiment: str):
    """(MlflowClient, experiment id), the experiment created if new; UserError if MLflow or the store is unusable."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise UserError("--track mlflow needs the mlflow package", "pip install mlflow-skinny sqlalchemy alembic "
                        "(or pip install mlflow)") from None
    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        try:
            exp_id = exp.experiment_id if exp else client.create_experiment(experiment, _artifact_location(uri))
        except Exception:  # another process created it first
            exp_id = client.get_experiment_by_name(experiment).experiment_id
    except Exception as e:  # a bad URI, an unreachable server, a locked or foreign database
        raise UserError(f"cannot use the MLflow tracking store {uri} ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                        "check --tracking-uri (default sqlite:///mlruns.db in the current folder)") from None
    return client, exp_id


def _mlflow(run: Path, uri: str, experiment: str) -> str:
    client, exp_id = mlflow_client(uri, experiment)
    from mlflow.entities import Metric, Param, RunTag
    path, params = str(run.resolve()), run_params(run)
    old = [] if "'" in path else client.search_runs(
        [exp_id], filter_string=f"tags.`loraclf.run_dir` = '{path}'", max_results=1, order_by=["attributes.start_time DESC"])
    run_id = None
    if old and all(old[0].data.params.get(k, v) == v for k, v in params.items()):
        run_id = old[0].info.run_id  # same run directory, same config: continue it
    logged: dict[str, int] = {}
    if run_id:
        for key in {k for k, _, _ in step_metrics(run)}:
            hist = client.get_metric_history(run_id, key)
            logged[key] = max((h.step for h in hist), default=-1)
        params = {k: v for k, v in params.items() if k not in old[0].data.params}
    else:
        run_id = client.create_run(exp_id, run_name=run.resolve().name, tags={
            "loraclf.run_dir": path, "mlflow.source.name": "loraclf"}).info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, s) for k, v, s in step_metrics(run) if s > logged.get(k, -1)]
    metrics += [Metric(k, v, now, 0) for k, v in final_metrics(run).items()]
    m = rundir.read_json(run / "metrics.json") if (run / "metrics.json").is_file() else {}
    tags = [RunTag(f"env.{k}", str(v)) for k, v in (m.get("environment") or {}).items()]
    param_list = [Param(k, v) for k, v in params.items()]
    for i in range(0, max(len(metrics), len(param_list), 1), 100):
        client.log_batch(run_id, metrics=metrics[i:i + 100], params=param_list[i:i + 100], tags=tags if i == 0 else [])
    for name in ARTIFACTS + tuple(p.name for p in sorted(run.glob("eval-*.json"))):
        if (run / name).is_file():
            client.log_artifact(run_id, str(run / name))
    if (run / "plots").is_dir():
        client.log_artifacts(run_id, str(run / "plots"), "plots")
    client.set_terminated(run_id)
    return run_id


def _artifact_location(uri: str) -> str | None:
    """For a SQLite store, artifacts go to mlruns/ beside the database file (not wherever the command ran)."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):]).resolve()
    return (db.parent / "mlruns").as_uri()


def _wandb(run: Path) -> Path:
    from . import live
    w = live.WandB(run)
    live.start_all([w], run, None)
    for r in rundir.read_jsonl(run / "metrics.jsonl"):
        w.on_record(r)
    live.end_all([w], {})
    return run / "wandb"


def _tensorboard(run: Path) -> Path:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--track tensorboard needs the tensorboard package", "pip install tensorboard") from None
    final = run / "tensorboard"
    tmp = rundir.temp_dir(final)
    with SummaryWriter(log_dir=str(tmp)) as w:
        for key, value, step in step_metrics(run):
            w.add_scalar(key, value, step)
        steps = int((rundir.read_json(run / "metrics.json").get("train") or {}).get("steps", 0)) \
            if (run / "metrics.json").is_file() else 0
        for key, value in final_metrics(run).items():
            w.add_scalar(f"final/{key}", value, steps)
        config = json.dumps(rundir.read_json(run / "config.json"), indent=2)
        w.add_text("config", "```\n" + config + "\n```", 0)
        for png in sorted((run / "plots").glob("*.png")) if (run / "plots").is_dir() else []:
            _add_png(w, f"plots/{png.stem}", png, steps)
    rundir.replace_dir(tmp, final)
    return final


def _add_png(writer, tag: str, path: Path, step: int) -> None:
    try:
        import numpy as np
        from PIL import Image
        with Image.open(path) as im:
            writer.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")
    except Exception:  # an image is a nicety; the scalars are what matters
        pass
