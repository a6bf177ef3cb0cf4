import csv
import pickle

import numpy as np
import pytest
import torch

from conftest import LABELS, train_tiny_run
from loraclf import cli, data, predict, scoring
from loraclf.errors import UserError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_bert):
    return train_tiny_run(tmp_path_factory.mktemp("predict"), tiny_bert)


def _read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_submission_uses_id_column_and_keeps_order(tmp_path, tiny_run):
    texts = ["short", "a much longer text " * 20, "mid length text here", "x"]
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f"r{i},{t}\n" for i, t in enumerate(texts)))
    out = tmp_path / "sub.csv"
    assert cli.main(["predict", str(tiny_run), str(src), "-o", str(out)]) == 0
    rows = _read(out)
    assert rows[0] == ["ID", "Label"] and [r[0] for r in rows[1:]] == ["r0", "r1", "r2", "r3"]
    model, tok, cfg, names = scoring.load_for_inference(tiny_run)
    one_by_one = [int(scoring.logits_for(model, tok, [t], 32).argmax()) for t in texts]
    assert [int(r[1]) for r in rows[1:]] == one_by_one


def test_token_cap_changes_batches_not_predictions(tmp_path, tiny_run, capsys):
    import torch
    texts = [f"text {'word ' * (i % 13)} number {i}" for i in range(30)]
    model, tok, cfg, names = scoring.load_for_inference(tiny_run)
    uncapped = scoring.logits_for(model, tok, texts, 32, precision="fp32", max_tokens=0)
    capped = scoring.logits_for(model, tok, texts, 32, precision="fp32", max_tokens=24)  # a row or a few a batch
    np.testing.assert_allclose(capped, uncapped, atol=1e-5)
    assert scoring.scoring_tokens(-1, torch.device("cpu")) == scoring.cpu_scoring_tokens()
    assert scoring.scoring_tokens(-1, torch.device("cuda")) == 0 and scoring.scoring_tokens(512, "cuda") == 512
    src = tmp_path / "in.csv"
    src.write_text("text\n" + "".join(f"{t}\n" for t in texts))
    out = tmp_path / "sub.csv"
    assert cli.main(["predict", str(tiny_run), str(src), "-o", str(out), "--max-tokens", "24"]) == 0
    assert [int(r[1]) for r in _read(out)[1:]] == capped.argmax(-1).tolist()
    assert cli.main(["predict", str(tiny_run), str(src), "-o", str(tmp_path / "no.csv"), "--max-tokens", "-2"]) == 2
    assert "max tokens -2" in capsys.readouterr().err and not (tmp_path / "no.csv").exists()


def test_row_index_names_and_probs(tmp_path, tiny_run):
    import datasets
    src = tmp_path / "test_unlabelled.pkl"
    src.write_bytes(pickle.dumps(datasets.Dataset.from_dict({"text": ["football goal", "chip software", "war"]})))
    out = tmp_path / "sub.csv"
    assert cli.main(["predict", str(tiny_run), str(src), "-o", str(out), "--label-names", "--probs"]) == 0
    rows = _read(out)
    assert rows[0] == ["ID", "Label"] + [f"p_{n}" for n in LABELS]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"] and all(r[1] in LABELS for r in rows[1:])
    probs = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_evaluate_writes_json(tmp_path, tiny_run, capsys):
    src = tmp_path / "labelled.csv"
    src.write_text("label,text\nSports,football goal\nWorld,election war\n")
    assert cli.main(["evaluate", str(tiny_run), "--data", str(src), "--no-report"]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert (tiny_run / "eval-labelled.json").is_file()


def test_scoring_switches_come_from_the_run_config(tmp_path, tiny_run, monkeypatch):
    """predict, evaluate and serve score a run as its config says: whole model in bf16 unless
    scoring.bf16_full_cast is false, the last layer for the first token only unless scoring.cls_only_last_layer is,
    glibc's malloc thresholds fixed on CPU unless cpu.tune_malloc is."""
    import json
    import shutil
    from loraclf import pipeline
    seen = []
    real = scoring.logits_for
    monkeypatch.setattr(scoring, "logits_for",
                        lambda *a, **k: seen.append((k.get("full_cast"), k.get("cls_only"), k.get("tune_malloc"))) or real(*a, **k))
    src = tmp_path / "in.csv"
    src.write_text("label,text\nWorld,war and peace\nSports,a match\n")
    for flag in (True, False):
        run = tmp_path / f"run-{flag}"
        shutil.copytree(tiny_run, run)
        cfg = json.loads((run / "config.json").read_text())
        cfg["scoring"]["bf16_full_cast"] = flag
        cfg["scoring"]["cls_only_last_layer"] = not flag
        cfg["cpu"]["tune_malloc"] = flag
        (run / "config.json").write_text(json.dumps(cfg))
        seen.clear()
        predict.write_predictions(run, str(src), tmp_path / "out.csv")
        pipeline.evaluate_run(run, [str(src)])
        scoring.load_predictor(run).logits(["a text"])
        assert seen and set(seen) == {(flag, not flag, flag)}


@pytest.mark.parametrize("asked", [True, False])
def test_cpu_scoring_fixes_malloc_thresholds_when_asked(tiny_run, monkeypatch, asked):
    from loraclf import fastpath
    tuned = []
    monkeypatch.setattr(fastpath, "tune_malloc", lambda: tuned.append(1) or True)
    model, tok, _, _ = scoring.load_for_inference(tiny_run)
    scoring.logits_for(model, tok, ["a text"], 32, device=torch.device("cpu"), tune_malloc=asked)
    assert tuned == ([1] if asked else [])


def test_openvino_backend_scores_as_torch_does(tmp_path, tiny_run):
    """`predict --backend openvino`: the merged model converted in-process, OpenVINO's logits close to torch's
    fp32 ones (fp32 there too), the same predictions in the submission; with the first-token last layer
    converted in or not, the same logits."""
    pytest.importorskip("openvino")
    texts = [f"text {'word ' * (i % 13)} number {i}" for i in range(30)] + ["football goal", "a much longer text " * 20]
    model, tok, cfg, names = scoring.load_for_inference(tiny_run)
    reference = scoring.logits_for(model, tok, texts, 32, precision="fp32", cls_only=False)
    enc = data.encode(tok, data.Examples(texts, None, []), 32)
    for cls_only in (True, False):
        request = scoring.openvino_compile(model, "fp32", cls_only=cls_only)
        logits = scoring.openvino_scores(request, enc, tok.pad_token_id, batch_size=8, max_tokens=64)
        np.testing.assert_allclose(logits, reference, atol=1e-4)
    src = tmp_path / "in.csv"
    src.write_text("text\n" + "".join(f"{t}\n" for t in texts))
    out = tmp_path / "sub.csv"
    assert cli.main(["predict", str(tiny_run), str(src), "-o", str(out), "--backend", "openvino",
                     "--precision", "fp32"]) == 0
    assert [int(r[1]) for r in _read(out)[1:]] == reference.argmax(-1).tolist()


def test_openvino_backend_says_what_to_do_when_it_cannot_run(tmp_path, tiny_run, capsys, monkeypatch):
    import sys
    src = tmp_path / "in.csv"
    src.write_text("text\nfootball goal\n")
    out = tmp_path / "sub.csv"
    if "openvino" in sys.modules or __import__("importlib").util.find_spec("openvino"):
        assert cli.main(["predict", str(tiny_run), str(src), "-o", str(out), "--backend", "openvino",
                         "--precision", "fp16"]) == 2
        assert "not fp16" in capsys.readouterr().err and not out.exists()
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: the import raises ImportError
    assert cli.main(["predict", str(tiny_run), str(src), "-o", str(out), "--backend", "openvino"]) == 2
    err = capsys.readouterr().err
    assert "needs the openvino package" in err and ".[openvino]" in err and "Traceback" not in err and not out.exists()
    with pytest.raises(UserError, match="not an ONNX export"):
        predict.write_predictions(tiny_run, str(src), out, backend="onnx")
