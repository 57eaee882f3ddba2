"""The `molvae` command: sample, encode, decode, evaluate, optimize without writing Python.

Exit codes: 0 success, 1 failure while working, 2 bad usage or bad input (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger("molvae")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def _read_smiles(path: str, column: str) -> list[str]:
    from molvae.data import read_smiles_file

    return [str(s) for s in read_smiles_file(path, smiles_column=column)["smiles"]]


def _write(df: pd.DataFrame, out: str | None) -> None:
    if out:
        df.to_csv(out, index=False)
        log.info("wrote %d rows to %s", len(df), out)
    else:
        df.to_csv(sys.stdout, index=False)


def cmd_sample(a: argparse.Namespace) -> int:
    import molvae
    from molvae import chem

    model = molvae.load(a.run)
    smiles = model.sample(a.n, temperature=a.temperature, seed=a.seed, greedy=a.greedy)
    df = pd.DataFrame({"smiles": smiles})
    if a.properties:
        df = pd.concat([df, chem.properties(smiles)], axis=1)
    _write(df, a.output)
    return EXIT_OK


def cmd_encode(a: argparse.Namespace) -> int:
    import molvae

    model = molvae.load(a.run)
    smiles = _read_smiles(a.input, a.smiles_column)
    z = model.encode(smiles, errors="nan")
    bad = int(np.isnan(z).any(1).sum())
    if bad:
        log.warning("%d of %d molecules could not be encoded (rows left empty)", bad, len(z))
    df = pd.DataFrame(z, columns=[f"z{i}" for i in range(z.shape[1])])
    df.insert(0, "smiles", smiles)
    _write(df, a.output)
    return EXIT_OK


def cmd_decode(a: argparse.Namespace) -> int:
    import molvae

    model = molvae.load(a.run)
    df = pd.read_csv(a.input)
    cols = [c for c in df.columns if c.startswith("z") and c[1:].isdigit()]
    if len(cols) != model.latent_dim:
        raise ValueError(
            f"{a.input}: {len(cols)} latent columns z0..zN, the model has {model.latent_dim}"
        )
    z = df[cols].to_numpy(np.float32)
    ok = ~np.isnan(z).any(1)
    out = np.array([""] * len(z), dtype=object)
    out[ok] = model.decode(z[ok], greedy=not a.stochastic, seed=a.seed)
    _write(pd.DataFrame({"smiles": out}), a.output)
    return EXIT_OK


def cmd_evaluate(a: argparse.Namespace) -> int:
    from molvae import metrics

    smiles = _read_smiles(a.input, a.smiles_column)
    train = _read_smiles(a.train, a.smiles_column) if a.train else None
    if a.all:
        scores = metrics.evaluate(smiles, reference=a.reference, train_smiles=train)
    else:
        if train is None:
            ref = metrics.reference_files(a.reference)
            train = _read_smiles(str(ref["train"]), "SMILES") if "train" in ref else None
        scores = metrics.basic_metrics(smiles, train)
    text = json.dumps(scores, indent=1)
    if a.output:
        Path(a.output).write_text(text)
    print(text)
    return EXIT_OK


def cmd_optimize(a: argparse.Namespace) -> int:
    import molvae

    model = molvae.load(a.run)
    result = molvae.optimize(model, a.objective, method=a.method, budget=a.budget, seed=a.seed)
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    result.history.to_csv(out / "history.csv", index=False)
    top = result.top(a.top)
    top.to_csv(out / "top.csv", index=False)
    print(top.to_string(index=False))
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="molvae", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="sample molecules from a run folder's prior")
    s.add_argument("run", help="run folder or pretrained:NAME")
    s.add_argument("-n", type=int, default=1000, help="number of samples (default 1000)")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--greedy", action="store_true", help="argmax decoding")
    s.add_argument("--properties", action="store_true", help="add qed, logp, sa, weight, plogp")
    s.add_argument("-o", "--output", help="CSV file (default: stdout)")
    s.set_defaults(fn=cmd_sample)

    e = sub.add_parser("encode", help="encode a SMILES file to a latent CSV (smiles, z0..)")
    e.add_argument("run")
    e.add_argument("input", help=".csv/.smi/.txt file of SMILES")
    e.add_argument("--smiles-column", default="SMILES")
    e.add_argument("-o", "--output")
    e.set_defaults(fn=cmd_encode)

    d = sub.add_parser("decode", help="decode a latent CSV (columns z0..zN) to SMILES")
    d.add_argument("run")
    d.add_argument("input")
    d.add_argument("--stochastic", action="store_true", help="sample instead of argmax")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("-o", "--output")
    d.set_defaults(fn=cmd_decode)

    v = sub.add_parser("evaluate", help="MOSES metrics of a SMILES file (JSON)")
    v.add_argument("input")
    v.add_argument("--reference", default="moses_sample", help="moses | moses_sample | folder")
    v.add_argument("--train", help="training SMILES for novelty (default: the reference's)")
    v.add_argument("--all", action="store_true", help="the full MOSES suite (FCD, SNN, ...)")
    v.add_argument("--smiles-column", default="SMILES")
    v.add_argument("-o", "--output", help="JSON file")
    v.set_defaults(fn=cmd_evaluate)

    o = sub.add_parser("optimize", help="optimize an objective in a run's latent space")
    o.add_argument("run")
    o.add_argument("--objective", default="qed", help="qed, plogp, logp, sa, ...")
    o.add_argument("--method", default="bo", choices=["bo", "gradient"])
    o.add_argument("--budget", type=int, default=100, help="distinct molecules scored")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--top", type=int, default=10)
    o.add_argument("-o", "--output", default="optimize_out", help="folder for history/top CSVs")
    o.set_defaults(fn=cmd_optimize)
    return p


def main(argv: list[str] | None = None) -> int:
    from molvae.runtime import tune_allocator

    tune_allocator()  # before JAX starts its threads (see molvae/runtime.py)
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in ("absl", "jax._src.xla_bridge", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, KeyError) as e:  # bad input: say what and where
        print(f"molvae {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - a script needs a non-zero code, not a traceback
        log.debug("failure", exc_info=True)
        print(f"molvae {args.command}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
