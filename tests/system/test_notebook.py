"""notebooks/explore.ipynb: committed without outputs, and run top to bottom on a fresh clone after `dvc repro`.

The slow test executes the notebook with nbclient in a kernel of this interpreter (a kernelspec in a temporary
directory: nothing is registered with Jupyter), on a clone whose tiny pipeline has run, and checks what it shows
and that it changed nothing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tests.conftest import commit_all, run_in, tiny_clone

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [i for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    assert len(code) >= 5 and any(cell.cell_type == "markdown" for cell in notebook.cells)
    executed = [i for i in code if notebook.cells[i].outputs or notebook.cells[i].execution_count is not None]
    assert not executed, (
        f"{NOTEBOOK.relative_to(ROOT)}: cells {executed} carry outputs or execution counts: clear them "
        "(Jupyter: Edit > Clear Outputs of All Cells) before committing"
    )
    assert notebook.metadata["kernelspec"]["name"] == "python3"  # a generic kernel, not one machine's


def text_of(cell) -> str:
    """What a code cell printed or showed as text (stdout, results, errors)."""
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
        parts.extend(output.get("traceback", []))
    return "".join(parts)


def kernel_of_this_interpreter(directory: Path) -> str:
    """A kernelspec running ``sys.executable`` (the project's .venv), in ``directory``; its name."""
    spec = directory / "kernels" / "mnist-pipeline-test"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "this .venv", "language": "python"}))
    return spec.name


def state(clone: Path) -> tuple[str, str]:
    """What the notebook must leave as it found it: git's view of the clone, and the MLflow store's bytes."""
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=clone, capture_output=True, text=True)
    return status.stdout, hashlib.sha256((clone / "mlflow.db").read_bytes()).hexdigest()


@pytest.mark.slow
def test_the_notebook_runs_top_to_bottom_after_the_pipeline(tmp_path, monkeypatch):
    from nbclient import NotebookClient

    clone = tiny_clone(tmp_path / "clone")
    commit_all(clone, "tiny")
    repro = run_in(["dvc", "repro"], clone)
    assert repro.returncode == 0, repro.stdout[-2000:] + repro.stderr[-2000:]
    (clone / "notebooks").mkdir(exist_ok=True)
    before = state(clone)

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # no __pycache__ in the clone from the kernel's imports
    for name in [n for n in os.environ if n.startswith(("MLFLOW_", "DVC_"))]:
        monkeypatch.delenv(name)  # the clone's own store and repository, as for a user there
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        kernel_name=kernel_of_this_interpreter(tmp_path / "jupyter"),
        timeout=600,
        resources={"metadata": {"path": str(clone / "notebooks")}},  # opened from notebooks/, as in Jupyter
    )
    client.execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    shown = "\n".join(text_of(cell) for cell in code)
    assert f"repository: {clone.resolve()}" in shown and "data set: mnist" in shown, shown[:2000]
    tables = [o["data"]["text/html"] for c in code for o in c.outputs if "text/html" in o.get("data", {})]
    assert any("test_accuracy" in t and "workspace" in t for t in tables), "no experiments table"
    assert any("workspace@" in t for t in tables), "no table of MLflow runs"
    assert "models:/mnist-classifier@champion: version 1" in shown, shown[-3000:]
    # The champion, loaded from the store, answers the prepared test split as the evaluate stage did.
    accuracy, logged = re.search(r"test accuracy ([\d.]+) on 10,000 images \(its run says ([\d.]+)\)", shown).groups()
    assert abs(float(accuracy) - float(logged)) <= 1e-4, (accuracy, logged)
    figures = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert len(figures) >= 4, f"{len(figures)} cells drew a figure"  # curves, confusion matrix, mistakes, yours
    assert state(clone) == before, "the notebook changed the clone or its MLflow store"
