"""Shared fixtures: a private data cache, the JAX compilation cache, tiny configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
_USER_CACHE = Path(os.environ.get("MOLVAE_CACHE") or Path.home() / ".cache" / "molvae")
os.environ.setdefault("MOLVAE_CACHE", str(ROOT / ".cache" / "molvae-test"))


def _share_wheels() -> None:
    """The tests' private cache reuses the wheels `make` fetched (fcd, guacamol, molsets:
    sha256-checked on use), so that the tests need no network once they are there."""
    src, dst = _USER_CACHE / "wheels", Path(os.environ["MOLVAE_CACHE"]) / "wheels"
    if not src.is_dir() or src.resolve() == dst.resolve():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for wheel in src.glob("*.whl"):
        if not (dst / wheel.name).exists():
            (dst / wheel.name).symlink_to(wheel.resolve())


_share_wheels()


def experiments(sweeps: bool) -> list[str]:
    """The experiment configs of conf/experiment/ (quality/ arms aside): the sweeps (those that set
    a Hydra sweeper) or the single runs (smoke, demo and the moses* recipes)."""
    files = (ROOT / "conf" / "experiment").glob("*.yaml")
    return sorted(p.stem for p in files if ("sweeper:" in p.read_text()) == sweeps)


import jax  # noqa: E402

# Compiled steps persist across test runs (and processes such as the Hydra subprocess tests).
jax.config.update("jax_compilation_cache_dir", str(ROOT / ".cache" / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# Eight small drugs and solvents: the training set of the unit tests of the loop.
SMILES = [
    "CCO",
    "c1ccccc1",
    "CC(=O)Oc1ccccc1C(=O)O",
    "CN1CCC[C@H]1c1cccnc1",
    "CCN(CC)CC",
    "O=C(O)c1ccccc1",
    "CC(C)Cc1ccc(C(C)C(=O)O)cc1",
    "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny model trained for a few steps on 300 bundled molecules: a real run folder."""
    from molvae.data import DataConfig
    from molvae.loggers import JsonlLogger
    from molvae.models.vae import ModelConfig
    from molvae.training import TrainConfig, train_and_evaluate

    out = tmp_path_factory.mktemp("tiny_run")
    data = DataConfig(limit=300, max_len=40)
    model = ModelConfig(embed_dim=16, enc_hidden=32, latent_dim=8, dec_hidden=32)
    train = TrainConfig(
        steps=30,
        batch_size=32,
        log_every=10,
        eval_every=30,
        ckpt_every=30,
        eval_size=64,
        warmup_steps=5,
        kl_warmup_steps=10,
        progress=False,
    )
    config = {"data": data.__dict__ | {"property_columns": []}}
    train_and_evaluate(data, model, train, out, JsonlLogger(out / "metrics.jsonl"), config)
    return out
