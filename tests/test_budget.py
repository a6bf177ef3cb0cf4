"""The budget is exact: the meta-device count, the closed form and the real build agree."""
import pytest

from conftest import LABELS, tiny_config
from loraclf import budget, model
from loraclf.errors import UserError

CASES = [
    ("lora", 4, "query,value", "[]", "none"),
    ("lora", 8, "query,key,value", "[]", "none"),
    ("lora", 3, "query,key,value,dense", "[1]", "none"),
    ("lora", 2, "dense", "[]", "lora_only"),
    ("lora", 5, "query,value", "[0]", "all"),
    ("rslora", 4, "query,value", "[]", "none"),
    ("dora", 4, "query,value", "[]", "none"),
    ("vera", 4, "query,value", "[]", "none"),
    ("ia3", 1, "query,value,dense", "[]", "none"),
]


@pytest.mark.parametrize("method,r,targets,layers,bias", CASES)
def test_meta_count_equals_real_count_and_closed_form(tiny_model, method, r, targets, layers, bias):
    cfg = tiny_config(tiny_model, f"adapter.method={method}", f"adapter.r={r}", f"adapter.target_modules={targets}",
                      f"adapter.layers={layers}", f"adapter.bias={bias}")
    planned = budget.count_config(cfg, LABELS)
    built = budget.count(model.build(cfg, LABELS))
    assert planned == built
    real = sum(p.numel() for p in model.build(cfg, LABELS).parameters() if p.requires_grad)
    assert planned.trainable == real == sum(planned.groups.values())
    if bias == "none" and method not in ("vera", "ia3"):
        fixed, step = budget.per_rank(cfg, LABELS)
        assert fixed + r * step == planned.trainable


@pytest.mark.parametrize("head", ["full", "linear", "lora"])
@pytest.mark.parametrize("method,layers", [("lora", "[]"), ("dora", "[1]"), ("rslora", "[0]")])
def test_head_strategies_count_exactly(tiny_model, head, method, layers):
    cfg = tiny_config(tiny_model, f"model.head={head}", f"adapter.method={method}", f"adapter.layers={layers}")
    planned = budget.count_config(cfg, LABELS)
    built = model.build(cfg, LABELS)
    assert planned.trainable == sum(p.numel() for p in built.parameters() if p.requires_grad)
    if head == "lora":  # LoRA on the head's dense, never on encoder layers that adapter.layers excludes
        dense, _ = model.head_parts(model.load_base(cfg, LABELS, meta=True))
        adapted = {n.split(".lora_A")[0] for n, _ in built.named_parameters() if ".lora_A." in n}
        assert any(a.endswith(dense) for a in adapted)
        if layers != "[]":
            assert all(f".{layers[1]}." in a for a in adapted if not a.endswith(dense))
        fixed, step = budget.per_rank(cfg, LABELS)
        assert fixed + 4 * step == planned.trainable


def test_roberta_head_strategy_counts(roberta_dir):
    from loraclf import config
    counts = {}
    for head in ("full", "linear", "lora"):
        cfg = config.load("agnews-a", None, [f"model.name={roberta_dir}", "model.init=random", f"model.head={head}"])
        counts[head] = budget.count_config(cfg, LABELS).groups["head"]
    # full: dense 768x768+768 and out_proj 768x4+4; linear: out_proj; lora: r=6 on dense + out_proj
    assert counts == {"full": 593_668, "linear": 3_076, "lora": 6 * (768 + 768) + 3_076}


def test_head_lora_refuses_non_lora_methods(tiny_bert):
    with pytest.raises(UserError, match="needs a LoRA-family adapter"):
        budget.count_config(tiny_config(tiny_bert, "model.head=lora", "adapter.method=ia3"), LABELS)


def test_roberta_base_reports_exact_counts(roberta_dir):
    from loraclf import config
    a = config.load("agnews-a", overrides=[f"model.name={roberta_dir}"])
    b = config.load("agnews-b", overrides=[f"model.name={roberta_dir}"])
    ca, cb = budget.count_config(a, LABELS), budget.count_config(b, LABELS)
    assert (ca.trainable, ca.total) == (925_444, 125_574_152)
    assert round(ca.percent, 3) == 0.737
    assert cb.trainable == 741_124
    assert ca.groups == {"lora:key": 110_592, "lora:query": 110_592, "lora:value": 110_592, "head": 593_668}


def test_agnews_1m_preset_spends_the_million_on_every_encoder_linear(roberta_dir):
    from loraclf import config
    cfg = config.load("agnews-1m", overrides=[f"model.name={roberta_dir}"])
    b = budget.count_config(cfg, LABELS)
    # r=2 on the 6 linears of each of 12 layers: 4 x 2 x (768 + 768) + 2 x 2 x (768 + 3072) = 27,648 a layer
    assert b.trainable == 925_444 <= cfg.budget.max_trainable == 1_000_000
    # the three dense layers (attention output 2 x 1,536, feed-forward 2 x 3,840 twice) share one group
    assert b.groups == {"lora:dense": 12 * (3_072 + 7_680 + 7_680), "lora:key": 36_864, "lora:query": 36_864,
                        "lora:value": 36_864, "head": 593_668}
    base = model.load_base(cfg, LABELS, meta=True)
    adapted = {n.rsplit(".", 1)[0] for n, _ in model.attach(cfg, base).named_parameters() if "lora_A" in n}
    assert len(adapted) == 12 * 6 and not any("classifier" in n for n in adapted)  # the head trains in full
    assert budget.max_rank(cfg, LABELS, 1_000_000) == 2  # the largest rank that fits is the one used


@pytest.mark.parametrize("method,limit,head", [
    ("lora", 10_000_000, "full"), ("dora", 1_000_000, "full"),  # RoBERTa's head dense is new: trained in full...
    ("lora", 800_000, "lora"),                                   # ...unless the run then exceeds the budget
    ("ia3", 10_000_000, "full"), ("vera", 10_000_000, "full")])  # not LoRA-family: nothing else applies
def test_head_auto_trains_a_new_dense_in_full_where_it_fits(roberta_dir, method, limit, head):
    from loraclf import config
    cfg = config.load(None, None, [f"model.name={roberta_dir}", "model.init=random", f"adapter.method={method}",
                                   "adapter.target_modules=query,value", "adapter.r=8", f"budget.max_trainable={limit}"])
    assert cfg.model.head == "auto"
    base = model.load_base(cfg, LABELS, meta=True)
    assert not model.head_dense_is_pretrained(base)
    assert model.resolve_head(cfg, base) == head and cfg.model.head == head  # the saved config names it
    assert budget.count_config(cfg, LABELS).trainable <= limit or method not in model.LORA_FAMILY


def test_head_auto_adapts_a_pretrained_pooler(tiny_bert):
    """BERT's head dense is the encoder's pretrained pooler, which `full` leaves frozen: auto adapts it."""
    cfg = tiny_config(tiny_bert)
    assert cfg.model.head == "auto"
    base = model.load_base(cfg, LABELS, meta=True)
    assert model.head_dense_is_pretrained(base)
    assert model.resolve_head(cfg, base) == "lora"


def test_over_budget_is_refused_with_breakdown_and_largest_rank(roberta_dir):
    from loraclf import config
    cfg = config.load("agnews-a", overrides=[f"model.name={roberta_dir}", "adapter.r=16"])
    with pytest.raises(UserError) as e:
        budget.check(cfg, LABELS)
    msg = str(e.value)
    assert "exceed the budget of 1,000,000" in msg and "head" in msg and "593,668" in msg
    assert "largest rank that fits is r=7" in msg and "\n" not in msg  # one line
    assert budget.count_config(config.load("agnews-a", overrides=[f"model.name={roberta_dir}", "adapter.r=7"]),
                               LABELS).trainable <= 1_000_000


def test_linear_head_trains_only_the_final_projection(roberta_dir):
    from loraclf import config
    cfg = config.load("agnews-a", overrides=[f"model.name={roberta_dir}", "model.head=linear", "adapter.r=16"])
    b = budget.count_config(cfg, LABELS)
    assert b.groups["head"] == 768 * 4 + 4
    assert b.trainable == 12 * 3 * 16 * (768 + 768) + 3076 <= 1_000_000


def test_unknown_target_lists_linear_modules(tiny_bert):
    cfg = tiny_config(tiny_bert, "adapter.target_modules=query,q_proj")
    with pytest.raises(UserError) as e:
        budget.count_config(cfg, LABELS)
    assert "'q_proj' matches no linear module" in str(e.value)
    assert "query, key, value, dense" in str(e.value)


def test_layer_out_of_range(tiny_bert):
    with pytest.raises(UserError, match="out of range: the model has 2 layers"):
        budget.count_config(tiny_config(tiny_bert, "adapter.layers=[5]"), LABELS)


def test_plan_lists_options_within_budget(tiny_bert):
    cfg = tiny_config(tiny_bert)
    rows = budget.plan(cfg, LABELS, 20_000)
    assert rows and all(r["trainable"] <= 20_000 for r in rows)
    assert any(r.get("largest") for r in rows)
