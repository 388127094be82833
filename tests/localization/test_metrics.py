import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from cxr_spurious.errors import ParameterError
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.localization import summary, tuning
from cxr_spurious.localization.metrics import (
    iou_from_counts,
    mass_rank_metrics,
    precision_recall_specificity,
    rle_counts,
    rle_pixel,
    segmentation_table,
    spurious_auroc,
)


def _masks(seed=0, shape=(13, 11)):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) > 0.6).astype(np.uint8), (rng.random(shape) > 0.5).astype(np.uint8)


def test_rle_counts_and_iou_match_numpy():
    p, g = _masks()
    pa, ga, inter = rle_counts(encode_rle(p), encode_rle(g))
    assert (pa, ga, inter) == (p.sum(), g.sum(), (p & g).sum())
    assert iou_from_counts(pa, ga, inter, true_pos_only=True) == (p & g).sum() / (p | g).sum()
    assert np.isnan(iou_from_counts(0, 5, 0, true_pos_only=True))
    assert iou_from_counts(0, 5, 0, true_pos_only=False) == 0.0
    assert np.isnan(iou_from_counts(0, 0, 0, true_pos_only=False))


def test_rle_pixel_matches_decoded_mask():
    _, g = _masks(1)
    rle = encode_rle(g)
    assert all(
        rle_pixel(rle, r, c) == g[r, c] for r in range(g.shape[0]) for c in range(g.shape[1])
    )


def test_precision_recall_specificity_against_sklearn():
    rows, preds, gts = {}, [], []
    for i in range(3):
        p, g = _masks(i)
        rows[f"c{i}"] = {"Edema": encode_rle(p)}
        preds.append(p.ravel())
        gts.append(g.ravel())
        rows.setdefault("gt", {})[f"c{i}"] = {"Edema": encode_rle(g)}
    gt = rows.pop("gt")
    out = precision_recall_specificity(segmentation_table(rows, gt, tasks=["Edema"])).iloc[0]
    y, s = np.concatenate(gts), np.concatenate(preds)
    assert np.isclose(out["precision"], precision_score(y, s))
    assert np.isclose(out["recall/sensitivity"], recall_score(y, s))
    assert np.isclose(out["specificity"], recall_score(1 - y, 1 - s))


def test_reference_bootstrap_equals_global_seed_reimplementation():
    rng = np.random.default_rng(3)
    wide = pd.DataFrame(rng.random((15, 2)), columns=["Cardiomegaly", "Edema"])
    wide.iloc[::4, 0] = np.nan
    ours = summary.reference_bootstrap(wide, n_boot=50, seed=0)
    np.random.seed(0)  # the reference's own procedure, verbatim semantics
    ref = [
        wide.iloc[np.random.choice(len(wide), size=len(wide), replace=True)].mean()
        for _ in range(50)
    ]
    np.testing.assert_allclose(
        ours[["Cardiomegaly", "Edema"]].to_numpy(),
        pd.DataFrame(ref)[["Cardiomegaly", "Edema"]].to_numpy(),
        rtol=1e-12,
    )
    lo, mean, hi = summary.reference_ci(ours["Edema"])
    srt = ours["Edema"].sort_values().to_numpy()
    assert (lo, hi) == (round(srt[int(0.025 * 50) - 1], 3), round(srt[int(0.975 * 50) - 1], 3))


def test_mass_rank_metrics_small_case():
    score = np.array([[0.9, 0.1], [0.5, 0.0]])
    gt = np.array([[1, 0], [0, 0]])
    out = mass_rank_metrics(score, gt, top_k=2)
    assert np.isclose(out["relevance_mass"], 0.9 / 1.5)
    assert out["relevance_rank"] == 1.0 and out["top_k_intersection"] == 0.5
    assert np.isclose(out["pixel_auroc"], roc_auc_score(gt.ravel(), score.ravel()))
    assert all(np.isnan(v) for v in mass_rank_metrics(score, np.zeros_like(gt)).values())


def test_spurious_auroc_ranks_object_pixels_outside_the_lesion():
    rng = np.random.default_rng(3)
    score = rng.random((9, 8))
    tube = np.zeros((9, 8), bool)
    tube[:, 2] = True
    lesion = np.zeros((9, 8), bool)
    lesion[:3, :4] = True
    keep = ~lesion
    expected = roc_auc_score(tube[keep], score[keep])
    assert np.isclose(spurious_auroc(score, tube, exclude=lesion), expected)
    assert np.isclose(spurious_auroc(score, tube), roc_auc_score(tube.ravel(), score.ravel()))
    coarse = np.kron(np.array([[0.0, 1.0], [0.0, 1.0]]), np.ones((5, 4)))[
        :9, :8
    ]  # a blob over the tube's half
    tube_right = np.zeros((9, 8), bool)
    tube_right[:, 6] = True
    assert spurious_auroc(coarse, tube_right) > 0.7 and spurious_auroc(coarse, tube) < 0.3
    assert np.isnan(spurious_auroc(np.ones((9, 8)), tube))  # constant map: no spatial information
    assert np.isnan(spurious_auroc(score, np.zeros((9, 8), bool)))  # no object


def test_tuning_matches_brute_force():
    per_map = pd.DataFrame(
        {
            "task": ["Edema"] * 3,
            "in_gt": True,
            "gt_area": [10, 10, 0],
            "tune_area_0.2": [20, 5, 3],
            "tune_inter_0.2": [8, 5, 0],
            "tune_area_0.5": [9, 2, 0],
            "tune_inter_0.5": [7, 2, 0],
        }
    )
    best, grid = tuning.tune_thresholds(per_map, [0.2, 0.5])
    m02 = np.mean([8 / 22, 5 / 10])
    m05 = np.mean([7 / 12, 2 / 10])
    assert np.isclose(grid.loc[0, "mIoU"], m02) and np.isclose(grid.loc[1, "mIoU"], m05)
    assert best.iloc[0]["threshold"] == (0.2 if m02 > m05 else 0.5)
    # the reference's tune_heatmap_threshold grid, np.arange(0.2, .8, .1), written out: the
    # float steps overshoot, so 0.8 (0.8000000000000003) is tuned too; columns named by :g
    grid_02 = tuning.threshold_grid(0.2, 0.8, 0.1)
    assert grid_02 == pytest.approx([0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], abs=1e-12)
    assert [f"{t:g}" for t in grid_02] == ["0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8"]
    assert tuning.threshold_grid(0.0, 0.9, 0.1) == pytest.approx(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], abs=1e-12
    )  # the reference's probability cutoffs, np.arange(0, .9, .1): 0.9 excluded


def test_a_finer_grid_keeps_its_values_in_the_tuning_tables():
    """A grid step of 0.05: the best threshold is written as 0.35, not the reference's
    one-decimal 0.3 (a value of the grid that scored worse); the 0.1 grids write as before."""
    grid = tuning.threshold_grid(0.2, 0.5, 0.05)
    assert len(grid) == 6
    per_map = pd.DataFrame({"task": ["Edema"], "in_gt": True, "gt_area": [10]})
    for t in grid:  # the IoU peaks (1.0) at 0.35
        per_map[f"tune_area_{t:g}"] = [10 if abs(t - 0.35) < 1e-9 else 20]
        per_map[f"tune_inter_{t:g}"] = [10]
    best, table = tuning.tune_thresholds(per_map, grid)
    assert best.iloc[0]["threshold"] == 0.35
    assert table["threshold"].tolist() == [0.2, 0.25, 0.3, 0.35, 0.4, 0.45]
    assert table.loc[table["threshold"] == 0.35, "mIoU"].item() == 1.0
    cutoffs = tuning.tune_probability_cutoffs(
        _prob_tuning_table(), tuning.threshold_grid(0.0, 0.9, 0.1)
    )["prob_threshold"]
    assert sorted(set(cutoffs)) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def test_a_task_can_have_its_own_probability_cutoffs():
    """The reference's one exception: Lung Lesion is tuned from 0.1, the others from 0."""
    table = _prob_tuning_table()
    lesion = table.assign(task="Lung Lesion")
    both = pd.concat([table, lesion], ignore_index=True)
    grid = tuning.threshold_grid(0.0, 0.9, 0.1)
    out = tuning.tune_probability_cutoffs(
        both, grid, {"Lung Lesion": tuning.threshold_grid(0.1, 0.9, 0.1)}
    )
    cut = out.groupby("task")["prob_threshold"].apply(list)
    assert cut["Lung Lesion"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert cut.drop("Lung Lesion").map(lambda c: c[0] == 0.0 and len(c) == 9).all()
    # the same mIoU at the cutoffs both grids share
    alone = tuning.tune_probability_cutoffs(lesion, grid)
    shared = alone[alone["prob_threshold"] >= 0.1].reset_index(drop=True)
    pd.testing.assert_frame_equal(out[out["task"] == "Lung Lesion"].reset_index(drop=True), shared)


def test_one_sort_per_map_gives_the_rank_metrics_of_separate_sorts():
    """``RankedScore`` (one sort shared by pixel AUROC, relevance rank, top-k and every
    spurious AUROC) against scikit-learn and scipy's average ranks, ties included."""
    from scipy.stats import rankdata

    from cxr_spurious.localization.metrics import RankedScore

    rng = np.random.default_rng(21)
    for _ in range(25):
        score = np.round(rng.random((23, 19)), int(rng.integers(1, 4)))  # many ties
        gt = rng.random((23, 19)) < 0.2
        tube = rng.random((23, 19)) < 0.1
        ranked = RankedScore(score)
        s, g = score.ravel(), gt.ravel()
        if 0 < g.sum() < g.size:
            assert ranked.auroc(gt) == pytest.approx(roc_auc_score(g, s), abs=1e-12)
            r = rankdata(s)  # the Mann-Whitney sum from scipy's ranks, exactly
            n_pos, n_neg = int(g.sum()), int((~g).sum())
            assert ranked.auroc(gt) == (r[g].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
        keep = ~g
        want = roc_auc_score(tube.ravel()[keep], s[keep])
        assert spurious_auroc(score, tube, exclude=gt, ranked=ranked) == pytest.approx(
            want, abs=1e-12
        )
        assert spurious_auroc(score, tube, exclude=gt) == spurious_auroc(
            score, tube, exclude=gt, ranked=ranked
        )
        order = np.argsort(-s, kind="stable")
        k = 7
        got = mass_rank_metrics(score, gt, top_k=k, ranked=ranked)
        assert got == mass_rank_metrics(score, gt, top_k=k)
        assert got["relevance_rank"] == g[order[: g.sum()]].mean()
        assert got["top_k_intersection"] == g[order[:k]].mean()


def test_rank_metrics_of_a_constant_map_are_nan():
    """A constant map (the evaluation passes one as zeros) has no ranking: its relevance
    rank, top-k and pixel AUROC would score the mask's place in pixel order, so NaN."""
    gt = np.zeros((6, 5), np.uint8)
    gt[0, :] = 1  # the first pixels in C order: a tie-break in pixel order scores 1.0
    for value in (0.0, 0.7):
        out = mass_rank_metrics(np.full((6, 5), value), gt, top_k=5)
        assert np.isnan(out["relevance_rank"]) and np.isnan(out["top_k_intersection"])
        assert np.isnan(out["pixel_auroc"])
    assert np.isnan(mass_rank_metrics(np.zeros((6, 5)), gt)["relevance_mass"])  # no mass
    assert np.isclose(mass_rank_metrics(np.full((6, 5), 0.7), gt)["relevance_mass"], 5 / 30)


def _prob_tuning_table():
    """Maps of one task: in the gt, outside it, a tie on a cutoff and a gt pair without a map."""
    return pd.DataFrame(
        {
            "task": "Edema",
            "image_id": ["a", "b", "c", "d", "e"],
            "in_gt": [True, True, False, True, True],
            "prob": [0.9, 0.5, 0.7, 0.2, np.nan],
            "gt_area": [10, 10, 0, 0, 10],
            "tune_otsu_area": [12, 8, 6, 0, np.nan],  # e: no map
            "tune_otsu_inter": [8, 4, 0, 0, np.nan],
            # the configured evaluation's own counts (a cutoff of 0.95): not what is tuned
            "pred_area": [0, 0, 0, 0, 0],
            "intersection": [0, 0, 0, 0, 0],
        }
    )


def test_probability_tuning_scores_every_map_like_the_reference():
    """The reference's ``compute_miou``: every map (a CXR outside the gt against an empty
    mask), plain Otsu counts, mask kept when ``prob > cutoff`` (a tie empties it), gt pairs
    without a map left out."""
    out = tuning.tune_probability_cutoffs(_prob_tuning_table(), [0.0, 0.5, 0.8])
    # cutoff 0: a 8/14, b 4/14, c 0/6 (outside the gt, kept), d NaN (both empty)
    # cutoff 0.5: b's prob is 0.5, not > 0.5: empty, IoU 0 against its gt; c kept
    # cutoff 0.8: only a kept; b 0, c NaN (both empty)
    expected = [np.mean([8 / 14, 4 / 14, 0.0]), np.mean([8 / 14, 0.0, 0.0]), np.mean([8 / 14, 0])]
    assert out["mIoU"].tolist() == [round(float(v), 3) for v in expected]
    assert out["prob_threshold"].tolist() == [0.0, 0.5, 0.8] and set(out["task"]) == {"Edema"}
    with pytest.raises(ParameterError, match="tune_otsu_area.*tuning grid"):
        tuning.tune_probability_cutoffs(
            _prob_tuning_table().drop(columns=["tune_otsu_area"]), [0.5]
        )


def test_a_task_without_a_finite_miou_gets_no_tuned_threshold(caplog):
    """Edema has a positive map; Cardiomegaly's only map has an empty prediction at every
    threshold: its mIoUs are NaN, and its threshold is left empty (not the grid's first)."""
    per_map = pd.DataFrame(
        {
            "task": ["Edema", "Cardiomegaly"],
            "in_gt": True,
            "gt_area": [10, 10],
            "tune_area_0.2": [20, 0],
            "tune_inter_0.2": [8, 0],
            "tune_area_0.5": [12, 0],
            "tune_inter_0.5": [7, 0],
        }
    )
    with caplog.at_level("WARNING", logger="cxr_spurious.localization.tuning"):
        best, grid = tuning.tune_thresholds(per_map, [0.2, 0.5], label="erm.gradcam")
    by_task = best.set_index("task")["threshold"]
    assert by_task["Edema"] == 0.5 and np.isnan(by_task["Cardiomegaly"])
    assert grid[grid["task"] == "Cardiomegaly"]["mIoU"].isna().all()
    assert "erm.gradcam: task Cardiomegaly has no finite mIoU" in caplog.text
    assert "Edema" not in caplog.text
