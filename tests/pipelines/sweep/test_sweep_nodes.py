"""The sweep's nodes on a small in-memory cache, and its wiring (one namespace per cell)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.datasets.skippable import SKIPPED, is_skipped
from cxr_spurious.hooks import SweepParamsHook, stashed_sweep_params
from cxr_spurious.pipelines.sweep import nodes
from cxr_spurious.pipelines.sweep import pipeline as sweep_pipeline
from cxr_spurious.pipelines.training.nodes import resolve_config
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.sweep.grid import Cell, expand_grid

SIZE = 8
TASK = "Pneumothorax"
CELL = Cell("marker_port", "strong", 0.9, 0.1, "seg", 1.0, 3)
TRAINING = {"tasks": [TASK], "epochs": 2, "only": None, "variants": {"erm": {}}}
SWEEP = {
    "task": TASK,
    "test_p": 0.5,
    "training": {"name": "sweep", "supervision": "erm", "architecture": "unet_small"},
    "metrics": {"n_boot": 10},
}


def _world(n: int = 24) -> tuple[pd.DataFrame, ImageCache]:
    ids = [f"img{i:02d}" for i in range(n)]
    split = np.array(["train", "val", "test"])[np.arange(n) % 3]
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": [f"p{i}" for i in range(n)],
            "split": split,
            TASK: (np.arange(n) // 3) % 2,
        }
    )
    manifest.attrs["tasks"] = [TASK]
    images = np.full((n, SIZE, SIZE), 10, np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:2, :2] = 1
    with_marker = images.copy()
    with_marker[:, :2, :2] = 250
    cache = ImageCache(
        image_ids=ids,
        tasks=[TASK],
        objects=[],
        size=SIZE,
        images=images,
        masks=np.zeros((n, 1, SIZE, SIZE), np.uint8),
        boxes=np.zeros((n, 1, SIZE, SIZE), np.uint8),
        spurious=np.zeros((n, 0, SIZE, SIZE), np.uint8),
        has_mask=np.ones((n, 1), bool),
        renders={"with_marker_port": with_marker},
        render_ids={"with_marker_port": ids},
        render_masks={"with_marker_port": np.repeat(mask[None], n, axis=0)},
        fingerprint="f0",
    )
    return manifest, cache


def test_plan_cell_hashes_the_configuration_and_resumes_only_on_the_same_hash() -> None:
    first = nodes.plan_cell(None, TRAINING, SWEEP, cell=CELL)
    assert not first["skip"] and first["variant"] == {
        "name": CELL.namespace,
        "supervision": "seg",
        "location_fraction": 1.0,
        "seed": 3,
    }
    again = nodes.plan_cell({"config_hash": first["config_hash"]}, TRAINING, SWEEP, cell=CELL)
    assert again["skip"] and "resume" in again["reason"]
    changed = nodes.plan_cell(
        {"config_hash": first["config_hash"]}, {**TRAINING, "epochs": 3}, SWEEP, cell=CELL
    )
    assert not changed["skip"] and changed["config_hash"] != first["config_hash"]
    other_metrics = {**SWEEP, "metrics": {"n_boot": 11}}
    assert (
        nodes.plan_cell({}, TRAINING, other_metrics, cell=CELL)["config_hash"]
        != first["config_hash"]
    )
    # the gate and the variant list do not change what a cell trains
    gated = nodes.plan_cell({}, {**TRAINING, "only": "seg", "variants": {}}, SWEEP, cell=CELL)
    assert gated["config_hash"] == first["config_hash"]
    # sweep.test_seed: null keeps the hash of a configuration without the key (rows of
    # earlier runs still resume); a set test seed changes what the cell measures
    unset = nodes.plan_cell({}, TRAINING, {**SWEEP, "test_seed": None}, cell=CELL)
    assert unset["config_hash"] == first["config_hash"]
    fixed = {
        s: nodes.plan_cell({}, TRAINING, {**SWEEP, "test_seed": s}, cell=CELL)["config_hash"]
        for s in (0, 1)
    }
    assert len({first["config_hash"], *fixed.values()}) == 3


def test_the_plan_reaches_the_training_config() -> None:
    plan = nodes.plan_cell({}, TRAINING, SWEEP, cell=CELL)
    cfg = resolve_config(TRAINING, SWEEP["training"], plan)
    assert (cfg["variant"], cfg["supervision"], cfg["seed"]) == (CELL.namespace, "seg", 3)
    assert cfg["epochs"] == 2 and cfg["skip"] is False
    skipped = resolve_config(TRAINING, SWEEP["training"], {**plan, "skip": True})
    assert skipped["skip"] is True
    # without overrides the study's gate still applies
    assert resolve_config({**TRAINING, "only": "box"}, SWEEP["training"], plan)["skip"] is True


def test_compose_cell_puts_the_render_on_the_chosen_images_only() -> None:
    manifest, cache = _world()
    plan = nodes.plan_cell({}, TRAINING, SWEEP, cell=CELL)
    cell_manifest, test, cell_cache = nodes.compose_cell(manifest, cache, plan, TASK, 0.5)
    assert set(test["split"]) == {"test"} and len(test) == (manifest["split"] == "test").sum()
    carries = cell_manifest["artefact"].to_numpy(dtype=bool)
    assert set(cell_manifest["artefact"]) == {0, 1} and cell_manifest.attrs["tasks"] == [TASK]
    train_pos = (cell_manifest["split"] == "train") & (cell_manifest[TASK] == 1)
    train_neg = (cell_manifest["split"] == "train") & (cell_manifest[TASK] == 0)
    assert carries[train_pos].mean() > carries[train_neg].mean()  # confounded with the label
    assert (cell_cache.images[carries][:, :2, :2] == 250).all()
    assert (cell_cache.images[~carries] == 10).all()
    assert (cell_cache.images[:, 2:, :] == 10).all()  # nothing changes outside the mask
    assert cell_cache.objects == ["marker_port"]
    assert cell_cache.spurious[carries, 0].sum() == 4 * carries.sum()
    assert cell_cache.spurious[~carries].sum() == 0
    assert cell_cache.fingerprint.startswith("f0-") and not cell_cache.renders
    assert (cache.images == 10).all()  # the sweep's cache is untouched
    skipped = nodes.compose_cell(manifest, cache, {**plan, "skip": True}, TASK, 0.5)
    assert all(is_skipped(x) for x in skipped)


def test_run_record_gets_the_cell_and_seed() -> None:
    plan = nodes.plan_cell({}, TRAINING, SWEEP, cell=CELL)
    record = {"run_name": "r", "tags": {"variant": CELL.namespace}, "params": {"lr": 0.1}}
    tagged = nodes.tag_run_record(record, plan)
    assert tagged["tags"]["artefact"] == "marker_port" and tagged["tags"]["seed"] == "3"
    assert tagged["tags"]["config_hash"] == plan["config_hash"]
    assert tagged["params"]["strength"] == "strong" and tagged["params"]["lr"] == 0.1
    assert is_skipped(nodes.tag_run_record(SKIPPED, plan))


def test_collector_leaves_out_cells_without_a_row() -> None:
    table = nodes.collect_sweep_models({"namespace": "a", "x": 1.0}, SKIPPED)
    assert list(table["namespace"]) == ["a"]
    with pytest.raises(Exception, match="no cell has a row"):
        nodes.collect_sweep_models(SKIPPED)


def test_one_namespace_per_cell_and_not_in_the_default_run(monkeypatch) -> None:
    grid = {
        "artefacts": ["tube_random", "faint_texture"],
        "strengths": {"none": [0.5, 0.5]},
        "supervisions": ["erm", "seg"],
        "seeds": [0, 1],
    }
    monkeypatch.setattr(sweep_pipeline, "stashed_sweep_params", lambda: {"grid": grid})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = sweep_pipeline.create_pipeline()
    assert not [w for w in caught if "is interrupted" in str(w.message)]
    cells = {c.namespace for c in expand_grid(grid)}
    namespaces = {n.namespace for n in pipe.nodes if n.namespace}
    assert namespaces == cells | {"sweep"}
    one = next(iter(cells))
    names = {n.name.rsplit(".", 1)[-1] for n in pipe.nodes if n.namespace == one}
    assert {
        "plan_cell",
        "compose_cell",
        "train_model",
        "compute_heatmaps",
        "predict_renders",
        "summarise_cell",
    } <= names and "predict_counterfactuals" not in names
    assert {"sweep_models", "sweep_summary", "shortcut_detection"} <= pipe.all_outputs()
    from cxr_spurious.pipeline_registry import NOT_IN_DEFAULT

    assert "sweep" in NOT_IN_DEFAULT


def test_the_hook_stashes_the_sweep_parameters_with_overrides() -> None:
    class _Loader(dict):
        pass

    class _Context:
        config_loader = _Loader(parameters={"sweep": {"grid": {"seeds": [7]}}, "other": 1})

    SweepParamsHook().after_context_created(_Context())
    assert stashed_sweep_params() == {"grid": {"seeds": [7]}}
    _Context.config_loader = _Loader(parameters={"other": 1})
    SweepParamsHook().after_context_created(_Context())
    assert stashed_sweep_params() is None
    # without a stash the grid comes from conf/base
    assert sweep_pipeline.sweep_parameters()["grid"]["seeds"]


def test_a_skipped_model_gets_no_heatmaps() -> None:
    from cxr_spurious.pipelines.saliency.nodes import compute_heatmaps

    manifest, cache = _world()
    out = compute_heatmaps(
        SKIPPED, {"name": "sweep"}, cache, manifest, ["gradcam"], None, "test", 4, 0, 4, "cpu", None
    )
    assert is_skipped(out)
