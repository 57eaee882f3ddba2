"""Latent-space optimization: objectives, the budgeted oracle, predictor, gradient ascent, BO."""

import sys
import types

from molvae.optimize.constrained import constrained_optimize, lowest
from molvae.optimize.core import OptimizeResult, method_config, optimize
from molvae.optimize.objectives import (
    Constraint,
    Objective,
    ObjectiveError,
    constrained,
    make_objective,
    similarity,
    weight_target,
    weighted_sum,
)
from molvae.optimize.oracle import Oracle
from molvae.optimize.predictor import (
    FitConfig,
    fit_latent,
    fit_predictor,
    fit_run_predictor,
    load_predictor,
    predict,
    save_predictor,
)

__all__ = [
    "Constraint",
    "FitConfig",
    "Objective",
    "ObjectiveError",
    "OptimizeResult",
    "Oracle",
    "constrained",
    "constrained_optimize",
    "fit_latent",
    "fit_predictor",
    "fit_run_predictor",
    "load_predictor",
    "lowest",
    "make_objective",
    "method_config",
    "optimize",
    "predict",
    "save_predictor",
    "similarity",
    "weight_target",
    "weighted_sum",
]


class _CallableModule(types.ModuleType):
    """`molvae.optimize(...)` must call the function even once this package is imported: the
    import system binds the package, not the function, to the name `optimize` on `molvae`."""

    def __call__(self, *args, **kwargs) -> OptimizeResult:
        return optimize(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
