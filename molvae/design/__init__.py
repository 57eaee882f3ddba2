"""Design in the latent space: objectives, the budgeted oracle, the latent property predictor,
search methods behind one registry (gradient ascent, Bayesian optimization, LOL-BO), optimize()
and its result, the constrained (lead optimization) task.

A new search method registers its settings dataclass and run function with
`molvae.design.registry.register` and is then `molvae.optimize(..., method=its_name)`."""

from molvae.design.bo import BOConfig
from molvae.design.constrained import ConstrainedConfig, constrained_optimize, lowest
from molvae.design.gradient import GradientConfig
from molvae.design.lolbo import LOLBOConfig
from molvae.design.objectives import (
    Constraint,
    Objective,
    ObjectiveError,
    constrained,
    make_objective,
    similarity,
    weight_target,
    weighted_sum,
)
from molvae.design.optimize import OptimizeResult, optimize
from molvae.design.oracle import Oracle
from molvae.design.predictor import FitConfig, fit_latent, fit_predictor, fit_run_predictor, predict
from molvae.design.registry import METHODS, Method, method_config, register
from molvae.store.params import load_predictor, save_predictor

__all__ = [
    "METHODS",
    "BOConfig",
    "Constraint",
    "ConstrainedConfig",
    "FitConfig",
    "GradientConfig",
    "LOLBOConfig",
    "Method",
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
    "register",
    "save_predictor",
    "similarity",
    "weight_target",
    "weighted_sum",
]
