"""Test-metric CIs count their undefined bootstrap replicates (``<metric>_dropped``); above
``training.max_dropped_share`` the AUROC is an error and robust / reverse AUROC (tube
subgroups) get a NaN CI and a ``ci_note``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.training.nodes import evaluate_test_metrics
from cxr_spurious.stats.bootstrap import BootstrapDropError, bootstrap_indices
from cxr_spurious.training.config import resolve_training_config
from cxr_spurious.training.outputs import compute_test_metrics, flat_metrics

TASK = "Pneumothorax"
N_BOOT = 200


def _test_split(n: int = 40, robust_positives: int = 1):
    """Half positives; only ``robust_positives`` positives without a tube (robust AUROC side)."""
    y = (np.arange(n) % 2).astype(float)
    tube = np.where(y == 1, 1.0, (np.arange(n) % 4 == 0).astype(float))
    tube[np.flatnonzero(y == 1)[:robust_positives]] = 0.0
    ids = [f"img{i}" for i in range(n)]
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": [f"p{i}" for i in range(n)],
            "split": "test",
            TASK: y,
            "tube": tube,
        }
    )
    preds = pd.DataFrame(
        {"image_id": ids, f"p_{TASK}": np.linspace(0.05, 0.95, n)[::-1] * 0.3 + 0.7 * y}
    )
    return preds, manifest, y, tube


def _slow(y: np.ndarray, keep: np.ndarray, clusters: np.ndarray) -> int:
    return sum(
        not ((y[idx][keep[idx]] == 1).any() and (y[idx][keep[idx]] == 0).any())
        for idx in bootstrap_indices(len(y), N_BOOT, 0, clusters)
    )


def test_dropped_counts_match_a_slow_count() -> None:
    preds, manifest, y, tube = _test_split()
    out = compute_test_metrics(
        preds, manifest, [TASK], "tube", n_boot=N_BOOT, seed=0, max_dropped_share=1.0
    )[TASK]
    pid = manifest["patient_id"].to_numpy()
    robust = ((y == 1) & (tube == 0)) | ((y == 0) & (tube == 1))
    reverse = ((y == 1) & (tube == 1)) | ((y == 0) & (tube == 0))
    assert out["auroc_dropped"] == _slow(y, np.ones(len(y), bool), pid) == 0
    assert out["robust_auroc_dropped"] == _slow(y, robust, pid) > 0.05 * N_BOOT
    assert out["reverse_auroc_dropped"] == _slow(y, reverse, pid)
    assert out["ci_note"] == "" and np.isfinite(out["robust_auroc_lo"])
    assert (
        flat_metrics({TASK: out})[f"test_{TASK}_robust_auroc_dropped"]
        == out["robust_auroc_dropped"]
    )


def test_robust_auroc_above_threshold_gets_nan_ci_and_note() -> None:
    preds, manifest, *_ = _test_split()
    out = compute_test_metrics(
        preds, manifest, [TASK], "tube", n_boot=N_BOOT, seed=0, max_dropped_share=0.05
    )[TASK]
    assert (
        np.isfinite(out["robust_auroc"])
        and np.isnan(out["robust_auroc_lo"])
        and np.isnan(out["robust_auroc_hi"])
    )
    assert (
        out["ci_note"].startswith("robust_auroc: no CI: ")
        and f"{int(out['robust_auroc_dropped'])} of {N_BOOT}" in out["ci_note"]
    )
    assert np.isfinite(out["auroc_lo"])  # the overall AUROC keeps its CI


def test_an_undefined_robust_auroc_says_which_side_is_empty() -> None:
    # every positive has a tube: robust AUROC has no positive side; it was a bare NaN with
    # an empty ci_note in test_metrics, read as a missing number
    preds, manifest, *_ = _test_split(robust_positives=0)
    out = compute_test_metrics(
        preds, manifest, [TASK], "tube", n_boot=N_BOOT, seed=0, max_dropped_share=0.05
    )[TASK]
    assert np.isnan(out["robust_auroc"]) and np.isfinite(out["reverse_auroc"])
    n_neg_tube = int(((manifest[TASK] == 0) & (manifest["tube"] == 1)).sum())
    assert out["ci_note"] == (
        f"robust_auroc: undefined: 0 positives without 'tube' / {n_neg_tube} negatives with it"
    )


def test_auroc_above_threshold_is_an_error_naming_it() -> None:
    preds, manifest, *_ = _test_split()
    manifest[TASK] = 0.0
    manifest.loc[0, TASK] = 1.0  # one positive patient
    with pytest.raises(BootstrapDropError, match=f"test auroc {TASK}"):
        compute_test_metrics(
            preds, manifest, [TASK], "tube", n_boot=N_BOOT, seed=0, max_dropped_share=0.05
        )


def test_node_passes_training_max_dropped_share() -> None:
    preds, manifest, *_ = _test_split()
    manifest[TASK] = 0.0
    manifest.loc[0, TASK] = 1.0
    variant = {"name": "erm", "supervision": "erm", "architecture": "unet_small"}
    lenient = resolve_training_config(
        {"tasks": [TASK], "n_boot": N_BOOT, "max_dropped_share": 1.0}, variant
    ) | {"skip": False}
    assert evaluate_test_metrics(preds, manifest, lenient)[TASK]["auroc_dropped"] > 0.05 * N_BOOT
    strict = resolve_training_config({"tasks": [TASK], "n_boot": N_BOOT}, variant) | {"skip": False}
    assert strict["max_dropped_share"] == 0.05
    with pytest.raises(BootstrapDropError):
        evaluate_test_metrics(preds, manifest, strict)
    with pytest.raises(ParameterError, match="training.max_dropped_share"):
        resolve_training_config({"max_dropped_share": 1.5}, variant)
    params = yaml.safe_load(
        (Path(__file__).parents[2] / "conf/base/parameters_training.yml").read_text()
    )
    assert params["training"]["max_dropped_share"] == 0.05
