"""The MLflow UI in a real browser: the experiment opens on the study's run table, a run page
shows metrics and its description, and the compare view puts the three study models side by
side.

The tracking store is laid out like the one ``kedro run`` writes: one experiment for the
study (tagged as model training, ``cxr_spurious.tracking``), a parent run named for what ran
and when (``run_title``) holding the findings table, and one nested child run per model
variant (named by ``cxr_spurious.training.outputs.run_name``, described by
``describe_variant``) with its parameters and test metrics. ``mlflow ui`` serves it on a free
loopback port; headless Chromium reads the pages a researcher opens first. The screenshots
are the README's (``docs/screenshots/mlflow_*.png``, written by ``make screenshots``).
"""

from __future__ import annotations

import json
import sys
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from tests.browser.harness import (
    REPO,
    artifacts_dir,
    dump_dom,
    free_port,
    publish_screenshot,
    require_chromium,
    screenshot,
    serve,
    visible_text,
)
from tests.conftest import kedro_env

from cxr_spurious.datasets.mlflow_run import DESCRIPTION_TAG, describe_variant
from cxr_spurious.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    run_description,
    run_title,
)
from cxr_spurious.training.outputs import run_name

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.xdist_group("browser")]

EXPERIMENT = "cxr_spurious_study"
METRIC = "test_Pneumothorax_auroc"
RENDER_BUDGET_MS = 15000
# (variant, supervision, architecture, test AUROC): the study's three models share one
# network; distinct AUROCs give a known sort order.
VARIANTS = (
    ("erm", "erm", "unet_small", 0.812),
    ("box", "box", "unet_small", 0.846),
    ("seg", "seg", "unet_small", 0.871),
)
PARENT_NAME = run_title(["__default__"], datetime(2026, 12, 4, 17, 40))


@dataclass(frozen=True)
class Store:
    """The tracking store the UI serves."""

    uri: str
    experiment_id: str
    parent_name: str
    child_ids: dict[str, str]  # run name -> run id
    descriptions: dict[str, str]  # run name -> its one-line description


def make_study_store(root: Path) -> Store:
    """Log a parent run and one child run per variant into ``root/mlflow.db``.

    Args:
        root: Folder for the SQLite file and the artifacts.

    Returns:
        Where the runs are and what they are called.
    """
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment(
        EXPERIMENT,
        artifact_location=(root / "artifacts").as_uri(),
        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
    )
    parent = client.create_run(
        experiment_id,
        run_name=PARENT_NAME,
        tags={DESCRIPTION_TAG: run_description(["__default__"], {"env": "local"})},
    )
    client.log_param(parent.info.run_id, "training.epochs", 2)
    findings = root / "study_findings.csv"
    findings.write_text("model,auroc\n" + "".join(f"{v},{auroc}\n" for v, _, _, auroc in VARIANTS))
    client.log_artifact(parent.info.run_id, str(findings))
    children: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    for variant, supervision, architecture, auroc in VARIANTS:
        name = run_name(
            {
                "variant": variant,
                "supervision": supervision,
                "architecture": architecture,
                "seed": 0,
            },
            "none",
        )
        params = {
            "variant": variant,
            "supervision": supervision,
            "architecture": architecture,
            "pretrained": "False",
            "resampling": "none",
            "n_train_images": 590,
            "seed": 0,
        }
        descriptions[name] = describe_variant({"variant": variant}, params)
        child = client.create_run(
            experiment_id,
            run_name=name,
            tags={"mlflow.parentRunId": parent.info.run_id, DESCRIPTION_TAG: descriptions[name]},
        )
        for key, value in params.items():
            client.log_param(child.info.run_id, key, value)
        for epoch, loss in enumerate((0.69, 0.52)):
            client.log_metric(child.info.run_id, "train_loss", loss, step=epoch)
        client.log_metric(child.info.run_id, METRIC, auroc)
        client.set_terminated(child.info.run_id)
        children[name] = child.info.run_id
    client.set_terminated(parent.info.run_id)
    return Store(
        uri=uri,
        experiment_id=experiment_id,
        parent_name=PARENT_NAME,
        child_ids=children,
        descriptions=descriptions,
    )


@dataclass(frozen=True)
class MlflowPages:
    """Visible text of the pages one ``mlflow ui`` session showed."""

    store: Store
    table_text: str
    run_name: str
    run_text: str
    home_text: str  # the experiment's page at the README's link
    compare_text: str


@pytest.fixture(scope="module")
def mlflow_pages(tmp_path_factory: pytest.TempPathFactory) -> MlflowPages:
    """Serve a study store with ``mlflow ui`` and render the run table and one run page."""
    binary = require_chromium()
    root = tmp_path_factory.mktemp("mlflow")
    store = make_study_store(root)
    out = artifacts_dir(REPO)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        store.uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = kedro_env() | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # Sorting by the headline metric is what a researcher does first; it also lists the
    # nested child runs flat (MLflow only nests children under the default date order).
    order = urllib.parse.urlencode({"orderByKey": f"metrics.`{METRIC}`", "orderByAsc": "false"})
    shown_run = next(iter(store.child_ids))
    with serve(
        command,
        cwd=root,
        env=env,
        port=port,
        ready_path="/health",
        log_path=out / "mlflow_ui.log",
        timeout=120,
    ) as server:
        base = f"{server.url}/#/experiments/{store.experiment_id}"
        table_url = f"{base}/runs?{order}&workflowType=machine_learning"
        run_url = f"{base}/runs/{store.child_ids[shown_run]}?workflowType=machine_learning"
        compare = urllib.parse.urlencode(
            {
                "runs": json.dumps(list(store.child_ids.values())),
                "experiments": json.dumps([store.experiment_id]),
            }
        )
        compare_url = f"{server.url}/#/compare-runs?{compare}"
        # MLflow 3.17 chooses an experiment's first page by a browser-wide switch (GenAI /
        # Model training, kept in localStorage, GenAI by default), not by the experiment's
        # kind tag; this link (the README's) selects "Model training".
        home_url = f"{base}?workflowType=machine_learning"
        home_dom = dump_dom(binary, home_url, root / "profile-0", budget_ms=RENDER_BUDGET_MS)
        table_dom = dump_dom(binary, table_url, root / "profile-1", budget_ms=RENDER_BUDGET_MS)
        run_dom = dump_dom(binary, run_url, root / "profile-2", budget_ms=RENDER_BUDGET_MS)
        compare_dom = dump_dom(binary, compare_url, root / "profile-5", budget_ms=RENDER_BUDGET_MS)
        shots = {
            "mlflow_runs.png": table_url,
            "mlflow_run.png": run_url,
            "mlflow_compare.png": compare_url,
        }
        for i, (png, url) in enumerate(shots.items()):
            screenshot(
                binary, url, out / png, root / f"profile-shot-{i}", budget_ms=RENDER_BUDGET_MS
            )
    (out / "mlflow_runs.html").write_text(table_dom)
    (out / "mlflow_run.html").write_text(run_dom)
    (out / "mlflow_home.html").write_text(home_dom)
    (out / "mlflow_compare.html").write_text(compare_dom)
    for png in shots:  # the README's screenshots (with CXR_UPDATE_SCREENSHOTS=1)
        publish_screenshot(out / png)
    return MlflowPages(
        store=store,
        table_text=visible_text(table_dom),
        run_name=shown_run,
        run_text=visible_text(run_dom),
        home_text=visible_text(home_dom),
        compare_text=visible_text(compare_dom),
    )


def test_run_table_lists_every_variant_sorted_by_the_metric(mlflow_pages: MlflowPages) -> None:
    text = mlflow_pages.table_text
    assert EXPERIMENT in text
    names = list(mlflow_pages.store.child_ids)
    positions = {name: text.find(name) for name in names}
    assert all(pos >= 0 for pos in positions.values()), (
        f"runs missing from the table: {positions}\n{text[:2000]}"
    )
    auroc = dict(zip(names, (variant[3] for variant in VARIANTS)))
    by_auroc = sorted(names, key=lambda name: -auroc[name])
    assert sorted(names, key=positions.__getitem__) == by_auroc, (
        "runs are not listed by descending AUROC"
    )
    assert f"{len(names) + 1} matching runs" in text


def test_run_page_shows_metrics_params_and_parent(mlflow_pages: MlflowPages) -> None:
    text = mlflow_pages.run_text
    auroc = dict(zip(mlflow_pages.store.child_ids, (v[3] for v in VARIANTS)))[mlflow_pages.run_name]
    assert mlflow_pages.run_name in text
    assert f"{METRIC} {auroc}" in text, f"metric row not shown:\n{text[:2000]}"
    assert "train_loss" in text
    assert "architecture unet_small" in text
    assert f"Parent run {mlflow_pages.store.parent_name}" in text
    assert mlflow_pages.store.descriptions[mlflow_pages.run_name] in text, text[:3000]


def test_the_experiment_opens_on_its_runs(mlflow_pages: MlflowPages) -> None:
    """The README's link opens the experiment on its run table, not the GenAI overview."""
    text = mlflow_pages.home_text
    assert mlflow_pages.store.parent_name in text, text[:3000]
    assert "Token Usage" not in text and "Tokens per Trace" not in text, text[:3000]


def test_compare_view_puts_the_three_models_side_by_side(mlflow_pages: MlflowPages) -> None:
    text = mlflow_pages.compare_text
    assert "Comparing 3" in text or "Compar" in text, text[:3000]
    for name in mlflow_pages.store.child_ids:
        assert name in text, (name, text[:3000])
    assert METRIC in text and "supervision" in text
