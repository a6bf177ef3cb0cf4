"""Caching the frozen lower layers' outputs (layercache.py, train.cache_frozen_layers)."""
import contextlib

import pytest
import torch
from transformers import AutoTokenizer

from conftest import LABELS, tiny_config
from loraclf import data, fastpath, layercache, model, pipeline
from loraclf.errors import UserError

TEXTS = ["hello world this is a test", "short", "a much longer text with many many words in it to pad the others",
         "mid size text here", "one more", "and the last of them, of middling length"]


def _model_and_rows(model_dir, *overrides):
    m = model.build(tiny_config(model_dir, "model.encoder_dropout=0", *overrides), LABELS)
    torch.manual_seed(1)
    with torch.no_grad():  # lora_B starts at zero; random values make every LoRA gradient non-trivial
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return m, data.Encoded([tok(t)["input_ids"] for t in TEXTS], list(range(len(TEXTS)))), tok.pad_token_id


def _kept(m, k, enc, pad, batch_size=4):
    """A cache filled by forwards over the rows in batches (as the first epoch's training forwards fill it)."""
    cache = layercache.FrozenLayerCache(m, k, enc.lengths)
    for start in range(0, len(enc), batch_size):
        index = list(range(start, min(start + batch_size, len(enc))))
        batch = data.collate(enc, index, pad)
        with torch.no_grad(), cache.forward_for(index, batch["input_ids"].shape[1], torch.device("cpu")):
            m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert cache.kept.all()
    return cache


def _logits_and_grads(m, batch, feed):
    m.zero_grad()
    with feed:
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits.pow(2).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("head_only", [False, True])
@pytest.mark.parametrize("cls_only", [False, True])
def test_a_forward_from_the_cache_gives_the_same_logits_and_gradients(tiny_model, head_only, cls_only):
    m, enc, pad = _model_and_rows(tiny_model, "adapter.layers=1")
    if head_only:  # only the head trains: both layers are cached
        for n, p in m.named_parameters():
            if ".layer." in n:
                p.requires_grad_(False)
    k = layercache.plan(m, "auto", int(enc.lengths.sum()))
    assert k == (2 if head_only else 1)
    with fastpath.cls_only_last_layer(m, cls_only):
        m.train()
        cache = _kept(m, k, enc, pad)
        index = [2, 0, 5, 1]
        batch = data.collate(enc, index, pad)
        plain = _logits_and_grads(m, batch, contextlib.nullcontext())
        cached = _logits_and_grads(m, batch, cache.feeding(index, batch["input_ids"].shape[1], torch.device("cpu")))
    torch.testing.assert_close(cached[0], plain[0], rtol=1e-5, atol=1e-6)
    assert plain[1].keys() == cached[1].keys() and len(plain[1]) >= 2
    for name, g in plain[1].items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(cached[1][name], g, rtol=1e-5, atol=1e-6)
    base = fastpath.transformers_model(m)
    body = getattr(base, base.base_model_prefix)
    assert all("forward" not in vars(mod) for mod in [body.embeddings, *body.encoder.layer])  # all put back
    # the last layer computes one row where it is cached under cls_only_last_layer: one row kept per text
    assert cache.stored.tolist() == ([1] * len(TEXTS) if head_only and cls_only else enc.lengths.tolist())


def test_a_forward_from_the_cache_really_skips_the_lower_layers(tiny_bert):
    m, enc, pad = _model_and_rows(tiny_bert, "adapter.layers=1")
    cache = _kept(m, 1, enc, pad)
    body = fastpath.transformers_model(m).bert
    calls = []
    hooks = [mod.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(mod), with_kwargs=True)
             for mod in (body.embeddings.word_embeddings, body.encoder.layer[0].attention.self.query)]
    batch = data.collate(enc, [0, 1], pad)
    with cache.feeding([0, 1], batch["input_ids"].shape[1], torch.device("cpu")):
        m(**{k: batch[k] for k in ("input_ids", "attention_mask")})
    assert calls == []
    m(**{k: batch[k] for k in ("input_ids", "attention_mask")})
    assert len(calls) == 2
    for h in hooks:
        h.remove()


def test_a_batch_starts_at_layer_k_only_when_all_its_rows_are_kept(tiny_bert):
    m, enc, pad = _model_and_rows(tiny_bert, "adapter.layers=1")
    cache = layercache.FrozenLayerCache(m, 1, enc.lengths)
    assert cache.nbytes == 0
    batch = data.collate(enc, [0, 2], pad)
    with torch.no_grad():
        with cache.forward_for([0, 2], batch["input_ids"].shape[1], torch.device("cpu")):   # keeps rows 0 and 2
            first = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        assert cache.kept.tolist() == [True, False, True, False, False, False]
        assert cache.nbytes == int(enc.lengths.sum()) * 32 * 4      # fp32, allocated for every row at once
        with cache.forward_for([2, 0], batch["input_ids"].shape[1], torch.device("cpu")):   # starts at layer 1
            again = m(input_ids=batch["input_ids"][[1, 0]], attention_mask=batch["attention_mask"][[1, 0]]).logits
        with cache.forward_for([0, 1], batch["input_ids"].shape[1], torch.device("cpu")):
            pass
    torch.testing.assert_close(again, first[[1, 0]], rtol=1e-5, atol=1e-6)
    assert cache.kept.tolist() == [True, False, True, False, False, False]  # no forward ran: nothing new kept


def test_plan_caches_only_where_it_changes_nothing_but_rounding(tiny_roberta):
    m, enc, _ = _model_and_rows(tiny_roberta, "adapter.layers=1")
    n = int(enc.lengths.sum())
    assert layercache.plan(m, "off", n) == 0
    assert layercache.plan(m, "on", n) == 1
    assert layercache.plan(m, "auto", n, world=2) == 0
    with pytest.raises(UserError, match="single process"):
        layercache.plan(m, "on", n, world=2)
    every_layer, _, _ = _model_and_rows(tiny_roberta)
    assert layercache.plan(every_layer, "auto", n) == 0
    with pytest.raises(UserError, match="adapter.layers"):
        layercache.plan(every_layer, "on", n)
    with pytest.raises(UserError, match="BERT-family"):
        layercache.plan(torch.nn.Linear(2, 2), "on", n)
    assert layercache.plan(torch.nn.Linear(2, 2), "auto", n) == 0


def test_plan_leaves_dropout_alone_unless_told(tiny_roberta):
    m = model.build(tiny_config(tiny_roberta, "adapter.layers=1", "model.encoder_dropout=0.1"), LABELS)
    notes = []
    assert layercache.plan(m, "auto", 100, log=notes.append) == 0
    assert "recomputed every epoch because they have dropout" in notes[0]
    assert layercache.plan(m, "on", 100, log=notes.append) == 1
    assert "without their dropout" in notes[1]


def test_plan_keeps_the_cache_within_the_memory_there_is(tiny_roberta, monkeypatch):
    m, _, _ = _model_and_rows(tiny_roberta, "adapter.layers=1")
    per_token = 32 * 4                                           # hidden 32, fp32
    monkeypatch.setattr(layercache, "memory_bytes", lambda: (1 << 30, 1 << 20))   # 1 GiB, of which 1 MiB available
    notes = []
    assert layercache.plan(m, "auto", (1 << 19) // per_token, log=notes.append) == 1       # half of the available
    assert layercache.plan(m, "auto", (1 << 19) // per_token + 1, log=notes.append) == 0
    assert "recomputed every epoch" in notes[-1] and "GiB allowed here" in notes[-1]
    with pytest.raises(UserError, match="data.max_train_samples"):
        layercache.plan(m, "on", (1 << 19) // per_token + 1)
    monkeypatch.setattr(layercache, "memory_bytes", lambda: (1 << 22, 1 << 22))   # 4 MiB, all available
    assert layercache.plan(m, "auto", (1 << 20) // per_token) == 1                       # a quarter of the total
    assert layercache.plan(m, "auto", (1 << 20) // per_token + 1) == 0
    assert layercache.plan(m, "on", (1 << 21) // per_token) == 1                         # on: half of the available
    monkeypatch.setattr(layercache, "memory_bytes", lambda: (None, None))           # unknown: no limit
    assert layercache.plan(m, "auto", 1 << 40) == 1


def test_memory_bytes_reads_this_machine():
    total, available = layercache.memory_bytes()
    assert total is None or 0 < available <= total


def _train(tmp_path, model_dir, name, *overrides):
    words = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]
    train = tmp_path / "train.csv"
    train.write_text("label,text\n" + "".join(f"{i % 4},{words[i % 4]} {'more ' * (i % 5)}{i}\n" for i in range(48)))
    lines = []
    cfg = tiny_config(model_dir, "train.epochs=2", "model.encoder_dropout=0", "adapter.layers=1", "train.precision=fp32",
                      *overrides)
    pipeline.train_run(cfg, [str(train)], tmp_path / name, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    from safetensors.torch import load_file
    return load_file(str(next((tmp_path / name).rglob("adapter_model.safetensors")))), lines


@pytest.mark.parametrize("checkpointing", [False, True])
def test_fit_with_the_cache_trains_as_without_it(tmp_path, tiny_roberta, monkeypatch, checkpointing):
    flag = f"train.gradient_checkpointing={str(checkpointing).lower()}"
    calls = {"keeping": 0, "feeding": 0}
    for name in calls:
        original = getattr(layercache.FrozenLayerCache, name)

        def counted(self, *a, _name=name, _original=original, **kw):
            calls[_name] += 1
            return _original(self, *a, **kw)
        monkeypatch.setattr(layercache.FrozenLayerCache, name, counted)
    cached, log_cached = _train(tmp_path, tiny_roberta, "cached", flag)
    assert calls["keeping"] == calls["feeding"] > 0    # epoch 1 keeps each batch's rows, epoch 2 starts at layer 1
    plain, log_plain = _train(tmp_path, tiny_roberta, "plain", flag, "train.cache_frozen_layers=off")
    assert calls["keeping"] == calls["feeding"]
    assert any("frozen layers 0-0: their outputs are kept" in line for line in log_cached)
    assert not any("are kept" in line for line in log_plain)
    assert cached.keys() == plain.keys() and cached
    for name, w in plain.items():  # 2 epochs of AdamW from the same seed: the same weights up to rounding
        torch.testing.assert_close(cached[name], w, rtol=1e-4, atol=1e-5)


def test_train_refuses_on_where_it_cannot_cache_before_writing_the_run(tmp_path, tiny_roberta):
    train = tmp_path / "train.csv"
    train.write_text("label,text\n" + "".join(f"{i % 4},text number {i}\n" for i in range(24)))
    cfg = tiny_config(tiny_roberta, "model.encoder_dropout=0", "train.cache_frozen_layers=on")   # every layer adapted
    with pytest.raises(UserError, match="adapter.layers"):
        pipeline.train_run(cfg, [str(train)], tmp_path / "run", log=lambda *a, **k: None)
    assert not (tmp_path / "run" / "config.json").exists()


def test_cache_frozen_layers_is_a_checked_choice(tiny_roberta):
    with pytest.raises(UserError, match="cache_frozen_layers"):
        tiny_config(tiny_roberta, "train.cache_frozen_layers=yes")
