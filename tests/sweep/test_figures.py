"""Sweep figures: panels, one line per supervision with a CI band, readable labels."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from cxr_spurious.errors import ContractError
from cxr_spurious.sweep.figures import (
    CONFOUNDING_LABEL,
    plot_detection,
    plot_strength_curves,
    series_label,
)
from cxr_spurious.sweep.summary import summarise_cells

STRENGTHS = {"none": (0.5, 0.5), "medium": (0.7, 0.3), "strong": (0.9, 0.1)}
SERIES = (("erm", 0.0), ("seg", 1.0), ("seg", 0.1))


def _summary() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [
        {
            "artefact": art,
            "strength": st,
            "p_given_ptx": p1,
            "p_given_no_ptx": p0,
            "supervision": sup,
            "location_fraction": frac,
            "seed": seed,
            "robust_auroc": 0.8 - (p1 - p0) * 0.4 + rng.normal(0, 0.02),
            "artefact_reliance": (p1 - p0) * 0.3 + rng.normal(0, 0.02),
        }
        for art in ("tube_random", "faint_texture")
        for st, (p1, p0) in STRENGTHS.items()
        for sup, frac in SERIES
        for seed in range(3)
    ]
    return summarise_cells(pd.DataFrame(rows))


def _labelled_lines(ax) -> list:
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_strength_curves_one_panel_per_artefact_and_metric() -> None:
    summary = _summary()
    fig = plot_strength_curves(summary)
    axes = fig.get_axes()
    assert len(axes) == 2 * 2
    for ax in axes:
        lines = _labelled_lines(ax)
        assert len(lines) == len(SERIES)
        assert [len(line.get_xdata()) for line in lines] == [3, 3, 3]
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == len(SERIES)
    labels = {line.get_label() for line in _labelled_lines(axes[0])}
    assert labels == {"erm", "seg", "seg (10% location labels)"}
    assert [ax.get_title() for ax in axes[:2]] == ["faint texture", "tube random"]
    assert axes[0].get_ylabel().startswith("Robust AUROC")
    assert axes[2].get_ylabel().startswith("Artefact reliance")
    assert axes[3].get_xlabel() == CONFOUNDING_LABEL
    xs = sorted(_labelled_lines(axes[0])[0].get_xdata())
    assert xs == pytest.approx([0.0, 0.4, 0.8])
    fig.savefig(io.BytesIO(), format="png")


def _one_seed_at_medium() -> pd.DataFrame:
    """erm on tube_random: 3 seeds at none and strong, one at medium (no interval there)."""
    rng = np.random.default_rng(0)
    rows = [
        {
            "artefact": "tube_random",
            "strength": st,
            "p_given_ptx": p1,
            "p_given_no_ptx": p0,
            "supervision": "erm",
            "location_fraction": 0.0,
            "seed": seed,
            "robust_auroc": 0.8 - (p1 - p0) * 0.4 + rng.normal(0, 0.02),
            "artefact_reliance": (p1 - p0) * 0.3 + rng.normal(0, 0.02),
        }
        for st, (p1, p0) in STRENGTHS.items()
        for seed in range(1 if st == "medium" else 3)
    ]
    return summarise_cells(pd.DataFrame(rows))


def _band_spans(ax) -> list[tuple[float, float]]:
    """The x extent of every filled region of the panel's CI bands."""
    polys = [c for c in ax.collections if isinstance(c, PolyCollection)]
    return [
        (float(p.vertices[:, 0].min()), float(p.vertices[:, 0].max()))
        for c in polys
        for p in c.get_paths()
        if len(p.vertices)
    ]


def _error_bars(ax) -> dict[float, tuple[float, float]]:
    """Vertical segments drawn by ``draw_intervals``: x -> (lo, hi)."""
    out = {}
    for line in ax.get_lines():
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        if line.get_label().startswith("_") and len(x) == 2 and x[0] == x[1] and y[0] != y[1]:
            out[float(x[0])] = (float(y[0]), float(y[1]))
    return out


def test_the_band_breaks_where_a_strength_has_no_interval() -> None:
    """The band used to be drawn from none (0.0) straight to strong (0.8), showing an
    interval at medium (0.4), where the summary has none (one seed)."""
    summary = _one_seed_at_medium()
    assert summary.set_index("strength")["artefact_reliance_lo"].isna().tolist() == [
        True,
        False,
        False,
    ]  # medium, none, strong
    fig = plot_strength_curves(summary)
    by_strength = summary.set_index("strength")
    for ax, metric in zip(fig.get_axes(), ["robust_auroc", "artefact_reliance"]):
        for lo, hi in _band_spans(ax):
            assert not lo < 0.4 < hi and not lo <= 0.4 <= hi, (metric, lo, hi)
        # none and strong have an interval but no neighbour with one: error bars
        bars = _error_bars(ax)
        assert sorted(bars) == pytest.approx([0.0, 0.8])
        for x, strength in ((0.0, "none"), (0.8, "strong")):
            expected = by_strength.loc[strength, [f"{metric}_lo", f"{metric}_hi"]].tolist()
            assert bars[x] == pytest.approx(expected)
        assert len(_labelled_lines(ax)[0].get_xdata()) == 3  # the line still has every point
    fig.savefig(io.BytesIO(), format="png")


def test_the_band_covers_neighbouring_strengths_with_intervals() -> None:
    summary = _one_seed_at_medium()
    strong = summary[summary["strength"] == "strong"].assign(
        strength="stronger", p_given_ptx=1.0, p_given_no_ptx=0.0
    )
    fig = plot_strength_curves(pd.concat([summary, strong], ignore_index=True))
    ax = fig.get_axes()[1]
    spans = [s for s in _band_spans(ax) if s[1] > s[0]]
    assert spans == [pytest.approx((0.8, 1.0))]  # strong to stronger, not across medium
    assert sorted(_error_bars(ax)) == pytest.approx([0.0])  # none stands alone


def test_series_label() -> None:
    assert series_label("seg", 0.25) == "seg (25% location labels)"
    assert series_label("seg", 1.0) == "seg" and series_label("erm", 0.0) == "erm"
    # exact: nearby fractions of one grid keep apart (whole percents made both "2%")
    assert series_label("seg", 0.015) == "seg (1.5% location labels)"
    assert series_label("seg", 0.02) == "seg (2% location labels)"
    assert series_label("box", 0.125) == "box (12.5% location labels)"


def test_nearby_fractions_are_separate_lines_and_a_shared_label_is_an_error() -> None:
    summary = _summary()
    seg = summary[summary["supervision"] == "seg"]
    near = pd.concat(
        [
            summary[summary["supervision"] == "erm"],
            seg[seg["location_fraction"] == 1.0].assign(location_fraction=0.015),
            seg[seg["location_fraction"] == 0.1].assign(location_fraction=0.02),
        ]
    )
    fig = plot_strength_curves(near)
    for ax in fig.get_axes():
        lines = {line.get_label(): line for line in _labelled_lines(ax)}
        assert set(lines) == {
            "erm",
            "seg (1.5% location labels)",
            "seg (2% location labels)",
        }
    ax = fig.get_axes()[0]  # robust AUROC, faint texture: each line is its own fraction's
    lines = {line.get_label(): line for line in _labelled_lines(ax)}
    for label, source in (("seg (1.5% location labels)", 1.0), ("seg (2% location labels)", 0.1)):
        rows = seg[(seg["location_fraction"] == source) & (seg["artefact"] == "faint_texture")]
        expected = rows.assign(c=rows["p_given_ptx"] - rows["p_given_no_ptx"]).sort_values("c")
        assert list(lines[label].get_ydata()) == pytest.approx(list(expected["robust_auroc"]))
    clash = near.assign(
        location_fraction=near["location_fraction"].replace(
            {0.015: 0.0123456781, 0.02: 0.0123456782}
        )
    )
    with pytest.raises(ContractError, match="share the label"):
        plot_strength_curves(clash)


def test_figure_titles_name_the_configured_levels() -> None:
    summary = _summary()
    assert "band = 95% CI" in plot_strength_curves(summary)._suptitle.get_text()
    assert "band = 80% CI" in plot_strength_curves(summary, level=0.8)._suptitle.get_text()
    detection = pd.DataFrame({"method": ["gradcam"], "artefact": ["all"], "detection_auroc": [0.7]})
    title = plot_detection(detection, level=0.9)._suptitle.get_text()
    assert "(90% bootstrap CI over models)" in title and "95" not in title


def test_detection_figure_one_panel_per_artefact_with_ci_bars() -> None:
    rows = [
        {
            "method": m,
            "artefact": a,
            "detection_auroc": v,
            "detection_auroc_lo": v - 0.1,
            "detection_auroc_hi": v + 0.05,
        }
        for a in ("tube_random", "marker_port", "all")
        for m, v in (("gradcam", 0.8), ("occlusion", 0.6), ("ig", np.nan))
    ]
    fig = plot_detection(pd.DataFrame(rows))
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["marker port", "tube random", "all"]
    # shared y axis: the method names label the first panel, in sorted order from the top
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["gradcam", "ig", "occlusion"]
    assert axes[0].yaxis_inverted()
    for ax in axes:
        assert list(ax.get_yticks()) == [0, 1, 2]
        assert ax.get_xlabel().startswith("Detection AUROC")
        assert ax.get_xlim() == (0, 1)
        points = [line for line in ax.get_lines() if line.get_marker() == "o"]
        assert [p.get_xdata()[0] for p in points] == pytest.approx([0.8, 0.6])
        assert [p.get_ydata()[0] for p in points] == [0, 2]  # gradcam, occlusion rows
        bars = [list(line.get_xdata()) for line in ax.get_lines() if line.get_marker() == "|"]
        assert bars == [pytest.approx([0.7, 0.85]), pytest.approx([0.5, 0.65])]
    fig.savefig(io.BytesIO(), format="png")


def test_figures_name_missing_columns() -> None:
    with pytest.raises(ContractError, match="robust_auroc"):
        plot_strength_curves(_summary().drop(columns="robust_auroc"))
    with pytest.raises(ContractError, match="empty"):
        plot_detection(pd.DataFrame(columns=["method", "artefact", "detection_auroc"]))
