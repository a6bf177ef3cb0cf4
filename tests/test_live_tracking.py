"""Live tracking: while a tiny run is still training, MLflow, TensorBoard and W&B (offline) already hold its
per-step metrics, read back through their own readers (MlflowClient, EventAccumulator, W&B's record log)."""
import glob
import json
import struct
import time
from pathlib import Path

import pytest

from conftest import tiny_config
from loraclf import cli, live, pipeline

WORDS = ["election minister war", "football match goal", "stocks market profit", "software computer chip"]


def _train_csv(tmp_path: Path) -> Path:
    path = tmp_path / "train.csv"
    path.write_text("label,text\n" + "".join(f"{i % 4},{WORDS[i % 4]} {i}\n" for i in range(48)))
    return path


def mlflow_steps(uri: str, run_id: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient
    return [m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, key)]


def tensorboard_steps(log_dir: Path, key: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return [e.step for e in acc.Scalars(key)] if key in acc.Tags()["scalars"] else []


def wandb_steps(directory: Path, key: str) -> list[int]:
    """History rows of the offline run's .wandb file: W&B's record log (LevelDB log framing, 32 KiB blocks,
    7-byte headers) of wandb.proto Record messages; wandb 0.31 ships no Python reader for it."""
    from wandb.proto import wandb_internal_pb2 as pb
    steps = []
    for path in glob.glob(str(directory / "wandb" / "offline-run-*" / "run-*.wandb")):
        data, pos, buf = Path(path).read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if kind == 0:
                break
            buf = (buf if kind in (3, 4) else b"") + data[pos + 7:pos + 7 + n]
            pos += 7 + n
            if kind in (1, 4):
                rec = pb.Record()
                rec.ParseFromString(buf)
                if rec.WhichOneof("record_type") == "history":
                    items = {i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item}
                    if key in items:
                        steps.append(int(items["_step"]))
    return steps


class Probe(live.Callback):
    """Reads the trackers back in the middle of training (after `at` records), polling briefly for writers that
    flush on their own clock."""

    def __init__(self, at: int, readers: dict):
        self.at, self.readers, self.seen, self.n = at, readers, {}, 0

    def on_record(self, record: dict) -> None:
        self.n += 1
        if self.n != self.at:
            return
        for name, read in self.readers.items():
            deadline = time.time() + 20
            while not (steps := read()) and time.time() < deadline:
                time.sleep(0.2)
            self.seen[name] = steps


@pytest.mark.parametrize("backend", ["mlflow", "tensorboard", "wandb"])
def test_metrics_reach_the_tracker_while_the_run_trains(tmp_path, tiny_bert, backend):
    pytest.importorskip({"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}[backend])
    cfg = tiny_config(tiny_bert, "train.epochs=2", "train.eval_every=2")
    run, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlruns.db'}"
    tracker = live.tracker(backend, uri)
    reader = {"mlflow": lambda: mlflow_steps(uri, tracker.run_id, "train_loss"),
              "tensorboard": lambda: tensorboard_steps(run / "tensorboard", "train_loss"),
              "wandb": lambda: wandb_steps(run, "train_loss")}[backend]
    val_reader = {"mlflow": lambda: mlflow_steps(uri, tracker.run_id, "val_accuracy"),
                  "tensorboard": lambda: tensorboard_steps(run / "tensorboard", "val_accuracy"),
                  "wandb": lambda: wandb_steps(run, "val_accuracy")}[backend]
    probe = Probe(5, {"train_loss": reader, "val_accuracy": val_reader})
    result = pipeline.train_run(cfg, [str(_train_csv(tmp_path))], run, log=lambda *a, **k: None,
                                callbacks=[tracker, probe])
    steps = result["train"]["steps"]
    assert probe.seen["train_loss"] and max(probe.seen["train_loss"]) < steps, "per-step metrics before the end"
    assert probe.seen["val_accuracy"], "evaluations as they happen"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected, deadline = [r["step"] for r in records if "train_loss" in r], time.time() + 20
    while sorted(reader()) != expected and time.time() < deadline:  # W&B's service writes its last rows on its own time
        time.sleep(0.2)
    assert sorted(reader()) == expected  # all of them, once, by the end


def test_train_track_mlflow_is_one_run_live_then_completed(tmp_path, tiny_bert):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    out = tmp_path / "run"
    args = ["train", "--data", str(_train_csv(tmp_path)), "--out", str(out), "--track", "mlflow", "--tracking-uri", uri,
            "--no-report"]
    for key_value in ("model.name=" + str(tiny_bert), "adapter.target_modules=query,value", "data.max_length=32",
                      "train.batch_size=8", "train.epochs=1", "data.val_size=0.2",
                      'data.label_names=["World","Sports","Business","Sci/Tech"]'):
        args += ["--set", key_value]
    assert cli.main(args) == 0
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("loraclf").experiment_id])
    assert len(runs) == 1, "the post-hoc logging continued the live run"
    run = runs[0]
    assert run.info.status == "FINISHED" and "val.accuracy" in run.data.metrics
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == sorted(set(steps)) and len(steps) >= 2, "each step logged once"


@pytest.mark.parametrize("error, expected", [(None, "FINISHED"), (KeyboardInterrupt(), "KILLED"), (ValueError(), "FAILED")])
def test_run_status_follows_how_the_run_ended(error, expected):
    assert live.status(error) == expected


def test_a_broken_tracker_never_stops_training(tmp_path, tiny_bert, capsys):
    class Broken(live._Tracker):
        name = "Broken"

        def _record(self, record):
            raise ConnectionError("store went away")

        def _end(self, result, error):
            raise AssertionError("not called once broken")

    cfg = tiny_config(tiny_bert)
    result = pipeline.train_run(cfg, [str(_train_csv(tmp_path))], tmp_path / "run", log=lambda *a, **k: None,
                                callbacks=[Broken()])
    assert result["train"]["steps"] > 0
    assert capsys.readouterr().err.count("Broken tracking stopped") == 1


def test_a_resumed_run_goes_on_in_its_mlflow_run(tmp_path, tiny_bert):
    pytest.importorskip("mlflow")
    import subprocess
    import sys
    from mlflow.tracking import MlflowClient
    from test_resume import WRAPPER
    uri, out = f"sqlite:///{tmp_path / 'mlruns.db'}", tmp_path / "run"
    cfg = tiny_config(tiny_bert, "train.epochs=2", "train.batch_size=4", "train.save_every=5", "train.eval_every=10")
    (tmp_path / "c.json").write_text(cfg.to_json())
    data = tmp_path / "d.csv"
    data.write_text("label,text\n" + "".join(f"{i % 4},{WORDS[i % 4]} {i}\n" for i in range(120)))
    track = ["--no-report", "--track", "mlflow", "--tracking-uri", uri]
    r = subprocess.run([sys.executable, "-c", WRAPPER.replace("SIG)", "SIGINT)"), "train", "--config", str(tmp_path / "c.json"),
                        "--data", str(data), "--out", str(out), *track], capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr[-2000:]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("loraclf").experiment_id
    [killed] = client.search_runs([exp])
    assert killed.info.status == "KILLED"
    assert cli.main(["train", "--resume", "--out", str(out), *track]) == 0
    [run] = client.search_runs([exp])
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss"))
    assert steps == [r["step"] for r in records if "train_loss" in r], "every step once, before and after the resume"
