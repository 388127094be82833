"""``study.max_dropped_share`` and ``study.n_boot`` are checked once, at the top of
``summarise_findings``, naming the ``study.*`` key.

They used to be converted with ``float()`` / ``int()`` on the way to the bootstraps:
``max_dropped_share=True`` read as a share of 1.0 and switched the dropped-replicate guard
off (a CI built from whichever replicates happened to be defined), ``n_boot=True`` was
recorded as ``study_n_boot = 1``, and ``2``, ``-0.5`` or ``n_boot=2.5`` were refused, if at
all, under the bare keys ``max_dropped_share`` / ``n_boot``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.study import nodes
from cxr_spurious.stats.bootstrap import BootstrapDropError
from cxr_spurious.study.counterfactual import counterfactual_findings
from cxr_spurious.study.findings import saliency_findings

TASK = "Pneumothorax"
N = 40


def _inputs(*, one_positive: bool = False) -> dict[str, object]:
    """One model's inputs; ``one_positive``: one positive CXR, so most resamples of the
    tube-free AUROC have no positive (undefined replicates above 5 %)."""
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(N)]
    label = [float(i == 0) if one_positive else float(i < 30) for i in range(N)]
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": [f"p{i // 2}" for i in range(N)],
            "tube": [float(i % 2) for i in range(N)],
            TASK: label,
        }
    )
    per_cxr = pd.DataFrame(
        {
            "image_id": ids,
            "task": TASK,
            "model": "erm",
            "method": "gradcam",
            "iou_tp": np.where(np.arange(N) < 30, rng.uniform(0.1, 0.5, N), np.nan),
        }
    )
    predictions = pd.DataFrame(
        [
            {"image_id": i, "render": r, f"p_{TASK}": 0.1 + 0.01 * k}
            for r in ("original", "no_tube")
            for k, i in enumerate(ids)
        ]
    )
    entry = {k: 0.8 for k in ("auroc", "auroc_lo", "auroc_hi", "robust_auroc", "reverse_auroc")}
    return {
        "test_metrics": {"n_test": N, TASK: entry},
        "counterfactual_predictions": predictions,
        "manifest": manifest,
        "localization_per_cxr": per_cxr,
        "human_benchmark": pd.DataFrame(),
        "variant": {"name": "erm", "supervision": "erm"},
        "task": TASK,
        "n_boot": 200,
        "seed": 0,
    }


@pytest.mark.parametrize("share", [True, False, 2, -0.5, float("nan"), "0.05", None])
def test_a_bad_max_dropped_share_is_refused_naming_the_study_key(share: object) -> None:
    with pytest.raises(ParameterError) as err:
        nodes.summarise_findings(**_inputs(), max_dropped_share=share)  # type: ignore[arg-type]
    assert err.value.key == "study.max_dropped_share"


def test_true_does_not_switch_the_dropped_replicate_guard_off() -> None:
    kw = _inputs(one_positive=True)
    with pytest.raises(BootstrapDropError, match="erm/cf_auroc_no_tube"):
        nodes.summarise_findings(**kw, max_dropped_share=0.05)  # type: ignore[arg-type]
    # before: float(True) == 1.0, every undefined replicate was accepted without a word
    with pytest.raises(ParameterError, match="study.max_dropped_share"):
        nodes.summarise_findings(**kw, max_dropped_share=True)  # type: ignore[arg-type]


@pytest.mark.parametrize("n_boot", [True, 2.5, 0, float("nan"), "200"])
def test_a_bad_n_boot_is_refused_naming_the_study_key(n_boot: object) -> None:
    kw = {**_inputs(), "n_boot": n_boot}
    with pytest.raises(ParameterError) as err:
        nodes.summarise_findings(**kw)  # type: ignore[arg-type]
    assert err.value.key == "study.n_boot"


def test_n_boot_true_is_refused_even_when_no_study_bootstrap_runs() -> None:
    """Before, the row recorded ``study_n_boot = 1`` (``int(True)``) with nothing to say it."""
    kw = _inputs()
    kw.update(
        n_boot=True,
        localization_per_cxr=kw["localization_per_cxr"].iloc[:0],  # type: ignore[union-attr]
        counterfactual_predictions=kw["counterfactual_predictions"].iloc[:0],  # type: ignore[union-attr]
    )
    with pytest.raises(ParameterError, match="study.n_boot"):
        nodes.summarise_findings(**kw)  # type: ignore[arg-type]


def test_valid_values_are_recorded_as_numbers() -> None:
    row = nodes.summarise_findings(**{**_inputs(), "n_boot": 2e2}, max_dropped_share=0)  # type: ignore[arg-type]
    assert row["study_n_boot"] == 200 and type(row["study_n_boot"]) is int


def test_the_library_functions_refuse_a_boolean_share() -> None:
    kw = _inputs()
    manifest = kw["manifest"]
    with pytest.raises(ParameterError, match="max_dropped_share"):
        counterfactual_findings(
            kw["counterfactual_predictions"],  # type: ignore[arg-type]
            manifest,  # type: ignore[arg-type]
            TASK,
            n_boot=50,
            max_dropped_share=True,
        )
    with pytest.raises(ParameterError, match="max_dropped_share"):
        saliency_findings(
            kw["localization_per_cxr"],  # type: ignore[arg-type]
            manifest,  # type: ignore[arg-type]
            None,
            n_boot=50,
            seed=0,
            max_dropped_share=True,
        )
