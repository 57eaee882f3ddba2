"""MOSES distribution metrics (molsets 0.3.1 definitions), reference statistics cached on disk."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import pickle
import shutil
import time
import warnings
import zipfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import rdkit
from rdkit import Chem, DataStructs
from scipy.stats import wasserstein_distance

from molvae import chem, fetch

log = logging.getLogger(__name__)

# Keys and order of moses.get_all_metrics (unique@k follows `k`).
TEST_METRICS = ("FCD", "SNN", "Frag", "Scaf")
MOSES_PROPERTIES = {"logP": chem.logp, "SA": chem.sa, "QED": chem.qed, "weight": chem.weight}
SPLITS = ("train", "test", "test_scaffolds")
STATS_VERSION = 1  # bump when reference statistics change: it is part of the cache key
_FILTER_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})
_FILTER_DIR = Path(__file__).parents[1] / "assets" / "filters"
_CHUNK = 50_000  # molecules per process-pool call, so long reference builds log progress
_BLOCKS = (2048, 8192)  # Tanimoto blocks: sample rows x reference rows, 64 MB of float32
_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".smi", ".smi.gz", ".txt", ".txt.gz")
# MOSES's own statistics of its test splits (molsets 0.3.1, the numbers behind its published
# tables): wheel member and sha256. Read by _read_shipped, which executes nothing.
SHIPPED_STATS = {
    "test": (
        "moses/dataset/data/test_stats.npz",
        "ded25073225a895d4ed17bf1d4223d27560e87ff4cb85786346ca1cc8efa03d3",
    ),
    "test_scaffolds": (
        "moses/dataset/data/test_scaffolds_stats.npz",
        "7b7aba6c1474634a019bebf16f389d554cb9dd1021dfc8c1d1e54430a9f0e7f8",
    ),
}


# ----------------------------------------------------------------------------- per molecule


@functools.cache
def _filter_patterns() -> tuple[tuple[str, Chem.Mol, DataStructs.ExplicitBitVect], ...]:
    """MCF + PAINS SMARTS, each with its name (MCF1..., PAINS regId) and its pattern fingerprint
    for screening."""
    mcf = pd.read_csv(_FILTER_DIR / "mcf.csv")
    pains = pd.read_csv(_FILTER_DIR / "wehi_pains.csv", names=["smarts", "names"])
    names = [
        *mcf["names"],
        *(n.strip().removeprefix("<regId=").removesuffix(">") for n in pains["names"]),
    ]
    patterns = [Chem.MolFromSmarts(s) for s in [*mcf["smarts"], *pains["smarts"]]]
    return tuple((n, p, Chem.PatternFingerprint(p)) for n, p in zip(names, patterns, strict=True))


def filter_failures(mol: Chem.Mol, first: bool = False) -> list[str]:
    """Why a molecule fails MOSES's `mol_passes_filters` ([] if it passes): `ring>=8`,
    `charged`, `atom:X` (an element outside CNSOFClBrH), each MCF/PAINS alert it matches by name
    (`MCF4`, `PAINS:ene_one_ene_A(57)`, ...), `unparsable` (its SMILES does not read back).
    `first`: stop at the first reason, as MOSES does (what passes_filters needs)."""
    reasons: list[str] = []
    if any(len(ring) >= 8 for ring in mol.GetRingInfo().AtomRings()):
        reasons.append("ring>=8")
        if first:
            return reasons
    atoms = mol.GetAtoms()
    if any(a.GetFormalCharge() != 0 for a in atoms):
        reasons.append("charged")
    reasons += sorted(
        {f"atom:{a.GetSymbol()}" for a in atoms if a.GetSymbol() not in _FILTER_ATOMS}
    )
    if first and reasons:
        return reasons[:1]
    with_h = Chem.AddHs(mol)  # some MCF patterns spell out hydrogens
    # A pattern can only match if its pattern-fingerprint bits are all set in the molecule's
    # (RDKit's substructure screen, as in SubstructLibrary): skips most of the 502 full searches.
    screen = Chem.PatternFingerprint(with_h)
    for name, pattern, bits in _filter_patterns():
        if DataStructs.AllProbeBitsMatch(bits, screen) and with_h.HasSubstructMatch(pattern):
            reasons.append(name if name.startswith("MCF") else f"PAINS:{name}")
            if first:
                return reasons
    smiles = Chem.MolToSmiles(mol, isomericSmiles=False)
    if not smiles or Chem.MolFromSmiles(smiles) is None:
        reasons.append("unparsable")
    return reasons


def _failures_of(smiles: str) -> list[str] | None:
    mol = chem.mol_from_smiles(smiles)
    return None if mol is None else filter_failures(mol)


def filter_alerts(smiles: Sequence[str], n_jobs: int | None = None) -> pd.Series:
    """The MOSES `Filters` metric split by reason, over the valid molecules of `smiles`:
    `molecules` (how many are valid), `fail` (the fraction that fails, 1 - Filters), then the
    fraction that carries each reason of `filter_failures`, most frequent first (a molecule can
    carry several, so these sum to `fail` or more)."""
    rows = [r for r in chem.parallel_map(_failures_of, smiles, n_jobs) if r is not None]
    n = len(rows)
    if not n:
        raise ValueError("no valid molecule to filter")
    counts = Counter(reason for r in rows for reason in r)
    head = pd.Series({"molecules": n, "fail": sum(bool(r) for r in rows) / n})
    body = pd.Series({k: c / n for k, c in counts.items()}, dtype=float)
    return pd.concat([head, body.sort_values(ascending=False, kind="stable")])


def passes_filters(mol: Chem.Mol) -> bool:
    """MOSES's `mol_passes_filters`: no MCF/PAINS alert, ring < 8 atoms, uncharged, CNSOFClBrH."""
    return not filter_failures(mol, first=True)


class _Row(NamedTuple):
    """What the metrics need of one molecule; fields after `canonical` are None if it cannot be
    scored: RDKit cannot re-read its canonical SMILES or fails on it (MOSES would crash there)."""

    canonical: str
    fp: bytes | None = None  # packed Morgan bits
    frags: list[str] | None = None
    scaffold: str | None = None
    props: tuple[float, ...] | None = None
    passes: bool | None = None
    fcd_smiles: str | None = None


def _describe(args: tuple[str, str]) -> _Row | None:
    """(SMILES, mode) -> _Row, None if invalid. Modes: 'basic' (canonical + fingerprint),
    'reference' (+ fragments, scaffold, properties), 'sample' (+ filters)."""
    smiles, mode = args
    canonical = chem.canonical(smiles)
    if canonical is None:
        return None
    mol = chem.mol_from_smiles(canonical)  # MOSES scores the molecule read from the canonical form
    if mol is None:
        return _Row(canonical)
    try:
        fp = np.packbits(chem.morgan_bits(mol)).tobytes()
        if mode == "basic":
            return _Row(canonical, fp)
        return _Row(
            canonical,
            fp,
            chem.brics_fragments(mol),
            chem.murcko_scaffold(mol),
            tuple(f(mol) for f in MOSES_PROPERTIES.values()),
            passes_filters(mol) if mode == "sample" else None,
            Chem.MolToSmiles(mol),  # fcd_torch canonicalizes its input once more
        )
    except Exception:  # one odd molecule must not end a long evaluation: counted by the caller
        return _Row(canonical)


@dataclass
class _Set:
    """Unique valid molecules of a sample with their multiplicities (metrics weight by them)."""

    canonical: list[str | None]  # per input SMILES, None if invalid
    smiles: list[str]  # unique canonical SMILES of the scored molecules
    counts: np.ndarray  # (u,) int
    rows: list[_Row]
    n_unscored: int  # valid SMILES that could not be scored (see _Row)

    @property
    def fps(self) -> np.ndarray:  # (u, 128) packed bits
        return np.frombuffer(b"".join(r.fp for r in self.rows), np.uint8).reshape(-1, 128)


def _describe_all(smiles: Sequence[str], mode: str, n_jobs: int | None) -> _Set:
    unique = list(dict.fromkeys(smiles))
    rows: list[_Row | None] = []
    for start in range(0, len(unique), _CHUNK):
        if len(unique) > _CHUNK:
            log.info("RDKit descriptors: %d / %d molecules", start, len(unique))
        chunk = [(s, mode) for s in unique[start : start + _CHUNK]]
        rows += chem.parallel_map(_describe, chunk, n_jobs=n_jobs)
    by_input = dict(zip(unique, rows, strict=True))
    canonical, counts, first = [], Counter(), {}
    for s in smiles:
        row = by_input[s]
        canonical.append(None if row is None else row.canonical)
        if row is not None:
            counts[row.canonical] += 1
            first.setdefault(row.canonical, row)
    scored = [c for c in counts if first[c].fp is not None]
    n_unscored = sum(counts[c] for c in counts if first[c].fp is None)
    if n_unscored:
        log.warning(
            "%d valid molecules could not be scored (RDKit cannot re-read their canonical SMILES "
            "or fails on them); they count in valid and unique@k only",
            n_unscored,
        )
    weights = np.array([counts[c] for c in scored], np.int64)
    return _Set(canonical, scored, weights, [first[c] for c in scored], n_unscored)


def _counter(s: _Set, field: str) -> Counter:
    """Fragment or scaffold counts over all molecules, duplicates included (as MOSES)."""
    out: Counter = Counter()
    for row, n in zip(s.rows, s.counts, strict=True):
        items = getattr(row, field)
        for item in items if isinstance(items, list) else [items]:
            if item is not None:
                out[item] += int(n)
    return out


def _props(s: _Set) -> dict[str, np.ndarray]:
    table = np.array([r.props for r in s.rows], np.float64).reshape(
        len(s.rows), len(MOSES_PROPERTIES)
    )
    return {name: table[:, i] for i, name in enumerate(MOSES_PROPERTIES)}


# ----------------------------------------------------------------------------- similarity


@functools.cache
def _kernels():
    # JAX is imported here, not at module level: spawned RDKit workers import this module.
    import jax
    import jax.numpy as jnp

    def sim(a, b):  # uint8 bits (n, 1024), (m, 1024) -> Tanimoto (n, m)
        a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        inter = a @ b.T
        union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
        return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)  # MOSES: 0/0 -> 1

    def pow_sums(a, b, w, powers):  # one pass for IntDiv and IntDiv2
        t = sim(a, b)
        return jnp.stack([(t**p) @ w for p in powers])

    max_sim = jax.jit(lambda a, b, w: jnp.where(w > 0, sim(a, b), 0.0).max(1))
    return max_sim, jax.jit(pow_sums, static_argnums=3)


def _block(n: int, cap: int) -> int:
    """Power-of-two block size: few distinct shapes to compile, small sets stay small."""
    return min(cap, 1 << max(n - 1, 7).bit_length())


def _unpacked(packed: np.ndarray, start: int, size: int) -> np.ndarray:
    bits = np.unpackbits(packed[start : start + size], axis=1)
    return np.pad(bits, ((0, size - len(bits)), (0, 0)))


def tanimoto_reduce(
    a: np.ndarray,
    b: np.ndarray,
    weights: np.ndarray | None = None,
    powers: tuple[int, ...] | None = None,
) -> np.ndarray:
    """For each row of packed fingerprints a (n, 128): the max Tanimoto similarity to the rows of
    b (powers None) -> (n,), or sum_j weights_j * sim_ij^p for each p in powers -> (len(powers), n).
    Similarities are float32, in blocks, as MOSES computes them (in torch)."""
    max_sim, pow_sums = _kernels()
    weights = np.ones(len(b), np.float32) if weights is None else weights.astype(np.float32)
    out = np.zeros(len(a) if powers is None else (len(powers), len(a)), np.float64)
    bs_a, bs_b = _block(len(a), _BLOCKS[0]), _block(len(b), _BLOCKS[1])
    for j in range(0, len(b), bs_b):
        b_bits = _unpacked(b, j, bs_b)
        w = np.pad(weights[j : j + bs_b], (0, bs_b - len(weights[j : j + bs_b])))  # 0 = padding
        for i in range(0, len(a), bs_a):
            a_bits = _unpacked(a, i, bs_a)
            n = min(bs_a, len(a) - i)
            if powers is None:
                out[i : i + n] = np.maximum(out[i : i + n], max_sim(a_bits, b_bits, w)[:n])
            else:
                out[:, i : i + n] += np.asarray(pow_sums(a_bits, b_bits, w, powers))[:, :n]
    return out


def snn(s: _Set, ref_fps: np.ndarray) -> float:
    """Mean over sample molecules of the Tanimoto similarity to the nearest reference molecule."""
    return float(np.average(tanimoto_reduce(s.fps, ref_fps), weights=s.counts))


def internal_diversity(
    fps: np.ndarray, counts: np.ndarray, powers: tuple[int, ...] = (1, 2)
) -> list[float]:
    """MOSES IntDiv_p for each p: 1 - mean_i (mean_j T_ij^p)^(1/p) over all pairs of molecules,
    self pairs and duplicates included. fps: unique packed fingerprints; counts: multiplicities."""
    sums = tanimoto_reduce(fps, fps, counts, powers) / counts.sum()  # (len(powers), u)
    means = [
        np.average(row ** (1 / p), weights=counts) for p, row in zip(powers, sums, strict=True)
    ]
    return [float(1 - m) for m in means]


def cos_similarity(ref: dict[str, int], gen: dict[str, int]) -> float:
    """Cosine similarity of two count dictionaries (missing keys count 0); nan if one is empty."""
    if not ref or not gen:
        return math.nan
    keys = sorted(ref.keys() | gen.keys())
    r = np.array([ref.get(k, 0) for k in keys], np.float64)
    g = np.array([gen.get(k, 0) for k in keys], np.float64)
    return float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g)))


# ----------------------------------------------------------------------------- reference statistics


@dataclass(frozen=True)
class SplitStats:
    """What the metrics need of one reference split (test or test_scaffolds)."""

    fps: np.ndarray  # (u, 128) packed Morgan bits of the unique molecules
    frag: dict[str, int]  # BRICS fragment counts
    scaf: dict[str, int]  # scaffold counts (scaffolds of 2+ rings, as MOSES)
    props: dict[str, np.ndarray]  # logP, SA, QED, weight per molecule, duplicates included
    mu: np.ndarray  # (512,) ChemNet mean
    sigma: np.ndarray  # (512, 512) ChemNet covariance
    n: int


@dataclass(frozen=True)
class ReferenceStats:
    """Statistics of a reference: its test splits and the canonical training set (Novelty)."""

    splits: dict[str, SplitStats]  # "test" and, when the reference has one, "test_scaffolds"
    train: frozenset[str] | None


def reference_files(reference: str | Path) -> dict[str, Path]:
    """Files of a reference: 'moses', 'moses_sample' or a folder of train/test/test_scaffolds files
    (.csv with a SMILES column, or .smi/.txt; optionally gzipped; only test is required)."""
    from molvae import data  # not at module level: spawned RDKit workers import this module

    if reference == "moses":
        return data.moses_files()
    if reference == "moses_sample":
        return data.bundled_files()
    folder = Path(reference)
    if not folder.is_dir():
        raise ValueError(f"reference is 'moses', 'moses_sample' or a folder, not {reference!r}")
    files = {}
    for split in SPLITS:
        found = sorted(folder / f"{split}{suffix}" for suffix in _SUFFIXES)
        found = [p for p in found if p.is_file()]
        if len(found) > 1:
            raise ValueError(f"{folder}: several {split} files {[p.name for p in found]}")
        if found:
            files[split] = found[0]
    if "test" not in files:
        raise FileNotFoundError(f"{folder} has no test file (test.csv, test.csv.gz, test.smi...)")
    return files


def _read_smiles(path: Path) -> list[str]:
    from molvae import data

    return [s for s in data.read_smiles_file(path)["smiles"] if s]


def _cache_key(files: dict[str, Path], shipped: bool = False) -> str:
    content = {split: fetch.sha256_file(path) for split, path in sorted(files.items())}
    if shipped:
        content["shipped"] = sorted(digest for _, digest in SHIPPED_STATS.values())
    blob = json.dumps({"version": STATS_VERSION, "rdkit": rdkit.__version__, "files": content})
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _split_stats(smiles: list[str], n_jobs: int | None) -> SplitStats:
    from molvae.evaluation import chemnet  # lazily: spawned RDKit workers import this module

    s = _describe_all(smiles, "reference", n_jobs)
    n_invalid = sum(c is None for c in s.canonical)
    if n_invalid:
        log.warning("%d of %d reference molecules are invalid: left out", n_invalid, len(smiles))
    acts = chemnet.chemnet_activations([r.fcd_smiles for r in s.rows], canonize=False)
    mu, sigma = chemnet.fcd_stats(acts, s.counts)
    return SplitStats(
        fps=s.fps,
        frag=dict(_counter(s, "frags")),
        scaf=dict(_counter(s, "scaffold")),
        props={k: np.repeat(v, s.counts) for k, v in _props(s).items()},
        mu=mu,
        sigma=sigma,
        n=int(s.counts.sum()),
    )


def canonical_set(smiles: Sequence[str], n_jobs: int | None = None) -> frozenset[str]:
    """Canonical SMILES of the valid molecules of a list (for Novelty), in parallel."""
    out: set[str] = set()
    for start in range(0, len(smiles), 4 * _CHUNK):
        if len(smiles) > 4 * _CHUNK:
            log.info("canonical SMILES: %d / %d", start, len(smiles))
        chunk = chem.parallel_map(chem.canonical, smiles[start : start + 4 * _CHUNK], n_jobs=n_jobs)
        out.update(c for c in chunk if c is not None)
    return frozenset(out)


def _pack(strings) -> np.ndarray:
    return np.frombuffer("\n".join(sorted(strings)).encode(), np.uint8)


def _save(stats: ReferenceStats, folder: Path) -> None:
    for name, st in stats.splits.items():
        props = {f"prop_{k}": v for k, v in st.props.items()}
        np.savez_compressed(folder / f"{name}.npz", fps=st.fps, mu=st.mu, sigma=st.sigma, **props)
        counts = {"n": st.n, "frag": st.frag, "scaf": st.scaf}
        (folder / f"{name}.json").write_text(json.dumps(counts))
    if stats.train is not None:
        _save_train(stats.train, folder)


def _save_train(train: frozenset[str], folder: Path) -> None:
    tmp = folder / f"train.part-{os.getpid()}.npz"
    np.savez_compressed(tmp, smiles=_pack(train))
    tmp.replace(folder / "train.npz")  # atomic: train.npz is whole or absent


def _load(folder: Path) -> ReferenceStats:
    splits = {}
    for name in SPLITS[1:]:
        if not (folder / f"{name}.npz").exists():
            continue
        with np.load(folder / f"{name}.npz", allow_pickle=False) as z:
            props = {k: z[f"prop_{k}"] for k in MOSES_PROPERTIES}
            fps, mu, sigma = z["fps"], z["mu"], z["sigma"]
        counts = json.loads((folder / f"{name}.json").read_text())
        n = counts["n"]
        splits[name] = SplitStats(fps, counts["frag"], counts["scaf"], props, mu, sigma, n)
    train = None
    if (folder / "train.npz").exists():
        with np.load(folder / "train.npz", allow_pickle=False) as z:
            text = z["smiles"].tobytes().decode()
        train = frozenset(text.split("\n")) if text else frozenset()
    return ReferenceStats(splits, train)


def _build(
    files: dict[str, Path], n_jobs: int | None, shipped: bool = False
) -> tuple[ReferenceStats, dict[str, str]]:
    splits: dict[str, SplitStats] = {}
    if shipped:
        try:
            splits = shipped_moses_splits()
            log.info("reference moses: test statistics read from the molsets wheel")
        except (OSError, ValueError, pickle.UnpicklingError, fetch.DataUnavailableError) as e:
            log.warning("cannot read MOSES's shipped statistics (%s); computing them", e)
    origin = {name: "shipped" for name in splits}
    for name in SPLITS[1:]:
        if name in splits:
            continue
        if name in files:
            t0 = time.time()
            splits[name] = _split_stats(_read_smiles(files[name]), n_jobs)
            origin[name] = "computed"
            log.info("reference %s: %d molecules in %.0f s", name, splits[name].n, time.time() - t0)
    return ReferenceStats(splits, None), origin


# ----------------------------------------------------------------------------- MOSES's statistics


def _reconstruct(cls, shape, dtype):  # numpy's pickle entry point, for plain ndarrays only
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"refusing to build {cls!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _latin1(text: str, encoding: str) -> bytes:  # how protocol 2 pickles store raw bytes
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing encoding {encoding!r}")
    return text.encode("latin1")


class _DataUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, dicts, lists, strings, numbers and Counters; any other global
    (a function, a class, os.system...) is refused before anything runs."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1,
        ("collections", "Counter"): Counter,
    }

    def find_class(self, module: str, name: str):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_pickled_npz(path: Path, member: str = "stats.npy"):
    """The object stored in a .npz written by np.savez with a pickled object (allow_pickle),
    read without executing anything: only plain data (see _DataUnpickler) is admitted."""
    from numpy.lib import format as npformat

    with zipfile.ZipFile(path) as zf, zf.open(member) as f:
        version = npformat.read_magic(f)
        read_header = {(1, 0): npformat.read_array_header_1_0}.get(
            version, npformat.read_array_header_2_0
        )
        shape, _, dtype = read_header(f)
        if dtype != np.dtype(object) or shape != ():
            raise ValueError(f"{path}: expected one pickled object, found {dtype} {shape}")
        return _DataUnpickler(f).load().item()


def _shipped_split(raw: dict, path: Path) -> SplitStats:
    """SplitStats from MOSES's compute_intermediate_statistics dict (FCD mu/sigma, SNN
    fingerprints (n, 1024) uint8, Frag/Scaf Counters, property values)."""
    try:
        fps = np.asarray(raw["SNN"]["fps"])
        mu = np.asarray(raw["FCD"]["mu"], np.float64)
        sigma = np.asarray(raw["FCD"]["sigma"], np.float64)
        props = {k: np.asarray(raw[k]["values"], np.float64) for k in MOSES_PROPERTIES}
        frag, scaf = raw["Frag"]["frag"], raw["Scaf"]["scaf"]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not MOSES statistics ({e!r})") from e
    n = len(fps)
    if fps.shape != (n, 1024) or mu.shape != (512,) or sigma.shape != (512, 512):
        raise ValueError(f"{path}: unexpected shapes {fps.shape}, {mu.shape}, {sigma.shape}")
    if any(len(v) != n for v in props.values()):
        raise ValueError(f"{path}: property values do not match the {n} fingerprints")
    return SplitStats(
        fps=np.packbits(fps.astype(bool), axis=1),  # (n, 128), bit order of chem.morgan_bits
        frag={str(k): int(v) for k, v in frag.items()},
        scaf={str(k): int(v) for k, v in scaf.items()},
        props=props,
        mu=mu,
        sigma=sigma,
        n=n,
    )


def shipped_moses_splits() -> dict[str, SplitStats]:
    """MOSES's own statistics of its test and scaffold-test sets, from the pinned molsets wheel
    (each file sha256-checked, read without executing anything). Same definitions as molvae's
    build and the same ChemNet weights (tests/test_metrics.py checks both)."""
    out = {}
    for split, (member, digest) in SHIPPED_STATS.items():
        path = fetch.wheel_member(fetch.MOLSETS, member)
        if (got := fetch.sha256_file(path)) != digest:
            raise fetch.DataUnavailableError(f"{path} has sha256 {got}, expected {digest}")
        out[split] = _shipped_split(read_pickled_npz(path), path)
    return out


_LOADED: dict[str, ReferenceStats] = {}


def reference_stats(
    reference: str | Path = "moses_sample",
    n_jobs: int | None = None,
    shipped: bool = True,
    train: bool = True,
) -> ReferenceStats:
    """Statistics of a reference, computed once and cached under cache_dir()/refstats/.

    The cache key is the sha256 of the reference files (plus the RDKit and statistics versions),
    so editing a reference file recomputes them. For 'moses' the test and scaffold-test
    statistics are MOSES's own, shipped in the molsets wheel: seconds (shipped=False, or a
    failure to read them, computes them: 2 x 176k molecules through RDKit and ChemNet, 20-25
    minutes on 2 free cores). The canonical training set (Novelty) is built on first need:
    train=False leaves it out (stats.train None) when the caller has its own; for MOSES it is
    1.6M SMILES to canonicalize, 5-10 minutes on 2 cores.
    """
    files = reference_files(reference)
    shipped = shipped and reference == "moses"
    key = _cache_key(files, shipped)
    want_train = train and "train" in files
    if key in _LOADED and (_LOADED[key].train is not None or not want_train):
        return _LOADED[key]
    folder = fetch.cache_dir() / "refstats" / key
    if not (folder / "meta.json").exists():
        log.info("computing reference statistics of %s (once; cached in %s)", reference, folder)
        t0 = time.time()
        stats, origin = _build(files, n_jobs, shipped)
        tmp = folder.with_name(f"{key}.part-{os.getpid()}")
        tmp.mkdir(parents=True)
        _save(stats, tmp)
        meta = {
            "reference": str(reference),
            "files": {k: str(v) for k, v in files.items()},
            "statistics": origin,  # per test split: "shipped" (MOSES's own) or "computed"
            "seconds": round(time.time() - t0, 1),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(folder, ignore_errors=True)  # a folder without meta.json is incomplete
        try:
            tmp.rename(folder)  # atomic: readers never see a half-written folder
        except OSError:  # another process finished the same statistics first
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("reference statistics of %s took %.0f s", reference, time.time() - t0)
    if want_train and not (folder / "train.npz").exists():
        t0 = time.time()
        log.info("canonical training set of %s for Novelty (once; cached in %s)", reference, folder)
        _save_train(canonical_set(_read_smiles(files["train"]), n_jobs), folder)
        log.info("canonical training set of %s took %.0f s", reference, time.time() - t0)
    _LOADED[key] = _load(folder)
    return _LOADED[key]


# ----------------------------------------------------------------------------- metrics


def _unique_at(valid: list[str], k: int) -> float:
    if len(valid) < k:  # MOSES warns and uses what there is
        msg = f"Can't compute unique@{k}: only {len(valid)} valid molecules; using them all"
        warnings.warn(msg, stacklevel=4)  # points at the caller of evaluate or basic_metrics
    first = valid[:k]
    return len(set(first)) / len(first) if first else math.nan


def _basic(s: _Set, k: Sequence[int] | int, train: frozenset[str] | None) -> dict[str, float]:
    valid = [c for c in s.canonical if c is not None]
    out = {"valid": len(valid) / len(s.canonical) if s.canonical else math.nan}
    for k_ in [k] if isinstance(k, int) else k:
        out[f"unique@{k_}"] = _unique_at(valid, k_)
    if s.rows:
        out["IntDiv"], out["IntDiv2"] = internal_diversity(s.fps, s.counts, (1, 2))
    else:
        out["IntDiv"] = out["IntDiv2"] = math.nan
    if train is not None:
        novel = sum(c not in train for c in s.smiles)
        out["Novelty"] = novel / len(s.smiles) if s.smiles else math.nan
    return out


def _fcd(gen_stats: tuple[np.ndarray, np.ndarray] | None, ref: SplitStats) -> float:
    from molvae.evaluation import chemnet  # lazily: spawned RDKit workers import this module

    if gen_stats is None:
        return math.nan
    return chemnet.frechet_distance(ref.mu, ref.sigma, *gen_stats)


def fcd(smiles: Sequence[str], ref: SplitStats, n_jobs: int | None = None) -> float:
    """FCD of the valid molecules of `smiles` to one reference split's statistics (e.g.
    `reference_stats("moses").splits["test"]`), as `evaluate` computes FCD/Test, without the
    other metrics."""
    return _fcd(_chemnet_stats(_describe_all(smiles, "reference", n_jobs)), ref)


def _vs_split(s: _Set, gen_stats, ref: SplitStats) -> dict[str, float]:
    return {
        "FCD": _fcd(gen_stats, ref),
        "SNN": snn(s, ref.fps) if s.rows else math.nan,
        "Frag": cos_similarity(ref.frag, _counter(s, "frags")),
        "Scaf": cos_similarity(ref.scaf, _counter(s, "scaffold")),
    }


def _chemnet_stats(s: _Set) -> tuple[np.ndarray, np.ndarray] | None:
    from molvae.evaluation import chemnet  # lazily: spawned RDKit workers import this module

    if s.counts.sum() < 2:
        warnings.warn(
            f"Can't compute FCD for fewer than 2 molecules ({s.counts.sum()})", stacklevel=3
        )
        return None
    acts = chemnet.chemnet_activations([r.fcd_smiles for r in s.rows], canonize=False)
    return chemnet.fcd_stats(acts, s.counts)


def evaluate(
    smiles: Sequence[str],
    reference: str | Path | ReferenceStats = "moses_sample",
    n_jobs: int | None = None,
    train_smiles: Sequence[str] | None = None,
    k: Sequence[int] | int = (1000, 10000),
    train_canonical: bool = False,
) -> dict[str, float]:
    """MOSES metrics of generated SMILES, with the names and definitions of moses.get_all_metrics.

    reference: 'moses' (full MOSES test, scaffold test and train sets), 'moses_sample' (the
    bundled sample), a folder (see reference_files) or ReferenceStats; */TestSF and Novelty are
    left out when it has no test_scaffolds or train set. train_smiles, if given, replaces its
    train set for Novelty; train_canonical=True takes them as canonical SMILES already (a run's
    preprocessed training set) instead of canonicalizing them again (minutes for MOSES's 1.6M).
    Invalid SMILES count against `valid` only; duplicates count in every metric except unique@k
    and Novelty, as in MOSES. Metrics that cannot be computed are nan.
    """
    t0 = time.time()
    smiles = list(smiles)
    ref = reference
    if not isinstance(ref, ReferenceStats):
        ref = reference_stats(reference, n_jobs, train=train_smiles is None)
    train = ref.train if train_smiles is None else _train_set(train_smiles, train_canonical, n_jobs)
    with _timed("RDKit descriptors"):
        s = _describe_all(smiles, "sample", n_jobs)
    with _timed("validity, uniqueness, IntDiv, Novelty"):
        basic = _basic(s, k, train)
    out = {key: basic.pop(key) for key in list(basic) if key == "valid" or key.startswith("uniq")}
    with _timed("ChemNet"):
        gen_stats = _chemnet_stats(s)
    for split, suffix in (("test", "Test"), ("test_scaffolds", "TestSF")):
        if split in ref.splits:
            with _timed(f"FCD, SNN, Frag, Scaf vs {split}"):
                metrics = _vs_split(s, gen_stats, ref.splits[split])
            out.update({f"{name}/{suffix}": metrics[name] for name in TEST_METRICS})
    out["IntDiv"], out["IntDiv2"] = basic["IntDiv"], basic["IntDiv2"]
    out["Filters"] = _filters_fraction(s)
    gen_props = _props(s)
    for name, values in ref.splits["test"].props.items():
        out[name] = _wasserstein(values, gen_props[name], s.counts)
    if "Novelty" in basic:
        out["Novelty"] = basic["Novelty"]
    name = "given statistics" if isinstance(reference, ReferenceStats) else reference
    log.info("evaluated %d SMILES against %s in %.0f s", len(smiles), name, time.time() - t0)
    return {key: float(v) for key, v in out.items()}


@contextlib.contextmanager
def _timed(what: str):
    t0 = time.time()
    yield
    log.info("%s: %.1f s", what, time.time() - t0)


def _filters_fraction(s: _Set) -> float:
    if not s.rows:
        return math.nan
    return float(np.average([r.passes for r in s.rows], weights=s.counts))


def _wasserstein(ref: np.ndarray, gen: np.ndarray, counts: np.ndarray) -> float:
    if len(gen) == 0:
        return math.nan
    return float(wasserstein_distance(ref, gen, v_weights=counts))


def _train_set(train_smiles: Sequence[str], canonical: bool, n_jobs: int | None) -> frozenset:
    return frozenset(train_smiles) if canonical else canonical_set(list(train_smiles), n_jobs)


def basic_metrics(
    smiles: Sequence[str],
    train_smiles: Sequence[str] | None = None,
    k: Sequence[int] | int = (1000, 10000),
    n_jobs: int | None = None,
    train_canonical: bool = False,
) -> dict[str, float]:
    """valid, unique@k, IntDiv, IntDiv2 and (if train_smiles is given) Novelty: no reference
    statistics, no ChemNet. Definitions as in evaluate."""
    s = _describe_all(list(smiles), "basic", n_jobs)
    train = None if train_smiles is None else _train_set(train_smiles, train_canonical, n_jobs)
    return {key: float(v) for key, v in _basic(s, k, train).items()}
