"""Parameters as flat .npz files (no pickle: safe to share): a model's params.npz and the latent
property predictor (predictor.npz + predictor.json). One reader checks names and shapes for both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from molvae.models.predictor import Predictor, PredictorConfig
from molvae.store.folder import write_json_atomic
from molvae.store.names import PREDICTOR, PREDICTOR_FORMAT, RunFolderError


def flatten_tree(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict of arrays -> {"a/b/c": array}: the key layout of molvae's .npz files."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        leaf = v if isinstance(v, jax.ShapeDtypeStruct) else np.asarray(v)  # abstract: shapes
        out.update(flatten_tree(v, name) if isinstance(v, dict) else {name: leaf})
    return out


def save_npz(module: nnx.Module, path: Path, what: Any = nnx.Param) -> None:
    """The `what` variables of a module (by default its parameters) as a flat .npz, atomically."""
    tmp = path.with_name(f"{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **flatten_tree(nnx.to_pure_dict(nnx.state(module, what))))
    tmp.replace(path)


def load_npz(module: nnx.Module, path: Path, what: Any = nnx.Param) -> None:
    """Fill a freshly built module's `what` variables from a .npz written by save_npz; names and
    shapes must match exactly (RunFolderError naming the first mismatches)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path}: unreadable parameter file ({e})") from e
    state = nnx.state(module, what)
    expected = flatten_tree(nnx.to_pure_dict(state))
    if set(stored) != set(expected):
        missing, extra = set(expected) - set(stored), set(stored) - set(expected)
        raise RunFolderError(
            f"{path}: parameters do not match the model (missing "
            f"{sorted(missing)[:3]}, unexpected {sorted(extra)[:3]})"
        )
    for k, v in expected.items():
        if stored[k].shape != v.shape:
            raise RunFolderError(f"{path}: {k} has shape {stored[k].shape}, expected {v.shape}")

    def rebuild(tree, prefix=""):
        return {
            k: rebuild(v, key) if isinstance(v, dict) else jnp.asarray(stored[key])
            for k, v in tree.items()
            for key in [f"{prefix}/{k}" if prefix else str(k)]
        }

    nnx.replace_by_pure_dict(state, rebuild(nnx.to_pure_dict(state)))
    nnx.update(module, state)


# ----------------------------------------------------------------------------- the predictor


def save_predictor(
    predictor: Predictor, run_dir: str | Path, metrics: dict | None = None, name: str = PREDICTOR
) -> Path:
    """run_dir/<name>.npz (arrays) and run_dir/<name>.json (architecture, targets, metrics)."""
    run_dir = Path(run_dir)
    save_npz(predictor, run_dir / f"{name}.npz", nnx.Variable)  # weights and output scaling
    info = {"format": PREDICTOR_FORMAT, "config": predictor.cfg.to_dict(), "metrics": metrics or {}}
    write_json_atomic(run_dir / f"{name}.json", info)
    return run_dir / f"{name}.json"


def load_predictor(run_dir: str | Path, name: str = PREDICTOR) -> Predictor:
    """Rebuild a saved predictor; a missing, foreign or mismatched file is a RunFolderError."""
    meta, arr = Path(run_dir) / f"{name}.json", Path(run_dir) / f"{name}.npz"
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        if info.get("format") != PREDICTOR_FORMAT:
            raise ValueError(f"format {info.get('format')!r}, expected {PREDICTOR_FORMAT!r}")
        cfg = PredictorConfig.from_dict(info["config"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFolderError(f"{meta}: not a readable molvae predictor ({e})") from e
    pred = Predictor(cfg, rngs=nnx.Rngs(0))
    try:
        load_npz(pred, arr, nnx.Variable)
    except RunFolderError as e:
        raise RunFolderError(f"{e} (the predictor described by {meta})") from e
    return pred


def predictor_info(run_dir: str | Path, name: str = PREDICTOR) -> dict | None:
    """The saved predictor's JSON (targets, metrics), or None if the run has none."""
    path = Path(run_dir) / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
