"""`loraclf export`: the merged Hugging Face folder (no peft needed, same logits as predict within 1e-4), the
ONNX export (onnxruntime within 1e-3 of PyTorch; predict --backend onnx), model cards, atomic writes."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import LABELS, train_tiny_run
from loraclf import cli, export, predict, scoring
from loraclf.errors import UserError

OWN_TEXTS = ["football match goal tonight", "stocks market profit fell", "", "x",
             "software computer chip " * 30, "election minister war story", "a b c d e f g"]


def _cli(argv) -> int:
    return cli.main(argv)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert):
    return train_tiny_run(tmp_path_factory.mktemp("export"), tiny_bert)


@pytest.fixture(scope="module")
def exports(tiny_run, tmp_path_factory):
    """Both exports from one `loraclf export RUN --merged DIR --onnx DIR`."""
    base = tmp_path_factory.mktemp("exports")
    merged, onnx = base / "merged", base / "onnx"
    assert _cli(["export", str(tiny_run), "--merged", str(merged), "--onnx", str(onnx)]) == 0
    return merged, onnx


@pytest.fixture(scope="module")
def agnews_texts(agnews_dir):
    with open(agnews_dir / "test.csv", newline="") as f:
        rows = list(csv.reader(f))
    return [f"{r[1]} {r[2]}" for r in rows[:48]]


def _run_logits(run_dir, texts):
    model, tok, cfg, _ = scoring.load_for_inference(run_dir)
    return scoring.logits_for(model, tok, texts, cfg.data.max_length, precision="fp32")


def test_merged_folder_is_plain_hf_and_matches_predict(exports, tiny_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    merged, _ = exports
    names = sorted(p.name for p in merged.iterdir())
    assert "model.safetensors" in names and "config.json" in names and "labels.json" in names and "README.md" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]  # safetensors only
    assert not [n for n in names if n.startswith(".") or n.startswith("adapter")]
    text = (merged / "config.json").read_text().lower()
    assert "peft" not in text and "lora" not in text and "adapter" not in text
    model = AutoModelForSequenceClassification.from_pretrained(str(merged)).eval()
    assert model.config.id2label == dict(enumerate(LABELS))
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.float32"
    assert json.loads((merged / "labels.json").read_text()) == LABELS
    tok = AutoTokenizer.from_pretrained(str(merged))
    want = _run_logits(tiny_run, OWN_TEXTS)
    got = scoring.logits_for(model, tok, OWN_TEXTS, 32, precision="fp32")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_merged_matches_predict_on_agnews(exports, tiny_run, agnews_texts):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    merged, _ = exports
    model = AutoModelForSequenceClassification.from_pretrained(str(merged)).eval()
    got = scoring.logits_for(model, AutoTokenizer.from_pretrained(str(merged)), agnews_texts, 32, precision="fp32")
    np.testing.assert_allclose(got, _run_logits(tiny_run, agnews_texts), atol=1e-4, rtol=0)


def _site_packages_without_peft(tmp: Path) -> Path:
    """A folder that mirrors this environment's site-packages minus peft: with `python -S` and this folder on
    sys.path, peft is not installed as far as Python (imports and package metadata) can tell."""
    import site
    farm = tmp / "site-no-peft"
    farm.mkdir()
    for sp in site.getsitepackages():
        for entry in Path(sp).iterdir():
            low = entry.name.lower()
            if low == "peft" or low.startswith("peft-") or entry.suffix == ".pth" or (farm / entry.name).exists():
                continue
            (farm / entry.name).symlink_to(entry)
    return farm


def test_merged_loads_with_no_peft_installed(exports, tiny_run, tmp_path):
    merged, _ = exports
    farm = _site_packages_without_peft(tmp_path)
    code = f"""
import importlib.util, json, sys
sys.path.append({str(farm)!r})
assert importlib.util.find_spec("peft") is None, "peft is still importable"
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained({str(merged)!r}).eval()
tok = AutoTokenizer.from_pretrained({str(merged)!r})
texts = json.loads(sys.argv[1])
with torch.inference_mode():
    out = [model(**tok([t], truncation=True, max_length=32, return_tensors="pt")).logits[0].tolist() for t in texts]
assert "peft" not in sys.modules
print(json.dumps({{"logits": out, "id2label": model.config.id2label}}))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")} | {"HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-S", "-c", code, json.dumps(OWN_TEXTS)], capture_output=True, text=True,
                       env=env, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert list(res["id2label"].values()) == LABELS
    want = np.stack([_run_logits(tiny_run, [t])[0] for t in OWN_TEXTS])
    np.testing.assert_allclose(np.array(res["logits"]), want, atol=1e-4, rtol=0)


def test_onnx_matches_pytorch_on_agnews(exports, tiny_run, agnews_texts):
    _, onnx = exports
    assert (onnx / "model.onnx").is_file() and (onnx / "README.md").is_file()
    got = export.onnx_logits(onnx, agnews_texts, batch_size=16)
    want = _run_logits(tiny_run, agnews_texts)
    assert got.shape == (len(agnews_texts), len(LABELS))
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)


def test_onnx_dynamic_batch_and_length(exports, tiny_run):
    """Batches of 1, with and without padding, and texts truncated at max_length all give the PyTorch logits."""
    _, onnx = exports
    want = _run_logits(tiny_run, OWN_TEXTS)
    for bs in (1, 3, 64):
        np.testing.assert_allclose(export.onnx_logits(onnx, OWN_TEXTS, batch_size=bs), want, atol=1e-3, rtol=0)
    assert export.onnx_logits(onnx, []).shape == (0, len(LABELS))


def test_predict_backend_onnx_writes_same_submission(exports, tiny_run, tmp_path):
    _, onnx = exports
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f"r{i},\"{t}\"\n" for i, t in enumerate(OWN_TEXTS) if t))
    a = predict.write_predictions(tiny_run, str(src), tmp_path / "torch.csv", names=True, precision="fp32")
    b = predict.write_predictions(onnx, str(src), tmp_path / "onnx.csv", names=True, backend="onnx")
    assert (tmp_path / "torch.csv").read_text() == (tmp_path / "onnx.csv").read_text()
    np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-3, rtol=0)
    with pytest.raises(UserError, match="not an ONNX export"):
        predict.write_predictions(tiny_run, str(src), tmp_path / "x.csv", backend="onnx")


def test_model_cards(exports):
    for d, kind in zip(exports, ("merged", "onnx")):
        card = (d / "README.md").read_text()
        for part in ("## Model", "Base model", "## Data", "train.csv", "## Trainable-parameter budget", "lora:query",
                     "## Metrics", "| val |", "## Intended use", "World, Sports, Business, Sci/Tech"):
            assert part in card, (kind, part)
        meta = json.loads((d / "loraclf.json").read_text())
        assert meta["kind"] == kind and meta["labels"] == LABELS and meta["max_length"] == 32
        assert meta["budget"]["trainable"] == sum(meta["budget"]["groups"].values())


def test_errors_are_user_errors_and_leave_nothing(tiny_run, tmp_path, monkeypatch, capsys):
    assert _cli(["export", str(tiny_run)]) == 2
    assert "nothing to export" in capsys.readouterr().err
    assert _cli(["export", str(tmp_path / "missing"), "--merged", str(tmp_path / "m")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    assert _cli(["export", str(tiny_run), "--merged", str(tmp_path / "busy")]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "busy" / "keep.txt").read_text() == "mine"

    def broken(*a, **k):
        raise UserError("ONNX export failed (simulated)", "none")
    monkeypatch.setattr(export, "_onnx_export", broken)
    assert _cli(["export", str(tiny_run), "--onnx", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.*"))  # no half-written export, no temp dir


def test_overwrite_replaces_an_export_and_nothing_else(tiny_run, tmp_path):
    out = tmp_path / "m"
    assert _cli(["export", str(tiny_run), "--merged", str(out)]) == 0
    (out / "old.txt").write_text("old")
    assert _cli(["export", str(tiny_run), "--merged", str(out), "--overwrite"]) == 0
    assert not (out / "old.txt").exists() and (out / "model.safetensors").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    assert _cli(["export", str(tiny_run), "--merged", str(mine), "--overwrite"]) == 2
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("head", ["full", "lora"])
def test_roberta_merged_matches(tiny_roberta, tmp_path, head):
    run = train_tiny_run(tmp_path, tiny_roberta, f"model.head={head}")
    out = export.export_merged(run, tmp_path / "merged")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    model = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    got = scoring.logits_for(model, AutoTokenizer.from_pretrained(str(out)), OWN_TEXTS, 32, precision="fp32")
    np.testing.assert_allclose(got, _run_logits(run, OWN_TEXTS), atol=1e-4, rtol=0)


def test_openvino_export_converts_once_and_predicts_as_torch(tiny_run, tmp_path, agnews_texts, monkeypatch, capsys):
    """`export --openvino DIR`: the merged model converted once and saved; predict and serve on the folder compile
    it without converting again, within 1e-3 of PyTorch's fp32 logits and with the same submission."""
    pytest.importorskip("openvino")
    out = tmp_path / "ov"
    assert _cli(["export", str(tiny_run), "--openvino", str(out)]) == 0
    assert (out / export.OPENVINO_XML).is_file() and (out / "openvino_model.bin").is_file()
    meta = json.loads((out / "loraclf.json").read_text())
    assert meta["kind"] == "openvino" and meta["labels"] == LABELS and "(OpenVINO)" in (out / "README.md").read_text()
    monkeypatch.setattr(scoring, "openvino_convert", lambda *a, **k: 1 / 0)  # a saved model is never converted again
    texts = agnews_texts + [t for t in OWN_TEXTS if t]
    predictor = scoring.load_predictor(out, precision="fp32")
    assert predictor.info["backend"] == "openvino" and predictor.info["kind"] == "openvino"
    np.testing.assert_allclose(predictor.logits(texts), _run_logits(tiny_run, texts), atol=1e-3, rtol=0)
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f"r{i},\"{t}\"\n" for i, t in enumerate(OWN_TEXTS) if t))
    predict.write_predictions(tiny_run, str(src), tmp_path / "torch.csv", names=True, precision="fp32")
    assert _cli(["predict", str(out), str(src), "-o", str(tmp_path / "ov.csv"), "--label-names", "--precision", "fp32"]) == 0
    assert (tmp_path / "torch.csv").read_text() == (tmp_path / "ov.csv").read_text()
    with pytest.raises(UserError, match="is an OpenVINO export"):
        predict.write_predictions(out, str(src), tmp_path / "x.csv", backend="torch")
    assert not (tmp_path / "x.csv").exists()


def test_openvino_export_without_openvino_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    assert _cli(["export", str(tiny_run), "--openvino", str(tmp_path / "ov")]) == 2
    err = capsys.readouterr().err
    assert "openvino package" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "ov").exists()
    assert _cli(["export", str(tiny_run), "--merged", str(tmp_path / "same"), "--openvino", str(tmp_path / "same")]) == 2
    assert "same folder" in capsys.readouterr().err and not (tmp_path / "same").exists()
