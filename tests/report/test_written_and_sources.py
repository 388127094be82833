"""When an optional table's file was written, shown under it, and where a cut table's rows are.

Before, a ``headline_table.csv`` written by a comparison run a month earlier was shown in the
report with no date, as if current; and a cut table's note pointed to "the CSV file named
above", which the page never named (the stacked fairness and calibration tables have no
file of their own).
"""

from __future__ import annotations

import html
import os
import re
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.io.core import DatasetError
from tests.report import synthetic
from tests.report.test_report_pipeline import _catalog_config

from cxr_spurious.datasets.optional import OptionalDataset
from cxr_spurious.pipelines.report import nodes
from cxr_spurious.report.html import table_html
from cxr_spurious.report.study import SOURCES, build_study_report

MONTH_AGO = datetime(2026, 11, 6, 6, 40, 30, tzinfo=UTC)
TODAY = datetime(2026, 12, 6, 8, 15, 0, tzinfo=UTC)


def _touch(path, when: datetime) -> None:
    os.utime(path, (when.timestamp(), when.timestamp()))


def _text(page: str, section: str) -> str:
    body = re.search(rf'<section id="{section}">(.*?)</section>', page, re.S).group(1)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def test_optional_dataset_gives_the_files_modification_time(tmp_path) -> None:
    path = tmp_path / "headline_table.csv"
    synthetic.headline_table().to_csv(path, index=False)
    _touch(path, MONTH_AGO)
    config = {"type": "pandas.CSVDataset", "filepath": str(path)}
    table = OptionalDataset(config).load()
    assert table.attrs["written_utc"] == MONTH_AGO  # os.utime's time, to the second
    assert OptionalDataset(config).written_utc() == MONTH_AGO
    assert OptionalDataset(config, returns="written").load() == MONTH_AGO
    missing = {"type": "pandas.CSVDataset", "filepath": str(tmp_path / "none.csv")}
    assert OptionalDataset(missing, returns="written").load() is None
    assert OptionalDataset(missing).written_utc() is None
    with pytest.raises(DatasetError, match="'returns' must be one of"):
        OptionalDataset(config, returns="mtime")


#: The comparison's tables the report reads: catalog entry, synthetic table.
COMPARISON = {
    "report_headline_table": synthetic.headline_table,
    "report_headline_table_seeds": synthetic.headline_table_seeds,
    "report_headline_paired_differences": synthetic.headline_paired_differences,
}


def _report_from_files(
    tmp_path, headline_written: datetime | dict[str, datetime], findings_written: datetime
) -> str:
    """The report node with the comparison's tables and the findings' time read through the
    report's own catalog entries (their paths moved to ``tmp_path``).

    ``headline_written``: when ``headline_table.csv`` was written (the other comparison
    tables are then not written), or when each of the ``COMPARISON`` entries it names was.
    """
    if isinstance(headline_written, datetime):
        headline_written = {"report_headline_table": headline_written}
    config = _catalog_config()
    findings = tmp_path / "study_findings.csv"
    synthetic.findings().to_csv(findings, index=False)
    _touch(findings, findings_written)
    entries = {"report_study_findings_written": findings}
    for entry in COMPARISON:
        path = tmp_path / f"{entry}.csv"
        entries[entry] = path
        if entry in headline_written:
            COMPARISON[entry]().to_csv(path, index=False)
            _touch(path, headline_written[entry])
    catalog = DataCatalog.from_config(
        {
            name: {**config[name], "dataset": {**config[name]["dataset"], "filepath": str(path)}}
            for name, path in entries.items()
        }
    )
    inputs = synthetic.inputs(optional=False)
    return nodes.build_report(
        inputs.dataset_report,
        inputs.example_grid,
        inputs.study_findings,
        inputs.study_findings_figure,
        {k: (lambda v=v: v) for k, v in inputs.overlays.items()},
        inputs.localization_summary,
        {},
        inputs.regression_forest_plot,
        inputs.robustness_summary,
        inputs.calibration,
        inputs.fairness_gaps,
        *(catalog.load(entry) for entry in COMPARISON),
        None,
        None,
        title="t",
        max_rows=60,
        study_findings_written=catalog.load("report_study_findings_written"),
    )


def test_a_table_older_than_the_study_findings_is_dated_and_flagged(tmp_path) -> None:
    """The audit's case: headline_table.csv written 30 days before the findings."""
    text = _text(_report_from_files(tmp_path, MONTH_AGO, TODAY), "comparison")
    assert "data/08_reporting/comparison/headline_table.csv: written 2026-11-06 06:40 UTC" in text
    assert "Older than the study findings this report shows (written 2026-12-06 08:15 UTC)" in text
    assert "kedro run --pipeline comparison" in text


def test_a_table_written_after_the_study_findings_is_dated_without_a_note(tmp_path) -> None:
    text = _text(_report_from_files(tmp_path, TODAY, MONTH_AGO), "comparison")
    assert "headline_table.csv: written 2026-12-06 08:15 UTC" in text
    assert "Older than" not in text


def test_each_comparison_table_has_its_own_time(tmp_path) -> None:
    """The tables over seeds, read from CSV files through the report's catalog entries: the
    paired differences a month old (flagged), the table over seeds current, no seed-0 table."""
    written = {
        "report_headline_table_seeds": TODAY,
        "report_headline_paired_differences": MONTH_AGO,
    }
    text = _text(_report_from_files(tmp_path, written, TODAY - timedelta(hours=1)), "comparison")
    assert "headline_table_seeds.csv: written 2026-12-06 08:15 UTC" in text
    assert "headline_paired_differences.csv: written 2026-11-06 06:40 UTC" in text
    assert text.count("Older than the study findings") == 1
    older = text.index("Older than the study findings")
    assert text.index("headline_paired_differences.csv: written") < older
    assert "(written 2026-12-06 07:15 UTC)" in text
    # read back from CSV ("0,1,2" stays text), the cells are as built from the tables
    assert "0.45 [0.30, 0.60], p = 0.002 (adj. 0.023)" in text
    assert " 0,1,2 " in text
    # the seed-0 table was not written: named, not an error
    assert (
        "Not written: data/08_reporting/comparison/headline_table.csv (kedro run --pipeline "
        "comparison, then kedro run --pipeline report)." in text
    )


def test_each_sweep_table_has_its_own_time() -> None:
    inputs = synthetic.inputs()
    inputs.written = {
        "study_findings": TODAY,
        "sweep_summary": MONTH_AGO,
        "shortcut_detection": TODAY,
    }
    text = _text(build_study_report(inputs), "sweep")
    assert "sweep_summary.csv: written 2026-11-06 06:40 UTC" in text
    assert "shortcut_detection.csv: written 2026-12-06 08:15 UTC" in text
    assert text.count("Older than the study findings") == 1  # the summary only
    assert "kedro run --pipeline sweep" in text
    # a table handed over without its time (a notebook) says so
    assert "headline_table.csv: when it was written is not known" in _text(
        build_study_report(inputs), "comparison"
    )


def test_a_table_loaded_through_optional_dataset_carries_its_time(tmp_path) -> None:
    """The audit's reproducer: the table loaded by hand, handed to build_study_report."""
    path = tmp_path / "headline_table.csv"
    synthetic.headline_table().to_csv(path, index=False)
    _touch(path, MONTH_AGO)
    inputs = synthetic.inputs()
    inputs.headline_table = OptionalDataset(
        {"type": "pandas.CSVDataset", "filepath": str(path)}
    ).load()
    inputs.written = {"study_findings": TODAY}
    text = _text(build_study_report(inputs), "comparison")
    assert "written 2026-11-06 06:40 UTC" in text and "Older than the study findings" in text


def test_a_cut_table_names_its_file_or_says_the_rest_is_not_shown() -> None:
    table = pd.DataFrame({"x": range(4)})
    cut = html.unescape(table_html(table, max_rows=2, source="data/x.csv"))
    assert "First 2 of 4 rows; the full table is data/x.csv." in cut
    bare = html.unescape(table_html(table, max_rows=2))
    assert "First 2 of 4 rows; the rest is not shown; raise report.max_table_rows." in bare
    assert "named above" not in cut + bare
    assert "First" not in table_html(table, max_rows=4)


def test_the_audits_cut_fairness_table_names_the_per_model_files() -> None:
    """90 fairness-gap rows, max_rows 60: the note names the files that hold every row."""
    inputs = synthetic.inputs()
    inputs.fairness_gaps = pd.concat([inputs.fairness_gaps] * 15, ignore_index=True)
    page = html.unescape(build_study_report(inputs, max_rows=60))
    notes = re.findall(r'<p class="note">(First .*?)</p>', page)
    assert notes == [
        f"First 60 of {len(inputs.fairness_gaps)} rows; the full table is "
        "data/08_reporting/robustness/<model>/fairness_gaps.csv, one file per model."
    ]


def test_the_files_the_page_names_are_the_catalogs() -> None:
    config = _catalog_config()
    # the comparison's tables over seeds are named too (and checked below)
    assert {"headline_table_seeds", "headline_paired_differences"} <= set(SOURCES)
    for name, path in SOURCES.items():
        if name in ("calibration", "fairness_gaps"):
            entry = config[f"{{variant}}.{name}"]
            path = path.replace("<model>", "{variant}")
        else:
            entry = config[name]
        inner = entry.get("dataset", entry)
        if not isinstance(inner, dict) or "filepath" not in inner:
            inner = entry
        assert inner.get("filepath", inner.get("path")) == path, name


@pytest.mark.parametrize(
    ("p", "text"),
    [
        (0.123, "= 0.123"),
        (0.002, "= 0.002"),
        (0.0496, "= 0.0496"),  # three decimals would read "0.050": not below 0.05
        (0.04951, "= 0.0495"),
        (0.00996, "= 0.00996"),
        (0.099996, "= 0.099996"),
        (0.0999996, "< 0.1"),
        (0.0499999996, "< 0.05"),
        (0.0504, "= 0.050"),  # rounding down onto a level changes no reading
        (0.05, "= 0.050"),
        (0.0009, "< 0.001"),
    ],
)
def test_p_text_never_rounds_a_p_value_up_onto_a_level(p: float, text: str) -> None:
    from cxr_spurious.report.html import p_text

    assert p_text(p) == text
