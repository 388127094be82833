"""Undefined bootstrap replicates in the study findings: counted in ``<metric>_dropped`` and
an error naming the model's metric above ``max_dropped_share``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxr_spurious.pipelines.study.pipeline import create_pipeline
from cxr_spurious.stats.bootstrap import BootstrapDropError, bootstrap_indices
from cxr_spurious.study.counterfactual import counterfactual_findings
from cxr_spurious.study.findings import model_row, saliency_findings

N_BOOT = 200
TASK = "Pneumothorax"


def _findings_inputs(n: int = 40):
    ids = [f"img{i}" for i in range(n)]
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "tube": [float(i % 2) for i in range(n)],
        }
    )
    per_map = pd.DataFrame(
        {
            "image_id": ids,
            "task": TASK,
            "iou_tp": np.linspace(0.1, 0.5, n),
            "hit": (np.arange(n) % 3 == 0).astype(float),
        }
    )
    # the human hit the lesion on the first patient's two images only: most resamples miss both
    human = pd.DataFrame(
        {"image_id": ids, "task": TASK, "iou_tp": 0.8, "hit": (np.arange(n) < 2).astype(float)}
    )
    return per_map, manifest, human


def test_findings_count_dropped_replicates_like_a_slow_count() -> None:
    per_map, manifest, human = _findings_inputs()
    out = saliency_findings(per_map, manifest, human, n_boot=N_BOOT, seed=0, max_dropped_share=1.0)
    h = human["hit"].to_numpy()
    clusters = manifest["patient_id"].to_numpy()
    slow = sum(h[idx].mean() == 0 for idx in bootstrap_indices(len(h), N_BOOT, 0, clusters))
    assert out["hit_pct_below_human_dropped"] == slow > 0.05 * N_BOOT
    assert out["miou_dropped"] == 0 and out["miou_pct_below_human_dropped"] == 0
    assert np.isnan(out["tube_mass_dropped"])  # no column, no bootstrap


def test_findings_above_threshold_is_an_error_naming_the_metric() -> None:
    per_map, manifest, human = _findings_inputs()
    with pytest.raises(BootstrapDropError, match="erm/gradcam/hit_pct_below_human"):
        saliency_findings(
            per_map,
            manifest,
            human,
            n_boot=N_BOOT,
            seed=0,
            max_dropped_share=0.05,
            label="erm/gradcam",
        )


def _counterfactual_inputs(n: int = 30):
    ids = [f"img{i}" for i in range(n)]
    y = np.zeros(n)
    y[0] = 1.0  # one positive: most resamples have no positive, the AUROC is undefined there
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": [f"p{i}" for i in range(n)],
            TASK: y,
            "tube": np.arange(n) % 2,
        }
    )
    p = np.linspace(0.1, 0.9, n)
    rows = [
        {"image_id": i, "render": r, f"p_{TASK}": v - (0.1 if r == "no_tube" else 0.0)}
        for r in ("original", "no_tube")
        for i, v in zip(ids, p)
    ]
    return pd.DataFrame(rows), manifest, y


def test_counterfactual_counts_dropped_replicates_like_a_slow_count() -> None:
    preds, manifest, y = _counterfactual_inputs()
    out = counterfactual_findings(
        preds, manifest, TASK, n_boot=N_BOOT, seed=0, max_dropped_share=1.0
    )
    clusters = manifest["patient_id"].to_numpy()
    slow = sum(
        not ((y[idx] == 1).any() and (y[idx] == 0).any())
        for idx in bootstrap_indices(len(y), N_BOOT, 0, clusters)
    )
    assert out["cf_auroc_no_tube_dropped"] == slow > 0.05 * N_BOOT
    assert out["cf_drop_no_tube_dropped"] == 0
    assert np.isnan(out["cf_drop_no_lesion_dropped"])  # no such render


def test_counterfactual_above_threshold_is_an_error_naming_the_model() -> None:
    preds, manifest, _ = _counterfactual_inputs()
    with pytest.raises(BootstrapDropError, match=f"erm/cf_auroc_no_tube {TASK}"):
        counterfactual_findings(
            preds, manifest, TASK, n_boot=N_BOOT, seed=0, max_dropped_share=0.05, label="erm"
        )


def test_model_row_carries_the_training_counts() -> None:
    entry = {
        "auroc": 0.8,
        "auroc_lo": 0.7,
        "auroc_hi": 0.9,
        "auroc_dropped": 0.0,
        "robust_auroc": 0.6,
        "robust_auroc_lo": np.nan,
        "robust_auroc_hi": np.nan,
        "robust_auroc_dropped": 40.0,
        "ci_note": "robust_auroc: no CI",
    }
    row = model_row("erm", {"supervision": "erm"}, {TASK: entry}, TASK)
    assert (
        row["auroc_dropped"] == 0.0
        and row["robust_auroc_dropped"] == 40.0
        and row["test_ci_note"] == "robust_auroc: no CI"
    )


def test_pipeline_threads_study_max_dropped_share() -> None:
    params = yaml.safe_load(
        (Path(__file__).parents[2] / "conf/base/parameters_study.yml").read_text()
    )
    assert 0 < params["study"]["max_dropped_share"] < 1
    summaries = [n for n in create_pipeline().nodes if n.name.endswith("summarise_findings")]
    assert summaries and all("params:study.max_dropped_share" in n.inputs for n in summaries)
