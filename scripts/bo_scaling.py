"""The search's own cost per oracle call as BO's record grows to 10,000 molecules.

    .venv/bin/python scripts/bo_scaling.py [BUDGET] [METHOD]     # defaults: 10000 bo

Runs `molvae.optimize(pretrained:moses, "qed", method=METHOD, budget=BUDGET)` and times every
round from BO's debug log (surrogate + acquisition; decode + score), then prints, per 1,000
calls, the milliseconds per oracle call spent on the surrogate (GP fit, candidates, Thompson
sampling) and on decoding and scoring. The GP sees at most `max_points` (512) latents, the best
half and the most recent half, so its cost must stay flat while the record grows. QED is cheap
to score, so the figures are the search's own cost. Figures in README: Optimization.
"""

import logging
import re
import sys
import time

import numpy as np

import molvae

ROUND = re.compile(r"round (\d+): surrogate \+ acquisition ([\d.]+) s, decode \+ score ([\d.]+) s")


class Rounds(logging.Handler):
    """Collects (surrogate s, decode + score s) per BO round from molvae.design.bo's debug log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.rows: list[tuple[float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = ROUND.match(record.getMessage())
        if m:
            self.rows.append((float(m.group(2)), float(m.group(3))))


def main() -> None:
    budget = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    method = sys.argv[2] if len(sys.argv) > 2 else "bo"
    rounds = Rounds()
    bo_log = logging.getLogger("molvae.design.bo")
    bo_log.setLevel(logging.DEBUG)
    bo_log.addHandler(rounds)
    model = molvae.load("pretrained:moses")
    t0 = time.time()
    r = molvae.optimize(model, "qed", method=method, budget=budget, seed=0, progress=False)
    wall = time.time() - t0
    s = r.summary()
    print(
        f"{method}, qed, budget {budget}: {s['oracle_calls']} calls in {wall:.0f} s; top-1 "
        f"{s['top1']:.4f}, top-10 mean {s['top10_mean']:.4f}; search "
        f"{s['search_ms_per_call']} ms per call (objective excluded), objective "
        f"{s['objective_seconds']:.0f} s in all"
    )
    calls = r.history.groupby("round").size()  # calls charged per round
    per_round = np.array(rounds.rows)
    bo_rounds = [k for k in calls.index if (r.history.loc[r.history["round"] == k, "source"]
                                            .isin(["bo", "lolbo"])).any()]  # fmt: skip
    n = min(len(per_round), len(bo_rounds))
    cum = calls.cumsum()
    print("calls so far | BO rounds | surrogate ms / call | decode + score ms / call")
    edges = list(range(0, budget + 1, max(budget // 10, 1)))
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        idx = [i for i in range(n) if lo < cum.loc[bo_rounds[i]] <= hi]
        if not idx:
            continue
        got = calls.loc[[bo_rounds[i] for i in idx]].sum()
        sur, dec = per_round[idx].sum(0) * 1e3 / max(got, 1)
        print(f"{lo:>6}-{hi:<6} | {len(idx):>9} | {sur:>19.1f} | {dec:>24.1f}")


if __name__ == "__main__":
    main()
