"""Carry a run folder to another machine with one checkpoint, so a long run outlives its machine.

    .venv/bin/python scripts/carry_run.py pack outputs/moses_bf16_120k trunk.tar.gz [--step S]
    .venv/bin/python scripts/carry_run.py unpack trunk.tar.gz outputs/moses_bf16_120k

`pack` writes a gzipped tar of the run folder with checkpoint S only (default: the latest
complete one; parameters, optimizer state and the meta record with step and CPU seconds) and
every file outside `checkpoints/` (the Hydra config, run.json, vocab.json, metrics.jsonl, logs).
`unpack` extracts it into a folder (refusing to replace a checkpoint at or past the packed step);
the run's own command with `hydra.run.dir` set to that folder then resumes it exactly where it
stopped: batches are a function of the step, so the continuation is the one the first machine
would have trained (tests/test_train.py checks it bit for bit). A constant-rate checkpoint of a
1.14 M-parameter model packs to ~12 MB (parameters plus Adam's two moments); README: "Runs that
span machines".
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

from molvae.store.checkpoints import checkpoint_steps
from molvae.store.names import CHECKPOINTS


def pack(run_dir: Path, out: Path, step: int | None = None) -> int:
    """Write run_dir with checkpoint `step` (default: the latest) to the .tar.gz `out`.
    Returns the step packed."""
    run_dir = Path(run_dir)
    steps = checkpoint_steps(run_dir)
    if not steps:
        raise SystemExit(f"{run_dir}: no complete checkpoint to pack")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise SystemExit(f"{run_dir}: no checkpoint at step {step}; have {steps}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def keep(path: Path) -> bool:
        rel = path.relative_to(run_dir)
        if path.resolve() == out.resolve():  # never the archive itself
            return False
        if rel.parts[0] != CHECKPOINTS:
            return True
        return len(rel.parts) == 2 or rel.parts[1] == str(step)  # checkpoints/ files, step S

    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(run_dir.rglob("*")):
            if path.is_file() and keep(path):
                tar.add(path, arcname=str(path.relative_to(run_dir)), recursive=False)
    return step


def unpack(archive: Path, run_dir: Path) -> int:
    """Extract a packed run into run_dir. Returns the step of its checkpoint."""
    run_dir = Path(run_dir)
    with tarfile.open(archive, "r:gz") as tar:
        names = tar.getnames()
        packed = {int(n.split("/")[1]) for n in names if n.startswith(f"{CHECKPOINTS}/")
                  and n.split("/")[1].isdigit()}  # fmt: skip
        if len(packed) != 1:
            raise SystemExit(f"{archive}: want one checkpoint in a packed run, found {packed}")
        (step,) = packed
        have = [s for s in checkpoint_steps(run_dir) if s >= step] if run_dir.exists() else []
        if have:
            raise SystemExit(
                f"{run_dir} already has checkpoint {have[-1]} (>= the packed {step}); "
                "nothing to unpack (resume that folder instead)"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        tar.extractall(run_dir, filter="data")  # no absolute paths, links or '..' out of run_dir
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="run folder -> .tar.gz with one checkpoint")
    p.add_argument("run_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--step", type=int, default=None, help="checkpoint to pack (default: latest)")
    u = sub.add_parser("unpack", help=".tar.gz -> run folder that resumes")
    u.add_argument("archive", type=Path)
    u.add_argument("run_dir", type=Path)
    args = ap.parse_args()
    if args.cmd == "pack":
        step = pack(args.run_dir, args.out, args.step)
        size = args.out.stat().st_size / 2**20
        print(f"packed {args.run_dir} at step {step} into {args.out} ({size:.1f} MiB)")
    else:
        step = unpack(args.archive, args.run_dir)
        print(f"unpacked step {step} into {args.run_dir}; resume with the run's own command")


if __name__ == "__main__":
    main()
