"""Hostile and careless numbers in a config: every numeric field, from every way a config is given (--set, a
TOML or JSON --config file, the CLI flags that set config keys), is checked finite and in range. Each
mistake is one line on stderr naming the key, exit code 2, no traceback and no run directory."""
import dataclasses
import json
import typing

import pytest

from conftest import LABELS
from loraclf import cli, config

NUMERIC_FIELDS = list(config.RANGES)
LIST_FIELDS = {"adapter.layers", "train.pos_weight"}  # lists of numbers: the hostile value is put in a list
DICT_FIELDS = {"adapter.rank_pattern"}    # dict[str, int]: the hostile value is a module's rank

HUGE = "1" * 5000   # past Python's int-to-text digit limit
LONG = "9" * 4000   # readable, but out of every field's range

# a value as text in each format: (--set, TOML literal, JSON literal)
HOSTILE = {
    "nan": ("nan", "nan", "NaN"),
    "NaN": ("NaN", "nan", "NaN"),
    "inf": ("inf", "inf", "Infinity"),
    "Infinity": ("Infinity", "+inf", "Infinity"),
    "-inf": ("-inf", "-inf", "-Infinity"),
    "-Infinity": ("-Infinity", "-inf", "-Infinity"),
    "1e999": ("1e999", "1e999", "1e999"),
    "5000 digits": (HUGE, HUGE, HUGE),
    "4000 digits": (LONG, LONG, LONG),
    "-5000 digits": ("-" + HUGE, "-" + HUGE, "-" + HUGE),
    "negative": ("-5", "-5", "-5"),
    "bool true": ("true", "true", "true"),
    "bool false": ("false", "false", "false"),
    "quoted number": ('"3"', '"3"', '"3"'),
    "word": ("abc", '"abc"', '"abc"'),
    "list": ("[[1]]", "[[1]]", "[[1]]"),
}


def _wrap(key: str, literal: str, fmt: str) -> str:
    if key in LIST_FIELDS:
        return f"[{literal}]"
    if key in DICT_FIELDS:
        return "{query = %s}" % literal if fmt == "toml" else '{"query": %s}' % literal
    return literal


@pytest.fixture(scope="module", autouse=True)
def one_parser():
    """Hundreds of CLI calls here: the argument parser is built once (parse_args keeps no state between calls)."""
    built = cli.parser()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "parser", lambda: built)
        yield


def _one_clean_line(err: str) -> None:
    assert err.startswith("loraclf: error: ") and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.fixture
def train_argv(tmp_path, small_csv, tiny_bert):
    def argv(*extra):
        return ["train", "--data", str(small_csv), "--out", str(tmp_path / "run"), "--set", f"model.name={tiny_bert}",
                "--set", f"data.label_names={json.dumps(LABELS)}", *extra]
    return argv


def _refused(code, capsys, tmp_path, *needles):
    captured = capsys.readouterr()
    assert code == 2, captured.err
    _one_clean_line(captured.err)
    for needle in needles:
        assert needle in captured.err, captured.err
    assert len(captured.err) < 2000  # a 5,000-digit value is not echoed back whole
    assert not (tmp_path / "run").exists()


def test_every_numeric_field_has_a_range():
    cfg = config.Config()
    numeric = []
    for section in config.SECTIONS:
        for f in dataclasses.fields(getattr(cfg, section)):
            hint = typing.get_type_hints(type(getattr(cfg, section)))[f.name]
            args = typing.get_args(hint)
            if hint in (int, float) or (args and args[-1] in (int, float)):
                numeric.append(f"{section}.{f.name}")
    assert sorted(numeric) == sorted(NUMERIC_FIELDS)
    for key in NUMERIC_FIELDS:  # the defaults themselves are in range
        config.validate(cfg)


def _cases(values, typed=True):
    # from --set, a quoted number inside a list or dict is read as the number, as "3,4,5" is
    return [(k, v) for k in NUMERIC_FIELDS for v in values
            if typed or not (v == "quoted number" and (k in LIST_FIELDS or k in DICT_FIELDS))]


@pytest.mark.parametrize("key, value", _cases(HOSTILE, typed=False))
def test_hostile_number_by_set(tmp_path, capsys, train_argv, key, value):
    text = _wrap(key, HOSTILE[value][0], "set")
    _refused(cli.main(train_argv("--set", f"{key}={text}")), capsys, tmp_path, key)


FILE_VALUES = ["NaN", "inf", "-inf", "5000 digits", "4000 digits", "negative", "bool true", "quoted number"]


@pytest.mark.parametrize("key, value", _cases(FILE_VALUES))
def test_hostile_number_in_a_toml_config(tmp_path, capsys, train_argv, key, value):
    section, name = key.split(".")
    path = tmp_path / "c.toml"
    path.write_text(f"[{section}]\n{name} = {_wrap(key, HOSTILE[value][1], 'toml')}\n")
    code = cli.main(train_argv("--config", str(path)))
    _refused(code, capsys, tmp_path, *((key,) if "digits" not in value or value == "4000 digits" else ()))


@pytest.mark.parametrize("key, value", _cases(FILE_VALUES))
def test_hostile_number_in_a_json_config(tmp_path, capsys, train_argv, key, value):
    section, name = key.split(".")
    path = tmp_path / "c.json"
    path.write_text('{"%s": {"%s": %s}}' % (section, name, _wrap(key, HOSTILE[value][2], "json")))
    code = cli.main(train_argv("--config", str(path)))
    _refused(code, capsys, tmp_path, *((key,) if "digits" not in value or value == "4000 digits" else ()))


@pytest.mark.parametrize("key, value", [
    ("budget.max_trainable", "0"), ("model.encoder_dropout", "-0.5"), ("model.encoder_dropout", "1"),
    ("adapter.r", "0"), ("adapter.alpha", "0"), ("adapter.dropout", "1"), ("adapter.lr_ratio_b", "0"),
    ("adapter.rank_pattern", '{"query": 0}'), ("adapter.rank_pattern", '{"value": -2}'), ("adapter.layers", "[-1]"),
    ("data.val_size", "1.5"), ("data.val_size", "1"), ("data.val_size", "1.0"), ("data.val_size", "-0.1"),
    ("data.val_size", "640.5"), ("data.max_length", "0"), ("data.max_length", "-1"), ("data.max_length_infer", "-1"),
    ("data.max_train_samples", "-1"), ("train.epochs", "0"), ("train.batch_size", "0"), ("train.grad_accum", "0"),
    ("train.lr", "0"), ("train.lr", "-1e-4"), ("train.weight_decay", "-0.01"), ("train.eps", "0"),
    ("train.warmup_steps", "-1"), ("train.warmup_ratio", "1.5"), ("train.max_grad_norm", "-1"),
    ("train.label_smoothing", "1"), ("train.eval_every", "-1"), ("train.save_every", "-1"), ("train.patience", "-1"),
    ("train.seed", "-1"), ("train.seed", str(2**32)), ("scoring.batch_size", "0"), ("scoring.max_tokens", "-2"),
    ("cpu.threads", "-1"), ("cpu.threads", "100000"),
])
def test_out_of_range_by_set(tmp_path, capsys, train_argv, key, value):
    _refused(cli.main(train_argv("--set", f"{key}={value}")), capsys, tmp_path, key)


@pytest.mark.parametrize("override", [
    "data.val_size=0", "data.val_size=0.5", "data.val_size=640", "data.val_size=2", "model.encoder_dropout=-1",
    "model.encoder_dropout=0", "scoring.max_tokens=-1", "scoring.max_tokens=0", "train.seed=0", f"train.seed={2**32 - 1}",
    "train.max_grad_norm=0", "cpu.threads=0", "adapter.rank_pattern={\"query\": 2}", "adapter.layers=[0, 1]",
    "train.epochs=0.5", "adapter.alpha=1e-3",
])
def test_boundaries_that_are_allowed(override):
    config.load("agnews-a", overrides=[override])


@pytest.mark.parametrize("flag, value", [
    ("--epochs", "nan"), ("--epochs", "inf"), ("--epochs", "-1"), ("--epochs", "0"), ("--epochs", "abc"),
    ("--epochs", HUGE), ("--epochs", "1e999"), ("--seed", "-1"), ("--seed", "1.5"), ("--seed", "nan"),
    ("--seed", HUGE), ("--seed", str(2**32)), ("--budget", "0"), ("--budget", "-3"), ("--budget", "nan"),
    ("--budget", "1.5"), ("--budget", HUGE), ("--max-train-samples", "-1"), ("--max-train-samples", "nan"),
    ("--max-train-samples", "abc"),
])
def test_hostile_cli_flags_of_train(tmp_path, capsys, train_argv, flag, value):
    _refused(cli.main(train_argv(flag, value)), capsys, tmp_path)


@pytest.mark.parametrize("argv", [
    ["--num-labels", "-3"], ["--num-labels", "0"], ["--num-labels", "1"], ["--num-labels", "abc"],
    ["--num-labels", HUGE], ["--num-labels", "nan"], ["--num-labels", "2.5"], ["--budget", "nan"], ["--budget", "-1"],
    ["--budget", HUGE],
])
def test_hostile_plan_flags(tmp_path, capsys, tiny_bert, argv):
    code = cli.main(["plan", "--model", str(tiny_bert), *argv])
    _refused(code, capsys, tmp_path, argv[0] if argv[0] == "--num-labels" else "budget")
    assert capsys.readouterr().out == ""


def test_plan_with_two_labels_works(capsys, tiny_bert):
    assert cli.main(["plan", "--model", str(tiny_bert), "--num-labels", "2", "--budget", "100000",
                     "--set", "data.max_length=128"]) == 0
    assert "2 classes" in capsys.readouterr().out


def test_argparse_mistakes_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["predict", "run", "in.csv", "--batch-size", HUGE])
    code = e.value.code
    _refused(code, capsys, tmp_path, "--batch-size")


# ---------------------------------------------------------------- lists, degenerate runs and model limits

@pytest.mark.parametrize("source", ["set", "toml", "json"])
def test_empty_target_modules(tmp_path, capsys, train_argv, source):
    if source == "set":
        argv = train_argv("--set", "adapter.target_modules=[]")
    else:
        path = tmp_path / f"c.{source}"
        path.write_text("[adapter]\ntarget_modules = []\n" if source == "toml" else '{"adapter": {"target_modules": []}}')
        argv = train_argv("--config", str(path))
    _refused(cli.main(argv), capsys, tmp_path, "adapter.target_modules is empty")


def test_role_names_in_target_modules_are_not_refused_here():
    # role names ("attention-qv", "all-linear") are resolved against the model, not by the config
    assert config.load(None, None, ["adapter.target_modules=all-linear"]).adapter.target_modules == ["all-linear"]


@pytest.mark.parametrize("content, suffix, message", [
    ("[1, 2]", ".json", "is a list, not a table of sections"),
    ("3", ".json", "is a int, not a table of sections"),
    ('"train"', ".json", "is a str, not a table of sections"),
    ("null", ".json", "is a NoneType, not a table of sections"),
    ('{"train": 5}', ".json", "config section 'train'"),
    ('{"budget": 1000000}', ".json", "config section 'budget'"),
    ('{"nonsense": {}}', ".json", "unknown config section 'nonsense'"),
    ('{"preset": [1]}', ".json", "config key preset"),
    ("[" * 100_000 + "]" * 100_000, ".json", "nested too deeply"),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, ".json", "nested too deeply"),
    ("a = " + "[" * 100_000 + "]" * 100_000, ".toml", "nested too deeply"),
    ("a = " + "{b = " * 100_000 + "1" + "}" * 100_000, ".toml", "nested too deeply"),
    ("[train]\nseed = " + HUGE + "\n", ".toml", "a number too long to read"),
    ('{"train": {"seed": ' + HUGE + "}}", ".json", "a number too long to read"),
])
def test_config_files_that_are_not_configs(tmp_path, capsys, train_argv, content, suffix, message):
    path = tmp_path / f"c{suffix}"
    path.write_text(content)
    _refused(cli.main(train_argv("--config", str(path))), capsys, tmp_path, message, str(path))


def test_set_value_nested_too_deeply(tmp_path, capsys, train_argv):
    value = "[" * 100_000 + "]" * 100_000
    _refused(cli.main(train_argv("--set", f"adapter.layers={value}")), capsys, tmp_path, "nested too deeply")


@pytest.mark.parametrize("value", ['["World"]', '["World", "World"]'])
def test_label_names_of_one_class(tmp_path, capsys, train_argv, value):
    _refused(cli.main(train_argv("--set", f"data.label_names={value}")), capsys, tmp_path, "data.label_names")


def test_training_data_of_one_class_is_refused(tmp_path, capsys, tiny_bert):
    path = tmp_path / "one.csv"
    path.write_text("label,text\n" + "".join(f"0,text number {i}\n" for i in range(20)))
    out = tmp_path / "run"
    for names in ("[]", json.dumps(LABELS)):
        code = cli.main(["train", "--data", str(path), "--out", str(out), "--set", f"model.name={tiny_bert}",
                         "--set", f"data.label_names={names}", "--set", "data.val_size=0"])
        _refused(code, capsys, tmp_path, "one class only", str(path))


@pytest.mark.parametrize("model, limit", [("bert", 130), ("roberta", 130)])
@pytest.mark.parametrize("key", ["data.max_length", "data.max_length_infer"])
def test_max_length_beyond_the_models_positions(tmp_path, capsys, small_csv, request, model, limit, key):
    # tiny BERT: 130 positions; tiny RoBERTa: 132, of which pad_token_id + 1 = 2 are never a text's
    model_dir = request.getfixturevalue(f"tiny_{model}")
    capsys.readouterr()  # what building the fixture printed
    out = tmp_path / "run"
    base = ["--set", f"model.name={model_dir}", "--set", f"data.label_names={json.dumps(LABELS)}", "--set", "data.max_length=32"]
    code = cli.main(["train", "--data", str(small_csv), "--out", str(out), *base, "--set", f"{key}={limit + 1}"])
    _refused(code, capsys, tmp_path, key, f"({limit} tokens)")
    code = cli.main(["plan", "--preset", "agnews-a", *base, "--set", f"{key}={limit + 1}"])
    _refused(code, capsys, tmp_path, key)
    assert cli.main(["plan", "--preset", "agnews-a", *base, "--set", f"{key}={limit}", "--budget", "10000000"]) == 0
