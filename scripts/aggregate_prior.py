"""Does the prior hole explain the FCD gap? Sample from a Gaussian fitted to the aggregate
posterior instead of N(0, I), and score both with the MOSES suite.

    .venv/bin/python scripts/aggregate_prior.py [RUN] [--fit 20000] [--n 10000]

Encodes --fit random MOSES training molecules, fits N(m, C) with m the mean of the posterior
means and C = Cov(mu) + mean(diag sigma^2) (the moments of the aggregate posterior), decodes --n
latents from it and --n from N(0, I) at temperature 1, and prints the MOSES metrics of each
against the full MOSES test set. RUN defaults to pretrained:moses.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

import molvae
from molvae import data, metrics


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
        train.sample(args.fit, random_state=args.seed).tolist(), return_logvar=True, errors="nan"
    )
    ok = ~np.isnan(mu).any(1)
    mu, logvar = mu[ok], logvar[ok]
    cov = np.cov(mu.T) + np.diag(np.exp(logvar).mean(0))
    print(
        f"aggregate posterior of {ok.sum()} molecules: |mean| {np.abs(mu.mean(0)).mean():.3f}, "
        f"Var(mu) {mu.var(0).mean():.3f} + E[sigma^2] {np.exp(logvar).mean():.3f} per dimension"
    )
    rng = np.random.default_rng(args.seed)
    priors = {
        "aggregate": rng.multivariate_normal(mu.mean(0), cov, size=args.n),
        "standard": rng.normal(size=(args.n, model.latent_dim)),
    }
    for name, z in priors.items():
        smiles = model.decode(z.astype(np.float32), greedy=False, seed=args.seed + 1)
        scores = metrics.evaluate(smiles, reference="moses")
        print(name, json.dumps({k: round(v, 4) for k, v in scores.items()}), flush=True)


if __name__ == "__main__":
    main()
