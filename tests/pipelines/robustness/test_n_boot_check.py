"""``robustness.n_boot`` goes through ``check_n_boot``: a fraction is refused, not truncated.

The nodes used to cast it with ``int()``: ``--params robustness.n_boot=2.5`` ran 2
replicates without a word, before the bootstrap's own check could see the value.
"""

from __future__ import annotations

import pandas as pd
import pytest
from tests.robustness.robust_fixtures import TASK, make_table

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.robustness import nodes
from cxr_spurious.robustness.calibration import calibration_table
from cxr_spurious.robustness.fairness import fairness_tables
from cxr_spurious.robustness.subgroups import subgroup_auroc

THRESHOLD = 0.5


def _calls(n_boot: object) -> dict[str, object]:
    table = make_table()
    points = pd.DataFrame([{"task": TASK, "rule": "youden", "target": 0.0, "threshold": 0.5}])
    return {
        "subgroup_auroc": lambda: nodes.compute_subgroup_auroc(
            table, [TASK], ["sex"], "tube", 5, n_boot, 0, 0.95
        ),
        "fairness": lambda: nodes.compute_fairness(table, points, ["sex"], 5, n_boot, 0, 0.95)[1],
        "calibration": lambda: nodes.compute_calibration(
            table, [TASK], ["sex"], 5, 5, n_boot, 0, 0.95
        ),
    }


@pytest.mark.parametrize("node", ["subgroup_auroc", "fairness", "calibration"])
@pytest.mark.parametrize("n_boot", [2.5, 0, True, "20"])
def test_a_non_integer_n_boot_is_refused_naming_the_key(node: str, n_boot: object) -> None:
    with pytest.raises(ParameterError) as err:
        _calls(n_boot)[node]()
    assert err.value.key == "robustness.n_boot"
    assert repr(n_boot) in err.value.problem


def test_an_integral_float_is_that_many_replicates() -> None:
    """``--params robustness.n_boot=2e1`` parses as 20.0: the tables are those of 20
    replicates, as the estimators called directly with the int give them."""
    table = make_table()
    test = table[table["split"] == "test"]
    calls = _calls(2e1)
    reference = {
        "subgroup_auroc": subgroup_auroc(
            test, TASK, ["sex"], spurious="tube", min_per_class=5, n_boot=20, seed=0
        ),
        "fairness": fairness_tables(
            test, TASK, THRESHOLD, ["sex"], min_per_class=5, n_boot=20, seed=0
        )[1].assign(threshold=THRESHOLD),
        "calibration": calibration_table(
            test, TASK, ["sex"], n_bins=5, min_rows=5, n_boot=20, seed=0
        ),
    }
    for name, expected in reference.items():
        got = calls[name]().reset_index(drop=True)
        if name == "fairness":  # the node adds the adjusted test over the attributes
            got = got.drop(columns=["p_no_gap_adj", "p_adj_note"])
        pd.testing.assert_frame_equal(got, expected.reset_index(drop=True))
    # and 20 replicates are not 19 (the comparison can fail)
    fewer = subgroup_auroc(test, TASK, ["sex"], spurious="tube", min_per_class=5, n_boot=19)
    assert not calls["subgroup_auroc"]()[["lo", "hi"]].equals(fewer[["lo", "hi"]])
