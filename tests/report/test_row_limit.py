"""``report.max_table_rows`` must be an integer >= 1.

Before, ``table_html(t, max_rows=-1)`` showed 3 of 4 rows under the note "First -1 of 4
rows" (``DataFrame.head(-1)`` drops the last row).
"""

from __future__ import annotations

import re

import pandas as pd
import pytest
from tests.report import synthetic

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.report import nodes
from cxr_spurious.report.html import table_html

TABLE = pd.DataFrame({"x": [1, 2, 3, 4]})


def _build(max_rows: object) -> str:
    inputs = synthetic.inputs(optional=False)
    return nodes.build_report(
        inputs.dataset_report,
        inputs.example_grid,
        inputs.study_findings,
        inputs.study_findings_figure,
        {k: (lambda v=v: v) for k, v in inputs.overlays.items()},
        inputs.localization_summary,
        {k: (lambda v=v: v) for k, v in inputs.human_benchmark.items()},
        inputs.regression_forest_plot,
        inputs.robustness_summary,
        inputs.calibration,
        inputs.fairness_gaps,
        None,
        None,
        None,
        None,
        None,
        title="t",
        max_rows=max_rows,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("bad", [-1, 0, 2.5, True, "60"])
def test_a_row_limit_below_one_or_not_an_integer_is_refused(bad: object) -> None:
    with pytest.raises(ParameterError) as info:
        _build(bad)
    assert info.value.key == "report.max_table_rows"
    assert f"must be an integer >= 1, got {bad!r}" in info.value.problem
    with pytest.raises(ParameterError, match="max_rows"):
        table_html(TABLE, max_rows=bad)  # type: ignore[arg-type]


def test_a_valid_limit_shows_that_many_rows_and_says_so() -> None:
    page = table_html(TABLE, max_rows=2)
    assert re.findall(r"<tr><td[^>]*>(\d)</td></tr>", page) == ["1", "2"]
    assert "First 2 of 4 rows" in page
    page = table_html(TABLE, max_rows=4.0)  # type: ignore[arg-type]  # --params ...=4e0
    assert re.findall(r"<tr><td[^>]*>(\d)</td></tr>", page) == ["1", "2", "3", "4"]
    assert "First" not in page
    assert "<title>t</title>" in _build(60)
