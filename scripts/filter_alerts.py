"""Which medicinal-chemistry alerts do a model's samples trip? The MOSES `Filters` metric split by
reason: for each sample set, the fraction of its valid molecules that fail (as MOSES counts it)
and the fraction that carry each reason (a molecule can carry several): a ring of 8 or more atoms,
a formal charge, an element outside CNSOFClBrH, each MCF alert and each PAINS alert by name.

    .venv/bin/python scripts/filter_alerts.py NAME=SAMPLES [NAME=SAMPLES ...] \\
        [--out docs/quality/filter-alerts.csv] [--top 20]

SAMPLES is a run folder (its samples.csv, e.g. from `experiments/sample.py n=30000 seed=0`) or
a CSV with a `smiles` (or MOSES's `SMILES`) column (`molvae.evaluation.metrics.filter_alerts`
does the work). Writes one row per reason and one column per sample set, sorted by the first
set, and prints the top rows as a Markdown table. The training molecules of MOSES pass every
filter (MOSES built the dataset with them), so every alert here is one the model made up.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from molvae import data
from molvae.evaluation import metrics
from molvae.store import folder


def _read(path: Path) -> list[str]:
    if path.is_dir():
        return folder.read_samples(path)
    column = "smiles" if "smiles" in pd.read_csv(path, nrows=0).columns else "SMILES"
    return data.read_smiles_file(path, column)["smiles"].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sets", nargs="+", help="NAME=SAMPLES (a run folder or a CSV)")
    ap.add_argument("--out", type=Path, default=Path("docs/quality/filter-alerts.csv"))
    ap.add_argument("--top", type=int, default=20)
    args = ap.parse_args()
    columns = {}
    for spec in args.sets:
        name, sep, where = spec.partition("=")
        if not sep:
            raise SystemExit(f"{spec!r}: give NAME=SAMPLES")
        smiles = _read(Path(where))
        columns[name] = col = metrics.filter_alerts(smiles)
        print(f"{name}: {col['molecules']:.0f} valid of {len(smiles)}, {col['fail']:.4f} fail")
    table = pd.DataFrame(columns).fillna(0.0)
    head, body = table.loc[["molecules", "fail"]], table.drop(["molecules", "fail"])
    body = body.sort_values(list(columns), ascending=False)
    table = pd.concat([head, body]).rename_axis("reason")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out)
    shown = pd.concat([head.iloc[1:], body.head(args.top)])
    print("| reason | " + " | ".join(shown.columns) + " |")
    print("|---" * (len(shown.columns) + 1) + "|")
    for reason, row in shown.iterrows():
        print(f"| {reason} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    print(f"wrote {args.out} ({len(body)} reasons)")


if __name__ == "__main__":
    main()
