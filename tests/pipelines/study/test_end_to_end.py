"""The whole study (`kedro run`) on a tiny phantom, then one variant retrained on its own.

This is the test that every stage connects: ingestion -> debiasing -> training -> saliency
-> localization -> regression -> robustness -> study, with MLflow tracking to SQLite.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from cxr_spurious.variants import STUDY_MODELS

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("e2e")]


def repeated_lines(console: str, limit: int) -> dict[str, int]:
    """Console lines that occur more than ``limit`` times once their numbers are masked
    (``#``): one message per image, pair or map floods the console of a real dataset."""
    counts = Counter(re.sub(r"\d+", "#", line.strip()) for line in console.splitlines())
    return {line: n for line, n in counts.items() if line and n > limit}


def test_repeated_lines_masks_numbers() -> None:
    console = "\n".join(
        [f"no mask for patient{i}_study1/Pneumothorax" for i in range(4)] + ["done", "", ""]
    )
    assert repeated_lines(console, 3) == {"no mask for patient#_study#/Pneumothorax": 4}
    assert repeated_lines(console, 4) == {}


def test_default_study_then_one_variant(kedro_project: Path, run_kedro) -> None:
    proc = run_kedro(kedro_project, "run", "--env", "test", timeout=900)
    assert "Pipeline execution completed successfully" in proc.log
    assert "Wall time by stage: ingestion" in proc.log
    assert "is interrupted" not in proc.log  # no namespace left and re-entered (the recipe)
    # every stage's console, localization's included: no message once per image or pair
    flood = repeated_lines(proc.stdout, 5)
    assert not flood, flood

    findings = pd.read_csv(kedro_project / "data/08_reporting/study_findings.csv")
    assert list(findings["model"]) == list(STUDY_MODELS)
    for metric in (
        "auroc",
        "robust_auroc",
        "gradcam_miou",
        "gradcam_tube_mass",
        "cf_drop_no_tube",
        "cf_auroc_no_tube",
    ):
        assert {metric, f"{metric}_lo", f"{metric}_hi"} <= set(findings.columns), metric
    assert findings["auroc"].between(0, 1).all()
    assert (
        findings["seg_prob_miou"].notna().sum() == 3
    )  # erm, box and seg share the dense unet_small
    assert list(findings["architecture"]) == ["unet_small"] * 3
    assert {"gradcam_tube_mass_no_finding", "gradcam_tube_mass_no_finding_lo"} <= set(
        findings.columns
    )
    for share in ("gradcam_lesion_mass", "gradcam_tube_mass", "gradcam_tube_mass_no_finding"):
        n_maps, n_nonzero = findings[f"{share}_n_maps"], findings[f"{share}_n_nonzero"]
        assert ((n_maps > 0) & (n_nonzero <= n_maps)).all(), share
    ok = findings.dropna(subset=["auroc_lo", "auroc_hi"])
    assert (ok["auroc_lo"] <= ok["auroc"]).all() and (ok["auroc"] <= ok["auroc_hi"]).all()
    for name in (
        "study_findings.png",
        "example_grid.png",
        "dataset_report.png",
        "forest_plot.png",
        "metric_bars.png",
    ):
        hits = list((kedro_project / "data/08_reporting").rglob(name))
        assert hits and hits[0].stat().st_size > 0, name

    # MLflow: the session run carries the findings; each variant is a child run with metrics.
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.data.tags.get("variant") for r in children) == sorted(STUDY_MODELS)
    assert all("test_Pneumothorax_auroc" in r.data.metrics for r in children)
    parents = [r for r in runs if not r.data.tags.get("mlflow.parentRunId")]
    assert any("findings.erm.robust_auroc" in r.data.metrics for r in parents), [
        sorted(r.data.metrics)[:5] for r in parents
    ]

    # `--params training.only=seg` retrains only seg; erm and box artifacts are untouched.
    models = {v: kedro_project / f"data/06_models/{v}/model.pt" for v in STUDY_MODELS}
    before = {v: p.stat().st_mtime_ns for v, p in models.items()}
    again = run_kedro(
        kedro_project,
        "run",
        "--pipeline",
        "training",
        "--env",
        "test",
        "--params",
        "training.only=seg",
    )
    after = {v: p.stat().st_mtime_ns for v, p in models.items()}
    assert after["seg"] != before["seg"]
    assert after["erm"] == before["erm"] and after["box"] == before["box"]
    # each left-out output is named in the log file, not on the console
    assert "Skipped saving" not in again.log
    log_file = (kedro_project / "logs" / "info.log").read_text(encoding="utf-8")
    assert "Skipped saving" in log_file and "variant not selected by training.only" in log_file
