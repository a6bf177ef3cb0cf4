"""The `--track`/`--tracking-uri` options of the train, evaluate and report commands, for cli.py:

    report_cli.add_track_args(p)        # on the train, evaluate and report parsers
    report_cli.maybe_track(out, args)   # in cmd_train / cmd_evaluate, after the report is written
(and, optionally, report_cli.check_track_args(args) at the start of cmd_train to fail before training)
"""
from __future__ import annotations

from pathlib import Path

from .errors import UserError


def add_track_args(p) -> None:
    from .track import BACKENDS, DEFAULT_URI
    p.add_argument("--track", choices=BACKENDS, help="log the run to MLflow, TensorBoard (RUN/tensorboard) or W&B offline "
                   "(RUN/wandb); train streams metrics while it runs")
    p.add_argument("--tracking-uri", help=f"MLflow tracking URI (default {DEFAULT_URI}; any MLflow URI works)")


def check_track_args(args) -> None:
    """Call before the work starts, so a wrong combination fails fast."""
    if getattr(args, "tracking_uri", None) and getattr(args, "track", None) != "mlflow":
        raise UserError("--tracking-uri is only used with --track mlflow", "add --track mlflow or drop --tracking-uri")


def live_callbacks(args) -> list:
    """The live tracker for `train --track` (the run is completed by maybe_track once its report is written)."""
    check_track_args(args)
    backend = getattr(args, "track", None)
    if not backend:
        return []
    from . import live
    return [live.tracker(backend, getattr(args, "tracking_uri", None), finish=False)]


def maybe_track(run_dir, args, live: bool = False) -> None:
    """Log the run if --track was given; prints where it went. live: the run was tracked while it trained (W&B then
    holds everything already; MLflow's run is continued with the final metrics and artifacts)."""
    check_track_args(args)
    backend = getattr(args, "track", None)
    if not backend:
        return
    if backend == "wandb" and live:
        print(f"W&B offline run in {Path(run_dir) / 'wandb'} (upload with: wandb sync {Path(run_dir) / 'wandb'}/offline-run-*)")
        return
    from . import track
    where = track.log_run(Path(run_dir), backend, getattr(args, "tracking_uri", None))
    if backend == "mlflow":
        print(f"logged to MLflow ({args.tracking_uri or track.DEFAULT_URI}), run id {where}")
    elif backend == "wandb":
        print(f"W&B offline run in {where} (upload with: wandb sync {where}/offline-run-*)")
    else:
        print(f"TensorBoard events in {where} (tensorboard --logdir {where})")
