"""Why strict SELFIES decoding rejects a model's prior samples: the kinds of repair.

    .venv/bin/python scripts/selfies_repairs.py [MODEL] [N]   # pretrained:moses_fb, 10000

Draws N prior samples at temperature 1 (the quality protocol's sampler and seeds) and prints the
fraction the SELFIES decoder left alone and, for the rest, the kind of the first symbol at which
the sampled string and the re-encoding of its molecule part ways (molvae.chem.selfies_repair_kind):
a branch (dropped, or its length index running past the end: an unclosed "(" in SMILES terms), a
ring, a bond order cut to fit a valence, or another atom (typically after a saturated atom).
Also prints the mean length in symbols of each group. ~1 minute per 10,000 samples on 2 cores.
"""

import sys

import numpy as np
import pandas as pd
import selfies as sf

import molvae
from molvae import chem
from molvae.inference import latent


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "pretrained:moses_fb"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    model = molvae.load(name)
    z = latent.prior(n, model.latent_dim, 0)  # as evaluation.quality.score_model
    ids = model.engine.decode_ids(z, 1, 1.0, greedy=False)
    strings = model.vocab.decode_selfies_batch(ids)
    kinds = chem.parallel_map(chem.selfies_repair_kind, strings)
    table = pd.DataFrame(
        {
            "kind": [k or "not repaired" for k in kinds],
            "symbols": [sf.len_selfies(s) for s in strings],
        }
    )
    out = table.groupby("kind")["symbols"].agg(fraction="size", mean_symbols="mean")
    out["fraction"] /= n
    out = out.sort_values("fraction", ascending=False)
    print(f"{name}: {n} prior samples at temperature 1")
    print(out.round(3).to_string())
    print(f"repaired: {np.mean([k is not None for k in kinds]):.3f}")


if __name__ == "__main__":
    main()
