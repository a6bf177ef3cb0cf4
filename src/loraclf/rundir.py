"""The run directory is the only state shared between commands. Every write is atomic: a temp file in
the same folder, then os.replace, so a crash never leaves a half-written artifact.

Layout (format version 1):
  config.json          resolved config (reproduces the run with its seed)
  labels.json          class names, in id order
  budget.json          exact trainable/total counts and their breakdown
  inputs.json          the data the run was trained/tested on (absolute paths or Hub names)
  metrics.jsonl        one record per log/eval step (train loss, lr, val metrics, throughput)
  metrics.json         final metrics: val (best), test (if given), throughput, wall time
  adapter/             peft adapter + trained head (PeftModel.from_pretrained on the base model)
  tokenizer/           the tokenizer used
  checkpoint/          latest resumable checkpoint (only with train.save_every or on Ctrl-C)
  submission.csv       predictions (ID,Label) for --predict-data, else for --test-data
  predictions.csv      test rows: id, true label, predicted label, confidence, text, class probabilities
  report.html, report.md, plots/*.png  (loraclf report)
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

FORMAT_VERSION = 1


def write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; artifacts get the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, default=_jsonable) + "\n" for r in records))


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def read_json_or(path: Path, default=None):
    """A JSON file's content, or `default` where it is missing or not valid JSON (for optional extras)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder into place (old one removed after the rename)."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)


def temp_dir(final: Path) -> Path:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def prepare(out: Path, resume: bool, overwrite: bool) -> Path:
    """Check the run directory is usable before any training starts."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file", "give a folder path for the run")
    if out.is_dir() and any(out.iterdir()) and not (resume or overwrite):
        raise UserError(f"run directory {out} already exists and is not empty",
                        "pass --resume to continue it, --overwrite to replace it, or choose another --out")
    existing = out
    while not existing.exists():  # check the disk before creating anything on it
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if free < 200 * 2**20:
        raise UserError(f"only {free // 2**20} MiB free on the disk of {out}",
                        "free some space (a run needs a few hundred MiB) or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"x" * 1024)
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to run directory {out} ({e.strerror})",
                        "choose a writable --out with free disk space") from None
    return out


def _jsonable(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
