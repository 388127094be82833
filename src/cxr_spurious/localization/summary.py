"""Tables from the per-map results: reference CheXlocalize layouts and the project summary."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxr_spurious.stats.bootstrap import (
    bootstrap_count_matrix,
    legacy_bootstrap_indices,
    paired_bootstrap,
    percentile_ci,
    replicate_nanmeans,
)
from cxr_spurious.tasks import CHEXLOCALIZE_TASKS

METRICS: dict[str, str] = {"miou_tp": "iou_tp", "miou_full": "iou_full", "hit_rate": "hit"}
EXTRA_METRICS: tuple[str, ...] = ("relevance_mass", "relevance_rank", "top_k_intersection", "pixel_auroc")


def per_cxr_table(per_map: pd.DataFrame, column: str, *, include_outside_gt: bool = False) -> pd.DataFrame:
    """Reference ``*_results_per_cxr.csv``: one row per CXR, sorted task columns, then ``img_id``."""
    rows = per_map if include_outside_gt else per_map[per_map["in_gt"].astype(bool)]
    wide = rows.pivot_table(index="image_id", columns="task", values=column, aggfunc="first", dropna=False)
    tasks = sorted(set(CHEXLOCALIZE_TASKS) & set(wide.columns)) or sorted(wide.columns)
    wide = wide.reindex(columns=tasks).sort_index()
    out = wide.reset_index(drop=True)
    out["img_id"] = wide.index.to_list()
    return out


def _nanmean_replicates(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """(n_boot, T) NaN-skipping means of ``values`` (n, T) over replicate rows ``idx``."""
    finite = np.isfinite(values)
    sums = np.where(finite, values, 0.0)[idx].sum(axis=1)
    counts = finite[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def reference_bootstrap(per_cxr: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Reference ``*_bootstrap_results_per_cxr.csv``: replicate means per task (reference task order)."""
    tasks = [t for t in CHEXLOCALIZE_TASKS if t in per_cxr.columns]
    idx = legacy_bootstrap_indices(len(per_cxr), n_boot, seed)
    reps = _nanmean_replicates(per_cxr[tasks].to_numpy(dtype=float), idx)
    return pd.DataFrame(reps, columns=tasks)


def reference_ci(replicates: pd.Series, confidence_level: float = 0.05) -> tuple[float, float, float]:
    """Reference CI: order statistics of the sorted replicates (NaN last), rounded to 3."""
    ordered = replicates.sort_values().reset_index(drop=True)
    n = len(ordered)
    lower = ordered.iloc[int(confidence_level / 2 * n) - 1]
    upper = ordered.iloc[int((1 - confidence_level / 2) * n) - 1]
    return round(float(lower), 3), round(float(replicates.mean()), 3), round(float(upper), 3)


def reference_summary(bootstrap_table: pd.DataFrame) -> pd.DataFrame:
    """Reference ``*_summary_results.csv``: name, lower, mean, upper (sorted by name)."""
    records = []
    for task in bootstrap_table.columns:
        lo, mean, hi = reference_ci(bootstrap_table[task])
        records.append({"name": task, "lower": lo, "mean": mean, "upper": hi})
    return pd.DataFrame(records).sort_values("name").reset_index(drop=True)


def percentage_decrease(pred_bs: pd.DataFrame, hb_bs: pd.DataFrame) -> pd.DataFrame:
    """Reference ``*_pct_decrease.csv`` from paired bootstrap tables, with an ``Average`` row.

    The reference writes the Average row's CI under misspelt column names; here it goes in
    ``pct_diff_lower`` / ``pct_diff_upper`` like the task rows.
    """
    cols = [c for c in hb_bs.columns if c in pred_bs.columns]
    pred_bs, hb_bs = pred_bs[cols], hb_bs[cols]
    pct_bs = (hb_bs - pred_bs) / hb_bs
    out = pd.DataFrame({"hb": hb_bs.mean(), "pred": pred_bs.mean()})
    out["pct_diff"] = ((out["hb"] - out["pred"]) / out["hb"] * 100).round(3)
    cis = [reference_ci(pct_bs[c]) for c in cols]
    out["pct_diff_lower"] = [round(lo * 100, 3) for lo, _, _ in cis]
    out["pct_diff_upper"] = [round(hi * 100, 3) for _, _, hi in cis]
    out = out.sort_values("pct_diff", ascending=False)
    avg_pred, avg_hb = round(out["pred"].mean(), 3), round(out["hb"].mean(), 3)
    avg_bs = 100 * (hb_bs.mean(axis=1) - pred_bs.mean(axis=1)) / hb_bs.mean(axis=1)
    lo, _, hi = reference_ci(avg_bs)
    out.loc["Average"] = {"hb": avg_hb, "pred": avg_pred, "pct_diff": round((avg_hb - avg_pred) / avg_hb * 100, 3), "pct_diff_lower": lo, "pct_diff_upper": hi}
    return out


def _metric_columns(per_map: pd.DataFrame) -> dict[str, str]:
    cols = dict(METRICS)
    cols.update({m: m for m in EXTRA_METRICS if m in per_map.columns})
    cols.update({c: c for c in per_map.columns if c.startswith("shortcut_")})
    return cols


def bootstrap_means(per_map: pd.DataFrame, *, n_boot: int, seed: int, level: float = 0.95) -> dict[str, float]:
    """Mean of each metric with a percentile CI, resampling CXRs (all their tasks together)."""
    out: dict[str, float] = {"n_cxr": float(per_map["image_id"].nunique()), "n_maps": float(len(per_map))}
    counts = bootstrap_count_matrix(len(per_map), n_boot, seed, clusters=per_map["image_id"].astype(str).to_numpy())
    for name, col in _metric_columns(per_map).items():
        values = per_map[col].to_numpy(dtype=float)
        finite = np.isfinite(values)
        out[name] = float(values[finite].mean()) if finite.any() else np.nan
        out[f"{name}_lo"], out[f"{name}_hi"] = percentile_ci(replicate_nanmeans(counts, values), level)
    return out


def summary_table(per_map: pd.DataFrame, *, n_boot: int, seed: int, by: Sequence[str] = ("model", "method")) -> pd.DataFrame:
    """``localization_summary``: per group x task and an ``overall`` row, every metric with CIs.

    Only CXRs in the ground truth count (the reference's evaluation set).
    """
    rows = []
    scored = per_map[per_map["in_gt"].astype(bool)]
    for key, group in scored.groupby(list(by), sort=True):
        labels = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        for task, sub in [*group.groupby("task", sort=True), ("overall", group)]:
            rows.append({**labels, "task": task, **bootstrap_means(sub, n_boot=n_boot, seed=seed)})
    return pd.DataFrame(rows)


def subgroup_table(per_map: pd.DataFrame, manifest: pd.DataFrame, attributes: Sequence[str], *, n_boot: int, seed: int) -> pd.DataFrame:
    """Summary broken down by manifest attributes (one block per attribute and level)."""
    if not isinstance(manifest, pd.DataFrame) or manifest.empty or not attributes:
        return pd.DataFrame()
    frames = []
    attrs = [a for a in attributes if a in manifest.columns]
    joined = per_map.merge(manifest[["image_id", *attrs]].astype({"image_id": str}), on="image_id", how="left")
    for attr in attrs:
        for level, sub in joined.groupby(joined[attr].astype(str), sort=True):
            table = summary_table(sub, n_boot=n_boot, seed=seed)
            table.insert(0, "level", level)
            table.insert(0, "attribute", attr)
            frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def paired_comparisons(per_map: pd.DataFrame, pairs: Sequence[Sequence[str]], *, n_boot: int, seed: int) -> pd.DataFrame:
    """Difference a - b of each metric between two heatmap sets on the same (CXR, task) pairs.

    Args:
        per_map: Per-map table with a ``set`` column.
        pairs: [[set_a, set_b], ...].
        n_boot: Replicates (CXRs resampled).
        seed: Seed.

    Returns:
        set_a, set_b, task, metric, diff, diff_lo, diff_hi, p_value, n_maps.
    """
    rows = []
    scored = per_map[per_map["in_gt"].astype(bool)]
    for a, b in pairs:
        left = scored[scored["set"] == a].set_index(["image_id", "task"])
        right = scored[scored["set"] == b].set_index(["image_id", "task"])
        common = left.index.intersection(right.index)
        if common.empty:
            continue
        left, right = left.loc[common].reset_index(), right.loc[common].reset_index()
        for task, sel in [*((t, (left["task"] == t).to_numpy()) for t in sorted(left["task"].unique())), ("overall", np.ones(len(left), bool))]:
            la, rb = left[sel], right[sel]
            for name, col in METRICS.items():
                va, vb = la[col].to_numpy(float), rb[col].to_numpy(float)
                keep = np.isfinite(va) & np.isfinite(vb)
                if not keep.any():
                    continue
                va, vb = va[keep], vb[keep]
                res, p = paired_bootstrap(lambda i, v=va: float(v[i].mean()), lambda i, v=vb: float(v[i].mean()), len(va), n_boot=n_boot, seed=seed, clusters=la["image_id"].to_numpy()[keep])
                rows.append({"set_a": a, "set_b": b, "task": task, "metric": name, "diff": res.estimate, "diff_lo": res.lo, "diff_hi": res.hi, "p_value": p, "n_maps": int(keep.sum())})
    return pd.DataFrame(rows)
