"""Sweeps: Hydra launcher and sweeper plugins on the smoke config, experiment configs, collect.py.

Multiruns run as real subprocesses (`python experiments/train.py -m ...`) into tmp_path, with a
4-step smoke training per job; compiled steps come from the shared JAX cache after the first run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import experiments

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import collect  # noqa: E402

# The smoke config cut to 2 steps with one evaluation: seconds per job.
FAST = [
    "experiment=smoke",
    "train.progress=false",
    "train.steps=2",
    "train.log_every=1",
    "train.eval_every=2",
    "train.ckpt_every=2",
]
# The sweep experiments; the single runs and quality/ (the arms of the quality study) are composed
# in test_pipeline.
EXPERIMENTS = experiments(sweeps=True)


def multirun(sweep_dir: Path, *overrides: str, script: str = "train.py", check: bool = True):
    env = {
        **os.environ,
        "HYDRA_FULL_ERROR": "1",
        "JAX_COMPILATION_CACHE_DIR": os.environ.get(
            "JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax")
        ),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }
    cmd = [sys.executable, str(ROOT / "experiments" / script), "-m", *overrides]
    proc = subprocess.run(
        [*cmd, f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"multirun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}")
    return proc


def final_record(job: Path) -> dict:
    recs = [json.loads(x) for x in (job / "metrics.jsonl").read_text().splitlines()]
    return recs[-1]


def assert_two_finished_runs(sweep: Path) -> None:
    assert (sweep / "multirun.yaml").exists()
    for job in ("0", "1"):
        for name in ("run.json", "vocab.json", "metrics.jsonl", ".hydra/overrides.yaml"):
            assert (sweep / job / name).exists(), f"{job}/{name}"
        rec = final_record(sweep / job)
        assert rec["step"] == 2 and rec["val_elbo"] > 0 and 0 <= rec["val_recon_acc"] <= 1


# ----------------------------------------------------------------------------- launchers


def test_joblib_multirun_writes_two_run_folders_and_collects(tmp_path):
    sweep = tmp_path / "sweep"
    multirun(sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *FAST, "seed=0,1")
    assert_two_finished_runs(sweep)
    assert final_record(sweep / "0")["loss"] != final_record(sweep / "1")["loss"]  # seeds differ

    assert collect.main([str(sweep), "--strict"]) == 0
    df = pd.read_csv(sweep / "summary.csv")
    assert list(df["job"]) == [0, 1] and list(df["status"]) == ["ok", "ok"]
    assert list(df["seed"]) == [0, 1]
    np_kl = df["val_kl"].to_numpy()
    assert df["val_kl_bits"].to_numpy() == pytest.approx(np_kl / 0.6931471805599453)
    assert df["val_elbo"][0] == pytest.approx(final_record(sweep / "0")["val_elbo"])
    md = (sweep / "summary.md").read_text()
    assert "2 jobs: 2 ok, 0 failed" in md and "| seed |" in md
    for png in ("rate_distortion.png", "curves.png"):
        assert (sweep / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # two jobs preprocess 4,300 molecules each in process pools: ~1 min
def test_joblib_multirun_on_a_cold_data_cache(tmp_path, monkeypatch):
    """Each joblib (loky) job starts its own RDKit process pool to preprocess the data: inside a
    loky worker the pool's children used to fail ("cannot find context for 'loky'")."""
    monkeypatch.setenv("MOLVAE_CACHE", str(tmp_path / "cache"))  # nothing preprocessed yet
    sweep = tmp_path / "sweep"
    # 300 train + 2,000 test + 2,000 scaffold molecules: above chem.SERIAL_BELOW, so the pool runs
    multirun(sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *FAST, "data.n_jobs=2",
             "model.latent_dim=4,8")  # fmt: skip
    assert_two_finished_runs(sweep)
    for job in ("0", "1"):
        report = pd.read_csv(sweep / job / "data_report.csv", keep_default_na=False)
        assert "reason" in report.columns
    assert list((tmp_path / "cache").rglob("*.npz")), "no preprocessed data in the cache"


def test_submitit_local_multirun_writes_two_run_folders(tmp_path):
    sweep = tmp_path / "sweep"
    multirun(sweep, "hydra/launcher=submitit_local", *FAST, "seed=0,1")
    assert_two_finished_runs(sweep)
    assert (sweep / ".submitit").is_dir()
    df, _ = collect.collect(sweep)  # .submitit/ holds logs and pickles, not jobs
    assert list(df["job"]) == ["0", "1"]


def test_a_failed_job_does_not_stop_the_other_and_is_reported(tmp_path):
    sweep = tmp_path / "sweep"
    # The rate-distortion experiment on the tiny model, its grid cut to 2 jobs on the command
    # line; train.kl_max=-1 makes job 1 raise at config validation, before any training.
    proc = multirun(
        sweep,
        "hydra/launcher=joblib",
        "experiment=[smoke,rate_distortion]",
        *FAST[1:],
        "model.latent_dim=8",
        "train.kl_max=0.1,-1",
        check=False,
    )
    assert proc.returncode != 0 and "train.kl_max and train.free_bits must be >= 0" in proc.stderr
    assert final_record(sweep / "0")["step"] == 2  # the other job finished

    assert collect.main([str(sweep)]) == 0
    assert collect.main([str(sweep), "--strict"]) == 1
    df = pd.read_csv(sweep / "summary.csv", keep_default_na=False)
    ok, bad = df.iloc[0], df.iloc[1]
    assert (ok["status"], bad["status"]) == ("ok", "failed")
    assert "train.kl_max=-1" in bad["overrides"] and "no metrics.jsonl" in bad["note"]
    md = (sweep / "summary.md").read_text()
    assert "1 ok, 1 failed" in md and "| train.kl_max |" in md


# ----------------------------------------------------------------------------- optuna


@pytest.mark.filterwarnings("ignore:Deprecated API features detected")  # optuna 2 on SQLAlchemy 1.4
def test_optuna_search_runs_two_trials_into_sqlite(tmp_path):
    import optuna

    sweep, db = tmp_path / "sweep", tmp_path / "search.db"
    # experiment=[smoke,search]: the search config on the tiny model; one searched dimension,
    # the others fixed on the command line (fixed values leave the search space).
    multirun(
        sweep,
        "experiment=[smoke,search]",
        *FAST[1:],
        "hydra.sweeper.n_trials=2",
        f"hydra.sweeper.storage=sqlite:///{db}",
        "model.latent_dim=choice(4,8)",
        "model.enc_hidden=32",
        "model.dec_hidden=32",
        "train.kl_schedule=linear",
        "train.kl_max=0.1",
        "train.lr=0.002",
    )
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    study = optuna.load_study(study_name="molvae_search", storage=f"sqlite:///{db}")
    trials = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(trials) == 2 and set(study.best_params) == {"model.latent_dim"}
    # The objective is the final validation ELBO of the trial's run folder (minimised).
    elbos = [final_record(sweep / str(t.number))["val_elbo"] for t in trials]
    assert [t.value for t in trials] == pytest.approx(elbos)
    assert result["best_value"] == pytest.approx(min(elbos))

    df, _ = collect.collect(sweep)
    assert list(df["status"]) == ["ok", "ok"]
    assert "Optuna best value" in collect.to_markdown(df, [], sweep)


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_configs_compose_and_sweep_real_keys(name):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    text = (ROOT / "conf" / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_") and "python experiments/" in text
    params = cfg.hydra.sweeper.params
    assert params, "an experiment sweep without hydra.sweeper.params"
    for key in params:
        assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", key
    assert str(cfg.hydra.sweep.dir).startswith(f"multirun/{name}/")
    if name == "search":
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
        assert cfg.hydra.sweeper.direction == "minimize"


def test_slurm_launcher_config_makes_a_valid_sbatch_array(tmp_path, monkeypatch):
    """The slurm config goes through submitit's own checks and sbatch script writer."""
    fake_bin = tmp_path / "bin"  # submitit refuses to build a SLURM executor without srun
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    import submitit
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.sweep.dir=/sw"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert params.pop("_target_").endswith("SlurmLauncher")
    params.update(name="train", submitit_folder=str(tmp_path / "%j"))
    # What BaseSubmititLauncher.launch() does with them (hydra_submitit_launcher 1.2.0).
    executor = submitit.AutoExecutor(
        folder=params.pop("submitit_folder"),
        cluster="slurm",
        slurm_max_num_timeout=params.pop("max_num_timeout"),
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    slurm = executor._executor
    slurm.parameters["map_count"] = 20  # a 20-job sweep is one array of 20
    script = slurm._make_submission_file_text("python -m submitit.core._submit X", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --time=240",
        "#SBATCH --array=0-19%16",
        "#SBATCH --cpus-per-task=8",
    ):
        assert line in script, line


# ----------------------------------------------------------------------------- collect.py


def _job(root: Path, name: str, overrides: list[str], records: list[dict] | None, steps=100):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"train": {"steps": steps}}))
    if records is not None:
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return job


def _val(step: int, kl: float, acc: float) -> dict:
    return {
        "step": step,
        "loss": 50.0,
        "val_elbo": 40.0 + kl,
        "val_recon": 40.0,
        "val_kl": kl,
        "val_recon_acc": acc,
        "val_token_acc": 0.9,
    }


def test_collect_reads_every_kind_of_job_folder(tmp_path):
    _job(tmp_path, "0", ["model.latent_dim=16", "train.kl_max=0.1"], [_val(100, 6.0, 0.8)])
    _job(tmp_path, "1", ["model.latent_dim=16", "train.kl_max=1.0"], [_val(100, 2.0, 0.4)])
    stopped = _job(tmp_path, "2", ["model.latent_dim=32", "train.kl_max=0.1"], [_val(50, 1, 0.1)])
    with open(stopped / "metrics.jsonl", "a") as f:
        f.write('{"step": 60, "loss": 3')  # a writer killed mid-line
    _job(tmp_path, "10", ["model.latent_dim=32", "train.kl_max=1.0"], None)
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / ".hydra").mkdir()
    (tmp_path / "3" / ".hydra" / "overrides.yaml").write_text(": not yaml [")
    _job(tmp_path, "4", ["model.latent_dim=64", "train.kl_max=1.0"], [_val(100, 3.0, 0.5)])
    (tmp_path / "4" / "metrics.json").write_text(json.dumps({"valid": 0.99, "reference": "x"}))
    _job(tmp_path, "5", ["model.latent_dim=64", "train.kl_max=0.1"], [_val(100, 3.0, 0.5)])
    with open(tmp_path / "5" / "metrics.jsonl", "a") as f:  # the logger writes inf as "inf"
        f.write(json.dumps({**_val(100, 3.0, 0.5), "val_elbo": "inf", "val_kl": "inf"}) + "\n")
    (tmp_path / ".submitit" / "1").mkdir(parents=True)

    df, keys = collect.collect(tmp_path)
    assert keys == ["model.latent_dim", "train.kl_max"]
    assert list(df["job"]) == ["0", "1", "2", "3", "4", "5", "10"]  # natural order
    assert list(df["status"]) == ["ok", "ok", "failed", "failed", "ok", "ok", "failed"]
    notes = dict(zip(df["job"], df["note"], strict=True))
    assert "stopped at step 50 of 100" in notes["2"] and "1 unreadable" in notes["2"]
    assert notes["3"].startswith("unreadable") and "no metrics.jsonl" in notes["10"]
    row = df.set_index("job").loc["0"]
    assert row["val_kl_bits"] == pytest.approx(6.0 / 0.6931471805599453)
    assert row["model.latent_dim"] == 16 and row["train.kl_max"] == 0.1
    assert df.set_index("job").loc["4", "valid"] == 0.99
    assert df.set_index("job").loc["5", "val_kl_bits"] == float("inf")

    assert collect.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "7 jobs: 4 ok, 3 failed" in md and "Lowest validation ELBO: 42 nats, job 1" in md
    assert (tmp_path / "out" / "rate_distortion.png").exists()


def test_collect_stays_a_light_script_without_jax():
    code = "import sys; import collect; assert 'jax' not in sys.modules, sorted(sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "experiments")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_collect_reads_the_held_out_likelihood(tmp_path):
    job = tmp_path / "0"
    job.mkdir()
    rec = {"step": 4, "loss": 1.0, "val_elbo": 40.0, "val_kl": 2.0, "val_recon": 38.0}
    (job / collect.METRICS_JSONL).write_text(json.dumps(rec) + "\n")
    like = {"nll_bits": 55.5, "rate_bits": 9.0, "distortion_bits": 48.0, "n": 10}
    (job / collect.LIKELIHOOD_JSON).write_text(json.dumps(like))
    row = collect._final_metrics(job)
    assert (row["test_nll_bits"], row["test_rate_bits"], row["test_distortion_bits"]) == (
        55.5,
        9.0,
        48.0,
    )
