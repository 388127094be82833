"""kedro-viz in a real browser: the study's overview, layers, tags, previews, node names.

Starts ``kedro viz run`` on a free loopback port in an isolated project copy, loads the
app in headless Chromium and reads what is drawn: the layer bands' labels and the SVG
node labels; its API gives the tags and, for a few small files written into the copy, the
side panel's previews. ``kedro viz build`` is checked the same way, by serving its static
site; that static site also gives the README's screenshots
(``test-artifacts/browser/kedro_viz_default.png``: the overview, and
``kedro_viz_ingestion.png``; copied to ``docs/screenshots/`` by ``make screenshots``), taken
after a small
page on the same origin has switched off kedro-viz's feature tour in ``localStorage``.

The overview is the default pipeline filtered on the tag ``overview``
(``pipeline_registry.OVERVIEW_NODES``, opened as ``/?pid=__default__&tags=overview``). The
whole default graph cannot be read at one glance: kedro-viz 12.5 draws every output of a
collapsed model box that no node of the box reads (its figures and tables, 16 per model)
beside the box, about 140 elements at 13 % zoom.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from tests.browser.harness import (
    REPO,
    WINDOW_SIZE,
    artifacts_dir,
    free_port,
    make_project_copy,
    publish_screenshot,
    require_chromium,
    serve,
    settled_page,
    texts_of_class,
    visible_text,
)
from tests.conftest import kedro_env

from cxr_spurious.pipeline_registry import NOT_IN_DEFAULT, OVERVIEW_NODES, OVERVIEW_TAG
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
OVERVIEW_QUERY = f"?pid=__default__&tags={OVERVIEW_TAG}"
INGESTION_QUERY = "?pid=ingestion"
# What the overview draws besides one box per model: the story from the image cache to the
# findings table and figure, through the heatmaps localized against the lesion and chest tube.
OVERVIEW_DRAWN = (
    "image_cache",
    "resampled_manifest",
    *(f"{model}.heatmaps" for model in STUDY_MODELS),
    "collect_heatmaps",
    "heatmap_collection",
    "gt_segmentations",
    "spurious_segmentations",
    "evaluate_heatmaps",
    "localization_per_map",
    "compile_findings",
    "study_findings",
    "study_findings_figure",
)
# Elements (nodes, datasets, boxes) the overview may draw (it draws 22); the whole default
# graph draws 144 (2026-12-06).
MAX_OVERVIEW_ELEMENTS = 30
# Smallest on-screen label font (CSS px, 1600 x 1000 window) counted as legible: the overview's
# is 5.6 px (zoom 40 %), the whole graph's 1.8 px (zoom 13 %), unreadable.
MIN_LABEL_PX = 5.0
# kedro-viz keeps its UI state in localStorage under "KedroViz" (see its bundle:
# `Qg="KedroViz"`, flag `showFeatureHints`); stored keys override the defaults on load.
PRIME_PAGE = """<!doctype html><meta charset="utf-8"><script>
localStorage.setItem("KedroViz", JSON.stringify(%s));
location.replace("./%s");
</script>"""
SCREENSHOT_STATE = {
    "showFeatureHints": False,
    "visible": {"sidebar": False, "miniMap": False},
}
# Small files behind reporting datasets, to read their previews from the API (the project
# copy has no study outputs): catalog name -> path in the copy.
PREVIEW_FILES = {
    "study_findings": "data/08_reporting/study_findings.csv",
    "study_findings_figure": "data/08_reporting/study_findings.png",
    "localization_summary": "data/08_reporting/localization/localization_summary.csv",
    "gt_annotations": "data/03_primary/gt_annotations.json",
}
SUMMARY_ROWS = 40  # more than the 30 rows localization_summary's preview_args ask for


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


def _api_get(url: str, path: str) -> dict:
    with urllib.request.urlopen(f"{url}{path}", timeout=60) as response:
        return json.loads(response.read())


def _drawn_graph(dom: str) -> tuple[list[str], list[str]]:
    """(layer labels, node labels) drawn by kedro-viz's flowchart: one node label per drawn
    element (node, dataset or collapsed box)."""
    return texts_of_class(dom, "pipeline-layer-name"), texts_of_class(dom, "pipeline-node__text")


ZOOM_WRAPPER = re.compile(r"<g\b[^>]*\bclass=\"pipeline-zoom-wrapper\b[^\"]*\"[^>]*>")


def _zoom_scale(dom: str) -> float:
    """The flowchart's zoom once settled (``scale(k)`` of kedro-viz's zoom wrapper group)."""
    wrapper = ZOOM_WRAPPER.search(dom)
    assert wrapper, 'kedro-viz drew no <g class="pipeline-zoom-wrapper"> (no flowchart)'
    assert "--animating" not in wrapper.group(0), (
        f"the zoom was still animating when the DOM was read: {wrapper.group(0)}"
    )
    scale = re.search(r"scale\(([0-9.eE+-]+)", wrapper.group(0))
    assert scale, f"no scale() in the zoom wrapper: {wrapper.group(0)}"
    return float(scale.group(1))


#: The flowchart is drawn and its zoom-to-fit has ended (kedro-viz 12.5 marks the zoom
#: wrapper ``--animating`` from each view change to the end of the transition).
FLOWCHART_SETTLED = (
    "(() => { const w = document.querySelector('g.pipeline-zoom-wrapper');"
    " return w !== null && /scale\\(/.test(w.getAttribute('transform') || '')"
    " && !w.getAttribute('class').includes('--animating')"
    " && document.querySelectorAll('.pipeline-node__text').length > 0; })()"
)


def _settled_dom(binary: str, url: str, profile: Path, out_png: Path) -> str:
    """The DOM of a flowchart once its zoom-to-fit has ended, and a screenshot of that
    moment. Its layout runs in a web worker, on wall-clock time that Chromium's virtual
    time budget does not wait for (``--dump-dom`` read it mid-animation on a loaded
    machine), so the live page is polled (``settled_page``)."""
    return settled_page(binary, url, profile, FLOWCHART_SETTLED, out_png=out_png)


def _label_font_px(css: str) -> float:
    """Node labels' font size at zoom 1, from kedro-viz's stylesheet: the ``.kedro`` root's
    px times the em of ``.pipeline-node text`` (10 px x 1.4 em in kedro-viz 12.5)."""
    root = re.search(r"(?:^|\})\.kedro\{[^}]*?font-size:([0-9.]+)px", css)
    label = re.search(r"\.pipeline-node text\{[^}]*?font-size:([0-9.]+)em", css)
    assert root and label, (
        "kedro-viz's stylesheet no longer sets `.kedro{font-size:..px}` and "
        "`.pipeline-node text{font-size:..em}`; update _label_font_px"
    )
    return float(root.group(1)) * float(label.group(1))


def _stylesheet(build: Path) -> str:
    """The static site's stylesheet holding the node label rule."""
    sheets = [css.read_text() for css in sorted((build / "assets").glob("*.css"))]
    found = [css for css in sheets if ".pipeline-node text{" in css]
    assert found, f"no stylesheet with node labels in {build / 'assets'}"
    return found[0]


def _write_preview_files(project: Path) -> None:
    """Small, valid files behind ``PREVIEW_FILES`` in the project copy."""
    paths = {name: project / path for name, path in PREVIEW_FILES.items()}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {"model": list(STUDY_MODELS), "auroc": [0.91, 0.88, 0.86], "hit_rate": [0.4, 0.5, 0.6]}
    ).to_csv(paths["study_findings"], index=False)
    Image.new("RGB", (40, 20), (200, 40, 40)).save(paths["study_findings_figure"])
    pd.DataFrame({"set": [f"set_{i}" for i in range(SUMMARY_ROWS)], "miou": 0.3}).to_csv(
        paths["localization_summary"], index=False
    )
    paths["gt_annotations"].write_text(json.dumps({"patient1_study1_view1_frontal": {}}))


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
    """What one ``kedro viz run`` session showed: its API answers and rendered DOMs."""

    api: dict
    default_dom: str
    ingestion_dom: str
    node_details: dict[str, dict]  # /api/nodes/<id> of each PREVIEW_FILES dataset


@pytest.fixture(scope="module")
def viz_pages(tmp_path_factory: pytest.TempPathFactory) -> VizPages:
    """Start ``kedro viz run`` once per module, read its API, render two views."""
    binary = require_chromium()
    root = tmp_path_factory.mktemp("viz")
    project = make_project_copy(root)
    _write_preview_files(project)
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
        api = _api_get(server.url, "/api/main")
        ids = {node["name"]: node["id"] for node in api["nodes"] if node["type"] == "data"}
        details = {name: _api_get(server.url, f"/api/nodes/{ids[name]}") for name in PREVIEW_FILES}
        default_dom = settled_page(binary, f"{server.url}/", root / "profile-1", FLOWCHART_SETTLED)
        ingestion_dom = settled_page(
            binary, f"{server.url}/{INGESTION_QUERY}", root / "profile-2", FLOWCHART_SETTLED
        )
    (out / "kedro_viz_default.html").write_text(default_dom)
    (out / "kedro_viz_ingestion.html").write_text(ingestion_dom)
    return VizPages(
        api=api, default_dom=default_dom, ingestion_dom=ingestion_dom, node_details=details
    )


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
    _assert_bands_follow_api(layers, api["layers"], FULL_GRAPH_LAYERS)
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


def test_tags_filter_by_stage_and_mark_the_overview(viz_pages: VizPages) -> None:
    """Every node of the default pipeline carries its stage's tag; ``overview`` marks
    exactly ``OVERVIEW_NODES``."""
    api = viz_pages.api
    stages = {p["id"] for p in api["pipelines"]} - {"__default__"} - NOT_IN_DEFAULT
    tags = {tag["id"] for tag in api["tags"]}
    assert stages | {OVERVIEW_TAG} <= tags, f"tags offered: {sorted(tags)}"
    tasks = [n for n in api["nodes"] if n["type"] == "task" and "__default__" in n["pipelines"]]
    assert tasks, "kedro-viz lists no nodes of __default__"
    stageless = sorted(_task_name(n) for n in tasks if len(set(n["tags"]) & stages) != 1)
    assert not stageless, f"nodes without exactly one stage tag of {sorted(stages)}: {stageless}"
    overview = sorted(_task_name(n) for n in tasks if OVERVIEW_TAG in n["tags"])
    assert overview == sorted(OVERVIEW_NODES)


def _task_name(node: dict) -> str:
    """A task node's full Kedro name (namespace included) from kedro-viz's API."""
    return node["full_name"]


def test_reporting_datasets_preview_in_the_side_panel(viz_pages: VizPages) -> None:
    details = viz_pages.node_details
    findings = details["study_findings"]
    assert findings.get("preview_type") == "TablePreview", findings
    assert findings["preview"]["columns"] == ["model", "auroc", "hit_rate"]
    assert [row[0] for row in findings["preview"]["data"]] == list(STUDY_MODELS)
    summary = details["localization_summary"]
    assert summary.get("preview_type") == "TablePreview", summary
    assert len(summary["preview"]["data"]) == 30, "preview_args {nrows: 30} not applied"
    figure = details["study_findings_figure"]
    assert figure.get("preview_type") == "ImagePreview", figure
    assert base64.b64decode(figure["preview"])[:8] == b"\x89PNG\r\n\x1a\n"
    # megabytes of annotation JSON are not sent to the side panel
    assert details["gt_annotations"].get("preview") is None, details["gt_annotations"]


@dataclass(frozen=True)
class StaticSite:
    """A ``kedro viz build`` site as drawn with the tour off and the sidebar closed."""

    api: dict
    overview_dom: str
    overview_png: Path
    ingestion_dom: str
    label_px: float  # node labels' font size at zoom 1 (CSS px)


@pytest.fixture(scope="module")
def static_site(tmp_path_factory: pytest.TempPathFactory) -> StaticSite:
    """Build the static site once; render the overview and the ingestion pipeline through a
    page that first primes kedro-viz's localStorage; write the README's screenshots."""
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
    assert (build / "index.html").is_file(), (
        f"no index.html in {build}: {sorted(p.name for p in build.iterdir())}"
    )
    state = json.dumps(SCREENSHOT_STATE)
    (build / "overview.html").write_text(PRIME_PAGE % (state, OVERVIEW_QUERY))
    (build / "ingestion.html").write_text(PRIME_PAGE % (state, INGESTION_QUERY))
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
        pages = {}
        for view in ("overview", "ingestion"):
            url = f"{server.url}/{view}.html"
            png = out / ("kedro_viz_default.png" if view == "overview" else f"kedro_viz_{view}.png")
            pages[view] = _settled_dom(binary, url, root / f"profile-{view}", png)
            publish_screenshot(png)
    (out / "kedro_viz_overview_static.html").write_text(pages["overview"])
    (out / "kedro_viz_ingestion_static.html").write_text(pages["ingestion"])
    return StaticSite(
        api=json.loads((build / "api" / "main").read_text()),
        overview_dom=pages["overview"],
        overview_png=out / "kedro_viz_default.png",
        ingestion_dom=pages["ingestion"],
        label_px=_label_font_px(_stylesheet(build)),
    )


def test_kedro_viz_build_makes_a_static_site_that_renders(static_site: StaticSite) -> None:
    assert {"build_manifest", "build_image_cache"} <= {n["name"] for n in static_site.api["nodes"]}
    layers, labels = _drawn_graph(static_site.ingestion_dom)
    assert list(INGESTION_LAYERS) == [name for name in layers if name in INGESTION_LAYERS], (
        f"layer bands drawn: {layers}"
    )
    assert set(INGESTION_NODES) <= set(labels), f"drawn: {sorted(labels)}"


def test_overview_tells_the_story_in_legible_labels(static_site: StaticSite) -> None:
    """The README's first kedro-viz picture: few elements, labels readable on screen."""
    view = static_site
    layers, labels = _drawn_graph(view.overview_dom)
    assert len(labels) <= MAX_OVERVIEW_ELEMENTS, (
        f"the overview draws {len(labels)} elements (at most {MAX_OVERVIEW_ELEMENTS}): "
        f"{sorted(labels)}"
    )
    missing = [name for name in OVERVIEW_DRAWN if name not in labels]
    assert not missing, f"the overview lacks {missing}; drawn: {sorted(labels)}"
    for box in STUDY_MODELS:
        assert labels.count(box) == 1, (
            f"namespace {box!r} should be one collapsed box, drawn {labels.count(box)}x"
        )
    label_px = _zoom_scale(view.overview_dom) * view.label_px
    assert label_px >= MIN_LABEL_PX, (
        f"node labels are {label_px:.1f} px on screen (at least {MIN_LABEL_PX} px wanted)"
    )
    assert "Workflow run status" not in visible_text(view.overview_dom), (
        "kedro-viz's feature tour is still open"
    )
    with Image.open(view.overview_png) as image:
        assert image.size == tuple(int(v) for v in WINDOW_SIZE.split(","))
        assert len(set(image.convert("L").resize((64, 40)).get_flattened_data())) > 4, (
            "the screenshot is blank"
        )
    assert view.api["layers"], (
        "kedro-viz disabled layers, datasets feeding an earlier layer: "
        f"{_backward_layer_links(view.api)}"
    )
    _assert_bands_follow_api(layers, view.api["layers"], OVERVIEW_LAYERS)


# Layer bands each view must draw (the others may be absent: e.g. `models`, whose datasets
# all live inside the collapsed model boxes).
FULL_GRAPH_LAYERS = ("raw", "primary", "model_input", "model_output", "reporting")
OVERVIEW_LAYERS = ("primary", "model_input", "model_output", "reporting")


def _assert_bands_follow_api(
    layers: list[str], api_layers: list[str], required: tuple[str, ...]
) -> None:
    """Drawn bands are the API's layers in the API's order and include ``required``."""
    assert layers == [layer for layer in api_layers if layer in layers], (
        f"drawn layer bands {layers} out of the order of {api_layers}"
    )
    assert set(required) <= set(layers), f"drawn layer bands {layers} lack some of {required}"
