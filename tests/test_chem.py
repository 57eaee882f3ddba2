"""Chemistry helpers against known values of named molecules."""

import math
import time

import numpy as np
import pytest

from molvae import chem

ASPIRIN, CAFFEINE = "CC(=O)Oc1ccccc1C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C"


def test_canonical_and_validity():
    assert chem.canonical("OCC") == chem.canonical("CCO") == "CCO"
    assert chem.canonical("C1CC") is None and not chem.is_valid("C1CC")
    assert not chem.is_valid("") and not chem.is_valid(None)
    assert chem.canonical("c1ccccc1O") == "Oc1ccccc1"


def test_known_property_values():
    m = chem.mol_from_smiles(ASPIRIN)
    assert chem.qed(m) == pytest.approx(0.5501, abs=1e-4)  # Bickerton et al. 2012: 0.55
    assert chem.logp(m) == pytest.approx(1.3101, abs=1e-4)  # Wildman-Crippen
    assert chem.sa(m) == pytest.approx(1.580, abs=1e-3)
    assert chem.weight(m) == pytest.approx(180.159, abs=1e-3)
    caffeine = chem.mol_from_smiles(CAFFEINE)
    assert chem.logp(caffeine) == pytest.approx(-1.0293, abs=1e-4)
    assert chem.sa(chem.mol_from_smiles("c1ccccc1")) == pytest.approx(1.0)


def test_penalized_logp_definitions():
    ring8 = chem.mol_from_smiles("C1CCCCCCC1")
    assert chem.ring_penalty(ring8) == 2
    assert chem.penalized_logp(ring8) == pytest.approx(3.1208 - 1.0 - 2)
    # JT-VAE's ZINC250k-normalised form, term by term.
    z = (
        (3.1208 - 2.4570953396190123) / 1.434324401111988
        + (-1.0 + 3.0525811293166134) / 0.8335207024513095
        + (-2 + 0.0485696876403053) / 0.2860212110245455
    )
    assert chem.penalized_logp_zinc(ring8) == pytest.approx(z, abs=1e-4)


def test_properties_table_marks_invalid_with_nan():
    df = chem.properties(["CCO", "not a molecule", ASPIRIN], ("qed", "plogp"))
    assert list(df.columns) == ["qed", "plogp"] and len(df) == 3
    assert math.isnan(df.loc[1, "qed"]) and df.loc[2, "qed"] == pytest.approx(0.5501, abs=1e-4)
    with pytest.raises(KeyError, match="unknown properties"):
        chem.properties(["CCO"], ("nope",))


def test_fingerprints_and_tanimoto():
    fps = chem.fingerprints(["CCO", "CCO", "c1ccccc1", "xx"])
    assert fps.shape == (4, 1024) and fps.dtype == np.uint8
    sim = chem.tanimoto(fps, fps)
    assert sim[0, 1] == 1.0 and 0 <= sim[0, 2] < 0.2 and fps[3].sum() == 0
    s = chem.similarity(["CCO", "CCCO", "bad"], "CCO")
    assert s[0] == 1.0 and 0 < s[1] < 1 and math.isnan(s[2])


def test_selfies_round_trip_and_parallel_map_matches_serial():
    smiles = [ASPIRIN, CAFFEINE, "C[C@H](N)C(=O)O", "[NH4+]"] * 1200  # over the parallel threshold
    sf = chem.parallel_map(chem.smiles_to_selfies, smiles, n_jobs=2)
    back = chem.parallel_map(chem.selfies_to_smiles, sf, n_jobs=2)
    assert back == [chem.canonical(s) for s in smiles]
    assert chem.selfies_to_smiles("") == ""


def _run_script(path, text: str):
    """Run `text` as a Python script at `path` in a fresh interpreter; it must exit 0."""
    import subprocess
    import sys

    path.write_text(text)
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_process_pool_works_from_a_script_without_a_main_guard(tmp_path):
    """Spawned workers must not re-run the caller's script (no `if __name__ == "__main__"`)."""
    proc = _run_script(
        tmp_path / "unguarded.py",
        "print('top-level', flush=True)\n"
        "from molvae import chem\n"
        "out = chem.parallel_map(chem.canonical, ['OCC', 'c1ccccc1'] * 2500, n_jobs=2)\n"
        "print(len(out), out[0], out[1], flush=True)\n",
    )
    assert proc.stdout.split("\n").count("top-level") == 1
    assert "5000 CCO c1ccccc1" in proc.stdout


def test_process_pool_works_inside_joblib_workers_and_lets_them_exit(tmp_path):
    """A Hydra joblib sweep runs each job in a loky worker: the pool started there used to break
    ("cannot find context for 'loky'"), and once fixed, the worker's exit waited on the pool."""
    proc = _run_script(
        tmp_path / "jobs.py",
        "import multiprocessing as mp\n"
        "from joblib import Parallel, delayed\n"
        "def job(i):\n"
        "    from molvae import chem\n"
        "    return chem.parallel_map(chem.canonical, ['OCC', 'c1ccccc1'] * 2500, n_jobs=2)[i]\n"
        "def child(q):\n"
        "    from molvae import chem\n"
        "    q.put(len(chem.parallel_map(chem.canonical, ['OCC'] * 5000, n_jobs=2)))\n"
        "if __name__ == '__main__':\n"
        "    print(Parallel(n_jobs=2, backend='loky')(delayed(job)(i) for i in range(2)))\n"
        "    q = mp.get_context('spawn').Queue()\n"
        "    p = mp.get_context('spawn').Process(target=child, args=(q,))\n"
        "    p.start()\n"
        "    print(q.get(timeout=120))\n"
        "    p.join(timeout=60)\n"
        "    print('exitcode', p.exitcode, flush=True)\n",
    )
    assert proc.stdout.splitlines() == ["['CCO', 'c1ccccc1']", "5000", "exitcode 0"]


def test_shared_pool_is_reused_and_replaced_when_broken_or_resized():
    import os
    import signal
    from concurrent.futures.process import BrokenProcessPool

    pool = chem.shared_pool(2)
    assert chem.shared_pool(2) is pool  # one start-up per process, not per call
    with chem.process_pool(2) as again:
        assert again is pool
    pid = pool.submit(os.getpid).result()
    os.kill(pid, signal.SIGKILL)  # a worker dies: the pool is broken
    deadline = time.monotonic() + 60
    with pytest.raises(BrokenProcessPool):  # the other worker may serve a task or two first
        while time.monotonic() < deadline:
            pool.submit(int).result(timeout=60)
            time.sleep(0.05)
    fresh = chem.shared_pool(2)
    assert fresh is not pool
    assert chem.parallel_map(chem.canonical, ["OCC"] * 5000, n_jobs=2) == ["CCO"] * 5000
    one = chem.shared_pool(1)
    assert one is not fresh and chem.shared_pool(1) is one


@pytest.mark.parametrize(
    "selfies,kind",
    [
        ("[C][C][O]", None),
        ("[C][C][Branch1][C][O][F]", None),  # CC(O)F, nothing to repair
        ("[C][Branch1][C][O]", None),  # C(O): a branch that ends the string, written faithfully
        ("[C][=C][C][=C][C][=C][Ring1][=Branch1]", None),  # benzene, Kekule
        ("[F][C][F][F][F][F]", "atom"),  # symbols after the saturated F are ignored
        ("[C][#O]", "bond"),  # triple bond cut to the double bond O allows
        ("[=C][C]", "bond"),  # a bond order on the first atom, which has nothing to bond to
        ("[F][Branch1][C][C]", "branch"),  # F has one bond: the branch is dropped
        ("[C][Branch1][Ring1][C]", "branch"),  # a branch of 2 symbols where 1 is left
        ("[O][Ring1][C]", "ring"),  # ring symbol with nothing to close onto
        ("[C][C][C][Ring1][Ring2]", "ring"),  # ring index beyond the chain, clipped
        ("[C][C][Ring1][C]", "ring"),  # a ring onto the neighbour: merged into its bond (C=C)
        ("", "empty"),
        ("[C][Xx]", "empty"),  # a symbol the decoder does not know
    ],
)
def test_selfies_repaired_flags_strings_the_decoder_had_to_fix(selfies, kind):
    repaired = kind is not None
    assert chem.selfies_repaired(selfies) is repaired
    assert chem.selfies_repair_kind(selfies) == kind
    repair = chem.selfies_repair(selfies)
    assert (repair is None) is (kind is None)
    assert kind is None or (repair[0] == kind and repair[1] in chem.REPAIR_RULES[kind])
    expect = "" if repaired else chem.selfies_to_smiles(selfies)
    assert chem.selfies_to_smiles_strict(selfies) == expect


@pytest.mark.parametrize(
    "selfies,rule",
    [
        ("[F][C][F][F][F][F]", "symbols after a full atom"),
        ("[C][#O]", "bond order cut"),
        ("[=C][C]", "bond order on the first atom"),
        ("[F][Branch1][C][C]", "branch with no bond left"),
        ("[C][Branch1][Ring1][C]", "branch past the end"),
        ("[C][C][C][Ring1][Ring2]", "ring index past the first atom"),
        ("[C][C][Ring1][C]", "ring merged into a bond"),
        ("[F][C][C][Ring1][Ring1]", "ring onto a full atom"),  # back onto F, which has no bond left
        ("[C][Xx]", "unknown symbol"),
    ],
)
def test_selfies_repair_names_the_rule(selfies, rule):
    kind, got = chem.selfies_repair(selfies)
    assert got == rule and rule in chem.REPAIR_RULES[kind]
    assert set(chem.REPAIR_RULES) == set(chem.REPAIR_KINDS)


def _placed_atoms(symbols: list[str]) -> int:
    """Atom symbols of a string the decoder reads faithfully: all but the branch and ring
    symbols and the index symbols that follow them ([Branch2] and [Ring2]: two)."""
    n, i = 0, 0
    while i < len(symbols):
        if symbols[i][-4:-2] in ("ch", "ng"):
            i += 1 + int(symbols[i][-2])
        else:
            n, i = n + 1, i + 1
    return n


def test_repair_kind_agrees_with_the_decoder_on_mutated_moses_strings():
    """Property test against the selfies decoder itself, on MOSES strings with one or two
    symbols replaced, inserted or deleted (what a sampling decoder gets wrong): a string the
    decoder round-trips (encoder(decoder(s)) == s) is never called repaired, and a string
    called unrepaired decodes to a molecule with one atom per atom symbol."""
    import selfies as sf
    from rdkit import Chem

    from molvae import data

    smiles = data.read_smiles_file(data.bundled_files()["test"])["smiles"][:200]
    encoded = [list(sf.split_selfies(chem.smiles_to_selfies(chem.canonical(s)))) for s in smiles]
    alphabet = sorted({t for e in encoded for t in e})
    rng = np.random.default_rng(0)
    unrepaired = 0
    for i in range(2000):
        symbols = list(encoded[i % len(encoded)])
        for _ in range(rng.integers(1, 3)):
            j, op = rng.integers(len(symbols)), rng.integers(3)
            if op == 0:
                symbols[j] = str(rng.choice(alphabet))
            elif op == 1:
                symbols.insert(j, str(rng.choice(alphabet)))
            elif len(symbols) > 1:
                del symbols[j]
        s = "".join(symbols)
        kind, decoded = chem.selfies_repair_kind(s), sf.decoder(s)
        if sf.encoder(decoded) == s:
            assert kind is None, s
        if kind is None:
            unrepaired += 1
            assert Chem.MolFromSmiles(decoded).GetNumAtoms() == _placed_atoms(symbols), s
    assert 200 < unrepaired < 1800  # both outcomes are exercised


def test_no_training_string_counts_as_repaired():
    """Every SELFIES encoded from a (canonical) SMILES is unrepaired: strict decoding never
    rejects what the training data looks like."""
    from molvae import data

    smiles = data.read_smiles_file(data.bundled_files()["test"])["smiles"][:500]
    encoded = [chem.smiles_to_selfies(chem.canonical(s)) for s in smiles]
    assert not any(chem.selfies_repaired(e) for e in encoded)
    assert all(chem.selfies_repair_kind(e) is None for e in encoded)


@pytest.mark.parametrize(
    "smiles, sizes",
    [
        ("CCO", []),
        ("C1CCCCC1", [6]),
        ("C1CCCCCCCCCCC1", [12]),
        ("c1ccc2ccccc2c1", [6, 6]),  # naphthalene as RDKit writes it: each ring closed small
        # as RDKit writes it, the 9-atom outer ring closes first and a later bond splits it
        ("NCC(=O)c1noc2ccc(Br)cc12", [9, 5]),
    ],
)
def test_ring_closures_reads_the_ring_each_ring_bond_closes(smiles, sizes):
    assert chem.ring_closures(chem.smiles_to_selfies(smiles)) == sizes


def test_small_ring_selfies_rewrites_only_what_it_must():
    # already small: the canonical string itself
    assert chem.small_ring_selfies("c1ccc2ccccc2c1", 7) == chem.smiles_to_selfies("c1ccc2ccccc2c1")
    fused = "NCC(=O)c1noc2ccc(Br)cc12"
    small = chem.small_ring_selfies(fused, 7)
    assert small != chem.smiles_to_selfies(fused)
    assert sorted(chem.ring_closures(small)) == [5, 6]
    assert chem.selfies_to_smiles(small) == fused  # the same molecule
    assert chem.small_ring_selfies("C1CCCCCCCCCCC1", 7) is None  # a ring of 12: no such string
    assert chem.small_ring_selfies("C1CCCCCCCCCCC1", 12) == chem.smiles_to_selfies("C1CCCCCCCCCCC1")
    assert chem.small_ring_selfies("not a molecule", 7) is None
    assert chem.small_ring_selfies("FI(F)F", 7) is None  # SELFIES cannot encode it
    assert chem.small_ring_selfies("FI1(F)CC1", 7) is None
    with pytest.raises(ValueError, match="repairs"):
        chem.ring_closures("[C][Ring1][C]")  # a ring onto nothing: repaired
