"""bench/ceiling.py (`python bench/bench.py --levers --lever ceiling`) on a tiny random RoBERTa: the frozen linear calls a step makes,
the matmul pass that replays them, and the lever's rows."""
from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")

from loraclf import model as model_mod  # noqa: E402

from test_bench import TINY_MAX, _opts, tiny_dir  # noqa: E402,F401  (the tiny model fixture; puts bench/ on sys.path)

import ceiling  # noqa: E402
import contenders  # noqa: E402
import levers as bench_levers  # noqa: E402


@pytest.fixture
def tiny_model(tiny_dir):  # noqa: F811
    cfg = contenders.bench_config(str(tiny_dir), "loraclf", [f"data.max_length={TINY_MAX}"])
    return model_mod.build(cfg, contenders.LABELS)


def _step(model, rows=3, width=10):
    ids = torch.randint(5, 100, (rows, width))

    def step():
        model.train()
        model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.sum().backward()
    return step


def test_frozen_linear_calls_records_each_frozen_linear_and_whether_its_input_needs_a_gradient(tiny_model):
    calls = ceiling.frozen_linear_calls(tiny_model, _step(tiny_model))
    h, i = 32, 37
    per_layer = [(h, h), (h, h), (h, h), (h, h), (h, i), (i, h)]  # query, key, value, attention output, FFN up, down
    assert [(n_in, n_out) for _, n_in, n_out, _ in calls] == per_layer * 2  # LoRA A/B and the head are trainable
    assert all(rows == 30 for rows, *_ in calls)
    # layer 0's q/k/v read the embeddings, which nothing trainable precedes: autograd needs no input gradient there
    assert [g for *_, g in calls] == [False] * 3 + [True] * 9
    hooks = [m for m in tiny_model.modules() if isinstance(m, torch.nn.Linear) and m._forward_hooks]
    assert not hooks  # removed afterwards


def test_matmul_pass_replays_the_products_whole_or_in_row_halves(tiny_model):
    calls = [(40, 32, 48, True), (40, 48, 32, False), (3, 32, 32, True)]
    assert ceiling.flops(calls) == 2 * 40 * 32 * 48 * 2 + 2 * 40 * 48 * 32 + 2 * 3 * 32 * 32 * 2
    whole = ceiling.matmul_pass(calls, torch.float32)(keep=True)
    halves = ceiling.matmul_pass(calls, torch.float32, split=True)(keep=True)
    assert ceiling.matmul_pass(calls, torch.float32)() == []  # timed passes keep nothing
    assert [tuple(o.shape) for o in whole] == [(40, 48), (40, 32), (40, 32), (3, 32), (3, 32)]
    for a, b in zip(whole, halves):  # the halves fill the whole output with the same product
        torch.testing.assert_close(a, b)


def test_levers_ceiling_alone_bounds_the_step_and_scoring_by_their_matmuls(tiny_dir, agnews_dir, tmp_path):  # noqa: F811
    opts = _opts(tiny_dir, agnews_dir, tmp_path, infer_rows=16, repeats=1)
    opts.lever = "ceiling"
    lines = []
    rows = bench_levers.levers(opts, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    train = [r for r in rows if r["lever"].startswith("ceiling (") and "train" in r["lever"]]
    scoring = [r for r in rows if "scoring" in r["lever"]]
    assert [r["variant"] for r in train] == ["fit's whole step", "its frozen matmuls alone", "the same in row halves"] * 2
    ov = ["predict --backend openvino"] if importlib.util.find_spec("openvino") else []
    assert [r["variant"] for r in scoring] == ["loraclf predict's scoring", "its frozen matmuls alone",
                                               "Trainer.predict (bf16_full_eval where bf16)", *ov] * 2
    ours = [r for r in train + scoring if "Trainer" not in r["variant"] and "openvino" not in r["variant"]]
    assert all(r["fraction_of_peak"] > 0 for r in ours)
    assert sum("over Trainer.predict" in line for line in lines) == 2
    if not ov:
        assert any("OpenVINO: not installed" in line for line in lines)
