"""Progress bars: the one factory behind every long loop's bar.

On a terminal, and in a notebook, a bar is tqdm's own (``tqdm.auto``). When the bar's stream
is not a terminal (``kedro run > run.log 2>&1``, CI, a pipe, the workers of
``ParallelRunner`` writing to the run's redirected stderr), two things change:

* a bar opened while another bar of the same process is open is switched off. tqdm draws a
  nested bar on a second row and moves the cursor back up with the ANSI code ``ESC[A``,
  which a log file shows as junk (``^[[A``), one per refresh;
* a bar refreshes at most every ``REDIRECTED_MININTERVAL`` seconds instead of ten times a
  second, so a loop leaves a few carriage-return updates in the file, not thousands;
* a finished bar stays, ending its line, so the log line after it starts a line of its own
  (a bar that is not left is cleared with spaces and a carriage return, no newline).

The outer bar (an epoch, the phantom, the heatmap sets) still shows where the run is.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any, TextIO, TypeVar

from tqdm import std as tqdm_std
from tqdm.auto import tqdm as auto_tqdm

T = TypeVar("T")

#: Seconds between two refreshes of a bar whose stream is not a terminal.
REDIRECTED_MININTERVAL = 10.0

#: Whether ``tqdm.auto`` draws notebook widgets here (an IPython kernel): widgets nest
#: without escape codes, so nothing changes.
IN_NOTEBOOK = any(c.__name__ == "tqdm_notebook" for c in auto_tqdm.__mro__)


def is_interactive(stream: Any) -> bool:
    """Whether ``stream`` is a terminal (a notebook counts as one)."""
    if IN_NOTEBOOK:
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed stream
        return False


def open_bars() -> int:
    """How many enabled tqdm bars this process has open (tqdm keeps no disabled ones)."""
    return sum(1 for bar in list(tqdm_std.tqdm._instances) if not bar.disable)


def progress_bar(
    iterable: Iterable[T] | None = None,
    *,
    desc: str,
    total: float | None = None,
    unit: str = "it",
    disable: bool = False,
    leave: bool = False,
    file: TextIO | None = None,
) -> Any:
    """A tqdm bar over ``iterable`` (or a manual one, ``total`` steps, ``.update()``).

    Args:
        iterable: What to iterate over; None for a bar updated by hand.
        desc: The bar's label (e.g. ``"epoch 3"``).
        total: Number of steps (defaults to ``len(iterable)`` where it has one).
        unit: What a step is ("img", "dir", ...).
        disable: No bar at all (the caller's ``progress`` switch, a size threshold).
        leave: Keep the finished bar on screen.
        file: The stream (default ``sys.stderr`` when the bar opens).

    Returns:
        The ``tqdm.auto`` bar: iterate over it, or call ``update`` / ``close`` (it is also a
        context manager). On a stream that is not a terminal it is disabled when another bar
        is open in this process, refreshes every ``REDIRECTED_MININTERVAL`` s and is left
        when it finishes.
    """
    stream = sys.stderr if file is None else file
    options: dict[str, Any] = {}
    if not disable and not is_interactive(stream):
        disable = open_bars() > 0
        options["mininterval"] = REDIRECTED_MININTERVAL
        # the finished bar ends its line: the next log line starts on a line of its own
        # (tqdm clears a bar it does not leave with spaces and a carriage return only)
        leave = True
    return auto_tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        disable=disable,
        leave=leave,
        file=file,
        **options,
    )
