"""The run folder's records: run.json and vocab.json, samples.csv, atomic JSON writes, the data a
run was trained on. Everything is read back as data, never executed or unpickled."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from molvae import chem
from molvae.data import DataConfig, Dataset, load_dataset
from molvae.models.vae import ModelConfig
from molvae.store.names import (
    RUN_FORMAT,
    RUN_JSON,
    SAMPLES_CSV,
    VOCAB_JSON,
    RunFolderError,
)
from molvae.vocab import Vocab

log = logging.getLogger(__name__)


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
    """(model config, vocabulary, max_len, resolved config) of a run; RunFolderError naming the
    file for anything missing or malformed."""
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


def last_validation(path: Path) -> dict[str, float]:
    """The val_* metrics of the last record of a metrics.jsonl that has them ({} if none)."""
    if not path.exists():
        return {}
    for line in reversed(path.read_text().splitlines()):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash mid-write
            continue
        if val := {k: v for k, v in rec.items() if k.startswith("val_")}:
            return val
    return {}


# ----------------------------------------------------------------------------- samples


def write_samples(
    run_dir: Path, smiles: list[str], properties: bool = True, name: str = SAMPLES_CSV
) -> pd.DataFrame:
    """samples.csv: one row per sample in order, with validity and RDKit properties."""
    df = pd.DataFrame({"smiles": smiles, "valid": [bool(s) for s in smiles]})
    if properties:
        df = pd.concat([df, chem.properties(smiles, chem.TABLE_PROPERTIES)], axis=1)
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


# ----------------------------------------------------------------------------- training data


def dataset_of_run(run_dir: Path) -> Dataset | None:
    """The preprocessed Dataset a run was trained on (rebuilt from run.json's data config and
    the preprocessing cache), or None if the run records no data config."""
    *_, config = read_run_info(Path(run_dir))
    data = dict(config.get("data") or {})
    if not data:
        return None
    known = set(DataConfig.__dataclass_fields__)
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
    if (pre := data.get("preprocessed")) and not Path(pre).expanduser().is_file():
        # trained from a copied file (data.preprocessed) elsewhere: the same molecules from here
        log.info("data.preprocessed=%s is not here: reading the run's source instead", pre)
        data["preprocessed"] = None
    return load_dataset(DataConfig(**data))


def train_smiles_of_run(run_dir: Path) -> list[str] | None:
    """The canonical training SMILES a run was trained on (from the preprocessing cache: the
    output of data.standardize, canonical already)."""
    ds = dataset_of_run(run_dir)
    return None if ds is None else ds.train.smiles


def train_split_of_run(run_dir: Path | None):
    """The training split of a run's data (for fitting on its molecules); RunFolderError if the
    run has no folder or records no data config."""
    if run_dir is None:
        raise RunFolderError("the model has no run folder to read training molecules from")
    ds = dataset_of_run(Path(run_dir))
    if ds is None:
        raise RunFolderError(f"{run_dir}: no data config in {RUN_JSON}")
    return ds.train
