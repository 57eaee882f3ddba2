"""The `molvae` command on a tiny run folder: outputs, bad input, exit codes."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import molvae
from molvae import cli
from molvae.cli import EXIT_OK, EXIT_USAGE, main


def test_help_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "sample" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["sample"])  # missing run folder
    assert e.value.code == EXIT_USAGE


def test_sample_encode_decode_evaluate(tiny_run, tmp_path):
    samples = tmp_path / "s.csv"
    assert (
        main(
            ["sample", str(tiny_run), "-n", "20", "--seed", "3", "--properties", "-o", str(samples)]
        )
        == EXIT_OK
    )
    df = pd.read_csv(samples, keep_default_na=False)
    assert len(df) == 20 and {"smiles", "qed", "sa"} <= set(df.columns)
    gram = tmp_path / "g.csv"  # grammar-constrained: the API's samples for the same seed
    assert (
        main(["sample", str(tiny_run), "-n", "20", "--seed", "3", "--grammar", "-o", str(gram)])
        == 0
    )
    got = pd.read_csv(gram, keep_default_na=False)["smiles"].tolist()
    assert got == molvae.load(tiny_run).sample(20, seed=3, grammar=True)
    ring = tmp_path / "r.csv"  # with a ring-size limit: the API's samples again
    argv = ["sample", str(tiny_run), "-n", "20", "--seed", "3", "--max-ring", "5", "-o", str(ring)]
    assert main(argv) == 0
    got = pd.read_csv(ring, keep_default_na=False)["smiles"].tolist()
    assert got == molvae.load(tiny_run).sample(20, seed=3, max_ring=5)

    mols = tmp_path / "mols.smi"
    mols.write_text("CCO\nnot_a_molecule\nc1ccccc1\n")
    lat = tmp_path / "z.csv"
    assert main(["encode", str(tiny_run), str(mols), "-o", str(lat)]) == EXIT_OK
    z = pd.read_csv(lat)
    assert len(z) == 3 and z.filter(like="z").iloc[1].isna().all()
    out = tmp_path / "dec.csv"
    assert main(["decode", str(tiny_run), str(lat), "-o", str(out)]) == EXIT_OK
    dec = pd.read_csv(out, keep_default_na=False)["smiles"].tolist()
    assert len(dec) == 3 and dec[1] == ""

    scores = tmp_path / "m.json"
    args = ["evaluate", str(samples), "--smiles-column", "smiles", "--basic", "-o", str(scores)]
    assert main(args) == 0
    m = json.loads(scores.read_text())
    assert m["valid"] == (df["smiles"] != "").mean() and "Novelty" in m and np.isfinite(m["IntDiv"])

    strict = tmp_path / "strict.csv"
    args = ["sample", str(tiny_run), "-n", "20", "--seed", "3", "--strict", "-o", str(strict)]
    assert main(args) == EXIT_OK
    got = pd.read_csv(strict, keep_default_na=False)["smiles"].tolist()
    assert got == molvae.load(tiny_run).sample(20, seed=3, strict=True)
    assert all(g in ("", s) for g, s in zip(got, df["smiles"], strict=True))


def test_bad_input_exit_codes(tiny_run, tmp_path, capsys):
    assert main(["encode", str(tiny_run), str(tmp_path / "missing.smi")]) == EXIT_USAGE
    assert "missing.smi" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "no_run"), "-n", "2"]) == EXIT_USAGE
    bad = tmp_path / "z.csv"
    pd.DataFrame({"z0": [0.1]}).to_csv(bad, index=False)
    assert main(["decode", str(tiny_run), str(bad)]) == EXIT_USAGE
    assert "latent columns" in capsys.readouterr().err


def test_console_script_is_installed_and_fills_the_compilation_cache(tiny_run, tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["MOLVAE_CACHE"] = str(tmp_path)
    exe = [sys.executable, "-m", "molvae.cli", "sample", str(tiny_run), "-n", "3"]
    proc = subprocess.run(exe, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "smiles" and len(proc.stdout.splitlines()) == 4
    assert list((tmp_path / "jax").iterdir())  # compiled programs, reused by the next call


def test_version_comes_from_the_installed_distribution(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"molvae {version('molvae')}"


def test_every_option_has_help():
    def actions(p):
        for a in p._actions:
            if isinstance(a, cli.argparse._SubParsersAction):
                for sub in a.choices.values():
                    yield from actions(sub)
            else:
                yield p.prog, a

    found = list(actions(cli.parser()))
    assert len(found) > 30
    missing = [(prog, a.dest) for prog, a in found if not a.help]
    assert missing == []


def test_evaluate_defaults_to_the_full_suite_like_the_python_function(monkeypatch, tmp_path):
    from molvae.evaluation import metrics

    calls = []
    monkeypatch.setattr(metrics, "evaluate", lambda s, **kw: calls.append("all") or {"valid": 1})
    monkeypatch.setattr(metrics, "basic_metrics", lambda s, t: calls.append("basic") or {})
    src = tmp_path / "s.smi"
    src.write_text("CCO\n")
    assert main(["evaluate", str(src)]) == EXIT_OK
    assert main(["evaluate", str(src), "--all"]) == EXIT_OK
    assert main(["evaluate", str(src), "--basic", "--train", str(src)]) == EXIT_OK
    assert calls == ["all", "all", "basic"]
    assert main(["evaluate", str(src), "--basic", "--all"]) == EXIT_USAGE


BAD_CALLS = [
    (["sample", "no/such/run", "-n", "3"], "run folder no/such/run does not exist"),
    (["sample", "pretrained:nothing"], "unknown pretrained model 'nothing'"),
    (["encode", "pretrained:moses", "missing.smi"], "missing.smi: no such file"),
    (["decode", "pretrained:moses", "missing.csv"], "missing.csv: no such file"),
    (["evaluate", "missing.smi"], "missing.smi: no such file"),
    (["sample", "pretrained:moses", "-n", "-1"], "argument -n: must be >= 0"),
    (["sample", "pretrained:moses", "--temperature", "0"], "must be > 0"),
    (["optimize", "pretrained:moses", "--budget", "0"], "argument --budget: must be >= 1"),
]


def test_bad_arguments_fail_before_jax_is_imported(tmp_path):
    """One process for all the calls: after them, JAX must still not have been imported."""
    script = (
        "import sys\n"
        "from molvae.cli import main\n"
        f"for argv in {[argv for argv, _ in BAD_CALLS]!r}:\n"
        "    try:\n"
        "        rc = main(argv)\n"
        "    except SystemExit as e:\n"
        "        rc = e.code\n"
        "    print('rc', rc, flush=True)\n"
        "print('jax imported:', 'jax' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.splitlines() == [f"rc {EXIT_USAGE}"] * len(BAD_CALLS) + [
        "jax imported: False"
    ], proc.stderr[-2000:]
    for _, message in BAD_CALLS:
        assert message in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_compilation_cache_dir_defaults_under_molvae_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("MOLVAE_CACHE", str(tmp_path))
    cli.enable_compilation_cache()
    assert cli.os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "jax")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    cli.enable_compilation_cache()  # the user's own setting is kept
    assert cli.os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "mine")
