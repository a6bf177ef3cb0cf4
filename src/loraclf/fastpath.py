"""The training step's fast path: measured levers (docs/performance.md), each a context manager.

- `cpu_dropout()`: torch's CPU dropout draws one Bernoulli sample per element through a slow scalar
  generator, the largest cost after the matmuls in a profiled bf16 training step. Here the mask comes
  from 16 random bits per element (one int64 draw gives four) compared with a threshold, so p is exact to
  1/65536, and the kept values are scaled by 1/(1 - that p): the same unbiased dropout, cheaper. It is
  applied as a multiply by the mask in the tensor's dtype, not masked_fill_ (a scalar kernel on CPU).
  With `share`, LoRA modules that read the same input draw one mask between them, not one each.
- `frozen_weights_as(model, dtype)`: under autocast every frozen Linear weight is cast to bf16/fp16 again
  on every step (85M parameters for roberta-base). Casting once, for the length of training, gives the
  same numbers (autocast's cast is the same rounding) without that traffic. With `whole_model=True` (bf16
  scoring, `scoring.bf16_full_cast`) embeddings and LayerNorms are cast too, so the residual stream is bf16:
  faster, and no longer autocast's numbers (the benchmark's accuracy guard, `make bench`, checks the result).
- `attention(model, impl)`: SDPA is the faster attention for inference, but on CPU its training path is
  slower (with attention dropout it falls back to an unfused path whose dropout the lever above cannot
  reach; without, its backward measured slower than eager). So CPU training forwards run TRAIN_ATTENTION:
  HF's eager attention with its [batch, heads, L, L] tensors (mask add, softmax, dropout) kept in the
  autocast dtype instead of fp32, and the cheaper dropout; evaluation SDPA.
- `cls_only_last_layer(model)`: the classification head reads only the first token of the last layer's
  output, so that layer computes keys and values for every token (the first token attends to them all) and
  everything else (query, attention output, feed-forward) for the first token only. Exact (the same logits
  and gradients up to rounding order); training and scoring alike.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_LEVELS = 65536  # 16-bit thresholds


def dropout_mask(shape, p: float) -> tuple[torch.Tensor, float]:
    """(keep, scale): a bool mask with P(drop) = round(p * 65536) / 65536, and 1 / P(keep)."""
    n = 1
    for s in shape:
        n *= s
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-2**63, None).view(torch.int16)[:n].view(shape)
    k = round(p * _LEVELS)
    return bits >= (k - _LEVELS // 2), _LEVELS / (_LEVELS - k)


def apply_mask(t: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """t * keep * scale with `keep` converted to 0/1 in t's dtype: a vectorized multiply (masked_fill_ with a
    bool mask runs a scalar kernel on CPU). The scale stays a separate multiply: folded into a bf16 mask,
    1/0.9 would round and bias every kept value."""
    return (t * keep.view(torch.uint8).to(t.dtype)).mul_(scale)


class _Dropout(torch.autograd.Function):
    """The bool mask is what is saved (1 byte an element), applied again to the gradient in backward."""
    @staticmethod
    def forward(ctx, x, p):
        keep, scale = dropout_mask(x.shape, p)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return apply_mask(x, keep, scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return apply_mask(grad, keep, ctx.scale), None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of a CPU float tensor with the cheaper mask."""
    return _Dropout.apply(x, p)


class _CPUDropoutMode(TorchFunctionMode):
    def __init__(self, share: bool = False):
        super().__init__()
        self.share = share
        self.last = None  # (input, its version, p, output, its version): the latest dropout, for `share`

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.dropout:
            x = args[0] if args else kwargs["input"]
            p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
            training = args[2] if len(args) > 2 else kwargs.get("training", True)
            inplace = args[3] if len(args) > 3 else kwargs.get("inplace", False)
            if training and not inplace and 0.0 < p < 1.0 and x.device.type == "cpu" and x.is_floating_point():
                if self.share and self.last is not None:
                    x0, xv, p0, out, outv = self.last
                    if x0 is x and xv == x._version and p0 == p and outv == out._version:
                        return out
                out = dropout(x, p)
                if self.share:
                    self.last = (x, x._version, p, out, out._version)
                return out
        return func(*args, **kwargs)


def cpu_dropout(enabled: bool = True, share: bool = False):
    """Every F.dropout call on a CPU tensor (nn.Dropout modules, peft's lora_dropout, HF's attention
    dropout) uses the cheaper mask while this is active. Backward needs no mode: the mask is saved.
    `share` (cpu.share_dropout_masks): a dropout of the very tensor the previous call dropped, unchanged
    since, with the same p, returns that call's output: LoRA on query, key and value, which read the same
    hidden state, then see one mask (as in loralib's MergedLinear) instead of one each (peft)."""
    return _CPUDropoutMode(share) if enabled else contextlib.nullcontext()


def cheap_dropout_applies(device: torch.device, wanted: bool, gradient_checkpointing: bool) -> bool:
    """CPU only (CUDA's dropout is already fused), and never with gradient checkpointing: its recompute
    runs inside the autograd engine, where the function mode is not active, so it would draw torch's
    masks instead of these (torch.utils.checkpoint stops with a CheckpointError rather than go on)."""
    return wanted and device.type == "cpu" and not gradient_checkpointing


@contextlib.contextmanager
def frozen_weights_as(model, dtype: torch.dtype | None, whole_model: bool = False):
    """Frozen nn.Linear weights and biases (with `whole_model`, every frozen floating-point parameter) held in
    `dtype` inside the block, fp32 originals put back after (so evaluation, saving and merging afterwards see
    exactly the weights they saw before). Yields how many modules had parameters cast."""
    saved, n_modules = [], 0  # (parameter, its fp32 data)
    if whole_model and dtype is not None and not bf16_whole_model_applies(model):
        from . import families
        family = families.family_of(transformers_model(model))
        families.note_once(f"{family.name if family else 'this model'}: whole-model bf16 scoring is not checked "
                           "for this family; scoring uses autocast's bf16 (scoring.bf16_full_cast)")
        whole_model = False
    if dtype is not None:
        for m in model.modules():
            if whole_model:
                params = [p for p in m.parameters(recurse=False) if p.is_floating_point()]
            else:
                params = [p for p in (m.weight, m.bias) if p is not None] if isinstance(m, torch.nn.Linear) else []
            if params and not any(p.requires_grad for p in params) and any(p.dtype != dtype for p in params):
                n_modules += 1
                for p in params:
                    saved.append((p, p.data))
                    p.data = p.data.to(dtype)
    try:
        yield n_modules
    finally:
        for p, orig in saved:
            p.data = orig


TRAIN_ATTENTION = "loraclf_cpu_train"


def _train_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention, except that under autocast the scores stay in its dtype: eager adds
    an fp32 mask (promoting the scores to fp32), autocast runs softmax in fp32, dropout follows in fp32, and
    the next matmul casts back. The softmax kernel accumulates in fp32 either way; in fp32 this is eager."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)).mul_(scaling)
    with torch.autocast(device_type=query.device.type, enabled=False):
        if attention_mask is not None:  # 0 / float32-min; a bf16 copy is clamped so it stays finite
            mask = attention_mask
            if mask.dtype != scores.dtype:
                mask = mask.to(scores.dtype).clamp_(min=torch.finfo(scores.dtype).min)
            scores = scores.add_(mask)
        probs = torch.softmax(scores, dim=-1)
        probs = F.dropout(probs, p=dropout, training=module.training)
        out = torch.matmul(probs, value.to(probs.dtype))
    return out.transpose(1, 2).contiguous(), probs


def _register_train_attention() -> bool:
    """Make TRAIN_ATTENTION known to transformers (idempotent); False where transformers is too old."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:  # transformers < 4.53: plain eager
        return False
    AttentionInterface.register(TRAIN_ATTENTION, _train_attention)
    AttentionMaskInterface.register(TRAIN_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    return True


def transformers_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def attention(model, impl: str | None):
    """Switch a transformers model's attention implementation inside the block (None: leave it)."""
    base = transformers_model(model)
    before = getattr(base.config, "_attn_implementation", None)
    if impl is None or before is None or impl == before or not hasattr(base, "set_attn_implementation"):
        yield
        return
    if impl == TRAIN_ATTENTION and not _register_train_attention():
        impl = "eager"
    base.set_attn_implementation(impl)
    try:
        yield
    finally:
        base.set_attn_implementation(before)


def training_attention(choice: str, device: torch.device, model) -> str | None:
    """auto on CPU: TRAIN_ATTENTION for the training forwards (None: keep the loaded one). Without attention
    dropout too: SDPA's CPU backward made `make demo` (no dropout) train 1.29x slower than eager did.
    Models that do not dispatch through transformers' AttentionInterface get plain eager."""
    base = transformers_model(model)
    if choice != "auto" or device.type != "cpu":
        return None
    supported = getattr(base, "_supports_attention_backend", False) and _register_train_attention()
    return TRAIN_ATTENTION if supported else "eager"


# classifiers whose head reads only position 0 of the last hidden state (a [CLS]/<s> pooler or head), and whose
# encoder layers are BERT's: attention.self.{query,key,value}, attention.output, feed_forward_chunk
FIRST_TOKEN_CLASSIFIERS = ("BertForSequenceClassification", "RobertaForSequenceClassification",
                           "XLMRobertaForSequenceClassification", "CamembertForSequenceClassification",
                           "ElectraForSequenceClassification")
FIRST_TOKEN_ATTENTION = ("eager", "sdpa", TRAIN_ATTENTION)


def bert_family_layers(model):
    """(the encoder body, its layers) of a FIRST_TOKEN_CLASSIFIERS encoder on transformers 5, whose layers take and
    return the hidden states as one tensor; else None. What cls_only_last_layer and layercache build on."""
    import transformers
    from . import families
    base = transformers_model(model)
    family = families.family_of(base)
    if type(base).__name__ not in FIRST_TOKEN_CLASSIFIERS or int(transformers.__version__.split(".")[0]) < 5:
        if family is not None and not family.first_token_exact:
            families.note_once(f"{family.name}: the first-token last layer and the frozen-layer cache do not apply "
                               "(not exact for its layers); the plain forward runs")
        return None  # transformers 4's layers return tuples and take other arguments
    if base.config.is_decoder:
        return None
    body = getattr(base, base.base_model_prefix, None)
    layers = getattr(getattr(body, "encoder", None), "layer", None)
    return (body, layers) if layers else None


def first_token_layer_applies(model) -> bool:
    """Whether cls_only_last_layer is exact, hence used, for this model (its family and attention)."""
    return _last_layer_if_supported(model) is not None


def bf16_whole_model_applies(model) -> bool:
    """Whether whole-model bf16 scoring (scoring.bf16_full_cast) is checked for this model's family."""
    from . import families
    family = families.family_of(transformers_model(model))
    return family is not None and family.bf16_whole_model


def _last_layer_if_supported(model):
    """The last encoder layer where cls_only_last_layer applies, else None."""
    found = bert_family_layers(model)
    if found is None or getattr(transformers_model(model).config, "_attn_implementation", None) not in FIRST_TOKEN_ATTENTION:
        return None
    layer = found[1][-1]
    attn = getattr(layer, "attention", None)
    parts = (getattr(getattr(attn, "self", None), name, None) for name in ("query", "key", "value", "scaling"))
    if not all(x is not None for x in parts) or not hasattr(layer, "feed_forward_chunk") or hasattr(layer, "crossattention"):
        return None
    return layer


def _first_token_layer_forward(layer, hidden_states, attention_mask=None, *args, **kwargs):
    """The layer's forward for the first token only: [batch, 1, hidden] out. Keys and values for all tokens."""
    import sys
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    kwargs = {k: v for k, v in kwargs.items() if k not in ("encoder_attention_mask", "cache", "past_key_values")}
    attn = layer.attention.self
    first = hidden_states[:, :1].contiguous()  # a strided view sends linear to a bmm over a weight copied per row
    heads = (hidden_states.shape[0], -1, attn.num_attention_heads, attn.attention_head_size)
    query = attn.query(first).view(heads).transpose(1, 2)
    key = attn.key(hidden_states).view(heads).transpose(1, 2)
    value = attn.value(hidden_states).view(heads).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :1]  # the first query's row
    eager = sys.modules[type(attn).__module__].eager_attention_forward
    impl = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager)
    context, _ = impl(attn, query, key, value, attention_mask, dropout=attn.dropout.p if attn.training else 0.0,
                      scaling=attn.scaling, **kwargs)
    attention_output = layer.attention.output(context.reshape(first.shape[0], 1, -1), first)
    return layer.feed_forward_chunk(attention_output)


@contextlib.contextmanager
def cls_only_last_layer(model, enabled: bool = True):
    """Inside the block the last encoder layer computes only the first token's row (scoring.cls_only_last_layer):
    about a twelfth less work in roberta-base. Yields whether it applied (BERT-family classifiers on
    transformers 5, eager/SDPA attention; elsewhere the model runs unchanged). Nested inside a block that
    applied it (scoring inside fit), it yields False and the outer block's switch stays in force, even with
    enabled=False: fit and its scoring read the same scoring.cls_only_last_layer."""
    layer = _last_layer_if_supported(model) if enabled else None
    if layer is None or "forward" in vars(layer):
        yield False
        return
    layer.forward = _first_token_layer_forward.__get__(layer)
    try:
        yield True
    finally:
        del layer.forward


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


@functools.cache  # serve scores through logits_for on every request: the mallopt calls are made once
def tune_malloc() -> bool:
    """glibc only: fixed malloc thresholds for CPU training and scoring (`cpu.tune_malloc`). By default glibc serves an
    allocation above its mmap threshold with a fresh mmap, page-faulted again on every use, and that threshold
    moves (up to the largest block freed so far, at most 32 MB), so how often a step's activations are
    page-faulted depends on the order their sizes came in. Fixed at that 32 MB maximum, with memory given
    back to the OS only above 1 GB free at the heap's top, the heap keeps and reuses them (`--levers`,
    "glibc malloc thresholds"). Process-wide and permanent, so set once per process; True when it applied."""
    import ctypes
    import platform
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the running process, glibc's symbols included
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))

