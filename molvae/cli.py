"""The `molvae` command: sample, encode, decode, evaluate, optimize without writing Python.

Exit codes: 0 success, 1 failure while working, 2 bad usage or bad input (message on stderr).
Arguments, files and run folders are checked before JAX is imported or a model is loaded, and
compiled programs persist in JAX's compilation cache (JAX_COMPILATION_CACHE_DIR, by default
$MOLVAE_CACHE/jax), so a repeated call does not compile again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

from molvae import fetch
from molvae.store import locate

log = logging.getLogger("molvae")
EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


# molvae.design's registered searches, named here so that --help needs no JAX start-up
# (tests/test_config.py checks the two agree).
SEARCH_METHODS = ("bo", "gradient", "lolbo")


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
    smiles = model.sample(
        a.n,
        temperature=a.temperature,
        seed=a.seed,
        greedy=a.greedy,
        strict=a.strict,
        grammar=True if a.grammar else None,
        max_ring=a.max_ring,
    )
    df = pd.DataFrame({"smiles": smiles})
    if a.properties:
        df = pd.concat([df, chem.properties(smiles)], axis=1)
    _write(df, a.output)
    return EXIT_OK


def cmd_encode(a: argparse.Namespace) -> int:
    import molvae

    smiles = _read_smiles(a.input, a.smiles_column)  # a bad file fails before the model loads
    model = molvae.load(a.run)
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

    df = pd.read_csv(a.input)
    cols = [c for c in df.columns if c.startswith("z") and c[1:].isdigit()]
    if not cols:
        raise ValueError(f"{a.input}: no latent columns z0..zN (write them with `molvae encode`)")
    model = molvae.load(a.run)
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
    from molvae.evaluation import metrics

    smiles = _read_smiles(a.input, a.smiles_column)
    train = _read_smiles(a.train, a.smiles_column) if a.train else None
    if not a.basic:
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
    from molvae.design import make_objective

    objective = make_objective(a.objective)  # an unknown name fails before the model loads
    model = molvae.load(a.run)
    result = molvae.optimize(model, objective, method=a.method, budget=a.budget, seed=a.seed)
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    result.history.to_csv(out / "history.csv", index=False)
    top = result.top(a.top)
    top.to_csv(out / "top.csv", index=False)
    print(top.to_string(index=False))
    return EXIT_OK


def _count(text: str) -> int:
    """argparse type: an integer >= 0."""
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def _positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _temperature(text: str) -> float:
    """argparse type: a float > 0."""
    t = float(text)
    if not t > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {t}")
    return t


RUN_HELP = "run folder (from experiments/train.py) or pretrained:NAME, e.g. pretrained:moses"
SMILES_FILE_HELP = ".csv (with a SMILES column), .smi or .txt file, optionally gzipped"
COLUMN_HELP = "name of the SMILES column of a .csv file (default: %(default)s)"
SEED_HELP = "random seed; the same seed gives the same result (default: %(default)s)"


def molvae_version() -> str:
    """The installed distribution's version (importlib.metadata), else the package's own."""
    try:
        return version("molvae")
    except PackageNotFoundError:  # run from a source tree that is not installed
        from molvae import __version__

        return __version__


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="molvae", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"molvae {molvae_version()}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sample", help="sample molecules from a run folder's prior")
    s.add_argument("run", help=RUN_HELP)
    s.add_argument("-n", type=_count, default=1000, help="number of samples (default %(default)s)")
    s.add_argument(
        "--temperature",
        type=_temperature,
        default=1.0,
        help="softmax temperature of stochastic decoding: < 1 sharper, > 1 more diverse "
        "(default %(default)s; ignored with --greedy)",
    )
    s.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    s.add_argument("--greedy", action="store_true", help="argmax decoding")
    s.add_argument(
        "--strict",
        action="store_true",
        help="a sample the SELFIES decoder had to repair is invalid ('') instead of kept",
    )
    s.add_argument(
        "--grammar",
        action="store_true",
        help="grammar-constrained decoding: tokens that would need a SELFIES repair are masked "
        "out at every step (default: as the model was trained)",
    )
    s.add_argument(
        "--max-ring",
        type=int,
        default=None,
        metavar="N",
        help="under the grammar, no ring of more than N atoms (7: none that the MOSES filters "
        "reject; 0: no limit; default: as the model was trained)",
    )
    s.add_argument("--properties", action="store_true", help="add qed, logp, sa, weight, plogp")
    s.add_argument("-o", "--output", help="CSV file (default: stdout)")
    s.set_defaults(fn=cmd_sample, files=())

    e = sub.add_parser("encode", help="encode a SMILES file to a latent CSV (smiles, z0..)")
    e.add_argument("run", help=RUN_HELP)
    e.add_argument("input", help=SMILES_FILE_HELP)
    e.add_argument("--smiles-column", default="SMILES", help=COLUMN_HELP)
    e.add_argument("-o", "--output", help="CSV file (default: stdout)")
    e.set_defaults(fn=cmd_encode, files=("input",))

    d = sub.add_parser("decode", help="decode a latent CSV (columns z0..zN) to SMILES")
    d.add_argument("run", help=RUN_HELP)
    d.add_argument("input", help="CSV file with columns z0..zN, as `molvae encode` writes it")
    d.add_argument("--stochastic", action="store_true", help="sample instead of argmax")
    d.add_argument("--seed", type=int, default=0, help=SEED_HELP + "; with --stochastic")
    d.add_argument("-o", "--output", help="CSV file (default: stdout)")
    d.set_defaults(fn=cmd_decode, files=("input",))

    v = sub.add_parser(
        "evaluate",
        help="MOSES metrics of a SMILES file (JSON): the full suite, as molvae.evaluate",
    )
    v.add_argument("input", help=SMILES_FILE_HELP)
    v.add_argument(
        "--reference",
        default="moses_sample",
        help="moses | moses_sample | folder of train/test/test_scaffolds files "
        "(default: %(default)s)",
    )
    v.add_argument("--train", help="training SMILES for novelty (default: the reference's)")
    v.add_argument(
        "--basic",
        action="store_true",
        help="only valid, unique@k, Novelty, IntDiv, IntDiv2 (no FCD, SNN, Frag, Scaf, "
        "filters or properties: seconds instead of minutes)",
    )
    v.add_argument("--all", action="store_true", help="the full MOSES suite (the default)")
    v.add_argument("--smiles-column", default="SMILES", help=COLUMN_HELP)
    v.add_argument("-o", "--output", help="JSON file (also printed)")
    v.set_defaults(fn=cmd_evaluate, files=("input", "train"))

    o = sub.add_parser("optimize", help="optimize an objective in a run's latent space")
    o.add_argument("run", help=RUN_HELP)
    o.add_argument(
        "--objective", default="qed", help="qed, plogp, plogp_zinc, logp, sa, ... (default qed)"
    )
    o.add_argument(
        "--method",
        default="bo",
        choices=SEARCH_METHODS,
        help="bo: Bayesian optimization; lolbo: BO in a latent space fine-tuned on the best "
        "molecules; gradient: ascent on a latent predictor (default bo)",
    )
    o.add_argument(
        "--budget", type=_positive, default=100, help="distinct molecules scored (default 100)"
    )
    o.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    o.add_argument("--top", type=_positive, default=10, help="rows of top.csv printed (default 10)")
    o.add_argument("-o", "--output", default="optimize_out", help="folder for history/top CSVs")
    o.set_defaults(fn=cmd_optimize, files=())
    return p


def check(a: argparse.Namespace) -> None:
    """What can be checked without JAX: the run folder and the input files (raises ValueError
    or FileNotFoundError naming them)."""
    if a.command == "evaluate" and a.basic and a.all:
        raise ValueError("--basic and --all exclude each other")
    if "run" in a:
        locate.run_folder(a.run)
    for name in a.files:
        path = getattr(a, name)
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")


def enable_compilation_cache() -> None:
    """Persist compiled programs across calls (JAX reads the variable when it is imported): a
    second `molvae sample` on the same model does not compile again. An existing
    JAX_COMPILATION_CACHE_DIR is honoured."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(fetch.cache_dir() / "jax")
    # the decode loop and the encoder compile in 0.2-3 s each: keep them all
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in ("absl", "jax._src.xla_bridge", "orbax"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        check(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"molvae {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    from molvae.runtime import tune_allocator

    tune_allocator()  # before JAX starts its threads (see molvae/runtime.py)
    enable_compilation_cache()
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
