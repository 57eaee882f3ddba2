"""Bayesian optimization in the latent space: GP surrogate, batch TS or EI, TuRBO trust region.

Each round fits an ARD Matérn-5/2 GP (molvae.design.gp) on the scored latents (the best and
the most recent `max_points`), draws candidates - inside a trust region around the best latent
(TuRBO, Eriksson et al. 2019; as LOL-BO, Maus et al. 2022, uses it on VAE latents) or from the
prior - and picks a batch by Thompson sampling (one joint posterior draw per batch slot) or by
expected improvement refined with gradient steps. The region grows after `succ_tol`
improving batches in a row, shrinks after `fail_tol` failures, restarts when too small, and
widens when a whole batch decodes to molecules already scored (the region is one basin).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from molvae.design.gp import GP
from molvae.design.registry import register
from molvae.design.search import Loop, initial_design

if TYPE_CHECKING:
    from molvae.api import MolVAE
    from molvae.design.oracle import Oracle
    from molvae.models.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BOConfig:
    """BO settings (`molvae.optimize(..., method="bo", **these)`)."""

    n_init: int = 0  # prior molecules scored first; 0 = budget // 10, at least 16
    batch_size: int = 20  # latents proposed per round
    acquisition: str = "ts"  # ts (Thompson sampling) | ei (expected improvement)
    trust_region: bool = True  # TuRBO-style local search; False samples candidates globally
    n_candidates: int = 1024
    max_points: int = 512  # GP training set: the best half and the most recent half
    gp_steps: int = 200  # Adam steps on the marginal likelihood; a quarter when warm-started
    length_init: float = 0.8  # trust-region side length, latent units (TuRBO's defaults)
    length_min: float = 0.5**7
    length_max: float = 3.2  # twice TuRBO's: decoder basins are wide in VAE latents
    succ_tol: int = 3
    fail_tol: int = 0  # 0 = ceil(max(4, latent_dim) / batch_size), as TuRBO
    bound: float = 5.0  # latents stay in [-bound, bound]^Z
    # a batch with fewer new molecules than this fraction of batch_size widens the region
    # (0: only a batch with none new)
    min_new: float = 0.25
    patience: int = 20  # rounds without a new molecule before a restart (fresh prior samples)
    stop_on_stall: bool = False  # True: stop there instead (the budget may be left unspent)

    def __post_init__(self) -> None:
        if self.acquisition not in ("ts", "ei"):
            raise ValueError(f"optimize.acquisition must be ts or ei, got {self.acquisition!r}")
        for name in ("batch_size", "n_candidates", "max_points", "gp_steps", "succ_tol"):
            if getattr(self, name) < 1:
                raise ValueError(f"optimize.{name} must be >= 1, got {getattr(self, name)}")
        if self.n_init < 0 or self.fail_tol < 0 or self.patience < 1:
            raise ValueError("optimize: need n_init >= 0, fail_tol >= 0, patience >= 1")
        if not 0 <= self.min_new <= 1:
            raise ValueError(f"optimize.min_new must be in [0, 1], got {self.min_new}")
        if not 0 < self.length_min <= self.length_init <= self.length_max:
            raise ValueError("optimize: need 0 < length_min <= length_init <= length_max")


@dataclass
class TrustRegion:
    """TuRBO's side-length bookkeeping."""

    length: float
    cfg: BOConfig
    fail_tol: int
    succ: int = 0
    fail: int = 0
    restarts: int = 0

    def update(self, improved: bool, new: int) -> None:
        """After a batch: `improved` the best score, `new` molecules scored at all."""
        if new < max(1, self.cfg.min_new * self.cfg.batch_size):
            # most of the batch decoded to known molecules: the region lies within a few of the
            # decoder's basins (greedy decoding is piecewise constant), so shrinking it on a
            # failure would only bring more repeats: widen it
            self.length, self.succ, self.fail = min(2 * self.length, self.cfg.length_max), 0, 0
            return
        self.succ, self.fail = (self.succ + 1, 0) if improved else (0, self.fail + 1)
        if self.succ >= self.cfg.succ_tol:
            self.length, self.succ = min(2 * self.length, self.cfg.length_max), 0
        elif self.fail >= self.fail_tol:
            self.length, self.fail = self.length / 2, 0
        if self.length < self.cfg.length_min:
            self.length, self.restarts = self.cfg.length_init, self.restarts + 1
            log.info("trust region restarted (%d)", self.restarts)


def gp_training_set(z: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, ...]:
    """All distinct points, or the best max_points/2 and the most recent max_points/2 of the
    rest. A latent recorded twice (LOL-BO re-encodes every call of a molecule to one point)
    is kept once, at its latest record."""
    ok = np.isfinite(z).all(1) if len(z) else np.zeros(0, bool)
    z, y = z[ok], y[ok]
    if len(z):
        _, last = np.unique(z[::-1], axis=0, return_index=True)
        keep = np.sort(len(z) - 1 - last)
        z, y = z[keep], y[keep]
    if len(y) <= max_points:
        return z, y
    recent = np.arange(len(y) - max_points // 2, len(y))
    older = np.arange(len(y) - max_points // 2)
    best = older[np.argsort(-y[older], kind="stable")[: max_points - len(recent)]]
    idx = np.sort(np.concatenate([best, recent]))
    return z[idx], y[idx]


def candidates(
    center: np.ndarray,
    gp: GP,
    cfg: BOConfig,
    length: float | None,
    rng: np.random.Generator,
    top: np.ndarray,
) -> np.ndarray:
    """n_candidates latents: TuRBO perturbations in the region, or prior + local draws."""
    n, d = cfg.n_candidates, center.shape[0]
    if length is None:  # global: half from the prior, half near the best latents
        prior = rng.standard_normal((n // 2, d))
        near = top[rng.integers(0, len(top), n - n // 2)] + 0.3 * rng.standard_normal(
            (n - n // 2, d)
        )
        return np.clip(np.concatenate([prior, near]), -cfg.bound, cfg.bound).astype(np.float32)
    w = gp.lengthscales / np.exp(np.mean(np.log(gp.lengthscales)))  # TuRBO: stretch by ARD
    lo = np.clip(center - w * length / 2, -cfg.bound, cfg.bound)
    hi = np.clip(center + w * length / 2, -cfg.bound, cfg.bound)
    pert = lo + (hi - lo) * rng.random((n, d))
    mask = rng.random((n, d)) <= min(20.0 / d, 1.0)  # perturb ~20 dimensions at a time
    mask[np.arange(n), rng.integers(0, d, n)] = True
    return np.where(mask, pert, center).astype(np.float32)


def _thompson(gp: GP, cand: np.ndarray, q: int, seed: int) -> np.ndarray:
    f = gp.thompson(cand, q, seed)  # (q, n_cand)
    chosen: list[int] = []
    for row in f:  # each draw picks its best candidate not taken by an earlier draw
        for i in np.argsort(-row):
            if i not in chosen:
                chosen.append(int(i))
                break
    return cand[chosen]


def _ei(gp: GP, cand: np.ndarray, q: int, best: float) -> np.ndarray:
    """A batch by Kriging-believer EI over the candidates; a batch of one is refined further
    by projected gradient ascent on EI."""
    batch = cand[gp.batch_ei(cand, q, best)]
    if q == 1:
        batch = gp.maximize_ei(batch, best, cand.min(0), cand.max(0))
    return batch


def propose(
    gp: GP, center: np.ndarray, y: np.ndarray, top: np.ndarray, cfg: BOConfig,
    length: float | None, rng: np.random.Generator, seed: int,
) -> np.ndarray:  # fmt: skip
    """The next batch of latents: candidates around `center` (or global), then TS/EI."""
    cand = candidates(center, gp, cfg, length, rng, top)
    q = min(cfg.batch_size, cfg.n_candidates)
    if cfg.acquisition == "ts":
        return _thompson(gp, cand, q, seed)
    return _ei(gp, cand, q, float(y.max()))


@register("bo", BOConfig)
def run_bo(
    model: MolVAE,
    oracle: Oracle,
    cfg: BOConfig,
    *,
    seed: int = 0,
    init_smiles: Sequence[str] | None = None,
    predictor: Predictor | None = None,
    progress: bool = True,
) -> None:
    """Spend the oracle's budget by batch Bayesian optimization (`predictor` is not used: the
    GP is the surrogate)."""
    if predictor is not None:
        log.warning("method bo does not use a predictor; the one given is ignored")
    bo_search(model, oracle, cfg, seed=seed, init_smiles=init_smiles, progress=progress)


class Tuner(Protocol):
    """Called after every BO round with whether it improved the best score; returns True when
    it has changed the latent space (loop.model and the recorded latents), so that the GP is
    fitted afresh."""

    def __call__(self, loop: Loop, improved: bool) -> bool: ...


def bo_search(
    model: MolVAE,
    oracle: Oracle,
    cfg: BOConfig,
    *,
    seed: int = 0,
    init_smiles: Sequence[str] | None = None,
    progress: bool = True,
    desc: str = "bo",
    tuner: Tuner | None = None,
) -> Loop:
    """The BO loop of `run_bo`; `tuner` (LOL-BO) may update the model between rounds."""
    loop = Loop(model, oracle, cfg.patience, progress, desc, cfg.stop_on_stall, cfg.batch_size,
                seed)  # fmt: skip
    rng = np.random.default_rng([seed, 2])
    initial_design(loop, cfg.n_init or max(oracle.budget // 10, 16), seed, init_smiles)
    d = model.latent_dim
    fail_tol = cfg.fail_tol or math.ceil(max(4, d) / cfg.batch_size)
    tr = TrustRegion(cfg.length_init, cfg, fail_tol) if cfg.trust_region else None
    params, restarts = None, 0
    while not loop.done:
        loop.next_round()
        z, y = loop.evals.arrays()
        if loop.restarts != restarts:  # TuRBO: a fresh region and a fresh GP
            restarts, params = loop.restarts, None
            if tr is not None:
                tr.length, tr.succ, tr.fail = cfg.length_init, 0, 0
        if len(y) < 2:  # nothing to model yet: explore the prior
            loop.evaluate(loop.fresh(cfg.batch_size, rng), "prior")
            continue
        t0 = time.perf_counter()
        # Hyperparameters are warm-started after the first fit, so later fits take fewer steps.
        steps = cfg.gp_steps if params is None else max(cfg.gp_steps // 4, 1)
        # the surrogate also sees where proposals were invalid or unscored (as poor scores)
        gp = GP.fit(*gp_training_set(*loop.evals.arrays(unscored=True), cfg.max_points), params,
                    steps=steps)  # fmt: skip
        params = gp.params
        top = loop.evals.top_latents(10)
        length = tr.length if tr else None
        # the region's centre: the best point since the last restart (the best overall before)
        zc, yc = loop.evals.arrays(since=loop.restart_at)
        center = zc[int(np.argmax(yc))] if len(yc) else z[int(np.argmax(y))]
        batch = propose(gp, center, y, top, cfg, length, rng, seed * 100_003 + loop.round)
        if not np.isfinite(batch).all():  # never decode nan latents (they decode to nothing)
            log.warning("round %d: non-finite proposals replaced by fresh draws", loop.round)
            params = None
            batch = np.where(np.isfinite(batch), batch, loop.fresh(len(batch), rng))
        t1, before = time.perf_counter(), oracle.n_calls
        scores = loop.evaluate(batch, desc)
        log.debug("round %d: surrogate + acquisition %.2f s, decode + score %.2f s",
                  loop.round, t1 - t0, time.perf_counter() - t1)  # fmt: skip
        best = np.nanmax(scores) if np.isfinite(scores).any() else -np.inf
        improved = bool(best > y.max() + 1e-3 * abs(y.max()))
        if tr is not None:
            tr.update(improved, oracle.n_calls - before)
        if tuner is not None and not oracle.exhausted and tuner(loop, improved):
            params = None  # a new latent space: fit the GP's hyperparameters afresh
    loop.close()
    return loop
