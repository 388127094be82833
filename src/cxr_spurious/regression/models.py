"""Statsmodels regressions: the reference single-predictor OLS and what it lacks.

Standard errors: cluster-robust (by CXR) errors are only valid with many clusters; with
fewer than ``min_clusters`` clusters the fit uses ordinary OLS errors (logged, and named in
``se_type``). Significance: a fit on fewer than ``min_clusters`` CXRs is never flagged
``bonferroni_significant`` (``significance_note`` says why), whatever its p-value.

Cluster-robust inference uses t quantiles with G - 1 degrees of freedom (G clusters;
statsmodels' ``use_t=True``), the usual small-G convention (Cameron & Miller), not normal
quantiles: with a few dozen clusters the normal ones give intervals that are too narrow.

Expected statistical conditions are recorded in the tables, not printed: the fallback to OLS
errors in ``se_type`` (logged at DEBUG only), and for the iterative fits (logit, mixed model)
``converged`` (the optimiser converged and statsmodels raised no ``ConvergenceWarning``) and
``fit_warnings`` (the warnings statsmodels raised during the fit, e.g. a Hessian that is not
positive definite). Every fit records its warnings in ``fit_warnings`` instead of letting
them reach the console. A fit or term that cannot be estimated (too few rows, an outcome or
a feature with one value, a feature aliased with others, a singular model) gets a row
without estimates whose note (``significance_note`` in the OLS tables, ``note`` in the
joint models) says why, never coefficients picked arbitrarily by a pseudo-inverse.
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
            "note": "",
        }
    )


#: Columns of ``logistic_hit`` / ``mixed_effects`` (and the ``regression_joint_models`` table,
#: which adds ``set``).
JOINT_COLUMNS: tuple[str, ...] = (
    "term",
    "coef",
    "coef_lo",
    "coef_hi",
    "p_value",
    "model",
    "n",
    "converged",
    "fit_warnings",
    "note",
)


def _unfitted_terms(
    terms: Sequence[str], notes: Sequence[str], *, model: str, n: int
) -> pd.DataFrame:
    """Rows without estimates (``converged`` False, the reason in ``note``)."""
    k = len(terms)
    missing = np.full(k, np.nan)
    return pd.DataFrame(
        {
            "term": list(terms),
            "coef": missing,
            "coef_lo": missing,
            "coef_hi": missing,
            "p_value": missing,
            "model": [model] * k,
            "n": np.full(k, n, dtype=np.int64),
            "converged": np.zeros(k, dtype=bool),
            "fit_warnings": [""] * k,
            "note": list(notes),
        }
    )


def identifiable_terms(
    data: pd.DataFrame, features: Sequence[str]
) -> tuple[list[str], dict[str, str]]:
    """The features a joint model can estimate, and why each other one is left out.

    A feature with one value is confounded with the intercept; a feature that is a linear
    combination of the intercept and the features kept before it (``irrectangularity`` =
    1 - ``area_ratio`` on some data) is aliased: statsmodels would fit it through a
    pseudo-inverse and report an arbitrary split of the effect between the aliased terms.
    Features are kept in the order given; each left-out one gets a note naming the
    features it is aliased with.

    Returns:
        ``(kept features, {left-out feature: note})``.
    """
    n = len(data)
    kept: list[str] = []
    notes: dict[str, str] = {}
    columns = [np.ones(n)]
    for f in features:
        col = data[f].to_numpy(dtype=float)
        if data[f].nunique() < 2:
            notes[f] = f"not fitted: the feature takes one value on all {n} observations"
            continue
        candidate = np.column_stack([*columns, col])
        if np.linalg.matrix_rank(candidate) < candidate.shape[1]:
            weights = np.linalg.lstsq(np.column_stack(columns), col, rcond=None)[0][1:]
            partners = [t for t, w in zip(kept, weights, strict=True) if abs(w) > 1e-8]
            notes[f] = (
                f"aliased: a linear combination of {', '.join(partners) or 'the others'} "
                f"and the intercept on these {n} observations, so its coefficient is not "
                "identified; left out of the model, whose kept terms absorb its effect"
            )
            continue
        columns.append(col)
        kept.append(f)
    return kept, notes


def _joint_model(
    data: pd.DataFrame,
    outcome: str,
    features: Sequence[str],
    *,
    model: str,
    min_rows: int,
    fitter: Any,
    groups: str | None = None,
) -> pd.DataFrame:
    """Fit ``outcome ~ identifiable features`` with ``fitter(formula, data)``; one row per
    feature asked for (in order), those without estimates saying why in ``note``."""
    n = len(data)
    features = list(features)
    kept, notes = identifiable_terms(data, features)
    why = ""
    if n <= len(kept) + min_rows:
        why = f"not fitted: {n} observation(s) are too few for {len(kept)} term(s)"
    elif data[outcome].nunique() < 2:
        why = f"not fitted: the outcome {outcome} takes one value on all {n} observations"
    elif groups is not None and data[groups].nunique() < 2:
        why = f"not fitted: the rows come from fewer than 2 {groups} groups"
    elif not kept:
        why = "not fitted: no feature varies on these rows"
    if why:
        return _unfitted_terms(features, [notes.get(f, why) for f in features], model=model, n=n)
    formula = f"{outcome} ~ {' + '.join(kept)}"
    try:
        with recorded_warnings() as caught:
            fit = fitter(formula, data)
            ci, pvalues = fit.conf_int(), fit.pvalues
    except np.linalg.LinAlgError as exc:
        why = f"not fitted: statsmodels failed on {formula} ({type(exc).__name__}: {exc})"
        return _unfitted_terms(features, [notes.get(f, why) for f in features], model=model, n=n)
    fitted = _term_table(fit, ci, pvalues, kept, caught, model=model, n=n)
    if not notes:
        return fitted[list(JOINT_COLUMNS)]
    left_out = _unfitted_terms(list(notes), list(notes.values()), model=model, n=n).assign(
        converged=bool(fitted["converged"].iloc[0]),
        fit_warnings=str(fitted["fit_warnings"].iloc[0]),
    )
    out = pd.concat([fitted, left_out], ignore_index=True)
    return out.set_index("term").loc[features].reset_index()[list(JOINT_COLUMNS)]


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
        hb[f"hb_{col}"] = _benchmark_scores(human, col) if col in human else np.nan
    out = out.merge(hb, on=["image_id", "task"], how="left")
    for gap, col in GAP_OUTCOMES.items():
        out[gap] = out[f"hb_{col}"] - out[col]
    return out


def _benchmark_scores(human: pd.DataFrame, col: str) -> pd.Series:
    """``human[col]`` as numbers; missing values (NaN, None, blank, "nan") stay NaN.

    Raises:
        ContractError: a value that is present does not read as a number (text, a decimal
            comma), naming the first such (image_id, task, value) and how many there are.
    """
    raw = human[col]
    values = pd.to_numeric(raw, errors="coerce")
    suspect = values.isna() & raw.notna()
    if suspect.any():
        missing = raw[suspect].map(_spells_missing)
        bad = suspect & ~missing.reindex(raw.index, fill_value=False)
        if bad.any():
            first = human.loc[bad].iloc[0]
            raise ContractError(
                f"localization_human_benchmark: {int(bad.sum())} '{col}' value(s) are not "
                f"numbers, e.g. (image_id, task, {col}) = ({first['image_id']!r}, "
                f"{first['task']!r}, {first[col]!r})"
            )
    return values


def _spells_missing(value: object) -> bool:
    """A blank string or one that reads as NaN (``"nan"``, ``"NaN"``): a missing score."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return not text or text.lower() == "nan"


def spearman_fisher(
    y: np.ndarray, x: np.ndarray, z: float = 1.96
) -> tuple[float, float, float, float]:
    """Spearman rho, p-value and its Fisher-z CI (se = 1/sqrt(n - 3)), like the reference.

    Rows where ``y`` or ``x`` is not finite are left out, of rho and of n alike.
    """
    y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
    both = np.isfinite(y) & np.isfinite(x)
    n = int(both.sum())
    if n < 2:
        return np.nan, np.nan, np.nan, np.nan
    rho, p = stats.spearmanr(y[both], x[both])
    if n <= 3 or not np.isfinite(rho) or abs(rho) >= 1:
        return float(rho), float(p), np.nan, np.nan
    delta = z / math.sqrt(n - 3)
    return (
        float(rho),
        float(p),
        math.tanh(math.atanh(rho) - delta),
        math.tanh(math.atanh(rho) + delta),
    )


def check_min_clusters(min_clusters: object) -> int:
    """``regression.min_clusters`` as an ``int`` >= 2 (``check_integer``: no truncation of
    a fraction, no boolean)."""
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
    ``min_clusters`` clusters, with t(G - 1) quantiles for the CI and p-value (G clusters);
    otherwise ordinary OLS errors (``se_type`` says which, and why; the fallback is logged).
    """
    min_clusters = check_min_clusters(min_clusters)
    data = df[[y, x] + ([cluster] if cluster else [])].dropna()
    model = smf.ols(f"{y} ~ {x}", data=data)
    n_clusters = int(data[cluster].nunique()) if cluster else 0
    with recorded_warnings() as caught:
        if cluster and n_clusters >= min_clusters:
            groups = pd.factorize(data[cluster])[0]
            fit = model.fit(cov_type="cluster", cov_kwds={"groups": groups}, use_t=True)
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
    ``n_instances`` when every lesion is one polygon; an outcome with one value, e.g.
    every map of a task a hit; or fewer than 3 rows) still counts in k and gets a row
    without estimates whose ``significance_note`` says why. A row is left out of a fit
    only when its outcome, feature, ``image_id`` or ``cluster`` value is missing.
    With ``normalise`` (the reference's geometric-feature regressions) each feature is
    min-max scaled within the fitted group (all tasks pooled, or the one task), so a
    coefficient is the outcome's change over the feature's range in that group; without it
    the feature enters in its own units (the reference's probability regression).

    Args:
        table: Rows with ``task``, ``image_id``, the outcomes and features.
        outcomes: Outcome columns.
        features: Feature columns.
        cluster: Column of ``table`` for cluster-robust errors (None: OLS errors).
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

    Raises:
        ContractError: ``cluster`` is not a column of ``table``.
        ParameterError: ``min_clusters`` is not an integer >= 2.
    """
    min_clusters = check_min_clusters(min_clusters)
    if cluster is not None and cluster not in table.columns:
        raise ContractError(
            f"feature_regressions: the cluster column '{cluster}' is not in the table; "
            f"it has {list(table.columns)}"
        )
    k = len(features)
    rows = []
    groups = table.groupby("task") if by_task else [("pooled", table)]
    for task, group in groups:
        g = group.copy()
        for f in features:
            g[f] = minmax(g[f].astype(float)) if normalise else g[f].astype(float)
        for y in outcomes:
            for f in features:
                cols = dict.fromkeys([y, f, "image_id", *([cluster] if cluster else [])])
                sub = g[list(cols)].dropna()
                n_cxr = int(sub["image_id"].nunique())
                ident = {"task": task, "outcome": y, "feature": f}
                if len(sub) < 3:
                    why = f"{len(sub)} observation(s) < 3"
                elif sub[f].nunique() < 2:
                    why = f"the feature takes one value on all {len(sub)} observations"
                elif sub[y].nunique() < 2:
                    why = f"the outcome takes one value on all {len(sub)} observations"
                else:
                    why = ""
                if why:
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
    ``exp(coef)`` is the odds ratio of a hit across the feature's range.

    One row per feature asked for, with ``converged``, ``fit_warnings`` (see the module
    docstring) and ``note``: a feature with one value, or aliased with the others
    (``identifiable_terms``), is left out of the model and its row has no estimates; when
    the model cannot be fitted at all (too few rows, ``hit`` with one value, no feature that
    varies) every row has none, ``converged`` is False, and ``note`` says why. Empty for a
    table without rows.
    """
    data = table[["hit", *features]].dropna().copy()
    if data.empty:
        return pd.DataFrame(columns=list(JOINT_COLUMNS))
    for f in features:
        data[f] = minmax(data[f].astype(float))
    return _joint_model(
        data,
        "hit",
        features,
        model="logit",
        min_rows=1,
        fitter=lambda formula, d: smf.logit(formula, data=d).fit(disp=0),
    )


def mixed_effects(
    table: pd.DataFrame, outcome: str, features: Sequence[str] = FEATURES
) -> pd.DataFrame:
    """Linear mixed model ``outcome ~ features`` with a random intercept per CXR.

    One row per feature asked for, with ``converged``, ``fit_warnings`` (see the module
    docstring) and ``note``, as ``logistic_hit`` (also not fitted: rows from fewer than two
    CXRs, or a singular model, whose statsmodels error the note quotes). Empty for a table
    without rows.
    """
    data = table[[outcome, "image_id", *features]].dropna().copy()
    if data.empty:
        return pd.DataFrame(columns=list(JOINT_COLUMNS))
    for f in features:
        data[f] = minmax(data[f].astype(float))
    return _joint_model(
        data,
        outcome,
        features,
        model=f"mixedlm:{outcome}",
        min_rows=2,
        fitter=lambda formula, d: smf.mixedlm(formula, data=d, groups=d["image_id"]).fit(),
        groups="image_id",
    )
