"""Does the prior hole explain the FCD gap? Sample from a Gaussian fitted to the aggregate
posterior instead of N(0, I), and score both with the MOSES suite.

    .venv/bin/python scripts/aggregate_prior.py [RUN] [--fit 20000] [--n 10000]

Encodes --fit + --n random MOSES training molecules, fits N(m, C) to the first --fit, with m the
mean of the posterior means and C = Cov(mu) + mean(diag sigma^2) (the moments of the aggregate
posterior), and decodes at temperature 1 (as the model samples: under the grammar mask if it was
trained with it) --n latents from each of: that Gaussian; N(0, I); and q(z|x) of the other --n
molecules, one draw each (the aggregate posterior itself: what any learned prior could at best
give). Prints the MOSES metrics of each against the full MOSES test set. RUN defaults to
pretrained:moses.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

import molvae
from molvae import data
from molvae.evaluation import metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", default="pretrained:moses")
    ap.add_argument("--fit", type=int, default=20000)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model = molvae.load(args.run)
    train = pd.read_csv(data.moses_files()["train"])["SMILES"]
    mu, logvar = model.encode(
        train.sample(args.fit + args.n, random_state=args.seed).tolist(),
        return_logvar=True,
        errors="nan",
    )
    ok = ~np.isnan(mu).any(1)
    held = ok & (np.arange(len(mu)) >= args.fit)  # the other --n: the posterior arm
    held_mu, held_logvar = mu[held], logvar[held]
    mu, logvar = mu[ok & ~held], logvar[ok & ~held]
    cov = np.cov(mu.T) + np.diag(np.exp(logvar).mean(0))
    print(
        f"aggregate posterior of {len(mu)} molecules: |mean| {np.abs(mu.mean(0)).mean():.3f}, "
        f"Var(mu) {mu.var(0).mean():.3f} + E[sigma^2] {np.exp(logvar).mean():.3f} per dimension"
    )
    rng = np.random.default_rng(args.seed)
    priors = {
        "aggregate": rng.multivariate_normal(mu.mean(0), cov, size=args.n),
        "standard": rng.normal(size=(args.n, model.latent_dim)),
        "posterior": held_mu + np.exp(0.5 * held_logvar) * rng.normal(size=held_mu.shape),
    }
    for name, z in priors.items():
        smiles = model.decode(z.astype(np.float32), greedy=False, seed=args.seed + 1)
        scores = metrics.evaluate(smiles, reference="moses")
        print(name, json.dumps({k: round(v, 4) for k, v in scores.items()}), flush=True)


if __name__ == "__main__":
    main()
