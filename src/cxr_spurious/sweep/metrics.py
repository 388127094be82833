"""One sweep model's row: test AUROCs, counterfactual reliance and saliency on the artefact.

Every test image is scored on three renders: ``original`` (no sweep artefact),
``with_<kind>`` and ``no_lesion`` (no artefact either). The composed test image is the
``with_<kind>`` render where the image carries the artefact, else the original; swapping
the render removes the artefact from images that have it and adds it to those without, so

* ``artefact_reliance`` = mean of p(with) - p(original) over test images that carry it
  (the drop in P(PTX) when it is removed),
* ``artefact_rise`` = the same difference over test images without it (the rise when added),
* ``lesion_reliance`` = mean of p(original) - p(no lesion) over test positives (both renders
  without the artefact, so the lesion is the only difference).

Every metric has a patient-cluster bootstrap CI (``stats.bootstrap``) and ``<metric>_dropped``
(undefined replicates). AUROCs whose replicates are undefined above ``max_dropped_share`` get a
NaN CI and a note in ``ci_note``; means follow ``nanmean_cis`` (an error above it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError
from cxr_spurious.localization.metrics import relevance_mass, spurious_auroc
from cxr_spurious.stats.bootstrap import (
    MAX_DROPPED_SHARE,
    BootstrapResult,
    bootstrap_or_note,
    nanmean_cis,
)
from cxr_spurious.stats.metrics import auroc, robust_auroc
from cxr_spurious.study.counterfactual import NO_LESION, paired_renders
from cxr_spurious.sweep.confounding import render_name
from cxr_spurious.sweep.grid import Cell

#: Columns of the per-image table ``model_metrics`` reads (``p_no_lesion`` may be NaN).
TABLE_COLUMNS: tuple[str, ...] = (
    "image_id",
    "patient_id",
    "label",
    "has_artefact",
    "p_original",
    "p_with_artefact",
    "p_no_lesion",
)
#: Per-image saliency columns (table ``image_id, method, ...``) -> the model row's suffix.
SALIENCY_METRICS: Mapping[str, str] = {
    "iou": "miou",
    "hit": "hit_rate",
    "artefact_mass": "artefact_mass",
    "artefact_auroc": "artefact_auroc",
}
ATTRIBUTION_COLUMNS: tuple[str, ...] = ("artefact_mass", "artefact_auroc", "artefact_area")


def render_table(
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    has_artefact: pd.Series,
    *,
    task: str,
    artefact: str,
) -> pd.DataFrame:
    """One row per test image with its three renders' probabilities (``TABLE_COLUMNS``).

    Args:
        predictions: ``image_id, render, p_<task>`` over the renders ``original``,
            ``with_<artefact>`` and optionally ``no_lesion``.
        manifest: ``image_id, patient_id, split`` and the 0 / 1 ``task`` column.
        has_artefact: ``assign_artefacts``' Series (index ``image_id``).
        task: The label column.
        artefact: The artefact kind.

    Raises:
        ContractError: a test image without both the original and the artefact render.
    """
    meta = manifest.set_index("image_id")
    test_ids = meta.index[meta["split"] == "test"]
    pairs = paired_renders(predictions, task, render_name(artefact)).set_index("image_id")
    missing = test_ids.difference(pairs.index)
    if len(missing):
        raise ContractError(
            f"sweep predictions lack the original or {render_name(artefact)} "
            f"render of {len(missing)} test image(s), e.g. {list(missing[:3])}"
        )
    unassigned = test_ids.difference(has_artefact.index)
    if len(unassigned):
        raise ContractError(
            f"the artefact assignment has no entry for {len(unassigned)} test "
            f"image(s), e.g. {list(unassigned[:3])}"
        )
    no_lesion = pd.Series(np.nan, index=test_ids)
    if NO_LESION in set(predictions["render"]):
        lesion = paired_renders(predictions, task, NO_LESION).set_index("image_id")
        no_lesion = lesion["p_counterfactual"].reindex(test_ids)
    return pd.DataFrame(
        {
            "image_id": test_ids,
            "patient_id": meta.loc[test_ids, "patient_id"].astype(str).to_numpy(),
            "label": meta.loc[test_ids, task].to_numpy(dtype=float),
            "has_artefact": has_artefact.loc[test_ids].to_numpy(dtype=bool),
            "p_original": pairs.loc[test_ids, "p_original"].to_numpy(dtype=float),
            "p_with_artefact": pairs.loc[test_ids, "p_counterfactual"].to_numpy(dtype=float),
            "p_no_lesion": no_lesion.to_numpy(dtype=float),
        }
    )


def composed_score(table: pd.DataFrame) -> np.ndarray:
    """P(PTX) of each composed test image (the artefact render where the image carries it)."""
    has = table["has_artefact"].to_numpy(dtype=bool)
    return np.where(has, table["p_with_artefact"], table["p_original"]).astype(float)


def model_metrics(
    table: pd.DataFrame,
    saliency: pd.DataFrame | None = None,
    *,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    max_dropped_share: float = MAX_DROPPED_SHARE,
    label: str = "",
) -> dict[str, Any]:
    """One model's sweep metrics, each with ``_lo`` / ``_hi`` / ``_dropped``.

    Args:
        table: ``render_table``'s output (``TABLE_COLUMNS``).
        saliency: Optional ``image_id, method`` and any of ``iou``, ``hit``,
            ``artefact_mass``, ``artefact_auroc``, ``artefact_area`` (NaN = undefined);
            gives ``<method>_miou``, ``_hit_rate``, ``_artefact_mass`` and ``_artefact_auroc``
            (the last two over test images that carry the artefact) and ``artefact_area``.
        n_boot, seed, level, max_dropped_share: The patient-cluster bootstrap.
        label: Prefix of the metric names in errors and notes (e.g. the cell namespace).

    Returns:
        ``n_test``, ``n_with_artefact``, ``auroc``, ``robust_auroc``, ``artefact_reliance``,
        ``artefact_rise``, ``lesion_reliance``, the saliency metrics and ``ci_note``.
    """
    _check_table(table)
    clusters = table["patient_id"].astype(str).to_numpy()
    boot: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "level": level}
    prefix = f"{label}/" if label else ""
    n_with = int(table["has_artefact"].sum())
    row: dict[str, Any] = {"n_test": len(table), "n_with_artefact": n_with}
    notes: list[str] = []
    for name, res, note in _auroc_results(table, clusters, max_dropped_share, prefix, boot):
        row.update(_with_ci(name, res))
        notes += [f"{name}: {note}"] if note else []
    means = nanmean_cis(
        {**_reliance_columns(table), **_saliency_columns(table, saliency)},
        clusters,
        max_dropped_share=max_dropped_share,
        label=prefix,
        **boot,
    )
    for name, res in means.items():
        row.update(_with_ci(name, res))
    row["ci_note"] = "; ".join(notes)
    return row


def model_row(cell: Cell, metrics: Mapping[str, Any], digest: str) -> dict[str, Any]:
    """One ``sweep_models`` row: the cell, ``confounding``, ``namespace``, ``config_hash``
    (``grid.config_hash``) and then ``model_metrics``' values."""
    ident = {**cell.as_dict(), "confounding": cell.confounding, "namespace": cell.namespace}
    return {**ident, "config_hash": digest, **metrics}


def artefact_attribution(
    maps: np.ndarray, masks: np.ndarray, lesions: np.ndarray | None = None
) -> pd.DataFrame:
    """Per-image attribution of non-negative saliency maps to the artefact masks.

    Args:
        maps: (N, H, W) non-negative maps at the masks' resolution.
        masks: (N, H, W) artefact masks (empty where an image has no artefact).
        lesions: Optional (N, H, W) lesion masks, left out of the pixel AUROC
            (``localization.metrics.spurious_auroc``).

    Returns:
        ``artefact_mass`` (share of the min-max normalised map's mass in the mask,
        ``localization.metrics.relevance_mass``, the study's definition of tube mass; NaN
        for an empty mask or a constant map), ``artefact_auroc`` (the map as a pixel score
        for the mask) and ``artefact_area`` (the mask's share of the image), one row per
        image.
    """
    maps, masks = np.asarray(maps, dtype=float), np.asarray(masks, dtype=bool)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise ContractError(
            f"saliency maps {maps.shape} and artefact masks {masks.shape} must "
            "both be (N, H, W) of one shape"
        )
    if lesions is not None and np.shape(lesions) != masks.shape:
        raise ContractError(f"lesion masks {np.shape(lesions)} must match the maps {maps.shape}")
    if maps.size and np.nanmin(maps) < 0:
        raise ContractError(
            "saliency maps must be non-negative for a mass share (take |map| "
            f"first); the smallest value is {np.nanmin(maps):.3g}"
        )
    rows = []
    for k in range(maps.shape[0]):
        empty = not masks[k].any()
        exclude = None if lesions is None else lesions[k]
        rows.append(
            {
                "artefact_mass": np.nan if empty else relevance_mass(maps[k], masks[k]),
                "artefact_auroc": spurious_auroc(maps[k], masks[k], exclude=exclude),
                "artefact_area": float(masks[k].mean()),
            }
        )
    return pd.DataFrame(rows, columns=list(ATTRIBUTION_COLUMNS))


def _check_table(table: pd.DataFrame) -> None:
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ContractError(
            f"sweep test table: missing column(s) {missing}; expected {list(TABLE_COLUMNS)}"
        )
    if table.empty:
        raise ContractError("sweep test table has no rows")


def _auroc_results(
    table: pd.DataFrame, clusters: np.ndarray, share: float, prefix: str, boot: dict[str, Any]
) -> list[tuple[str, BootstrapResult, str]]:
    y = table["label"].to_numpy(dtype=float)
    s = composed_score(table)
    t = table["has_artefact"].to_numpy(dtype=float)
    stats = {
        "auroc": lambda i: auroc(y[i], s[i]),
        "robust_auroc": lambda i: robust_auroc(y[i], s[i], t[i]),
    }
    out = []
    for name, fn in stats.items():
        res, note = bootstrap_or_note(
            fn, len(y), max_dropped_share=share, desc=prefix + name, clusters=clusters, **boot
        )
        out.append((name, res, note))
    return out


def _reliance_columns(table: pd.DataFrame) -> dict[str, np.ndarray]:
    has = table["has_artefact"].to_numpy(dtype=bool)
    delta = (table["p_with_artefact"] - table["p_original"]).to_numpy(dtype=float)
    positive = table["label"].to_numpy(dtype=float) == 1
    lesion = (table["p_original"] - table["p_no_lesion"]).to_numpy(dtype=float)
    return {
        "artefact_reliance": np.where(has, delta, np.nan),
        "artefact_rise": np.where(has, np.nan, delta),
        "lesion_reliance": np.where(positive, lesion, np.nan),
    }


def _saliency_columns(table: pd.DataFrame, saliency: pd.DataFrame | None) -> dict[str, np.ndarray]:
    if saliency is None or saliency.empty:
        return {}
    missing = [c for c in ("image_id", "method") if c not in saliency.columns]
    if missing:
        raise ContractError(f"sweep saliency table: missing column(s) {missing}")
    repeated = saliency.duplicated(["image_id", "method"])
    if repeated.any():
        rows = saliency.loc[repeated, ["image_id", "method"]].head(3).to_dict("records")
        raise ContractError(f"sweep saliency table: (image_id, method) repeats, e.g. {rows}")
    has = table["has_artefact"].to_numpy(dtype=bool)
    ids = table["image_id"]
    out: dict[str, np.ndarray] = {}
    for method, rows in saliency.groupby("method", sort=True):
        per_image = rows.set_index("image_id")
        for col, suffix in SALIENCY_METRICS.items():
            if col in per_image:
                values = ids.map(per_image[col]).to_numpy(dtype=float)
                on_artefact = col.startswith("artefact")
                out[f"{method}_{suffix}"] = np.where(has, values, np.nan) if on_artefact else values
    if "artefact_area" in saliency:
        area = saliency.drop_duplicates("image_id").set_index("image_id")["artefact_area"]
        out["artefact_area"] = np.where(has, ids.map(area).to_numpy(dtype=float), np.nan)
    return out


def _with_ci(name: str, res: BootstrapResult) -> dict[str, float]:
    return {**res.as_dict(name), f"{name}_dropped": float(res.n_dropped)}
