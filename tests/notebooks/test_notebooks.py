"""Every notebook in ``notebooks/`` is stored without outputs and runs top to bottom.

Each notebook names the pipelines it reads from in its metadata
(``{"cxr_spurious": {"requires_pipelines": [...]}}``). The whole tiny study
(``kedro run --env test``, the ``TINY_TEST_ENV`` of ``tests/conftest.py``) runs ONCE per
session in an isolated project copy; that default run covers every pipeline except the
ones in ``NOT_IN_DEFAULT`` (run on demand). Each notebook is then executed there with
nbclient (the ``python3`` kernel of this interpreter), so ``%load_ext kedro.ipython``
finds that project and never the repository's ``data/``. Executed copies are kept in
``test-artifacts/notebooks/`` for inspection.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from kedro.config import OmegaConfigLoader
from kedro.io import CatalogConfigResolver
from nbclient import NotebookClient
from tests.browser.harness import make_project_copy
from tests.conftest import TINY_TEST_ENV, kedro_env

from cxr_spurious.pipeline_registry import NOT_IN_DEFAULT
from cxr_spurious.settings import CONFIG_LOADER_ARGS
from cxr_spurious.variants import STUDY_MODELS

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300
STUDY_TIMEOUT_S = 900
# `catalog.load("name")` / `catalog.load(f"{model}.name")` in a code cell.
LOAD_CALL = re.compile(r"""catalog\.load\((f?)"([^"]+)"\)""")


def _ids(paths: list[Path]) -> list[str]:
    return [path.stem for path in paths]


def _loaded_names(nb: nbformat.NotebookNode) -> list[str]:
    """Dataset names a notebook loads, with f-string placeholders filled by the first model."""
    names = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for is_f, name in LOAD_CALL.findall(cell.source):
            names.append(re.sub(r"\{[a-z_]+\}", STUDY_MODELS[0], name) if is_f else name)
    return names


@pytest.fixture(scope="module")
def base_config() -> tuple[CatalogConfigResolver, dict]:
    """The project's ``conf/base`` catalog resolver and parameters."""
    args = {**CONFIG_LOADER_ARGS, "default_run_env": "base"}  # conf/local is per user
    loader = OmegaConfigLoader(conf_source=str(REPO / "conf"), **args)
    return CatalogConfigResolver(loader["catalog"]), loader["parameters"]


@pytest.fixture(scope="session")
def study_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project copy in which the whole tiny study ran once (``kedro run --env test``)."""
    project = make_project_copy(tmp_path_factory.mktemp("notebooks"))
    (project / "conf" / "test").mkdir(exist_ok=True)
    (project / "conf" / "test" / "parameters_tiny.yml").write_text(TINY_TEST_ENV)
    _kedro(project, "run", "--env", "test")
    return project


def _kedro(project: Path, *args: str) -> None:
    """Run ``kedro <args>`` in ``project``; fail the test with its output on error."""
    proc = subprocess.run(
        [sys.executable, "-m", "kedro", *args],
        cwd=project,
        env=kedro_env(),
        capture_output=True,
        text=True,
        timeout=STUDY_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"kedro {' '.join(args)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-8000:]}"
        )


def test_there_are_notebooks() -> None:
    assert NOTEBOOKS, f"no notebooks in {REPO / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} have outputs or execution counts; clear them before committing"
    )
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", (
        f"{path.name}: kernelspec must be python3"
    )
    required = nb.metadata.get("cxr_spurious", {}).get("requires_pipelines")
    assert isinstance(required, list), (
        f"{path.name}: metadata.cxr_spurious.requires_pipelines (a list) is missing"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_loads_only_catalog_entries(
    path: Path, base_config: tuple[CatalogConfigResolver, dict]
) -> None:
    """Every ``catalog.load`` names a dataset (or pattern match) or parameter of conf/base."""
    resolver, parameters = base_config
    nb = nbformat.read(path, as_version=4)
    names = _loaded_names(nb)
    assert names, f"{path.name} loads nothing through the catalog"
    unknown = []
    for name in names:
        if name.startswith("params:"):
            node: object = parameters
            for key in name.removeprefix("params:").split("."):
                node = node.get(key) if isinstance(node, dict) else None
            if node is None:
                unknown.append(name)
        elif name not in resolver.config and resolver.match_dataset_pattern(name) is None:
            unknown.append(name)
    assert not unknown, f"{path.name} loads names that conf/base does not define: {unknown}"


def test_loaded_names_reads_plain_and_f_string_loads() -> None:
    cell = nbformat.v4.new_code_cell(
        'a = catalog.load("manifest")\nb = catalog.load(f"{model}.calibration")'
    )
    assert _loaded_names(nbformat.v4.new_notebook(cells=[cell])) == [
        "manifest",
        f"{STUDY_MODELS[0]}.calibration",
    ]


@pytest.mark.integration
@pytest.mark.xdist_group("notebooks")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(
    path: Path, study_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = nbformat.read(path, as_version=4)
    for pipeline in nb.metadata["cxr_spurious"]["requires_pipelines"]:
        if pipeline in NOT_IN_DEFAULT:  # not part of the session's default run
            _kedro(study_project, "run", "--env", "test", "--pipeline", pipeline)
    workdir = study_project / "notebooks"
    workdir.mkdir(exist_ok=True)
    shutil.copy(path, workdir / path.name)
    # Not stored in the notebook: prove the kernel read the project copy, not the repository.
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "from pathlib import Path\n"
            "assert Path(context.project_path).resolve() == "
            f"Path({str(study_project.resolve())!r}), context.project_path"
        )
    )
    for name, value in {
        "KEDRO_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "OMP_NUM_THREADS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws the figures

    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
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
    figures = [
        out for cell in code_cells for out in cell.outputs if "image/png" in out.get("data", {})
    ]
    assert figures, f"{path.name} drew no figure"
