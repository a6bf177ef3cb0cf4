"""The search space of `loraclf search`: what a trial may choose (defaults, or a TOML file), and a trial's config.

The budget is a hard constraint, never a penalty. Before the first trial, `plans` lists every head strategy x
targets x layers that fits the budget at the smallest rank allowed, with the largest rank that fits it (from
budget.per_rank's exact counts); a trial picks one plan, then a rank among those that fit that plan. Every
other choice (alpha, dropout, learning rate, epochs, warmup) leaves the trainable count alone.

The TOML file has two optional tables; every key is optional, and a range [x, x] fixes a value:

    [space]
    heads = ["full", "linear", "lora"]        # head strategies (budget.HEADS)
    targets = ["attention-qv", "attention", "all-linear"]   # roles or module names; "query,value" = one choice
    layers = ["all"]                           # "all" | "top-half"
    r = [1, 64]                                # rank range (log scale), cut to what fits each plan
    alpha_ratio = [0.5, 4.0]                   # adapter.alpha = alpha_ratio * r (log scale)
    dropout = [0.0, 0.2]
    lr = [1e-4, 3e-3]                          # log scale
    epochs = [1, 3]
    warmup_ratio = [0.0, 0.1]

    [study]
    sampler = "tpe"                            # "tpe" | "random"
    pruner = "median"                          # "median" | "hyperband" | "none"
    startup_trials = 4                         # trials before the pruner (and TPE) act
    warmup_evals = 1                           # evaluations of a trial before it can be pruned
    evals_per_epoch = 2                        # validation evaluations per epoch: the curve the pruner reads
    heartbeat_s = 60                           # a trial silent for 2x this long (its worker died) is retried
    enqueue_base = true                        # trial 0 is the base config (the preset), where the space holds it
"""
from __future__ import annotations

import copy
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from . import budget as budget_mod
from . import model as model_mod
from .config import Config
from .errors import UserError

# name: (default, low bound, high bound, integer, log scale)
RANGES = {
    "r": ([1, 64], 1, 4096, True, True),
    "alpha_ratio": ([0.5, 4.0], 0.01, 64.0, False, True),
    "dropout": ([0.0, 0.2], 0.0, 0.9, False, False),
    "lr": ([1e-4, 3e-3], 1e-7, 1.0, False, True),
    "epochs": ([1, 3], 1, 100, True, False),
    "warmup_ratio": ([0.0, 0.1], 0.0, 0.5, False, False),
}
CHOICES = {
    "heads": (["full", "linear", "lora"], budget_mod.HEADS),
    "targets": (["attention-qv", "attention", "all-linear"], None),
    "layers": (["all"], ("all", "top-half")),
}
# name: (default, allowed values or (low, high) for integers)
STUDY = {
    "sampler": ("tpe", ("tpe", "random")),
    "pruner": ("median", ("median", "hyperband", "none")),
    "startup_trials": (4, (0, 10_000)),
    "warmup_evals": (1, (0, 10_000)),
    "evals_per_epoch": (2, (1, 1000)),
    "heartbeat_s": (60, (1, 86_400)),
    "enqueue_base": (True, (False, True)),
}


@dataclass
class Space:
    ranges: dict = field(default_factory=lambda: {k: v[0] for k, v in RANGES.items()})
    choices: dict = field(default_factory=lambda: {k: v[0] for k, v in CHOICES.items()})
    study: dict = field(default_factory=lambda: {k: v[0] for k, v in STUDY.items()})

    def to_dict(self) -> dict:
        return {"space": self.ranges | self.choices, "study": self.study}


def load(path: str | None) -> Space:
    sp = Space()
    if not path:
        return sp
    p = Path(path)
    if not p.is_file():  # a FIFO or a device would be read forever
        raise UserError(f"the search space {path} is not a file", "give a TOML file with [space] and [study] tables")
    if p.stat().st_size > 1_000_000:
        raise UserError(f"the search space {path} is larger than 1 MB", "give the TOML file of a search space")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UserError(f"cannot read the search space {path} ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                        "give a TOML file with [space] and [study] tables (docs/search.md)") from None
    for table in data:
        if table not in ("space", "study") or not isinstance(data[table], dict):
            raise UserError(f"search space {path}: unknown table {table!r}", "use [space] and [study]")
    try:
        for key, value in data.get("space", {}).items():
            if key in RANGES:
                sp.ranges[key] = _range(key, value)
            elif key in CHOICES:
                sp.choices[key] = _choices(key, value)
            else:
                raise UserError(f"search space {path}: unknown key space.{key}",
                                f"use one of: {', '.join(list(RANGES) + list(CHOICES))}")
        for key, value in data.get("study", {}).items():
            if key not in STUDY:
                raise UserError(f"search space {path}: unknown key study.{key}", f"use one of: {', '.join(STUDY)}")
            sp.study[key] = _study_value(key, value)
    except (OverflowError, ValueError) as e:  # a 400-digit number where a float goes
        raise UserError(f"search space {path}: a number out of range ({type(e).__name__})",
                        "give ranges of ordinary numbers (docs/search.md)") from None
    return sp


def _range(key: str, value) -> list:
    _, low, high, integer, _ = RANGES[key]
    kind = int if integer else (int, float)
    if (not isinstance(value, list) or len(value) != 2 or any(isinstance(v, bool) or not isinstance(v, kind) for v in value)
            or any(not math.isfinite(v) for v in value) or not low <= value[0] <= value[1] <= high):
        what = "whole numbers" if integer else "numbers"
        raise UserError(f"space.{key} = {str(value)[:60]} is not a range [low, high] of {what} within [{low}, {high}]",
                        f"e.g. space.{key} = {RANGES[key][0]}")
    return list(value)


def _choices(key: str, value) -> list[str]:
    allowed = CHOICES[key][1]
    if (not isinstance(value, list) or not value or len(value) > 100
            or any(not isinstance(v, str) or not v.strip() or len(v) > 500 for v in value)
            or (allowed and any(v not in allowed for v in value))):
        hint = f"choose from {', '.join(allowed)}" if allowed else "give role or module names, e.g. [\"attention-qv\", \"all-linear\"]"
        raise UserError(f"space.{key} = {str(value)[:60]} is not a non-empty list of choices", hint)
    return list(dict.fromkeys(value))


def _study_value(key: str, value):
    default, allowed = STUDY[key]
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"study.{key} = {str(value)[:40]} is not true or false", f"e.g. study.{key} = true")
        return value
    if isinstance(default, str):
        if value not in allowed:
            raise UserError(f"study.{key} = {str(value)[:40]!r} is not one of {', '.join(allowed)}", f"e.g. study.{key} = {default!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not allowed[0] <= value <= allowed[1]:
        raise UserError(f"study.{key} = {str(value)[:40]} is not a whole number from {allowed[0]} to {allowed[1]:,}",
                        f"e.g. study.{key} = {default}")
    return value


def plans(sp: Space, cfg: Config, label_names: list[str]) -> dict[str, dict]:
    """Every (head, targets, layers) that fits the budget at the smallest rank of the space, by name, each with
    the largest rank that fits it (capped by the space's highest). Exact: budget.per_rank counts meta models."""
    base = model_mod.load_base(cfg, label_names, meta=True)
    lora_head = model_mod.lora_head_possible(base) and cfg.adapter.method in model_mod.LORA_FAMILY
    n_layers = getattr(base.config, "num_hidden_layers", 0)
    layer_sets = {"all": [], "top-half": list(range(n_layers // 2, n_layers)) if n_layers >= 2 else []}
    r_low, r_high = sp.ranges["r"]
    limit = cfg.budget.max_trainable
    out, seen = {}, set()
    for head in sp.choices["heads"]:
        if head == "lora" and not lora_head:
            continue
        for layers in sp.choices["layers"]:
            for targets in sp.choices["targets"]:
                c = apply_plan(cfg, head, targets, layer_sets[layers])
                fixed, step = budget_mod.per_rank(c, label_names)
                r_max = min(r_high, (limit - fixed) // step) if step else 0
                key = (targets, layers, fixed, step)  # e.g. BERT: full and linear heads are the same plan
                if r_max >= r_low and key not in seen:
                    seen.add(key)
                    out[f"{head}/{targets}/{layers}"] = {"head": head, "targets": targets, "layers": layer_sets[layers],
                                                         "r_max": int(r_max), "fixed": int(fixed), "per_rank": int(step)}
    return out


def apply_plan(cfg: Config, head: str, targets: str, layers: list[int]) -> Config:
    c = copy.deepcopy(cfg)
    c.model.head = head
    c.adapter.target_modules = [t.strip() for t in targets.split(",") if t.strip()]
    c.adapter.layers = list(layers)
    return c


def sample(trial, sp: Space, plan_table: dict[str, dict], cfg: Config) -> Config:
    """The trial's config: a plan, a rank that fits it, and the other hyperparameters."""
    name = trial.suggest_categorical("plan", list(plan_table))
    p = plan_table[name]
    c = apply_plan(cfg, p["head"], p["targets"], p["layers"])
    r_low = sp.ranges["r"][0]
    c.adapter.r = r_low if p["r_max"] == r_low else trial.suggest_int("r", r_low, p["r_max"], log=True)
    c.adapter.alpha = float(_suggest(trial, sp, "alpha_ratio")) * c.adapter.r
    c.adapter.dropout = float(_suggest(trial, sp, "dropout"))
    c.train.lr = float(_suggest(trial, sp, "lr"))
    c.train.epochs = float(_suggest(trial, sp, "epochs"))
    c.train.warmup_ratio, c.train.warmup_steps = float(_suggest(trial, sp, "warmup_ratio")), 0
    return c


def _suggest(trial, sp: Space, key: str):
    low, high = sp.ranges[key]
    if low == high:
        return low
    integer, log = RANGES[key][3], RANGES[key][4] and low > 0
    return trial.suggest_int(key, low, high, log=log) if integer else trial.suggest_float(key, low, high, log=log)


def params_of(cfg: Config, sp: Space, plan_table: dict[str, dict], label_names: list[str]) -> dict | None:
    """The base config as a trial's parameters, or None where the space does not hold it (another plan, a rank
    that does not fit, a value out of range)."""
    layers = "all" if not cfg.adapter.layers else next(
        (k for k, p in plan_table.items() if p["layers"] == list(cfg.adapter.layers)), "").split("/")[-1]
    head = cfg.model.head
    if head == "auto":  # the strategy a run of this config would train with
        head = model_mod.resolve_head(copy.deepcopy(cfg), model_mod.load_base(cfg, label_names, meta=True))
    name = f"{head}/{','.join(cfg.adapter.target_modules)}/{layers}"
    if name not in plan_table or not cfg.adapter.r or not sp.ranges["r"][0] <= cfg.adapter.r <= plan_table[name]["r_max"]:
        return None
    params = {"plan": name}
    if plan_table[name]["r_max"] != sp.ranges["r"][0]:
        params["r"] = cfg.adapter.r
    values = {"alpha_ratio": cfg.adapter.alpha / cfg.adapter.r, "dropout": cfg.adapter.dropout, "lr": cfg.train.lr,
              "epochs": cfg.train.epochs, "warmup_ratio": cfg.train.warmup_ratio}
    for key, value in values.items():
        low, high = sp.ranges[key]
        if not low <= value <= high or (RANGES[key][3] and value != int(value)):
            return None
        if low != high:
            params[key] = int(value) if RANGES[key][3] else value
    return params
