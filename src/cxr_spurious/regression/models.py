"""Statsmodels regressions: the reference single-predictor OLS and what it lacks.

Standard errors: cluster-robust (by CXR) errors are only valid with many clusters; with
fewer than ``min_clusters`` clusters the fit uses ordinary OLS errors (logged, and named in
``se_type``). Significance: a fit on fewer than ``min_clusters`` CXRs is never flagged
``bonferroni_significant`` (``significance_note`` says why), whatever its p-value.

Expected statistical conditions are recorded in the tables, not printed: the fallback to OLS
errors in ``se_type`` (logged at DEBUG only), and for the iterative fits (logit, mixed model)
``converged`` (the optimiser converged and statsmodels raised no ``ConvergenceWarning``) and
``fit_warnings`` (the warnings statsmodels raised during the fit, e.g. a Hessian that is not
positive definite). Every fit records its warnings in ``fit_warnings`` instead of letting
them reach the console.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats

from cxr_spurious.errors import ContractError, check_integer

logger = logging.getLogger(__name__)

#: Fewest clusters (CXRs) for cluster-robust errors and for a significance flag.
MIN_CLUSTERS = 30

FEATURES: tuple[str, ...] = ("n_instances", "area_ratio", "elongation", "irrectangularity")

# Outcomes of the human-benchmark gap (reference semantics: benchmark minus saliency method).
GAP_OUTCOMES: dict[str, str] = {"iou_gap": "iou_tp", "hit_gap": "hit"}


@contextmanager
def recorded_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Collect the warnings raised inside the block (all of them, none shown)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def warning_text(caught: Sequence[warnings.WarningMessage]) -> str:
    """The distinct warnings as ``"Category: message; ..."`` (empty string for none)."""
    seen = dict.fromkeys(
        f"{w.category.__name__}: {' '.join(str(w.message).split())}" for w in caught
    )
    return "; ".join(seen)


def _converged(fit: object, caught: Sequence[warnings.WarningMessage]) -> bool:
    """The optimiser's own flag, and no ``ConvergenceWarning`` raised during the fit."""
    from statsmodels.tools.sm_exceptions import ConvergenceWarning

    flag = getattr(fit, "converged", None)
    if flag is None:
        flag = (getattr(fit, "mle_retvals", None) or {}).get("converged", True)
    return bool(flag) and not any(issubclass(w.category, ConvergenceWarning) for w in caught)


def _term_table(
    fit: Any,
    ci: pd.DataFrame,
    pvalues: pd.Series,
    terms: Sequence[str],
    caught: Sequence[warnings.WarningMessage],
    *,
    model: str,
    n: int,
) -> pd.DataFrame:
    """One row per fitted term: coefficient, its CI and p-value, the fit's convergence."""
    terms = list(terms)
    return pd.DataFrame(
        {
            "term": terms,
            "coef": fit.params[terms].to_numpy(),
            "coef_lo": ci.loc[terms, 0].to_numpy(),
            "coef_hi": ci.loc[terms, 1].to_numpy(),
            "p_value": pvalues[terms].to_numpy(),
            "model": model,
            "n": n,
            "converged": _converged(fit, caught),
            "fit_warnings": warning_text(caught),
        }
    )


def annotated_lesions(features: pd.DataFrame) -> pd.DataFrame:
    """The feature rows with at least one annotated instance (``n_instances > 0``).

    As the reference's ``regression_pathology_features.py`` (``df[df.n_instance > 0]``):
    a non-empty mask without annotated polygons (mismatched segmentation and annotation
    files, which ``features.geometric_features`` warns about) is left out of every
    regression; how many is logged.
    """
    if "n_instances" not in features:
        return features
    keep = features["n_instances"].fillna(0) > 0
    if not keep.all():
        logger.info(
            "regression: %d lesion(s) without an annotated instance (n_instances = 0) left "
            "out, as the reference does",
            int((~keep).sum()),
        )
    return features[keep]


def minmax(series: pd.Series) -> pd.Series:
    """Min-max normalise (a constant column becomes 0)."""
    lo, hi = series.min(), series.max()
    return (series - lo) / (hi - lo) if hi > lo else series * 0.0


def with_human_gap(table: pd.DataFrame, human: pd.DataFrame | None) -> pd.DataFrame:
    """Join the human benchmark's per-(CXR, task) scores and add the gap outcomes.

    ``iou_gap`` = benchmark IoU - saliency IoU and ``hit_gap`` = benchmark hit - saliency hit
    (CheXlocalize's ``miou_diff`` / ``hitrate_diff``), on the pairs both scored; NaN elsewhere.

    Args:
        table: Per-map outcomes with ``image_id``, ``task``, ``iou_tp``, ``hit``.
        human: ``localization_human_benchmark`` rows (``image_id``, ``task``, ``iou_tp``,
            ``hit``); None or empty: the gap columns are all NaN.

    Returns:
        ``table`` with ``hb_iou_tp``, ``hb_hit``, ``iou_gap`` and ``hit_gap`` added.

    Raises:
        ContractError: the benchmark table lacks ``image_id`` / ``task`` or has duplicate
            (CXR, task) rows.
    """
    out = table.drop(columns=[c for c in ("hb_iou_tp", "hb_hit", *GAP_OUTCOMES) if c in table])
    if human is None or human.empty:
        return out.assign(hb_iou_tp=np.nan, hb_hit=np.nan, **{gap: np.nan for gap in GAP_OUTCOMES})
    missing = {"image_id", "task"} - set(human.columns)
    if missing:
        raise ContractError(
            f"localization_human_benchmark lacks column(s) {sorted(missing)}; "
            f"it has {list(human.columns)}"
        )
    if human.duplicated(["image_id", "task"]).any():
        dup = (
            human.loc[human.duplicated(["image_id", "task"]), ["image_id", "task"]].iloc[0].tolist()
        )
        raise ContractError(
            f"localization_human_benchmark has several rows for (image_id, task) {dup}"
        )
    hb = human[["image_id", "task"]].copy()
    for col in GAP_OUTCOMES.values():
        hb[f"hb_{col}"] = pd.to_numeric(human[col], errors="coerce") if col in human else np.nan
    out = out.merge(hb, on=["image_id", "task"], how="left")
    for gap, col in GAP_OUTCOMES.items():
        out[gap] = out[f"hb_{col}"] - out[col]
    return out


def spearman_fisher(
    y: np.ndarray, x: np.ndarray, z: float = 1.96
) -> tuple[float, float, float, float]:
    """Spearman rho, p-value and its Fisher-z CI (se = 1/sqrt(n - 3)), like the reference."""
    rho, p = stats.spearmanr(y, x, nan_policy="omit")
    n = len(y)
    if n <= 3 or not np.isfinite(rho) or abs(rho) >= 1:
        return float(rho), float(p), np.nan, np.nan
    delta = z / math.sqrt(n - 3)
    return (
        float(rho),
        float(p),
        math.tanh(math.atanh(rho) - delta),
        math.tanh(math.atanh(rho) + delta),
    )


def _check_min_clusters(min_clusters: int) -> int:
    return check_integer(min_clusters, "regression.min_clusters", low=2)


def ols_single(
    df: pd.DataFrame,
    y: str,
    x: str,
    *,
    cluster: str | None = None,
    min_clusters: int = MIN_CLUSTERS,
) -> dict[str, float | str]:
    """OLS ``y ~ x`` with 95% CI + Spearman.

    Errors are cluster-robust by ``cluster`` when given and the data has at least
    ``min_clusters`` clusters; otherwise ordinary OLS errors (``se_type`` says which, and
    why; the fallback is logged).
    """
    min_clusters = _check_min_clusters(min_clusters)
    data = df[[y, x] + ([cluster] if cluster else [])].dropna()
    model = smf.ols(f"{y} ~ {x}", data=data)
    n_clusters = int(data[cluster].nunique()) if cluster else 0
    with recorded_warnings() as caught:
        if cluster and n_clusters >= min_clusters:
            groups = pd.factorize(data[cluster])[0]
            fit = model.fit(cov_type="cluster", cov_kwds={"groups": groups})
        else:
            fit = model.fit()
        lo, hi = fit.conf_int(alpha=0.05).loc[x]
        rho, rho_p, rho_lo, rho_hi = spearman_fisher(data[y].to_numpy(), data[x].to_numpy())
    if cluster and n_clusters >= min_clusters:
        se_type = f"cluster-robust ({cluster})"
    else:
        se_type = "ols"
        if cluster:
            se_type = f"ols ({n_clusters} {cluster} clusters < min_clusters {min_clusters})"
            logger.debug(
                "%s ~ %s: %d observations in %d %s clusters < %d: "
                "ordinary OLS errors, not cluster-robust",
                y,
                x,
                len(data),
                n_clusters,
                cluster,
                min_clusters,
            )
    return {
        "coef": float(fit.params[x]),
        "coef_lo": float(lo),
        "coef_hi": float(hi),
        "coef_pval": float(fit.pvalues[x]),
        "corr": rho,
        "corr_lo": rho_lo,
        "corr_hi": rho_hi,
        "corr_pval": rho_p,
        "n": int(len(data)),
        "se_type": se_type,
        "fit_warnings": warning_text(caught),
    }


def feature_regressions(
    table: pd.DataFrame,
    outcomes: Sequence[str],
    features: Sequence[str] = FEATURES,
    *,
    cluster: str | None = None,
    by_task: bool = False,
    min_clusters: int = MIN_CLUSTERS,
    normalise: bool = True,
) -> pd.DataFrame:
    """Single-predictor OLS of each outcome on each (min-max-normalised) feature.

    Pooled over tasks (reference) or per task; Bonferroni significance over the features:
    p < 0.05 / k with k = ``len(features)``, the family the study sets out to test (the
    reference's ``bonferroni_correction=4`` over its four features), recorded per row as
    ``bonferroni_k``. A feature that cannot be fitted in a group (one value, e.g.
    ``n_instances`` when every lesion is one polygon, or fewer than 3 rows) still counts in
    k and gets a row without estimates whose ``significance_note`` says why.
    With ``normalise`` (the reference's geometric-feature regressions) each feature is
    min-max scaled within the fitted group (all tasks pooled, or the one task), so a
    coefficient is the outcome's change over the feature's range in that group; without it
    the feature enters in its own units (the reference's probability regression).

    Args:
        table: Rows with ``task``, ``image_id``, the outcomes and features.
        outcomes: Outcome columns.
        features: Feature columns.
        cluster: Column for cluster-robust errors (None: OLS errors).
        by_task: One fit per task instead of pooled.
        min_clusters: Fewest clusters for cluster-robust errors, and fewest CXRs
            (``image_id``) for ``bonferroni_significant`` to be set.
        normalise: Min-max scale each feature within the fitted group (False: raw values).

    Returns:
        One row per (group, outcome, feature): coefficients, CIs, p-values, Spearman,
        ``n``, ``n_cxr``, ``se_type``, ``bonferroni_k``, ``bonferroni_significant``,
        ``significance_note`` (why a fit is not eligible for the flag, or was not fitted;
        empty otherwise), ``cluster`` (used for the errors or "none"), ``fit_warnings``
        (warnings raised by the fit; empty for none).
    """
    min_clusters = _check_min_clusters(min_clusters)
    k = len(features)
    rows = []
    groups = table.groupby("task") if by_task else [("pooled", table)]
    for task, group in groups:
        g = group.copy()
        for f in features:
            g[f] = minmax(g[f].astype(float)) if normalise else g[f].astype(float)
        for y in outcomes:
            for f in features:
                sub = g[
                    [y, f, "image_id", "patient_id"] if "patient_id" in g else [y, f, "image_id"]
                ].dropna()
                n_cxr = int(sub["image_id"].nunique())
                ident = {"task": task, "outcome": y, "feature": f}
                if len(sub) < 3 or sub[f].nunique() < 2:
                    why = (
                        f"{len(sub)} observation(s) < 3"
                        if len(sub) < 3
                        else f"the feature takes one value on all {len(sub)} observations"
                    )
                    rows.append(
                        {
                            **ident,
                            "n": int(len(sub)),
                            "n_cxr": n_cxr,
                            "bonferroni_k": k,
                            "bonferroni_significant": False,
                            "significance_note": f"not fitted: {why}",
                            "cluster": "none",
                        }
                    )
                    continue
                res = ols_single(sub, y, f, cluster=cluster, min_clusters=min_clusters)
                note = (
                    ""
                    if n_cxr >= min_clusters
                    else f"not flagged: {n_cxr} CXRs ({len(sub)} observations) "
                    f"< min_clusters {min_clusters}"
                )
                significant = bool(res["coef_pval"] < 0.05 / k) and not note
                used = cluster if cluster and str(res["se_type"]).startswith("cluster") else "none"
                rows.append(
                    {
                        **ident,
                        **res,
                        "n_cxr": n_cxr,
                        "bonferroni_k": k,
                        "bonferroni_significant": significant,
                        "significance_note": note,
                        "cluster": used,
                    }
                )
    return pd.DataFrame(rows)


def logistic_hit(table: pd.DataFrame, features: Sequence[str] = FEATURES) -> pd.DataFrame:
    """Logistic regression of hit/miss on all normalised features together.

    ``coef`` and its CI are on the log-odds scale (statsmodels' ``Logit`` parameters):
    ``exp(coef)`` is the odds ratio of a hit across the feature's range. Features with one
    value are left out of the model.

    One row per term, with ``converged`` and ``fit_warnings`` (see the module docstring).
    """
    data = table[["hit", *features]].dropna().copy()
    for f in features:
        data[f] = minmax(data[f].astype(float))
    usable = [f for f in features if data[f].nunique() > 1]
    if len(data) <= len(usable) + 1 or data["hit"].nunique() < 2:
        return pd.DataFrame()
    with recorded_warnings() as caught:
        fit = smf.logit(f"hit ~ {' + '.join(usable)}", data=data).fit(disp=0)
        ci, pvalues = fit.conf_int(), fit.pvalues
    return _term_table(fit, ci, pvalues, usable, caught, model="logit", n=len(data))


def mixed_effects(
    table: pd.DataFrame, outcome: str, features: Sequence[str] = FEATURES
) -> pd.DataFrame:
    """Linear mixed model ``outcome ~ features`` with a random intercept per CXR.

    One row per term, with ``converged`` and ``fit_warnings`` (see the module docstring).
    """
    data = table[[outcome, "image_id", *features]].dropna().copy()
    for f in features:
        data[f] = minmax(data[f].astype(float))
    usable = [f for f in features if data[f].nunique() > 1]
    if len(data) <= len(usable) + 2 or data["image_id"].nunique() < 2:
        return pd.DataFrame()
    formula = f"{outcome} ~ {' + '.join(usable)}"
    with recorded_warnings() as caught:
        fit = smf.mixedlm(formula, data=data, groups=data["image_id"]).fit()
        ci, pvalues = fit.conf_int(), fit.pvalues
    return _term_table(fit, ci, pvalues, usable, caught, model=f"mixedlm:{outcome}", n=len(data))
