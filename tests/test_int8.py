"""`--precision int8`: the encoder's linear layers quantized once at load, the head kept in fp32, logits close to
fp32's; refused with one line where it cannot run (another backend, a GPU)."""
import csv
import sys

import numpy as np
import pytest
import torch

from conftest import train_tiny_run
from loraclf import cli, int8, predict, scoring
from loraclf.errors import UserError

TEXTS = [f"text {'word ' * (i % 13)} number {i}" for i in range(24)] + ["football goal", "a much longer text " * 20]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert):
    return train_tiny_run(tmp_path_factory.mktemp("int8"), tiny_bert)


def test_quantize_replaces_encoder_linears_and_keeps_the_head(tiny_run):
    model, tok, _, _ = scoring.load_for_inference(tiny_run)
    reference = scoring.logits_for(model, tok, TEXTS, 32, precision="fp32")
    head_before = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear and not n.startswith("bert.")}
    narrowing = {n for n, m in model.base_model.named_modules()
                 if type(m) is torch.nn.Linear and m.in_features > m.out_features}
    assert narrowing == {f"encoder.layer.{i}.output.dense" for i in range(2)}  # the feed-forward's output
    int8.quantize(model)
    left = {n for n, m in model.base_model.named_modules() if type(m) is torch.nn.Linear}
    assert left == narrowing  # every other encoder linear is now a dynamic int8 one, weights per channel
    dynamic = [m for m in model.base_model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(dynamic) == len(int8.quantized_linears(scoring.load_for_inference(tiny_run)[0].base_model)) > 0
    assert all(m.weight().qscheme() == torch.per_channel_affine for m in dynamic)
    head_after = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear and not n.startswith("bert.")}
    assert head_after == head_before and head_after
    quantized = scoring.logits_for(model, tok, TEXTS, 32, precision="fp32")
    assert not np.array_equal(quantized, reference)  # it did change the arithmetic
    np.testing.assert_allclose(quantized, reference, atol=0.05 * np.abs(reference).max() + 1e-3)


def test_predict_int8_writes_predictions_close_to_fp32(tmp_path, tiny_run):
    src = tmp_path / "in.csv"
    src.write_text("text\n" + "".join(f"{t}\n" for t in TEXTS))
    out8, out32 = tmp_path / "int8.csv", tmp_path / "fp32.csv"
    assert cli.main(["predict", str(tiny_run), str(src), "-o", str(out8), "--precision", "int8", "--probs"]) == 0
    assert cli.main(["predict", str(tiny_run), str(src), "-o", str(out32), "--precision", "fp32", "--probs"]) == 0
    with open(out8, newline="") as f8, open(out32, newline="") as f32:
        p8 = np.array([[float(x) for x in r[2:]] for r in list(csv.reader(f8))[1:]])
        p32 = np.array([[float(x) for x in r[2:]] for r in list(csv.reader(f32))[1:]])
    assert p8.shape == p32.shape == (len(TEXTS), 4)
    np.testing.assert_allclose(p8, p32, atol=0.02)
    info = scoring.load_predictor(tiny_run, precision="int8").info
    assert info["precision"] == "int8" and info["backend"] == "torch"


def test_int8_is_refused_with_one_line_where_it_cannot_run(tmp_path, tiny_run, capsys, monkeypatch):
    src = tmp_path / "in.csv"
    src.write_text("text\nfootball goal\n")
    out = tmp_path / "sub.csv"
    with pytest.raises(UserError, match="torch backend"):
        scoring.load_predictor(tiny_run, backend="openvino", precision="int8")
    monkeypatch.setattr(scoring, "inference_device", lambda: torch.device("cuda"))
    assert cli.main(["predict", str(tiny_run), str(src), "-o", str(out), "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert "CPU only" in err and "Traceback" not in err and not out.exists()
    monkeypatch.undo()
    monkeypatch.setattr(int8, "quantized_engines", lambda: ["qnnpack"])
    with pytest.raises(UserError, match="no x86 int8 kernels"):
        predict.write_predictions(tiny_run, str(src), out, precision="int8")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "torch.ao.quantization", None)  # a torch without eager quantization
    assert cli.main(["predict", str(tiny_run), str(src), "-o", str(out), "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert "no dynamic int8 quantization" in err and "Traceback" not in err and not out.exists()
    with pytest.raises(SystemExit) as e:
        cli.main(["predict", str(tiny_run), str(src), "-o", str(out), "--precision", "int4"])
    assert e.value.code == 2
