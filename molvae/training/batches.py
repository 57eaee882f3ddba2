"""Deterministic, length-grouped batches: what the model sees at each step."""

from __future__ import annotations

import math

import numpy as np


def bucket_width(max_len_in_batch: int, full: int, quantum: int = 8) -> int:
    """Sequence width for a batch: a multiple of `quantum`, so few shapes are ever compiled."""
    return min(full, int(math.ceil(max_len_in_batch / quantum) * quantum))


class Batches:
    """Deterministic, length-grouped batches: batch `step` depends only on (seed, step).

    Each epoch is a seeded permutation cut into pools of `pool` batches; a pool is sorted by
    length and cut into batches, and the epoch's batches are shuffled. Molecules of similar
    length share a batch, so little compute is spent on padding (widths are bucketed to
    multiples of 8, so only a handful of shapes is ever compiled).
    """

    def __init__(
        self, tokens: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int, pool: int = 32
    ):
        if len(tokens) < batch_size:
            raise ValueError(f"{len(tokens)} training molecules < batch size {batch_size}")
        self.tokens, self.lengths, self.bs, self.seed, self.pool = (
            tokens,
            lengths,
            batch_size,
            seed,
            pool,
        )
        self.per_epoch = len(tokens) // batch_size
        self._epoch: tuple[int, np.ndarray] | None = None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """(per_epoch, batch_size) molecule indices for one epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.tokens))[: self.per_epoch * self.bs]
        size = self.pool * self.bs
        chunks = [perm[i : i + size] for i in range(0, len(perm), size)]
        chunks = [c[np.argsort(self.lengths[c], kind="stable")] for c in chunks]
        batches = np.concatenate(chunks).reshape(self.per_epoch, self.bs)
        return batches[rng.permutation(self.per_epoch)]

    def indices(self, step: int) -> np.ndarray:
        """Row indices of batch `step` into the training arrays."""
        epoch, i = divmod(step, self.per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, self.epoch_order(epoch))
        return self._epoch[1][i]

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        idx = self.indices(step)
        lengths = self.lengths[idx]
        width = bucket_width(int(lengths.max()) + 1, self.tokens.shape[1])  # + bos
        return self.tokens[idx, :width], lengths


# ----------------------------------------------------------------------------- checkpoints
