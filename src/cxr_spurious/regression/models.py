"""Statsmodels regressions: the reference single-predictor OLS and what it lacks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from scipy import stats

from cxr_spurious.errors import ContractError

FEATURES: tuple[str, ...] = ("n_instances", "area_ratio", "elongation", "irrectangularity")

# Outcomes of the human-benchmark gap (reference semantics: benchmark minus saliency method).
GAP_OUTCOMES: dict[str, str] = {"iou_gap": "iou_tp", "hit_gap": "hit"}


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
        raise ContractError(f"localization_human_benchmark lacks column(s) {sorted(missing)}; it has {list(human.columns)}")
    if human.duplicated(["image_id", "task"]).any():
        dup = human.loc[human.duplicated(["image_id", "task"]), ["image_id", "task"]].iloc[0].tolist()
        raise ContractError(f"localization_human_benchmark has several rows for (image_id, task) {dup}")
    hb = human[["image_id", "task"]].copy()
    for col in GAP_OUTCOMES.values():
        hb[f"hb_{col}"] = pd.to_numeric(human[col], errors="coerce") if col in human else np.nan
    out = out.merge(hb, on=["image_id", "task"], how="left")
    for gap, col in GAP_OUTCOMES.items():
        out[gap] = out[f"hb_{col}"] - out[col]
    return out


def spearman_fisher(y: np.ndarray, x: np.ndarray, z: float = 1.96) -> tuple[float, float, float, float]:
    """Spearman rho, p-value and its Fisher-z CI (se = 1/sqrt(n - 3)), like the reference."""
    rho, p = stats.spearmanr(y, x, nan_policy="omit")
    n = len(y)
    if n <= 3 or not np.isfinite(rho) or abs(rho) >= 1:
        return float(rho), float(p), np.nan, np.nan
    delta = z / math.sqrt(n - 3)
    return float(rho), float(p), math.tanh(math.atanh(rho) - delta), math.tanh(math.atanh(rho) + delta)


def ols_single(df: pd.DataFrame, y: str, x: str, *, cluster: str | None = None) -> dict[str, float]:
    """OLS ``y ~ x`` with 95% CI (cluster-robust by ``cluster`` when given) + Spearman."""
    data = df[[y, x] + ([cluster] if cluster else [])].dropna()
    model = smf.ols(f"{y} ~ {x}", data=data)
    fit = model.fit(cov_type="cluster", cov_kwds={"groups": pd.factorize(data[cluster])[0]}) if cluster else model.fit()
    lo, hi = fit.conf_int(alpha=0.05).loc[x]
    rho, rho_p, rho_lo, rho_hi = spearman_fisher(data[y].to_numpy(), data[x].to_numpy())
    return {"coef": float(fit.params[x]), "coef_lo": float(lo), "coef_hi": float(hi), "coef_pval": float(fit.pvalues[x]), "corr": rho, "corr_lo": rho_lo, "corr_hi": rho_hi, "corr_pval": rho_p, "n": int(len(data))}


def feature_regressions(table: pd.DataFrame, outcomes: Sequence[str], features: Sequence[str] = FEATURES, *, cluster: str | None = None, by_task: bool = False) -> pd.DataFrame:
    """Single-predictor OLS of each outcome on each min-max-normalised feature.

    Pooled over tasks (reference) or per task; Bonferroni significance over the features.
    """
    rows = []
    groups = table.groupby("task") if by_task else [("pooled", table)]
    for task, group in groups:
        g = group.copy()
        for f in features:
            g[f] = minmax(g[f].astype(float))
        for y in outcomes:
            for f in features:
                sub = g[[y, f, "image_id", "patient_id"] if "patient_id" in g else [y, f, "image_id"]].dropna()
                if len(sub) < 3 or sub[f].nunique() < 2:
                    continue
                res = ols_single(sub, y, f, cluster=cluster)
                rows.append({"task": task, "outcome": y, "feature": f, **res, "bonferroni_significant": res["coef_pval"] < 0.05 / len(features), "cluster": cluster or "none"})
    return pd.DataFrame(rows)


def logistic_hit(table: pd.DataFrame, features: Sequence[str] = FEATURES) -> pd.DataFrame:
    """Logistic regression of hit/miss on all normalised features together (odds ratios)."""
    data = table[["hit", *features]].dropna().copy()
    for f in features:
        data[f] = minmax(data[f].astype(float))
    usable = [f for f in features if data[f].nunique() > 1]
    if len(data) <= len(usable) + 1 or data["hit"].nunique() < 2:
        return pd.DataFrame()
    fit = smf.logit(f"hit ~ {' + '.join(usable)}", data=data).fit(disp=0)
    ci = fit.conf_int()
    return pd.DataFrame({"term": usable, "coef": fit.params[usable].to_numpy(), "coef_lo": ci.loc[usable, 0].to_numpy(), "coef_hi": ci.loc[usable, 1].to_numpy(), "p_value": fit.pvalues[usable].to_numpy(), "model": "logit", "n": len(data)})


def mixed_effects(table: pd.DataFrame, outcome: str, features: Sequence[str] = FEATURES) -> pd.DataFrame:
    """Linear mixed model ``outcome ~ features`` with a random intercept per CXR."""
    data = table[[outcome, "image_id", *features]].dropna().copy()
    for f in features:
        data[f] = minmax(data[f].astype(float))
    usable = [f for f in features if data[f].nunique() > 1]
    if len(data) <= len(usable) + 2 or data["image_id"].nunique() < 2:
        return pd.DataFrame()
    fit = smf.mixedlm(f"{outcome} ~ {' + '.join(usable)}", data=data, groups=data["image_id"]).fit()
    ci = fit.conf_int()
    return pd.DataFrame({"term": usable, "coef": fit.params[usable].to_numpy(), "coef_lo": ci.loc[usable, 0].to_numpy(), "coef_hi": ci.loc[usable, 1].to_numpy(), "p_value": fit.pvalues[usable].to_numpy(), "model": f"mixedlm:{outcome}", "n": len(data)})
