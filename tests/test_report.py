"""The run report: its figures from a tiny run folder; tables, links, missing inputs."""

from __future__ import annotations

import json
import shutil

import matplotlib.image as mpimg
import pytest

from molvae.evaluation import report
from molvae.evaluation import run as run_eval
from molvae.evaluation.metrics import basic_metrics
from molvae.store import folder, names

FIGURES = (
    "samples_grid.png",
    "properties.png",
    "latent_pca.png",
    "training_losses.png",
    "training_accuracy.png",
    "reconstructions.png",
)
DRUGS = ["CC(=O)Oc1ccccc1C(=O)O", "CC(=O)Nc1ccc(O)cc1", "CC(C)Cc1ccc(C(C)C(=O)O)cc1"]


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """The session's tiny run, copied so writing samples and metrics leaves it untouched."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def _assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    img = mpimg.imread(path)  # (H, W, channels) floats in [0, 1]
    assert img.shape[0] >= 150 and img.shape[1] >= 150, (path, img.shape)
    assert img.std() > 0.02, f"{path} is blank"


@pytest.mark.filterwarnings("ignore:Can't compute unique")  # 23 molecules < 1000
def test_report_renders_all_figures_and_tables(run_copy):
    train = folder.train_smiles_of_run(run_copy)
    smiles = train[:20] + DRUGS + [""]  # 23 valid (3 novel), 1 failed decode
    folder.write_samples(run_copy, smiles)
    scores = basic_metrics(smiles, train, n_jobs=1)
    assert scores["valid"] == pytest.approx(23 / 24)
    meta = {"n_samples": len(smiles), "reference": "moses_sample"}
    folder.write_json_atomic(run_copy / names.EVAL_JSON, meta | scores)
    run_eval.test_likelihood(run_copy, n=30, k=4)

    path = report.write_report(run_copy, n_grid=12, n_latent=300)

    assert path == run_copy / "report.md"
    text = path.read_text(encoding="utf-8")
    for name in FIGURES:
        _assert_png(run_copy / "figures" / name)
        assert f"](figures/{name})" in text, name
    assert "> " not in text.replace("> Test/TestSF", ""), "no section should be skipped"
    # Baseline table: our computed values beside the published ones, '—' where not computed.
    assert "| metric | molvae (this run) | MOSES train set | VAE | CharRNN | JTN-VAE |" in text
    assert "| valid ↑ | 0.9583 | 1.0000 | 0.9767 | 0.9748 | 1.0000 |" in text
    assert f"| Novelty ↑ | {3 / 23:.4f} | 1.0000 | 0.6949 | 0.8419 | 0.9143 |" in text
    assert "| FCD/Test ↓ | — | 0.0080 | 0.0990 | 0.0732 | 0.3954 |" in text
    assert "Polykovskiy et al." in text
    # Training summary from metrics.jsonl: the tiny run trained 30 steps.
    assert "| steps | 30 |" in text
    assert "### Validation" in text and "val_recon_acc" in text
    assert "of 8 exact" in text  # eight reconstructions drawn and tabulated


def test_report_skips_missing_inputs_with_a_note(run_copy):
    # No samples.csv, no metrics.json (as the fixture is); the model and test set are there.
    path = report.write_report(run_copy, n_latent=50)
    text = path.read_text(encoding="utf-8")
    assert "No `metrics.json` yet" in text and "No `samples.csv`" in text
    assert "| valid ↑ | — | 1.0000 | 0.9767 |" in text  # baselines still shown
    assert not (run_copy / "figures" / "samples_grid.png").exists()
    for name in ("latent_pca.png", "training_losses.png", "reconstructions.png"):
        _assert_png(run_copy / "figures" / name)


def test_report_of_a_bare_folder_does_not_fail(tmp_path):
    # Only training records: no run.json (so no model, no data), no samples, no metrics.
    recs = [{"step": s, "loss": 10.0 / s, "recon": 9.0 / s, "kl": 1.0, "beta": 0.1} for s in (1, 2)]
    (tmp_path / names.METRICS_JSONL).write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = report.write_report(tmp_path).read_text(encoding="utf-8")
    assert text.count("Skipped: RunFolderError") == 2  # latent space, reconstructions
    assert "No validation records yet" in text
    _assert_png(tmp_path / "figures" / "training_losses.png")
