"""What the ring-size limit does to a model's samples: FCD/Test and Filters of prior samples at
temperature 1 with and without `max_ring`, over several seeds, against MOSES's own test-set
statistics (the MOSES protocol's FCD/Test, without the other metrics).

    .venv/bin/python scripts/ring_limit.py pretrained:moses_512 [--n 30000] [--seeds 0 1] \\
        [--max-ring 0 7]

Prints one row per seed and limit (0: none): valid fraction, FCD/Test, Filters and the fraction
with a ring of 8 or more atoms.
"""

from __future__ import annotations

import argparse
import time

import molvae
from molvae.evaluation import metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a run folder or pretrained:NAME")
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--max-ring", type=int, nargs="+", default=[0, 7])
    args = ap.parse_args()
    model = molvae.load(args.run)
    test = metrics.reference_stats("moses", train=False).splits["test"]
    print("| seed | max_ring | valid | FCD/Test | Filters | ring>=8 | seconds |")
    print("|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        for limit in args.max_ring:
            t = time.perf_counter()
            smiles = [s for s in model.sample(args.n, seed=seed, max_ring=limit) if s]
            alerts = metrics.filter_alerts(smiles)
            row = (
                seed,
                limit,
                f"{len(smiles) / args.n:.4f}",
                f"{metrics.fcd(smiles, test):.3f}",
                f"{1 - alerts['fail']:.4f}",
                f"{alerts.get('ring>=8', 0.0):.4f}",
                f"{time.perf_counter() - t:.0f}",
            )
            print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
