"""Every setting of a run, as dataclasses. Presets are TOML files; `--set section.key=value` overrides.

Unknown keys and wrongly typed values are refused with the list of valid keys, so a typo can never be
silently ignored. The resolved config is saved in each run directory and is enough to reproduce it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from . import precision
from . import untrusted
from .errors import UserError


@dataclass
class ModelConfig:
    name: str = "roberta-base"          # Hub name or local directory
    init: str = "pretrained"            # "pretrained" | "random" (config only: counts and speed)
    # "auto" (model.resolve_head: what the budget studies found) | "full" | "linear" (only the final projection)
    # | "lora" (LoRA on the head's dense layer + trained projection)
    head: str = "auto"
    encoder_dropout: float = -1.0       # dropout inside the encoder; -1 keeps the pretrained config's value
    # "auto" (sdpa; on CPU the training forwards run fastpath.TRAIN_ATTENTION, eager attention in the
    # autocast dtype, which measured faster there: docs/performance.md) | "sdpa" | "eager"
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
    val_size: float = 0.1               # in (0, 1): fraction; a whole number >= 2: rows; 0: no validation
    max_length: int = 256               # training
    max_length_infer: int = 0           # 0: same as max_length
    encoding: str = "utf-8"
    max_train_samples: int = 0          # 0: all
    text_columns: list[str] = field(default_factory=list)  # two names: sentence pairs (longtext.py); empty: text_column
    long_text: str = "truncate"         # rows past max_length: "truncate" | "head+tail" | "chunks" (longtext.py)
    head_tokens: int = 0                # head+tail: tokens kept from the start; 0: a quarter of the window
    chunk_stride: int = -1              # chunks: tokens a window shares with the previous one; -1: a quarter of the window
    chunk_pool: str = "mean"            # chunks: a document's logits from its windows': "mean" | "max"
    task: str = "single_label"          # "single_label" | "multi_label": each row a set of labels (multilabel.py)
    label_delimiter: str = "|"          # multi_label: what joins a row's labels in a CSV/TSV cell and in predictions


@dataclass
class TrainConfig:
    epochs: float = 3.0
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.01
    eps: float = 1e-8
    scheduler: str = "linear"           # "linear" | "cosine" | "constant"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0          # 0: no clipping
    label_smoothing: float = 0.0
    class_weight: str = "none"          # "none" | "balanced": loss weights n / (K * n_k), for imbalanced training data
    # data.task = multi_label: each label's positive weight in the BCE loss, in label order; empty: none, or with
    # class_weight = "balanced" each label's negatives / positives
    pos_weight: list[float] = field(default_factory=list)
    eval_every: int = 0                 # optimizer steps; 0: once per epoch
    save_every: int = 0                 # optimizer steps; 0: no intermediate checkpoints
    patience: int = 0                   # evaluations without improvement before stopping; 0: never
    monitor: str = "val_loss"           # "val_loss" | "val_accuracy" | "val_macro_f1"
    precision: str = "auto"             # precision.PRECISION_CHOICES: "auto" | "fp32" | "bf16" | "fp16"
    gradient_checkpointing: bool = False
    # "auto": with adapters on upper layers only, compute the frozen lower layers' outputs once, not every epoch,
    # where that changes nothing but rounding (no dropout there; layercache.py) | "on": also without their dropout | "off"
    cache_frozen_layers: str = "auto"
    group_by_length: bool = True
    seed: int = 42


@dataclass
class ScoringConfig:
    """How a model scores texts: validation inside training, evaluate, predict and serve alike."""
    precision: str = "auto"             # precision.PRECISION_CHOICES, resolved as train.precision is (precision.resolve)
    batch_size: int = 64                # rows per scoring batch, at most
    max_tokens: int = -1                # padded tokens per scoring batch; -1: auto (per CPU kind, scoring.CPU_SCORING_TOKENS; no cap on GPU); 0: no cap
    bf16_full_cast: bool = True         # bf16 scoring casts the whole model (residual stream, LayerNorms); false: autocast's
    # the last layer computes only the first token's row, the one the head reads (exact; fit's forwards use it too)
    cls_only_last_layer: bool = True


@dataclass
class CpuConfig:
    """Knobs that only act on CPU: they change speed, not results beyond rounding."""
    threads: int = 0                    # torch threads; 0: torch's default
    tune_malloc: bool = True            # training and scoring on glibc: fixed malloc thresholds, process-wide (fastpath.tune_malloc)
    fast_dropout: bool = True           # training: dropout masks from 16-bit random thresholds (fastpath.py); false: torch's
    share_dropout_masks: bool = False   # with fast_dropout: LoRA modules reading the same input (q, k, v) share one mask


@dataclass
class BudgetConfig:
    """The trainable-parameter budget a run must fit: training refuses a config over it, `plan` fits ranks to it."""
    max_trainable: int = 1_000_000


@dataclass
class Config:
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    cpu: CpuConfig = field(default_factory=CpuConfig)
    preset: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


SECTIONS = ("budget", "model", "adapter", "data", "train", "scoring", "cpu")

# Keys that moved to the section that governs them. Saved run configs and user files with the old names
# still load, with one note on stderr naming the new ones.
RENAMED = {
    "train.budget": "budget.max_trainable",
    "train.eval_batch_size": "scoring.batch_size",
    "train.eval_max_tokens": "scoring.max_tokens",
    "train.bf16_full_eval": "scoring.bf16_full_cast",
    "train.cls_only_last_layer": "scoring.cls_only_last_layer",
    "train.threads": "cpu.threads",
    "train.tune_malloc": "cpu.tune_malloc",
    "train.fast_dropout": "cpu.fast_dropout",
    "train.share_dropout_masks": "cpu.share_dropout_masks",
}


def valid_keys() -> list[str]:
    cfg = Config()
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(cfg, s))]


def _show(value) -> str:
    """A value for an error message, cut short: a 5,000-digit number must not become a 5,000-character line."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints beyond the digit limit, lists nested too deep
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= 40 else text[:30] + f"... ({len(text):,} characters)"


def _parse(text: str, key: str):
    """A value given as text (--set) as JSON where it is JSON; UserError for nesting or digits Python refuses to read."""
    try:
        return json.loads(text)
    except RecursionError:
        raise UserError(f"config key {key}: the value is nested too deeply", "give a flat value or a short list") from None
    except ValueError as e:  # JSONDecodeError, and integers past the interpreter's digit limit
        if not isinstance(e, json.JSONDecodeError):
            raise UserError(f"config key {key}: the value has too many digits ({len(text):,} characters)",
                            f"give a number in range for {key}") from None
        raise


def _coerce(value, hint, key: str, text: bool = False):
    """Check and convert one value to the field's declared type. `text`: the value was typed as text (--set,
    or an item of a comma-separated list there) and is parsed; in a TOML or JSON file a number must be a number."""
    origin = typing.get_origin(hint)
    if text and isinstance(value, str) and hint is not str:
        text = value.strip()
        try:
            value = _parse(text, key)
        except json.JSONDecodeError:
            if origin is list:  # --set adapter.target_modules=query,value
                value = [v.strip() for v in text.split(",") if v.strip()]
            elif hint is bool and text.lower() in ("true", "false", "yes", "no", "on", "off"):
                value = text.lower() in ("true", "yes", "on")
            elif text.lower().lstrip("+-") in ("nan", "inf", "infinity"):
                value = float(text)
            else:
                value = text
    bad = UserError(f"config key {key}: {_show(value)} is not a valid {getattr(hint, '__name__', hint)}",
                    f"give a value of that type, e.g. --set {key}=...")
    if hint in (int, float) and isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key {key}: {value} is not a finite number", f"give a finite number, e.g. --set {key}=...")
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
        try:
            return float(value)
        except OverflowError:  # an integer too large for a float
            raise UserError(f"config key {key}: {_show(value)} is out of range", f"give a sensible number for {key}") from None
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
        return [_coerce(v, item, key, text) for v in value]
    if origin is dict:
        _, vt = typing.get_args(hint)
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(v, vt, key, text) for k, v in value.items()}
    raise bad


def _unknown(key: str) -> UserError:
    return UserError(f"unknown config key {_show(key)}", "valid keys: " + ", ".join(valid_keys()))


def _resolve(cfg: Config, key: str, renamed: list[str]) -> tuple[str, str]:
    """(section, name) of a key; a bare name is accepted when exactly one section has it; old names are
    mapped to their new place and recorded in `renamed`."""
    section, _, name = key.partition(".")
    if not name:
        owners = [s for s in SECTIONS if name_in(getattr(cfg, s), section)]
        if len(owners) > 1:
            raise UserError(f"config key {_show(key)} is in several sections",
                            "name the section: " + " or ".join(f"{s}.{section}" for s in owners))
        if not owners:
            old = [k for k in RENAMED if k.partition(".")[2] == section]
            if len(old) != 1:
                raise _unknown(key)
            key = old[0]
        else:
            key = f"{owners[0]}.{section}"
        section, _, name = key.partition(".")
    if key in RENAMED:
        renamed.append(key)
        section, _, name = RENAMED[key].partition(".")
    if section not in SECTIONS or not name_in(getattr(cfg, section), name):
        raise _unknown(key)
    return section, name


def _set(cfg: Config, key: str, value, renamed: list[str] | None = None, text: bool = False) -> None:
    section, name = _resolve(cfg, key, renamed if renamed is not None else [])
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    setattr(obj, name, _coerce(value, hints[name], f"{section}.{name}", text))


def name_in(obj, name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(obj)}


_noted: set[str] = set()  # old names already noted in this process (a command may read a run's config twice)


def note_renamed(renamed: list[str]) -> None:
    """One line on stderr for the old key names of one load, each noted once per process."""
    fresh = [k for k in dict.fromkeys(renamed) if k not in _noted]
    _noted.update(fresh)
    if fresh:
        moved = ", ".join(f"{k} -> {RENAMED[k]}" for k in fresh)
        print(f"loraclf: note: config keys moved ({moved}); the old names still load", file=sys.stderr)


def apply(cfg: Config, data, where: str = "", renamed: list[str] | None = None) -> Config:
    """Apply a nested mapping ({section: {key: value}}) onto cfg, refusing anything unknown."""
    if not isinstance(data, dict):
        raise UserError(f"the config{where} is a {type(data).__name__}, not a table of sections",
                        "write it as {\"section\": {\"key\": value}} (JSON) or [section] key = value (TOML)")
    notes = [] if renamed is None else renamed
    for section, values in data.items():
        if section == "preset":
            if not isinstance(values, str):
                raise UserError(f"config key preset{where} is a {type(values).__name__}, not a name", "give a preset name")
            if values and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", values):  # it names the default run folder
                raise UserError(f"config key preset{where} = {_show(values)} is not a preset name",
                                f"give one of: {', '.join(preset_names())}, or leave it out")
            cfg.preset = values
            continue
        if section in SECTIONS and not isinstance(values, dict):
            raise UserError(f"config section {section!r}{where} is a {type(values).__name__}, not a table of keys",
                            f"write it as [{section}] with key = value lines (TOML) or \"{section}\": {{...}} (JSON)")
        if section not in SECTIONS:
            raise UserError(f"unknown config section {_show(section)}{where}",
                            f"sections are {', '.join(SECTIONS)}; valid keys: {', '.join(valid_keys())}")
        for key, value in values.items():
            _set(cfg, f"{section}.{key}", value, notes)
    _refuse_both_names(data, where)
    validate(cfg)
    if renamed is None:
        note_renamed(notes)
    return cfg


def _refuse_both_names(data: dict, where: str) -> None:
    """One mapping that sets a key under its old and its new name is ambiguous (which value wins would depend on
    the order of the sections), so it is refused rather than one value silently dropped."""
    for old, new in RENAMED.items():
        (old_s, _, old_k), (new_s, _, new_k) = old.partition("."), new.partition(".")
        if old_k in (data.get(old_s) or {}) and new_k in (data.get(new_s) or {}):
            raise UserError(f"the config{where} sets both {old} (its old name) and {new}",
                            f"keep only {new}")


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("loraclf.presets").iterdir() if p.name.endswith(".toml"))


def _read_file(path: Path):
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        text = path.read_text()
        return json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid {kind}: {str(e).splitlines()[0][:200]}", "fix the syntax") from None
    except RecursionError:
        raise UserError(f"config file {path} is nested too deeply to be a config", "give a flat table of sections") from None
    except ValueError as e:  # integers past the interpreter's digit limit
        raise UserError(f"config file {path} holds a number too long to read ({str(e)[:80]})",
                        "give numbers of sensible size") from None


def load(preset: str | None = None, config_file: str | None = None, overrides: list[str] = ()) -> Config:
    """Defaults <- preset <- config file <- --set overrides, validated at each step."""
    cfg = Config()
    renamed: list[str] = []
    if preset:
        if preset not in preset_names():
            raise UserError(f"unknown preset {_show(preset)}", f"choose one of: {', '.join(preset_names())}")
        text = resources.files("loraclf.presets").joinpath(f"{preset}.toml").read_text()
        apply(cfg, tomllib.loads(text), f" in preset {preset}", renamed)
        cfg.preset = preset
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist", "check the path given to --config")
        data = _read_file(path)
        if isinstance(data, dict) and ("format_version" in data or "resolved" in data):  # a run's config.json
            data = saved_settings(data)
        apply(cfg, data, f" in {path}", renamed)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {_show(item)} is not key=value", "write it as --set section.key=value")
        _set(cfg, key.strip(), value, renamed, text=True)
    validate(cfg)
    note_renamed(renamed)
    return cfg


def saved_settings(data: dict) -> dict:
    """A run's saved config.json as settings: its format_version checked, and the record of what `auto`
    resolved to on the training machine left out (it is not a setting)."""
    from .rundir import FORMAT_VERSION
    if not isinstance(data, dict):
        raise UserError(f"the run's config.json holds a {type(data).__name__}, not a config",
                        "restore the run's config.json, or train the run again")
    data = dict(data)
    version = data.pop("format_version", FORMAT_VERSION)
    data.pop("resolved", None)
    if isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"the run's config.json has format_version {_show(version)}, not a version number",
                        "restore the run's config.json, or train the run again")
    if version > FORMAT_VERSION:
        raise UserError(f"this run was written by a newer loraclf (format {version}, this one reads {FORMAT_VERSION})",
                        "upgrade loraclf")
    return data


def from_dict(data: dict) -> Config:
    """A saved config.json back to a Config (its format_version checked). Configs saved before keys moved
    (RENAMED) load as they are, with one note."""
    return apply(Config(), saved_settings(data), " in the run's config.json")


CHOICES = {
    "model.init": ("pretrained", "random"),
    "model.head": ("auto", "full", "linear", "lora"),
    "model.attn_implementation": ("auto", "sdpa", "eager"),
    "adapter.method": ("lora", "rslora", "dora", "vera", "ia3", "none"),
    "adapter.bias": ("none", "all", "lora_only"),
    "adapter.init": ("default", "pissa"),
    "data.long_text": ("truncate", "head+tail", "chunks"),
    "data.chunk_pool": ("mean", "max"),
    "train.scheduler": ("linear", "cosine", "constant"),
    "train.monitor": ("val_loss", "val_accuracy", "val_macro_f1"),
    "train.class_weight": ("none", "balanced"),
    "data.task": ("single_label", "multi_label"),
    "train.precision": precision.PRECISION_CHOICES,
    "scoring.precision": precision.PRECISION_CHOICES,
    "train.cache_frozen_layers": ("auto", "on", "off"),
}


@dataclass(frozen=True)
class Range:
    """Where a number may lie: [low, high] (an end excluded where open), or one of `also`."""
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()
    meaning: str = ""   # what the `also` values mean, for the message

    def __contains__(self, v) -> bool:
        if v in self.also:
            return True
        return (self.low < v if self.low_open else self.low <= v) and (v < self.high if self.high_open else v <= self.high)

    def text(self) -> str:
        span = f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low == 1 and not self.low_open and self.high >= 2**20:
            span = "a whole number from 1 up"
        elif self.low == 0 and not self.low_open and self.high >= 2**20:
            span = "0 or more"
        return span + (f", or {self.meaning}" if self.meaning else "")


MAX_INT = 2**31 - 1     # counts of rows, steps and tokens: what torch's int32 indexing and the C libraries below take
MAX_LENGTH = 2**20      # tokens per text; the model's own position limit is checked where its config is read

# Every number in the config, with the range it must lie in (tests check that no numeric field is missing).
# Lists and dicts of numbers (adapter.layers, adapter.rank_pattern) are checked item by item.
RANGES = {
    "budget.max_trainable": Range(1, 10**13),
    "model.encoder_dropout": Range(0, 1, high_open=True, also=(-1,), meaning="-1 to keep the model's own"),
    "adapter.r": Range(1, 65536),
    "adapter.alpha": Range(0, 1e6, low_open=True),
    "adapter.dropout": Range(0, 1, high_open=True),
    "adapter.layers": Range(0, 100_000),
    "adapter.rank_pattern": Range(1, 65536),
    "adapter.lr_ratio_b": Range(0, 1e6, low_open=True),
    "data.val_size": Range(0, 1, low_open=True, high_open=True, also=(0,),
                           meaning="0 for no validation (a whole row count of 2 or more is checked apart)"),
    "data.max_length": Range(1, MAX_LENGTH),
    "data.max_length_infer": Range(1, MAX_LENGTH, also=(0,), meaning="0 for data.max_length"),
    "data.max_train_samples": Range(0, MAX_INT, meaning="0 for all"),
    "data.head_tokens": Range(0, MAX_LENGTH, meaning="0 for a quarter of the window"),
    "data.chunk_stride": Range(0, MAX_LENGTH, also=(-1,), meaning="-1 for a quarter of the window"),
    "train.epochs": Range(0, 100_000, low_open=True),
    "train.batch_size": Range(1, 2**20),
    "train.grad_accum": Range(1, 2**20),
    "train.lr": Range(0, 10, low_open=True),
    "train.weight_decay": Range(0, 10),
    "train.eps": Range(0, 1, low_open=True, high_open=True),
    "train.warmup_steps": Range(0, MAX_INT),
    "train.warmup_ratio": Range(0, 1),
    "train.max_grad_norm": Range(0, 1e6, meaning="0 for no clipping"),
    "train.label_smoothing": Range(0, 1, high_open=True),
    "train.pos_weight": Range(0, 1e6, low_open=True),
    "train.eval_every": Range(0, MAX_INT, meaning="0 for once per epoch"),
    "train.save_every": Range(0, MAX_INT, meaning="0 for no intermediate checkpoints"),
    "train.patience": Range(0, MAX_INT, meaning="0 for never stopping early"),
    "train.seed": Range(0, 2**32 - 1),   # numpy's seed range
    "scoring.batch_size": Range(1, 2**20),
    "scoring.max_tokens": Range(1, MAX_INT, also=(-1, 0), meaning="0 for no cap, -1 for auto"),
    "cpu.threads": Range(0, 4096, meaning="0 for torch's default"),
}


def _check_range(key: str, value) -> None:
    rng = RANGES[key]
    values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
    for v in values:
        if (isinstance(v, float) and not math.isfinite(v)) or v not in rng:
            where = f"{key} value" if isinstance(value, (dict, list)) else key
            raise UserError(f"config key {where} {_show(v)} is out of range: it must be {rng.text()}",
                            f"--set {key}=<a value in range>")


def _whole_number(name: str) -> str | None:
    """The whole number a class name stands for ("07" and "7.0" stand for 7, "-0" for 0), as data reads labels."""
    m = re.fullmatch(r"\s*([+-]?)0*([0-9]+)(?:\.0*)?\s*", name)
    if m is None:
        return None
    return ("-" if m.group(1) == "-" and m.group(2) != "0" else "") + m.group(2)


def validate(cfg: Config) -> None:
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise UserError(f"config key {key} = {_show(value)} is not allowed", f"choose one of: {', '.join(allowed)}")
    for key in RANGES:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key == "data.val_size" and value >= 1 and not (isinstance(value, float) and not math.isfinite(value)):
            if not float(value).is_integer() or value < 2:
                raise UserError(f"config key data.val_size {_show(value)} is neither a fraction nor a row count",
                                "use a fraction strictly between 0 and 1 (0.1), a whole number of rows of 2 or more "
                                "(640), or 0 for no validation")
            if value > MAX_INT:
                raise UserError(f"config key data.val_size {_show(value)} is out of range", "use a fraction or a row count")
            continue
        _check_range(key, value)
    if not cfg.adapter.target_modules:
        raise UserError("config key adapter.target_modules is empty", "name at least one module, e.g. "
                        "--set adapter.target_modules=query,value")
    if any(not t.strip() for t in cfg.adapter.target_modules):
        raise UserError("config key adapter.target_modules has an empty name", "name each module, e.g. query,value")
    if cfg.train.pos_weight and cfg.data.task != "multi_label":
        raise UserError("config key train.pos_weight applies to multi-label runs only",
                        "--set data.task=multi_label, or leave train.pos_weight empty (train.class_weight weighs classes)")
    if cfg.train.pos_weight and cfg.train.class_weight != "none":
        raise UserError("train.pos_weight and train.class_weight = balanced both set the positive weights",
                        "give one of them")
    delimiter = cfg.data.label_delimiter
    if not delimiter.strip() or len(delimiter) > 8 or any(c in delimiter for c in "\r\n\"") or untrusted.unicode_problem(delimiter):
        raise UserError(f"config key data.label_delimiter = {_show(delimiter)} is not a usable delimiter",
                        "give one to eight visible characters without quotes or line breaks, e.g. --set data.label_delimiter=';'")
    names = cfg.data.label_names
    if len(names) == 1:
        raise UserError(f"data.label_names names one class ({_show(names[0])})",
                        "a classifier needs at least two classes: list them all, or leave it empty to read them from the data")
    if len(set(names)) != len(names):
        raise UserError("data.label_names repeats a name", "give each class once, in id order")
    values = [v for v in (_whole_number(n) for n in names if isinstance(n, str)) if v is not None]
    if len(set(values)) != len(values):  # "07" and "7", "-0" and "0": one number, so labels could not tell them apart
        raise UserError("data.label_names names one number twice (as 07 and 7, or -0 and 0)",
                        "give each class once; a class that is a number is matched by its value")
    for n in names:  # a class name is written into CSVs, plots and labels.json, and matched against data
        if not isinstance(n, str) or not n.strip() or untrusted.unicode_problem(n) or len(n) > 1000:
            raise UserError(f"data.label_names has {_show(n)}, not a class name",
                            "give each class as visible text (at most 1,000 characters)")
    for pattern in cfg.adapter.rank_pattern:
        try:
            re.compile(pattern)
        except re.error as e:
            raise UserError(f"config key adapter.rank_pattern: {_show(pattern)} is not a regular expression ({e})",
                            "give module-name patterns, e.g. {\"query\": 8}") from None
    from . import longtext
    longtext.check_config(cfg)
