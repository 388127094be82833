"""Per-image saliency table of a sweep model: lesion IoU / pointing hit and artefact share."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ContractError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.localization.evaluate import evaluate_heatmap_set
from cxr_spurious.localization.segmentation import upsample
from cxr_spurious.sweep.attribution import (
    SALIENCY_TABLE_COLUMNS,
    map_iou,
    pointing_hit,
    saliency_table,
)

S = 16


def _set(maps: np.ndarray, ids: list[str], gt: list[float], method: str) -> HeatmapSet:
    n = len(ids)
    index = pd.DataFrame(
        {
            "image_id": ids,
            "task": "Pneumothorax",
            "prob": 0.5,
            "gt": gt,
            "cxr_w": S,
            "cxr_h": S,
            "model": "m",
            "method": method,
        }
    )
    assert maps.shape[0] == n
    return HeatmapSet(index, maps)


def _masks() -> tuple[np.ndarray, np.ndarray]:
    lesion = np.zeros((2, S, S), bool)
    lesion[0, 4:8, 4:8] = True  # image a: positive
    artefact = np.zeros((2, S, S), bool)
    artefact[:, 12:, 12:] = True
    return lesion, artefact


def test_iou_and_hit() -> None:
    a = np.zeros((4, 4), bool)
    a[:2, :2] = True
    b = np.zeros((4, 4), bool)
    b[:2, :] = True
    assert map_iou(a, b) == pytest.approx(0.5)
    assert np.isnan(map_iou(np.zeros((4, 4)), np.zeros((4, 4))))
    m = np.zeros((4, 4))
    m[0, 1] = 3.0
    assert pointing_hit(m, a) == 1.0 and pointing_hit(m, ~a) == 0.0


def test_a_map_on_the_lesion_and_a_map_on_the_artefact() -> None:
    lesion, artefact = _masks()
    on_lesion = np.zeros((2, S, S), np.float32)
    on_lesion[:, 4:8, 4:8] = 1.0
    on_artefact = np.zeros((2, S, S), np.float32)
    on_artefact[:, 12:, 12:] = -2.0  # signed: counted by magnitude
    sets = {
        "m.lesion": _set(on_lesion, ["a", "b"], [1, 0], "lesion_map"),
        "m.art": _set(on_artefact, ["a", "b"], [1, 0], "artefact_map"),
    }
    table = saliency_table(sets, ["a", "b"], lesion, artefact, task="Pneumothorax")
    assert tuple(table.columns) == SALIENCY_TABLE_COLUMNS and len(table) == 4
    rows = table.set_index(["method", "image_id"])
    assert rows.loc[("lesion_map", "a"), "iou"] == pytest.approx(1.0)
    assert rows.loc[("lesion_map", "a"), "hit"] == 1.0
    assert np.isnan(rows.loc[("lesion_map", "b"), "iou"])  # negatives: no lesion to find
    assert rows.loc[("lesion_map", "a"), "artefact_mass"] == pytest.approx(0.0)
    assert rows.loc[("artefact_map", "b"), "artefact_mass"] == pytest.approx(1.0)
    assert rows.loc[("artefact_map", "a"), "hit"] == 0.0
    assert rows.loc[("artefact_map", "a"), "artefact_area"] == pytest.approx(16 / S**2)


def test_maps_are_brought_to_the_mask_size_and_inputs_are_checked() -> None:
    lesion, artefact = _masks()
    coarse = np.zeros((2, 4, 4), np.float32)
    coarse[:, 3, 3] = 1.0  # the corner cell = the artefact's corner at 16 px
    table = saliency_table(
        {"m.c": _set(coarse, ["a", "b"], [1, 0], "c")},
        ["a", "b"],
        lesion,
        artefact,
        task="Pneumothorax",
    )
    assert (table["artefact_mass"] > 0.5).all()
    with pytest.raises(ContractError, match="without masks"):
        saliency_table(
            {"m.c": _set(coarse, ["a", "z"], [1, 0], "c")},
            ["a", "b"],
            lesion,
            artefact,
            task="Pneumothorax",
        )
    with pytest.raises(ContractError, match="must both be"):
        saliency_table({}, ["a"], lesion, artefact, task="Pneumothorax")
    other = saliency_table(
        {"m.c": _set(coarse, ["a", "b"], [1, 0], "c")}, ["a", "b"], lesion, artefact, task="Edema"
    )
    assert other.empty and tuple(other.columns) == SALIENCY_TABLE_COLUMNS


def test_the_sweep_and_the_study_measure_artefact_mass_alike() -> None:
    """One definition of relevance mass: the sweep's ``artefact_mass`` / ``artefact_auroc``
    equal the localization evaluation's ``shortcut_<object>`` / ``shortcut_auroc_<object>``
    (what the study reports as tube mass) on the same maps, masks and image size, floor
    included (maps offset by 0.3, as a probability map's background)."""
    rng = np.random.default_rng(3)
    ids = ["p1_study1_view1_frontal", "p2_study1_view1_frontal", "p3_study1_view1_frontal"]
    maps = (rng.random((3, 6, 6)) + 0.3).astype(np.float32)
    maps[:, :, 5] += 1.0  # relevance on the artefact's columns
    lesion = np.zeros((3, S, S), bool)
    lesion[0, 2:7, 3:9] = True
    lesion[2, 9:14, 1:6] = True
    artefact = np.zeros((3, S, S), bool)
    artefact[:, :, 13:15] = True
    gt = [1.0, 0.0, 1.0]
    hset = _set(maps, ids, gt, "gradcam")
    sweep = saliency_table({"m.g": hset}, ids, lesion, artefact, task="Pneumothorax")
    study, _ = evaluate_heatmap_set(
        hset,
        {i: {"Pneumothorax": encode_rle(lesion[k].astype(np.uint8))} for k, i in enumerate(ids)},
        spurious_segmentations={
            i: {"Chest Tube": encode_rle(artefact[k].astype(np.uint8))} for k, i in enumerate(ids)
        },
        progress=False,
        workers=1,
    )
    study = study.set_index("image_id").loc[ids]
    np.testing.assert_allclose(
        sweep["artefact_mass"], study["shortcut_Chest Tube"], rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(sweep["artefact_auroc"], study["shortcut_auroc_Chest Tube"])
    ups = [upsample(m, S, S).numpy().astype(np.float64) for m in maps]
    raw = np.array([u[a].sum() / u.sum() for u, a in zip(ups, artefact)])  # floor included
    assert (sweep["artefact_mass"].to_numpy() > raw + 0.01).all()  # the floor is left out
