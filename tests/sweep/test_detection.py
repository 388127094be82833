"""Shortcut detection: AUROC vs scikit-learn, Spearman vs scipy, false flags with Wilson CIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.sweep.detection import (
    saliency_methods,
    shortcut_detection,
    spearman,
    wilson_interval,
)

STRENGTHS = {"none": (0.5, 0.5), "medium": (0.7, 0.3), "strong": (0.9, 0.1)}
AREA = {"marker_port": 0.01, "tube_random": 0.03}


def _models(seed: int = 0) -> pd.DataFrame:
    """36 models: reliance grows with confounding; Grad-CAM follows it, noise does not."""
    rng = np.random.default_rng(seed)
    rows = []
    for artefact, area in AREA.items():
        for strength, (p1, p0) in STRENGTHS.items():
            for sup in ("erm", "box", "seg"):
                for s in range(2):
                    reliance = max(
                        0.0, (p1 - p0) * (0.5 if sup == "erm" else 0.1) + rng.normal(0, 0.03)
                    )
                    rows.append(
                        {
                            "artefact": artefact,
                            "strength": strength,
                            "p_given_ptx": p1,
                            "p_given_no_ptx": p0,
                            "supervision": sup,
                            "seed": s,
                            "artefact_reliance": reliance,
                            "artefact_area": area,
                            "gradcam_artefact_mass": area + reliance * 0.2 + rng.normal(0, 0.005),
                            "noise_artefact_mass": rng.random() * 0.05,
                        }
                    )
    return pd.DataFrame(rows)


def _row(table: pd.DataFrame, method: str, artefact: str) -> pd.Series:
    return table[(table["method"] == method) & (table["artefact"] == artefact)].iloc[0]


def test_rows_per_method_and_artefact_with_an_all_row() -> None:
    models = _models()
    assert saliency_methods(models) == ["gradcam", "noise"]
    table = shortcut_detection(models, n_boot=200, seed=0)
    assert len(table) == 2 * 3
    assert set(table["artefact"]) == {"marker_port", "tube_random", "all"}
    assert table["rule"].str.contains(r"artefact_reliance >= 0\.1").all()
    assert table["rule"].str.contains("2 x the artefact's mean area share").all()


def test_detection_auroc_and_spearman_match_references() -> None:
    models = _models()
    table = shortcut_detection(models, reliance_threshold=0.1, n_boot=300, seed=1)
    for artefact in ("marker_port", "all"):
        sub = models if artefact == "all" else models[models["artefact"] == artefact]
        truth = sub["artefact_reliance"] >= 0.1
        for method in ("gradcam", "noise"):
            row = _row(table, method, artefact)
            score = sub[f"{method}_artefact_mass"]
            assert row["detection_auroc"] == pytest.approx(roc_auc_score(truth, score))
            rho = stats.spearmanr(score, sub["artefact_reliance"]).statistic
            assert row["spearman"] == pytest.approx(rho)
            assert row["detection_auroc_lo"] <= row["detection_auroc"] <= row["detection_auroc_hi"]
            assert row["spearman_lo"] <= row["spearman"] <= row["spearman_hi"]
            assert row["n_models"] == len(sub) and row["n_reliant"] == truth.sum()
    gradcam, noise = _row(table, "gradcam", "all"), _row(table, "noise", "all")
    assert gradcam["detection_auroc_lo"] > 0.75 > noise["detection_auroc"]


def test_false_flags_on_unconfounded_models() -> None:
    models = _models()
    table = shortcut_detection(models, flag_k=1.5, n_boot=50, seed=0)
    for method in ("gradcam", "noise"):
        none = models[models["strength"] == "none"]
        limit = 1.5 * none["artefact"].map(AREA)
        flagged = int((none[f"{method}_artefact_mass"] > limit).sum())
        row = _row(table, method, "all")
        assert row["n_unconfounded"] == len(none) == 12
        assert row["n_flagged"] == flagged
        assert row["false_flag_rate"] == pytest.approx(flagged / 12)
        assert row["false_flag_rate_lo"] <= row["false_flag_rate"] <= row["false_flag_rate_hi"]


def test_wilson_interval_by_hand() -> None:
    z = stats.norm.ppf(0.975)
    assert wilson_interval(0, 10) == pytest.approx((0.0, z**2 / (10 + z**2)))
    k, n = 3, 12
    p = k / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half))
    assert np.isnan(wilson_interval(0, 0)).all()


def test_spearman_with_ties_and_constants() -> None:
    x = np.array([1.0, 2.0, 2.0, 5.0, 3.0, np.nan])
    y = np.array([0.1, 0.4, 0.3, 0.9, 0.2, 0.5])
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x[:5], y[:5]).statistic)
    assert np.isnan(spearman(np.ones(5), y[:5]))


def test_a_missing_class_gives_nan_and_a_note() -> None:
    models = _models()
    table = shortcut_detection(models, reliance_threshold=5.0, n_boot=50, seed=0)
    row = _row(table, "gradcam", "all")
    assert row["n_reliant"] == 0 and np.isnan(row["detection_auroc"])
    assert np.isnan(row["detection_auroc_lo"])
    assert "no model of 36 relies on the artefact" in row["note"]
    assert np.isfinite(row["spearman"])


def test_no_unconfounded_model_gives_nan_rate_and_a_note() -> None:
    models = _models()
    table = shortcut_detection(models[models["strength"] != "none"], n_boot=50, seed=0)
    row = _row(table, "gradcam", "all")
    assert row["n_unconfounded"] == 0 and np.isnan(row["false_flag_rate"])
    assert "false_flag_rate: no unconfounded model" in row["note"]


def test_same_seed_same_table() -> None:
    models = _models()
    a = shortcut_detection(models, n_boot=100, seed=4)
    pd.testing.assert_frame_equal(a, shortcut_detection(models, n_boot=100, seed=4))


CI_COLUMNS = ["detection_auroc_lo", "detection_auroc_hi", "spearman_lo", "spearman_hi"]


def test_the_seed_decides_the_bootstrap() -> None:
    """Another seed draws other replicates: the CIs move, the estimates do not (a detection
    that ignored its seed passed every other test)."""
    models = _models()
    a = shortcut_detection(models, n_boot=100, seed=4)
    b = shortcut_detection(models, n_boot=100, seed=5)
    est = ["detection_auroc", "spearman", "false_flag_rate", "false_flag_rate_lo"]
    pd.testing.assert_frame_equal(a[est], b[est])
    noise_a, noise_b = _row(a, "noise", "all"), _row(b, "noise", "all")
    for column in CI_COLUMNS:
        assert noise_a[column] != noise_b[column], column
    gradcam_a, gradcam_b = _row(a, "gradcam", "marker_port"), _row(b, "gradcam", "marker_port")
    assert gradcam_a["spearman_lo"] != gradcam_b["spearman_lo"]


@pytest.mark.parametrize("order", ["shuffled", "reversed", "grid reordered"])
def test_the_table_does_not_depend_on_the_row_order(order: str) -> None:
    """``sweep_models``' rows follow the order of the grid's artefacts and strengths in the
    YAML: the same models and seed must give the same CIs whatever that order."""
    models = _models()
    if order == "shuffled":
        other = models.sample(frac=1.0, random_state=11)
    elif order == "reversed":
        other = models.iloc[::-1]
    else:  # artefacts [tube_random, marker_port], strengths {strong, medium, none}
        rank = {"strong": 0, "medium": 1, "none": 2}
        other = models.assign(
            a=models["artefact"] != "tube_random", s=models["strength"].map(rank)
        ).sort_values(["a", "s", "supervision", "seed"], kind="stable")
        other = other.drop(columns=["a", "s"])
    other = other.reset_index(drop=True)
    assert not other.equals(models)
    a = shortcut_detection(models, n_boot=200, seed=0)
    b = shortcut_detection(other, n_boot=200, seed=0)
    pd.testing.assert_frame_equal(a, b)


def test_bad_arguments() -> None:
    models = _models()
    with pytest.raises(ParameterError) as err:
        shortcut_detection(models, flag_k=0.0, n_boot=10, seed=0)
    assert err.value.key == "flag_k"
    with pytest.raises(ContractError, match="artefact_reliance"):
        shortcut_detection(models.drop(columns="artefact_reliance"), n_boot=10, seed=0)
    with pytest.raises(ContractError, match="ig_artefact_mass"):
        shortcut_detection(models, methods=["ig"], n_boot=10, seed=0)


@pytest.mark.parametrize("level", [-0.2, 0.0, 1.0, 1.5, float("nan"), True, "0.95"])
def test_a_ci_level_outside_0_1_is_refused_even_without_a_bootstrap(level: object) -> None:
    # no separation statistic is defined (constant reliance), so the bootstrap, which
    # checks the level, never ran: -0.2 gave an inverted Wilson interval, 1.5 a NaN one
    models = pd.DataFrame(
        {
            "artefact": "tube_random",
            "p_given_ptx": [0.5] * 4,
            "p_given_no_ptx": [0.5] * 4,
            "artefact_reliance": [0.0] * 4,
            "artefact_area": 0.1,
            "gradcam_artefact_mass": [0.1, 0.3, 0.25, 0.05],
        }
    )
    with pytest.raises(ParameterError) as err:
        shortcut_detection(models, level=level, n_boot=10)  # type: ignore[arg-type]
    assert err.value.key == "level"
    with pytest.raises(ParameterError) as err:
        wilson_interval(1, 4, level)  # type: ignore[arg-type]
    assert err.value.key == "level"
    assert shortcut_detection(models, level=0.9, n_boot=10)["false_flag_rate_lo"].notna().all()
