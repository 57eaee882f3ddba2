"""Property predictor: a small ensemble of MLPs from latent vectors to one or more properties."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


@dataclass(frozen=True)
class PredictorConfig:
    """Architecture of the predictor; `targets` names its outputs in order."""

    latent_dim: int
    targets: tuple[str, ...]
    hidden: tuple[int, ...] = (128, 128)
    n_models: int = 4  # ensemble members; their spread is the predictive uncertainty

    def __post_init__(self) -> None:
        if self.latent_dim <= 0 or self.n_models <= 0 or not self.targets:
            raise ValueError(f"predictor needs latent_dim, n_models > 0 and a target: {self}")
        if any(h <= 0 for h in self.hidden):
            raise ValueError(f"predictor.hidden sizes must be positive, got {self.hidden}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PredictorConfig:
        return cls(
            latent_dim=int(d["latent_dim"]),
            targets=tuple(str(t) for t in d["targets"]),
            hidden=tuple(int(h) for h in d["hidden"]),
            n_models=int(d["n_models"]),
        )


class Stats(nnx.Variable):
    """Target normalisation (mean, std); saved with the parameters, never trained."""


class EnsembleLinear(nnx.Module):
    """n_models independent dense layers applied at once: (M, B, din) -> (M, B, dout)."""

    def __init__(self, n_models: int, din: int, dout: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        keys = jax.random.split(rngs.params(), n_models)
        self.kernel = nnx.Param(jax.vmap(lambda k: init(k, (din, dout)))(keys))  # (M, din, dout)
        self.bias = nnx.Param(jnp.zeros((n_models, dout)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("mbi,mio->mbo", x, self.kernel[...]) + self.bias[...][:, None, :]


class Predictor(nnx.Module):
    """Ensemble MLP z -> properties. Outputs are standardised; `predict` returns real units."""

    def __init__(self, cfg: PredictorConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        sizes = (cfg.latent_dim, *cfg.hidden, len(cfg.targets))
        pairs = zip(sizes[:-1], sizes[1:], strict=True)
        self.layers = nnx.List([EnsembleLinear(cfg.n_models, a, b, rngs=rngs) for a, b in pairs])
        self.y_mean = Stats(jnp.zeros(len(cfg.targets)))
        self.y_std = Stats(jnp.ones(len(cfg.targets)))

    def scale_to(self, y) -> None:
        """Set the output scaling to the targets' mean and spread over their observed values,
        y (n, T) with nan where unknown (0 and 1 for a target with no value)."""
        y = np.asarray(y, np.float64).reshape(-1, len(self.cfg.targets))
        seen = np.isfinite(y)
        mean = [y[seen[:, t], t].mean() if seen[:, t].any() else 0.0 for t in range(y.shape[1])]
        std = [y[seen[:, t], t].std() if seen[:, t].any() else 1.0 for t in range(y.shape[1])]
        self.y_mean[...] = jnp.asarray(mean, jnp.float32)
        self.y_std[...] = jnp.asarray(np.maximum(std, 1e-6), jnp.float32)

    def __call__(self, z: jax.Array) -> jax.Array:
        """Standardised predictions of every member, (M, B, T), for z (B, Z) shared by all
        members or (M, B, Z), one batch per member (bootstrap training)."""
        x = z if z.ndim == 3 else jnp.broadcast_to(z, (self.cfg.n_models, *z.shape))
        for layer in self.layers[:-1]:
            x = nnx.silu(layer(x))  # smooth, so gradient ascent on z sees useful gradients
        return self.layers[-1](x)

    def predict(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Ensemble mean and spread in the targets' units, (B, T) each."""
        out = self(z) * self.y_std[...] + self.y_mean[...]  # (M, B, T)
        return out.mean(0), out.std(0)


def property_loss(predictor: Predictor, z: jax.Array, y: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean squared error on standardised targets over observed entries.

    z (M, B, Z) or (B, Z); y (M, B, T) or (B, T) in real units; mask like y (1 where observed).
    Missing targets (mask 0, y may be nan) contribute nothing.
    """
    pred = predictor(z)  # (M, B, T)
    y_n = (jnp.where(mask > 0, y, 0.0) - predictor.y_mean[...]) / predictor.y_std[...]
    err = jnp.square(pred - y_n) * mask
    return err.sum() / jnp.maximum(jnp.broadcast_to(mask, err.shape).sum(), 1.0)
