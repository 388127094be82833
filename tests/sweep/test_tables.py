"""The sweep's Markdown tables: every number traced to scipy on the same synthetic sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from tests.sweep.sweep_rows import cell_rows

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.sweep.detection import shortcut_detection
from cxr_spurious.sweep.summary import paired_differences, summarise_cells
from cxr_spurious.sweep.tables import (
    by_supervision,
    cell_column,
    detection_by_artefact,
    detection_table,
    markdown_table,
    paired_table,
    reliance_onset,
    render_sweep_tables,
)

STRENGTHS = {"none": (0.5, 0.5), "medium": (0.7, 0.3), "strong": (0.9, 0.1)}
SUPERVISIONS = [("erm", 0.0), ("seg", 1.0), ("seg", 0.1)]
SEEDS = range(4)


def _models() -> pd.DataFrame:
    """tube_random: erm relies from medium on; faint_texture: nobody relies at any strength."""
    rng = np.random.default_rng(7)

    def metrics(confounding: float, sup: str, seed: int, artefact: str) -> dict[str, float]:
        learns = artefact == "tube_random" and sup == "erm"
        reliance = confounding * 0.5 * learns + rng.normal(0, 0.01)
        return {
            "robust_auroc": 0.95 - reliance * 1.5 + rng.normal(0, 0.02),
            "artefact_reliance": reliance,
            "lesion_reliance": 0.5 - reliance + rng.normal(0, 0.02),
            "artefact_area": 0.03,
            "gradcam_artefact_mass": 0.03 + reliance * 0.5 + rng.normal(0, 0.01),
        }

    artefacts = ("tube_random", "faint_texture")
    rows = cell_rows(STRENGTHS, tuple(SUPERVISIONS), metrics, artefacts, seeds=len(SEEDS))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def sweep() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    models = _models()
    metrics = ["robust_auroc", "artefact_reliance", "lesion_reliance", "gradcam_artefact_mass"]
    summary = summarise_cells(models, metrics=metrics)
    paired = paired_differences(models, [("seg", "erm")], metrics=metrics)
    detection = shortcut_detection(models, n_boot=50, seed=0)
    return models, summary, paired, detection


def _t(values: np.ndarray) -> str:
    mean = values.mean()
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def test_markdown_table_shape_and_escaping() -> None:
    text = markdown_table(pd.DataFrame({"a|b": ["x|y", None], "c": [1.5, float("nan")]}))
    assert text.splitlines() == [
        "| a\\|b | c |",
        "|---|---|",
        "| x\\|y | 1.5 |",
        "| n/a | n/a |",
    ]


def test_by_supervision_cells_match_scipy(sweep) -> None:
    models, summary, _, _ = sweep
    table = by_supervision(summary, "robust_auroc")
    assert list(table.columns) == [
        "artefact",
        "strength (P(a | PTX) / P(a | no PTX))",
        "`erm`",
        "`seg`",
        "`seg (10% location labels)`",
    ]
    assert len(table) == 2 * 3  # artefact x strength, weakest first within an artefact
    row = table[(table["artefact"] == "tube, random side")].iloc[2]
    assert row.iloc[1] == "strong (0.9 / 0.1)"
    pick = (
        (models["artefact"] == "tube_random")
        & (models["strength"] == "strong")
        & (models["supervision"] == "erm")
    )
    assert row["`erm`"] == _t(models.loc[pick, "robust_auroc"].to_numpy())


def test_paired_table_matches_scipy(sweep) -> None:
    models, _, paired, _ = sweep
    table = paired_table(paired, "artefact_reliance")
    assert list(table.columns) == [
        "artefact",
        "strength",
        "`seg - erm`",
        "`seg - erm (10% location labels)`",
    ]

    def side(sup: str, frac: float) -> np.ndarray:
        pick = (
            (models["artefact"] == "tube_random")
            & (models["strength"] == "medium")
            & (models["supervision"] == sup)
            & np.isclose(models["location_fraction"], frac)
        )
        return models[pick].sort_values("seed")["artefact_reliance"].to_numpy()

    diff = side("seg", 1.0) - side("erm", 0.0)
    p = stats.ttest_rel(side("seg", 1.0), side("erm", 0.0)).pvalue
    cell = table[
        (table["artefact"] == "tube, random side") & table["strength"].str.startswith("medium")
    ]
    expected = _t(diff) + ", p " + ("< 0.001" if p < 0.001 else f"= {p:.3f}")
    assert cell["`seg - erm`"].iloc[0] == expected


def test_reliance_onset_finds_the_weakest_relied_strength(sweep) -> None:
    _, summary, _, _ = sweep
    onset = reliance_onset(summary, supervision="erm", threshold=0.05)
    by_artefact = onset.set_index("artefact")["`erm` relies from"]
    # erm's reliance: 0 at none, 0.2 at medium, 0.4 at strong (seed noise 0.01)
    assert by_artefact["tube, random side"] == "medium (0.7 / 0.3)"
    assert by_artefact["faint texture"] == "none of the grid's strengths"
    stricter = reliance_onset(summary, supervision="erm", threshold=0.3)
    assert stricter.set_index("artefact").loc["tube, random side"].iloc[0] == "strong (0.9 / 0.1)"
    with pytest.raises(ContractError, match="no cell of supervision 'box'"):
        reliance_onset(summary, supervision="box")


def test_detection_tables_report_counts_and_undefined_reasons(sweep) -> None:
    models, _, _, detection = sweep
    table = detection_table(detection)
    row = table.iloc[0]
    assert row["method"] == "Grad-CAM"
    reliant = int((models["artefact_reliance"] >= 0.1).sum())
    assert row["models (reliant)"] == f"{len(models)} ({reliant})"
    every = detection[(detection["artefact"] == "all")].iloc[0]
    assert row["false flags (unconfounded models)"].startswith(
        f"{int(every['n_flagged'])}/{int(every['n_unconfounded'])} = "
    )
    per_artefact = detection_by_artefact(detection).set_index("method")
    # no faint-texture model relies on it: the AUROC is undefined and says why
    assert per_artefact.loc["Grad-CAM", "faint texture"].startswith("n/a (no model of")
    assert per_artefact.loc["Grad-CAM", "tube, random side"][0].isdigit()
    assert per_artefact.loc["Grad-CAM", "all artefacts"] == "1.00 [1.00, 1.00]"  # fixed digits


def test_cell_column_and_the_whole_document(sweep) -> None:
    models, summary, paired, detection = sweep
    column = cell_column(
        summary, artefact="tube_random", strength="strong", metrics=["artefact_reliance"]
    )
    assert list(column["metric"]) == ["artefact_reliance", "seeds"]
    assert column.loc[1, "`erm`"] == str(len(SEEDS))
    with pytest.raises(ContractError, match="no cell marker_port / strong"):
        cell_column(summary, artefact="marker_port", strength="strong", metrics=["auroc"])
    text = render_sweep_tables(summary, paired, detection, study_cell=("tube_random", "strong"))
    assert "## The study's setting: tube, random side, strong" in text
    assert "flagged: the method's artefact mass share > 2 x" in text
    assert "marker" not in render_sweep_tables(
        summary, paired, detection, study_cell=("marker_port", "strong")
    )  # a cell the sweep does not have: no section
    assert text.startswith("# Shortcut sweep: findings")
    assert "18 cells, 4 seed(s) each" in text
    for heading in (
        "## robust AUROC",
        "## Where `erm` starts to rely on the artefact",
        "## Paired differences: reliance",
        "## Does saliency reveal the reliance? (all artefacts)",
        "## Detection AUROC per artefact",
    ):
        assert heading in text
    with pytest.raises(ContractError, match="sweep_summary: missing column"):
        by_supervision(summary.drop(columns=["robust_auroc_lo"]), "robust_auroc")


def _t_at(values: np.ndarray, level: float) -> str:
    mean = values.mean()
    lo, hi = stats.t.interval(level, len(values) - 1, loc=mean, scale=stats.sem(values))
    return f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def test_the_document_names_the_configured_levels(sweep) -> None:
    models, _, _, detection = sweep
    metrics = ["robust_auroc", "artefact_reliance", "lesion_reliance"]
    summary = summarise_cells(models, metrics=metrics, level=0.8)
    paired = paired_differences(models, [("seg", "erm")], metrics=metrics, level=0.8)
    text = render_sweep_tables(summary, paired, detection, level=0.8, detection_level=0.9)
    assert "[80 % t interval across seeds" in text and "paired 80 % t interval" in text
    assert "its 80 % interval across seeds above 0" in text
    assert "90 % bootstrap CI over models; false flags: 90 % Wilson interval" in text
    assert "95 %" not in text
    # and the numbers are the 80 % intervals the text says they are
    pick = (
        (models["artefact"] == "tube_random")
        & (models["strength"] == "strong")
        & (models["supervision"] == "erm")
    )
    values = models.loc[pick, "robust_auroc"].to_numpy()
    assert f"| {_t_at(values, 0.8)} |" in text and _t_at(values, 0.8) != _t_at(values, 0.95)
    assert "[95 % t interval across seeds" in render_sweep_tables(summary, paired, detection)


def test_paired_table_shows_how_many_pairs_define_a_metric() -> None:
    models = _models()
    gone = (models["supervision"] == "erm") & (models["seed"] == 2)
    models.loc[gone, "artefact_reliance"] = np.nan
    paired = paired_differences(models, [("seg", "erm")], metrics=["artefact_reliance"])
    table = paired_table(paired, "artefact_reliance")

    def side(sup: str, frac: float) -> np.ndarray:
        pick = (
            (models["artefact"] == "tube_random")
            & (models["strength"] == "medium")
            & (models["supervision"] == sup)
            & np.isclose(models["location_fraction"], frac)
        )
        return models[pick].sort_values("seed")["artefact_reliance"].to_numpy()

    seg, erm = side("seg", 1.0), side("erm", 0.0)
    keep = np.isfinite(seg - erm)
    p = stats.ttest_rel(seg[keep], erm[keep]).pvalue
    cell = table[
        (table["artefact"] == "tube, random side") & table["strength"].str.startswith("medium")
    ]["`seg - erm`"].iloc[0]
    expected = _t(seg[keep] - erm[keep]) + ", p " + ("< 0.001" if p < 0.001 else f"= {p:.3f}")
    assert cell == expected + f" (n = {keep.sum()} of {len(SEEDS)} pairs)"
    complete = paired_table(
        paired_differences(_models(), [("seg", "erm")], metrics=["artefact_reliance"]),
        "artefact_reliance",
    )
    assert not complete.apply(lambda c: c.astype(str).str.contains(r"\(n = ")).any().any()


def _near_fractions() -> pd.DataFrame:
    """seg at 1.5 % and at 2 % location labels: the first relies on the tube, the second not."""
    models = _models()
    models = models[models["location_fraction"] != 0.1]
    low = models[models["supervision"] == "seg"].assign(location_fraction=0.015)
    low = low.assign(artefact_reliance=low["artefact_reliance"] + 0.3)
    two = models[models["supervision"] == "seg"].assign(location_fraction=0.02)
    return pd.concat([models, low, two], ignore_index=True)


def test_nearby_location_fractions_keep_their_own_columns_and_onsets() -> None:
    models = _near_fractions()
    metrics = ["robust_auroc", "artefact_reliance", "lesion_reliance"]
    summary = summarise_cells(models, metrics=metrics)
    table = by_supervision(summary, "artefact_reliance")
    assert list(table.columns)[2:] == [
        "`erm`",
        "`seg`",
        "`seg (2% location labels)`",
        "`seg (1.5% location labels)`",
    ]
    strong = table.iloc[2]
    assert strong.iloc[1] == "strong (0.9 / 0.1)"
    for frac, column in (
        (0.015, "`seg (1.5% location labels)`"),
        (0.02, "`seg (2% location labels)`"),
    ):
        pick = (
            (models["artefact"] == "faint_texture")
            & (models["strength"] == "strong")
            & (models["supervision"] == "seg")
            & (models["location_fraction"] == frac)
        )
        assert strong[column] == _t(models.loc[pick, "artefact_reliance"].to_numpy())
    paired = paired_differences(models, [("seg", "erm")], metrics=metrics)
    pairs = paired_table(paired, "artefact_reliance")
    assert list(pairs.columns)[2:] == [
        "`seg - erm`",
        "`seg - erm (2% location labels)`",
        "`seg - erm (1.5% location labels)`",
    ]
    text = render_sweep_tables(summary, paired, pd.DataFrame())
    onsets = {
        label: text.split(f"## Where `{label}` starts to rely on the artefact")[1].split("##")[0]
        for label in ("seg (1.5% location labels)", "seg (2% location labels)")
    }
    # 1.5 %: +0.3 reliance on every artefact from the weakest strength; 2 %: none
    assert "| faint texture | none (0.5 / 0.5) |" in onsets["seg (1.5% location labels)"]
    assert "| faint texture | none of the grid's strengths |" in onsets["seg (2% location labels)"]
    with pytest.raises(ContractError, match="location fractions"):
        reliance_onset(summary, supervision="seg")
    clash = summary.assign(
        location_fraction=summary["location_fraction"].replace(
            {0.015: 0.0123456781, 0.02: 0.0123456782}
        )
    )
    with pytest.raises(ContractError, match="share the label"):
        by_supervision(clash, "artefact_reliance")
    clash_pairs = paired.assign(
        location_fraction=paired["location_fraction"].replace(
            {0.015: 0.0123456781, 0.02: 0.0123456782}
        )
    )
    with pytest.raises(ContractError, match="share the column"):
        paired_table(clash_pairs, "artefact_reliance")


def test_one_seed_onset_is_undetermined_not_none() -> None:
    models = _models()
    one = models[models["seed"] == 0]
    summary = summarise_cells(one, metrics=["artefact_reliance"])
    onset = reliance_onset(summary, supervision="erm", threshold=0.05)
    by_artefact = onset.set_index("artefact")["`erm` relies from"]
    # tube_random, erm, seed 0: reliance ~0.2 at medium and ~0.4 at strong, no interval
    reliance = one[(one["artefact"] == "tube_random") & (one["supervision"] == "erm")]
    assert (reliance.set_index("strength")["artefact_reliance"][["medium", "strong"]] > 0.1).all()
    assert by_artefact["tube, random side"] == (
        "undetermined (one seed: no across-seed interval) from medium (0.7 / 0.3)"
    )
    # below the threshold at every strength: not relying, interval or not
    assert by_artefact["faint texture"] == "none of the grid's strengths"
    # a strength with an interval above 0 after an undetermined one: both said
    mixed = summarise_cells(
        models[(models["seed"] == 0) | (models["strength"] == "strong")],
        metrics=["artefact_reliance"],
    )
    mixed_onset = reliance_onset(mixed, supervision="erm", threshold=0.05)
    assert mixed_onset.set_index("artefact").loc["tube, random side"].iloc[0] == (
        "undetermined (one seed: no across-seed interval) from medium (0.7 / 0.3); "
        "relies from strong (0.9 / 0.1)"
    )


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "0.05", None])
def test_a_non_finite_onset_threshold_is_refused(sweep, bad: object) -> None:
    """A NaN threshold is never reached: every onset read "none of the grid's strengths"."""
    _, summary, paired, detection = sweep
    with pytest.raises(ParameterError) as err:
        reliance_onset(summary, supervision="erm", threshold=bad)  # type: ignore[arg-type]
    assert err.value.key == "threshold"
    with pytest.raises(ParameterError) as err:
        render_sweep_tables(summary, paired, detection, onset_threshold=bad)  # type: ignore[arg-type]
    assert err.value.key == "onset_threshold"
    onset = reliance_onset(summary, supervision="erm", threshold=0.05).set_index("artefact")
    assert onset.loc["tube, random side", "`erm` relies from"] == "medium (0.7 / 0.3)"
