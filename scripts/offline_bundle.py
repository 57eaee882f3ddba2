"""Pack what a training run needs on a machine with no network (a GPU node) into one folder.

    python scripts/offline_bundle.py --out bundle --python-version 3.12

writes bundle/moses_train_test.npz.xz (the preprocessed MOSES train and test splits, read with
data.preprocessed; built here first if the cache lacks it, ~13 min once) and bundle/wheels/ (the
packages a machine that already has jax, flax, optax and orbax-checkpoint lacks: RDKit, selfies,
Hydra, OmegaConf), plus, with --jax-stack, this checkout's flax, optax and orbax-checkpoint
versions in bundle/fallback/ for a machine whose own versions do not run molvae. Then copy the
checkout and the bundle there and run `bash scripts/offline_train.sh` (see its header).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import lzma
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from molvae import fetch
from molvae.data import DataConfig, load_dataset

NEEDED = ("rdkit", "selfies", "hydra-core", "omegaconf")
JAX_STACK = ("flax", "optax", "orbax-checkpoint")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def slim_dataset(out: Path) -> Path:
    """The cached MOSES dataset with the train and test splits only, xz-compressed."""
    ds = load_dataset(DataConfig(source="moses"))  # from the cache, or built into it
    cached = fetch.cache_dir() / "preprocessed" / f"{ds.stats['key']}.npz"
    with np.load(cached, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("test_scaffolds.")}
    arrays["splits"] = np.array(["train", "test"])
    target = out / "moses_train_test.npz.xz"
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "d.npz"
        np.savez(plain, **arrays)
        with open(plain, "rb") as f, lzma.open(target, "wb", preset=6) as g:
            shutil.copyfileobj(f, g, 1 << 24)
    return target


def wheels(names: list[str], dest: Path, python_version: str, antlr: bool = False) -> None:
    """Binary wheels of this environment's versions of `names` for `python_version`, no deps."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{n}=={md.version(n)}" for n in names]
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    base = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest)]
    subprocess.run([*base, "--only-binary=:all:", "--python-version", python_version,
                    "--implementation", "cp", *plat, *pins], check=True)  # fmt: skip
    if antlr:  # OmegaConf's parser runtime is a source archive only: build its pure wheel
        pin = f"antlr4-python3-runtime=={md.version('antlr4-python3-runtime')}"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest),
                        pin], check=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bundle")
    ap.add_argument("--python-version", default=f"{sys.version_info[0]}.{sys.version_info[1]}")
    ap.add_argument("--jax-stack", action="store_true", help="also carry flax, optax, orbax")
    ap.add_argument("--no-data", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    wheels(list(NEEDED), out / "wheels", args.python_version, antlr=True)
    if args.jax_stack:
        wheels(list(JAX_STACK), out / "fallback", args.python_version)
    if not args.no_data:
        print("dataset:", slim_dataset(out))
    for p in sorted(out.rglob("*")):
        if p.is_file():
            print(f"{p.stat().st_size / 1e6:8.1f} MB  {p}")


if __name__ == "__main__":
    main()
