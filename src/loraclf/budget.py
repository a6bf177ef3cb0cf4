"""Exact trainable-parameter accounting before any weights load, and a planner for the budget.

`count_config` builds the model on the meta device (no memory, no weights) with the very peft config
training will use, so its count is the real one; training asserts it again after the real build.
`per_rank` gives the closed form (LoRA costs r * (in + out) per adapted linear layer), which the planner
uses to find the largest rank that fits.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field


from . import families
from .config import Config
from .errors import UserError
from . import model as model_mod


@dataclass
class Budget:
    trainable: int
    total: int
    groups: dict[str, int] = field(default_factory=dict)  # trainable count per group
    frozen_head_copy: int = 0   # peft keeps the original head beside the trained copy; counted in total

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def table(self) -> str:
        width = max([len(g) for g in self.groups] + [9])
        lines = [f"  {g:<{width}} {n:>12,}" for g, n in self.groups.items()]
        lines.append(f"  {'trainable':<{width}} {self.trainable:>12,}  of {self.total:,} ({self.percent:.3f}%)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"trainable": self.trainable, "total": self.total, "percent": round(self.percent, 4),
                "groups": dict(self.groups), "frozen_head_copy": self.frozen_head_copy}


def _group(name: str) -> str:
    parts = name.split(".")
    if ("modules_to_save" in parts or "pooler" in parts or "pre_classifier" in parts
            or any(h in parts[:3] for h in model_mod.HEAD_NAMES + ("head",))):
        return "head"
    for marker in ("lora_A", "lora_B", "lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B",
                   "vera_lambda_b", "vera_lambda_d", "ia3_l"):
        if marker in parts:
            return f"{marker.split('_')[0]}:{parts[parts.index(marker) - 1]}"
    return "other"


def count(model) -> Budget:
    """Count a built (or meta) model: trainable by group, total as peft reports it."""
    groups: dict[str, int] = {}
    trainable = total = frozen_copy = 0
    for name, p in model.named_parameters():
        n = p.numel()
        total += n
        if "original_module" in name.split("."):
            frozen_copy += n
        if p.requires_grad:
            trainable += n
            g = _group(name)
            groups[g] = groups.get(g, 0) + n
    order = sorted(groups, key=lambda g: (g in ("head", "other"), g))
    return Budget(trainable, total, {g: groups[g] for g in order}, frozen_copy)


def count_config(cfg: Config, label_names: list[str]) -> Budget:
    """The exact counts of `cfg`, from a meta-device build: no weights are read or allocated."""
    base = model_mod.load_base(cfg, label_names, meta=True)
    return count(model_mod.attach(cfg, base))


def per_rank(cfg: Config, label_names: list[str]) -> tuple[int, int]:
    """(fixed, per_rank): trainable = fixed + r * per_rank for rank-linear methods (LoRA, rsLoRA, DoRA)."""
    if cfg.adapter.method in ("vera", "ia3", "none") or cfg.adapter.rank_pattern:
        raise UserError(f"rank planning does not apply to adapter.method={cfg.adapter.method}"
                        + (" with a rank_pattern" if cfg.adapter.rank_pattern else ""), "set the rank by hand")
    one, two = copy.deepcopy(cfg), copy.deepcopy(cfg)
    one.adapter.r, two.adapter.r = 1, 2
    c1, c2 = count_config(one, label_names).trainable, count_config(two, label_names).trainable
    return c1 - (c2 - c1), c2 - c1


def max_rank(cfg: Config, label_names: list[str], budget: int) -> int:
    fixed, step = per_rank(cfg, label_names)
    return max(0, (budget - fixed) // step) if step else 0


def check(cfg: Config, label_names: list[str]) -> Budget:
    """Refuse a config over budget, with the breakdown and the largest rank that would fit."""
    b = count_config(cfg, label_names)
    if b.trainable > cfg.budget.max_trainable:
        hint = ""
        try:
            r = max_rank(cfg, label_names, cfg.budget.max_trainable)
            hint = (f"the largest rank that fits is r={r} (--set adapter.r={r})" if r >= 1 else
                    "even r=1 does not fit: adapt fewer modules or layers, or raise budget.max_trainable (--budget)")
        except UserError:
            hint = "adapt fewer modules or layers, or raise budget.max_trainable (--budget)"
        parts = ", ".join(f"{g} {n:,}" for g, n in b.groups.items())
        raise UserError(f"{b.trainable:,} trainable parameters exceed the budget of {cfg.budget.max_trainable:,} "
                        f"({parts}; `loraclf plan` shows the table)", hint)
    return b


HEADS = ("full", "linear", "lora")


def plan(cfg: Config, label_names: list[str], budget: int, target_sets=None, heads=HEADS, layer_sets=None,
         ranks=(1, 2, 4, 8, 16, 32, 64), all_ranks: bool = False) -> list[dict]:
    """Every (head strategy x targets x layers) with the largest rank that fits the budget, exact counts
    (all_ranks: also every standard rank that fits). Most adapter parameters first."""
    base = model_mod.load_base(cfg, label_names, meta=True)
    linears = model_mod.linear_names(base)
    family = families.family_of(base)
    target_sets = target_sets or (default_role_sets() if family and family.roles.get("attention")
                                  else default_target_sets(linears))
    n_layers = 0 if family and family.shared_layers else getattr(base.config, "num_hidden_layers", 0)
    layer_sets = layer_sets if layer_sets is not None else default_layer_sets(n_layers)
    has_dense = model_mod.lora_head_possible(base)
    rows = []
    for head in heads:
        if head == "lora" and (not has_dense or cfg.adapter.method not in model_mod.LORA_FAMILY):
            continue
        for layers in layer_sets:
            for targets in target_sets:
                c = copy.deepcopy(cfg)
                c.model.head, c.adapter.target_modules, c.adapter.layers = head, list(targets), list(layers)
                fixed, step = per_rank(c, label_names)
                r_max = (budget - fixed) // step if step else 0
                chosen = [r for r in ranks if r < r_max] if all_ranks else []
                for r in chosen + ([int(r_max)] if r_max >= 1 else []):
                    rows.append({"head": head, "targets": ",".join(targets), "layers": _layers_text(layers),
                                 "layer_list": list(layers), "r": int(r), "trainable": fixed + r * step,
                                 "adapter": r * step, "head_and_other": fixed, "largest": r == r_max})
    seen, unique = set(), []
    for row in rows:  # e.g. BERT: its head is one projection, so full and linear are the same plan
        key = (row["targets"], row["layers"], row["r"], row["trainable"], row["adapter"])
        if key not in seen:
            seen.add(key)
            unique.append(row)
    return sorted(unique, key=lambda row: (-row["largest"], -row["adapter"], row["head_and_other"]))


def _layers_text(layers) -> str:
    return "all" if not layers else f"{layers[0]}-{layers[-1]}" if list(layers) == list(range(layers[0], layers[-1] + 1)) else ",".join(map(str, layers))


def default_layer_sets(n_layers: int) -> list[list[int]]:
    """All layers, and the top half (cheaper: no backward below the lowest adapted layer)."""
    return [[], list(range(n_layers // 2, n_layers))] if n_layers >= 2 else [[]]


def default_role_sets() -> list[list[str]]:
    """For a model in the family table (or with an inferred row that found its attention): query and value, all of
    attention, every linear layer (as roles)."""
    return [["attention-qv"], ["attention"], ["all-linear"]]


def resolved_roles(cfg: Config, label_names: list[str], targets: list[str]) -> dict[str, tuple[str, ...]]:
    """What each role in `targets` resolves to on cfg's model (module paths inside a layer), for plan's output."""
    if not any(families.is_role(t) for t in targets):
        return {}
    return families.resolve(model_mod.load_base(cfg, label_names, meta=True), targets)


def default_target_sets(linears: list[str]) -> list[list[str]]:
    attn = [n for n in ("query", "key", "value", "q_lin", "k_lin", "v_lin", "q_proj", "k_proj", "v_proj") if n in linears]
    sets = []
    if len(attn) >= 2:
        sets += [[attn[0], attn[2]] if len(attn) >= 3 else attn[:2], attn[:3]]
    sets.append(list(linears))
    return [s for i, s in enumerate(sets) if s and s not in sets[:i]]
