"""Fixtures for the browser tests: Chromium, an isolated Kedro project, artifact folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.browser.harness import REPO, artifacts_dir, require_chromium


@pytest.fixture
def chromium() -> str:
    """Path of headless Chromium; skips without it (fails instead when ``CI`` is set)."""
    return require_chromium()


@pytest.fixture
def viz_project(kedro_project: Path) -> Path:
    """``kedro_project`` plus the (empty) ``src`` folder Kedro's bootstrap insists on.

    Kedro requires ``<project>/src`` to exist inside the project folder (a link to the
    repository's ``src`` is rejected once resolved). Left empty, the package is imported
    from the editable install, i.e. the working tree, while the project's data,
    ``build/`` and ``mlflow.db`` stay in the temporary folder.
    """
    (kedro_project / "src").mkdir(exist_ok=True)
    return kedro_project


@pytest.fixture
def browser_artifacts() -> Path:
    """``test-artifacts/browser/`` (gitignored): screenshots and DOM dumps for humans."""
    return artifacts_dir(REPO)
