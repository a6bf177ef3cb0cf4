import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import LABELS, tiny_config
from loraclf import model
from loraclf.errors import UserError


def _one_step(m):
    torch.manual_seed(0)
    ids = torch.randint(5, 1000, (4, 12))
    out = m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    F.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()


def _lora_b_grads(m):
    return {n: p.grad for n, p in m.named_parameters() if "lora_B" in n}


def test_gradient_checkpointing_keeps_lora_gradients(tiny_model):
    cfg = tiny_config(tiny_model, "train.gradient_checkpointing=true", "adapter.target_modules=query,key,value,dense",
                      "model.head=lora")
    m = model.build(cfg, LABELS)
    m.train()
    assert m.get_base_model().is_gradient_checkpointing
    _one_step(m)
    grads = _lora_b_grads(m)
    # 2 layers x (query, key, value, attention/intermediate/output dense), + the head's dense layer
    # (BERT's pooler, RoBERTa's classifier.dense: model.head=lora adapts it)
    assert len(grads) == 2 * 6 + 1
    for name, g in grads.items():
        assert g is not None and g.abs().sum() > 0, f"{name} got no gradient"


def test_reentrant_checkpointing_is_what_starved_report_b(tiny_bert):
    """The control: the bug loraclf rules out is real, so the test above can fail."""
    cfg = tiny_config(tiny_bert, "model.head=full")  # head=lora's pooler LoRA sits outside the checkpointed layers
    m = model.build(cfg, LABELS)
    base = m.get_base_model()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    if hasattr(base, "_require_grads_hook"):  # newer transformers patch this case; report B had frozen inputs
        base.disable_input_require_grads()
    m.train()
    _one_step(m)
    assert all(g is None or g.abs().sum() == 0 for g in _lora_b_grads(m).values())


def test_checkpointed_and_plain_gradients_match(tiny_bert):
    cfg = tiny_config(tiny_bert, "train.gradient_checkpointing=true")
    a = model.build(cfg, LABELS)
    b = model.build(tiny_config(tiny_bert), LABELS)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.train()
        _one_step(m)
    ga, gb = _lora_b_grads(a), _lora_b_grads(b)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-6, rtol=1e-4)


def _trained_run(tmp_path, model_dir, csv, *overrides):
    from loraclf import pipeline
    cfg = tiny_config(model_dir, "train.epochs=2", *overrides)
    out = tmp_path / "run"
    pipeline.train_run(cfg, [str(csv)], out, log=lambda *a, **k: None)
    return out, cfg


@pytest.mark.parametrize("head", ["full", "linear", "lora"])
def test_save_load_fresh_process_identical_logits_with_head(tmp_path, tiny_model, small_csv, head):
    out, cfg = _trained_run(tmp_path, tiny_model, small_csv, f"model.head={head}")
    m, _, _ = model.load_run_model(out)
    head = [p for n, p in m.named_parameters() if "modules_to_save" in n and n.endswith("weight")][-1]
    fresh = model.load_base(cfg, LABELS)
    fresh_head = [p for n, p in fresh.named_parameters() if n.split(".")[0] in ("classifier", "score") and n.endswith("weight")][-1]
    assert not torch.equal(head, fresh_head), "the head was not trained"
    if cfg.model.head == "lora":
        dense, _ = model.head_parts(fresh)
        lora_b = [p for n, p in m.named_parameters() if n.split(".lora_B")[0].endswith(dense) and ".lora_B." in n]
        assert lora_b and all(p.abs().sum() > 0 for p in lora_b), "the head's LoRA was not trained"
    ids = torch.randint(5, 1000, (3, 10))
    with torch.no_grad():
        here = m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
    np.save(tmp_path / "ids.npy", ids.numpy())
    script = f"""
import numpy as np, torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification
ids = torch.from_numpy(np.load({str(tmp_path / 'ids.npy')!r}))
for attn in ("eager", "sdpa"):  # the run loads with sdpa (auto), as plain loading does
    base = AutoModelForSequenceClassification.from_pretrained({str(tiny_model)!r}, num_labels=4, attn_implementation=attn)
    if {cfg.model.head == "lora"}:  # the head's frozen dense was freshly initialised; its weights are saved
        from safetensors.torch import load_file
        from loraclf.model import HEAD_DENSE_FILE, head_parts
        dense = {str(out / "adapter")!r} + "/" + HEAD_DENSE_FILE
        base.get_submodule(head_parts(base)[0]).load_state_dict(load_file(dense))
    m = PeftModel.from_pretrained(base, {str(out / 'adapter')!r}).eval()
    with torch.no_grad():
        np.save({str(tmp_path)!r} + f"/there-{{attn}}.npy", m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy())
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert m.get_base_model().config._attn_implementation == "sdpa"
    np.testing.assert_array_equal(here, np.load(tmp_path / "there-sdpa.npy"))
    np.testing.assert_allclose(here, np.load(tmp_path / "there-eager.npy"), atol=1e-6)


def test_merged_equals_unmerged(tmp_path, tiny_bert, small_csv):
    out, _ = _trained_run(tmp_path, tiny_bert, small_csv, "adapter.target_modules=query,key,value,dense")
    unmerged, _, _ = model.load_run_model(out)
    merged, _, _ = model.load_run_model(out, merged=True)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.randint(5, 1000, (5, 17))
    with torch.no_grad():
        a = unmerged(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        b = merged(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", ["dora", "rslora", "vera", "ia3"])
def test_variants_reload_with_identical_logits(tmp_path, tiny_bert, small_csv, method):
    from loraclf import pipeline
    cfg = tiny_config(tiny_bert, f"adapter.method={method}", "train.epochs=2")
    out = tmp_path / "run"
    pipeline.train_run(cfg, [str(small_csv)], out, log=lambda *a, **k: None)
    ids = torch.randint(5, 1000, (3, 9))
    with torch.no_grad():
        merged, _, _ = model.load_run_model(out, merged=True)
        plain, _, _ = model.load_run_model(out)
        a = plain(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        b = merged(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["budget"]["trainable"] == json.loads((out / "budget.json").read_text())["trainable"]


def test_run_directory_contract(tmp_path, tiny_bert, small_csv):
    out, cfg = _trained_run(tmp_path, tiny_bert, small_csv)
    for name in ("config.json", "labels.json", "budget.json", "metrics.jsonl", "metrics.json", "adapter", "tokenizer"):
        assert (out / name).exists(), name
    assert not [p for p in out.rglob("*.tmp")]
    saved = json.loads((out / "config.json").read_text())
    assert saved["format_version"] == 1 and saved["adapter"]["r"] == cfg.adapter.r
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["budget"]["trainable"] == json.loads((out / "budget.json").read_text())["trainable"]
    records = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_accuracy" in r for r in records)


def test_missing_model_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot load model config"):
        model.load_base(tiny_config(tmp_path / "nowhere"), LABELS)


@pytest.mark.parametrize("head", ["full", "lora"])
def test_pissa_counts_trains_and_reloads_identically_in_a_fresh_process(tmp_path, tiny_model, small_csv, head):
    from loraclf import budget
    cfg = tiny_config(tiny_model, "adapter.init=pissa", f"model.head={head}")
    built = model.build(cfg, LABELS)
    assert budget.count_config(cfg, LABELS).trainable == sum(p.numel() for p in built.parameters() if p.requires_grad)
    lora_b = [p for n, p in built.named_parameters() if "lora_B" in n]
    assert all(p.abs().sum() > 0 for p in lora_b), "PiSSA initialises B from the singular vectors, not zeros"
    out, _ = _trained_run(tmp_path, tiny_model, small_csv, "adapter.init=pissa", f"model.head={head}")
    ids = torch.randint(5, 1000, (3, 10))
    np.save(tmp_path / "ids.npy", ids.numpy())
    script = f"""
import numpy as np, torch
from loraclf import model
ids = torch.from_numpy(np.load({str(tmp_path / 'ids.npy')!r}))
for merged in (False, True):
    m, _, _ = model.load_run_model({str(out)!r}, merged=merged)
    with torch.no_grad():
        np.save({str(tmp_path)!r} + f"/pissa-{{merged}}.npy", m(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy())
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    here, _, _ = model.load_run_model(out)
    with torch.no_grad():
        expected = here(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.numpy()
    np.testing.assert_array_equal(expected, np.load(tmp_path / "pissa-False.npy"))
    np.testing.assert_allclose(expected, np.load(tmp_path / "pissa-True.npy"), atol=1e-5)


def test_pissa_refuses_non_lora_methods(tiny_bert):
    with pytest.raises(UserError, match="adapter.init=pissa"):
        model.build(tiny_config(tiny_bert, "adapter.init=pissa", "adapter.method=vera"), LABELS)
