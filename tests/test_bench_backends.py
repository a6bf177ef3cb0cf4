"""bench/backends.py on a tiny trained run: every backend this machine has scores the same rows, the table has
ratios against the reference and accuracy differences, and its JSON says which backends it would offer."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import train_tiny_run

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import backends  # noqa: E402


def test_backends_table_on_a_tiny_run(tmp_path, tiny_bert, capsys):
    import importlib.util
    run = train_tiny_run(tmp_path, tiny_bert)
    words = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]
    test = tmp_path / "test.csv"
    test.write_text("label,text\n" + "".join(f"{i % 4},{words[i % 4]} {i}\n" for i in range(40)))
    out = tmp_path / "backends.json"
    assert backends.main([str(run), "--data", str(test), "--rows", "20", "--rounds", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = {r["backend"].split(" (")[0]: r for r in result["backends"]}
    assert result["rows"] == 20 and len(next(iter(rows.values()))["seconds"]) == 2
    assert "torch int8" in rows and any(k.startswith("torch ") and k != "torch int8" for k in rows)
    if importlib.util.find_spec("openvino"):
        assert any(k.startswith("openvino") for k in rows)
    reference = result["backends"][0]
    assert reference["ratio"] == 1 and reference["points"] == 0 and reference["offered"]
    for r in result["backends"]:
        assert 0 <= r["accuracy"] <= 100 and r["rows_per_s"] > 0
        assert r["offered"] == (r is reference or (r["ratio"] > 1 and r["points"] >= -0.3))
        assert f"| {r['backend']} |" in table


def test_int8_variants_table_on_a_tiny_run(tmp_path, tiny_bert, capsys):
    import int8_variants
    run = train_tiny_run(tmp_path, tiny_bert)
    test = tmp_path / "test.csv"
    test.write_text("label,text\n" + "".join(f"{i % 4},football match goal {i}\n" for i in range(12)))
    assert int8_variants.main([str(run), "--data", str(test), "--rows", "0"]) == 0
    table = capsys.readouterr().out
    assert "| fp32 | " in table and table.count("per channel |") == 2 and table.count("per tensor |") == 2
