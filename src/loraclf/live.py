"""Live experiment tracking: metrics reach MLflow, TensorBoard and Weights & Biases (offline) while a run trains.

The training loop knows only `Callback`: pipeline.train_run calls on_start once the run directory holds its
config, train.fit calls on_record with every metrics.jsonl record as it is made (train loss and lr at each log
step, val metrics at each evaluation), and train_run calls on_end with the result, or with the error that
stopped the run. A tracker that fails mid-run says so once on stderr and stops; the training goes on.

A search (search.py) gives every trial a child of one parent: an MLflow child run (tag mlflow.parentRunId),
a TensorBoard folder under the study's, a W&B run in the study's group.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from .errors import UserError

BACKENDS = ("mlflow", "tensorboard", "wandb")


class Callback:
    """What the training loop calls; every method is optional."""
    started = False

    def on_start(self, run_dir: Path, cfg) -> None:
        pass

    def on_record(self, record: dict) -> None:
        pass

    def on_end(self, result: dict | None, error: BaseException | None = None) -> None:
        pass


def start_all(callbacks, run_dir: Path, cfg) -> None:
    for cb in callbacks:
        cb.on_start(Path(run_dir), cfg)
        cb.started = True


def end_all(callbacks, result: dict | None, error: BaseException | None = None) -> None:
    for cb in callbacks:
        if cb.started:
            cb.started = False
            cb.on_end(result, error)


def numbers(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def status(error: BaseException | None) -> str:
    """MLflow's run status for how a run ended: a pruned trial or Ctrl-C is KILLED, anything else FAILED."""
    if error is None:
        return "FINISHED"
    return "KILLED" if type(error).__name__ in ("TrialPruned", "Interrupted", "KeyboardInterrupt") else "FAILED"


class _Tracker(Callback):
    """A tracker's mistakes never stop training: the first one is reported and the tracker goes quiet."""
    name = "tracker"
    broken = False

    def on_record(self, record: dict) -> None:
        self._safe(self._record, record)

    def on_end(self, result, error=None) -> None:
        self._safe(self._end, result, error)

    def _safe(self, fn, *args) -> None:
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as e:
            self.broken = True
            print(f"loraclf: {self.name} tracking stopped ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                  "training goes on", file=sys.stderr)


class MLflow(_Tracker):
    """One MLflow run per run directory, tagged loraclf.run_dir, with the params track.py logs post hoc, so that
    `track.log_run` (called at the end with finish=True, or by the train command after the report) continues it."""
    name = "MLflow"

    def __init__(self, uri: str | None = None, experiment: str = "loraclf", parent_id: str | None = None,
                 run_name: str | None = None, finish: bool = True):
        from . import track
        self.uri, self.experiment = uri or track.DEFAULT_URI, experiment
        self.parent_id, self.run_name, self.finish = parent_id, run_name, finish
        self.client, self.exp_id = track.mlflow_client(self.uri, experiment)
        self.run_id = None

    def on_start(self, run_dir, cfg) -> None:
        from mlflow.entities import Param
        from . import track
        self.run_dir = Path(run_dir)
        tags = {"loraclf.run_dir": str(self.run_dir.resolve()), "mlflow.source.name": "loraclf"}
        if self.parent_id:
            tags["mlflow.parentRunId"] = self.parent_id
        if (self.run_dir / "checkpoint").is_dir():  # --resume: the run goes on in the MLflow run it started
            path = tags["loraclf.run_dir"]
            old = [] if "'" in path else self.client.search_runs(
                [self.exp_id], filter_string=f"tags.`loraclf.run_dir` = '{path}'", max_results=1,
                order_by=["attributes.start_time DESC"])
            if old:
                self.run_id = old[0].info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
                return
        self.run_id = self.client.create_run(self.exp_id, run_name=self.run_name or self.run_dir.resolve().name,
                                             tags=tags).info.run_id
        params = [Param(k, v) for k, v in track.run_params(self.run_dir).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _record(self, record: dict) -> None:
        from mlflow.entities import Metric
        now, step = int(time.time() * 1000), int(record.get("step", 0))
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in numbers(record).items()])

    def _end(self, result, error) -> None:
        if error is None and self.finish:
            from . import track
            track.log_run(self.run_dir, "mlflow", self.uri, self.experiment)  # final metrics, artifacts; ends it
        elif error is not None:
            self.client.set_terminated(self.run_id, status(error))


class TensorBoard(_Tracker):
    """Event files in `log_dir` (default RUN/tensorboard), flushed at every record so a reader sees them at once."""
    name = "TensorBoard"

    def __init__(self, log_dir: Path | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise UserError("--track tensorboard needs the tensorboard package", "pip install tensorboard") from None
        self.log_dir = Path(log_dir) if log_dir else None
        self.writer = None

    def on_start(self, run_dir, cfg) -> None:
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(self.log_dir or Path(run_dir) / "tensorboard"))
        self.run_dir = Path(run_dir)

    def _record(self, record: dict) -> None:
        step = int(record.get("step", 0))
        for k, v in numbers(record).items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def _end(self, result, error) -> None:
        from . import track
        if error is None:
            steps = int((result or {}).get("train", {}).get("steps", 0))
            for k, v in track.final_metrics(self.run_dir).items():
                self.writer.add_scalar(f"final/{k}", v, steps)
        self.writer.close()


class WandB(_Tracker):
    """A Weights & Biases run in offline mode only (nothing leaves the machine; `wandb sync` uploads it later),
    written under `directory` (default: the run directory)."""
    name = "W&B"

    def __init__(self, directory: Path | None = None, project: str = "loraclf", group: str | None = None,
                 run_name: str | None = None):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise UserError("--track wandb needs the wandb package", "pip install wandb") from None
        self.directory, self.project, self.group, self.run_name = directory, project, group, run_name
        self.run = None

    def on_start(self, run_dir, cfg) -> None:
        import os
        import wandb
        from . import track
        os.environ["WANDB_MODE"] = "offline"
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run_dir = Path(run_dir)
        where = Path(self.directory or run_dir)
        where.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(mode="offline", console="off", x_disable_stats=True, disable_git=True, silent=True,
                                   x_transaction_log_flush_interval=1.0)  # readers (wandb leet) see it live
        self.run = wandb.init(project=self.project, dir=str(where), group=self.group,
                              name=self.run_name or self.run_dir.resolve().name, config=track.run_params(self.run_dir),
                              settings=settings, reinit="create_new")

    def _record(self, record: dict) -> None:
        self.run.log(numbers(record), step=int(record.get("step", 0)))

    def _end(self, result, error) -> None:
        from . import track
        if error is None:
            self.run.summary.update(track.final_metrics(self.run_dir))
        self.run.finish(exit_code=0 if error is None else 1)


def tracker(backend: str, tracking_uri: str | None = None, finish: bool = True) -> Callback:
    """The live tracker of one run directory, for `loraclf train --track BACKEND`."""
    if backend == "mlflow":
        return MLflow(tracking_uri, finish=finish)
    if backend == "tensorboard":
        return TensorBoard()
    if backend == "wandb":
        return WandB()
    raise UserError(f"unknown tracking backend {backend!r}", f"use one of {', '.join(BACKENDS)}")
