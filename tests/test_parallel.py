"""``parallel.ordered_map`` on a process pool: input order, project errors as themselves, a
worker process that dies stops the map naming the lost items (it used to wait forever),
and a consumer that stops early does not wait for the work still running.

The maps run in a helper thread joined with a generous bound: a map that hangs fails the
test instead of hanging the suite (the bound is a guard, not a measured time).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.parallel import WorkerLostError, ordered_map

N = 32
HANG_GUARD_S = 120.0  # far above what any of these maps takes


def _square(x: int) -> int:
    return x * x


def _dies_on_five(x: int) -> int:
    if x == 5:
        os._exit(1)  # stands in for the out-of-memory killer or a segfault in cv2
    return x


def _refuses_seven(x: int) -> int:
    if x == 7:
        raise ParameterError("test.item", "seven is not allowed")
    return x


def _stuck_on_four(x: int) -> int:
    if x == 4:
        time.sleep(600)  # a long item the consumer no longer wants
    return x


def _within_guard(work: Callable[[], Any]) -> dict[str, Any]:
    """Run ``work`` in a daemon thread; what it returned or raised (fails if it hangs)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive(), f"ordered_map still running after {HANG_GUARD_S:.0f} s: hung"
    return box


def _map(func: Callable[[int], int], **kwargs: Any) -> list[int]:
    options = {"n_items": N, "workers": 2, "chunksize": 1, "progress": False, **kwargs}
    return list(ordered_map(func, range(N), **options))


def test_results_come_back_in_input_order_from_a_pool() -> None:
    box = _within_guard(lambda: _map(_square, chunksize=3))
    assert box.get("result") == [x * x for x in range(N)], box.get("error")


def test_a_project_error_in_a_worker_is_raised_as_itself() -> None:
    box = _within_guard(lambda: _map(_refuses_seven))
    error = box.get("error")
    assert isinstance(error, ParameterError), error
    assert error.key == "test.item" and "seven is not allowed" in str(error)


def test_a_worker_that_dies_stops_the_map_naming_the_lost_items() -> None:
    """``multiprocessing.Pool`` replaced the dead worker and never returned its items."""
    box = _within_guard(lambda: _map(_dies_on_five))
    error = box.get("error")
    assert isinstance(error, WorkerLostError), box
    assert isinstance(error.__cause__, BrokenProcessPool)
    text = str(error)
    assert "_dies_on_five" in text and "killed" in text and "workers: 1" in text
    named = re.search(r"results of items? ((?:#\d+(?: to #\d+)?(?:, )?)+) \(of 32", text)
    assert named, text
    spans = [(int(a), int(b or a)) for a, b in re.findall(r"#(\d+)(?: to #(\d+))?", named[1])]
    # the item whose worker died is among those named, and not every item is
    assert any(a <= 5 <= b for a, b in spans), text
    assert sum(b - a + 1 for a, b in spans) < N, text


def test_a_consumer_that_stops_early_does_not_wait_for_running_items() -> None:
    def take_three() -> list[int]:
        results = ordered_map(
            _stuck_on_four, range(N), n_items=N, workers=2, chunksize=1, progress=False
        )
        got = [next(results) for _ in range(3)]
        results.close()  # item 4 is still running in a worker: it is terminated
        return got

    box = _within_guard(take_three)
    assert box.get("result") == [0, 1, 2], box.get("error")


@pytest.mark.parametrize("n_items", [3, 0])
def test_below_min_items_the_map_runs_in_this_process(n_items: int) -> None:
    pid = os.getpid()
    got = list(
        ordered_map(
            lambda _: os.getpid(), range(n_items), n_items=n_items, workers=2, progress=False
        )
    )
    assert got == [pid] * n_items  # a lambda: it could not have been sent to a worker
