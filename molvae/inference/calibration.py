"""The anomaly score's calibration: held-out molecules' per-symbol log-likelihood percentiles."""

from __future__ import annotations

import numpy as np


def per_symbol_calibration(per_symbol: np.ndarray, k: int, seed: int, molecules: str) -> dict:
    """What MolVAE.anomaly_percentile compares with: the percentiles 0, 1, ..., 100 of held-out
    molecules' log-likelihoods per SELFIES symbol (nats), with where they come from."""
    x = np.asarray(per_symbol, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        raise ValueError("no finite per-symbol log-likelihoods to calibrate with")
    return {
        "n": int(len(x)),
        "k": k,
        "seed": seed,
        "molecules": molecules,
        "mean_nats": float(x.mean()),
        "quantiles": np.round(np.percentile(x, np.arange(101)), 5).tolist(),
    }


def percentile_of(values: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Percentile (0-100) of each value among the held-out molecules whose percentiles 0..100
    are `quantiles`, linear between them; nan stays nan."""
    values = np.asarray(values, np.float64)
    out = np.interp(values, np.asarray(quantiles, np.float64), np.arange(len(quantiles)))
    return np.where(np.isnan(values), np.nan, out)
