"""Add held-out per-symbol calibration (what model.anomaly_percentile compares with) to a run.

    .venv/bin/python scripts/calibrate_anomaly.py RUN_DIR FILE [--n 1000] [--k 64]

Scores the first n molecules of FILE (.csv with a SMILES column or .smi; molecules of the
training distribution that the model never saw) and writes their per-symbol log-likelihood
percentiles into RUN_DIR/likelihood.json as "per_symbol" (the pipeline's
molvae.evaluation.run.test_likelihood writes the same entry from the run's own test split). The
shipped models' entries were made with
    scripts/calibrate_anomaly.py molvae/assets/pretrained/moses \\
        molvae/assets/moses_sample/test.csv.gz --n 1000
and its SHA256SUMS updated (--sums).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import molvae
from molvae import data
from molvae.inference.calibration import per_symbol_calibration
from molvae.store.folder import write_json_atomic
from molvae.store.names import LIKELIHOOD_JSON


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("file", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sums", action="store_true", help="rewrite the folder's SHA256SUMS")
    args = ap.parse_args()
    model = molvae.load(args.run_dir)
    smiles = [s for s in data.read_smiles_file(args.file)["smiles"] if s][: args.n]
    t0 = time.time()
    d = model.log_likelihood(smiles, k=args.k, seed=args.seed, details=True, errors="nan")
    where = f"the first {len(smiles)} molecules of {args.file.name}"
    cal = per_symbol_calibration(d["per_symbol"], args.k, args.seed, where)
    path = args.run_dir / LIKELIHOOD_JSON
    scores = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    write_json_atomic(path, scores | {"per_symbol": cal})
    if args.sums:
        files = sorted(p for p in args.run_dir.iterdir() if p.is_file() and p.name != "SHA256SUMS")
        sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in files]
        (args.run_dir / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")
    q = cal["quantiles"]
    print(
        f"{cal['n']} molecules in {time.time() - t0:.0f} s: per-symbol log-likelihood "
        f"percentiles 1/5/50 = {q[1]:.3f}/{q[5]:.3f}/{q[50]:.3f} nats; wrote {path}"
    )


if __name__ == "__main__":
    main()
