"""Where a model lives: a run folder or a shipped model ('pretrained:NAME'), checked without JAX.

Every entry point (molvae.load, the `molvae` command, the Hydra scripts) resolves its run argument
here first, so a mistyped path is an error before anything is imported, loaded or created.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from molvae.store.names import PARAMS_NPZ, RUN_JSON, RunFolderError

PRETRAINED_PREFIX = "pretrained:"
_ASSETS = Path(__file__).parents[1] / "assets" / "pretrained"
# moses: the first MOSES model (KL weight 0.5, cosine); moses_fb: KL weight 1 with free bits,
# constant rate then a cool-down (issue "realistic molecules"); moses_grammar: its cool-down under
# the grammar mask; moses_48k: experiment=moses_48k; moses_72k: experiment=moses_72k; moses_512:
# experiment=moses_gru512 (GRU 1 x 512); moses_512_48k: experiment=moses_512_48k, the same
# trained to 48,000 steps; moses_512_72k: experiment=moses_512_72k, to 72,000 steps, the best
# GRU sampler; moses_cifg: experiment=moses on canonical strings (CIFG 1 x 512); moses_cifg_ring7:
# experiment=moses's branch, the ring-size limit trained in; moses_cifg_ring7_bf16:
# experiment=moses_30k as one run (bfloat16 matmul operands); moses_cifg_ring7_bf16_40k:
# experiment=moses (40,000 steps); moses_cifg_ring7_bf16_72k: experiment=moses_bf16_72k, the
# same to 72,000 steps; moses_cifg_ring7_bf16_96k: experiment=moses_bf16_96k, to 96,000 steps;
# moses_cifg_ring7_bf16_120k: experiment=moses_bf16_120k, to 120,000 steps;
# moses_cifg_ring7_bf16_160k: experiment=moses_bf16_160k, to 160,000 steps;
# moses_cifg_ring7_bf16_240k: experiment=moses_bf16_240k, to 240,000 steps, the best sampler;
# moses_cifg_72k: experiment=moses_cifg512_72k, the CIFG
# on canonical strings in float32 to 72,000 steps; see each folder's README.md
PRETRAINED = {
    name: _ASSETS / name
    for name in (
        "moses",
        "moses_48k",
        "moses_512",
        "moses_512_48k",
        "moses_512_72k",
        "moses_72k",
        "moses_cifg",
        "moses_cifg_72k",
        "moses_cifg_ring7",
        "moses_cifg_ring7_bf16",
        "moses_cifg_ring7_bf16_40k",
        "moses_cifg_ring7_bf16_72k",
        "moses_cifg_ring7_bf16_96k",
        "moses_cifg_ring7_bf16_120k",
        "moses_cifg_ring7_bf16_160k",
        "moses_cifg_ring7_bf16_240k",
        "moses_fb",
        "moses_grammar",
    )
}


def pretrained_name(run: str | Path) -> str | None:
    """'moses' for 'pretrained:moses' or for the path of its folder inside the package; None for
    any other path."""
    if isinstance(run, str) and run.startswith(PRETRAINED_PREFIX):
        return run[len(PRETRAINED_PREFIX) :]
    where = Path(run).resolve()
    return next((name for name, f in PRETRAINED.items() if f.resolve() == where), None)


def run_folder(run: str | Path) -> Path:
    """The folder of a run: `run` itself, or the shipped model's folder for 'pretrained:NAME'.

    Raises:
      ValueError: an unknown pretrained name (the message lists the available ones).
      RunFolderError: the folder does not exist, or holds no run.json.
    """
    name = pretrained_name(run)
    if name is not None:
        if name not in PRETRAINED:
            raise ValueError(f"unknown pretrained model {name!r}; available: {sorted(PRETRAINED)}")
        folder = PRETRAINED[name]
        if not (folder / PARAMS_NPZ).exists():
            raise RunFolderError(
                f"the pretrained model {name!r} is not shipped in this installation ({folder})"
            )
        return folder
    folder = Path(run)
    if not folder.is_dir():
        raise RunFolderError(f"run folder {folder} does not exist")
    if not (folder / RUN_JSON).exists():
        raise RunFolderError(f"{folder / RUN_JSON} not found: is {folder} a molvae run folder?")
    return folder


def output_folder(run: str | Path) -> Path:
    """Where sample/evaluate/optimize write for `run`: the run folder itself, or
    outputs/pretrained-NAME (relative to the working directory) for a shipped model, whose
    folder inside the installed package is never written to. Checks `run` (see run_folder)."""
    folder = run_folder(run)
    name = pretrained_name(run)
    return Path("outputs") / f"pretrained-{name}" if name is not None else folder


# A shipped model's files that define it (copied afresh) and its measured results (kept once
# copied: a later evaluate.py overwrites metrics.json in the copy, never in the package).
_MODEL_FILES = ("run.json", "vocab.json", "params.npz", "predictor.json", "predictor.npz")
_RESULT_FILES = ("metrics.json", "likelihood.json")


def working_folder(run: str | Path, out: str | Path) -> Path:
    """The run folder a script reads and writes for `run`: the run folder itself; for a shipped
    model, `out` (see output_folder) holding a copy of the model's files, so that samples,
    metrics and the report land there and the installed package is never written to."""
    folder = run_folder(run)
    if pretrained_name(run) is None:
        return folder
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (*_MODEL_FILES, *_RESULT_FILES):
        src, dst = folder / name, out / name
        if src.exists() and (name in _MODEL_FILES or not dst.exists()):
            shutil.copyfile(src, dst)
    return out
