"""Faults and untrusted files: corrupted checkpoints, half-written ones, foreign run folders."""

import json
import shutil

import numpy as np
import pytest

import molvae
from molvae import runs
from molvae.train import CheckpointError


def _copy(tiny_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out


def test_loading_never_instantiates_targets_from_the_folder(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    marker = tmp_path / "pwned"
    info = json.loads((run / runs.RUN_JSON).read_text())
    info["config"]["model"] = {"_target_": "os.system", "command": f"touch {marker}"}
    info["config"]["evil"] = {"_target_": "builtins.exec", "_args_": [f"open('{marker}','w')"]}
    (run / runs.RUN_JSON).write_text(json.dumps(info))
    model = molvae.load(run)
    assert model.sample(2, seed=0) and not marker.exists()


def test_params_file_is_not_a_pickle_and_pickles_are_refused(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    shutil.rmtree(run / runs.CHECKPOINTS)
    np.save(run / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    shutil.move(run / "evil.npy", run / runs.PARAMS_NPZ)
    with pytest.raises(runs.RunFolderError, match="params.npz"):
        molvae.load(run)


def test_corrupted_checkpoint_gives_an_error_naming_it(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path)
    step_dir = next(p for p in (run / runs.CHECKPOINTS).iterdir() if p.name.isdigit())
    for f in (step_dir / "params").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"\0garbage" * 8)
    with pytest.raises(CheckpointError, match=str(step_dir.name)):
        molvae.load(run)


def test_half_written_checkpoint_is_ignored(tiny_run, tmp_path, caplog):
    run = _copy(tiny_run, tmp_path)
    ckpts = run / runs.CHECKPOINTS
    good = next(p for p in ckpts.iterdir() if p.name.isdigit())
    # What a kill during a save leaves behind: orbax's temporary folder, never committed.
    half = ckpts / f"{int(good.name) + 10}.orbax-checkpoint-tmp-1234"
    shutil.copytree(good, half)
    before = molvae.load(tiny_run).encode(["CCO"])
    with caplog.at_level("WARNING"):
        np.testing.assert_array_equal(molvae.load(run).encode(["CCO"]), before)
    assert "half-written checkpoint" in caplog.text and half.name in caplog.text
