"""The budget planner: every head x targets x layers at the largest rank that fits, exact counts (`loraclf plan`)."""
import json

from conftest import LABELS, tiny_config
from loraclf import budget


def test_plan_covers_heads_layers_targets_exactly(tiny_roberta):
    cfg = tiny_config(tiny_roberta)
    rows = budget.plan(cfg, LABELS, 20_000)
    assert {r["head"] for r in rows} == {"full", "linear", "lora"}
    assert {r["layers"] for r in rows} == {"all", "1-1"}
    assert all(r["trainable"] <= 20_000 and r["largest"] for r in rows)
    for row in rows[:: max(1, len(rows) // 4)]:  # the listed counts are the real ones
        c = tiny_config(tiny_roberta, f"model.head={row['head']}", f"adapter.target_modules={row['targets']}",
                        f"adapter.layers={json.dumps(row['layer_list'])}", f"adapter.r={row['r']}")
        assert budget.count_config(c, LABELS).trainable == row["trainable"]
        bigger = tiny_config(tiny_roberta, f"model.head={row['head']}", f"adapter.target_modules={row['targets']}",
                             f"adapter.layers={json.dumps(row['layer_list'])}", f"adapter.r={row['r'] + 1}")
        assert budget.count_config(bigger, LABELS).trainable > 20_000, "not the largest rank that fits"


def test_plan_all_ranks_and_bert_dedup(tiny_bert):
    rows = budget.plan(tiny_config(tiny_bert), LABELS, 20_000, all_ranks=True)
    assert any(not r["largest"] for r in rows)
    assert "linear" not in {r["head"] for r in rows}, "BERT's head is one projection: linear == full, listed once"
