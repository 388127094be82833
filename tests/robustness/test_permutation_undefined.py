"""``permutation_p_values``: ``p = (1 + #{permuted >= observed}) / (1 + n)`` over the ``n``
permutations in which the gap is *defined*, as the slow reference of
``test_gap_permutation`` computes it. Counting the undefined ones in ``n`` would make
``p_no_gap`` too small when a small group is often left without positives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.robustness.robust_fixtures import TASK
from tests.robustness.test_gap_permutation import _slow_permutation_p

from cxr_spurious.robustness.fairness import GAP_METRICS, permutation_p_values


def _small_group_with_few_positives() -> pd.DataFrame:
    """40 patients of group A, 6 of group B; 5 positive patients (2 of them in B), so
    a permutation often leaves B without a positive (its FNR, hence the gap, undefined)."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(46):
        group = "A" if k < 40 else "B"
        y = 1.0 if k in (0, 1, 2, 40, 41) else 0.0
        score = (0.8 if group == "A" else 0.3) if y == 1 else rng.uniform(0, 0.45)
        rows.append(
            {"image_id": f"i{k}", "patient_id": f"p{k}", TASK: y, f"p_{TASK}": score,
             "grp": group}
        )  # fmt: skip
    return pd.DataFrame(rows)


def test_undefined_permutations_are_left_out_of_the_p_value() -> None:
    t = _small_group_with_few_positives()
    y = t[TASK].astype(int).to_numpy()
    yp = (t[f"p_{TASK}"] >= 0.5).astype(int).to_numpy()
    codes = pd.Categorical(t["grp"]).codes
    n_perm = 200
    res = permutation_p_values(y, yp, codes, 2, t["patient_id"].to_numpy(), n_perm=n_perm, seed=4)
    p, undefined = res["fnr_gap"]
    assert 20 < undefined < n_perm - 20  # the case under test: many undefined permutations
    defined = n_perm - undefined
    # p * (1 + defined) is 1 + the count of permuted gaps at least the observed one
    k = p * (1 + defined)
    assert k == pytest.approx(round(k)) and 1 <= round(k) <= 1 + defined
    # and it equals the slow reference, which drops undefined permutations
    # (the gaps table's bootstrap CI refuses this group: too many undefined replicates)
    ref = _slow_permutation_p(t, "grp", 0.5, n_perm, 4)
    for metric in GAP_METRICS:
        assert res[metric][0] == pytest.approx(ref[metric], abs=1e-12), metric
