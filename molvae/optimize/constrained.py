"""Constrained improvement from given molecules (JT-VAE protocol): raise a property while the
Tanimoto similarity to the starting molecule stays >= delta.

JT-VAE (Jin et al. 2018) starts from the 800 ZINC test molecules with the lowest penalized logP,
ascends the predictor's gradient from each latent, decodes along the way, and reports, per
delta, the success rate (some decoded molecule is similar enough and better) and the mean
improvement over the successes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from molvae import chem
from molvae.models.predictor import Predictor
from molvae.optimize.gradient import ascend
from molvae.optimize.objectives import Objective, make_objective
from molvae.optimize.oracle import Oracle
from molvae.optimize.predictor import (
    encode_valid,
    fit_run_predictor,
    load_predictor,
    predictor_info,
)

if TYPE_CHECKING:
    from molvae.api import MolVAE

log = logging.getLogger(__name__)


def lowest(smiles: Sequence[str], n: int = 800, prop: str = "plogp") -> list[str]:
    """The n valid molecules with the lowest `prop` (JT-VAE's starting set), lowest first."""
    values = chem.properties(list(smiles), (prop,))[prop].to_numpy()
    order = [i for i in np.argsort(values, kind="stable") if np.isfinite(values[i])]
    return [smiles[i] for i in order[:n]]


def run_predictor(model: MolVAE, prop: str) -> tuple[Predictor, int]:
    """The run folder's saved predictor if it predicts `prop`, else one fitted on its data."""
    info = predictor_info(model.run_dir) if model.run_dir else None
    if info and prop in info["config"]["targets"]:
        return load_predictor(model.run_dir), info["config"]["targets"].index(prop)
    log.info("fitting a %s predictor on the run's training molecules", prop)
    pred, _ = fit_run_predictor(model, [prop], save=False)
    return pred, 0


def constrained_optimize(
    model: MolVAE,
    smiles: Sequence[str],
    objective: str | Objective = "plogp",
    deltas: Sequence[float] = (0.4, 0.6),
    predictor: Predictor | None = None,
    target: int = 0,
    steps: int = 80,
    lr: float = 0.02,
    snapshots: int = 20,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict]:
    """Improve each molecule within similarity `delta`, for every delta in `deltas`.

    Returns one row per (molecule, delta): start, start_score, best, best_score, similarity,
    improvement (0 where no similar molecule improves), success; and a summary per delta:
    success rate, mean +- std improvement over successes, and over all molecules.
    """
    obj = make_objective(objective)
    if predictor is None:
        if not obj.properties or len(obj.properties) != 1:
            raise ValueError("pass a predictor for objectives other than a single RDKit property")
        predictor, target = run_predictor(model, obj.properties[0])
    mu, _, keep = encode_valid(model, smiles)
    starts = [smiles[i] for i in keep]
    oracle = Oracle(obj, budget=2**62)
    start_scores = oracle(starts, source="start")
    sign = -1.0 if obj.name.startswith("-") else 1.0  # "-sa": descend the predicted SA
    path = ascend(predictor, mu, target, steps, sign * lr, snapshots=snapshots)  # (S, n, Z)
    found = [model.decode(p) for p in tqdm(path, desc="decode", disable=not progress)]
    cands = [[f[i] for f in found] for i in range(len(starts))]  # per molecule, (S,)
    rows = []
    fps_start = chem.fingerprints(starts)
    for i, (s, c) in enumerate(zip(starts, cands, strict=True)):
        sc = oracle(c, source="candidate")
        sim = chem.tanimoto(chem.fingerprints(c), fps_start[i : i + 1])[:, 0]
        sim = np.where([bool(x) for x in c], sim, 0.0)
        for delta in deltas:
            rows.append(_best(s, start_scores[i], c, sc, sim, delta))
    table = pd.DataFrame(rows)
    summary = {"n": len(starts), "oracle_calls": oracle.n_calls, "objective": obj.name}
    summary["deltas"] = {str(d): _summary(table[table["delta"] == d]) for d in deltas}
    return table, summary


def _best(start, s0, cands, scores, sim, delta) -> dict:
    ok = (sim >= delta) & np.isfinite(scores) & (np.asarray(cands) != start)
    gain = np.where(ok, scores - s0, -np.inf)
    j = int(np.argmax(gain))
    success = bool(ok.any() and gain[j] > 0)
    return {
        "delta": delta,
        "start": start,
        "start_score": s0,
        "best": cands[j] if success else start,
        "best_score": scores[j] if success else s0,
        "similarity": float(sim[j]) if success else 1.0,
        "improvement": float(gain[j]) if success else 0.0,
        "success": success,
    }


def _summary(t: pd.DataFrame) -> dict:
    wins = t[t["success"]]["improvement"]
    return {
        "success_rate": float(t["success"].mean()) if len(t) else float("nan"),
        "improvement_mean": float(wins.mean()) if len(wins) else 0.0,
        "improvement_std": float(wins.std(ddof=0)) if len(wins) else 0.0,
        "improvement_mean_all": float(t["improvement"].mean()) if len(t) else float("nan"),
    }
