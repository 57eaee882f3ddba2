"""The quality-per-compute protocol on a real (tiny) run folder."""

import json
import runpy
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

import molvae
from molvae import chem, data
from molvae.evaluation import quality
from molvae.inference import latent

HELD_OUT = ["CCO", "c1ccccc1", "CC(=O)Oc1ccccc1C(=O)O", "CCN(CC)CC"]
PROTOCOL = {"n": 200, "ref_n": 0, "recon_n": 4, "iw_k": 2, "seed": 0}


@pytest.fixture(scope="module")
def scored(tiny_run):
    ref = data.bundled_files()["test"].parent
    recs = quality.score_run(tiny_run, PROTOCOL, reference=ref, held_out=HELD_OUT)
    return tiny_run, ref, recs


def test_every_checkpoint_is_scored_once_with_its_cpu_time(scored, monkeypatch):
    run, ref, recs = scored
    assert [r["step"] for r in recs] == quality.checkpoint_steps(run) == [30]
    meta = quality.checkpoint_meta(run, 30)
    assert recs[0]["cpu_s"] == meta["cpu_s"] > 0 and recs[0]["mols_seen"] == 30 * 32
    # The run folder may be named by a string too (as a user types it).
    assert quality.checkpoint_steps(str(run)) == [30]
    assert quality.checkpoint_meta(str(run), 30) == meta
    # A rerun scores nothing again: the scores are read back from quality.jsonl.
    monkeypatch.setattr(quality, "score_model", lambda *a, **k: pytest.fail("rescored"))
    assert quality.score_run(run, PROTOCOL, reference=ref, held_out=HELD_OUT) == recs
    assert len((run / quality.QUALITY_JSONL).read_text().splitlines()) == 1


def test_scores_are_the_protocol_computed_directly(scored):
    """Lenient and strict metrics of the same prior samples, reconstruction and NLL of the
    held-out molecules: recomputed here from the public API, they agree."""
    run, ref, (rec,) = scored
    model = molvae.load(run, step=30)
    lenient = model.sample(200, seed=0)
    strict = model.sample(200, seed=0, strict=True)
    assert rec["valid"] == pytest.approx(np.mean([bool(s) for s in lenient]))
    assert rec["strict_valid"] == pytest.approx(np.mean([bool(s) for s in strict]))
    # strict-valid = valid and not repaired (a repaired string may also decode to nothing)
    assert rec["valid"] - rec["repaired"] <= rec["strict_valid"] <= 1 - rec["repaired"] + 1e-9
    assert rec["FCD/Test"] == pytest.approx(molvae.evaluate(lenient, reference=ref)["FCD/Test"])
    recon = model.reconstruct(HELD_OUT)
    assert rec["recon"] == np.mean(
        [a == chem.canonical(b) for a, b in zip(recon, HELD_OUT, strict=True)]
    )
    ll = model.log_likelihood(HELD_OUT, k=2, details=True)
    assert rec["nll"] == pytest.approx(-ll["log_likelihood"].mean(), rel=1e-5)
    assert rec["rate"] == pytest.approx(ll["rate"].mean(), rel=1e-5)
    assert rec["distortion"] == pytest.approx(ll["distortion"].mean(), rel=1e-5)
    z = latent.prior(200, model.latent_dim, 0)
    ids = model.engine.decode_ids(z, 1, 1.0, greedy=False)
    assert rec["sample_len"] == pytest.approx(((ids != 0).sum(1)).mean())


def test_table_markdown_and_curves(scored, tmp_path):
    _, _, recs = scored
    fixed = dict(recs[0], run="pretrained:x", step=-1, cpu_s=float("nan"))
    df = quality.table([*recs, fixed])
    assert list(df.columns[:4]) == ["run", "step", "cpu_s", "mols_seen"]
    assert set(quality.CURVE_METRICS) <= set(df.columns)
    md = quality.markdown(df[["run", "step", "FCD/Test"]])
    assert md.splitlines()[0] == "| run | step | FCD/Test |" and "—" not in md
    assert f"{recs[0]['FCD/Test']:.3f}" in md
    for plot in (quality.plot_curves, quality.plot_rate_distortion):
        png = plot(df, tmp_path / f"{plot.__name__}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pd.testing.assert_frame_equal(df, quality.table([*recs, fixed]))
    run = scored[0]
    val = quality.validation_table([run, tmp_path / "not_a_run"])
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert val["step"].tolist() == [r["step"] for r in logged if "val_elbo" in r] == [30]
    assert 0 < val["cpu_s"].iloc[0] <= recs[0]["cpu_s"]  # the checkpoint follows validation
    png = quality.plot_validation(val, tmp_path / "val.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    json.dumps(recs)  # the records are plain JSON


def test_a_score_of_an_older_strict_rule_is_rescored_on_the_same_samples(scored, tmp_path):
    """A row without the current strict_rule (scored when strict decoding used the round-trip
    rule) gets its strict metrics recomputed from the same samples; the rest of the row and
    the old values (as roundtrip_*) stay; samples that differ from the scored ones raise."""
    import shutil

    run, ref, (rec,) = scored
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    old = {k: v for k, v in rec.items() if k != "strict_rule"} | {"strict_valid": -1.0}
    (copy / quality.QUALITY_JSONL).write_text(json.dumps(old) + "\n")
    (new,) = quality.score_run(copy, PROTOCOL, reference=ref, held_out=HELD_OUT)
    assert new["strict_rule"] == quality.STRICT_RULE
    assert new["strict_valid"] == pytest.approx(rec["strict_valid"])
    assert new["roundtrip_strict_valid"] == -1.0
    assert {k: new[k] for k in rec if not k.startswith("strict_")} == {
        k: rec[k] for k in rec if not k.startswith("strict_")
    }
    assert quality.read_scores(copy) == [new]  # rewritten in place, once
    (copy / quality.QUALITY_JSONL).write_text(json.dumps(old | {"sample_len": 0.5}) + "\n")
    with pytest.raises(RuntimeError, match="differ from the scored ones"):
        quality.score_run(copy, PROTOCOL, reference=ref, held_out=HELD_OUT)


def test_grammar_constrained_samples_are_scored_as_their_own_row(scored, tmp_path):
    """score_model(grammar=True) scores the protocol's prior samples drawn under the grammar
    mask (models.grammar): the same latents, no string the SELFIES decoder repairs unless cut
    at max_len; score_fixed names such a row NAME@grammar and refuses other suffixes."""
    run, ref, (rec,) = scored
    model = molvae.load(run, step=30)
    got = quality.score_model(model, ref, HELD_OUT, n=200, seed=0, iw_k=2, grammar=True)
    assert got["grammar"] is True and rec["grammar"] is False
    z = latent.prior(200, model.latent_dim, 0)
    ids = model.engine.decode_ids(z, 1, 1.0, greedy=False, grammar=True)
    assert got["sample_len"] == pytest.approx(((ids != 0).sum(1)).mean())
    cut = np.mean([2 not in row for row in ids])  # ran to max_len without an end
    assert got["repaired"] <= cut < 0.1 < rec["repaired"]
    assert got["recon"] == rec["recon"] and got["nll"] == rec["nll"]  # only sampling changes
    with pytest.raises(ValueError, match="@grammar"):
        quality.score_fixed(f"{run}@beam", PROTOCOL, tmp_path)
    with pytest.raises(ValueError, match="@ringN"):
        quality.score_fixed(f"{run}@ring2", PROTOCOL, tmp_path)
    # @ringN: under the grammar with the ring-size limit, recorded in the row
    ringed = quality.score_model(model, ref, HELD_OUT, n=200, seed=0, iw_k=2, max_ring=5)
    assert ringed["max_ring"] == 5 and ringed["grammar"] is True and "max_ring" not in rec
    ids5 = model.engine.decode_ids(z, 1, 1.0, greedy=False, max_ring=5)
    assert ringed["sample_len"] == pytest.approx(((ids5 != 0).sum(1)).mean())


def test_scaling_table_fit_and_figure(scored, tmp_path, monkeypatch, capsys):
    """scaling_table reads each run's last scored checkpoint and its MOSES-protocol
    metrics.json; the power law fitted through exact power-law points recovers its exponent
    and the compute at which it reaches a target, and so do the local exponents between
    consecutive points; scripts/scaling_curve.py keeps an earlier table's rows beside a named
    recipe's runs (in the order the recipes first appear) and fits each recipe; a run without
    metrics.json is named."""
    run, ref, (rec,) = scored
    dirs = []
    for i, (cpu, fcd) in enumerate([(3600.0, 8.0), (7200.0, 8.0 * 2 ** (-1 / 3)), (28800.0, 4.0)]):
        d = tmp_path / f"r{i}"
        d.mkdir()
        early = rec | {"step": 10, "cpu_s": 1.0, "FCD/Test": 99.0}
        last = rec | {"step": 30 * (i + 1), "cpu_s": cpu, "mols_seen": 960 * (i + 1)}
        (d / quality.QUALITY_JSONL).write_text(f"{json.dumps(last)}\n{json.dumps(early)}\n")
        (d / "metrics.json").write_text(
            json.dumps({"FCD/Test": fcd, "Filters": [0.8, 0.81, 0.82][i]})
        )
        dirs.append(d)
    df = quality.scaling_table(dirs[::-1])
    assert df["run"].tolist() == ["r0", "r1", "r2"]  # ordered by CPU time
    assert (
        df["step"].tolist() == [30, 60, 90] and df["q_FCD/Test"].tolist() == [rec["FCD/Test"]] * 3
    )
    assert df["Filters"].tolist() == [0.8, 0.81, 0.82] and df["SNN/Test"].isna().all()
    assert df["q_nll"].tolist() == [rec["nll"]] * 3
    c, a = quality.power_law(df["cpu_s"] / 3600, df["FCD/Test"])
    assert (c, a) == (pytest.approx(8.0), pytest.approx(-1 / 3))
    assert quality.local_exponents(df["cpu_s"], df["FCD/Test"]) == pytest.approx([-1 / 3] * 2)
    # a curve that turns up: the last local exponent is positive, which one fit would hide
    assert quality.local_exponents([1, 2, 4], [4.0, 2.0, 4.0]) == pytest.approx([-1.0, 1.0])
    assert quality.compute_for(2.0, 8.0, -0.5) == pytest.approx(16.0)
    assert quality.compute_for(2.0, 8.0, 0.1) == float("inf")  # never reached on a rising curve
    ref_point = {"label": "VAE", "mols_seen": 1e5, "FCD/Test": 0.1, "Filters": 0.99}
    png = quality.plot_scaling(df, tmp_path / "scaling.png", reference=ref_point)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the script: an earlier table's rows beside a named recipe's runs, a fit per recipe; the
    # earlier recipe stays first (and keeps its colour) though the new name sorts before it
    df.assign(recipe="narrow").to_csv(tmp_path / "earlier.csv", index=False)
    out = tmp_path / "fig"
    argv = ["scaling_curve.py", "--rows", str(tmp_path / "earlier.csv"), "--out", str(out)]
    argv += ["--recipe", "broad", str(dirs[0]), str(dirs[2])]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "scripts" / "scaling_curve.py"), run_name="__main__")
    table = pd.read_csv(out / "scaling.csv", keep_default_na=False)
    assert table["recipe"].tolist() == ["narrow"] * 3 + ["broad"] * 2
    assert table["run"].tolist() == ["r0", "r1", "r2", "r0", "r2"]
    printed = capsys.readouterr().out
    assert "narrow (3 runs):" in printed and "broad (2 runs):" in printed
    assert printed.count("FCD/Test: local exponents between consecutive runs -0.33") == 2
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (dirs[1] / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="r1: no metrics.json"):
        quality.scaling_table(dirs)


def test_averaged_checkpoints_are_the_mean_of_their_parameters(tiny_run, tmp_path, monkeypatch):
    """scripts/average_checkpoints.py: the model folder it writes loads with molvae.load and holds
    the arithmetic mean of the chosen checkpoints' parameters."""
    import shutil

    import jax
    from flax import nnx

    from molvae.store import checkpoints

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    model = molvae.load(run, step=30)
    state = nnx.state(model.model)
    first = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model.model, nnx.Param)))
    tripled = jax.tree.map(lambda x: x * 3 if x.dtype.kind == "f" else x, state)
    with checkpoints.checkpoint_manager(run) as mngr:  # a second checkpoint: the params x 3
        checkpoints.save_checkpoint(mngr, 60, (tripled,), {"step": 60, "cpu_s": 1.0})
    script = runpy.run_path(str(ROOT / "scripts" / "average_checkpoints.py"))
    assert script["parse_steps"]("30:60:30,90") == [30, 60, 90]
    with pytest.raises(SystemExit, match=r"no checkpoint at steps \[90\]"):
        script["average"](run, [30, 60, 90])
    out = tmp_path / "avg"
    monkeypatch.setattr(
        sys, "argv", ["average_checkpoints.py", str(run), "30,60", "--out", str(out)]
    )
    script["main"]()
    avg = molvae.load(out)
    got = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(avg.model, nnx.Param)))
    want = jax.tree.map(lambda x: 2 * x, first)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7), got, want)
    info = json.loads((out / "run.json").read_text())
    assert info["averaged"]["steps"] == [30, 60] and info["averaged"]["cpu_s"] == 1.0
    assert len(avg.sample(8, seed=0)) == 8


def test_compare_arms_lays_tables_from_two_folders_side_by_side(tmp_path, monkeypatch, capsys):
    """scripts/compare_arms.py: the named runs' rows of two quality.py folders, up to a step,
    in one table and two figures; a run in neither folder is an error naming it."""
    metrics = {k: 1.0 for k in quality.CURVE_METRICS}
    for name, run in (("a", "gru"), ("b", "lstm")):
        d = tmp_path / name
        d.mkdir()
        rows = [
            {"run": run, "step": s, "cpu_s": 10.0 * s, "mols_seen": 128 * s} | metrics
            for s in (1000, 2000, 3000)
        ]
        pd.DataFrame(rows + [{**rows[0], "run": "other"}]).to_csv(d / "quality.csv", index=False)
        val = [{"run": run, "step": s, "cpu_s": 10.0 * s, "mols_seen": 128 * s,
                "val_elbo": 30.0 - s / 1000} for s in (1000, 2000, 3000)]  # fmt: skip
        pd.DataFrame(val).to_csv(d / "quality_validation.csv", index=False)
    out = tmp_path / "cmp"
    script = str(ROOT / "scripts" / "compare_arms.py")
    argv = ["compare_arms.py", str(tmp_path / "a"), str(tmp_path / "b"), "--runs", "gru", "lstm"]
    monkeypatch.setattr(sys, "argv", [*argv, "--max-step", "2000", "--out", str(out)])
    runpy.run_path(script, run_name="__main__")
    table = pd.read_csv(out / "quality.csv")
    assert list(zip(table["run"], table["step"], strict=True)) == [
        ("gru", 1000), ("gru", 2000), ("lstm", 1000), ("lstm", 2000)
    ]  # fmt: skip
    for png in ("quality_curves.png", "validation.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| lstm | 2000 |" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", [*argv, "nope", "--out", str(out)])
    with pytest.raises(SystemExit, match="nope"):
        runpy.run_path(script, run_name="__main__")
