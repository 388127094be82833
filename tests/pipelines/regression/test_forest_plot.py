"""The forest plot (``regression_forest_plot``) explains its colours, and the study report's
reading of it states what the intervals and the highlight mean."""

from __future__ import annotations

import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import pandas as pd

from cxr_spurious.pipelines.regression.nodes import plot_forest
from cxr_spurious.report.study import READ


def _pooled() -> pd.DataFrame:
    rows = []
    for outcome in ("iou_tp", "iou_gap"):
        for i, feature in enumerate(
            ("n_instances", "area_ratio", "elongation", "irrectangularity")
        ):
            coef = 0.1 * i - 0.1
            rows.append(
                {
                    "set": "erm.gradcam",
                    "task": "pooled",
                    "outcome": outcome,
                    "feature": feature,
                    "coef": coef,
                    "coef_lo": coef - 0.05,
                    "coef_hi": coef + 0.05,
                    "bonferroni_significant": feature == "irrectangularity",
                }
            )
    per_task = pd.DataFrame(rows).assign(task="Edema", bonferroni_significant=True)
    return pd.concat([pd.DataFrame(rows), per_task], ignore_index=True)


def _colour(artist: object) -> str:
    getter = getattr(artist, "get_color", None) or artist.get_facecolor
    return mcolors.to_hex(getter())


def test_the_legend_names_both_colours_with_the_bonferroni_rule() -> None:
    fig = plot_forest(_pooled())
    try:
        assert len(fig.legends) == 1
        legend = fig.legends[0]
        texts = [t.get_text() for t in legend.get_texts()]
        assert len(texts) == 2
        assert "Bonferroni-significant" in texts[0] and "0.05/4" in texts[0]
        assert "min_clusters" in texts[0]
        ax = fig.axes[0]
        # every point's colour is one of the legend's; the significant rows wear the first
        points = [line for line in ax.get_lines() if line.get_marker() == "o"]
        assert len(points) == 8  # pooled rows only
        legend_colours = [_colour(h) for h in legend.legend_handles]
        labels = [t.get_text() for t in ax.get_yticklabels()]
        for label, point in zip(labels, points, strict=True):
            expected = legend_colours[0 if label.endswith("irrectangularity") else 1]
            assert _colour(point) == expected, label
        assert legend_colours[0] != legend_colours[1]
        assert "unadjusted 95% CI" in ax.get_xlabel()
    finally:
        plt.close(fig)


def test_an_empty_table_still_gets_the_legend() -> None:
    fig = plot_forest(pd.DataFrame())
    try:
        assert len(fig.legends) == 1 and len(fig.legends[0].get_texts()) == 2
    finally:
        plt.close(fig)


def test_the_report_reading_states_unadjusted_cis_bonferroni_and_the_gap_sign() -> None:
    text = READ["regression"]
    assert "does not cross zero is an association" not in text
    for phrase in (
        "unadjusted 95 % CI",
        "Bonferroni-significant, p < 0.05/k",
        "regression.min_clusters CXRs",
        "benchmark minus saliency",
        "positive gap means the saliency map is worse than the benchmark",
    ):
        assert phrase in text, phrase
