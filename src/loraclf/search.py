"""`loraclf plan --sweep N`: which way of spending the budget works best on *your* data.

The planner (budget.plan) lists every head strategy x targets x layers at the largest rank that fits.
The sweep trains the N most promising of them on a short schedule and ranks them by successive halving:
every candidate trains on `rows` examples and is scored on one fixed held-out set; the better half goes
on to the next round with twice the examples, until one is left. Why not Optuna: the space is a short
discrete list whose members are already ranked by the planner, and halving spends a predictable compute
budget (about N x rows x log2 N examples) with no extra dependency and the same result on every rerun.

Each candidate's run is an ordinary run directory (OUT/round-K/NAME), so any of them can be inspected
with `loraclf report`. OUT/sweep.json holds every score; OUT/best-config.json is ready for
`loraclf train --config OUT/best-config.json`.
"""
from __future__ import annotations

import copy
import csv
import io
import math
from pathlib import Path

from . import budget as budget_mod
from . import data as data_mod
from . import pipeline, rundir
from .config import SECTIONS, Config
from .errors import UserError


def candidates(cfg: Config, label_names: list[str], n: int) -> list[tuple[str, Config]]:
    """The n most promising plans: the largest rank per (head, targets, layers), most adapter
    parameters first (the budget study's lesson: spend on adapters, not on the head)."""
    rows = [r for r in budget_mod.plan(cfg, label_names, cfg.budget.max_trainable) if r["largest"]]
    out = []
    for row in rows[:n]:
        c = copy.deepcopy(cfg)
        c.model.head, c.adapter.r = row["head"], row["r"]
        c.adapter.target_modules, c.adapter.layers = row["targets"].split(","), row["layer_list"]
        c.adapter.alpha = 2.0 * row["r"] if cfg.adapter.method != "rslora" else cfg.adapter.alpha
        name = f"{row['head']}-{row['targets'].replace(',', '+')}-layers{row['layers']}-r{row['r']}"
        out.append((name, c))
    return out


def _csv(examples, label_names: list[str], index, delimiter: str = "|") -> str:
    """label,text rows; a multi-label row's label set joined by `delimiter`, as data.load reads it back."""
    from . import multilabel
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["label", "text"])
    w.writerows((multilabel.label_set(y, label_names, True, delimiter) if isinstance(y, list) else label_names[y],
                 examples.texts[i]) for i, y in ((i, examples.labels[i]) for i in index))
    return buf.getvalue()


def sweep(cfg: Config, sources: list[str], n: int, rows: int, out: Path, val_rows: int = 500,
          overwrite: bool = False, trust_pickle: bool = False, log=print) -> dict:
    if n < 2:
        raise UserError(f"--sweep {n}: a sweep needs at least 2 candidates", "use --sweep 4 or more")
    pool, _ = pipeline.load_training_data(_no_val(cfg), sources, trust_pickle)
    label_names = pool.label_names
    if len(pool) < val_rows + rows:
        raise UserError(f"{len(pool)} labelled rows are too few for --sweep-rows {rows} plus {val_rows} held out",
                        "lower --sweep-rows, or give more training data")
    train_pool, held_out = data_mod.split(pool, val_rows, cfg.train.seed)
    cands = candidates(cfg, label_names, n)
    if len(cands) < 2:
        raise UserError(f"only {len(cands)} plan fits the budget of {cfg.budget.max_trainable:,}", "raise --budget, or train it directly")
    out = rundir.prepare(Path(out), resume=False, overwrite=overwrite)
    rundir.write_text(out / "held_out.csv", _csv(held_out, label_names, range(len(held_out)), cfg.data.label_delimiter))
    order = data_mod.random_batches(len(train_pool), 1, cfg.train.seed)  # a fixed shuffle; rounds take prefixes
    rounds, alive, k = [], cands, 0
    while True:
        n_rows = min(rows * 2 ** k, len(train_pool))
        train_file = out / f"round-{k}" / "train.csv"
        train_file.parent.mkdir(parents=True, exist_ok=True)
        rundir.write_text(train_file, _csv(train_pool, label_names, [b[0] for b in order[:n_rows]], cfg.data.label_delimiter))
        log(f"round {k}: {len(alive)} candidates x {n_rows} rows")
        scores = []
        for name, c in alive:
            c = _no_val(c)
            res = pipeline.train_run(c, [str(train_file)], out / f"round-{k}" / name, test_data=[str(out / "held_out.csv")],
                                 overwrite=overwrite, log=lambda *a, **kw: None)
            t = res["test"]
            scores.append({"name": name, "accuracy": t["accuracy"], "macro_f1": t["macro_f1"],
                           "trainable": res["budget"]["trainable"], "seconds": res["train"]["wall_seconds"]})
            log(f"  {name:<55} acc {100 * t['accuracy']:6.2f}  F1 {100 * t['macro_f1']:6.2f}  "
                f"{res['budget']['trainable']:>10,} trainable  {res['train']['wall_seconds']:6.1f} s")
        ranked = sorted(range(len(alive)), key=lambda i: (-scores[i]["accuracy"], -scores[i]["macro_f1"], scores[i]["trainable"]))
        rounds.append({"round": k, "rows": n_rows, "scores": [scores[i] for i in ranked]})
        alive = [alive[i] for i in ranked[:math.ceil(len(alive) / 2)]]
        k += 1
        if len(alive) == 1 or n_rows >= len(train_pool):
            break
    best_name, best = alive[0]
    best_cfg = {s: getattr(best, s).__dict__ for s in SECTIONS}
    best_cfg["data"] = best_cfg["data"] | {"val_size": cfg.data.val_size, "max_train_samples": cfg.data.max_train_samples}
    result = {"budget": cfg.budget.max_trainable, "held_out_rows": len(held_out), "rounds": rounds, "best": best_name,
              "method": "successive halving"}
    rundir.write_json(out / "best-config.json", best_cfg)
    rundir.write_json(out / "sweep.json", result)
    log(f"best: {best_name}; train it with: loraclf train --config {out / 'best-config.json'} --data ...")
    return result


def _no_val(cfg: Config) -> Config:
    c = copy.deepcopy(cfg)
    c.data.val_size, c.data.max_train_samples, c.train.patience, c.train.save_every = 0, 0, 0, 0
    c.train.epochs, c.train.eval_every = 1.0, 0  # the short schedule: one pass over the round's rows
    return c
