"""Train, sample, evaluate in one run folder: python experiments/pipeline.py [experiment=smoke].

`make demo` runs `experiment=demo hydra.run.dir=outputs/demo`.
"""

import time

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

from molvae.evaluation import run as run_eval
from molvae.store import folder


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
@log_errors
def main(cfg: DictConfig) -> float:
    quiet_libraries()
    start_distributed(cfg)
    data_cfg, model_cfg, train_cfg = configs(cfg)
    import molvae
    from molvae import runtime
    from molvae.evaluation import report
    from molvae.training import train_and_evaluate

    out, t0 = run_dir(), time.perf_counter()
    logger = make_logger(cfg, out)
    try:
        result = train_and_evaluate(
            data_cfg, model_cfg, train_cfg, out, logger, OmegaConf.to_container(cfg, resolve=True)
        )
        model = molvae.load(out)
        s = cfg.sample
        smiles = model.sample(
            s.n, temperature=s.temperature, seed=s.seed, greedy=s.greedy, strict=s.strict
        )
        samples = folder.write_samples(out, smiles)
        runtime.release_memory()  # training's high-water mark: not needed from here on
        scores = run_eval.evaluate_run(
            out, cfg.evaluate.reference, cfg.evaluate.metrics, cfg.evaluate.n_jobs
        )
        like = run_eval.test_likelihood(out, n=cfg.evaluate.likelihood_n, model=model)
        scores |= {k: like[k] for k in ("nll_nats", "nll_bits", "rate_bits", "distortion_bits")}
        logger.log({"step": result.step, **{f"eval/{k}": v for k, v in scores.items()}})
        report.write_report(out)
        logger.log_artifacts(out, samples)
    finally:
        logger.finish()
    log.info(
        "pipeline done in %.0f s: %s",
        time.perf_counter() - t0,
        ", ".join(f"{k} {v:.4f}" for k, v in scores.items()),
    )
    log.info("run folder: %s", out)
    return float(result.final_eval.get("val_elbo", float("nan")))


if __name__ == "__main__":
    main()
