"""Shared glue for the Hydra entry points: config -> plain dataclasses, loggers, run folder."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

os.environ.setdefault("WANDB_MODE", "offline")  # no network unless logger.mode=online is asked for

log = logging.getLogger("molvae")


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


def run_dir() -> Path:
    """The Hydra output folder of this job: the run folder."""
    return Path(HydraConfig.get().runtime.output_dir)


def configs(cfg: DictConfig):
    """DataConfig, ModelConfig, TrainConfig from the composed config (validated before any work)."""
    from molvae.data import DataConfig
    from molvae.models.vae import ModelConfig
    from molvae.train import TrainConfig

    data = OmegaConf.to_container(cfg.data, resolve=True)
    data.pop("reference", None)
    return (
        as_dataclass(DataConfig, data, "data"),
        as_dataclass(ModelConfig, cfg.model, "model"),
        as_dataclass(TrainConfig, cfg.train, "train"),
    )


def make_logger(cfg: DictConfig, out: Path):
    """metrics.jsonl always; wandb too with logger=wandb."""
    from molvae.loggers import JsonlLogger, MultiLogger, WandbLogger

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
