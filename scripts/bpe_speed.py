"""BPE encoding speed on the bundled MOSES sample: Vocab.encode_batch (all molecules merged at
once) against Vocab.encode one molecule at a time, for 0, 8, 64 and 200 merges, checking that
both give the same ids (first 3,000 molecules) and printing the mean tokens per molecule.

    .venv/bin/python scripts/bpe_speed.py
"""

import time

import numpy as np

from molvae import data
from molvae.vocab import Vocab


def main() -> None:
    sel = data.load_dataset(data.DataConfig()).train.selfies
    for merges in (0, 8, 64, 200):
        vocab = Vocab.fit(sel, bpe_merges=merges)
        t0 = time.perf_counter()
        tokens, lengths = vocab.encode_batch(sel, 77)
        batch_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = [vocab.encode(s) for s in sel[:3000]]
        one_s = time.perf_counter() - t0
        for row, ids, n in zip(tokens, rows, lengths, strict=False):
            assert n == len(ids) + 1 and row[1:n].tolist() == ids
        rate, one = len(sel) / batch_s, 3000 / one_s
        print(
            f"{merges:>3} merges, {len(vocab):>3} tokens: batch {rate:,.0f} mol/s, one at a "
            f"time {one:,.0f} mol/s, {np.mean(lengths - 1):.1f} tokens/mol"
        )


if __name__ == "__main__":
    main()
