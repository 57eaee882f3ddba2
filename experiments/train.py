"""Train a SELFIES VAE: python experiments/train.py [data=... model=... train.steps=...].

The Hydra output folder is the run folder (config, vocab, checkpoints, metrics.jsonl). Running
again with the same hydra.run.dir resumes from its latest checkpoint. Returns the final
validation ELBO (nats) so sweepers can minimise it.
"""

import hydra
from _common import (
    configs,
    log,
    log_errors,
    make_logger,
    quiet_libraries,
    run_dir,
    start_distributed,
)
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@log_errors
def main(cfg: DictConfig) -> float:
    quiet_libraries()
    start_distributed(cfg)
    data_cfg, model_cfg, train_cfg = configs(cfg)
    from molvae.training import train_and_evaluate

    out = run_dir()
    logger = make_logger(cfg, out)
    try:
        result = train_and_evaluate(
            data_cfg, model_cfg, train_cfg, out, logger, OmegaConf.to_container(cfg, resolve=True)
        )
    finally:
        logger.finish()
    log.info("run folder: %s", out)
    return float(result.final_eval.get("val_elbo", float("nan")))


if __name__ == "__main__":
    main()
