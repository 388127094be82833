"""Deep Feature Reweighting (Kirichenko et al. 2023): refit only the last layer.

A logistic regression on the frozen ERM embeddings, trained on a group-balanced subset of
one half of the validation patients (``dfr_training_rows``), predicts every manifest image
in the training ``predictions`` format. The other half (``dfr_held_out_rows``) is never
fitted on: the comparison chooses DFR's operating point on it alone (``refit_last_layer``
writes its image ids, the robustness template's ``operating_rows``), since a threshold
chosen on rows the model was fitted on moves every test metric read at that threshold
(FNR gap, equalized-odds difference, per-group rates).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cxr_spurious.errors import DataFormatError, check_number

from .features import embedding_matrix
from .groups import NO_GROUP


def _fitting_half(manifest: pd.DataFrame, rng: np.random.Generator) -> set[str]:
    """The validation patients DFR may fit on: the first half of a permutation by ``rng``.

    Raises:
        DataFormatError: fewer than 2 validation patients.
    """
    val = manifest["split"].to_numpy() == "val"
    patients = np.array(sorted(manifest.loc[val, "patient_id"].astype(str).unique()))
    if patients.size < 2:
        raise DataFormatError(
            "manifest",
            f"DFR needs at least 2 validation patients, found {patients.size}",
            where="split == val",
        )
    return set(rng.permutation(patients)[: patients.size // 2])


def dfr_held_out_rows(manifest: pd.DataFrame, *, seed: int = 0) -> np.ndarray:
    """Mask of the validation rows of the patients DFR never fits on (the other half).

    ``dfr_training_rows`` draws its half of the validation patients with ``seed`` (the same
    half for every task); these are the validation rows of the remaining patients, so no
    image and no patient of them is in any task's fitting set. DFR's operating point is
    chosen on them.

    Args:
        manifest: The manifest.
        seed: The seed ``fit_dfr`` / ``dfr_training_rows`` were given.

    Returns:
        Boolean mask aligned with the manifest rows.

    Raises:
        DataFormatError: fewer than 2 validation patients.
    """
    half = _fitting_half(manifest, np.random.default_rng(seed))
    val = manifest["split"].to_numpy() == "val"
    return val & ~manifest["patient_id"].astype(str).isin(half).to_numpy()


def dfr_training_rows(
    manifest: pd.DataFrame, groups: np.ndarray, task: str, *, seed: int = 0
) -> np.ndarray:
    """Positions of a group x label balanced subset of half the validation patients.

    The other half is ``dfr_held_out_rows`` (same ``seed``).

    Args:
        manifest: The manifest.
        groups: Group id per row (``-1`` = none).
        task: The label column.
        seed: Seed of the patient halving and of the balancing draw.

    Returns:
        Sorted row positions; every (group, label) cell has the size of the smallest one.

    Raises:
        DataFormatError: a (group, label) cell is empty in that half, for any group with
            labelled validation rows (a group the half misses entirely included).
    """
    rng = np.random.default_rng(seed)
    val = manifest["split"].to_numpy() == "val"
    half = _fitting_half(manifest, rng)
    y = manifest[task].to_numpy(dtype=float)
    g = np.asarray(groups)
    labelled = val & np.isfinite(y) & (g != NO_GROUP)
    pool = np.flatnonzero(labelled & manifest["patient_id"].astype(str).isin(half).to_numpy())
    cells = {}
    # every group with labelled validation rows, not only those the half happened to draw:
    # a group missing from the half is an empty cell, not a group silently left out
    for gid in np.unique(g[labelled]):
        for cls in (0.0, 1.0):
            cells[(int(gid), cls)] = pool[(g[pool] == gid) & (y[pool] == cls)]
    empty = [k for k, v in cells.items() if v.size == 0]
    if not cells or empty:
        raise DataFormatError(
            "manifest",
            "DFR's validation half has no rows for (group, label) "
            f"{empty[:3] or 'any'}; use coarser groups",
            where="split == val",
        )
    size = min(v.size for v in cells.values())
    return np.sort(
        np.concatenate([rng.choice(v, size=size, replace=False) for v in cells.values()])
    )


def fit_dfr(
    manifest: pd.DataFrame,
    embeddings: pd.DataFrame,
    groups: np.ndarray,
    tasks: Sequence[str],
    *,
    c: float = 1.0,
    seed: int = 0,
    model_name: str = "dfr",
) -> pd.DataFrame:
    """Refit the last layer on balanced validation data and predict every image.

    Args:
        manifest: The manifest.
        embeddings: ERM embeddings (``image_id, e0..``), one row per manifest image.
        groups: Group id per manifest row.
        tasks: Label columns; one logistic regression each.
        c: Inverse L2 regularisation strength of the logistic regression.
        seed: Seed of the balancing draw and the solver.
        model_name: Written to the ``model`` column.

    Returns:
        ``image_id, split, model, p_<task>...`` for every manifest row.
    """
    c = check_number(c, "debiasing.dfr_c", low=0, low_open=True)
    x = embedding_matrix(manifest, embeddings)
    out = pd.DataFrame(
        {
            "image_id": manifest["image_id"].to_numpy(),
            "split": manifest["split"].to_numpy(),
            "model": model_name,
        }
    )
    for task in tasks:
        rows = dfr_training_rows(manifest, np.asarray(groups), task, seed=seed)
        scaler = StandardScaler().fit(x[rows])
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        clf.fit(scaler.transform(x[rows]), manifest[task].to_numpy(dtype=float)[rows].astype(int))
        out[f"p_{task}"] = clf.predict_proba(scaler.transform(x))[:, 1]
    return out
