"""Counterfactual tests that only a phantom allows: score the same test images rendered
without the chest tube and without the lesion.

Saliency alone can miss a shortcut; the drop in predicted probability when the tube is
removed (and the AUROC on tube-free copies) shows what a prediction depends on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError
from cxr_spurious.sources.contract import patient_ids
from cxr_spurious.stats.bootstrap import MAX_DROPPED_SHARE, bootstrap, check_max_dropped_share
from cxr_spurious.stats.metrics import auroc

ORIGINAL = "original"
NO_TUBE = "no_tube"
NO_LESION = "no_lesion"


def paired_renders(predictions: pd.DataFrame, task: str, render: str) -> pd.DataFrame:
    """Original and ``render`` probabilities side by side, one row per image.

    Args:
        predictions: ``image_id, render, p_<task>`` (long format over renders).
        task: The task.
        render: The counterfactual render name.

    Returns:
        Columns ``image_id, p_original, p_counterfactual``.
    """
    col = f"p_{task}"
    if col not in predictions.columns:
        raise ContractError(
            f"counterfactual predictions lack column '{col}'; have {list(predictions.columns)}"
        )
    repeated = predictions.duplicated(["image_id", "render"], keep=False)
    if repeated.any():
        twice = predictions.loc[repeated, ["image_id", "render"]].drop_duplicates()
        raise ContractError(
            f"counterfactual predictions repeat {len(twice)} (image_id, render) pair(s), e.g. "
            f"{[tuple(r) for r in twice.head(3).itertuples(index=False)]}; expected one "
            "prediction per image and render"
        )
    undefined = predictions[col].isna()
    if undefined.any():
        bad = predictions.loc[undefined, ["image_id", "render"]].head(3)
        raise ContractError(
            f"counterfactual predictions: '{col}' is NaN on {int(undefined.sum())} row(s), e.g. "
            f"{[tuple(r) for r in bad.itertuples(index=False)]}; expected a probability"
        )
    wide = predictions.pivot(index="image_id", columns="render", values=col)
    for name in (ORIGINAL, render):
        if name not in wide.columns:
            raise ContractError(
                f"counterfactual predictions have no '{name}' render; "
                f"renders: {sorted(wide.columns)}"
            )
    out = wide[[ORIGINAL, render]].dropna().reset_index()
    out.columns = ["image_id", "p_original", "p_counterfactual"]
    return out


def _check_manifest(manifest: pd.DataFrame, task: str, renders: set[Any], label: str) -> None:
    """The manifest has ``tube`` where a no-tube render is scored and the task column where
    a no-lesion or no-tube render is (their conditions and the tube-free AUROC's labels)."""
    needed = {
        "tube": [f"cf_drop_{NO_TUBE}"] if NO_TUBE in renders else [],
        task: [
            *([f"cf_drop_{NO_LESION}"] if NO_LESION in renders else []),
            *(["cf_auroc_no_tube"] if NO_TUBE in renders else []),
        ],
    }
    for column, metrics in needed.items():
        if metrics and column not in manifest.columns:
            raise ContractError(
                f"counterfactual findings of {label or 'the model'}: the manifest lacks column "
                f"'{column}' (needed for {', '.join(metrics)}); have "
                f"{sorted(str(c) for c in manifest.columns)}"
            )


def counterfactual_findings(
    predictions: pd.DataFrame,
    manifest: pd.DataFrame,
    task: str,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    max_dropped_share: float = MAX_DROPPED_SHARE,
    label: str = "",
) -> dict[str, float]:
    """Mean probability drop for each removal and the AUROC on tube-free copies, with CIs.

    * ``cf_drop_no_tube``: mean of p(original) - p(no tube) over test images that have a tube;
    * ``cf_drop_no_lesion``: mean of p(original) - p(no lesion) over positive test images;
    * ``cf_auroc_no_tube``: AUROC of the task on every test image rendered without its tube.

    CIs are percentile bootstrap intervals, resampling patients. ``<metric>_dropped``
    counts the undefined replicates (for the AUROC: a resample without a positive or a
    negative; NaN when no bootstrap ran); above ``max_dropped_share`` of them the metric
    raises ``BootstrapDropError`` (its message starts with ``label``, e.g. the model).

    Returns:
        A flat dict: each metric with ``_lo`` / ``_hi`` / ``_dropped``.

    Raises:
        BootstrapDropError: too many undefined replicates.
        ContractError: the manifest lacks ``tube`` or the task column where a render
            present needs it (naming the column and ``label``).
    """
    renders = set(predictions["render"])
    _check_manifest(manifest, task, renders, label)
    known = predictions["image_id"].astype(str).unique()
    lookup = dict(zip(known, patient_ids(known, manifest, table=f"{label or 'the'} predictions")))
    meta = manifest.set_index("image_id")
    out: dict[str, float] = {}
    boot: dict[str, Any] = {
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "max_dropped_share": check_max_dropped_share(max_dropped_share),
    }
    prefix = f"{label}/" if label else ""
    empty = {"": np.nan, "_lo": np.nan, "_hi": np.nan, "_dropped": np.nan}
    specs = ((NO_TUBE, "tube"), (NO_LESION, task))
    for render, condition in specs:
        name = f"cf_drop_{render}"
        if render not in renders:
            out.update({name + k: v for k, v in empty.items()})
            continue
        pairs = paired_renders(predictions, task, render)
        pairs = pairs[pairs["image_id"].map(meta[condition]) == 1].reset_index(drop=True)
        drop = (pairs["p_original"] - pairs["p_counterfactual"]).to_numpy()
        patients = pairs["image_id"].astype(str).map(lookup).to_numpy()
        if len(drop) == 0:
            out.update({name + k: v for k, v in empty.items()})
            continue
        res = bootstrap(
            lambda i, d=drop: float(d[i].mean()),
            len(drop),
            clusters=patients,
            desc=f"{prefix}{name} {task}",
            **boot,
        )
        out.update({**res.as_dict(name), f"{name}_dropped": float(res.n_dropped)})
    name = "cf_auroc_no_tube"
    if NO_TUBE in renders:
        pairs = paired_renders(predictions, task, NO_TUBE)
        y = pairs["image_id"].map(meta[task]).to_numpy(dtype=float)
        score = pairs["p_counterfactual"].to_numpy()
        patients = pairs["image_id"].astype(str).map(lookup).to_numpy()
        res = bootstrap(
            lambda i: auroc(y[i], score[i]),
            len(y),
            clusters=patients,
            desc=f"{prefix}{name} {task}",
            **boot,
        )
        out.update({**res.as_dict(name), f"{name}_dropped": float(res.n_dropped)})
    else:
        out.update({name + k: v for k, v in empty.items()})
    return out
