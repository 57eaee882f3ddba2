"""RDKit chemistry: canonical SMILES, SELFIES conversion, properties, fingerprints, similarity."""

from __future__ import annotations

import atexit
import math
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_all_start_methods, get_context, get_start_method, set_start_method
from multiprocessing import util as mp_util
from typing import Any

import numpy as np
import pandas as pd
import selfies as sf
from rdkit import Chem, RDLogger
from rdkit.Chem import QED, Crippen, Descriptors, rdFingerprintGenerator
from rdkit.Chem.MolStandardize import rdMolStandardize
from rdkit.Contrib.SA_Score import sascorer
from selfies.grammar_rules import (
    get_index_from_selfies,
    process_atom_symbol,
    process_branch_symbol,
    process_ring_symbol,
)

RDLogger.DisableLog("rdApp.*")  # invalid molecules are counted by callers, not printed one by one

# ZINC250k statistics used by JT-VAE (Jin et al. 2018, bo/run_bo.py) to normalise penalized logP.
_ZINC_LOGP = (2.4570953396190123, 1.434324401111988)
_ZINC_SA = (-3.0525811293166134, 0.8335207024513095)
_ZINC_CYCLE = (-0.0485696876403053, 0.2860212110245455)

FP_RADIUS, FP_BITS = 2, 1024  # MOSES's Morgan fingerprint settings
SERIAL_BELOW = 4000  # below this many molecules a process pool costs more than it saves


# ----------------------------------------------------------------------------- parsing


def mol_from_smiles(smiles: str | None) -> Chem.Mol | None:
    """RDKit molecule from SMILES, or None if empty, unparsable or unsanitizable."""
    if not smiles or not isinstance(smiles, str):
        return None
    mol = Chem.MolFromSmiles(smiles)
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return mol


def canonical(smiles: str | None, isomeric: bool = True) -> str | None:
    """RDKit canonical SMILES, or None for an invalid molecule."""
    mol = mol_from_smiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol, isomericSmiles=isomeric)


_CHOOSER = None


def largest_fragment(smiles: str | None) -> str | None:
    """Canonical SMILES of the largest organic fragment (salts, counter-ions, solvents dropped).

    RDKit's LargestFragmentChooser(preferOrganic=True): "CC(=O)[O-].[Na+]" -> "CC(=O)[O-]" (no
    charge is neutralized). A single-fragment molecule comes back canonical; None if invalid.
    """
    global _CHOOSER
    mol = mol_from_smiles(smiles)
    if mol is None:
        return None
    if _CHOOSER is None:
        _CHOOSER = rdMolStandardize.LargestFragmentChooser(preferOrganic=True)
    return Chem.MolToSmiles(_CHOOSER.choose(mol)) or None


def is_valid(smiles: str | None) -> bool:
    """True if RDKit parses and sanitizes the SMILES into a non-empty molecule (as MOSES)."""
    return mol_from_smiles(smiles) is not None


def smiles_to_selfies(smiles: str) -> str | None:
    """SELFIES string of a SMILES, or None if selfies cannot encode it."""
    try:
        return sf.encoder(smiles)
    except sf.EncoderError:
        return None


def selfies_to_smiles(selfies: str) -> str:
    """Canonical SMILES decoded from a SELFIES string; '' if it does not give a valid molecule."""
    try:
        smi = sf.decoder(selfies)
    except sf.DecoderError:
        return ""
    return canonical(smi) or ""


def selfies_repaired(selfies: str) -> bool:
    """Whether the SELFIES decoder had to repair the string to make a molecule of it
    (selfies_repair is not None): the SELFIES analogue of an invalid SMILES (Skinnider
    2024). Never true of a string encoded from a SMILES (tested on MOSES)."""
    return selfies_repair(selfies) is not None


REPAIR_RULES = {
    "branch": (
        "branch past the end",
        "branch with no bond left",
        "branch bond order cut",
        "branch index cut off",
    ),
    "ring": (
        "ring onto a full atom",
        "ring onto its own atom",
        "ring index past the first atom",
        "ring bond order cut",
        "ring merged into a bond",
        "ring before any atom",
        "ring index cut off",
    ),
    "bond": ("bond order cut", "bond order on the first atom"),
    "atom": ("symbols after a full atom",),
    "empty": ("nothing to decode", "unknown symbol"),
}
REPAIR_KINDS = tuple(REPAIR_RULES)  # "branch", "ring", "bond", "atom", "empty"


def selfies_repair_kind(selfies: str) -> str | None:
    """The kind of the first repair the SELFIES decoder makes (selfies_repair), or None."""
    repair = selfies_repair(selfies)
    return repair[0] if repair else None


def selfies_repair(selfies: str) -> tuple[str, str] | None:
    """The first repair the SELFIES decoder makes to the string, as (kind, rule), or None.

    Follows the decoder's own derivation (selfies 2.x grammar rules: the state is the number of
    bonds the current atom has left) and reports the first rule that changes what the string
    says (rings close after the whole string is read, so their repairs come after the others),
    with its kind (REPAIR_KINDS) and a short name of the rule (REPAIR_RULES):

    - "branch": a branch symbol dropped (its atom has at most one bond left), its bond order
      cut, or a branch whose length index runs past the end of the string (the SMILES analogue:
      an unclosed "(");
    - "ring": a ring symbol dropped (nothing to close onto, no bond left at either end, a ring
      onto the atom itself), its bond order cut, its index clipped to the first atom, or a
      ring bond merged into an existing bond;
    - "bond": an atom symbol's bond order cut to fit a valence (or a bond order on the first
      atom, which has nothing to bond to);
    - "atom": symbols after a saturated atom ignored;
    - "empty": nothing to decode, or a symbol the decoder does not know.

    A string the decoder writes faithfully but not in the encoder's own order (a branch that
    ends the string, a ring closure after a branch) is not repaired: encoder(decoder(s)) may
    differ from s without any repair.
    """
    try:
        symbols = [t for t in sf.split_selfies(selfies) if t != "[nop]"]
        return _Derivation(symbols).first_repair() if symbols else ("empty", "nothing to decode")
    except (ValueError, sf.DecoderError):
        return ("empty", "unknown symbol")


class _Derivation:
    """The SELFIES decoder's derivation (selfies.decoder._derive_mol_from_symbols and
    _form_rings_bilocally) without the molecule: only the valence bookkeeping that decides
    whether a rule had to change what the string says."""

    def __init__(self, symbols: list[str]) -> None:
        self.symbols, self.pos = symbols, 0
        self.capacity: list[int] = []  # per atom: bonding capacity
        self.used: list[int] = []  # per atom: bond orders made so far
        self.bonds: set[tuple[int, int]] = set()
        self.chain: list[tuple[int, int]] = []  # chain bonds made, (earlier atom, later atom)
        self.rings: list[tuple[int, int, int]] = []  # (left atom, right atom, order)
        self.repair: str | None = None

    def first_repair(self) -> tuple[str, str] | None:
        self.derive(None, 0, None)
        for left, right, order in self.rings:  # rings close after the whole string is read
            free = min(
                self.capacity[left] - self.used[left], self.capacity[right] - self.used[right]
            )
            if left == right or free <= 0:
                self.flag(
                    "ring", "ring onto its own atom" if left == right else "ring onto a full atom"
                )
                continue
            made = min(order, free)
            if made < order:
                self.flag("ring", "ring bond order cut")
            if (left, right) in self.bonds:
                self.flag("ring", "ring merged into a bond")
            self.bonds.add((left, right))
            self.used[left] += made
            self.used[right] += made
        return self.repair

    def flag(self, kind: str, rule: str) -> None:
        self.repair = self.repair or (kind, rule)

    def index(self, n: int, kind: str) -> int:
        """The value of the n symbols after a branch or ring symbol (0 for missing ones)."""
        digits = self.symbols[self.pos : self.pos + n]
        self.pos += len(digits)
        if len(digits) < n:
            self.flag(kind, f"{kind} index cut off")
        return get_index_from_selfies(*digits) if digits else 0

    def derive(self, budget: int | None, state: int | None, prev: int | None) -> None:
        """Read up to `budget` symbols (None: all) from the chain at atom `prev` with `state`
        bonds left, as the decoder does."""
        start = self.pos
        while state is not None and (budget is None or self.pos - start < budget):
            if self.pos == len(self.symbols):
                if budget is not None:
                    self.flag("branch", "branch past the end")
                return
            symbol = self.symbols[self.pos]
            self.pos += 1
            if symbol[-4:-2] == "ch":  # [Branch1], [=Branch2], ...
                order, n = _known(process_branch_symbol(symbol), symbol)
                if state <= 1:
                    self.flag("branch", "branch with no bond left")  # its index is read as atoms
                    continue
                inner = min(state - 1, order)
                if inner < order:
                    self.flag("branch", "branch bond order cut")
                length = self.index(n, "branch") + 1
                self.derive(length, inner, prev)
                state -= inner
            elif symbol[-4:-2] == "ng":  # [Ring1], [=Ring2], ...
                order, n, _ = _known(process_ring_symbol(symbol), symbol)
                if state == 0:
                    self.flag("ring", "ring before any atom")  # its index is read as atoms
                    continue
                made = min(order, state)
                if made < order:
                    self.flag("ring", "ring bond order cut")
                back = self.index(n, "ring") + 1
                if prev - back < 0:
                    self.flag("ring", "ring index past the first atom")
                self.rings.append((max(0, prev - back), prev, made))
                state = state - made or None
            else:
                (order, _), atom = _known(process_atom_symbol(symbol), symbol)
                if state == 0 and (prev is not None or order != 1):
                    self.flag("bond", "bond order on the first atom")
                made = min(0 if state == 0 else order, state, atom.bonding_capacity)
                if state and made < order:
                    self.flag("bond", "bond order cut")
                self.capacity.append(atom.bonding_capacity)
                self.used.append(made)
                if made:
                    self.used[prev] += made
                    self.bonds.add((prev, len(self.capacity) - 1))
                    self.chain.append((prev, len(self.capacity) - 1))
                prev = len(self.capacity) - 1
                state = atom.bonding_capacity - made or None
        left = len(self.symbols) - self.pos
        if budget is not None:
            left = min(left, budget - (self.pos - start))
        if left > 0:
            self.flag("atom", "symbols after a full atom")  # read and ignored
            self.pos += left


def _known(output, symbol: str):
    if output is None:
        raise ValueError(f"unknown SELFIES symbol {symbol}")
    return output


MAX_RING = 12  # the largest ring-size limit (data.max_ring, model.max_ring, sampling) taken


def ring_closures(selfies: str) -> list[int]:
    """The size of the ring each ring bond of a SELFIES string closes when it is read, in
    reading order: one more than the distance between its two atoms over the chain bonds and
    the ring bonds read before it (the rule `models.grammar` applies with max_ring). A string
    whose ring bonds all close rings of at most N atoms has no ring of more than N atoms in
    its smallest set of smallest rings. Raises ValueError for a string the decoder repairs."""
    symbols = [t for t in sf.split_selfies(selfies) if t != "[nop]"]
    d = _Derivation(symbols)
    if d.first_repair() is not None:
        raise ValueError(f"the SELFIES decoder repairs {selfies!r}: {d.repair}")
    nbr: list[set[int]] = [set() for _ in d.capacity]
    for a, b in d.chain:
        nbr[a].add(b)
        nbr[b].add(a)
    sizes = []
    for left, right, _ in d.rings:
        dist, frontier, seen = 0, {left}, {left}
        while right not in frontier:  # breadth-first
            frontier = {m for n in frontier for m in nbr[n]} - seen
            if not frontier:  # a string of several fragments
                raise ValueError(f"ring bond between unconnected atoms in {selfies!r}")
            seen |= frontier
            dist += 1
        sizes.append(dist + 1)
        nbr[left].add(right)
        nbr[right].add(left)
    return sizes


def small_ring_selfies(smiles: str, max_ring: int, max_len: int | None = None) -> str | None:
    """A SELFIES string of the molecule whose ring bonds each close a ring of at most
    `max_ring` atoms (ring_closures), of at most max_len symbols: the encoding of its canonical
    SMILES if that one is, else of the first that is among the canonical SMILES rooted at each
    atom in turn and then 64 seeded random SMILES; None if none is (a molecule with a larger
    ring, or an unparsable one)."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    if mol.GetRingInfo().NumRings() == 0:
        return smiles_to_selfies(Chem.MolToSmiles(mol))
    if max(len(r) for r in mol.GetRingInfo().AtomRings()) > max_ring:
        return None
    candidates = [Chem.MolToSmiles(mol)]
    candidates += [Chem.MolToSmiles(mol, rootedAtAtom=i) for i in range(mol.GetNumAtoms())]
    tried = set()
    for smi in _then_random(candidates, mol):
        if smi in tried:
            continue
        tried.add(smi)
        try:
            sel = sf.encoder(smi)
            if max_len is not None and sf.len_selfies(sel) > max_len:
                continue
            if max(ring_closures(sel), default=0) <= max_ring:
                return sel
        except (ValueError, sf.EncoderError):
            continue
    return None


def _then_random(candidates: list[str], mol: Chem.Mol) -> Iterable[str]:
    yield from candidates
    yield from Chem.MolToRandomSmilesVect(mol, 64, randomSeed=0)


def selfies_to_smiles_strict(selfies: str) -> str:
    """selfies_to_smiles, but '' also where the decoder had to repair the string."""
    return "" if selfies_repaired(selfies) else selfies_to_smiles(selfies)


# ----------------------------------------------------------------------------- properties


def qed(mol: Chem.Mol) -> float:
    """RDKit QED (Bickerton et al. 2012, default weights)."""
    return float(QED.qed(mol))


def logp(mol: Chem.Mol) -> float:
    """Wildman-Crippen logP as RDKit computes it."""
    return float(Crippen.MolLogP(mol))


def sa(mol: Chem.Mol) -> float:
    """Synthetic accessibility (Ertl & Schuffenhauer 2009), RDKit Contrib sascorer, 1 (easy)..10."""
    return float(sascorer.calculateScore(mol))


def weight(mol: Chem.Mol) -> float:
    """Average molecular weight (MOSES's `weight`)."""
    return float(Descriptors.MolWt(mol))


def largest_ring_size(mol: Chem.Mol) -> int:
    rings = mol.GetRingInfo().AtomRings()
    return max((len(r) for r in rings), default=0)


def ring_penalty(mol: Chem.Mol) -> int:
    """Number of atoms by which the largest ring exceeds six (0 for rings of up to six atoms)."""
    return max(largest_ring_size(mol) - 6, 0)


def penalized_logp(mol: Chem.Mol) -> float:
    """Unnormalised penalized logP: logP - SA - ring penalty (as reported by GCPN, LIMO)."""
    return logp(mol) - sa(mol) - ring_penalty(mol)


def penalized_logp_zinc(mol: Chem.Mol) -> float:
    """Penalized logP as in JT-VAE: each term standardised with ZINC250k's mean and std."""
    z_logp = (logp(mol) - _ZINC_LOGP[0]) / _ZINC_LOGP[1]
    z_sa = (-sa(mol) - _ZINC_SA[0]) / _ZINC_SA[1]
    z_cycle = (-ring_penalty(mol) - _ZINC_CYCLE[0]) / _ZINC_CYCLE[1]
    return z_logp + z_sa + z_cycle


PROPERTIES: dict[str, Callable[[Chem.Mol], float]] = {
    "qed": qed,
    "logp": logp,
    "sa": sa,
    "weight": weight,
    "plogp": penalized_logp,
    "plogp_zinc": penalized_logp_zinc,
}
# The columns molvae writes beside molecules (samples.csv, OptimizeResult.top).
TABLE_PROPERTIES = ("qed", "logp", "sa", "weight", "plogp")


def _property_row(args: tuple[str, tuple[str, ...]]) -> list[float]:
    smiles, names = args
    mol = mol_from_smiles(smiles)
    if mol is None:
        return [math.nan] * len(names)
    return [PROPERTIES[n](mol) for n in names]


def properties(
    smiles: Sequence[str],
    names: Sequence[str] = TABLE_PROPERTIES,
    n_jobs: int | None = None,
) -> pd.DataFrame:
    """Table of properties, one row per SMILES (nan for invalid ones), computed in parallel."""
    unknown = [n for n in names if n not in PROPERTIES]
    if unknown:
        raise KeyError(f"unknown properties {unknown}; known: {sorted(PROPERTIES)}")
    names = tuple(names)
    rows = parallel_map(_property_row, [(s, names) for s in smiles], n_jobs=n_jobs)
    return pd.DataFrame(rows, columns=list(names), index=pd.RangeIndex(len(rows)), dtype=float)


# ----------------------------------------------------------------------------- fingerprints

_FPGEN = None


def _generator():
    global _FPGEN
    if _FPGEN is None:
        _FPGEN = rdFingerprintGenerator.GetMorganGenerator(radius=FP_RADIUS, fpSize=FP_BITS)
    return _FPGEN


def _fp_row(smiles: str) -> np.ndarray | None:
    mol = mol_from_smiles(smiles)
    return None if mol is None else _generator().GetFingerprintAsNumPy(mol).astype(np.uint8)


def fingerprints(smiles: Sequence[str], n_jobs: int | None = None) -> np.ndarray:
    """Morgan fingerprints (radius 2, 1024 bits), (n, 1024) uint8; all-zero rows for invalid."""
    rows = parallel_map(_fp_row, list(smiles), n_jobs=n_jobs)
    out = np.zeros((len(rows), FP_BITS), np.uint8)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = r
    return out


def tanimoto(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Tanimoto similarity of every row of binary `a` (n, d) with every row of `b` (m, d) -> (n, m).

    Two empty fingerprints have similarity 1 (identical), as in MOSES.
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    inter = a @ b.T
    union = a.sum(1, keepdims=True) + b.sum(1)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        sim = np.where(union > 0, inter / union, 1.0)
    return sim.astype(np.float32)


def similarity(smiles: Sequence[str], target: str) -> np.ndarray:
    """Tanimoto similarity of each SMILES to one target SMILES (nan for invalid)."""
    fps = fingerprints(list(smiles) + [target])
    valid = np.array([is_valid(s) for s in smiles])
    sims = tanimoto(fps[:-1], fps[-1:])[:, 0]
    return np.where(valid, sims, np.nan)


# ----------------------------------------------------------------------------- parallelism


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def parallel_map(
    fn: Callable[[Any], Any], items: Iterable[Any], n_jobs: int | None = None, chunksize: int = 0
) -> list[Any]:
    """map(fn, items) across processes for RDKit work; serial for small inputs or n_jobs == 1.

    Uses the 'spawn' start method: forking a process that has started JAX's threads can deadlock.
    `fn` must be a module-level function.
    """
    items = list(items)
    n_jobs = default_jobs() if n_jobs is None else n_jobs
    if n_jobs <= 1 or len(items) < SERIAL_BELOW:
        return [fn(x) for x in items]
    chunksize = chunksize or max(256, len(items) // (n_jobs * 8))
    with process_pool(n_jobs) as pool:
        return list(pool.map(fn, items, chunksize=chunksize))


@contextmanager
def process_pool(n_jobs: int):
    """The process's shared pool of n_jobs workers (see shared_pool), as a context manager."""
    yield shared_pool(n_jobs)


_POOL: tuple[int, ProcessPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()
_FINALIZER_PID: int | None = None  # the process that registered _shutdown_pool with multiprocessing


def shared_pool(n_jobs: int) -> ProcessPoolExecutor:
    """A 'spawn' process pool of n_jobs workers, started on first use and kept until exit.

    Workers import RDKit and SELFIES once, when they start, and are reused by every later map:
    a sampling or evaluation loop does not pay for new processes on each call. Starting returns
    at once, so the caller's own work (decoding) overlaps the workers' start-up. A pool that
    broke (a worker died) is replaced; asking for another size replaces the pool.

    Spawned workers normally import the main script again, so a script without an
    `if __name__ == "__main__":` guard would run itself in every worker. molvae's workers only
    run molvae functions, so the script's path is hidden from them while they start.
    """
    global _POOL, _FINALIZER_PID
    with _POOL_LOCK:
        if _POOL is not None:
            size, pool = _POOL
            if size == n_jobs:
                try:
                    pool.submit(int)  # raises once the pool is broken or shut down
                    return pool
                except RuntimeError:
                    pass
            pool.shutdown(wait=False, cancel_futures=True)
            _POOL = None
        main = sys.modules.get("__main__")
        keys = ("__spec__", "__file__")
        saved = {k: main.__dict__[k] for k in keys if main and k in main.__dict__}
        # A spawned child sets the parent's default start method before anything else. Inside a
        # joblib (loky) worker that is 'loky', which the child cannot set ("cannot find context
        # for 'loky'"): the pool would break. Name a standard one while the workers start.
        method = get_start_method(allow_none=True)
        foreign = method is not None and method not in get_all_start_methods()
        try:
            if foreign:
                set_start_method("spawn", force=True)
            if main is not None:
                main.__dict__["__spec__"] = None
                main.__dict__.pop("__file__", None)
            pool = ProcessPoolExecutor(
                n_jobs, mp_context=get_context("spawn"), initializer=_start_worker
            )
            # One worker is spawned per task submitted while none is idle: spawn all of them
            # now (without waiting for them), while the script's path is hidden.
            for _ in range(n_jobs):
                pool.submit(int)
        finally:
            if foreign:
                set_start_method(method, force=True)
            if main is not None:
                main.__dict__.pop("__spec__", None)
                main.__dict__.update(saved)
        _POOL = (n_jobs, pool)
        if os.getpid() != _FINALIZER_PID:
            # In a child process (a joblib/loky job, a multiprocessing.Process) multiprocessing
            # joins the children before atexit runs: the exit would wait forever on the pool's
            # workers. A finalizer with a priority runs before that join.
            mp_util.Finalize(None, _shutdown_pool, exitpriority=100)
            _FINALIZER_PID = os.getpid()
        return pool


def _start_worker() -> None:
    """Worker initializer: unpickling it has imported this module (RDKit, SELFIES, pandas)."""
    RDLogger.DisableLog("rdApp.*")


@atexit.register
def _shutdown_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL[1].shutdown(wait=True, cancel_futures=True)
        _POOL = None


# ----------------------------------------------------------------------------- substructures


def morgan_bits(mol: Chem.Mol) -> np.ndarray:
    """Morgan fingerprint (radius 2, 1024 bits) of one molecule, (1024,) uint8, as MOSES's."""
    return _generator().GetFingerprintAsNumPy(mol).astype(np.uint8)


def brics_fragments(mol: Chem.Mol) -> list[str]:
    """SMILES of the pieces left by cutting every BRICS bond (dummy atoms mark the cuts), MOSES."""
    return Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(mol)).split(".")


def murcko_scaffold(mol: Chem.Mol, min_rings: int = 2) -> str | None:
    """Bemis-Murcko scaffold SMILES, or None if it has fewer than min_rings rings (MOSES's rule)."""
    from rdkit.Chem.Scaffolds import MurckoScaffold

    try:
        scaffold = MurckoScaffold.GetScaffoldForMol(mol)
    except (ValueError, RuntimeError):
        return None
    smiles = Chem.MolToSmiles(scaffold)
    if not smiles or scaffold.GetRingInfo().NumRings() < min_rings:
        return None
    return smiles
