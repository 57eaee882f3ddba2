"""Evaluating a run folder: its samples scored by the MOSES metrics (metrics.json), and its
held-out compression (likelihood.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from molvae.api import load
from molvae.evaluation import metrics as m
from molvae.inference.calibration import per_symbol_calibration
from molvae.store.folder import dataset_of_run, read_samples, train_smiles_of_run, write_json_atomic
from molvae.store.names import EVAL_JSON, LIKELIHOOD_JSON, RUN_JSON, RunFolderError


def test_likelihood(
    run_dir: Path, n: int = 2000, k: int = 64, seed: int = 0, model: Any = None
) -> dict[str, float]:
    """Held-out compression: the run's first n test molecules scored by the importance-weighted
    bound (k samples). Writes likelihood.json: mean NLL per molecule in nats and bits, the
    ELBO's split into rate (KL(q(z|x) || p(z))) and distortion (E_q[-log p(x|z)]), and the
    percentiles of the per-symbol scores ("per_symbol", see MolVAE.anomaly_percentile)."""
    run_dir = Path(run_dir)
    ds = dataset_of_run(run_dir)
    if ds is None:
        raise RunFolderError(f"{run_dir}: no data config in {RUN_JSON}; no test set to score")
    model = model or load(run_dir)
    test = ds.test.smiles[:n]
    # invalid SMILES and symbols outside the vocabulary cannot be scored: nan rows
    out = model.log_likelihood(test, k=k, seed=seed, details=True, errors="nan")
    ok = np.isfinite(out["log_likelihood"])
    out = {name: v[ok] for name, v in out.items()}
    nats = float(-np.mean(out["log_likelihood"])) if ok.any() else float("nan")
    rate, dist = float(np.mean(out["rate"])), float(np.mean(out["distortion"]))
    ln2 = float(np.log(2.0))
    scores = {
        "n": int(ok.sum()),
        "skipped_out_of_vocabulary": int(len(test) - ok.sum()),
        "k": k,
        "nll_nats": nats,
        "nll_bits": nats / ln2,
        "rate_nats": rate,
        "rate_bits": rate / ln2,
        "distortion_nats": dist,
        "distortion_bits": dist / ln2,
        "elbo_nats": -(rate + dist),
    }
    if ok.any():  # held-out per-symbol scores: the calibration of model.anomaly_percentile
        where = f"the first {len(test)} test molecules of the run's data"
        scores["per_symbol"] = per_symbol_calibration(out["per_symbol"], k, seed, where)
    write_json_atomic(run_dir / LIKELIHOOD_JSON, scores)
    return scores


def evaluate_run(
    run_dir: Path,
    reference: str = "moses_sample",
    metrics: str = "basic",
    n_jobs: int | None = None,
) -> dict[str, float]:
    """Score samples.csv; novelty against the run's own training set. Writes metrics.json."""
    smiles = read_samples(run_dir)
    train = train_smiles_of_run(run_dir)
    if metrics == "basic":
        if train is None:
            raise RunFolderError(f"{run_dir}: no data config; use metrics=all with a reference")
        scores = m.basic_metrics(smiles, train, n_jobs=n_jobs, train_canonical=True)
    elif metrics == "all":
        scores = m.evaluate(
            smiles, reference=reference, train_smiles=train, n_jobs=n_jobs, train_canonical=True
        )
    else:
        raise ValueError(f"metrics must be 'basic' or 'all', got {metrics!r}")
    write_json_atomic(
        run_dir / EVAL_JSON, {"n_samples": len(smiles), "reference": reference, **scores}
    )
    return scores
