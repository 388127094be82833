"""The comparison section over training seeds: the seed-0 table, the table over seeds and
each variant minus erm paired over seeds, each optional.

Before, the section showed only ``headline_table`` (one training seed, test-sampling CIs),
so a reader could not see how the comparison moves when the models are retrained, nor which
differences from erm survive the multiplicity adjustment.
"""

from __future__ import annotations

import html
import itertools
import re

import pandas as pd
import pytest
from tests.report import synthetic

from cxr_spurious.report.study import MISSING, READ, build_study_report

HEADINGS = {
    "headline_table": "The study's training seed (training.seed)",
    "headline_table_seeds": "Over training seeds",
    "headline_paired_differences": "Each variant minus erm (paired over seeds)",
}


def _section(page: str, key: str = "comparison") -> str:
    return re.search(rf'<section id="{key}">(.*?)</section>', page, re.S).group(1)


def _headings(section: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r"<h3>(.*?)</h3>", section)]


def _tables(section: str) -> list[list[list[str]]]:
    """Every table of the section: its rows (header first), each a list of cell texts."""
    out = []
    for table in re.findall(r"<table>(.*?)</table>", section, re.S):
        rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
        out.append(
            [[html.unescape(c) for c in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", r)] for r in rows]
        )
    return out


def _as_dicts(table: list[list[str]]) -> list[dict[str, str]]:
    return [dict(zip(table[0], row)) for row in table[1:]]


def _paragraphs(section: str) -> list[str]:
    return [html.unescape(p) for p in re.findall(r"<p[^>]*>(.*?)</p>", section, re.S)]


def test_the_three_tables_in_order_with_their_cells_and_notes() -> None:
    section = _section(build_study_report(synthetic.inputs()))
    assert _headings(section) == list(HEADINGS.values())
    seed0, seeds, paired = _tables(section)

    # seed 0: the headline table as before
    assert _as_dicts(seed0)[0] == {
        "variant": "erm",
        "task": "Pneumothorax",
        "robust_tube_auroc": "0.50 [0.45, 0.55]",
    }

    # over seeds: means with t intervals; a <m>_n column only where some row is below n_seeds
    assert seeds[0] == [
        "variant",
        "task",
        "n_seeds",
        "seeds",
        "worst_group_auroc",
        "worst_group_auroc_n",
        "robust_tube_auroc",
    ]
    assert _as_dicts(seeds)[2] == {
        "variant": "cmp_jtt",
        "task": "Pneumothorax",
        "n_seeds": "3",
        "seeds": "0,1,2",
        "worst_group_auroc": "0.60 [0.47, 0.73]",
        "worst_group_auroc_n": "2",
        "robust_tube_auroc": "0.52 [0.36, 0.67]",
    }
    assert _as_dicts(seeds)[0]["robust_tube_auroc"] == "0.06 [0.00, 0.25]"

    # paired: one cell per metric, reference named in the heading (not a column)
    assert _as_dicts(paired) == [
        {
            "variant": "cmp_upsample",
            "task": "Pneumothorax",
            "n_pairs": "3",
            "seeds": "0,1,2",
            # no adjusted p (NaN), defined on 2 of the 3 pairs
            "worst_group_auroc": "-0.03 [-0.10, 0.05], p = 0.292, 2 of 3 pairs",
            "robust_tube_auroc": "-0.04 [-0.16, 0.08], p = 0.320 (adj. 0.639)",
        },
        {
            "variant": "cmp_jtt",
            "task": "Pneumothorax",
            "n_pairs": "3",
            "seeds": "0,1,2",
            "worst_group_auroc": "0.19 [0.16, 0.22], p < 0.001 (adj. < 0.001)",
            "robust_tube_auroc": "0.45 [0.30, 0.60], p = 0.002 (adj. 0.023)",
        },
    ]

    # each table's ci_note is quoted once, under its table, in order
    notes = [p for p in _paragraphs(section) if p.startswith("The table's note")]
    assert notes == [
        f"The table's note (ci_note): {synthetic.SEEDS_NOTE}",
        f"The table's note (ci_note): {synthetic.PAIRED_NOTE}",
    ]
    seeds_note = html.escape(synthetic.SEEDS_NOTE)
    assert section.index("Over training seeds") < section.index(seeds_note)
    assert section.index(seeds_note) < section.index("Each variant minus erm")
    assert "Not written" not in section and "no adjusted p-values" not in section


def test_the_reading_says_what_each_table_shows() -> None:
    read = READ["comparison"]
    for said in (
        "training.seed, 0 by default",
        "test sampling",
        "retrained",
        "adjusted p (adj.) is small, not the uncorrected p",
    ):
        assert said in read
    page = build_study_report(synthetic.inputs())
    assert f'<p class="read">{html.escape(read)}</p>' in _section(page)


def test_the_adjusted_p_only_where_the_table_has_it() -> None:
    """A table written before the adjustment: p alone, and a note that adj. is missing."""
    inputs = synthetic.inputs()
    inputs.headline_paired_differences = synthetic.headline_paired_differences(adjusted=False)
    section = _section(build_study_report(inputs))
    paired = _as_dicts(_tables(section)[2])
    assert [r["robust_tube_auroc"] for r in paired] == [
        "-0.04 [-0.16, 0.08], p = 0.320",
        "0.45 [0.30, 0.60], p = 0.002",
    ]
    assert paired[1]["worst_group_auroc"] == "0.19 [0.16, 0.22], p < 0.001"
    assert not any("adj." in cell for row in paired for cell in row.values())
    old_note = synthetic.PAIRED_NOTE.replace(
        "p_adj: Holm (family-wise error) over each metric and task; the intervals are "
        "not adjusted; ",
        "",
    )
    assert f"The table's note (ci_note): {old_note}" in _paragraphs(section)
    assert (
        "This file has no adjusted p-values (written before they were added): kedro run "
        "--pipeline comparison, then kedro run --pipeline report, adds them."
    ) in _paragraphs(section)


def test_a_training_seed_column_names_the_seed() -> None:
    inputs = synthetic.inputs()
    inputs.headline_table = inputs.headline_table.assign(seed=0)
    assert _headings(_section(build_study_report(inputs)))[0] == "Training seed 0"


def test_notes_that_differ_by_row_stay_in_the_table() -> None:
    inputs = synthetic.inputs()
    notes = [synthetic.SEEDS_NOTE, synthetic.SEEDS_NOTE, "defined on worst_group_auroc: 2 of 3"]
    inputs.headline_table_seeds = inputs.headline_table_seeds.assign(ci_note=notes)
    section = _section(build_study_report(inputs))
    seeds = _as_dicts(_tables(section)[1])
    assert [r["ci_note"] for r in seeds] == notes
    assert f"The table's note (ci_note): {synthetic.SEEDS_NOTE}" not in _paragraphs(section)


def test_text_of_the_tables_over_seeds_is_escaped() -> None:
    evil = "<script>alert('x')</script> & \"q\""
    inputs = synthetic.inputs()
    inputs.headline_table_seeds = inputs.headline_table_seeds.assign(ci_note=evil)
    inputs.headline_paired_differences = inputs.headline_paired_differences.assign(
        variant=[evil, "cmp_jtt"], reference=evil, ci_note=evil
    )
    page = build_study_report(inputs)
    assert "<script>" not in page and "alert('x')" not in page
    escaped = "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;q&quot;"
    section = _section(page)
    assert section.count(escaped) == 4  # two notes, the heading's reference, a variant
    assert f"<h3>Each variant minus {escaped} (paired over seeds)</h3>" in section


SUBSETS = [
    set(names)
    for k in range(1, len(HEADINGS))
    for names in itertools.combinations(list(HEADINGS), k)
]


@pytest.mark.parametrize("present", SUBSETS, ids=lambda s: "+".join(sorted(s)))
def test_only_the_tables_that_exist_are_shown(present: set[str]) -> None:
    inputs = synthetic.inputs()
    for name in set(HEADINGS) - present:
        setattr(inputs, name, None)
    page = build_study_report(inputs)
    section = _section(page)
    assert _headings(section) == [h for name, h in HEADINGS.items() if name in present]
    absent = [
        f"data/08_reporting/comparison/{name}.csv" for name in HEADINGS if name not in present
    ]
    assert (
        f"Not written: {', '.join(absent)} (kedro run --pipeline comparison, then kedro run "
        "--pipeline report)."
    ) in _paragraphs(section)
    assert MISSING["comparison"] not in page


def test_no_comparison_table_leaves_the_section_out() -> None:
    inputs = synthetic.inputs()
    for name in HEADINGS:
        setattr(inputs, name, None)
    page = build_study_report(inputs)
    assert 'id="comparison"' not in page
    assert html.escape(MISSING["comparison"]) in page
    assert "headline_table_seeds and headline_paired_differences" in MISSING["comparison"]


def test_a_table_over_seeds_written_by_one_seed_reads_its_seed_as_text() -> None:
    """One seed: pandas reads the ``seeds`` column "0" back as the number 0."""
    inputs = synthetic.inputs()
    inputs.headline_table_seeds = inputs.headline_table_seeds.assign(
        n_seeds=1, seeds=0, worst_group_auroc_n=1, robust_tube_auroc_n=1
    )
    seeds = _as_dicts(_tables(_section(build_study_report(inputs)))[1])
    assert {(r["n_seeds"], r["seeds"]) for r in seeds} == {("1", "0")}
    assert "worst_group_auroc_n" not in seeds[0]


def test_a_paired_table_without_p_values_is_still_shown() -> None:
    inputs = synthetic.inputs()
    inputs.headline_paired_differences = pd.DataFrame(
        {"variant": ["cmp_jtt"], "reference": "erm", "auroc": [0.1], "auroc_lo": [0.0]}
    )
    paired = _as_dicts(_tables(_section(build_study_report(inputs)))[2])
    assert paired == [{"variant": "cmp_jtt", "auroc": "0.10", "auroc_lo": "0.00"}]
