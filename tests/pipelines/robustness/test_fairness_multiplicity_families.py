"""``compute_fairness``'s ``p_no_gap_adj`` over two tasks: one Holm family per gap metric
*and task* (``FAIRNESS_FAMILY``), and ``robustness.multiplicity.family: table`` pools every
row, with a note that says which."""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests
from tests.pipelines.robustness.test_strata_order_and_gap_test import _fairness_inputs
from tests.robustness.robust_fixtures import TASK

from cxr_spurious.pipelines.robustness import nodes

OTHER = "Edema"
ARGS = dict(min_per_class=5, n_boot=100, seed=0, ci_level=0.95)


def _two_tasks() -> tuple[pd.DataFrame, pd.DataFrame]:
    table, _ = _fairness_inputs()
    rng = np.random.default_rng(9)
    y2 = (rng.random(len(table)) < 0.4).astype(float)
    table[OTHER] = y2
    table[f"p_{OTHER}"] = np.clip(0.4 * y2 + 0.3 + rng.normal(0, 0.2, len(table)), 0, 1)
    ops = pd.DataFrame({"task": [TASK, OTHER], "threshold": [0.5, 0.5]})
    return table, ops


def test_holm_families_are_per_metric_and_task() -> None:
    table, ops = _two_tasks()
    _, gaps = nodes.compute_fairness(table, ops, ["site", "sex"], **ARGS)
    assert set(gaps["task"]) == {TASK, OTHER}
    for (_, _), family in gaps.groupby(["metric", "task"]):
        assert len(family) == 2  # the two attributes
        expected = multipletests(family["p_no_gap"].to_numpy(), method="holm")[1]
        np.testing.assert_allclose(family["p_no_gap_adj"].to_numpy(), expected)


def test_the_table_family_pools_every_row() -> None:
    table, ops = _two_tasks()
    settings = {"method": "bonferroni", "family": "table"}
    _, gaps = nodes.compute_fairness(table, ops, ["site", "sex"], **ARGS, multiplicity=settings)
    p = gaps["p_no_gap"].to_numpy(dtype=float)
    m = int(np.isfinite(p).sum())
    assert m == len(gaps) > 6
    np.testing.assert_allclose(gaps["p_no_gap_adj"].to_numpy(), np.minimum(1.0, m * p))
    assert gaps["p_adj_note"].iloc[0] == (
        "p_no_gap_adj: Bonferroni (family-wise error) over every p-value of the table; "
        "the intervals are not adjusted"
    )
