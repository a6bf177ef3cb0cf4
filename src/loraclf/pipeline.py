"""One run end to end: data -> budget -> model -> fit -> metrics -> predictions, into one run directory.

Everything a user can get wrong (data, config, budget, output folder) is checked before the first
training step, and nothing is written until it has all passed.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from . import budget as budget_mod
from . import data as data_mod
from . import layercache
from . import longtext
from . import metrics as metrics_mod
from . import model as model_mod
from . import multilabel
from . import precision as precision_mod
from . import predict as predict_mod
from . import remote_code
from . import rundir
from . import scoring
from . import train as train_mod
from .config import Config
from .errors import Interrupted, UserError, traceback_wanted, unexpected


NAMES_ORIGIN = "data.label_names; --set data.label_names=[] takes the classes from the data"


def load_training_data(cfg: Config, sources: list[str], trust_pickle: bool = False, run_labels=None,
                       legacy_ids: bool = False):
    """The training rows and the validation split. `run_labels`: a resumed run's classes, which the data must
    map to as it did when the run started (`legacy_ids`: numbers_are_ids for a run from before that record)."""
    d = cfg.data
    examples = data_mod.load_many(sources, text_column=d.text_column, label_column=d.label_column,
                                  label_names=run_labels or d.label_names, split="train", encoding=d.encoding,
                                  trust_pickle=trust_pickle, text_columns=d.text_columns,
                                  names_origin="the run's classes" if run_labels else NAMES_ORIGIN,
                                  numbers_are_ids=legacy_ids, **task_options(cfg))
    if multilabel.is_multi(cfg):
        multilabel.check_classes(examples, sources)
        multilabel.check_pos_weight(cfg, examples.label_names)
    else:
        check_classes(examples, sources, cfg)
    if d.max_train_samples and d.max_train_samples < len(examples):
        examples, _ = data_mod.split(examples, len(examples) - d.max_train_samples, cfg.train.seed)
    return data_mod.split(examples, d.val_size, cfg.train.seed)


def check_classes(examples, sources: list[str], cfg: Config | None = None) -> None:
    """A classifier needs two classes to tell apart: one class would train and score 100% on anything. Classes
    the config lists (a preset's data.label_names) must each have training rows: a class that has none is
    another task's (AG News names on a two-class file) or a mistake."""
    present = sorted(set(examples.labels))
    if len(examples.label_names) < 2 or len(present) < 2:
        only = examples.label_names[present[0]] if present and present[0] < len(examples.label_names) else "?"
        raise UserError(f"the training data ({', '.join(sources)}) has one class only ({only!r})",
                        "give rows of at least two classes (and check data.label_column)")
    absent = [n for j, n in enumerate(examples.label_names) if j not in set(present)]
    if cfg is not None and cfg.data.label_names and absent:
        where = f" (from the preset {cfg.preset} or your settings)" if cfg.preset else ""
        raise UserError(f"the training data ({', '.join(sources)}) has no rows of class {data_mod.column_list(absent)}: "
                        f"data.label_names{where} lists {len(examples.label_names)} classes "
                        f"({data_mod.column_list(examples.label_names)})",
                        "set data.label_names to your classes, or --set data.label_names=[] to take them from the data")


def task_options(cfg: Config) -> dict:
    """How data.load reads a run's labels: one class a row, or a set (data.task, data.label_delimiter)."""
    return {"task": cfg.data.task, "label_delimiter": cfg.data.label_delimiter}


def load_eval_data(cfg: Config, sources: list[str], label_names: list[str], trust_pickle: bool = False,
                   text_column=None, label_column: str | None = None, legacy_ids: bool = False):
    """Labelled data scored against a run's classes; `text_column` (one, or two for pairs) and `label_column` name
    the data's columns where they are not the run's; `legacy_ids`: numbers_are_ids of an older run."""
    from . import predict as predict_mod
    d = cfg.data
    columns = predict_mod.input_columns(text_column, d.text_columns or [d.text_column])
    return data_mod.load_many(sources, text_column=columns[0], label_column=label_column or d.label_column,
                              label_names=label_names, names_origin="the run's classes",
                              split="test", encoding=d.encoding, trust_pickle=trust_pickle,
                              text_columns=columns if d.text_columns else (), numbers_are_ids=legacy_ids,
                              **task_options(cfg))


def environment(device) -> dict:
    import accelerate
    import peft
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "accelerate": accelerate.__version__, "device": str(device),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


# config.json's record of how predictions write a class: "names" or "ids", as the training labels were written
# (data.Examples.label_output)
LABEL_OUTPUT = "predict.labels"


def numbers_are_ids(config_dict: dict) -> bool:
    """A run saved before classes could be numbers (no `predict.labels` record): whole numbers in its label
    columns are class ids, as they were when it trained."""
    resolved = config_dict.get("resolved") if isinstance(config_dict, dict) else None
    return not (isinstance(resolved, dict) and resolved.get(LABEL_OUTPUT) in ("names", "ids"))


def resolved(cfg: Config, precision: str, scoring_precision: str, device_type: str, model) -> dict:
    """What this machine made of the config's automatic choices, saved beside it in config.json (for the reader:
    the config itself keeps `auto`, so the run resolves them afresh on another machine)."""
    from . import fastpath
    return {"device": device_type, "cpu_kind": precision_mod.cpu_kind() if device_type == "cpu" else None,
            "train.precision": precision, "scoring.precision": scoring_precision,
            "model.attn_implementation": getattr(fastpath.transformers_model(model).config, "_attn_implementation", None),
            "scoring.max_tokens": scoring.scoring_tokens(cfg.scoring.max_tokens, device_type),
            "scoring.bf16_full_cast": precision_mod.casts_whole_model(scoring_precision, cfg.scoring.bf16_full_cast)
            and fastpath.bf16_whole_model_applies(model),
            "scoring.cls_only_last_layer": bool(cfg.scoring.cls_only_last_layer)
            and fastpath.first_token_layer_applies(model),
            "cpu.tune_malloc": bool(cfg.cpu.tune_malloc) and device_type == "cpu"}


def train_run(cfg: Config, data: list[str], out: Path, test_data: list[str] = (), predict_data: str | None = None,
          resume: bool = False, overwrite: bool = False, trust_pickle: bool = False, log=print, callbacks=()) -> dict:
    """Train one run into `out`. A UserError before the run is complete leaves no half-written run directory: one
    this call created is deleted unless it holds a resumable checkpoint, which is kept, and the error says so.
    callbacks: live.Callback objects (live tracking, a search's pruner), started once the run's config is written."""
    from . import live
    try:
        result = _guarded(cfg, data, Path(out), test_data, predict_data, resume, overwrite, trust_pickle, log, callbacks)
    except BaseException as e:
        live.end_all(callbacks, None, e)
        raise
    live.end_all(callbacks, result)
    return result


def _guarded(cfg, data, out: Path, test_data, predict_data, resume, overwrite, trust_pickle, log, callbacks) -> dict:
    inputs = [*data, *test_data, *([predict_data] if predict_data else [])]
    old = rundir.set_aside(out, inputs) if overwrite and not resume and _main_process() else None
    try:
        result = _cleaned_up(cfg, data, out, test_data, predict_data, resume, overwrite, trust_pickle, log, callbacks)
    except BaseException:
        kept = resumable(out) or (out / "metrics.json").is_file()
        if old is not None and not kept:  # the new run failed: the one it was to replace comes back
            rundir.put_back(old, out)
        elif old is not None:  # stopped with a checkpoint (as its message says) or with its results: it stays
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return result


def _main_process() -> bool:
    from accelerate import PartialState
    return PartialState(cpu=not torch.cuda.is_available()).is_main_process


def resumable(out: Path) -> bool:
    """`out` holds a run that `train --resume` can continue: its config, inputs and a checkpoint."""
    from . import checkpoint
    return (out.is_dir() and checkpoint.newest(out / "checkpoint")[1] is not None
            and (out / "config.json").is_file() and (out / "inputs.json").is_file())


def _cleaned_up(cfg, data, out: Path, test_data, predict_data, resume, overwrite, trust_pickle, log, callbacks) -> dict:
    import errno
    existed = out.exists()
    fresh = not existed or (out.is_dir() and not any(out.iterdir()))
    try:
        return _train(cfg, data, out, test_data, predict_data, resume, overwrite, trust_pickle, log, callbacks)
    except UserError as e:
        raise failed_run(e, out, fresh, existed) from None
    except OSError as e:  # a disk that fills (or turns read-only) where no write_bytes converted it
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise failed_run(rundir.write_error(Path(e.filename or out), e), out, fresh, existed) from None
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which turns it into Interrupted)
        failed_run(Interrupted("interrupted"), out, fresh, existed)
        raise
    except Exception as e:  # a model or library failing in a way no check foresaw: the folder goes all the same
        optuna = sys.modules.get("optuna")
        if (optuna is not None and isinstance(e, optuna.TrialPruned)) or (out / "metrics.json").is_file():
            raise  # a pruned trial keeps its curve (search.py); a run that wrote its results keeps them
        error = UserError(unexpected(e), "LORACLF_TRACEBACK=1 shows where it happened")
        shown = failed_run(error, out, fresh, existed)
        if shown is not error and not traceback_wanted():  # the run kept a checkpoint: say how to resume it
            raise shown from e
        raise


def failed_run(error: UserError, out: Path, fresh: bool, existed: bool) -> UserError:
    """What is left of a run directory after `error`, and the error to show (with a --resume hint if resumable).
    `fresh`: the folder did not exist, or was empty, before this call; it is then emptied (and removed if it did
    not exist) unless it holds a resumable checkpoint."""
    from . import checkpoint
    if int(os.environ.get("RANK", "0")) != 0 or not out.is_dir():
        return error
    step = checkpoint.newest(out / "checkpoint")[1]
    if not resumable(out):
        if fresh:
            for p in list(out.iterdir()):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            if not existed and not any(out.iterdir()):
                out.rmdir()
        return error
    if isinstance(error, Interrupted):  # its message already points at the checkpoint and --resume
        return error
    return UserError(f"{error.what}; {out} keeps the checkpoint of step {step}",
                     (f"{error.fix}; " if error.fix else "") + f"`loraclf train --resume --out {out}` continues from it")


def _train(cfg: Config, data: list[str], out: Path, test_data, predict_data, resume: bool, overwrite: bool,
           trust_pickle: bool, log, callbacks=()) -> dict:
    from transformers import AutoTokenizer

    if resume:  # the run goes on exactly as it started: same config, same data
        if not (out / "config.json").is_file():
            raise UserError(f"nothing to resume in {out} (no config.json)", "start the run without --resume")
        run = rundir.RunDir.open(out, model=False)
        cfg = run.config
        inputs = run.optional_json("inputs.json")
        if not isinstance(inputs, dict) or not all(k in inputs for k in ("data", "test_data", "predict_data")):
            raise UserError(f"{out} has no readable inputs.json (the data the run was started on)",
                            "start the run again without --resume")
        data, test_data, predict_data = inputs["data"], inputs["test_data"], inputs["predict_data"]
    if cfg.cpu.threads:
        torch.set_num_threads(cfg.cpu.threads)
    train_mod.seed_everything(cfg.train.seed)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    precision_mod.resolve(cfg.train.precision, device_type)  # a bad choice is refused before anything is read
    from accelerate import PartialState
    main = PartialState(cpu=device_type == "cpu").is_main_process
    log = log if main else (lambda *a, **k: None)

    # 1. everything that can be wrong with the inputs, before anything is written
    legacy = resume and numbers_are_ids(run.config_dict)
    train_ex, val_ex = load_training_data(cfg, data, trust_pickle, run.labels if resume else None, legacy)
    label_names = train_ex.label_names
    test_ex = load_eval_data(cfg, list(test_data), label_names, trust_pickle, legacy_ids=legacy) if test_data else None
    pred_ex = None
    if predict_data:
        pred_ex = data_mod.load(predict_data, text_column=cfg.data.text_column, label_column=cfg.data.label_column,
                                numbers_are_ids=legacy,
                                label_names=label_names, split="test", labelled=False, encoding=cfg.data.encoding,
                                trust_pickle=trust_pickle, text_columns=cfg.data.text_columns,
                                **task_options(cfg))
    expected = budget_mod.check(cfg, label_names)
    if main:
        rundir.prepare(out, resume, overwrite)
    log(f"data: {len(train_ex)} train, {len(val_ex) if val_ex else 0} validation"
        + (f", {len(test_ex)} test" if test_ex else "") + f"; classes: {', '.join(label_names)}")
    log(f"budget ({cfg.budget.max_trainable:,}):\n{expected.table()}")

    # 2. tokens and model
    tokenizer_path = model_mod.resolve_model_path(cfg.model.name)
    remote_code.check_folder(tokenizer_path)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, **remote_code.kwargs())
    infer_len = scoring.infer_length(cfg)
    treatment = longtext.Treatment.of(cfg.data)
    train_enc = longtext.encode(tokenizer, train_ex, cfg.data.max_length, treatment)
    val_enc = longtext.encode(tokenizer, val_ex, infer_len, treatment) if val_ex else None
    long_rows = {"train": train_enc.summary()} | ({"val": val_enc.summary()} if val_enc else {})
    log(longtext.describe(long_rows["train"], "training rows"))
    model = model_mod.build(cfg, label_names)
    precision = precision_mod.resolve_for(cfg.train.precision, device_type, model)
    scoring_precision = precision_mod.resolve_for(cfg.scoring.precision, device_type, model)
    accelerator = train_mod.make_accelerator(precision, device_type)
    built = budget_mod.count(model)
    if built.trainable != expected.trainable or built.total != expected.total:
        raise RuntimeError(f"budget accounting bug: planned {expected.to_dict()}, built {built.to_dict()}")
    if cfg.train.cache_frozen_layers == "on":  # refuses where it cannot cache: say so before the run's files are written
        layercache.plan(model, "on", int(train_enc.lengths.sum()), accelerator.num_processes, log=lambda *a, **k: None)
    if main and not resume:
        rundir.write_json(out / "config.json", cfg.to_dict() | {"format_version": rundir.FORMAT_VERSION,
                                                                "resolved": resolved(cfg, precision, scoring_precision,
                                                                                     device_type, model)
                                                                | {LABEL_OUTPUT: train_ex.label_output}})
        rundir.write_json(out / "labels.json", label_names)
        rundir.write_json(out / "budget.json", built.to_dict())
        rundir.write_json(out / "inputs.json", {"data": [_abs(d) for d in data], "test_data": [_abs(d) for d in test_data],
                                                "predict_data": _abs(predict_data) if predict_data else None})
        save_folder(out / "tokenizer", lambda tmp: tokenizer.save_pretrained(str(tmp)))
    callbacks = list(callbacks) if main else []
    if callbacks:
        from . import live
        live.start_all(callbacks, out, cfg)

    # 3. train
    start = time.perf_counter()
    prog = train_mod.fit(model, cfg, train_enc, val_enc, label_names, tokenizer.pad_token_id, out, accelerator,
                         resume=resume, log=log, callbacks=callbacks)
    # without accelerate's autocast wrapper: scoring.precision, not train.precision, says how the run scores from here
    model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    wall = time.perf_counter() - start
    accelerator.wait_for_everyone()

    # 4. evaluate, predict, save
    device = accelerator.device
    pad = tokenizer.pad_token_id
    result = {"format_version": rundir.FORMAT_VERSION, "budget": built.to_dict(),
              "train": {"steps": prog.step, "epochs_done": prog.epoch, "stopped_early": prog.stopped_early,
                        "best_step": prog.best_step, "wall_seconds": round(wall, 2),
                        "train_seconds": round(prog.train_seconds, 2),
                        "samples_per_s": accelerator.num_processes * prog.samples / max(prog.train_seconds, 1e-9),
                        "tokens_per_s": accelerator.num_processes * prog.tokens / max(prog.train_seconds, 1e-9),
                        "processes": accelerator.num_processes},
              "long_text": long_rows, "environment": environment(device)}
    thresholds = None  # multi-label: per-label decision thresholds, chosen on validation
    if val_enc is not None:
        val = scoring.evaluate_encoded(model, val_enc, cfg, label_names, pad, device, scoring_precision, accelerator)
        if multilabel.is_multi(cfg):
            val_labels = longtext.row_labels(val_enc)  # the documents', for chunks
            thresholds = multilabel.tune_thresholds(val["logits"], val_labels)
            val = multilabel.metrics(val["logits"], val_labels, label_names, thresholds)
        result["val"] = {k: v for k, v in val.items() if k != "logits"}
    if multilabel.is_multi(cfg) and thresholds is None:
        thresholds = [multilabel.DEFAULT_THRESHOLD] * len(label_names)
    if test_ex is not None:
        t0 = time.perf_counter()
        test_enc = longtext.encode(tokenizer, test_ex, infer_len, treatment)
        long_rows["test"] = test_enc.summary()
        log(longtext.describe(long_rows["test"], "test rows"))
        test = scoring.evaluate_encoded(model, test_enc, cfg, label_names, pad, device, scoring_precision, accelerator,
                                      thresholds)
        result["test"] = {k: v for k, v in test.items() if k != "logits"}
        result["test"]["seconds"] = round(time.perf_counter() - t0, 2)
        test_logits = test["logits"]
    if pred_ex is not None:
        pred_enc = longtext.encode(tokenizer, pred_ex, infer_len, treatment)
        long_rows["predict"] = pred_enc.summary()
        log(longtext.describe(long_rows["predict"], "rows to predict"))
        pred_logits = scoring.predict_logits(model, pred_enc,
                                             cfg.scoring.batch_size, pad, device, scoring_precision, accelerator,
                                             cfg.scoring.max_tokens, cfg.scoring.bf16_full_cast,
                                             cfg.scoring.cls_only_last_layer)
    if main:
        save_folder(out / "adapter", lambda tmp: model_mod.save(model, tmp))
        if thresholds is not None:
            multilabel.save_thresholds(out, label_names, thresholds, "validation" if val_enc is not None else "default")
        rundir.write_json(out / "metrics.json", result)
        task = {"thresholds": thresholds, "delimiter": cfg.data.label_delimiter}
        names = train_ex.label_output == "names"
        if pred_ex is not None:
            rundir.write_text(out / "submission.csv", predict_mod.submission_csv(scoring.row_ids(pred_ex), pred_logits,
                                                                                 label_names, names, **task))
        elif test_ex is not None:
            rundir.write_text(out / "submission.csv", predict_mod.submission_csv(scoring.row_ids(test_ex), test_logits,
                                                                                 label_names, names, **task))
        if test_ex is not None:
            rundir.write_text(out / "predictions.csv", predict_mod.predictions_csv(test_ex, test_logits, label_names, **task))
        if "test" in result:
            log(metrics_mod.metrics_table(result["test"], "test"))
        elif "val" in result:
            log(metrics_mod.metrics_table(result["val"], "validation (best weights)"))
    accelerator.wait_for_everyone()
    return result


def save_folder(final: Path, fill) -> None:
    """Fill a temp folder beside `final`, then swap it in: a full disk leaves the old folder (or none), never a part."""
    import shutil
    tmp = rundir.temp_dir(final)
    try:
        fill(tmp)
        rundir.replace_dir(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise rundir.write_error(final, e) from None
        raise


def _abs(source: str) -> str:
    """Absolute path for files and folders; Hub names stay as they are."""
    p = Path(source)
    return str(p.resolve()) if p.exists() else str(source)


def eval_name(name: str, source: str) -> str:
    """The <name> of eval-<name>.json: --name as given (letters, digits, `.`, `_`, `-`: it names a file inside
    the run directory, never a path), else the data file's stem with anything else made `_`."""
    import re
    if name:
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}", name):
            raise UserError(f"--name {name!r} is not a plain name", "use letters, digits, '.', '_' and '-' (at most 100)")
        return name
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(source).stem)[:100].lstrip(".") or "data"


def evaluate_run(run_dir: Path, sources: list[str], trust_pickle: bool = False, batch_size: int = 64, name: str = "",
                 max_tokens: int = -1, precision: str | None = None, text_column=None,
                 label_column: str | None = None) -> dict:
    """Score a finished run on labelled data at `precision` (precision.PRECISION_CHOICES; default: the run's
    scoring.precision); saves eval-<name>.json in the run directory. `text_column`/`label_column`: the data's
    column names where they are not the run's."""
    name = eval_name(name, sources[0])
    run = rundir.RunDir.open(run_dir)
    run_dir = run.path
    # the data first, as predict does: its mistakes show before a model is loaded
    ex = load_eval_data(run.config, list(sources), run.labels, trust_pickle, text_column, label_column,
                        numbers_are_ids(run.config_dict))
    thresholds = multilabel.read_thresholds(run_dir, run.labels) if multilabel.is_multi(run.config) else None
    model, tokenizer, cfg, label_names = scoring.load_for_inference(run)
    stats: dict = {}
    logits = scoring.logits_for(model, tokenizer, ex.texts, scoring.infer_length(cfg), batch_size,
                                precision or cfg.scoring.precision, max_tokens=max_tokens,
                                **scoring.scoring_options(cfg), treatment=longtext.Treatment.of(cfg.data), stats=stats)
    m = multilabel.metrics(logits, ex.labels, label_names, thresholds) if thresholds is not None \
        else metrics_mod.classification(logits, ex.labels, label_names)
    m["data"] = list(sources)
    m["long_text"] = stats
    rundir.write_json(run_dir / f"eval-{name}.json", m)
    return m
