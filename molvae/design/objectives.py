"""Objectives: built-in molecular scores, user callables, weighted sums and constraints.

Every objective maps a list of SMILES to one float per SMILES, higher is better, nan for a
molecule it cannot score. `Objective.sign` says how the score relates to the quantity the
objective is named after: +1 the score is that quantity (maximised), -1 its negative (the
quantity is minimised; `direction` is then "minimize").

Built-ins (all RDKit, as `molvae.chem` computes them):

  qed          QED (Bickerton et al. 2012), 0..1
  logp         Wildman-Crippen logP
  plogp        penalized logP = logP - SA - ring penalty (unnormalised; GCPN, LIMO)
  plogp_zinc   penalized logP with each term standardised on ZINC250k (JT-VAE's definition);
               alias plogp_zinc_norm
  sa           *minus* the synthetic accessibility score: SA is minimised, so the objective is
               named "sa" with sign -1 and its score is -SA (higher is better, as always)
  weight       molecular weight (maximised; usually you want weight_target)
  weight_target  exp(-((MW - target) / width)^2 / 2): 1 at the target weight (default 350 Da)
  similarity   Tanimoto similarity (Morgan r=2, 1024 bits) to the `target` SMILES
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from molvae import chem

ScoreFn = Callable[[list[str]], Sequence[float]]
_OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_SIGN = {"qed": 1.0, "logp": 1.0, "plogp": 1.0, "plogp_zinc": 1.0, "sa": -1.0, "weight": 1.0}
ALIASES = {"plogp_zinc_norm": "plogp_zinc", "penalized_logp": "plogp", "mw": "weight"}
BUILTINS = (*_SIGN, "plogp_zinc_norm", "weight_target", "similarity", "weighted")


class ObjectiveError(ValueError):
    """An objective that is unknown, misconfigured or breaks the list-in, list-out contract."""


@dataclass(frozen=True)
class Objective:
    """A named scoring function list[str] -> np.ndarray (higher is better, nan = unscored).

    `properties` names RDKit properties the objective is a function of (for predictors that
    can be pretrained on a dataset's labels); empty for black-box callables. `sign` is +1 when
    the score is the quantity `name` (maximised) and -1 when it is minus that quantity (`name`
    is minimised: `sa` scores -SA); a predictor of `name` is followed along sign * gradient.
    """

    fn: ScoreFn
    name: str
    properties: tuple[str, ...] = ()
    sign: float = 1.0

    def __post_init__(self) -> None:
        if self.sign not in (1.0, -1.0):
            raise ObjectiveError(f"objective {self.name!r}: sign must be +1 or -1, got {self.sign}")

    @property
    def direction(self) -> str:
        """Whether the search maximizes or minimizes the quantity `name`."""
        return "maximize" if self.sign > 0 else "minimize"

    def __call__(self, smiles: Sequence[str]) -> np.ndarray:
        return np.asarray(self.fn(list(smiles)), dtype=float)


# ----------------------------------------------------------------------------- built-ins


def _property(name: str, sign: float) -> ScoreFn:
    def score(smiles: list[str]) -> list[float]:
        return list(sign * chem.properties(smiles, (name,))[name].to_numpy())

    return score


def property_objective(name: str) -> Objective:
    """One RDKit property as an objective: `sa` has sign -1 and scores -SA (higher is better)."""
    name = ALIASES.get(name, name)
    if name not in _SIGN:
        raise ObjectiveError(f"objective.name: unknown property {name!r}; known: {sorted(_SIGN)}")
    return Objective(_property(name, _SIGN[name]), name, (name,), _SIGN[name])


def weight_target(target: float = 350.0, width: float = 50.0) -> Objective:
    """Gaussian-shaped score of the molecular weight around `target` Da (1 at the target)."""
    if not width > 0:
        raise ObjectiveError(f"objective.width must be > 0, got {width}")

    def score(smiles: list[str]) -> list[float]:
        mw = chem.properties(smiles, ("weight",))["weight"].to_numpy()
        return list(np.exp(-0.5 * np.square((mw - target) / width)))

    return Objective(score, f"weight_target({target:g},{width:g})", ("weight",))


def similarity(target: str) -> Objective:
    """Tanimoto similarity (Morgan radius 2, 1024 bits) to a target molecule."""
    can = chem.canonical(target) if isinstance(target, str) else None
    if can is None:
        raise ObjectiveError(f"objective.target must be a valid SMILES, got {target!r}")

    def score(smiles: list[str]) -> list[float]:
        return list(chem.similarity(smiles, can))

    return Objective(score, f"similarity({can})")


def weighted_sum(terms: Mapping[str | Objective, float] | Sequence[tuple]) -> Objective:
    """sum_i w_i * objective_i; a term may be a built-in name or an Objective.

    The name is the formula in the terms' quantities: {"qed": 1, "sa": 0.5} is
    "1*qed - 0.5*sa" (the score of `sa` is -SA)."""
    items = list(terms.items()) if isinstance(terms, Mapping) else [tuple(t) for t in terms]
    if not items:
        raise ObjectiveError("objective.terms must map at least one objective to a weight")
    parts = [(make_objective(o), float(w)) for o, w in items]

    def score(smiles: list[str]) -> np.ndarray:
        return sum(w * o(smiles) for o, w in parts)

    name = ""
    for o, w in parts:
        c = w * o.sign  # coefficient of the quantity o.name
        name += ("-" if c < 0 else "") if not name else (" - " if c < 0 else " + ")
        name += f"{abs(c):g}*{o.name}"
    props = tuple(dict.fromkeys(p for o, _ in parts for p in o.properties))
    return Objective(score, name, props)


# ----------------------------------------------------------------------------- constraints


@dataclass(frozen=True)
class Constraint:
    """`property op bound`, e.g. Constraint('sa', '<=', 4.0); property is an RDKit property."""

    prop: str
    op: str
    bound: float

    @classmethod
    def parse(cls, text: str) -> Constraint:
        m = re.fullmatch(r"\s*(\w+)\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*", text)
        if m is None:
            raise ObjectiveError(f"objective.constraints: {text!r} is not of the form 'qed >= 0.6'")
        prop = ALIASES.get(m[1], m[1])
        if prop not in chem.PROPERTIES:
            raise ObjectiveError(f"objective.constraints: {text!r} names no property ({m[1]!r})")
        return cls(prop, m[2], float(m[3]))

    def violation(self, values: np.ndarray) -> np.ndarray:
        """How far each value is on the wrong side of the bound (0 where satisfied)."""
        gap = values - self.bound if self.op in ("<=", "<") else self.bound - values
        return np.where(_OPS[self.op](values, self.bound), 0.0, np.maximum(gap, 1e-6))

    def __str__(self) -> str:
        return f"{self.prop} {self.op} {self.bound:g}"


def constrained(
    base: str | Objective | ScoreFn,
    constraints: Sequence[str | Constraint],
    penalty: float = 10.0,
) -> Objective:
    """base - penalty * (total constraint violation); feasible molecules keep the base score.

    With the default penalty, missing QED >= 0.6 by 0.1 costs 1.0. Use a large penalty for
    effectively hard constraints.
    """
    base = make_objective(base)
    cons = [c if isinstance(c, Constraint) else Constraint.parse(c) for c in constraints]
    if not penalty >= 0:
        raise ObjectiveError(f"objective.penalty must be >= 0, got {penalty}")
    props = tuple(dict.fromkeys(c.prop for c in cons))

    def score(smiles: list[str]) -> np.ndarray:
        table = chem.properties(smiles, props)
        excess = sum(c.violation(table[c.prop].to_numpy()) for c in cons)
        return base(smiles) - penalty * excess

    name = f"{base.name} s.t. " + " and ".join(map(str, cons))
    return Objective(score, name, tuple(dict.fromkeys((*base.properties, *props))), base.sign)


# ----------------------------------------------------------------------------- dispatch


def make_objective(
    spec: str | Objective | ScoreFn,
    *,
    target: str | float | None = None,
    width: float = 50.0,
    terms: Mapping[str, float] | None = None,
    constraints: Sequence[str] = (),
    penalty: float = 10.0,
) -> Objective:
    """An Objective from a built-in name (see the module docstring) or any callable.

    `target` is the SMILES for `similarity` or the weight in Da for `weight_target`; `terms`
    maps names to weights for `weighted`; `constraints` like ["qed >= 0.6", "sa <= 4"] apply
    to any objective. Raises ObjectiveError naming the problem.
    """
    if isinstance(spec, Objective):
        obj = spec
    elif callable(spec):
        obj = Objective(spec, getattr(spec, "__name__", type(spec).__name__))
    elif not isinstance(spec, str):
        raise ObjectiveError(f"objective must be a name or a callable, got {type(spec).__name__}")
    elif spec == "similarity":
        obj = similarity(target)  # type: ignore[arg-type]
    elif spec == "weight_target":
        obj = weight_target(350.0 if target is None else float(target), width)
    elif spec == "weighted":
        obj = weighted_sum(terms or {})
    elif ALIASES.get(spec, spec) in _SIGN:
        obj = property_objective(spec)
    else:
        raise ObjectiveError(
            f"objective.name: unknown objective {spec!r}; built-ins: {sorted(BUILTINS)}"
        )
    return constrained(obj, constraints, penalty) if constraints else obj
