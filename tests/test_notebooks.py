"""The notebooks run top to bottom, and are stored without outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_notebooks_are_there_and_stripped() -> None:
    import nbformat

    assert {path.name for path in NOTEBOOKS} >= {
        "capacity_planning.ipynb",
        "routing_tradeoffs.ipynb",
        "serving_planning.ipynb",
    }
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_runs(path: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    errors = [
        output for cell in notebook.cells for output in cell.get("outputs", []) if output.get("output_type") == "error"
    ]
    assert not errors
