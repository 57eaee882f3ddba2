"""A GRU layer whose input projection is hoisted out of the recurrent scan (one big matmul)."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


class Recurrent(nnx.Module):
    """A gated recurrent layer over a whole sequence, its input projection hoisted out of the
    scan: x @ W_i for all time steps is one (B*L, D) x (D, G*H) matmul (G gates); only
    h @ W_h stays inside `lax.scan`. That is where a recurrent net spends its FLOPs on CPU/GPU.
    Subclasses (GRU, molvae.models.lstm.LSTM) give the gate count, the scan and the cell."""

    gates: int  # the projection is (..., gates * H)

    def __init__(
        self, in_features: int, hidden: int, *, dtype: str = "float32", rngs: nnx.Rngs
    ) -> None:
        """dtype: operand type of the matmuls (float32 or bfloat16); they accumulate, and the
        gates and states stay, in float32."""
        g = self.gates
        self.hidden, self.dtype = hidden, dtype
        self.wi = nnx.Linear(in_features, g * hidden, rngs=rngs)  # parameters; project() multiplies
        # Orthogonal recurrent weights per gate keep the early dynamics well conditioned.
        ortho = nnx.initializers.orthogonal()
        wh = jnp.concatenate([ortho(rngs.params(), (hidden, hidden)) for _ in range(g)], axis=1)
        self.wh = nnx.Param(wh)
        self.bh = nnx.Param(self.initial_bias(hidden))

    def initial_bias(self, hidden: int) -> jax.Array:
        """The recurrent bias at initialisation (gates * H,): zeros."""
        return jnp.zeros((self.gates * hidden,))

    def project(self, x: jax.Array) -> jax.Array:
        """Input projection, hoistable: (..., D) -> (..., gates * H), in float32 from operands
        in self.dtype (the parameters stay float32)."""
        return dense(x, self.wi.kernel[...], self.dtype) + self.wi.bias[...]

    def scan(
        self, xp: jax.Array, state0: Any, mask: jax.Array, wh: jax.Array, bh: jax.Array, dtype: str
    ) -> tuple[jax.Array, Any]:
        """The recurrence over time-major inputs (gru_scan, lstm_scan)."""
        raise NotImplementedError

    def __call__(
        self,
        x: jax.Array,
        state0: Any,
        mask: jax.Array | None = None,
        extra: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        """Run over x (B, L, D) from state0 (a GRU's h0 (B, H), an LSTM's (h0, c0)); returns
        outputs (B, L, H) and the final state.

        mask (B, L): where False the state is carried unchanged, so the final state is the one
        after each sequence's last real token. extra (B, gates * H) is added to every step's
        projected input (a per-sequence constant such as a latent code, projected once).
        """
        xp = self.project(x)  # (B, L, gates * H)
        if extra is not None:
            xp = xp + extra[:, None, :]
        if mask is None:
            mask = jnp.ones(x.shape[:2], bool)
        ys, last = self.scan(
            jnp.swapaxes(xp, 0, 1),
            state0,
            jnp.swapaxes(mask, 0, 1),
            self.wh[...],
            self.bh[...],
            self.dtype,
        )
        return jnp.swapaxes(ys, 0, 1), last


class GRU(Recurrent):
    """Gated recurrent unit over a whole sequence (PyTorch/cuDNN gate convention)."""

    gates = 3

    def scan(
        self,
        xp: jax.Array,
        h0: jax.Array,
        mask: jax.Array,
        wh: jax.Array,
        bh: jax.Array,
        dtype: str,
    ) -> tuple[jax.Array, jax.Array]:
        return gru_scan(xp, h0, mask, wh, bh, dtype)

    def step(self, xp: jax.Array, h: jax.Array) -> jax.Array:
        """One recurrence from a projected input: (B, 3H), (B, H) -> (B, H)."""
        return _gru_step(xp, h, self.wh[...], self.bh[...], self.dtype)

    @staticmethod
    def output(state: jax.Array) -> jax.Array:
        """What the layer emits from its state: the state itself."""
        return state

    @staticmethod
    def start(h: jax.Array) -> jax.Array:
        """The state a decoder starts from given h0."""
        return h


def gru_scan(
    xp: jax.Array,
    h0: jax.Array,
    mask: jax.Array,
    wh: jax.Array,
    bh: jax.Array,
    dtype: str = "float32",
) -> tuple[jax.Array, jax.Array]:
    """The recurrence over time-major inputs: xp (L, B, 3H) projected inputs, h0 (B, H), mask
    (L, B) (False: state carried unchanged) -> outputs (L, B, H) and the final state.

    Its hand-written backward pass keeps one matmul per step in the reverse scan (dh @ W_h^T);
    the recurrent weight gradient is then one (H, L*B) x (L*B, 3H) matmul over all steps, as
    cuDNN does, instead of an outer-product accumulation at every step."""
    f32 = jnp.float32
    return _gru_scan(xp.astype(f32), h0.astype(f32), mask, wh, bh, dtype)


@partial(jax.custom_vjp, nondiff_argnums=(5,))
def _gru_scan(xp, h0, mask, wh, bh, dtype):
    return _gru_forward(xp, h0, mask, wh, bh, dtype)[0]


def matmul(a: jax.Array, b: jax.Array, dtype: str) -> jax.Array:
    """a @ b with operands in dtype, accumulated in float32."""
    return jnp.dot(a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def dense(x: jax.Array, w: jax.Array, dtype: str = "float32") -> jax.Array:
    """x (..., D) @ w (D, N) in float32. With dtype bfloat16 the operands of the forward and of
    both backward matmuls are bfloat16 and the sums float32: on CPUs with bfloat16 dot
    instructions that runs about twice as fast as float32, where a bfloat16 result (what
    `nnx.Linear(dtype=bfloat16)` computes) runs no faster than float32."""
    if jnp.dtype(dtype) == jnp.float32:
        return jnp.dot(x, w)
    return _dense_mixed(x.astype(jnp.float32), w.astype(jnp.float32), dtype)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_mixed(x, w, dtype):
    return matmul(x, w, dtype)


def _dense_mixed_fwd(x, w, dtype):
    xc, wc = x.astype(dtype), w.astype(dtype)
    return matmul(xc, wc, dtype), (xc, wc)


def _dense_mixed_bwd(dtype, saved, g):
    xc, wc = saved
    g2 = g.reshape(-1, g.shape[-1])
    dx = matmul(g2, wc.T, dtype).reshape(xc.shape)
    dw = matmul(xc.reshape(-1, xc.shape[-1]).T, g2, dtype)
    return dx, dw


_dense_mixed.defvjp(_dense_mixed_fwd, _dense_mixed_bwd)


def _gru_forward(xp, h0, mask, wh, bh, dtype):
    wh = wh.astype(dtype)  # cast once, not at every step

    def body(h, inputs):
        xp_t, m_t = inputs
        h_new, gates = _gates(xp_t, h, wh, bh, dtype)
        h_new = jnp.where(m_t[:, None], h_new, h)
        return h_new, (h_new, gates)

    h_last, (ys, res) = prefetch_scan(body, h0, (xp, mask))
    return (ys, h_last), res


def prefetch_scan(body, init, xs, reverse: bool = False):
    """jax.lax.scan(body, init, xs, reverse) that hands each step its slice of xs through the
    carry, read one step ahead.

    Same results as lax.scan. On XLA:CPU, a fusion that reads a dynamic slice of xs directly
    (the per-step slice lax.scan makes) is not vectorised: a 128-wide GRU's gates took 277 us
    per step that way against 44 us reading the same input from the carry (one core).
    Copying the next slice into the carry keeps the gate fusion on plain buffers.
    """
    n = jax.tree.leaves(xs)[0].shape[0]
    at = lambda t: jax.tree.map(  # noqa: E731
        lambda x: jax.lax.dynamic_index_in_dim(x, t, 0, keepdims=False), xs
    )

    def step(carry, t):
        c, cur = carry
        nxt = at(jnp.clip(t - 1 if reverse else t + 1, 0, n - 1))
        c, y = body(c, cur)
        return (c, nxt), y

    first = at(n - 1 if reverse else 0)
    (c, _), ys = jax.lax.scan(step, (init, first), jnp.arange(n), reverse=reverse)
    return c, ys


def _gru_fwd(xp, h0, mask, wh, bh, dtype):
    (ys, h_last), res = _gru_forward(xp, h0, mask, wh, bh, dtype)
    h_prev = jnp.concatenate([h0[None], ys[:-1]])  # the state each step started from
    return (ys, h_last), ((h_prev, *res), mask, wh)


def _gru_bwd(dtype, saved, cotangents):
    (h_prev, r, z, n, hn), mask, wh = saved
    dys, dh_last = cotangents
    wh_t = wh.T.astype(dtype)  # cast once, not at every step

    def body(dh, inputs):
        dy_t, m_t, h_t, r_t, z_t, n_t, hn_t = inputs
        dh = dh + dy_t
        m = m_t[:, None]
        dnew = jnp.where(m, dh, 0.0)
        dn = dnew * (1.0 - z_t)
        dz = dnew * (h_t - n_t)
        dan = dn * (1.0 - jnp.square(n_t))
        dar = dan * hn_t * r_t * (1.0 - r_t)
        daz = dz * z_t * (1.0 - z_t)
        dxp = jnp.concatenate([dar, daz, dan], axis=-1)  # (B, 3H)
        dhp = jnp.concatenate([dar, daz, dan * r_t], axis=-1)
        dh_prev = jnp.where(m, dnew * z_t, dh) + matmul(dhp, wh_t, dtype)
        return dh_prev, (dxp, dhp)

    dh0, (dxp, dhp) = jax.lax.scan(body, dh_last, (dys, mask, h_prev, r, z, n, hn), reverse=True)
    L, B, H = h_prev.shape
    dwh = matmul(h_prev.reshape(L * B, H).T, dhp.reshape(L * B, 3 * H), dtype).astype(wh.dtype)
    dbh = dhp.sum((0, 1)).astype(wh.dtype)
    return dxp, dh0, None, dwh, dbh


_gru_scan.defvjp(_gru_fwd, _gru_bwd)


def _gates(xp, h, wh, bh, dtype):
    """The GRU cell (the one copy of its gate math): next state and the gates (r, z, n, hn) the
    hand-written backward pass reuses."""
    hp = matmul(h, wh, dtype) + bh  # (B, 3H)
    xr, xz, xn = jnp.split(xp, 3, axis=-1)
    hr, hz, hn = jnp.split(hp, 3, axis=-1)
    r = jax.nn.sigmoid(xr + hr)
    z = jax.nn.sigmoid(xz + hz)
    n = jnp.tanh(xn + r * hn)
    return (1.0 - z) * n + z * h, (r, z, n, hn)


def _gru_step(
    xp: jax.Array, h: jax.Array, wh: jax.Array, bh: jax.Array, dtype: str = "float32"
) -> jax.Array:
    return _gates(xp, h, wh, bh, dtype)[0]


def reverse_padded(x: jax.Array, lengths: jax.Array) -> jax.Array:
    """Reverse each sequence of x (B, L, ...) within its own length; padding stays at the end."""
    L = x.shape[1]
    t = jnp.arange(L)[None, :]
    idx = jnp.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, L)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
