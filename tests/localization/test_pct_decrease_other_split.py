"""Maps of a split the human benchmark does not cover get no percentage decrease, not an error.

The localization README advises tuning on another split's maps (a run with
``saliency.split: val``). Since ``evaluate_human_benchmark`` keeps only the CXRs the benchmark
covers (CheXlocalize's and the phantom's: test), such a run's per-CXR table and the
benchmark's share no CXR, and ``build_reference_reports`` raised "ContractError: percentage
decrease: the model and human-benchmark per-CXR tables share 0 CXR(s)". Now that set's
``*_pct_decrease`` is skipped with a warning naming the set and the split; sets that share
CXRs with the benchmark are paired on them as before (checked against a by-hand bootstrap).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.io.masks import encode_rle
from cxr_spurious.pipelines.localization.nodes import (
    build_reference_reports,
    evaluate_human_benchmark,
)

from .test_human_benchmark_split import SPLITS, TASKS, TEST, W, _box, _fixture

VAL = [c for c, s in SPLITS.items() if s == "val"]
N_BOOT, SEED = 40, 0


def _model(cxrs: list[str], set_name: str, gt: dict, seed: int) -> tuple[pd.DataFrame, dict]:
    """A set's per-map rows on ``cxrs`` (scored like the benchmark) and its decoded masks."""
    rng = np.random.default_rng(seed)
    masks, points = {}, {}
    for cxr in cxrs:
        masks[cxr], points[cxr] = {}, {}
        for task in TASKS:
            r0, c0 = int(rng.integers(0, 10)), int(rng.integers(0, 8))
            masks[cxr][task] = _box(r0, r0 + 9, c0, c0 + 7)
            points[cxr][task] = [[float(rng.integers(0, W)), float(rng.integers(0, 20))]]
    rle = {c: {t: encode_rle(m) for t, m in tasks.items()} for c, tasks in masks.items()}
    table = evaluate_human_benchmark(gt, rle, points)
    model, method = set_name.split(".")
    return table.assign(set=set_name, model=model, method=method, prob=0.5), {
        "masks": masks,
        "points": points,
    }


def _by_hand_values(
    cxrs: list[str], gt_masks: dict, masks: dict, points: dict
) -> dict[str, np.ndarray]:
    """(CXR, task) IoU and hit (NaN where the gt is empty: true positives only), rows sorted."""
    iou = np.full((len(cxrs), len(TASKS)), np.nan)
    hit = np.full((len(cxrs), len(TASKS)), np.nan)
    for i, cxr in enumerate(sorted(cxrs)):
        for j, task in enumerate(TASKS):
            g = gt_masks[cxr][task].astype(bool)
            if not g.any():
                continue
            m = masks[cxr][task].astype(bool)
            iou[i, j] = (g & m).sum() / (g | m).sum()
            x, y = points[cxr][task][0]
            hit[i, j] = float(g[int(y), int(x)])
    return {"iou": iou, "hitmiss": hit}


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """NaN-skipping mean, NaN where nothing is finite (pandas' ``mean``), without warnings."""
    finite = np.isfinite(values)
    counts = finite.sum(axis=axis)
    sums = np.where(finite, values, 0.0).sum(axis=axis)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _by_hand_pct_decrease(pred: np.ndarray, hb: np.ndarray) -> pd.DataFrame:
    """CheXlocalize's ``create_pct_diff_df`` on two (CXR, task) tables of the same CXRs.

    ``np.random.seed``-style draws of ``n`` rows per replicate, NaN-skipping task means
    (pandas' ``mean``), the percentage decrease per replicate, order-statistic CIs
    (``compute_cis``), all rounded to 3 with numpy's rounding, as the reference's numpy floats.
    """
    n = len(pred)
    rs = np.random.RandomState(SEED)
    idx = [rs.choice(n, size=n, replace=True) for _ in range(N_BOOT)]
    pred_bs = np.array([_nanmean(pred[i], axis=0) for i in idx])
    hb_bs = np.array([_nanmean(hb[i], axis=0) for i in idx])

    def ci(values: np.ndarray) -> tuple[float, float]:
        """Order statistics (NaN last), rounded to 3 like the reference's ``compute_cis``."""
        ordered = np.sort(values)
        lo, hi = ordered[int(0.025 * N_BOOT) - 1], ordered[int(0.975 * N_BOOT) - 1]
        return np.round(lo, 3), np.round(hi, 3)

    rows = {}
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0: a NaN replicate
        pct_bs = (hb_bs - pred_bs) / hb_bs
        hb_avg, pred_avg = _nanmean(hb_bs, axis=1), _nanmean(pred_bs, axis=1)
        avg_bs = 100 * (hb_avg - pred_avg) / hb_avg
    for j, task in enumerate(TASKS):
        h, p = float(_nanmean(hb_bs[:, j], axis=0)), float(_nanmean(pred_bs[:, j], axis=0))
        lo, hi = ci(pct_bs[:, j])
        rows[task] = [
            h,
            p,
            np.round((h - p) / h * 100, 3),
            np.round(lo * 100, 3),
            np.round(hi * 100, 3),
        ]
    out = pd.DataFrame.from_dict(
        rows, orient="index", columns=["hb", "pred", "pct_diff", "pct_diff_lower", "pct_diff_upper"]
    )
    out = out.sort_values("pct_diff", ascending=False)
    avg_h = np.round(float(_nanmean(out["hb"].to_numpy(), axis=0)), 3)
    avg_p = np.round(float(_nanmean(out["pred"].to_numpy(), axis=0)), 3)
    lo, hi = ci(avg_bs)
    out.loc["Average"] = [avg_h, avg_p, np.round((avg_h - avg_p) / avg_h * 100, 3), lo, hi]
    return out


def _assert_by_hand(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    got = got.set_index(got.columns[0])
    assert list(got.index) == list(expected.index)
    for col in expected.columns:
        np.testing.assert_allclose(
            got[col].to_numpy(float), expected[col].to_numpy(float), rtol=0, atol=1e-9, err_msg=col
        )


@pytest.fixture
def data() -> tuple[dict, dict, pd.DataFrame, dict, dict]:
    gt, hb, points, gt_masks, hb_masks = _fixture()
    return gt, gt_masks, evaluate_human_benchmark(gt, hb, points), hb_masks, points


def test_a_val_run_skips_the_percentage_decrease_with_a_warning(data, caplog) -> None:
    """The audit's reproducer: a model's maps on the val split, the benchmark on test."""
    gt, _, hb_table, _, _ = data
    model, _ = _model(VAL, "m.gradcam", gt, seed=7)
    assert not set(model["image_id"]) & set(hb_table["image_id"])  # the val run's case
    with caplog.at_level(logging.WARNING):
        reports = build_reference_reports(
            model, hb_table, n_boot=N_BOOT, seed=SEED, true_pos_only=True, split="val"
        )
    assert not [k for k in reports if k.endswith("pct_decrease")]
    # the set's own tables and the benchmark's are still written
    assert list(reports["hitmiss_results_per_cxr"]["img_id"]) == VAL
    assert sorted(reports["hitmiss_humanbenchmark_results_per_cxr"]["img_id"]) == TEST
    assert "iou_summary_results" in reports and "hb_precision_recall_specificity" in reports
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0]
    assert message.startswith("m.gradcam: ")
    assert "saliency.split: val" in message and "share no CXR with the human benchmark" in message
    assert "iou_pct_decrease and hitmiss_pct_decrease skipped" in message


def test_only_the_set_without_shared_cxrs_is_skipped(data, caplog) -> None:
    """Several sets: one on the benchmark's CXRs, one partly on them, one on val only."""
    gt, gt_masks, hb_table, hb_masks, hb_points = data
    on_test, test_maps = _model(TEST, "a.gradcam", gt, seed=1)
    partly, part_maps = _model(VAL + TEST[:2], "b.gradcam", gt, seed=2)
    on_val, _ = _model(VAL, "c.gradcam", gt, seed=3)
    per_map = pd.concat([on_test, partly, on_val], ignore_index=True)
    with caplog.at_level(logging.WARNING):
        reports = build_reference_reports(
            per_map, hb_table, n_boot=N_BOOT, seed=SEED, true_pos_only=True, split="val"
        )
    for set_name, cxrs, maps in (
        ("a.gradcam", TEST, test_maps),
        ("b.gradcam", TEST[:2], part_maps),  # paired on the shared CXRs only
    ):
        pred = _by_hand_values(cxrs, gt_masks, maps["masks"], maps["points"])
        human = _by_hand_values(cxrs, gt_masks, hb_masks, hb_points)
        for metric in ("iou", "hitmiss"):
            expected = _by_hand_pct_decrease(pred[metric], human[metric])
            _assert_by_hand(reports[f"{set_name}/{metric}_pct_decrease"], expected)
    assert not [k for k in reports if k.startswith("c.gradcam/") and k.endswith("pct_decrease")]
    assert "c.gradcam/iou_results_per_cxr" in reports
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("c.gradcam: ")


def test_the_test_split_case_is_unchanged_and_matches_the_by_hand_bootstrap(data, caplog) -> None:
    """One set on the benchmark's split: the reference's own case, paired on every CXR."""
    gt, gt_masks, hb_table, hb_masks, hb_points = data
    model, maps = _model(TEST, "m.gradcam", gt, seed=5)
    with caplog.at_level(logging.WARNING):
        reports = build_reference_reports(
            model, hb_table, n_boot=N_BOOT, seed=SEED, true_pos_only=True, split="test"
        )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    pred = _by_hand_values(TEST, gt_masks, maps["masks"], maps["points"])
    human = _by_hand_values(TEST, gt_masks, hb_masks, hb_points)
    for metric in ("iou", "hitmiss"):
        expected = _by_hand_pct_decrease(pred[metric], human[metric])
        assert expected["pct_diff"].notna().all()
        _assert_by_hand(reports[f"{metric}_pct_decrease"], expected)


def test_a_set_sharing_cxrs_but_no_task_is_skipped_with_a_warning(data, caplog) -> None:
    """Maps of the benchmark's CXRs for a task it did not annotate: no pairing, no error.

    ``paired_per_cxr`` raised "share N CXR(s) and 0 task(s); they cannot be paired" here."""
    gt, _, hb_table, _, _ = data
    model, _ = _model(TEST, "m.gradcam", gt, seed=7)
    model = model.assign(task="Edema")  # a CheXlocalize task the benchmark lacks
    assert set(model["image_id"]) & set(hb_table["image_id"])
    with caplog.at_level(logging.WARNING):
        reports = build_reference_reports(
            model, hb_table, n_boot=N_BOOT, seed=SEED, true_pos_only=False, split="test"
        )
    assert not [k for k in reports if k.endswith("pct_decrease")]
    assert "iou_summary_results" in reports
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("m.gradcam: ") and "but no task" in warnings[0]
    assert "Edema" in warnings[0] and TASKS[0] in warnings[0]
    assert "iou_pct_decrease and hitmiss_pct_decrease skipped" in warnings[0]
