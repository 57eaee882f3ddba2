"""The Hydra entry points end to end on the smoke config (real subprocesses, real run folders)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import experiments

import molvae


def run(root, script, *overrides, check=True):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, str(root / "experiments" / script), *overrides],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def smoke_run(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke") / "run"
    run(root, "pipeline.py", "experiment=smoke", f"hydra.run.dir={out}", "train.progress=false")
    return out


def test_pipeline_writes_the_run_folder(smoke_run):
    for name in (
        "run.json",
        "vocab.json",
        "metrics.jsonl",
        "samples.csv",
        "metrics.json",
        "data_report.csv",
        "data_stats.json",
        ".hydra/config.yaml",
        "checkpoints",
    ):
        assert (smoke_run / name).exists(), name
    scores = json.loads((smoke_run / "metrics.json").read_text())
    for key in ("valid", "unique@1000", "Novelty", "IntDiv"):
        assert 0.0 <= scores[key] <= 1.0, key
    samples = pd.read_csv(smoke_run / "samples.csv", keep_default_na=False)
    assert len(samples) == 64 and list(samples.columns[:2]) == ["smiles", "valid"]
    assert scores["valid"] == pytest.approx(samples["valid"].mean())


def test_sample_and_evaluate_scripts_reuse_the_run(root, smoke_run):
    (smoke_run / "metrics.json").write_text("{}")  # the metrics of earlier samples
    run(root, "sample.py", f"run_dir={smoke_run}", "n=100", "seed=4")
    assert not (smoke_run / "metrics.json").exists()  # stale: removed with the old samples
    samples = pd.read_csv(smoke_run / "samples.csv", keep_default_na=False)
    assert len(samples) == 100
    assert list(samples["smiles"]) == molvae.load(smoke_run).sample(100, seed=4)
    run(root, "evaluate.py", f"run_dir={smoke_run}", "metrics=basic")
    assert json.loads((smoke_run / "metrics.json").read_text())["n_samples"] == 100


def test_training_on_a_users_csv(root, tmp_path):
    src = tmp_path / "mine.csv"
    smiles = pd.read_csv(root / "molvae/assets/moses_sample/test.csv.gz")["SMILES"][:200]
    pd.DataFrame({"id": range(200), "smi": smiles}).to_csv(src, index=False)
    out = tmp_path / "run"
    run(
        root,
        "train.py",
        "experiment=smoke",
        "data=csv",
        f"data.path={src}",
        "data.smiles_column=smi",
        "data.limit=null",
        f"hydra.run.dir={out}",
        "train.progress=false",
    )
    stats = json.loads((out / "data_stats.json").read_text())
    assert stats["train"]["read"] + stats["test"]["read"] == 200
    assert molvae.load(out).sample(4, seed=0)


@pytest.mark.parametrize(
    "override,key",
    [
        ("model.latent_dim=-3", "latent_dim"),
        ("train.steps=0", "train.steps"),
        ("+train.nonsense=1", "nonsense"),
    ],
)
def test_impossible_config_fails_before_work_naming_the_key(root, tmp_path, override, key):
    proc = run(
        root, "train.py", "experiment=smoke", override, f"hydra.run.dir={tmp_path}", check=False
    )
    assert proc.returncode != 0 and key in proc.stderr + proc.stdout
    assert not (tmp_path / "checkpoints").exists()
    assert key in (tmp_path / "train.log").read_text()  # the folder says why it stopped


def test_wandb_logger_writes_an_offline_run_into_the_run_folder(root, tmp_path):
    out = tmp_path / "run"
    run(
        root,
        "pipeline.py",
        "experiment=smoke",
        "logger=wandb",
        f"hydra.run.dir={out}",
        "train.progress=false",
    )
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir())
    files = [p for p in runs[0].rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files)  # the offline event log, syncable later
    blob = next(p for p in files if p.suffix == ".wandb").read_bytes()  # keys are stored verbatim
    for key in (
        b"loss",
        b"val_recon_acc",
        b"mol_per_s",
        b"beta",
        b"lr",
        b"kl_max",
        b"eval/valid",
        b"eval/Novelty",
        b"figures/samples_grid",
        b"samples",
    ):
        assert key in blob, key
    media = {p.parent.name for p in files if p.suffix == ".png"}
    assert "images" in media or any("media" in str(p) for p in files)


# experiment -> the shipped model it makes
SHIPPED_RECIPES = {
    "moses": "moses_cifg_ring7_bf16_40k",
    "moses_30k": "moses_cifg_ring7_bf16",
    "moses_gru512": "moses_512",
    "moses_512_48k": "moses_512_48k",
    "moses_512_72k": "moses_512_72k",
    "moses_cifg512_72k": "moses_cifg_72k",
    "moses_bf16_72k": "moses_cifg_ring7_bf16_72k",
    "moses_bf16_96k": "moses_cifg_ring7_bf16_96k",
    "moses_bf16_120k": "moses_cifg_ring7_bf16_120k",
    "moses_bf16_160k": "moses_cifg_ring7_bf16_160k",
    "moses_bf16_240k": "moses_cifg_ring7_bf16_240k",
    "moses_48k": "moses_48k",
    "moses_72k": "moses_72k",
    "moses_kl05": "moses",
    "moses_fb": "moses_fb",
    "moses_grammar": "moses_grammar",
}


@pytest.mark.parametrize("name", experiments(sweeps=False))
def test_single_run_experiments_compose_into_valid_configs(root, name):
    from hydra import compose, initialize_config_dir

    sys.path.insert(0, str(root / "experiments"))
    from _common import configs

    with initialize_config_dir(str(root / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}"])
    text = (root / "conf" / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_") and "python experiments/" in text
    data, model, train = configs(cfg)  # validates every key and value
    assert train.steps > 0 and model.latent_dim > 0
    if name.startswith("moses"):
        assert data.source == "moses" and cfg.sample.n == 30000 and cfg.evaluate.metrics == "all"
    if name in SHIPPED_RECIPES:  # a shipped model's recipe, as its run.json says
        from molvae.store import locate

        pretrained = SHIPPED_RECIPES[name]
        shipped = json.loads((locate.PRETRAINED[pretrained] / "run.json").read_text())["config"]
        # how the run was launched and kept, not what it learned
        branch_only = ("init_from", "init_step", "cpu_budget_s", "progress", "keep_checkpoints")
        branch_only += ("ckpt_every",)
        for key, value in shipped["train"].items():
            if key not in branch_only:
                assert getattr(train, key) == (tuple(value) if isinstance(value, list) else value)
        assert data.max_len == shipped["data"]["max_len"]
        assert model.grammar == shipped["model"].get("grammar", False)
        assert model.dec_hidden == shipped["model"]["dec_hidden"]
        assert model.decoder == shipped["model"].get("decoder", "gru")
        assert model.max_ring == shipped["model"].get("max_ring", 0)
        assert model.dtype == shipped["model"].get("dtype", "float32")
        assert data.max_ring == shipped["data"].get("max_ring", 0)
        # the branch masked its cool-down only: the one run switches the mask on where it starts
        assert train.grammar_from_step == (
            train.steps - train.lr_decay_steps if model.grammar else 0
        )
    # a 1 - sqrt cool-down, masked: 6,000 steps, or the last 20% of experiment=moses's 40,000
    if name in ("moses", "moses_30k", "moses_gru512", "moses_48k", "moses_72k", "moses_gpu"):
        assert model.grammar and train.lr_schedule == "wsd" and train.lr_decay_shape == "sqrt"
        assert train.lr_decay_steps == (8000 if name == "moses" else 6000)
        assert train.grammar_from_step == train.steps - train.lr_decay_steps
    # strings written small-ring-first, trained under the ring-size limit
    if name in ("moses", "moses_30k", "moses_ring7"):
        assert data.max_ring == model.max_ring == 7 and model.grammar
    if name == "demo":  # the first report a user sees shows FCD, SNN, Frag, Scaf and Filters
        assert data.source == "moses_sample" and cfg.evaluate.reference == "moses_sample"
        assert cfg.evaluate.metrics == "all"


QUALITY_ARMS = sorted(
    p.stem
    for p in (Path(__file__).parents[1] / "conf" / "experiment" / "quality").glob("*.yaml")
    if p.stem != "protocol"
)


@pytest.mark.parametrize("arm", QUALITY_ARMS)
def test_quality_arms_share_the_protocol_and_change_only_their_arm(root, arm):
    """Every arm of the quality study trains on full MOSES at a constant learning rate until the
    same CPU budget, keeping every checkpoint; only the arm's own settings differ."""
    from hydra import compose, initialize_config_dir

    sys.path.insert(0, str(root / "experiments"))
    from _common import configs

    with initialize_config_dir(str(root / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment=quality/{arm}"])
        base = compose("config", overrides=["experiment=quality/gru256"])
    text = (root / "conf" / "experiment" / "quality" / f"{arm}.yaml").read_text()
    assert text.startswith("# @package _global_") and f"experiment=quality/{arm}" in text
    data, model, train = configs(cfg)
    if train.init_from:  # a cool-down branch off an arm's checkpoint: wsd to a fixed step
        parent = Path(train.init_from).name
        assert parent in QUALITY_ARMS and train.lr_schedule == "wsd" and train.init_step > 0
        assert train.init_step < train.steps < 10**6 and train.lr_decay_steps > 0
        with initialize_config_dir(str(root / "conf"), version_base="1.3"):
            base = compose("config", overrides=[f"experiment=quality/{parent}"])
        branch = {"init_from", "init_step", "steps", "cpu_budget_s", "lr_schedule",
                  "lr_decay_steps", "lr_end_factor"}  # fmt: skip
        differs = {
            f"{group}.{k}"
            for group in ("model", "train", "data")
            for k in cfg[group]
            if cfg[group][k] != base[group][k] and not (group == "train" and k in branch)
        }
        assert differs <= ARM_KEYS, differs - ARM_KEYS
        return
    assert data.source == "moses" and train.lr_schedule == "constant"
    assert train.cpu_budget_s == base.train.cpu_budget_s > 0 and train.steps >= 10**6
    assert train.keep_checkpoints >= 100
    differs = {
        f"{group}.{k}"
        for group in ("model", "train", "data")
        for k in cfg[group]
        if cfg[group][k] != base[group][k]
    }
    assert differs <= ARM_KEYS, differs - ARM_KEYS


ARM_KEYS = {  # what an arm may change: the factor it studies, and its checkpoint cadence
    "model.enc_hidden", "model.dec_hidden", "model.dec_layers", "model.decoder", "model.dtype",
    "model.dec_heads", "model.dec_ff_mult", "model.latent_dim", "model.embed_dim", "model.grammar",
    "train.kl_max", "train.free_bits", "train.lr", "train.batch_size", "train.warmup_steps",
    "train.kl_warmup_steps", "train.ckpt_every", "train.eval_every", "data.bpe_merges",
}  # fmt: skip


# ----------------------------------------------------------------------------- run_dir


def run_in(cwd, root, script, *overrides):
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, str(root / "experiments" / script), *overrides]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("script", ["sample.py", "evaluate.py", "optimize.py"])
def test_a_mistyped_run_dir_is_an_error_that_creates_nothing(root, tmp_path, script):
    proc = run_in(tmp_path, root, script, "run_dir=no/such/run")
    assert proc.returncode != 0
    assert "run_dir=no/such/run: run folder no/such/run does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr  # a message, not Hydra's stack
    assert list(tmp_path.iterdir()) == []  # no no/such/run/sample.log, no optimize/ folder
    proc = run_in(tmp_path, root, script, "run_dir=pretrained:nothing")
    assert proc.returncode != 0 and "unknown pretrained model 'nothing'" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_shipped_model_in_the_scripts_writes_to_the_working_directory(root, tmp_path):
    from molvae.store import locate

    shipped = sorted(p.name for p in locate.PRETRAINED["moses"].iterdir())
    run_in(tmp_path, root, "sample.py", "run_dir=pretrained:moses", "n=20", "seed=1")
    out = tmp_path / "outputs" / "pretrained-moses"
    samples = pd.read_csv(out / "samples.csv", keep_default_na=False)
    assert len(samples) == 20 and samples["valid"].all()  # SELFIES: every decode is a molecule
    assert (out / "sample.log").exists() and (out / "run.json").exists()
    assert molvae.load(out).sample(3, seed=5) == molvae.load("pretrained:moses").sample(3, seed=5)

    proc = run_in(
        tmp_path, root, "optimize.py", "run_dir=pretrained:moses", "optimize=gradient",
        "optimize.budget=10", "progress=false",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "optimize" / "qed-gradient-0" / "summary.json").read_text())
    assert summary["oracle_calls"] == 10 and 0 < summary["top1"] <= 1
    assert sorted(p.name for p in locate.PRETRAINED["moses"].iterdir()) == shipped  # untouched
    assert not (tmp_path / "pretrained:moses").exists()
    for log in (out / "sample.log", out / "optimize" / "qed-gradient-0" / "optimize.log"):
        assert "Unable to initialize backend" not in log.read_text()  # JAX probing for a TPU


def test_a_mistyped_data_path_stops_training_before_its_folder_is_made(root, tmp_path):
    proc = run_in(tmp_path, root, "train.py", "experiment=smoke", "data=csv", "data.path=no.csv")
    assert proc.returncode != 0 and "error: data.path=no.csv: no such file" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no outputs/DATE/TIME with an empty train.log


def test_a_failed_training_logs_its_traceback_into_the_run_folder(root, tmp_path):
    src = tmp_path / "bad.csv"
    src.write_text("SMILES\nnot_a_molecule\nC1CC\n")
    out = tmp_path / "run"
    proc = run(
        root, "train.py", "experiment=smoke", "data=csv", f"data.path={src}",
        f"hydra.run.dir={out}", check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    text = (out / "train.log").read_text()
    assert "train failed" in text and "Traceback" in text
    assert "no usable molecules in the train split" in text
