"""Latent geometry: prior draws, interpolation, neighbourhoods (numpy in, numpy out)."""

from __future__ import annotations

import jax
import numpy as np


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
