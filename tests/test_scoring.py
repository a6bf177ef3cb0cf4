"""Scoring (scoring.py): its small rules, and one predictor dispatch for the torch, OpenVINO and ONNX backends that
`predict`, `evaluate` and `serve` all go through."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import LABELS, train_tiny_run
from loraclf import config, data, export, pipeline, predict, scoring, serve
from loraclf.errors import UserError


# ------------------------------------------------------------------------------------------ small rules

def test_in_input_order_and_softmax():
    parts = [np.array([[2.0, 0.0], [0.0, 3.0]]), np.array([[5.0, 5.0]])]
    np.testing.assert_array_equal(scoring.in_input_order([2, 0, 1], parts), [[0.0, 3.0], [5.0, 5.0], [2.0, 0.0]])
    p = scoring.softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]]))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], atol=1e-12)


@pytest.mark.parametrize("max_tokens, device, expected", [
    (-1, "cpu", scoring.cpu_scoring_tokens()), (-1, "cuda", 0), (0, "cpu", 0), (512, "cuda", 512), (24, "cpu", 24)])
def test_scoring_tokens(max_tokens, device, expected):
    assert scoring.scoring_tokens(max_tokens, torch.device(device)) == expected == scoring.scoring_tokens(max_tokens, device)


@pytest.mark.parametrize("max_length, max_length_infer, expected", [(64, 0, 64), (64, 128, 128)])
def test_infer_length(max_length, max_length_infer, expected):
    cfg = config.load(None, None, [f"data.max_length={max_length}", f"data.max_length_infer={max_length_infer}"])
    assert scoring.infer_length(cfg) == expected


@pytest.mark.parametrize("ids, expected", [(None, [0, 1, 2]), (["a", "b", "c"], ["a", "b", "c"])])
def test_row_ids(ids, expected):
    assert scoring.row_ids(data.Examples(["x", "y", "z"], None, [], ids=ids)) == expected


@pytest.mark.parametrize("batch_size, max_tokens", [(0, -1), (8, -2)])
def test_bad_batching_is_refused(batch_size, max_tokens):
    with pytest.raises(UserError, match="is not allowed"):
        scoring.check_batching(batch_size, max_tokens)


def test_scoring_never_imports_training():
    code = "import sys, loraclf.scoring; assert 'loraclf.train' not in sys.modules and 'loraclf.pipeline' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# ------------------------------------------------------------------------------------------ one dispatch

def _fake_run(path, **keys):
    """A run directory that passes rundir.RunDir.open: `keys` are "section.key" overrides given with "__"."""
    from safetensors.torch import save_file
    cfg = config.Config()
    cfg.data.text_column = "body"
    for k, v in keys.items():
        section, key = k.split("__")
        setattr(getattr(cfg, section), key, v)
    (path / "adapter").mkdir(parents=True)
    (path / "tokenizer").mkdir()
    save_file({"w": torch.zeros(1)}, str(path / "adapter" / "adapter_model.safetensors"))
    (path / "tokenizer" / "tokenizer.json").write_text("{}")
    (path / "config.json").write_text(json.dumps(cfg.to_dict()))
    (path / "labels.json").write_text(json.dumps(LABELS))
    return path


def _fake_export(path, kind):
    path.mkdir()
    meta = {"format": export.EXPORT_FORMAT, "kind": kind, "labels": LABELS, "max_length": 32,
            "run_config": {"data": {"text_column": "body", "label_column": "y", "encoding": "latin-1"}}}
    (path / export.META).write_text(json.dumps(meta))
    return path


def _fixed_logits(texts):
    return np.array([[float(len(t)), 0.0, 1.0, 2.0] for t in texts], np.float32)


@pytest.fixture
def fake_torch(monkeypatch):
    """load_for_inference and logits_for replaced: what the torch backend is asked, without a model."""
    calls = {"loads": 0, "logits_for": []}

    def load(run):
        calls["loads"] += 1
        return "model", _Tok(), run.config, run.labels

    def logits_for(model, tokenizer, texts, max_length, batch_size=64, precision="auto", **kw):
        calls["logits_for"].append((max_length, batch_size, precision,  # the scoring switches, not the long-text ones
                                    {k: v for k, v in kw.items() if k not in ("treatment", "stats", "pairs")}))
        return _fixed_logits(texts)
    monkeypatch.setattr(scoring, "load_for_inference", load)
    monkeypatch.setattr(scoring, "logits_for", logits_for)
    return calls


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("flag", [True, False])
def test_run_directory_on_torch_is_loaded_on_first_use_with_its_switches(tmp_path, fake_torch, backend, flag):
    run = _fake_run(tmp_path / "run", scoring__bf16_full_cast=flag, scoring__cls_only_last_layer=not flag,
                    cpu__tune_malloc=flag)
    p = scoring.load_predictor(run, backend, batch_size=7, precision="fp32", max_tokens=99)
    assert fake_torch["loads"] == 0 and p.info["backend"] == "torch" and p.info["kind"] == "run"
    assert p.labels == LABELS and p.data == {"text_column": "body", "label_column": "label", "encoding": "utf-8",
                                             "text_columns": ["body"], "label_output": None}
    np.testing.assert_array_equal(p.logits(["ab", "c"]), _fixed_logits(["ab", "c"]))
    p.logits(["d"])
    assert fake_torch["loads"] == 1
    assert fake_torch["logits_for"][0] == (256, 7, "fp32", {"max_tokens": 99, "full_cast": flag, "cls_only": not flag,
                                                            "tune_malloc": flag})


@pytest.mark.parametrize("kind", ["run", "merged"])
def test_openvino_backend_on_a_run_or_a_merged_export(tmp_path, monkeypatch, fake_torch, kind):
    import transformers
    compiled = []
    monkeypatch.setattr(scoring, "openvino_compile", lambda m, prec, cls_only, types=False: compiled.append((m, prec, cls_only)) or "req")
    monkeypatch.setattr(scoring, "openvino_scores",
                        lambda req, enc, pad, bs, mt: np.zeros((len(enc), 4), np.float32) + bs + mt)
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", lambda *a, **k: torch.nn.Linear(1, 1))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: _Tok())
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", lambda *a, **k: transformers.BertConfig())
    path = _fake_run(tmp_path / "r", scoring__cls_only_last_layer=False) if kind == "run" else _fake_export(tmp_path / "m", "merged")
    p = scoring.load_predictor(path, "openvino", batch_size=5, precision="bf16", max_tokens=10)
    assert p.info["backend"] == "openvino" and not compiled
    assert p.logits(["a", "b"]).tolist() == [[15.0] * 4] * 2
    assert compiled[0][1:] == ("bf16", kind != "run")


class _Tok:
    pad_token_id = 0

    def __call__(self, texts, *pair, **kw):
        return {"input_ids": [[1, 2] for _ in texts]}


def test_onnx_export_runs_on_onnxruntime_with_its_data_settings(tmp_path, monkeypatch):
    made = []

    class FakeOnnx:
        def __init__(self, path, threads=0):
            made.append(threads)

        def logits(self, texts, max_length=None, batch_size=64, stats=None):
            return _fixed_logits(texts) + max_length + batch_size
    monkeypatch.setattr(export, "OnnxClassifier", FakeOnnx)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    onnx = _fake_export(tmp_path / "onnx", "onnx")
    for backend in ("auto", "onnx"):
        p = scoring.load_predictor(onnx, backend, batch_size=3, threads=2)
        assert p.info["backend"] == "onnxruntime" and p.info["kind"] == "onnx"
        assert p.data == {"text_column": "body", "label_column": "y", "encoding": "latin-1", "text_columns": ["body"],
                          "label_output": None}  # a fake run without the record, as runs saved before it
        np.testing.assert_array_equal(p.logits(["xy"]), _fixed_logits(["xy"]) + 35)
    assert made == [2, 2]


@pytest.mark.parametrize("folder, backend, message", [
    ("run", "onnx", "not an ONNX export"),
    ("merged", "onnx", "not an ONNX export"),
    ("onnx", "torch", "is an ONNX export"),
    ("onnx", "openvino", "is an ONNX export"),
    ("openvino", "torch", "is an OpenVINO export"),
    ("openvino", "onnx", "not an ONNX export"),
    ("run", "tensorrt", "unknown backend"),
    ("missing", "auto", "does not exist"),
    ("empty", "auto", "is not a run directory"),
])
def test_dispatch_refuses_what_cannot_run(tmp_path, folder, backend, message):
    path = {"run": lambda p: _fake_run(p), "merged": lambda p: _fake_export(p, "merged"),
            "onnx": lambda p: _fake_export(p, "onnx"), "openvino": lambda p: _fake_export(p, "openvino"),
            "missing": lambda p: p,
            "empty": lambda p: p.mkdir() or p}[folder](tmp_path / folder)
    with pytest.raises(UserError, match=message):
        scoring.load_predictor(path, backend)


def test_predict_evaluate_and_serve_all_go_through_scoring(tmp_path, monkeypatch, fake_torch):
    """predict and serve take their predictor from scoring.load_predictor (serve: the folder's own backend, loaded
    before it listens); evaluate scores with scoring.logits_for; the input is read with the predictor's settings."""
    asked = []
    real = scoring.load_predictor
    monkeypatch.setattr(scoring, "load_predictor", lambda path, backend="auto", *a, **k: asked.append(backend) or real(path, backend, *a, **k))
    run = _fake_run(tmp_path / "run")
    src = tmp_path / "in.csv"
    src.write_text("body,label\nhello,World\nhi,Sports\n")
    out = tmp_path / "sub.csv"
    r = predict.write_predictions(run, str(src), out, backend="torch")
    assert r["rows"] == 2 and out.read_text().splitlines() == ["ID,Label", "0,0", "1,0"]
    monkeypatch.setattr(serve, "create_app", lambda predictor, *a, **k: asked.append(predictor.loaded) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        serve.serve(run, port=0)
    assert asked == ["torch", "auto", True] and fake_torch["loads"] == 2
    m = pipeline.evaluate_run(run, [str(src)])
    assert m["n"] == 2 and len(fake_torch["logits_for"]) == 2


def test_a_bad_input_fails_before_the_model_loads(tmp_path, fake_torch):
    run = _fake_run(tmp_path / "run")
    with pytest.raises(UserError, match="does not exist"):
        predict.write_predictions(run, str(tmp_path / "nope.csv"), tmp_path / "sub.csv")
    assert fake_torch["loads"] == 0


# ------------------------------------------------------------------------------------------ a real tiny run

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert):
    return train_tiny_run(tmp_path_factory.mktemp("scoring"), tiny_bert)


def test_predictor_gives_logits_fors_numbers(tiny_run):
    texts = ["football match goal", "stocks market profit fell " * 9, "x"]
    model, tok, cfg, _ = scoring.load_for_inference(tiny_run)
    want = scoring.logits_for(model, tok, texts, scoring.infer_length(cfg), precision="fp32", **scoring.scoring_options(cfg))
    got = scoring.load_predictor(tiny_run, "torch", precision="fp32").logits(texts)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_command_line_offers_the_dispatchs_backends():
    from loraclf import cli
    subs = [a for a in cli.parser()._actions if a.dest == "command"][0].choices
    (opt,) = [a for a in subs["predict"]._actions if a.dest == "backend"]
    assert tuple(opt.choices) == ("auto",) + cli.PREDICT_BACKENDS and cli.PREDICT_BACKENDS == scoring.PREDICT_BACKENDS
