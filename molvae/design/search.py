"""What every latent optimizer shares: decode-and-score, the record of scored latents, stopping."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from molvae.design.oracle import Oracle
from molvae.design.predictor import encode_valid

if TYPE_CHECKING:
    from molvae.api import MolVAE

log = logging.getLogger(__name__)
ANCHOR_SCALE = 0.2  # spread of fresh latents around init_smiles (see README: Optimization)


@dataclass
class Evaluations:
    """Every latent decoded so far with its molecule and score (nan: invalid or unscored)."""

    z: list[np.ndarray] = field(default_factory=list)
    smiles: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def add(self, z: np.ndarray, smiles: Sequence[str], scores: np.ndarray) -> None:
        self.z.extend(np.asarray(z, np.float32))
        self.smiles.extend(smiles)
        self.scores.extend(np.asarray(scores, float))

    def arrays(self, since: int = 0, unscored: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(n, Z) latents and (n,) scores of the finitely scored points (those recorded from
        index `since` on). unscored=True keeps the others too (invalid decodes, molecules the
        objective cannot score), valued one spread below the worst score (LOL-BO's treatment),
        so that a surrogate learns to avoid where they come from."""
        y = np.asarray(self.scores[since:], float)
        ok = np.isfinite(y)
        if unscored and ok.any() and not ok.all():
            floor = y[ok].min() - max(float(y[ok].std()), 1e-3)
            y, ok = np.where(ok, y, floor), np.ones(len(y), bool)
        z = np.stack(self.z[since:])[ok] if self.z[since:] else np.zeros((0, 0), np.float32)
        return z, y[ok]

    def top_latents(self, k: int) -> np.ndarray:
        """Latents of the k best distinct molecules, (<=k, Z)."""
        z, y = np.stack(self.z), np.asarray(self.scores, float)
        seen, out = set(), []
        for i in np.argsort(np.where(np.isfinite(y), -y, np.inf), kind="stable"):
            if not np.isfinite(y[i]) or len(out) == k:
                break
            if self.smiles[i] not in seen:
                seen.add(self.smiles[i])
                out.append(z[i])
        return np.stack(out) if out else np.zeros((0, z.shape[1]), np.float32)

    @property
    def best(self) -> float:
        y = np.asarray(self.scores, float)
        return float(np.nanmax(y)) if np.isfinite(y).any() else -np.inf


class Loop:
    """Runs decode -> oracle rounds with a progress bar over the budget, and spends the budget:
    after `patience` rounds without a new molecule it restarts (a batch of fresh prior samples;
    the method sees `restarts` grow and restarts its own state, e.g. the trust region). It stops
    early only if asked to (`stop_on_stall`), or if `patience` restarts in a row bring nothing
    new (the model cannot produce new molecules)."""

    def __init__(
        self,
        model: MolVAE,
        oracle: Oracle,
        patience: int,
        progress: bool,
        desc: str,
        stop_on_stall: bool = False,
        restart_batch: int = 20,
        seed: int = 0,
    ):
        self.model, self.oracle, self.patience = model, oracle, patience
        self.stop_on_stall, self.restart_batch = stop_on_stall, restart_batch
        self.evals = Evaluations()
        self.round, self.stalled = 0, 0
        self.restarts, self.restart_at, self._dry_restarts = 0, 0, 0
        self._rng = np.random.default_rng([seed, 29])
        # Latents of the user's starting molecules (init_smiles): when given, fresh points are
        # drawn around them instead of from the prior, so the search stays near the leads.
        self.anchors: np.ndarray | None = None
        self.anchor_smiles: list[str] = []  # the molecules behind them (LOL-BO re-encodes them)

        self.bar = tqdm(
            total=oracle.budget,
            initial=oracle.n_calls,
            desc=desc,
            disable=not progress,
            dynamic_ncols=True,
            mininterval=1.0,
        )

    def fresh(self, n: int, rng: np.random.Generator, scale: float = ANCHOR_SCALE) -> np.ndarray:
        """n new latents to explore: prior draws, or, with anchors, draws around them
        (anchor + scale * N(0, I), the anchors taken in turn)."""
        eps = rng.standard_normal((n, self.model.latent_dim)).astype(np.float32)
        if self.anchors is None or not len(self.anchors):
            return eps
        return self.anchors[np.arange(n) % len(self.anchors)] + np.float32(scale) * eps

    def evaluate(
        self,
        z: np.ndarray,
        source: str,
        smiles: list[str] | None = None,
        limit: int | None = None,
    ) -> np.ndarray:
        """Decode z (unless smiles are given), score through the oracle, record; scores (n,).

        With `limit`, only the leading points that bring at most `limit` new molecules are
        kept (the rest are dropped unscored)."""
        before = self.oracle.n_calls
        smiles = self.model.decode(z) if smiles is None else smiles
        if limit is not None:
            keep = _first_new(smiles, self.oracle, limit)
            z, smiles = np.asarray(z)[:keep], smiles[:keep]
        scores = self.oracle(smiles, round=self.round, source=source)
        self.evals.add(z, smiles, scores)
        new = self.oracle.n_calls - before
        self.bar.update(new)
        self.bar.set_postfix(best=f"{self.evals.best:.4g}")
        self.stalled = 0 if new else self.stalled + 1
        return scores

    def evaluate_smiles(self, smiles: Sequence[str], source: str = "init") -> None:
        """Encode user molecules, score them (charged like any other molecule) and anchor the
        search at their latents (see `fresh`)."""
        mu, _, keep = encode_valid(self.model, smiles)
        self.evaluate(mu, source, [smiles[i] for i in keep])
        self.anchor_smiles = [smiles[i] for i in keep]
        self.anchors = np.asarray(mu, np.float32) if len(mu) else None

    @property
    def done(self) -> bool:
        if self.oracle.exhausted:
            return True
        if self.stalled < self.patience:
            return False
        if self.stop_on_stall:
            log.warning(
                "stopping after %d rounds without a new molecule (%d of %d calls used)",
                self.stalled,
                self.oracle.n_calls,
                self.oracle.budget,
            )
            return True
        while self._dry_restarts < self.patience and not self.oracle.exhausted:
            if self.restart():
                return self.oracle.exhausted
        if not self.oracle.exhausted:
            log.warning(
                "stopping: %d restarts from the prior in a row brought no new molecule "
                "(%d of %d calls used)",
                self._dry_restarts,
                self.oracle.n_calls,
                self.oracle.budget,
            )
        return True

    def restart(self) -> bool:
        """Score a batch of fresh prior samples and start the search's state over from them;
        True if it brought a new molecule."""
        self.restarts += 1
        self.restart_at = len(self.evals.scores)
        log.info("restart %d after %d rounds without a new molecule (%d of %d calls used)",
                 self.restarts, self.stalled, self.oracle.n_calls, self.oracle.budget)  # fmt: skip
        before = self.oracle.n_calls
        self.next_round()
        # around the anchors, a little wider at each restart in a row without a new molecule
        z = self.fresh(self.restart_batch, self._rng, ANCHOR_SCALE * (1 + self._dry_restarts))
        self.evaluate(z, "restart")
        fresh = self.oracle.n_calls > before
        self._dry_restarts = 0 if fresh else self._dry_restarts + 1
        return fresh

    def next_round(self) -> None:
        self.round += 1

    def close(self) -> None:
        self.bar.close()


def _first_new(smiles: Sequence[str], oracle: Oracle, limit: int) -> int:
    """Length of the longest prefix of `smiles` with at most `limit` unscored molecules."""
    new: set[str] = set()
    for i, s in enumerate(smiles):
        if s and oracle.known(s) is None and s not in new:
            if len(new) == limit:
                return i
            new.add(s)
    return len(smiles)


def initial_design(loop: Loop, n: int, seed: int, init_smiles: Sequence[str] | None) -> None:
    """Score the user's starting molecules, then fresh latents (prior samples, or
    neighbourhoods of the starting molecules: Loop.fresh) until n calls are used."""
    if init_smiles:
        loop.evaluate_smiles(list(init_smiles))
    rng = np.random.default_rng([seed, 17])
    source = "prior" if loop.anchors is None else "near_init"
    tries = 0
    while loop.oracle.n_calls < min(n, loop.oracle.budget) and tries < 20:
        want = min(n, loop.oracle.budget) - loop.oracle.n_calls
        loop.evaluate(loop.fresh(max(2 * want, 8), rng), source, limit=want)
        tries += 1
    if not np.isfinite(loop.evals.scores).any():
        log.warning("no finite score among %d initial molecules", len(loop.evals.scores))
