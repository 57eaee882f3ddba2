"""`molvae.optimize`: one call from a model and an objective to a scored, budgeted history."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from molvae import chem
from molvae.design import bo, gradient  # noqa: F401 - they register "bo" and "gradient"
from molvae.design import plots as report
from molvae.design.objectives import Objective, ScoreFn, make_objective
from molvae.design.oracle import Oracle
from molvae.design.registry import METHODS, get, method_config
from molvae.models.predictor import Predictor

if TYPE_CHECKING:
    from molvae.api import MolVAE

__all__ = ["METHODS", "OptimizeResult", "method_config", "optimize"]

log = logging.getLogger(__name__)


@dataclass
class OptimizeResult:
    """Outcome of `molvae.optimize`: every oracle call, in order, and helpers on top of it."""

    history: pd.DataFrame  # smiles, score, call, round, source, status
    objective: str
    method: str
    budget: int
    seed: int
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    # of `seconds`, the time spent inside the objective; the rest is the search's own cost
    # (decoding, surrogate, acquisition, fine-tuning)
    objective_seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    direction: str = "maximize"  # or "minimize": the objective's quantity (score = -quantity)

    def top(self, k: int = 10, properties: bool = True) -> pd.DataFrame:
        """The k best distinct molecules: smiles, score, call (+ RDKit properties)."""
        scored = self.history.dropna(subset=["score"]).drop_duplicates("smiles")
        top = scored.nlargest(k, "score", keep="first")[["smiles", "score", "call"]]
        top = top.reset_index(drop=True)
        if properties and len(top):
            top = pd.concat(
                [top, chem.properties(list(top["smiles"]), chem.TABLE_PROPERTIES)], axis=1
            )
        return top

    def curve(self, k: int = 10) -> pd.DataFrame:
        """Best and top-k mean score after each call."""
        return report.curve(self.history["score"].to_numpy(float), k)

    def auc(self, k: int = 10, freq: int = 100) -> float:
        """PMO AUC of the top-k mean over the budget (see `report.top_auc`)."""
        return float(report.top_auc(self.history["score"].to_numpy(float), self.budget, k, freq))

    def summary(self) -> dict[str, Any]:
        top = self.top(10, properties=False)["score"].tolist()
        return {
            "objective": self.objective,
            "direction": self.direction,
            "method": self.method,
            "budget": self.budget,
            "seed": self.seed,
            "oracle_calls": len(self.history),
            "top1": top[0] if top else float("nan"),
            "top3": top[:3],
            "top10_mean": float(pd.Series(top).mean()) if top else float("nan"),
            "auc_top10": self.auc(),
            "counts": dict(self.counts),
            "seconds": round(self.seconds, 2),
            "objective_seconds": round(self.objective_seconds, 2),
            # the search's own wall time per oracle call, the objective's excluded
            "search_ms_per_call": round(
                1e3 * (self.seconds - self.objective_seconds) / max(len(self.history), 1), 2
            ),
            "config": self.config,
        }


def optimize(
    model: MolVAE,
    objective: str | Objective | ScoreFn,
    method: str = "gradient",
    budget: int = 1000,
    seed: int = 0,
    *,
    history_path: str | Path | None = None,
    init_smiles: Sequence[str] | None = None,
    predictor: Predictor | None = None,
    progress: bool = True,
    **options: Any,
) -> OptimizeResult:
    """Search the model's latent space for molecules that maximise `objective`.

    objective: a built-in name ("qed", "plogp", "plogp_zinc", "logp", "sa" (scores -SA), ...), an
      Objective, or any callable list[str] -> list[float] (nan where it cannot score).
    method: a registered search (`molvae.design.registry.METHODS`): "gradient" (ascent through
      a predictor fitted on the scored molecules), "bo" (GP Bayesian optimization, trust
      region by default) or "lolbo" (bo in a latent space fine-tuned on the best molecules).
      `options` are the fields of its settings dataclass (GradientConfig / BOConfig /
      LOLBOConfig), e.g. batch_size=20, acquisition="ei", trust_region=False; an unknown one is a
      TypeError naming it, an unknown method a ValueError listing the registered searches.
    budget: distinct valid molecules the objective may see (repeats are free, invalid never
      charged). history_path: CSV written as calls are made; rerunning with the same path
      resumes without paying again (the search replays deterministically from the cache).
    init_smiles: molecules to score first (charged). predictor: a pretrained predictor whose
      targets include the objective's name (followed along the objective's sign: "sa" descends
      the predicted SA), used for the first gradient round; bo does not use it.
    """
    run = get(method, search=True).run
    cfg = method_config(method, **options)
    obj = make_objective(objective)
    oracle = Oracle(obj, budget, path=history_path)
    t0 = time.perf_counter()
    log.info("optimizing %s by %s, budget %d, seed %d", obj.name, method, budget, seed)
    init = list(init_smiles) if init_smiles else None
    run(model, oracle, cfg, seed=seed, init_smiles=init, predictor=predictor, progress=progress)
    result = OptimizeResult(
        history=oracle.history,
        objective=obj.name,
        method=method,
        budget=budget,
        seed=seed,
        counts=dict(oracle.counts),
        seconds=time.perf_counter() - t0,
        objective_seconds=oracle.score_s,
        config=dataclasses.asdict(cfg),
        direction=obj.direction,
    )
    s = result.summary()
    log.info(
        "%s/%s: %d calls, top-1 %.4g, top-10 mean %.4g, AUC %.4g, %.0f s; %s",
        obj.name,
        method,
        s["oracle_calls"],
        s["top1"],
        s["top10_mean"],
        s["auc_top10"],
        result.seconds,
        dict(oracle.counts),
    )
    return result
