"""Orbax checkpoints of a run: save, list, restore into a model or a training state."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from molvae.store.names import CHECKPOINTS, PARAMS_NPZ, RunFolderError

log = logging.getLogger(__name__)

# Checkpoint items, in the order of the training state tuple (a joint run has all four).
STATE_ITEMS = ("params", "opt", "predictor", "predictor_opt")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the run (names the folder)."""


def warn_partial_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Orbax commits a checkpoint by renaming its temporary folder; leftovers of a killed save
    are never read. Say so, so a user knows why an older step is used."""
    partial = sorted(p for p in ckpt_dir.glob("*") if p.is_dir() and "tmp" in p.name)
    for p in partial:
        log.warning(
            "ignoring half-written checkpoint %s (interrupted save); using the latest complete one",
            p,
        )
    return partial


def checkpoint_manager(run_dir: Path, keep: int | None = None) -> ocp.CheckpointManager:
    """The run's checkpoint folder; keep: how many to keep (None: all). Saves are synchronous."""
    warn_partial_checkpoints(run_dir / CHECKPOINTS)
    opts = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager((run_dir / CHECKPOINTS).absolute(), options=opts)


def reader(run_dir: str | Path) -> ocp.CheckpointManager | None:
    """The run's checkpoints, read-only (nothing created or cleaned); None if it has none."""
    ckpt = (Path(run_dir) / CHECKPOINTS).absolute()
    if not ckpt.exists():
        return None
    warn_partial_checkpoints(ckpt)
    return ocp.CheckpointManager(ckpt, options=ocp.CheckpointManagerOptions(create=False))


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """The steps of the run's complete checkpoints, ascending."""
    mngr = reader(run_dir)
    return sorted(mngr.all_steps()) if mngr is not None else []


def checkpoint_meta(run_dir: str | Path, step: int) -> dict[str, Any]:
    """The JSON record saved with checkpoint `step` (step, cpu_s, mols_seen, ...); {} if none."""
    path = Path(run_dir) / CHECKPOINTS / str(step) / "meta" / "metadata"
    return json.loads(path.read_text()) if path.exists() else {}


def save_checkpoint(mngr: ocp.CheckpointManager, step: int, state: nnx.State, meta: dict) -> None:
    items = {
        name: ocp.args.StandardSave(nnx.to_pure_dict(state[i]))
        for i, name in enumerate(STATE_ITEMS[: len(state)])
    }
    mngr.save(step, args=ocp.args.Composite(**items, meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()


def restore_into(mngr: ocp.CheckpointManager, step: int, state: nnx.State, with_opt: bool = True):
    """Restore checkpoint `step` into the structure of `state`: the training state tuple
    ((params, opt) or, for joint training, (params, opt, predictor, predictor_opt)), or, with
    with_opt=False, the model's state alone. Returns the checkpoint's meta record."""
    target = state if with_opt else (state,)
    abstract = lambda s: jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(s))  # noqa: E731
    items = {
        name: ocp.args.StandardRestore(abstract(target[i]))
        for i, name in enumerate(STATE_ITEMS[: len(target)])
    }
    items["meta"] = ocp.args.JsonRestore()
    try:
        got = mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001 - orbax raises many types; name the folder instead
        raise CheckpointError(
            f"cannot restore checkpoint {mngr.directory}/{step}: {type(e).__name__}: {e}"
        ) from e
    for i, name in enumerate(STATE_ITEMS[: len(target)]):
        nnx.replace_by_pure_dict(target[i], got[name])
    return got["meta"]


def restore_model(model: nnx.Module, run_dir: Path, step: int | None = None) -> int:
    """Fill `model` from the run's checkpoint at `step` (None: the latest); returns the step."""
    mngr = reader(run_dir)
    steps = sorted(mngr.all_steps()) if mngr is not None else []
    if step is not None and step not in steps:
        raise RunFolderError(f"{run_dir}: no checkpoint at step {step}; have {steps}")
    step = max(steps, default=None) if step is None else step
    if step is None:
        ckpt = (run_dir / CHECKPOINTS).absolute()
        raise RunFolderError(f"{run_dir}: no {PARAMS_NPZ} and no checkpoint in {ckpt}")
    state = nnx.state(model)
    restore_into(mngr, step, state, with_opt=False)
    nnx.update(model, state)  # nnx.state is a copy: write the restored values back
    return step
