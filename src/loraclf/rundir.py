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
  checkpoint/          latest resumable checkpoint (only with train.save_every or on Ctrl-C), sealed by
                       complete.json; see checkpoint.py
  submission.csv       predictions (ID,Label) for --predict-data, else for --test-data
  predictions.csv      test rows: id, true label, predicted label, confidence, text, class probabilities
  thresholds.json      multi-label runs: each label's decision threshold, chosen on validation (multilabel.py)
  report.html, report.md, plots/*.png  (loraclf report)
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

FORMAT_VERSION = 1
EXPORT_MARKER = "loraclf.json"  # export.META: a folder written by `loraclf export`, not a run
# weights loraclf reads are safetensors only: these formats are pickles, which can run code when loaded
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def write_bytes(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all. A disk that is full, read-only or not writable, or a `path` that is a
    folder, is a UserError naming the file."""
    path = Path(path)
    check_output_file(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600; artifacts get the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_error(path, e) from None
        raise


def write_error(path: Path, e: OSError) -> UserError:
    """An OSError met while writing `path`, as the one line a user reads."""
    if e.errno == errno.ENOSPC:
        return UserError(f"the disk is full: cannot write {path}", "free some disk space or write to another disk")
    return UserError(f"cannot write {path} ({e.strerror or type(e).__name__})",
                     "choose a writable location with free disk space")


def inside(path, folder) -> bool:
    """Whether `path` is `folder` or lies under it, links and `..` resolved."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def check_output_file(path: Path, flag: str = "", inputs=()) -> None:
    """An output file's path must be a new or regular file (not a folder, a symbolic link, a FIFO or a device,
    which an atomic write would replace by a plain file), and not one of the command's `inputs` (files or
    folders, say a run directory) or inside one. `flag`: the option that gave it, for the message."""
    path = Path(path)
    where = f"{flag + ' ' if flag else ''}{path}"
    if path.is_symlink():
        raise UserError(f"{where} is a symbolic link", "give the path of the file itself, or a new file")
    if path.is_dir():
        raise UserError(f"{where} is a folder, not a file",
                        f"give a file path, e.g. {path / 'submission.csv'}" if flag else "remove the folder or choose "
                        "another file name")
    if path.exists() and not path.is_file():
        raise UserError(f"{where} is not a regular file (a FIFO, socket or device)", "give a new or regular file")
    for given in inputs:
        if inside(path, given):
            same = path.resolve() == Path(given).resolve()
            raise UserError(f"{where} would overwrite {'the input' if same else 'a file inside'} {given}",
                            "write the output somewhere else")


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
    """Swap a fully written folder into place (old one removed after the rename, which is made durable first)."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old.exists():
        shutil.rmtree(old)


def fsync_dir(path: Path) -> None:
    """Make renames in `path` durable (a power cut must not undo a swap that later work relies on)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_dir(final: Path) -> Path:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


def is_run_dir(path: Path) -> bool:
    """A folder `loraclf train` wrote (its config and labels), not an export, a model or anything else."""
    path = Path(path)
    return ((path / "config.json").is_file() and (path / "labels.json").is_file()
            and not (path / EXPORT_MARKER).exists())


def set_aside(out: Path, inputs=()) -> Path | None:
    """--overwrite: move the run in `out` aside (a hidden sibling), so the new run starts in an empty folder and a
    failed one can put the old run back (put_back); None where there is nothing to set aside. Only a run
    directory is replaced (a model, an export or any other folder is refused), never through a link, never the
    folder the command runs in (or one holding it), never one that holds the command's `inputs`."""
    given = Path(out)
    if not given.is_dir() or not any(given.iterdir()):
        return None
    if given.is_symlink():
        raise UserError(f"--out {out} is a symbolic link", "give the run directory it points to")
    real = given.resolve()
    if inside(Path.cwd(), real):
        raise UserError(f"--out {out} is the folder this command runs in, or holds it",
                        "run loraclf from outside the run directory, or choose another --out")
    for i in inputs:
        if inside(i, real):
            raise UserError(f"{i} is inside the run directory {out} that --overwrite would replace",
                            "move that file out of the run directory, or choose another --out")
    if not is_run_dir(real):
        raise UserError(f"--out {out} is not a loraclf run directory, and --overwrite replaces only those",
                        "choose another --out (or empty that folder yourself)")
    old = Path(tempfile.mkdtemp(dir=real.parent, prefix=f".{real.name}.replaced-"))
    try:
        os.replace(real, old / real.name)
        real.mkdir()
    except OSError as e:
        put_back(old, real)
        raise UserError(f"cannot replace run directory {out} ({e.strerror})", "choose a writable --out") from None
    return old


def put_back(old: Path, out: Path) -> None:
    """Undo set_aside: whatever the new run left in `out` goes, the old run returns."""
    target = Path(out).resolve()
    kept = Path(old) / target.name
    if kept.is_dir():
        shutil.rmtree(target, ignore_errors=True)
        os.replace(kept, target)
    shutil.rmtree(old, ignore_errors=True)


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


# ------------------------------------------------------------------------------- reading a run

def _refuse(path: Path, what: str) -> UserError:
    return UserError(f"{path} {what}", "give the --out folder of a finished `loraclf train` run "
                     "(or restore the run directory from a copy)")


def _checked_json(file: Path, kind: type, missing: str):
    if not file.is_file():
        raise _refuse(file.parent, missing)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise _refuse(file.parent, f"has an unreadable {file.name} ({reason}: not valid JSON)") from None
    if not isinstance(data, kind):
        raise _refuse(file.parent, f"has a {file.name} that is not a JSON {'object' if kind is dict else 'list'}")
    return data


def check_safetensors(file: Path) -> None:
    """A complete safetensors file: its header parses and its tensors cover the file exactly (a truncated
    or overwritten file fails here, before any model is built)."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(file), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UserError(f"{file} is damaged ({reason})",
                        "the file is truncated or not safetensors; retrain the run or restore the file") from None


class RunDir:
    """A run directory checked once, for every command that opens one (evaluate, predict, export, serve, report,
    train --resume): a readable config.json object, at least two class names in labels.json and, when the model
    is needed, the adapter as complete safetensors files only and the run's own tokenizer (never the Hub's).
    `RunDir.open` raises a one-line UserError for anything else."""

    def __init__(self, path: Path, config_dict: dict, config, labels: list[str]):
        self.path, self.config_dict, self.config, self.labels = Path(path), config_dict, config, labels

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoint"

    @property
    def adapter_weights(self) -> Path:
        """adapter_model.safetensors (peft), or model.safetensors for a full fine-tune (adapter.method=none)."""
        name = "model.safetensors" if self.config.adapter.method == "none" else "adapter_model.safetensors"
        return self.adapter_dir / name

    @classmethod
    def open(cls, path, model: bool = True) -> "RunDir":
        """The run at `path`, checked; `model=False` for commands that read only its records (report, resume)."""
        from . import config as config_mod
        path = Path(path)
        if not path.is_dir():
            raise _refuse(path, "does not exist or is not a folder")
        if (path / EXPORT_MARKER).is_file():
            raise UserError(f"{path} is a `loraclf export` folder, not a run directory",
                            "give the run directory it was exported from (serve and predict --backend onnx take exports)")
        config_dict = _checked_json(path / "config.json", dict, "is not a run directory (no config.json)")
        try:
            config = config_mod.from_dict(config_dict)
        except UserError as e:
            raise UserError(f"{path / 'config.json'}: {e.what}", e.fix) from None
        except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as e:
            raise _refuse(path, f"has a config.json that is not a loraclf config ({type(e).__name__})") from None
        labels = _checked_json(path / "labels.json", list, "has no labels.json (the class names)")
        if len(labels) < 2 or not all(isinstance(n, str) and n for n in labels) or len(set(labels)) != len(labels):
            raise _refuse(path, f"has a labels.json that is not two or more distinct class names ({len(labels)} entries)")
        run = cls(path, config_dict, config, labels)
        if model:
            run._check_model_files()
        return run

    def _check_model_files(self) -> None:
        from . import remote_code
        if not self.adapter_dir.is_dir():
            raise UserError(f"{self.path} has no trained adapter yet", "wait for training to finish, or resume it with --resume")
        pickles = sorted(f.name for f in self.adapter_dir.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise UserError(f"{self.adapter_dir} holds pickle-format weights ({', '.join(pickles)})",
                            "loraclf loads safetensors only (a pickle can run code when loaded); "
                            "remove those files or retrain the run")
        if not self.adapter_weights.is_file():
            raise _refuse(self.adapter_dir, f"has no {self.adapter_weights.name}")
        for f in sorted(self.adapter_dir.glob("*.safetensors")):
            check_safetensors(f)
        if not any((self.tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
            raise _refuse(self.path, "has no tokenizer (tokenizer/ with tokenizer.json or tokenizer_config.json)")
        remote_code.check_folder(self.tokenizer_dir)
        if self.config.adapter.method == "none":
            remote_code.check_folder(self.adapter_dir)

    def tokenizer(self):
        """The run's own tokenizer, from its folder only."""
        from transformers import AutoTokenizer
        from . import remote_code
        try:
            return AutoTokenizer.from_pretrained(str(self.tokenizer_dir), local_files_only=True, **remote_code.kwargs())
        except (OSError, ValueError, TypeError) as e:
            if remote_code.is_refusal(e):
                raise remote_code.refusal(self.tokenizer_dir) from None
            raise UserError(f"cannot load the tokenizer in {self.tokenizer_dir} ({str(e).splitlines()[0][:160]})",
                            "restore the run's tokenizer/ folder or retrain the run") from None

    def optional_json(self, name: str, default=None):
        """A record the run may lack or that may be unreadable (budget.json, metrics.json, inputs.json)."""
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return default


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
