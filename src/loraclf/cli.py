"""The `loraclf` command. Parses arguments, calls the modules, and turns a UserError into one line on
stderr and exit code 2 (never a traceback)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import precision, remote_code, report_cli
from .errors import Interrupted, UserError, traceback_wanted, unexpected

# scoring.PREDICT_BACKENDS, named here too so that parsing the command line loads no torch
PREDICT_BACKENDS = ("torch", "openvino", "onnx")


def _config(args):
    from . import config
    overrides = list(args.set or [])
    for flag, key in (("epochs", "train.epochs"), ("seed", "train.seed"), ("max_train_samples", "data.max_train_samples"),
                      ("budget", "budget.max_trainable"), ("model", "model.name")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return config.load(args.preset, args.config, overrides)


def cmd_train(args) -> int:
    import signal
    import threading
    from . import pipeline
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops a run as Ctrl-C does: cleanly
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    report_cli.check_track_args(args)
    if args.resume:  # the saved config and inputs decide; flags that would change them are refused, not ignored
        given = [f"--{k.replace('_', '-')}" for k in ("preset", "config", "set", "data", "test_data", "predict_data",
                                                       "max_train_samples", "epochs", "seed", "budget", "model")
                 if getattr(args, k, None)]
        if given:
            raise UserError(f"--resume continues a run exactly as it started, so {', '.join(given)} cannot apply",
                            "drop them to resume, or start a new run (another --out, or --overwrite)")
        if not args.out:
            raise UserError("--resume needs the run directory", "give --out RUN_DIR")
    cfg = _config(args)
    out = Path(args.out or f"runs/{cfg.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not args.data and not args.resume:
        raise UserError("no training data", "give --data FILE_OR_FOLDER (repeat it for several files)")
    callbacks = report_cli.live_callbacks(args) if _is_main_process() else []
    result = pipeline.train_run(cfg, args.data or [], out, args.test_data or [], args.predict_data, resume=args.resume,
                            overwrite=args.overwrite, trust_pickle=args.trust_pickle, callbacks=callbacks)
    if not _is_main_process():
        return 0
    _maybe_report(out, args)
    report_cli.maybe_track(out, args, live=bool(callbacks))
    t = result["train"]
    line = f"run: {out}   trainable {result['budget']['trainable']:,}   train {t['wall_seconds']:.0f}s ({t['samples_per_s']:.1f} samples/s)"
    for split in ("val", "test"):
        if split in result:
            m = result[split]
            if m.get("task") == "multi_label":
                line += f"   {split} micro-F1 {m['micro_f1']:.4f} macro-F1 {m['macro_f1']:.4f} subset accuracy {100 * m['accuracy']:.2f}%"
            else:
                line += f"   {split} accuracy {100 * m['accuracy']:.2f}% macro-F1 {m['macro_f1']:.4f}"
    print(line)
    return 0


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _maybe_report(run_dir: Path, args) -> None:
    if getattr(args, "no_report", False):
        return
    from . import report
    report.write(run_dir)


def cmd_evaluate(args) -> int:
    from . import longtext, metrics, pipeline
    m = pipeline.evaluate_run(Path(args.run), args.data, trust_pickle=args.trust_pickle, batch_size=args.batch_size,
                              name=args.name, max_tokens=args.max_tokens, precision=args.precision,
                              text_column=args.text_column, label_column=args.label_column)
    if m.get("long_text"):
        print(longtext.describe(m["long_text"]))
    print(metrics.metrics_table(m, f"{args.run} on {', '.join(args.data)}"))
    _maybe_report(Path(args.run), args)
    report_cli.maybe_track(Path(args.run), args)
    return 0


def cmd_predict(args) -> int:
    from . import longtext, predict
    r = predict.write_predictions(Path(args.run), args.input, Path(args.output), names=args.label_output,
                                  probs=args.probs, batch_size=args.batch_size, precision=args.precision,
                                  trust_pickle=args.trust_pickle, text_column=args.text_column,
                                  max_tokens=args.max_tokens, backend=args.backend)
    if r["long_text"]:
        print(longtext.describe(r["long_text"]))
    print(f"wrote {r['rows']} predictions to {r['out']}")
    return 0


def cmd_plan(args) -> int:
    try:
        return _plan(args)
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, NotImplementedError) as e:
        # a model loraclf cannot count (a family it has no row for, a peft/transformers refusal): one line, why
        cfg_name = getattr(args, "model", None) or "this model"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"cannot count {cfg_name}: {type(e).__name__}: {first}",
                        "name its linear modules in adapter.target_modules, or see docs/families.md for the "
                        "families loraclf knows") from None


def _plan(args) -> int:
    from . import budget, families
    if args.sweep is not None:
        raise UserError("plan --sweep is gone: `loraclf search` finds the best model under the budget",
                        "loraclf search --preset ... --data TRAIN_FILE --trials 20 (docs/search.md)")
    cfg = _config(args)
    num_labels = _num_labels(args.num_labels)
    names = cfg.data.label_names if cfg.data.label_names and not num_labels else [str(i) for i in range(num_labels or 2)]
    limit = cfg.budget.max_trainable
    if (args.preset or args.config or args.set) and not args.all_ranks:
        b = budget.count_config(cfg, names)
        fits = b.trainable <= limit
        if args.json:
            print(json.dumps(b.to_dict() | {"budget": limit, "fits": fits, "model": cfg.model.name}))
        else:
            print(f"{cfg.model.name} with {cfg.preset or 'this config'} ({cfg.adapter.method} r={cfg.adapter.r} on "
                  f"{','.join(cfg.adapter.target_modules)}), {len(names)} classes:")
            resolved = budget.resolved_roles(cfg, names, cfg.adapter.target_modules)
            if resolved:
                print(f"  targets: {families.describe(resolved)}")
            print(b.table())
            if b.frozen_head_copy:
                print(f"  (total includes the {b.frozen_head_copy:,} parameters of the original head that peft keeps frozen beside the trained copy)")
            print(f"budget {limit:,}: {'fits' if fits else 'OVER BUDGET'}")
        return 0 if fits else 1
    rows = budget.plan(cfg, names, limit, all_ranks=args.all_ranks)
    if args.json:
        print(json.dumps({"model": cfg.model.name, "budget": limit, "options": rows}))
        return 0
    print(f"{cfg.model.name}, {len(names)} classes, {cfg.adapter.method}, budget {limit:,}: "
          f"{'every rank' if args.all_ranks else 'the largest rank'} that fits, most adapter parameters first")
    print(f"{'head':<7} {'targets':<34} {'layers':<7} {'r':>4} {'trainable':>11} {'adapter':>10} {'head+other':>11}")
    for r in rows:
        print(f"{r['head']:<7} {r['targets']:<34} {r['layers']:<7} {r['r']:>4} {r['trainable']:>11,} {r['adapter']:>10,} "
              f"{r['head_and_other']:>11,}")
    roles = list(dict.fromkeys(t for r in rows for t in r["targets"].split(",") if families.is_role(t)))
    if roles:
        print(f"targets: {families.describe(budget.resolved_roles(cfg, names, roles))}")
    return 0


MAX_LABELS = 100_000


def _num_labels(text: str | None) -> int:
    """--num-labels: a classifier has at least two classes."""
    if text is None:
        return 0
    try:
        n = int(text.strip()) if len(text) <= 20 else None
    except ValueError:
        n = None
    if n is None or not 2 <= n <= MAX_LABELS:
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise UserError(f"--num-labels {shown!r} is not a number of classes from 2 to {MAX_LABELS:,}",
                        "give the number of classes, e.g. --num-labels 4")
    return n


def cmd_presets(args) -> int:
    from . import config
    for name in config.preset_names():
        print(name)
    return 0


def cmd_report(args) -> int:
    from . import report
    report_cli.check_track_args(args)
    path = report.write(Path(args.run))
    print(f"wrote {path} and {path.with_name('report.md')} (plots in {path.parent / 'plots'})")
    report_cli.maybe_track(args.run, args)
    return 0


def cmd_compare(args) -> int:
    from . import report
    md, md_path, html_path = report.write_compare(args.runs, args.sort, Path(args.out))
    print(md, end="")
    print(f"\nwrote {md_path} and {html_path}")
    return 0


def cmd_export(args) -> int:
    from . import export
    written = export.export_run(Path(args.run), args.merged, args.onnx, args.overwrite, args.opset, args.onnx_exporter,
                                args.openvino)
    if "merged" in written:
        print(f"wrote merged model to {written['merged']} (loads with AutoModelForSequenceClassification.from_pretrained)")
    if "onnx" in written:
        print(f"wrote ONNX model to {written['onnx'] / 'model.onnx'} (use: loraclf predict {written['onnx']} INPUT)")
    if "openvino" in written:
        print(f"wrote OpenVINO model to {written['openvino'] / export.OPENVINO_XML} (use: loraclf predict "
              f"{written['openvino']} INPUT)")
    return 0


def cmd_serve(args) -> int:
    from . import serve
    return serve.serve(args.path, args.host, args.port, args.max_texts, args.max_chars, args.max_batch,
                       args.max_wait_ms, args.max_body_bytes, args.batch_size, args.precision, args.drain_timeout,
                       args.access_log, args.threads)


def _add_common_config(p) -> None:
    p.add_argument("--preset", help="a preset name (see `loraclf presets`)")
    p.add_argument("--config", help="a TOML (or JSON) file of settings, applied over the preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any setting, e.g. --set adapter.r=8")


class _Parser(argparse.ArgumentParser):
    """argparse's mistakes as the rest of loraclf's: one line on stderr, exit 2 (the usage is in --help)."""

    def error(self, message: str):
        message = message if len(message) <= 300 else message[:300] + "..."
        self.exit(2, f"loraclf: error: {message} (see {self.prog} --help)\n")


def _add_scoring_batch_args(p) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward batch, at most")
    p.add_argument("--max-tokens", type=int, default=-1,
                   help="padded tokens per forward batch, at most (-1: auto, the fastest cap measured for "
                   "this CPU kind and no cap on GPU; 0: no cap)")


def parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="loraclf", description="LoRA text classification under a trainable-parameter budget")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train, evaluate, predict and report in one run directory")
    _add_common_config(p)
    p.add_argument("--data", action="append", help="training data: file, AG News folder or Hub name (repeatable)")
    p.add_argument("--test-data", action="append", help="labelled test data, evaluated after training (repeatable)")
    p.add_argument("--predict-data", help="unlabelled data to write submission.csv for (default: the test data)")
    p.add_argument("--out", help="run directory (default runs/<preset>-<time>)")
    # flags that set config keys are read as text and checked by the config, as --set values are
    p.add_argument("--max-train-samples", help="data.max_train_samples")
    p.add_argument("--epochs", help="train.epochs")
    p.add_argument("--seed", help="train.seed")
    p.add_argument("--budget", help="budget.max_trainable: trainable parameters, at most")
    p.add_argument("--model", help="override model.name (Hub name or local folder)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--trust-pickle", action="store_true", help="unpickle any object (only for files you trust)")
    p.add_argument("--no-report", action="store_true", help="skip plots and report.html")
    report_cli.add_track_args(p)
    remote_code.add_argument(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a finished run on labelled data")
    p.add_argument("run")
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--name", default="", help="suffix of the saved eval-<name>.json (default: the data file's stem)")
    _add_scoring_batch_args(p)
    p.add_argument("--precision", default=None, choices=precision.PRECISION_CHOICES,
                   help="default: the run's scoring.precision (auto: bf16 where this CPU or GPU has native bf16); bf16 "
                   "scores move slightly with batch shape, so fp32 reproduces an fp32 run's figures exactly")
    p.add_argument("--text-column", action="append",
                   help="text column of the data (default: the run's); twice for a run on sentence pairs")
    p.add_argument("--label-column", help="label column of the data (default: the run's)")
    p.add_argument("--trust-pickle", action="store_true")
    p.add_argument("--no-report", action="store_true")
    report_cli.add_track_args(p)
    remote_code.add_argument(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="write ID,Label predictions for any input")
    p.add_argument("run")
    p.add_argument("input")
    p.add_argument("-o", "--output", default="submission.csv")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--label-names", dest="label_output", action="store_const", const=True,
                        help="write class names (default where the training labels were names, or the classes are "
                        "numbers such as -1/0/1)")
    output.add_argument("--label-ids", dest="label_output", action="store_const", const=False,
                        help="write class ids 0..K-1 (default where the training labels were ids under named classes)")
    p.add_argument("--probs", action="store_true", help="add one probability column per class")
    _add_scoring_batch_args(p)
    p.add_argument("--precision", default="auto", choices=precision.SCORING_CHOICES,
                   help="auto (default): bf16 where this CPU or GPU has native bf16, else fp32; int8: the encoder's "
                   "linear layers in int8 on the CPU (torch backend; see docs/performance.md for its speed and "
                   "accuracy)")
    p.add_argument("--text-column", action="append",
                   help="text column of the input (default: the run's); twice for a run on sentence pairs")
    p.add_argument("--backend", default="auto", choices=("auto",) + PREDICT_BACKENDS,
                   help="auto (default): the folder's own (onnx for an --onnx export, openvino for an --openvino one, "
                   "else torch); openvino on a run or --merged folder: its model converted in-process and scored on "
                   "OpenVINO's CPU runtime (pip install -e \".[openvino]\"; `loraclf export RUN --openvino DIR` "
                   "converts once instead); onnx: RUN is a folder from `loraclf export RUN --onnx DIR`")
    p.add_argument("--trust-pickle", action="store_true")
    remote_code.add_argument(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("plan", help="exact trainable counts, and the LoRA options that fit a budget")
    _add_common_config(p)
    p.add_argument("--model", help="Hub name or local folder (config only; no weights are read)")
    p.add_argument("--budget", help="budget.max_trainable: trainable parameters, at most")
    p.add_argument("--num-labels", help="classes, 2 or more (default: the preset's, else 2)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all-ranks", action="store_true", help="list every standard rank that fits, not only the largest")
    p.add_argument("--sweep", nargs="?", const="", help=argparse.SUPPRESS)  # gone: says to use `loraclf search`
    remote_code.add_argument(p)
    p.set_defaults(func=cmd_plan)

    _add_search_command(sub)

    p = sub.add_parser("presets", help="list the built-in presets")
    p.set_defaults(func=cmd_presets)
    _add_report_commands(sub)
    _add_export_command(sub)
    _add_serve_command(sub)
    return ap


def cmd_search(args) -> int:
    _select_device(args.device)  # before anything imports torch
    from . import search
    if not args.data:
        raise UserError("a search trains its trials, so it needs --data", "add --data TRAIN_FILE (repeatable)")
    cfg = _config(args)
    out = Path(args.out)
    search.run(cfg, args.data, out, _whole(args.trials, "--trials"), args.space, args.storage, args.study_name,
               _seconds(args.timeout), args.track or [], args.tracking_uri, args.trust_pickle)
    return 0


def _select_device(device: str | None) -> None:
    """--device cpu | cuda | cuda:N: this process sees that device only (CUDA_VISIBLE_DEVICES), so N processes
    with --device cuda:0 ... cuda:N-1 share one study, one GPU each."""
    if device is None:
        return
    if device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    elif device.startswith("cuda:") and device[5:].isdigit() and len(device) <= 9:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(int(device[5:]))
    elif device != "cuda":
        raise UserError(f"--device {device[:30]!r} is not cpu, cuda or cuda:N", "e.g. --device cuda:1")
    if device != "cpu":
        import torch
        if not torch.cuda.is_available():
            raise UserError(f"--device {device} asks for a CUDA GPU, but this process sees none "
                            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r})",
                            "give a GPU index this machine has (nvidia-smi lists them), or --device cpu")


def _whole(text: str, flag: str) -> int:
    if not (isinstance(text, str) and text.strip().isdigit() and len(text.strip()) <= 6):
        raise UserError(f"{flag} {str(text)[:20]!r} is not a whole number from 1 to 100,000", f"e.g. {flag} 20")
    return int(text)


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text) if len(text) <= 20 else float("nan")
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < 1e9):
        raise UserError(f"--timeout {text[:20]!r} is not a positive number of seconds", "e.g. --timeout 1800")
    return value


def _add_search_command(sub) -> None:
    from .live import BACKENDS
    p = sub.add_parser("search", help="find the best config under the budget with Optuna (resumable, runs on many workers)")
    _add_common_config(p)
    p.add_argument("--data", action="append", help="training data (repeatable); trials are scored on its validation split")
    p.add_argument("--out", default="search", help="study folder: trials/, study.db, leaderboard.md, report.html, "
                   "best-config.toml (default ./search)")
    p.add_argument("--trials", default="20", help="finished trials the study should have, over all its workers (default 20)")
    p.add_argument("--space", help="TOML file with the search space and study settings (docs/search.md)")
    p.add_argument("--storage", help="Optuna storage, any SQLAlchemy URL (default sqlite:///OUT/study.db)")
    p.add_argument("--study-name", default="search", help="study name in the storage (default search)")
    p.add_argument("--timeout", help="stop starting trials after this many seconds (this worker)")
    p.add_argument("--device", help="cpu, cuda or cuda:N: the device this worker trains on")
    p.add_argument("--track", action="append", choices=BACKENDS,
                   help="stream every trial to MLflow, TensorBoard (OUT/tensorboard) or W&B offline (OUT/wandb); repeatable")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlruns.db)")
    p.add_argument("--budget", help="budget.max_trainable: trainable parameters, at most")
    p.add_argument("--model", help="override model.name (Hub name or local folder)")
    p.add_argument("--max-train-samples", help="data.max_train_samples")
    p.add_argument("--seed", help="train.seed (every trial trains with it)")
    p.add_argument("--trust-pickle", action="store_true")
    remote_code.add_argument(p)
    p.set_defaults(func=cmd_search)


def _add_report_commands(sub) -> None:
    from .report import SORT_KEYS
    p = sub.add_parser("report", help="plots, report.html and report.md in a run directory")
    p.add_argument("run", help="run directory")
    report_cli.add_track_args(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", help="leaderboard of several runs (prints it, writes compare.md and compare.html)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument("--sort", default="test_accuracy", choices=list(SORT_KEYS), help="ranking metric (default test_accuracy)")
    p.add_argument("--out", default=".", help="folder for compare.md and compare.html (default: current folder)")
    p.set_defaults(func=cmd_compare)


def _add_export_command(sub) -> None:
    p = sub.add_parser("export", help="merge the adapter into the base model: Hugging Face folder, ONNX and/or OpenVINO")
    p.add_argument("run", help="run directory")
    p.add_argument("--merged", metavar="DIR", help="write a plain Hugging Face model folder (no peft needed)")
    p.add_argument("--onnx", metavar="DIR", help="write an ONNX export (model.onnx + tokenizer)")
    p.add_argument("--openvino", metavar="DIR", help="write an OpenVINO export (openvino_model.xml/.bin + tokenizer), "
                   "converted once, for predict/serve on OpenVINO's CPU runtime (pip install -e \".[openvino]\")")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("--onnx-exporter", default="auto", choices=["auto", "dynamo", "legacy"],
                   help="torch.onnx exporter: dynamo (torch.export), legacy (TorchScript), auto = dynamo then legacy")
    remote_code.add_argument(p)
    p.set_defaults(func=cmd_export)


def _add_serve_command(sub) -> None:
    from .serve import DEFAULTS
    p = sub.add_parser("serve", help="HTTP JSON API: POST /predict, GET /health, GET /info")
    p.add_argument("path", metavar="RUN_OR_EXPORT", help="run directory, or a folder from `loraclf export`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-texts", type=int, default=DEFAULTS["max_texts"], help="texts per request (more: 413)")
    p.add_argument("--max-chars", type=int, default=DEFAULTS["max_chars"], help="characters per text (more: 413)")
    p.add_argument("--max-body-bytes", type=int, help="request body size (more: 413; default from the two above)")
    p.add_argument("--max-batch", type=int, default=DEFAULTS["max_batch"], help="texts per micro-batch")
    p.add_argument("--max-wait-ms", type=float, default=DEFAULTS["max_wait_ms"],
                   help="how long a micro-batch waits for more requests (default 2)")
    p.add_argument("--batch-size", type=int, default=64, help="forward-pass batch size inside a micro-batch")
    p.add_argument("--precision", default="auto", choices=precision.SCORING_CHOICES,
                   help="auto (default): bf16 where this CPU or GPU has native bf16, else fp32; int8: the encoder's "
                   "linear layers in int8 on the CPU (torch backend; see docs/performance.md for its speed and "
                   "accuracy)")
    p.add_argument("--drain-timeout", type=float, default=30, help="seconds to finish in-flight requests on SIGTERM")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads per forward pass (default 0: torch's/onnxruntime's default; 1 is often fastest "
                        "for small models and busy machines)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    remote_code.add_argument(p)
    p.set_defaults(func=cmd_serve)


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices are not for users
    args = parser().parse_args(argv)
    try:
        with remote_code.allowed(getattr(args, "trust_remote_code", False)):  # this command only, never saved
            return args.func(args)
    except Interrupted as e:
        print(f"loraclf: {e}", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"loraclf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loraclf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `loraclf ... | head` stopped reading: nothing to report
        try:  # so the flush at exit does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout is not a file (captured)
            pass
        return 1
    except Exception as e:  # a failure inside a model or a library that no check foresaw: still one line
        if traceback_wanted():
            raise
        print(f"loraclf: error: {unexpected(e)}. This model or input hit a case loraclf does not handle; "
              "LORACLF_TRACEBACK=1 shows where (please report it)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
