"""The public Python API: load a trained model, encode, decode, sample, score likelihoods."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from flax import nnx

from molvae import chem
from molvae.inference import latent
from molvae.inference.calibration import percentile_of
from molvae.inference.codec import LatentCodec
from molvae.inference.engine import DecodingEngine
from molvae.models.vae import VAE, ModelConfig
from molvae.store import locate
from molvae.store.checkpoints import restore_model
from molvae.store.folder import read_run_info
from molvae.store.names import LIKELIHOOD_JSON, PARAMS_NPZ, PREDICTOR, RunFolderError
from molvae.store.params import load_npz, load_predictor
from molvae.vocab import Vocab

log = logging.getLogger(__name__)
PRETRAINED = locate.PRETRAINED


class MolVAE:
    """A trained SELFIES VAE with its vocabulary. Inputs SMILES lists, outputs numpy / SMILES."""

    def __init__(
        self,
        model: VAE,
        vocab: Vocab,
        max_len: int,
        run_dir: Path | None = None,
        config: dict | None = None,
        decode_dtype: str | None = None,
    ):
        self.model, self.vocab, self.max_len = model, vocab, max_len
        self.run_dir, self.config = run_dir, config or {}
        self.decode_dtype = decode_dtype
        fragments = self.config.get("data", {}).get("fragments", "largest")
        self.codec = LatentCodec(model, vocab, max_len, fragments)  # SMILES -> latents, scores
        self.engine = DecodingEngine(model, vocab, max_len, decode_dtype)  # latents -> SMILES
        self.predictor = None  # a latent property predictor saved in the run folder, if any
        # held-out per-symbol log-likelihood percentiles (likelihood.json), for anomaly_percentile
        self.calibration: dict | None = None

    def with_model(self, model: VAE) -> MolVAE:
        """The same vocabulary, preprocessing and settings around other parameters of the same
        architecture (a fine-tuned copy, as LOL-BO makes). Without a predictor or calibration:
        both were fitted to the original latent space."""
        if model.cfg != self.model.cfg:
            raise ValueError(
                f"with_model needs the same architecture: {model.cfg} != {self.model.cfg}"
            )
        return MolVAE(model, self.vocab, self.max_len, self.run_dir, self.config, self.decode_dtype)

    @property
    def property_names(self) -> tuple[str, ...]:
        """What the attached predictor predicts (empty without one)."""
        return tuple(self.predictor.cfg.targets) if self.predictor is not None else ()

    def predict(self, smiles_or_z, return_std: bool = False):
        """Predicted properties from the attached predictor, a DataFrame (one column per target)
        for a list of SMILES (rows of invalid ones are nan) or for latents z (n, latent_dim)."""
        if self.predictor is None:
            raise ValueError(
                "this model has no property predictor: train one with "
                "molvae.design.fit_run_predictor or train with train.property_weight > 0"
            )
        z = np.asarray(smiles_or_z) if not _is_smiles_list(smiles_or_z) else None
        if z is None:
            z = self.encode(list(smiles_or_z), errors="nan")
        ok = np.isfinite(z).all(1)
        mean = np.full((len(z), len(self.property_names)), np.nan, np.float32)
        std = mean.copy()
        if ok.any():
            m, s = self.predictor.predict(np.asarray(z[ok], np.float32))
            mean[ok], std[ok] = np.asarray(m), np.asarray(s)
        out = pd.DataFrame(mean, columns=list(self.property_names))
        return (out, pd.DataFrame(std, columns=list(self.property_names))) if return_std else out

    def encodable(self, smiles: Sequence[str]) -> np.ndarray:
        """(n,) bool: which molecules `encode` accepts (valid SMILES, after the training data's
        preprocessing, with every SELFIES symbol in the vocabulary)."""
        return self.codec.encodable(list(smiles))

    @property
    def latent_dim(self) -> int:
        return self.model.cfg.latent_dim

    def __repr__(self) -> str:
        return (
            f"MolVAE(latent_dim={self.latent_dim}, vocab={len(self.vocab)}, "
            f"max_len={self.max_len}, run_dir={str(self.run_dir)!r})"
        )

    def encode(self, smiles: Sequence[str], return_logvar: bool = False, errors: str = "raise"):
        """Posterior means (n, latent_dim); with return_logvar also the log-variances.

        Molecules are preprocessed as the training data was: canonical SMILES, and salts and
        mixtures ("CC(=O)[O-].[Na+]") reduced to their largest organic fragment unless the run
        was trained with another data.fragments policy; a warning counts what was changed.
        errors="raise": ValueError naming the molecule for invalid SMILES or unknown SELFIES
        symbols. errors="nan": such rows are nan (count them with np.isnan(z).any(1)).
        """
        mu, logvar = self.codec.encode(list(smiles), errors=errors)
        return (mu, logvar) if return_logvar else mu

    def decode(
        self,
        z: np.ndarray,
        greedy: bool = True,
        temperature: float = 1.0,
        seed: int = 0,
        strict: bool = False,
        grammar: bool | None = None,
        max_ring: int | None = None,
    ) -> list[str]:
        """Canonical SMILES for latents z (n, latent_dim); '' where decoding fails.

        strict: also '' where the SELFIES decoder had to repair the sampled string (a bond
        order cut, a ring or branch dropped, symbols ignored): the SELFIES analogue of an
        invalid SMILES, so that `valid` means what it means for a SMILES model.
        grammar: grammar-constrained decoding (molvae.models.grammar): at every step the
        tokens that would make the SELFIES decoder repair the string are masked out, so the
        decoder's distribution is renormalised over strings it writes as they are. Needs a
        vocabulary of single SELFIES symbols (not BPE). None: as the model was trained
        (ModelConfig.grammar).
        max_ring: > 0, under the grammar, and no ring bond may close a ring of more atoms
        (MOSES's filters reject rings of 8 or more: max_ring=7), the distribution renormalised
        over what is left (models.grammar); 0: no limit; None: as trained
        (ModelConfig.max_ring, 0 unless the model was trained under a limit)."""
        return self.engine.decode(
            np.asarray(z), seed, temperature, greedy, strict, grammar, max_ring
        )

    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        seed: int = 0,
        greedy: bool = False,
        scale: float = 1.0,
        strict: bool = False,
        grammar: bool | None = None,
        max_ring: int | None = None,
    ) -> list[str]:
        """n molecules from the prior z ~ N(0, scale^2 I), decoded stochastically at
        `temperature` (or greedily). Same seed, same molecules. strict, grammar, max_ring: see
        decode; a repaired sample is '' (invalid) under strict, never resampled."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        z = latent.prior(n, self.latent_dim, seed, scale)
        return self.decode(
            z,
            greedy=greedy,
            temperature=temperature,
            seed=seed + 1,
            strict=strict,
            grammar=grammar,
            max_ring=max_ring,
        )

    def reconstruct(self, smiles: Sequence[str], greedy: bool = True, seed: int = 0) -> list[str]:
        """Encode to the posterior mean, decode back."""
        return self.decode(self.encode(smiles), greedy=greedy, seed=seed)

    def interpolate(self, a: str, b: str, steps: int = 8, method: str = "slerp") -> list[str]:
        """Molecules along the path from a's latent to b's (endpoints included)."""
        za, zb = self.encode([a, b])
        path = {"slerp": latent.slerp, "linear": latent.lerp}.get(method)
        if path is None:
            raise ValueError(f"method must be 'slerp' or 'linear', got {method!r}")
        return self.decode(path(za, zb, steps))

    def neighbours(self, smiles: str, n: int = 16, scale: float = 0.5, seed: int = 0) -> list[str]:
        """n molecules decoded from z(smiles) + scale * N(0, I)."""
        z = self.encode([smiles])[0]
        return self.decode(latent.neighbourhood(z, n, scale, seed))

    def log_likelihood(
        self,
        smiles: Sequence[str],
        k: int = 64,
        seed: int = 0,
        details: bool = False,
        errors: str = "raise",
    ):
        """Importance-weighted lower bound on log p(x) per molecule, in nats (k samples).

        Molecules are preprocessed as in `encode`. errors="nan": nan for molecules that cannot
        be encoded (errors="raise": ValueError naming one). With details=True: dict of (n,)
        arrays: log_likelihood, rate (KL, nats), distortion (nats), n_symbols, per_symbol (nats
        per SELFIES symbol), stripped and stereo_dropped (what preprocessing changed). For
        anomaly detection use `anomaly_percentile`: this per-molecule value favours small
        molecules.
        """
        out = self.codec.log_likelihood(list(smiles), k=k, seed=seed, errors=errors)
        return out if details else out["log_likelihood"]

    def anomaly_percentile(self, smiles: Sequence[str], k: int = 64, seed: int = 0) -> np.ndarray:
        """The recommended anomaly score: the percentile (0-100) of each molecule's log-likelihood
        per SELFIES symbol among held-out molecules of the training distribution (the run's
        likelihood.json). Low means unusual: below 1, fewer than 1% of held-out molecules score
        as low. 0 for a valid molecule the model cannot read (symbols it never saw); nan for
        invalid SMILES.

        The per-molecule log_likelihood is no anomaly score on its own: it grows with every
        symbol, so small molecules (ethanol: -20 nats) outrank typical drug-like ones (-25 to
        -30). Per symbol, and against the training distribution, they do not.
        """
        if self.calibration is None:
            raise RunFolderError(
                f"{self.run_dir}: no held-out calibration (the 'per_symbol' entry of "
                f"{LIKELIHOOD_JSON}); run molvae.evaluation.run.test_likelihood(run_dir) first"
            )
        if k != self.calibration["k"]:
            log.warning(
                "anomaly_percentile with k=%d; the calibration used k=%d (the bound grows with k)",
                k,
                self.calibration["k"],
            )
        smiles = list(smiles)
        d = self.log_likelihood(smiles, k=k, seed=seed, details=True, errors="nan")
        out = percentile_of(d["per_symbol"], self.calibration["quantiles"])
        unreadable = np.isnan(out) & np.array([chem.is_valid(s) for s in smiles], bool)
        out[unreadable] = 0.0
        return out


def _restore_params(model: VAE, run_dir: Path, step: int | None = None) -> None:
    if step is None and (run_dir / PARAMS_NPZ).exists():
        load_npz(model, run_dir / PARAMS_NPZ)
        return
    step = restore_model(model, run_dir, step)
    log.info("loaded %s at step %d", run_dir, step)


def load(run_dir: str | Path, decode_dtype: str | None = None, step: int | None = None) -> MolVAE:
    """A trained model from a run folder, or 'pretrained:moses' for the shipped MOSES model.

    Reads run.json and vocab.json as plain data (nothing in the folder is executed or
    instantiated), then the parameters from params.npz or the latest orbax checkpoint.
    decode_dtype="bfloat16" generates (sample, decode) with bfloat16 matmul operands: faster
    on hardware with bfloat16 units, and the molecules differ slightly from float32's. None
    keeps the model's own dtype. step: the checkpoint of that training step instead of the
    final parameters (learning curves).
    """
    run_dir = locate.run_folder(run_dir)  # a path or pretrained:NAME; checked before any work
    model_cfg, vocab, max_len, config = read_run_info(run_dir)
    if step is None and (run_dir / PARAMS_NPZ).exists():  # every value comes from the
        model = nnx.eval_shape(lambda: build_model(model_cfg))  # file: shapes only, no init (~20 s)
    else:
        model = build_model(model_cfg)
    _restore_params(model, run_dir, step)
    out = MolVAE(model, vocab, max_len, run_dir, config, decode_dtype)
    out.calibration = _read_calibration(run_dir / LIKELIHOOD_JSON)
    if (run_dir / f"{PREDICTOR}.json").exists():  # .npz + JSON, checked against each other
        out.predictor = load_predictor(run_dir)
        if out.predictor.cfg.latent_dim != out.latent_dim:
            raise RunFolderError(
                f"{run_dir}/{PREDICTOR}.json: latent_dim {out.predictor.cfg.latent_dim} "
                f"does not match the model's {out.latent_dim}"
            )
    return out


def _read_calibration(path: Path) -> dict | None:
    """The per_symbol entry of likelihood.json, if the file has a usable one."""
    if not path.exists():
        return None
    try:
        cal = json.loads(path.read_text(encoding="utf-8")).get("per_symbol")
        quantiles = np.asarray(cal["quantiles"], np.float64) if cal else None
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        log.warning("%s: unreadable per_symbol calibration (%s); ignored", path, e)
        return None
    if quantiles is None or len(quantiles) < 2 or np.any(np.diff(quantiles) < 0):
        return None
    return cal


def _is_smiles_list(x) -> bool:
    """A sequence of SMILES strings: a list, tuple, pandas Series or numpy array of str."""
    if isinstance(x, str):
        return False
    if isinstance(x, np.ndarray):
        return x.dtype.kind in "UO" and all(isinstance(s, str) for s in x.ravel())
    if hasattr(x, "tolist") and not isinstance(x, list | tuple):  # pandas Series / Index
        x = x.tolist()
    return isinstance(x, list | tuple) and all(isinstance(s, str) for s in x)


def build_model(cfg: ModelConfig, seed: int = 0) -> VAE:
    return VAE(cfg, rngs=nnx.Rngs(seed))
