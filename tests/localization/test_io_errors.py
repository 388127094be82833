import logging
import os
import pickle

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_spurious.errors import DataFormatError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.chexlocalize import (
    read_heatmap_pickle,
    validate_segmentation_json,
)
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.localization.evaluate import evaluate_heatmap_set
from cxr_spurious.localization.metrics import segmentation_table

NAME = "patient1_study1_view1_frontal_Edema_map.pkl"


def _dump(path, obj):
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=3)


def test_pickle_not_a_dict(tmp_path):
    _dump(tmp_path / NAME, [1, 2])
    with pytest.raises(DataFormatError, match="expected a dict") as exc:
        read_heatmap_pickle(tmp_path / NAME)
    assert NAME in str(exc.value)


def test_pickle_missing_keys(tmp_path):
    _dump(tmp_path / NAME, {"map": torch.zeros(1, 1, 2, 2)})
    with pytest.raises(DataFormatError, match="lacks key"):
        read_heatmap_pickle(tmp_path / NAME)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_that_would_execute_code(tmp_path):
    _dump(tmp_path / NAME, {"map": _Evil(), "prob": 0.1, "cxr_dims": (2, 2)})
    with pytest.raises(DataFormatError, match="refusing"):
        read_heatmap_pickle(tmp_path / NAME)


def test_unknown_task_in_file_name(tmp_path):
    bad = tmp_path / "patient1_study1_view1_frontal_Flu_map.pkl"
    _dump(bad, {"map": torch.zeros(1, 1, 2, 2), "prob": 0.1, "cxr_dims": (2, 2)})
    with pytest.raises(DataFormatError, match="unknown task 'Flu'"):
        read_heatmap_pickle(bad)


def _set(h=6, w=5, task="Edema"):
    index = pd.DataFrame(
        [
            {
                "image_id": "c1",
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


def test_dims_disagree_with_gt():
    gt = {"c1": {"Edema": encode_rle(np.zeros((7, 5), np.uint8))}}
    with pytest.raises(DataFormatError, match="disagree") as exc:
        evaluate_heatmap_set(_set(), gt, progress=False)
    assert "c1/Edema" in str(exc.value)


def test_unknown_task_in_heatmap_set():
    with pytest.raises(DataFormatError, match="unknown task"):
        evaluate_heatmap_set(_set(task="Flu"), {}, progress=False)


def test_undecodable_rle():
    with pytest.raises(DataFormatError, match="c1/Edema"):
        validate_segmentation_json(
            {"c1": {"Edema": {"size": [4, 4], "counts": "garbage!!"}}}, source="x.json", decode=True
        )


def test_missing_prediction_is_empty_mask_marked_and_counted_in_one_line(caplog):
    gt_mask = np.zeros((4, 4), np.uint8)
    gt_mask[1:3, 1:3] = 1
    gt = {c: {"Edema": encode_rle(gt_mask), "Atelectasis": encode_rle(gt_mask)} for c in "abc"}
    pred = {"b": {"Edema": encode_rle(gt_mask)}}
    with caplog.at_level(logging.INFO):
        table = segmentation_table(pred, gt, source="hb.json", tasks=["Atelectasis", "Edema"])
    # one record for the 5 missing pairs, naming the source, the count and the first pair
    (record,) = [r for r in caplog.records if "no segmentation" in r.getMessage()]
    assert record.getMessage().startswith(
        "hb.json has no segmentation for 5 (image, task) pair(s) with a ground truth "
        "(first: a / Atelectasis)"
    )
    assert table.pred_missing.tolist() == [True, True, True, False, True, True]
    row = table.iloc[0]
    assert row.pred_area == 0 and np.isnan(row.iou_tp) and row.iou_full == 0.0
    assert table.iloc[3].iou_full == 1.0


def test_no_line_when_every_prediction_is_there(caplog):
    gt = {"c1": {"Edema": encode_rle(np.ones((4, 4), np.uint8))}}
    with caplog.at_level(logging.INFO):
        table = segmentation_table(gt, gt, tasks=["Edema"])
    assert "no segmentation" not in caplog.text
    assert table.pred_missing.tolist() == [False]
