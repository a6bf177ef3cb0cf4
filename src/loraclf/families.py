"""Encoder families as data: one row per family, consulted by model building, budget counting and the fast paths.

A row says where a family's encoder layers are, which linear modules inside a layer play each role
(`adapter.target_modules` accepts the role names), which top-level modules make up its classification head
and where that head's dense layer sits, and which of loraclf's speed levers are exact for it. Attention
(SDPA or eager) is not in the table: transformers' own model class says whether it supports SDPA.
A new family is a new row (and a test case in tests/test_families.py).

A model type with no row gets one inferred from the model's own modules (`infer`): its stack of encoder layers,
the roles by the usual projection names, its head as the classifier's modules outside the encoder. No speed lever
applies to an inferred family, since none has been checked exact for it.
"""
from __future__ import annotations

import re
import sys
import weakref
from dataclasses import dataclass, field

import torch

from .errors import UserError

ROLES = ("attention-qv", "attention", "attention-output", "ffn", "all-linear")
DEFAULT_ROLE = "attention-qv"  # every family has it (ModernBERT's fused Wqkv serves it)


@dataclass(frozen=True)
class Family:
    name: str
    layer: str                      # regex of one encoder layer's module path; group 1 is its index
    roles: dict[str, tuple[str, ...]]  # role -> module paths relative to a layer
    head_modules: tuple[str, ...]   # top-level modules that make up the head (head=full trains them all)
    head_dense: str | None          # the dense layer before the final projection (head=lora adapts it)
    head_proj: str = "classifier"   # the final projection
    shared_layers: bool = False     # ALBERT: one layer's weights serve every depth
    first_token_exact: bool = False  # fastpath.cls_only_last_layer and layercache apply (BERT-style layers)
    bf16_whole_model: bool = False  # whole-model bf16 scoring (scoring.bf16_full_cast) checked for this family
    onnx: bool = True               # torch.onnx.export handles it (checked by tests/test_families.py)
    half_autocast: bool = True      # runs under bf16/fp16 autocast (DeBERTa v1 does not: see precision.resolve_for)
    notes: str = ""
    model_types: tuple[str, ...] = field(default_factory=tuple)


def _bert_like(name, types, head_modules=("classifier",), head_dense="pooler.dense", head_proj="classifier",
               first_token=True, **kw):
    return Family(name, r"encoder\.layer\.(\d+)", {
        "attention": ("attention.self.query", "attention.self.key", "attention.self.value"),
        "attention-output": ("attention.output.dense",),
        "ffn": ("intermediate.dense", "output.dense")}, head_modules, head_dense, head_proj,
        first_token_exact=first_token, bf16_whole_model=first_token, model_types=types, **kw)


_ROBERTA_HEAD = dict(head_dense="classifier.dense", head_proj="classifier.out_proj")

FAMILIES: dict[str, Family] = {}
for _row in (
    _bert_like("BERT", ("bert",), notes="pooler (pretrained, part of the encoder) frozen under head=full"),
    _bert_like("RoBERTa", ("roberta", "camembert"), **_ROBERTA_HEAD),
    _bert_like("XLM-RoBERTa", ("xlm-roberta",), **_ROBERTA_HEAD),
    _bert_like("ELECTRA", ("electra",), **_ROBERTA_HEAD),
    Family("ALBERT", r"encoder\.albert_layer_groups\.\d+\.albert_layers\.(\d+)", {
        "attention": ("attention.query", "attention.key", "attention.value"),
        "attention-output": ("attention.dense",), "ffn": ("ffn", "ffn_output")},
        ("classifier",), "pooler", shared_layers=True, model_types=("albert",),
        notes="one shared layer: adapter.layers does not apply"),
    Family("DistilBERT", r"transformer\.layer\.(\d+)", {
        "attention": ("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        "attention-output": ("attention.out_lin",), "ffn": ("ffn.lin1", "ffn.lin2")},
        ("pre_classifier", "classifier"), "pre_classifier", model_types=("distilbert",),
        notes="head=lora is not offered: peft's modules_to_save cannot tell `classifier` from `pre_classifier`"),
    Family("DeBERTa", r"encoder\.layer\.(\d+)", {
        "attention": ("attention.self.in_proj",), "attention-qv": ("attention.self.in_proj",),
        "attention-output": ("attention.output.dense",), "ffn": ("intermediate.dense", "output.dense")},
        ("pooler", "classifier"), "pooler.dense", model_types=("deberta",), half_autocast=False,
        notes="v1: query, key and value are one fused in_proj; eager attention; the pooler is part of the head; "
              "fp32 only (its attention mask overflows bf16 and fp16 under autocast)"),
    Family("DeBERTa-v2", r"encoder\.layer\.(\d+)", {
        "attention": ("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
        "attention-output": ("attention.output.dense",), "ffn": ("intermediate.dense", "output.dense")},
        ("pooler", "classifier"), "pooler.dense", model_types=("deberta-v2",),
        notes="eager attention (no SDPA in transformers); the pooler is part of the head"),
    Family("MPNet", r"encoder\.layer\.(\d+)", {
        "attention": ("attention.attn.q", "attention.attn.k", "attention.attn.v"),
        "attention-output": ("attention.attn.o",), "ffn": ("intermediate.dense", "output.dense")},
        ("classifier",), "classifier.dense", "classifier.out_proj", model_types=("mpnet",),
        notes="eager attention (no SDPA in transformers)"),
    Family("ModernBERT", r"layers\.(\d+)", {
        "attention": ("attn.Wqkv",), "attention-qv": ("attn.Wqkv",),
        "attention-output": ("attn.Wo",), "ffn": ("mlp.Wi", "mlp.Wo")},
        ("head", "classifier"), "head.dense", model_types=("modernbert",),
        notes="query, key and value are one fused Wqkv, so attention-qv adapts all three"),
):
    for _t in _row.model_types:
        FAMILIES[_t] = _row


def family_of(model_or_config) -> Family | None:
    """The family table's row for this model or config; for a model whose type has no row, one inferred from its
    modules (None where that finds no stack of encoder layers, and always for a bare config)."""
    config = getattr(model_or_config, "config", model_or_config)
    base = model_or_config.get_base_model() if hasattr(model_or_config, "get_base_model") else None
    config = getattr(base, "config", config)
    row = FAMILIES.get(getattr(config, "model_type", None))
    if row is not None or not isinstance(model_or_config, torch.nn.Module):
        return row
    base = base if base is not None else model_or_config
    if base not in _INFERRED:
        _INFERRED[base] = infer(base)
        if _INFERRED[base] is not None:
            note_once(f"model type {config.model_type!r} has no row in loraclf's family table: its layers, roles and "
                      "head are read off its modules (loraclf plan shows them), and no speed lever applies")
    return _INFERRED[base]


_INFERRED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WRAPPED = re.compile(r"(?:^|\.)(base_layer|original_module|modules_to_save\.default)(?=\.|$)")
_ADAPTER = re.compile(r"(?:^|\.)(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector|vera_[AB])(\.|$)")
# leaf names of query, key and value, as separate projections or fused into one
QKV_LEAVES = (("query", "key", "value"), ("query_proj", "key_proj", "value_proj"), ("q_proj", "k_proj", "v_proj"),
              ("q_lin", "k_lin", "v_lin"), ("q_head", "k_head", "v_head"), ("q", "k", "v"), ("Wq", "Wk", "Wv"))
FUSED_QKV_LEAVES = ("Wqkv", "qkv", "qkv_proj", "in_proj", "query_key_value", "c_attn")
ATTENTION_OUTPUT_LEAVES = ("dense", "out_proj", "o_proj", "o", "out_lin", "Wo", "output_dense", "post_proj")


def _linears(module) -> list[tuple[str, torch.nn.Linear]]:
    """(path, module) of the model's own linear layers: adapters' added ones skipped, wrapped ones by their path."""
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.Linear) and not _ADAPTER.search(name):
            out.setdefault(_WRAPPED.sub("", name).strip("."), m)  # classifier.original_module.dense: classifier.dense
    return list(out.items())


def probe_batch(model, width: int) -> dict:
    """Two rows of `width` tokens as a tokenizer makes them (a start and an end token around the text: BART reads
    its logits at <eos>), for the test forwards an inferred family gets before it trains or scores."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    vocab = int(getattr(base.config, "vocab_size", 0) or 0)
    ids = torch.full((2, width), min(5, max(vocab - 1, 0)), dtype=torch.long, device=next(model.parameters()).device)
    for column, key in ((0, "bos_token_id"), (-1, "eos_token_id")):
        token = getattr(base.config, key, None)
        if isinstance(token, int) and 0 <= token < vocab:
            ids[:, column] = token
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def layer_kinds(model) -> list[str]:
    """Class names of the modules with weights inside the model's numbered layers that are not torch.nn.Linear,
    LayerNorm or Embedding (I-BERT's QuantLinear, SqueezeBERT's Conv1d): what a model without linears is made of."""
    out = []
    for name, m in model.named_modules():
        if (re.search(r"\.\d+\.", name) and getattr(m, "weight", None) is not None and not list(m.children())
                and not isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Embedding))):
            out.append(type(m).__name__)
    return list(dict.fromkeys(out))


def infer(model) -> Family | None:
    """A family row read off a sequence classifier whose model type has no row: the largest stack of identical
    encoder layers (never a decoder's; with its parallel stacks where attention and feed-forward are kept in separate
    lists, as in XLM), roles by projection names, the head as the top-level modules beside the encoder."""
    prefix = getattr(model, "base_model_prefix", "")
    body_name = prefix if prefix and hasattr(model, prefix) else None
    if body_name is None:
        return None
    stacks = {}
    for name, m in model.named_modules():
        if (isinstance(m, torch.nn.ModuleList) and len(m) and not isinstance(m[0], torch.nn.ModuleList)
                and len({type(x) for x in m}) == 1 and not _WRAPPED.search(name) and not _ADAPTER.search(name)
                and not any("decoder" in part for part in name.split("."))):
            n = len(_linears(m[0]))
            if n:
                stacks[name] = (len(m) * n, name.count("."), m)
    if not stacks:
        return None
    stack_path = max(stacks, key=lambda k: stacks[k][:2])  # on a tie the inner list (ALBERT: one layer group)
    n_stack = len(stacks[stack_path][2])
    parent, _, _ = stack_path.rpartition(".")
    group = [k for k in stacks if k.rpartition(".")[0] == parent and len(stacks[k][2]) == n_stack]  # XLM: attentions, ffns
    rel = parent[len(body_name) + 1:] if parent.startswith(body_name + ".") else "" if parent == body_name else parent
    lists = [re.escape(k.rpartition(".")[2]) for k in group]
    names = lists[0] if len(lists) == 1 else f"(?:{'|'.join(lists)})"
    layer = (re.escape(rel) + r"\." if rel else "") + names + r"\.(\d+)"
    # every linear of every layer (Reformer mixes layer kinds), qualified by its list when there are several
    qualified = list(dict.fromkeys((f"{k.rpartition('.')[2]}.{p}" if len(group) > 1 else p)
                                   for k in group for layer_module in stacks[k][2] for p, _ in _linears(layer_module)))
    plain = {q: (q.split(".", 1)[1] if len(group) > 1 else q) for q in qualified}
    leaf = {q: q.split(".")[-1] for q in qualified}
    attention: tuple[str, ...] = ()
    for triple in QKV_LEAVES:
        by_parent = {}
        for q in qualified:
            if leaf[q] in triple:
                by_parent.setdefault(q.rpartition(".")[0], {})[leaf[q]] = q
        found = next((d for d in by_parent.values() if len(d) == 3), None)
        if found:
            attention = tuple(found[n] for n in triple)
            break
    if not attention:
        attention = tuple(q for q in qualified if leaf[q] in FUSED_QKV_LEAVES)[:1]
    roles: dict[str, tuple[str, ...]] = {}
    if attention:
        roles["attention"] = attention
        if len(attention) == 1:
            roles["attention-qv"] = attention
        # the attention block: the path up to the part the query projection sits under (attention., attn., self_attn.)
        parts = attention[0].split(".")[:-1]
        at = next((i for i, part in enumerate(parts) if "att" in part.lower()), None)
        if at is not None:
            block = ".".join(parts[:at + 1]) + "."
            roles["attention-output"] = tuple(q for q in qualified if q.startswith(block) and q not in attention
                                              and leaf[q] in ATTENTION_OUTPUT_LEAVES)
            roles["ffn"] = tuple(q for q in qualified if not q.startswith(block))
    else:  # no linear attention projections (FNet mixes tokens by Fourier transform, XLNet's are raw weights)
        roles["ffn"] = tuple(qualified)
    roles = {k: tuple(dict.fromkeys(plain[q] for q in v)) for k, v in roles.items() if v}
    heads, proj, dense = [], None, None
    num_labels = getattr(model.config, "num_labels", None)
    for name, child in model.named_children():
        if name == body_name or not any(True for _ in child.parameters()):
            continue
        heads.append(name)
        for path, m in _linears(child):
            full = f"{name}.{path}" if path else name
            if m.out_features == num_labels:
                proj = full
            elif proj is None:
                dense = full
    if dense is None:  # BERT-style: a pretrained pooler inside the encoder, read by a one-layer classifier
        dense = next((p for p in ("pooler.dense", "pooler") if p in dict(_linears(getattr(model, body_name)))), None)
    n_layers = getattr(model.config, "num_hidden_layers", n_stack)
    kind = type(model).__name__.removesuffix("ForSequenceClassification")
    return Family(f"{kind or model.config.model_type} (inferred)", layer, roles, tuple(heads), dense,
                  proj or "classifier", shared_layers=n_stack == 1 < n_layers,  # ALBERT: one layer serves every depth
                  notes="not in the family table: roles and head inferred from the model's modules",
                  model_types=(getattr(model.config, "model_type", "?"),))


def _peft_qv(model_type: str) -> tuple[str, ...] | None:
    """peft's own default LoRA targets for this model type (its query/value pair), where it has one."""
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping
    except ImportError:
        return None
    names = mapping.get(model_type)
    return tuple(names) if names else None


def role_paths(family: Family, role: str, model_type: str, all_linear: list[str]) -> tuple[str, ...]:
    """Module paths (relative to a layer) that `role` means for `family`."""
    if role == "all-linear":
        return tuple(all_linear)
    if role == "attention-qv" and "attention-qv" not in family.roles and family.roles.get("attention"):
        peft_names = _peft_qv(model_type)
        attn = family.roles["attention"]
        if peft_names and any(p.split(".")[-1] in peft_names for p in attn):  # peft's mapping names the pair by leaf
            return tuple(p for p in attn if p.split(".")[-1] in peft_names)
        return tuple(dict.fromkeys((attn[0], attn[-1])))  # query and value: the first and last of query, key, value
    return family.roles.get(role, ())


def layer_linears(model, family: Family) -> list[tuple[int, str]]:
    """(layer index, path inside the layer) of every linear module inside the encoder layers."""
    pattern = re.compile(rf"(?:.*\.)?{family.layer}\.(.+)")
    out = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            m = pattern.fullmatch(name)
            if m and not re.search(r"\.(base_layer|lora_[AB]|lora_embedding_[AB])(\.|$)", name):
                out.append((int(m.group(1)), m.group(2)))
    return out


def is_role(target: str) -> bool:
    return target in ROLES


def resolve(model, targets: list[str]) -> dict[str, tuple[str, ...]]:
    """Each role in `targets` -> the module paths (inside a layer) it resolves to in this model."""
    roles = [t for t in targets if is_role(t)]
    if not roles:
        return {}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    family = family_of(base)
    model_type = getattr(base.config, "model_type", "?")
    if family is None:
        raise UserError(f"adapter.target_modules role {roles[0]!r}: loraclf has no family table row for model type "
                        f"{model_type!r}", "name the linear modules instead (loraclf plan lists them), "
                        "e.g. --set adapter.target_modules=query,value")
    linears = layer_linears(base, family)
    present = list(dict.fromkeys(p for _, p in linears))
    out = {}
    for role in roles:
        paths = tuple(p for p in role_paths(family, role, model_type, present) if p in present)
        if not paths:
            raise UserError(f"adapter.target_modules role {role!r} matches no linear module of this {family.name} model",
                            f"roles are {', '.join(ROLES)}; module paths inside a layer are: {', '.join(present)}")
        out[role] = paths
    return out


def describe(resolved: dict[str, tuple[str, ...]]) -> str:
    """'attention-qv = attention.self.query, attention.self.value; ...' for plan's output."""
    return "; ".join(f"{role} = {', '.join(paths)}" for role, paths in resolved.items())


def layers_regex(family: Family, layers: list[int]) -> str:
    """The family's layer path with its index restricted to `layers` (all when empty)."""
    index = "|".join(str(i) for i in layers) if layers else r"\d+"
    return family.layer.replace(r"(\d+)", f"(?:{index})")


_SAID: set[str] = set()


def note_once(message: str) -> None:
    """A fallback worth knowing, said once per process (on stderr, so --json output stays clean)."""
    if message not in _SAID:
        _SAID.add(message)
        print(f"note: {message}", file=sys.stderr)


def supports_sdpa(config) -> bool:
    """Whether transformers' sequence-classification class for this config supports SDPA."""
    from transformers import AutoModelForSequenceClassification
    try:
        cls = AutoModelForSequenceClassification._model_mapping[type(config)]
    except (KeyError, AttributeError):
        return True  # unknown: let transformers decide (it raises a ValueError we turn into one line)
    return bool(getattr(cls, "_supports_sdpa", False))


def attention_for(choice: str, config) -> str:
    """model.attn_implementation resolved for this model: auto is SDPA where the family supports it, else eager."""
    if choice == "auto":
        return "sdpa" if supports_sdpa(config) else "eager"
    if choice == "sdpa" and not supports_sdpa(config):
        raise UserError(f"model.attn_implementation=sdpa: transformers has no SDPA attention for "
                        f"{getattr(config, 'model_type', 'this model')}", "use model.attn_implementation=auto or eager")
    return choice
