import pytest

from loraclf import config
from loraclf.errors import UserError


def test_presets_load_and_validate():
    assert {"agnews-a", "agnews-b", "agnews-quick"} <= set(config.preset_names())
    a = config.load("agnews-a")
    assert (a.adapter.r, a.adapter.alpha, a.adapter.target_modules) == (6, 24, ["query", "key", "value"])
    b = config.load("agnews-b")
    assert b.train.gradient_checkpointing and b.train.grad_accum == 2 and b.data.val_size == 640
    assert (b.data.max_length, b.data.max_length_infer) == (128, 256)
    # the reports scored in the precision they trained in
    assert (a.train.precision, a.scoring.precision, b.train.precision, b.scoring.precision) == ("fp32",) * 2 + ("fp16",) * 2


def test_set_reaches_every_field_with_types():
    cfg = config.load("agnews-a", overrides=["adapter.r=8", "train.lr=1e-3", "adapter.target_modules=query,value",
                                             "train.gradient_checkpointing=true", "data.val_size=640", "epochs=2"])
    assert cfg.adapter.r == 8 and cfg.train.lr == 1e-3 and cfg.adapter.target_modules == ["query", "value"]
    assert cfg.train.gradient_checkpointing is True and cfg.data.val_size == 640 and cfg.train.epochs == 2.0
    for key in config.valid_keys():
        section, name = key.split(".")
        assert hasattr(getattr(cfg, section), name)


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1", "unknown config key 'train.lrr'"),
    ("nonsense=1", "unknown config key 'nonsense'"),
    ("adapter.r=abc", "adapter.r: 'abc' is not a valid int"),
    ("adapter.r=1.5", "is not a valid int"),
    ("train.gradient_checkpointing=maybe", "is not a valid bool"),
    ("train.scheduler=exponential", "choose one of: linear, cosine, constant"),
    ("adapter.r=0", "adapter.r 0 is out of range"),
    ("scoring.max_tokens=-2", "scoring.max_tokens -2 is out of range"),
    ("train.lr", "is not key=value"),
])
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(UserError) as e:
        config.load("agnews-a", overrides=[override])
    assert message in str(e.value)
    if "unknown config key" in message:
        assert "valid keys:" in str(e.value) and "adapter.target_modules" in str(e.value)


def test_unknown_preset_and_config_file(tmp_path):
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        config.load("nope")
    bad = tmp_path / "c.toml"
    bad.write_text("[train]\nlearning_rate = 1\n")
    with pytest.raises(UserError, match="unknown config key 'train.learning_rate'"):
        config.load(None, str(bad))
    good = tmp_path / "g.toml"
    good.write_text("[adapter]\nr = 12\n[train]\nepochs = 1\n")
    assert config.load("agnews-a", str(good)).adapter.r == 12


def test_saved_config_round_trips():
    cfg = config.load("agnews-b", overrides=["adapter.r=5"])
    assert config.from_dict(cfg.to_dict()) == cfg


def test_balanced_class_weights():
    from loraclf.train import class_weights
    w = class_weights([0, 0, 0, 1], 2, "balanced")
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    assert class_weights([0, 1], 2, "none").tolist() == [1.0, 1.0]
