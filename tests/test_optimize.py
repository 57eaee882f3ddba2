"""Objectives, the oracle's budget, gradient ascent, the GP, BO and the optimize script."""

import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import molvae
from molvae import chem
from molvae.optimize import ObjectiveError, Oracle, constrained_optimize, make_objective, report
from molvae.optimize.gp import GP
from molvae.optimize.gradient import ascend
from molvae.optimize.predictor import FitConfig, fit_latent, predict

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


@pytest.fixture(scope="module")
def model(tiny_run):
    return molvae.load(tiny_run)


class Recorder:
    """A callable objective that records every molecule it is shown."""

    def __init__(self, fn=len):
        self.seen, self.fn = [], fn

    def __call__(self, smiles):
        self.seen.extend(smiles)
        return [float(self.fn(s)) for s in smiles]


# ----------------------------------------------------------------------------- objectives


def test_builtin_objectives_follow_their_definitions():
    mol = chem.mol_from_smiles(ASPIRIN)
    assert make_objective("qed")([ASPIRIN])[0] == pytest.approx(chem.qed(mol))
    assert make_objective("sa")([ASPIRIN])[0] == pytest.approx(-chem.sa(mol))  # minimised
    assert make_objective("plogp_zinc_norm")([ASPIRIN])[0] == pytest.approx(
        chem.penalized_logp_zinc(mol)
    )
    mw = make_objective("weight_target", target=chem.weight(mol), width=50.0)
    assert mw([ASPIRIN])[0] == pytest.approx(1.0)
    assert make_objective("similarity", target=ASPIRIN)([ASPIRIN, "CCO"])[0] == pytest.approx(1.0)
    assert math.isnan(make_objective("qed")([""])[0])
    both = make_objective("weighted", terms={"qed": 1.0, "logp": 0.5})([ASPIRIN])[0]
    assert both == pytest.approx(chem.qed(mol) + 0.5 * chem.logp(mol))
    # Aspirin's SA is ~1.6: 'sa <= 1' is violated by ~0.6 and costs 10 per unit.
    cons = make_objective("qed", constraints=["sa <= 1"], penalty=10.0)([ASPIRIN])[0]
    assert cons == pytest.approx(chem.qed(mol) - 10.0 * (chem.sa(mol) - 1.0))
    assert make_objective("qed", constraints=["qed >= 0.1"])([ASPIRIN])[0] == pytest.approx(
        chem.qed(mol)
    )
    for bad in (dict(spec="tastiness"), dict(spec="similarity", target="not smiles")):
        with pytest.raises(ObjectiveError):
            make_objective(**bad)
    with pytest.raises(ObjectiveError, match="form"):
        make_objective("qed", constraints=["qed is high"])


# ----------------------------------------------------------------------------- oracle


def test_budget_counts_distinct_valid_canonical_molecules_exactly():
    rec = Recorder()
    oracle = Oracle(rec, budget=4)
    out = oracle(["CCO", "OCC", "", "not a molecule", "CCO", "c1ccccc1"])
    assert rec.seen == ["CCO", "c1ccccc1"]  # canonical, once each, invalid never shown
    assert out[0] == out[1] == out[4] == 3.0 and math.isnan(out[2]) and math.isnan(out[3])
    oracle(["CCO"])  # a repeat is free
    out = oracle(["CCN", "CCCC", "CCCCC", "CCCCCC"])  # only two calls left
    assert rec.seen[2:] == ["CCN", "CCCC"] and np.isnan(out[2:]).all()
    assert oracle.exhausted and oracle.n_calls == 4 and oracle.counts["over_budget"] == 2
    assert oracle.counts["invalid"] == 2 and oracle.counts["repeats"] == 3
    h = oracle.history
    assert list(h.columns[:2]) == ["smiles", "score"] and list(h["call"]) == [1, 2, 3, 4]
    assert np.isnan(oracle(["CCCCCCCC"])[0]) and len(rec.seen) == 4  # nothing past the budget


def test_failing_objectives_are_counted_per_molecule_or_rejected():
    def picky(smiles):
        if any("N" in s for s in smiles):
            raise RuntimeError("no nitrogen")
        return [math.inf if s == "CCCC" else (math.nan if s == "CCC" else 1.0) for s in smiles]

    oracle = Oracle(picky, budget=10)
    out = oracle(["CCO", "CCN", "CCCC", "CCC"])
    assert out[0] == 1.0 and np.isnan(out[1:]).all()
    h = oracle.history.set_index("smiles")
    assert h.loc["CCN", "status"] == "error" and h.loc["CCCC", "status"] == "nonfinite"
    assert oracle.counts["errors"] == 1 and oracle.counts["nonfinite"] == 2 and oracle.n_calls == 4

    with pytest.raises(ObjectiveError, match="returned 1 values for 2"):
        Oracle(lambda s: [0.0], budget=5)(["CCO", "CCN"])
    with pytest.raises(ObjectiveError, match="raised on each of the first 3"):
        Oracle(lambda s: 1 / 0, budget=9, fail_limit=3)(["C", "CC", "CCC", "CCCC"])


def test_history_persists_and_resumes_without_paying_again(tmp_path):
    path = tmp_path / "calls.csv"
    first = Recorder()
    a = Oracle(first, budget=5, path=path)
    a(["CCO", "CCN"])
    a(["c1ccccc1", "CC(=O)O"])
    with open(path, "a") as f:
        f.write("CCCC,0.5,5,1,x")  # a row cut by a crash: dropped on resume
    again = Recorder()
    b = Oracle(again, budget=5, path=path)
    assert b.paid == 4 and b.remaining == 1 and b.n_calls == 0  # a replay starts from call 0
    b(["CCN", "CCO", "CCCCl", "CCCCBr"])
    assert again.seen == ["CCCCl"]  # paid molecules come from the file, one new call fits
    assert b.history["smiles"].tolist() == ["CCN", "CCO", "CCCCl", "c1ccccc1", "CC(=O)O"]
    assert pd.read_csv(path)["smiles"].tolist()[-1] == "CCCCl"
    with pytest.raises(ObjectiveError, match="objective"):
        Oracle("qed", budget=5, path=path)  # another objective's history


# ----------------------------------------------------------------------------- surrogates


def test_gradient_steps_increase_the_predicted_value():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((400, 6)).astype(np.float32)
    y = -np.sum(np.square(z - 0.5), 1)  # maximum at z = 0.5
    pred, _ = fit_latent(z, y, ["y"], cfg=FitConfig(steps=300, hidden=(32, 32), n_models=2))
    z0 = rng.standard_normal((16, 6)).astype(np.float32) * 1.5
    path = ascend(pred, z0, steps=40, lr=0.05, snapshots=4)
    values = [predict(pred, p)[0][:, 0] for p in (z0, *path)]
    assert all(np.all(b >= a - 1e-3) for a, b in zip(values[:-1], values[1:], strict=True))
    assert np.mean(values[-1] - values[0]) > 1.0
    fenced = ascend(pred, z0, steps=40, lr=0.05, radius=0.3)[-1]
    assert np.all(np.linalg.norm(fenced - z0, axis=1) <= 0.3 + 1e-5)  # the trust region holds


def test_gp_recovers_a_known_1d_function():
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 3, (40, 1))
    f = lambda t: np.sin(2 * t) + 0.3 * t  # noqa: E731
    gp = GP.fit(x, f(x[:, 0]))
    xt = np.linspace(-2.7, 2.7, 25)[:, None]  # held-out points inside the data
    mean, std = gp.predict(xt)
    assert np.max(np.abs(mean - f(xt[:, 0]))) < 0.1 and np.all(std < 0.2)
    far_mean, far_std = gp.predict(np.array([[30.0]]))
    assert far_std[0] > 5 * std.max()  # uncertain away from the data
    draws = gp.thompson(xt, 3, seed=0)
    assert draws.shape == (3, 25) and np.isfinite(draws).all()


# ----------------------------------------------------------------------------- search


def test_callable_objective_through_optimize_respects_the_budget(model):
    rec = Recorder()
    r = molvae.optimize(model, rec, method="gradient", budget=30, seed=0, progress=False)
    assert list(r.history.columns[:2]) == ["smiles", "score"]
    assert len(r.history) <= 30 and len(set(rec.seen)) == len(rec.seen) <= 30
    assert r.history["smiles"].tolist() == rec.seen  # every call, in order
    top = r.top(5)
    assert list(top.columns[:2]) == ["smiles", "score"] and {"qed", "sa"} <= set(top.columns)
    assert top["score"].is_monotonic_decreasing and top["smiles"].is_unique
    assert 0 <= r.auc() <= top["score"].max()
    with pytest.raises(TypeError, match="acquisition"):
        molvae.optimize(model, "qed", method="gradient", budget=5, acquisition="ei")


def test_bo_on_qed_beats_random_prior_samples_with_the_same_budget(model):
    budget = 48
    r = molvae.optimize(
        model, "qed", method="bo", budget=budget, seed=0, progress=False, n_init=16, batch_size=8
    )
    assert len(r.history) == budget
    # Random search with the same budget: the first 48 distinct valid prior samples.
    smiles = model.sample(400, seed=123, greedy=True)
    distinct = list(dict.fromkeys(s for s in smiles if s))[:budget]
    random_scores = make_objective("qed")(distinct)
    bo_top = r.top(10, properties=False)["score"].to_numpy()
    assert bo_top.mean() > np.sort(random_scores)[-10:].mean()


def test_constrained_improvement_reports_success_and_similarity(model):
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200, model.latent_dim)).astype(np.float32)
    pred, _ = fit_latent(z, z[:, :1], ["qed"], cfg=FitConfig(steps=50, hidden=(8,), n_models=1))
    starts = ["CCO", "c1ccccc1", ASPIRIN, "not a molecule"]
    table, summary = constrained_optimize(
        model, starts, "qed", deltas=(0.0, 0.4), predictor=pred, steps=6, snapshots=3,
        progress=False,
    )  # fmt: skip
    assert len(table) == 6 and summary["n"] == 3  # the invalid start is left out, not lost
    won = table[table["success"]]
    assert (won["similarity"] >= won["delta"]).all() and (won["improvement"] > 0).all()
    assert (table.loc[~table["success"], "improvement"] == 0).all()
    for d in ("0.0", "0.4"):
        assert 0 <= summary["deltas"][d]["success_rate"] <= 1
    assert summary["deltas"]["0.0"]["success_rate"] >= summary["deltas"]["0.4"]["success_rate"]


def test_pmo_auc_matches_the_definition():
    scores = [0.1] * 100 + [0.5] * 100
    # top-10 mean is 0.1 at 100 calls and 0.5 from 110 on; PMO's trapezoid at freq 100:
    assert report.top_auc(scores, budget=200) == pytest.approx((100 * 0.05 + 100 * 0.3) / 200)
    assert report.top_auc([1.0] * 10, budget=100, k=10) == pytest.approx(0.95)  # held to budget


# ----------------------------------------------------------------------------- the script


def run_script(root, *overrides):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, str(root / "experiments" / "optimize.py"), *overrides]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)


def test_script_writes_every_output(root, tiny_run, tmp_path):
    out = tmp_path / "opt"
    proc = run_script(
        root, f"run_dir={tiny_run}", "optimize=gradient", "optimize.budget=25", "progress=false",
        f"hydra.run.dir={out}", "objective=qed",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("history.csv", "top.csv", "curve.png", "top.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["oracle_calls"] <= 25 and 0 <= summary["auc_top10"] <= 1
    hist = pd.read_csv(out / "history.csv")
    assert list(hist.columns[:2]) == ["smiles", "score"] and "qed" in hist.columns

    proc = run_script(root, f"run_dir={tiny_run}", "optimize.budget=0", f"hydra.run.dir={out}/x")
    assert proc.returncode != 0 and "optimize.budget" in proc.stderr
    assert not (out / "x" / "oracle_calls.csv").exists()  # rejected before any work


def wandb_logged(path) -> tuple[list[dict], dict]:
    """History rows and final summary of an offline run's .wandb file: protobuf records in a
    LevelDB-style log (7-byte header, 32 KiB blocks of chunks: crc, length, FULL/FIRST/.../LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    def items(rs) -> dict:  # media come as nested keys: figures/curve/_type, ...
        return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rs}

    data, pos, buf, history, summary = path.read_bytes(), 7, b"", [], {}
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if (left := 32768 - pos % 32768) < 7:  # block trailer: padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf = (b"" if kind in (1, 2) else buf) + data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record
            record = pb.Record.FromString(buf)
            if record.WhichOneof("record_type") == "history":
                history.append(items(record.history.item))
            elif record.WhichOneof("record_type") == "summary":
                summary.update(items(record.summary.update))
    return history, summary


def test_script_logs_an_offline_wandb_run(root, tiny_run, tmp_path):
    out = tmp_path / "opt"
    proc = run_script(
        root, f"run_dir={tiny_run}", "optimize=gradient", "optimize.budget=25", "progress=false",
        f"hydra.run.dir={out}", "objective=qed", "logger=wandb",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wb,) = (out / "wandb").glob("offline-run-*")
    steps, summary = wandb_logged(next(wb.glob("*.wandb")))

    # The best-so-far curve: one point per oracle call, the values of history.csv.
    want = report.curve(pd.read_csv(out / "history.csv")["score"].to_numpy(float))
    curve = [s for s in steps if "oracle_calls" in s]
    assert [s["oracle_calls"] for s in curve] == want["call"].tolist()
    assert [s.get("best", math.nan) for s in curve] == pytest.approx(
        want["best"].tolist(), nan_ok=True
    )
    assert curve[-1]["top10_mean"] == pytest.approx(want["top10_mean"].iloc[-1])
    # Figures, the top-k table with drawings, and summary.json as summary metrics.
    media = {k: v for s in steps for k, v in s.items() if k.startswith(("figures/", "top_"))}
    assert media["figures/curve/_type"] == media["figures/top/_type"] == "image-file"
    assert media["top_molecules/_type"] == "table-file"
    table = json.loads((wb / "files" / media["top_molecules/path"]).read_text())
    top = pd.read_csv(out / "top.csv")
    assert {"smiles", "score", "qed", "drawing"} <= set(table["columns"])
    assert len(table["data"]) == len(top) and table["data"][0][0] == top["smiles"][0]
    done = json.loads((out / "summary.json").read_text())
    for key in ("auc_top10", "top1", "top10_mean", "oracle_calls"):
        assert summary[key] == pytest.approx(done[key]), key
    assert {k: summary[f"counts/{k}"] for k in done["counts"]} == done["counts"]
    assert not (out / "metrics.jsonl").exists()  # oracle_calls.csv stays the per-call record


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["optimize.budget=-3"], "optimize.budget"),
        (["optimize.acquisition=ucb"], "optimize.acquisition"),
        (["optimize=gradient", "+optimize.batch_size=4"], "batch_size"),
        (["objective.name=tasty"], "objective.name"),
        (["objective=similarity", "objective.target=xx"], "objective.target"),
        (["optimize=constrained", "optimize.deltas=[1.5]"], "optimize.deltas"),
    ],
)
def test_impossible_configs_name_the_key(root, overrides, key):
    from hydra import compose, initialize_config_dir

    sys.path.insert(0, str(root / "experiments"))
    try:
        import optimize as script
    finally:
        sys.path.pop(0)
    with initialize_config_dir(str(root / "conf"), version_base="1.3"):
        cfg = compose("optimize_run", overrides=["run_dir=x", *overrides])
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        script.objective_of(cfg.objective)
        script.method_options(cfg.optimize)
