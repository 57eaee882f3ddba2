"""The decoding engine: latents -> token ids -> SMILES, by continuous batching of jitted
decoder segments (prior samples, reconstructions and searches all decode through it)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from molvae import chem
from molvae.models import grammar as gram
from molvae.models.vae import VAE
from molvae.vocab import Vocab

CHUNK = 512  # latents per key chunk and decoding slots; the packed sizes are CHUNK / 2^k
SEGMENT = 8  # decoding steps per jitted call; slots are refilled or packed between calls
MIN_BUCKET = 32  # smallest batch the unfinished rows are packed into (sizes CHUNK / 2^k)


@partial(jax.jit, static_argnames=("graphdef", "max_len", "greedy"))
def _generate(graphdef, params, z, key, temperature, max_len: int, greedy: bool, tables=None):
    """Every row for all max_len + 1 steps in one scan (the reference for DecodingEngine)."""
    return nnx.merge(graphdef, params).generate(z, key, max_len, temperature, greedy, tables)


@partial(jax.jit, static_argnames=("graphdef", "length", "grammar"))
def _start(graphdef, params, z, key, length: int, grammar: bool = False):
    zin, hs = nnx.merge(graphdef, params).decoder.initial_state(z, length)
    g = gram.init_state(z.shape[0], length - 1) if grammar else None
    return zin, hs, jnp.full((z.shape[0],), 1, jnp.int32), jax.random.split(key, z.shape[0]), g


@partial(jax.jit, static_argnames=("graphdef", "greedy"))
def _segment(graphdef, params, state, done, pos, temperature, greedy: bool, tables=None):
    zin, hs, token, keys, g = state
    token, hs, done, ids, g = nnx.merge(graphdef, params).decode_steps(
        zin, hs, token, done, keys, pos, SEGMENT, temperature, greedy, tables, g
    )
    return (zin, hs, token, keys, g), done, ids


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


def _to_smiles(strict: bool):
    return chem.selfies_to_smiles_strict if strict else chem.selfies_to_smiles


class _Slots:
    """The decoding slots between jitted segments: the network state of every row, the molecule
    each row holds (-1: free, or a padding row) and how many steps that molecule has decoded."""

    def __init__(self, state, n: int) -> None:
        self.state = state
        self.mol = np.where(np.arange(CHUNK) < n, np.arange(CHUNK), -1)
        self.pos = np.zeros(CHUNK, np.int32)

    def free(self) -> np.ndarray:
        return np.flatnonzero(self.mol < 0)

    def refill(self, fresh, rows: np.ndarray, first: int, src0: int) -> None:
        """Rows `rows` start molecules first, first + 1, ..., from rows src0, src0 + 1, ... of
        the start state `fresh` of their chunk."""
        src, mask = np.zeros(len(self.mol), np.int32), np.zeros(len(self.mol), bool)
        src[rows] = src0 + np.arange(len(rows))
        mask[rows] = True
        self.state = _refill(self.state, fresh, jnp.asarray(src), jnp.asarray(mask))
        self.mol[rows], self.pos[rows] = first + np.arange(len(rows)), 0

    def pack(self) -> None:
        """Move the unfinished rows into the smallest batch of CHUNK / 2^k (>= MIN_BUCKET) that
        holds them, padded with copies of a live row that belong to no molecule."""
        idx = np.flatnonzero(self.mol >= 0)
        size = len(self.mol)
        while size // 2 >= max(len(idx), MIN_BUCKET):
            size //= 2
        if size < len(self.mol):
            pad = size - len(idx)
            self.state = _take(self.state, jnp.asarray(np.concatenate([idx, np.full(pad, idx[0])])))
            self.mol = np.concatenate([self.mol[idx], np.full(pad, -1)])
            self.pos = np.concatenate([self.pos[idx], np.zeros(pad, np.int32)])


class _Chunks:
    """The ids of each chunk of CHUNK molecules, held until all its molecules have finished,
    then handed out in order."""

    def __init__(self, n: int, width: int) -> None:
        self.n, self.width = n, width
        self.ids: dict[int, np.ndarray] = {}
        self.left: dict[int, int] = {}  # chunk -> molecules not finished yet
        self.emitted = 0

    def open(self, c: int) -> None:
        self.ids[c] = np.zeros((min(CHUNK, self.n - c * CHUNK), self.width), np.int32)
        self.left[c] = len(self.ids[c])

    def write(self, mols: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> None:
        for c in np.unique(mols // CHUNK):
            at = mols // CHUNK == c
            self.ids[c][mols[at] - c * CHUNK, cols[at]] = vals[at]

    def finish(self, mols: np.ndarray) -> None:
        for c, k in zip(*np.unique(mols // CHUNK, return_counts=True), strict=True):
            self.left[c] -= k

    def ready(self):
        while self.emitted in self.left and self.left[self.emitted] == 0:
            del self.left[self.emitted]
            yield self.ids.pop(self.emitted)
            self.emitted += 1


class DecodingEngine:
    """Compiled generation for a trained VAE and its vocabulary: latents (numpy) to token ids
    and canonical SMILES."""

    def __init__(
        self, model: VAE, vocab: Vocab, max_len: int, decode_dtype: str | None = None
    ) -> None:
        """decode_dtype: operand type of the decoder's matmuls when generating (None: the
        model's own; bfloat16 for hardware with fast bfloat16 matmuls; sums and states stay
        float32)."""
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
        self._tables: dict[int, gram.GrammarTables] = {}
        self.grammar = model.cfg.grammar  # the default of decode's `grammar`
        self.max_ring = model.cfg.max_ring  # ... and of its `max_ring` under the grammar

    def grammar_tables(self, max_ring: int = 0) -> gram.GrammarTables:
        """The vocabulary's tables for grammar-constrained decoding (models.grammar), ring
        bonds that close rings of more than `max_ring` atoms masked too (0: no limit); a
        ValueError for a vocabulary with BPE tokens."""
        if max_ring not in self._tables:
            self._tables[max_ring] = gram.grammar_tables(
                self.vocab.tokens, self.vocab.eos_id, max_ring
            )
        return self._tables[max_ring]

    def _grammar(self, grammar: bool | None, max_ring: int | None) -> gram.GrammarTables | None:
        """The tables decoding runs under: grammar None means as trained, max_ring None the
        trained limit under the grammar (0 without it); max_ring > 0 implies grammar."""
        grammar = self.grammar if grammar is None else grammar
        if max_ring is None:
            max_ring = self.max_ring if grammar else 0
        if grammar or max_ring:
            return self.grammar_tables(max_ring)
        return None

    def decode_ids(
        self,
        z: np.ndarray,
        seed: int = 0,
        temperature: float = 1.0,
        greedy: bool = True,
        grammar: bool | None = None,
        max_ring: int | None = None,
    ) -> np.ndarray:
        """Token ids (n, max_len + 1) for latents z (n, Z), in fixed-size jitted chunks."""
        out = list(self.iter_ids(z, seed, temperature, greedy, grammar, max_ring))
        return np.concatenate(out) if out else np.zeros((0, self.max_len + 1), np.int32)

    def iter_ids(
        self,
        z,
        seed: int,
        temperature: float,
        greedy: bool,
        grammar: bool | None = None,
        max_ring: int | None = None,
    ):
        """Ids (CHUNK rows at a time, in order; the last block shorter) for latents z.

        Continuous batching: CHUNK decoding slots run SEGMENT steps per jitted call, and
        between calls every slot whose molecule has finished (eos or max_len) starts the next
        latent. The network thus runs at full batch on real work, whatever the molecules'
        lengths; when no latents are left, the unfinished rows are packed into the smallest
        batch of CHUNK / 2^k that holds them. Latent j of chunk c = j // CHUNK draws with key
        split(fold_in(key(seed), c), CHUNK)[j % CHUNK], so the ids are those of _generate on
        each padded chunk, and do not depend on which other latents share the batch.

        grammar: draw only among the tokens after which the SELFIES decoder needs no repair
        (models.grammar), the decoder's distribution renormalised over them at each step (None:
        as the model was trained, ModelConfig.grammar). max_ring > 0: under the grammar, and
        no ring bond may close a ring of more atoms (models.grammar._near; MOSES's filters
        reject rings of 8 or more); 0: no limit; None: as trained (ModelConfig.max_ring)."""
        z = np.asarray(z, np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"latents must have shape (n, {self.latent_dim}), got {z.shape}")
        if not greedy and not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        n, width = len(z), self.max_len + 1
        if n == 0:
            return
        key, temp = jax.random.key(seed), jnp.float32(temperature)
        tables = self._grammar(grammar, max_ring)
        grammar = tables is not None

        def start(c: int):  # start state of chunk c (CHUNK rows, the last chunk padded)
            zc = z[c * CHUNK : (c + 1) * CHUNK]
            zc = np.concatenate([zc, np.zeros((CHUNK - len(zc), zc.shape[1]), np.float32)])
            return _start(
                self.gen_graphdef, self.params, zc, jax.random.fold_in(key, c), width, grammar
            )

        chunks = _Chunks(n, width)
        chunks.open(0)
        slots = _Slots(start(0), n)
        nxt, fresh, fresh_c = min(CHUNK, n), None, -1  # next latent; its chunk's start state
        while chunks.emitted < -(-n // CHUNK):
            free = slots.free()
            if nxt < n and len(free):  # refill the free slots with the next latents
                while nxt < n and len(free):
                    c = nxt // CHUNK
                    if c != fresh_c:
                        fresh, fresh_c = start(c), c
                        chunks.open(c)
                    k = min(len(free), (c + 1) * CHUNK - nxt, n - nxt)
                    slots.refill(fresh, free[:k], nxt, nxt - c * CHUNK)
                    nxt, free = nxt + k, free[k:]
            elif nxt >= n:  # nothing left to start: pack the unfinished rows
                slots.pack()
            live = slots.mol >= 0
            slots.state, done, ids = _segment(
                self.gen_graphdef,
                self.params,
                slots.state,
                jnp.asarray(~live),
                jnp.asarray(slots.pos),
                temp,
                greedy,
                tables,
            )
            ids, done = np.asarray(ids), np.asarray(done)
            row = np.flatnonzero(live)
            cols = slots.pos[row, None] + np.arange(SEGMENT)  # (live, SEGMENT) positions written
            keep = cols < width
            mols = np.broadcast_to(slots.mol[row, None], cols.shape)[keep]
            chunks.write(mols, cols[keep], ids[row][keep])
            slots.pos[row] += SEGMENT
            finished = row[done[row] | (slots.pos[row] >= width)]
            chunks.finish(slots.mol[finished])
            slots.mol[finished] = -1
            yield from chunks.ready()

    def warm_up(
        self, greedy: bool = False, grammar: bool | None = None, max_ring: int | None = None
    ) -> None:
        """Compile the decoder for every packed batch size now rather than on first use."""
        tables = self._grammar(grammar, max_ring)
        grammar = tables is not None
        sizes = [CHUNK >> k for k in range(CHUNK.bit_length()) if CHUNK >> k >= MIN_BUCKET]
        z = np.zeros((CHUNK, self.latent_dim), np.float32)
        full = _start(
            self.gen_graphdef, self.params, z, jax.random.key(0), self.max_len + 1, grammar
        )
        full = _refill(full, full, jnp.zeros(CHUNK, jnp.int32), jnp.zeros(CHUNK, bool))
        temp = jnp.float32(1.0)
        for size in sizes:
            state = _take(full, jnp.arange(size))
            for smaller in sizes:
                if smaller < size:
                    _take(state, jnp.arange(smaller))
            pos = jnp.zeros(size, jnp.int32)
            out = _segment(
                self.gen_graphdef,
                self.params,
                state,
                jnp.zeros(size, bool),
                pos,
                temp,
                greedy,
                tables,
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
        grammar: bool | None = None,
        max_ring: int | None = None,
    ) -> list[str]:
        """Canonical SMILES for latents z ('' where decoding fails; with strict, also where the
        SELFIES had to be repaired; with grammar and max_ring, see iter_ids). Large batches
        overlap the network with RDKit: each decoded chunk goes to a process pool while the next
        decodes."""
        jobs = chem.default_jobs()
        if len(z) < chem.SERIAL_BELOW or jobs <= 1:
            ids = self.decode_ids(z, seed, temperature, greedy, grammar, max_ring)
            return self.ids_to_smiles(ids, 1, strict)
        with chem.process_pool(jobs) as pool:
            parts = [
                pool.map(
                    _to_smiles(strict),
                    self.vocab.decode_selfies_batch(ids),
                    chunksize=max(16, len(ids) // (4 * jobs)),
                )
                for ids in self.iter_ids(z, seed, temperature, greedy, grammar, max_ring)
            ]
            return [smi for part in parts for smi in part]
