"""Decoding latents to molecules: prior samples, reconstruction, interpolation, neighbourhoods."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import selfies as sf
from flax import nnx

from molvae import chem
from molvae.models.vae import VAE
from molvae.train import gaussian_kl, sequence_nll
from molvae.vocab import UnknownSymbolError, Vocab

log = logging.getLogger(__name__)

CHUNK = 512  # latents per decoded chunk; with the packed sizes CHUNK / 2^k, a fixed set of shapes


SEGMENT = 8  # decoding steps per jitted call; finished rows are dropped between calls
MIN_BUCKET = 32  # smallest batch the unfinished rows are packed into (sizes CHUNK / 2^k)


@partial(jax.jit, static_argnames=("graphdef", "max_len", "greedy"))
def _generate(graphdef, params, z, key, temperature, max_len: int, greedy: bool):
    """Every row for all max_len + 1 steps in one scan (the reference for _decode_chunk)."""
    return nnx.merge(graphdef, params).generate(z, key, max_len, temperature, greedy)


@partial(jax.jit, static_argnames=("graphdef",))
def _start(graphdef, params, z, key):
    zin, hs = nnx.merge(graphdef, params).decoder.initial_state(z)
    return zin, hs, jnp.full((z.shape[0],), 1, jnp.int32), jax.random.split(key, z.shape[0])


@partial(jax.jit, static_argnames=("graphdef", "greedy"))
def _segment(graphdef, params, state, done, t0, temperature, greedy: bool):
    zin, hs, token, keys = state
    token, hs, done, ids = nnx.merge(graphdef, params).decode_steps(
        zin, hs, token, done, keys, t0, SEGMENT, temperature, greedy
    )
    return (zin, hs, token, keys), done, ids


@jax.jit
def _take(state, rows):
    return jax.tree.map(lambda x: x[rows], state)


@partial(jax.jit, static_argnames=("graphdef",))
def _encode(graphdef, params, tokens, lengths):
    return nnx.merge(graphdef, params).encode(tokens, lengths)


@partial(jax.jit, static_argnames=("graphdef", "k"))
def _iw_terms(graphdef, params, tokens, lengths, key, k: int):
    """Importance-weighted log p(x) bound with k samples from q(z|x), and rate/distortion (B,)."""
    model = nnx.merge(graphdef, params)
    mu, logvar = model.encode(tokens, lengths)  # (B, Z)
    std = jnp.exp(0.5 * logvar)
    eps = jax.random.normal(key, (k,) + mu.shape)  # (K, B, Z)
    z = mu[None] + std[None] * eps
    flat = z.reshape(-1, z.shape[-1])
    tok = jnp.tile(tokens, (k, 1))
    logits = model.decoder(flat, tok[:, :-1])
    nll, _, _ = sequence_nll(logits, tok[:, 1:], jnp.tile(lengths, k))
    log_px_z = -nll.reshape(k, -1)  # (K, B)
    log_pz = -0.5 * jnp.sum(jnp.square(z) + jnp.log(2 * jnp.pi), -1)
    log_qz = -0.5 * jnp.sum(jnp.square(eps) + jnp.log(2 * jnp.pi) + logvar[None], -1)
    bound = jax.nn.logsumexp(log_px_z + log_pz - log_qz, axis=0) - jnp.log(k)
    rate = gaussian_kl(mu, logvar).sum(-1)
    return bound, rate, -log_px_z.mean(0)


class Decoder:
    """Compiled encode/decode around a trained VAE and its vocabulary (numpy in, numpy out)."""

    def __init__(
        self, model: VAE, vocab: Vocab, max_len: int, decode_dtype: str | None = None
    ) -> None:
        """decode_dtype: operand type of the decoder's GRU matmuls when generating (None:
        the model's own; bfloat16 for hardware with fast bfloat16 matmuls; sums and states stay
        float32). Encoding and likelihoods always use the model's own dtype."""
        decode_dtype = decode_dtype or model.cfg.dtype
        if decode_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"decode_dtype must be 'float32' or 'bfloat16', got {decode_dtype!r}")
        self.graphdef, self.params = nnx.split(model)
        self.vocab, self.max_len = vocab, max_len
        self.latent_dim = model.cfg.latent_dim
        self.gen_graphdef = self.graphdef  # what generation (_start, _segment) runs
        if decode_dtype != model.cfg.dtype:
            gen = nnx.merge(self.graphdef, self.params)  # same arrays; only the dtype differs
            for layer in gen.decoder.layers:
                layer.dtype = decode_dtype
            self.gen_graphdef = nnx.split(gen)[0]

    # -- latents -> ids -> SMILES ---------------------------------------------------------------

    def decode_ids(
        self, z: np.ndarray, seed: int = 0, temperature: float = 1.0, greedy: bool = True
    ) -> np.ndarray:
        """Token ids (n, max_len + 1) for latents z (n, Z), in fixed-size jitted chunks."""
        out = list(self._iter_ids(z, seed, temperature, greedy))
        return np.concatenate(out) if out else np.zeros((0, self.max_len + 1), np.int32)

    def _iter_ids(self, z, seed: int, temperature: float, greedy: bool):
        """Ids chunk by chunk (CHUNK latents each, the last one padded)."""
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latents must have shape (n, {self.latent_dim}), got {z.shape}")
        if not greedy and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        key = jax.random.key(seed)
        for c, i in enumerate(range(0, len(z), CHUNK)):
            zc = z[i : i + CHUNK]
            padded = np.concatenate([zc, np.zeros((CHUNK - len(zc), z.shape[1]), np.float32)])
            ids = self._decode_chunk(
                padded, len(zc), jax.random.fold_in(key, c), temperature, greedy
            )
            yield ids[: len(zc)]

    def warm_up(self, greedy: bool = False) -> None:
        """Compile the decoder for every packed batch size now rather than on first use."""
        sizes = [CHUNK >> k for k in range(CHUNK.bit_length()) if CHUNK >> k >= MIN_BUCKET]
        z = np.zeros((CHUNK, self.latent_dim), np.float32)
        full = _start(self.gen_graphdef, self.params, z, jax.random.key(0))
        t0, temp = jnp.int32(0), jnp.float32(1.0)
        for size in sizes:
            state = _take(full, jnp.arange(size))
            for smaller in sizes:
                if smaller < size:
                    _take(state, jnp.arange(smaller))
            out = _segment(
                self.gen_graphdef, self.params, state, jnp.zeros(size, bool), t0, temp, greedy
            )
            jax.block_until_ready(out)

    def _decode_chunk(self, z, n: int, key, temperature: float, greedy: bool) -> np.ndarray:
        """Ids (CHUNK, max_len + 1) of the first n rows of z, SEGMENT steps per call. Between
        calls the unfinished rows are packed into the smallest batch of CHUNK / 2^k that holds
        them, so the work follows the molecules' lengths, not max_len. Same ids as _generate."""
        T = self.max_len + 1
        out = np.zeros((CHUNK, T), np.int32)
        state = _start(self.gen_graphdef, self.params, z, key)
        rows = np.arange(CHUNK)  # row of `out` held by each row of `state` (-1: filler)
        live = rows < n
        temp = jnp.float32(temperature)
        for t in range(0, T, SEGMENT):
            idx = np.flatnonzero(live)
            if not len(idx):
                break
            size = len(rows)
            while size // 2 >= max(len(idx), MIN_BUCKET):
                size //= 2
            if size < len(rows):  # pack the unfinished rows, pad with a finished copy
                sel = np.concatenate([idx, np.full(size - len(idx), idx[0])])
                state = _take(state, jnp.asarray(sel))
                rows = np.concatenate([rows[idx], np.full(size - len(idx), -1)])
                live = rows >= 0
                idx = np.arange(len(idx))
            state, done, ids = _segment(
                self.gen_graphdef,
                self.params,
                state,
                jnp.asarray(~live),
                jnp.int32(t),
                temp,
                greedy,
            )
            ids = np.asarray(ids)
            out[rows[idx], t : t + SEGMENT] = ids[idx, : T - t]
            live = ~np.asarray(done)
        return out

    def ids_to_smiles(self, ids: np.ndarray, n_jobs: int | None = None) -> list[str]:
        """Canonical SMILES per row ('' where the SELFIES decodes to nothing valid)."""
        selfies = [self.vocab.decode_selfies(row) for row in ids]
        return chem.parallel_map(chem.selfies_to_smiles, selfies, n_jobs=n_jobs)

    def decode(
        self, z: np.ndarray, seed: int = 0, temperature: float = 1.0, greedy: bool = True
    ) -> list[str]:
        """Canonical SMILES for latents z ('' where decoding fails). Large batches overlap the
        network with RDKit: each decoded chunk goes to a process pool while the next decodes."""
        jobs = chem.default_jobs()
        if len(z) < chem.SERIAL_BELOW or jobs <= 1:
            return self.ids_to_smiles(self.decode_ids(z, seed, temperature, greedy))
        with chem.process_pool(jobs) as pool:
            parts = [
                pool.map(
                    chem.selfies_to_smiles,
                    [self.vocab.decode_selfies(row) for row in ids],
                    chunksize=max(16, len(ids) // (4 * jobs)),
                )
                for ids in self._iter_ids(z, seed, temperature, greedy)
            ]
            return [smi for part in parts for smi in part]

    # -- SMILES -> latents ----------------------------------------------------------------------

    def to_selfies(self, smiles: str) -> tuple[str, bool]:
        """SELFIES of one molecule in this vocabulary, and whether stereo had to be dropped.

        Raises ValueError for invalid SMILES, UnknownSymbolError (naming symbol and molecule)
        for symbols outside the vocabulary.
        """
        can = chem.canonical(smiles)
        enc = chem.smiles_to_selfies(can) if can else None
        if enc is None:
            raise ValueError(f"cannot encode molecule {smiles!r}: invalid SMILES")
        try:
            self.vocab.encode(enc, smiles)
            return enc, False
        except UnknownSymbolError as unknown:
            # Models trained without stereochemistry (MOSES has none) still encode a chiral
            # input by its flat graph; anything else unknown is an error naming the symbol.
            flat = chem.smiles_to_selfies(chem.canonical(smiles, isomeric=False) or "")
            try:
                self.vocab.encode(flat or "", smiles)
            except UnknownSymbolError:
                raise unknown from None
            return flat, True

    def tokenize(self, smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and lengths; the width grows past max_len if a molecule needs it."""
        pairs = [self.to_selfies(s) for s in smiles]
        selfies = [p[0] for p in pairs]
        if flattened := sum(p[1] for p in pairs):
            log.warning(
                "%d molecule(s) encoded without stereochemistry, which the vocabulary lacks",
                flattened,
            )
        longest = max((len(list(sf.split_selfies(s))) for s in selfies), default=0)
        return self.vocab.encode_batch(selfies, max(self.max_len, longest), smiles)

    def encode(self, smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior means and log-variances, (n, Z) each."""
        tokens, lengths = self.tokenize(smiles)
        mus, lvs = [], []
        for i in range(0, len(tokens), CHUNK):
            t, l_ = tokens[i : i + CHUNK], lengths[i : i + CHUNK]
            n = len(t)
            t = np.concatenate([t, np.zeros((CHUNK - n, t.shape[1]), t.dtype)])
            l_ = np.concatenate([l_, np.ones(CHUNK - n, l_.dtype)])
            mu, lv = _encode(self.graphdef, self.params, t, l_)
            mus.append(np.asarray(mu)[:n])
            lvs.append(np.asarray(lv)[:n])
        if not mus:
            return np.zeros((0, self.latent_dim), np.float32), np.zeros((0, self.latent_dim))
        return np.concatenate(mus), np.concatenate(lvs)

    def log_likelihood(
        self, smiles: Sequence[str], k: int = 64, seed: int = 0, chunk: int = 64
    ) -> dict[str, np.ndarray]:
        """Per molecule: importance-weighted bound on log p(x) (nats), rate KL(q||p) (nats) and
        distortion E_q[-log p(x|z)] (nats). Low log p(x) flags molecules unlike the training set."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        tokens, lengths = self.tokenize(smiles)
        out: dict[str, list] = {"log_likelihood": [], "rate": [], "distortion": []}
        key = jax.random.key(seed)
        for c, i in enumerate(range(0, len(tokens), chunk)):
            t, l_ = tokens[i : i + chunk], lengths[i : i + chunk]
            n = len(t)
            t = np.concatenate([t, np.zeros((chunk - n, t.shape[1]), t.dtype)])
            l_ = np.concatenate([l_, np.ones(chunk - n, l_.dtype)])
            res = _iw_terms(self.graphdef, self.params, t, l_, jax.random.fold_in(key, c), k)
            for name, v in zip(out, res, strict=True):
                out[name].append(np.asarray(v)[:n])
        return {name: np.concatenate(v) if v else np.zeros(0) for name, v in out.items()}


# ----------------------------------------------------------------------------- latent geometry


def prior(n: int, latent_dim: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """n draws from N(0, scale^2 I), (n, Z)."""
    return scale * np.asarray(jax.random.normal(jax.random.key(seed), (n, latent_dim)))


def lerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """Linear interpolation, (steps, Z), endpoints included."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return (1 - t) * a[None] + t * b[None]


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """Spherical interpolation (keeps latents at prior-typical norms); lerp if nearly parallel."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    cos = np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if omega < 1e-4:
        return lerp(a, b, steps)
    return (np.sin((1 - t) * omega) * a[None] + np.sin(t * omega) * b[None]) / np.sin(omega)


def neighbourhood(z: np.ndarray, n: int, scale: float, seed: int) -> np.ndarray:
    """n latents around z: z + scale * N(0, I)."""
    return z[None, :] + scale * np.asarray(jax.random.normal(jax.random.key(seed), (n, z.shape[0])))
