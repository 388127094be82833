"""The start of a ``kedro`` command on output that is not a terminal: MLflow's "type hints"
warning (raised while Kedro loads kedro-mlflow, before any command starts) is not printed;
a ``kedro run`` writes it to ``logs/info.log`` (``logging_filters.STARTUP_WARNINGS``), as it
does Kedro's warning about dotted dataset names (``EXPECTED_LIBRARY_WARNINGS``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import kedro_env

pytestmark = [pytest.mark.integration]

TYPE_HINTS = "add type hints"  # MLflow: "Add type hints to the `predict` method to enable ..."


def _kedro(project: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = kedro_env()
    env.pop("COLUMNS", None)  # rich then wraps at 80 columns, as in a CI log or a pipe
    return subprocess.run(
        [sys.executable, "-m", "kedro", *argv],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_kedro_run_keeps_the_type_hints_warning_in_the_log_file(kedro_project: Path) -> None:
    # the default pipeline is built whole (its collectors read namespaced outputs: Kedro's
    # "dataset names contain '.'" warning), one node runs
    run = ("run", "--env", "test", "--nodes", "generate_phantom")
    proc = _kedro(kedro_project, *run)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    console = proc.stdout + proc.stderr
    assert TYPE_HINTS not in console.lower(), console[:3000]
    assert proc.stdout.startswith(tuple("0123456789")), (
        f"the console does not start with the run's first line:\n{proc.stdout[:1500]}"
    )
    log = (kedro_project / "logs" / "info.log").read_text(encoding="utf-8")
    held = [line for line in log.splitlines() if "Add type hints to the `predict` method" in line]
    assert len(held) == 1 and "py.warnings" in held[0] and "mlflow" in held[0], held
    assert "warning(s) from libraries (" in proc.stdout  # counted in the end-of-run line
    assert "contain '.'" not in console
    assert "Union type hint" not in console and "Union type hint" in log  # Kedro's validation
    assert "dataset names contain '.' characters" in log  # Kedro's, kept in the log file
    # kedro-viz's hook on a partial run (--nodes): in the log file, not on the console
    assert "Workflow tracking is disabled" not in console
    assert "Workflow tracking is disabled" in log


def test_kedro_registry_list_prints_no_type_hints_warning(kedro_project: Path) -> None:
    proc = _kedro(kedro_project, "registry", "list")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "- __default__" in proc.stdout
    console = proc.stdout + proc.stderr
    assert TYPE_HINTS not in console.lower(), console[:3000]
