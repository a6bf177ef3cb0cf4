"""The training fast path (fastpath.py): cheaper CPU dropout, frozen weights cast once, attention by phase."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import LABELS, tiny_config
from loraclf import fastpath, model, precision as precision_mod


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_dropout_mask_rate_and_scale(p):
    torch.manual_seed(0)
    keep, scale = fastpath.dropout_mask((1000, 1000), p)
    drop = ~keep
    p_eff = round(p * 65536) / 65536
    assert abs(p_eff - p) < 1e-5
    assert abs(drop.float().mean().item() - p) < 0.002          # 1M draws: sd ~0.0003
    assert scale == pytest.approx(1 / (1 - p_eff), rel=1e-12)    # kept values scaled so E[out] = x


def test_dropout_masks_are_independent_and_seeded():
    torch.manual_seed(1)
    a, _ = fastpath.dropout_mask((256, 256), 0.5)
    b, _ = fastpath.dropout_mask((256, 256), 0.5)
    torch.manual_seed(1)
    a2, _ = fastpath.dropout_mask((256, 256), 0.5)
    assert torch.equal(a, a2)
    assert 0.45 < (a == b).float().mean().item() < 0.55           # two draws agree only by chance
    rows = a.float().mean(1)                                     # no stripes from the int64 -> 4 x int16 split
    assert rows.min() > 0.35 and rows.max() < 0.65
    for k in range(4):
        assert abs(a.reshape(-1, 4)[:, k].float().mean().item() - 0.5) < 0.02


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_forward_and_backward(dtype):
    torch.manual_seed(0)
    x = torch.randn(64, 33, dtype=dtype, requires_grad=True)
    g = torch.randn(64, 33, dtype=dtype)
    y = fastpath.dropout(x, 0.3)
    y.backward(g)
    assert y.dtype == x.grad.dtype == dtype
    kept = y != 0
    scale = 1 / (1 - round(0.3 * 65536) / 65536)
    # exact: x times the fp32 scale, rounded once (a scale folded into a bf16 mask would round it first)
    assert torch.equal(y[kept], (x.detach()[kept].float() * scale).to(dtype))
    assert torch.equal(x.grad, torch.where(kept, (g.float() * scale).to(dtype), torch.zeros_like(g)))
    assert 0.2 < 1 - kept.float().mean().item() < 0.4


def test_bf16_dropout_is_unbiased():
    torch.manual_seed(0)
    x = torch.rand(2000, 1000).add_(1).to(torch.bfloat16)     # values in [1, 2): many round differently
    y = fastpath.dropout(x, 0.1)
    assert abs(y.double().mean().item() / x.double().mean().item() - 1) < 1e-3   # mean kept; sd ~2e-4


def test_mode_replaces_training_dropout_only():
    drop = torch.nn.Dropout(0.2)
    x = torch.ones(200, 200)
    with fastpath.cpu_dropout():
        torch.manual_seed(0)
        ours = drop(x)
        torch.manual_seed(0)
        ours_functional = F.dropout(x, 0.2, training=True)
        assert torch.equal(F.dropout(x, 0.2, training=False), x)   # eval: untouched
        assert torch.equal(F.dropout(x, 0.0, training=True), x)
    torch.manual_seed(0)
    theirs = drop(x)
    assert torch.equal(ours, ours_functional)
    assert not torch.equal(ours, theirs)                             # a different mask generator was used
    for out in (ours, theirs):
        assert abs((out == 0).float().mean().item() - 0.2) < 0.02
    with fastpath.cpu_dropout(enabled=False):
        torch.manual_seed(0)
        assert torch.equal(drop(x), theirs)


def _batch():
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return ids, mask, torch.tensor([0, 1, 2, 3])


def _grads_after_step(m, precision="bf16", cheap=True, attn=None, frozen_dtype="auto", seed=0):
    if frozen_dtype == "auto":
        frozen_dtype = precision_mod.autocast_dtype(precision)
    ids, mask, y = _batch()
    m.zero_grad(set_to_none=True)
    m.train()
    with fastpath.frozen_weights_as(m, frozen_dtype), fastpath.cpu_dropout(cheap), fastpath.attention(m, attn):
        torch.manual_seed(seed)
        with precision_mod.autocast(torch.device("cpu"), precision):
            logits = m(input_ids=ids, attention_mask=mask).logits
        F.cross_entropy(logits.float(), y).backward()
    return logits.detach().float(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}


def test_frozen_linears_cast_once_gives_the_same_numbers_and_restores_fp32(tiny_model):
    m = model.build(tiny_config(tiny_model, "adapter.dropout=0.1"), LABELS)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    a_logits, a_grads = _grads_after_step(m, frozen_dtype=None)
    b_logits, b_grads = _grads_after_step(m, frozen_dtype=torch.bfloat16)
    assert torch.equal(a_logits, b_logits)
    for n in a_grads:
        assert torch.equal(a_grads[n], b_grads[n]), n
    for n, p in m.named_parameters():  # every weight back in fp32, bit for bit
        assert p.dtype == torch.float32 and torch.equal(p.detach(), before[n]), n
    with fastpath.frozen_weights_as(m, torch.bfloat16) as n_cast:
        frozen = [mod for mod in m.modules() if isinstance(mod, torch.nn.Linear) and not mod.weight.requires_grad]
        assert n_cast == len(frozen) > 0 and all(mod.weight.dtype == torch.bfloat16 for mod in frozen)
        assert all(p.dtype == torch.float32 for p in m.parameters() if p.requires_grad)


def test_attention_switch_restores(tiny_bert):
    m = model.build(tiny_config(tiny_bert), LABELS)
    assert m.get_base_model().config._attn_implementation == "sdpa"  # auto
    with fastpath.attention(m, "eager"):
        assert m.get_base_model().config._attn_implementation == "eager"
    assert m.get_base_model().config._attn_implementation == "sdpa"
    assert fastpath.training_attention("auto", torch.device("cpu"), m) == fastpath.TRAIN_ATTENTION  # dropout 0.1
    assert fastpath.training_attention("sdpa", torch.device("cpu"), m) is None
    assert fastpath.training_attention("auto", torch.device("cuda"), m) is None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_attention_matches_eager(tiny_model, precision):
    """fp32: the same computation as eager; bf16: the scores stay bf16 instead of fp32, so close, not equal."""
    m = model.build(tiny_config(tiny_model, "adapter.dropout=0.0", "model.encoder_dropout=0"), LABELS)
    assert fastpath.training_attention("auto", torch.device("cpu"), m) == fastpath.TRAIN_ATTENTION  # dropout or not
    eager_logits, eager_grads = _grads_after_step(m, precision, attn="eager")
    ours_logits, ours_grads = _grads_after_step(m, precision, attn=fastpath.TRAIN_ATTENTION)
    tol = {"fp32": dict(atol=1e-6, rtol=1e-5), "bf16": dict(atol=2e-2, rtol=5e-2)}[precision]
    torch.testing.assert_close(ours_logits, eager_logits, **tol)
    for n in eager_grads:
        torch.testing.assert_close(ours_grads[n], eager_grads[n], **tol)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_checkpointing_sees_the_same_attention_and_never_the_cheap_dropout(tiny_bert, precision):
    """Non-reentrant checkpointing reruns the forward during backward, outside the dropout mode: fit turns
    the cheap dropout off then (the control below shows why), and the attention switch covers backward."""
    cfg = tiny_config(tiny_bert, "adapter.dropout=0.2", "train.gradient_checkpointing=true")
    ckpt = model.build(cfg, LABELS)
    plain = model.build(tiny_config(tiny_bert, "adapter.dropout=0.2"), LABELS)
    plain.load_state_dict(ckpt.state_dict())
    assert not fastpath.cheap_dropout_applies(torch.device("cpu"), True, cfg.train.gradient_checkpointing)
    _, g_ckpt = _grads_after_step(ckpt, precision, cheap=False, attn=fastpath.TRAIN_ATTENTION)
    _, g_plain = _grads_after_step(plain, precision, cheap=False, attn=fastpath.TRAIN_ATTENTION)
    lora = [n for n in g_plain if "lora_B" in n]
    assert lora
    for n in lora:
        assert g_plain[n].abs().sum() > 0, n
        torch.testing.assert_close(g_ckpt[n], g_plain[n], atol=1e-6, rtol=1e-4)
    from torch.utils.checkpoint import CheckpointError
    with pytest.raises(CheckpointError):
        _grads_after_step(ckpt, precision, cheap=True, attn=fastpath.TRAIN_ATTENTION)


def test_tune_malloc_applies_on_glibc():
    import platform
    assert fastpath.tune_malloc() is (platform.libc_ver()[0] == "glibc")
    assert fastpath.tune_malloc() is (platform.libc_ver()[0] == "glibc")   # idempotent


def test_tune_malloc_sets_the_thresholds_once_per_process(monkeypatch):
    """Scoring calls it on every request in serve: the mallopt calls are made the first time only."""
    import ctypes
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    opened = []
    real = ctypes.CDLL
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: opened.append(1) or real(*a, **k))
    fastpath.tune_malloc.cache_clear()
    assert fastpath.tune_malloc() and fastpath.tune_malloc()
    assert opened == [1]


def test_shared_dropout_reuses_the_mask_of_the_same_unchanged_input():
    x = torch.randn(64, 32, requires_grad=True)
    with fastpath.cpu_dropout(True, share=True):
        a, b = F.dropout(x, 0.5), F.dropout(x, 0.5)              # q, k, v reading one hidden state
        c = F.dropout(x, 0.3)                                    # another p: a fresh mask
        d = F.dropout(x * 1, 0.3)                                # another tensor: a fresh mask
        z = torch.randn(64, 32)
        e = F.dropout(z, 0.5)
        z.add_(1)                                                # changed in place since: a fresh mask
        f = F.dropout(z, 0.5)
    assert a is b and not torch.equal(c, d) and not torch.equal((e == 0), (f == 0))
    (a + b).sum().backward()                                     # one mask, its gradient counted twice
    assert torch.equal(x.grad, 2 * (a != 0).float() * 2.0)
    with fastpath.cpu_dropout(True, share=False):
        a, b = F.dropout(x, 0.5), F.dropout(x, 0.5)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("fast,share", [(True, False), (True, True), (False, False)])
def test_fit_runs_the_fast_path_and_leaves_fp32_weights(tmp_path, tiny_bert, monkeypatch, fast, share):
    from loraclf import data as data_mod
    from loraclf import train
    from transformers import AutoTokenizer
    calls = []
    real = fastpath.dropout
    monkeypatch.setattr(fastpath, "dropout", lambda x, p: calls.append(p) or real(x, p))
    tuned = []
    monkeypatch.setattr(fastpath, "tune_malloc", lambda: tuned.append(1) or True)
    cfg = tiny_config(tiny_bert, "adapter.dropout=0.1", "train.precision=bf16", f"cpu.fast_dropout={str(fast).lower()}",
                      f"cpu.tune_malloc={str(fast).lower()}", f"cpu.share_dropout_masks={str(share).lower()}")
    m = model.build(cfg, LABELS)
    start = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    ex = data_mod.Examples([f"text number {i}" for i in range(32)], [i % 4 for i in range(32)], LABELS)
    enc = data_mod.encode(tok, ex, 32)
    prog = train.fit(m, cfg, enc, enc, LABELS, tok.pad_token_id, tmp_path, train.make_accelerator("bf16", "cpu"),
                     log=lambda *a, **k: None)
    assert prog.step == 4
    # per step: embeddings, 2 layers x (attention probs, 2 hidden, LoRA on query and value: one mask shared, except
    # in the last layer, whose query reads the first token's row only), the pooler's LoRA (head=auto), the classifier
    assert len(calls) == (4 * (1 + (4 if share else 5) + 5 + 1 + 1) if fast else 0)
    assert len(tuned) == (1 if fast else 0)                          # once per fit, on CPU, unless switched off
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert all(not torch.equal(p.detach(), start[n]) for n, p in m.named_parameters() if "lora_B" in n)
    assert m.get_base_model().config._attn_implementation == "sdpa"
    assert "forward" not in vars(m.get_base_model().bert.encoder.layer[-1])   # cls_only_last_layer put back


def test_fit_and_scoring_run_the_last_layer_for_the_first_token_only(tmp_path, tiny_bert):
    from loraclf import data as data_mod
    from loraclf import train
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    ex = data_mod.Examples([f"text number {i} " * (1 + i % 3) for i in range(16)], [i % 4 for i in range(16)], LABELS)
    enc = data_mod.encode(tok, ex, 32)
    for flag in (True, False):
        cfg = tiny_config(tiny_bert, f"scoring.cls_only_last_layer={str(flag).lower()}")
        m = model.build(cfg, LABELS)
        rows = []
        m.get_base_model().bert.encoder.layer[-1].intermediate.register_forward_hook(
            lambda mod, args, out: rows.append(out.shape[1]))
        train.fit(m, cfg, enc, enc, LABELS, tok.pad_token_id, tmp_path / str(flag), train.make_accelerator("fp32", "cpu"),
                  log=lambda *a, **k: None)
        assert rows and (set(rows) == {1}) == flag                  # training steps and validation scoring alike_frozen_weights_once_with_identical_logits(tiny_bert):
    from loraclf import data as data_mod
    from loraclf import scoring
    from transformers import AutoTokenizer
    m = model.build(tiny_config(tiny_bert), LABELS).merge_and_unload().eval()
    m.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    texts = [f"text {'word ' * (i % 9)} number {i}" for i in range(40)]
    enc = data_mod.encode(tok, data_mod.Examples(texts, None, []), 32)
    cpu = torch.device("cpu")
    per_batch = np.zeros((len(texts), len(LABELS)), np.float32)  # autocast casting the weights on every batch
    with torch.inference_mode():
        for index in data_mod.scoring_batches(enc.lengths, 8):
            batch = data_mod.collate(enc, index, tok.pad_token_id)
            with precision_mod.autocast(cpu, "bf16"):
                per_batch[index] = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        assert (scoring.predict_logits(m, enc, 8, tok.pad_token_id, cpu, "bf16") == per_batch).all()
    once = scoring.logits_for(m, tok, texts, 32, batch_size=8, precision="bf16", device=cpu, full_cast=False)
    assert (once == per_batch).all()
    assert all(p.dtype == torch.float32 for p in m.parameters())


def test_whole_model_cast_covers_every_frozen_parameter_and_restores(tiny_bert):
    m = model.build(tiny_config(tiny_bert), LABELS)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    with fastpath.frozen_weights_as(m, torch.bfloat16, whole_model=True) as n_cast:
        assert n_cast > 0
        for n, p in m.named_parameters():  # embeddings and LayerNorms too; LoRA and the head stay fp32
            assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), n
        assert any("LayerNorm" in n and not p.requires_grad for n, p in m.named_parameters())
    for n, p in m.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p.detach(), before[n]), n


def test_bf16_full_eval_scores_close_to_fp32_and_only_in_bf16(tiny_bert):
    from loraclf import scoring
    from transformers import AutoTokenizer
    torch.manual_seed(0)
    m = model.build(tiny_config(tiny_bert), LABELS).merge_and_unload().eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_bert))
    texts = [f"text {'word ' * (i % 9)} number {i}" for i in range(40)]
    cpu = torch.device("cpu")

    def score(precision, full_cast):
        return scoring.logits_for(m, tok, texts, 32, batch_size=8, precision=precision, device=cpu, full_cast=full_cast)
    fp32, autocast, whole = score("fp32", False), score("bf16", False), score("bf16", True)
    assert (score("fp32", True) == fp32).all()               # the flag changes bf16 scoring only
    assert not (whole == autocast).all()                     # the residual stream really is bf16 now
    scale = np.abs(fp32).max()
    assert np.abs(whole - fp32).max() < 0.05 * scale and np.abs(autocast - fp32).max() < 0.05 * scale
    assert all(p.dtype == torch.float32 for p in m.parameters())


# ------------------------------------------------------------------ the last layer for the first token only

def _tiny_classifier(model_type: str, attn: str, dropout: float = 0.0):
    """A random BERT-family classifier (2 layers, width 32) with LoRA on q, k, v and a trained head."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForSequenceClassification
    kw = {"embedding_size": 32} if model_type == "electra" else {}
    cfg = AutoConfig.for_model(model_type, vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, num_labels=4, hidden_dropout_prob=dropout,
                               attention_probs_dropout_prob=dropout, **kw)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_config(cfg, attn_implementation=attn)
    return get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["query", "key", "value"],
                                           modules_to_save=["classifier"], init_lora_weights=False))


def _logits_and_grads(m, cls_only, attn=None, checkpointing=False):
    ids, mask, y = _batch()
    m.zero_grad(set_to_none=True)
    m.train()
    if checkpointing:
        model.enable_gradient_checkpointing(m)
    with fastpath.cls_only_last_layer(m, cls_only) as applied, fastpath.attention(m, attn):
        logits = m(input_ids=ids, attention_mask=mask).logits
        F.cross_entropy(logits, y).backward()
    return applied, logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("model_type", ["bert", "roberta", "xlm-roberta", "camembert", "electra"])
@pytest.mark.parametrize("attn,switch", [("eager", None), ("sdpa", None), ("sdpa", fastpath.TRAIN_ATTENTION)])
def test_cls_only_last_layer_gives_the_same_logits_and_gradients(model_type, attn, switch):
    m = _tiny_classifier(model_type, attn)
    applied_off, ref_logits, ref_grads = _logits_and_grads(m, False, switch)
    applied, logits, grads = _logits_and_grads(m, True, switch)
    assert applied and not applied_off
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)   # padding in the batch: the mask's row
    for n in ref_grads:                                  # LoRA in the last layer's q (first row only), k and v too
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)
        assert ref_grads[n].abs().sum() > 0, n
    layer = m.get_base_model().base_model.encoder.layer[-1]
    assert "forward" not in vars(layer)                                     # the layer's own forward is back


def test_cls_only_last_layer_really_skips_the_other_rows_and_keeps_dropout():
    m = _tiny_classifier("roberta", "sdpa", dropout=0.1)
    layer = m.get_base_model().base_model.encoder.layer[-1]
    rows = []
    layer.intermediate.register_forward_hook(lambda mod, args, out: rows.append(out.shape[1]))
    with fastpath.cls_only_last_layer(m), fastpath.cpu_dropout():
        m.train()
        out = m(input_ids=_batch()[0], attention_mask=_batch()[1]).logits
        out.sum().backward()
    assert rows == [1] and torch.isfinite(out).all()


def test_cls_only_last_layer_projects_the_first_token_without_a_weight_copy_per_row():
    """A strided [batch, 1, hidden] slice sends nn.Linear to a batched matmul over the weight expanded (and
    copied) once per row: it cost more than the skipped rows saved. Every op's output must stay small."""
    from torch.utils._python_dispatch import TorchDispatchMode
    m = _tiny_classifier("roberta", "sdpa")
    ids, mask, _ = _batch()
    hidden = m.config.hidden_size
    shapes = []

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            shapes.extend(tuple(t.shape) for t in (out if isinstance(out, (tuple, list)) else [out])
                          if isinstance(t, torch.Tensor))
            return out

    layer = m.get_base_model().base_model.encoder.layer[-1]
    layer.attention.self.query.register_forward_pre_hook(lambda mod, args: shapes.clear())
    with torch.no_grad(), fastpath.cls_only_last_layer(m), Shapes():
        m.eval()
        m(input_ids=ids, attention_mask=mask)
    assert shapes and (ids.shape[0], hidden, hidden) not in shapes, sorted(set(shapes))


def test_cls_only_last_layer_works_under_gradient_checkpointing():
    m = _tiny_classifier("bert", "sdpa")
    _, ref_logits, ref_grads = _logits_and_grads(m, False)
    _, logits, grads = _logits_and_grads(m, True, checkpointing=True)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-6)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-4, atol=1e-6, msg=n)


def test_cls_only_last_layer_leaves_other_models_alone():
    from transformers import AutoConfig, AutoModelForSequenceClassification
    cfg = AutoConfig.for_model("distilbert", vocab_size=1000, dim=32, n_layers=2, n_heads=4, hidden_dim=64, num_labels=4)
    distil = AutoModelForSequenceClassification.from_config(cfg)   # another layer layout: runs unchanged
    with fastpath.cls_only_last_layer(distil) as applied:
        assert not applied
    m = _tiny_classifier("bert", "sdpa")
    with fastpath.cls_only_last_layer(m, enabled=False) as applied:
        assert not applied
    with fastpath.cls_only_last_layer(m) as outer, fastpath.cls_only_last_layer(m) as inner:
        assert outer and not inner                                  # nested: the outer block owns the switch
        assert "forward" in vars(m.get_base_model().bert.encoder.layer[-1])
    assert "forward" not in vars(m.get_base_model().bert.encoder.layer[-1])
