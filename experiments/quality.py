"""Quality per compute: score every checkpoint of the quality arms on one fixed protocol and
draw the learning curves.

    python experiments/train.py experiment=quality/gru256 hydra.run.dir=outputs/quality/gru256
    python experiments/quality.py runs='[outputs/quality/gru256,outputs/quality/gru512x2]'

Writes OUT/quality.csv (one row per run and checkpoint), OUT/quality.md (the last checkpoint of
each run, and every run at the largest CPU time all runs reached), OUT/quality_curves.png,
OUT/quality_rate_distortion.png and, from each run's metrics.jsonl (free at every validation),
OUT/quality_validation.{csv,png}.
"""

from pathlib import Path

import hydra
from _common import log, quiet_libraries
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="../conf", config_name="quality")
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    from molvae.evaluation import quality

    if not cfg.runs and not cfg.models:
        raise SystemExit("give the run folders: runs='[outputs/quality/gru256,...]'")
    missing = [r for r in cfg.runs if not Path(r, "run.json").exists()]
    if missing:
        raise SystemExit(f"not run folders (no run.json): {missing}")
    protocol = {k: cfg[k] for k in ("n", "ref_n", "recon_n", "iw_k", "seed")}
    steps = OmegaConf.to_container(cfg.steps) if cfg.steps is not None else None
    scores = []
    for run in cfg.runs:
        scores += quality.score_run(Path(run), protocol, steps, cfg.every, cfg.n_jobs)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in cfg.models:  # finished models (pretrained:moses) scored once, as reference rows
        scores.append(quality.score_fixed(name, protocol, out, cfg.n_jobs))
    df = quality.table(scores)
    df.to_csv(out / "quality.csv", index=False)
    last = df.groupby("run").tail(1)
    common = df.groupby("run")["cpu_s"].max().min()  # CPU time every run has reached (nan: none)
    at_common = df[df["cpu_s"] <= common * 1.05].groupby("run").tail(1)
    md = [
        f"Protocol: {protocol}",
        "",
        "Last checkpoint of each run:",
        "",
        quality.markdown(last),
        "",
        f"Each run at ~{common:.0f} CPU s (the most every run reached):",
        "",
        quality.markdown(at_common),
    ]
    (out / "quality.md").write_text("\n".join(md) + "\n")
    quality.plot_curves(df, out / "quality_curves.png")
    quality.plot_rate_distortion(df, out / "quality_rate_distortion.png")
    val = quality.validation_table([Path(r) for r in cfg.runs])
    if len(val):
        val.to_csv(out / "quality_validation.csv", index=False)
        quality.plot_validation(val, out / "quality_validation.png")
    log.info("wrote %s", ", ".join(str(out / f) for f in ("quality.csv", "quality.md")))
    log.info("\n%s", last.to_string(index=False))


if __name__ == "__main__":
    main()
