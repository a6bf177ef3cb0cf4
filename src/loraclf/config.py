"""Every setting of a run, as dataclasses. Presets are TOML files; `--set section.key=value` overrides.

Unknown keys and wrongly typed values are refused with the list of valid keys, so a typo can never be
silently ignored. The resolved config is saved in each run directory and is enough to reproduce it.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import UserError


@dataclass
class ModelConfig:
    name: str = "roberta-base"          # Hub name or local directory
    init: str = "pretrained"            # "pretrained" | "random" (config only: counts and speed)
    # "auto" (lora where it applies, else full: the budget study's winner) | "full" | "linear" (only the final
    # projection) | "lora" (LoRA on the head's dense layer + trained projection)
    head: str = "auto"
    encoder_dropout: float = -1.0       # dropout inside the encoder; -1 keeps the pretrained config's value
    # "auto" (sdpa; on CPU the training forwards run fastpath.TRAIN_ATTENTION, eager attention in the
    # autocast dtype, which measured faster there: bench/NOTES.md) | "sdpa" | "eager"
    attn_implementation: str = "auto"


@dataclass
class AdapterConfig:
    method: str = "lora"                # "lora" | "rslora" | "dora" | "vera" | "ia3" | "none" (full fine-tuning)
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.1
    bias: str = "none"                  # "none" | "all" | "lora_only"
    # module names, or roles resolved per family (loraclf.families.ROLES: attention-qv, attention,
    # attention-output, ffn, all-linear); docs/families.md has the table
    target_modules: list[str] = field(default_factory=lambda: ["attention-qv"])
    layers: list[int] = field(default_factory=list)  # empty: every layer
    rank_pattern: dict[str, int] = field(default_factory=dict)
    lr_ratio_b: float = 1.0             # LoRA+: lr of lora_B = lr * lr_ratio_b
    init: str = "default"               # "default" (B = 0) | "pissa" (A, B from the weights' top singular vectors)


@dataclass
class DataConfig:
    text_column: str = "text"
    label_column: str = "label"
    label_names: list[str] = field(default_factory=list)  # empty: from the data (classes.txt, names)
    val_size: float = 0.1               # < 1: fraction; >= 1: number of rows; 0: no validation
    max_length: int = 256               # training
    max_length_infer: int = 0           # 0: same as max_length
    encoding: str = "utf-8"
    max_train_samples: int = 0          # 0: all


@dataclass
class TrainConfig:
    epochs: float = 3.0
    batch_size: int = 16
    eval_batch_size: int = 64
    eval_max_tokens: int = -1           # padded tokens per scoring batch; -1: auto (2048 on CPU, no cap on GPU); 0: no cap
    bf16_full_eval: bool = True         # bf16 scoring casts the whole model (residual stream, LayerNorms); false: autocast's
    cls_only_last_layer: bool = True    # the last layer computes only the first token's row, the one the head reads (exact)
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.01
    eps: float = 1e-8
    scheduler: str = "linear"           # "linear" | "cosine" | "constant"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    label_smoothing: float = 0.0
    class_weight: str = "none"          # "none" | "balanced": loss weights n / (K * n_k), for imbalanced training data
    eval_every: int = 0                 # optimizer steps; 0: once per epoch
    save_every: int = 0                 # optimizer steps; 0: no intermediate checkpoints
    patience: int = 0                   # evaluations without improvement before stopping; 0: never
    monitor: str = "val_loss"           # "val_loss" | "val_accuracy" | "val_macro_f1"
    precision: str = "auto"             # "auto" | "fp32" | "bf16" | "fp16"
    gradient_checkpointing: bool = False
    fast_dropout: bool = True           # CPU: dropout masks from 16-bit random thresholds (fastpath.py); false: torch's
    share_dropout_masks: bool = False   # with fast_dropout: LoRA modules reading the same input (q, k, v) share one mask
    # "auto": with adapters on upper layers only, compute the frozen lower layers' outputs once, not every epoch,
    # where that changes nothing but rounding (no dropout there; layercache.py) | "on": also without their dropout | "off"
    cache_frozen_layers: str = "auto"
    tune_malloc: bool = True            # CPU training and scoring on glibc: fixed malloc thresholds, process-wide (fastpath.tune_malloc)
    group_by_length: bool = True
    seed: int = 42
    budget: int = 1_000_000
    threads: int = 0                    # 0: torch's default


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


SECTIONS = ("model", "adapter", "data", "train")


def valid_keys() -> list[str]:
    cfg = Config()
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(cfg, s))]


def _coerce(value, hint, key: str):
    """Check and convert one value to the field's declared type; strings from --set are parsed."""
    origin = typing.get_origin(hint)
    if isinstance(value, str) and hint is not str:
        text = value.strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            if origin is list:  # --set adapter.target_modules=query,value
                value = [v.strip() for v in text.split(",") if v.strip()]
            elif hint is bool and text.lower() in ("true", "false", "yes", "no", "on", "off"):
                value = text.lower() in ("true", "yes", "on")
            else:
                value = text
    bad = UserError(f"config key {key}: {value!r} is not a valid {getattr(hint, '__name__', hint)}",
                    f"give a value of that type, e.g. --set {key}=...")
    if hint is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise bad
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, item, key) for v in value]
    if origin is dict:
        _, vt = typing.get_args(hint)
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(v, vt, key) for k, v in value.items()}
    raise bad


def _set(cfg: Config, key: str, value) -> None:
    section, _, name = key.partition(".")
    if not name:  # a bare key is accepted when exactly one section has it
        owners = [s for s in SECTIONS if name_in(getattr(cfg, s), section)]
        if len(owners) != 1:
            raise UserError(f"unknown config key {key!r}", "valid keys: " + ", ".join(valid_keys()))
        section, name = owners[0], section
    if section not in SECTIONS or not name_in(getattr(cfg, section), name):
        raise UserError(f"unknown config key {key!r}", "valid keys: " + ", ".join(valid_keys()))
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    setattr(obj, name, _coerce(value, hints[name], f"{section}.{name}"))


def name_in(obj, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(obj)}


def apply(cfg: Config, data: dict, where: str = "") -> Config:
    """Apply a nested mapping ({section: {key: value}}) onto cfg, refusing anything unknown."""
    for section, values in data.items():
        if section == "preset":
            cfg.preset = str(values)
            continue
        if section not in SECTIONS or not isinstance(values, dict):
            raise UserError(f"unknown config section {section!r}{where}",
                            f"sections are {', '.join(SECTIONS)}; valid keys: {', '.join(valid_keys())}")
        for key, value in values.items():
            _set(cfg, f"{section}.{key}", value)
    validate(cfg)
    return cfg


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("loraclf.presets").iterdir() if p.name.endswith(".toml"))


def load(preset: str | None = None, config_file: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- preset <- config file <- --set overrides, validated at each step."""
    cfg = Config()
    if preset:
        if preset not in preset_names():
            raise UserError(f"unknown preset {preset!r}", f"choose one of: {', '.join(preset_names())}")
        text = resources.files("loraclf.presets").joinpath(f"{preset}.toml").read_text()
        apply(cfg, tomllib.loads(text), f" in preset {preset}")
        cfg.preset = preset
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist", "check the path given to --config")
        try:
            data = json.loads(path.read_text()) if path.suffix == ".json" else tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise UserError(f"config file {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {e}",
                            "fix the syntax") from None
        apply(cfg, data, f" in {path}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r} is not key=value", "write it as --set section.key=value")
        _set(cfg, key.strip(), value)
    validate(cfg)
    return cfg


def from_dict(data: dict) -> Config:
    """A saved config.json back to a Config (its format_version checked)."""
    from .rundir import FORMAT_VERSION
    data = dict(data)
    version = data.pop("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise UserError(f"this run was written by a newer loraclf (format {version}, this one reads {FORMAT_VERSION})",
                        "upgrade loraclf")
    return apply(Config(), data)


CHOICES = {
    "model.init": ("pretrained", "random"),
    "model.head": ("auto", "full", "linear", "lora"),
    "model.attn_implementation": ("auto", "sdpa", "eager"),
    "adapter.method": ("lora", "rslora", "dora", "vera", "ia3", "none"),
    "adapter.bias": ("none", "all", "lora_only"),
    "adapter.init": ("default", "pissa"),
    "train.scheduler": ("linear", "cosine", "constant"),
    "train.monitor": ("val_loss", "val_accuracy", "val_macro_f1"),
    "train.class_weight": ("none", "balanced"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.cache_frozen_layers": ("auto", "on", "off"),
}


def validate(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise UserError(f"config key {key} = {value!r} is not allowed", f"choose one of: {', '.join(allowed)}")
    positive = {"adapter.r": cfg.adapter.r, "train.batch_size": cfg.train.batch_size,
                "train.grad_accum": cfg.train.grad_accum, "data.max_length": cfg.data.max_length,
                "train.eval_batch_size": cfg.train.eval_batch_size}
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"config key {key} = {value} must be at least 1", f"--set {key}=<positive integer>")
    if cfg.train.eval_max_tokens < -1:
        raise UserError(f"train.eval_max_tokens = {cfg.train.eval_max_tokens} is not allowed",
                        "use a token count, 0 for no cap, or -1 for auto")
    if cfg.train.epochs <= 0 or cfg.train.lr <= 0:
        raise UserError("train.epochs and train.lr must be positive", "check --epochs / --set train.lr=...")
    if not -1 <= cfg.model.encoder_dropout < 1 or (-1 < cfg.model.encoder_dropout < 0):
        raise UserError("model.encoder_dropout must be in [0, 1), or -1 to keep the model's own", "fix the value")
    if not 0 <= cfg.adapter.dropout < 1 or not 0 <= cfg.train.label_smoothing < 1:
        raise UserError("adapter.dropout and train.label_smoothing must be in [0, 1)", "fix the value")
    if cfg.data.val_size < 0:
        raise UserError("data.val_size must be >= 0", "use a fraction (0.1) or a row count (640)")
