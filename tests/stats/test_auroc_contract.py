"""``auroc``'s input contract: infinite scores are ranks, labels are 1 / 0 / NaN."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_spurious.errors import ContractError
from cxr_spurious.stats.metrics import auroc, reverse_auroc, robust_auroc


def _sklearn_with_finite_infs(y: np.ndarray, s: np.ndarray) -> float:
    """scikit-learn refuses inf: stand-ins above / below every finite score keep the ranks."""
    big = 10 * np.abs(s[np.isfinite(s)]).max() + 1
    return roc_auc_score(y, np.where(np.isposinf(s), big, np.where(np.isneginf(s), -big, s)))


def test_an_infinite_score_is_the_highest_or_lowest_rank_not_a_missing_one() -> None:
    y = np.array([1, 1, 0, 0], float)
    s = np.array([np.inf, 0.1, 0.5, 0.7])  # an overflowed logit: the most confident positive
    assert auroc(y, s) == pytest.approx(0.5)  # the old code dropped the row: 0.0
    assert auroc(y, s) == pytest.approx(_sklearn_with_finite_infs(y, s), abs=1e-12)


def test_infinite_scores_match_scikit_learn_with_ties_and_nan() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(0, 2, 60).astype(float)
        s = np.round(rng.normal(size=60) + y, 1)
        s[rng.integers(0, 60, 4)] = np.inf  # tied at the top
        s[rng.integers(0, 60, 3)] = -np.inf  # tied at the bottom
        s[rng.integers(0, 60, 2)] = np.nan  # dropped
        y[rng.integers(0, 60, 3)] = np.nan  # dropped
        keep = ~np.isnan(y) & ~np.isnan(s)
        expected = _sklearn_with_finite_infs(y[keep], s[keep])
        assert auroc(y, s) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("y", "seen"),
    [
        ([1, 1, 0, 0, -1, -1], "-1, 0, 1"),  # CheXpert's uncertain label
        ([2, 2, 1, 1, np.nan, 1], "1, 2"),  # labels coded 1 / 2 (the old code inverted them)
        ([1, 0, np.inf, 0, 1, 0], "0, 1, inf"),
    ],
)
def test_a_label_other_than_0_or_1_is_refused_naming_the_values(y, seen) -> None:
    y = np.array(y, float)
    s = np.array([0.9, 0.8, 0.1, 0.2, 0.95, 0.85])
    with pytest.raises(ContractError, match=rf"auroc: labels must be 1 .*values seen: {seen}$"):
        auroc(y, s)
    with pytest.raises(ContractError, match="robust_auroc: labels must be"):
        robust_auroc(y, s, np.array([1, 0, 1, 0, 1, 0]))
    with pytest.raises(ContractError, match="reverse_auroc: labels must be"):
        reverse_auroc(y, s, np.array([1, 0, 1, 0, 1, 0]))


def test_nan_labels_stay_unknown() -> None:
    y = np.array([1, np.nan, 0, 1, 0])
    s = np.array([0.9, 0.1, 0.2, 0.3, 0.4])
    assert auroc(y, s) == pytest.approx(roc_auc_score([1, 0, 1, 0], [0.9, 0.2, 0.3, 0.4]))
