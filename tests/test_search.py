"""The budget planner's search space and `plan --sweep` (successive halving) on a tiny model."""
import json

from conftest import LABELS, tiny_config
from loraclf import budget, cli, config, search


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


def test_sweep_halves_to_one_and_writes_a_usable_config(tmp_path, tiny_bert, capsys):
    words = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]
    train = tmp_path / "train.csv"
    train.write_text("label,text\n" + "".join(f"{LABELS[i % 4]},{words[i % 4]} item {i}\n" for i in range(160)))
    out = tmp_path / "sweep"
    args = ["plan", "--sweep", "4", "--data", str(train), "--out", str(out), "--sweep-rows", "40", "--sweep-val-rows", "40",
            "--budget", "20000", "--set", f"model.name={tiny_bert}", "--set", "data.max_length=32",
            "--set", "train.batch_size=8", "--set", "train.lr=5e-3"]
    assert cli.main(args) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert [len(r["scores"]) for r in result["rounds"]] == [4, 2]
    assert [r["rows"] for r in result["rounds"]] == [40, 80]
    for r in result["rounds"]:
        accs = [s["accuracy"] for s in r["scores"]]
        assert accs == sorted(accs, reverse=True)
    assert result["best"] == result["rounds"][-1]["scores"][0]["name"]
    assert (out / "round-0" / result["best"] / "metrics.json").is_file()
    best = config.load(None, str(out / "best-config.json"))
    assert budget.count_config(best, LABELS).trainable <= 20_000
    assert "best:" in capsys.readouterr().out


def test_sweep_needs_data_and_enough_rows(tmp_path, tiny_bert, capsys):
    assert cli.main(["plan", "--sweep", "4", "--set", f"model.name={tiny_bert}"]) == 2
    assert "needs --data" in capsys.readouterr().err
    small = tmp_path / "small.csv"
    small.write_text("label,text\n" + "".join(f"{LABELS[i % 4]},text {i}\n" for i in range(20)))
    assert cli.main(["plan", "--sweep", "4", "--data", str(small), "--set", f"model.name={tiny_bert}",
                     "--out", str(tmp_path / "s")]) == 2
    assert "too few" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_candidates_are_the_planners_largest_ranks(tiny_bert):
    cfg = tiny_config(tiny_bert, "budget.max_trainable=20000")
    cands = search.candidates(cfg, LABELS, 3)
    assert len(cands) == 3 and all(c.adapter.alpha == 2 * c.adapter.r for _, c in cands)
