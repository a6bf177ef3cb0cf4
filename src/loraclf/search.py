"""`loraclf search`: the best model under the budget, found by Optuna, on as many processes as you start.

The study lives in an Optuna RDB storage (default sqlite:///OUT/study.db; any SQLAlchemy URL works), so every
`loraclf search` process pointed at the same storage and study name works on the same study: several on one
machine, one per GPU (`--device cuda:N`), or several machines sharing a database. Each trial sends a heartbeat;
a trial whose worker died (SIGKILL, a lost machine) is failed after two missed heartbeat periods by the next
worker that starts a trial, and queued again with the same parameters (Optuna's RetryHeartbeatStaleTrialCallback).
Running the command again resumes the study: `--trials N` is the study's total of finished (complete or
pruned) trials, not a count per process.

A trial samples a config from the space (space.py: the budget is a hard constraint), trains it into
OUT/trials/trial-NNNN (an ordinary run directory with its full config and seed), and is scored on the validation
split that pipeline cuts from the training data (data.val_size): test data is never given to a search. The
pruner reads the validation curve (train.eval_every is set to study.evals_per_epoch evaluations per epoch) and
stops a trial that is doing worse than the others at the same step. The results (leaderboard, plots,
best-config.toml) are rewritten by every worker when it finishes (studyreport.py).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import shutil
import socket
import time
from pathlib import Path

from . import budget as budget_mod
from . import live, pipeline, space, studyreport
from .config import Config
from .errors import Interrupted, UserError

MAX_RETRIES = 2  # a trial whose worker died is run again at most this often (then it stays failed)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("loraclf search needs optuna", 'pip install -e ".[search]" (optuna, plotly)') from None
    # ERROR: a failed trial is one line of loraclf's (its error), not Optuna's warning with a traceback
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna


def storage(url: str, heartbeat_s: int):
    """Optuna's RDB storage with heartbeats; SQLite waits for a busy lock instead of failing at once."""
    optuna = _optuna()
    import warnings
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite:") else {}
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable for years
    for attempt in range(6):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_s, grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
        except Exception as e:  # a bad URL, a missing driver, an unreachable server, a foreign database
            if attempt < 5 and any(w in str(e) for w in ("already exists", "locked", "UNIQUE constraint")):
                time.sleep(0.5 + random.random())  # another worker is creating the same new database
                continue
            raise UserError(f"cannot open the study storage {url} ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                            "give --storage as a SQLAlchemy URL, e.g. sqlite:///study.db or postgresql://user@host/db") from None


def open_study(url: str, name: str, sp: space.Space, identity: dict):
    """Create the study, or load it; a study started with another space, budget, model or data is refused
    (its trials' plans and ranks would not mean the same)."""
    optuna = _optuna()
    sampler = (optuna.samplers.TPESampler(n_startup_trials=max(1, sp.study["startup_trials"]), seed=None)
               if sp.study["sampler"] == "tpe" else optuna.samplers.RandomSampler())
    pruner = {"median": lambda: optuna.pruners.MedianPruner(n_startup_trials=sp.study["startup_trials"],
                                                            n_warmup_steps=0, n_min_trials=1),
              "hyperband": lambda: optuna.pruners.HyperbandPruner(),
              "none": lambda: optuna.pruners.NopPruner()}[sp.study["pruner"]]()
    study = optuna.create_study(storage=storage(url, sp.study["heartbeat_s"]), study_name=name, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    found = study.user_attrs.get("loraclf")
    if found is None:
        study.set_user_attr("loraclf", identity)
    elif found != identity:
        diff = sorted(k for k in identity if found.get(k) != identity[k])
        raise UserError(f"study {name!r} in {url} was started with another {', '.join(diff) or 'setup'}",
                        "rerun with the study's settings, or start a new study with --study-name (or another --out)")
    return study


def finished(study) -> int:
    from optuna.trial import TrialState
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


class Pruning(live.Callback):
    """Reports each validation evaluation to the trial; the pruner's verdict stops the run (optuna.TrialPruned)."""

    def __init__(self, trial, monitor: str = "val_accuracy", warmup_evals: int = 0):
        self.trial, self.monitor, self.warmup, self.evals = trial, monitor, warmup_evals, 0

    def on_record(self, record: dict) -> None:
        if self.monitor not in record:
            return
        import optuna
        self.evals += 1
        self.trial.report(float(record[self.monitor]), int(record["step"]))
        if self.evals > self.warmup and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {record['step']} ({self.monitor} {record[self.monitor]:.4f})")


def run(cfg: Config, sources: list[str], out: Path, trials: int, space_file: str | None = None,
        storage_url: str | None = None, study_name: str = "search", timeout: float | None = None,
        track: list[str] = (), tracking_uri: str | None = None, trust_pickle: bool = False, log=print) -> dict:
    """Work on the study until it has `trials` finished trials (or `timeout` seconds pass); then write the results."""
    optuna = _optuna()
    if not 1 <= trials <= 100_000:
        raise UserError(f"--trials {trials} is not from 1 to 100,000", "e.g. --trials 20")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UserError(f"--timeout {timeout} is not a positive number of seconds", "e.g. --timeout 1800")
    sp = space.load(space_file)
    out = Path(out)
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # one line per trial, not a weight-loading bar each
    if cfg.data.val_size == 0:
        raise UserError("a search scores trials on the validation split, and data.val_size is 0",
                        "set data.val_size (e.g. --set data.val_size=0.1)")
    train_ex, val_ex = pipeline.load_training_data(cfg, sources, trust_pickle)  # its mistakes show before any trial
    labels = train_ex.label_names
    plan_table = space.plans(sp, cfg, labels)
    if not plan_table:
        raise UserError(f"nothing in the search space fits the budget of {cfg.budget.max_trainable:,} at "
                        f"r={sp.ranges['r'][0]}", "raise --budget, or allow cheaper heads and targets in the space")
    base = copy.deepcopy(cfg)
    steps_per_epoch = math.ceil(len(train_ex) / cfg.train.batch_size / cfg.train.grad_accum)
    base.train.eval_every = max(1, steps_per_epoch // sp.study["evals_per_epoch"])
    base.train.save_every, base.train.monitor = 0, "val_accuracy"
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _study(optuna, cfg, base, sources, out, trials, sp, storage_url, study_name, timeout, track,
                      tracking_uri, trust_pickle, log, train_ex, val_ex, labels, plan_table)
    except BaseException:
        # a folder this search made for a study that never started a trial (or never opened) goes again; one
        # that holds any trial, another worker's running one too, stays
        if created and (not any(out.iterdir()) or not storage_url and not _any_trial(out / "study.db")):
            shutil.rmtree(out, ignore_errors=True)
        raise


def _any_trial(db: Path) -> bool:
    """Whether the study database at `db` (this search's own SQLite file) holds a trial, in any state."""
    import sqlite3
    if not db.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT COUNT(*) FROM trials").fetchone()[0] > 0
    except sqlite3.Error:
        return True  # unreadable: keep it, it is not ours to judge


def _study(optuna, cfg, base, sources, out: Path, trials: int, sp, storage_url, study_name, timeout, track,
           tracking_uri, trust_pickle, log, train_ex, val_ex, labels, plan_table) -> dict:
    url = storage_url or f"sqlite:///{(out / 'study.db').resolve()}"
    # what makes trials comparable, in terms that hold on every machine (paths may differ): the plans' exact counts
    # stand for the model's architecture, the split's sizes and classes for the data
    identity = {"budget": cfg.budget.max_trainable, "space": sp.to_dict(), "data": {
        "train": len(train_ex), "val": len(val_ex), "labels": list(labels)},
        "plans": {k: [p["fixed"], p["per_rank"], p["r_max"]] for k, p in sorted(plan_table.items())}}
    study = open_study(url, study_name, sp, identity)
    if sp.study["enqueue_base"] and not study.user_attrs.get("base_enqueued"):
        study.set_user_attr("base_enqueued", True)
        base_params = space.params_of(cfg, sp, plan_table, labels)
        if base_params:  # the base config (the preset) is trial 0: the best trial is at least as good on validation
            study.enqueue_trial(base_params, skip_if_exists=True)
    trackers = _Trackers(track, tracking_uri, study, study_name, out)
    limit = cfg.budget.max_trainable

    def objective(trial) -> float:
        c = space.sample(trial, sp, plan_table, base)
        trainable = budget_mod.count_config(c, labels).trainable
        if trainable > limit:  # space.plans cut the ranks to fit: reaching this is a bug, never a trial to score
            raise RuntimeError(f"budget accounting bug: trial {trial.number} has {trainable:,} > {limit:,} trainable")
        run_dir = out / "trials" / f"trial-{trial.number:04d}"
        for k, v in {"trainable": trainable, "run_dir": str(run_dir), "r": c.adapter.r, "alpha": c.adapter.alpha,
                     "dropout": c.adapter.dropout, "lr": c.train.lr, "epochs": c.train.epochs,
                     "warmup_ratio": c.train.warmup_ratio, "seed": c.train.seed,
                     "worker": f"{socket.gethostname()}:{os.getpid()}"}.items():  # the values used, fixed ones too
            trial.set_user_attr(k, v)
        callbacks = [Pruning(trial, "val_accuracy", sp.study["warmup_evals"])] + trackers.child(trial.number)
        start = time.perf_counter()
        try:
            res = pipeline.train_run(c, list(sources), run_dir, overwrite=True, trust_pickle=trust_pickle,
                                     log=lambda *a, **k: None, callbacks=callbacks)
        except optuna.TrialPruned as e:
            log(f"trial {trial.number}: {e}")
            raise
        except Interrupted:  # Ctrl-C stops the worker (the trial is failed; rerunning resumes the study)
            raise KeyboardInterrupt from None
        except UserError as e:  # e.g. a diverged trial: failed, and the study goes on
            trial.set_user_attr("error", str(e)[:500])
            log(f"trial {trial.number} failed: {str(e).splitlines()[0][:200]}")
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        val = res["val"]
        trial.set_user_attr("val_macro_f1", val["macro_f1"])
        log(f"trial {trial.number}: val accuracy {100 * val['accuracy']:.2f}%  {trainable:,} trainable  "
            f"{c.model.head}/{','.join(c.adapter.target_modules)} r={c.adapter.r}  lr {c.train.lr:.2e}  "
            f"{time.perf_counter() - start:.0f} s")
        return val["accuracy"]

    left = trials - finished(study)
    log(f"study {study_name!r} in {url}: {finished(study)} of {trials} trials finished; {len(plan_table)} plans fit "
        f"the budget of {limit:,}")
    if left > 0:
        study.optimize(objective, n_trials=left, timeout=timeout, catch=(UserError,), gc_after_trial=True,
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=(
                           optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))])
    summary = studyreport.write(study, out, limit)
    trackers.finish(summary)
    if summary.get("best"):
        b = summary["best"]
        log(f"best: trial {b['number']}, val accuracy {100 * b['value']:.2f}%, {b['trainable']:,} trainable; "
            f"train it with: loraclf train --config {out / 'best-config.toml'} --data ...")
    log(f"wrote {out / 'leaderboard.md'} and {out / 'report.html'}")
    return summary


class _Trackers:
    """One parent per study (an MLflow run whose id the study keeps; a TensorBoard folder; a W&B group) and a
    child per trial."""

    def __init__(self, backends, uri, study, study_name: str, out: Path):
        self.backends, self.uri, self.study, self.name, self.out = list(dict.fromkeys(backends)), uri, study, study_name, out
        self.parent = None
        if "mlflow" in self.backends:
            from . import track
            self.client, exp_id = track.mlflow_client(uri or track.DEFAULT_URI, "loraclf")
            self.parent = study.user_attrs.get("mlflow_parent_run")
            if not self.parent:
                self.parent = self.client.create_run(exp_id, run_name=study_name, tags={
                    "loraclf.study": study_name, "mlflow.source.name": "loraclf search"}).info.run_id
                study.set_user_attr("mlflow_parent_run", self.parent)
        for b in self.backends:  # fail on a missing package now, not in the first trial
            if b == "tensorboard":
                live.TensorBoard(out / "tensorboard")
            elif b == "wandb":
                live.WandB(out)

    def child(self, number: int) -> list[live.Callback]:
        name, cbs = f"trial-{number:04d}", []
        for b in self.backends:
            if b == "mlflow":
                parent = self.study.user_attrs.get("mlflow_parent_run", self.parent)  # one parent, if two workers raced
                cbs.append(live.MLflow(self.uri, parent_id=parent, run_name=name))
            elif b == "tensorboard":
                cbs.append(live.TensorBoard(self.out / "tensorboard" / name))
            elif b == "wandb":
                cbs.append(live.WandB(self.out, group=self.name, run_name=name))
        return cbs

    def finish(self, summary: dict) -> None:
        if not self.parent:
            return
        from mlflow.entities import Metric
        best = summary.get("best") or {}
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in (("best_val_accuracy", best.get("value")),
                   ("finished_trials", summary.get("finished"))) if v is not None]
        parent = self.study.user_attrs.get("mlflow_parent_run", self.parent)
        self.client.log_batch(parent, metrics=metrics, params=[])
        for name in ("leaderboard.md", "report.html", "best-config.toml"):
            if (self.out / name).is_file():
                self.client.log_artifact(parent, str(self.out / name))
        self.client.set_tag(parent, "loraclf.best", json.dumps({k: best.get(k) for k in ("number", "value")}))
        self.client.set_terminated(parent)
