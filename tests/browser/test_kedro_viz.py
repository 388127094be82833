"""kedro-viz in a real browser: the pipeline graph, its layers and node names.

Starts ``kedro viz run`` on a free loopback port in an isolated project copy, loads the
app in headless Chromium and reads what is drawn: the layer bands' labels and the SVG
node labels. ``kedro viz build`` is checked the same way, by serving its static site;
that static site also gives the README's full-graph screenshot
(``test-artifacts/browser/kedro_viz_default.png``, copied by hand to
``docs/screenshots/``), taken after a small page on the same origin has switched off
kedro-viz's feature tour in ``localStorage``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from tests.browser.harness import (
    REPO,
    WINDOW_SIZE,
    artifacts_dir,
    dump_dom,
    free_port,
    make_project_copy,
    require_chromium,
    screenshot,
    serve,
    texts_of_class,
    visible_text,
)
from tests.conftest import kedro_env

from cxr_spurious.variants import STUDY_MODELS

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.xdist_group("browser")]

# The layers the project's catalog may use, top to bottom (docs/ARCHITECTURE.md).
PROJECT_LAYERS = (
    "raw",
    "intermediate",
    "primary",
    "feature",
    "model_input",
    "models",
    "model_output",
    "reporting",
)
# Layers and nodes that the ingestion pipeline alone puts on the default graph.
INGESTION_LAYERS = ("raw", "primary", "model_input", "reporting")
INGESTION_NODES = (
    "generate_phantom",
    "read_source",
    "build_manifest",
    "extract_ground_truth",
    "build_image_cache",
    "report_dataset",
)
RENDER_BUDGET_MS = 15000
# A few nodes of every stage that the collapsed default view draws (namespaced per-model
# nodes are inside the collapsed model boxes, so these are the un-namespaced ones).
DEFAULT_NODES_PER_STAGE: dict[str, tuple[str, ...]] = {
    "ingestion": ("build_manifest", "build_image_cache"),
    "debiasing": ("resample_train_rows", "summarise_group_counts"),
    "saliency": ("collect_heatmaps", "collect_saliency_sanity"),
    "localization": ("evaluate_heatmaps", "summarise_localization", "evaluate_human_benchmark"),
    "regression": ("regress_on_features", "regress_on_confidence"),
    "robustness": ("combine_robustness_summary",),
    "study": ("compile_findings",),
}
# kedro-viz keeps its UI state in localStorage under "KedroViz" (see its bundle:
# `Qg="KedroViz"`, flag `showFeatureHints`); stored keys override the defaults on load.
PRIME_PAGE = """<!doctype html><meta charset="utf-8"><script>
localStorage.setItem("KedroViz", JSON.stringify(%s));
location.replace("./?pid=__default__");
</script>"""
SCREENSHOT_STATE = {"showFeatureHints": False, "visible": {"sidebar": False, "miniMap": False}}


def _viz_command(port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kedro",
        "viz",
        "run",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-browser",
        *extra,
    ]


def _api_main(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/api/main", timeout=30) as response:
        return json.loads(response.read())


def _drawn_graph(dom: str) -> tuple[list[str], list[str]]:
    """(layer labels, node labels) drawn by kedro-viz's flowchart."""
    return texts_of_class(dom, "pipeline-layer-name"), texts_of_class(dom, "pipeline-node__text")


def _backward_layer_links(api: dict) -> list[str]:
    """Links from a dataset to a later dataset in an *earlier* layer (what makes kedro-viz
    give up drawing layers), following edges through unlayered nodes."""
    nodes = {node["id"]: node for node in api["nodes"]}
    children: dict[str, list[str]] = {}
    for edge in api["edges"]:
        children.setdefault(edge["source"], []).append(edge["target"])
    rank = {layer: i for i, layer in enumerate(PROJECT_LAYERS)}
    found = []
    for node_id, node in nodes.items():
        if node["type"] != "data" or node.get("layer") not in rank:
            continue
        stack, seen = list(children.get(node_id, [])), set()
        while stack:
            child_id = stack.pop()
            if child_id in seen or child_id not in nodes:
                continue
            seen.add(child_id)
            child = nodes[child_id]
            if child["type"] == "data" and child.get("layer") in rank:
                if rank[child["layer"]] < rank[node["layer"]]:
                    found.append(
                        f"{node['name']} ({node['layer']}) -> {child['name']} ({child['layer']})"
                    )
                continue
            stack.extend(children.get(child_id, []))
    return sorted(found)


@dataclass(frozen=True)
class VizPages:
    """What one ``kedro viz run`` session showed: its API answer and rendered DOMs."""

    api: dict
    default_dom: str
    ingestion_dom: str


@pytest.fixture(scope="module")
def viz_pages(tmp_path_factory: pytest.TempPathFactory) -> VizPages:
    """Start ``kedro viz run`` once per module, render the default and ingestion views."""
    binary = require_chromium()
    root = tmp_path_factory.mktemp("viz")
    project = make_project_copy(root)
    out = artifacts_dir(REPO)
    port = free_port()
    with serve(
        _viz_command(port),
        cwd=project,
        env=kedro_env(),
        port=port,
        ready_path="/api/main",
        log_path=out / "kedro_viz_run.log",
        timeout=120,
    ) as server:
        api = _api_main(server.url)
        default_dom = dump_dom(
            binary, f"{server.url}/", root / "profile-1", budget_ms=RENDER_BUDGET_MS
        )
        ingestion_dom = dump_dom(
            binary, f"{server.url}/?pid=ingestion", root / "profile-2", budget_ms=RENDER_BUDGET_MS
        )
        screenshot(
            binary,
            f"{server.url}/",
            out / "kedro_viz_default.png",
            root / "profile-3",
            budget_ms=RENDER_BUDGET_MS,
        )
        screenshot(
            binary,
            f"{server.url}/?pid=ingestion",
            out / "kedro_viz_ingestion.png",
            root / "profile-4",
            budget_ms=RENDER_BUDGET_MS,
        )
    (out / "kedro_viz_default.html").write_text(default_dom)
    (out / "kedro_viz_ingestion.html").write_text(ingestion_dom)
    return VizPages(api=api, default_dom=default_dom, ingestion_dom=ingestion_dom)


def test_ingestion_view_shows_layer_bands_and_node_names(viz_pages: VizPages) -> None:
    layers, labels = _drawn_graph(viz_pages.ingestion_dom)
    assert list(INGESTION_LAYERS) == [name for name in layers if name in INGESTION_LAYERS], (
        f"layer bands drawn: {layers}"
    )
    assert [name for name in PROJECT_LAYERS if name in layers] == layers, (
        f"layers out of pipeline order: {layers}"
    )
    missing = [name for name in INGESTION_NODES if name not in labels]
    assert not missing, f"ingestion nodes not drawn: {missing}; drawn: {sorted(labels)}"
    assert {"manifest", "image_cache", "dataset_report"} <= set(labels)


def test_default_view_collapses_each_model_into_one_box(viz_pages: VizPages) -> None:
    _, labels = _drawn_graph(viz_pages.default_dom)
    assert {"build_manifest", "build_image_cache"} <= set(labels), f"drawn: {sorted(labels)}"
    for model in STUDY_MODELS:
        assert labels.count(model) == 1, (
            f"namespace {model!r} should be one collapsed box, drawn {labels.count(model)}x"
        )


def test_default_view_keeps_its_layer_bands(viz_pages: VizPages) -> None:
    """kedro-viz drops *all* layer bands when one dataset feeds a dataset of an earlier layer."""
    api = viz_pages.api
    assert api["layers"], (
        "kedro-viz disabled layers, datasets feeding an earlier layer: "
        f"{_backward_layer_links(api)}"
    )
    layers, _ = _drawn_graph(viz_pages.default_dom)
    _assert_bands_follow_api(layers, api["layers"])
    assert [name for name in PROJECT_LAYERS if name in layers] == layers, (
        f"layers out of pipeline order: {layers}"
    )


def test_every_catalog_dataset_has_a_project_layer(viz_pages: VizPages) -> None:
    datasets = [node for node in viz_pages.api["nodes"] if node["type"] == "data"]
    persisted = [
        node
        for node in datasets
        if "MemoryDataset" not in (node.get("dataset_type") or "MemoryDataset")
    ]
    assert persisted, "kedro-viz reports no persisted datasets"
    unlayered = sorted(node["name"] for node in persisted if node.get("layer") is None)
    assert not unlayered, f"catalog datasets without metadata.kedro-viz.layer: {unlayered}"
    unknown = sorted(
        {node["layer"] for node in datasets if node.get("layer")} - set(PROJECT_LAYERS)
    )
    assert not unknown, f"layers outside {PROJECT_LAYERS}: {unknown}"
    by_name = {node["name"]: node.get("layer") for node in datasets}
    assert (by_name["manifest"], by_name["image_cache"], by_name["dataset_report"]) == (
        "primary",
        "model_input",
        "reporting",
    )


def test_kedro_viz_build_makes_a_static_site_that_renders(
    viz_project: Path,
    chromium: str,
    tmp_path: Path,
    browser_artifacts: Path,
    run_kedro: Callable[..., object],
) -> None:
    run_kedro(viz_project, "viz", "build", timeout=300)
    build = viz_project / "build"
    assert (build / "index.html").is_file(), (
        f"no index.html in {build}: {sorted(p.name for p in build.iterdir())}"
    )
    api = json.loads((build / "api" / "main").read_text())
    assert {"build_manifest", "build_image_cache"} <= {node["name"] for node in api["nodes"]}

    port = free_port()
    command = [
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        str(build),
    ]
    with serve(
        command,
        cwd=tmp_path,
        env=kedro_env(),
        port=port,
        ready_path="/api/main",
        log_path=tmp_path / "static.log",
        timeout=30,
    ) as server:
        dom = dump_dom(
            chromium,
            f"{server.url}/?pid=ingestion",
            tmp_path / "profile",
            budget_ms=RENDER_BUDGET_MS,
        )
    layers, labels = _drawn_graph(dom)
    assert list(INGESTION_LAYERS) == [name for name in layers if name in INGESTION_LAYERS], (
        f"layer bands drawn: {layers}"
    )
    assert set(INGESTION_NODES) <= set(labels), f"drawn: {sorted(labels)}"


@dataclass(frozen=True)
class StaticDefaultView:
    """The default pipeline as drawn by a ``kedro viz build`` site, tour switched off."""

    api: dict
    dom: str
    png: Path


@pytest.fixture(scope="module")
def static_default_view(tmp_path_factory: pytest.TempPathFactory) -> StaticDefaultView:
    """Build the static site once, prime kedro-viz's localStorage, render the default view."""
    binary = require_chromium()
    root = tmp_path_factory.mktemp("viz-static")
    project = make_project_copy(root)
    proc = subprocess.run(
        [sys.executable, "-m", "kedro", "viz", "build"],
        cwd=project,
        env=kedro_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, (
        f"kedro viz build failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    )
    build = project / "build"
    (build / "prime.html").write_text(PRIME_PAGE % json.dumps(SCREENSHOT_STATE))
    out = artifacts_dir(REPO)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "http.server",
        str(port),
        "--bind",
        "127.0.0.1",
        "--directory",
        str(build),
    ]
    with serve(
        command,
        cwd=root,
        env=kedro_env(),
        port=port,
        ready_path="/api/main",
        log_path=root / "static.log",
        timeout=30,
    ) as server:
        dom = dump_dom(
            binary, f"{server.url}/prime.html", root / "profile-dom", budget_ms=RENDER_BUDGET_MS
        )
        png = screenshot(
            binary,
            f"{server.url}/prime.html",
            out / "kedro_viz_default.png",
            root / "profile-png",
            budget_ms=RENDER_BUDGET_MS,
        )
    (out / "kedro_viz_default_static.html").write_text(dom)
    return StaticDefaultView(api=json.loads((build / "api" / "main").read_text()), dom=dom, png=png)


def test_full_graph_screenshot_shows_layers_and_every_stage(
    static_default_view: StaticDefaultView,
) -> None:
    """The README screenshot: all stages, collapsed model boxes, layer bands, no tour."""
    view = static_default_view
    layers, labels = _drawn_graph(view.dom)
    missing = {
        stage: [n for n in names if n not in labels]
        for stage, names in DEFAULT_NODES_PER_STAGE.items()
    }
    missing = {stage: names for stage, names in missing.items() if names}
    assert not missing, f"default view lacks nodes of stages {missing}; drawn: {sorted(labels)}"
    for model in STUDY_MODELS:
        assert labels.count(model) == 1, (
            f"namespace {model!r} should be one collapsed box, drawn {labels.count(model)}x"
        )
    assert "Workflow run status" not in visible_text(view.dom), (
        "kedro-viz's feature tour is still open"
    )
    with Image.open(view.png) as image:
        assert image.size == tuple(int(v) for v in WINDOW_SIZE.split(","))
        assert len(set(image.convert("L").resize((64, 40)).getdata())) > 4, (
            "the screenshot is blank"
        )
    assert view.api["layers"], (
        "kedro-viz disabled layers, datasets feeding an earlier layer: "
        f"{_backward_layer_links(view.api)}"
    )
    _assert_bands_follow_api(layers, view.api["layers"])


def _assert_bands_follow_api(layers: list[str], api_layers: list[str]) -> None:
    """Drawn bands are the API's layers in the API's order, minus layers whose datasets are
    all inside collapsed namespaces (e.g. `models`: every model lives in a model's box)."""
    assert layers == [layer for layer in api_layers if layer in layers], (
        f"drawn layer bands {layers} out of the order of {api_layers}"
    )
    core = ["raw", "primary", "model_input", "model_output", "reporting"]
    assert set(core) <= set(layers), f"drawn layer bands {layers} lack some of {core}"
