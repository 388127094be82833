"""``--env chexlocalize`` reads one split's files, the human benchmark included, and the
tuning tables name the split their maps came from.

Before, the environment read ``gt_segmentations_val.json`` (and ``gradcam_maps_val``) but
the human benchmark from ``hb_*_test.json`` whatever the ground truth, so the test split's
benchmark was scored against the val ground truth; and ``tuning_results.csv`` did not say
that its thresholds were tuned on the maps being scored (the base study: test).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog

from cxr_spurious.errors import ParameterError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.hooks import check_split_names, runtime_param_names, shipped_parameters
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.localization import tuning
from cxr_spurious.parameter_schema import check_parameter_keys, parameter_schema
from cxr_spurious.pipelines.localization import create_pipeline
from cxr_spurious.pipelines.localization.nodes import (
    evaluate_heatmaps,
    evaluate_human_benchmark,
    tune_segmentation,
)
from cxr_spurious.settings import CONFIG_LOADER_ARGS, ProjectConfigLoader

ROOT = Path(__file__).resolve().parents[3]
CONF = ROOT / "conf"
SAMPLE = ROOT / "tests" / "fixtures" / "chexlocalize_sample"
INPUTS = ("gt_segmentations", "gt_annotations", "hb_segmentations", "hb_annotations")
HB_FILES = {
    "hb_segmentations": "hb_segmentations_{}.json",
    "hb_annotations": "hb_annotations_{}.json",
    "hb_salient_points": "hb_salient_pt_{}.json",
}


def _config(runtime: dict[str, Any]) -> dict[str, Any]:
    loader = ProjectConfigLoader(
        conf_source=str(CONF), env="chexlocalize", runtime_params=runtime, **CONFIG_LOADER_ARGS
    )
    return {"catalog": dict(loader["catalog"]), "parameters": dict(loader["parameters"])}


def _catalog(runtime: dict[str, Any]) -> DataCatalog:
    entries = {k: v for k, v in _config(runtime)["catalog"].items() if k in (*INPUTS, *HB_FILES)}
    return DataCatalog.from_config(entries)


@pytest.mark.parametrize("split", [None, "val", "test"])
def test_every_input_follows_the_split(split: str | None) -> None:
    runtime = {"chexlocalize_dir": "/cx"} | ({"split": split} if split else {})
    config = _config(runtime)
    catalog = config["catalog"]
    want = split or "val"  # the default: the val split, as before
    assert catalog["gt_segmentations"]["filepath"] == f"/cx/gt_segmentations_{want}.json"
    assert catalog["gt_annotations"]["filepath"] == f"/cx/gt_annotations_{want}.json"
    assert catalog["heatmap_collection"]["map_dir"] == f"gradcam_maps_{want}"
    for name, pattern in HB_FILES.items():
        assert catalog[name]["filepath"] == "/cx/" + pattern.format(want), name
        assert catalog[name]["optional"] is True  # no benchmark on val: no file, no error
    # the split is the one written beside the tuned thresholds
    assert config["parameters"]["saliency"]["split"] == want


def test_saliency_split_given_directly_picks_the_files_too() -> None:
    """``--params saliency.split=test`` (rather than ``split=test``): the files and the label
    come from the same value, so the tables' ``split`` column names the files read."""
    config = _config({"chexlocalize_dir": "/cx", "saliency": {"split": "test"}})
    catalog = config["catalog"]
    assert config["parameters"]["saliency"]["split"] == "test"
    assert catalog["heatmap_collection"]["map_dir"] == "gradcam_maps_test"
    assert catalog["gt_segmentations"]["filepath"] == "/cx/gt_segmentations_test.json"
    assert catalog["hb_segmentations"]["filepath"] == "/cx/hb_segmentations_test.json"


@pytest.mark.parametrize(
    ("runtime", "split", "refused"),
    [
        ({"map_dir": "gradcam_maps_test"}, "val", "map_dir"),
        ({"gt_segmentations": "gt_segmentations_test.json"}, "val", "gt_segmentations"),
        ({"map_dir": "maps/val", "split": "test"}, "test", "map_dir"),
        ({"map_dir": "gradcam_maps_test", "split": "test"}, "test", None),
        ({"map_dir": "erm.gradcam"}, "test", None),  # no split in the name: nothing to compare
        ({"map_dir": "my_validation_maps"}, "test", None),  # "val" only as a word of the name
    ],
)
def test_a_file_name_of_another_split_is_refused(
    runtime: dict[str, Any], split: str, refused: str | None
) -> None:
    if refused is None:
        check_split_names(runtime, split)
        return
    with pytest.raises(
        ParameterError, match=rf"parameter '{refused}'.*saliency\.split is '{split}'"
    ):
        check_split_names(runtime, split)


def test_the_reference_reports_are_replaced_at_each_run() -> None:
    """A run without a human benchmark (split=val) must not leave an earlier split=test run's
    benchmark tables beside its own: the reports have their own folder, replaced each run."""
    entry = _config({"chexlocalize_dir": "/cx"})["catalog"]["chexlocalize_reports"]
    assert entry["path"] == "data/08_reporting/chexlocalize/reports"
    assert entry["overwrite"] is True


def test_explicit_file_names_still_win() -> None:
    catalog = _config({"split": "test", "gt_segmentations": "mine.json", "map_dir": "maps"})[
        "catalog"
    ]
    assert catalog["gt_segmentations"]["filepath"].endswith("/mine.json")
    assert catalog["heatmap_collection"]["map_dir"] == "maps"
    assert catalog["hb_segmentations"]["filepath"].endswith("/hb_segmentations_test.json")


def test_split_is_a_known_runtime_param() -> None:
    """``--params split=test`` passes the parameter-key check of the chexlocalize env."""
    loader = ProjectConfigLoader(
        conf_source=str(CONF),
        env="chexlocalize",
        runtime_params={"split": "test", "chexlocalize_dir": "/cx"},
        **CONFIG_LOADER_ARGS,
    )
    params = dict(loader["parameters"])
    assert params["split"] == "test" and params["saliency"]["split"] == "test"
    check_parameter_keys(
        params, parameter_schema(shipped_parameters(CONF), runtime_param_names(CONF))
    )


def _folder(tmp_path: Path) -> Path:
    """A CheXlocalize folder with both splits' gt and the test split's human benchmark: the
    sample's val gt, and test CXRs with other ids (CheXlocalize's val and test are disjoint)."""
    folder = tmp_path / "cx"
    folder.mkdir()
    shutil.copy(SAMPLE / "gt_segmentations_val.json", folder)
    val = json.loads((SAMPLE / "gt_segmentations_val.json").read_text())
    test = {k.replace("patient645", "patient999"): v for k, v in val.items()}
    assert not set(test) & set(val)
    (folder / "gt_segmentations_test.json").write_text(json.dumps(test))
    (folder / "hb_segmentations_test.json").write_text(json.dumps(test))  # a perfect reader
    (folder / "hb_salient_pt_test.json").write_text(json.dumps({c: {} for c in test}))
    return folder


def test_val_runs_without_a_benchmark_and_test_scores_its_own(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    val = _catalog({"chexlocalize_dir": str(folder)})
    assert val.load("hb_segmentations") == {} and val.load("hb_salient_points") == {}
    table = evaluate_human_benchmark(
        val.load("gt_segmentations"), val.load("hb_segmentations"), val.load("hb_salient_points")
    )
    assert table.empty

    test = _catalog({"chexlocalize_dir": str(folder), "split": "test"})
    gt = test.load("gt_segmentations")
    assert all(c.startswith("patient999") for c in gt)
    table = evaluate_human_benchmark(
        gt, test.load("hb_segmentations"), test.load("hb_salient_points")
    )
    assert set(table["image_id"]) == set(gt)
    positive = table[table["gt_area"] > 0]
    assert len(positive) and (positive["iou_tp"] == 1.0).all()  # the human mask is the gt
    assert (positive["hit"] == 0.0).all()  # no salient point: a miss


def _maps() -> tuple[dict[str, HeatmapSet], dict[str, Any]]:
    """Two small heatmap sets over four CXRs and their ground truth."""
    rng = np.random.default_rng(0)
    ids = [f"patient{i}_study1_view1_frontal" for i in range(4)]
    tasks = ["Edema", "Cardiomegaly"]
    gt = {}
    for k, cxr in enumerate(ids):
        gt[cxr] = {}
        for t in tasks:
            m = np.zeros((16, 12), np.uint8)
            m[2 + k : 10, 3:8] = 1
            gt[cxr][t] = encode_rle(m)
    sets = {}
    for model in ("erm", "seg"):
        rows = [
            {
                "image_id": c,
                "task": t,
                "prob": float(rng.random()),
                "gt": 1.0,
                "cxr_w": 12,
                "cxr_h": 16,
                "model": model,
                "method": "gradcam",
            }
            for c in ids
            for t in tasks
        ]
        maps = rng.random((len(rows), 4, 3)).astype(np.float32)
        sets[f"{model}.gradcam"] = HeatmapSet(pd.DataFrame(rows), maps)
    return sets, gt


def test_tuning_tables_name_the_split_of_their_maps() -> None:
    sets, gt = _maps()
    grid_param, cut_param = [0.2, 0.8, 0.1], [0.0, 0.85, 0.1]
    per_map, _ = evaluate_heatmaps(sets, gt, {}, {}, {}, 0, grid_param, False, 5, False, "all")
    best, full, prob = tune_segmentation(per_map, grid_param, cut_param, split="val")
    for frame in (best, full, prob):
        assert len(frame) and (frame["split"] == "val").all()
        assert list(frame.columns)[-2:] == ["set", "split"]
    # the tuned values are those of the tuning functions (the column is the only addition)
    grid = tuning.threshold_grid(*grid_param)
    for name, group in per_map.groupby("set"):
        ref, _ = tuning.tune_thresholds(group, grid)
        got = best[best["set"] == name][["threshold", "task"]].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, ref)
    assert np.isfinite(full["mIoU"]).any()


def test_the_pipeline_hands_the_maps_split_to_the_tuning() -> None:
    (node,) = [n for n in create_pipeline().nodes if n.name == "tune_segmentation"]
    assert "params:saliency.split" in node.inputs
