"""Just Train Twice (Liu et al. 2021): the error set of an ERM model on the train split.

The upweighting itself is the ``jtt`` resampling strategy
(``cxr_spurious.debiasing.resampling``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, check_number
from cxr_spurious.sources.contract import align_table


def error_set(
    manifest: pd.DataFrame, predictions: pd.DataFrame, task: str, *, threshold: float = 0.5
) -> pd.Series:
    """True for the train rows an ERM model misclassified at ``threshold``.

    Args:
        manifest: The manifest (``image_id``, ``split``, ``task``).
        predictions: ERM predictions with ``image_id`` and ``p_<task>``.
        task: The label column.
        threshold: Decision threshold on the probability.

    Returns:
        A boolean Series aligned with the manifest (False outside train and where the label
        is missing).

    Raises:
        ContractError: the predictions miss train images or the ``p_<task>`` column.
    """
    threshold = check_number(
        threshold, "debiasing.jtt_threshold", low=0, high=1, low_open=True, high_open=True
    )
    col = f"p_{task}"
    if col not in predictions.columns:
        raise ContractError(f"erm.predictions: no column '{col}'; got {list(predictions.columns)}")
    aligned = align_table(manifest, predictions, name="erm.predictions", split="train")
    out = pd.Series(False, index=manifest.index)
    y = manifest.loc[aligned.index, task].to_numpy(dtype=float)
    p = aligned[col].to_numpy(dtype=float)
    known = np.isfinite(y) & np.isfinite(p)
    out.loc[aligned.index[known]] = (p[known] >= threshold) != (y[known] == 1)
    return out
