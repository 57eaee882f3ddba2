"""Exact GP regression on latents with GPJax: ARD Matérn-5/2, MAP hyperparameters, EI and TS.

Hyperparameters are a plain dict of log-values fitted with Adam on the negative log marginal
likelihood plus weak log-normal priors (lengthscales around sqrt(D), after Hvarfner et al.
2024, so the GP stays sensible in 64-dimensional latents). Training sets are padded to a
power-of-two size with far-away points of huge noise (they change neither the posterior nor
the fit), so a BO run compiles a handful of shapes, not one per round.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from functools import partial, wraps

import gpjax as gpx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.stats import norm

log = logging.getLogger(__name__)
PAD_NOISE, PAD_AT, MIN_NOISE, JITTER = 1e3, 1e4, 1e-3, 1e-4


def one_blas_thread(fn):
    """Run fn with single-threaded OpenBLAS (XLA's CPU Cholesky calls it): on a busy machine
    multi-threaded BLAS spins against other work and a 512 x 512 Cholesky takes 0.6 s, not 8 ms."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed depends on it
        threadpool_limits = None

    @wraps(fn)
    def inner(*args, **kwargs):
        ctx = threadpool_limits(1, "blas") if threadpool_limits else contextlib.nullcontext()
        with ctx:
            return fn(*args, **kwargs)

    return inner


def init_params(dim: int) -> dict[str, jax.Array]:
    """Log-hyperparameters at their prior modes (targets are standardised)."""
    return {
        "log_ls": jnp.full(dim, math.sqrt(2) + 0.5 * math.log(dim), jnp.float32),
        "log_var": jnp.zeros((), jnp.float32),
        "log_noise": jnp.full((), math.log(0.1), jnp.float32),
        "mean": jnp.zeros((), jnp.float32),
    }


class MaternByMatmul(gpx.kernels.computations.AbstractKernelComputation):
    """Matérn-5/2 cross-covariances from matmul distances of ARD-scaled inputs.

    GPJax's dense engine evaluates the kernel pair by pair, materialising (N, M, D) tensors
    whose gradients dominate hyperparameter fitting in 64-dimensional latents (~0.2 s per step
    at N = 512); |a|^2 + |b|^2 - 2 a.b is one matmul. Same kernel, same values.
    """

    def _cross_covariance(self, kernel, x: jax.Array, y: jax.Array) -> jax.Array:
        ls = gpx.parameters.val(kernel.lengthscale)
        a, b = x / ls, y / ls
        d2 = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
        tau = jnp.sqrt(jnp.maximum(d2, 0.0) + 1e-12)
        s5 = math.sqrt(5.0)
        return (
            gpx.parameters.val(kernel.variance)
            * (1 + s5 * tau + 5 / 3 * tau**2)
            * jnp.exp(-s5 * tau)
        )


def _model(p: dict, mask: jax.Array):
    kernel = gpx.kernels.Matern52(
        lengthscale=jnp.exp(p["log_ls"]),
        variance=jnp.exp(p["log_var"]),
        compute_engine=MaternByMatmul(),
    )
    prior = gpx.gps.Prior(
        mean_function=gpx.mean_functions.Constant(p["mean"]), kernel=kernel, jitter=JITTER
    )
    noise = jnp.where(mask, jnp.exp(p["log_noise"]) + MIN_NOISE, PAD_NOISE)  # (N,)
    return prior * gpx.likelihoods.Gaussian(obs_stddev=noise)


def _log_prior(p: dict) -> jax.Array:
    d = p["log_ls"].shape[0]
    ls = -0.5 * jnp.sum(jnp.square((p["log_ls"] - math.sqrt(2) - 0.5 * math.log(d)) / math.sqrt(3)))
    noise = -0.5 * jnp.square((p["log_noise"] - math.log(0.1)) / 2.0)
    var = -0.5 * jnp.square(p["log_var"] / 2.0)
    return ls + noise + var


def _dataset(x: jax.Array, y: jax.Array) -> gpx.Dataset:
    with warnings.catch_warnings():  # GPJax advises float64; float32 + jitter + noise floor here
        warnings.simplefilter("ignore", UserWarning)
        return gpx.Dataset(X=x, y=y[:, None])


def neg_log_posterior(p: dict, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """-(log marginal likelihood + log prior) per real data point."""
    mll = _model(p, mask).condition(_dataset(x, y)).log_marginal_likelihood
    n = jnp.maximum(mask.sum(), 1.0)
    pad_const = -(mask.size - mask.sum()) * (math.log(PAD_NOISE) + 0.5 * math.log(2 * math.pi))
    return -(mll - pad_const + _log_prior(p)) / n


@jax.jit
def _fit(p0, x, y, mask, steps, lr):
    """`steps` Adam steps (a traced count: one compilation per training-set size)."""
    tx = optax.adam(lr)

    def step(_, carry):
        p, s = carry
        g = jax.grad(neg_log_posterior)(p, x, y, mask)
        upd, s = tx.update(g, s, p)
        p = optax.apply_updates(p, upd)
        p["log_ls"] = jnp.clip(p["log_ls"], math.log(1e-2), math.log(1e3))
        p["log_noise"] = jnp.clip(p["log_noise"], math.log(1e-4), math.log(10.0))
        return p, s

    p, _ = jax.lax.fori_loop(0, steps, step, (p0, tx.init(p0)))
    return p


def _posterior(p, x, y, mask):
    return _model(p, mask).condition(_dataset(x, y))


@jax.jit
def _marginals(p, x, y, mask, xq):
    dist = _posterior(p, x, y, mask)(xq, covariance="diagonal")
    return dist.mean, jnp.sqrt(jnp.maximum(dist.variance, 1e-12))


@partial(jax.jit, static_argnames=("n",))
def _joint_samples(p, x, y, mask, xq, key, *, n: int):
    """n draws of f at xq from the joint posterior, (n, len(xq))."""
    with warnings.catch_warnings():  # numpyro's is_prng_key deprecation, inside GPJax
        warnings.simplefilter("ignore", DeprecationWarning)
        return _posterior(p, x, y, mask)(xq, covariance="dense").sample(key, (n,))


@partial(jax.jit, static_argnames=("steps",))
def _ei_ascent(p, x, y, mask, best, x0, lo, hi, *, steps: int, lr: float = 0.02):
    post = _posterior(p, x, y, mask)  # factorised once, outside the vmap over points

    def ei(xq):  # one point (D,) -> EI
        dist = post(xq[None], covariance="diagonal")
        std = jnp.sqrt(jnp.maximum(dist.variance, 1e-12))
        return expected_improvement(dist.mean, std, best)[0]

    grad, tx = jax.vmap(jax.grad(ei)), optax.adam(lr)

    def step(carry, _):
        xs, s = carry
        upd, s = tx.update(-grad(xs), s, xs)
        return (jnp.clip(optax.apply_updates(xs, upd), lo, hi), s), None

    (xs, _), _ = jax.lax.scan(step, (x0, tx.init(x0)), None, length=steps)
    return xs


@partial(jax.jit, static_argnames=("q",))
def _believer_ei(p, x, y, mask, xq, best, *, q: int):
    """Indices of q candidates chosen greedily by EI, each choice fantasised as observed at its
    posterior mean (Kriging believer): the variance around it drops, so the batch spreads out."""
    dist = _posterior(p, x, y, mask)(xq, covariance="dense")
    mean, cov = dist.mean, dist.covariance()
    noise = jnp.square(jnp.exp(p["log_noise"]) + MIN_NOISE)

    def pick(carry, _):
        cov, taken = carry
        std = jnp.sqrt(jnp.maximum(jnp.diagonal(cov), 1e-12))
        i = jnp.argmax(jnp.where(taken, -jnp.inf, expected_improvement(mean, std, best)))
        c = cov[:, i]
        return (cov - jnp.outer(c, c) / (c[i] + noise), taken.at[i].set(True)), i

    _, idx = jax.lax.scan(pick, (cov, jnp.zeros(xq.shape[0], bool)), None, length=q)
    return idx


def expected_improvement(mean: jax.Array, std: jax.Array, best: jax.Array) -> jax.Array:
    """Analytic EI for maximisation."""
    u = (mean - best) / std
    return std * (u * norm.cdf(u) + norm.pdf(u))


def _finite(params: dict) -> bool:
    return all(bool(np.isfinite(np.asarray(v)).all()) for v in params.values())


@dataclass
class GP:
    """A fitted exact GP on (x, y): predictions, EI and Thompson samples in y's units."""

    params: dict
    x: jax.Array  # (N_pad, D), padded
    y: jax.Array  # (N_pad,), standardised
    mask: jax.Array  # (N_pad,) 1 for real points
    y_mean: float
    y_std: float

    @classmethod
    @one_blas_thread
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        params: dict | None = None,
        steps: int = 200,
        lr: float = 0.05,
    ) -> GP:
        """Fit hyperparameters (warm-started from `params`) on finite (x, y) pairs."""
        x, y = np.asarray(x, np.float32), np.asarray(y, np.float64)
        ok = np.isfinite(y)
        x, y = x[ok], y[ok]
        if len(y) < 2:
            raise ValueError(f"a GP needs at least 2 scored points, got {len(y)}")
        y_mean, y_std = float(y.mean()), float(y.std()) or 1.0
        rows = max(64, 1 << (len(y) - 1).bit_length())
        xp = np.full((rows, x.shape[1]), PAD_AT, np.float32)
        xp[: len(x)] = x
        xp[len(x) :, 0] += PAD_AT * np.arange(rows - len(x))  # pads far from each other too
        yp = np.zeros(rows, np.float32)
        yp[: len(y)] = (y - y_mean) / y_std
        mask = np.arange(rows) < len(y)
        p0 = params if params is not None else init_params(x.shape[1])
        p = _fit(p0, xp, yp, mask, jnp.int32(steps), jnp.float32(lr))
        jax.block_until_ready(p)  # finish inside one_blas_thread (dispatch is asynchronous)
        if not _finite(p) and params is not None:  # a warm start gone bad: from the prior modes
            # (kept, such a fit made every later proposal nan, and nan latents decode to nothing)
            log.info("warm-started GP fit diverged on %d points; refitting from the prior modes",
                     len(y))  # fmt: skip
            p = _fit(init_params(x.shape[1]), xp, yp, mask, jnp.int32(steps), jnp.float32(lr))
        if not _finite(p):  # the prior modes themselves: a sensible, unfitted GP
            log.warning(
                "GP hyperparameter fit diverged on %d points; using the prior modes", len(y)
            )
            p = init_params(x.shape[1])
        return cls(p, jnp.asarray(xp), jnp.asarray(yp), jnp.asarray(mask), y_mean, y_std)

    @one_blas_thread
    def predict(self, xq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and std of f at xq (n, D), in y's units."""
        m, s = _marginals(self.params, self.x, self.y, self.mask, jnp.asarray(xq, jnp.float32))
        return np.asarray(m) * self.y_std + self.y_mean, np.asarray(s) * self.y_std

    @one_blas_thread
    def thompson(self, xq: np.ndarray, n: int, seed: int) -> np.ndarray:
        """n joint posterior draws of f at xq, (n, len(xq)), standardised units."""
        f = _joint_samples(
            self.params,
            self.x,
            self.y,
            self.mask,
            jnp.asarray(xq, jnp.float32),
            jax.random.key(seed),
            n=n,
        )
        return np.asarray(f)

    @one_blas_thread
    def batch_ei(self, xq: np.ndarray, q: int, best: float) -> np.ndarray:
        """Indices into xq of a batch of q points by greedy Kriging-believer EI."""
        b = jnp.float32((best - self.y_mean) / self.y_std)
        args = (self.params, self.x, self.y, self.mask, jnp.asarray(xq, jnp.float32), b)
        return np.asarray(_believer_ei(*args, q=q))

    @one_blas_thread
    def maximize_ei(
        self, x0: np.ndarray, best: float, lo: np.ndarray, hi: np.ndarray, steps: int = 30
    ) -> np.ndarray:
        """Projected Adam ascent of EI (incumbent `best`, y's units) from every row of x0."""
        b = jnp.float32((best - self.y_mean) / self.y_std)
        args = (self.params, self.x, self.y, self.mask, b)
        out = _ei_ascent(*args, jnp.asarray(x0, jnp.float32), lo, hi, steps=steps)
        return np.asarray(out)

    @property
    def lengthscales(self) -> np.ndarray:
        return np.exp(np.asarray(self.params["log_ls"]))
