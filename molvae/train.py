"""Deprecated: `molvae.train` moved to `molvae.training` (see README: Layout).
This alias re-exports the old public names for one release and warns; it sits outside the layers
contract (nothing in molvae imports it)."""

import warnings

from molvae.models.losses import elbo_terms, gaussian_kl, sequence_nll  # noqa: F401
from molvae.store.checkpoints import CheckpointError, restore_into  # noqa: F401
from molvae.training import *  # noqa: F401,F403

warnings.warn(
    "molvae.train is deprecated (removed in the next release); use molvae.training",
    DeprecationWarning,
    stacklevel=2,
)
