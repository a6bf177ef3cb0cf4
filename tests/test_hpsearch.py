"""`loraclf search` on tiny models: the budget holds for every sampled trial, workers share one SQLite study,
a SIGKILLed worker leaves it resumable, and the best config trains as is."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LABELS, REPO, tiny_config
from loraclf import budget, cli, config, space, studyreport
from loraclf.errors import UserError

optuna = pytest.importorskip("optuna", reason="loraclf search needs the search extra: pip install optuna plotly")
WORDS = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]
TINY = ["--set", "data.max_length=32", "--set", "train.batch_size=8", "--set", "data.val_size=0.25",
        "--set", "adapter.target_modules=query,value"]  # no cpu.threads: it would set torch's threads for the whole session


def _train_csv(tmp_path: Path, rows: int = 64) -> Path:
    path = tmp_path / "train.csv"
    path.write_text("label,text\n" + "".join(f"{LABELS[i % 4]},{WORDS[i % 4]} item {i}\n" for i in range(rows)))
    return path


def _space(tmp_path: Path, heartbeat: int = 60, epochs: str = "[1, 2]") -> Path:
    path = tmp_path / "space.toml"
    path.write_text(f"""[space]
targets = ["attention-qv", "all-linear"]
r = [1, 16]
epochs = {epochs}
lr = [1e-3, 1e-2]
[study]
startup_trials = 2
heartbeat_s = {heartbeat}
""")
    return path


def _args(model, train, out, space_file, trials: int, *more: str) -> list[str]:
    return ["search", "--data", str(train), "--out", str(out), "--trials", str(trials), "--space", str(space_file),
            "--budget", "20000", "--model", str(model), *TINY, *more]


def _study(out: Path):
    """The study as another process sees it (no table creation: the worker may be creating them right now)."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.db').resolve()}", skip_table_creation=True)
    return optuna.load_study(study_name="search", storage=storage)


@pytest.mark.parametrize("limit", [3_000, 20_000, 200_000])
def test_no_sampled_trial_exceeds_the_budget(tiny_bert, limit):
    cfg = tiny_config(tiny_bert, f"budget.max_trainable={limit}")
    sp = space.load(None)
    plans = space.plans(sp, cfg, LABELS)
    assert plans, "something fits"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    seen_top = set()
    for i in range(300):
        trial = study.ask()
        c = space.sample(trial, sp, plans, cfg)
        p = plans[trial.params["plan"]]
        assert p["fixed"] + c.adapter.r * p["per_rank"] <= limit
        if i % 25 == 0:  # the closed form is the exact count
            assert budget.count_config(c, LABELS).trainable == p["fixed"] + c.adapter.r * p["per_rank"]
        if "r" in trial.distributions:  # a trial's rank range ends at the largest rank that fits its plan
            assert trial.distributions["r"].high == p["r_max"]
            seen_top.add(trial.params["plan"])
        study.tell(trial, 0.5)
    for name, p in plans.items():  # r_max is the largest rank that fits (or the space's highest)
        if p["r_max"] < sp.ranges["r"][1]:
            assert p["fixed"] + (p["r_max"] + 1) * p["per_rank"] > limit
    assert seen_top, "ranks were sampled"


def test_a_search_writes_a_leaderboard_report_and_a_best_config_that_trains(tmp_path, tiny_bert):
    train, out = _train_csv(tmp_path), tmp_path / "study"
    assert cli.main(_args(tiny_bert, train, out, _space(tmp_path), 3)) == 0
    study = _study(out)
    states = [t.state.name for t in study.trials]
    assert sum(s in ("COMPLETE", "PRUNED") for s in states) == 3 and "COMPLETE" in states
    for t in study.trials:  # every trial: its own run directory with its full config and seed, within the budget
        run = Path(t.user_attrs["run_dir"])
        saved = json.loads((run / "config.json").read_text())
        assert saved["train"]["seed"] == t.user_attrs["seed"] and t.user_attrs["trainable"] <= 20_000
        assert json.loads((run / "budget.json").read_text())["trainable"] == t.user_attrs["trainable"]
    board = (out / "leaderboard.md").read_text()
    assert board.count("\n| ") == 4 and "val accuracy" in board
    page = (out / "report.html").read_text()
    assert "Optimisation history" in page and "plotly" in page.lower()
    best = study.best_trial
    best_cfg = config.load(None, str(out / "best-config.toml"))
    saved = json.loads((Path(best.user_attrs["run_dir"]) / "config.json").read_text())
    saved.pop("format_version"), saved.pop("resolved")
    assert best_cfg.to_dict() == saved
    assert cli.main(["train", "--config", str(out / "best-config.toml"), "--data", str(train), "--out",
                     str(tmp_path / "again"), "--no-report"]) == 0
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["val"]["accuracy"] == pytest.approx(best.value, abs=1e-9)  # the same split, seed and config
    assert again["budget"]["trainable"] == best.user_attrs["trainable"]


def _worker(model, train, out, space_file, trials: int) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "loraclf.cli", *_args(model, train, out, space_file, trials)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_worker_processes_complete_distinct_trials(tmp_path, tiny_bert):
    train, out, sp = _train_csv(tmp_path), tmp_path / "study", _space(tmp_path)
    out.mkdir()
    workers = [_worker(tiny_bert, train, out, sp, 4) for _ in range(2)]
    logs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], logs
    trials = [t for t in _study(out).trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(trials) >= 4
    assert len({t.number for t in trials}) == len({t.user_attrs["run_dir"] for t in trials}) == len(trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both workers ran trials"


def test_a_sigkilled_worker_leaves_the_study_resumable(tmp_path, tiny_bert):
    train, out, sp = _train_csv(tmp_path, 1200), tmp_path / "study", _space(tmp_path, heartbeat=1, epochs="[2, 2]")
    out.mkdir()
    worker = _worker(tiny_bert, train, out, sp, 3)
    killed, deadline = None, time.time() + 300
    while killed is None and time.time() < deadline and worker.poll() is None:
        time.sleep(0.1)
        try:  # killed in mid-trial, once the trial's heartbeat is in the study
            with sqlite3.connect(out / "study.db", timeout=30) as db:
                beating = db.execute("SELECT t.number FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
                                     "WHERE t.state = 'RUNNING'").fetchall()
        except sqlite3.Error:  # the worker is creating the study
            beating = []
        if beating:
            worker.send_signal(signal.SIGKILL)
            killed = beating[0][0]
    log = worker.communicate(timeout=60)[0]
    assert killed is not None and worker.returncode == -signal.SIGKILL, log
    lost = [t.number for t in _study(out).trials if t.state.name == "RUNNING"]
    assert lost == [killed], "the trial it was running when it died stays RUNNING in the study"
    time.sleep(2.5)  # past the grace period (2 heartbeats)
    assert cli.main(_args(tiny_bert, train, out, sp, 3)) == 0  # the same command resumes the study
    trials = _study(out).trials
    assert trials[killed].state.name == "FAIL"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
    assert retried and retried[0].state.name in ("COMPLETE", "PRUNED")
    assert trials[killed].params.items() <= retried[0].params.items()  # what it had chosen is run again
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3


def test_a_study_refuses_another_budget(tmp_path, tiny_bert, capsys):
    train, out, sp = _train_csv(tmp_path), tmp_path / "study", _space(tmp_path, epochs="[1, 1]")
    assert cli.main(_args(tiny_bert, train, out, sp, 1)) == 0
    args = _args(tiny_bert, train, out, sp, 2)
    args[args.index("--budget") + 1] = "30000"
    assert cli.main(args) == 2
    assert "another budget" in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("[space]\nr = [0, 8]\n", "space.r"),
    ("[space]\nlr = [1e-3, nan]\n", "space.lr"),
    ("[space]\nheads = [\"big\"]\n", "space.heads"),
    ("[space]\nrank = [1, 8]\n", "unknown key space.rank"),
    ("[study]\npruner = \"asha\"\n", "study.pruner"),
    ("[study]\nheartbeat_s = 0\n", "study.heartbeat_s"),
    ("[trials]\nn = 3\n", "unknown table"),
    ("[space\n", "cannot read"),
])
def test_a_bad_space_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        space.load(str(path))


@pytest.mark.parametrize("argv, message", [
    (["plan", "--sweep", "4"], "loraclf search"),
    (["search", "--trials", "3"], "needs --data"),
    (["search", "--data", "x.csv", "--trials", "zero"], "--trials"),
    (["search", "--data", "x.csv", "--device", "gpu0"], "--device"),
    (["search", "--data", "x.csv", "--timeout", "-5"], "--timeout"),
])
def test_search_command_mistakes_are_one_line(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("device, visible", [("cpu", ""), ("cuda:3", "3"), ("cuda:0", "0")])
def test_device_flag_pins_the_worker_to_one_gpu(device, visible, monkeypatch):
    """--device cuda:N makes GPU N the process's only GPU (so N workers share one study, one GPU each); without a
    GPU it is a one-line error instead of a silent CPU run."""
    import torch
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "unset")
    if device == "cpu" or torch.cuda.is_available():
        cli._select_device(device)
    else:
        with pytest.raises(UserError, match="sees none"):
            cli._select_device(device)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == visible


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU message")
def test_device_cuda_without_a_gpu_is_one_line(monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert cli.main(["search", "--data", "x.csv", "--device", "cuda:1"]) == 2
    err = capsys.readouterr().err
    assert "CUDA GPU" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", [{"a": 1.5e-05, "b": ["x", "y\"z"], "c": {"query": 8}, "d": True, "e": ""}])
def test_config_toml_writer_round_trips(value):
    import tomllib
    text = studyreport.to_toml({"adapter": value})
    assert tomllib.loads(text)["adapter"] == value


def test_a_tracked_search_logs_one_parent_and_a_child_per_trial(tmp_path, tiny_bert):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    from mlflow.tracking import MlflowClient
    train, out, uri = _train_csv(tmp_path), tmp_path / "study", f"sqlite:///{tmp_path / 'mlruns.db'}"
    args = _args(tiny_bert, train, out, _space(tmp_path, epochs="[1, 1]"), 2, "--track", "mlflow", "--track",
                 "tensorboard", "--track", "wandb", "--tracking-uri", uri)
    assert cli.main(args) == 0
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("loraclf").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(client.get_metric_history(r.info.run_id, "train_loss") for r in children)
    assert "best_val_accuracy" in parents[0].data.metrics
    assert sorted(p.name for p in (out / "tensorboard").iterdir()) == ["trial-0000", "trial-0001"]
    assert len(list((out / "wandb").glob("offline-run-*"))) == 2


@pytest.mark.parametrize("lr, enqueued", [(5e-3, True), (5e-1, False)])
def test_the_base_config_is_trial_zero_where_the_space_holds_it(tiny_bert, tmp_path, lr, enqueued):
    cfg = tiny_config(tiny_bert, "budget.max_trainable=20000", "model.head=full", f"train.lr={lr}", "adapter.alpha=8")
    path = tmp_path / "space.toml"
    path.write_text('[space]\ntargets = ["query,value", "all-linear"]\nlr = [1e-3, 1e-2]\n')
    sp = space.load(str(path))
    plans = space.plans(sp, cfg, LABELS)
    params = space.params_of(cfg, sp, plans, LABELS)
    assert (params is not None) == enqueued
    if enqueued:
        study = optuna.create_study(direction="maximize")
        study.enqueue_trial(params)
        c = space.sample(study.ask(), sp, plans, cfg)
        for section, key in (("model", "head"), ("adapter", "r"), ("adapter", "alpha"), ("adapter", "target_modules"),
                             ("train", "lr"), ("train", "epochs"), ("adapter", "dropout")):
            assert getattr(getattr(c, section), key) == pytest.approx(getattr(getattr(cfg, section), key))


def test_the_base_config_with_head_auto_enqueues_the_head_a_run_would_train(tiny_bert, tmp_path):
    """head=auto on BERT (a pretrained pooler) is lora: trial 0 is the lora plan, as `train` would run it."""
    cfg = tiny_config(tiny_bert, "budget.max_trainable=20000", "train.lr=5e-3", "adapter.alpha=8")
    assert cfg.model.head == "auto"
    path = tmp_path / "space.toml"
    path.write_text('[space]\ntargets = ["query,value"]\nlr = [1e-3, 1e-2]\n')
    sp = space.load(str(path))
    params = space.params_of(cfg, sp, space.plans(sp, cfg, LABELS), LABELS)
    assert params is not None and params["plan"].startswith("lora/") and cfg.model.head == "auto"
