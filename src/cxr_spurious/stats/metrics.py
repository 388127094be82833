"""Point metrics shared by training, robustness and the study (no CI here; see bootstrap)."""

from __future__ import annotations

import numpy as np

from cxr_spurious.errors import ContractError


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
    """AUROC ignoring NaN labels and NaN scores; NaN when fewer than two classes remain.

    Labels are 1 (positive) or 0 (negative), NaN for unknown. Scores of +inf / -inf are
    kept: they rank above / below every finite score (an overflowed logit is the most
    confident one, not a missing one). Computed as the Mann-Whitney statistic with average
    ranks for ties (``auroc_ranked``), which equals scikit-learn's ``roc_auc_score`` (tested)
    at a fraction of its cost inside bootstraps.

    Raises:
        ContractError: a label that is not NaN is neither 0 nor 1 (CheXpert's uncertain -1,
            labels coded 1 / 2): the message names the label values seen.
    """
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(score, dtype=float)
    check_binary_labels(y, "auroc")
    keep = ~np.isnan(y) & ~np.isnan(s)
    y, s = y[keep], s[keep]
    order = np.argsort(-s, kind="stable")
    return auroc_ranked(y[order] == 1, s[order])


def check_binary_labels(y: np.ndarray, metric: str) -> None:
    """Refuse labels other than 0, 1 and NaN (unknown), naming the values seen.

    Every label other than 1 would otherwise count as a negative: CheXpert's uncertain -1
    would join the negatives, and labels coded 1 / 2 would invert the AUROC.

    Raises:
        ContractError: naming ``metric``, the distinct label values and how many rows are bad.
    """
    yy = np.asarray(y, dtype=float)
    bad = ~((yy == 0) | (yy == 1) | np.isnan(yy))
    if bad.any():
        seen = np.unique(yy[~np.isnan(yy)])
        shown = ", ".join(f"{v:g}" for v in seen[:10]) + (", ..." if seen.size > 10 else "")
        raise ContractError(
            f"{metric}: labels must be 1 (positive), 0 (negative) or NaN (unknown); "
            f"{int(bad.sum())} of {yy.size} label(s) are not, values seen: {shown}"
        )


def robust_auroc(y_true: np.ndarray, score: np.ndarray, spurious: np.ndarray) -> float:
    """Saab et al.'s robust AUROC: positives *without* the spurious feature vs negatives *with* it.

    Args:
        y_true: Labels 1 / 0 (NaN ignored).
        score: Model scores.
        spurious: Spurious-feature indicator (e.g. chest tube) 1 / 0 (NaN ignored).

    Returns:
        AUROC on the subset {y=1, spurious=0} U {y=0, spurious=1}; NaN if a side is empty.

    Raises:
        ContractError: a label other than 1, 0 or NaN (``check_binary_labels``).
    """
    y = np.asarray(y_true, dtype=float)
    check_binary_labels(y, "robust_auroc")
    keep = spurious_pairing_rows(y, spurious, "robust_auroc")
    return auroc(y[keep], np.asarray(score, dtype=float)[keep])


def reverse_auroc(y_true: np.ndarray, score: np.ndarray, spurious: np.ndarray) -> float:
    """The easy direction: positives *with* the spurious feature vs negatives *without* it."""
    y = np.asarray(y_true, dtype=float)
    check_binary_labels(y, "reverse_auroc")
    keep = spurious_pairing_rows(y, spurious, "reverse_auroc")
    return auroc(y[keep], np.asarray(score, dtype=float)[keep])


#: Which rows robust and reverse AUROC compare (``robust_auroc`` /
#: ``reverse_auroc``): ``(spurious value of the positives, spurious value of the negatives)``.
SPURIOUS_PAIRING: dict[str, tuple[int, int]] = {
    "robust_auroc": (0, 1),  # positives without the feature vs negatives with it
    "reverse_auroc": (1, 0),  # positives with it vs negatives without it
}


def spurious_pairing_rows(y: np.ndarray, spurious: np.ndarray, metric: str) -> np.ndarray:
    """Mask of the rows ``metric`` (a key of ``SPURIOUS_PAIRING``) scores.

    Robust and reverse AUROC use only two of the four label x feature cells, so the row's
    ``n`` / ``n_pos`` must count those cells, not the whole split.
    """
    pos_value, neg_value = SPURIOUS_PAIRING[metric]
    yy, tt = np.asarray(y, dtype=float), np.asarray(spurious, dtype=float)
    return ((yy == 1) & (tt == pos_value)) | ((yy == 0) & (tt == neg_value))


def undefined_pairing_note(y: np.ndarray, spurious: np.ndarray, metric: str, name: str) -> str:
    """Why robust / reverse AUROC (``metric``) is undefined: the counts of its two sides.

    Either side can be empty (no positive without the feature, no negative with it, or a
    feature column without values), and a NaN estimate with no word would read as a
    missing number rather than an undefined one.
    """
    pos_value, neg_value = SPURIOUS_PAIRING[metric]
    yy, tt = np.asarray(y, dtype=float), np.asarray(spurious, dtype=float)
    used = spurious_pairing_rows(yy, tt, metric)
    n_pos, n_neg = int((used & (yy == 1)).sum()), int((used & (yy == 0)).sum())
    word = {1: "with", 0: "without"}
    note = (
        f"undefined: {n_pos} positives {word[pos_value]} '{name}' / "
        f"{n_neg} negatives {word[neg_value]} it"
    )
    unknown = int((np.isfinite(yy) & ~np.isfinite(tt)).sum())
    if unknown:
        note += f" ({unknown} labelled rows have no '{name}' value)"
    return note
