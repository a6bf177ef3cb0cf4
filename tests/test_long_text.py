"""Rows longer than max_length (data.long_text): truncate (counted and reported), head+tail, and chunks (windows
trained as rows, pooled per document in input order) through train, evaluate, predict, serve and the exports."""
import csv
import json

import numpy as np
import pytest

from conftest import LABELS, tiny_config
from loraclf import cli, data, export, longtext, pipeline, predict, scoring, serve
from loraclf.errors import UserError

WORDS = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]


def _doc(i: int) -> str:
    """A document of 10 to 100 tokens whose class shows only in its middle, past a 32-token head."""
    filler = " ".join(f"w{j}" for j in range(3 + 6 * (i % 8)))
    return f"{filler} {WORDS[i % 4]} {filler}"


def _csv(path, start: int, n: int):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "label"])
        w.writerows([f"d{i}", _doc(i), i % 4] for i in range(start, start + n))
    return path


@pytest.fixture(scope="module")
def tok(tiny_bert):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(tiny_bert))


@pytest.fixture(scope="module", params=["head+tail", "chunks"])
def long_run(request, tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("long")
    train, test = _csv(tmp / "train.csv", 0, 48), _csv(tmp / "test.csv", 100, 16)
    # fp32: compared with predict at 1e-4, and bf16 scores vary with batch shape
    cfg = tiny_config(tiny_bert, f"data.long_text={request.param}", "data.chunk_stride=8", "train.epochs=2",
                      "train.precision=fp32", "scoring.precision=fp32")
    logged = []
    result = pipeline.train_run(cfg, [str(train)], tmp / "run", test_data=[str(test)], log=logged.append)
    return {"mode": request.param, "run": tmp / "run", "test": test, "result": result, "log": logged}


# ------------------------------------------------------------------------------------------ encoding

@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_truncate_is_plain_truncation_and_counts_the_longer_rows(request, kind):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(request.getfixturevalue(f"tiny_{kind}")))
    texts = [_doc(i) for i in range(16)] + ["x " * 30]  # 30 words: exactly 32 tokens with BERT's two specials
    enc = longtext.encode(tok, data.Examples(texts, None, []), 32)
    assert enc.input_ids == tok(texts, truncation=True, max_length=32)["input_ids"]
    assert enc.longer == sum(len(x) > 32 for x in tok(texts)["input_ids"]) > 0


def test_head_tail_keeps_the_first_and_last_tokens(tok):
    text = " ".join(f"w{j}" for j in range(200))
    full = tok(text, add_special_tokens=False)["input_ids"]
    enc = longtext.encode(tok, data.Examples([text, "short"], None, []), 32, longtext.Treatment("head+tail", 5))
    assert enc.input_ids[0] == longtext.special_tokens(tok)(full[:5] + full[-25:])
    assert enc.input_ids[1] == tok("short")["input_ids"] and enc.longer == 1


@pytest.mark.parametrize("stride", [0, 7, 29])
def test_chunks_cover_every_token_with_the_stride_as_overlap(tok, stride):
    texts = [_doc(i) for i in range(12)]
    enc = longtext.encode(tok, data.Examples(texts, list(range(12)), []), 32, longtext.Treatment("chunks", stride=stride))
    assert enc.doc_index == sorted(enc.doc_index) and set(enc.doc_index) == set(range(12))
    assert enc.labels == enc.doc_index and enc.doc_labels == list(range(12))
    for i, text in enumerate(texts):
        full = tok(text, add_special_tokens=False)["input_ids"]
        windows = [w[1:-1] for w, d in zip(enc.input_ids, enc.doc_index) if d == i]  # without [CLS] ... [SEP]
        assert all(len(w) <= 30 for w in windows)
        rebuilt = windows[0] + [t for w in windows[1:] for t in w[stride:]]
        assert rebuilt == full
        assert all(a[len(a) - stride:] == b[:stride] for a, b in zip(windows, windows[1:]))


@pytest.mark.parametrize("pool, expected", [("mean", [[2.0, 1.0], [5.0, 0.0]]), ("max", [[3.0, 2.0], [5.0, 0.0]])])
def test_windows_pool_back_to_documents_in_input_order(pool, expected):
    enc = longtext.Encoding([[1]] * 3, None, docs=2, doc_index=[0, 0, 1], pool=pool)
    logits = np.array([[1.0, 2.0], [3.0, 0.0], [5.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(longtext.pooled(logits, enc), expected)


# ------------------------------------------------------------------------------------------ end to end

def test_train_reports_the_rows_past_max_length_and_what_was_done(long_run):
    result, mode = long_run["result"], long_run["mode"]
    saved = json.loads((long_run["run"] / "metrics.json").read_text())["long_text"]
    assert saved == result["long_text"] and saved["train"]["long_text"] == mode
    assert saved["test"]["rows"] == 16 and 0 < saved["test"]["longer"] < 16
    line = next(x for x in long_run["log"] if str(x).startswith(tuple("0123456789")) and "training rows" in str(x))
    assert ("windows" in line) == (mode == "chunks") and ("first 7 and last 23 tokens" in line) == (mode == "head+tail")
    if mode == "chunks":
        assert saved["train"]["windows"] > saved["train"]["rows"] and saved["test"]["chunk_pool"] == "mean"


def test_default_truncation_is_no_longer_silent(tiny_bert, tmp_path):
    from loraclf import report
    train = _csv(tmp_path / "train.csv", 0, 24)
    logged = []
    result = pipeline.train_run(tiny_config(tiny_bert), [str(train)], tmp_path / "run", log=logged.append)
    stats = result["long_text"]["train"]
    assert stats["long_text"] == "truncate" and stats["rows"] == 19 and 0 < stats["longer"] < 19
    line = f"of training rows ({stats['longer']} of 19) are longer than 32 tokens: truncated"
    assert any(line in str(x) for x in logged)
    report.write(tmp_path / "run")
    md = (tmp_path / "run" / "report.md").read_text()
    assert "Rows longer than max_length" in md and line.replace("training rows", "rows") in md


def test_predict_and_evaluate_score_one_row_per_document_as_in_training(long_run, tmp_path, capsys):
    run, test = long_run["run"], long_run["test"]
    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    in_memory = np.array([[float(r[f"p_{n}"]) for n in LABELS] for r in rows])
    assert cli.main(["predict", str(run), str(test), "-o", str(tmp_path / "s.csv"), "--probs", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out
    assert f"of rows ({long_run['result']['long_text']['test']['longer']} of 16) are longer than 32 tokens" in out
    with open(tmp_path / "s.csv", newline="") as f:
        sub = list(csv.DictReader(f))
    assert [r["ID"] for r in sub] == [f"d{i}" for i in range(100, 116)]
    np.testing.assert_allclose(np.array([[float(r[f"p_{n}"]) for n in LABELS] for r in sub]), in_memory, atol=1e-4)
    m = pipeline.evaluate_run(run, [str(test)], precision="fp32")
    assert m["n"] == 16 and m["accuracy"] == long_run["result"]["test"]["accuracy"]
    assert m["long_text"] == long_run["result"]["long_text"]["test"]


def test_serve_answers_one_row_per_document(long_run):
    from fastapi.testclient import TestClient
    predictor = scoring.load_predictor(long_run["run"], precision="fp32").load()
    docs = [_doc(i) for i in range(100, 105)]
    want = predictor.logits(docs).argmax(-1).tolist()
    with TestClient(serve.create_app(predictor, max_wait_ms=0), raise_server_exceptions=False) as c:
        r = c.post("/predict", json={"texts": docs})
        assert r.status_code == 200 and r.json()["labels"] == want and len(r.json()["probabilities"]) == 5
        assert c.get("/info").json()["long_text"] == long_run["mode"]


@pytest.mark.slow
def test_exports_treat_long_rows_as_the_run_does(long_run, tmp_path):
    pytest.importorskip("onnxruntime")
    out = export.export_run(long_run["run"], tmp_path / "merged", tmp_path / "onnx")
    docs = [_doc(i) for i in range(200, 211)]
    ref = scoring.load_predictor(long_run["run"], precision="fp32").logits(docs)
    np.testing.assert_allclose(scoring.load_predictor(out["merged"], precision="fp32").logits(docs), ref, atol=1e-4)
    np.testing.assert_allclose(scoring.load_predictor(out["onnx"]).logits(docs), ref, atol=1e-3)


def test_openvino_backend_pools_windows_as_torch_does(long_run, tmp_path):
    pytest.importorskip("openvino")
    src = str(long_run["test"])
    torch_run = predict.write_predictions(long_run["run"], src, tmp_path / "t.csv", precision="fp32")
    ov_run = predict.write_predictions(long_run["run"], src, tmp_path / "o.csv", precision="fp32", backend="openvino")
    assert ov_run["logits"].shape == (16, 4)
    np.testing.assert_allclose(ov_run["logits"], torch_run["logits"], atol=1e-4)


def test_max_pooling_is_kept_in_the_run_and_used_on_reload(tiny_bert, tmp_path):
    _csv(tmp_path / "train.csv", 0, 24)
    cfg = tiny_config(tiny_bert, "data.long_text=chunks", "data.chunk_pool=max", "data.val_size=0")
    pipeline.train_run(cfg, [str(tmp_path / "train.csv")], tmp_path / "run", log=lambda *a, **k: None)
    model, tokenizer, saved, _ = scoring.load_for_inference(tmp_path / "run")
    assert longtext.Treatment.of(saved.data) == longtext.Treatment("chunks", 0, -1, "max")
    docs = [_doc(i) for i in range(5)]
    enc = longtext.encode(tokenizer, data.Examples(docs, None, []), 32, longtext.Treatment("chunks", stride=-1))
    import torch
    windows = scoring.predict_logits(model, data.Encoded(enc.input_ids, None), 64, tokenizer.pad_token_id,
                                     torch.device("cpu"), "fp32")  # each window on its own
    want = np.stack([windows[np.asarray(enc.doc_index) == i].max(0) for i in range(5)])
    got = predict.write_predictions(tmp_path / "run", str(_csv(tmp_path / "p.csv", 0, 5)), tmp_path / "o.csv",
                                    precision="fp32")["logits"]
    np.testing.assert_allclose(got, want, atol=1e-4)


# ------------------------------------------------------------------------------------------ wrong settings

@pytest.mark.parametrize("settings, message", [
    (["data.long_text=chunks", "data.chunk_stride=32"], "not shorter than the 32-token windows"),
    (["data.long_text=chunks", "data.max_length_infer=16", "data.chunk_stride=20"], "16-token windows"),
    (["data.long_text=head+tail", "data.head_tokens=40"], "leaves no room for the tail"),
    (["data.long_text=chunks", "data.chunk_stride=-2"], "out of range"),
    (["data.chunk_pool=median"], "is not allowed"),
    (["data.long_text=middle"], "is not allowed"),
])
def test_bad_long_text_settings_are_one_line_errors(tiny_bert, settings, message):
    with pytest.raises(UserError, match=message):
        tiny_config(tiny_bert, *settings)
