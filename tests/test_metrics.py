"""MOSES metrics and ChemNet: hand-made sets with known values, and the official numbers."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext as _nothing
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem

from molvae import chem
from molvae.evaluation import chemnet, metrics

# The official values (molsets 0.3.1 get_all_metrics + fcd_torch 1.0.7 ChemNet activations) for
# three fixed input sets, see tests/data/README.md.
_REFERENCE_PATH = Path(__file__).parent / "data" / "moses_metrics_reference.json"

# Five molecules, each with a scaffold of two or more rings (MOSES ignores smaller scaffolds).
MOLS = [
    "CC1C2CCC(C2)C1CN(CCO)C(=O)c1ccc(Cl)cc1",
    "COc1ccc(-c2cc(=O)c3c(O)c(OC)c(OC)cc3o2)cc1O",
    "CCOC(=O)c1ncn2c1CN(C)C(=O)c1cc(F)ccc1-2",
    "O=C(Nc1ccccc1)c1ccc2[nH]ccc2c1",
    "Cc1ccc(-c2nc3ccccc3s2)cc1",
]


def _reference() -> dict:
    return json.loads(_REFERENCE_PATH.read_text())


def _folder(tmp_path: Path, **splits: list[str]) -> Path:
    """A reference folder of .smi files."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, smiles in splits.items():
        (tmp_path / f"{name}.smi").write_text("\n".join(smiles) + "\n")
    return tmp_path


# ----------------------------------------------------------------------------- validity, uniqueness


def test_valid_and_unique_count_invalid_and_duplicates():
    smiles = ["CCO", "OCC", "C(O)C", "c1ccccc1", "C1=CC=CC=C1", "CC(", "", "C1CC", "N"]
    with pytest.warns(UserWarning, match="unique@10"):
        out = metrics.basic_metrics(smiles, k=(3, 10))
    assert out["valid"] == 6 / 9  # 'CC(', '' and the unclosed ring 'C1CC' are invalid
    assert out["unique@3"] == 1 / 3  # the first three valid are all ethanol
    assert out["unique@10"] == 3 / 6  # fewer than 10 valid: MOSES warns and uses all of them


def test_novelty_against_train_in_any_spelling():
    smiles = ["CCO", "OCC", "CCN", "c1ccccc1"]
    out = metrics.basic_metrics(smiles, train_smiles=["C(C)O", "CC("], k=4)
    assert (
        out["Novelty"] == 2 / 3
    )  # unique valid molecules: ethanol (in train), ethylamine, benzene
    # a run's training set is canonical already: taken as it is, not canonicalized again
    same = metrics.basic_metrics(smiles, train_smiles=["CCO"], k=4, train_canonical=True)
    assert same["Novelty"] == 2 / 3
    as_is = metrics.basic_metrics(smiles, train_smiles=["C(C)O"], k=4, train_canonical=True)
    assert as_is["Novelty"] == 1.0


# ----------------------------------------------------------------------------- diversity


def test_internal_diversity_of_one_repeated_molecule_is_zero():
    out = metrics.basic_metrics(["c1ccccc1O"] * 5 + ["Oc1ccccc1"], k=3)
    assert out["IntDiv"] == pytest.approx(0.0, abs=1e-7)
    assert out["IntDiv2"] == pytest.approx(0.0, abs=1e-7)


def test_internal_diversity_of_two_unrelated_molecules_counts_self_pairs():
    fps = chem.fingerprints(["C", "O"])
    assert chem.tanimoto(fps[:1], fps[1:])[0, 0] == 0.0
    out = metrics.basic_metrics(["C", "O"], k=2)
    # Pairs (i, j) over all 4 including i == j: mean similarity 1/2 per molecule.
    assert out["IntDiv"] == pytest.approx(0.5)
    assert out["IntDiv2"] == pytest.approx(1 - math.sqrt(0.5))


def test_blocked_tanimoto_matches_dense(monkeypatch):
    monkeypatch.setattr(metrics, "_BLOCKS", (8, 16))  # many blocks, ragged last ones
    rng = np.random.default_rng(0)
    a = (rng.random((21, 1024)) < 0.05).astype(np.uint8)
    b = (rng.random((37, 1024)) < 0.05).astype(np.uint8)
    b[3] = a[5]  # an exact match
    w = rng.integers(1, 4, len(b))
    sim = chem.tanimoto(a, b).astype(np.float64)
    a, b = np.packbits(a, 1), np.packbits(b, 1)
    np.testing.assert_allclose(metrics.tanimoto_reduce(a, b), sim.max(1), rtol=1e-6)
    sums = metrics.tanimoto_reduce(a, b, w, (1, 2))
    np.testing.assert_allclose(sums, [sim @ w, sim**2 @ w], rtol=1e-5)


def test_cos_similarity():
    assert metrics.cos_similarity({"a": 2, "b": 2}, {"a": 5}) == pytest.approx(1 / math.sqrt(2))
    assert metrics.cos_similarity({"a": 1}, {"b": 1}) == 0.0
    assert math.isnan(metrics.cos_similarity({}, {"a": 1}))


def test_filters_reject_charges_odd_atoms_big_rings_and_alerts():
    passes = {s: metrics.passes_filters(chem.mol_from_smiles(s)) for s in [
        "CCOC(=O)c1ccccc1",  # a plain ester
        "C[N+](C)(C)C",  # charged
        "CCP(C)C",  # phosphorus is not allowed
        "C1CCCCCCC1",  # eight-membered ring
        "CCCCCI",  # iodine
        "O=C1C=CC(=O)C=C1",  # quinone: a PAINS/MCF alert
    ]}  # fmt: skip
    assert passes == {
        "CCOC(=O)c1ccccc1": True,
        "C[N+](C)(C)C": False,
        "CCP(C)C": False,
        "C1CCCCCCC1": False,
        "CCCCCI": False,
        "O=C1C=CC(=O)C=C1": False,
    }


def test_filter_failures_name_every_reason():
    reasons = {s: metrics.filter_failures(chem.mol_from_smiles(s)) for s in [
        "CCOC(=O)c1ccccc1", "C[N+](C)(C)C", "CCP(C)C", "C1CCCCCCC1", "CCCCCI",
        "O=C1C=CC(=O)C=C1", "C=CC#N", "CCSSCC",
    ]}  # fmt: skip
    assert reasons == {
        "CCOC(=O)c1ccccc1": [],
        "C[N+](C)(C)C": ["charged"],
        "CCP(C)C": ["atom:P"],
        "C1CCCCCCC1": ["ring>=8"],
        "CCCCCI": ["atom:I", "MCF4"],  # iodine, and a CH2 halide
        "O=C1C=CC(=O)C=C1": ["PAINS:quinone_A(370)"],
        "C=CC#N": ["MCF1"],  # an acrylonitrile Michael acceptor
        "CCSSCC": ["MCF16"],  # a disulfide
    }
    # first=True stops where MOSES stops, and agrees with passes_filters
    assert metrics.filter_failures(chem.mol_from_smiles("CCCCCI"), first=True) == ["atom:I"]
    # over a set: fractions of the valid molecules, the invalid one left out
    table = metrics.filter_alerts(["CCOC(=O)c1ccccc1", "C1CCCCCCC1", "CCCCCI", "C1CC"], n_jobs=1)
    assert table.to_dict() == pytest.approx(
        {"molecules": 3, "fail": 2 / 3, "ring>=8": 1 / 3, "atom:I": 1 / 3, "MCF4": 1 / 3}
    )
    assert list(table.index[:2]) == ["molecules", "fail"]


def test_filter_screen_loses_no_match():
    # passes_filters skips patterns whose pattern-fingerprint bits are missing: it must agree
    # with trying every pattern, as MOSES does.
    smiles = [*MOLS, "O=C1C=CC(=O)C=C1", "CC(=O)C=Cc1ccccc1", "Nc1ccc(N)cc1", "CCSSCC", "C=CC#N"]
    for s in smiles:
        with_h = Chem.AddHs(chem.mol_from_smiles(s))
        every = any(with_h.HasSubstructMatch(p) for _, p, _ in metrics._filter_patterns())
        assert metrics.passes_filters(chem.mol_from_smiles(s)) == (not every), s


# ----------------------------------------------------------------------------- against a reference


def test_identical_sets(tmp_path):
    ref = _folder(tmp_path, train=MOLS, test=MOLS, test_scaffolds=MOLS)
    out = metrics.evaluate(MOLS, reference=ref, k=5)
    assert list(out) == [
        "valid", "unique@5", "FCD/Test", "SNN/Test", "Frag/Test", "Scaf/Test", "FCD/TestSF",
        "SNN/TestSF", "Frag/TestSF", "Scaf/TestSF", "IntDiv", "IntDiv2", "Filters", "logP", "SA",
        "QED", "weight", "Novelty",
    ]  # fmt: skip
    assert all(type(v) is float for v in out.values())
    assert out["valid"] == 1.0 and out["unique@5"] == 1.0
    for name in ("SNN", "Frag", "Scaf"):
        assert out[f"{name}/Test"] == pytest.approx(1.0)
        assert out[f"{name}/TestSF"] == pytest.approx(1.0)
    for name in ("logP", "SA", "QED", "weight", "Novelty"):
        assert out[name] == pytest.approx(0.0, abs=1e-9)
    assert out["FCD/Test"] == pytest.approx(0.0, abs=1e-3)  # rank-deficient covariances
    # Each molecule twice: the same distribution, so only unique@k and FCD (n - 1 in the
    # covariance) change.
    twice = metrics.evaluate(MOLS * 2, reference=ref, k=(5, 10))
    assert twice["unique@5"] == 1.0 and twice["unique@10"] == 0.5
    for name in ("SNN/Test", "Frag/Test", "Scaf/Test", "IntDiv", "IntDiv2", "logP", "QED"):
        assert twice[name] == pytest.approx(out[name], abs=1e-9), name
    assert twice["FCD/Test"] > 0.01
    assert out["Filters"] == 1.0
    # FCD alone, as evaluate computes it
    test = metrics.reference_stats(ref).splits["test"]
    assert metrics.fcd(MOLS * 2, test) == pytest.approx(twice["FCD/Test"], rel=1e-6)


def test_disjoint_sets(tmp_path):
    ref = _folder(tmp_path, train=["c1ccc2ccccc2c1"], test=["c1ccc2ccccc2c1", "c1ccc2ccccc2c1"])
    out = metrics.evaluate(["C1CCC2CCCCC2C1", "C1CCC2CCCCC2C1", "CC("], reference=ref, k=2)
    assert "SNN/TestSF" not in out  # the reference has no test_scaffolds file
    assert out["valid"] == pytest.approx(2 / 3)
    assert out["unique@2"] == 0.5
    assert out["Frag/Test"] == 0.0 and out["Scaf/Test"] == 0.0  # naphthalene vs decalin
    fps = chem.fingerprints(["C1CCC2CCCCC2C1", "c1ccc2ccccc2c1"])
    assert out["SNN/Test"] == pytest.approx(float(chem.tanimoto(fps[:1], fps[1:])[0, 0]))
    assert out["Novelty"] == 1.0
    assert out["weight"] == pytest.approx(138.254 - 128.174, abs=1e-2)  # one value each side


def test_reference_stats_are_cached_without_pickle(tmp_path):
    ref = _folder(tmp_path / "ref", test=MOLS[:3], train=MOLS)
    first = metrics.reference_stats(ref)
    metrics._LOADED.clear()
    again = metrics.reference_stats(ref)  # read back from disk
    np.testing.assert_array_equal(first.splits["test"].fps, again.splits["test"].fps)
    np.testing.assert_allclose(first.splits["test"].sigma, again.splits["test"].sigma)
    assert first.splits["test"].frag == again.splits["test"].frag
    assert again.train == frozenset(chem.canonical(s) for s in MOLS)


def test_training_set_is_canonicalized_only_when_novelty_needs_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MOLVAE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(metrics, "_LOADED", {})
    ref = _folder(tmp_path / "ref", test=MOLS[:3], train=MOLS)
    out = metrics.evaluate(MOLS[:2], reference=ref, train_smiles=["CCO"], k=1)
    assert out["Novelty"] == 1.0  # against the given training set
    folder = tmp_path / "cache" / "refstats" / metrics._cache_key(metrics.reference_files(ref))
    assert (folder / "test.npz").exists() and not (folder / "train.npz").exists()
    assert metrics.reference_stats(ref, train=False).train is None
    assert metrics.evaluate(MOLS[:2], reference=ref, k=1)["Novelty"] == 0.0  # now built
    assert (folder / "train.npz").exists()


def test_unreadable_shipped_statistics_fall_back_to_the_build(tmp_path, monkeypatch, caplog):
    files = metrics.reference_files(_folder(tmp_path / "ref", test=MOLS[:3]))

    def broken():
        raise metrics.pickle.UnpicklingError("refusing to load os.system")

    monkeypatch.setattr(metrics, "shipped_moses_splits", broken)
    stats, origin = metrics._build(files, None, shipped=True)
    assert origin == {"test": "computed"} and stats.splits["test"].n == 3
    assert "computing them" in caplog.text
    built = stats.splits["test"]
    monkeypatch.setattr(metrics, "shipped_moses_splits", lambda: {"test": built})
    assert metrics._build(files, None, shipped=True)[1] == {"test": "shipped"}


# ----------------------------------------------------------------------------- ChemNet, FCD


def test_tokenize_reads_two_letter_atoms_and_pads():
    ids = chemnet.tokenize("ClCBr/C[Na]")
    symbols = [chemnet.VOCAB[i] for i in ids if i >= 0]
    # '/' is not in the vocabulary: 'X'; [Na] is read as N + unknown 'a', as fcd_torch does.
    assert symbols == ["Cl", "C", "Br", "X", "C", "[", "N", "X", "]", "."]
    assert ids.shape == (350,) and (ids[10:] == -1).all()
    long = chemnet.tokenize("C" * 400)
    assert long[-1] == chemnet.VOCAB.index(".") and (long[:-1] == 0).all()


def test_chemnet_matches_fcd_torch():
    ref = _reference()["chemnet_activations"]
    acts = chemnet.chemnet_activations(ref["smiles"])
    assert list(acts.shape) == ref["shape"]
    np.testing.assert_allclose(acts[:, :8], ref["first_8"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(acts, axis=1), ref["row_norms"], rtol=1e-4)


def test_fcd_stats_weights_equal_repeats():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    counts = np.array([1, 3, 1, 2, 1, 1, 4])
    mu, sigma = chemnet.fcd_stats(x, counts, chunk=3)
    rep = np.repeat(x, counts, axis=0).astype(np.float64)
    np.testing.assert_allclose(mu, rep.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(rep.T), rtol=1e-10)


def test_frechet_distance_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    got = chemnet.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(want)
    assert chemnet.frechet_distance(mu1, np.diag(var1), mu1, np.diag(var1)) == pytest.approx(0.0)


# ----------------------------------------------------------------------------- official numbers


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["test_rows_0_999", "train_every_1500th", "mixed_invalid_duplicates"]
)
def test_full_moses_matches_official_values(name):
    # MOSES's shipped test statistics (seconds) and its training set canonicalized for Novelty
    # (once into the cache: 5-10 min on 2 cores). See metrics.reference_stats.
    case = _reference()["sets"][name]
    fewer_than_k = name.startswith("mixed")  # 900 valid molecules for unique@1000
    expect = pytest.warns(UserWarning, match="unique@1000") if fewer_than_k else _nothing()
    with expect:
        out = metrics.evaluate(case["smiles"], reference="moses", k=[1000])
    want = case["metrics"]
    assert set(out) == set(want)
    for key, value in want.items():
        if key.startswith("FCD"):
            assert out[key] == pytest.approx(value, rel=0.01), key
        else:
            assert out[key] == pytest.approx(value, abs=0.005), key


def test_memoized_chemnet_gives_the_same_activations_and_computes_each_smiles_once(monkeypatch):
    from molvae.evaluation import chemnet

    smiles = ["CCO", "c1ccccc1", "CCO", "CCN"]
    plain = chemnet.chemnet_activations(smiles, canonize=False)
    calls = []
    real = chemnet._activations
    monkeypatch.setattr(chemnet, "_activations", lambda s, b: calls.append(list(s)) or real(s, b))
    with chemnet.memoized():
        a = chemnet.chemnet_activations(smiles, canonize=False)
        b = chemnet.chemnet_activations(["CCN", "CCC"], canonize=False)
    np.testing.assert_allclose(a, plain, atol=1e-6)
    np.testing.assert_allclose(b[0], plain[3], atol=1e-6)
    assert calls == [["CCO", "c1ccccc1", "CCN"], ["CCC"]]
    chemnet.chemnet_activations(["CCO"], canonize=False)  # outside the block: computed again
    assert len(calls) == 3


# ----------------------------------------------------------------------------- MOSES's statistics


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_pickled_stats_are_read_without_executing_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "evil.npz", stats=np.array(_Evil(), dtype=object))
    with pytest.raises(__import__("pickle").UnpicklingError, match="os.system|posix.system"):
        metrics.read_pickled_npz(tmp_path / "evil.npz")
    assert not (tmp_path / "pwned").exists()


def test_shipped_statistics_layout_converts_to_split_stats(tmp_path):
    """MOSES's compute_intermediate_statistics dict, as molsets pickles it, becomes the
    SplitStats molvae builds: packed fingerprints in chem.morgan_bits's bit order."""
    from collections import Counter

    mols = [chem.mol_from_smiles(s) for s in MOLS]
    fps = np.stack([chem.morgan_bits(m) for m in mols])  # (5, 1024) uint8, as MOSES stores them
    rng = np.random.default_rng(0)
    raw = {
        "FCD": {"mu": rng.normal(size=512).astype(np.float32), "sigma": np.eye(512)},
        "SNN": {"fps": fps},
        "Frag": {"frag": Counter({"[4*]CC": 3, "[16*]c1ccccc1": 2})},
        "Scaf": {"scaf": Counter({"c1ccc2[nH]ccc2c1": 1})},
        **{k: {"values": [f(m) for m in mols]} for k, f in metrics.MOSES_PROPERTIES.items()},
    }
    np.savez(tmp_path / "stats.npz", stats=np.array(raw, dtype=object))
    st = metrics._shipped_split(metrics.read_pickled_npz(tmp_path / "stats.npz"), tmp_path)
    want = np.stack([np.packbits(chem.morgan_bits(m)) for m in mols])
    np.testing.assert_array_equal(st.fps, want)
    assert st.frag == {"[4*]CC": 3, "[16*]c1ccccc1": 2} and st.scaf == {"c1ccc2[nH]ccc2c1": 1}
    assert st.n == 5 and st.mu.dtype == np.float64 and st.sigma.shape == (512, 512)
    np.testing.assert_allclose(st.props["QED"], [chem.qed(m) for m in mols])
    raw["SNN"]["fps"] = fps[:3]  # fewer fingerprints than property values
    np.savez(tmp_path / "bad.npz", stats=np.array(raw, dtype=object))
    with pytest.raises(ValueError, match="property values"):
        metrics._shipped_split(metrics.read_pickled_npz(tmp_path / "bad.npz"), tmp_path)


@pytest.fixture(scope="module")
def shipped():
    return metrics.shipped_moses_splits()  # the molsets wheel: fetched once into the cache


@pytest.mark.slow
@pytest.mark.parametrize("name", ["test_rows_0_999", "mixed_invalid_duplicates"])
def test_shipped_statistics_give_the_official_values(shipped, name):
    # Seconds, not the 20-25 minutes of building the statistics. Every metric to 1e-6: the
    # only difference from MOSES left is the sample side, ChemNet in JAX instead of torch.
    case = _reference()["sets"][name]
    ref = metrics.ReferenceStats(shipped, train=None)
    with pytest.warns(UserWarning) if name.startswith("mixed") else _nothing():
        out = metrics.evaluate(case["smiles"], reference=ref, k=[1000])
    want = {k: v for k, v in case["metrics"].items() if k != "Novelty"}
    assert set(out) == set(want)
    for key, value in want.items():
        assert out[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_shipped_statistics_equal_molvaes_own_build(shipped):
    """The statistics MOSES ships are what molvae computes from the test file: the same
    fingerprints and property values molecule by molecule, fragment and scaffold counts that
    bound those of a subset, and a ChemNet mean that a random subset's activations agree with
    (so MOSES used the same ChemNet weights as molvae's chemnet.py)."""
    from molvae import data

    test = shipped["test"]
    smiles = list(data.read_smiles_file(data.moses_files()["test"])["smiles"])
    assert len(smiles) == test.n
    head = metrics._describe_all(smiles[:1000], "reference", n_jobs=None)
    assert len(head.rows) == 1000  # all valid and distinct: rows follow the file
    np.testing.assert_array_equal(head.fps, test.fps[:1000])
    for i, name in enumerate(metrics.MOSES_PROPERTIES):
        got = np.array([r.props[i] for r in head.rows])
        np.testing.assert_allclose(got, test.props[name][:1000], rtol=1e-9, err_msg=name)
    for field, full in (("frags", test.frag), ("scaffold", test.scaf)):
        part = metrics._counter(head, field)
        assert all(full.get(k, 0) >= n for k, n in part.items()), field
    # ChemNet: the mean activation of 2,000 random test molecules against MOSES's mean. Each
    # coordinate's z-score is N(0, 1) if both come from the same network: mean square ~ 1.
    idx = np.random.default_rng(0).choice(test.n, 2000, replace=False)
    acts = chemnet.chemnet_activations([smiles[i] for i in idx])
    z = (acts.mean(0) - test.mu) / np.sqrt(np.diag(test.sigma) / len(idx))
    assert np.mean(z**2) < 1.5, np.mean(z**2)
    # activations off by 5% of a standard deviation per unit would fail it
    shifted = acts.mean(0) + 0.05 * np.sqrt(np.diag(test.sigma))
    assert np.mean(((shifted - test.mu) / np.sqrt(np.diag(test.sigma) / len(idx))) ** 2) > 3.0
