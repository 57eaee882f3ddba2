"""The training loop: exact resume after a kill, non-finite loss handling, run-folder files."""

import dataclasses
import json
import os
import runpy
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import SMILES
from flax import nnx

from molvae import chem
from molvae.loggers import JsonlLogger
from molvae.models.vae import ModelConfig
from molvae.store import folder
from molvae.store.checkpoints import CheckpointError
from molvae.training import NonFiniteLossError, TrainConfig, TrainingStopped, train
from molvae.vocab import Vocab


@pytest.fixture(scope="module")
def arrays():
    selfies = [chem.smiles_to_selfies(s) for s in SMILES] * 12
    vocab = Vocab.fit(selfies)
    return vocab, vocab.encode_batch(selfies, 40)


MODEL = dict(embed_dim=8, enc_hidden=16, latent_dim=4, dec_hidden=16)
TRAIN = dict(
    steps=24,
    batch_size=16,
    log_every=4,
    eval_every=12,
    ckpt_every=8,
    eval_size=16,
    warmup_steps=2,
    kl_warmup_steps=8,
    progress=False,
)


class Crash(RuntimeError):
    pass


class CrashingLogger(JsonlLogger):
    """Dies (like a killed process) when asked to log a given step: after its checkpoint."""

    def __init__(self, path, crash_at):
        super().__init__(path)
        self.crash_at = crash_at

    def log(self, record):
        super().log(record)
        if record["step"] == self.crash_at:
            raise Crash(f"killed at step {self.crash_at}")


def _params(model):
    return jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _records(path):
    drop = ("mol_per_s", "time", "cpu_s")
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in path.read_text().splitlines()
    ]


def test_resume_after_kill_gives_identical_parameters_and_metrics(arrays, tmp_path):
    vocab, (tokens, lengths) = arrays
    mcfg, tcfg = ModelConfig(vocab_size=len(vocab), **MODEL), TrainConfig(**TRAIN)
    val = (tokens[:16], lengths[:16])
    a, b = tmp_path / "a", tmp_path / "b"
    full = train(mcfg, tcfg, (tokens, lengths), val, a, JsonlLogger(a / "metrics.jsonl"))
    with pytest.raises(Crash):  # dies at step 12, after the checkpoint of step 8
        train(mcfg, tcfg, (tokens, lengths), val, b, CrashingLogger(b / "metrics.jsonl", 12))
    assert sorted(p.name for p in (b / "checkpoints").iterdir() if p.name.isdigit()) == ["8"]
    resumed = train(mcfg, tcfg, (tokens, lengths), val, b, JsonlLogger(b / "metrics.jsonl"))
    assert resumed.step == full.step == 24
    for x, y in zip(_params(full.model), _params(resumed.model), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _records(a / "metrics.jsonl") == _records(b / "metrics.jsonl")


class SignallingLogger(JsonlLogger):
    """Sends its own process a signal (a scheduler's SIGTERM, a Ctrl-C) when logging a step."""

    def __init__(self, path, at, signum):
        super().__init__(path)
        self.at, self.signum = at, signum

    def log(self, record):
        super().log(record)
        if record["step"] == self.at:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_training_with_a_checkpoint_of_the_step_reached(arrays, tmp_path, signum):
    """SIGTERM/SIGINT mid-run: the loop saves a checkpoint of the next step (13, off the
    ckpt_every=8 grid), raises TrainingStopped naming it, gives the signal handlers back, and the
    same config resumes to the uninterrupted parameters."""
    vocab, (tokens, lengths) = arrays
    mcfg, tcfg = ModelConfig(vocab_size=len(vocab), **MODEL), TrainConfig(**TRAIN)
    val = (tokens[:16], lengths[:16])
    a, b = tmp_path / "a", tmp_path / "b"
    full = train(mcfg, tcfg, (tokens, lengths), val, a, JsonlLogger(a / "metrics.jsonl"))
    before = signal.getsignal(signum)
    with pytest.raises(TrainingStopped, match=r"stopped by SIG(TERM|INT) at step 13"):
        train(
            mcfg, tcfg, (tokens, lengths), val, b, SignallingLogger(b / "metrics.jsonl", 12, signum)
        )
    assert signal.getsignal(signum) is before
    assert sorted(int(p.name) for p in (b / "checkpoints").iterdir() if p.name.isdigit()) == [8, 13]
    resumed = train(mcfg, tcfg, (tokens, lengths), val, b, JsonlLogger(b / "metrics.jsonl"))
    assert resumed.step == full.step == 24
    for x, y in zip(_params(full.model), _params(resumed.model), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_run_packed_with_one_checkpoint_resumes_exactly_in_another_folder(arrays, tmp_path):
    """scripts/carry_run.py: pack keeps every file but the other checkpoints; unpack into a new
    folder, and the run's own config resumes there to the uninterrupted parameters."""
    carry = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "carry_run.py"))
    vocab, (tokens, lengths) = arrays
    mcfg, tcfg = ModelConfig(vocab_size=len(vocab), **MODEL), TrainConfig(**TRAIN)
    val = (tokens[:16], lengths[:16])
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    full = train(mcfg, tcfg, (tokens, lengths), val, a, JsonlLogger(a / "metrics.jsonl"))
    with pytest.raises(Crash):  # dies at step 20, after the checkpoints of steps 8 and 16
        train(mcfg, tcfg, (tokens, lengths), val, b, CrashingLogger(b / "metrics.jsonl", 20))
    (b / "notes.txt").write_text("kept")
    archive = tmp_path / "b.tar.gz"
    with pytest.raises(SystemExit, match=r"no checkpoint at step 12"):
        carry["pack"](b, archive, 12)
    assert carry["pack"](b, archive) == 16
    assert carry["unpack"](archive, c) == 16
    assert sorted(p.name for p in (c / "checkpoints").iterdir()) == ["16"]
    assert (c / "notes.txt").read_text() == "kept"
    with pytest.raises(SystemExit, match=r"already has checkpoint 16"):
        carry["unpack"](archive, c)
    resumed = train(mcfg, tcfg, (tokens, lengths), val, c, JsonlLogger(c / "metrics.jsonl"))
    assert resumed.step == full.step == 24
    for x, y in zip(_params(full.model), _params(resumed.model), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _records(a / "metrics.jsonl") == _records(c / "metrics.jsonl")


def test_a_branch_continues_its_parent_exactly_and_wsd_cools_it_down(arrays, tmp_path):
    """train.init_from forks a run folder off another's checkpoint: parameters, optimizer state,
    step, CPU time and the metrics so far. With the parent's schedule it retraces the parent
    bit for bit; with lr_schedule=wsd the learning rate falls linearly to lr_end_factor * lr."""
    from molvae.training import lr_schedule

    vocab, (tokens, lengths) = arrays
    mcfg = ModelConfig(vocab_size=len(vocab), **MODEL)
    const = TrainConfig(**{**TRAIN, "steps": 16, "lr_schedule": "constant"})
    val = (tokens[:16], lengths[:16])
    a, b, c = tmp_path / "parent", tmp_path / "same", tmp_path / "cool"
    parent = train(mcfg, const, (tokens, lengths), val, a, JsonlLogger(a / "metrics.jsonl"))
    same = dataclasses.replace(const, init_from=str(a), init_step=8)
    twin = train(mcfg, same, (tokens, lengths), val, b, JsonlLogger(b / "metrics.jsonl"))
    for x, y in zip(_params(parent.model), _params(twin.model), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _records(a / "metrics.jsonl") == _records(b / "metrics.jsonl")
    assert json.loads((b / "metrics.jsonl").read_text().splitlines()[-1])["cpu_s"] > 0

    cool = dataclasses.replace(
        const, steps=24, lr_schedule="wsd", lr_decay_steps=12, lr_end_factor=0.0, init_from=str(a)
    )
    res = train(mcfg, cool, (tokens, lengths), val, c, JsonlLogger(c / "metrics.jsonl"))
    recs = [json.loads(line) for line in (c / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in recs}
    assert res.step == 24 and [r["step"] for r in recs[:4]] == [4, 8, 12, 16]  # parent's, to 16
    assert lr[12] == pytest.approx(const.lr) and lr[16] == pytest.approx(const.lr)
    assert lr[20] == pytest.approx(const.lr / 3) and lr[24] == 0
    sched = lr_schedule(cool)
    assert float(sched(1)) == pytest.approx(const.lr / 2) and float(sched(18)) == pytest.approx(
        const.lr / 2
    )
    assert sorted(int(p.name) for p in (a / "checkpoints").iterdir() if p.name.isdigit()) == [8, 16]
    root = lr_schedule(dataclasses.replace(cool, lr_decay_shape="sqrt"))  # 1 - sqrt(t / 12)
    assert float(root(12)) == pytest.approx(const.lr) and float(root(15)) == pytest.approx(
        const.lr / 2
    )
    assert float(root(24)) == 0 and float(root(30)) == 0 and float(root(21)) < float(sched(21))
    with pytest.raises(ValueError, match="lr_decay_steps"):
        TrainConfig(lr_schedule="wsd")
    with pytest.raises(ValueError, match="lr_decay_shape"):
        TrainConfig(lr_decay_shape="cosine")
    with pytest.raises(CheckpointError, match="no checkpoint at step 5"):
        bad = dataclasses.replace(const, init_from=str(a), init_step=5)
        train(mcfg, bad, (tokens, lengths), val, tmp_path / "d", JsonlLogger(tmp_path / "d.jsonl"))


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(arrays, tmp_path):
    vocab, (tokens, lengths) = arrays
    mcfg = ModelConfig(vocab_size=len(vocab), **MODEL)
    val = (tokens[:16], lengths[:16])
    train(
        mcfg,
        TrainConfig(**{**TRAIN, "steps": 8}),
        (tokens, lengths),
        val,
        tmp_path,
        JsonlLogger(tmp_path / "metrics.jsonl"),
    )
    # An infinite KL weight makes the loss inf from the first resumed step.
    bad = TrainConfig(**{**TRAIN, "steps": 16, "kl_schedule": "constant", "kl_max": float("inf")})
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 9"):
        train(mcfg, bad, (tokens, lengths), val, tmp_path, JsonlLogger(tmp_path / "metrics.jsonl"))
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [8]


@pytest.mark.parametrize("decoder", ["gru", "lstm", "cifg", "transformer"])
def test_training_reduces_the_loss_and_writes_metrics(arrays, tmp_path, decoder):
    vocab, (tokens, lengths) = arrays
    mcfg = ModelConfig(vocab_size=len(vocab), **MODEL, decoder=decoder, dec_heads=2)
    cfg = TrainConfig(**{**TRAIN, "steps": 160, "lr": 1e-2, "eval_every": 160, "ckpt_every": 160})
    res = train(
        mcfg,
        cfg,
        (tokens, lengths),
        (tokens[:16], lengths[:16]),
        tmp_path,
        JsonlLogger(tmp_path / "metrics.jsonl"),
    )
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(4, 161, 4))
    uniform = float(np.mean(lengths[:16])) * np.log(len(vocab))  # nats of a guessing decoder
    assert res.final_eval["val_recon"] < 0.5 * uniform
    for key in ("loss", "kl", "beta", "lr", "token_acc", "mol_per_s", "grad_norm", "cpu_s"):
        assert key in recs[0]
    assert [r["mols_seen"] for r in recs] == [16 * r["step"] for r in recs]
    assert all(b["cpu_s"] > a["cpu_s"] for a, b in zip(recs, recs[1:], strict=False))
    assert 0.0 <= res.final_eval["val_recon_acc"] <= 1.0 and res.final_eval["val_token_acc"] > 0.3


def test_cpu_budget_stops_with_a_checkpoint_and_a_resume_extends_it(arrays, tmp_path):
    """train.cpu_budget_s ends a run once its process CPU time (summed over resumes) reaches the
    budget, with a validation record and a checkpoint; a larger budget continues the curve."""
    vocab, (tokens, lengths) = arrays
    mcfg = ModelConfig(vocab_size=len(vocab), **MODEL)
    big = 10**6
    cfg = TrainConfig(**{**TRAIN, "steps": big, "cpu_budget_s": 3.0, "ckpt_every": big})
    val = (tokens[:16], lengths[:16])
    log_path = tmp_path / "metrics.jsonl"
    first = train(mcfg, cfg, (tokens, lengths), val, tmp_path, JsonlLogger(log_path))
    last = json.loads(log_path.read_text().splitlines()[-1])
    assert 0 < first.step == last["step"] < big
    assert last["cpu_s"] >= 3.0 and "val_elbo" in last
    ckpts = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert ckpts == [first.step]
    more = dataclasses.replace(cfg, cpu_budget_s=last["cpu_s"] + 2.0)
    second = train(mcfg, more, (tokens, lengths), val, tmp_path, JsonlLogger(log_path))
    recs = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert second.step > first.step and recs[-1]["cpu_s"] >= last["cpu_s"] + 2.0
    with pytest.raises(ValueError, match="cpu_budget_s"):
        TrainConfig(cpu_budget_s=-1)


def test_plan_to_fit_keeps_the_cool_down_and_grammar_shares():
    from molvae.training.loop import plan_to_fit

    cfg = TrainConfig(steps=30_000, lr_schedule="wsd", lr_decay_steps=6_000,
                      grammar_from_step=24_000)  # fmt: skip
    got = plan_to_fit(cfg, step=320, rate=50.0, seconds_left=200.0)  # fits 10,000 more
    assert (got.steps, got.lr_decay_steps, got.grammar_from_step) == (10_320, 2_064, 8_256)
    assert plan_to_fit(cfg, 320, 500.0, 200.0) == cfg  # never lengthened
    assert plan_to_fit(cfg, 25_000, 1.0, 10.0) == cfg  # cooling down already: left alone
    tiny = plan_to_fit(cfg, 320, 1.0, -5.0)  # out of time: one more step, in the masked tail
    assert tiny.steps == 321 and tiny.grammar_from_step == 321 and tiny.lr_decay_steps == 1
    begun = plan_to_fit(dataclasses.replace(cfg, grammar_from_step=100), 320, 50.0, 200.0)
    assert begun.grammar_from_step == 100  # a masked tail already begun stays


def test_time_budget_plans_a_wsd_run_to_fit_and_a_resume_keeps_the_plan(
    arrays, tmp_path, monkeypatch
):
    """train.time_budget_s: the run stops by its wall-clock budget; with wsd its length is cut,
    after a timed probe, to what fits, the cool-down scaled with it, and the plan is saved in
    the checkpoint so that a resume finishes the same schedule."""
    from molvae.training import loop, lr_schedule

    monkeypatch.setattr(loop, "PROBE_FROM", 5)
    monkeypatch.setattr(loop, "PROBE_STEPS", 40)  # a tiny model: a short probe will do
    clock = iter(np.arange(1e6) * 0.01)  # a machine on which each step takes 10 ms
    monkeypatch.setattr(loop, "_now", lambda: float(next(clock)))
    vocab, (tokens, lengths) = arrays
    mcfg = ModelConfig(vocab_size=len(vocab), **MODEL)
    big = 10**6
    cfg = TrainConfig(**{**TRAIN, "steps": big, "lr_schedule": "wsd", "lr_decay_steps": big // 5,
                         "time_budget_s": 3.0, "ckpt_every": big, "log_every": 20})  # fmt: skip
    val = (tokens[:16], lengths[:16])
    log_path = tmp_path / "metrics.jsonl"
    first = train(mcfg, cfg, (tokens, lengths), val, tmp_path, JsonlLogger(log_path))
    (meta_file,) = (tmp_path / "checkpoints").glob("*/meta/metadata")
    plan = json.loads(meta_file.read_text())["plan"]
    assert 45 < plan["steps"] < big and first.step <= plan["steps"]
    assert plan["lr_decay_steps"] == round(plan["steps"] / 5)
    planned = dataclasses.replace(cfg, **plan)
    recs = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert recs[-1]["step"] == first.step and "val_elbo" in recs[-1]
    for r in recs:  # the rate logged is the planned schedule's, before and after the plan
        assert r["lr"] == pytest.approx(float(lr_schedule(planned)(r["step"])))
    again = train(mcfg, cfg, (tokens, lengths), val, tmp_path, JsonlLogger(log_path))
    assert first.step <= again.step <= plan["steps"]
    with pytest.raises(ValueError, match="time_budget_s"):
        TrainConfig(time_budget_s=-1)


def test_batches_cover_each_epoch_once_and_group_lengths():
    from molvae.training import Batches

    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, 1000).astype(np.int32)
    tokens = np.zeros((1000, 64), np.int32)
    b = Batches(tokens, lengths, batch_size=10, seed=3, pool=20)
    order = b.epoch_order(0)
    assert order.shape == (100, 10) and len(np.unique(order)) == 1000
    assert not np.array_equal(order, b.epoch_order(1))
    np.testing.assert_array_equal(order, Batches(tokens, lengths, 10, 3, pool=20).epoch_order(0))
    spread = np.mean([np.ptp(lengths[row]) for row in order])
    assert spread < 10  # random batches of this data would spread over ~45 tokens
    t, l_ = b(0)
    assert t.shape[1] % 8 == 0 and t.shape[1] >= l_.max() + 1


def test_load_returns_the_trained_parameters(arrays, tmp_path):
    import molvae

    vocab, (tokens, lengths) = arrays
    mcfg = ModelConfig(vocab_size=len(vocab), **MODEL)
    res = train(
        mcfg,
        TrainConfig(**{**TRAIN, "steps": 8}),
        (tokens, lengths),
        (tokens[:16], lengths[:16]),
        tmp_path,
        JsonlLogger(tmp_path / "metrics.jsonl"),
    )
    folder.write_run_info(tmp_path, mcfg, vocab, 40, {})
    loaded = molvae.load(tmp_path).model
    fresh = molvae.api.build_model(mcfg)
    for x, y in zip(_params(res.model), _params(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert any(
        not np.array_equal(np.asarray(x), np.asarray(f))
        for x, f in zip(_params(loaded), _params(fresh), strict=True)
    )


# ----------------------------------------------------------------------------- joint training

JOINT = dict(property_weight=1.0, property_targets=("qed", "weight"), property_models=2)


@pytest.fixture(scope="module")
def props():
    table = chem.properties(SMILES * 12, ("qed", "weight"))
    return table.to_numpy(np.float32)


def test_joint_training_resumes_exactly_and_saves_the_predictor(arrays, props, tmp_path):
    from molvae.design import load_predictor

    vocab, (tokens, lengths) = arrays
    mcfg = ModelConfig(vocab_size=len(vocab), **MODEL)
    tcfg = TrainConfig(**TRAIN, **JOINT)
    val, y = (tokens[:16], lengths[:16]), (props, props[:16])
    a, b = tmp_path / "a", tmp_path / "b"
    full = train(mcfg, tcfg, (tokens, lengths), val, a, JsonlLogger(a / "m.jsonl"), properties=y)
    with pytest.raises(Crash):
        train(
            mcfg, tcfg, (tokens, lengths), val, b, CrashingLogger(b / "m.jsonl", 12), properties=y
        )
    resumed = train(mcfg, tcfg, (tokens, lengths), val, b, JsonlLogger(b / "m.jsonl"), properties=y)
    for x, z in zip(_params(full.model), _params(resumed.model), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(z))
    for x, z in zip(_params(full.predictor), _params(resumed.predictor), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(z))
    recs = _records(a / "m.jsonl")
    assert all("prop_loss" in r for r in recs if "loss" in r)
    assert {"val_qed_r2", "val_weight_mae"} <= set(recs[-1])
    info = json.loads((a / "predictor.json").read_text())
    assert info["metrics"]["joint"] and info["config"]["targets"] == ["qed", "weight"]
    saved = load_predictor(a)
    for x, z in zip(_params(full.predictor), _params(saved), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(z))


def test_joint_training_fits_the_property_through_the_encoder(arrays, props, tmp_path):
    vocab, (tokens, lengths) = arrays
    mcfg = ModelConfig(vocab_size=len(vocab), **MODEL)
    cfg = {**TRAIN, "steps": 200, "lr": 1e-2, "eval_every": 200, "ckpt_every": 200}
    val, y = (tokens[:16], lengths[:16]), (props, props[:16])
    res = train(
        mcfg,
        TrainConfig(**cfg, **JOINT),
        (tokens, lengths),
        val,
        tmp_path / "joint",
        JsonlLogger(tmp_path / "joint.jsonl"),
        properties=y,
    )
    recs = _records(tmp_path / "joint.jsonl")
    losses = [r["prop_loss"] for r in recs if "prop_loss" in r]
    assert losses[-1] < 0.2 * losses[0], losses
    # 8 distinct molecules: the latent means must separate them by weight for this to hold.
    assert res.final_eval["val_weight_r2"] > 0.8, res.final_eval
    # property_weight 0 trains no predictor and leaves the plain ELBO step in place
    plain = train(
        mcfg,
        TrainConfig(**{**cfg, "steps": 8}),
        (tokens, lengths),
        val,
        tmp_path / "plain",
        JsonlLogger(tmp_path / "plain.jsonl"),
    )
    assert plain.predictor is None and not (tmp_path / "plain" / "predictor.json").exists()


def test_joint_training_config_errors_name_the_key():
    with pytest.raises(ValueError, match="train.property_weight"):
        TrainConfig(property_weight=-1.0)
    with pytest.raises(ValueError, match="train.property_targets"):
        TrainConfig(property_weight=1.0, property_targets=())


def test_data_report_lists_unknown_symbols_and_a_rerun_reports_its_final_metrics(tmp_path, caplog):
    """Test molecules with symbols the training set lacks are named in data_report.csv; running
    a finished run again trains nothing and reports the run's final validation metrics."""
    import pandas as pd
    import selfies as sf

    from molvae import data
    from molvae.training import train_and_evaluate

    # Each halogen, sulfur and silicon molecule holds a symbol of its own: those that land in
    # the test split cannot be encoded with the training vocabulary.
    rows = [*SMILES, "CCCl", "CCBr", "CCI", "CCF", "CC[Si](C)(C)C", "CCS", "ClCCCl", "BrCCBr"]
    src = tmp_path / "mols.csv"
    src.write_text("SMILES\n" + "\n".join(rows) + "\n")
    dcfg = data.DataConfig(source="csv", path=str(src), test_fraction=0.5, max_len=40)
    tcfg = TrainConfig(**{**TRAIN, "steps": 2, "eval_every": 2, "ckpt_every": 2, "batch_size": 4})
    run = tmp_path / "run"
    log = JsonlLogger(run / "metrics.jsonl")
    first = train_and_evaluate(dcfg, ModelConfig(**MODEL), tcfg, run, log)

    ds = data.load_dataset(dcfg)
    vocab = set(Vocab.fit(ds.train.selfies).tokens)
    lost = [
        (line, s)
        for line, s, sel in zip(ds.test.lines, ds.test.smiles, ds.test.selfies, strict=True)
        if not set(sf.split_selfies(sel)) <= vocab
    ]
    assert lost, "the seeded split put no unknown-symbol molecule into test"
    report = pd.read_csv(run / "data_report.csv", keep_default_na=False)
    unknown = report[report["reason"] == "unknown_symbol"]
    assert list(zip(unknown["line"], unknown["smiles"], strict=True)) == lost
    assert set(unknown["split"]) == {"test"} and not unknown["kept"].any()
    assert all(rows[line - 2] == s or chem.canonical(rows[line - 2]) == s for line, s in lost)

    caplog.clear()
    with caplog.at_level("INFO", logger="molvae.training.loop"):
        again = train_and_evaluate(dcfg, ModelConfig(**MODEL), tcfg, run, log)
    assert "run already complete at step 2 (train.steps=2); final validation:" in caplog.text
    assert "trained to step" not in caplog.text
    assert again.final_eval["val_elbo"] == pytest.approx(first.final_eval["val_elbo"], abs=1e-4)
    assert set(again.final_eval) == set(first.final_eval)

    # a branch off this run (train.init_from) takes its vocabulary and continues from its step
    branch = tmp_path / "branch"
    bcfg = dataclasses.replace(tcfg, steps=4, init_from=str(run))
    more = train_and_evaluate(dcfg, ModelConfig(**MODEL), bcfg, branch, JsonlLogger(branch / "m"))
    assert more.step == 4
    assert (branch / "vocab.json").read_text() == (run / "vocab.json").read_text()
    with pytest.raises(CheckpointError, match="another model"):
        other = tmp_path / "other"
        train_and_evaluate(dcfg, ModelConfig(**{**MODEL, "latent_dim": 8}), bcfg, other, log)


def test_a_fine_tune_starts_from_a_models_final_parameters_and_skips_what_its_vocabulary_lacks(
    tmp_path, caplog
):
    """train.init_from naming a model without checkpoints (an exported folder, or a shipped
    'pretrained:NAME') fine-tunes it: its parameters and vocabulary, a fresh optimizer and this
    run's own schedule from step 0. Training molecules the parent's vocabulary cannot write are
    skipped and listed in data_report.csv (reason unknown_symbol), not a crash."""
    import shutil

    import pandas as pd
    import selfies as sf

    from molvae import data
    from molvae.store.params import save_npz
    from molvae.training import train_and_evaluate

    own = tmp_path / "own.csv"
    own.write_text("SMILES\n" + "\n".join(SMILES * 2) + "\n")
    tcfg = TrainConfig(**{**TRAIN, "steps": 4, "eval_every": 4, "ckpt_every": 4, "batch_size": 4})
    log = JsonlLogger(tmp_path / "m.jsonl")
    dcfg = data.DataConfig(source="csv", path=str(own), test_fraction=0.25, max_len=40)
    parent = train_and_evaluate(dcfg, ModelConfig(**MODEL), tcfg, tmp_path / "run", log)
    model = tmp_path / "model"  # what scripts/export_pretrained.py ships: no checkpoints
    model.mkdir()
    for name in ("run.json", "vocab.json"):
        shutil.copy(tmp_path / "run" / name, model / name)
    save_npz(parent.model, model / "params.npz")

    other = tmp_path / "other.csv"  # another chemistry: bromine and silicon are new symbols
    extra = ["CCBr", "BrCCBr", "CC[Si](C)(C)C", "C[Si](C)(C)O", "BrC(Br)CO"]
    other.write_text("SMILES\n" + "\n".join([*SMILES, *extra]) + "\n")
    ocfg = data.DataConfig(source="csv", path=str(other), test_fraction=0.25, max_len=40)
    # lr ~0: the fine-tune's parameters are the parent's, which a fresh start's are not
    still = dataclasses.replace(tcfg, lr=1e-12, steps=2, init_from=str(model))
    ft = tmp_path / "ft"
    with caplog.at_level("INFO", logger="molvae.training.loop"):
        res = train_and_evaluate(ocfg, ModelConfig(**MODEL), still, ft, JsonlLogger(ft / "m"))
    assert "fine-tuning the parameters of" in caplog.text
    assert res.step == 2 and (ft / "vocab.json").read_text() == (model / "vocab.json").read_text()
    for x, y in zip(_params(parent.model), _params(res.model), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)
    assert [json.loads(r)["step"] for r in (ft / "m").read_text().splitlines()][0] <= 2

    ds = data.load_dataset(ocfg)
    known = set(Vocab.load(model / "vocab.json").tokens)
    lost = {
        (split, s)
        for split in ("train", "test")
        for s, sel in zip(getattr(ds, split).smiles, getattr(ds, split).selfies, strict=True)
        if not set(sf.split_selfies(sel)) <= known
    }
    assert {split for split, _ in lost} == {"train", "test"}, "the split put no new symbol in one"
    report = pd.read_csv(ft / "data_report.csv", keep_default_na=False)
    unknown = report[report["reason"] == "unknown_symbol"]
    assert set(zip(unknown["split"], unknown["smiles"], strict=True)) == lost
    assert "train molecules have symbols outside the run's vocabulary" in caplog.text

    with pytest.raises(CheckpointError, match="init_step must be 0"):
        bad = dataclasses.replace(still, init_step=3)
        train_and_evaluate(ocfg, ModelConfig(**MODEL), bad, tmp_path / "bad", log)
    with pytest.raises(ValueError, match="unknown pretrained model"):
        bad = dataclasses.replace(still, init_from="pretrained:nope")
        train_and_evaluate(ocfg, ModelConfig(**MODEL), bad, tmp_path / "bad2", log)
