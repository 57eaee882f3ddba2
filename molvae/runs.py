"""Deprecated: `molvae.runs` moved to `molvae.store / molvae.evaluation.run` (see README: Layout).
This alias re-exports the old public names for one release and warns; it sits outside the layers
contract (nothing in molvae imports it)."""

import warnings

from molvae.evaluation.run import evaluate_run, test_likelihood  # noqa: F401
from molvae.store.folder import *  # noqa: F401,F403
from molvae.store.names import *  # noqa: F401,F403
from molvae.store.params import flatten_tree  # noqa: F401

warnings.warn(
    "molvae.runs is deprecated (removed in the next release); use molvae.store, "
    "molvae.evaluation.run",
    DeprecationWarning,
    stacklevel=2,
)
