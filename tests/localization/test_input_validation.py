"""Inputs that used to hang the localization run or be skipped without a word, and the
device the evaluation runs on (the exact CPU kernel unless the GPU is opted into)."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from kedro.io import DatasetError

from cxr_spurious.datasets.chexlocalize import (
    CheXlocalizeHeatmapFolderDataset,
    CheXlocalizeJSONDataset,
)
from cxr_spurious.errors import DataFormatError, ParameterError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.chexlocalize import (
    read_heatmap_folder,
    validate_segmentation_json,
)
from cxr_spurious.io.masks import MAX_MASK_SIDE, encode_rle
from cxr_spurious.localization import evaluate as evaluate_module
from cxr_spurious.localization.evaluate import evaluate_heatmap_set
from cxr_spurious.localization.segmentation import pick_device
from cxr_spurious.pipelines.localization import nodes

ROOT = Path(__file__).resolve().parents[2]
CXR = "patient64541_study1_view1_frontal"
GARBAGE = {"size": [2320, 2828], "counts": "%%%not-rle%%%"}


def _set(h: int = 6, w: int = 5, task: str = "Edema") -> HeatmapSet:
    index = pd.DataFrame(
        [
            {
                "image_id": CXR,
                "task": task,
                "prob": 0.9,
                "gt": 1.0,
                "cxr_w": w,
                "cxr_h": h,
                "model": "m",
                "method": "g",
            }
        ]
    )
    return HeatmapSet(index, np.arange(4, dtype=np.float32).reshape(1, 2, 2))


def _gt(h: int = 6, w: int = 5) -> dict:
    mask = np.zeros((h, w), np.uint8)
    mask[2:5, 1:4] = 1
    return {CXR: {"Edema": encode_rle(mask)}}


def _write_map(folder: Path, name: str, dims: tuple[int, int] = (5, 6)) -> None:
    with (folder / name).open("wb") as fh:
        pickle.dump(
            {
                "map": torch.arange(4.0).reshape(1, 1, 2, 2),
                "prob": 0.9,
                "task": "Edema",
                "gt": 1,
                "cxr_dims": dims,
            },
            fh,
            protocol=3,
        )


# --- item 2: the device -------------------------------------------------------------------


def test_cpu_kernel_is_chosen_when_gpu_not_preferred_even_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device(False).type == "cpu"
    assert pick_device().type == "cpu"  # the default is the exact kernel


def test_gpu_opt_in_logs_that_it_is_not_the_reference_arithmetic(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with caplog.at_level(logging.WARNING, logger="cxr_spurious.localization.segmentation"):
        assert pick_device(True).type == "cuda"
    assert "not the reference's arithmetic" in caplog.text
    assert "not been measured" in caplog.text


def test_gpu_opt_in_without_cuda_falls_back_to_the_cpu_kernel(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(True).type == "cpu"


def test_evaluation_default_never_reaches_the_cuda_kernel(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def _cuda_kernel(*args, **kwargs):
        raise AssertionError("the CUDA kernel ran although the GPU was not opted into")

    monkeypatch.setattr(evaluate_module, "segment_map_torch", _cuda_kernel)
    table, _ = evaluate_heatmap_set(_set(), _gt(), progress=False, workers=1)
    assert len(table) == 1 and table["in_gt"].all()


@pytest.mark.parametrize(
    "path", ["conf/base/parameters_localization.yml", "conf/chexlocalize/parameters.yml"]
)
def test_configured_default_is_the_exact_cpu_kernel(path):
    params = yaml.safe_load((ROOT / path).read_text())
    assert params["localization"]["prefer_gpu"] is False


# --- item 5: malformed RLEs -----------------------------------------------------------------


def test_malformed_gt_rle_stops_the_evaluation_within_seconds(tmp_path):
    """pycocotools' merge looped for minutes on this ground truth; now it is an error at once."""
    script = textwrap.dedent(
        f"""
        import time
        import numpy as np, pandas as pd
        from cxr_spurious.heatmaps import HeatmapSet
        from cxr_spurious.localization.evaluate import evaluate_heatmap_set
        index = pd.DataFrame([{{"image_id": "{CXR}", "task": "Edema", "prob": 0.9, "gt": 1.0,
                               "cxr_w": 2828, "cxr_h": 2320, "model": "m", "method": "g"}}])
        hs = HeatmapSet(index, np.arange(4, dtype=np.float32).reshape(1, 2, 2))
        t0 = time.perf_counter()
        try:
            evaluate_heatmap_set(
                hs, {{"{CXR}": {{"Edema": {GARBAGE!r}}}}}, progress=False, workers=1
            )
        except Exception as exc:
            print("ELAPSED", time.perf_counter() - t0)
            print("ERROR", type(exc).__name__, exc)
        """
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the evaluation of a malformed ground-truth RLE did not stop within 180 s")
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert "ERROR" in lines, done.stdout + done.stderr
    assert lines["ERROR"].startswith("DataFormatError")
    assert f"gt_segmentations ({CXR}/Edema)" in lines["ERROR"]
    assert float(lines["ELAPSED"]) < 5.0


def test_malformed_spurious_rle_is_refused_before_the_evaluation():
    with pytest.raises(DataFormatError, match=rf"spurious_segmentations \({CXR}/Chest Tube\)"):
        evaluate_heatmap_set(
            _set(),
            _gt(),
            spurious_segmentations={CXR: {"Chest Tube": {"size": [6, 5], "counts": "%%%"}}},
            progress=False,
            workers=1,
        )


def test_gt_missing_a_map_with_a_malformed_rle_is_refused():
    # A gt pair without a map goes to pycocotools' area in the missing-map pass: validated too.
    gt = {**_gt(), "other_cxr": {"Edema": dict(GARBAGE)}}
    with pytest.raises(DataFormatError, match=r"other_cxr/Edema"):
        evaluate_heatmap_set(_set(), gt, progress=False, workers=1)


def test_gt_json_dataset_validates_every_rle_on_load(tmp_path):
    path = tmp_path / "gt_segmentations_val.json"
    path.write_text(json.dumps({**_gt(), "patient2_study1_view1_frontal": {"Edema": GARBAGE}}))
    with pytest.raises(
        DatasetError, match="not a pycocotools RLE string"
    ) as exc:  # kedro wraps load errors
        CheXlocalizeJSONDataset(str(path), kind="segmentations").load()
    assert str(path) in str(exc.value)
    assert "patient2_study1_view1_frontal/Edema" in str(exc.value)
    # Without a kind (annotations, salient points, ...) the file loads as before.
    assert "patient2_study1_view1_frontal" in CheXlocalizeJSONDataset(str(path)).load()


def test_spurious_json_dataset_checks_object_names(tmp_path):
    path = tmp_path / "spurious_segmentations.json"
    mask = encode_rle(np.zeros((6, 5), np.uint8))
    path.write_text(json.dumps({CXR: {"Chest Tube": mask}}))
    assert (
        CheXlocalizeJSONDataset(str(path), kind="spurious_segmentations").load()[CXR]["Chest Tube"]
        == mask
    )
    path.write_text(json.dumps({CXR: {"Edema": mask}}))
    with pytest.raises(
        DatasetError, match=rf"spurious_segmentations\.json \({CXR}\).*unknown task 'Edema'"
    ):
        CheXlocalizeJSONDataset(str(path), kind="spurious_segmentations").load()
    with pytest.raises(DatasetError, match="kind"):
        CheXlocalizeJSONDataset(str(path), kind="masks")


def test_chexlocalize_catalog_validates_segmentation_files():
    catalog = yaml.safe_load((ROOT / "conf/chexlocalize/catalog.yml").read_text())
    assert catalog["gt_segmentations"]["kind"] == "segmentations"
    assert catalog["hb_segmentations"]["kind"] == "segmentations"
    assert catalog["spurious_segmentations"]["kind"] == "spurious_segmentations"


def test_segmentation_json_size_must_match_the_image():
    with pytest.raises(
        DataFormatError, match=rf"x\.json \({CXR}/Edema\).*disagrees with the image's \[6, 6\]"
    ):
        validate_segmentation_json(_gt(), source="x.json", sizes={CXR: (6, 6)})
    validate_segmentation_json(_gt(), source="x.json", sizes={CXR: (6, 5)})


def test_segmentation_json_validates_without_decode():
    with pytest.raises(
        DataFormatError, match=rf"x\.json \({CXR}/Edema\).*not a pycocotools RLE string"
    ):
        validate_segmentation_json({CXR: {"Edema": GARBAGE}}, source="x.json")


# --- item 5: heatmap folders ----------------------------------------------------------------


def test_unparsable_file_in_map_folder_is_an_error(tmp_path):
    _write_map(tmp_path, f"{CXR}_Edema_map.pkl")
    _write_map(tmp_path, "garbage.pkl")
    with pytest.raises(DataFormatError, match="garbage.pkl") as exc:
        read_heatmap_folder(tmp_path, workers=1)
    assert "skip_unparsable_maps" in str(exc.value)


def test_unparsable_file_is_skipped_only_on_request_with_a_warning_and_a_count(tmp_path, caplog):
    _write_map(tmp_path, f"{CXR}_Edema_map.pkl")
    _write_map(tmp_path, "garbage.pkl")
    (tmp_path / ".DS_Store").write_text("hidden files are not maps")
    with caplog.at_level(logging.WARNING):
        hs = read_heatmap_folder(tmp_path, workers=1, skip_unparsable=True)
    assert len(hs) == 1
    assert hs.index.attrs["skipped_files"] == [str(tmp_path / "garbage.pkl")]
    assert "skipped 1 file" in caplog.text and "garbage.pkl" in caplog.text
    per_map, _ = nodes.evaluate_heatmaps(
        {"chexlocalize.gradcam": hs}, _gt(), {}, None, None, 0, [], False, 10, False
    )
    assert per_map["skipped_map_files"].tolist() == [1]
    summary = nodes.summarise_localization(per_map, n_boot=10, seed=0)
    assert set(summary["skipped_map_files"]) == {1}


def test_folder_dataset_skip_option(tmp_path):
    maps = tmp_path / "gradcam_maps_val"
    maps.mkdir()
    _write_map(maps, f"{CXR}_Edema_map.pkl")
    _write_map(maps, "garbage.pkl")
    with pytest.raises(DatasetError, match=r"garbage\.pkl: heatmap file name must be"):
        CheXlocalizeHeatmapFolderDataset(str(tmp_path)).load()
    loaded = CheXlocalizeHeatmapFolderDataset(str(tmp_path), skip_unparsable="true").load()
    assert len(loaded["chexlocalize.gradcam"]) == 1
    with pytest.raises(DatasetError, match="skip_unparsable"):
        CheXlocalizeHeatmapFolderDataset(str(tmp_path), skip_unparsable="maybe")


# --- other inputs that made a stage unboundedly long ----------------------------------------


def test_huge_cxr_dims_in_a_pickle_are_refused(tmp_path):
    _write_map(tmp_path, f"{CXR}_Edema_map.pkl", dims=(10**6, 10**6))
    with pytest.raises(DataFormatError, match=r"cxr_dims.*exceed"):
        read_heatmap_folder(tmp_path, workers=1)


def test_huge_cxr_dims_in_a_heatmap_set_are_refused():
    with pytest.raises(
        DataFormatError, match=rf"heatmaps \({CXR}/Edema\).*must lie in 1\.\.{MAX_MASK_SIDE}"
    ):
        evaluate_heatmap_set(_set(h=10**6, w=10**6), {}, progress=False, workers=1)


@pytest.mark.parametrize("grid", [[0.2, 0.8, 1e-9], [0.0, float("inf"), 0.1], [0.2, 0.8]])
def test_threshold_grid_that_would_not_end_is_refused(grid):
    per_map = pd.DataFrame({"set": ["s"], "in_gt": [True]})
    with pytest.raises(ParameterError, match="localization.tuning_grid"):
        nodes.tune_segmentation(per_map, grid, [0.0, 0.85, 0.1])
    with pytest.raises(ParameterError, match="localization.prob_cutoffs_grid"):
        nodes.tune_segmentation(per_map, [0.2, 0.8, 0.1], grid)


@pytest.mark.parametrize("which", ["gt", "spurious"])
def test_the_node_checks_every_rle_once_before_its_sets(which, monkeypatch):
    """The node validates the gt and spurious RLEs once for all sets (the sets then skip it)."""
    from cxr_spurious.localization import evaluate as ev

    gt, spurious = _gt(), {CXR: {"tube": encode_rle(np.zeros((6, 5), np.uint8))}}
    if which == "gt":
        gt = {CXR: {**gt[CXR], "Edema": GARBAGE}}
    else:
        spurious = {CXR: {"tube": GARBAGE}}
    args = (None, None, 0, [], False, 10, False)
    with pytest.raises(DataFormatError, match=rf"{which}.*segmentations.*{CXR}"):
        nodes.evaluate_heatmaps({"a.gradcam": _set(), "b.gradcam": _set()}, gt, spurious, *args)
    calls = []
    real = ev.validate_segmentations
    monkeypatch.setattr(
        ev, "validate_segmentations", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    monkeypatch.setattr(nodes, "validate_segmentations", ev.validate_segmentations)
    nodes.evaluate_heatmaps({"a.gradcam": _set(), "b.gradcam": _set()}, _gt(), {}, *args)
    assert len(calls) == 2  # gt and spurious, once each, for two sets
