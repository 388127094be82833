"""The console filter and the run's logging set-up (``cxr_spurious.logging_filters``)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from cxr_spurious.logging_filters import (
    ConsoleFilter,
    PlainConsoleHandler,
    configure_run_logging,
    is_library_warning,
)

SITE = "/venv/lib/python3.11/site-packages"


def _record(name: str, msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


def _warning(path: str, category: str, message: str) -> logging.LogRecord:
    return _record("py.warnings", f"{path}:10: {category}: {message}\n  code()\n", logging.WARNING)


@pytest.mark.parametrize(
    ("record", "shown"),
    [
        (
            _record("kedro.io.data_catalog", "Loading data from params:ingestion.seed (Memory)"),
            False,
        ),
        (_record("kedro.io.data_catalog", "Saving data to 'x' (ParquetDataset)..."), False),
        (_record("kedro.pipeline.node", "Running node: generate_phantom: ..."), False),
        (_record("kedro.runner.sequential_runner", "Completed 3 out of 9 tasks"), False),
        (_record("kedro.io.data_catalog", "a catalog problem", logging.WARNING), True),
        (_record("kedro.framework.session.session", "Kedro project cxr_spurious"), True),
        (_record("cxr_spurious.hooks", "Node build_manifest done in 0.1 s (ingestion)"), True),
        (_record("cxr_spurious.cli", "traceback", logging.ERROR, console=False), False),
        (_warning(f"{SITE}/statsmodels/base/model.py", "ConvergenceWarning", "MLE ..."), False),
        (_warning(f"{SITE}/kedro/pipeline/node.py", "UserWarning", "names contain '.'"), False),
        (_warning("/repo/src/cxr_spurious/x.py", "FutureWarning", "old API"), False),
        (_warning("/repo/src/cxr_spurious/training/loop.py", "UserWarning", "few images"), True),
        (_warning(f"{SITE}/cxr_spurious/training/loop.py", "UserWarning", "few images"), True),
    ],
)
def test_console_filter(record: logging.LogRecord, shown: bool) -> None:
    assert ConsoleFilter().filter(record) is shown


def test_dropped_library_warnings_are_counted_for_the_summary() -> None:
    console = ConsoleFilter()
    assert console.summary("logs/info.log") is None
    for _ in range(3):
        console.filter(_warning(f"{SITE}/statsmodels/m.py", "ConvergenceWarning", "MLE"))
    console.filter(_warning(f"{SITE}/kedro/x.py", "KedroDeprecationWarning", "--pipeline"))
    assert console.summary(Path("logs/info.log")) == (
        "4 warning(s) from libraries (3 ConvergenceWarning, 1 KedroDeprecationWarning) "
        "are in logs/info.log"
    )
    assert not is_library_warning(_record("py.warnings", "not a formatted warning"))


@pytest.fixture
def clean_root():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield root
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_configure_run_logging_on_a_pipe(clean_root: logging.Logger, tmp_path: Path) -> None:
    from kedro.logging import RichHandler
    from rich.console import Console

    stream = io.StringIO()  # not a terminal: rich would wrap at 80 columns
    clean_root.handlers[:] = [RichHandler(console=Console(file=stream))]
    clean_root.setLevel(logging.INFO)
    console_filter, log_file = configure_run_logging(tmp_path)
    configure_run_logging(tmp_path)  # again: still one console and one file handler
    assert log_file == tmp_path / "logs" / "info.log"
    assert [type(h).__name__ for h in clean_root.handlers] == [
        "PlainConsoleHandler",
        "RotatingFileHandler",
    ]
    assert isinstance(clean_root.handlers[0], PlainConsoleHandler)
    long = "parameter 'x': " + "must be a positive integer naming the patient64542 " * 6
    log = logging.getLogger("cxr_spurious.test")
    log.info(long)
    logging.getLogger("kedro.io.data_catalog").info("Loading data from params:x (Memory)...")
    log.error("boom", exc_info=ValueError("inner"), extra={"console": False})
    for handler in clean_root.handlers:
        handler.flush()
    shown = stream.getvalue()
    lines = shown.splitlines()
    assert len(lines) == 1 and lines[0].endswith(f" INFO     {long}"), lines
    written = log_file.read_text(encoding="utf-8")
    assert long in written and "Loading data from params:x" in written
    assert "ValueError: inner" in written
    assert console_filter.summary(log_file) is None
