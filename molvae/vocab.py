"""SELFIES vocabulary: fit on training data, encode SELFIES/SMILES to ids, decode ids, save/load."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import selfies as sf

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
FORMAT = "molvae-vocab-1"
FORMAT_BPE = "molvae-vocab-2"  # with BPE merges


_PLAIN_SYMBOL = re.compile(r"\[[^\[\]\s]*\]|\.")


def _split_joined(selfies: Sequence[str]) -> tuple[list[str], set[str]] | None:
    """Every string's symbols in order, each string closed by a "\\n", by whole-batch string
    operations (~2x faster than symbol by symbol on MOSES's 1.6 M strings), and the set of
    symbols. None if some string is not a plain run of bracketed symbols and dots: then
    sf.split_selfies, string by string, decides how it reads."""
    joined = "\n".join(selfies) + "\n"
    toks = joined.replace("]", "] ").replace(".", ". ").replace("\n", "\n ").split(" ")
    toks.pop()  # the empty string after the last newline
    kinds = set(toks) - {"\n"}
    if toks.count("\n") != len(selfies) or not all(_PLAIN_SYMBOL.fullmatch(k) for k in kinds):
        return None
    if "." in kinds:  # sf.split_selfies reads a dot only right after a symbol
        after = ["\n", *toks[:-1]]
        if any(t == "." and a in (".", "\n") for t, a in zip(toks, after, strict=True)):
            return None
    return toks, kinds


def split_all(selfies: Sequence[str]) -> tuple[list[str], np.ndarray] | None:
    """The symbols of every string, in order, and each string's symbol count: what
    sf.split_selfies gives string by string, or None where _split_joined declines."""
    if not selfies:
        return [], np.zeros(0, np.int64)
    if (got := _split_joined(selfies)) is None:
        return None
    toks = got[0]
    ends = np.flatnonzero(np.fromiter((t == "\n" for t in toks), bool, len(toks)))
    return [t for t in toks if t != "\n"], np.diff(ends, prepend=-1) - 1


class UnknownSymbolError(ValueError):
    """A SELFIES symbol outside the vocabulary; names the symbol and the molecule."""


class VocabFileError(ValueError):
    """A vocabulary file that is not molvae's (names the file)."""


@dataclass(frozen=True)
class Vocab:
    """Token list with pad=0, bos=1, eos=2, then SELFIES symbols in sorted (stable) order.

    With BPE `merges` (pairs of tokens, in the order learned), a token may be several SELFIES
    symbols written together: any concatenation of SELFIES symbols is a SELFIES string, so
    decoding is unchanged (ids -> token strings -> joined), and sequences get shorter.
    """

    tokens: tuple[str, ...]
    merges: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.tokens[:3] != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        merges = tuple((str(a), str(b)) for a, b in self.merges)
        object.__setattr__(self, "merges", merges)
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})
        object.__setattr__(self, "_ranks", {m: r for r, m in enumerate(merges)})
        if missing := [a + b for a, b in merges if a + b not in self._index]:  # type: ignore[attr-defined]
            raise ValueError(f"merged tokens missing from the vocabulary: {missing[:3]}")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def fit(cls, selfies: Iterable[str], bpe_merges: int = 0, bpe_sample: int = 10000) -> Vocab:
        """Alphabet of all symbols in `selfies`, sorted so the ids do not depend on data order;
        with bpe_merges > 0, that many byte-pair merges learned on a seeded sample of
        `bpe_sample` strings (Sennrich et al. 2016), their merged tokens added."""
        selfies = list(selfies)
        split = _split_joined(selfies) if selfies else None
        alphabet = split[1] if split else set(sf.get_alphabet_from_selfies(selfies))
        merges = learn_merges(selfies, bpe_merges, bpe_sample) if bpe_merges > 0 else ()
        merged = {a + b for a, b in merges}
        return cls(SPECIALS + tuple(sorted(alphabet | merged)), merges)

    def save(self, path: str | Path) -> None:
        obj = {"format": FORMAT_BPE if self.merges else FORMAT, "tokens": list(self.tokens)}
        if self.merges:
            obj["merges"] = [list(m) for m in self.merges]
        Path(path).write_text(json.dumps(obj, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("format") not in (FORMAT, FORMAT_BPE):
                raise VocabFileError(
                    f"{path}: not a molvae vocabulary (format {data.get('format')!r})"
                )
            tokens = data["tokens"]
            if not all(isinstance(t, str) for t in tokens):
                raise VocabFileError(f"{path}: tokens must be strings")
            merges = data.get("merges", [])
            if not all(isinstance(m, list) and len(m) == 2 for m in merges):
                raise VocabFileError(f"{path}: merges must be pairs of tokens")
            return cls(tuple(tokens), tuple(tuple(m) for m in merges))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise VocabFileError(f"{path}: unreadable vocabulary ({type(e).__name__}: {e})") from e
        except ValueError as e:
            if isinstance(e, VocabFileError):
                raise
            raise VocabFileError(f"{path}: {e}") from e

    # -- properties ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def pad_id(self) -> int:
        return 0

    @property
    def bos_id(self) -> int:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    # -- encoding -----------------------------------------------------------------------------

    def encode(self, selfies: str, smiles: str | None = None) -> list[int]:
        """Ids of the symbols of one SELFIES string (no bos/eos). Raises UnknownSymbolError."""
        ids = []
        symbols = list(sf.split_selfies(selfies))
        for sym in apply_merges(symbols, self._ranks) if self.merges else symbols:  # type: ignore[attr-defined]
            idx = self._index.get(sym)  # type: ignore[attr-defined]
            if idx is None or idx < len(SPECIALS):
                raise UnknownSymbolError(
                    f"symbol {sym!r} of molecule {smiles or selfies!r} is not in the vocabulary"
                )
            ids.append(idx)
        return ids

    def encode_batch(
        self, selfies: Sequence[str], max_len: int, smiles: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Token array (n, max_len + 2) as [bos, s_1..s_k, eos, pad...] and lengths k + 1.

        The length counts the symbols plus eos: the number of decoder targets. The same ids as
        `encode` row by row; BPE merges are applied to all molecules at once (merge_ids), which
        keeps a BPE vocabulary as fast as a plain one on the full MOSES training set.
        """
        index = self._index  # type: ignore[attr-defined]
        split = _split_joined(selfies) if len(selfies) else None
        if split is not None and split[1] <= {t for t, i in index.items() if i >= len(SPECIALS)}:
            toks = split[0]  # the fast path: every symbol known
            ids = np.fromiter(map({**index, "\n": -1}.__getitem__, toks), np.int32, len(toks))
            ends = np.flatnonzero(ids < 0)
            ids, counts = ids[ids >= 0], np.diff(ends, prepend=-1) - 1
        else:  # string by string: names the first molecule with an unknown symbol
            flat: list[int] = []
            counts = np.zeros(len(selfies), np.int64)
            for i, s in enumerate(selfies):
                row = [index.get(sym, -1) for sym in sf.split_selfies(s)]
                if min(row, default=0) < len(SPECIALS):
                    self.encode(s, smiles[i] if smiles is not None else None)  # raises, naming it
                flat.extend(row)
                counts[i] = len(row)
            ids = np.asarray(flat, np.int32)
        mol = np.repeat(np.arange(len(selfies)), counts)
        if self.merges:
            ids, mol = merge_ids(ids, mol, [(index[a], index[b], index[a + b])
                                            for a, b in self.merges])  # fmt: skip
        counts = np.bincount(mol, minlength=len(selfies))
        if len(counts) and (long := np.flatnonzero(counts > max_len)).size:
            i = int(long[0])
            raise ValueError(
                f"molecule {smiles[i] if smiles else selfies[i]!r} has {counts[i]} symbols "
                f"> max_len {max_len}"
            )
        out = np.zeros((len(selfies), max_len + 2), np.int32)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else counts
        pos = np.arange(len(ids)) - np.repeat(starts, counts) + 1
        out[mol, pos] = ids
        out[:, 0] = self.bos_id
        out[np.arange(len(selfies)), counts + 1] = self.eos_id
        return out, (counts + 1).astype(np.int32)

    # -- decoding -----------------------------------------------------------------------------

    def decode_selfies(self, ids: Sequence[int]) -> str:
        """SELFIES string of a token sequence: stops at eos/pad, skips bos."""
        return self.decode_selfies_batch(np.asarray(ids).reshape(1, -1))[0]

    def decode_selfies_batch(self, ids: np.ndarray) -> list[str]:
        """SELFIES of every row of ids (n, T): each stops at its first eos/pad; bos is skipped."""
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids must have shape (n, T), got {ids.shape}")
        stop = (ids == self.eos_id) | (ids == self.pad_id)
        ends = np.where(stop.any(1), stop.argmax(1), ids.shape[1]).tolist()
        toks, bos = self.tokens, self.bos_id
        return [
            "".join([toks[i] for i in row[:end] if i != bos])
            for row, end in zip(ids.tolist(), ends, strict=True)
        ]


# ----------------------------------------------------------------------------- BPE


def _merge(word: Sequence[str], pair: tuple[str, str]) -> list[str]:
    """Every non-overlapping occurrence of `pair` in `word`, left to right, joined into one."""
    out, i, a, b = [], 0, *pair
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """BPE encoding of one symbol sequence: repeatedly join the adjacent pair learned first
    (every occurrence of it, left to right), until no adjacent pair is a learned merge."""
    word = symbols
    inf = len(ranks)
    while len(word) > 1:
        pair_ranks = [ranks.get(p, inf) for p in zip(word, word[1:], strict=False)]
        best = min(pair_ranks)
        if best == inf:
            break
        i = pair_ranks.index(best)
        word = _merge(word, (word[i], word[i + 1]))
    return word


def merge_ids(
    ids: np.ndarray, mol: np.ndarray, merges: Sequence[tuple[int, int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """apply_merges on many id sequences at once: ids (N,) concatenated, mol (N,) the sequence
    of each position; merges (a, b, ab) in rank order. Applying each merge to every sequence in
    rank order equals apply_merges' lowest-rank-first loop (a merged token exists only after its
    merge, so no earlier-ranked pair can contain it). Runs of a pair (a, a) merge left to right."""
    for a, b, ab in merges:
        if len(ids) < 2:
            break
        j = np.flatnonzero((ids[:-1] == a) & (ids[1:] == b) & (mol[:-1] == mol[1:]))
        if not len(j):
            continue
        if a == b:  # in a run of a's, only every other pair from the run's start merges
            new_run = np.ones(len(j), bool)
            new_run[1:] = j[1:] != j[:-1] + 1
            run_id = np.cumsum(new_run) - 1
            run_start = j[new_run][run_id]
            j = j[(j - run_start) % 2 == 0]
        ids = ids.copy()
        ids[j] = ab
        keep = np.ones(len(ids), bool)
        keep[j + 1] = False
        ids, mol = ids[keep], mol[keep]
    return ids, mol


def learn_merges(
    selfies: Sequence[str], n_merges: int, sample: int = 10000, seed: int = 0
) -> tuple[tuple[str, str], ...]:
    """n_merges byte-pair merges over SELFIES symbols, most frequent pair first (ties broken by
    the pair's text, so the result is deterministic), learned on a seeded sample of strings."""
    pick = list(selfies)
    if len(pick) > sample:
        pick = random.Random(seed).sample(pick, sample)
    words = Counter(tuple(sf.split_selfies(s)) for s in pick)
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, c in words.items():
            for pair in zip(w, w[1:], strict=False):
                pairs[pair] += c
        if not pairs:
            break
        pair, count = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if count < 2:
            break
        merges.append(pair)
        new: Counter = Counter()
        for w, c in words.items():
            new[tuple(_merge(w, pair))] += c
        words = new
    return tuple(merges)
