"""The sweep's collector nodes check their parameters before using them, naming the key.

Each node used to convert its settings with ``int()`` / ``float()`` first: ``n_boot: 2.7``
ran 2 replicates, ``True`` counted as 1, a NaN onset threshold rewrote the findings table,
``'abc'`` gave a bare ``ValueError``; misspelt supervision pairs and study cells silently
dropped their sections.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.sweep.sweep_rows import cell_rows

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.sweep import nodes
from cxr_spurious.sweep.detection import shortcut_detection
from cxr_spurious.sweep.grid import Cell

DETECTION = {"reliance_threshold": 0.1, "flag_k": 2.0, "n_boot": 60, "seed": 0, "ci_level": 0.95}
SUMMARY = {"ci_level": 0.95, "pairs": [["seg", "erm"]]}
TABLES = {"onset_threshold": 0.05, "study_cell": None}
GRID = {
    "artefacts": ["tube_random", "marker_port"],
    "strengths": {"none": [0.5, 0.5], "medium": [0.7, 0.3], "strong": [0.9, 0.1]},
    "supervisions": ["erm", "seg"],
    "seeds": [0, 1, 2],
}
METRICS = {"n_boot": 10, "ci_level": 0.95, "max_dropped_share": 0.05, "seed": 0}
CELL = Cell("tube_random", "strong", 0.9, 0.1, "erm", 0.0, 0)
PLAN = {"cell": CELL.as_dict(), "config_hash": "h"}


def _models() -> pd.DataFrame:
    """tube_random and marker_port at none / strong (no medium), erm and seg, 3 seeds: erm
    relies on the artefact at strong, Grad-CAM's mass follows reliance."""
    rng = np.random.default_rng(0)

    def metrics(confounding: float, sup: str, seed: int, _artefact: str) -> dict[str, float]:
        reliance = confounding * 0.5 * (sup == "erm") + rng.normal(0, 0.01)
        return {
            "artefact_reliance": reliance,
            "robust_auroc": 0.9 - reliance,
            "auroc": 0.85 + rng.normal(0, 0.01),
            "artefact_area": 0.03,
            "gradcam_artefact_mass": 0.03 + reliance * 0.5 + rng.normal(0, 0.01),
        }

    strengths = {"none": (0.5, 0.5), "strong": (0.9, 0.1)}
    supervisions = (("erm", 0.0), ("seg", 1.0))
    artefacts = ("tube_random", "marker_port")
    return pd.DataFrame(cell_rows(strengths, supervisions, metrics, artefacts))


def _error(call: Any) -> ParameterError:
    with pytest.raises(ParameterError) as info:
        call()
    return info.value


BAD_DETECTION = [
    ("n_boot", 2.7),
    ("n_boot", True),
    ("n_boot", 0),
    ("n_boot", "200"),
    ("reliance_threshold", True),
    ("reliance_threshold", "abc"),
    ("reliance_threshold", None),
    ("reliance_threshold", float("nan")),
    ("flag_k", "2x"),
    ("flag_k", 0.0),
    ("flag_k", float("inf")),
    ("ci_level", "0.95"),
    ("ci_level", 1.0),
    ("ci_level", True),
    ("seed", 1.5),
]


@pytest.mark.parametrize(("name", "value"), BAD_DETECTION, ids=repr)
def test_detect_shortcuts_refuses_a_bad_setting_naming_its_key(name: str, value: object) -> None:
    err = _error(lambda: nodes.detect_shortcuts(_models(), {**DETECTION, name: value}))
    assert err.key == f"sweep.detection.{name}"
    assert f"got {value!r}" in err.problem


@pytest.mark.parametrize("name", sorted(DETECTION))
def test_a_missing_detection_setting_is_named(name: str) -> None:
    settings = {k: v for k, v in DETECTION.items() if k != name}
    err = _error(lambda: nodes.detect_shortcuts(_models(), settings))
    assert (err.key, err.problem) == (f"sweep.detection.{name}", "is missing")


def test_detect_shortcuts_passes_its_checked_settings_and_seed_through() -> None:
    models = _models()
    node = nodes.detect_shortcuts(models, {**DETECTION, "n_boot": 60.0, "seed": 3})
    library = shortcut_detection(models, n_boot=60, seed=3)
    pd.testing.assert_frame_equal(node, library)
    # the seed reaches the bootstrap: another seed, another CI
    other = nodes.detect_shortcuts(models, {**DETECTION, "seed": 4})
    cols = ["spearman_lo", "spearman_hi"]
    assert not np.allclose(node[cols].to_numpy(float), other[cols].to_numpy(float))
    pd.testing.assert_frame_equal(other, shortcut_detection(models, n_boot=60, seed=4))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("n_boot", 2.7),
        ("n_boot", True),
        ("ci_level", "0.95"),
        ("max_dropped_share", 1.5),
        ("max_dropped_share", None),
        ("seed", -1),
    ],  # fmt: skip
    ids=repr,
)
def test_summarise_cell_refuses_a_bad_metrics_setting(name: str, value: object) -> None:
    err = _error(
        lambda: nodes.summarise_cell(
            pd.DataFrame(), None, pd.DataFrame(), PLAN, "Pneumothorax", {**METRICS, name: value}
        )
    )
    assert err.key == f"sweep.metrics.{name}"
    missing = {k: v for k, v in METRICS.items() if k != name}
    err = _error(
        lambda: nodes.summarise_cell(
            pd.DataFrame(), None, pd.DataFrame(), PLAN, "Pneumothorax", missing
        )
    )
    assert (err.key, err.problem) == (f"sweep.metrics.{name}", "is missing")


def test_summarise_cell_hands_the_checked_settings_to_model_metrics(monkeypatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(nodes, "render_table", lambda *args, **kwargs: "table")

    def metrics(table: Any, saliency: Any, **kwargs: Any) -> dict[str, float]:
        seen.update(kwargs)
        return {"auroc": 0.5}

    monkeypatch.setattr(nodes, "model_metrics", metrics)
    manifest = pd.DataFrame({"image_id": ["a"], "artefact": [1]})
    settings = {"n_boot": 1e3, "ci_level": 0.9, "max_dropped_share": 0, "seed": 2.0}
    row = nodes.summarise_cell(pd.DataFrame(), None, manifest, PLAN, "Pneumothorax", settings)
    assert row["auroc"] == 0.5 and row["config_hash"] == "h"
    assert (seen["n_boot"], seen["seed"], seen["level"], seen["max_dropped_share"]) == (
        1000,
        2,
        0.9,
        0.0,
    )
    assert type(seen["n_boot"]) is int and type(seen["seed"]) is int


@pytest.mark.parametrize("value", ["abc", True, float("nan"), 0.0, 1.0, None])
def test_the_summary_ci_level_is_checked_by_every_node_that_reads_it(value: object) -> None:
    summary, paired = nodes.summarise_sweep(_models(), SUMMARY)
    bad = {**SUMMARY, "ci_level": value}
    calls = [
        lambda: nodes.summarise_sweep(_models(), bad),
        lambda: nodes.plot_sweep_strength(summary, bad),
        lambda: nodes.write_sweep_tables(
            summary, paired, pd.DataFrame(), TABLES, bad, DETECTION, GRID
        ),
    ]
    for call in calls:
        assert _error(call).key == "sweep.summary.ci_level"
    detection = pd.DataFrame({"method": ["m"], "artefact": ["tube_random"], "detection_auroc": [1]})
    bad_detection = {**DETECTION, "ci_level": value}
    assert (
        _error(lambda: nodes.plot_sweep_detection(detection, bad_detection)).key
        == "sweep.detection.ci_level"
    )
    assert (
        _error(
            lambda: nodes.write_sweep_tables(
                summary, paired, pd.DataFrame(), TABLES, SUMMARY, bad_detection, GRID
            )
        ).key
        == "sweep.detection.ci_level"
    )


@pytest.mark.parametrize(
    ("pairs", "key", "words"),
    [
        ([["seg", "ERM"]], "sweep.summary.pairs[0]", "unknown supervision(s) ['ERM']"),
        (
            [["seg", "erm"], ["sg", "erm"]],
            "sweep.summary.pairs[1]",
            "unknown supervision(s) ['sg']",
        ),
        ([["seg", "erm", "box"]], "sweep.summary.pairs[0]", "must be a pair [a, b]"),
        (["seg-erm"], "sweep.summary.pairs[0]", "must be a pair [a, b]"),
        ([["seg", "seg"]], "sweep.summary.pairs[0]", "two different supervisions"),
        ("seg - erm", "sweep.summary.pairs", "must be a list"),
    ],
)
def test_summary_pairs_are_checked(pairs: object, key: str, words: str) -> None:
    err = _error(lambda: nodes.summarise_sweep(_models(), {**SUMMARY, "pairs": pairs}))
    assert err.key == key and words in err.problem
    if "unknown" in words:
        assert "valid names are ['erm', 'box', 'seg']" in err.problem


def test_a_valid_pair_absent_from_the_grid_is_skipped(caplog) -> None:
    with caplog.at_level(logging.INFO):
        _, paired = nodes.summarise_sweep(
            _models(), {**SUMMARY, "pairs": [["seg", "erm"], ["box", "erm"]]}
        )
    assert set(paired["pair"]) == {"seg - erm"} and len(paired) == 4  # 2 artefacts x 2 strengths
    assert "pair box - erm skipped: no model of ['box'] in this run" in caplog.text


@pytest.mark.parametrize("value", [float("nan"), True, "abc", None, float("inf")])
def test_the_onset_threshold_is_checked(value: object) -> None:
    summary, paired = nodes.summarise_sweep(_models(), SUMMARY)
    tables = {**TABLES, "onset_threshold": value}
    err = _error(
        lambda: nodes.write_sweep_tables(
            summary, paired, pd.DataFrame(), tables, SUMMARY, DETECTION, GRID
        )
    )
    assert err.key == "sweep.tables.onset_threshold"
    err = _error(
        lambda: nodes.write_sweep_tables(
            summary, paired, pd.DataFrame(), {"study_cell": None}, SUMMARY, DETECTION, GRID
        )
    )
    assert (err.key, err.problem) == ("sweep.tables.onset_threshold", "is missing")


def _tables(study_cell: object, grid: dict[str, Any] | None = GRID) -> str:
    summary, paired = nodes.summarise_sweep(_models(), SUMMARY)
    return nodes.write_sweep_tables(
        summary,
        paired,
        pd.DataFrame(),
        {**TABLES, "study_cell": study_cell},
        SUMMARY,
        DETECTION,
        grid,
    )


def test_the_onset_threshold_reaches_the_table() -> None:
    summary, paired = nodes.summarise_sweep(_models(), SUMMARY)
    for threshold, onset in ((0.05, "strong (0.9 / 0.1)"), (0.5, "none of the grid's strengths")):
        text = nodes.write_sweep_tables(
            summary,
            paired,
            pd.DataFrame(),
            {**TABLES, "onset_threshold": threshold},
            SUMMARY,
            DETECTION,
            GRID,
        )
        section = text.split("## Where `erm` starts to rely on the artefact")[1]
        assert f"mean reliance >= {threshold:g}" in section
        assert f"| tube, random side | {onset} |" in section


@pytest.mark.parametrize(
    ("cell", "key", "words"),
    [
        (
            {"artefact": "tube_random", "strength": "Strong"},
            "sweep.tables.study_cell.strength",
            "unknown strength 'Strong'; valid names are the grid's strength labels "
            "(sweep.grid.strengths): ['none', 'medium', 'strong']",
        ),
        (
            {"artefact": "tube_randm", "strength": "strong"},
            "sweep.tables.study_cell.artefact",
            "unknown artefact kind 'tube_randm'; valid names are ['faint_texture', "
            "'marker_port', 'tube_lesion', 'tube_random']",
        ),
        (
            {"artefact": "tube_random"},
            "sweep.tables.study_cell",
            "mapping with the keys ['artefact', 'strength'], got ['artefact']",
        ),
        (
            {"artefact": "tube_random", "strength": "strong", "seed": 0},
            "sweep.tables.study_cell",
            "got ['artefact', 'seed', 'strength']",
        ),
        ("tube_random/strong", "sweep.tables.study_cell", "got 'tube_random/strong'"),
    ],
)
def test_a_misspelt_study_cell_is_refused(cell: object, key: str, words: str) -> None:
    err = _error(lambda: _tables(cell))
    assert err.key == key and words in err.problem


def test_without_the_grid_the_study_strength_is_checked_against_the_summary() -> None:
    err = _error(lambda: _tables({"artefact": "tube_random", "strength": "Strong"}, grid=None))
    assert err.key == "sweep.tables.study_cell.strength"
    assert "the strengths of sweep_summary: ['none', 'strong']" in err.problem


def test_a_study_cell_this_run_lacks_is_a_warning(caplog) -> None:
    text = _tables({"artefact": "tube_random", "strength": "strong"})
    assert "## The study's setting: tube, random side, strong" in text
    with caplog.at_level(logging.WARNING):
        text = _tables({"artefact": "tube_random", "strength": "medium"})  # in the grid, untrained
    assert "## The study's setting" not in text
    assert "tube_random / medium is not in this run's results" in caplog.text
    assert "no model of the cell was trained" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        text = _tables({"artefact": "faint_texture", "strength": "strong"})  # not in the grid
    assert "## The study's setting" not in text
    assert "the grid's artefacts ['marker_port', 'tube_random'] leave it out" in caplog.text
