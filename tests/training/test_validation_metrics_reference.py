"""Validation robust AUROC against scikit-learn on Saab et al.'s subset: positives *without*
the spurious feature vs negatives *with* it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from tests.training.training_tiny_data import TASK, tiny_config

from cxr_spurious.training.data import CacheBatches, build_training_table, make_loader
from cxr_spurious.training.device import resolve_device
from cxr_spurious.training.engine import evaluate, init_model, predict, validation_metrics


def _saab(y: np.ndarray, p: np.ndarray, subgroup: np.ndarray) -> float:
    keep = ((y == 1) & (subgroup == 0)) | ((y == 0) & (subgroup == 1))
    return float(roc_auc_score(y[keep], p[keep]))


def test_validation_robust_auroc_is_the_mean_over_tasks_of_saabs_auroc() -> None:
    rng = np.random.default_rng(0)
    n = 200
    subgroup = (rng.random(n) < 0.5).astype(float)
    labels = (rng.random((n, 2)) < 0.4).astype(float)
    # the model leans on the spurious feature: robust and reverse AUROC differ a lot
    probs = 0.3 * labels + 0.4 * subgroup[:, None] + 0.3 * rng.random((n, 2))
    out = validation_metrics(labels, probs, subgroup)
    robust = [_saab(labels[:, t], probs[:, t], subgroup) for t in range(2)]
    assert out["robust_auroc"] == pytest.approx(np.mean(robust), abs=1e-12)
    assert out["robust_auroc"] < 0.5  # the spurious direction is against the label here
    aurocs = [roc_auc_score(labels[:, t], probs[:, t]) for t in range(2)]
    assert out["auroc"] == pytest.approx(np.mean(aurocs), abs=1e-12)


def test_evaluate_reads_the_subgroup_column(tiny) -> None:
    manifest, cache = tiny
    cfg = tiny_config()
    table = build_training_table(manifest, cache, cfg)
    val = table[table["split"] == "val"].reset_index(drop=True)
    model = init_model(cfg)
    loader = make_loader(
        CacheBatches(val, cache, cfg, train=False), 5, seed=0, shuffle=False, drop_last=False
    )
    cpu = resolve_device("cpu")
    metrics = evaluate(model, loader, val, cfg, cpu)
    probs, _ = predict(model, loader, cpu)
    y, t = val["y_" + TASK].to_numpy(dtype=float), val["subgroup"].to_numpy(dtype=float)
    assert metrics["robust_auroc"] == pytest.approx(_saab(y, probs[:, 0], t), abs=1e-6)
