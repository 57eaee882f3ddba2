"""Ship a trained run as a package model: molvae/assets/pretrained/<name>/.

    .venv/bin/python scripts/export_pretrained.py outputs/moses --name moses

Copies run.json (as data: the architecture, max length and the resolved config the run was
trained with) and vocab.json, writes params.npz (parameters only, float32, compressed, no pickle)
from the run's params.npz or latest checkpoint, copies the run's metrics.json, likelihood.json
and predictor.{json,npz} if present, and writes a SHA256SUMS file.
`molvae.load("pretrained:<name>")` then works offline. The folder's README.md (provenance,
licence, figures) is written by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import molvae
from molvae.store import names
from molvae.store.params import save_npz

ASSETS = Path(__file__).resolve().parents[1] / "molvae" / "assets" / "pretrained"
OPTIONAL = ("metrics.json", "likelihood.json", "predictor.json", "predictor.npz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--name", default="moses")
    args = ap.parse_args()
    out = ASSETS / args.name
    out.mkdir(parents=True, exist_ok=True)
    model = molvae.load(args.run_dir)  # params.npz or the latest checkpoint, checked
    info = json.loads((args.run_dir / names.RUN_JSON).read_text(encoding="utf-8"))
    info["config"].pop("hydra", None)  # machine-specific paths; not needed to load
    train = info["config"].get("train", {})
    if train.get("init_from"):  # a branch: name its parent as the experiment config does
        parent = Path(train["init_from"])
        train["init_from"] = str(Path(*parent.parts[-3:])) if parent.is_absolute() else str(parent)
    (out / names.RUN_JSON).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    shutil.copy(args.run_dir / names.VOCAB_JSON, out / names.VOCAB_JSON)
    save_npz(model.model, out / names.PARAMS_NPZ)
    for name in OPTIONAL:
        if (args.run_dir / name).exists():
            shutil.copy(args.run_dir / name, out / name)
    files = sorted(p for p in out.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    sums = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in files]
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")
    again = molvae.load(f"pretrained:{args.name}")
    assert again.sample(64, seed=0) == model.sample(64, seed=0), "exported model differs"
    size = sum(p.stat().st_size for p in files) / 1e6
    print(f"wrote {out} ({size:.2f} MB): {', '.join(p.name for p in files)}")


if __name__ == "__main__":
    main()
