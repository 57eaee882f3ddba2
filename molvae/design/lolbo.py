"""LOL-BO (Maus et al., NeurIPS 2022): trust-region BO in a latent space that is fine-tuned,
during the search, on the best molecules found so far.

The search is `bo_search` (TuRBO trust region, ARD GP, Thompson sampling). After `tune_every`
BO rounds in a row without a new best score, a copy of the VAE is trained for `tune_epochs`
epochs on the `top_k` best molecules scored so far, on its ELBO plus `property_weight` times
the loss of a small MLP predicting the score from the posterior mean (gradients reach the
encoder through the mean: the joint loss of Gomez-Bombarelli et al. 2018, which LOL-BO applies
with its GP in the MLP's place). Every scored molecule is then re-encoded by the tuned encoder,
later proposals are decoded by the tuned decoder, and the GP is fitted afresh on the new
latents. The model passed in is never changed: the search works on its own copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from molvae.design.bo import BOConfig, bo_search
from molvae.design.predictor import FitConfig, train_predictor
from molvae.design.registry import register
from molvae.training.config import TrainConfig
from molvae.training.schedules import make_tx
from molvae.training.steps import make_joint_train_step

if TYPE_CHECKING:
    from molvae.api import MolVAE
    from molvae.design.oracle import Oracle
    from molvae.design.search import Loop
    from molvae.models.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LOLBOConfig(BOConfig):
    """BO settings plus how the VAE is fine-tuned (`method="lolbo"`)."""

    tune_every: int = 10  # BO rounds in a row without a new best before a fine-tune (e2e_freq)
    top_k: int = 1000  # best distinct molecules the VAE is fine-tuned on
    tune_epochs: int = 2  # passes over them per fine-tune
    tune_batch: int = 64
    tune_lr: float = 3e-4  # Adam, constant
    kl_weight: float | None = None  # beta per molecule; None = the run's own train.kl_max
    property_weight: float = 1.0  # weight of the score predictor's loss (standardised scores)
    min_molecules: int = 32  # no fine-tune before this many molecules are scored
    # Prior samples of the original model mixed into each fine-tune, per best molecule (no
    # score, no oracle call): without them the decoder memorises the few hundred best
    # molecules and the trust region decodes to nothing new.
    replay: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("tune_every", "top_k", "tune_epochs", "tune_batch", "min_molecules"):
            if getattr(self, name) < 1:
                raise ValueError(f"optimize.{name} must be >= 1, got {getattr(self, name)}")
        if not self.tune_lr > 0 or self.property_weight < 0 or self.replay < 0:
            raise ValueError("optimize: need tune_lr > 0, property_weight >= 0, replay >= 0")
        if self.kl_weight is not None and self.kl_weight < 0:
            raise ValueError(f"optimize.kl_weight must be >= 0, got {self.kl_weight}")


class FineTuner:
    """The Tuner of `bo_search`: counts rounds without improvement and, after `tune_every` of
    them, fine-tunes the loop's model on the best molecules and re-encodes the record."""

    def __init__(self, model: MolVAE, cfg: LOLBOConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self.base = model  # the model as given: its prior samples are the replay
        run_train = (model.config or {}).get("train", {})
        beta = cfg.kl_weight if cfg.kl_weight is not None else float(run_train.get("kl_max", 1.0))
        self.train_cfg = TrainConfig(
            lr=cfg.tune_lr,
            lr_schedule="constant",
            warmup_steps=0,
            kl_schedule="constant",
            kl_max=beta,
            free_bits=float(run_train.get("free_bits", 0.0)),
            property_weight=cfg.property_weight,
            property_targets=("score",),
            property_hidden=(64, 64),
        )
        self.fails = 0
        self.tunes = 0
        self.seconds = 0.0
        self.calls_at_tune = 0  # oracle calls when the last fine-tune ran
        self._step = None  # the jitted joint step, compiled once for the model's structure
        self._graphdef = None
        self._structure = None

    def __call__(self, loop: Loop, improved: bool) -> bool:
        self.fails = 0 if improved else self.fails + 1
        if self.fails < self.cfg.tune_every:
            return False
        self.fails = 0
        if loop.oracle.n_calls - self.calls_at_tune < self.cfg.batch_size:
            return False  # nothing much new to learn from since the last fine-tune
        smiles, y = self._top(loop)
        if len(smiles) < self.cfg.min_molecules:
            return False
        t0 = time.perf_counter()
        tuned, stats = self.fine_tune(loop.model, smiles, y)
        self.calls_at_tune = loop.oracle.n_calls
        loop.model = tuned
        n = reencode(loop)
        self.tunes += 1
        self.seconds += time.perf_counter() - t0
        log.info(
            "lolbo: fine-tune %d on %d molecules + %d replayed (%d steps, ELBO %.2f -> %.2f, "
            "score loss %.3f -> %.3f), %d molecules re-encoded, %.1f s",
            self.tunes, len(smiles), stats["replayed"], stats["steps"], stats["loss0"],
            stats["loss1"],
            stats["prop0"], stats["prop1"], n, time.perf_counter() - t0,
        )  # fmt: skip
        return True

    def _top(self, loop: Loop) -> tuple[list[str], np.ndarray]:
        """The top_k best distinct scored molecules that the model can read, and their scores."""
        s, y = np.asarray(loop.evals.smiles, object), np.asarray(loop.evals.scores, float)
        ok = np.isfinite(y) & (s != "")
        order = np.argsort(-np.where(ok, y, -np.inf), kind="stable")
        seen: dict[str, float] = {}
        for i in order:
            if not ok[i] or len(seen) == self.cfg.top_k:
                break
            seen.setdefault(str(s[i]), float(y[i]))
        mols = list(seen)
        with _quiet("molvae.inference.codec"):
            readable = loop.model.encodable(mols) if mols else np.zeros(0, bool)
        mols = [m for m, r in zip(mols, readable, strict=True) if r]
        return mols, np.array([seen[m] for m in mols], np.float32)

    def _replay(self, n: int) -> list[str]:
        """n prior samples of the original model (temperature 1) that it can read back."""
        if n == 0:
            return []
        mols = self.base.sample(n, seed=self.seed * 1009 + 7 * self.tunes + 1)
        mols = [m for m in mols if m]
        with _quiet("molvae.inference.codec"):
            ok = self.base.encodable(mols) if mols else np.zeros(0, bool)
        return [m for m, r in zip(mols, ok, strict=True) if r]

    def fine_tune(
        self, model: MolVAE, smiles: Sequence[str], y: np.ndarray
    ) -> tuple[MolVAE, dict[str, float]]:
        """A copy of `model` trained on the molecules and their scores (the model is unchanged)."""
        cfg, tcfg = self.cfg, self.train_cfg
        smiles, y = list(smiles), np.asarray(y, np.float32)
        with _quiet("molvae.inference.codec"):
            mu, _ = model.codec.encode(smiles)
        pred = train_predictor(
            mu, y[:, None], ("score",), cfg=FitConfig(steps=200, hidden=(64, 64), n_models=1,
                                                       val_fraction=0.0, seed=self.seed),
        )  # fmt: skip
        replay = self._replay(int(round(cfg.replay * len(smiles))))
        y = np.concatenate([y, np.full(len(replay), np.nan, np.float32)])  # replay: no score
        tokens, lengths = model.codec.tokenize(smiles + replay)
        width = model.max_len + 2
        if tokens.shape[1] > width:  # canonical SMILES can need more symbols than the sample
            keep = lengths <= model.max_len + 1
            tokens, lengths, y = tokens[keep, :width], lengths[keep], y[keep]
        vae = nnx.clone(model.model)
        opt = nnx.Optimizer(vae, make_tx(tcfg), wrt=nnx.Param)
        popt = nnx.Optimizer(pred, make_tx(tcfg), wrt=nnx.Param)
        graphdef, state = nnx.split((vae, opt, pred, popt))
        # one array type for every tune's state (a loaded model holds numpy arrays, a tuned one
        # jax arrays; a mix would compile the step again)
        state = jax.tree.map(jnp.asarray, state)
        # The step is compiled once: later tunes' graphdefs differ only in the optimizers' (equal)
        # transformation objects, so the first graphdef serves for every state of its structure.
        structure = jax.tree.structure(state)
        if self._step is None or structure != self._structure:
            self._step, self._structure = make_joint_train_step(graphdef, tcfg), structure
            self._graphdef = graphdef
        rng = np.random.default_rng([self.seed, 41, self.tunes])
        key = jax.random.key(self.seed * 7919 + self.tunes)
        n, b = len(y), cfg.tune_batch
        auxes = []
        for _ in range(cfg.tune_epochs):
            order = rng.permutation(n)
            for start in range(0, n, b):
                idx = order[start : start + b]
                rows = np.resize(idx, b)  # a fixed batch shape: pad by repeating, weight 0
                w = (np.arange(b) < len(idx)).astype(np.float32)
                state, aux = self._step(
                    state,
                    jnp.asarray(tokens[rows]),
                    jnp.asarray(lengths[rows]),
                    jnp.asarray(w),
                    jnp.asarray(y[rows][:, None]),
                    key,
                )
                auxes.append(aux)  # read once at the end: no device sync per step
        vae, _, _, _ = nnx.merge(self._graphdef, state)
        first, last = jax.device_get((auxes[0], auxes[-1]))
        w_p = cfg.property_weight
        elbo = [float(a["loss"]) - w_p * float(a["prop_loss"]) for a in (first, last)]
        stats = {"steps": len(auxes), "loss0": elbo[0], "loss1": elbo[1],
                 "prop0": float(first["prop_loss"]), "prop1": float(last["prop_loss"]),
                 "replayed": len(replay)}  # fmt: skip
        return model.with_model(vae), stats


@contextmanager
def _quiet(name: str):
    """Silence logger `name` below ERROR (re-encoding repeats the codec's per-call warnings)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def reencode(loop: Loop) -> int:
    """Replace the recorded latents of every decoded molecule (and the anchors) with their
    posterior means under loop.model; rows without a molecule keep their latents. Returns how
    many rows changed."""
    smiles = loop.evals.smiles
    distinct = sorted({s for s in smiles if s})
    if not distinct:
        return 0
    with _quiet("molvae.inference.codec"):
        mu = loop.model.encode(distinct, errors="nan")
    where = {s: i for i, s in enumerate(distinct)}
    changed = 0
    for row, s in enumerate(smiles):
        if s and np.isfinite(mu[where[s]]).all():
            loop.evals.z[row] = mu[where[s]].astype(np.float32)
            changed += 1
    if loop.anchor_smiles:
        with _quiet("molvae.inference.codec"):
            a = loop.model.encode(loop.anchor_smiles, errors="nan")
        loop.anchors = a[np.isfinite(a).all(1)].astype(np.float32)
    return changed


@register("lolbo", LOLBOConfig)
def run_lolbo(
    model: MolVAE,
    oracle: Oracle,
    cfg: LOLBOConfig,
    *,
    seed: int = 0,
    init_smiles: Sequence[str] | None = None,
    predictor: Predictor | None = None,
    progress: bool = True,
) -> None:
    """Spend the oracle's budget by BO in a latent space fine-tuned on the best molecules
    (`predictor` is not used: the GP is the surrogate; the fine-tune trains its own head)."""
    if predictor is not None:
        log.warning("method lolbo does not use a predictor; the one given is ignored")
    tuner = FineTuner(model, cfg, seed)
    bo_search(model, oracle, cfg, seed=seed, init_smiles=init_smiles, progress=progress,
              desc="lolbo", tuner=tuner)  # fmt: skip
    log.info("lolbo: %d fine-tunes, %.1f s in all", tuner.tunes, tuner.seconds)
