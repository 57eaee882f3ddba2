"""A causal Transformer decoder conditioned on z, with a key/value cache for generation.

Same interface as the GRU decoder of molvae.models.vae (teacher-forced __call__, initial_state,
step), so training, the continuous-batching decoding engine and the likelihood code use either.
Training runs every position in parallel (matmuls over B*L rows, no recurrence), which is what
makes it cheaper per molecule than a GRU of the same FLOPs on CPUs and accelerators alike.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def sinusoid(positions: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal position codes (Vaswani et al. 2017): positions (...,) -> (..., dim)."""
    half = dim // 2
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    ang = positions.astype(jnp.float32)[..., None] * freq
    return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)


class Block(nnx.Module):
    """Pre-norm Transformer block: causal self-attention, then a GELU MLP."""

    def __init__(self, dim: int, heads: int, ff: int, *, rngs: nnx.Rngs) -> None:
        if dim % heads:
            raise ValueError(f"model.dec_hidden {dim} must divide into model.dec_heads {heads}")
        self.heads, self.dim = heads, dim
        self.dtype = "float32"  # the decoding engine may set it; the block computes in float32
        self.ln1 = nnx.LayerNorm(dim, rngs=rngs)
        self.qkv = nnx.Linear(dim, 3 * dim, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, rngs=rngs)
        self.up = nnx.Linear(dim, ff, rngs=rngs)
        self.down = nnx.Linear(ff, dim, rngs=rngs)

    def _split(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        *lead, _ = x.shape
        q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
        shape = (*lead, self.heads, self.dim // self.heads)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def _mlp(self, x: jax.Array) -> jax.Array:
        return x + self.down(jax.nn.gelu(self.up(self.ln2(x))))

    def __call__(self, x: jax.Array) -> jax.Array:
        """Whole sequences (B, L, D), each position attending to itself and earlier ones."""
        q, k, v = self._split(x)  # (B, L, Hd, dh)
        L = x.shape[1]
        causal = jnp.tril(jnp.ones((L, L), bool))
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
        att = jax.nn.softmax(jnp.where(causal, att, -jnp.inf), axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(x.shape)
        return self._mlp(x + self.proj(y))

    def step(
        self, x: jax.Array, cache: tuple[jax.Array, jax.Array], t: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """One position per row: x (B, D) at positions t (B,); cache (k, v) each (B, T, Hd, dh)
        holds the earlier positions. Writes this position's key and value at t (nothing when
        t >= T) and attends over positions <= t."""
        q, k, v = self._split(x)  # (B, Hd, dh)
        ck, cv = cache
        T = ck.shape[1]
        here = (jnp.arange(T)[None, :] == t[:, None])[:, :, None, None]  # (B, T, 1, 1)
        ck = jnp.where(here, k[:, None], ck)
        cv = jnp.where(here, v[:, None], cv)
        att = jnp.einsum("bhd,bkhd->bhk", q, ck) / math.sqrt(q.shape[-1])
        seen = (jnp.arange(T)[None, :] <= t[:, None])[:, None, :]  # (B, 1, T)
        att = jax.nn.softmax(jnp.where(seen, att, -jnp.inf), axis=-1)
        y = jnp.einsum("bhk,bkhd->bhd", att, cv).reshape(x.shape)
        return self._mlp(x + self.proj(y)), (ck, cv)


class TransformerDecoder(nnx.Module):
    """z-conditioned causal Transformer: the input at position t is embed(token) + a sinusoid of
    t + a projection of z (z reaches every position, as in the GRU decoder)."""

    def __init__(self, cfg, *, rngs: nnx.Rngs) -> None:
        self.cfg = cfg
        d = cfg.dec_hidden
        self.embed = nnx.Embed(cfg.vocab_size, d, rngs=rngs)
        self.z_in = nnx.Linear(cfg.latent_dim, d, rngs=rngs)
        self.layers = nnx.List(
            [Block(d, cfg.dec_heads, cfg.dec_ff_mult * d, rngs=rngs) for _ in range(cfg.dec_layers)]
        )
        self.ln_f = nnx.LayerNorm(d, rngs=rngs)
        self.out = nnx.Linear(d, cfg.vocab_size, rngs=rngs)

    def initial_state(self, z: jax.Array, length: int) -> tuple[jax.Array, list]:
        """z's input term (B, D) and an empty key/value cache of `length` positions per layer."""
        B, d, h = z.shape[0], self.cfg.dec_hidden, self.cfg.dec_heads
        empty = jnp.zeros((B, length, h, d // h), jnp.float32)
        return self.z_in(z), [(empty, empty) for _ in self.layers]

    def __call__(self, z: jax.Array, tokens_in: jax.Array) -> jax.Array:
        """Teacher forcing: logits (B, L, V) for inputs tokens_in (B, L) = [bos, symbols...]."""
        L = tokens_in.shape[1]
        x = self.embed(tokens_in) + sinusoid(jnp.arange(L), self.cfg.dec_hidden)[None]
        x = x + self.z_in(z)[:, None, :]
        for layer in self.layers:
            x = layer(x)
        return self.out(self.ln_f(x))

    def input_table(self) -> None:
        return None  # the GRU's per-symbol projection table has no counterpart here

    def step(
        self, token: jax.Array, zin: jax.Array, cache: list, table=None, t: jax.Array = None
    ) -> tuple[jax.Array, list]:
        """One decoding step at positions t (B,): token (B,) -> logits (B, V), new cache."""
        x = self.embed(token) + sinusoid(t, self.cfg.dec_hidden) + zin
        new = []
        for layer, c in zip(self.layers, cache, strict=True):
            x, c = layer.step(x, c, t)
            new.append(c)
        return self.out(self.ln_f(x)), new
