"""Write molvae's bundled MOSES sample (molvae/assets/moses_sample) from the molsets 0.3.1 wheel.

    .venv/bin/python scripts/make_moses_sample.py

Draws a seeded random subset of each MOSES split (original SMILES strings, MOSES order kept) and
writes byte-reproducible gzip files (mtime 0, no file name in the header).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from molvae import fetch

SIZES = {"train": 20_000, "test": 2_000, "test_scaffolds": 2_000}
OUT = Path(__file__).resolve().parents[1] / "molvae" / "assets" / "moses_sample"

log = logging.getLogger("make_moses_sample")


def sample_split(path: Path, size: int, rng: np.random.Generator) -> list[str]:
    """`size` SMILES drawn without replacement from a MOSES CSV, in the file's order."""
    smiles = pd.read_csv(path, usecols=["SMILES"])["SMILES"].tolist()
    idx = np.sort(rng.choice(len(smiles), size=size, replace=False))
    return [smiles[i] for i in idx]


def write_csv_gz(path: Path, smiles: list[str]) -> str:
    """Write a one-column gzip CSV reproducibly (atomic) and return its sha256."""
    text = "SMILES\n" + "".join(s + "\n" for s in smiles)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
        gz.write(text.encode("utf-8"))
    os.replace(tmp, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    for split, size in SIZES.items():
        src = fetch.wheel_member(fetch.MOLSETS, f"moses/dataset/data/{split}.csv.gz")
        digest = write_csv_gz(args.out / f"{split}.csv.gz", sample_split(src, size, rng))
        log.info("%s.csv.gz  %d molecules  sha256 %s", split, size, digest)


if __name__ == "__main__":
    main()
