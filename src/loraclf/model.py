"""Build the base encoder, attach peft adapters and the head; save, load back and merge.

All adapter math is peft's. What is ours: resolving model names, checking that targets exist, the
head strategy, and making gradient checkpointing safe for LoRA (non-reentrant, always).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from . import families
from .config import Config
from .errors import UserError, first_line

HEAD_NAMES = ("classifier", "score")
LORA_FAMILY = ("lora", "rslora", "dora")  # the methods head=lora can pair with (it puts LoRA on the head dense)


def resolve_model_path(name: str) -> str:
    """`pkg:NAME` names a model shipped as PyPI packages, from an exact allow-list (packaged.py)."""
    if name.startswith("pkg:"):
        from . import packaged
        return packaged.model_path(name)
    return name


def _auto_config(cfg: Config, label_names: list[str]):
    from transformers import AutoConfig
    from . import remote_code
    path = resolve_model_path(cfg.model.name)
    remote_code.check_folder(path)
    try:
        config = AutoConfig.from_pretrained(path, num_labels=len(label_names),
                                            id2label=dict(enumerate(label_names)),
                                            label2id={n: i for i, n in enumerate(label_names)},
                                            # multi-label: transformers' own loss, where a user calls the model with labels
                                            **({"problem_type": "multi_label_classification"}
                                               if cfg.data.task == "multi_label" else {}), **remote_code.kwargs())
    except (OSError, ValueError) as e:
        if remote_code.is_refusal(e):
            raise remote_code.refusal(cfg.model.name) from None
        raise UserError(f"cannot load model config {cfg.model.name!r} ({str(e).splitlines()[0][:160]})",
                        "give a local model folder, or a Hub name with network access") from None
    check_config_numbers(config, cfg.model.name)
    check_lengths(cfg, config)
    if cfg.model.encoder_dropout >= 0:  # dropout masks cost ~20% of a CPU training step (docs/performance.md)
        for key in DROPOUT_KEYS:
            if getattr(config, key, None) is not None:
                setattr(config, key, cfg.model.encoder_dropout)
    return config


MAX_LAYERS, MAX_WIDTH = 1_000, 10**9  # past any real encoder: a config.json with more is broken or hostile


def check_config_numbers(config, name: str) -> None:
    """The numbers of a model's config.json (a file from the user, or from the Hub) checked before anything is
    built from them: finite, dropout probabilities in [0, 1], layer and head counts and widths positive and
    below sizes no real encoder has (a billion layers would take hours to build even on the meta device)."""
    import math

    def refuse(key, value, why):
        raise UserError(f"model {name!r}: config.json {key} = {value!r} {why}",
                        "fix the model's config.json, or use another model")

    for key, value in config.to_dict().items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            refuse(key, value, "is not a finite number")
        if ("dropout" in key or key.endswith("_prob")) and not 0 <= value <= 1:
            refuse(key, value, "is not a probability (0 to 1)")
        if key.endswith("_eps") and not 0 < value < 1:
            refuse(key, value, "is not a small positive number")
        if key.startswith("num_") and key.endswith(("_layers", "_heads")) or key in ("n_layers", "n_heads", "n_layer",
                                                                                     "n_head"):
            if not 1 <= value <= MAX_LAYERS:
                refuse(key, value, f"is not a count from 1 to {MAX_LAYERS:,}")
        if key in ("hidden_size", "vocab_size", "d_model") and not 1 <= value <= MAX_WIDTH:
            refuse(key, value, f"is not a size from 1 to {MAX_WIDTH:,}")
        if key.endswith(("_size", "_dim")) and not 0 <= value <= MAX_WIDTH:  # DeBERTa's type_vocab_size is 0
            refuse(key, value, f"is not a size from 0 to {MAX_WIDTH:,}")


# Model types whose position ids start after the padding index (RoBERTa's create_position_ids_from_input_ids):
# pad_token_id + 1 of their max_position_embeddings are never a text's positions.
PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "roberta-prelayernorm", "data2vec-text", "xmod",
                            "longformer", "ibert", "mpnet", "luke", "markuplm", "esm")


def position_limit(config) -> int | None:
    """The longest input (in tokens) the model's absolute position embeddings cover; None where it has none."""
    n = getattr(config, "max_position_embeddings", None)
    if not isinstance(n, int) or getattr(config, "position_biased_input", True) is False:  # DeBERTa: relative only
        return None
    if getattr(config, "model_type", "") in PADDING_OFFSET_POSITIONS:
        n -= (getattr(config, "pad_token_id", None) or 0) + 1
    return n if n > 0 else None


def check_lengths(cfg: Config, config) -> None:
    """data.max_length(_infer) within the model's positions, before a run writes anything (a longer text
    would index past the position table mid-run)."""
    limit = position_limit(config)
    if limit is None:
        return
    for key in ("max_length", "max_length_infer"):
        value = getattr(cfg.data, key)
        if value > limit:
            raise UserError(f"data.{key} = {value:,} is longer than model {cfg.model.name!r} reads ({limit} tokens)",
                            f"--set data.{key}={limit} or less")


DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout",
                "attention_dropout", "seq_classif_dropout", "hidden_dropout", "activation_dropout")


def load_base(cfg: Config, label_names: list[str], meta: bool = False):
    """The encoder with a fresh `num_labels` head. meta=True allocates nothing (for counting)."""
    from transformers import AutoModelForSequenceClassification
    from . import remote_code
    config = _auto_config(cfg, label_names)
    kw = {"attn_implementation": attention_for(cfg.model.attn_implementation, config)} | remote_code.kwargs()
    if meta:
        from accelerate import init_empty_weights
        with init_empty_weights():
            model = AutoModelForSequenceClassification.from_config(config, **kw)
        model.tie_weights()  # on the meta device shared embeddings (BART's) are not tied by construction
        return model
    if cfg.model.init == "random":  # reproducible from the seed, so a run can be reloaded without weights
        torch.manual_seed(cfg.train.seed)
        return AutoModelForSequenceClassification.from_config(config, **kw)
    from safetensors import SafetensorError
    from transformers.utils import logging as hf_logging
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights were newly initialized": expected for the head
    try:
        # fp32 master weights whatever the checkpoint's dtype (an fp16 checkpoint would otherwise train in fp16)
        # safetensors only: a pytorch_model.bin is a pickle, and loading one can run code
        return AutoModelForSequenceClassification.from_pretrained(resolve_model_path(cfg.model.name), config=config,
                                                                  dtype=torch.float32, use_safetensors=True, **kw)
    except (OSError, ValueError, SafetensorError) as e:  # a missing, truncated or garbled weights file
        raise UserError(f"cannot load model weights {cfg.model.name!r} ({str(e).splitlines()[0][:160]})",
                        "give a model folder with model.safetensors (convert a pytorch_model.bin you trust with "
                        "transformers' save_pretrained), a Hub name with network access, or --set model.init=random") from None
    finally:
        hf_logging.set_verbosity(verbosity)


def attention_for(choice: str, config=None) -> str:
    """auto: SDPA (the faster one for inference on CPU too) where the model's family supports it, else eager
    (families.attention_for); train.fit switches CPU training forwards to fastpath.TRAIN_ATTENTION
    (fastpath.training_attention)."""
    if config is None:
        return "sdpa" if choice == "auto" else choice
    return families.attention_for(choice, config)


def head_names(model) -> tuple[str, ...]:
    """Top-level modules that make up the classification head: the family table's, else classifier/score."""
    family = families.family_of(model)
    return tuple(dict.fromkeys(HEAD_NAMES + (family.head_modules if family else ())))


def head_module_names(model) -> list[str]:
    heads = head_names(model)
    return [n for n, _ in model.named_children() if n in heads]


def linear_names(model) -> list[str]:
    """Distinct leaf names of the encoder's linear layers (the valid LoRA targets), head excluded."""
    names, heads = [], head_names(model)
    for full, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and full.split(".")[0] not in heads:
            leaf = full.split(".")[-1]
            if leaf not in names:
                names.append(leaf)
    return names


def check_targets(model, targets: list[str]) -> dict[str, tuple[str, ...]]:
    """Every target names a linear module of the encoder or a role (families.ROLES); returns what each role
    resolved to (module paths inside a layer)."""
    heads = head_names(model)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.split(".")[0] not in heads]
    if families.family_of(model) is None and not any(re.search(rf"\.(?:{LAYER_CONTAINERS})\.\d+\.", n) for n in linears):
        kinds = families.layer_kinds(model)
        raise UserError(f"{type(model).__name__} has no encoder layers built of torch.nn.Linear"
                        + (f" (its layers are built of {', '.join(kinds)})" if kinds else "")
                        + ": the adapters loraclf trains (LoRA, IA3, VeRA) adapt nn.Linear layers",
                        "use another encoder (docs/families.md lists the families that work)")
    for t in targets:
        if not families.is_role(t) and not any(n == t or n.endswith("." + t) for n in linears):
            raise UserError(f"LoRA target {t!r} matches no linear module of this model",
                            f"linear module names are: {', '.join(linear_names(model))}; "
                            f"roles are: {', '.join(families.ROLES)}")
    return families.resolve(model, targets)


def head_parts(model) -> tuple[str | None, str]:
    """(pre-projection dense, final projection) of the classification head, as module paths:
    RoBERTa classifier.dense + classifier.out_proj; BERT pooler.dense + classifier; DistilBERT
    pre_classifier + classifier. The dense is None for heads that are a single projection."""
    names = {re.sub(r"\.(base_layer|original_module|modules_to_save\.default)$", "", n)
             for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    family = families.family_of(model)
    if family is not None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        proj = family.head_proj if family.head_proj in names else None
        dense = family.head_dense if family.head_dense in names else None
        if dense is None and family.head_dense:  # a pooler inside the encoder (BERT, ALBERT): bert.pooler.dense
            dense = next((n for n in sorted(names) if n.endswith("." + family.head_dense)
                          and n.split(".")[0] == base.base_model_prefix), None)
        if proj is not None:
            return dense, proj
    for dense, proj in (("classifier.dense", "classifier.out_proj"), ("pooler.dense", "classifier"),
                        ("pre_classifier", "classifier"), ("pooler.dense", "score")):
        d = next((n for n in names if n == dense or n.endswith("." + dense)), None)
        p = next((n for n in names if n == proj or n.endswith("." + proj)), None)
        if d and p:
            return d, p
    linears = [n for n in names if n.split(".")[0] in HEAD_NAMES]
    return None, (sorted(linears)[-1] if linears else "classifier")


LAYER_CONTAINERS = "layer|layers|h|block|blocks|albert_layers"


def _encoder_regex(targets: list[str], layers: list[int], model=None, resolved=None) -> str:
    """The peft regex for `targets` inside encoder layers (optionally only `layers`). Used when the head needs
    its own LoRA target (peft's layers_to_transform would also filter the head out) and for roles, which name
    module paths inside a layer exactly (BERT's ffn `output.dense` is not its `attention.output.dense`)."""
    index = "|".join(str(i) for i in layers) if layers else r"\d+"
    names = [t for t in targets if not families.is_role(t)]
    family = families.family_of(model) if model is not None else None
    if family is None:
        return rf".*\.(?:{LAYER_CONTAINERS})\.(?:{index})\.(?:.*\.)?(?:{'|'.join(re.escape(t) for t in names)})"
    paths = list(dict.fromkeys(p for t in targets if families.is_role(t) for p in (resolved or {}).get(t, ())))
    inside = [re.escape(p) for p in paths] + [rf"(?:.*\.)?{re.escape(t)}" for t in names]
    return rf"(?:.*\.)?{families.layers_regex(family, layers)}\.(?:{'|'.join(inside)})"


def _check_layers(cfg: Config, model) -> None:
    a = cfg.adapter
    if not a.layers:
        return
    family = families.family_of(model)
    if family is not None and family.shared_layers:
        raise UserError(f"adapter.layers does not apply to {family.name}: one layer's weights serve every depth",
                        "leave adapter.layers empty (--set adapter.layers=[])")
    n_layers = getattr(model.config, "num_hidden_layers", None)
    bad = [i for i in a.layers if n_layers is not None and not 0 <= i < n_layers]
    if bad:
        raise UserError(f"adapter.layers {bad} out of range: the model has {n_layers} layers",
                        f"use layer indices 0..{n_layers - 1}")


def _extra_head_modules(model) -> list[str]:
    """Head modules besides the final projection's top-level module, which peft's SEQ_CLS task type already
    trains (DeBERTa's pooler, ModernBERT's head): head=full trains them too, head=linear saves them frozen."""
    family = families.family_of(model)
    return [m for m in (family.head_modules if family else ()) if m not in HEAD_NAMES]


def peft_config(cfg: Config, model):
    """The peft config for cfg.adapter; its counts are what budget.py reports."""
    from peft import IA3Config, LoraConfig, TaskType, VeraConfig
    a = cfg.adapter
    resolved = check_targets(model, a.target_modules)
    if a.init == "pissa" and a.method not in ("lora", "rslora"):
        raise UserError(f"adapter.init=pissa applies to lora and rslora, not adapter.method={a.method}",
                        "use adapter.method=lora, or adapter.init=default")
    _check_layers(cfg, model)
    if resolved:  # roles name exact paths inside a layer: one regex, layers included
        common = dict(task_type=TaskType.SEQ_CLS, target_modules=_encoder_regex(a.target_modules, a.layers, model, resolved))
    else:
        layers = {"layers_to_transform": a.layers} if a.layers else {}
        common = dict(task_type=TaskType.SEQ_CLS, target_modules=list(a.target_modules), **layers)
    extra = _extra_head_modules(model)
    if extra:
        common["modules_to_save"] = extra
    if a.method == "vera":
        return VeraConfig(r=a.r, vera_dropout=a.dropout, bias=a.bias, **common)
    if a.method == "ia3":
        if resolved:
            ffn = set(families.family_of(model).roles.get("ffn", ()))
            ff_paths = [p for t in a.target_modules if families.is_role(t) for p in resolved[t] if p in ffn]
            ff = rf"(?:.*\.)?(?:{'|'.join(re.escape(p) for p in ff_paths)})" if ff_paths else []
        else:
            ff = [t for t in a.target_modules if t in ("dense", "intermediate", "output", "fc1", "fc2", "lin1", "lin2")]
        return IA3Config(feedforward_modules=ff, **common)
    on_meta = any(p.device.type == "meta" for p in model.parameters())
    lora = dict(r=a.r, lora_alpha=a.alpha, lora_dropout=a.dropout, bias=a.bias, use_rslora=a.method == "rslora",
                use_dora=a.method == "dora", rank_pattern=dict(a.rank_pattern),
                # PiSSA's SVD needs real weights; on the meta device (counting) shapes are all that matter
                init_lora_weights="pissa" if a.init == "pissa" and not on_meta else True)
    if cfg.model.head == "lora":
        # LoRA on the head's dense layer, full training of its projection. No task type: peft's SEQ_CLS
        # would put the whole head in modules_to_save and train the dense layer in full.
        dense, proj = head_parts(model)
        if dense is None:
            raise UserError("model.head=lora needs a dense layer before the final projection, and this "
                            "model's head has none", "use model.head=full or model.head=linear")
        if not lora_head_possible(model):
            raise UserError(f"model.head=lora is not available for {families.family_of(model).name}: peft's "
                            f"modules_to_save matches names by suffix, so `{proj}` would also catch `{dense}`",
                            "use model.head=full or model.head=linear")
        regex = _encoder_regex(a.target_modules, a.layers, model, resolved) + "|" + re.escape(dense)
        return LoraConfig(target_modules=regex, modules_to_save=[proj], **lora)
    return LoraConfig(**lora, **common)


def lora_head_possible(model) -> bool:
    """head=lora puts LoRA on the dense layer and the projection in modules_to_save, which peft matches by plain
    suffix: DistilBERT's `pre_classifier` ends with `classifier`, so there it cannot be done."""
    dense, proj = head_parts(model)
    return dense is not None and not dense.endswith(proj)


def head_dense_is_pretrained(model) -> bool:
    """Whether the head's dense layer is the encoder's own pretrained pooler (BERT, ALBERT: `bert.pooler.dense`),
    not a layer the classification head adds (RoBERTa, MPNet, ELECTRA, DeBERTa, DistilBERT: new at fine-tuning)."""
    dense, _ = head_parts(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return dense is not None and dense.split(".")[0] == base.base_model_prefix


def resolve_head(cfg: Config, base) -> str:
    """model.head=auto, as the two budget studies found (studies/README.md), for a LoRA-family adapter:
    - the dense layer is the encoder's pretrained pooler: `lora` adapts it, where `full` would leave it frozen
      (MiniLM: lora won at 100k and 500k);
    - the dense layer is new: `full` trains it, where the run then fits budget.max_trainable (MPNet-base at 1M:
      full won against LoRA on it with the budget moved to rank), else `lora`;
    - no dense layer to adapt, or another adapter: `full`.
    Written back into cfg, so the run's saved config names the strategy actually used."""
    if cfg.model.head == "auto":
        cfg.model.head = "full"
        if cfg.adapter.method in LORA_FAMILY and lora_head_possible(base):
            cfg.model.head = "lora" if head_dense_is_pretrained(base) or not _fits_with_full_head(cfg, base) else "full"
    return cfg.model.head


def _fits_with_full_head(cfg: Config, base) -> bool:
    import copy
    from . import budget
    full = copy.deepcopy(cfg)
    full.model.head = "full"
    labels = [str(base.config.id2label.get(i, i)) for i in range(base.config.num_labels)]
    return budget.count_config(full, labels).trainable <= cfg.budget.max_trainable


def attach(cfg: Config, base):
    """Wrap the base model with adapters, then apply the head strategy:
    full   -- the whole head trains (peft's modules_to_save; the reports' behaviour);
    linear -- only the head's final projection (hidden x classes) trains; layers before it stay frozen
              at their initial values, which are still saved with the adapter so reloads match;
    lora   -- LoRA (same rank) on the head's dense layer, and its final projection trains in full."""
    from peft import get_peft_model
    resolve_head(cfg, base)
    if cfg.model.head == "lora" and cfg.adapter.method not in LORA_FAMILY:
        raise UserError(f"model.head=lora needs a LoRA-family adapter, not adapter.method={cfg.adapter.method}",
                        "use adapter.method=lora, rslora or dora, or model.head=full/linear")
    if cfg.adapter.method == "none":  # full fine-tuning, a reference point for studies
        for p in base.parameters():
            p.requires_grad_(True)
        return base
    _, proj = head_parts(base)
    model = get_peft_model(base, peft_config(cfg, base))
    if cfg.model.head == "linear":
        trained_copy = [(n, m) for n, m in model.named_modules() if n.endswith("modules_to_save.default")]
        for name, head in trained_copy:
            linears = [(f"{name[:-len('.modules_to_save.default')]}.{k}".rstrip("."), m)
                       for k, m in head.named_modules() if isinstance(m, torch.nn.Linear)]
            for p in head.parameters():
                p.requires_grad_(False)
            # only the final projection trains (DistilBERT's pre_classifier and DeBERTa's pooler are also copies)
            keep = [m for n, m in linears if n == proj or n.endswith("." + proj)] or ([linears[-1][1]] if len(trained_copy) == 1 else [])
            for m in keep:
                for p in m.parameters():
                    p.requires_grad_(True)
    _check_head_trains(model, proj)
    return model


_WRAPPERS = re.compile(r"^base_model\.model\.|\.(modules_to_save\.default|original_module|base_layer)(?=\.)")


def _check_head_trains(model, proj: str) -> None:
    """The classifier's final projection must train: a model whose head loraclf cannot find (Perceiver keeps it
    inside its body) would otherwise train adapters under a random head that is neither trained nor saved."""
    trained = {_WRAPPERS.sub("", n) for n, p in model.named_parameters() if p.requires_grad}
    if not any(n.startswith(proj + ".") for n in trained):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        raise UserError(f"cannot find the classification head of this {type(base).__name__}: no layer with "
                        f"{base.config.num_labels} outputs sits beside its encoder, so none would train",
                        "loraclf trains sequence classifiers whose head is a top-level module (classifier, score, "
                        "or the family table's; docs/families.md)")


def check_batch_widths(model, widths=(16, 24)) -> None:
    """A model of an inferred family (no table row, so never checked) runs a forward at two batch widths before
    training: loraclf pads each batch to its longest row (rounded up to 8), and a model that takes only one
    input length (Nystromformer's segment means, Reformer's axial positions) must say so now, in one line."""
    family = families.family_of(model)
    if family is None or not family.name.endswith("(inferred)"):
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    was_training = model.training
    buffers = {name: b.clone() for name, b in model.named_buffers()}  # BatchNorm statistics move in training mode
    try:
        for training in (True, False):  # Reformer checks its input length in training mode only
            model.train(training)
            for width in widths:
                with torch.no_grad(), torch.random.fork_rng(devices=[]):  # dropout's draws leave the run's seed alone
                    model(**families.probe_batch(model, width))
    except Exception as e:  # whatever the model raises, told in one line
        first = (first_line(e, 160) or type(e).__name__).rstrip(".")
        raise UserError(f"{type(base).__name__} fails a test forward of 2 rows x {width} tokens ({type(e).__name__}: "
                        f"{first})", "loraclf pads each batch to its longest row (a multiple of 8), so a model that "
                        "takes one fixed input length, or fails on such a batch, is not supported (docs/families.md)") from None
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])


def enable_gradient_checkpointing(model) -> None:
    """Non-reentrant checkpointing always: the reentrant kind gives LoRA weights no gradient when the
    inputs are frozen (report B's bug). Nothing in loraclf can ask for the reentrant kind."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", True):  # ALBERT: transformers has none for it
        families.note_once(f"{type(base).__name__} has no gradient checkpointing in transformers; "
                           "train.gradient_checkpointing is ignored (activations are kept)")
        return
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    base.config.use_cache = False


def build(cfg: Config, label_names: list[str]):
    model = attach(cfg, load_base(cfg, label_names))
    check_batch_widths(model)
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


# ------------------------------------------------------------------------------- save and load

HEAD_DENSE_FILE = "head_dense_base.safetensors"


def save(model, out_dir: Path) -> None:
    """peft format: adapter_config.json + adapter_model.safetensors, head weights included. With
    head=lora the head's frozen dense layer may be freshly initialised (RoBERTa's is), so its base
    weights are saved beside the adapter; load_run_model puts them back."""
    from safetensors.torch import save_file
    model.save_pretrained(str(out_dir), safe_serialization=True)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dense, _ = head_parts(base)
    layer = base.get_submodule(dense) if dense else None
    if layer is not None and hasattr(layer, "base_layer"):
        tensors = {k: v.detach().contiguous() for k, v in layer.base_layer.state_dict().items()}
        save_file(tensors, str(Path(out_dir) / HEAD_DENSE_FILE))


def _restore_head_dense(base, adapter_dir: Path) -> None:
    from safetensors.torch import load_file
    file = Path(adapter_dir) / HEAD_DENSE_FILE
    if file.is_file():
        base.get_submodule(head_parts(base)[0]).load_state_dict(load_file(str(file)))


def _does_not_fit(run_dir: Path, cfg: Config, detail: str) -> UserError:
    return UserError(f"the weights in {run_dir / 'adapter'} do not fit the base model {cfg.model.name!r} named in its "
                     f"config.json ({detail[:160]})",
                     "config.json must name the model the run was trained on; restore it or retrain the run")


def load_run_model(run_dir, merged: bool = False):
    """Rebuild a run's model: base (as it was built) + the saved adapter and head. `run_dir`: a path or an
    opened rundir.RunDir. Weights that do not fit the base model (another model named in config.json, another
    number of classes) are one UserError, never a half-loaded model."""
    import warnings

    from peft import PeftModel
    from transformers.utils import logging as hf_logging

    from . import remote_code
    from .rundir import RunDir
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.open(run_dir)
    cfg, label_names, adapter = run.config, run.labels, run.adapter_dir
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # stderr stays for the one line a refusal prints
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if cfg.adapter.method == "none":
                from transformers import AutoModelForSequenceClassification
                model = AutoModelForSequenceClassification.from_pretrained(str(adapter), use_safetensors=True,
                                                                           local_files_only=True, **remote_code.kwargs())
            elif cfg.adapter.init == "pissa":
                model = _load_pissa(cfg, label_names, adapter)
                if merged:
                    model = model.merge_and_unload()
            else:
                base = load_base(cfg, label_names)
                _restore_head_dense(base, adapter)
                # the adapter's shape comes from the run's checked config.json, as in training: the folder's own
                # adapter_config.json is never read (a tampered one could change the scores or make peft import
                # a module it names)
                model = PeftModel.from_pretrained(base, str(adapter), config=peft_config(cfg, base))
                if merged:
                    model = model.merge_and_unload()
    except (RuntimeError, ValueError, KeyError, AttributeError) as e:
        if isinstance(e, RuntimeError) and not any(m in str(e) for m in ("size mismatch", "state_dict", "does not fit")):
            raise  # not a weights/model mismatch (e.g. out of memory)
        raise _does_not_fit(run.path, cfg, str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    # unexpected keys too: the adapter's shape comes from config.json, and weights it has no place for would
    # otherwise be dropped without a word
    mismatch = [str(w.message) for w in caught if any(k in str(w.message) for k in ("missing adapter keys",
                                                                                 "unexpected adapter keys"))]
    if mismatch:
        raise _does_not_fit(run.path, cfg, "the adapter's layers do not match this model and config.json")
    if cfg.adapter.method == "none" and model.config.num_labels != len(label_names):
        raise _does_not_fit(run.path, cfg, f"{model.config.num_labels} classes, labels.json has {len(label_names)}")
    model.eval()
    return model, cfg, label_names


def _load_pissa(cfg: Config, label_names: list[str], adapter: Path):
    """PiSSA moved the adapted weights' top singular directions out of the base weights (W_res = W - BA
    at init), so the saved adapter only fits a base with the same residual. The residual is recomputed
    here from the pretrained weights (PiSSA's full SVD is deterministic) and the trained A, B and head
    are loaded on top. `export --merged` gives a plain model that needs none of this."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    base = load_base(cfg, label_names)
    _restore_head_dense(base, adapter)
    model = attach(cfg, base)
    result = set_peft_model_state_dict(model, load_file(str(adapter / "adapter_model.safetensors")))
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"PiSSA adapter does not fit its model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model
