"""An LSTM layer with the GRU layer's layout (molvae.models.gru): the input projection hoisted
out of the recurrent scan, a hand-written backward pass, the same interface with a state that is
the pair (h, c). CIFG is its coupled input-forget gate variant (three gates, as a GRU)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from molvae.models.gru import Recurrent, matmul, prefetch_scan

State = tuple[jax.Array, jax.Array]  # (h, c), each (B, H)


class LSTM(Recurrent):
    """Long short-term memory over a whole sequence (PyTorch/cuDNN gate order i, f, g, o).

    As in molvae.models.gru.GRU, the backward pass keeps one matmul per reverse step and
    computes the recurrent weight gradient as one matmul over all steps. The forget gate's bias
    starts at 1 (Jozefowicz et al. 2015), so early on the cell carries its memory.
    """

    gates = 4
    coupled = False  # CIFG: the forget gate is 1 - the input gate

    def initial_bias(self, hidden: int) -> jax.Array:
        return jnp.zeros((4 * hidden,)).at[hidden : 2 * hidden].set(1.0)

    def scan(
        self,
        xp: jax.Array,
        state0: State,
        mask: jax.Array,
        wh: jax.Array,
        bh: jax.Array,
        dtype: str,
    ) -> tuple[jax.Array, State]:
        return lstm_scan(xp, state0, mask, wh, bh, dtype, coupled=self.coupled)

    def step(self, xp: jax.Array, state: State) -> State:
        """One recurrence from a projected input: (B, gates * H), (h, c) -> (h, c)."""
        return _cell(xp, *state, self.wh[...], self.bh[...], self.dtype, self.coupled)[:2]

    @staticmethod
    def output(state: State) -> jax.Array:
        """What the layer emits from its state: h."""
        return state[0]

    @staticmethod
    def start(h: jax.Array) -> State:
        """The state a decoder starts from given h0: the cell starts empty."""
        return h, jnp.zeros_like(h)


class CIFG(LSTM):
    """The LSTM with a coupled input-forget gate, f = 1 - i (gate order i, g, o): the LSTM's
    separate cell state at a GRU's three gates, so a GRU's FLOPs per step. Greff et al. 2017
    ("LSTM: A Search Space Odyssey") found it no worse than the full LSTM. The input gate's bias
    starts at -1, so the forget gate starts where the LSTM's does (sigmoid(1))."""

    gates = 3
    coupled = True

    def initial_bias(self, hidden: int) -> jax.Array:
        return jnp.zeros((3 * hidden,)).at[:hidden].set(-1.0)


def lstm_scan(
    xp: jax.Array,
    state0: State,
    mask: jax.Array,
    wh: jax.Array,
    bh: jax.Array,
    dtype: str = "float32",
    coupled: bool = False,
) -> tuple[jax.Array, State]:
    """The recurrence over time-major inputs: xp (L, B, 4H), or (L, B, 3H) with coupled gates
    (CIFG), state0 (h0, c0) each (B, H), mask (L, B) (False: state carried unchanged) ->
    outputs h (L, B, H) and the final (h, c)."""
    f32 = jnp.float32
    h0, c0 = state0
    return _lstm_scan(xp.astype(f32), h0.astype(f32), c0.astype(f32), mask, wh, bh, dtype, coupled)


def _cell(xp, h, c, wh, bh, dtype, coupled=False):
    """The LSTM cell (the one copy of its gate math): (h, c) and the gates (i, f, g, o, tanh c)
    that the backward pass reuses. coupled: f = 1 - i, pre-activations (i, g, o)."""
    a = xp + matmul(h, wh, dtype) + bh
    if coupled:
        ai, ag, ao = jnp.split(a, 3, axis=-1)
        i, o = jax.nn.sigmoid(ai), jax.nn.sigmoid(ao)
        f = 1.0 - i
    else:
        ai, af, ag, ao = jnp.split(a, 4, axis=-1)
        i, f, o = jax.nn.sigmoid(ai), jax.nn.sigmoid(af), jax.nn.sigmoid(ao)
    g = jnp.tanh(ag)
    c_new = f * c + i * g
    tc = jnp.tanh(c_new)
    return o * tc, c_new, (i, f, g, o, tc)


@partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _lstm_scan(xp, h0, c0, mask, wh, bh, dtype, coupled):
    ys, cs, h_last, c_last, _ = _lstm_forward(xp, h0, c0, mask, wh, bh, dtype, coupled)
    return ys, (h_last, c_last)


def _lstm_forward(xp, h0, c0, mask, wh, bh, dtype, coupled):
    wh = wh.astype(dtype)  # cast once, not at every step

    def body(hc, inputs):
        h, c = hc
        xp_t, m_t = inputs
        h_new, c_new, gates = _cell(xp_t, h, c, wh, bh, dtype, coupled)
        m = m_t[:, None]
        h_new, c_new = jnp.where(m, h_new, h), jnp.where(m, c_new, c)
        if coupled:  # f = 1 - i: the backward pass derives it rather than keeping it
            gates = (gates[0], None, *gates[2:])
        return (h_new, c_new), (h_new, c_new, gates)

    (h_last, c_last), (ys, cs, gates) = prefetch_scan(body, (h0, c0), (xp, mask))
    return ys, cs, h_last, c_last, gates


def _lstm_fwd(xp, h0, c0, mask, wh, bh, dtype, coupled):
    ys, cs, h_last, c_last, gates = _lstm_forward(xp, h0, c0, mask, wh, bh, dtype, coupled)
    h_prev = jnp.concatenate([h0[None], ys[:-1]])  # the state each step started from
    c_prev = jnp.concatenate([c0[None], cs[:-1]])
    return (ys, (h_last, c_last)), (h_prev, c_prev, gates, mask, wh)


def _lstm_bwd(dtype, coupled, saved, cotangents):
    h_prev, c_prev, (i, f, g, o, tc), mask, wh = saved
    dys, (dh_last, dc_last) = cotangents
    wh_t = wh.T.astype(dtype)  # cast once, not at every step

    def body(carry, inputs):
        dh, dc = carry
        dy_t, m_t, cp_t, i_t, f_t, g_t, o_t, tc_t = inputs  # cp_t: the cell it started from
        if coupled:
            f_t = 1.0 - i_t
        dh = dh + dy_t
        m = m_t[:, None]
        dhn = jnp.where(m, dh, 0.0)  # what reaches this step's new state
        dcn = jnp.where(m, dc, 0.0) + dhn * o_t * (1.0 - jnp.square(tc_t))
        dag = dcn * i_t * (1.0 - jnp.square(g_t))
        dao = dhn * tc_t * o_t * (1.0 - o_t)
        if coupled:  # c = (1 - i) c_prev + i g
            da = jnp.concatenate([dcn * (g_t - cp_t) * i_t * (1.0 - i_t), dag, dao], axis=-1)
        else:
            dai = dcn * g_t * i_t * (1.0 - i_t)
            daf = dcn * cp_t * f_t * (1.0 - f_t)
            da = jnp.concatenate([dai, daf, dag, dao], axis=-1)
        # da (B, gates * H): the gradient of the pre-activations
        dh_prev = jnp.where(m, 0.0, dh) + matmul(da, wh_t, dtype)
        dc_prev = jnp.where(m, dcn * f_t, dc)
        return (dh_prev, dc_prev), da

    (dh0, dc0), da = jax.lax.scan(
        body, (dh_last, dc_last), (dys, mask, c_prev, i, f, g, o, tc), reverse=True
    )
    L, B, H = h_prev.shape
    dwh = matmul(h_prev.reshape(L * B, H).T, da.reshape(L * B, -1), dtype).astype(wh.dtype)
    dbh = da.sum((0, 1)).astype(wh.dtype)
    return da, dh0, dc0, None, dwh, dbh


_lstm_scan.defvjp(_lstm_fwd, _lstm_bwd)
