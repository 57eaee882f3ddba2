"""Dataset sources (bundled MOSES sample, full MOSES, any CSV/SMI), preprocessing and its cache."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rdkit
import selfies as sf

from molvae import chem, fetch

log = logging.getLogger(__name__)

SOURCES = ("moses_sample", "moses", "csv")
SPLITS = ("train", "test", "test_scaffolds")
REASONS = (
    "empty",
    "invalid_smiles",
    "multiple_fragments",
    "selfies_encode_failed",
    "too_long",
    "duplicate",
    "ring_too_large",  # data.max_ring: no string of the molecule (<= max_len) keeps rings so small
)
# Rows of data_report.csv for molecules that were kept but changed (kept=True in the file).
KEPT_REASONS = ("fragments_stripped",)
FRAGMENT_POLICIES = ("largest", "reject", "keep")
FORMAT_VERSION = 3  # bump when preprocessing changes: it is part of the cache key
MOSES_MEMBER = "moses/dataset/data/{}.csv.gz"
REPORT_COLUMNS = ("split", "line", "smiles", "reason")


class DataError(ValueError):
    """A data file or data setting that cannot be used; the message names the file and problem."""


@dataclass(frozen=True)
class DataConfig:
    """Where the molecules come from and how they are filtered (see the module's functions)."""

    source: str = "moses_sample"  # "moses_sample" | "moses" | "csv"
    path: str | None = None  # csv source: .csv, .tsv, .smi, .txt, optionally .gz
    smiles_column: str = "SMILES"  # header name in csv files; .smi/.txt use the first field
    property_columns: tuple[str, ...] = ()
    test_fraction: float = 0.1  # csv source: seeded random train/test split
    max_len: int = 72  # maximum SELFIES tokens (without start/end tokens)
    limit: int | None = None  # keep a seeded random subset of N train rows (smoke runs)
    seed: int = 0
    n_jobs: int | None = None  # processes for RDKit/SELFIES work (None: all cores)
    cache: bool = True
    # Salts and mixtures ("CC(=O)[O-].[Na+]", "CCO.CCN"): "largest" keeps the largest organic
    # fragment (counted as fragments_stripped), "reject" drops them, "keep" keeps dotted SMILES.
    fragments: str = "largest"
    # Tokens: 0 = one per SELFIES symbol; N > 0 = N byte-pair merges learned on the training
    # set (shorter sequences: fewer decoding steps). Not part of the preprocessing cache key.
    bpe_merges: int = 0
    # Ring order: 0 = each molecule's SELFIES is the encoding of its canonical SMILES; N > 0 =
    # a string whose ring bonds each close a ring of at most N atoms when read (chem.
    # small_ring_selfies; ~6% of MOSES's canonical strings close a fused system's outer ring
    # first), the strings a decoder trained under model.max_ring=N must see. Molecules with no
    # such string (a larger ring) are dropped as ring_too_large.
    max_ring: int = 0
    # A preprocessed dataset file (the .npz molvae writes under <cache_dir>/preprocessed/) read
    # instead of the source: for a machine that has neither the source files nor a network.
    # The file is trusted to match the other settings here; max_ring and bpe_merges still apply.
    preprocessed: str | None = None

    def __post_init__(self) -> None:
        if self.max_ring and not 3 <= self.max_ring <= chem.MAX_RING:
            raise DataError(
                f"data.max_ring must be 0 (canonical strings) or 3..{chem.MAX_RING}, "
                f"got {self.max_ring}"
            )
        if self.bpe_merges < 0:
            raise DataError(f"data.bpe_merges must be >= 0, got {self.bpe_merges}")
        if self.fragments not in FRAGMENT_POLICIES:
            raise DataError(
                f"data.fragments must be one of {list(FRAGMENT_POLICIES)}, got {self.fragments!r}"
            )


@dataclass
class Split:
    """Molecules of one split: canonical SMILES, their SELFIES and optional property table."""

    smiles: list[str]
    selfies: list[str]
    properties: pd.DataFrame | None
    lines: list[int] | None = None  # 1-based line of each molecule in its source file

    def __len__(self) -> int:
        return len(self.smiles)


@dataclass
class Dataset:
    """Preprocessed splits, the rejected inputs (one row each) and the counts."""

    train: Split
    test: Split
    test_scaffolds: Split | None
    report: pd.DataFrame  # columns split, line, smiles, reason
    stats: dict


# ----------------------------------------------------------------------------- files


def moses_files() -> dict[str, Path]:
    """Paths of the full MOSES splits, fetched once from the pinned molsets wheel on PyPI."""
    return {s: fetch.wheel_member(fetch.MOLSETS, MOSES_MEMBER.format(s)) for s in SPLITS}


def bundled_files() -> dict[str, Path]:
    """Paths of the MOSES sample shipped with molvae (20k train, 2k test, 2k test_scaffolds)."""
    folder = Path(__file__).parent / "assets" / "moses_sample"
    return {s: folder / f"{s}.csv.gz" for s in SPLITS}


def _read_text(path: Path) -> str:
    """Whole file as text: gunzipped if gzip, BOM dropped, UTF-8 or else latin-1, '\\n' endings."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt gzip file ({e})") from e
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        log.warning("%s: not valid UTF-8 (byte %d); reading it as latin-1", path, e.start)
        text = raw.decode("latin-1")
    text = text.replace("\r\n", "\n")
    return text if "\n" in text else text.replace("\r", "\n")  # old Mac line endings


def _lines(text: str) -> list[str]:
    lines = text.split("\n")  # not splitlines(): it also splits on \x85, \x0c, ... inside a line
    return lines[:-1] if lines and lines[-1] == "" else lines


def _file_kind(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".smi", ".txt")):
        return "smi"
    if name.endswith((".csv", ".tsv")):
        return "csv"
    raise DataError(f"{path}: unknown file type; use .csv, .tsv, .smi or .txt (optionally .gz)")


def _column(header: list[str], name: str, path: Path, what: str) -> int:
    """Index of column `name` (exact, else the unique case-insensitive match)."""
    if name in header:
        return header.index(name)
    folded = [i for i, h in enumerate(header) if h.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise DataError(f"{path}: no {what} column {name!r}; the columns are {header}")


def _table(lines, cols, path, smiles_column, property_columns) -> dict[str, list]:
    """Rows of (line number, fields) -> dict of columns line, smiles and raw property strings."""
    s_idx = _column(cols, smiles_column, path, "SMILES")
    p_idx = [_column(cols, c, path, "property") for c in property_columns]
    out: dict[str, list] = {"line": [], "smiles": [], **{c: [] for c in property_columns}}
    for number, fields in lines:
        out["line"].append(number)
        out["smiles"].append(fields[s_idx].strip() if s_idx < len(fields) else "")
        for c, i in zip(property_columns, p_idx, strict=True):
            out[c].append(fields[i].strip() if i < len(fields) else "")
    return out


def _parse_csv(text: str, path: Path, smiles_column: str, property_columns) -> dict[str, list]:
    lines = _lines(text)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise DataError(f"{path}: empty file (no header, no molecules)")
    head = lines[first]
    delim = "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","
    delim = max((delim, ",", "\t", ";"), key=head.count)  # semicolon CSVs from spreadsheets
    reader = csv.reader(lines, delimiter=delim)
    try:
        rows = [(reader.line_num, r) for r in reader]
    except csv.Error as e:  # e.g. a NUL byte or an unterminated quote swallowing the file
        raise DataError(f"{path}: unreadable CSV at line {reader.line_num}: {e}") from e
    blank = [(n, []) for n, _ in rows[:first]]  # blank lines before the header still count
    header = [h.strip() for h in rows[first][1]]
    try:
        return _table(blank + rows[first + 1 :], header, path, smiles_column, property_columns)
    except DataError as e:
        if chem.is_valid(header[0]):
            raise DataError(
                f"{e}. The first line looks like a molecule: is there no header? "
                "Name the file .smi for one SMILES per line"
            ) from None
        raise


def _parse_smi(text: str, path: Path, smiles_column: str, property_columns) -> dict[str, list]:
    lines = [(i + 1, line.split()) for i, line in enumerate(_lines(text))]
    first = next((i for i, (_, f) in enumerate(lines) if f), None)
    names = {"smiles", smiles_column.lower()}
    if first is not None and lines[first][1][0].lower() in names:
        header = lines[first][1]
        rows = lines[:first] + lines[first + 1 :]
        return _table(rows, header, path, header[0], property_columns)
    if property_columns:
        raise DataError(
            f"{path}: property columns {list(property_columns)} need a header line "
            "naming the columns (first field 'smiles')"
        )
    return _table(lines, ["smiles"], path, "smiles", ())


def _read_raw(path: str | Path, smiles_column: str, property_columns) -> pd.DataFrame:
    """Columns line, smiles and the property columns as raw strings ('' where missing)."""
    path = Path(path)
    kind = _file_kind(path)
    parse = _parse_csv if kind == "csv" else _parse_smi
    columns = parse(_read_text(path), path, smiles_column, tuple(property_columns))
    df = pd.DataFrame(columns)
    if not (df["smiles"] != "").any():
        raise DataError(f"{path}: empty file (no molecules)")
    return df


def _numeric(df: pd.DataFrame, columns, where: str) -> tuple[pd.DataFrame, dict[str, int]]:
    """Raw property strings -> floats (NaN if missing or not a number) and non-numeric counts."""
    out, counts = pd.DataFrame(index=df.index), {}
    for c in columns:
        raw = df[c].astype(str)
        out[c] = pd.to_numeric(raw.where(raw != ""), errors="coerce").astype(float)
        bad = out[c].isna() & (raw != "")
        counts[c] = int(bad.sum())
        if counts[c]:
            first = df.loc[bad].iloc[0]
            log.warning(
                "%s: column %r has %d non-numeric values (first at line %d: %r); they are NaN",
                where,
                c,
                counts[c],
                first["line"],
                first[c],
            )
    return out, counts


def read_smiles_file(
    path: str | Path, smiles_column: str = "SMILES", property_columns: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Read a .csv/.tsv/.smi/.txt file (optionally gzipped) into columns line, smiles, properties.

    `line` is the 1-based line number in the file; empty lines are kept with smiles ''. Property
    values that are missing or not numbers are NaN. Raises DataError naming the file and problem.
    """
    df = _read_raw(path, smiles_column, property_columns)
    props, _ = _numeric(df, property_columns, str(path))
    return pd.concat([df[["line", "smiles"]], props], axis=1)


# ----------------------------------------------------------------------------- preprocessing


def standardize(smiles: str | None, fragments: str = "largest") -> tuple[str, str, bool]:
    """The molecule that training sees for one input: (canonical SMILES, reason, stripped).

    Canonical isomeric SMILES; a disconnected input (salt, mixture) follows the fragments policy
    (see DataConfig.fragments). reason is '' if usable, else 'empty', 'invalid_smiles' or
    'multiple_fragments' ('reject' policy); stripped is True if salts/solvents were dropped
    ('largest' policy). The one definition for training data and for scoring user molecules.
    """
    if fragments not in FRAGMENT_POLICIES:
        raise DataError(f"fragments must be one of {list(FRAGMENT_POLICIES)}, got {fragments!r}")
    if not smiles or not smiles.strip():
        return "", "empty", False
    multi = False
    try:
        can = chem.canonical(smiles)
        multi = bool(can) and "." in can  # a canonical SMILES has a '.' iff it is disconnected
        if multi and fragments == "largest":
            can = chem.largest_fragment(can)
    except Exception:  # never let one odd molecule kill a long job
        can = None
    if not can:
        return "", "invalid_smiles", False
    if multi and fragments == "reject":
        return can, "multiple_fragments", False
    return can, "", multi and fragments == "largest"


def preprocess(
    smiles: Sequence[str], max_len: int, fragments: str, n_jobs: int | None = None
) -> list[tuple[str, str, str, bool]]:
    """preprocess_one of every molecule, in parallel over the RDKit process pool."""
    return chem.parallel_map(preprocess_one, [(s, max_len, fragments) for s in smiles], n_jobs)


def preprocess_one(args: tuple[str, int, str]) -> tuple[str, str, str, bool]:
    """(raw SMILES, max_len, fragments policy) -> (canonical SMILES, SELFIES, reason, stripped).

    reason is '' if kept; stripped is True if salts/solvents were dropped ('largest' policy).
    """
    smiles, max_len, fragments = args
    can, reason, stripped = standardize(smiles, fragments)
    if reason:
        return can, "", reason, stripped
    try:
        sel = sf.encoder(can)
    except Exception:
        sel = None
    if not sel:
        return can, "", "selfies_encode_failed", stripped
    if len(list(sf.split_selfies(sel))) > max_len:
        return can, sel, "too_long", stripped
    return can, sel, "", stripped


def _finish_split(name, df, results, props, exclude=frozenset()):
    """Drop rejected and duplicate molecules; return the Split, its report rows and its counts."""
    seen, keep, rejected = set(), [], []
    for i, (can, _, reason, _) in enumerate(results):
        if not reason and (can in seen or can in exclude):
            reason = "duplicate"
        if reason:
            rejected.append((i, reason))
        else:
            seen.add(can)
            keep.append(i)
    split = Split(
        smiles=[results[i][0] for i in keep],
        selfies=[results[i][1] for i in keep],
        properties=None if props is None else props.iloc[keep].reset_index(drop=True),
        lines=[int(x) for x in df["line"].to_numpy()[keep]],
    )
    rejected = sorted(rejected + [(i, "fragments_stripped") for i in keep if results[i][3]])
    idx = [i for i, _ in rejected]
    report = _report_frame(
        [name] * len(idx),
        df["line"].to_numpy()[idx],
        df["smiles"].to_numpy()[idx],
        [r for _, r in rejected],
    )
    counts = {"read": len(results), "kept": len(keep)}
    counts.update({r: sum(1 for _, x in rejected if x == r) for r in REASONS})  # dropped rows
    counts["fragments_stripped"] = sum(results[i][3] for i in keep)  # kept molecules only
    return split, report, counts


def _report_frame(split, line, smiles, reason) -> pd.DataFrame:
    """The report's columns with fixed dtypes (so a cached report equals a fresh one)."""
    columns = (split, np.asarray(line, np.int64), smiles, reason)
    dtypes = (str, np.int64, str, str)
    return pd.DataFrame(
        {c: pd.Series(v, dtype=t) for c, v, t in zip(REPORT_COLUMNS, columns, dtypes, strict=True)}
    )


def report_rows(ds: Dataset, split: str, rows: Sequence[int], reason: str) -> pd.DataFrame:
    """Report rows (the columns of Dataset.report) for molecules `rows` of a split that a later
    step cannot use, e.g. test molecules with symbols outside the training vocabulary."""
    part: Split = getattr(ds, split)
    lines = part.lines or [0] * len(part)  # 0: line unknown
    return _report_frame(
        [split] * len(rows),
        [lines[i] for i in rows],
        [part.smiles[i] for i in rows],
        [reason] * len(rows),
    )


def _select(df: pd.DataFrame, idx: np.ndarray) -> pd.DataFrame:
    return df.iloc[np.sort(idx)].reset_index(drop=True)  # file order, so 'keep first' means it


def _partition(cfg: DataConfig, tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Split a csv table into train/test (seeded) and apply `limit` to the train rows."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.source == "csv":
        table = tables["file"]
        perm = rng.permutation(len(table))
        n_test = int(round(cfg.test_fraction * len(perm)))
        train_idx = perm[n_test:][: cfg.limit]
        return {"train": _select(table, train_idx), "test": _select(table, perm[:n_test])}
    parts = dict(tables)
    if cfg.limit is not None:
        parts["train"] = _select(parts["train"], rng.permutation(len(parts["train"]))[: cfg.limit])
    return parts


def _build(cfg: DataConfig, files: dict[str, Path]) -> Dataset:
    cols = tuple(cfg.property_columns)
    smiles_column = cfg.smiles_column if cfg.source == "csv" else "SMILES"
    tables = {s: _read_raw(p, smiles_column, cols) for s, p in files.items()}
    parts = _partition(cfg, tables)
    raw = [s for df in parts.values() for s in df["smiles"]]
    flat = preprocess(raw, cfg.max_len, cfg.fragments, n_jobs=cfg.n_jobs)
    splits, reports, stats, start, exclude = {}, [], {}, 0, frozenset()
    for name, df in parts.items():
        results, start = flat[start : start + len(df)], start + len(df)
        where = f"{files.get(name, files.get('file'))} ({name})"
        props, non_numeric = _numeric(df, cols, where) if cols else (None, {})
        split, report, stats[name] = _finish_split(name, df, results, props, exclude)
        if cols:
            stats[name]["non_numeric"] = non_numeric
        if cfg.source == "csv" and name == "train":
            exclude = frozenset(split.smiles)  # a test molecule also in train would leak
        splits[name], reports = split, reports + [report]
    if not splits["train"].smiles:
        raise DataError(
            f"{files.get('file', files.get('train'))}: no usable molecules in the "
            f"train split; counts {stats['train']}"
        )
    stats["total"] = _total(stats)
    report = pd.concat(reports, ignore_index=True)
    return Dataset(splits["train"], splits["test"], splits.get("test_scaffolds"), report, stats)


def _total(per_split: dict[str, dict]) -> dict[str, int]:
    keys = ("read", "kept", *REASONS, "fragments_stripped")
    return {k: sum(c.get(k, 0) for c in per_split.values()) for k in keys}


def _small_ring_one(args: tuple[str, str, int, int]) -> str:
    """(canonical SMILES, its SELFIES, max_ring, max_len) -> the SELFIES itself if its ring
    bonds close rings of at most max_ring atoms, else chem.small_ring_selfies ('' if none)."""
    smiles, selfies, max_ring, max_len = args
    try:
        if max(chem.ring_closures(selfies), default=0) <= max_ring:
            return selfies
    except ValueError:  # not one the grammar reads as it is: look for one that is
        pass
    return chem.small_ring_selfies(smiles, max_ring, max_len) or ""


def _small_rings(ds: Dataset, cfg: DataConfig) -> Dataset:
    """ds with every split's strings written small-ring-first (DataConfig.max_ring); molecules
    with no such string dropped and reported as ring_too_large."""
    splits, reports = {}, [ds.report]
    for name in _split_names(ds):
        split = getattr(ds, name)
        jobs = [
            (m, s, cfg.max_ring, cfg.max_len)
            for m, s in zip(split.smiles, split.selfies, strict=True)
        ]
        out = chem.parallel_map(_small_ring_one, jobs, cfg.n_jobs)
        keep = [i for i, s in enumerate(out) if s]
        drop = [i for i, s in enumerate(out) if not s]
        lines = split.lines or list(range(1, len(split) + 1))
        splits[name] = Split(
            smiles=[split.smiles[i] for i in keep],
            selfies=[out[i] for i in keep],
            properties=None if split.properties is None else _select(split.properties, keep),
            lines=[lines[i] for i in keep],
        )
        reports.append(
            _report_frame(
                [name] * len(drop),
                [lines[i] for i in drop],
                [split.smiles[i] for i in drop],
                ["ring_too_large"] * len(drop),
            )
        )
        c = ds.stats[name]
        c["kept"] -= len(drop)
        c["ring_too_large"] = len(drop)
        c["ring_rewritten"] = sum(1 for i in keep if out[i] != split.selfies[i])
    if not splits["train"].smiles:
        raise DataError(f"data.max_ring={cfg.max_ring}: no training molecule has rings that small")
    ds.stats["total"] = _total({n: ds.stats[n] for n in _split_names(ds)})
    ds.stats["max_ring"] = cfg.max_ring
    report = pd.concat(reports, ignore_index=True)
    return Dataset(splits["train"], splits["test"], splits.get("test_scaffolds"), report, ds.stats)


# ----------------------------------------------------------------------------- cache


def _pack(strings, escape: bool = False) -> np.ndarray:
    """Strings -> UTF-8 bytes, one per line (4x smaller than a fixed-width unicode array)."""
    if escape:
        strings = (s.replace("\n", "\\n") for s in strings)
    return np.frombuffer("".join(s + "\n" for s in strings).encode("utf-8"), dtype=np.uint8)


def _unpack(data: np.ndarray) -> list[str]:
    return data.tobytes().decode("utf-8").split("\n")[:-1]


def _cache_key(cfg: DataConfig, files: dict[str, Path]) -> str:
    csv_source = cfg.source == "csv"
    settings = {
        "version": FORMAT_VERSION,
        "files": {s: fetch.sha256_file(p) for s, p in files.items()},
        "csv": csv_source,
        "max_len": cfg.max_len,
        "fragments": cfg.fragments,
        "smiles_column": cfg.smiles_column if csv_source else "SMILES",
        "property_columns": list(cfg.property_columns),
        "test_fraction": cfg.test_fraction if csv_source else None,
        "limit": cfg.limit,
        "seed": cfg.seed,
        "rdkit": rdkit.__version__,  # canonical SMILES may change between RDKit releases
        "selfies": sf.__version__,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _save_cache(ds: Dataset, path: Path) -> None:
    arrays = {"stats": np.array(json.dumps(ds.stats)), "splits": np.array(_split_names(ds))}
    for name in _split_names(ds):
        split = getattr(ds, name)
        arrays[f"{name}.smiles"] = _pack(split.smiles)
        arrays[f"{name}.selfies"] = _pack(split.selfies)
        arrays[f"{name}.lines"] = np.asarray(split.lines, np.int64)
        if split.properties is not None:
            arrays[f"{name}.properties"] = split.properties.to_numpy(np.float64)
            arrays["property_columns"] = np.array(list(split.properties.columns), dtype=str)
    arrays["report.split"] = _pack(ds.report["split"])
    arrays["report.line"] = ds.report["line"].to_numpy(np.int64)
    arrays["report.smiles"] = _pack(ds.report["smiles"], escape=True)
    arrays["report.reason"] = _pack(ds.report["reason"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)  # atomic: readers never see a half-written cache file


def _load_cache(path: Path) -> Dataset | None:
    """Dataset from a cache file, or None (with a warning) if the file is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = [str(s) for s in z["splits"]]
            cols = [str(c) for c in z["property_columns"]] if "property_columns" in z else None
            splits = {n: _split_from(z, n, cols) for n in names}
            report = _report_frame(
                _unpack(z["report.split"]),
                z["report.line"],
                _unpack(z["report.smiles"]),
                _unpack(z["report.reason"]),
            )
            stats = json.loads(str(z["stats"]))
    except Exception as e:  # a corrupt cache is rebuilt, never fatal
        log.warning("ignoring unreadable cache file %s (%s)", path, e)
        return None
    return Dataset(splits["train"], splits["test"], splits.get("test_scaffolds"), report, stats)


def _split_from(z, name: str, cols: list[str] | None) -> Split:
    props = None
    if cols is not None:
        props = pd.DataFrame(z[f"{name}.properties"], columns=cols, dtype=float)
    lines = [int(x) for x in z[f"{name}.lines"]]
    return Split(_unpack(z[f"{name}.smiles"]), _unpack(z[f"{name}.selfies"]), props, lines)


def _split_names(ds: Dataset) -> list[str]:
    return [s for s in SPLITS if getattr(ds, s) is not None]


# ----------------------------------------------------------------------------- entry points


def _source_files(cfg: DataConfig) -> dict[str, Path]:
    if cfg.source not in SOURCES:
        raise DataError(f"unknown data source {cfg.source!r}; valid sources: {list(SOURCES)}")
    if (
        cfg.max_len < 1
        or not 0 <= cfg.test_fraction < 1
        or (cfg.limit is not None and cfg.limit < 1)
    ):
        raise DataError(f"need max_len >= 1, 0 <= test_fraction < 1, limit >= 1 or None: {cfg}")
    if cfg.source == "csv":
        if not cfg.path:
            raise DataError("data source 'csv' needs a path (data.path=FILE)")
        path = Path(cfg.path).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: file not found")
        return {"file": path}
    if cfg.path:
        log.warning("data.path=%s is ignored for source %r", cfg.path, cfg.source)
    return bundled_files() if cfg.source == "moses_sample" else moses_files()


def load_dataset(cfg: DataConfig) -> Dataset:
    """Read, canonicalize, strip salts, SELFIES-encode, length-filter and de-duplicate a source.

    Multi-fragment inputs (salts, mixtures) follow `cfg.fragments`; with "largest" the number of
    kept molecules whose extra fragments were dropped is stats[split]["fragments_stripped"].
    Rejected inputs are listed in `report` and counted in `stats` (per split, per reason, and
    'total'). For a csv source, a test molecule that is also in train counts as a duplicate, so
    the random split never leaks. Results are cached under <cache_dir>/preprocessed/, keyed by
    the files' contents, the settings and the RDKit/selfies versions.
    """
    t0 = time.perf_counter()
    if cfg.preprocessed:
        path = Path(cfg.preprocessed).expanduser()
        ds = _load_cache(path) if path.is_file() else None
        if ds is None:
            raise DataError(f"data.preprocessed={cfg.preprocessed}: not a readable dataset file")
        files, key, hit = {"preprocessed": path}, ds.stats.get("key", path.stem), True
    else:
        files = _source_files(cfg)
        key = _cache_key(cfg, files)
        path = fetch.cache_dir() / "preprocessed" / f"{key}.npz"
        ds = _load_cache(path) if cfg.cache and path.exists() else None
        hit = ds is not None
    if not hit:
        ds = _build(cfg, files)
        ds.stats.update(source=cfg.source, key=key, max_len=cfg.max_len)
        ds.stats["seconds"] = round(time.perf_counter() - t0, 3)
        if cfg.cache:
            _save_cache(ds, path)
    if cfg.max_ring:  # rewritten from the canonical strings, cached beside them
        ring_key = hashlib.sha256(f"{key}:max_ring={cfg.max_ring}:v1".encode()).hexdigest()
        ring_path = fetch.cache_dir() / "preprocessed" / f"{ring_key}.npz"  # writable
        small = _load_cache(ring_path) if cfg.cache and ring_path.exists() else None
        hit = hit and small is not None
        if small is None:
            t1 = time.perf_counter()
            small = _small_rings(ds, cfg)
            small.stats["ring_seconds"] = round(time.perf_counter() - t1, 3)
            if cfg.cache:
                _save_cache(small, ring_path)
        ds = small
    ds.stats["cache_hit"] = hit
    ds.stats["files"] = {s: str(p) for s, p in files.items()}
    _log_summary(ds, time.perf_counter() - t0)
    return ds


def _log_summary(ds: Dataset, seconds: float) -> None:
    parts = []
    for name in [*_split_names(ds)]:
        c = ds.stats[name]
        why = ", ".join(
            f"{r} {c[r]}" for r in (*REASONS, "fragments_stripped", "ring_rewritten") if c.get(r, 0)
        )
        parts.append(f"{name} {c['kept']}/{c['read']}" + (f" ({why})" if why else ""))
    rate = ds.stats["total"]["read"] / max(ds.stats["seconds"], 1e-9)
    origin = "from cache" if ds.stats["cache_hit"] else f"{rate:.0f} mol/s"
    log.info(
        "data %s: kept/read %s; %.1f s, %s", ds.stats["source"], "; ".join(parts), seconds, origin
    )


def write_report(ds: Dataset, run_dir: str | Path, extra: pd.DataFrame | None = None) -> None:
    """Write run_dir/data_report.csv and run_dir/data_stats.json.

    The report has one row per input molecule that was dropped or changed: split, line (in its
    source file), smiles (as read), reason, kept (True for molecules kept but changed, such as
    fragments_stripped). `extra` rows (same first four columns) are appended, e.g. the test
    molecules with symbols outside the training vocabulary (reason unknown_symbol).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    report = ds.report if extra is None else pd.concat([ds.report, extra], ignore_index=True)
    report = report.assign(kept=report["reason"].isin(KEPT_REASONS))
    report.to_csv(run_dir / "data_report.csv", index=False)
    (run_dir / "data_stats.json").write_text(json.dumps(ds.stats, indent=2, sort_keys=True) + "\n")
