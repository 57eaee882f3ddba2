"""A GRU layer whose input projection is hoisted out of the recurrent scan (one big matmul)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class GRU(nnx.Module):
    """Gated recurrent unit over a whole sequence (PyTorch/cuDNN gate convention).

    The input projection x @ W_i for all time steps is one (B*L, D) x (D, 3H) matmul; only
    h @ W_h stays inside `lax.scan`. That is where a recurrent net spends its FLOPs on CPU/GPU.
    """

    def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
        self.hidden = hidden
        self.wi = nnx.Linear(in_features, 3 * hidden, rngs=rngs)
        # Orthogonal recurrent weights per gate keep the early dynamics well conditioned.
        ortho = nnx.initializers.orthogonal()
        wh = jnp.concatenate([ortho(rngs.params(), (hidden, hidden)) for _ in range(3)], axis=1)
        self.wh = nnx.Param(wh)
        self.bh = nnx.Param(jnp.zeros((3 * hidden,)))

    def project(self, x: jax.Array) -> jax.Array:
        """Input projection, hoistable: (..., D) -> (..., 3H)."""
        return self.wi(x)

    def step(self, xp: jax.Array, h: jax.Array) -> jax.Array:
        """One recurrence from a projected input: (B, 3H), (B, H) -> (B, H)."""
        return _gru_step(xp, h, self.wh[...], self.bh[...])

    def __call__(
        self,
        x: jax.Array,
        h0: jax.Array,
        mask: jax.Array | None = None,
        extra: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Run over x (B, L, D) from h0 (B, H); returns outputs (B, L, H) and the final state.

        mask (B, L): where False the state is carried unchanged, so the final state is the one
        after each sequence's last real token. extra (B, 3H) is added to every step's projected
        input (a per-sequence constant such as a latent code, projected once).
        """
        xp = self.project(x)  # (B, L, 3H)
        if extra is not None:
            xp = xp + extra[:, None, :]
        if mask is None:
            mask = jnp.ones(x.shape[:2], bool)
        wh, bh = self.wh[...], self.bh[...]

        def body(h, inputs):
            xp_t, m_t = inputs
            h_new = _gru_step(xp_t, h, wh, bh)
            h = jnp.where(m_t[:, None], h_new, h)
            return h, h

        h_last, ys = jax.lax.scan(body, h0, (jnp.swapaxes(xp, 0, 1), jnp.swapaxes(mask, 0, 1)))
        return jnp.swapaxes(ys, 0, 1), h_last


def _gru_step(xp: jax.Array, h: jax.Array, wh: jax.Array, bh: jax.Array) -> jax.Array:
    hp = h @ wh.astype(h.dtype) + bh.astype(h.dtype)  # (B, 3H)
    xr, xz, xn = jnp.split(xp, 3, axis=-1)
    hr, hz, hn = jnp.split(hp, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h


def reverse_padded(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Reverse each sequence of x (B, L, ...) within its own length; padding stays at the end."""
    L = x.shape[1]
    t = jnp.arange(L)[None, :]
    idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, L)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
