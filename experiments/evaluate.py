"""Score a run's samples: python experiments/evaluate.py run_dir=DIR reference=moses metrics=all."""

from pathlib import Path

import hydra
from _common import log, quiet_libraries
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    from molvae import report, runs

    scores = runs.evaluate_run(Path(cfg.run_dir), cfg.reference, cfg.metrics, cfg.n_jobs)
    log.info("metrics: %s", ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    log.info("report: %s", report.write_report(Path(cfg.run_dir)))


if __name__ == "__main__":
    main()
