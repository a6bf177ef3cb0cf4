"""The `report` and `compare` subcommands, and the `--track`/`--tracking-uri` options, for cli.py to register:

    report_cli.add_commands(sub)        # in cli.parser(), after the other subcommands
    report_cli.add_track_args(p)        # on the train and evaluate parsers
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


def cmd_report(args) -> int:
    from . import report
    check_track_args(args)
    path = report.write(Path(args.run))
    print(f"wrote {path} and {path.with_name('report.md')} (plots in {path.parent / 'plots'})")
    maybe_track(args.run, args)
    return 0


def cmd_compare(args) -> int:
    from . import report
    md, md_path, html_path = report.write_compare(args.runs, args.sort, Path(args.out))
    print(md, end="")
    print(f"\nwrote {md_path} and {html_path}")
    return 0


def add_commands(sub) -> None:
    from .report import SORT_KEYS
    p = sub.add_parser("report", help="plots, report.html and report.md in a run directory")
    p.add_argument("run", help="run directory")
    add_track_args(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="leaderboard of several runs (prints it, writes compare.md and compare.html)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--sort", default="test_accuracy", choices=list(SORT_KEYS), help="ranking metric (default test_accuracy)")
    p.add_argument("--out", default=".", help="folder for compare.md and compare.html (default: current folder)")
    p.set_defaults(func=cmd_compare)
