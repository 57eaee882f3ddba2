"""The registry of design methods: each registers its settings dataclass and one `run` function.

A budgeted search (gradient, bo, or any method added later) is one decorator away from
`molvae.optimize(..., method=NAME, **settings)`:

    @register("random", RandomConfig)
    def run_random(model, oracle, cfg, *, seed, init_smiles, predictor, progress) -> None:
        ...  # spend oracle's budget; the oracle records every call

`run` receives the model, the budgeted `Oracle` (its `.objective` is the Objective being
maximised), the validated settings, and keyword-only: seed, init_smiles (molecules to score
first, or None), predictor (a pretrained latent predictor, or None; a method may ignore it),
progress (show a progress bar). It returns nothing: the oracle's history is the result.

A task that is not a budgeted search (the constrained improvement of given molecules) registers
with `search=False`: `method_config` validates its settings, `molvae.optimize` refuses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from molvae.api import MolVAE
    from molvae.design.oracle import Oracle
    from molvae.models.predictor import Predictor


class Run(Protocol):
    """The one signature of a search method's run function."""

    def __call__(
        self,
        model: MolVAE,
        oracle: Oracle,
        cfg: Any,
        *,
        seed: int,
        init_smiles: Sequence[str] | None,
        predictor: Predictor | None,
        progress: bool,
    ) -> None: ...


@dataclass(frozen=True)
class Method:
    """A registered method: its name, settings dataclass and entry point."""

    name: str
    config: type
    run: Callable[..., Any]
    search: bool = True  # a budgeted search that molvae.optimize can run


METHODS: dict[str, Method] = {}


def register(name: str, config: type, *, search: bool = True) -> Callable[[Callable], Callable]:
    """Decorator registering `run` as method `name` with settings dataclass `config`.

    A name can be registered once (a ValueError otherwise); the function is returned unchanged.
    """
    if not dataclasses.is_dataclass(config) or not isinstance(config, type):
        raise TypeError(f"method {name!r}: config must be a dataclass type, got {config!r}")

    def decorate(run: Callable) -> Callable:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered ({METHODS[name].run})")
        METHODS[name] = Method(name, config, run, search)
        return run

    return decorate


def get(method: str, *, search: bool = False) -> Method:
    """The registered method `method` (with `search`, only a budgeted search will do)."""
    known = sorted(n for n, m in METHODS.items() if m.search or not search)
    if method not in known:
        if method in METHODS:
            raise ValueError(
                f"method {method!r} is not a budgeted search (see molvae.design."
                f"{METHODS[method].run.__name__}); searches: {known}"
            )
        raise ValueError(f"method must be one of {known}, got {method!r}")
    return METHODS[method]


def method_config(method: str, **options: Any) -> Any:
    """The settings dataclass of `method` built from `options` (lists become tuples) and
    validated by it; unknown option names are a TypeError naming them, an unknown method a
    ValueError listing the registered ones."""
    cls = get(method).config
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for method {method!r}; known: {sorted(known)}"
        )
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
