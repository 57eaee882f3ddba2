"""Resolving a run argument: a run folder or a shipped model, checked before anything is made."""

from pathlib import Path

import pytest

from molvae.store import locate

SHIPPED = locate.PRETRAINED["moses"]


def test_a_run_folder_is_itself_its_output_and_working_folder(tmp_path):
    (tmp_path / "run.json").write_text("{}")
    assert locate.run_folder(tmp_path) == tmp_path
    assert locate.output_folder(str(tmp_path)) == tmp_path
    assert locate.working_folder(str(tmp_path), tmp_path / "elsewhere") == tmp_path
    assert not (tmp_path / "elsewhere").exists()


def test_missing_and_foreign_folders_name_the_problem(tmp_path):
    with pytest.raises(locate.RunFolderError, match="run folder .*no/such does not exist"):
        locate.output_folder(str(tmp_path / "no" / "such"))
    with pytest.raises(locate.RunFolderError, match="run.json not found"):
        locate.run_folder(tmp_path)
    with pytest.raises(
        ValueError,
        match=r"unknown pretrained model 'zinc'; available: "
        r"\['moses', 'moses_48k', 'moses_512', 'moses_512_48k', 'moses_512_72k', 'moses_72k', "
        r"'moses_cifg', 'moses_cifg_72k', 'moses_cifg_ring7', 'moses_cifg_ring7_bf16', "
        r"'moses_cifg_ring7_bf16_120k', 'moses_cifg_ring7_bf16_160k', "
        r"'moses_cifg_ring7_bf16_240k', 'moses_cifg_ring7_bf16_40k', 'moses_cifg_ring7_bf16_72k', "
        r"'moses_cifg_ring7_bf16_96k', "
        r"'moses_fb'",
    ):
        locate.run_folder("pretrained:zinc")
    assert list(tmp_path.iterdir()) == []  # checking creates nothing


@pytest.mark.parametrize("run", ["pretrained:moses", str(SHIPPED)])
def test_the_shipped_model_is_read_from_the_package_and_written_elsewhere(tmp_path, run):
    assert locate.run_folder(run) == SHIPPED
    assert locate.output_folder(run) == Path("outputs") / "pretrained-moses"
    before = sorted(p.name for p in SHIPPED.iterdir())
    out = locate.working_folder(run, tmp_path / "out")
    assert out == tmp_path / "out"
    for name in ("run.json", "vocab.json", "params.npz"):
        assert (out / name).read_bytes() == (SHIPPED / name).read_bytes()
    (out / "metrics.json").write_text('{"mine": 1}')  # a later evaluation in the copy
    locate.working_folder(run, out)
    assert (out / "metrics.json").read_text() == '{"mine": 1}'  # results are not overwritten
    assert sorted(p.name for p in SHIPPED.iterdir()) == before


@pytest.mark.parametrize("name", sorted(locate.PRETRAINED))
def test_every_shipped_model_is_complete_and_checksummed(name):
    """Each shipped model carries its parameters, vocabulary, config, MOSES metrics, held-out
    likelihood and README, and its SHA256SUMS match the files (nothing changed since export)."""
    import hashlib
    import json

    folder = locate.PRETRAINED[name]
    files = {p.name for p in folder.iterdir()}
    need = {"run.json", "vocab.json", "params.npz", "metrics.json", "likelihood.json", "README.md"}
    assert need <= files
    sums = dict(
        reversed(line.split("  ")) for line in (folder / "SHA256SUMS").read_text().splitlines()
    )
    assert files - {"SHA256SUMS", "README.md"} <= set(sums) <= files
    for fname, digest in sums.items():
        assert hashlib.sha256((folder / fname).read_bytes()).hexdigest() == digest, fname
    metrics = json.loads((folder / "metrics.json").read_text())
    assert {"valid", "FCD/Test", "SNN/Test", "Filters"} <= set(metrics)
    assert "per_symbol" in json.loads((folder / "likelihood.json").read_text())
