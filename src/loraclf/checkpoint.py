"""The run's resumable checkpoint folder, crash-safe at every point of its replacement.

A checkpoint is written whole into a temp folder beside `checkpoint/` (`.checkpoint.<random>.tmp`) and sealed by
a marker written last (complete.json: the step, and each file's size and SHA-256). It then goes in by two
renames: `checkpoint/` to `.checkpoint.old`, the temp folder to `checkpoint/`; the old one is deleted after.
A process killed anywhere in between leaves at least one sealed folder on disk, and `recover` puts the newest
sealed one back at `checkpoint/` and deletes every other leftover, so `--resume` always finds it.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from . import rundir

MARKER = "complete.json"


def seal(folder: Path, step: int) -> None:
    """Write the marker that makes `folder` a complete checkpoint; call it after every other file is written."""
    folder = Path(folder)
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER and not p.name.startswith(".")}
    rundir.write_json(folder / MARKER, {"step": int(step), "files": files})


def sealed_step(folder: Path) -> int | None:
    """The step of a complete checkpoint folder (marker present, every file it lists intact); else None."""
    folder = Path(folder)
    try:
        mark = rundir.read_json(folder / MARKER)
        for name, want in mark["files"].items():
            p = folder / name
            if p.stat().st_size != want["size"] or _sha256(p) != want["sha256"]:
                return None
        return int(mark["step"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _legacy_step(final: Path) -> int | None:
    """A `checkpoint/` written before checkpoints were sealed: it was only ever renamed in complete."""
    try:
        if not (final / MARKER).exists() and all((final / n).is_file() for n in ("trainable.safetensors", "state.pt")):
            return int(rundir.read_json(final / "progress.json")["step"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def leftovers(final: Path) -> list[Path]:
    """The folders an interrupted save or recovery may leave beside `final`."""
    final = Path(final)
    if not final.parent.is_dir():
        return []
    return [p for p in sorted(final.parent.iterdir()) if p.is_dir() and p.name.startswith(f".{final.name}.")
            and (p.name.endswith(".tmp") or p.name == f".{final.name}.old")]


def newest(final: Path) -> tuple[Path | None, int | None]:
    """The newest complete checkpoint among `final` and its leftovers (ties go to `final`), without moving it."""
    final = Path(final)
    best, best_step = None, None
    for p in [final] + leftovers(final):
        step = sealed_step(p) if p.is_dir() else None
        if step is None and p == final and p.is_dir():
            step = _legacy_step(p)
        if step is not None and (best_step is None or step > best_step):
            best, best_step = p, step
    return best, best_step


def recover(final: Path) -> int | None:
    """Put the newest complete checkpoint at `final` and delete every leftover; its step, or None if there is none
    (a damaged `final` is left for the loader to report)."""
    final = Path(final)
    best, step = newest(final)
    if best is not None and best != final:
        if final.exists():  # moved aside under a leftover's name, so a crash here still finds `best`
            os.replace(final, final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"))
        os.replace(best, final)
        rundir.fsync_dir(final.parent)
    for p in leftovers(final):
        shutil.rmtree(p, ignore_errors=True)
    return step


def discard(final: Path) -> None:
    """Delete `final` and its leftovers (a fresh run must not resume an earlier run's checkpoint)."""
    for p in [Path(final)] + leftovers(final):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def swap_in(tmp: Path, final: Path) -> None:
    """Replace `final` by the sealed folder `tmp`."""
    rundir.replace_dir(tmp, final)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
