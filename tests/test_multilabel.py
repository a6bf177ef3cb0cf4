"""Multi-label (data.task = multi_label): label sets in every file format, one-line errors for the wrong shape,
BCE with positive weights, per-label thresholds tuned on validation and refused when malformed, the metrics, and a
tiny run end to end: exact budget, save -> load -> identical outputs, predict, evaluate, report, ONNX, serve."""
import csv
import json
import math

import numpy as np
import pytest
import torch

from conftest import LABELS, tiny_config
from loraclf import budget, cli, config, data, multilabel, pipeline, predict, scoring
from loraclf.errors import UserError

WORDS = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]


def _sets(n: int = 64) -> list[list[int]]:
    """Label sets of one or two labels, every combination present."""
    combos = [[0], [1], [2], [3], [0, 1], [0, 2], [1, 3], [2, 3]]
    return [combos[i % len(combos)] for i in range(n)]


def _text(labels, i) -> str:
    return " ".join(WORDS[k] for k in labels) + f" item {i}"


def _write(path, rows, fmt: str, delimiter: str = "|") -> None:
    """rows: (id, text, [label names]) in the given format; CSV joins labels with `delimiter`."""
    if fmt == "csv":
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "text", "label"])
            w.writerows([i, t, delimiter.join(ls)] for i, t, ls in rows)
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({"id": i, "text": t, "label": ls}) + "\n" for i, t, ls in rows))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"id": [r[0] for r in rows], "text": [r[1] for r in rows],
                                 "label": [r[2] for r in rows]}), path)


def _rows(n: int = 64):
    return [(f"r{i}", _text(ls, i), [LABELS[k] for k in ls]) for i, ls in enumerate(_sets(n))]


# ------------------------------------------------------------------------------------------ data

@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_label_sets_read_as_multi_hot_from_each_format(tmp_path, fmt):
    path = tmp_path / f"d.{fmt}"
    _write(path, _rows(16), fmt)
    ex = data.load(str(path), label_names=LABELS, task="multi_label")
    want = [[int(k in ls) for k in range(4)] for ls in _sets(16)]
    assert ex.labels == want and ex.label_names == LABELS and ex.ids[0] == "r0"


@pytest.mark.parametrize("cells,names,want_names,want", [
    (['"0;2"', '"1"'], [], ["0", "1", "2"], [[1, 0, 1], [0, 1, 0]]),             # ids, names from the largest id
    (['"b;a"', '"c"'], [], ["a", "b", "c"], [[1, 1, 0], [0, 0, 1]]),             # names, sorted
    (['"b;b"', '"a"'], ["b", "a"], ["b", "a"], [[1, 0], [0, 1]]),                # a repeat counts once
])
def test_delimiter_ids_and_names(tmp_path, cells, names, want_names, want):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{c}\n" for i, c in enumerate(cells)))
    ex = data.load(str(path), label_names=names, task="multi_label", label_delimiter=";")
    assert ex.label_names == want_names and ex.labels == want


def test_empty_list_is_a_row_without_labels(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": []}\n{"text": "b", "label": ["Sports"]}\n')
    assert data.load(str(path), label_names=LABELS, task="multi_label").labels == [[0, 0, 0, 0], [0, 1, 0, 0]]


@pytest.mark.parametrize("fmt,content,task,match", [
    ("jsonl", '{"text": "a", "label": ["World", "Sports"]}\n', "single_label", "line 1 .* is a set of labels, but data.task is single_label"),
    ("csv", 'text,label\na,"World|Sports"\n', "single_label", "line 2 .* data.task=multi_label"),
    ("jsonl", '{"text": "a", "label": [0, "Sports"]}\n', "multi_label", "mix class ids and class names"),
    ("jsonl", '{"text": "a", "label": ["Nope"]}\n', "multi_label", "unknown label 'Nope'"),
    ("jsonl", '{"text": "a", "label": [7]}\n', "multi_label", "label 7 is out of range 0..3"),
    ("jsonl", '{"text": "a", "label": [1.5]}\n', "multi_label", "not a whole number"),
    ("jsonl", '{"text": "a", "label": [["World"]]}\n', "multi_label", "is a list"),
    ("csv", 'text,label\na,\n', "multi_label", "line 2 .* missing labels"),
])
def test_wrong_shape_is_one_line_user_error(tmp_path, fmt, content, task, match):
    path = tmp_path / f"d.{fmt}"
    path.write_text(content)
    with pytest.raises(UserError, match=match) as e:
        data.load(str(path), label_names=LABELS, task=task)
    assert "\n" not in str(e.value)


def test_single_label_class_name_with_the_delimiter_still_reads(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\na,"A|B"\nb,C\n')
    assert data.load(str(path), label_names=["A|B", "C"]).labels == [0, 1]


@pytest.mark.parametrize("override,match", [
    ("data.task=multilabel", "data.task = 'multilabel' is not allowed"),
    ("data.label_delimiter= ", "not a usable delimiter"),
    ('data.label_delimiter="', "not a usable delimiter"),
    ("data.label_delimiter=123456789", "not a usable delimiter"),
])
def test_config_refuses_bad_task_and_delimiter(override, match):
    with pytest.raises(UserError, match=match):
        config.load(None, None, [override])


# ------------------------------------------------------------------------------------------ loss, thresholds, metrics

def test_balanced_loss_weights_positives_by_negative_ratio():
    labels = [[1, 0], [1, 0], [1, 1], [0, 0]]  # label 0: 3 pos / 1 neg; label 1: 1 pos / 3 neg
    logits, y = torch.tensor([[0.3, -1.0], [2.0, 0.5]]), torch.tensor([[1, 0], [0, 1]])
    got = multilabel.loss_fn(labels, 2, "balanced", 0.0, "cpu")(logits, y)
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float(), pos_weight=torch.tensor([1 / 3, 3.0]))
    assert torch.allclose(got, want)
    plain = multilabel.loss_fn(labels, 2, "none", 0.0, "cpu")(logits, y)
    assert torch.allclose(plain, torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float()))
    smoothed = multilabel.loss_fn(labels, 2, "none", 0.2, "cpu")(logits, y)
    assert torch.allclose(smoothed, torch.nn.functional.binary_cross_entropy_with_logits(logits, y.float() * 0.8 + 0.1))


def test_thresholds_maximize_each_labels_f1():
    from sklearn.metrics import f1_score
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(200, 3))
    logits = y * 1.0 + rng.normal(0, 1.0, size=y.shape) - 0.8  # a shifted score: 0.5 is not the best cut
    logits[:, 2] = -5.0
    y[:, 2] = 0  # no positives: keeps 0.5
    t = multilabel.tune_thresholds(logits, y)
    assert t[2] == 0.5 and all(0 <= v <= 1 for v in t)
    probs = multilabel.probabilities(logits)
    for k in range(2):
        best = max(f1_score(y[:, k], probs[:, k] >= c) for c in np.unique(probs[:, k]))
        assert f1_score(y[:, k], probs[:, k] >= t[k]) == pytest.approx(best)
        assert f1_score(y[:, k], probs[:, k] >= t[k]) > f1_score(y[:, k], probs[:, k] >= 0.5)


def test_metrics_match_hand_counts():
    y = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    pred = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 1], [0, 0, 1]])
    logits = np.where(pred == 1, 3.0, -3.0)
    m = multilabel.metrics(logits, y, ["a", "b", "c"])
    tp, fp, fn = 5, 1, 1
    assert m["micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["subset_accuracy"] == m["accuracy"] == pytest.approx(2 / 4)
    assert m["hamming_loss"] == pytest.approx(2 / 12)
    assert m["samples_f1"] == pytest.approx((2 / 3 + 1 + 0.8 + 1) / 4)
    assert m["per_class"]["c"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2, "threshold": 0.5}
    assert m["loss"] == pytest.approx(np.mean(np.logaddexp(0, logits) - y * logits))
    assert "micro-F1" in multilabel.metrics_table(m) and "threshold" in multilabel.metrics_table(m)


@pytest.mark.parametrize("doc,match", [
    ({"labels": LABELS, "thresholds": [0.5, 0.5, 0.5, float("nan")]}, "not a number in \\[0, 1\\]"),
    ({"labels": LABELS, "thresholds": [0.5, 1.5, 0.5, 0.5]}, "not a number in \\[0, 1\\]"),
    ({"labels": LABELS, "thresholds": [0.5, True, 0.5, 0.5]}, "not a number in \\[0, 1\\]"),
    ({"labels": LABELS, "thresholds": ["0.5", 0.5, 0.5, 0.5]}, "not a number in \\[0, 1\\]"),
    ({"labels": LABELS, "thresholds": [0.5, 0.5]}, "other labels"),
    ({"labels": LABELS[::-1], "thresholds": [0.5] * 4}, "other labels"),
    ({"thresholds": 0.5}, "not a thresholds file"),
    ([0.5] * 4, "not a thresholds file"),
])
def test_malformed_thresholds_are_refused(doc, match):
    with pytest.raises(UserError, match=match):
        multilabel.check_thresholds(doc, LABELS, "t.json")


# ------------------------------------------------------------------------------------------ a run end to end

@pytest.fixture(scope="module")
def ml_run(tmp_path_factory, tiny_bert):
    tmp = tmp_path_factory.mktemp("multilabel")
    _write(tmp / "train.csv", _rows(96), "csv", ";")
    _write(tmp / "test.jsonl", _rows(24), "jsonl")
    # fp32: the comparisons below are exact, and bf16 scores vary with batch shape
    cfg = tiny_config(tiny_bert, "data.task=multi_label", "data.label_delimiter=;", "train.epochs=3",
                      "train.class_weight=balanced", "train.precision=fp32", "scoring.precision=fp32")
    out = tmp / "run"
    result = pipeline.train_run(cfg, [str(tmp / "train.csv")], out, test_data=[str(tmp / "test.jsonl")],
                                log=lambda *a, **k: None)
    return out, result, cfg, tmp


def test_budget_is_exact_and_equals_single_label(ml_run, tiny_bert):
    out, result, cfg, _ = ml_run
    single = tiny_config(tiny_bert, "train.class_weight=balanced")
    planned = budget.check(cfg, LABELS)
    assert planned.to_dict() == budget.check(single, LABELS).to_dict()
    assert json.loads((out / "budget.json").read_text()) == result["budget"] == planned.to_dict()
    model, *_ = scoring.load_for_inference(out)
    assert model.config.problem_type == "multi_label_classification" and model.config.num_labels == 4


def test_run_saves_thresholds_and_multi_label_metrics(ml_run):
    out, result, _, _ = ml_run
    doc = json.loads((out / "thresholds.json").read_text())
    assert doc["labels"] == LABELS and doc["chosen_on"] == "validation"
    assert all(0 <= t <= 1 and math.isfinite(t) for t in doc["thresholds"])
    for split in ("val", "test"):
        m = result[split]
        assert m["task"] == "multi_label" and {"micro_f1", "macro_f1", "samples_f1", "hamming_loss"} <= set(m)
        assert [m["per_class"][n]["threshold"] for n in LABELS] == doc["thresholds"]
    assert result["test"]["n"] == 24 and result["test"]["micro_f1"] > 0.5  # the keywords are learnable
    rows = list(csv.reader((out / "submission.csv").open()))
    # the training labels were class names, so the submission writes names
    assert rows[0] == ["ID", "Labels"] and all(set(r[1].split(";")) <= set(LABELS) | {""} for r in rows[1:])


def test_save_load_gives_identical_outputs(ml_run, tmp_path):
    out, _, _, tmp = ml_run
    texts = [r[1] for r in _rows(24)]
    model, tok, cfg, _ = scoring.load_for_inference(out)
    a = scoring.logits_for(model, tok, texts, 32, precision="fp32")
    model2, tok2, _, _ = scoring.load_for_inference(out)
    np.testing.assert_array_equal(a, scoring.logits_for(model2, tok2, texts, 32, precision="fp32"))
    probs = [[float(r[f"p_{n}"]) for n in LABELS] for r in csv.DictReader((out / "predictions.csv").open())]
    np.testing.assert_allclose(multilabel.probabilities(a), probs, atol=2e-6)
    # predict writes the label sets the saved thresholds decide, joined by the run's delimiter
    src = tmp / "test.jsonl"
    assert cli.main(["predict", str(out), str(src), "-o", str(tmp_path / "p.csv"), "--probs", "--label-names",
                     "--precision", "fp32"]) == 0
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    thresholds = multilabel.read_thresholds(out, LABELS)
    decided = multilabel.decide(a, thresholds)
    assert list(rows[0]) == ["ID", "Labels"] + [f"p_{n}" for n in LABELS]
    assert [r["Labels"] for r in rows] == [";".join(LABELS[k] for k in np.flatnonzero(d)) for d in decided]
    assert [r["ID"] for r in rows] == [f"r{i}" for i in range(24)]


def test_evaluate_prints_and_saves_multi_label_metrics(ml_run, capsys):
    out, result, _, tmp = ml_run
    assert cli.main(["evaluate", str(out), "--data", str(tmp / "test.jsonl"), "--batch-size", "7",
                     "--precision", "fp32"]) == 0
    printed = capsys.readouterr().out
    assert "micro-F1" in printed and "hamming loss" in printed
    saved = json.loads((out / "eval-test.json").read_text())
    assert saved["micro_f1"] == pytest.approx(result["test"]["micro_f1"], abs=1e-9)


def test_broken_thresholds_file_stops_predict_with_one_line(ml_run, tmp_path, capsys):
    import shutil
    out, _, _, tmp = ml_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    for content in ('{"labels": %s, "thresholds": [0.5, NaN, 0.5, 0.5]}' % json.dumps(LABELS), "{oops", None):
        if content is None:
            (run / "thresholds.json").unlink()
        else:
            (run / "thresholds.json").write_text(content)
        assert cli.main(["predict", str(run), str(tmp / "test.jsonl"), "-o", str(tmp_path / "p.csv")]) == 2
        err = capsys.readouterr().err
        assert "thresholds.json" in err and err.count("\n") == 1 and not (tmp_path / "p.csv").exists()


def test_multi_label_file_given_to_a_single_label_run_is_refused(ml_run, tiny_bert, tmp_path, capsys):
    _, _, _, tmp = ml_run
    single = tiny_config(tiny_bert)
    with pytest.raises(UserError, match="data.task=multi_label"):
        pipeline.train_run(single, [str(tmp / "test.jsonl")], tmp_path / "run", log=lambda *a, **k: None)
    assert not (tmp_path / "run").exists()


def test_report_has_per_label_plots(ml_run):
    from loraclf import report
    out, _, _, _ = ml_run
    html = report.write(out)
    assert (out / "plots" / "per_class_test.png").is_file() and not (out / "plots" / "confusion_test.png").exists()
    text = (out / "report.md").read_text()
    assert "micro-F1" in text and "threshold" in text and html.is_file()


def test_onnx_export_matches_and_predicts_the_same_sets(ml_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from loraclf import export
    out, _, _, tmp = ml_run
    onnx = export.export_onnx(out, tmp_path / "onnx", exporter="legacy")
    meta = export.read_meta(onnx)
    assert meta["task"] == "multi_label" and meta["thresholds"] == multilabel.read_thresholds(out, LABELS)
    assert "Multi-label: a label is predicted when" in (onnx / "README.md").read_text()
    a = predict.write_predictions(out, str(tmp / "test.jsonl"), tmp_path / "torch.csv", names=True, precision="fp32")
    b = predict.write_predictions(onnx, str(tmp / "test.jsonl"), tmp_path / "onnx.csv", names=True, backend="onnx")
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-3, rtol=0)
    assert (tmp_path / "torch.csv").read_text() == (tmp_path / "onnx.csv").read_text()
    meta["thresholds"] = [0.5, 2.0, 0.5, 0.5]  # a hand-edited export is refused like a run's file
    (onnx / export.META).write_text(json.dumps(meta))
    with pytest.raises(UserError, match="not a number in"):
        scoring.load_predictor(onnx)


def test_serve_answers_label_sets(ml_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from loraclf import serve
    out, _, _, _ = ml_run
    predictor = scoring.load_predictor(out, precision="fp32")
    texts = [r[1] for r in _rows(8)]
    with TestClient(serve.create_app(predictor)) as client:
        info = client.get("/info").json()
        r = client.post("/predict", json={"texts": texts}).json()
    assert info["task"] == "multi_label" and info["thresholds"] == predictor.thresholds
    want = multilabel.decide(predictor.logits(texts), predictor.thresholds)
    assert r["labels"] == [np.flatnonzero(d).tolist() for d in want]
    assert r["names"] == [[LABELS[k] for k in ids] for ids in r["labels"]]
    np.testing.assert_allclose(r["probabilities"], multilabel.probabilities(predictor.logits(texts)), atol=1e-6)


def test_own_positive_weights_are_checked_and_used(tmp_path, tiny_bert):
    got = multilabel.loss_fn([[1, 0]], 2, "none", 0.0, "cpu", [2.0, 0.5])(torch.tensor([[0.3, -1.0]]), torch.tensor([[1, 1]]))
    want = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([[0.3, -1.0]]), torch.ones(1, 2),
                                                                pos_weight=torch.tensor([2.0, 0.5]))
    assert torch.allclose(got, want)
    for overrides, match in ((["train.pos_weight=[1,2]"], "multi-label runs only"),
                             (["data.task=multi_label", "train.pos_weight=[1,2]", "train.class_weight=balanced"], "give one"),
                             (["data.task=multi_label", "train.pos_weight=[1,0]"], "out of range")):
        with pytest.raises(UserError, match=match):
            tiny_config(tiny_bert, *overrides)
    _write(tmp_path / "t.jsonl", _rows(16), "jsonl")
    cfg = tiny_config(tiny_bert, "data.task=multi_label", "train.pos_weight=[1,2]")
    with pytest.raises(UserError, match="2 weights for 4 labels"):
        pipeline.train_run(cfg, [str(tmp_path / "t.jsonl")], tmp_path / "run", log=lambda *a, **k: None)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------ with the other input kinds

@pytest.mark.parametrize("kind", ["chunks", "pairs"])
def test_multi_label_with_long_documents_or_sentence_pairs(tmp_path, tiny_bert, kind):
    """Label sets go through the window expansion (one score row per document) and the pair input alike."""
    rows = [(i, (t + " ") * (8 if kind == "chunks" else 1), ls) for i, t, ls in _rows(32)]
    if kind == "chunks":
        _write(tmp_path / "d.jsonl", rows, "jsonl")
        extra = ["data.long_text=chunks", "data.max_length=16", "data.chunk_stride=4"]
    else:
        (tmp_path / "d.jsonl").write_text("".join(json.dumps({"id": i, "a": t, "b": t[::-1], "label": ls}) + "\n"
                                                  for i, t, ls in rows))
        extra = ["data.text_columns=a,b"]
    cfg = tiny_config(tiny_bert, "data.task=multi_label", *extra)
    out = tmp_path / "run"
    result = pipeline.train_run(cfg, [str(tmp_path / "d.jsonl")], out, test_data=[str(tmp_path / "d.jsonl")],
                                log=lambda *a, **k: None)
    assert set(result["test"]) >= {"micro_f1", "hamming_loss"} and result["long_text"]["test"]["rows"] == len(rows)
    assert len(json.loads((out / multilabel.THRESHOLDS).read_text())["thresholds"]) == len(LABELS)
    r = predict.write_predictions(out, str(tmp_path / "d.jsonl"), tmp_path / "sub.csv")
    lines = (tmp_path / "sub.csv").read_text().strip().splitlines()
    assert r["rows"] == len(rows) == len(lines) - 1 and lines[0] == "ID,Labels" and r["logits"].shape == (len(rows), 4)
    if kind == "chunks":
        assert r["long_text"]["longer"] == len(rows)
