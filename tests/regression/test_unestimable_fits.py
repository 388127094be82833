"""Fits and terms that cannot be estimated get rows without estimates and a note saying why,
never coefficients picked by a pseudo-inverse, a zero-width interval or a bare statsmodels /
patsy error."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from cxr_spurious.regression import models
from cxr_spurious.regression.models import (
    feature_regressions,
    logistic_hit,
    minmax,
    mixed_effects,
)


def _collinear(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """``irrectangularity`` = 1 - ``area_ratio``: aliased with it and the intercept."""
    rng = np.random.default_rng(seed)
    a = rng.random(n)
    return pd.DataFrame(
        {
            "image_id": [f"c{i // 2}" for i in range(n)],
            "hit": (rng.random(n) < 0.5).astype(float),
            "iou_tp": rng.random(n),
            "area_ratio": a,
            "irrectangularity": 1 - a,
            "elongation": 1 + 3 * rng.random(n),
        }
    )


def test_an_aliased_feature_is_left_out_of_the_logit_with_a_note() -> None:
    df = _collinear()
    out = logistic_hit(df, ["area_ratio", "irrectangularity", "elongation"])
    assert out["term"].tolist() == ["area_ratio", "irrectangularity", "elongation"]
    aliased = out.set_index("term").loc["irrectangularity"]
    # the old code reported coefficients -1.46 / +1.80 (pseudo-inverse), NaN CIs, no note
    assert np.isnan(aliased.coef) and np.isnan(aliased.coef_lo) and np.isnan(aliased.p_value)
    assert aliased.note.startswith("aliased: a linear combination of area_ratio and the intercept")
    # the kept terms are the model without the aliased one
    x = sm.add_constant(df[["area_ratio", "elongation"]].apply(minmax))
    ref = sm.Logit(df["hit"], x).fit(disp=0)
    kept = out.set_index("term").loc[["area_ratio", "elongation"]]
    assert np.allclose(kept["coef"], ref.params[["area_ratio", "elongation"]], rtol=1e-6)
    assert np.allclose(kept["coef_lo"], ref.conf_int().loc[["area_ratio", "elongation"], 0])
    assert (kept["note"] == "").all() and out["converged"].all()
    assert list(out.columns) == list(models.JOINT_COLUMNS)


def test_an_aliased_feature_does_not_crash_the_mixed_model() -> None:
    # the old code raised a bare numpy.linalg.LinAlgError: Singular matrix
    out = mixed_effects(_collinear(), "iou_tp", ["area_ratio", "irrectangularity"])
    row = out.set_index("term").loc["irrectangularity"]
    assert np.isnan(row.coef) and row.note.startswith("aliased: a linear combination of area_ratio")
    assert np.isfinite(out.set_index("term").loc["area_ratio", "coef"])


def test_no_feature_that_varies_gives_not_fitted_rows_not_a_patsy_error() -> None:
    df = pd.DataFrame(
        {
            "image_id": [f"c{i}" for i in range(10)],
            "hit": [0, 1] * 5,
            "iou_tp": np.linspace(0, 1, 10),
            "area_ratio": 0.1,
            "n_instances": 1.0,
        }
    )
    # the old code built "hit ~ " and patsy raised "expected a noun"
    for out in (
        logistic_hit(df, ["area_ratio", "n_instances"]),
        mixed_effects(df, "iou_tp", ["area_ratio", "n_instances"]),
    ):
        assert out["term"].tolist() == ["area_ratio", "n_instances"]
        assert out["coef"].isna().all() and not out["converged"].any()
        assert (
            out["note"] == "not fitted: the feature takes one value on all 10 observations"
        ).all()


def test_an_outcome_with_one_value_is_not_fitted_in_the_joint_models() -> None:
    df = _collinear().assign(hit=1.0, iou_tp=0.5)
    for out, outcome in (
        (logistic_hit(df, ["area_ratio"]), "hit"),
        (mixed_effects(df, "iou_tp", ["area_ratio"]), "iou_tp"),
    ):
        assert len(out) == 1 and np.isnan(out["coef"].iloc[0])
        assert out["note"].iloc[0] == (
            f"not fitted: the outcome {outcome} takes one value on all 40 observations"
        )


def test_a_singular_mixed_model_is_a_note_not_a_linalg_error(monkeypatch) -> None:
    def singular(*args, **kwargs):
        raise np.linalg.LinAlgError("Singular matrix")

    monkeypatch.setattr(models.smf, "mixedlm", singular)
    out = mixed_effects(_collinear(), "iou_tp", ["area_ratio", "elongation"])
    assert out["coef"].isna().all() and not out["converged"].any()
    assert (
        out["note"] == "not fitted: statsmodels failed on iou_tp ~ area_ratio + elongation "
        "(LinAlgError: Singular matrix)"
    ).all()


def test_fit_joint_models_names_the_set_of_an_aliased_term(caplog) -> None:
    from cxr_spurious.pipelines.regression.nodes import fit_joint_models

    table = _collinear().assign(set="erm.gradcam", n_instances=1.0)
    with caplog.at_level(logging.INFO, logger="cxr_spurious.pipelines.regression.nodes"):
        out = fit_joint_models(table)
    assert {"note", "set"} <= set(out.columns)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2  # the logit and the mixed model
    assert all(
        "regression set erm.gradcam" in r.getMessage()
        and "irrectangularity [aliased: a linear combination of area_ratio" in r.getMessage()
        and "n_instances [not fitted: the feature takes one value" in r.getMessage()
        for r in warned
    )


def test_an_outcome_with_one_value_is_not_fitted_in_the_ols_tables() -> None:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "image_id": [f"c{i}" for i in range(40)],
            "task": "Edema",
            "area_ratio": rng.random(40),
            "hit": 1.0,  # every map of the task a hit
        }
    )
    for cluster in ("image_id", None):
        row = feature_regressions(df, ["hit"], ["area_ratio"], cluster=cluster).iloc[0]
        # the old code reported coef 0 with a zero-width CI and p = 1, and no note
        assert np.isnan(row.get("coef", np.nan)) and np.isnan(row.get("coef_lo", np.nan))
        assert row.significance_note == (
            "not fitted: the outcome takes one value on all 40 observations"
        )
        assert not row.bonferroni_significant and row.n == 40 and row.bonferroni_k == 1


@pytest.mark.parametrize("fn", [logistic_hit, lambda t, f: mixed_effects(t, "iou_tp", f)])
def test_an_empty_table_still_gives_an_empty_frame(fn) -> None:
    assert fn(_collinear().iloc[:0], ["area_ratio"]).empty
