"""The latent-space notebook: committed without outputs, and runs end to end on a tiny run."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_latent_space.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], f"cell {cell.id} has outputs: strip them before committing"
        assert cell.execution_count is None, f"cell {cell.id} has an execution count"


def test_notebook_runs_on_a_tiny_run(tiny_run, monkeypatch):
    monkeypatch.setenv("MOLVAE_RUN_DIR", str(tiny_run))  # the kernel inherits the environment
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any error

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert str(tiny_run) in text  # it loaded the run we pointed it at
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    # drugs vs reconstructions, interpolation, its plots, walk, neighbourhood plot and grid,
    # the optimization curve and its best molecules
    assert len(images) >= 8, f"expected 8 drawings and plots, got {len(images)}"
