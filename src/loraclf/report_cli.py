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
    p.add_argument("--track", choices=BACKENDS, help="log the run to MLflow or TensorBoard (RUN/tensorboard) when done")
    p.add_argument("--tracking-uri", help=f"MLflow tracking URI (default {DEFAULT_URI}; any MLflow URI works)")


def check_track_args(args) -> None:
    """Call before the work starts, so a wrong combination fails fast."""
    if getattr(args, "tracking_uri", None) and getattr(args, "track", None) != "mlflow":
        raise UserError("--tracking-uri is only used with --track mlflow", "add --track mlflow or drop --tracking-uri")


def maybe_track(run_dir, args) -> None:
    """Log the run if --track was given; prints where it went."""
    check_track_args(args)
    backend = getattr(args, "track", None)
    if not backend:
        return
    from . import track
    where = track.log_run(Path(run_dir), backend, getattr(args, "tracking_uri", None))
    if backend == "mlflow":
        print(f"logged to MLflow ({args.tracking_uri or track.DEFAULT_URI}), run id {where}")
    else:
        print(f"TensorBoard events in {where} (tensorboard --logdir {where})")
