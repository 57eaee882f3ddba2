"""The latent property predictor: fit quality, missing targets, save/load, the joint-loss term."""

import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import molvae
from molvae.design.predictor import FitConfig, fit_latent, fit_predictor, fit_run_predictor, predict
from molvae.models.predictor import Predictor, PredictorConfig, property_loss
from molvae.store import names
from molvae.store.params import load_predictor, save_predictor
from molvae.training.joint import regression_metrics

FAST = FitConfig(steps=300, hidden=(32, 32), n_models=2)  # one compiled shape for most tests


def synthetic(n=400, d=6, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d)).astype(np.float32)
    y = np.stack([2.0 * z[:, 0] - z[:, 1] + 5.0, np.tanh(z[:, 2])], 1)
    return z, y


@pytest.fixture(scope="module")
def fitted():
    z, y = synthetic()
    return z, y, *fit_latent(z, y, ["lin", "tanh"], cfg=FAST)


def test_easy_targets_are_learned_with_held_out_metrics(fitted):
    z, y, pred, m = fitted
    assert m["n_val"] == 40 and m["n_train"] == 360
    assert m["val"]["lin"]["r2"] > 0.95 and m["val"]["tanh"]["r2"] > 0.9
    assert m["val"]["lin"]["mae"] < 0.5
    mean, std = predict(pred, z[:5])
    assert mean.shape == (5, 2) and std.shape == (5, 2) and np.all(std >= 0)
    np.testing.assert_allclose(mean[:, 0], y[:5, 0], atol=0.6)  # real units, not standardised


def test_missing_targets_are_masked_not_learned_as_zero():
    z, y = synthetic()
    y[::2, 1] = np.nan  # half the second target is unknown
    pred, m = fit_latent(z, y, ["lin", "tanh"], cfg=FAST)
    assert m["val"]["tanh"]["n"] < m["n_val"] and m["val"]["tanh"]["r2"] > 0.8
    p = Predictor(PredictorConfig(2, ("a",), (4,), 1), rngs=nnx.Rngs(0))
    zz = jnp.zeros((3, 2))
    loss_masked = property_loss(
        p, zz, jnp.array([[jnp.nan], [1.0], [1.0]]), jnp.array([[0.0], [1], [1]])
    )
    assert jnp.isfinite(loss_masked)
    np.testing.assert_allclose(
        loss_masked, property_loss(p, zz[1:], jnp.ones((2, 1)), jnp.ones((2, 1))), rtol=1e-6
    )


def test_regression_metrics_closed_form():
    y = np.array([[1.0], [2.0], [3.0], [np.nan]])
    m = regression_metrics(y, np.array([[1.0], [2.0], [4.0], [0.0]]), ["t"])["t"]
    assert m["n"] == 3 and m["mae"] == pytest.approx(1 / 3) and m["r2"] == pytest.approx(0.5)


def test_save_load_round_trip_and_bad_files(fitted, tmp_path):
    z, _, pred, m = fitted
    save_predictor(pred, tmp_path, m)
    back = load_predictor(tmp_path)
    assert back.cfg == pred.cfg
    np.testing.assert_array_equal(predict(back, z)[0], predict(pred, z)[0])
    info = json.loads((tmp_path / "predictor.json").read_text())
    assert info["config"]["targets"] == ["lin", "tanh"] and "val" in info["metrics"]
    assert not any(p.suffix == ".pkl" for p in tmp_path.iterdir())

    info["config"]["hidden"] = [9]
    (tmp_path / "predictor.json").write_text(json.dumps(info))
    with pytest.raises(names.RunFolderError, match="predictor.npz"):
        load_predictor(tmp_path)
    (tmp_path / "predictor.json").write_text("{not json")
    with pytest.raises(names.RunFolderError, match="predictor.json"):
        load_predictor(tmp_path)


def test_fit_from_molecules_and_from_the_run_folder(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # the predictor is written into the run folder
    model = molvae.load(run)
    smiles = ["CCO", "c1ccccc1", "not a molecule", "CC(=O)Oc1ccccc1C(=O)O", "CCN"] * 8
    pred, m = fit_predictor(model, smiles, ["weight"], FAST)
    assert m["n_dropped"] == 8 and m["n_train"] + m["n_val"] == 32

    pred, m = fit_run_predictor(model, ["weight", "qed"], limit=200, cfg=FAST)
    assert m["n_train"] + m["n_val"] <= 200 and (run / "predictor.npz").exists()
    # The tiny model's encoder has learned next to nothing: only the mechanics are checked here.
    assert np.isfinite(m["val"]["weight"]["r2"]) and m["val"]["qed"]["mae"] < 0.5
    assert load_predictor(run).cfg.targets == ("weight", "qed")
