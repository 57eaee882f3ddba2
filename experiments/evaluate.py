"""Score a run's samples: python experiments/evaluate.py run_dir=DIR reference=moses metrics=all.

run_dir=pretrained:moses scores the samples that sample.py wrote into outputs/pretrained-moses/.
"""

import hydra
from _common import log, log_errors, quiet_libraries, run_dir
from omegaconf import DictConfig

from molvae.evaluation import run as run_eval


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
@log_errors
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    from molvae.evaluation import report
    from molvae.store import locate

    out = locate.working_folder(cfg.run_dir, run_dir())  # a shipped model: a copy in run_dir()
    scores = run_eval.evaluate_run(out, cfg.reference, cfg.metrics, cfg.n_jobs)
    log.info("metrics: %s", ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    log.info("report: %s", report.write_report(out))


if __name__ == "__main__":
    main()
