"""The `molvae` command on a tiny run folder: outputs, bad input, exit codes."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

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
    assert main(["evaluate", str(samples), "--smiles-column", "smiles", "-o", str(scores)]) == 0
    m = json.loads(scores.read_text())
    assert 0 <= m["valid"] <= 1 and "Novelty" in m and np.isfinite(m["IntDiv"])


def test_bad_input_exit_codes(tiny_run, tmp_path, capsys):
    assert main(["encode", str(tiny_run), str(tmp_path / "missing.smi")]) == EXIT_USAGE
    assert "missing.smi" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "no_run"), "-n", "2"]) == EXIT_USAGE
    bad = tmp_path / "z.csv"
    pd.DataFrame({"z0": [0.1]}).to_csv(bad, index=False)
    assert main(["decode", str(tiny_run), str(bad)]) == EXIT_USAGE
    assert "latent columns" in capsys.readouterr().err


def test_console_script_is_installed(tiny_run):
    exe = [sys.executable, "-m", "molvae.cli", "sample", str(tiny_run), "-n", "3"]
    proc = subprocess.run(exe, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "smiles" and len(proc.stdout.splitlines()) == 4
