"""Which candidates win the constrained task: greedy neighbours against decoder samples.

    .venv/bin/python scripts/constrained_candidates.py [MODEL] [K]   # pretrained:moses, 100

Takes every 8th of the 800 MOSES test molecules with the lowest penalized logP (100 starts, the
order of `optimize=constrained`), and for each kind of candidate decodes K per start: greedy
decodes of start + scale * N(0, I) at scales 0.1, 0.2 and 0.4, and decoder samples at the
start's posterior mean at temperatures 0.3, 0.5, 0.7 and 1.0. Prints, per kind, the distinct
molecules per start and the fraction of starts with a candidate that improves plogP within
Tanimoto 0.4 and 0.6 of the start. What chose ConstrainedConfig.samples and temperature
(README: Optimization). ~20 s per row at K=100 on 2 cores.
"""

import sys
import time
from pathlib import Path

import numpy as np

import molvae
from molvae import chem
from molvae.design import lowest
from molvae.design.objectives import make_objective
from molvae.design.predictor import encode_valid
from molvae.store import folder


def main() -> None:
    model = molvae.load(sys.argv[1] if len(sys.argv) > 1 else "pretrained:moses")
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    plogp = make_objective("plogp")
    test = folder.dataset_of_run(Path(model.run_dir)).test.smiles
    starts = lowest(test, 800, "plogp")[::8][:100]
    mu, _, keep = encode_valid(model, starts)
    starts = [starts[i] for i in keep]
    s0 = np.asarray(plogp(starts), float)
    fps = chem.fingerprints(starts)

    def report(name: str, cands: list[list[str]]) -> None:
        t0, wins, distinct = time.perf_counter(), {0.4: 0, 0.6: 0}, 0
        for i, start in enumerate(starts):
            c = [batch[i] for batch in cands]
            distinct += len({x for x in c if x})
            score = np.asarray(plogp(c), float)
            sim = chem.tanimoto(chem.fingerprints(c), fps[i : i + 1])[:, 0]
            sim = np.where([bool(x) for x in c], sim, 0.0)
            for delta in wins:
                ok = (sim >= delta) & np.isfinite(score) & (np.array(c) != start)
                wins[delta] += bool((ok & (score > s0[i])).any())
        n = len(starts)
        print(
            f"{name:32s} K={len(cands):5d}  distinct/start {distinct / n:6.1f}  "
            f"success 0.4: {wins[0.4] / n:.2f}  0.6: {wins[0.6] / n:.2f}  "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )

    rng = np.random.default_rng(0)
    for scale in (0.1, 0.2, 0.4):
        eps = rng.standard_normal((k, *mu.shape)).astype(np.float32)
        report(f"greedy neighbours, scale {scale}", [model.decode(mu + scale * e) for e in eps])
    for temp in (0.3, 0.5, 0.7, 1.0):
        cands = [model.decode(mu, greedy=False, temperature=temp, seed=j) for j in range(k)]
        report(f"decoder samples, T {temp}", cands)


if __name__ == "__main__":
    main()
