"""Point metrics shared by training, robustness and the study (no CI here; see bootstrap)."""

from __future__ import annotations

import numpy as np


def auroc_ranked(positive: np.ndarray, desc_scores: np.ndarray) -> float:
    """AUROC of scores sorted in descending order, given each one's positive flag.

    The Mann-Whitney statistic with average ranks for ties (the one implementation behind
    ``auroc`` and the localization's ``RankedScore``, which sorts a map once for several
    masks). Ranks are multiples of 0.5, so their sum is exact in float64 in any order.
    NaN when a class is empty.
    """
    pos = np.asarray(positive, dtype=bool)
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    desc = np.asarray(desc_scores)
    n = desc.size
    change = np.flatnonzero(desc[1:] != desc[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [n]])
    ranks = np.repeat(n - (starts + ends - 1) / 2.0, ends - starts)  # ascending, ties averaged
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc(y_true: np.ndarray, score: np.ndarray) -> float:
    """AUROC ignoring NaN labels and scores; NaN when fewer than two classes remain.

    Computed as the Mann-Whitney statistic with average ranks for ties (``auroc_ranked``),
    which equals scikit-learn's ``roc_auc_score`` (tested) at a fraction of its cost inside
    bootstraps.
    """
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(score, dtype=float)
    keep = np.isfinite(y) & np.isfinite(s)
    y, s = y[keep], s[keep]
    order = np.argsort(-s, kind="stable")
    return auroc_ranked(y[order] == 1, s[order])


def robust_auroc(y_true: np.ndarray, score: np.ndarray, spurious: np.ndarray) -> float:
    """Saab et al.'s robust AUROC: positives *without* the spurious feature vs negatives *with* it.

    Args:
        y_true: Labels 1 / 0 (NaN ignored).
        score: Model scores.
        spurious: Spurious-feature indicator (e.g. chest tube) 1 / 0 (NaN ignored).

    Returns:
        AUROC on the subset {y=1, spurious=0} U {y=0, spurious=1}; NaN if a side is empty.
    """
    y = np.asarray(y_true, dtype=float)
    t = np.asarray(spurious, dtype=float)
    keep = ((y == 1) & (t == 0)) | ((y == 0) & (t == 1))
    return auroc(y[keep], np.asarray(score, dtype=float)[keep])


def reverse_auroc(y_true: np.ndarray, score: np.ndarray, spurious: np.ndarray) -> float:
    """The easy direction: positives *with* the spurious feature vs negatives *without* it."""
    y = np.asarray(y_true, dtype=float)
    t = np.asarray(spurious, dtype=float)
    keep = ((y == 1) & (t == 1)) | ((y == 0) & (t == 0))
    return auroc(y[keep], np.asarray(score, dtype=float)[keep])
