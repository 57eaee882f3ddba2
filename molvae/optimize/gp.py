"""Exact GP regression on latents with GPJax: ARD Matérn-5/2, MAP hyperparameters, EI and TS.

Hyperparameters are a plain dict of log-values fitted with Adam on the negative log marginal
likelihood plus weak log-normal priors (lengthscales around sqrt(D), after Hvarfner et al.
2024, so the GP stays sensible in 64-dimensional latents). Training sets are padded to a
power-of-two size with far-away points of huge noise (they change neither the posterior nor
the fit), so a BO run compiles a handful of shapes, not one per round.
"""

from __future__ import annotations

import contextlib
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

# GPJax recommends float64; molvae runs float32 with jitter and a noise floor instead.
warnings.filterwarnings("ignore", message=".* is not of type float64", module="gpjax")

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


def _model(p: dict, mask: jax.Array):
    kernel = gpx.kernels.Matern52(lengthscale=jnp.exp(p["log_ls"]), variance=jnp.exp(p["log_var"]))
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


def neg_log_posterior(p: dict, x: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """-(log marginal likelihood + log prior) per real data point."""
    data = gpx.Dataset(X=x, y=y[:, None])
    mll = _model(p, mask).condition(data).log_marginal_likelihood
    n = jnp.maximum(mask.sum(), 1.0)
    pad_const = -(mask.size - mask.sum()) * (math.log(PAD_NOISE) + 0.5 * math.log(2 * math.pi))
    return -(mll - pad_const + _log_prior(p)) / n


@partial(jax.jit, static_argnames=("steps",))
def _fit(p0, x, y, mask, *, steps: int, lr: float):
    tx = optax.adam(lr)

    def step(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(neg_log_posterior)(p, x, y, mask)
        upd, s = tx.update(g, s, p)
        p = optax.apply_updates(p, upd)
        p["log_ls"] = jnp.clip(p["log_ls"], math.log(1e-2), math.log(1e3))
        p["log_noise"] = jnp.clip(p["log_noise"], math.log(1e-4), math.log(10.0))
        return (p, s), loss

    (p, _), losses = jax.lax.scan(step, (p0, tx.init(p0)), None, length=steps)
    return p, losses


def _posterior(p, x, y, mask):
    return _model(p, mask).condition(gpx.Dataset(X=x, y=y[:, None]))


@jax.jit
def _marginals(p, x, y, mask, xq):
    dist = _posterior(p, x, y, mask)(xq, covariance="diagonal")
    return dist.mean, jnp.sqrt(jnp.maximum(dist.variance, 1e-12))


@partial(jax.jit, static_argnames=("n",))
def _joint_samples(p, x, y, mask, xq, key, *, n: int):
    """n draws of f at xq from the joint posterior, (n, len(xq))."""
    return _posterior(p, x, y, mask)(xq, covariance="dense").sample(key, (n,))


def expected_improvement(mean: jax.Array, std: jax.Array, best: jax.Array) -> jax.Array:
    """Analytic EI for maximisation."""
    u = (mean - best) / std
    return std * (u * norm.cdf(u) + norm.pdf(u))


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
        rows = max(32, 1 << (len(y) - 1).bit_length())
        xp = np.full((rows, x.shape[1]), PAD_AT, np.float32)
        xp[: len(x)] = x
        xp[len(x) :, 0] += PAD_AT * np.arange(rows - len(x))  # pads far from each other too
        yp = np.zeros(rows, np.float32)
        yp[: len(y)] = (y - y_mean) / y_std
        mask = np.arange(rows) < len(y)
        p0 = params if params is not None else init_params(x.shape[1])
        p, _ = _fit(p0, xp, yp, mask, steps=steps, lr=lr)
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
            self.params, self.x, self.y, self.mask, jnp.asarray(xq, jnp.float32),
            jax.random.key(seed), n=n,
        )
        return np.asarray(f)

    def ei_fn(self, best: float):
        """EI as a differentiable function of one point x (D,), for best in y's units."""
        b = (best - self.y_mean) / self.y_std
        p, x, y, mask = self.params, self.x, self.y, self.mask

        def ei(xq: jax.Array) -> jax.Array:
            dist = _posterior(p, x, y, mask)(xq[None], covariance="diagonal")
            std = jnp.sqrt(jnp.maximum(dist.variance, 1e-12))
            return expected_improvement(dist.mean, std, b)[0]

        return ei

    @property
    def lengthscales(self) -> np.ndarray:
        return np.exp(np.asarray(self.params["log_ls"]))
