"""Faults and untrusted files: corrupted checkpoints, half-written ones, foreign run folders,
and a training process killed with SIGKILL."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

import molvae
from molvae.store import names, params
from molvae.store.checkpoints import CheckpointError


def _copy(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def test_loading_never_instantiates_targets_from_the_folder(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    marker = tmp_path / "pwned"
    info = json.loads((run / names.RUN_JSON).read_text())
    info["config"]["model"] = {"_target_": "os.system", "command": f"touch {marker}"}
    info["config"]["evil"] = {"_target_": "builtins.exec", "_args_": [f"open('{marker}','w')"]}
    (run / names.RUN_JSON).write_text(json.dumps(info))
    model = molvae.load(run)
    assert model.sample(2, seed=0) and not marker.exists()


def test_params_file_is_not_a_pickle_and_pickles_are_refused(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    shutil.rmtree(run / names.CHECKPOINTS)
    np.save(run / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    shutil.move(run / "evil.npy", run / names.PARAMS_NPZ)
    with pytest.raises(names.RunFolderError, match="params.npz"):
        molvae.load(run)


def test_corrupted_checkpoint_gives_an_error_naming_it(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    step_dir = next(p for p in (run / names.CHECKPOINTS).iterdir() if p.name.isdigit())
    for f in (step_dir / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0garbage" * 8)
    with pytest.raises(CheckpointError, match=str(step_dir.name)):
        molvae.load(run)


def test_half_written_checkpoint_is_ignored(tiny_run, tmp_path, caplog):
    run = _copy(tiny_run, tmp_path)
    ckpts = run / names.CHECKPOINTS
    good = next(p for p in ckpts.iterdir() if p.name.isdigit())
    # What a kill during a save leaves behind: orbax's temporary folder, never committed.
    half = ckpts / f"{int(good.name) + 10}.orbax-checkpoint-tmp-1234"
    shutil.copytree(good, half)
    before = molvae.load(tiny_run).encode(["CCO"])
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(molvae.load(run).encode(["CCO"]), before)
    assert "half-written checkpoint" in caplog.text and half.name in caplog.text


# A tiny run with a checkpoint every 3 steps, so a kill after the first one lands mid-run.
STEPS, EVERY = 24, 3
KILL_RUN = (
    "experiment=smoke",
    "train.progress=false",
    f"train.steps={STEPS}",
    f"train.ckpt_every={EVERY}",
    f"train.log_every={EVERY}",
    "train.eval_every=12",
)


def _train_cmd(root: Path, out: Path) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, str(root / "experiments" / "train.py"), *KILL_RUN]
    env = {
        **os.environ,  # MOLVAE_CACHE from conftest: the tests' data cache
        "HYDRA_FULL_ERROR": "1",
        "JAX_COMPILATION_CACHE_DIR": os.environ.get(
            "JAX_COMPILATION_CACHE_DIR", str(root / ".cache" / "jax")
        ),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }
    return [*cmd, f"hydra.run.dir={out}"], env


def _train(root: Path, out: Path) -> str:
    cmd, env = _train_cmd(root, out)
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"train.py failed:\n{log[-4000:]}"
    return log


def _steps(run: Path) -> list[int]:
    return sorted(int(p.name) for p in (run / names.CHECKPOINTS).glob("*") if p.name.isdigit())


def _records(run: Path) -> list[dict]:
    drop = ("mol_per_s", "time", "cpu_s")  # clock values differ between runs
    lines = (run / names.METRICS_JSONL).read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]


def _params(run: Path) -> dict[str, np.ndarray]:
    state = nnx.state(molvae.load(run).model, nnx.Param)
    return params.flatten_tree(jax.device_get(nnx.to_pure_dict(state)))


def _signal_after_first_checkpoint(root: Path, run: Path, signum: int) -> tuple[int, str]:
    """Start train.py into `run`, send it `signum` once its first checkpoint exists, wait for it
    to end; its exit status and output."""
    cmd, env = _train_cmd(root, run)
    log_path = run.with_suffix(".log")
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not ((run / names.CHECKPOINTS).is_dir() and _steps(run)):
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "no checkpoint after 300 s"
                time.sleep(0.01)
            os.kill(proc.pid, signum)
            proc.wait(timeout=120)
        finally:
            proc.kill()  # no-op once it is dead; never leave it running if an assert fired
            proc.wait()
    return proc.returncode, log_path.read_text()


@pytest.mark.slow  # three train.py processes: ~1 min on 2 busy cores
def test_sigkill_mid_run_resumes_to_the_uninterrupted_parameters(root, tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    _train(root, full)

    returncode, _ = _signal_after_first_checkpoint(root, killed, signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    at_kill = _steps(killed)
    assert at_kill and at_kill[-1] < STEPS, f"the kill came too late: checkpoints {at_kill}"

    log = _train(root, killed)  # the same command again: resumes from the last checkpoint
    assert f"resumed from checkpoint at step {at_kill[-1]}\n" in log
    assert _steps(killed)[-1] == _steps(full)[-1] == STEPS

    a, b = _params(full), _params(killed)
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    cpu = [json.loads(x)["cpu_s"] for x in (killed / names.METRICS_JSONL).read_text().splitlines()]
    assert all(b > a for a, b in zip(cpu, cpu[1:], strict=False)), (
        cpu
    )  # summed over the resume, not reset
    recs = _records(killed)
    assert [r["step"] for r in recs] == list(range(EVERY, STEPS + 1, EVERY))  # once each
    assert recs == _records(full)


@pytest.mark.slow  # two train.py processes: ~40 s on 2 busy cores
def test_sigterm_mid_run_saves_the_step_reached_and_the_same_command_finishes(root, tmp_path):
    """A scheduler's SIGTERM (time limit, preemption) to train.py: it checkpoints the step it has
    reached, says so and exits 1; the same command finishes the run from there."""
    run = tmp_path / "term"
    returncode, log = _signal_after_first_checkpoint(root, run, signal.SIGTERM)
    assert returncode == 1, log[-4000:]
    stopped = re.search(r"stopped: training stopped by SIGTERM at step (\d+)", log)
    assert stopped, log[-4000:]
    step = int(stopped.group(1))
    assert step < STEPS and _steps(run)[-1] == step, (step, _steps(run))
    log = _train(root, run)
    assert f"resumed from checkpoint at step {step}\n" in log
    assert _steps(run)[-1] == STEPS
