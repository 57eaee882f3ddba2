"""Decoding latents to molecules: prior samples, reconstruction, interpolation, neighbourhoods."""

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
from molvae.models.vae import VAE
from molvae.train import gaussian_kl, sequence_nll
from molvae.vocab import UnknownSymbolError, Vocab

log = logging.getLogger(__name__)

CHUNK = 512  # latents per key chunk and decoding slots; the packed sizes are CHUNK / 2^k
# Sequences (molecules x importance samples) per likelihood call: 4,096 cost twice the memory
# of 1,024 (+350 against +170 MB for the smoke model) for no gain in speed on CPU.
IW_SEQUENCES = 1024


SEGMENT = 8  # decoding steps per jitted call; slots are refilled or packed between calls
MIN_BUCKET = 32  # smallest batch the unfinished rows are packed into (sizes CHUNK / 2^k)


@partial(jax.jit, static_argnames=("graphdef", "max_len", "greedy"))
def _generate(graphdef, params, z, key, temperature, max_len: int, greedy: bool):
    """Every row for all max_len + 1 steps in one scan (the reference for Decoder._iter_ids)."""
    return nnx.merge(graphdef, params).generate(z, key, max_len, temperature, greedy)


@partial(jax.jit, static_argnames=("graphdef", "length"))
def _start(graphdef, params, z, key, length: int):
    zin, hs = nnx.merge(graphdef, params).decoder.initial_state(z, length)
    return zin, hs, jnp.full((z.shape[0],), 1, jnp.int32), jax.random.split(key, z.shape[0])


@partial(jax.jit, static_argnames=("graphdef", "greedy"))
def _segment(graphdef, params, state, done, pos, temperature, greedy: bool):
    zin, hs, token, keys = state
    token, hs, done, ids = nnx.merge(graphdef, params).decode_steps(
        zin, hs, token, done, keys, pos, SEGMENT, temperature, greedy
    )
    return (zin, hs, token, keys), done, ids


@jax.jit
def _take(state, rows):
    return jax.tree.map(lambda x: x[rows], state)


@jax.jit
def _refill(state, fresh, src, mask):
    """Rows where mask is set start over as row src of the start state `fresh`."""
    return jax.tree.map(
        lambda old, new: jnp.where(mask.reshape((-1,) + (1,) * (old.ndim - 1)), new[src], old),
        state,
        fresh,
    )


@partial(jax.jit, static_argnames=("graphdef",))
def _encode(graphdef, params, tokens, lengths):
    return nnx.merge(graphdef, params).encode(tokens, lengths)


@partial(jax.jit, static_argnames=("graphdef", "k"))
def _iw_terms(graphdef, params, tokens, lengths, keys, k: int):
    """Importance-weighted log p(x) bound with k samples from q(z|x), and rate/distortion (B,).
    keys: one per row, so a molecule's draws do not depend on the batch it shares."""
    model = nnx.merge(graphdef, params)
    mu, logvar = model.encode(tokens, lengths)  # (B, Z)
    std = jnp.exp(0.5 * logvar)
    eps = jax.vmap(lambda key: jax.random.normal(key, (k, mu.shape[-1])))(keys)  # (B, K, Z)
    eps = eps.transpose(1, 0, 2)  # (K, B, Z)
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


class Encoded(NamedTuple):
    """One molecule as the model reads it, and what preprocessing changed on the way."""

    selfies: str
    stripped: bool  # salts/solvents dropped (the training data's fragments policy)
    flattened: bool  # stereochemistry dropped (the vocabulary lacks it)


class Decoder:
    """Compiled encode/decode around a trained VAE and its vocabulary (numpy in, numpy out)."""

    def __init__(
        self,
        model: VAE,
        vocab: Vocab,
        max_len: int,
        decode_dtype: str | None = None,
        fragments: str = "largest",
    ) -> None:
        """decode_dtype: operand type of the decoder's GRU matmuls when generating (None:
        the model's own; bfloat16 for hardware with fast bfloat16 matmuls; sums and states stay
        float32). Encoding and likelihoods always use the model's own dtype. fragments: how
        salts and mixtures are read when encoding (data.standardize), as in training."""
        if fragments not in data.FRAGMENT_POLICIES:
            raise ValueError(
                f"fragments must be one of {data.FRAGMENT_POLICIES}, got {fragments!r}"
            )
        self.fragments = fragments
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
        """Ids (CHUNK rows at a time, in order; the last block shorter) for latents z.

        Continuous batching: CHUNK decoding slots run SEGMENT steps per jitted call, and
        between calls every slot whose molecule has finished (eos or max_len) starts the next
        latent. The network thus runs at full batch on real work, whatever the molecules'
        lengths; when no latents are left, the unfinished rows are packed into the smallest
        batch of CHUNK / 2^k that holds them. Latent j of chunk c = j // CHUNK draws with key
        split(fold_in(key(seed), c), CHUNK)[j % CHUNK], so the ids are those of _generate on
        each padded chunk, and do not depend on which other latents share the batch."""
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latents must have shape (n, {self.latent_dim}), got {z.shape}")
        if not greedy and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        n, T = len(z), self.max_len + 1
        if n == 0:
            return
        key = jax.random.key(seed)
        temp = jnp.float32(temperature)

        def start(c: int):  # start state of chunk c (CHUNK rows, the last chunk padded)
            zc = z[c * CHUNK : (c + 1) * CHUNK]
            zc = np.concatenate([zc, np.zeros((CHUNK - len(zc), zc.shape[1]), np.float32)])
            return _start(self.gen_graphdef, self.params, zc, jax.random.fold_in(key, c), T)

        n_chunks = -(-n // CHUNK)
        out = {0: np.zeros((min(CHUNK, n), T), np.int32)}  # chunk -> its ids, until yielded
        left = {0: min(CHUNK, n)}  # chunk -> molecules not finished yet
        state = start(0)
        mol = np.where(np.arange(CHUNK) < n, np.arange(CHUNK), -1)  # molecule held by a slot
        pos = np.zeros(CHUNK, np.int32)  # that molecule's position (steps decoded)
        nxt, fresh, fresh_c = min(CHUNK, n), None, -1  # next latent; its chunk's start state
        emitted = 0  # chunks yielded so far
        while emitted < n_chunks:
            free = np.flatnonzero(mol < 0)
            if nxt < n and len(free):  # refill the free slots with the next latents
                while nxt < n and len(free):
                    c = nxt // CHUNK
                    if c != fresh_c:
                        fresh, fresh_c = start(c), c
                        out[c] = np.zeros((min(CHUNK, n - c * CHUNK), T), np.int32)
                        left[c] = len(out[c])
                    k = min(len(free), (c + 1) * CHUNK - nxt, n - nxt)
                    src, mask = np.zeros(len(mol), np.int32), np.zeros(len(mol), bool)
                    src[free[:k]] = nxt - c * CHUNK + np.arange(k)
                    mask[free[:k]] = True
                    state = _refill(state, fresh, jnp.asarray(src), jnp.asarray(mask))
                    mol[free[:k]], pos[free[:k]] = nxt + np.arange(k), 0
                    nxt, free = nxt + k, free[k:]
            elif nxt >= n:  # nothing left to start: pack the unfinished rows
                idx = np.flatnonzero(mol >= 0)
                size = len(mol)
                while size // 2 >= max(len(idx), MIN_BUCKET):
                    size //= 2
                if size < len(mol):  # pad with a copy of a live row, held by no molecule
                    sel = np.concatenate([idx, np.full(size - len(idx), idx[0])])
                    state = _take(state, jnp.asarray(sel))
                    mol = np.concatenate([mol[idx], np.full(size - len(idx), -1)])
                    pos = np.concatenate([pos[idx], np.zeros(size - len(idx), np.int32)])
            live = mol >= 0
            state, done, ids = _segment(
                self.gen_graphdef,
                self.params,
                state,
                jnp.asarray(~live),
                jnp.asarray(pos),
                temp,
                greedy,
            )
            ids, done = np.asarray(ids), np.asarray(done)
            slot = np.flatnonzero(live)
            cols = pos[slot, None] + np.arange(SEGMENT)  # (live, SEGMENT) positions written
            keep = cols < T
            rows = np.broadcast_to(mol[slot, None], cols.shape)[keep]
            vals, cols = ids[slot][keep], cols[keep]
            for c in np.unique(rows // CHUNK):
                at = rows // CHUNK == c
                out[c][rows[at] - c * CHUNK, cols[at]] = vals[at]
            pos[slot] += SEGMENT
            finished = slot[done[slot] | (pos[slot] >= T)]
            for c, k in zip(*np.unique(mol[finished] // CHUNK, return_counts=True), strict=True):
                left[c] -= k
            mol[finished] = -1
            while emitted in left and left[emitted] == 0:
                del left[emitted]
                yield out.pop(emitted)
                emitted += 1

    def warm_up(self, greedy: bool = False) -> None:
        """Compile the decoder for every packed batch size now rather than on first use."""
        sizes = [CHUNK >> k for k in range(CHUNK.bit_length()) if CHUNK >> k >= MIN_BUCKET]
        z = np.zeros((CHUNK, self.latent_dim), np.float32)
        full = _start(self.gen_graphdef, self.params, z, jax.random.key(0), self.max_len + 1)
        full = _refill(full, full, jnp.zeros(CHUNK, jnp.int32), jnp.zeros(CHUNK, bool))
        temp = jnp.float32(1.0)
        for size in sizes:
            state = _take(full, jnp.arange(size))
            for smaller in sizes:
                if smaller < size:
                    _take(state, jnp.arange(smaller))
            pos = jnp.zeros(size, jnp.int32)
            out = _segment(
                self.gen_graphdef, self.params, state, jnp.zeros(size, bool), pos, temp, greedy
            )
            jax.block_until_ready(out)

    def ids_to_smiles(
        self, ids: np.ndarray, n_jobs: int | None = None, strict: bool = False
    ) -> list[str]:
        """Canonical SMILES per row ('' where the SELFIES decodes to nothing valid, or, if
        strict, where the SELFIES decoder had to repair the string: chem.selfies_repaired)."""
        selfies = self.vocab.decode_selfies_batch(ids)
        return chem.parallel_map(_to_smiles(strict), selfies, n_jobs=n_jobs)

    def decode(
        self,
        z: np.ndarray,
        seed: int = 0,
        temperature: float = 1.0,
        greedy: bool = True,
        strict: bool = False,
    ) -> list[str]:
        """Canonical SMILES for latents z ('' where decoding fails; with strict, also where the
        SELFIES had to be repaired). Large batches overlap the network with RDKit: each decoded
        chunk goes to a process pool while the next decodes."""
        jobs = chem.default_jobs()
        if len(z) < chem.SERIAL_BELOW or jobs <= 1:
            return self.ids_to_smiles(self.decode_ids(z, seed, temperature, greedy), 1, strict)
        with chem.process_pool(jobs) as pool:
            parts = [
                pool.map(
                    _to_smiles(strict),
                    self.vocab.decode_selfies_batch(ids),
                    chunksize=max(16, len(ids) // (4 * jobs)),
                )
                for ids in self._iter_ids(z, seed, temperature, greedy)
            ]
            return [smi for part in parts for smi in part]

    # -- SMILES -> latents ----------------------------------------------------------------------

    def to_selfies(self, smiles: str) -> Encoded:
        """SELFIES of one molecule in this vocabulary, preprocessed as the training data was
        (data.standardize: canonical SMILES, salts and mixtures under the `fragments` policy).

        Raises ValueError for invalid SMILES (or a mixture under the 'reject' policy),
        UnknownSymbolError (naming symbol and molecule) for symbols outside the vocabulary.
        """
        can, reason, stripped = data.standardize(smiles, self.fragments)
        enc = chem.smiles_to_selfies(can) if not reason else None
        if enc is None:
            why = {"multiple_fragments": "a mixture (fragments='reject')"}.get(reason, "invalid")
            raise ValueError(f"cannot encode molecule {smiles!r}: {why} SMILES")
        try:
            self.vocab.encode(enc, smiles)
            return Encoded(enc, stripped, False)
        except UnknownSymbolError as unknown:
            # Models trained without stereochemistry (MOSES has none) still encode a chiral
            # input by its flat graph; anything else unknown is an error naming the symbol.
            flat = chem.smiles_to_selfies(chem.canonical(can, isomeric=False) or "")
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
        for s in smiles:
            try:
                out.append(self.to_selfies(s))
            except ValueError:
                if errors == "raise":
                    raise
                out.append(None)
        stripped = sum(e is not None and e.stripped for e in out)
        flattened = sum(e is not None and e.flattened for e in out)
        skipped = sum(e is None for e in out)
        if stripped or flattened or skipped:
            log.warning(
                "scoring %d molecules as the training data was preprocessed: %d with salts or "
                "solvents stripped (fragments=%r), %d without stereochemistry (the vocabulary "
                "lacks it), %d skipped (invalid SMILES or symbols outside the vocabulary)",
                len(out),
                stripped,
                self.fragments,
                flattened,
                skipped,
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
            res = _iw_terms(self.graphdef, self.params, t, l_, keys[i : i + chunk], k)
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


def _to_smiles(strict: bool):
    return chem.selfies_to_smiles_strict if strict else chem.selfies_to_smiles


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
