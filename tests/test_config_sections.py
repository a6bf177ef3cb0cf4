"""Config sections that say what they govern: [budget], [scoring] and [cpu] beside [model], [adapter], [data] and
[train]. Keys that moved still load from --set, TOML and JSON files and saved run configs, with one note on stderr,
so run directories written before keep working with predict and evaluate."""
import json
import tomllib
from importlib import resources

import pytest

from conftest import LABELS, train_tiny_run
from loraclf import cli, config, pipeline
from loraclf.errors import UserError


@pytest.fixture(autouse=True)
def fresh_notes(monkeypatch):
    """Each old name is noted once per process: every test starts as a fresh process would."""
    monkeypatch.setattr(config, "_noted", set())


def _note_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("loraclf: note: config keys moved")]


def test_the_sections():
    keys = config.valid_keys()
    assert {"budget.max_trainable", "scoring.batch_size", "scoring.max_tokens", "scoring.bf16_full_cast",
            "scoring.cls_only_last_layer", "cpu.threads", "cpu.tune_malloc", "cpu.fast_dropout",
            "cpu.share_dropout_masks"} <= set(keys)
    assert not set(config.RENAMED) & set(keys)          # an old name is never also a current one
    assert set(config.RENAMED.values()) <= set(keys)    # and always points at one
    assert list(config.Config().to_dict())[:1] == ["budget"]  # the budget leads a saved config


@pytest.mark.parametrize("name", config.preset_names())
def test_presets_state_their_budget_and_use_current_keys(name, capsys):
    text = resources.files("loraclf.presets").joinpath(f"{name}.toml").read_text()
    assert tomllib.loads(text)["budget"]["max_trainable"] == 1_000_000
    config.load(name)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("old, new", list(config.RENAMED.items()))
def test_old_key_by_set_lands_in_its_new_place(capsys, old, new):
    value = {"budget.max_trainable": 123456, "scoring.batch_size": 7, "scoring.max_tokens": 512,
             "cpu.threads": 3}.get(new, False)
    cfg = config.load(None, None, [f"{old}={json.dumps(value)}"])
    section, name = new.split(".")
    assert getattr(getattr(cfg, section), name) == value
    notes = _note_lines(capsys.readouterr().err)
    assert len(notes) == 1 and f"{old} -> {new}" in notes[0]


@pytest.mark.parametrize("old, new", list(config.RENAMED.items()))
def test_a_saved_config_with_both_names_of_a_key_is_refused(old, new):
    """Which value would win depends on the order of the sections: refused, not one silently dropped."""
    saved = config.Config().to_dict()
    (old_s, _, old_k), (new_s, _, new_k) = old.partition("."), new.partition(".")
    saved[old_s][old_k] = saved[new_s][new_k]
    with pytest.raises(UserError, match=f"sets both {old} .* and {new}"):
        config.from_dict(saved)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_old_keys_in_a_user_file_load_with_one_note(tmp_path, capsys, suffix):
    path = tmp_path / f"old{suffix}"
    if suffix == ".toml":
        path.write_text("[train]\nbudget = 50000\neval_max_tokens = 1024\ntune_malloc = false\nthreads = 2\nlr = 1e-3\n")
    else:
        path.write_text(json.dumps({"train": {"budget": 50000, "eval_max_tokens": 1024, "tune_malloc": False,
                                              "threads": 2, "lr": 1e-3}}))
    cfg = config.load(None, str(path), ["train.eval_batch_size=9"])
    assert (cfg.budget.max_trainable, cfg.scoring.max_tokens, cfg.cpu.tune_malloc, cfg.cpu.threads, cfg.train.lr,
            cfg.scoring.batch_size) == (50000, 1024, False, 2, 1e-3, 9)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(_note_lines(err)) == 1
    assert "train.budget -> budget.max_trainable" in err and "train.eval_batch_size -> scoring.batch_size" in err


def test_old_keys_are_checked_like_new_ones(capsys):
    with pytest.raises(config.UserError, match="budget.max_trainable"):
        config.load(None, None, ["train.budget=nan"])
    with pytest.raises(config.UserError, match="scoring.max_tokens"):
        config.load(None, None, ["train.eval_max_tokens=-7"])


def test_bare_keys(capsys):
    cfg = config.load(None, None, ["max_trainable=777", "eval_max_tokens=256", "tune_malloc=false", "lr=1e-3"])
    assert (cfg.budget.max_trainable, cfg.scoring.max_tokens, cfg.cpu.tune_malloc, cfg.train.lr) == (777, 256, False, 1e-3)
    assert len(_note_lines(capsys.readouterr().err)) == 1  # eval_max_tokens was train's
    with pytest.raises(config.UserError, match="name the section: train.batch_size or scoring.batch_size"):
        config.load(None, None, ["batch_size=8"])


def test_budget_flag_sets_the_budget_section(capsys, tiny_bert):
    code = cli.main(["plan", "--model", str(tiny_bert), "--num-labels", "4", "--budget", "123456", "--json",
                     "--set", "data.max_length=32", "--set", "adapter.r=1"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["budget"] == 123456


def test_cpu_threads_reach_torch(tmp_path, tiny_bert, monkeypatch):
    import torch
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    words = ["war", "goal", "profit", "chip"]
    train = tmp_path / "train.csv"
    train.write_text("label,text\n" + "".join(f"{i % 4},{words[i % 4]} {i}\n" for i in range(24)))
    from conftest import tiny_config
    pipeline.train_run(tiny_config(tiny_bert, "cpu.threads=1", "train.epochs=0.1"), [str(train)], tmp_path / "run",
                   log=lambda *a, **k: None)
    assert seen and seen[0] == 1


# ---------------------------------------------------------------- run directories saved before the move

def _old_layout(saved: dict) -> dict:
    """A config.json as loraclf wrote it before [budget], [scoring] and [cpu] existed."""
    old = {k: v for k, v in saved.items() if k not in ("budget", "scoring", "cpu")}
    old["train"] = dict(saved["train"])
    for was, now in config.RENAMED.items():
        section, name = now.split(".")
        old["train"][was.split(".")[1]] = saved[section][name]
    return old


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_bert):
    """The same trained run twice: its config.json as written now, and in the old layout."""
    import shutil
    new = train_tiny_run(tmp_path_factory.mktemp("sections"), tiny_bert)
    old = new.parent / "old-run"
    shutil.copytree(new, old)
    saved = json.loads((old / "config.json").read_text())
    (old / "config.json").write_text(json.dumps(_old_layout(saved), indent=2))
    return new, old


def test_old_run_config_round_trips_to_the_same_config(runs, capsys):
    new, old = runs
    assert config.from_dict(json.loads((old / "config.json").read_text())) == \
        config.from_dict(json.loads((new / "config.json").read_text()))
    notes = _note_lines(capsys.readouterr().err)
    assert len(notes) == 1 and all(f"{k} -> {v}" in notes[0] for k, v in config.RENAMED.items())


def test_a_run_config_records_what_auto_resolved_to_and_trains_again_as_given(runs, tmp_path):
    """config.json keeps the settings as given (auto stays auto, so another machine resolves it afresh) and beside
    them what this machine resolved: `--config` reads the file back to the same config, the record left out."""
    from loraclf import precision, scoring
    new, _ = runs
    saved = json.loads((new / "config.json").read_text())
    r = saved["resolved"]
    assert r["device"] == "cpu" and r["cpu_kind"] == precision.cpu_kind() in precision.CPU_KINDS
    assert r["train.precision"] == precision.resolve(saved["train"]["precision"], "cpu")
    assert r["scoring.max_tokens"] == scoring.scoring_tokens(saved["scoring"]["max_tokens"], "cpu") > 0
    assert r["scoring.cls_only_last_layer"] is True and r["cpu.tune_malloc"] is True  # tiny BERT: exact there
    assert r["scoring.precision"] == precision.resolve(saved["scoring"]["precision"], "cpu")
    assert r["scoring.bf16_full_cast"] is (r["scoring.precision"] == "bf16")
    assert r["model.attn_implementation"] in ("sdpa", "eager")
    assert config.load(config_file=str(new / "config.json")) == config.from_dict(saved)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(saved | {"format_version": 99}))
    with pytest.raises(UserError, match="newer loraclf"):
        config.load(config_file=str(newer))


def test_old_run_directory_predicts_and_evaluates(runs, tmp_path, capsys):
    new, old = runs
    texts = tmp_path / "texts.csv"
    texts.write_text("label,text\n" + "".join(f"{i % 4},{w} {i}\n" for i, w in
                                              enumerate(["war vote", "goal match", "profit stock", "chip code"] * 3)))
    outputs = {}
    for name, run in (("new", new), ("old", old)):
        config._noted.clear()
        out = tmp_path / f"{name}.csv"
        assert cli.main(["predict", str(run), str(texts), "-o", str(out), "--probs"]) == 0
        outputs[name] = out.read_text()
        err = capsys.readouterr().err
        assert len(_note_lines(err)) == (1 if name == "old" else 0), err
        assert cli.main(["evaluate", str(run), "--data", str(texts), "--no-report"]) == 0
        capsys.readouterr()
    assert outputs["old"] == outputs["new"]
    assert json.loads((old / "eval-texts.json").read_text())["accuracy"] == \
        json.loads((new / "eval-texts.json").read_text())["accuracy"]


def test_old_run_directory_serves(runs, capsys):
    from loraclf import scoring
    _, old = runs
    predictor = scoring.load_predictor(old, precision="fp32")
    assert predictor.info["budget_limit"] == 10_000_000 and predictor.info["labels"] == LABELS


def test_a_run_config_that_is_not_a_config(tmp_path, capsys, runs):
    import shutil
    new, _ = runs
    broken = tmp_path / "broken"
    shutil.copytree(new, broken)
    for content in ("[1, 2]", '"x"', '{"format_version": "2"}'):
        (broken / "config.json").write_text(content)
        code = cli.main(["predict", str(broken), str(tmp_path / "in.csv"), "-o", str(tmp_path / "o.csv")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "config.json" in err, err
        assert not (tmp_path / "o.csv").exists()
