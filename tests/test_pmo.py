"""PMO: the 20 GuacaMol-defined tasks against hand-computed values and against TDC's definitions
(re-implemented below from TDC's oracle.py, as PMO calls them), the AUC top-10 against mol_opt's
top_auc, the published table, the resumable harness and the Hydra entry point."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rdkit import Chem, DataStructs
from rdkit.Chem import AllChem, Descriptors, rdMolDescriptors
from rdkit.Chem.Pharm2D import Generate, Gobbi_Pharm2D
from scipy.stats import gmean

from molvae.design import METHODS, pmo, register
from molvae.design import plots as report

ROOT = Path(__file__).resolve().parents[1]

ALBUTEROL = "CC(C)(C)NCC(O)c1ccc(O)c(CO)c1"
AMLODIPINE = r"Clc1ccccc1C2C(=C(/N/C(=C2/C(=O)OCC)COCCN)C)\C(=O)OC"
CELECOXIB = "CC1=CC=C(C=C1)C1=CC(=NN1C1=CC=C(C=C1)S(N)(=O)=O)C(F)(F)F"
DECO = "CCCOc1cc2ncnc(Nc3ccc4ncsc4c3)c2cc1S(=O)(=O)C(C)(C)C"
FEXOFENADINE = "CC(C)(C(=O)O)c1ccc(cc1)C(O)CCCN2CCC(CC2)C(O)(c3ccccc3)c4ccccc4"
MESTRANOL = "COc1ccc2[C@H]3CC[C@@]4(C)[C@@H](CC[C@@]4(O)C#C)[C@@H]3CCc2c1"
OSIMERTINIB = "COc1cc(N(C)CCN(C)C)c(NC(=O)C=C)cc1Nc2nccc(n2)c3cn(C)c4ccccc34"
PERINDOPRIL = "O=C(OCC)C(NC(C(=O)N1C(C(=O)O)CC2CCCCC12)C)CCC"
RANOLAZINE = "COc1ccccc1OCC(O)CN2CCN(CC(=O)Nc3c(C)cccc3C)CC2"
SITAGLIPTIN = "Fc1cc(c(F)cc1F)CC(N)CC(=O)N3Cc2nnc(n2CC3)C(F)(F)F"
THIOTHIXENE = "CN(C)S(=O)(=O)c1ccc2Sc3ccccc3C(=CCCN4CCN(C)CC4)c2c1"
TROGLITAZONE = "Cc1c(C)c2OC(C)(COc3ccc(CC4SC(=O)NC4=O)cc3)CCc2c(C)c1O"
ZALEPLON = "O=C(C)N(CC)C1=CC=CC(C2=CC=NC3=C(C=NN23)C#N)=C1"
CAMPHOR, MENTHOL = "CC1(C)C2CCC1(C)C(=O)C2", "CC(C)C1CCC(C)CC1O"
TADALAFIL = "O=C1N(CC(N2C1CC3=C(C2C4=CC5=C(OCO5)C=C4)NC6=C3C=CC=C6)=O)C"
SILDENAFIL = "CCCC1=NN(C2=C1N=C(NC2=O)C3=C(C=CC(=C3)S(=O)(=O)N4CCN(CC4)C)OCC)C"
VALSARTAN = "CCCCC(=O)N(Cc1ccc(-c2ccccc2-c2nn[nH]n2)cc1)C(C(C)C)C(=O)O"
ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"
C7H8N2O2 = "Nc1ccc(C(=O)O)cc1N"  # 3,4-diaminobenzoic acid
C9H10N2O2PF2Cl = "CCNC(=O)c1cc(Cl)ccc1NP(=O)(F)F"

# The targets, isomers, a charged molecule, a SMARTS hit and MOSES-like molecules.
PANEL = [
    ALBUTEROL, AMLODIPINE, CELECOXIB, DECO, FEXOFENADINE, MESTRANOL, OSIMERTINIB, PERINDOPRIL,
    RANOLAZINE, SITAGLIPTIN, THIOTHIXENE, TROGLITAZONE, ZALEPLON, CAMPHOR, MENTHOL, TADALAFIL,
    SILDENAFIL, VALSARTAN, ASPIRIN, C7H8N2O2, C9H10N2O2PF2Cl, "C[N+](C)(C)Cc1ccccc1",
    "CN(C=O)Cc1ccc(-c2ccccc2)cc1", "c1ccccc1", "CCO", "NC(=O)c1ccccc1[N+](=O)[O-]",
    "CCOC(=O)c1ccc(NC(=O)c2ccccc2)cc1", "Cc1ccc(S(=O)(=O)N2CCCC2)cc1",
    "CN1CCN(c2ccc(C(F)(F)F)cc2)CC1", "COc1ccc(CCN)cc1OC", "O=C(Nc1ccc(F)cc1)c1cccnc1",
    "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
]  # fmt: skip


# --------------------------------------------------------------- TDC's definitions, as PMO
# Transcribed from TDC's tdc/chem_utils/oracle/oracle.py (mims-harvard/TDC, commit c310c35f,
# 2025-04), the oracles mol_opt's optimizer calls: independent of guacamol's code.


def _mol(s):
    return Chem.MolFromSmiles(s)


FP = {
    "ECFP4": lambda s: AllChem.GetMorganFingerprint(_mol(s), 2),
    "FCFP4": lambda s: AllChem.GetMorganFingerprint(_mol(s), 2, useFeatures=True),
    "AP": lambda s: AllChem.GetAtomPairFingerprint(_mol(s), maxLength=10),
    "ECFP6": lambda s: AllChem.GetMorganFingerprint(_mol(s), 3),
}


def sim(a, b, fp):
    return DataStructs.TanimotoSimilarity(FP[fp](a), FP[fp](b))


def gauss(mu, sigma):
    return lambda x: float(np.exp(-0.5 * np.power((x - mu) / sigma, 2.0)))


def min_gauss(mu, sigma):  # 1 below mu
    return lambda x: gauss(mu, sigma)(max(x, mu))


def max_gauss(mu, sigma):  # 1 above mu
    return lambda x: gauss(mu, sigma)(min(x, mu))


def clipped(upper):
    return lambda x: float(np.clip(x / upper, 0.0, 1.0))


def formula_counts(formula):
    return [(a, int(c) if c else 1) for a, c in re.findall(r"([A-Z][a-z]*)(\d*)", formula)]


def count(mol, element):
    mol = Chem.AddHs(mol) if element == "H" else mol
    return sum(1 for a in mol.GetAtoms() if a.GetSymbol() == element)


def tdc_isomer(target, s):
    want = formula_counts(target)
    s = Chem.MolToSmiles(Chem.AddHs(_mol(Chem.MolToSmiles(_mol(s)))))
    mol = _mol(s)
    scores = [gauss(n, 1.0)(count(mol, a)) for a, n in want]
    total = sum(n for _, n in formula_counts(rdMolDescriptors.CalcMolFormula(mol)))
    scores.append(gauss(sum(n for _, n in want), 2.0)(total))
    return gmean(scores)


def smarts_hit(s, smarts):
    return float(len(_mol(s).GetSubstructMatches(Chem.MolFromSmarts(smarts))) > 0)


def phco_sim(a, b):
    fa = Generate.Gen2DFingerprint(_mol(a), Gobbi_Pharm2D.factory)
    fb = Generate.Gen2DFingerprint(_mol(b), Gobbi_Pharm2D.factory)
    return DataStructs.TanimotoSimilarity(fa, fb)


def props(s):
    m = _mol(s)
    return Descriptors.MolLogP(m), Descriptors.TPSA(m), Descriptors.BertzCT(m)


SCAFFOLD = "[#7]-c1n[c;h1]nc2[c;h1]c(-[#8])[c;h0][c;h1]c12"


def tdc_sitagliptin(s):
    logp, tpsa, _ = props(SITAGLIPTIN)
    lp, tp, _ = props(s)
    return gmean([
        gauss(0, 0.1)(sim(s, SITAGLIPTIN, "ECFP4")), gauss(logp, 0.2)(lp), gauss(tpsa, 5)(tp),
        tdc_isomer("C16H15F6N5O", s),
    ])  # fmt: skip


def tdc_valsartan(s):
    other = "NC(CC(=O)N1CCn2c(nnc2C(F)(F)F)C1)Cc1cc(F)c(F)cc1F"
    (lo, to, bo), (lp, tp, bp) = props(other), props(s)
    hit = smarts_hit(s, "CN(C=O)Cc1ccc(c2ccccc2)cc1")
    return gmean([hit, gauss(to, 5)(tp), gauss(lo, 0.2)(lp), gauss(bo, 30)(bp)])


TDC = {
    "albuterol_similarity": lambda s: clipped(0.75)(sim(s, ALBUTEROL, "FCFP4")),
    "amlodipine_mpo": lambda s: gmean([
        sim(s, AMLODIPINE, "ECFP4"), gauss(3, 0.5)(rdMolDescriptors.CalcNumRings(_mol(s)))]),
    "celecoxib_rediscovery": lambda s: sim(s, CELECOXIB, "ECFP4"),
    "deco_hop": lambda s: np.mean([
        clipped(0.85)(phco_sim(s, DECO)), 1 - smarts_hit(s, "CS([#6])(=O)=O"),
        1 - smarts_hit(s, "[#7]-c1ccc2ncsc2c1"), smarts_hit(s, SCAFFOLD)]),
    "fexofenadine_mpo": lambda s: gmean([
        max_gauss(90, 10)(props(s)[1]), min_gauss(4, 1)(props(s)[0]),
        clipped(0.8)(sim(s, FEXOFENADINE, "AP"))]),
    "isomers_c7h8n2o2": lambda s: tdc_isomer("C7H8N2O2", s),
    "isomers_c9h10n2o2pf2cl": lambda s: tdc_isomer("C9H10N2O2PF2Cl", s),
    "median1": lambda s: gmean([sim(s, CAMPHOR, "ECFP4"), sim(s, MENTHOL, "ECFP4")]),
    "median2": lambda s: gmean([sim(s, TADALAFIL, "ECFP6"), sim(s, SILDENAFIL, "ECFP6")]),
    "mestranol_similarity": lambda s: clipped(0.75)(sim(s, MESTRANOL, "AP")),
    "osimertinib_mpo": lambda s: gmean([
        max_gauss(100, 10)(props(s)[1]), min_gauss(1, 1)(props(s)[0]),
        clipped(0.8)(sim(s, OSIMERTINIB, "FCFP4")),
        min_gauss(0.85, 0.1)(sim(s, OSIMERTINIB, "ECFP6"))]),
    "perindopril_mpo": lambda s: gmean([
        sim(s, PERINDOPRIL, "ECFP4"),
        gauss(2, 0.5)(rdMolDescriptors.CalcNumAromaticRings(_mol(s)))]),
    "qed": lambda s: Chem.QED.qed(_mol(s)),
    "ranolazine_mpo": lambda s: gmean([
        max_gauss(95, 20)(props(s)[1]), max_gauss(7, 1)(props(s)[0]),
        clipped(0.7)(sim(s, RANOLAZINE, "AP")), gauss(1, 1.0)(count(_mol(s), "F"))]),
    "scaffold_hop": lambda s: np.mean([
        clipped(0.75)(phco_sim(s, DECO)),
        smarts_hit(s, "[#6]-[#6]-[#6]-[#8]-[#6]~[#6]~[#6]~[#6]~[#6]-[#7]-c1ccc2ncsc2c1"),
        1 - smarts_hit(s, SCAFFOLD)]),
    "sitagliptin_mpo": tdc_sitagliptin,
    "thiothixene_rediscovery": lambda s: sim(s, THIOTHIXENE, "ECFP4"),
    "troglitazone_rediscovery": lambda s: sim(s, TROGLITAZONE, "ECFP4"),
    "valsartan_smarts": tdc_valsartan,
    "zaleplon_mpo": lambda s: gmean([
        sim(s, ZALEPLON, "ECFP4"), tdc_isomer("C19H17N3O2", s)]),
}  # fmt: skip


# ----------------------------------------------------------------------------- the tasks


def test_the_twenty_tasks_are_pmos_guacamol_tasks():
    assert list(pmo.TASKS) == sorted(TDC) and len(pmo.TASKS) == 20
    assert pmo.published().index.tolist() == list(pmo.TASKS)
    obj = pmo.objective("median1")
    assert obj.name == "median1" and obj.sign == 1.0
    with pytest.raises(ValueError, match="unknown PMO task 'drd2'"):
        pmo.score("drd2", ["CCO"])
    # guacamol 0.5.5 (the pinned wheel unless installed); its FCD import left no trace
    suites = pmo.load_guacamol()
    assert "guacamol-0.5.5" in suites.__file__ or importlib.metadata.version("guacamol") == "0.5.5"
    assert "fcd" not in sys.modules or importlib.util.find_spec("fcd") is not None


@pytest.mark.parametrize("task", sorted(TDC))
def test_scores_equal_tdcs_definitions_as_pmo_calls_them(task):
    got = pmo.score(task, PANEL)
    want = [TDC[task](s) for s in PANEL]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_known_values_of_known_molecules():
    def one(task, s):
        return float(pmo.score(task, [s])[0])

    for task, target in [
        ("celecoxib_rediscovery", CELECOXIB),
        ("troglitazone_rediscovery", TROGLITAZONE),
        ("thiothixene_rediscovery", THIOTHIXENE),
        ("albuterol_similarity", ALBUTEROL),
        ("mestranol_similarity", MESTRANOL),
    ]:
        assert one(task, target) == 1.0
        assert one(task, Chem.MolToSmiles(Chem.MolFromSmiles(target))) == 1.0  # any SMILES
    assert one("qed", ASPIRIN) == pytest.approx(0.5501, abs=1e-4)  # QED of aspirin
    # exact formula hits
    assert one("isomers_c7h8n2o2", C7H8N2O2) == pytest.approx(1.0)
    assert one("isomers_c7h8n2o2", "Cc1ccc(N)cc1[N+](=O)[O-]") == pytest.approx(1.0)
    assert one("isomers_c9h10n2o2pf2cl", C9H10N2O2PF2Cl) == pytest.approx(1.0)
    # benzene for C7H8N2O2: C 6/7, H 6/8, N 0/2, O 0/2 (sigma 1), 12/19 atoms (sigma 2)
    assert one("isomers_c7h8n2o2", "c1ccccc1") == pytest.approx(
        math.exp(-(0.5 + 2 + 2 + 2 + 0.5 * 3.5**2) / 5)
    )
    # zaleplon (C17H15N5O) for itself: similarity 1, formula C19H17N3O2 missed by
    # C -2, H -2, N +2, O -1 and 3 of 41 atoms
    assert one("zaleplon_mpo", ZALEPLON) == pytest.approx(
        math.exp(-(2 + 2 + 2 + 0.5 + 0.5 * 1.5**2) / 5 / 2)
    )
    # sitagliptin for itself: similarity 1 is 10 sigmas off its target 0; the rest are exact
    assert one("sitagliptin_mpo", SITAGLIPTIN) == pytest.approx(math.exp(-50 / 4))
    assert one("perindopril_mpo", PERINDOPRIL) == pytest.approx(math.exp(-4))  # 0 arom. rings
    assert one("amlodipine_mpo", AMLODIPINE) == pytest.approx(math.exp(-1))  # 2 rings of 3
    # the pharmacophore itself: similar and scaffold kept, both decorations present
    assert one("deco_hop", DECO) == pytest.approx(0.5)
    assert one("scaffold_hop", DECO) == pytest.approx(2 / 3)  # the scaffold is there
    assert one("valsartan_smarts", SITAGLIPTIN) == 0.0  # no biphenyl: the SMARTS misses
    # median1 of camphor: sqrt(1 x Tanimoto(camphor, menthol)) on count Morgan radius 2
    fps = [AllChem.GetMorganFingerprint(Chem.MolFromSmiles(s), 2) for s in (CAMPHOR, MENTHOL)]
    assert one("median1", CAMPHOR) == pytest.approx(DataStructs.TanimotoSimilarity(*fps) ** 0.5)
    # ranolazine for itself: similarity 1, logP and TPSA under their targets, no fluorine
    m = Chem.MolFromSmiles(RANOLAZINE)
    logp, tpsa = Descriptors.MolLogP(m), Descriptors.TPSA(m)
    want = (
        math.exp(-0.5 * (logp - 7) ** 2) * math.exp(-0.5 * ((tpsa - 95) / 20) ** 2) * math.exp(-0.5)
    ) ** 0.25
    assert logp < 7 and tpsa < 95 and one("ranolazine_mpo", RANOLAZINE) == pytest.approx(want)
    # what cannot be scored is nan
    assert np.isnan(pmo.score("qed", ["not a smiles", "", "C1CC"])).all()


# ----------------------------------------------------------------------------- AUC top-10


def mol_opt_top_auc(buffer, top_n, finish, freq_log, max_oracle_calls):
    """mol_opt's main/optimizer.py top_auc, verbatim but for the names (buffer: smiles ->
    [score, call])."""
    total, prev, called = 0, 0, 0
    ordered = sorted(buffer.items(), key=lambda kv: kv[1][1])
    for idx in range(freq_log, min(len(buffer), max_oracle_calls), freq_log):
        temp = sorted(ordered[:idx], key=lambda kv: kv[1][0], reverse=True)[:top_n]
        top_n_now = np.mean([item[1][0] for item in temp])
        total += freq_log * (top_n_now + prev) / 2
        prev, called = top_n_now, idx
    temp = sorted(ordered, key=lambda kv: kv[1][0], reverse=True)[:top_n]
    top_n_now = np.mean([item[1][0] for item in temp])
    total += (len(buffer) - called) * (top_n_now + prev) / 2
    if finish and len(buffer) < max_oracle_calls:
        total += (max_oracle_calls - len(buffer)) * top_n_now
    return total / max_oracle_calls


def test_auc_top10_is_mol_opts_top_auc():
    rng = random.Random(0)
    for n, budget in [(1, 100), (7, 100), (100, 100), (250, 1000), (1000, 1000), (999, 1000),
                      (1234, 10_000), (3000, 3000), (450, 333)]:  # fmt: skip
        scores = [rng.random() ** 3 for _ in range(n)]
        buffer = {f"m{i}": [s, i + 1] for i, s in enumerate(scores)}
        want = mol_opt_top_auc(buffer, 10, True, 100, budget)
        if n > budget:  # molvae's oracle never holds more than the budget
            want = mol_opt_top_auc(dict(list(buffer.items())[:budget]), 10, True, 100, budget)
        assert pmo.auc_top10(scores, budget) == pytest.approx(want, rel=1e-12)


def test_auc_on_hand_computed_cases():
    # top-2 means after each call 1, 2, 2.5, 4, 4.5; sampled every 2 calls: trapezoids
    # 2*(0+2)/2 + 2*(2+4)/2, the partial segment 1*(4+4.5)/2, held at 4.5 for the 6th call
    assert report.top_auc([1, 3, 2, 5, 4], budget=6, k=2, freq=2) == pytest.approx(16.75 / 6)
    # 250 calls of 1.0 in a budget of 1000: 100*(0+1)/2 + 100 + 50 + 750 held
    assert pmo.auc_top10([1.0] * 250, 1000) == pytest.approx(0.95)
    # a full budget of 1.0: only the first 100 calls ramp up from 0
    assert pmo.auc_top10([1.0] * 1000, 1000) == pytest.approx(0.95)
    assert pmo.auc_top10([1.0] * 10_000, 10_000) == pytest.approx(0.995)


def test_the_held_auc_is_mol_opts_value_at_10000_and_bounds_the_run_continued():
    rng = random.Random(1)
    for n, budget in [(1000, 1000), (600, 1000), (640, 1000), (37, 100), (3, 1000), (10**4, 10**4)]:
        scores = [rng.random() ** 3 for _ in range(n)]
        auc = pmo.auc_top10(scores, budget)
        top10 = float(np.mean(sorted(scores)[-10:]))
        held = pmo.auc_top10_held(auc, top10, budget)
        # mol_opt's top_auc of the same calls, the budget 10,000: the top-10 mean held
        buffer = {f"m{i}": [s, i + 1] for i, s in enumerate(scores)}
        assert held == pytest.approx(mol_opt_top_auc(buffer, 10, True, 100, 10_000), rel=1e-12)
        if n % 100:  # mid-way through PMO's logging interval the bound can be off a little
            continue
        for _ in range(3):  # any continuation to 10,000 calls scores at least as much
            more = [rng.random() ** rng.choice([1, 3, 9]) for _ in range(10_000 - n)]
            assert pmo.auc_top10(scores + more, 10_000) >= held - 1e-12
        if n < 10_000:  # and a continuation that never beats the top 10 scores exactly that
            low = [min(scores) / 2] * (10_000 - n)
            assert pmo.auc_top10(scores + low, 10_000) == pytest.approx(held, rel=1e-12)
    assert pmo.auc_top10_held(0.5, np.nan, 1000) == pytest.approx(0.05)  # nothing valid


# ----------------------------------------------------------------------------- published


def test_published_table_matches_the_printed_values():
    pub = pmo.published()
    assert list(pub.columns) == [c for m in pmo.PUBLISHED_METHODS for c in (m, f"{m}_std")]
    assert pub.shape == (20, 8) and pub.notna().all().all()
    # the leaderboard's pages print the means truncated to 3 decimals
    printed = {
        ("albuterol_similarity", "reinvent"): 0.882,
        ("albuterol_similarity", "gp_bo"): 0.898,
        ("sitagliptin_mpo", "graph_ga"): 0.433,
        ("valsartan_smarts", "reinvent"): 0.178,
        ("isomers_c7h8n2o2", "graph_ga"): 0.862,
        ("qed", "selfies_vae_bo"): 0.936,
        ("albuterol_similarity", "selfies_vae_bo"): 0.494,
    }
    for (task, m), mean in printed.items():
        assert math.floor(pub.loc[task, m] * 1000) / 1000 == pytest.approx(mean)
    assert pub.loc["albuterol_similarity", "reinvent_std"] == pytest.approx(0.006, abs=5e-4)
    # With drd2, gsk3b and jnk3 (Table 3), the sums over PMO's 23 tasks that rank the methods
    for m, others, total in [
        ("reinvent", 0.945 + 0.865 + 0.783, 14.196),
        ("graph_ga", 0.964 + 0.788 + 0.553, 13.751),
        ("gp_bo", 0.923 + 0.851 + 0.564, 13.156),
    ]:
        assert pub[m].sum() + others == pytest.approx(total, abs=5e-3)


# ----------------------------------------------------------------------------- harness

POOL = (
    "CCO", "CCN", "c1ccccc1", ASPIRIN, CAMPHOR, MENTHOL, "CCCCO", "c1ccncc1", "CC(=O)N",
    "Cc1ccccc1", "Oc1ccccc1", "CCOC(C)=O", C7H8N2O2, "CC(C)O", "CN", "NC(=O)c1ccccc1",
)  # fmt: skip


@dataclass(frozen=True)
class PoolConfig:
    batch: int = 3
    shift: int = 0  # seed-independent rotation of the pool


@pytest.fixture
def pool_method():
    """A search registered for one test: scores POOL in batches, rotated by seed + shift, until
    the budget is spent (no model)."""

    @register("pmo_test_pool", PoolConfig)
    def run_pool(model, oracle, cfg, *, seed, init_smiles, predictor, progress):
        k = (seed + cfg.shift) % len(POOL)
        pool = list(POOL[k:] + POOL[:k])
        for i in range(0, len(pool), cfg.batch):
            if oracle.exhausted:
                break
            oracle(pool[i : i + cfg.batch], round=i)

    try:
        yield "pmo_test_pool"
    finally:
        del METHODS["pmo_test_pool"]


@pytest.fixture
def counted(monkeypatch):
    """pmo.score counting the molecules each task is asked to score."""
    seen: dict[str, list[str]] = {}
    real = pmo.score

    def score(task, smiles):
        seen.setdefault(task, []).extend(smiles)
        return real(task, smiles)

    monkeypatch.setattr(pmo, "score", score)
    return seen


def test_runs_resume_without_paying_twice_and_skip_what_is_finished(tmp_path, counted, pool_method):
    out = tmp_path / "pmo"
    first = pmo.run_task(None, "median1", "pmo_test_pool", 10, seed=1, out=out)
    assert len(counted["median1"]) == 10 and first["calls"] == 10
    history = pd.read_csv(out / "median1" / "seed1" / "oracle_calls.csv")
    assert first["auc_top10"] == pytest.approx(pmo.auc_top10(history["score"], 10))
    want = np.sort(pmo.score("median1", list(history["smiles"])))[::-1]
    assert first["top10_mean"] == pytest.approx(want[:10].mean())
    assert first["top1"] == pytest.approx(want[0])
    counted.clear()
    # finished: read back, nothing scored
    assert pmo.run_task(None, "median1", "pmo_test_pool", 10, seed=1, out=out) == first
    assert counted == {}
    # interrupted after 4 calls: the rerun pays the 6 others only, and ends the same
    folder = out / "median1" / "seed1"
    (folder / "summary.json").unlink()
    lines = (folder / "oracle_calls.csv").read_text().splitlines(keepends=True)
    (folder / "oracle_calls.csv").write_text("".join(lines[:5]))
    again = pmo.run_task(None, "median1", "pmo_test_pool", 10, seed=1, out=out)
    assert len(counted["median1"]) == 6 and set(counted["median1"]).isdisjoint(
        pd.Series([line.split(",")[0] for line in lines[1:5]])
    )
    assert {
        k: v for k, v in again.items() if k not in ("seconds", "search_ms_per_call", "counts")
    } == {k: v for k, v in first.items() if k not in ("seconds", "search_ms_per_call", "counts")}
    # other settings in the same folder are refused, finished or not
    with pytest.raises(ValueError, match="other settings"):
        pmo.run_task(None, "median1", "pmo_test_pool", 12, seed=1, out=out)
    with pytest.raises(ValueError, match="other settings"):
        pmo.run_task(None, "median1", "pmo_test_pool", 10, seed=1, out=out, options={"batch": 2})
    with pytest.raises(TypeError, match="unknown option"):
        pmo.run_task(None, "qed", "pmo_test_pool", 10, seed=1, out=out, options={"lr": 1.0})


def test_summary_table_markdown_and_curves(tmp_path, pool_method):
    out = tmp_path / "pmo"
    for task in ("qed", "median1"):
        for seed in (0, 1):
            pmo.run_task(None, task, "pmo_test_pool", 12, seed=seed, out=out)
    runs = pmo.load_runs(out)
    assert len(runs) == 4 and set(runs["task"]) == {"qed", "median1"}
    table = pmo.summary_table(runs, ["median1", "qed"])
    assert table.index.tolist() == ["median1", "qed", "sum"]
    q = runs[runs["task"] == "qed"]
    assert table.loc["qed", "auc_top10"] == pytest.approx(q["auc_top10"].mean())
    assert table.loc["qed", "auc_top10_std"] == pytest.approx(q["auc_top10"].std(ddof=0))
    assert table.loc["qed", "seeds"] == 2 and table.loc["qed", "calls"] == 12
    assert table.loc["qed", "reinvent"] == pmo.published().loc["qed", "reinvent"]
    assert table.loc["sum", "auc_top10"] == pytest.approx(table["auc_top10"][:2].sum())
    pairs = zip(q["auc_top10"], q["top10_mean"], strict=True)
    held = [pmo.auc_top10_held(a, t, 12) for a, t in pairs]
    assert table.loc["qed", "auc_top10_held"] == pytest.approx(np.mean(held))
    assert table.loc["qed", "auc_top10_held"] > table.loc["qed", "auc_top10"]
    md = pmo.summary_markdown(table, "PMO", ["a note"])
    assert "| qed | 2 | " in md and "| **sum** |" in md and "GP BO" in md and "a note" in md
    assert "AUC top-10 at 10,000, held (>=)" in md
    fake = table.assign(selfies_vae_bo=[1.0, 0.0, 1.0])  # median1, qed, sum
    assert pmo.beats(fake) == ["qed"]
    pmo.plot_curves(out, ["median1", "qed"], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000


# ----------------------------------------------------------------------------- the script


def hydra_run(*overrides: str, multirun: bool = False) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HYDRA_FULL_ERROR": "1",
        "JAX_COMPILATION_CACHE_DIR": str(ROOT / ".cache" / "jax"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }
    cmd = [sys.executable, str(ROOT / "experiments" / "pmo.py"), *(["-m"] if multirun else [])]
    proc = subprocess.run(
        [*cmd, *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise AssertionError(f"pmo.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    return proc


def test_the_script_runs_a_sweep_through_the_joblib_launcher_and_resumes(tiny_run, tmp_path):
    out = tmp_path / "pmo"
    common = [
        f"run_dir={tiny_run}", f"pmo.out={out}", "pmo.method=bo", "pmo.budget=24",
        "pmo.options={n_init:16,batch_size:8,gp_steps:20,n_candidates:128}",
    ]  # fmt: skip
    hydra_run(*common, "hydra/launcher=joblib", "pmo.tasks=qed,median1", "pmo.seeds=[0]",
              multirun=True)  # fmt: skip
    for task in ("qed", "median1"):
        summary = json.loads((out / task / "seed0" / "summary.json").read_text())
        assert summary["calls"] == 24 and summary["options"]["batch_size"] == 8
        history = pd.read_csv(out / task / "seed0" / "oracle_calls.csv")
        assert summary["auc_top10"] == pytest.approx(pmo.auc_top10(history["score"], 24))
        np.testing.assert_allclose(history["score"], pmo.score(task, list(history["smiles"])))
    # one more seed in a plain run; the finished ones are skipped (no model loaded for them)
    proc = hydra_run(*common, "pmo.tasks=[qed,median1]", "pmo.seeds=[0,1]")
    assert "2 to run" in proc.stderr + proc.stdout
    table = pd.read_csv(out / "pmo.csv", index_col="task")
    assert table.index.tolist() == ["median1", "qed", "sum"]
    assert (table.loc[["median1", "qed"], "seeds"] == 2).all()
    assert (out / "curves.png").exists() and (out / "published.csv").exists()
    md = (out / "pmo.md").read_text()
    assert "compare them with the held column" in md and "AUC top-10 at 10,000, held" in md
    won = pmo.beats(table)
    assert f"ahead on {len(won)} of 2 tasks" in md
    proc = hydra_run(*common, "pmo.tasks=[qed,median1]", "pmo.seeds=[0,1]")
    assert "0 to run" in proc.stderr + proc.stdout


def test_the_script_checks_its_settings_before_any_work(tmp_path):
    from omegaconf import OmegaConf

    if str(ROOT / "experiments") not in sys.path:
        sys.path.insert(0, str(ROOT / "experiments"))
    script = importlib.import_module("pmo")  # experiments/pmo.py

    def cfg(**pmo_keys):
        base = {"tasks": "qed", "method": "bo", "budget": 5, "seeds": 0, "options": None}
        return OmegaConf.create({"pmo": {**base, **pmo_keys}})

    assert script.settings(cfg()) == (["qed"], [0], "bo", 5, {})
    got = script.settings(cfg(tasks=["qed", "median1"], seeds=[1, 2], options={"batch_size": 4}))
    assert got == (["qed", "median1"], [1, 2], "bo", 5, {"batch_size": 4})
    for bad, message in [
        ({"tasks": "drd2"}, "unknown task"),
        ({"tasks": []}, "pmo.tasks must be"),
        ({"seeds": "0"}, "pmo.seeds must be"),
        ({"budget": 0}, "pmo.budget must be"),
        ({"method": "annealing"}, "method must be one of"),
        ({"method": "constrained"}, "not a budgeted search"),
        ({"options": {"lr": 1}}, "unknown option"),
        ({"options": {"acquisition": "ucb"}}, "acquisition must be"),
    ]:
        with pytest.raises(ValueError, match=message):
            script.settings(cfg(**bad))
    # end to end: the error stops the script before any run folder exists
    out = tmp_path / "pmo"
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, str(ROOT / "experiments" / "pmo.py"), f"pmo.out={out}", "pmo.tasks=drd2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "unknown task" in proc.stderr, proc.stderr[-2000:]
    assert not list(out.glob("*/seed*"))
