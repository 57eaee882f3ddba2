"""Sample molecules from a trained run: python experiments/sample.py run_dir=DIR n=30000.

run_dir=pretrained:moses samples the shipped model into outputs/pretrained-moses/.
"""

import hydra
from _common import log, log_errors, quiet_libraries, run_dir
from omegaconf import DictConfig

from molvae.store import folder, names


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
@log_errors
def main(cfg: DictConfig) -> None:
    quiet_libraries()
    import molvae
    from molvae.store import locate

    out = locate.working_folder(cfg.run_dir, run_dir())  # a shipped model: a copy in run_dir()
    model = molvae.load(out, decode_dtype=cfg.decode_dtype)
    smiles = model.sample(
        cfg.n,
        temperature=cfg.temperature,
        seed=cfg.seed,
        greedy=cfg.greedy,
        strict=cfg.strict,
        grammar=cfg.grammar,
        max_ring=cfg.max_ring,
    )
    df = folder.write_samples(out, smiles)
    stale = out / names.EVAL_JSON
    if stale.exists():  # it scored the samples just replaced
        stale.unlink()
        log.info("removed %s (it scored the previous samples): run evaluate.py", stale)
    log.info(
        "%d samples, %.1f%% valid -> %s", len(df), 100 * df["valid"].mean(), out / names.SAMPLES_CSV
    )


if __name__ == "__main__":
    main()
