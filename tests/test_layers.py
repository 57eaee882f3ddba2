"""The package's layers (pyproject.toml, [tool.importlinter]): kept, and able to fail."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `lint-imports` on the molvae package found first from `where` (the editable install's finder,
# which would always find this checkout, is set aside).
LINT = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]
from importlinter.cli import lint_imports
sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))"""


def _lint(where: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", LINT, str(ROOT / "pyproject.toml")]
    return subprocess.run(cmd, cwd=where, capture_output=True, text=True, timeout=300)


def test_every_import_flows_down_the_layers_without_cycles():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "2 kept, 0 broken" in out.stdout


def test_an_upward_import_or_a_cycle_breaks_the_contract(tmp_path):
    pkg = tmp_path / "molvae"
    shutil.copytree(ROOT / "molvae", pkg, ignore=shutil.ignore_patterns("assets", "__pycache__"))
    runs = pkg / "store" / "folder.py"  # store reaching up into training
    runs.write_text(runs.read_text() + "\nfrom molvae.training import config  # noqa\n")
    gp = pkg / "design" / "gp.py"  # design.gp <-> design.bo
    gp.write_text(gp.read_text() + "\nfrom molvae.design import bo  # noqa\n")
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "0 kept, 2 broken" in out.stdout, out.stdout[-3000:]
    assert "molvae.store.folder -> molvae.training.config" in out.stdout
