"""Predictions, test metrics (against scikit-learn), curves and run naming."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score
from tests.training.training_tiny_data import TASK, tiny_config

from cxr_spurious.training.device import resolve_device
from cxr_spurious.training.engine import init_model
from cxr_spurious.training.outputs import (
    compute_test_metrics,
    embeddings_frame,
    flat_metrics,
    predict_images,
    predictions_frame,
    resampling_name,
    run_name,
    training_curves,
)


def test_predictions_and_embeddings_cover_every_image(tiny) -> None:
    manifest, cache = tiny
    cfg = tiny_config()
    model = init_model(cfg).eval()
    probs, embs = predict_images(model, manifest, cache, cfg, resolve_device("cpu"))
    preds = predictions_frame(manifest, probs, model.tasks, "erm")
    emb = embeddings_frame(manifest["image_id"].tolist(), embs)
    assert list(preds.columns) == ["image_id", "split", "model", f"p_{TASK}"]
    assert len(preds) == len(manifest) and preds["p_" + TASK].between(0, 1).all()
    assert (
        list(emb.columns) == ["image_id", *[f"e{j}" for j in range(model.embed_dim)]]
        and emb["e0"].dtype == np.float32
    )
    test = manifest[manifest["split"] == "test"]
    no_tube, _ = predict_images(model, test, cache, cfg, resolve_device("cpu"), render="no_tube")
    assert no_tube.shape == (len(test), 1) and not np.allclose(no_tube, probs[test.index])


def test_test_metrics_match_sklearn_on_the_subsets(tiny) -> None:
    manifest, _ = tiny
    rng = np.random.default_rng(0)
    preds = pd.DataFrame({"image_id": manifest["image_id"], f"p_{TASK}": rng.random(len(manifest))})
    out = compute_test_metrics(preds, manifest, [TASK], "tube", n_boot=30, seed=0)
    test = manifest[manifest["split"] == "test"].merge(preds, on="image_id")
    y, p, t = test[TASK].to_numpy(), test[f"p_{TASK}"].to_numpy(), test["tube"].to_numpy()
    robust = ((y == 1) & (t == 0)) | ((y == 0) & (t == 1))
    assert out[TASK]["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert out[TASK]["robust_auroc"] == pytest.approx(roc_auc_score(y[robust], p[robust]))
    assert out[TASK]["auroc_lo"] <= out[TASK]["auroc"] <= out[TASK]["auroc_hi"]
    assert out["n_test"] == len(test)
    again = compute_test_metrics(preds, manifest, [TASK], "tube", n_boot=30, seed=0)
    pd.testing.assert_series_equal(pd.Series(again[TASK]), pd.Series(out[TASK]))  # NaN-aware
    # 8 test images: robust AUROC is undefined in too many resamples for a CI; it says so
    assert np.isnan(out[TASK]["robust_auroc_hi"]) and out[TASK]["robust_auroc_dropped"] > 1.5
    assert "robust_auroc: no CI" in out[TASK]["ci_note"]
    flat = flat_metrics(out)
    assert (
        flat[f"test_{TASK}_auroc_hi"] == out[TASK]["auroc_hi"]
        and flat[f"test_{TASK}_robust_auroc_dropped"] == out[TASK]["robust_auroc_dropped"]
        and "test_subgroup" not in flat
        and f"test_{TASK}_ci_note" not in flat
    )


def test_training_curves_figure() -> None:
    history = pd.DataFrame(
        {
            "epoch": [1, 2],
            "train_loss": [1.0, 0.5],
            "dense_loss": [0.5, 0.2],
            "val_auroc": [0.6, 0.8],
            "val_robust_auroc": [0.3, 0.5],
            "selected": [False, True],
        }
    )
    fig = training_curves(history, "seg")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [line.get_ydata().tolist() for line in fig.axes[1].lines[:2]] == [[0.6, 0.8], [0.3, 0.5]]


@pytest.mark.parametrize("strategy", ["upsample", "reweight", "none"])
def test_the_resampling_strategy_reaches_the_run_name_through_parquet(
    tiny, tmp_path, strategy
) -> None:
    # the comparison's resampled variants were all named "...-none-..." in MLflow: no
    # producer labelled the manifest, and the training table dropped the label
    from cxr_spurious.debiasing.resampling import resample_manifest
    from cxr_spurious.training.data import build_training_table

    manifest, cache = tiny
    groups = manifest["tube"].fillna(-1).to_numpy(dtype=np.int64)
    resampled = resample_manifest(manifest, groups, strategy, seed=0)
    resampled.to_parquet(tmp_path / "resampled_manifest.parquet")  # as the catalog stores it
    stored = pd.read_parquet(tmp_path / "resampled_manifest.parquet")
    table = build_training_table(stored, cache, tiny_config(seed=1))
    cfg = tiny_config(seed=1)
    assert resampling_name(cfg, table) == strategy
    assert run_name(cfg, resampling_name(cfg, table)) == f"erm-erm-unet_small-{strategy}-seed1"


def test_run_name_and_resampling_label(tiny) -> None:
    manifest, _ = tiny
    cfg = tiny_config(supervision="seg", seed=2)
    assert resampling_name(cfg, manifest) == "none"
    tagged = manifest.copy()
    tagged.attrs["strategy"] = "balanced"
    assert run_name(cfg, resampling_name(cfg, tagged)) == "seg-seg-unet_small-balanced-seed2"
