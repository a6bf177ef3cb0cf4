"""Sentence pairs (data.text_columns = [a, b]): the tokenizer's pair input, in train, evaluate, predict, serve and
both exports, from every table format; wrong shapes are one-line errors."""
import csv
import json
import pickle

import numpy as np
import pytest

from conftest import LABELS, tiny_config
from loraclf import budget, cli, data, export, longtext, pipeline, predict, scoring, serve
from loraclf.errors import UserError

WORDS = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]


def _pair_rows(n: int, start: int = 0) -> list[dict]:
    """Rows whose class is the second text's keyword, with a first text of another class's words."""
    return [{"id": f"r{i}", "premise": f"{WORDS[(i + 1) % 4]} report {i}", "hypothesis": f"{WORDS[i % 4]} {i}",
             "label": i % 4} for i in range(start, start + n)]


def _write(path, rows, fmt: str):
    import pandas as pd
    df = pd.DataFrame(rows)
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    elif fmt == "parquet":
        df.to_parquet(path)
    else:
        import datasets
        with open(path, "wb") as f:
            pickle.dump(datasets.Dataset.from_pandas(df), f)
    return path


@pytest.fixture(scope="module", params=["bert", "roberta"])
def pair_run(request, tmp_path_factory):
    model = request.getfixturevalue(f"tiny_{request.param}")
    tmp = tmp_path_factory.mktemp(f"pairs-{request.param}")
    train = _write(tmp / "train.csv", _pair_rows(48), "csv")
    test = _write(tmp / "test.csv", _pair_rows(12, 100), "csv")
    cfg = tiny_config(model, "data.text_columns=premise,hypothesis", "train.epochs=2")
    result = pipeline.train_run(cfg, [str(train)], tmp / "run", test_data=[str(test)], log=lambda *a, **k: None)
    return {"kind": request.param, "model": model, "run": tmp / "run", "test": test, "result": result, "tmp": tmp}


# ------------------------------------------------------------------------------------------ encoding

@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet", "pkl"])
def test_every_table_format_reads_pairs_in_order(tmp_path, fmt):
    rows = _pair_rows(6)
    ex = data.load(_write(tmp_path / f"d.{fmt}", rows, fmt), text_columns=["premise", "hypothesis"])
    assert ex.texts == [(r["premise"], r["hypothesis"]) for r in rows] and ex.labels == [r["label"] for r in rows]


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_pairs_are_the_tokenizers_pair_input_cut_longest_first(request, kind):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(request.getfixturevalue(f"tiny_{kind}")))
    pairs = [("a short premise", "word " * 80), ("one two", "three")]
    enc = longtext.encode(tok, data.Examples(pairs, None, []), 24)
    want = tok([a for a, _ in pairs], [b for _, b in pairs], truncation="longest_first", max_length=24)
    assert enc.input_ids == want["input_ids"] and enc.longer == 1
    if "token_type_ids" in tok.model_input_names:  # BERT marks the second segment; RoBERTa has no segments
        assert enc.token_type_ids == want["token_type_ids"] and 1 in enc.token_type_ids[0]
    else:
        assert enc.token_type_ids is None


# ------------------------------------------------------------------------------------------ end to end

def test_pair_run_counts_its_budget_exactly_and_records_the_columns(pair_run):
    run = pair_run["run"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["text_columns"] == ["premise", "hypothesis"]
    planned = budget.check(tiny_config(pair_run["model"], "data.text_columns=premise,hypothesis"), list(LABELS))
    assert json.loads((run / "budget.json").read_text())["trainable"] == planned.trainable
    assert pair_run["result"]["long_text"]["train"]["rows"] == 38  # 48 rows less the 20% validation


def test_pair_run_evaluates_and_predicts_the_same_logits_after_reload(pair_run, tmp_path, capsys):
    run, test = pair_run["run"], pair_run["test"]
    with open(run / "predictions.csv", newline="") as f:  # scored by the model in memory, before saving
        rows = list(csv.DictReader(f))
    in_memory = np.array([[float(r[f"p_{n}"]) for n in LABELS] for r in rows])
    assert cli.main(["predict", str(run), str(test), "-o", str(tmp_path / "s.csv"), "--probs"]) == 0
    assert "0.0% of rows (0 of 12) are longer than 32 tokens" in capsys.readouterr().out
    with open(tmp_path / "s.csv", newline="") as f:
        sub = list(csv.DictReader(f))
    assert [r["ID"] for r in sub] == [f"r{i}" for i in range(100, 112)]
    reloaded = np.array([[float(r[f"p_{n}"]) for n in LABELS] for r in sub])
    np.testing.assert_allclose(reloaded, in_memory, atol=1e-4)
    m = pipeline.evaluate_run(run, [str(test)])
    assert m["n"] == 12 and m["accuracy"] == pair_run["result"]["test"]["accuracy"]


def test_predict_takes_the_two_columns_on_the_command_line(pair_run, tmp_path):
    rows = [{"a": r["premise"], "b": r["hypothesis"]} for r in _pair_rows(5, 100)]
    src = _write(tmp_path / "other.jsonl", rows, "jsonl")
    renamed = predict.write_predictions(pair_run["run"], str(src), tmp_path / "x.csv", text_column=["a", "b"])
    usual = predict.write_predictions(pair_run["run"], str(pair_run["test"]), tmp_path / "y.csv")
    np.testing.assert_allclose(renamed["logits"], usual["logits"][:5], atol=1e-6)


def test_serve_takes_pairs_and_refuses_single_texts(pair_run):
    from fastapi.testclient import TestClient
    predictor = scoring.load_predictor(pair_run["run"], precision="fp32").load()
    rows = _pair_rows(3, 100)
    want = predictor.logits([(r["premise"], r["hypothesis"]) for r in rows]).argmax(-1).tolist()
    with TestClient(serve.create_app(predictor, max_wait_ms=0), raise_server_exceptions=False) as c:
        r = c.post("/predict", json={"texts": [[r["premise"], r["hypothesis"]] for r in rows]})
        assert r.status_code == 200 and r.json()["labels"] == want
        for bad in (["just one text"], [["only one"]], [["a", "b", "c"]], [["a", 1]]):
            r = c.post("/predict", json={"texts": bad})
            assert r.status_code == 422 and ("pair" in r.json()["error"] or "string" in r.json()["error"])
        assert c.get("/info").json()["text_columns"] == ["premise", "hypothesis"]


def test_cached_frozen_layers_train_pairs_as_without_the_cache(tiny_bert, tmp_path):
    """The frozen-layer cache keeps what the embeddings made of the segments (token_type_ids) in epoch 1."""
    import torch
    from safetensors.torch import load_file
    train = _write(tmp_path / "train.csv", _pair_rows(32), "csv")
    weights = {}
    for cache in ("on", "off"):
        lines = []
        cfg = tiny_config(tiny_bert, "data.text_columns=premise,hypothesis", "train.epochs=2", "model.encoder_dropout=0",
                          "adapter.layers=1", "train.precision=fp32", f"train.cache_frozen_layers={cache}")
        pipeline.train_run(cfg, [str(train)], tmp_path / cache, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
        assert any("are kept" in line for line in lines) == (cache == "on")
        weights[cache] = load_file(str(next((tmp_path / cache).rglob("adapter_model.safetensors"))))
    for name, w in weights["off"].items():
        torch.testing.assert_close(weights["on"][name], w, rtol=1e-4, atol=1e-5)


def test_single_text_server_refuses_pairs(tiny_bert):
    p = scoring.Predictor(list(LABELS), {}, {"text_columns": ["text"]}, lambda: lambda texts: np.zeros((len(texts), 4)))
    with pytest.raises(serve.RequestError, match="one text per row"):
        serve.parse_request(b'{"texts": [["a", "b"]]}', 8, 100, p.pairs)


@pytest.mark.slow
def test_exports_score_pairs_as_the_run_does(pair_run, tmp_path):
    pytest.importorskip("onnxruntime")
    run = pair_run["run"]
    out = export.export_run(run, tmp_path / "merged", tmp_path / "onnx")
    pairs = [(r["premise"], r["hypothesis"] + " extra words" * (i % 3)) for i, r in enumerate(_pair_rows(9, 200))]
    ref = scoring.load_predictor(run, precision="fp32").logits(pairs)
    merged = scoring.load_predictor(out["merged"], precision="fp32").logits(pairs)
    onnx = scoring.load_predictor(out["onnx"]).logits(pairs)
    np.testing.assert_allclose(merged, ref, atol=1e-4)
    np.testing.assert_allclose(onnx, ref, atol=1e-3)
    inputs = {i.name for i in export.OnnxClassifier(out["onnx"]).session.get_inputs()}
    assert ("token_type_ids" in inputs) == (pair_run["kind"] == "bert")


def test_openvino_backend_scores_pairs_as_torch_does(pair_run, tmp_path):
    pytest.importorskip("openvino")
    torch_run = predict.write_predictions(pair_run["run"], str(pair_run["test"]), tmp_path / "t.csv", precision="fp32")
    ov_run = predict.write_predictions(pair_run["run"], str(pair_run["test"]), tmp_path / "o.csv", precision="fp32",
                                       backend="openvino")
    np.testing.assert_allclose(ov_run["logits"], torch_run["logits"], atol=1e-4)


# ------------------------------------------------------------------------------------------ wrong shapes

def test_missing_second_column_is_one_line(pair_run, tmp_path, capsys):
    src = tmp_path / "one.csv"
    src.write_text("premise,label\nhello,0\n")
    assert cli.main(["predict", str(pair_run["run"]), str(src), "-o", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no column 'hypothesis' for the second text of a pair" in err
    assert not (tmp_path / "o.csv").exists()


def test_one_text_column_for_a_pair_run_is_refused(pair_run, tmp_path):
    with pytest.raises(UserError, match="give two --text-column"):
        predict.write_predictions(pair_run["run"], str(pair_run["test"]), tmp_path / "o.csv", text_column="premise")


@pytest.mark.parametrize("setting, message", [
    ("data.text_columns=a,b,c", "names 3 columns"),
    ("data.text_columns=a,a", "twice"),
])
def test_bad_text_columns_are_refused(tiny_bert, setting, message):
    with pytest.raises(UserError, match=message):
        tiny_config(tiny_bert, setting)


@pytest.mark.parametrize("mode", ["head+tail", "chunks"])
def test_long_text_treatments_are_refused_for_pairs(tiny_bert, mode):
    with pytest.raises(UserError, match="not to sentence pairs"):
        tiny_config(tiny_bert, "data.text_columns=a,b", f"data.long_text={mode}")
