"""Gradient ascent on latents through the property predictor, scored by the real objective.

Each round: (re)fit the predictor on every scored latent, start from the best latents found so
far plus prior draws, take Adam steps on  predicted value - prior_weight * |z|^2 / 2  (all starts
at once, vmapped and jitted), kept inside a ball of `radius` around each start so that z stays
where the decoder is reliable; decode points along each path and score the most promising first.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from molvae.design.predictor import FitConfig, predict, target_index, train_predictor
from molvae.design.registry import register
from molvae.design.search import Loop, initial_design
from molvae.models.predictor import Predictor

if TYPE_CHECKING:
    from molvae.api import MolVAE
    from molvae.design.oracle import Oracle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GradientConfig:
    """Gradient ascent settings (`molvae.optimize(..., method="gradient", **these)`)."""

    n_init: int = 0  # prior molecules scored first; 0 = budget // 10, at least 16
    n_starts: int = 32  # trajectories per round, half from the best latents, half from the prior
    steps: int = 50  # Adam steps per trajectory
    lr: float = 0.05
    prior_weight: float = 0.5  # weight of |z|^2 / 2 (the prior's negative log density)
    radius: float = 1.0  # trust region: |z - z_start| <= radius
    snapshots: int = 5  # points decoded along each trajectory
    ucb: float = 0.0  # ascend mean + ucb * ensemble std (optimism about unexplored latents)
    refit: bool = True  # refit the predictor on everything scored, every round
    fit_steps: int = 500
    patience: int = 20  # rounds without a new molecule before a restart (fresh prior samples)
    stop_on_stall: bool = False  # True: stop there instead (the budget may be left unspent)

    def __post_init__(self) -> None:
        for name in ("n_starts", "steps", "snapshots", "fit_steps", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"optimize.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_init < 0 or not self.lr > 0 or not self.radius > 0 or self.prior_weight < 0:
            raise ValueError("optimize: need n_init >= 0, lr > 0, radius > 0, prior_weight >= 0")


@partial(jax.jit, static_argnames=("graphdef", "steps", "snapshots"))
def _ascend(graphdef, state, z0, target, sign, lr, prior_weight, radius, ucb, *, steps, snapshots):
    pred = nnx.merge(graphdef, state)

    def value(z):  # one latent (Z,) -> scalar, in standardised target units
        out = sign * pred(z[None])[:, 0, target]  # (M,)
        return out.mean() + ucb * out.std() - 0.5 * prior_weight * jnp.sum(jnp.square(z))

    grad = jax.vmap(jax.grad(value))
    tx = optax.adam(lr)

    def step(carry, _):
        z, s = carry
        upd, s = tx.update(-grad(z), s, z)
        d = z + upd - z0
        norm = jnp.linalg.norm(d, axis=-1, keepdims=True)
        z = z0 + d * jnp.minimum(1.0, radius / jnp.maximum(norm, 1e-12))  # project onto the ball
        return (z, s), z

    _, path = jax.lax.scan(step, (z0, tx.init(z0)), None, length=steps)  # (steps, n, Z)
    at = jnp.linspace(steps / snapshots, steps, snapshots).astype(jnp.int32) - 1
    return path[at]  # (snapshots, n, Z)


def ascend(
    predictor: Predictor,
    z0: np.ndarray,
    target: int = 0,
    steps: int = 50,
    lr: float = 0.05,
    prior_weight: float = 0.0,
    radius: float = np.inf,
    ucb: float = 0.0,
    snapshots: int = 1,
    sign: float = 1.0,
) -> np.ndarray:
    """Gradient ascent of sign * predictor output `target` from every row of z0 (n, Z) at once
    (sign -1: descent, for a minimised quantity such as SA).

    Returns the latents at `snapshots` evenly spaced steps, (snapshots, n, Z); the last is
    the end point.
    """
    graphdef, state = nnx.split(predictor)
    return np.asarray(
        _ascend(
            graphdef,
            state,
            jnp.asarray(z0, jnp.float32),
            jnp.int32(target),
            jnp.float32(sign),
            jnp.float32(lr),
            jnp.float32(prior_weight),
            jnp.float32(radius),
            jnp.float32(ucb),
            steps=steps,
            snapshots=snapshots,
        )
    )


def _starts(loop: Loop, n: int, rng: np.random.Generator) -> np.ndarray:
    """Half near the best latents so far, half fresh (prior draws, or around init_smiles)."""
    best = loop.evals.top_latents(n // 2)
    noise = 0.1 * rng.standard_normal(best.shape).astype(np.float32)
    return np.concatenate([best + noise, loop.fresh(n - len(best), rng)])


@register("gradient", GradientConfig)
def run_gradient(
    model: MolVAE,
    oracle: Oracle,
    cfg: GradientConfig,
    *,
    seed: int = 0,
    init_smiles: Sequence[str] | None = None,
    predictor: Predictor | None = None,
    progress: bool = True,
) -> None:
    """Spend the oracle's budget by predictor-guided gradient ascent.

    A given `predictor` must predict the objective's quantity (a target named like the
    objective, followed along the objective's sign); it guides the first round and, with
    cfg.refit, is replaced by one fitted on the scored molecules from then on.
    """
    obj = oracle.objective
    target, sign = 0, 1.0
    if predictor is not None:
        target, sign = target_index(predictor, obj.name), obj.sign
    loop = Loop(model, oracle, cfg.patience, progress, "gradient", cfg.stop_on_stall,
                cfg.n_starts, seed)  # fmt: skip
    rng = np.random.default_rng([seed, 1])
    n_init = cfg.n_init or max(oracle.budget // 10, 16)
    initial_design(loop, n_init if predictor is None else min(n_init, 8), seed, init_smiles)
    fit = FitConfig(steps=cfg.fit_steps, val_fraction=0.0, hidden=(64, 64), noise=False)
    while not loop.done:
        loop.next_round()
        z_seen, y_seen = loop.evals.arrays()
        if (cfg.refit or predictor is None) and len(y_seen) >= 2:
            fit = FitConfig(**{**fit.__dict__, "seed": seed * 1000 + loop.round})
            predictor = train_predictor(z_seen, y_seen[:, None], ["score"], None, fit)
            target, sign = 0, 1.0  # it predicts the score itself
        if predictor is None:  # too few scores to learn from: explore the prior
            loop.evaluate(loop.fresh(cfg.n_starts, rng), "prior")
            continue
        z0 = _starts(loop, cfg.n_starts, rng)
        path = ascend(
            predictor,
            z0,
            target,
            cfg.steps,
            cfg.lr,
            cfg.prior_weight,
            cfg.radius,
            cfg.ucb,
            cfg.snapshots,
            sign,
        ).reshape(-1, model.latent_dim)
        order = np.argsort(-sign * predict(predictor, path)[0][:, target], kind="stable")
        loop.evaluate(path[order], "gradient")
    loop.close()
