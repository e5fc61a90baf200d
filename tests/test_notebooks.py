"""Notebooks are tests (STYLE.md G14): each ``notebooks/*.ipynb`` is committed without outputs and
runs to completion under ``EMJAX_FAST=1``, which shrinks n, d and the number of steps."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def _stored_outputs(nb) -> list[str]:
    """Descriptions of every code cell that carries outputs or an execution count."""
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {index}: {len(cell.outputs)} stored output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {index}: execution_count = {cell.execution_count}")
    return problems


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.name for path in NOTEBOOKS])
def test_notebook_is_stripped_and_runs(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    problems = _stored_outputs(nb)
    assert not problems, f"{path.name} has stored outputs; strip them before committing: {problems}"

    monkeypatch.setenv("EMJAX_FAST", "1")  # the kernel inherits this process's environment
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO_ROOT)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, f"{path.name} produced errors: {errors}"
