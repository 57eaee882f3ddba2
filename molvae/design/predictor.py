"""Fitting, scoring, saving and loading the latent property predictor (no pickle: .npz + JSON)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from flax import nnx

from molvae import chem
from molvae.models.predictor import Predictor, PredictorConfig, property_loss
from molvae.store.folder import train_split_of_run
from molvae.store.params import save_predictor
from molvae.training.joint import regression_metrics

if TYPE_CHECKING:
    from molvae.api import MolVAE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """How the predictor is trained (Adam(W), bootstrap minibatches per ensemble member)."""

    steps: int = 2000
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1  # held out for R^2 / MAE (none below 20 molecules)
    noise: bool = False  # train on z ~ q(z|x) (when log-variances are given) instead of means
    hidden: tuple[int, ...] = (128, 128)
    n_models: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"predictor fit needs steps, batch_size >= 1 and lr > 0: {self}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")


# ----------------------------------------------------------------------------- training


@partial(jax.jit, static_argnames=("graphdef", "steps", "batch", "lr", "wd", "noise"))
def _fit(graphdef, params, rest, z, lv, y, mask, n, key, *, steps, batch, lr, wd, noise):
    """`steps` AdamW steps in one scan; member m trains on its own bootstrap batches."""
    tx = optax.adamw(optax.cosine_decay_schedule(lr, steps, 0.1), weight_decay=wd)
    n_models = nnx.merge(graphdef, params, rest).cfg.n_models

    def step(carry, k):
        p, opt_state = carry
        k_idx, k_eps = jax.random.split(k)
        idx = jax.random.randint(k_idx, (n_models, batch), 0, n)  # (M, B) rows < n are real
        zb = z[idx]  # (M, B, Z)
        if noise:
            zb = zb + jnp.exp(0.5 * lv[idx]) * jax.random.normal(k_eps, zb.shape)

        def loss_fn(p_):
            return property_loss(nnx.merge(graphdef, p_, rest), zb, y[idx], mask[idx])

        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, opt_state = tx.update(g, opt_state, p)
        return (optax.apply_updates(p, upd), opt_state), loss

    (params, _), losses = jax.lax.scan(
        step, (params, tx.init(params)), jax.random.split(key, steps)
    )
    return params, losses


def _bucket(n: int) -> int:
    """Padded row count: a power of two, so refits on growing data compile a few shapes only."""
    return max(64, 1 << max(n - 1, 1).bit_length())


def _pad(x: np.ndarray, rows: int, fill: float = 0.0) -> np.ndarray:
    out = np.full((rows, *x.shape[1:]), fill, np.float32)
    out[: len(x)] = x
    return out


def train_predictor(
    z: np.ndarray,
    y: np.ndarray,
    targets: Sequence[str],
    logvar: np.ndarray | None = None,
    cfg: FitConfig = FitConfig(),
) -> Predictor:
    """A new predictor fitted on latents z (n, Z) and targets y (n, T) (nan = missing)."""
    z, y = np.asarray(z, np.float32), np.asarray(y, np.float64).reshape(len(z), -1)
    if len(z) == 0:
        raise ValueError("no training molecules for the predictor")
    mask = np.isfinite(y)
    pcfg = PredictorConfig(z.shape[1], tuple(targets), tuple(cfg.hidden), cfg.n_models)
    pred = Predictor(pcfg, rngs=nnx.Rngs(cfg.seed))
    pred.scale_to(y)
    graphdef, params, rest = nnx.split(pred, nnx.Param, ...)
    rows = _bucket(len(z))
    lv = np.zeros_like(z) if logvar is None else np.asarray(logvar, np.float32)
    params, losses = _fit(
        graphdef,
        params,
        rest,
        _pad(z, rows),
        _pad(lv, rows),
        _pad(np.where(mask, y, 0.0), rows),
        _pad(mask.astype(np.float32), rows),
        jnp.int32(len(z)),
        jax.random.key(cfg.seed),
        steps=cfg.steps,
        batch=min(cfg.batch_size, rows),
        lr=cfg.lr,
        wd=cfg.weight_decay,
        noise=cfg.noise and logvar is not None,
    )
    last = float(np.mean(np.asarray(losses)[-50:]))
    if not math.isfinite(last):
        raise FloatingPointError("predictor training diverged (non-finite loss); lower the lr")
    return nnx.merge(graphdef, params, rest)


@partial(jax.jit, static_argnames=("graphdef",))
def _predict(graphdef, state, z):
    return nnx.merge(graphdef, state).predict(z)


def predict(
    predictor: Predictor, z: np.ndarray, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble mean and std in real units, (n, T) each, for latents z (n, Z)."""
    graphdef, state = nnx.split(predictor)
    z = np.asarray(z, np.float32)
    rows = _bucket(min(len(z), chunk))
    means, stds = [], []
    for i in range(0, len(z), chunk):
        zc = z[i : i + chunk]
        m, s = _predict(graphdef, state, _pad(zc, rows))
        means.append(np.asarray(m)[: len(zc)])
        stds.append(np.asarray(s)[: len(zc)])
    t = len(predictor.cfg.targets)
    empty = np.zeros((0, t), np.float32)
    return (np.concatenate(means), np.concatenate(stds)) if means else (empty, empty)


def target_index(predictor: Predictor, name: str) -> int:
    """Which output of `predictor` predicts the quantity `name` (an objective's name)."""
    targets = list(predictor.cfg.targets)
    if name not in targets:
        raise ValueError(
            f"the predictor predicts {targets}, not the objective {name!r}; pass no "
            "predictor to fit one"
        )
    return targets.index(name)


def fit_latent(
    z: np.ndarray,
    y: np.ndarray,
    targets: Sequence[str],
    logvar: np.ndarray | None = None,
    cfg: FitConfig = FitConfig(),
) -> tuple[Predictor, dict]:
    """Fit on a seeded random split; held-out R^2/MAE per target in the returned metrics."""
    y = np.asarray(y, np.float64).reshape(len(z), -1)
    n_val = int(len(z) * cfg.val_fraction) if len(z) >= 20 else 0
    perm = np.random.default_rng(cfg.seed).permutation(len(z))
    val, tr = perm[:n_val], perm[n_val:]
    t0 = time.perf_counter()
    lv = None if logvar is None else np.asarray(logvar)[tr]
    pred = train_predictor(np.asarray(z)[tr], y[tr], targets, lv, cfg)
    metrics: dict[str, Any] = {"n_train": len(tr), "n_val": n_val}
    if n_val:
        metrics["val"] = regression_metrics(y[val], predict(pred, np.asarray(z)[val])[0], targets)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    for name, m in metrics.get("val", {}).items():
        log.info("predictor %s: held-out R2 %.3f, MAE %.4g (n=%d)", name, m["r2"], m["mae"], m["n"])
    return pred, metrics


# ----------------------------------------------------------------------------- from molecules


def encode_valid(model: MolVAE, smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Posterior means and log-variances of the molecules the model can encode, and their
    indices into `smiles`; the others (invalid, unknown symbols) are counted in a warning."""
    smiles = list(smiles)
    mu, lv = model.encode(smiles, return_logvar=True, errors="nan")
    ok = np.isfinite(mu).all(1) if len(smiles) else np.zeros(0, bool)
    if not ok.all():
        log.warning("%d of %d molecules cannot be encoded; left out", (~ok).sum(), len(smiles))
    return mu[ok], lv[ok], np.flatnonzero(ok)


def target_table(
    smiles: Sequence[str], targets: Sequence[str] | pd.DataFrame | Mapping | np.ndarray
) -> pd.DataFrame:
    """Targets as a float table (n, T): RDKit property names are computed, tables passed on."""
    if isinstance(targets, pd.DataFrame):
        df = targets.reset_index(drop=True)
    elif isinstance(targets, Mapping):
        df = pd.DataFrame(dict(targets))
    elif isinstance(targets, np.ndarray):
        arr = targets.reshape(len(targets), -1)
        df = pd.DataFrame(arr, columns=[f"y{i}" for i in range(arr.shape[1])])
    else:
        df = chem.properties(list(smiles), tuple(targets))
    if len(df) != len(smiles):
        raise ValueError(f"{len(df)} target rows for {len(smiles)} molecules")
    return df.apply(pd.to_numeric, errors="coerce").astype(float)


def fit_predictor(
    model: MolVAE,
    smiles: Sequence[str],
    targets: Sequence[str] | pd.DataFrame | Mapping | np.ndarray = ("qed", "logp", "sa", "plogp"),
    cfg: FitConfig = FitConfig(),
) -> tuple[Predictor, dict]:
    """Fit a predictor from the model's latent means to properties of `smiles`.

    `targets` are RDKit property names (computed here) or a table/array of values, one row per
    molecule (nan = missing). Returns the predictor and metrics (held-out R^2 and MAE).
    """
    table = target_table(smiles, targets)
    mu, lv, keep = encode_valid(model, smiles)
    y = table.to_numpy()[keep]
    rows = np.isfinite(y).any(1)
    if (~rows).any():
        log.warning("%d molecules have no finite target; left out", int((~rows).sum()))
    pred, metrics = fit_latent(mu[rows], y[rows], list(table.columns), lv[rows], cfg)
    metrics["n_dropped"] = len(smiles) - int(rows.sum())
    return pred, metrics


def fit_run_predictor(
    model: MolVAE,
    targets: Sequence[str] | None = None,
    limit: int | None = 20000,
    cfg: FitConfig = FitConfig(),
    save: bool = True,
) -> tuple[Predictor, dict]:
    """Fit on the run's training molecules: RDKit properties and/or the data's CSV columns.

    `targets` None means the run's CSV property columns if it has any, else qed, logp, sa,
    plogp. At most `limit` molecules (a seeded subset). Saved into the run folder by default.
    """
    split = train_split_of_run(model.run_dir)
    csv_cols = list(split.properties.columns) if split.properties is not None else []
    targets = list(targets or csv_cols or ("qed", "logp", "sa", "plogp"))
    idx = np.arange(len(split.smiles))
    if limit is not None and len(idx) > limit:
        idx = np.sort(np.random.default_rng(cfg.seed).choice(idx, limit, replace=False))
    smiles = [split.smiles[i] for i in idx]
    table = pd.DataFrame(index=range(len(idx)))
    rdkit_names = [t for t in targets if t not in csv_cols]
    if rdkit_names:
        table = chem.properties(smiles, rdkit_names)
    for t in targets:
        if t in csv_cols:
            table[t] = split.properties[t].to_numpy()[idx]
    pred, metrics = fit_predictor(model, smiles, table[targets], cfg)
    metrics["source"] = f"{len(smiles)} training molecules of {model.run_dir}"
    if save:
        save_predictor(pred, model.run_dir, metrics)
    return pred, metrics
