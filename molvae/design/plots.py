"""Optimization outputs: best/top-k curves, the PMO AUC, and the PNG figures."""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def curve(scores: Sequence[float], k: int = 10) -> pd.DataFrame:
    """Best and top-k mean score after each oracle call (nan scores never rank)."""
    heap: list[float] = []
    best, topk = [], []
    for s in scores:
        if math.isfinite(s):
            heapq.heappush(heap, s) if len(heap) < k else heapq.heappushpop(heap, s)
        best.append(max(heap) if heap else math.nan)
        topk.append(float(np.mean(heap)) if heap else math.nan)
    return pd.DataFrame({"call": np.arange(1, len(best) + 1), "best": best, f"top{k}_mean": topk})


def top_auc(scores: Sequence[float], budget: int, k: int = 10, freq: int = 100) -> float:
    """PMO's sample-efficiency metric (Gao et al. 2022, `top_auc`): the area under the top-k
    mean score against oracle calls, sampled every `freq` calls, divided by the budget; a run
    that stops early keeps its final value until the budget."""
    scores = list(scores)[:budget]
    if not scores:
        return math.nan
    topk = curve(scores, k)[f"top{k}_mean"].fillna(0.0).to_numpy()
    total, prev, called = 0.0, 0.0, 0
    for idx in range(freq, len(scores), freq):
        now = topk[idx - 1]
        total += freq * (now + prev) / 2
        prev, called = now, idx
    now = topk[-1]
    total += (len(scores) - called) * (now + prev) / 2
    total += (budget - len(scores)) * now
    return total / budget


def plot_curve(history: pd.DataFrame, path: Path, title: str = "", k: int = 10) -> None:
    """PNG of the best and top-k mean score against oracle calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = curve(history["score"].to_numpy(float), k)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(c["call"], c["best"], label="best")
    ax.plot(c["call"], c[f"top{k}_mean"], label=f"top-{k} mean")
    ax.scatter(c["call"], history["score"], s=3, alpha=0.25, color="grey", label="each call")
    ax.set(xlabel="oracle calls", ylabel="score", title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grid(top: pd.DataFrame, path: Path, per_row: int = 5) -> None:
    """PNG grid of the top molecules, each labelled with its score."""
    from rdkit import Chem
    from rdkit.Chem import Draw

    mols = [Chem.MolFromSmiles(s) for s in top["smiles"]]
    legends = [f"{s:.4g}" for s in top["score"]]
    pairs = [(m, lg) for m, lg in zip(mols, legends, strict=True) if m is not None]
    if not pairs:
        pairs = [(Chem.MolFromSmiles("C"), "no molecule")]
    img = Draw.MolsToGridImage(
        [m for m, _ in pairs],
        molsPerRow=per_row,
        subImgSize=(250, 250),
        legends=[lg for _, lg in pairs],
    )
    img.save(str(path))
