"""Lay arms scored in different folders side by side: their quality-protocol learning curves and
validation curves in one figure each, from the tables experiments/quality.py wrote (the run
folders need not exist any more).

    python scripts/compare_arms.py docs/quality/width docs/quality/lstm \
        --runs gru512_trunk lstm512_trunk --max-step 12000 --out docs/quality/lstm/compare

Writes OUT/quality.csv, OUT/quality_curves.png (FCD, Filters, strict validity and greedy
reconstruction against CPU hours and molecules seen) and OUT/validation.png (validation ELBO
against both).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from molvae.evaluation import quality


def gather(dirs: list[Path], name: str, runs: list[str], max_step: int | None) -> pd.DataFrame:
    """Rows of DIR/name for the named runs (every run when none are named), up to max_step."""
    frames = [pd.read_csv(d / name) for d in dirs if (d / name).exists()]
    if not frames:
        raise SystemExit(f"no {name} in {', '.join(map(str, dirs))}")
    df = pd.concat(frames, ignore_index=True)
    if runs:
        missing = sorted(set(runs) - set(df["run"]))
        if missing:
            raise SystemExit(f"runs {missing} are in no {name} of {', '.join(map(str, dirs))}")
        df = df[df["run"].isin(runs)]
    if max_step is not None:
        df = df[df["step"] <= max_step]
    return df.drop_duplicates(["run", "step"], keep="last").sort_values(["run", "step"])


def plot_validation(df: pd.DataFrame, path: Path) -> Path:
    """Validation ELBO (nats) against CPU hours and molecules seen, one line per run."""
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    for ax, x in zip(fig.subplots(1, 2), ("cpu_h", "mols_seen"), strict=True):
        for run, g in df.groupby("run"):
            xs = g["cpu_s"] / 3600 if x == "cpu_h" else g["mols_seen"]
            ax.plot(xs, g["val_elbo"], marker=".", label=run)
        ax.set_xlabel("CPU hours (process time)" if x == "cpu_h" else "molecules seen")
        ax.set_ylabel("validation ELBO (nats)")
        ax.set_ylim(top=min(35.0, float(df["val_elbo"].max()) + 0.5))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(path))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="folders written by experiments/quality.py")
    ap.add_argument("--runs", nargs="*", default=[], help="the runs to show (default: all)")
    ap.add_argument("--max-step", type=int, default=None)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    scores = gather(a.dirs, "quality.csv", a.runs, a.max_step)
    val = gather(a.dirs, "quality_validation.csv", a.runs, a.max_step)
    a.out.mkdir(parents=True, exist_ok=True)
    scores.to_csv(a.out / "quality.csv", index=False)
    quality.plot_curves(scores, a.out / "quality_curves.png")
    plot_validation(val, a.out / "validation.png")
    print(quality.markdown(scores[["run", "step", "cpu_s", "mols_seen", *quality.CURVE_METRICS]]))


if __name__ == "__main__":
    main()
