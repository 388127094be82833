"""Progress bars in a log file: no cursor codes from nested bars, few refreshes."""

from __future__ import annotations

import io

from tqdm import std as tqdm_std

from cxr_spurious import progress
from cxr_spurious.progress import REDIRECTED_MININTERVAL, progress_bar


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _nested(stream: io.StringIO) -> str:
    for _ in progress_bar(range(2), desc="outer", file=stream):
        for _ in progress_bar(range(3), desc="inner", file=stream):
            pass
    return stream.getvalue()


def test_nested_bars_leave_no_cursor_codes_in_a_file() -> None:
    text = _nested(io.StringIO())
    assert "outer" in text
    assert "inner" not in text and "\x1b[" not in text
    assert progress.open_bars() == 0  # both closed
    # the finished bar ends its line (a log line after it starts a line of its own)
    assert text.endswith("\n") and text.splitlines()[-1].rsplit("\r", 1)[-1].startswith("outer")


def test_nested_bars_draw_on_a_terminal() -> None:
    text = _nested(FakeTerminal())
    assert "outer" in text and "inner" in text
    assert "\x1b[A" in text  # tqdm's second row: what a terminal is for


def _refreshes(monkeypatch, stream: io.StringIO) -> int:
    """Draws of a 100-step bar whose steps are one second apart (a fake clock)."""
    now = [0.0]
    monkeypatch.setattr(tqdm_std, "time", lambda: now[0])
    bar = progress_bar(total=100, desc="epoch 1", file=stream)
    for _ in range(100):
        now[0] += 1.0
        bar.update()
    bar.close()
    return stream.getvalue().count("epoch 1")


def test_a_file_gets_a_refresh_per_ten_seconds(monkeypatch) -> None:
    assert _refreshes(monkeypatch, FakeTerminal()) >= 100  # a terminal: every step
    # a file: the first draw, one per 10 s, the last
    assert 3 <= _refreshes(monkeypatch, io.StringIO()) <= 100 / REDIRECTED_MININTERVAL + 2


def test_disabled_stays_disabled_and_a_lone_bar_shows() -> None:
    stream = io.StringIO()
    with progress_bar(total=2, desc="off", disable=True, file=stream) as bar:
        bar.update(2)
    assert stream.getvalue() == ""
    with progress_bar(total=2, desc="phantom", unit="img", file=stream, leave=True) as bar:
        bar.update(2)
    assert "phantom" in stream.getvalue() and "2/2" in stream.getvalue()
