"""The demo notebooks: stored without outputs, and executed for real in a container kernel."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == []
            assert cell.execution_count is None


def test_demo_notebook_runs_in_the_image(kernel_spec, image, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/host/site-packages")
    nb = nbformat.read(NOTEBOOKS / "demo.ipynb", as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=kernel_spec("container-demo"),
        timeout=120,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    proof_cell = next(c for c in nb.cells if "proof" in c.metadata.get("tags", []))
    proof = json.loads(proof_cell.outputs[0]["text"])
    assert proof["python"].startswith("/usr/bin/python3 3.11")
    assert proof["os"] == "Debian GNU/Linux 12 (bookworm)"
    assert "PYTHONPATH" not in proof["environment"]
    listing = nb.cells[-2].outputs[-1]["text"]
    assert "demo.ipynb" in listing  # the kernel works in the notebook's folder
