"""How far is the target? FCD/Test and the filter failure rate of recipes trained for different
lengths, against CPU time: the local exponent between consecutive runs, and the power law through
each recipe's runs extended to the targets.

    .venv/bin/python scripts/scaling_curve.py RUN [RUN ...] [--out docs/quality]
    .venv/bin/python scripts/scaling_curve.py --rows docs/quality/scaling.csv \
        --recipe "GRU 1 x 512" outputs/gru512_48k [--out docs/quality]

Each RUN is a finished, cooled-down run of the recipe (e.g. `experiment=moses_48k` with different
`train.steps`), scored by `experiments/quality.py` (its quality.jsonl gives the last
checkpoint's CPU seconds and molecules seen) and by `experiments/sample.py n=30000 seed=0` plus
`experiments/evaluate.py reference=moses metrics=all` (its metrics.json: the MOSES protocol).
`--recipe NAME RUN [RUN ...]` (repeatable) names the recipe of its runs, one curve each;
`--rows CSV` (repeatable) adds the rows of a table this script wrote before, so runs whose
folders are gone stay on the figure (a new run of the same name and recipe replaces its row).
Writes OUT/scaling.csv and OUT/scaling.png and prints, per recipe and metric, the local
exponents (a curve that flattens shows them rising towards 0), the exponent of one fit through
its runs and the CPU time at which each target would be reached if that power law held (it does
not where the local exponents say the curve has flattened).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from molvae.evaluation import quality

# MOSES's VAE (Polykovskiy et al. 2020, Table 2): ~158 M molecules (100 epochs of 1.58 M)
PUBLISHED = {"label": "VAE (MOSES)", "mols_seen": 158.4e6, "FCD/Test": 0.099, "Filters": 0.997}
TARGETS = {"FCD/Test": (1.5, 0.3), "Filters": (0.95, 0.98), "SNN/Test": (0.50, 0.58)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="runs of one unnamed recipe")
    ap.add_argument(
        "--recipe",
        nargs="+",
        action="append",
        default=[],
        metavar=("NAME", "RUN"),
        help="a recipe's name, then its runs",
    )
    ap.add_argument("--rows", type=Path, action="append", default=[], help="an earlier table")
    ap.add_argument("--out", type=Path, default=Path("docs/quality"))
    args = ap.parse_args()
    if any(len(r) < 2 for r in args.recipe):
        raise SystemExit("--recipe takes a name, then at least one run")
    groups = [("", args.runs)] if args.runs else []
    groups += [(name, [Path(r) for r in runs]) for name, *runs in args.recipe]
    tables = [pd.read_csv(p).assign(recipe=lambda d: d.get("recipe", "")) for p in args.rows]
    tables += [quality.scaling_table(runs, recipe=name) for name, runs in groups]
    if not tables:
        raise SystemExit("give runs, --recipe NAME RUN ... or --rows CSV")
    df = pd.concat(tables, ignore_index=True)
    df["recipe"] = df["recipe"].fillna("")
    df = df.drop_duplicates(["recipe", "run"], keep="last")
    # recipes keep the order they first appear in (an earlier table's first), so that a recipe
    # added later does not change the colours of those already drawn
    order = {r: i for i, r in enumerate(dict.fromkeys(df["recipe"]))}
    first = df["recipe"].map(order).rename("first")
    df = df.assign(first=first).sort_values(["first", "cpu_s"]).drop(columns="first")
    df = df.reset_index(drop=True)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "scaling.csv", index=False)
    quality.plot_scaling(df, args.out / "scaling.png", TARGETS, PUBLISHED)
    print(df.to_string(index=False))
    for recipe, part in df.groupby("recipe", sort=False):
        if len(part) < 2:
            print(f"{recipe or 'runs'}: one run, no power law")
            continue
        print(f"{recipe or 'runs'} ({len(part)} runs):")
        hours = part["cpu_s"] / 3600
        for name, goals in TARGETS.items():
            # FCD falls with compute; for Filters and SNN the shortfall from 1 does
            gap = name != "FCD/Test"
            y = 1 - part[name] if gap else part[name]
            steps = ", ".join(f"{e:+.2f}" for e in quality.local_exponents(hours, y))
            what = f"{'1 - ' if gap else ''}{name}"
            print(f"  {what}: local exponents between consecutive runs {steps}")
            c, a = quality.power_law(hours, y)
            for goal in goals:
                h = quality.compute_for(1 - goal if gap else goal, c, a)
                times = h / hours.max() if math.isfinite(h) else math.inf
                print(
                    f"    fit through its runs: ∝ CPU-h^{a:.3f}; {name} {goal} at "
                    f"{h:,.0f} CPU-hours ({times:,.0f}x the longest run)"
                )
    print(f"wrote {args.out / 'scaling.csv'}, {args.out / 'scaling.png'}")


if __name__ == "__main__":
    main()
