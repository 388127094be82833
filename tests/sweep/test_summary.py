"""Across-seed summaries and paired supervision differences against scipy."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.sweep.summary import (
    ONE_SEED_NOTE,
    check_pairs,
    metric_columns,
    paired_differences,
    summarise_cells,
)

CELL = {"artefact": "tube_random", "strength": "strong", "p_given_ptx": 0.9, "p_given_no_ptx": 0.1}
# seed -> robust AUROC per supervision (and fraction)
VALUES = {
    ("erm", 0.0): [0.42, 0.55, 0.47, 0.40],
    ("box", 1.0): [0.61, 0.66, 0.58, 0.70],
    ("seg", 1.0): [0.71, 0.69, 0.75, 0.80],
    ("seg", 0.1): [0.50, 0.64, 0.52, 0.49],
}


def _models() -> pd.DataFrame:
    rows = []
    for (sup, frac), values in VALUES.items():
        for seed, v in enumerate(values):
            rows.append(
                {
                    **CELL,
                    "supervision": sup,
                    "location_fraction": frac,
                    "seed": seed,
                    "robust_auroc": v,
                    "robust_auroc_lo": v - 0.1,
                    "robust_auroc_hi": v + 0.1,
                    "robust_auroc_dropped": 0.0,
                    "artefact_reliance": 1 - v,
                    "namespace": f"ns{sup}{frac}{seed}",
                }
            )
    # rows in an order that pairs wrongly if paired by position
    return pd.DataFrame(rows).sample(frac=1.0, random_state=3).reset_index(drop=True)


def test_metric_columns_skip_identity_and_within_run_cis() -> None:
    assert metric_columns(_models()) == ["robust_auroc", "artefact_reliance"]


def test_counts_and_an_all_nan_note_read_back_from_csv_are_not_metrics() -> None:
    models = _models().assign(n_test=200, n_with_artefact=100, ci_note=np.nan)
    assert metric_columns(models) == ["robust_auroc", "artefact_reliance"]
    summary = summarise_cells(models)
    assert not {"ci_note_lo", "n_test_lo", "n_with_artefact_hi"} & set(summary.columns)


def test_summary_matches_student_t_across_seeds() -> None:
    summary = summarise_cells(_models())
    assert len(summary) == 4 and set(summary["ci_covers"]) == {"seeds"}
    for (sup, frac), values in VALUES.items():
        row = summary[(summary["supervision"] == sup) & (summary["location_fraction"] == frac)]
        row = row.iloc[0]
        lo, hi = stats.t.interval(
            0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values)
        )
        assert row["robust_auroc"] == pytest.approx(np.mean(values))
        assert (row["robust_auroc_lo"], row["robust_auroc_hi"]) == pytest.approx((lo, hi))
        assert row["n_seeds"] == 4 and row["seeds"] == "0,1,2,3"
        assert row["confounding"] == pytest.approx(0.8)
        assert row["note"] == ""


def test_one_seed_has_no_interval_and_says_so() -> None:
    models = _models()
    summary = summarise_cells(models[models["seed"] == 2])
    assert summary["robust_auroc_lo"].isna().all() and summary["robust_auroc_hi"].isna().all()
    assert set(summary["note"]) == {ONE_SEED_NOTE}
    assert summary["robust_auroc"].notna().all()


def test_a_metric_missing_for_a_seed_is_noted() -> None:
    models = _models()
    models.loc[(models["supervision"] == "erm") & (models["seed"] == 0), "robust_auroc"] = np.nan
    summary = summarise_cells(models).set_index("supervision")
    assert summary.loc["erm", "robust_auroc"] == pytest.approx(np.mean(VALUES[("erm", 0.0)][1:]))
    assert "robust_auroc: 3 of 4 seeds" in summary.loc["erm", "note"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_is_left_out_and_noted_like_nan(bad: float) -> None:
    """t_interval leaves out NaN and +-inf alike; the note counted NaN only, so an infinite
    value vanished from the mean and interval without a trace."""
    models = _models()
    erm0 = (models["supervision"] == "erm") & (models["seed"] == 0)
    models.loc[erm0, "robust_auroc"] = bad
    models.loc[erm0, "artefact_reliance"] = np.nan
    row = summarise_cells(models).set_index("supervision").loc["erm"]
    rest = VALUES[("erm", 0.0)][1:]
    assert row["robust_auroc"] == pytest.approx(np.mean(rest))
    assert row["robust_auroc_hi"] == pytest.approx(
        stats.t.interval(0.95, 2, loc=np.mean(rest), scale=stats.sem(rest))[1]
    )
    assert row["note"] == (
        "undefined for some seeds: robust_auroc: 3 of 4 seeds, artefact_reliance: 3 of 4 seeds"
    )


def test_paired_differences_match_ttest_rel() -> None:
    table = paired_differences(_models())
    assert set(table["pair"]) == {"seg - erm", "seg - box", "box - erm"}
    # seg pairs with erm at both fractions, with box only at the same fraction
    assert sorted(table.loc[table["pair"] == "seg - erm", "location_fraction"]) == [0.1, 1.0]
    assert table.loc[table["pair"] == "seg - box", "location_fraction"].tolist() == [1.0]
    for (a, fa), (b, fb) in [
        (("seg", 1.0), ("erm", 0.0)),
        (("seg", 0.1), ("erm", 0.0)),
        (("seg", 1.0), ("box", 1.0)),
        (("box", 1.0), ("erm", 0.0)),
    ]:
        row = table[
            (table["pair"] == f"{a} - {b}") & (table["location_fraction"] == max(fa, fb))
        ].iloc[0]
        ref = stats.ttest_rel(VALUES[(a, fa)], VALUES[(b, fb)])
        ci = ref.confidence_interval(0.95)
        diff = np.subtract(VALUES[(a, fa)], VALUES[(b, fb)]).mean()
        assert row["robust_auroc"] == pytest.approx(diff)
        assert (row["robust_auroc_lo"], row["robust_auroc_hi"]) == pytest.approx((ci.low, ci.high))
        assert row["robust_auroc_p"] == pytest.approx(ref.pvalue)
        assert row["n_pairs"] == 4 and row["ci_covers"] == "seeds (paired)"


def test_pairs_only_share_seeds_present_on_both_sides() -> None:
    models = _models()
    models = models[~((models["supervision"] == "erm") & (models["seed"] == 3))]
    table = paired_differences(models, [("box", "erm")])
    assert table["n_pairs"].tolist() == [3] and table["seeds"].tolist() == ["0,1,2"]
    ref = stats.ttest_rel(VALUES[("box", 1.0)][:3], VALUES[("erm", 0.0)][:3])
    assert table["robust_auroc_p"].iloc[0] == pytest.approx(ref.pvalue)


def test_repeated_cell_and_seed_is_an_error() -> None:
    models = _models()
    with pytest.raises(ContractError, match="repeat"):
        summarise_cells(pd.concat([models, models.iloc[:1]]))
    with pytest.raises(ContractError, match="seed"):
        summarise_cells(models.drop(columns="seed"))


def test_a_pair_of_one_supervision_is_refused() -> None:
    with pytest.raises(ParameterError) as err:
        paired_differences(_models(), [("seg", "erm"), ("seg", "seg")])
    assert err.value.key == "pairs[1]"
    assert "two different supervisions, got seg - seg" in err.value.problem


@pytest.mark.parametrize(
    ("pairs", "key", "words"),
    [
        ([("seg", "ERM")], "pairs[0]", "unknown supervision(s) ['ERM']; valid names are"),
        ([("seg", "erm", "box")], "pairs[0]", "must be a pair [a, b] of two supervisions"),
        (["seg-erm"], "pairs[0]", "got 'seg-erm'"),
        ([("seg", None)], "pairs[0]", "unknown supervision(s) [None]"),
        (None, "pairs", "must be a list"),
    ],
)
def test_a_malformed_pair_or_unknown_supervision_is_refused(
    pairs: object, key: str, words: str
) -> None:
    with pytest.raises(ParameterError) as err:
        paired_differences(_models(), pairs)  # type: ignore[arg-type]
    assert err.value.key == key and words in err.value.problem


def test_check_pairs_names_the_parameter() -> None:
    assert check_pairs([["seg", "erm"], ("box", "erm")], "sweep.summary.pairs") == [
        ("seg", "erm"),
        ("box", "erm"),
    ]
    with pytest.raises(ParameterError) as err:
        check_pairs([["seg", "erm"], ["sg", "erm"]], "sweep.summary.pairs")
    assert err.value.key == "sweep.summary.pairs[1]"
    assert "valid names are ['erm', 'box', 'seg']" in err.value.problem


def test_a_pair_of_a_supervision_not_trained_is_skipped_with_an_info_line(caplog) -> None:
    """The shipped pairs name box, which the base grid does not train: not a warning."""
    models = _models()
    with caplog.at_level(logging.INFO, logger="cxr_spurious.sweep.summary"):
        paired = paired_differences(models[models["supervision"] != "box"], [("box", "erm")])
    assert paired.empty
    [record] = [r for r in caplog.records if "box - erm" in r.getMessage()]
    assert record.levelno == logging.INFO
    assert "pair box - erm skipped: no model of ['box'] in this run" in record.getMessage()


def test_a_pair_of_trained_supervisions_without_shared_cells_is_a_warning(caplog) -> None:
    models = _models()
    box = models[models["supervision"] == "box"].assign(artefact="elsewhere")
    others = models[models["supervision"] != "box"]
    with caplog.at_level(logging.INFO, logger="cxr_spurious.sweep.summary"):
        paired = paired_differences(pd.concat([others, box]), [("box", "erm")])
    assert paired.empty
    [record] = [r for r in caplog.records if "box - erm" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert "share no artefact, strength and seed" in record.getMessage()


def test_a_metric_undefined_for_some_pairs_is_counted_and_noted() -> None:
    """A NaN seed drops out of that metric's pairs only: `<m>_n` and the note say how many
    pairs are behind the difference, and the numbers are scipy's on the defined pairs."""
    models = _models()
    gone = (models["supervision"] == "erm") & (models["seed"] == 1)
    models.loc[gone, "robust_auroc"] = np.nan
    row = paired_differences(models, [("seg", "erm")])
    row = row[row["location_fraction"] == 1.0].iloc[0]
    kept = [0, 2, 3]
    seg = np.asarray(VALUES[("seg", 1.0)])[kept]
    erm = np.asarray(VALUES[("erm", 0.0)])[kept]
    ref = stats.ttest_rel(seg, erm)
    ci = ref.confidence_interval(0.95)
    assert row["robust_auroc"] == pytest.approx(np.mean(seg - erm))
    assert (row["robust_auroc_lo"], row["robust_auroc_hi"]) == pytest.approx((ci.low, ci.high))
    assert row["robust_auroc_p"] == pytest.approx(ref.pvalue)
    assert row["n_pairs"] == 4 and row["seeds"] == "0,1,2,3"
    assert row["robust_auroc_n"] == 3 and row["artefact_reliance_n"] == 4
    assert row["note"] == "undefined for some pairs: robust_auroc: 3 of 4 pairs"
    complete = paired_differences(_models(), [("seg", "erm")])
    assert (complete["robust_auroc_n"] == 4).all() and (complete["note"] == "").all()


def test_cell_intervals_are_cut_to_the_metric_range() -> None:
    """A robust AUROC near 1 on 4 seeds with one low seed: scipy's interval passes 1, the
    summary's stops there; a paired difference stays within [-1, 1]; a value outside an
    AUROC's range is refused naming the table and metric."""
    models = _models()
    seg = models["supervision"] == "seg"
    models.loc[seg, "robust_auroc"] = models.loc[seg, "seed"].map({0: 1.0, 1: 0.99, 2: 0.7, 3: 1.0})
    values = [1.0, 0.99, 0.7, 1.0]
    ref_lo, ref_hi = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert ref_hi > 1
    summary = summarise_cells(models)
    row = summary[summary["supervision"] == "seg"].iloc[0]
    assert row["robust_auroc_hi"] == 1.0 and row["robust_auroc_lo"] == pytest.approx(ref_lo)
    paired = paired_differences(models)
    assert (paired["robust_auroc_hi"] <= 1.0).all() and (paired["robust_auroc_lo"] >= -1.0).all()
    models.loc[seg & (models["seed"] == 0), "robust_auroc"] = 1.5
    with pytest.raises(ContractError, match="sweep_models: robust_auroc: value 1.5 lies outside"):
        summarise_cells(models)
