"""One sweep model's row: AUROCs vs scikit-learn, reliance from render swaps, patient CIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cxr_spurious.errors import ContractError
from cxr_spurious.localization.metrics import relevance_mass
from cxr_spurious.stats.bootstrap import bootstrap_indices
from cxr_spurious.sweep.grid import Cell, config_hash
from cxr_spurious.sweep.metrics import (
    artefact_attribution,
    composed_score,
    model_metrics,
    model_row,
    render_table,
)
from cxr_spurious.sweep.summary import metric_columns, summarise_cells

TASK = "Pneumothorax"
N = 120


def _world(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.Series]:
    """Test images of 60 patients (2 each) scored by a model that reads the artefact."""
    rng = np.random.default_rng(seed)
    ids = [f"t{i:03d}" for i in range(N)]
    y = rng.integers(0, 2, N)
    has = pd.Series(rng.integers(0, 2, N).astype(bool), index=pd.Index(ids, name="image_id"))
    manifest = pd.DataFrame(
        {"image_id": ids, "patient_id": [f"p{i // 2}" for i in range(N)], "split": "test", TASK: y}
    )
    base = 0.1 + 0.3 * y + 0.2 * rng.random(N)
    p = {
        "original": base,
        "with_marker_port": base + 0.25 + 0.1 * rng.random(N),
        "no_lesion": base - 0.3 * y,
    }
    preds = pd.concat(
        [pd.DataFrame({"image_id": ids, "render": r, f"p_{TASK}": v}) for r, v in p.items()],
        ignore_index=True,
    )
    return preds, manifest, has


def _table(seed: int = 0) -> pd.DataFrame:
    preds, manifest, has = _world(seed)
    return render_table(preds, manifest, has, task=TASK, artefact="marker_port")


def test_render_table_composes_the_test_image() -> None:
    preds, manifest, has = _world()
    table = render_table(preds, manifest, has, task=TASK, artefact="marker_port")
    wide = preds.pivot(index="image_id", columns="render", values=f"p_{TASK}")
    expected = np.where(has.to_numpy(), wide["with_marker_port"], wide["original"])
    np.testing.assert_allclose(composed_score(table), expected)
    np.testing.assert_allclose(table["p_no_lesion"], wide["no_lesion"])
    with pytest.raises(ContractError, match="with_marker_port"):
        render_table(
            preds[preds["render"] != "with_marker_port"],
            manifest,
            has,
            task=TASK,
            artefact="marker_port",
        )
    with pytest.raises(ContractError, match="assignment"):
        render_table(preds, manifest, has.iloc[:-3], task=TASK, artefact="marker_port")


def test_aurocs_match_scikit_learn() -> None:
    table = _table()
    row = model_metrics(table, n_boot=200, seed=0)
    y, s, has = table["label"], composed_score(table), table["has_artefact"].to_numpy()
    assert row["auroc"] == pytest.approx(roc_auc_score(y, s))
    robust = ((y == 1) & ~has) | ((y == 0) & has)
    assert row["robust_auroc"] == pytest.approx(roc_auc_score(y[robust], s[robust]))
    for name in ("auroc", "robust_auroc"):
        assert row[f"{name}_lo"] <= row[name] <= row[f"{name}_hi"]
        assert row[f"{name}_dropped"] == 0
    assert row["n_test"] == N and row["n_with_artefact"] == int(has.sum())


def test_reliance_is_the_render_swap_difference() -> None:
    table = _table()
    row = model_metrics(table, n_boot=200, seed=0)
    has = table["has_artefact"].to_numpy()
    delta = (table["p_with_artefact"] - table["p_original"]).to_numpy()
    assert row["artefact_reliance"] == pytest.approx(delta[has].mean())
    assert row["artefact_rise"] == pytest.approx(delta[~has].mean())
    positive = table["label"].to_numpy() == 1
    lesion = (table["p_original"] - table["p_no_lesion"]).to_numpy()
    assert row["lesion_reliance"] == pytest.approx(lesion[positive].mean())
    assert row["lesion_reliance"] == pytest.approx(0.3)


def test_reliance_ci_resamples_patients() -> None:
    table = _table()
    row = model_metrics(table, n_boot=300, seed=5)
    has = table["has_artefact"].to_numpy()
    delta = np.where(has, (table["p_with_artefact"] - table["p_original"]).to_numpy(), np.nan)
    draws = bootstrap_indices(N, 300, 5, table["patient_id"].to_numpy())
    reps = np.array([np.nanmean(delta[i]) for i in draws])
    assert row["artefact_reliance_lo"] == pytest.approx(np.quantile(reps, 0.025))
    assert row["artefact_reliance_hi"] == pytest.approx(np.quantile(reps, 0.975))
    again = model_metrics(table, n_boot=300, seed=5)
    assert again == row


def test_rare_robust_group_gets_a_note_not_an_interval() -> None:
    table = _table()
    # one positive without the artefact: most resamples have no positive in the robust subset
    keep = (table["label"] == 0) | table["has_artefact"]
    first_free_positive = table.index[(table["label"] == 1) & ~table["has_artefact"]][0]
    keep.loc[first_free_positive] = True
    row = model_metrics(table[keep].reset_index(drop=True), n_boot=200, seed=0)
    assert np.isfinite(row["robust_auroc"])
    assert np.isnan(row["robust_auroc_lo"]) and row["robust_auroc_dropped"] > 10
    assert "robust_auroc: no CI" in row["ci_note"]


def test_saliency_metrics_per_method() -> None:
    table = _table()
    has = table["has_artefact"].to_numpy()
    rng = np.random.default_rng(1)
    frames = []
    for method in ("gradcam", "occlusion"):
        frames.append(
            pd.DataFrame(
                {
                    "image_id": table["image_id"],
                    "method": method,
                    "iou": np.where(table["label"] == 1, rng.random(N), np.nan),
                    "hit": np.where(table["label"] == 1, rng.integers(0, 2, N), np.nan),
                    # a value on images without the artefact too: it must not count
                    "artefact_mass": rng.random(N),
                    "artefact_auroc": rng.random(N),
                    "artefact_area": np.where(has, 0.02, 0.0),
                }
            )
        )
    saliency = pd.concat(frames, ignore_index=True)
    row = model_metrics(table, saliency, n_boot=100, seed=0)
    for method, frame in zip(("gradcam", "occlusion"), frames):
        assert row[f"{method}_miou"] == pytest.approx(np.nanmean(frame["iou"]))
        assert row[f"{method}_hit_rate"] == pytest.approx(np.nanmean(frame["hit"]))
        assert row[f"{method}_artefact_mass"] == pytest.approx(frame["artefact_mass"][has].mean())
        assert row[f"{method}_artefact_auroc"] == pytest.approx(frame["artefact_auroc"][has].mean())
        assert row[f"{method}_artefact_mass_lo"] <= row[f"{method}_artefact_mass_hi"]
    assert row["artefact_area"] == pytest.approx(0.02)
    with pytest.raises(ContractError, match="repeats"):
        model_metrics(table, pd.concat([saliency, saliency]), n_boot=10, seed=0)


def test_artefact_attribution_uses_mask_mass_and_pixel_auroc() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((3, 8, 8))
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0, :2, :] = True  # a band of 16 pixels
    masks[1, 3:5, 3:5] = True
    lesions = np.zeros_like(masks)
    lesions[1, 5:, 5:] = True
    out = artefact_attribution(maps, masks, lesions)
    norm = (maps[0] - maps[0].min()) / (maps[0].max() - maps[0].min())  # the study's map
    assert out["artefact_mass"][0] == pytest.approx(norm[:2].sum() / norm.sum(), rel=1e-6)
    assert out["artefact_area"].tolist() == pytest.approx([16 / 64, 4 / 64, 0.0])
    keep = ~lesions[1].ravel()
    expected = roc_auc_score(masks[1].ravel()[keep], maps[1].ravel()[keep])
    assert out["artefact_auroc"][1] == pytest.approx(expected)
    assert np.isnan(out["artefact_mass"][2]) and np.isnan(out["artefact_auroc"][2])


def test_artefact_mass_leaves_out_the_maps_floor() -> None:
    """A probability map's background floor is not relevance: a map that rises only on the
    artefact puts all its mass there, and a constant map has no mass share at all."""
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[:, 2:4, :] = True
    maps = np.full((2, 8, 8), 0.2)
    maps[0, 2:4, :] = 0.9
    out = artefact_attribution(maps, masks)
    assert out["artefact_mass"][0] == pytest.approx(1.0)
    assert np.isnan(out["artefact_mass"][1])
    assert relevance_mass(maps[0] * 7.0 + 3.0, masks[0]) == pytest.approx(1.0)  # affine-free


def test_artefact_attribution_checks_its_inputs() -> None:
    masks = np.ones((2, 4, 4), dtype=bool)
    with pytest.raises(ContractError, match="non-negative"):
        artefact_attribution(-np.ones((2, 4, 4)), masks)
    with pytest.raises(ContractError, match="one shape"):
        artefact_attribution(np.ones((2, 4, 5)), masks)


def test_model_rows_feed_the_summary() -> None:
    rows = []
    for seed in (0, 1):
        cell = Cell("marker_port", "strong", 0.9, 0.1, "erm", 0.0, seed)
        metrics = model_metrics(_table(seed), n_boot=50, seed=seed)
        rows.append(model_row(cell, metrics, config_hash(cell, {"epochs": 1})))
    models = pd.DataFrame(rows)
    assert list(models.columns[:10]) == [
        "artefact",
        "strength",
        "p_given_ptx",
        "p_given_no_ptx",
        "supervision",
        "location_fraction",
        "seed",
        "confounding",
        "namespace",
        "config_hash",
    ]
    assert models["namespace"].nunique() == 2 and models["config_hash"].nunique() == 2
    assert "confounding" not in metric_columns(models)
    summary = summarise_cells(models)
    assert summary["n_seeds"].tolist() == [2]
    assert summary["artefact_reliance"].iloc[0] == pytest.approx(models["artefact_reliance"].mean())
