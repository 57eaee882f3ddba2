"""Deprecated: `molvae.sample` moved to `molvae.inference` (see README: Layout).
This alias re-exports the old public names for one release and warns; it sits outside the layers
contract (nothing in molvae imports it)."""

import warnings

from molvae.inference.latent import lerp, neighbourhood, prior, slerp  # noqa: F401

warnings.warn(
    "molvae.sample is deprecated (removed in the next release); use molvae.inference",
    DeprecationWarning,
    stacklevel=2,
)
