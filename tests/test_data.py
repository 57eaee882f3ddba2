"""Tests for molvae.data: file reading, preprocessing counts, splits, cache, bundled sample."""

from __future__ import annotations

import gzip
import json
import math

import pandas as pd
import pytest

from molvae import chem, data
from molvae.data import DataConfig, DataError, load_dataset, read_smiles_file

# A CSV with a BOM, CRLF endings, a latin-1 byte and one of each kind of bad row.
MALFORMED = (
    b"\xef\xbb\xbfSMILES,logp,name\r\n"  # line 1: header
    b"CCO,1.5,ethanol\r\n"  # 2 kept
    b"\r\n"  # 3 empty
    b"not_a_smiles,2.0,x\r\n"  # 4 invalid_smiles
    b"c1ccccc1,abc,caf\xe9\r\n"  # 5 kept; non-numeric logp; latin-1 byte in a name
    b"OCC,3.0,ethanol again\r\n"  # 6 duplicate (canonical CCO)
    + b"C"
    * 80
    + b",4.0,long\r\n"  # 7 too_long
    b"C\xe9C,4.5,bad\r\n"  # 8 invalid_smiles (latin-1 byte in the SMILES)
    b"FI(F)F,6.0,iodine\r\n"  # 9 selfies_encode_failed (I is monovalent in SELFIES)
    b"CC(=O)O,5.0,acetic acid\r\n"  # 10 kept
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOLVAE_CACHE", str(tmp_path / "cache"))


def _csv(tmp_path, body: bytes, name: str = "mols.csv"):
    path = tmp_path / name
    path.write_bytes(gzip.compress(body, mtime=0) if name.endswith(".gz") else body)
    return path


def _load(path, **kw) -> data.Dataset:
    kw = {"test_fraction": 0.0, "n_jobs": 1, **kw}
    return load_dataset(DataConfig(source="csv", path=str(path), **kw))


def test_malformed_file_counts_and_report(tmp_path):
    ds = _load(_csv(tmp_path, MALFORMED), property_columns=("logp",))
    assert ds.train.smiles == ["CCO", "c1ccccc1", "CC(=O)O"]
    assert ds.train.selfies == [chem.smiles_to_selfies(s) for s in ds.train.smiles]
    want = {
        "read": 9,
        "kept": 3,
        "empty": 1,
        "invalid_smiles": 2,
        "selfies_encode_failed": 1,
        "too_long": 1,
        "duplicate": 1,
    }
    assert {k: ds.stats["train"][k] for k in want} == want
    assert ds.stats["train"]["non_numeric"] == {"logp": 1}
    assert ds.stats["test"]["read"] == 0 and ds.test.smiles == []
    assert ds.report["line"].tolist() == [3, 4, 6, 7, 8, 9]
    assert ds.report["reason"].tolist() == [
        "empty",
        "invalid_smiles",
        "duplicate",
        "too_long",
        "invalid_smiles",
        "selfies_encode_failed",
    ]
    assert ds.report["smiles"].tolist()[:3] == ["", "not_a_smiles", "OCC"]
    assert ds.report["smiles"][4] == "C\u00e9C"
    logp = ds.train.properties["logp"].tolist()
    assert logp[0] == 1.5 and math.isnan(logp[1]) and logp[2] == 5.0


def test_write_report(tmp_path):
    ds = _load(_csv(tmp_path, MALFORMED))
    data.write_report(ds, tmp_path / "run")
    report = pd.read_csv(tmp_path / "run" / "data_report.csv", keep_default_na=False)
    assert list(report.columns) == ["split", "line", "smiles", "reason", "kept"]
    assert len(report) == 6 and not report["kept"].any()  # all dropped
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert stats["total"]["kept"] == 3 and stats["cache_hit"] is False


def test_max_len_boundary(tmp_path):
    path = _csv(tmp_path, b"smiles\n" + b"C" * 10 + b"\n" + b"C" * 11 + b"\n")
    ds = _load(path, max_len=10)
    assert ds.train.smiles == ["C" * 10] and ds.report["reason"].tolist() == ["too_long"]


def test_missing_columns(tmp_path):
    path = _csv(tmp_path, b"smi,logp\nCCO,1\n")
    with pytest.raises(DataError, match=r"mols\.csv: no SMILES column 'SMILES'.*'smi', 'logp'"):
        read_smiles_file(path)
    with pytest.raises(DataError, match="no property column 'qed'"):
        read_smiles_file(path, smiles_column="smi", property_columns=("qed",))


def test_csv_without_header_hints_smi(tmp_path):
    with pytest.raises(DataError, match="no header"):
        read_smiles_file(_csv(tmp_path, b"CCO\nc1ccccc1\n"))


@pytest.mark.parametrize("body", [b"", b"SMILES\n", b"SMILES\r\n\r\n\r\n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path, body):
    with pytest.raises(DataError, match=r"mols\.csv: empty file"):
        _load(_csv(tmp_path, body))


def test_bad_config(tmp_path):
    with pytest.raises(DataError, match="not found"):
        _load(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="needs a path"):
        load_dataset(DataConfig(source="csv"))
    with pytest.raises(DataError, match="'moses_sample', 'moses', 'csv'"):
        load_dataset(DataConfig(source="zinc"))


# One salt, one mixture, a hydrochloride, a hydrate of a molecule already in the file, 2 plain.
SALTS = (
    b"SMILES\n"
    b"CCO\n"  # line 2
    b"CC(=O)[O-].[Na+]\n"  # 3 sodium acetate
    b"CCO.CCN\n"  # 4 mixture
    b"Cl.CN1CCC(CC1)c1ccccc1\n"  # 5 hydrochloride
    b"OCC.O\n"  # 6 ethanol hydrate
    b"c1ccccc1\n"  # 7
)


@pytest.mark.parametrize(
    ("policy", "smiles", "reasons", "stripped"),
    [
        (
            "largest",
            ["CCO", "CC(=O)[O-]", "CCN", "CN1CCC(c2ccccc2)CC1", "c1ccccc1"],
            # kept without their salts (listed, kept); ethanol once its water is gone (dropped)
            {3: "fragments_stripped", 4: "fragments_stripped", 5: "fragments_stripped"}
            | {6: "duplicate"},
            3,
        ),
        ("reject", ["CCO", "c1ccccc1"], dict.fromkeys([3, 4, 5, 6], "multiple_fragments"), 0),
        (
            "keep",
            ["CCO", "CC(=O)[O-].[Na+]", "CCN.CCO", "CN1CCC(c2ccccc2)CC1.Cl", "CCO.O", "c1ccccc1"],
            {},
            0,
        ),
    ],
)
def test_fragments_policy(tmp_path, policy, smiles, reasons, stripped):
    ds = _load(_csv(tmp_path, SALTS), fragments=policy)
    assert ds.train.smiles == smiles
    assert ds.train.selfies == [chem.smiles_to_selfies(s) for s in smiles]
    assert dict(zip(ds.report["line"], ds.report["reason"], strict=True)) == reasons
    counts = ds.stats["train"]
    assert counts["read"] == 6 and counts["kept"] == len(smiles)
    assert counts["fragments_stripped"] == stripped == ds.stats["total"]["fragments_stripped"]
    assert counts["multiple_fragments"] == (4 if policy == "reject" else 0)
    cached = _load(_csv(tmp_path, SALTS), fragments=policy)  # the policy is in the cache key
    assert cached.stats["cache_hit"] is True and cached.train.smiles == smiles
    assert {k: v for k, v in cached.stats.items() if k != "cache_hit"} == {
        k: v for k, v in ds.stats.items() if k != "cache_hit"
    }
    pd.testing.assert_frame_equal(cached.report, ds.report)


def test_fragments_stripped_in_report_and_log(tmp_path, caplog):
    with caplog.at_level("INFO", logger="molvae.data"):
        ds = _load(_csv(tmp_path, SALTS))
    assert "duplicate 1, fragments_stripped 3" in caplog.text
    data.write_report(ds, tmp_path / "run")
    stats = json.loads((tmp_path / "run" / "data_stats.json").read_text())
    assert stats["train"]["fragments_stripped"] == stats["total"]["fragments_stripped"] == 3
    report = pd.read_csv(tmp_path / "run" / "data_report.csv", keep_default_na=False)
    assert report[["line", "smiles", "reason", "kept"]].values.tolist() == [
        [3, "CC(=O)[O-].[Na+]", "fragments_stripped", True],
        [4, "CCO.CCN", "fragments_stripped", True],
        [5, "Cl.CN1CCC(CC1)c1ccccc1", "fragments_stripped", True],
        [6, "OCC.O", "duplicate", False],
    ]


def test_largest_fragment():
    assert chem.largest_fragment("CC(=O)[O-].[Na+]") == "CC(=O)[O-]"  # organic parent, charged
    assert chem.largest_fragment("[Na+].[Cl-]") == "[Cl-]"
    assert chem.largest_fragment("OCC") == "CCO"
    assert chem.largest_fragment("not_a_smiles") is None


def test_fragments_policy_invalid():
    with pytest.raises(DataError, match=r"data\.fragments must be one of .*'largest'.*'strip'"):
        DataConfig(fragments="strip")


def test_smi_without_header(tmp_path):
    path = _csv(tmp_path, b"CCO ethanol\nc1ccccc1\tbenzene\n\n  C1CC1  \n", "mols.smi.gz")
    df = read_smiles_file(path)
    assert df["line"].tolist() == [1, 2, 3, 4]
    assert df["smiles"].tolist() == ["CCO", "c1ccccc1", "", "C1CC1"]
    ds = _load(path)
    assert ds.train.smiles == ["CCO", "c1ccccc1", "C1CC1"] and ds.stats["train"]["empty"] == 1


def test_smi_with_header_and_property(tmp_path):
    path = _csv(tmp_path, b"smiles y\nCCO 1\nCCN 2\n", "mols.txt")
    df = read_smiles_file(path, property_columns=("y",))
    assert df["line"].tolist() == [2, 3] and df["y"].tolist() == [1.0, 2.0]


def test_properties_aligned_and_split(tmp_path):
    values = {chem.canonical("C" * n + "O"): float(n) for n in range(1, 41)}
    rows = [f"{'C' * n}O,{n},{-n}" for n in range(1, 41)] + ["bad,0,0", "OC,1,-1"]
    path = _csv(tmp_path, ("SMILES,y,z\n" + "\n".join(rows)).encode(), "mols.csv.gz")
    ds = _load(path, property_columns=("y", "z"), test_fraction=0.25, seed=3)
    assert ds.stats["test"]["read"] == 10 and ds.stats["total"]["read"] == 42
    assert set(ds.train.smiles).isdisjoint(ds.test.smiles)
    assert set(ds.train.smiles) | set(ds.test.smiles) == set(values)
    for split in (ds.train, ds.test):
        assert list(split.properties.columns) == ["y", "z"]
        assert split.properties["y"].tolist() == [values[s] for s in split.smiles]
        assert (split.properties["z"] == -split.properties["y"]).all()
    again = _load(path, property_columns=("y", "z"), test_fraction=0.25, seed=3, cache=False)
    assert again.test.smiles == ds.test.smiles  # seeded


def test_limit_is_seeded_subset(tmp_path):
    rows = "\n".join("C" * n + "O" for n in range(1, 31))
    path = _csv(tmp_path, f"SMILES\n{rows}\n".encode())
    a, b = _load(path, limit=5, seed=1), _load(path, limit=5, seed=2, cache=False)
    assert len(a.train) == 5 and a.train.smiles != b.train.smiles
    assert a.train.smiles == _load(path, limit=5, seed=1, cache=False).train.smiles


def test_cache_hit(tmp_path, monkeypatch):
    path = _csv(tmp_path, MALFORMED)
    first = _load(path, property_columns=("logp",))
    assert first.stats["cache_hit"] is False
    monkeypatch.setattr(data, "_build", lambda *a: pytest.fail("cache missed"))
    second = _load(path, property_columns=("logp",))
    assert second.stats["cache_hit"] is True
    assert second.train.smiles == first.train.smiles and second.train.selfies == first.train.selfies
    pd.testing.assert_frame_equal(second.train.properties, first.train.properties)
    pd.testing.assert_frame_equal(second.report, first.report)
    assert list((tmp_path / "cache" / "preprocessed").glob("*.npz"))
    with pytest.raises(pytest.fail.Exception):  # other settings -> other key -> rebuild
        _load(path, property_columns=("logp",), max_len=50)
    with pytest.raises(pytest.fail.Exception):
        _load(path, property_columns=("logp",), cache=False)


def test_a_preprocessed_file_stands_in_for_the_source(tmp_path, monkeypatch):
    """data.preprocessed reads a cache file copied from elsewhere: the same molecules, and no
    source file is opened; a missing file is a clear error."""
    path = _csv(tmp_path, MALFORMED)
    first = _load(path, property_columns=("logp",))
    (cached,) = (tmp_path / "cache" / "preprocessed").glob("*.npz")
    copy = tmp_path / "elsewhere.npz"
    copy.write_bytes(cached.read_bytes())
    monkeypatch.setattr(data, "_source_files", lambda *a: pytest.fail("source opened"))
    ds = load_dataset(DataConfig(source="csv", preprocessed=str(copy)))
    assert ds.train.smiles == first.train.smiles and ds.test.selfies == first.test.selfies
    pd.testing.assert_frame_equal(ds.train.properties, first.train.properties)
    assert ds.stats["cache_hit"] is True and ds.stats["files"] == {"preprocessed": str(copy)}
    with pytest.raises(DataError, match="data.preprocessed"):
        load_dataset(DataConfig(source="csv", preprocessed=str(tmp_path / "gone.npz")))


def test_bundled_sample_round_trips():
    ds = load_dataset(DataConfig(source="moses_sample"))
    assert {s: ds.stats[s]["kept"] for s in data.SPLITS} == {
        "train": 20_000,
        "test": 2_000,
        "test_scaffolds": 2_000,
    }
    assert ds.stats["total"]["read"] == 24_000 and ds.report.empty
    for split in (ds.train, ds.test, ds.test_scaffolds):
        assert chem.parallel_map(chem.selfies_to_smiles, split.selfies) == split.smiles


@pytest.mark.slow
def test_moses_split_sizes():
    files = data.moses_files()
    sizes = {s: len(read_smiles_file(p)) for s, p in files.items()}
    assert sizes == {"train": 1_584_663, "test": 176_074, "test_scaffolds": 176_225}


def test_max_ring_writes_strings_small_ring_first(tmp_path, monkeypatch):
    """data.max_ring: every kept string's ring bonds close rings of at most max_ring atoms (the
    canonical one where it does, a rewritten one where not), the molecules are unchanged, a
    molecule with a larger ring is dropped as ring_too_large, and the result is cached."""
    body = b"SMILES\nCCO\nNCC(=O)c1noc2ccc(Br)cc12\nc1ccc2ccccc2c1\nC1CCCCCCCCCCC1\n"
    path = _csv(tmp_path, body)
    plain = _load(path)
    small = _load(path, max_ring=7)
    assert small.train.smiles == [s for s in plain.train.smiles if s != "C1CCCCCCCCCCC1"]
    for smi, sel in zip(small.train.smiles, small.train.selfies, strict=True):
        assert max(chem.ring_closures(sel), default=0) <= 7
        assert chem.selfies_to_smiles(sel) == smi
    changed = [a != b for a, b in zip(small.train.selfies, plain.train.selfies, strict=False)]
    assert changed == [False, True, False]
    assert small.stats["train"]["ring_rewritten"] == 1
    assert small.stats["train"]["ring_too_large"] == 1 and small.stats["total"]["kept"] == 3
    row = small.report[small.report["reason"] == "ring_too_large"]
    assert list(row["smiles"]) == ["C1CCCCCCCCCCC1"] and list(row["line"]) == [5]
    monkeypatch.setattr(data, "_small_rings", lambda *a: pytest.fail("cache missed"))
    again = _load(path, max_ring=7)
    assert again.stats["cache_hit"] and again.train.selfies == small.train.selfies
    with pytest.raises(DataError, match="max_ring"):
        DataConfig(max_ring=2)
