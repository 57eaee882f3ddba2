"""The oracle: budgeted, cached, recorded access to an objective (the PMO convention).

The budget counts distinct valid canonical molecules sent to the objective. Repeats are served
from the cache, invalid or empty SMILES are never sent nor charged, and a batch that would
cross the budget is cut so that the objective sees exactly `budget` molecules at most.
Every charged call is a row of `history` (smiles, score, call, round, source, status), in order;
with `path`, rows are appended to a CSV as they come and a new Oracle on the same file resumes
from it without paying again.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from molvae import chem
from molvae.design.objectives import Objective, ObjectiveError, ScoreFn, make_objective

log = logging.getLogger(__name__)

COLUMNS = ("smiles", "score", "call", "round", "source", "status")


class Oracle:
    """Calls `objective` on new molecules only, up to `budget` distinct valid ones.

    Per molecule, an objective that raises or returns nan/inf/non-numbers gives a nan score
    (status 'error' or 'nonfinite', counted in `counts`); the molecule is still charged, as the
    objective saw it. An objective returning the wrong number of values is an ObjectiveError,
    and so is one that raises on each of its first `fail_limit` molecules (it is broken).
    """

    def __init__(
        self,
        objective: str | Objective | ScoreFn,
        budget: int,
        path: str | Path | None = None,
        fail_limit: int = 10,
    ):
        if not isinstance(budget, int | np.integer) or budget < 1:
            raise ValueError(f"budget must be a positive integer, got {budget!r}")
        self.objective = make_objective(objective)
        self.budget, self.fail_limit = int(budget), fail_limit
        self.path = Path(path) if path is not None else None
        self.counts: Counter[str] = Counter()
        self._cache: dict[str, float] = {}
        self._rows: list[tuple] = []
        self._replay: dict[str, tuple] = {}  # resumed rows the search has not met again yet
        self._last_error = ""
        self.score_s = 0.0  # wall seconds spent inside the objective
        if self.path is not None:
            self._open()

    # -- state -----------------------------------------------------------------------------------

    @property
    def n_calls(self) -> int:
        """Distinct valid molecules charged so far by this search (as the search sees it: a
        resumed run replays its history and counts those calls again as it meets them)."""
        return len(self._rows)

    @property
    def paid(self) -> int:
        """Calls paid for, including resumed ones the replay has not met yet."""
        return len(self._rows) + len(self._replay)

    @property
    def remaining(self) -> int:
        return max(self.budget - self.paid, 0)

    @property
    def exhausted(self) -> bool:
        return self.remaining == 0

    @property
    def history(self) -> pd.DataFrame:
        """Every charged call in order: smiles, score, call (1-based), round, source, status."""
        rows = self._rows + [
            (*r[:2], len(self._rows) + i + 1, *r[3:]) for i, r in enumerate(self._replay.values())
        ]
        df = pd.DataFrame(rows, columns=list(COLUMNS))
        return df.astype({"score": float, "call": int, "round": int})

    def known(self, smiles: str) -> float | None:
        """Cached score of a canonical SMILES, or None if not scored yet in this run (a resumed
        history's molecules count as known once the replay meets them, as in the first run)."""
        return self._cache.get(smiles)

    # -- scoring ---------------------------------------------------------------------------------

    def __call__(self, smiles: Sequence[str], round: int = 0, source: str = "") -> np.ndarray:
        """Scores aligned with `smiles`: cached, newly scored, or nan (invalid / over budget)."""
        out = np.full(len(smiles), math.nan)
        pending: dict[str, list[int]] = {}
        for i, s in enumerate(smiles):
            can = chem.canonical(s) if s else None
            if can is None:
                self.counts["invalid"] += 1
            elif can in self._cache:
                out[i] = self._cache[can]
                self.counts["repeats"] += 1
            elif can in pending:
                pending[can].append(i)
                self.counts["repeats"] += 1
            else:
                pending[can] = [i]
        accepted, fresh, quota = [], [], self.remaining
        for can in pending:  # replayed molecules were paid for; fresh ones need budget
            if can in self._replay:
                accepted.append(can)
            elif quota > 0:
                accepted.append(can)
                fresh.append(can)
                quota -= 1
            else:
                self.counts["over_budget"] += 1
        t0 = time.perf_counter()
        scored = (
            dict(zip(fresh, zip(*self._score(fresh), strict=True), strict=True)) if fresh else {}
        )
        self.score_s += time.perf_counter() - t0
        start = len(self._rows)
        for can in accepted:
            if can in scored:
                (sc, st), src, rnd = scored[can], source, int(round)
            else:  # a resumed run meets a molecule it already paid for: same row, no call
                _, sc, _, rnd, src, st = self._replay.pop(can)
                self.counts["resumed"] += 1
            self._cache[can] = sc
            out[pending[can]] = sc
            self._rows.append((can, sc, len(self._rows) + 1, rnd, src, st))
        self._append([r for r in self._rows[start:] if r[0] in scored])
        self._check_broken()
        return out

    def _score(self, new: list[str]) -> tuple[list[float], list[str]]:
        try:
            raw = self.objective.fn(list(new))
        except Exception as e:  # noqa: BLE001 - a user's objective may raise anything
            log.warning("objective raised on a batch of %d (%r); scoring one by one", len(new), e)
            return self._score_each(new)
        n = _length(raw)
        if n != len(new):
            raise ObjectiveError(
                f"objective {self.objective.name!r} returned {n} values for {len(new)} molecules; "
                "it must return one float per SMILES (nan where it cannot score)"
            )
        return _floats(raw, self.counts)

    def _score_each(self, new: list[str]) -> tuple[list[float], list[str]]:
        scores, status = [], []
        for s in new:
            try:
                raw = self.objective.fn([s])
                if _length(raw) != 1:
                    raise ObjectiveError(f"returned {_length(raw)} values for 1 molecule")
                sc, st = _floats(raw, self.counts)
                scores.append(sc[0])
                status.append(st[0])
            except Exception as e:  # noqa: BLE001
                self.counts["errors"] += 1
                self._last_error = f"{type(e).__name__}: {e}"
                scores.append(math.nan)
                status.append("error")
        return scores, status

    def _check_broken(self) -> None:
        first = self._rows[: self.fail_limit]
        if len(first) == self.fail_limit and all(r[5] == "error" for r in first):
            raise ObjectiveError(
                f"objective {self.objective.name!r} raised on each of the first "
                f"{self.fail_limit} molecules; last error: {self._last_error}"
            )

    # -- persistence -----------------------------------------------------------------------------

    def _open(self) -> None:
        """Create the CSV (and its .json note) or resume from it."""
        meta_path = self.path.with_suffix(self.path.suffix + ".json")
        obj = self.objective
        meta = {"objective": obj.name, "direction": obj.direction, "budget": self.budget}
        if self.path.exists() and self.path.stat().st_size > 0:
            if meta_path.exists():
                old = json.loads(meta_path.read_text(encoding="utf-8")).get("objective")
                # Before objectives carried a sign, a minimised one was named "-sa".
                if old != obj.name and not (obj.sign < 0 and old == f"-{obj.name}"):
                    raise ObjectiveError(
                        f"{self.path} holds the history of objective {old!r}, not "
                        f"{self.objective.name!r}; use another output folder"
                    )
            self._resume()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f, lineterminator="\n").writerow(COLUMNS)
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)

    def _resume(self) -> None:
        with open(self.path, newline="", encoding="utf-8") as f:
            text = f.read()
        if not text.endswith("\n"):  # a write cut by a crash: drop the partial row
            text = text[: text.rfind("\n") + 1]
            with open(self.path, "w", newline="", encoding="utf-8") as f:
                f.write(text)
        rows = list(csv.reader(text.splitlines()))
        if not rows or tuple(rows[0]) != COLUMNS:
            raise ObjectiveError(f"{self.path}: not an oracle history (header {rows[:1]})")
        for line, r in enumerate(rows[1:], start=2):
            try:
                self._replay[r[0]] = (r[0], float(r[1] or "nan"), int(r[2]), int(r[3]), r[4], r[5])
            except (ValueError, IndexError):
                raise ObjectiveError(f"{self.path}, line {line}: malformed row {r}") from None
        if self.paid > self.budget:
            log.warning(
                "%s holds %d calls, more than the budget %d", self.path, self.paid, self.budget
            )
        log.info("oracle resumed from %s: %d calls already paid", self.path, self.paid)

    def _append(self, rows: list[tuple]) -> None:
        if self.path is None:
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows(
                [(r[0], repr(float(r[1])), *r[2:]) for r in rows]
            )
            f.flush()
            os.fsync(f.fileno())


def _length(raw) -> int:
    try:
        return len(raw)
    except TypeError:
        raise ObjectiveError(f"objective must return a sequence of floats, got {raw!r}") from None


def _floats(raw, counts: Counter) -> tuple[list[float], list[str]]:
    """Per value: a finite float ('ok'), or nan with status 'nonfinite' / 'error'."""
    scores, status = [], []
    for v in raw:
        try:
            x = float(v)
        except (TypeError, ValueError):
            counts["errors"] += 1
            scores.append(math.nan)
            status.append("error")
            continue
        ok = math.isfinite(x)
        counts["nonfinite"] += 0 if ok else 1
        scores.append(x if ok else math.nan)
        status.append("ok" if ok else "nonfinite")
    return scores, status
