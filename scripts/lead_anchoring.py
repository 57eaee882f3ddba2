"""Lead optimization on the shipped model: how many proposals stay near the lead.

    .venv/bin/python scripts/lead_anchoring.py [MODEL]     # default pretrained:moses

Ibuprofen as the lead, plogP scored only within Tanimoto 0.4 of it (nan elsewhere), 100 oracle
calls with `init_smiles=[lead]` for gradient and bo; prints the fraction of proposals after the
lead that fall within 0.4, the best score and the calls by source. Then, without any search,
the fraction of the lead's latent neighbours (lead + scale * N(0, I), 100 draws) within 0.4 at
each scale: what chose molvae.design.search.ANCHOR_SCALE. Figures in README: Optimization.
"""

import sys
import time

import numpy as np

import molvae
from molvae.design import objectives

LEAD = "CC(C)Cc1ccc(C(C)C(=O)O)cc1"  # ibuprofen


def main() -> None:
    model = molvae.load(sys.argv[1] if len(sys.argv) > 1 else "pretrained:moses")
    near = objectives.similarity(LEAD)
    plogp = objectives.make_objective("plogp")

    def gated(smiles: list[str]) -> np.ndarray:
        return np.where(near(smiles) >= 0.4, plogp(smiles), np.nan)

    for method in ("gradient", "bo"):
        t0 = time.time()
        r = molvae.optimize(model, gated, method=method, budget=100, init_smiles=[LEAD],
                            progress=False, seed=0)  # fmt: skip
        h = r.history
        within = np.mean(near(list(h["smiles"][1:])) >= 0.4)
        print(f"{method}: {len(h)} calls, {within:.2f} within 0.4 of the lead, best plogP "
              f"{h['score'].max():.2f} (lead {h['score'].iloc[0]:.2f}), {time.time() - t0:.0f} s, "
              f"{h['source'].value_counts().to_dict()}")  # fmt: skip
    z = model.encode([LEAD])[0]
    print(
        "greedy reconstruction:",
        model.decode(z[None])[0],
        f"similarity {near(model.decode(z[None]))[0]:.2f}",
    )
    for scale in (0.05, 0.1, 0.2, 0.3, 0.5):
        eps = np.random.default_rng(0).standard_normal((100, z.shape[0])).astype(np.float32)
        out = model.decode(z[None] + scale * eps)
        print(
            f"scale {scale}: {np.mean(near(out) >= 0.4):.2f} within 0.4, {len(set(out))} distinct"
        )


if __name__ == "__main__":
    main()
