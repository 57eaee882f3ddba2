"""The run folder contract: what a run writes, and reading it back (as data, never as code)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd
from flax import nnx

from molvae import chem
from molvae.locate import RUN_JSON, RunFolderError  # noqa: F401 - the run folder's names
from molvae.models.vae import VAE, ModelConfig
from molvae.vocab import Vocab

log = logging.getLogger(__name__)

RUN_FORMAT = "molvae-run-1"
VOCAB_JSON, METRICS_JSONL = "vocab.json", "metrics.jsonl"
LIKELIHOOD_JSON = "likelihood.json"
PREDICTOR = "predictor"  # run_dir/predictor.json + predictor.npz: a property predictor
SAMPLES_CSV, EVAL_JSON, PARAMS_NPZ, CHECKPOINTS = (
    "samples.csv",
    "metrics.json",
    "params.npz",
    "checkpoints",
)


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # unique per process (multi-host)
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def write_run_info(
    run_dir: Path, model_cfg: ModelConfig, vocab: Vocab, max_len: int, config: dict[str, Any]
) -> None:
    """run.json (architecture + max length + resolved config) and vocab.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    vocab.save(run_dir / VOCAB_JSON)
    write_json_atomic(
        run_dir / RUN_JSON,
        {"format": RUN_FORMAT, "model": model_cfg.to_dict(), "max_len": max_len, "config": config},
    )


def read_run_info(run_dir: Path) -> tuple[ModelConfig, Vocab, int, dict[str, Any]]:
    path = run_dir / RUN_JSON
    if not path.exists():
        raise RunFolderError(f"{path} not found: is {run_dir} a molvae run folder?")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunFolderError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT:
        raise RunFolderError(
            f"{path}: not a molvae run file (format "
            f"{info.get('format') if isinstance(info, dict) else None!r})"
        )
    try:
        known = set(ModelConfig.__dataclass_fields__)
        model_cfg = ModelConfig(**{k: v for k, v in info["model"].items() if k in known})
        max_len = int(info["max_len"])
    except (KeyError, TypeError, ValueError) as e:
        raise RunFolderError(f"{path}: bad model description ({e})") from e
    vocab = Vocab.load(run_dir / VOCAB_JSON)
    if len(vocab) != model_cfg.vocab_size:
        raise RunFolderError(
            f"{run_dir / VOCAB_JSON} has {len(vocab)} tokens but the model "
            f"in {path} expects {model_cfg.vocab_size}"
        )
    return model_cfg, vocab, max_len, info.get("config", {})


# ----------------------------------------------------------------------------- parameters


def flatten_tree(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict of arrays -> {"a/b/c": array}: the key layout of molvae's .npz files."""
    out = {}
    for k, v in tree.items():
        name = f"{prefix}/{k}" if prefix else str(k)
        leaf = v if isinstance(v, jax.ShapeDtypeStruct) else np.asarray(v)  # abstract: shapes
        out.update(flatten_tree(v, name) if isinstance(v, dict) else {name: leaf})
    return out


def export_params(model: VAE, path: Path) -> None:
    """Parameters only, as a flat .npz (no pickle): compact and safe to share."""
    np.savez_compressed(path, **flatten_tree(nnx.to_pure_dict(nnx.state(model, nnx.Param))))


def import_params(model: VAE, path: Path) -> None:
    """Load a params.npz into a freshly built model; shapes and names must match exactly."""
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = {k: f[k] for k in f.files}
    except (OSError, ValueError) as e:
        raise RunFolderError(f"{path}: unreadable parameter file ({e})") from e
    state = nnx.state(model, nnx.Param)
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
            k: rebuild(v, f"{prefix}/{k}" if prefix else str(k))
            if isinstance(v, dict)
            else jax.numpy.asarray(stored[f"{prefix}/{k}" if prefix else str(k)])
            for k, v in tree.items()
        }

    nnx.replace_by_pure_dict(state, rebuild(nnx.to_pure_dict(state)))
    nnx.update(model, state)


# ----------------------------------------------------------------------------- samples


def write_samples(
    run_dir: Path, smiles: list[str], properties: bool = True, name: str = SAMPLES_CSV
) -> pd.DataFrame:
    """samples.csv: one row per sample in order, with validity and RDKit properties."""
    df = pd.DataFrame({"smiles": smiles, "valid": [bool(s) for s in smiles]})
    if properties:
        props = chem.properties(smiles, ("qed", "logp", "sa", "weight", "plogp"))
        df = pd.concat([df, props], axis=1)
    tmp = run_dir / (name + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, run_dir / name)
    return df


def read_samples(run_dir: Path, name: str = SAMPLES_CSV) -> list[str]:
    path = run_dir / name
    if not path.exists():
        raise RunFolderError(f"{path} not found: run experiments/sample.py run_dir={run_dir} first")
    df = pd.read_csv(path, keep_default_na=False)
    return [str(s) for s in df["smiles"]]


def dataset_of_run(run_dir: Path):
    """The preprocessed Dataset a run was trained on (rebuilt from run.json's data config and
    the preprocessing cache), or None if the run records no data config."""
    from molvae.data import DataConfig, load_dataset

    *_, config = read_run_info(Path(run_dir))
    data = dict(config.get("data") or {})
    if not data:
        return None
    known = set(DataConfig.__dataclass_fields__)
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
    return load_dataset(DataConfig(**data))


def train_smiles_of_run(run_dir: Path) -> list[str] | None:
    """The canonical training SMILES a run was trained on (from the preprocessing cache: the
    output of data.standardize, canonical already)."""
    ds = dataset_of_run(run_dir)
    return None if ds is None else ds.train.smiles


def per_symbol_calibration(per_symbol: np.ndarray, k: int, seed: int, molecules: str) -> dict:
    """What MolVAE.anomaly_percentile compares with: the percentiles 0, 1, ..., 100 of held-out
    molecules' log-likelihoods per SELFIES symbol (nats), with where they come from."""
    x = np.asarray(per_symbol, np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        raise ValueError("no finite per-symbol log-likelihoods to calibrate with")
    return {
        "n": int(len(x)),
        "k": k,
        "seed": seed,
        "molecules": molecules,
        "mean_nats": float(x.mean()),
        "quantiles": np.round(np.percentile(x, np.arange(101)), 5).tolist(),
    }


def percentile_of(values: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """Percentile (0-100) of each value among the held-out molecules whose percentiles 0..100
    are `quantiles`, linear between them; nan stays nan."""
    values = np.asarray(values, np.float64)
    out = np.interp(values, np.asarray(quantiles, np.float64), np.arange(len(quantiles)))
    return np.where(np.isnan(values), np.nan, out)


def test_likelihood(
    run_dir: Path, n: int = 2000, k: int = 64, seed: int = 0, model: Any = None
) -> dict[str, float]:
    """Held-out compression: the run's first n test molecules scored by the importance-weighted
    bound (k samples). Writes likelihood.json: mean NLL per molecule in nats and bits, the
    ELBO's split into rate (KL(q(z|x) || p(z))) and distortion (E_q[-log p(x|z)]), and the
    percentiles of the per-symbol scores ("per_symbol", see MolVAE.anomaly_percentile)."""
    import molvae

    run_dir = Path(run_dir)
    ds = dataset_of_run(run_dir)
    if ds is None:
        raise RunFolderError(f"{run_dir}: no data config in {RUN_JSON}; no test set to score")
    model = model or molvae.load(run_dir)
    test = ds.test.smiles[:n]
    # invalid SMILES and symbols outside the vocabulary cannot be scored: nan rows
    out = model.log_likelihood(test, k=k, seed=seed, details=True, errors="nan")
    ok = np.isfinite(out["log_likelihood"])
    out = {name: v[ok] for name, v in out.items()}
    nats = float(-np.mean(out["log_likelihood"])) if ok.any() else float("nan")
    rate, dist = float(np.mean(out["rate"])), float(np.mean(out["distortion"]))
    ln2 = float(np.log(2.0))
    scores = {
        "n": int(ok.sum()),
        "skipped_out_of_vocabulary": int(len(test) - ok.sum()),
        "k": k,
        "nll_nats": nats,
        "nll_bits": nats / ln2,
        "rate_nats": rate,
        "rate_bits": rate / ln2,
        "distortion_nats": dist,
        "distortion_bits": dist / ln2,
        "elbo_nats": -(rate + dist),
    }
    if ok.any():  # held-out per-symbol scores: the calibration of model.anomaly_percentile
        where = f"the first {len(test)} test molecules of the run's data"
        scores["per_symbol"] = per_symbol_calibration(out["per_symbol"], k, seed, where)
    write_json_atomic(run_dir / LIKELIHOOD_JSON, scores)
    return scores


def evaluate_run(
    run_dir: Path,
    reference: str = "moses_sample",
    metrics: str = "basic",
    n_jobs: int | None = None,
) -> dict[str, float]:
    """Score samples.csv; novelty against the run's own training set. Writes metrics.json."""
    from molvae import metrics as m

    smiles = read_samples(run_dir)
    train = train_smiles_of_run(run_dir)
    if metrics == "basic":
        if train is None:
            raise RunFolderError(f"{run_dir}: no data config; use metrics=all with a reference")
        scores = m.basic_metrics(smiles, train, n_jobs=n_jobs, train_canonical=True)
    elif metrics == "all":
        scores = m.evaluate(
            smiles, reference=reference, train_smiles=train, n_jobs=n_jobs, train_canonical=True
        )
    else:
        raise ValueError(f"metrics must be 'basic' or 'all', got {metrics!r}")
    write_json_atomic(
        run_dir / EVAL_JSON, {"n_samples": len(smiles), "reference": reference, **scores}
    )
    return scores
