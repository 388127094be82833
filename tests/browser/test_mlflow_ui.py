"""The MLflow UI in a real browser: the study's run table and a run page with metrics.

The tracking store is laid out like the one ``kedro run`` writes: one experiment for the
study, a parent run named after the pipeline and one nested child run per model variant
(named by ``cxr_spurious.training.outputs.run_name``) with its parameters and test
metrics. ``mlflow ui`` serves it on a free loopback port; headless Chromium reads the
pages a researcher opens first.
"""

from __future__ import annotations

import sys
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tests.browser.harness import (
    REPO,
    artifacts_dir,
    dump_dom,
    free_port,
    require_chromium,
    screenshot,
    serve,
    visible_text,
)
from tests.conftest import kedro_env

from cxr_spurious.training.outputs import run_name

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.xdist_group("browser")]

EXPERIMENT = "cxr_spurious_study"
METRIC = "test_Pneumothorax_auroc"
RENDER_BUDGET_MS = 15000
# (variant, method, architecture, test AUROC): distinct AUROCs give a known sort order.
VARIANTS = (
    ("erm", "erm", "resnet18", 0.812),
    ("box", "box", "resnet18", 0.846),
    ("seg", "seg", "unet_small", 0.871),
)


@dataclass(frozen=True)
class Store:
    """The tracking store the UI serves."""

    uri: str
    experiment_id: str
    parent_name: str
    child_ids: dict[str, str]  # run name -> run id


def make_study_store(root: Path) -> Store:
    """Log a parent run and one child run per variant into ``root/mlflow.db``.

    Args:
        root: Folder for the SQLite file and the artifacts.

    Returns:
        Where the runs are and what they are called.
    """
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="training")
    client.log_param(parent.info.run_id, "training.epochs", 2)
    children: dict[str, str] = {}
    for variant, method, architecture, auroc in VARIANTS:
        name = run_name({"variant": variant, "method": method, "architecture": architecture, "seed": 0}, "none")
        child = client.create_run(experiment_id, run_name=name, tags={"mlflow.parentRunId": parent.info.run_id})
        for key, value in {"variant": variant, "method": method, "architecture": architecture, "resampling": "none", "seed": 0}.items():
            client.log_param(child.info.run_id, key, value)
        for epoch, loss in enumerate((0.69, 0.52)):
            client.log_metric(child.info.run_id, "train_loss", loss, step=epoch)
        client.log_metric(child.info.run_id, METRIC, auroc)
        client.set_terminated(child.info.run_id)
        children[name] = child.info.run_id
    client.set_terminated(parent.info.run_id)
    return Store(uri=uri, experiment_id=experiment_id, parent_name="training", child_ids=children)


@dataclass(frozen=True)
class MlflowPages:
    """Visible text of the pages one ``mlflow ui`` session showed."""

    store: Store
    table_text: str
    run_name: str
    run_text: str


@pytest.fixture(scope="module")
def mlflow_pages(tmp_path_factory: pytest.TempPathFactory) -> MlflowPages:
    """Serve a study store with ``mlflow ui`` and render the run table and one run page."""
    binary = require_chromium()
    root = tmp_path_factory.mktemp("mlflow")
    store = make_study_store(root)
    out = artifacts_dir(REPO)
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store.uri,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    env = kedro_env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # Sorting by the headline metric is what a researcher does first; it also lists the
    # nested child runs flat (MLflow only nests children under the default date order).
    order = urllib.parse.urlencode({"orderByKey": f"metrics.`{METRIC}`", "orderByAsc": "false"})
    shown_run = next(iter(store.child_ids))
    with serve(command, cwd=root, env=env, port=port, ready_path="/health", log_path=out / "mlflow_ui.log", timeout=120) as server:
        table_url = f"{server.url}/#/experiments/{store.experiment_id}/runs?{order}"
        run_url = f"{server.url}/#/experiments/{store.experiment_id}/runs/{store.child_ids[shown_run]}"
        table_dom = dump_dom(binary, table_url, root / "profile-1", budget_ms=RENDER_BUDGET_MS)
        run_dom = dump_dom(binary, run_url, root / "profile-2", budget_ms=RENDER_BUDGET_MS)
        screenshot(binary, table_url, out / "mlflow_runs.png", root / "profile-3", budget_ms=RENDER_BUDGET_MS)
        screenshot(binary, run_url, out / "mlflow_run.png", root / "profile-4", budget_ms=RENDER_BUDGET_MS)
    (out / "mlflow_runs.html").write_text(table_dom)
    (out / "mlflow_run.html").write_text(run_dom)
    return MlflowPages(store=store, table_text=visible_text(table_dom), run_name=shown_run, run_text=visible_text(run_dom))


def test_run_table_lists_every_variant_sorted_by_the_metric(mlflow_pages: MlflowPages) -> None:
    text = mlflow_pages.table_text
    assert EXPERIMENT in text
    names = list(mlflow_pages.store.child_ids)
    positions = {name: text.find(name) for name in names}
    assert all(pos >= 0 for pos in positions.values()), f"runs missing from the table: {positions}\n{text[:2000]}"
    auroc = dict(zip(names, (variant[3] for variant in VARIANTS)))
    by_auroc = sorted(names, key=lambda name: -auroc[name])
    assert sorted(names, key=positions.__getitem__) == by_auroc, "runs are not listed by descending AUROC"
    assert f"{len(names) + 1} matching runs" in text


def test_run_page_shows_metrics_params_and_parent(mlflow_pages: MlflowPages) -> None:
    text = mlflow_pages.run_text
    auroc = dict(zip(mlflow_pages.store.child_ids, (v[3] for v in VARIANTS)))[mlflow_pages.run_name]
    assert mlflow_pages.run_name in text
    assert f"{METRIC} {auroc}" in text, f"metric row not shown:\n{text[:2000]}"
    assert "train_loss" in text
    assert "architecture resnet18" in text
    assert f"Parent run {mlflow_pages.store.parent_name}" in text
