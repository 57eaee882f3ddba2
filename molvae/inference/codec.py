"""The latent codec: SMILES preprocessed as the training data was, tokenized, encoded to
posterior latents, and scored by the importance-weighted log-likelihood bound."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import selfies as sf
from flax import nnx

from molvae import chem, data
from molvae.models import grammar as gram
from molvae.models.losses import gaussian_kl, sequence_nll
from molvae.models.vae import VAE
from molvae.vocab import UnknownSymbolError, Vocab

log = logging.getLogger(__name__)

CHUNK = 512  # molecules per encode call (one compiled shape)
# Sequences (molecules x importance samples) per likelihood call: 4,096 cost twice the memory
# of 1,024 (+350 against +170 MB for the smoke model) for no gain in speed on CPU.
IW_SEQUENCES = 1024


@partial(jax.jit, static_argnames=("graphdef",))
def _encode(graphdef, params, tokens, lengths):
    return nnx.merge(graphdef, params).encode(tokens, lengths)


@partial(jax.jit, static_argnames=("graphdef", "k", "max_len"))
def _iw_terms(graphdef, params, tokens, lengths, keys, k: int, tables=None, max_len: int = 0):
    """Importance-weighted log p(x) bound with k samples from q(z|x), and rate/distortion (B,).
    keys: one per row, so a molecule's draws do not depend on the batch it shares. tables: the
    grammar of a model with grammar-constrained decoding (its likelihood is under the masks)."""
    model = nnx.merge(graphdef, params)
    mu, logvar = model.encode(tokens, lengths)  # (B, Z)
    std = jnp.exp(0.5 * logvar)
    eps = jax.vmap(lambda key: jax.random.normal(key, (k, mu.shape[-1])))(keys)  # (B, K, Z)
    eps = eps.transpose(1, 0, 2)  # (K, B, Z)
    z = mu[None] + std[None] * eps
    flat = z.reshape(-1, z.shape[-1])
    tok = jnp.tile(tokens, (k, 1))
    logits = model.decoder(flat, tok[:, :-1])
    if tables is not None:
        mask = gram.sequence_masks(tables, tokens[:, 1:], max_len)
        logits = gram.restrict(logits, jnp.tile(mask, (k, 1, 1)))
    nll, _, _ = sequence_nll(logits, tok[:, 1:], jnp.tile(lengths, k))
    log_px_z = -nll.reshape(k, -1)  # (K, B)
    log_pz = -0.5 * jnp.sum(jnp.square(z) + jnp.log(2 * jnp.pi), -1)
    log_qz = -0.5 * jnp.sum(jnp.square(eps) + jnp.log(2 * jnp.pi) + logvar[None], -1)
    bound = jax.nn.logsumexp(log_px_z + log_pz - log_qz, axis=0) - jnp.log(k)
    rate = gaussian_kl(mu, logvar).sum(-1)
    return bound, rate, -log_px_z.mean(0)


class Encoded(NamedTuple):
    """One molecule as the model reads it, and what preprocessing changed on the way."""

    selfies: str
    stripped: bool  # salts/solvents dropped (the training data's fragments policy)
    flattened: bool  # stereochemistry dropped (the vocabulary lacks it)


class LatentCodec:
    """SMILES -> latents and likelihoods for a trained VAE and its vocabulary (numpy out)."""

    def __init__(self, model: VAE, vocab: Vocab, max_len: int, fragments: str = "largest") -> None:
        """fragments: how salts and mixtures are read (data.standardize), as in training."""
        if fragments not in data.FRAGMENT_POLICIES:
            raise ValueError(
                f"fragments must be one of {data.FRAGMENT_POLICIES}, got {fragments!r}"
            )
        self.fragments = fragments
        self.graphdef, self.params = nnx.split(model)
        self.vocab, self.max_len = vocab, max_len
        self.latent_dim = model.cfg.latent_dim
        self.grammar = (
            gram.grammar_tables(vocab.tokens, vocab.eos_id, model.cfg.max_ring)
            if model.cfg.grammar
            else None
        )
        self.max_ring = model.cfg.max_ring  # strings written small-ring-first, as in training

    def _selfies(self, smiles: str) -> str | None:
        """The SELFIES the model reads for a canonical SMILES (None if there is none)."""
        if self.max_ring:
            return chem.small_ring_selfies(smiles, self.max_ring)
        return chem.smiles_to_selfies(smiles)

    def to_selfies(self, smiles: str) -> Encoded:
        """SELFIES of one molecule in this vocabulary, preprocessed as the training data was
        (data.standardize: canonical SMILES, salts and mixtures under the `fragments` policy;
        for a model trained under model.max_ring, written small-ring-first as data.max_ring).

        Raises ValueError for invalid SMILES (or a mixture under the 'reject' policy, or a ring
        larger than the model's max_ring), UnknownSymbolError (naming symbol and molecule) for
        symbols outside the vocabulary.
        """
        can, reason, stripped = data.standardize(smiles, self.fragments)
        enc = self._selfies(can) if not reason else None
        if enc is None:
            why = {"multiple_fragments": "a mixture (fragments='reject')"}.get(reason, "invalid")
            if not reason and self.max_ring and chem.smiles_to_selfies(can):
                raise ValueError(
                    f"cannot encode molecule {smiles!r}: a ring of more than {self.max_ring} "
                    f"atoms (the model was trained under max_ring={self.max_ring})"
                )
            raise ValueError(f"cannot encode molecule {smiles!r}: {why} SMILES")
        try:
            self.vocab.encode(enc, smiles)
            return Encoded(enc, stripped, False)
        except UnknownSymbolError as unknown:
            # Models trained without stereochemistry (MOSES has none) still encode a chiral
            # input by its flat graph; anything else unknown is an error naming the symbol.
            flat = self._selfies(chem.canonical(can, isomeric=False) or "")
            try:
                self.vocab.encode(flat or "", smiles)
            except UnknownSymbolError:
                raise unknown from None
            return Encoded(flat, stripped, True)

    def prepare(self, smiles: Sequence[str], errors: str = "raise") -> list[Encoded | None]:
        """to_selfies of each molecule. errors="raise": the first failure raises; "nan": None
        where a molecule cannot be encoded. Logs one warning counting what preprocessing
        changed (salts/solvents stripped, stereochemistry dropped, molecules skipped)."""
        if errors not in ("raise", "nan"):
            raise ValueError(f"errors must be 'raise' or 'nan', got {errors!r}")
        out: list[Encoded | None] = []
        why: list[str] = []  # the first few skipped molecules and the reason, for the warning
        for i, s in enumerate(smiles):
            try:
                out.append(self.to_selfies(s))
            except ValueError as e:
                if errors == "raise":
                    raise
                out.append(None)
                if len(why) < 3:
                    why.append(f"row {i}: {e}")
        stripped = sum(e is not None and e.stripped for e in out)
        flattened = sum(e is not None and e.flattened for e in out)
        skipped = sum(e is None for e in out)
        if stripped or flattened or skipped:
            log.warning(
                "scoring %d molecules as the training data was preprocessed: %d with salts or "
                "solvents stripped (fragments=%r), %d without stereochemistry (the vocabulary "
                "lacks it), %d skipped (invalid SMILES or symbols outside the vocabulary)%s",
                len(out),
                stripped,
                self.fragments,
                flattened,
                skipped,
                "".join(f"; {w}" for w in why) + ("; ..." if skipped > len(why) else ""),
            )
        return out

    def encodable(self, smiles: Sequence[str]) -> np.ndarray:
        """(n,) bool: which molecules to_selfies accepts (valid SMILES, known symbols)."""
        ok = np.ones(len(smiles), bool)
        for i, s in enumerate(smiles):
            try:
                self.to_selfies(s)
            except ValueError:
                ok[i] = False
        return ok

    def tokenize(self, smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and lengths; the width grows past max_len if a molecule needs it. Raises
        ValueError naming the first molecule that cannot be encoded."""
        return self._tokens([e.selfies for e in self.prepare(smiles)], smiles)

    def _tokens(self, selfies: list[str], smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        longest = max((len(list(sf.split_selfies(s))) for s in selfies), default=0)
        return self.vocab.encode_batch(selfies, max(self.max_len, longest), smiles)

    def _rows(self, smiles: Sequence[str], errors: str):
        """Encoded rows, the mask of encodable ones, and their tokens and lengths."""
        smiles = list(smiles)
        enc = self.prepare(smiles, errors)
        ok = np.array([e is not None for e in enc], bool)
        good = [s for s, e in zip(smiles, enc, strict=True) if e is not None]
        tokens, lengths = self._tokens([e.selfies for e in enc if e is not None], good)
        return enc, ok, tokens, lengths

    def encode(self, smiles: Sequence[str], errors: str = "raise") -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and log-variances, (n, Z) each; nan rows where a molecule cannot be
        encoded and errors="nan" (errors="raise": ValueError naming it)."""
        _, ok, tokens, lengths = self._rows(smiles, errors)
        mus, lvs = [], []
        for i in range(0, len(tokens), CHUNK):
            t, l_ = tokens[i : i + CHUNK], lengths[i : i + CHUNK]
            n = len(t)
            t = np.concatenate([t, np.zeros((CHUNK - n, t.shape[1]), t.dtype)])
            l_ = np.concatenate([l_, np.ones(CHUNK - n, l_.dtype)])
            mu, lv = _encode(self.graphdef, self.params, t, l_)
            mus.append(np.asarray(mu)[:n])
            lvs.append(np.asarray(lv)[:n])
        mu = np.full((len(ok), self.latent_dim), np.nan, np.float32)
        lv = mu.copy()
        if mus:
            mu[ok], lv[ok] = np.concatenate(mus), np.concatenate(lvs)
        return mu, lv

    def log_likelihood(
        self,
        smiles: Sequence[str],
        k: int = 64,
        seed: int = 0,
        chunk: int | None = None,
        errors: str = "raise",
    ) -> dict[str, np.ndarray]:
        """Per molecule (n,) each: importance-weighted bound on log p(x) (nats), rate KL(q||p)
        (nats), distortion E_q[-log p(x|z)] (nats), n_symbols (the decoder's predictions: SELFIES
        symbols, or BPE tokens for a run with data.bpe_merges, + end token), per_symbol
        (log_likelihood / n_symbols), and what preprocessing changed: stripped (salts/solvents
        dropped), stereo_dropped. Rows of molecules that cannot be encoded are nan (n_symbols 0)
        with errors="nan"; errors="raise" raises naming one.
        Molecule i draws its k latents with fold_in(key(seed), i) (i counting the encodable
        molecules), whatever `chunk` (molecules per call; default: IW_SEQUENCES // k)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        chunk = chunk or max(1, IW_SEQUENCES // k)
        enc, ok, tokens, lengths = self._rows(smiles, errors)
        parts: dict[str, list] = {"log_likelihood": [], "rate": [], "distortion": []}
        keys = jax.vmap(partial(jax.random.fold_in, jax.random.key(seed)))(
            jnp.arange(-(-len(tokens) // chunk) * chunk)
        )
        for i in range(0, len(tokens), chunk):
            t, l_ = tokens[i : i + chunk], lengths[i : i + chunk]
            n = len(t)
            t = np.concatenate([t, np.zeros((chunk - n, t.shape[1]), t.dtype)])
            l_ = np.concatenate([l_, np.ones(chunk - n, l_.dtype)])
            res = _iw_terms(
                self.graphdef,
                self.params,
                t,
                l_,
                keys[i : i + chunk],
                k,
                self.grammar,
                self.max_len,
            )
            for name, v in zip(parts, res, strict=True):
                parts[name].append(np.asarray(v)[:n])
        out = {}
        for name, v in parts.items():
            out[name] = np.full(len(ok), np.nan, np.float32)
            if v:
                out[name][ok] = np.concatenate(v)
        out["n_symbols"] = np.zeros(len(ok), np.int32)
        out["n_symbols"][ok] = lengths
        with np.errstate(invalid="ignore", divide="ignore"):
            out["per_symbol"] = out["log_likelihood"] / np.where(ok, out["n_symbols"], np.nan)
        out["stripped"] = np.array([e is not None and e.stripped for e in enc], bool)
        out["stereo_dropped"] = np.array([e is not None and e.flattened for e in enc], bool)
        return out
