"""Shared glue for the Hydra entry points: config -> plain dataclasses, loggers, run folder."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from molvae.runtime import tune_allocator
from molvae.store import locate
from molvae.training.config import TrainingStopped

tune_allocator()  # before JAX starts its threads: XLA's step buffers stay mapped (see runtime.py)

os.environ.setdefault("WANDB_MODE", "offline")  # no network unless logger.mode=online is asked for

# Launchers that start jobs in fresh interpreters (submitit_local, SLURM) unpickle the entry
# point there and must import this module too: put this folder on their PYTHONPATH.
_HERE = str(Path(__file__).resolve().parent)
if _HERE not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_HERE, os.environ.get("PYTHONPATH")]))

log = logging.getLogger("molvae")


def output_dir(run: str) -> str:
    """hydra.run.dir of sample/evaluate/optimize (${molvae_out:${run_dir}}): the run folder, or
    outputs/pretrained-NAME for a shipped model. Hydra resolves it before it creates the folder
    or its log file, so a mistyped run_dir stops here and leaves nothing behind."""
    try:
        return str(locate.output_folder(run))
    except ValueError as e:  # outside the task function Hydra would print its own traceback
        sys.exit(f"error: run_dir={run}: {e}")


def train_dir(out: str, source: str, path: str | None) -> str:
    """hydra.run.dir of train/pipeline (${molvae_train_dir:DIR,${data.source},${data.path}}):
    DIR, once a csv data.path names a file; a mistyped one stops before Hydra creates DIR."""
    if source == "csv" and path and not Path(path).expanduser().is_file():
        sys.exit(f"error: data.path={path}: no such file")
    return out


OmegaConf.register_new_resolver("molvae_out", output_dir, replace=True)
OmegaConf.register_new_resolver("molvae_train_dir", train_dir, replace=True)


def log_errors(main: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Decorate a Hydra task function: an error is logged with its traceback into the job's log
    (train.log, sample.log, ...) before Hydra reports it, so the run folder says why it stopped."""

    @functools.wraps(main)
    def wrapper(cfg: DictConfig) -> Any:
        try:
            return main(cfg)
        except TrainingStopped as e:  # logged by the loop; no traceback for a requested stop
            sys.exit(f"stopped: {e}")
        except Exception:
            log.exception("%s failed", HydraConfig.get().job.name)
            raise

    return wrapper


def quiet_libraries() -> None:
    """Keep the run log about the run: orbax/absl and JAX's backend probing speak at INFO."""
    for name in ("absl", "jax._src.xla_bridge", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)


def as_dataclass(cls: type, node: DictConfig | dict, section: str) -> Any:
    """Build a frozen config dataclass from a config node; unknown keys are an error naming them."""
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in '{section}'; known: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def start_distributed(cfg: DictConfig) -> bool:
    """Join a multi-host job (SLURM tasks > 1, or cfg.distributed / JAX_* variables); else no-op.

    Call first in an entry point: jax.distributed must start before any JAX computation.
    """
    from molvae.distributed import initialize

    node = cfg.get("distributed")
    return initialize(**(OmegaConf.to_container(node, resolve=True) if node else {}))


def run_dir() -> Path:
    """The Hydra output folder of this job: the run folder."""
    return Path(HydraConfig.get().runtime.output_dir)


def configs(cfg: DictConfig):
    """DataConfig, ModelConfig, TrainConfig from the composed config (validated before any work)."""
    from molvae.data import DataConfig
    from molvae.models.vae import ModelConfig
    from molvae.training import TrainConfig

    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("reference", None)
    return (
        as_dataclass(DataConfig, data, "data"),
        as_dataclass(ModelConfig, cfg.model, "model"),
        as_dataclass(TrainConfig, cfg.train, "train"),
    )


def make_logger(cfg: DictConfig, out: Path):
    """metrics.jsonl always; wandb too with logger=wandb."""
    from molvae.distributed import is_main_process
    from molvae.loggers import JsonlLogger, MultiLogger, WandbLogger

    if not is_main_process():  # one process writes the run's logs
        return MultiLogger()
    jsonl = JsonlLogger(out / "metrics.jsonl")
    if cfg.logger.name == "none":
        return MultiLogger(jsonl)
    if cfg.logger.name != "wandb":
        raise ValueError(f"logger.name must be none or wandb, got {cfg.logger.name!r}")
    wb = WandbLogger(
        out,
        OmegaConf.to_container(cfg, resolve=True),
        project=cfg.logger.project,
        mode=cfg.logger.mode,
        name=cfg.get("run_name"),
        group=cfg.logger.group,
    )
    return MultiLogger(jsonl, wb)
