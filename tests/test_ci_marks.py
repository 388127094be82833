"""``ci_marks.draw_intervals``: each interval drawn from its bounds, not from clipped
offsets around the point, so one that does not contain its estimate is drawn as it is."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from cxr_spurious.ci_marks import draw_intervals


def _lines(vertical: bool, **kwargs):
    ax = Figure().subplots()
    est, lo, hi = [0.50, 0.30, np.nan, 0.6], [0.55, 0.20, 0.1, np.nan], [0.70, 0.40, 0.2, 0.7]
    draw_intervals(ax, est, lo, hi, [0, 1, 2, 3], vertical=vertical, **kwargs)
    return [(line.get_xdata(), line.get_ydata(), line.get_marker()) for line in ax.lines]


@pytest.mark.parametrize("vertical", [False, True])
def test_segments_span_the_bounds_and_points_sit_at_the_estimates(vertical: bool) -> None:
    lines = _lines(vertical)
    segments = [(x, y) for x, y, m in lines if m in ("|", "_")]
    points = [(x, y) for x, y, m in lines if m == "o"]
    spans = [(y if vertical else x) for x, y in segments]
    # estimate 0.50 outside its CI [0.55, 0.70]: the segment is still 0.55-0.70 (errorbar
    # with clipped offsets drew 0.50-0.70); no segment for a missing bound or estimate
    np.testing.assert_allclose(spans, [[0.55, 0.70], [0.20, 0.40]])
    where = [(y if vertical else x) for x, y in points]
    at = [(x if vertical else y) for x, y in points]
    np.testing.assert_allclose(np.ravel(where), [0.50, 0.30, 0.6])
    np.testing.assert_allclose(np.ravel(at), [0, 1, 3])


def test_no_point_and_one_colour_per_estimate() -> None:
    lines = _lines(False, marker=None, color=["red", "green", "blue", "black"])
    assert all(m != "o" for _, _, m in lines)
    ax = Figure().subplots()
    draw_intervals(ax, [0.5, 0.6], [0.4, 0.5], [0.6, 0.7], [0, 1], color=["red", "green"])
    assert [line.get_color() for line in ax.lines] == ["red", "red", "green", "green"]


def test_arrays_of_other_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match=r"differ in length \(2, 2, 2, 3\)"):
        draw_intervals(Figure().subplots(), [1, 2], [1, 2], [1, 2], [0, 1, 2])
