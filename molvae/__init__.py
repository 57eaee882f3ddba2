"""molvae: a SELFIES VAE in JAX + Flax NNX for molecule generation and latent-space optimization."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["load", "evaluate", "optimize", "__version__"]


def __getattr__(name: str):
    # Lazy: `import molvae` stays fast (no JAX start-up) until the API is used.
    if name == "load":
        from molvae.api import load

        return load
    if name == "evaluate":
        from molvae.evaluation.metrics import evaluate

        return evaluate
    if name == "optimize":
        from molvae.design.optimize import optimize

        return optimize
    raise AttributeError(f"module 'molvae' has no attribute {name!r}")
