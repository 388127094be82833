"""Every CI of study_findings is at one level, recorded in the table.

The AUROC CIs are copied from training's test metrics (``training.ci_level``) while the
saliency and counterfactual CIs used a fixed 0.95: ``--params training.ci_level=0.9`` gave
90 % and 95 % intervals side by side in one table, with nothing saying so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.study import create_pipeline, nodes
from cxr_spurious.stats.bootstrap import bootstrap_indices
from cxr_spurious.study.findings import findings_metrics

TASK = "Pneumothorax"
N_BOOT = 200
REPO = Path(__file__).resolve().parents[2]


def _inputs(n: int = 40) -> dict[str, object]:
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(n)]
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "tube": [float(i % 2) for i in range(n)],
            TASK: [float(i < 30) for i in range(n)],
        }
    )
    per_cxr = pd.DataFrame(
        {
            "image_id": ids,
            "task": TASK,
            "model": "erm",
            "method": "gradcam",
            "iou_tp": np.where(np.arange(n) < 30, rng.uniform(0.1, 0.5, n), np.nan),
        }
    )
    entry = {k: 0.8 for k in ("auroc", "auroc_lo", "auroc_hi", "robust_auroc", "reverse_auroc")}
    return {
        "test_metrics": {"n_test": n, TASK: entry},
        "counterfactual_predictions": pd.DataFrame(columns=["image_id", "render", f"p_{TASK}"]),
        "manifest": manifest,
        "localization_per_cxr": per_cxr,
        "human_benchmark": pd.DataFrame(),
        "variant": {"name": "erm", "supervision": "erm"},
        "task": TASK,
        "n_boot": N_BOOT,
        "seed": 0,
    }


def test_study_cis_are_at_study_ci_level_and_recorded() -> None:
    kw = _inputs()
    row = nodes.summarise_findings(**kw, ci_level=0.9, training_ci_level=0.9, training_n_boot=500)  # type: ignore[arg-type]
    # by hand: the patient bootstrap of the mean IoU, its 5th and 95th percentiles
    per_cxr = kw["localization_per_cxr"]
    keep = per_cxr["iou_tp"].notna().to_numpy()  # type: ignore[union-attr]
    values = per_cxr["iou_tp"].to_numpy()[keep]  # type: ignore[index]
    patients = np.array([f"p{i // 2}" for i in range(40)])[keep]
    reps = [values[i].mean() for i in bootstrap_indices(values.size, N_BOOT, 0, patients)]
    assert row["gradcam_miou"] == pytest.approx(values.mean())
    assert row["gradcam_miou_lo"] == pytest.approx(np.quantile(reps, 0.05))
    assert row["gradcam_miou_hi"] == pytest.approx(np.quantile(reps, 0.95))
    assert (row["ci_level"], row["test_n_boot"], row["study_n_boot"]) == (0.9, 500, N_BOOT)
    table, metrics, _ = nodes.compile_findings(row)
    assert table.loc[0, "ci_level"] == 0.9 and table.attrs["ci_level"] == 0.9
    assert table.attrs["test_n_boot"] == 500 and table.attrs["study_n_boot"] == N_BOOT
    assert "erm.ci_level" not in metrics and "erm.gradcam_miou" in findings_metrics(table)


@pytest.mark.parametrize(
    ("over", "other_key"),
    [
        ({"training_ci_level": 0.9}, "training.ci_level"),
        (
            {"variant": {"name": "erm", "supervision": "erm", "ci_level": 0.9}},
            "training.variants.erm.ci_level",
        ),
        (
            {"test_metrics": {"n_test": 40, "ci_level": 0.9, TASK: {"auroc": 0.8}}},
            "erm.test_metrics",
        ),
    ],
)
def test_a_test_metric_level_other_than_study_ci_level_is_refused(
    over: dict[str, object], other_key: str
) -> None:
    kw = {**_inputs(), **over}
    with pytest.raises(ParameterError, match=rf"'study.ci_level'.*{other_key}") as err:
        nodes.summarise_findings(**kw, ci_level=0.95)  # type: ignore[arg-type]
    assert err.value.key == "study.ci_level"


@pytest.mark.parametrize("level", [95, 0, True, "0.95"])
def test_study_ci_level_must_be_a_fraction(level: object) -> None:
    with pytest.raises(ParameterError, match="study.ci_level"):
        nodes.summarise_findings(**_inputs(), ci_level=level)  # type: ignore[arg-type]


def test_pipeline_reads_study_and_training_levels() -> None:
    params = yaml.safe_load((REPO / "conf/base/parameters_study.yml").read_text())["study"]
    training = yaml.safe_load((REPO / "conf/base/parameters_training.yml").read_text())
    assert params["ci_level"] == training["training"]["ci_level"] == 0.95
    summaries = [n for n in create_pipeline().nodes if n.name.endswith("summarise_findings")]
    assert summaries
    for node in summaries:
        assert {
            "params:study.ci_level",
            "params:training.ci_level",
            "params:training.n_boot",
        } <= set(node.inputs)
