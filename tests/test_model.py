"""The model's pieces against closed forms and reference computations."""

import dataclasses
import os
import platform
import subprocess
import sys

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from molvae.models.gru import GRU, reverse_padded
from molvae.models.losses import gaussian_kl, sequence_nll
from molvae.models.vae import VAE, ModelConfig
from molvae.training import TrainConfig, kl_weight


def test_gaussian_kl_closed_form_and_monte_carlo():
    assert float(gaussian_kl(jnp.zeros(3), jnp.zeros(3)).sum()) == 0.0
    assert float(gaussian_kl(jnp.ones(1), jnp.zeros(1))[0]) == pytest.approx(0.5)
    mu, logvar = jnp.array([0.7, -1.2]), jnp.array([-0.5, 0.8])
    # Monte Carlo estimate of E_q[log q - log p] with 400k draws.
    eps = jax.random.normal(jax.random.key(0), (400_000, 2))
    z = mu + jnp.exp(0.5 * logvar) * eps
    log_q = -0.5 * (eps**2 + logvar + jnp.log(2 * jnp.pi))
    log_p = -0.5 * (z**2 + jnp.log(2 * jnp.pi))
    mc = np.asarray(jnp.mean(log_q - log_p, 0))
    np.testing.assert_allclose(np.asarray(gaussian_kl(mu, logvar)), mc, atol=0.01)


def test_gru_matches_a_numpy_reference():
    gru = GRU(5, 4, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(2, 3, 5)).astype(np.float32)
    h0 = np.zeros((2, 4), np.float32)
    ys, h_last = gru(jnp.asarray(x), jnp.asarray(h0))
    wi, bi = np.asarray(gru.wi.kernel[...]), np.asarray(gru.wi.bias[...])
    wh, bh = np.asarray(gru.wh[...]), np.asarray(gru.bh[...])
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h = h0
    for t in range(3):
        xr, xz, xn = np.split(x[:, t] @ wi + bi, 3, -1)
        hr, hz, hn = np.split(h @ wh + bh, 3, -1)
        r, z = sig(xr + hr), sig(xz + hz)
        h = (1 - z) * np.tanh(xn + r * hn) + z * h
        np.testing.assert_allclose(np.asarray(ys[:, t]), h, atol=1e-5)
    np.testing.assert_allclose(np.asarray(h_last), h, atol=1e-5)


def test_reverse_padded_keeps_padding_in_place():
    x = jnp.array([[1, 2, 3, 0], [4, 5, 0, 0]])
    np.testing.assert_array_equal(
        reverse_padded(x, jnp.array([3, 2])), [[3, 2, 1, 0], [5, 4, 0, 0]]
    )


def _model(bidirectional=True, layers=1, decoder="gru"):
    cfg = ModelConfig(
        decoder=decoder,
        dec_heads=2,
        vocab_size=12,
        embed_dim=8,
        enc_hidden=16,
        enc_layers=layers,
        bidirectional=bidirectional,
        latent_dim=4,
        dec_hidden=16,
        dec_layers=2,
    )
    return VAE(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("bidirectional,layers", [(True, 1), (False, 1), (True, 2)])
def test_encoder_ignores_padding(bidirectional, layers):
    """A molecule's posterior does not depend on its batch-mates or on the padded width."""
    model = _model(bidirectional, layers)
    short = np.array([[1, 5, 6, 2, 0, 0, 0]], np.int32)  # bos, 2 symbols, eos
    long = np.array([[1, 7, 8, 9, 10, 11, 2]], np.int32)
    mu_alone, _ = model.encode(jnp.asarray(short[:, :4]), jnp.array([3]))
    mu_batch, _ = model.encode(jnp.asarray(np.concatenate([short, long])), jnp.array([3, 6]))
    np.testing.assert_allclose(np.asarray(mu_alone[0]), np.asarray(mu_batch[0]), atol=1e-5)


@pytest.mark.parametrize("decoder", ["gru", "lstm", "cifg", "transformer"])
def test_generate_is_consistent_with_teacher_forcing(decoder):
    """Greedy decoding picks, at every step, the argmax of the teacher-forced logits."""
    model = _model(decoder=decoder)
    kind = {"gru": "GRU", "lstm": "LSTM", "cifg": "CIFG", "transformer": "Block"}[decoder]
    assert {type(layer).__name__ for layer in model.decoder.layers} == {kind}
    z = jax.random.normal(jax.random.key(1), (3, 4))
    out = model.generate(z, jax.random.key(0), max_len=6, greedy=True)  # (3, 7)
    inputs = jnp.concatenate([jnp.ones((3, 1), jnp.int32), out[:, :-1]], axis=1)
    logits = model.decoder(z, inputs).at[:, :, :2].set(-jnp.inf)
    expect = jnp.argmax(logits, -1)
    done = jnp.cumsum(out == 2, axis=1) - (out == 2) > 0  # positions after eos are pad
    np.testing.assert_array_equal(np.where(done, 0, expect), out)


def test_sequence_nll_masks_padding():
    logits = jnp.zeros((1, 4, 5))  # uniform: each real token costs log 5
    nll, hits, count = sequence_nll(logits, jnp.array([[3, 2, 0, 0]]), jnp.array([2]))
    assert float(nll[0]) == pytest.approx(2 * np.log(5), rel=1e-6)
    assert int(count[0]) == 2


def test_kl_schedules():
    lin = TrainConfig(kl_schedule="linear", kl_start=0.0, kl_max=1.0, kl_warmup_steps=100)
    assert [float(kl_weight(s, lin)) for s in (0, 50, 100, 500)] == pytest.approx([0, 0.5, 1, 1])
    cyc = TrainConfig(steps=400, kl_schedule="cyclical", kl_cycles=4, kl_ratio=0.5, kl_max=1.0)
    got = [float(kl_weight(s, cyc)) for s in (0, 25, 50, 99, 100, 125)]
    assert got == pytest.approx([0, 0.5, 1, 1, 0, 0.5])
    assert float(kl_weight(7, TrainConfig(kl_schedule="constant", kl_max=0.3))) == pytest.approx(
        0.3
    )


@pytest.mark.parametrize(
    "bad", [{"steps": 0}, {"batch_size": -1}, {"kl_schedule": "cosine"}, {"lr": 0.0}]
)
def test_train_config_rejects_impossible_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad)


def test_model_config_rejects_negative_sizes():
    with pytest.raises(ValueError, match="latent_dim"):
        ModelConfig(vocab_size=10, latent_dim=-4)


def _assert_scan_matches_autodiff(scan, step, gates: int, with_cell: bool) -> None:
    """scan (gru_scan, lstm_scan) gives the outputs, and through its custom VJP the gradients,
    that JAX derives for the plain masked recurrence of step (state carried where masked); the
    loss reads the outputs and every part of the final state."""
    L, B, H = 7, 5, 4
    k = jax.random.split(jax.random.key(0), 8)
    xp = jax.random.normal(k[0], (L, B, gates * H))
    h0 = jax.random.normal(k[1], (B, H))
    state = (h0, jax.random.normal(k[6], (B, H))) if with_cell else h0
    wh = jax.random.normal(k[2], (H, gates * H)) * 0.5
    bh = jax.random.normal(k[3], (gates * H,)) * 0.1
    mask = jax.random.uniform(k[4], (L, B)) > 0.3
    assert not mask.all() and mask.any()
    wy = jax.random.normal(k[5], (L, B, H))
    wc = jax.random.normal(k[7], (B, H))

    def plain(xp, state, mask, wh, bh):
        def body(s, inputs):
            x_t, m_t = inputs
            new = step(x_t, s, wh, bh)
            s = jax.tree.map(lambda a, b: jnp.where(m_t[:, None], a, b), new, s)
            return s, jax.tree.leaves(s)[0]

        last, ys = jax.lax.scan(body, state, (xp, mask))
        return ys, last

    def loss(fn):
        def f(xp, state, wh, bh):
            ys, last = fn(xp, state, mask, wh, bh)
            h, *c = jax.tree.leaves(last)
            return jnp.sum(wy * jnp.sin(ys)) + jnp.sum(h**2) + sum(jnp.sum(wc * x) for x in c)

        return f

    want_out = jax.tree.leaves(plain(xp, state, mask, wh, bh))
    got_out = jax.tree.leaves(scan(xp, state, mask, wh, bh))
    for a, b in zip(want_out, got_out, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    want = jax.grad(loss(plain), argnums=(0, 1, 2, 3))(xp, state, wh, bh)
    got = jax.grad(loss(scan), argnums=(0, 1, 2, 3))(xp, state, wh, bh)
    names = ("xp", "h0", "c0", "wh", "bh") if with_cell else ("xp", "h0", "wh", "bh")
    for name, a, b in zip(names, jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5, err_msg=name)


def test_gru_scan_hand_written_backward_matches_autodiff():
    """gru_scan's custom VJP (one matmul per reverse step, weight gradient after the loop)
    gives the gradients JAX derives for the plain masked recurrence."""
    from molvae.models.gru import _gru_step, gru_scan

    _assert_scan_matches_autodiff(gru_scan, _gru_step, 3, with_cell=False)


@pytest.mark.parametrize("coupled", [False, True], ids=["lstm", "cifg"])
def test_lstm_scan_hand_written_backward_matches_autodiff(coupled):
    """lstm_scan's custom VJP gives the gradients JAX derives for the plain masked recurrence,
    through the outputs and both parts of the final state; with coupled gates (CIFG) too."""
    from molvae.models.lstm import _cell, lstm_scan

    def step(x_t, hc, wh, bh):
        return _cell(x_t, *hc, wh, bh, "float32", coupled)[:2]

    def scan(xp, state, mask, wh, bh):
        return lstm_scan(xp, state, mask, wh, bh, coupled=coupled)

    _assert_scan_matches_autodiff(scan, step, 3 if coupled else 4, with_cell=True)


def test_cifg_is_an_lstm_whose_forget_gate_reads_minus_the_input_gate():
    """A CIFG step equals the full LSTM's with the forget gate's pre-activation set to minus the
    input gate's (sigmoid(-a) = 1 - sigmoid(a)), and CIFG starts with the LSTM's forget gate."""
    from molvae.models.lstm import CIFG, LSTM, _cell, _lstm_fwd

    B, H = 3, 5
    k = jax.random.split(jax.random.key(2), 5)
    xp = jax.random.normal(k[0], (B, 3 * H))
    h, c = jax.random.normal(k[1], (B, H)), jax.random.normal(k[2], (B, H))
    wh = jax.random.normal(k[3], (H, 3 * H)) * 0.5
    bh = jax.random.normal(k[4], (3 * H,)) * 0.1

    def four(a):  # (i, g, o) -> (i, -i, g, o) along the last axis
        i, g, o = jnp.split(a, 3, axis=-1)
        return jnp.concatenate([i, -i, g, o], axis=-1)

    got = _cell(xp, h, c, wh, bh, "float32", True)[:2]
    want = _cell(four(xp), h, c, four(wh), four(bh), "float32", False)[:2]
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    cifg = CIFG(4, H, rngs=nnx.Rngs(0))
    lstm = LSTM(4, H, rngs=nnx.Rngs(0))
    assert cifg.wh.shape == (H, 3 * H) and lstm.wh.shape == (H, 4 * H)
    f_cifg = 1 - jax.nn.sigmoid(cifg.bh[:H])
    f_lstm = jax.nn.sigmoid(lstm.bh[H : 2 * H])
    np.testing.assert_allclose(f_cifg, f_lstm, rtol=1e-6)
    # the backward pass derives f = 1 - i: the forward keeps no forget-gate residual
    mask = jnp.ones((4, B), bool)
    xs = jax.random.normal(k[0], (4, B, 3 * H))
    gates = _lstm_fwd(xs, h, c, mask, wh, bh, "float32", True)[1][2]
    assert gates[1] is None and gates[0].shape == (4, B, H)


@pytest.mark.parametrize("decoder", ["gru", "cifg"])
def test_bfloat16_matmuls_stay_close_to_float32(decoder):
    """model.dtype=bfloat16 rounds the recurrent matmul operands only (the GRU's, and the CIFG's
    of experiment=moses_gpu with its hand-written backward pass): same parameters, logits and
    gradients within bfloat16 rounding of the float32 model's."""
    f32 = _model(True, 2, decoder)
    cfg16 = dataclasses.replace(f32.cfg, dtype="bfloat16")
    b16 = VAE(cfg16, rngs=nnx.Rngs(0))
    nnx.update(b16, nnx.state(f32, nnx.Param))
    tokens = jnp.array([[1, 5, 6, 7, 2, 0], [1, 8, 9, 10, 11, 2]], jnp.int32)
    lengths = jnp.array([4, 5])

    def loss(model):
        logits, mu, logvar = model(tokens, lengths, jax.random.key(0))
        return jnp.mean(jax.nn.log_softmax(logits)[..., 3]) + jnp.mean(mu**2)

    (l32, g32), (l16, g16) = (nnx.value_and_grad(loss)(m) for m in (f32, b16))
    logits = [m(tokens, lengths, jax.random.key(0))[0] for m in (f32, b16)]
    assert logits[1].dtype == jnp.float32
    np.testing.assert_allclose(logits[1], logits[0], atol=0.05)
    assert float(l16) == pytest.approx(float(l32), rel=0.02)
    a = jnp.concatenate([x.ravel() for x in jax.tree.leaves(g32)])
    b = jnp.concatenate([x.ravel() for x in jax.tree.leaves(g16)])
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a)) < 0.05


@pytest.mark.parametrize("reverse", [False, True])
def test_prefetch_scan_gives_lax_scan_results(reverse):
    """prefetch_scan (each step's inputs read one step ahead, through the carry) is lax.scan."""
    from molvae.models.gru import prefetch_scan

    k = jax.random.split(jax.random.key(1), 2)
    xs = (jax.random.normal(k[0], (6, 3, 2)), jax.random.uniform(k[1], (6, 3)) > 0.5)

    def body(c, x):
        c = jnp.tanh(c * 0.9 + x[0].sum(-1)) + x[1]
        return c, (c * 2.0, x[0])

    want = jax.lax.scan(body, jnp.zeros(3), xs, reverse=reverse)
    got = prefetch_scan(body, jnp.zeros(3), xs, reverse=reverse)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_tune_allocator_is_idempotent_and_can_be_switched_off(monkeypatch):
    import molvae.runtime as rt

    first = rt.tune_allocator()
    assert isinstance(first, bool) and rt.tune_allocator() is first
    monkeypatch.setattr(rt, "_done", None)
    monkeypatch.setenv("MOLVAE_TUNE_MALLOC", "0")
    assert rt.tune_allocator() is False
    monkeypatch.setattr(rt, "_done", first)


AMX_CPU = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AVX2_CPU = "processor\t: 0\nflags\t\t: fpu sse2 fma avx avx2\n"
ARM_CPU = "processor\t: 0\nFeatures\t: fp asimd bf16\n"


def test_bfloat16_on_a_cpu_without_bfloat16_units_is_flagged_as_slower(monkeypatch, caplog):
    """runtime.dtype_advice warns for model.dtype=bfloat16 only on an x86 CPU whose flags lack
    both avx512_bf16 and amx_bf16 (measured 0.80x float32 there); training logs it."""
    import molvae.runtime as rt
    from molvae.training import loop

    assert rt.cpu_bfloat16_units(AMX_CPU) is True
    assert rt.cpu_bfloat16_units(AVX2_CPU.replace("avx2", "avx2 avx512_bf16")) is True
    assert rt.cpu_bfloat16_units(AVX2_CPU) is False
    assert rt.cpu_bfloat16_units(ARM_CPU) is None  # not x86: unknown, no advice
    assert "model.dtype=float32" in rt.dtype_advice("bfloat16", "cpu", AVX2_CPU)
    for args in [
        ("bfloat16", "cpu", AMX_CPU),
        ("bfloat16", "cpu", ARM_CPU),
        ("float32", "cpu", AVX2_CPU),
        ("bfloat16", "gpu", AVX2_CPU),
    ]:
        assert rt.dtype_advice(*args) is None, args

    monkeypatch.setattr(rt, "cpu_bfloat16_units", lambda cpuinfo=None: False)
    cfg = ModelConfig(vocab_size=12, embed_dim=8, enc_hidden=8, latent_dim=4, dec_hidden=8)
    with caplog.at_level("WARNING", logger="molvae.training.loop"):
        loop._initial_state(cfg, TrainConfig(), None)
        assert "without bfloat16 matmul units" not in caplog.text
        loop._initial_state(dataclasses.replace(cfg, dtype="bfloat16"), TrainConfig(), None)
    assert "without bfloat16 matmul units" in caplog.text


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc allocator settings")
def test_release_memory_gives_the_tuned_heaps_high_water_mark_back():
    """Under tune_allocator a freed 400 MB block stays resident (the heap is never trimmed);
    release_memory returns it. In a fresh process: the settings must precede any threads."""
    code = """
import numpy as np
from molvae import runtime
def rss():
    return int([l for l in open("/proc/self/status") if l.startswith("VmRSS")][0].split()[1]) >> 10
assert runtime.tune_allocator()
before = rss()
block = np.ones(400 << 20, np.uint8); del block
kept = rss()
assert runtime.release_memory()
print(kept - before, rss() - before)
"""
    env = dict(os.environ, MOLVAE_TUNE_MALLOC="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    kept, released = map(int, out.stdout.split())
    assert kept > 350 and released < 50, (kept, released)


def test_draw_follows_the_softmax_and_never_draws_a_masked_token():
    """The inverse-CDF draw: frequencies match softmax(logits) (chi-square, 20k rows each),
    -inf logits (pad, bos) are never drawn, and row i's draw depends only on its key and t."""
    from scipy import stats

    from molvae.models.vae import _draw

    probs = np.array([0.0, 0.0, 0.05, 0.15, 0.3, 0.5])
    logits = jnp.log(jnp.asarray(probs, jnp.float32))[None].repeat(20000, 0)
    keys = jax.random.split(jax.random.key(7), 20000)
    for t in (0, 5):
        counts = np.bincount(np.asarray(_draw(keys, jnp.int32(t), logits)), minlength=6)
        assert counts[:2].sum() == 0
        assert stats.chisquare(counts[2:], 20000 * probs[2:]).pvalue > 1e-3
    one = _draw(keys[:1], jnp.int32(3), logits[:1])
    assert int(one[0]) == int(_draw(keys, jnp.int32(3), logits)[0])
    # all mass on the last token: drawn even when u is close to 1
    last = jnp.full((64, 6), -jnp.inf).at[:, -1].set(0.0)
    assert (np.asarray(_draw(keys[:64], jnp.int32(0), last)) == 5).all()


def test_mixed_dense_runs_every_matmul_on_bfloat16_operands_with_float32_sums():
    """dense(..., 'bfloat16'): the forward and both backward matmuls take bfloat16 operands and
    sum in float32 (the form CPUs and accelerators run fast); values and gradients stay within
    bfloat16 rounding of float32."""
    from molvae.models.gru import dense

    kx, kw = jax.random.split(jax.random.key(3))
    x = jax.random.normal(kx, (4, 6, 32))
    w = jax.random.normal(kw, (32, 48)) / 6

    def loss(x, w, dtype):
        return jnp.sum(jnp.sin(dense(x, w, dtype)))

    grad = jax.grad(loss, argnums=(0, 1))
    jaxpr = jax.make_jaxpr(lambda x, w: grad(x, w, "bfloat16"))(x, w)
    dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
    dots += [
        e
        for eq in jaxpr.jaxpr.eqns
        for sub in jax.extend.core.jaxprs_in_params(eq.params)
        for e in sub.eqns
        if e.primitive.name == "dot_general"
    ]
    assert len(dots) == 3  # forward, d/dx, d/dw
    for e in dots:
        assert [v.aval.dtype for v in e.invars] == [jnp.bfloat16, jnp.bfloat16]
        assert e.outvars[0].aval.dtype == jnp.float32
    y32, y16 = dense(x, w), dense(x, w, "bfloat16")
    assert y16.dtype == jnp.float32 and y16.shape == (4, 6, 48)
    np.testing.assert_allclose(y16, y32, atol=0.05)
    for a, b in zip(grad(x, w, "float32"), grad(x, w, "bfloat16"), strict=True):
        assert b.dtype == jnp.float32 and b.shape == a.shape
        assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a)) < 0.02


def test_transformer_cached_steps_give_the_teacher_forced_logits_and_are_causal():
    """Step-by-step decoding through the key/value cache, rows at different positions, equals
    the parallel teacher-forced pass; a later token never changes an earlier position's logits."""
    model = _model(decoder="transformer")
    dec = model.decoder
    z = jax.random.normal(jax.random.key(1), (3, 4))
    tok = jax.random.randint(jax.random.key(2), (3, 9), 3, 12).at[:, 0].set(1)
    full = np.asarray(dec(z, tok))  # (3, 9, V)
    zin, cache = dec.initial_state(z, 9)
    steps = []
    for t in range(9):
        logits, cache = dec.step(tok[:, t], zin, cache, None, jnp.full((3,), t))
        steps.append(np.asarray(logits))
    np.testing.assert_allclose(np.stack(steps, 1), full, atol=1e-5)
    # Rows at different positions in one batch (continuous batching): row 1 runs two positions
    # behind row 0 and still gets its own teacher-forced logits.
    zin, cache = dec.initial_state(z[:2], 9)
    for t in range(7):
        pos = jnp.array([t + 2, t])
        logits, cache = dec.step(jnp.stack([tok[0, t + 2], tok[1, t]]), zin, cache, None, pos)
        np.testing.assert_allclose(np.asarray(logits[1]), full[1, t], atol=1e-5)
    changed = np.asarray(dec(z, tok.at[:, 5].set(3 if int(tok[0, 5]) != 3 else 4)))
    np.testing.assert_allclose(changed[:, :5], full[:, :5], atol=1e-6)
    assert np.abs(changed[0, 5:] - full[0, 5:]).max() > 1e-4


def test_model_config_rejects_an_unknown_decoder_and_indivisible_heads():
    with pytest.raises(ValueError, match="model.decoder"):
        ModelConfig(vocab_size=12, decoder="rnn")
    with pytest.raises(ValueError, match="dec_heads"):
        VAE(ModelConfig(vocab_size=12, dec_hidden=10, dec_heads=4, decoder="transformer"),
            rngs=nnx.Rngs(0))  # fmt: skip
