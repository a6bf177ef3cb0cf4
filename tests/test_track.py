"""`--track mlflow` (a local SQLite store in tmp_path, read back with MlflowClient) and `--track tensorboard`."""
from __future__ import annotations

import argparse
import json

import pytest
from conftest_report import fake_run, make_fake_run  # noqa: F401

from loraclf import report, report_cli, track
from loraclf.errors import UserError


def test_flatten_and_metrics(fake_run):
    params = track.flatten(json.loads((fake_run / "config.json").read_text()))
    assert params["adapter.r"] == "8" and params["adapter.target_modules"] == "query,value"
    final = track.final_metrics(fake_run)
    assert {"test.accuracy", "val.macro_f1", "test.f1.Sci/Tech", "train.samples_per_s", "budget.trainable"} <= set(final)


def test_mlflow_sqlite_roundtrip(fake_run, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="--track mlflow is optional: pip install mlflow-skinny sqlalchemy alembic")
    from mlflow.tracking import MlflowClient
    monkeypatch.chdir(fake_run)  # artifacts must not land in the current folder
    report.write(fake_run)
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_id = track.log_run(fake_run, "mlflow", uri)

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    records = [json.loads(x) for x in (fake_run / "metrics.jsonl").read_text().splitlines()]
    loss = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    hist = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train_loss"))
    assert [h[0] for h in hist] == [x[0] for x in loss] and [h[1] for h in hist] == pytest.approx([x[1] for x in loss])
    val = [(r["step"], r["val_accuracy"]) for r in records if "val_accuracy" in r]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "val_accuracy")) == val
    test_acc = json.loads((fake_run / "metrics.json").read_text())["test"]["accuracy"]
    assert run.data.metrics["test.accuracy"] == pytest.approx(test_acc)
    assert run.data.params["adapter.r"] == "8" and run.data.params["model.name"] == "fake/encoder"
    assert run.data.tags["loraclf.run_dir"] == str(fake_run.resolve())
    assert (tmp_path / "mlruns").is_dir()  # artifacts beside the database
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "report.md", "metrics.json", "metrics.jsonl", "config.json", "plots"} <= arts
    assert any(a.path.endswith("confusion_test.png") for a in client.list_artifacts(run_id, "plots"))

    # logging the same run directory again (e.g. after `evaluate`) continues the MLflow run without duplicates
    (fake_run / "eval-extra.json").write_text(json.dumps({"n": 10, "accuracy": 0.5, "macro_f1": 0.4, "loss": 1.0}))
    assert track.log_run(fake_run, "mlflow", uri) == run_id
    assert len(client.get_metric_history(run_id, "train_loss")) == len(loss)
    assert client.get_run(run_id).data.metrics["eval-extra.accuracy"] == 0.5
    assert mlflow is not None and not (fake_run / "mlruns").exists()


def test_mlflow_bad_uri(fake_run, tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="--track mlflow is optional: pip install mlflow-skinny sqlalchemy alembic")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    for uri in ("nosuchscheme://host/x", f"sqlite:///{tmp_path}/a-file/x.db"):
        with pytest.raises(UserError, match="tracking store"):
            track.log_run(fake_run, "mlflow", uri)


def test_tensorboard_event_files(fake_run):
    pytest.importorskip("tensorboard", reason="--track tensorboard is optional: pip install tensorboard")
    report.write(fake_run)
    logdir = track.log_run(fake_run, "tensorboard")
    events = list((fake_run / "tensorboard").glob("events.out.tfevents.*"))
    assert str(fake_run / "tensorboard") == logdir and len(events) == 1 and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(fake_run / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train_loss")]
    assert steps == [r["step"] for r in map(json.loads, (fake_run / "metrics.jsonl").read_text().splitlines())
                     if "train_loss" in r]
    assert "final/test.accuracy" in acc.Tags()["scalars"] and acc.Tags()["images"]
    track.log_run(fake_run, "tensorboard")  # rewritten, not appended to
    assert len(list((fake_run / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_track_args_and_errors(tmp_path, capsys):
    ap = argparse.ArgumentParser()
    report_cli.add_track_args(ap)
    args = ap.parse_args(["--track", "tensorboard"])
    assert args.track == "tensorboard" and args.tracking_uri is None
    with pytest.raises(SystemExit):
        ap.parse_args(["--track", "neptune"])
    with pytest.raises(UserError, match="not a run directory"):
        track.log_run(tmp_path, "mlflow")
    with pytest.raises(UserError, match="only used with --track mlflow"):
        report_cli.maybe_track(tmp_path, ap.parse_args(["--tracking-uri", "sqlite:///x.db"]))
    report_cli.maybe_track(tmp_path, ap.parse_args([]))  # nothing asked, nothing done


def test_wandb_offline_run_holds_every_record(fake_run):
    pytest.importorskip("wandb", reason="--track wandb is optional: pip install wandb")
    import time
    from test_live_tracking import wandb_steps
    where = track.log_run(fake_run, "wandb")
    assert where == str(fake_run / "wandb")
    expected = [r["step"] for r in map(json.loads, (fake_run / "metrics.jsonl").read_text().splitlines()) if "train_loss" in r]
    deadline = time.time() + 20
    while sorted(wandb_steps(fake_run, "train_loss")) != expected and time.time() < deadline:
        time.sleep(0.2)
    assert sorted(wandb_steps(fake_run, "train_loss")) == expected
