"""Average the parameters of a run's checkpoints into a model folder (latest weight averaging).

    .venv/bin/python scripts/average_checkpoints.py outputs/gru512_trunk 36000:40000:400 \
        --out outputs/gru512_trunk-avg36-40k

STEPS is a comma-separated list of steps and/or START:STOP:STRIDE ranges (STOP included); every
step must have a checkpoint. Writes OUT/params.npz (the arithmetic mean of the parameters, no
pickle), OUT/vocab.json and OUT/run.json (the run's, with an `averaged` record of the run and
steps), so `molvae.load(OUT)`, `experiments/sample.py run_dir=OUT` and `experiments/quality.py
models=[OUT]` work on it. The mean of checkpoints along a constant learning rate approximates
what a learning-rate cool-down buys (Izmailov et al. 2018; Sanyal et al. 2023, LAWA) at no
training cost; README: Sample quality, "Averaging checkpoints".
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import jax
import numpy as np
from flax import nnx

import molvae
from molvae.store import names
from molvae.store.checkpoints import checkpoint_meta, checkpoint_steps
from molvae.store.params import save_npz


def parse_steps(text: str) -> list[int]:
    """'36000:40000:400,42000' -> [36000, 36400, ..., 40000, 42000] (ranges include STOP)."""
    steps: list[int] = []
    for part in text.split(","):
        if ":" in part:
            start, stop, stride = (int(x) for x in part.split(":"))
            if stride <= 0 or stop < start:
                raise ValueError(f"bad range {part!r}: want START:STOP:STRIDE, STOP >= START")
            steps += list(range(start, stop + 1, stride))
        else:
            steps.append(int(part))
    return sorted(set(steps))


def average(run_dir: Path, steps: list[int]) -> molvae.MolVAE:
    """The run's model with the mean of its parameters at `steps` (each a checkpoint)."""
    have = set(checkpoint_steps(run_dir))
    missing = [s for s in steps if s not in have]
    if missing:
        raise SystemExit(f"{run_dir}: no checkpoint at steps {missing}; have {sorted(have)}")
    total = None
    for step in steps:
        out = molvae.load(run_dir, step=step)  # the last one carries the mean
        params = nnx.state(out.model, nnx.Param)
        leaves = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
        total = leaves if total is None else jax.tree.map(np.add, total, leaves)
    mean = jax.tree.map(lambda x, ref: (x / len(steps)).astype(ref.dtype), total, params)
    nnx.update(out.model, mean)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("steps", help="e.g. 36000:40000:400 or 44000,46000,48000")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    steps = parse_steps(args.steps)
    model = average(args.run_dir, steps)
    args.out.mkdir(parents=True, exist_ok=True)
    info = json.loads((args.run_dir / names.RUN_JSON).read_text(encoding="utf-8"))
    last = checkpoint_meta(args.run_dir, steps[-1])
    info["averaged"] = {"run": str(args.run_dir), "steps": steps, **last}
    (args.out / names.RUN_JSON).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    shutil.copy(args.run_dir / names.VOCAB_JSON, args.out / names.VOCAB_JSON)
    save_npz(model.model, args.out / names.PARAMS_NPZ)
    print(f"wrote {args.out}: the mean of {len(steps)} checkpoints, steps {steps[0]}..{steps[-1]}")


if __name__ == "__main__":
    main()
