"""Every notebook in ``notebooks/`` is stored without outputs and runs top to bottom.

Each notebook names the pipelines it reads from in its metadata
(``{"cxr_spurious": {"requires_pipelines": [...]}}``). The test runs those on a tiny
phantom in an isolated project copy, then executes the notebook there with nbclient (the
``python3`` kernel of this interpreter), so ``%load_ext kedro.ipython`` finds that project.
Executed copies are kept in ``test-artifacts/notebooks/`` for inspection.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
# Runtime parameters that shrink the phantom to seconds (passed as `kedro run --params`).
TINY_PARAMS = ",".join(
    [
        "ingestion.n_jobs=1",
        "ingestion.cache.size=32",
        "ingestion.phantom.n_images=48",
        "ingestion.phantom.image_size=64",
    ]
)
CELL_TIMEOUT_S = 300


def _ids(paths: list[Path]) -> list[str]:
    return [path.stem for path in paths]


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, f"no notebooks in {REPO / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{path.name}: kernelspec must be python3"
    required = nb.metadata.get("cxr_spurious", {}).get("requires_pipelines")
    assert isinstance(required, list), f"{path.name}: metadata.cxr_spurious.requires_pipelines (a list) is missing"


@pytest.mark.integration
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(
    path: Path,
    kedro_project: Path,
    run_kedro: Callable[..., object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (kedro_project / "src").mkdir(exist_ok=True)  # Kedro insists on it; the package comes from the install
    nb = nbformat.read(path, as_version=4)
    for pipeline in nb.metadata["cxr_spurious"]["requires_pipelines"]:
        run_kedro(kedro_project, "run", "--pipeline", pipeline, "--params", TINY_PARAMS, timeout=600)
    workdir = kedro_project / "notebooks"
    workdir.mkdir()
    shutil.copy(path, workdir / path.name)
    for name, value in {"KEDRO_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the figures

    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    try:
        client.execute()  # raises CellExecutionError naming the failing cell
    finally:
        out = REPO / "test-artifacts" / "notebooks"
        out.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / path.name)

    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells), "some cells did not run"
    errors = [out for cell in code_cells for out in cell.outputs if out.output_type == "error"]
    assert not errors, errors
    figures = [out for cell in code_cells for out in cell.outputs if "image/png" in out.get("data", {})]
    assert figures, f"{path.name} drew no figure"
