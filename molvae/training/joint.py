"""Joint training (Gomez-Bombarelli et al. 2018): the property predictor trained with the VAE,
its targets, its held-out scores, and saving it into the run."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from molvae import chem
from molvae.models.predictor import Predictor, PredictorConfig
from molvae.models.vae import ModelConfig
from molvae.store.params import save_predictor
from molvae.training.config import TrainConfig

log = logging.getLogger(__name__)


def joint_predictor(model_cfg: ModelConfig, cfg: TrainConfig, y: np.ndarray):
    """A fresh predictor whose output scaling is the training targets' mean and spread."""
    pcfg = PredictorConfig(
        latent_dim=model_cfg.latent_dim,
        targets=cfg.property_targets,
        hidden=cfg.property_hidden,
        n_models=cfg.property_models,
    )
    pred = Predictor(pcfg, rngs=nnx.Rngs(cfg.seed + 2))
    ok = np.isfinite(y)
    if not ok.any(0).all():
        missing = [t for t, o in zip(cfg.property_targets, ok.any(0), strict=True) if not o]
        raise ValueError(f"no training molecule has a value for property {missing}")
    pred.scale_to(y)
    return pred


def save_joint_predictor(model, pred, val, y_val, cfg: TrainConfig, run_dir: Path) -> dict:
    """Held-out R^2 / MAE of the joint predictor on latent means; saves it into the run."""
    encode = jax.jit(lambda t, l_: model.encode(t, l_)[0])
    mus = [np.asarray(encode(val[0][i : i + 512], val[1][i : i + 512]))
           for i in range(0, len(val[0]), 512)]  # fmt: skip
    mu = np.concatenate(mus) if mus else np.zeros((0, model.cfg.latent_dim), np.float32)
    pm, _ = pred.predict(jnp.asarray(mu))
    metrics = regression_metrics(y_val[: len(mu)], np.asarray(pm), cfg.property_targets)
    save_predictor(pred, run_dir, {"joint": True, "validation": metrics})
    log.info("joint predictor (held out): %s", json.dumps(metrics))
    return {
        f"val_{t}_{k}": v for t, m in metrics.items() for k, v in m.items() if k in ("r2", "mae")
    }


def property_table(split, targets: tuple[str, ...]) -> np.ndarray:
    """(n, T) float32 values of `targets` for a data split: the split's own property columns
    (a user's CSV) where they exist, else computed with RDKit; nan where unknown."""
    have = split.properties if split.properties is not None else None
    from_file = [t for t in targets if have is not None and t in have.columns]
    computed = [t for t in targets if t not in from_file]
    unknown = [t for t in computed if t not in chem.PROPERTIES]
    if unknown:
        raise ValueError(
            f"train.property_targets {unknown} are neither data property columns nor known "
            f"properties ({sorted(chem.PROPERTIES)})"
        )
    table = chem.properties(split.smiles, computed) if computed else None
    cols = [
        (have[t] if t in from_file else table[t]).to_numpy(np.float64).astype(np.float32)
        for t in targets
    ]
    return np.stack(cols, 1) if cols else np.zeros((len(split), 0), np.float32)


def regression_metrics(y: np.ndarray, pred: np.ndarray, targets: Sequence[str]) -> dict:
    """R^2 and MAE per target over observed entries, {target: {"r2", "mae", "n"}}."""
    out = {}
    for t, name in enumerate(targets):
        ok = np.isfinite(y[:, t])
        yt, pt = y[ok, t], pred[ok, t]
        ss_tot = float(np.sum(np.square(yt - yt.mean()))) if ok.any() else 0.0
        r2 = 1.0 - float(np.sum(np.square(yt - pt))) / ss_tot if ss_tot > 0 else math.nan
        mae = float(np.mean(np.abs(yt - pt))) if ok.any() else math.nan
        out[name] = {"r2": r2, "mae": mae, "n": int(ok.sum())}
    return out
