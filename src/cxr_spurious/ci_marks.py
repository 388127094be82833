"""The one drawing of point estimates with their confidence intervals on a matplotlib axis.

``Axes.errorbar`` takes offsets from the point (``est - lo``, ``hi - est``), so an interval
that does not contain its estimate (a percentile bootstrap of a skewed statistic can give
one) is drawn wrong once the offsets are clipped at 0; ``draw_intervals`` draws the segment
from ``lo`` to ``hi`` itself and the point where it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes


def draw_intervals(
    ax: Axes,
    est: Sequence[float] | np.ndarray,
    lo: Sequence[float] | np.ndarray,
    hi: Sequence[float] | np.ndarray,
    at: Sequence[float] | np.ndarray,
    *,
    vertical: bool = False,
    color: Any = None,
    marker: str | None = "o",
    **point_kwargs: Any,
) -> None:
    """Draw each estimate as a point at position ``at`` and its interval ``[lo, hi]`` as a
    capped segment (horizontal segments on the x axis, ``vertical=True``: on the y axis).

    A non-finite estimate draws nothing; a non-finite bound leaves out the segment only.
    ``color`` is one colour or one per estimate; ``marker=None`` draws no point (e.g. over
    a bar that shows the estimate).
    """
    est, lo, hi, at = (np.asarray(v, dtype=float).ravel() for v in (est, lo, hi, at))
    if not len(est) == len(lo) == len(hi) == len(at):
        raise ValueError(
            f"draw_intervals: est, lo, hi and at differ in length "
            f"({len(est)}, {len(lo)}, {len(hi)}, {len(at)})"
        )
    colours = list(color) if _is_colour_list(color, len(est)) else [color] * len(est)
    cap = "_" if vertical else "|"
    for k in np.flatnonzero(np.isfinite(est)):
        c = colours[k] if colours[k] is not None else "black"
        if np.isfinite(lo[k]) and np.isfinite(hi[k]):
            across, along = [at[k], at[k]], [lo[k], hi[k]]
            ends = (across, along) if vertical else (along, across)
            ax.plot(*ends, color=c, lw=1.2, marker=cap, markersize=7, solid_capstyle="butt")
        if marker is not None:
            point = (at[k], est[k]) if vertical else (est[k], at[k])
            ax.plot(*point, marker=marker, color=c, linestyle="none", **point_kwargs)


def _is_colour_list(color: Any, n: int) -> bool:
    """``color`` holds one colour per estimate (not one RGB(A) tuple or name)."""
    if color is None or isinstance(color, str):
        return False
    items = list(color) if isinstance(color, Sequence | np.ndarray) else []
    return len(items) == n and not all(isinstance(v, int | float | np.floating) for v in items)
