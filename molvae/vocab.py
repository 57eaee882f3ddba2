"""SELFIES vocabulary: fit on training data, encode SELFIES/SMILES to ids, decode ids, save/load."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import selfies as sf

from molvae import chem

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, BOS, EOS)
FORMAT = "molvae-vocab-1"


class UnknownSymbolError(ValueError):
    """A SELFIES symbol outside the vocabulary; names the symbol and the molecule."""


class VocabFileError(ValueError):
    """A vocabulary file that is not molvae's (names the file)."""


@dataclass(frozen=True)
class Vocab:
    """Token list with pad=0, bos=1, eos=2, then SELFIES symbols in sorted (stable) order."""

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.tokens[:3] != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def fit(cls, selfies: Iterable[str]) -> Vocab:
        """Alphabet of all symbols in `selfies`, sorted so the ids do not depend on data order."""
        alphabet = sf.get_alphabet_from_selfies(selfies)
        return cls(SPECIALS + tuple(sorted(alphabet)))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"format": FORMAT, "tokens": list(self.tokens)}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise VocabFileError(
                    f"{path}: not a molvae vocabulary (format {data.get('format')!r})"
                )
            tokens = data["tokens"]
            if not all(isinstance(t, str) for t in tokens):
                raise VocabFileError(f"{path}: tokens must be strings")
            return cls(tuple(tokens))
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
        for sym in sf.split_selfies(selfies):
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

        The length counts the symbols plus eos: the number of decoder targets.
        """
        out = np.zeros((len(selfies), max_len + 2), np.int32)
        lengths = np.zeros(len(selfies), np.int32)
        for i, s in enumerate(selfies):
            ids = self.encode(s, smiles[i] if smiles is not None else None)
            if len(ids) > max_len:
                raise ValueError(
                    f"molecule {smiles[i] if smiles else s!r} has {len(ids)} symbols "
                    f"> max_len {max_len}"
                )
            out[i, 0] = self.bos_id
            out[i, 1 : len(ids) + 1] = ids
            out[i, len(ids) + 1] = self.eos_id
            lengths[i] = len(ids) + 1
        return out, lengths

    def encode_smiles(self, smiles: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Canonicalize, SELFIES-encode and tokenize SMILES; raises ValueError on an invalid one."""
        selfies = []
        for s in smiles:
            can = chem.canonical(s)
            enc = chem.smiles_to_selfies(can) if can else None
            if enc is None:
                raise ValueError(f"cannot encode molecule {s!r}: invalid SMILES or SELFIES failure")
            selfies.append(enc)
        return self.encode_batch(selfies, max_len, smiles)

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

    def decode(self, ids: Sequence[int]) -> str:
        """Canonical SMILES of a token sequence ('' if the molecule is empty or invalid)."""
        return chem.selfies_to_smiles(self.decode_selfies(ids))
