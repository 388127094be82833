"""The comparison's across-seed tables against scipy on a hand-made per-seed frame."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.pipelines.comparison.nodes import (
    HEADLINE_METRICS,
    build_headline_table,
    stack_seed_tables,
    summarise_headline_seeds,
)

# seed -> (auroc, robust_tube_auroc) per variant; cmp_jtt's robust AUROC is undefined on seed 2
VALUES = {
    "erm": {0: (0.66, 0.20), 1: (0.61, 0.31), 2: (0.70, 0.18)},
    "cmp_jtt": {0: (0.80, 0.69), 1: (0.71, 0.20), 2: (0.77, np.nan)},
    "seg": {0: (0.98, 0.97), 1: (0.96, 0.95), 2: (0.97, 0.99)},
}


def _headline(seed: int) -> pd.DataFrame:
    """One seed's ``headline_table`` (the columns ``build_headline_table`` writes)."""
    rows = []
    for variant, by_seed in VALUES.items():
        auroc, robust = by_seed[seed]
        row = {"variant": variant, "task": "Pneumothorax"}
        for i, m in enumerate(HEADLINE_METRICS):
            value = {"auroc": auroc, "robust_tube_auroc": robust}.get(m, 0.1 * (i + seed))
            row.update({m: value, f"{m}_lo": value - 0.05, f"{m}_hi": value + 0.05})
        rows.append(row)
    return pd.DataFrame(rows)


def _per_seed() -> pd.DataFrame:
    # keyword order is the catalog's; rows must not be paired by position
    return stack_seed_tables(s2=_headline(2), s0=_headline(0), s1=_headline(1))


def _t(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=float)
    half = stats.t.ppf((1 + level) / 2, len(v) - 1) * stats.sem(v)
    return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def test_per_seed_rows_carry_their_seed_and_test_cis() -> None:
    per_seed = _per_seed()
    assert list(per_seed.columns[:3]) == ["seed", "variant", "task"]
    assert sorted(per_seed["seed"].unique()) == [0, 1, 2] and len(per_seed) == 9
    row = per_seed[(per_seed["seed"] == 1) & (per_seed["variant"] == "erm")].iloc[0]
    assert row["auroc"] == 0.61 and row["auroc_lo"] == pytest.approx(0.56)
    with pytest.raises(ContractError, match="not s<seed>"):
        stack_seed_tables(seed1=_headline(1))


def test_across_seed_means_and_t_intervals_match_scipy() -> None:
    table, _ = summarise_headline_seeds(_per_seed(), 0.95)
    assert list(table["variant"]) == list(VALUES)
    for variant, by_seed in VALUES.items():
        row = table[table["variant"] == variant].iloc[0]
        assert row["n_seeds"] == 3 and row["seeds"] == "0,1,2"
        mean, lo, hi = _t([by_seed[s][0] for s in (0, 1, 2)])
        assert (row["auroc"], row["auroc_lo"], row["auroc_hi"]) == pytest.approx((mean, lo, hi))
        assert row["auroc_lo"] < row["auroc"] < row["auroc_hi"]
    # an undefined seed is left out of that metric, and the note says so
    jtt = table[table["variant"] == "cmp_jtt"].iloc[0]
    mean, lo, hi = _t([0.69, 0.20])
    assert lo < 0 < 1 < hi  # two seeds far apart: the plain interval passes both ends
    assert (jtt["robust_tube_auroc"], jtt["robust_tube_auroc_lo"]) == pytest.approx((mean, 0.0))
    assert jtt["robust_tube_auroc_hi"] == 1.0  # cut to an AUROC's range
    assert "cut to the metric's range" in jtt["ci_note"]
    assert jtt["robust_tube_auroc_n"] == 2
    assert "robust_tube_auroc: 2 of 3" in jtt["ci_note"]
    assert "across 3 training seeds" in jtt["ci_note"]
    assert "headline_table_per_seed" in jtt["ci_note"]
    erm = table[table["variant"] == "erm"].iloc[0]
    assert "defined on" not in erm["ci_note"]
    # another level gives scipy's interval at that level
    table90, _ = summarise_headline_seeds(_per_seed(), 0.9)
    erm90 = table90[table90["variant"] == "erm"].iloc[0]
    assert erm90["auroc_hi"] == pytest.approx(_t([0.66, 0.61, 0.70], 0.9)[2])


def test_paired_differences_against_erm_on_the_same_seed_match_scipy() -> None:
    _, paired = summarise_headline_seeds(_per_seed(), 0.95)
    assert set(paired["variant"]) == {"cmp_jtt", "seg"}
    assert (paired["reference"] == "erm").all()
    seg = paired[paired["variant"] == "seg"].iloc[0]
    a = [VALUES["seg"][s][0] for s in (0, 1, 2)]
    b = [VALUES["erm"][s][0] for s in (0, 1, 2)]
    mean, lo, hi = _t(list(np.subtract(a, b)))
    assert (seg["auroc"], seg["auroc_lo"], seg["auroc_hi"]) == pytest.approx((mean, lo, hi))
    assert seg["auroc_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert seg["n_pairs"] == 3 and "paired t interval" in seg["ci_note"]
    jtt = paired[paired["variant"] == "cmp_jtt"].iloc[0]
    ja, jb = [0.69, 0.20], [0.20, 0.31]  # seed 2 is undefined for cmp_jtt
    assert jtt["robust_tube_auroc"] == pytest.approx(np.mean(np.subtract(ja, jb)))
    assert jtt["robust_tube_auroc_p"] == pytest.approx(stats.ttest_rel(ja, jb).pvalue)
    # the row's n_pairs counts every paired seed; each metric says on how many it is defined
    assert jtt["n_pairs"] == 3
    assert (jtt["robust_tube_auroc_n"], jtt["auroc_n"], seg["robust_tube_auroc_n"]) == (2, 3, 3)


def test_one_seed_has_no_across_seed_interval() -> None:
    table, paired = summarise_headline_seeds(stack_seed_tables(s0=_headline(0)), 0.95)
    erm = table[table["variant"] == "erm"].iloc[0]
    assert erm["auroc"] == 0.66 and np.isnan(erm["auroc_lo"]) and np.isnan(erm["auroc_hi"])
    assert erm["ci_note"].startswith("one training seed (0): no across-seed interval")
    assert np.isnan(paired["auroc_lo"]).all() and (paired["n_pairs"] == 1).all()


def test_a_repeated_seed_or_a_missing_erm_is_an_error() -> None:
    doubled = pd.concat([_per_seed(), _per_seed().head(1)], ignore_index=True)
    with pytest.raises(ContractError, match="headline_table_per_seed: a key and seed repeat"):
        summarise_headline_seeds(doubled, 0.95)
    no_erm = _per_seed().query("variant != 'erm'")
    with pytest.raises(ContractError, match="no row with variant = 'erm'"):
        summarise_headline_seeds(no_erm, 0.95)


def test_paired_p_values_are_adjusted_per_metric_with_holm_by_default() -> None:
    _, paired = summarise_headline_seeds(_per_seed(), 0.95)
    for m in HEADLINE_METRICS:
        p = paired[f"{m}_p"].to_numpy(dtype=float)
        keep = np.isfinite(p)
        expected = np.full(p.size, np.nan)
        expected[keep] = multipletests(p[keep], method="holm")[1]
        np.testing.assert_allclose(paired[f"{m}_p_adj"], expected)
    assert "Holm (family-wise error) over each metric and task" in paired["ci_note"][0]


def test_the_table_family_and_fdr_follow_the_parameter() -> None:
    settings = {"method": "fdr_bh", "family": "table"}
    _, paired = summarise_headline_seeds(_per_seed(), 0.95, settings)
    cols = [f"{m}_p" for m in HEADLINE_METRICS]
    p = paired[cols].to_numpy(dtype=float).ravel()
    keep = np.isfinite(p)
    expected = np.full(p.size, np.nan)
    expected[keep] = multipletests(p[keep], method="fdr_bh")[1]
    adjusted = paired[[f"{m}_p_adj" for m in HEADLINE_METRICS]].to_numpy(dtype=float).ravel()
    np.testing.assert_allclose(adjusted, expected)
    assert "Benjamini-Hochberg" in paired["ci_note"][0]


def test_an_unknown_multiplicity_setting_names_the_key() -> None:
    with pytest.raises(ParameterError, match="comparison.multiplicity.method"):
        summarise_headline_seeds(_per_seed(), 0.95, {"method": "sidak"})
    with pytest.raises(ParameterError, match=r"comparison.multiplicity.*\['level'\]"):
        summarise_headline_seeds(_per_seed(), 0.95, {"level": 0.05})


def test_the_notes_state_a_level_that_is_not_a_whole_percent() -> None:
    # f"{level:.0%}" printed 0.975 as "98%" and 0.995 as "100%"
    table, paired = summarise_headline_seeds(_per_seed(), 0.975)
    assert table["ci_note"].str.startswith("97.5% t interval across").all()
    assert paired["ci_note"].str.startswith("97.5% paired t interval").all()


def _summary(value: float, drop: tuple[str, ...] = ()) -> pd.DataFrame:
    """A robustness ``model_summary`` of one task, without the columns ``drop``."""
    row: dict[str, object] = {"task": "Pneumothorax"}
    for m in HEADLINE_METRICS:
        row.update({m: value, f"{m}_lo": value - 0.05, f"{m}_hi": value + 0.05})
    return pd.DataFrame([row]).drop(columns=list(drop))


@pytest.mark.parametrize(
    ("drop", "named"),
    [
        (("robust_tube_auroc",), "robust_tube_auroc"),
        (("fnr_gap_lo", "fnr_gap_hi"), "fnr_gap_lo, fnr_gap_hi"),
        (("task",), "task"),
    ],
)
def test_a_summary_without_a_headline_column_is_refused_naming_it(
    drop: tuple[str, ...], named: str
) -> None:
    """A missing metric column was read as NaN ("defined on 0 of N seeds"), a missing
    ``task`` failed with a bare KeyError."""
    with pytest.raises(ContractError, match=f"cmp_jtt.model_summary lacks {named} \\("):
        build_headline_table(erm=_summary(0.7), cmp_jtt=_summary(0.8, drop=drop))
    table = build_headline_table(erm=_summary(0.7), cmp_jtt=_summary(0.8))
    assert list(table["variant"]) == ["erm", "cmp_jtt"] and table["fnr_gap_hi"][1] == pytest.approx(
        0.85
    )


def test_a_variant_without_a_seed_in_common_with_erm_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    per_seed = stack_seed_tables(
        s0=build_headline_table(erm=_summary(0.7), seg=_summary(0.9)),
        s1=build_headline_table(cmp_jtt=_summary(0.8)),
    )
    with caplog.at_level(logging.WARNING, logger="cxr_spurious.pipelines.comparison.nodes"):
        _, paired = summarise_headline_seeds(per_seed, 0.95)
    assert list(paired["variant"]) == ["seg"]
    assert (
        "left out of headline_paired_differences, no seed shared with 'erm' on the task: "
        "cmp_jtt on Pneumothorax (seeds [1]; erm: [0])"
    ) in caplog.text


def test_no_variant_paired_with_erm_is_a_contract_error_saying_so() -> None:
    """An empty paired table lacked the ``<m>_p`` columns: adjust_table failed with a
    misleading multiplicity error."""
    per_seed = stack_seed_tables(
        s0=build_headline_table(erm=_summary(0.7)),
        s1=build_headline_table(cmp_jtt=_summary(0.8)),
    )
    with pytest.raises(
        ContractError,
        match=r"headline_table_per_seed: no variant shares a training seed and task with "
        r"'erm'.*cmp_jtt on Pneumothorax \(seeds \[1\]; erm: \[0\]\)",
    ):
        summarise_headline_seeds(per_seed, 0.95)
