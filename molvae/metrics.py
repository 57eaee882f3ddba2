"""Deprecated: `molvae.metrics` moved to `molvae.evaluation.metrics` (see README: Layout).
This alias re-exports the old public names for one release and warns; it sits outside the layers
contract (nothing in molvae imports it)."""

import warnings

from molvae.evaluation.metrics import *  # noqa: F401,F403
from molvae.evaluation.metrics import basic_metrics, evaluate  # noqa: F401

warnings.warn(
    "molvae.metrics is deprecated (removed in the next release); use molvae.evaluation.metrics",
    DeprecationWarning,
    stacklevel=2,
)
