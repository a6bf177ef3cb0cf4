"""The `loraclf` command. Parses arguments, calls the modules, and turns a UserError into one line on
stderr and exit code 2 (never a traceback)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import report_cli
from .errors import Interrupted, UserError


def _config(args):
    from . import config
    overrides = list(args.set or [])
    for flag, key in (("epochs", "train.epochs"), ("seed", "train.seed"), ("max_train_samples", "data.max_train_samples"),
                      ("budget", "train.budget"), ("model", "model.name")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return config.load(args.preset, args.config, overrides)


def cmd_train(args) -> int:
    from . import pipeline
    report_cli.check_track_args(args)
    cfg = _config(args)
    out = Path(args.out or f"runs/{cfg.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not args.data and not args.resume:
        raise UserError("no training data", "give --data FILE_OR_FOLDER (repeat it for several files)")
    result = pipeline.train(cfg, args.data or [], out, args.test_data or [], args.predict_data, resume=args.resume,
                            overwrite=args.overwrite, trust_pickle=args.trust_pickle)
    if not _is_main_process():
        return 0
    _maybe_report(out, args)
    report_cli.maybe_track(out, args)
    t = result["train"]
    line = f"run: {out}   trainable {result['budget']['trainable']:,}   train {t['wall_seconds']:.0f}s ({t['samples_per_s']:.1f} samples/s)"
    for split in ("val", "test"):
        if split in result:
            line += f"   {split} accuracy {100 * result[split]['accuracy']:.2f}% macro-F1 {result[split]['macro_f1']:.4f}"
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
    from . import metrics, pipeline
    m = pipeline.evaluate(Path(args.run), args.data, trust_pickle=args.trust_pickle, batch_size=args.batch_size,
                          name=args.name, max_tokens=args.max_tokens)
    print(metrics.table(m, f"{args.run} on {', '.join(args.data)}"))
    _maybe_report(Path(args.run), args)
    report_cli.maybe_track(Path(args.run), args)
    return 0


def cmd_predict(args) -> int:
    from . import predict
    if args.backend == "onnx":
        from . import export
        r = export.predict_run(Path(args.run), args.input, Path(args.output), names=args.label_names, probs=args.probs,
                               batch_size=args.batch_size, trust_pickle=args.trust_pickle, text_column=args.text_column)
    else:
        r = predict.run(Path(args.run), args.input, Path(args.output), names=args.label_names, probs=args.probs,
                        batch_size=args.batch_size, precision=args.precision, trust_pickle=args.trust_pickle,
                        text_column=args.text_column, max_tokens=args.max_tokens, backend=args.backend)
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
    cfg = _config(args)
    names = cfg.data.label_names if cfg.data.label_names and not args.num_labels else \
        [str(i) for i in range(args.num_labels or 2)]
    limit = cfg.train.budget
    if (args.preset or args.config or args.set) and not args.sweep and not args.all_ranks:
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
    if args.sweep:
        from . import search
        if not args.data:
            raise UserError("--sweep trains candidates, so it needs --data", "add --data TRAIN_FILE [...]")
        search.sweep(cfg, args.data, args.sweep, args.sweep_rows, Path(args.out or "sweep"), val_rows=args.sweep_val_rows,
                     overwrite=args.overwrite, trust_pickle=args.trust_pickle)
        return 0
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


def cmd_presets(args) -> int:
    from . import config
    for name in config.preset_names():
        print(name)
    return 0


def _add_common_config(p) -> None:
    p.add_argument("--preset", help="a preset name (see `loraclf presets`)")
    p.add_argument("--config", help="a TOML (or JSON) file of settings, applied over the preset")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any setting, e.g. --set adapter.r=8")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="loraclf", description="LoRA text classification under a trainable-parameter budget")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train, evaluate, predict and report in one run directory")
    _add_common_config(p)
    p.add_argument("--data", action="append", help="training data: file, AG News folder or Hub name (repeatable)")
    p.add_argument("--test-data", action="append", help="labelled test data, evaluated after training (repeatable)")
    p.add_argument("--predict-data", help="unlabelled data to write submission.csv for (default: the test data)")
    p.add_argument("--out", help="run directory (default runs/<preset>-<time>)")
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--epochs", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--budget", type=int)
    p.add_argument("--model", help="override model.name (Hub name or local folder)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--trust-pickle", action="store_true", help="unpickle any object (only for files you trust)")
    p.add_argument("--no-report", action="store_true", help="skip plots and report.html")
    report_cli.add_track_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a finished run on labelled data")
    p.add_argument("run")
    p.add_argument("--data", action="append", required=True)
    p.add_argument("--name", default="", help="suffix of the saved eval-<name>.json (default: the data file's stem)")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward batch, at most")
    p.add_argument("--max-tokens", type=int, default=-1,
                   help="padded tokens per forward batch, at most (-1: auto, 2048 on CPU and no cap on GPU; 0: no cap)")
    p.add_argument("--trust-pickle", action="store_true")
    p.add_argument("--no-report", action="store_true")
    report_cli.add_track_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="write ID,Label predictions for any input")
    p.add_argument("run")
    p.add_argument("input")
    p.add_argument("-o", "--output", default="submission.csv")
    p.add_argument("--label-names", action="store_true", help="write class names instead of ids")
    p.add_argument("--probs", action="store_true", help="add one probability column per class")
    p.add_argument("--batch-size", type=int, default=64, help="rows per forward batch, at most")
    p.add_argument("--max-tokens", type=int, default=-1,
                   help="padded tokens per forward batch, at most (-1: auto, 2048 on CPU and no cap on GPU; 0: no cap)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--text-column", help="text column of the input (default: the run's)")
    p.add_argument("--backend", default="torch", choices=["torch", "openvino", "onnx"],
                   help="openvino: the run's merged model converted in-process and scored on OpenVINO's CPU runtime "
                   "(pip install -e \".[openvino]\"); onnx: RUN is a folder from `loraclf export RUN --onnx DIR`, "
                   "run with onnxruntime")
    p.add_argument("--trust-pickle", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("plan", help="exact trainable counts, and the LoRA options that fit a budget")
    _add_common_config(p)
    p.add_argument("--model", help="Hub name or local folder (config only; no weights are read)")
    p.add_argument("--budget", type=int)
    p.add_argument("--num-labels", type=int, default=0, help="classes (default: the preset's, else 2)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all-ranks", action="store_true", help="list every standard rank that fits, not only the largest")
    p.add_argument("--sweep", type=int, default=0, metavar="N",
                   help="train the N most promising plans briefly and rank them by successive halving (needs --data)")
    p.add_argument("--data", action="append", help="training data for --sweep (repeatable, as for train)")
    p.add_argument("--sweep-rows", type=int, default=1000, help="training rows in the first round (doubled each round)")
    p.add_argument("--sweep-val-rows", type=int, default=500, help="held-out rows every candidate is scored on")
    p.add_argument("--out", help="sweep folder (default ./sweep): a run per candidate, sweep.json, best-config.json")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--trust-pickle", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("presets", help="list the built-in presets")
    p.set_defaults(func=cmd_presets)
    report_cli.add_commands(sub)
    from . import bench, export, serve
    export.add_commands(sub)
    serve.add_commands(sub)
    bench.add_command(sub)
    return ap


def main(argv=None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings
    warnings.filterwarnings("ignore", category=FutureWarning)  # library deprecation notices are not for users
    args = parser().parse_args(argv)
    try:
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


if __name__ == "__main__":
    sys.exit(main())
