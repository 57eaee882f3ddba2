"""Optimize molecules in a run's latent space: python experiments/optimize.py run_dir=DIR
objective=qed optimize=bo optimize.budget=1000 (see conf/optimize_run.yaml for the outputs).
run_dir=pretrained:moses searches the shipped model; outputs go to outputs/pretrained-moses/."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import hydra
from _common import log, log_errors, quiet_libraries, run_dir
from omegaconf import DictConfig, OmegaConf

from molvae.store import folder

OBJECTIVE_KEYS = ("name", "target", "width", "terms", "constraints", "penalty")


def objective_of(node: DictConfig) -> Any:
    """The Objective named by the `objective` config group (errors name the key)."""
    from molvae.design import ObjectiveError, make_objective

    spec: dict[str, Any] = OmegaConf.to_container(node, resolve=True)
    unknown = sorted(set(spec) - set(OBJECTIVE_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in 'objective'; known: {list(OBJECTIVE_KEYS)}")
    name = spec.pop("name", None)
    spec["constraints"] = tuple(spec.get("constraints") or ())
    try:
        return make_objective(name, **spec)
    except ObjectiveError as e:  # its message names the offending objective.* key
        raise ValueError(str(e)) from None


def method_options(node: DictConfig) -> tuple[str, int, Any]:
    """method, budget and the validated settings dataclass of `optimize` (errors name the key);
    the constrained task has no budget (0)."""
    from molvae.design import METHODS, method_config

    opts: dict[str, Any] = OmegaConf.to_container(node, resolve=True)
    method, budget = opts.pop("method", None), opts.pop("budget", None)
    searches = method in METHODS and METHODS[method].search
    if searches and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
        raise ValueError(f"optimize.budget must be a positive integer, got {budget!r}")
    try:
        cfg = method_config(method, **opts)
    except (TypeError, ValueError) as e:
        raise ValueError(f"optimize (method={method}): {e}") from None
    return method, budget if searches else 0, cfg


def make_wandb(cfg: DictConfig, out: Path, name: str) -> Any:
    """A WandbLogger writing into `out` with logger=wandb (offline by default), else None.

    Not make_logger: an optimization run's per-call record is oracle_calls.csv/history.csv, and
    a metrics.jsonl appended to by a resumed run would repeat its calls.
    """
    if cfg.logger.name == "none":
        return None
    from molvae.loggers import WandbLogger

    return WandbLogger(
        out,
        OmegaConf.to_container(cfg, resolve=True),
        project=cfg.logger.project,
        mode=cfg.logger.mode,
        name=cfg.get("run_name") or name,
        group=cfg.logger.group,
    )


def log_search(logger: Any, result: Any, top: Any, out: Path) -> None:
    """The best-so-far curve (one point per oracle call), the figures and the top-k table."""
    curve = result.curve(10)  # call, best, top10_mean
    for row in curve.itertuples(index=False):
        rec = {"oracle_calls": int(row.call), "best": row.best, "top10_mean": row.top10_mean}
        # nan until the first valid molecule: left out rather than logged as a string
        logger.log({"step": int(row.call), **{k: v for k, v in rec.items() if math.isfinite(v)}})
    logger.log_images({"figures/curve": out / "curve.png", "figures/top": out / "top.png"})
    logger.log_table("top_molecules", top)


def flat_summary(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"counts": {"invalid": 2}} -> {"counts/invalid": 2}; the method's config is left out."""
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if k == "config" and not prefix:
            continue
        key = f"{prefix}{k}"
        out.update(flat_summary(v, f"{key}/") if isinstance(v, dict) else {key: v})
    return out


def run_search(
    cfg: DictConfig, model, obj, method: str, budget: int, settings, out: Path, logger: Any = None
) -> dict[str, Any]:
    import dataclasses

    import molvae
    from molvae.design import plots as report

    result = molvae.optimize(
        model, obj, method=method, budget=budget, seed=cfg.seed,
        history_path=out / "oracle_calls.csv", progress=cfg.progress,
        **dataclasses.asdict(settings),
    )  # fmt: skip
    history = result.history
    if len(history):
        from molvae import chem

        props = chem.properties(list(history["smiles"]), chem.TABLE_PROPERTIES)
        history = history.join(props)
    history.to_csv(out / "history.csv", index=False)
    top = result.top(cfg.top_k)
    top.to_csv(out / "top.csv", index=False)
    title = f"{obj.name} / {method}" + (f" (score = -{obj.name})" if obj.sign < 0 else "")
    report.plot_curve(result.history, out / "curve.png", title)
    report.plot_grid(top.head(cfg.grid), out / "top.png")
    if logger is not None:
        log_search(logger, result, top, out)
    return result.summary()


def run_constrained(cfg: DictConfig, model, obj, settings, out: Path) -> dict:
    from molvae.design import constrained_optimize, lowest

    starts = lowest(_test_smiles(model), settings.n_molecules, settings.prop)
    table, summary = constrained_optimize(
        model, starts, settings, objective=obj, progress=cfg.progress
    )
    table.to_csv(out / "constrained.csv", index=False)
    return summary


def _test_smiles(model) -> list[str]:

    ds = folder.dataset_of_run(Path(model.run_dir))
    if ds is None:
        raise ValueError(f"{model.run_dir}: no data config in run.json; no test molecules")
    return ds.test.smiles


@hydra.main(version_base="1.3", config_path="../conf", config_name="optimize_run")
@log_errors
def main(cfg: DictConfig) -> float:
    quiet_libraries()
    from molvae.store import locate

    obj = objective_of(cfg.objective)  # every setting is checked before any work starts
    method, budget, settings = method_options(cfg.optimize)
    if cfg.logger.name not in ("none", "wandb"):
        raise ValueError(f"logger.name must be none or wandb, got {cfg.logger.name!r}")
    locate.run_folder(cfg.run_dir)  # a run folder or pretrained:NAME (as hydra.run.dir checks)
    import molvae

    out = run_dir()
    model = molvae.load(cfg.run_dir)
    logger = make_wandb(cfg, out, f"{obj.name}-{method}-{cfg.seed}")
    try:
        if method == "constrained":
            summary = run_constrained(cfg, model, obj, settings, out)
        else:
            summary = run_search(cfg, model, obj, method, budget, settings, out, logger)
        if logger is not None:
            logger.log_summary(flat_summary(summary))
    finally:
        if logger is not None:
            logger.finish()
    folder.write_json_atomic(out / "summary.json", summary)
    log.info("summary: %s", {k: v for k, v in summary.items() if k != "config"})
    log.info("outputs in %s", out)
    return float(summary.get("auc_top10", float("nan")))


if __name__ == "__main__":
    main()
