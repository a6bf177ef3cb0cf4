"""Encoders beyond the family table that either work or are refused in one line, never half-trained: a head the
model keeps inside its body (Perceiver), tied embeddings counted once on the meta device (BART), a forward that
fails under bf16 autocast (X-MOD), layers built of something other than nn.Linear (I-BERT, SqueezeBERT), inputs
of one fixed length only (Nystromformer, Reformer), roles without linear attention (FNet, XLNet), and ONNX graphs
that only one exporter gets right (Funnel's fail both). Tiny random models built here, as in
test_families.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import LABELS
from loraclf import budget, cli, config, families, model, precision

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=132)
CONFIGS = {
    "perceiver": dict(d_model=32, d_latents=32, num_latents=8, num_blocks=1, num_self_attends_per_block=2,
                      num_self_attention_heads=4, num_cross_attention_heads=4, max_position_embeddings=128),
    "bart": dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                 encoder_ffn_dim=37, decoder_ffn_dim=37),
    "xmod": dict(type_vocab_size=1, languages=["en_XX"], default_language="en_XX"),
    "ibert": dict(type_vocab_size=1, quant_mode=False),
    "squeezebert": dict(embedding_size=32, q_groups=2, k_groups=2, v_groups=2, post_attention_groups=1,
                        intermediate_groups=1, output_groups=1),
    "nystromformer": dict(num_landmarks=8, segment_means_seq_len=32, conv_kernel_size=3),
    "reformer": dict(axial_pos_shape=[8, 16], axial_pos_embds_dim=[16, 16], attn_layers=["local", "lsh"],
                     attention_head_size=8, feed_forward_size=37, local_attn_chunk_length=8, lsh_attn_chunk_length=8,
                     is_decoder=False, num_buckets=4, max_position_embeddings=128),
    "fnet": {},
    "xlnet": dict(d_model=32, n_layer=2, n_head=4, d_inner=37),
    "funnel": dict(block_sizes=[1, 1], d_model=32, n_head=4, d_head=8, d_inner=37),
}
NOT_TINY = {"funnel": ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"),
            "xlnet": ("max_position_embeddings", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "intermediate_size")}
WORDS = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]


def _save(kind: str, out: Path, tokenizer_dir: Path) -> Path:
    from transformers import AutoConfig, AutoModel, AutoTokenizer, FunnelModel
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    common = {k: v for k, v in TINY.items() if k not in NOT_TINY.get(kind, ())}
    common |= dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=0, eos_token_id=2)
    conf = AutoConfig.for_model(kind, **(common | CONFIGS[kind]))
    torch.manual_seed(0)
    (FunnelModel(conf) if kind == "funnel" else AutoModel.from_config(conf)).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, roberta_dir):
    made = {}

    def get(kind: str) -> Path:
        if kind not in made:
            made[kind] = _save(kind, tmp_path_factory.mktemp(kind), roberta_dir)
        return made[kind]
    return get


def _data(tmp: Path) -> Path:
    path = tmp / "train.csv"
    path.write_text("label,text\n" + "".join(f"{i % 4},{WORDS[i % 4]} {i}\n" for i in range(24)))
    return path


def _train(tmp: Path, model_dir: Path, *sets: str) -> tuple[int, Path]:
    out = tmp / "run"
    args = ["train", "--data", str(_data(tmp)), "--out", str(out), "--no-report", "--epochs", "1",
            "--set", f"model.name={model_dir}", "--set", f"data.label_names={json.dumps(LABELS)}",
            "--set", "data.max_length=32", "--set", "adapter.r=4", "--set", "train.batch_size=8"]
    for s in sets:
        args += ["--set", s]
    return cli.main(args), out


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("loraclf: error:")]
    assert len(lines) == 1 and "Traceback" not in err and "unexpected" not in lines[0], err
    return lines[0]


@pytest.mark.parametrize("kind, message", [
    ("perceiver", "cannot find the classification head of this PerceiverForSequenceClassification"),
    ("ibert", "has no encoder layers built of torch.nn.Linear (its layers are built of QuantLinear)"),
    ("squeezebert", "has no encoder layers built of torch.nn.Linear (its layers are built of Conv1d)"),
    ("nystromformer", "NystromformerForSequenceClassification fails a test forward of 2 rows x"),
    ("reformer", "ReformerForSequenceClassification fails a test forward of 2 rows x"),
])
def test_unsupported_encoders_are_refused_in_one_line_before_a_run_exists(kind, message, tiny, tmp_path, capsys):
    code, out = _train(tmp_path, tiny(kind), "train.precision=fp32")
    err = capsys.readouterr().err
    assert code == 2 and message in _one_line(err), err
    assert not out.exists()


def test_tied_embeddings_count_once_when_planning(tiny, tmp_path):
    """BART's encoder and decoder share one embedding: the meta-device plan must count it once, as the built model;
    and it trains (its test forward ends rows with <eos>, as its tokenizer does)."""
    cfg = config.load(None, None, [f"model.name={tiny('bart')}", "adapter.r=4", "data.max_length=32"])
    planned = budget.count_config(cfg, LABELS)
    built = budget.count(model.attach(cfg, model.load_base(cfg, LABELS)))
    assert (planned.trainable, planned.total) == (built.trainable, built.total)
    assert _train(tmp_path, tiny("bart"), "train.precision=fp32")[0] == 0


def test_a_family_that_fails_under_bf16_runs_fp32_under_auto_and_refuses_bf16(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(precision, "cpu_kind", lambda: "avx512-bf16")  # auto means bf16 on any CPU here
    code, out = _train(tmp_path, tiny("xmod"))
    err = capsys.readouterr().err
    assert code == 0 and "precision auto runs in fp32 here (its forward fails under bf16 autocast" in err, err
    assert json.loads((out / "config.json").read_text())["resolved"]["train.precision"] == "fp32"
    (tmp_path / "bf16").mkdir()
    code, _ = _train(tmp_path / "bf16", tiny("xmod"), "train.precision=bf16")
    assert code == 2 and "cannot run in bf16" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("kind, role", [("fnet", "ffn"), ("xlnet", "ffn"), ("funnel", "attention-output")])
def test_inferred_roles_without_linear_attention(kind, role, tiny):
    base = model.load_base(config.load(None, None, [f"model.name={tiny(kind)}", "data.max_length=32"]), LABELS)
    assert families.resolve(base, [role])[role]


def test_onnx_falls_back_to_the_exporter_whose_graph_checks_out(tiny_bert, tmp_path, monkeypatch):
    """Where the dynamo graph fails the check under onnxruntime (Canine's fixes the sequence length), auto keeps
    the legacy exporter's."""
    pytest.importorskip("onnxruntime")
    from conftest import train_tiny_run
    from loraclf import export
    run = train_tiny_run(tmp_path, tiny_bert, "train.precision=fp32")
    check = export._onnx_check
    seen = []

    def first_fails(folder, texts, reference):
        seen.append(json.loads((folder / "loraclf.json").read_text())["exporter"])
        return "a fixed sequence length" if len(seen) == 1 else check(folder, texts, reference)
    monkeypatch.setattr(export, "_onnx_check", first_fails)
    assert cli.main(["export", str(run), "--onnx", str(tmp_path / "onnx")]) == 0
    assert seen == ["dynamo", "legacy"]
    assert json.loads((tmp_path / "onnx" / "loraclf.json").read_text())["exporter"] == "legacy"


def test_export_writes_all_its_folders_or_none(tiny, tmp_path, capsys):
    """Funnel's graph fails under onnxruntime with both exporters: --merged and --onnx together leave nothing."""
    code, run = _train(tmp_path, tiny("funnel"), "train.precision=fp32", "scoring.precision=fp32")
    assert code == 0
    code = cli.main(["export", str(run), "--merged", str(tmp_path / "merged"), "--onnx", str(tmp_path / "onnx")])
    assert code == 2 and "ONNX export failed (dynamo:" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "merged").exists() and not (tmp_path / "onnx").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
