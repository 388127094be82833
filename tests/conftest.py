"""Shared fixtures: paths to reference data and an isolated Kedro project for runs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Kedro's data layers, the folders a project copy needs under data/.
DATA_LAYERS: tuple[str, ...] = (
    "01_raw",
    "02_intermediate",
    "03_primary",
    "04_feature",
    "05_model_input",
    "06_models",
    "07_model_output",
    "08_reporting",
)
TEST_DATA = REPO / "tests" / "fixtures"
# The real CheXlocalize sample (MIT): JSON/CSV files, the 2 images and 3 of the 20 heatmap
# pickles (without their ``cxr_img``); see its PROVENANCE.md. Tests read only files in the
# repository, so a clean clone runs them all.
SAMPLE_IN_REPO = TEST_DATA / "chexlocalize_sample"

# Tiny phantom for end-to-end runs (overrides conf/base through the `test` environment).
TINY_TEST_ENV = """
ingestion:
  n_jobs: 1
  cache:
    size: 32
  examples:
    n: 4
  phantom:
    n_images: 96
    image_size: 64
training:
  batch_size: 16
  n_boot: 50
  variants:
    erm: {epochs: 1}
    box: {epochs: 1}
    seg: {epochs: 1}
saliency:
  max_images: 12
  sanity: {n_images: 4, n_boot: 50}
  overlays: {n_images: 2}
localization:
  n_boot: 50
  top_k: 50
robustness:
  n_boot: 50
  thumbnails_per_cluster: 2
study:
  n_boot: 50
"""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``@pytest.mark.cuda`` tests, and only those, when torch sees no CUDA device.

    Every other test runs on a CPU-only clean clone (``tests/framework/test_skips.py`` checks
    that no test skips on a missing import or on data outside the repository).
    """
    cuda_items = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA-only test: torch sees no CUDA device")
    for item in cuda_items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _clear_stashed_session_parameters() -> Iterator[None]:
    """Forget the parameters a session created in this process stashed, after each test.

    ``hooks.SweepParamsHook`` stashes a session's parameters (``--params`` included) for the
    sweep and comparison pipelines to read when they are built; left over from one test, they
    would decide the seeds or grid another test's ``create_pipeline()`` builds, depending on
    the order the tests run in.
    """
    yield
    hooks = sys.modules.get("cxr_spurious.hooks")
    if hooks is not None:
        hooks._PARAMS = None
        hooks._SWEEP_PARAMS = None


@pytest.fixture(autouse=True)
def _forget_the_session_run() -> Iterator[None]:
    """Forget the MLflow session run (or untracked session) a test's hook recorded, after
    each test: left over, another test's datasets would log under a run of another store,
    or log nothing."""
    yield
    mlflow_run = sys.modules.get("cxr_spurious.datasets.mlflow_run")
    if mlflow_run is not None:
        mlflow_run.remember_session_run(None)


@pytest.fixture
def chexlocalize_sample() -> Path:
    """The real CheXlocalize sample kept in ``tests/fixtures`` (never skipped)."""
    return SAMPLE_IN_REPO


@pytest.fixture
def kedro_project(tmp_path: Path) -> Path:
    """A throwaway copy of the project's configuration with empty data folders.

    Runs in it never touch the repository's ``data/`` or ``mlflow.db``. Extra
    configuration for a test goes into ``conf/test/`` (use ``--env test``).
    """
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(REPO / "pyproject.toml", project / "pyproject.toml")
    shutil.copytree(REPO / "conf", project / "conf", ignore=shutil.ignore_patterns("local"))
    (project / "conf" / "local").mkdir()
    (project / "conf" / "test").mkdir(exist_ok=True)
    (project / "conf" / "test" / "parameters_tiny.yml").write_text(TINY_TEST_ENV)
    shutil.copy(REPO / ".telemetry", project / ".telemetry")
    (
        project / "src"
    ).mkdir()  # Kedro checks that the source folder exists; the package is installed
    for layer in DATA_LAYERS:
        (project / "data" / layer).mkdir(parents=True)
    return project


def kedro_env() -> dict[str, str]:
    """Environment for Kedro subprocesses: no telemetry, one thread per library."""
    env = dict(os.environ)
    env.update(
        {
            "KEDRO_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "250",
        }
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


LOAD_DATASETS_SCRIPT = """
import json, sys
from pathlib import Path
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
project = Path(sys.argv[1]); env = sys.argv[2]; names = sys.argv[3:]
bootstrap_project(project)
with KedroSession.create(project_path=project, env=env) as session:
    catalog = session.load_context().catalog
    out = {}
    for name in names:
        data = catalog.load(name)
        out[name] = {
            "type": type(data).__name__,
            "len": len(data) if hasattr(data, "__len__") else None,
        }
        if hasattr(data, "columns"):
            out[name]["columns"] = list(map(str, data.columns))
            out[name]["attrs"] = data.attrs
        if isinstance(data, dict):
            out[name]["keys"] = sorted(data)[:5]
print("JSON:" + json.dumps(out, default=str))
"""


def load_from_catalog(project: Path, *names: str, env: str = "test") -> dict:
    """Load datasets through a real ``KedroSession`` (in a subprocess) and summarise them."""
    import json

    proc = subprocess.run(
        [sys.executable, "-c", LOAD_DATASETS_SCRIPT, str(project), env, *names],
        cwd=project,
        env=kedro_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"loading {names} from the catalog failed:\n{proc.stderr[-6000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:"))
    return json.loads(line[5:])


@pytest.fixture
def run_kedro() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``kedro <args>`` in a project folder; fail the test with the output on error."""

    def _run(
        project: Path, *args: str, check: bool = True, timeout: int = 600
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "kedro", *args],
            cwd=project,
            env=kedro_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        proc.log = " ".join((proc.stdout + proc.stderr).split())  # type: ignore[attr-defined]  # whitespace-normalised
        if check and proc.returncode != 0:
            pytest.fail(
                f"kedro {' '.join(args)} failed ({proc.returncode}):\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
            )
        return proc

    return _run


@pytest.fixture(scope="module")
def tracking(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One MLflow SQLite store per test module (creating its tables takes seconds); the
    module's tests run with it as the tracking URI and the temporary folder as working
    directory (artifacts under ``mlruns/`` there)."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        # An experiment made active by an earlier module (``mlflow.set_experiment``, also
        # through a Kedro session) names an id of that module's store: start_run here would
        # fail with "No Experiment with id=3 exists"
        mp.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
        mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
        mp.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        yield uri
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(previous)
