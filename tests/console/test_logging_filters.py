"""The console filter and the run's logging set-up (``cxr_spurious.logging_filters``)."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr_spurious.logging_filters import (
    MLFLOW_OWN_LOGGERS,
    ConsoleFilter,
    PlainConsoleHandler,
    StartupWarningHold,
    adopt_mlflow_loggers,
    configure_rank_logging,
    configure_run_logging,
    configured_levels,
    hold_startup_warnings,
    is_library_warning,
    is_startup_warning,
)

SITE = "/venv/lib/python3.11/site-packages"


def _record(name: str, msg: str, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


def _warning(path: str, category: str, message: str) -> logging.LogRecord:
    return _record("py.warnings", f"{path}:10: {category}: {message}\n  code()\n", logging.WARNING)


UNION = (
    "Union type hint (int | str) is not supported for validation. Parameters with this type "
    "will be passed as raw dictionaries."
)
VIZ_HOOK = "kedro_viz.integrations.kedro.run_hooks"
WARN = logging.WARNING
DOTS = (
    "One or more dataset names contain '.' characters, which is not recommended as the dot "
    "notation is reserved for automatic namespacing in Kedro."
)


@pytest.mark.parametrize(
    ("record", "shown"),
    [
        (
            _record("kedro.io.data_catalog", "Loading data from params:ingestion.seed (Memory)"),
            False,
        ),
        (_record("kedro.io.data_catalog", "Saving data to 'x' (ParquetDataset)..."), False),
        (_record("kedro.pipeline.node", "Running node: generate_phantom: ..."), False),
        (
            _record(
                "cxr_spurious.datasets.skippable",
                "Skipped saving box.model (variant not selected by training.only); ...",
            ),
            False,
        ),
        (_record("kedro.runner.sequential_runner", "Completed 3 out of 9 tasks"), False),
        # DaskRunner: its own "Completed" lines, and a worker's records forwarded with the
        # node's name in front (only that exact prefix is looked past)
        (_record("cxr_spurious.runner", "Completed node: a (on tcp://127.0.0.1:1)"), False),
        (_record("cxr_spurious.runner", "Completed 3 out of 9 tasks"), False),
        (
            _record(
                "kedro.pipeline.node", "[a] Running node: a: f([x]) -> [y]", forwarded_from="[a] "
            ),
            False,
        ),
        (
            _record("kedro.io.data_catalog", "[a] Loading data from x ...", forwarded_from="[a] "),
            False,
        ),
        (_record("kedro.pipeline.node", "[a] Running node: a", forwarded_from="[b] "), True),
        (_record("cxr_spurious.x", "[a] 431 maps evaluated", forwarded_from="[a] "), True),
        (_record("cxr_spurious.runner", "Started a local Dask cluster at tcp://..."), True),
        (_record("kedro.io.data_catalog", "a catalog problem", logging.WARNING), True),
        (_record("kedro.validation.type_extractor", UNION, logging.WARNING), False),
        (_record("kedro.validation.x", "another validation problem", logging.WARNING), True),
        (_record(VIZ_HOOK, "Workflow tracking is disabled during partial ...", WARN), False),
        (_record(VIZ_HOOK, "Workflow tracking is disabled for non-sequential ...", WARN), False),
        (_record(VIZ_HOOK, "another kedro-viz problem", logging.WARNING), True),
        (
            _record(
                "kedro_viz.integrations.kedro.hooks",
                "[hook: after_dataset_saved] Unable to create statistics for the dataset %s : %s",
                WARN,
            ),
            False,
        ),
        (_record("cxr_spurious.x", UNION, logging.WARNING), True),
        (_record("kedro.framework.session.session", "Kedro project cxr_spurious"), True),
        (_record("cxr_spurious.hooks", "Node build_manifest done in 0.1 s (ingestion)"), True),
        (_record("cxr_spurious.cli", "traceback", logging.ERROR, console=False), False),
        (_warning(f"{SITE}/statsmodels/base/model.py", "ConvergenceWarning", "MLE ..."), False),
        (_warning(f"{SITE}/kedro/pipeline/node.py", "UserWarning", "names contain '.'"), False),
        (_warning("/repo/src/cxr_spurious/x.py", "FutureWarning", "old API"), False),
        # Kedro's namespace-notation warning, reported at the project's pipeline line
        (
            _warning("/repo/src/cxr_spurious/pipelines/sweep/pipeline.py", "UserWarning", DOTS),
            False,
        ),
        (_warning("/repo/src/cxr_spurious/x.py", "UserWarning", "mine: " + DOTS), True),
        (_warning("/repo/src/cxr_spurious/x.py", "RuntimeWarning", DOTS), True),
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
    console.filter(_record("kedro.validation.type_extractor", UNION, logging.WARNING))
    assert console.summary("logs/info.log") == (
        "5 warning(s) from libraries (3 ConvergenceWarning, 1 KedroDeprecationWarning, "
        "1 kedro) are in logs/info.log"
    )
    assert not is_library_warning(_record("py.warnings", "not a formatted warning"))


def test_configure_run_logging_on_a_pipe(clean_root: logging.Logger, tmp_path: Path) -> None:
    from kedro.logging import RichHandler
    from rich.console import Console

    # start with nothing held: an earlier test in this process may have imported
    # kedro-mlflow, whose start-up warning the hold keeps for the next run's log file
    hold_startup_warnings().release()
    stream = io.StringIO()  # not a terminal: rich would wrap at 80 columns
    clean_root.handlers[:] = [RichHandler(console=Console(file=stream))]
    clean_root.setLevel(logging.INFO)
    console_filter, log_file = configure_run_logging(tmp_path)
    configure_run_logging(tmp_path)  # again: still one console and one file handler
    assert log_file == tmp_path / "logs" / "info.log"
    assert [type(h).__name__ for h in clean_root.handlers] == [
        "PlainConsoleHandler",
        "RunLogFileHandler",
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


TYPE_HINTS = (
    "\x1b[33mAdd type hints to the `predict` method to enable data validation and automatic "
    "signature inference during model logging.\x1b[0m"
)


@pytest.mark.parametrize(
    ("record", "held"),
    [
        (
            _warning(f"{SITE}/mlflow/pyfunc/utils/data_validation.py", "UserWarning", TYPE_HINTS),
            True,
        ),
        # the same text from the project's code, another MLflow warning, another library's
        (_warning("/repo/src/cxr_spurious/tracking.py", "UserWarning", TYPE_HINTS), False),
        (
            _warning(f"{SITE}/mlflow/utils/x.py", "UserWarning", "Hint: pass an input_example"),
            False,
        ),
        (_warning(f"{SITE}/statsmodels/m.py", "UserWarning", TYPE_HINTS), False),
        (_record("mlflow.models", TYPE_HINTS, logging.WARNING), False),  # not a py warning
    ],
)
def test_only_the_listed_startup_warnings_are_held(record: logging.LogRecord, held: bool) -> None:
    assert is_startup_warning(record) is held
    hold = StartupWarningHold()
    assert hold.filter(record) is not held
    assert hold.release() == ([record] if held else [])
    assert hold.release() == []


def test_held_startup_warnings_go_to_the_log_file(clean_root: logging.Logger, tmp_path) -> None:
    from kedro.logging import RichHandler
    from rich.console import Console

    stream = io.StringIO()
    clean_root.handlers[:] = [RichHandler(console=Console(file=stream, width=400))]
    clean_root.setLevel(logging.INFO)
    py_warnings = logging.getLogger("py.warnings")
    hold = hold_startup_warnings()
    assert hold_startup_warnings() is hold and py_warnings.filters.count(hold) == 1
    hold.release()  # what importing the package may have held in this process
    early = _warning(f"{SITE}/mlflow/pyfunc/utils/data_validation.py", "UserWarning", TYPE_HINTS)
    mine = _warning("/repo/src/cxr_spurious/training/loop.py", "UserWarning", "few images")
    py_warnings.handle(early)
    py_warnings.handle(mine)
    assert stream.getvalue().count("few images") == 1 and "type hints" not in stream.getvalue()
    try:
        console_filter, log_file = configure_run_logging(tmp_path)
        assert hold not in py_warnings.filters  # the run's console filter takes over
        later = _warning(f"{SITE}/mlflow/pyfunc/x.py", "UserWarning", TYPE_HINTS + " (later)")
        py_warnings.handle(later)
        for handler in clean_root.handlers:
            handler.flush()
        written = log_file.read_text(encoding="utf-8")
        assert written.count("Add type hints to the `predict` method") == 2, written
        assert "type hints" not in stream.getvalue()
        assert console_filter.summary("logs/info.log") == (
            "2 warning(s) from libraries (2 UserWarning) are in logs/info.log"
        )
    finally:
        hold_startup_warnings()  # as the package's import left it


def mean_of_nothing(x: object) -> float:
    """A node that makes numpy warn twice (mean of an empty slice, then 0 / 0)."""
    import numpy as np

    return float(np.mean(np.array([])))


def test_warnings_of_parallel_workers_are_counted(
    clean_root: logging.Logger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re
    import warnings
    from collections import Counter

    from kedro.framework.hooks.manager import _create_hook_manager
    from kedro.io import MemoryDataset, SharedMemoryDataCatalog
    from kedro.logging import RichHandler
    from kedro.pipeline import Node, Pipeline
    from kedro.runner import ParallelRunner
    from rich.console import Console

    monkeypatch.setenv("KEDRO_MP_CONTEXT", "fork")  # the workers inherit the run's logging
    hold_startup_warnings().release()
    stream = io.StringIO()
    clean_root.handlers[:] = [RichHandler(console=Console(file=stream))]
    clean_root.setLevel(logging.INFO)
    pipeline = Pipeline([Node(mean_of_nothing, "a", f"o{i}", name=f"m{i}") for i in range(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(False)  # an earlier test's capture may be stale
        logging.captureWarnings(True)
        try:
            console_filter, log_file = configure_run_logging(tmp_path)
            catalog = SharedMemoryDataCatalog({"a": MemoryDataset(1)})
            ParallelRunner(max_workers=2).run(pipeline, catalog, _create_hook_manager())
        finally:
            logging.captureWarnings(False)
    for handler in clean_root.handlers:
        handler.flush()
    assert console_filter.dropped_warnings == Counter()  # nothing dropped in this process
    assert "Mean of empty slice" not in stream.getvalue()
    # the reference: the warnings the workers wrote to the log file, by category
    written = Counter(
        re.findall(r" py\.warnings: .*?:\d+: (\w+): ", log_file.read_text(encoding="utf-8"))
    )
    assert written["RuntimeWarning"] == 2 * 2  # two nodes, two numpy warnings each
    summary = console_filter.summary("logs/info.log")
    assert summary is not None, "the workers' warnings are not counted"
    match = re.fullmatch(
        r"(\d+) warning\(s\) from libraries \((.*)\) are in logs/info\.log", summary
    )
    assert match is not None, summary
    counted = Counter({k: int(n) for n, k in re.findall(r"(\d+) (\w+)", match.group(2))})
    assert counted == written and int(match.group(1)) == sum(written.values())


def test_the_tally_file_is_the_owners(tmp_path: Path) -> None:
    console = ConsoleFilter()
    tally = console.share_with_workers()
    assert console.share_with_workers() == tally and tally.exists()
    tally.write_text("RuntimeWarning\nRuntimeWarning\n", encoding="utf-8")  # as two workers
    console.filter(_warning(f"{SITE}/statsmodels/m.py", "ConvergenceWarning", "MLE"))
    assert console.summary("logs/info.log") == (
        "3 warning(s) from libraries (2 RuntimeWarning, 1 ConvergenceWarning) are in logs/info.log"
    )
    del console
    import gc

    gc.collect()
    assert not tally.exists()


@pytest.fixture
def mlflow_loggers() -> Iterator[None]:
    """MLflow's loggers as MLflow's import leaves them, restored after the test."""
    from mlflow.utils.logging_utils import _configure_mlflow_loggers

    loggers = [logging.getLogger(name) for name in MLFLOW_OWN_LOGGERS]
    saved = [(list(log.handlers), log.level, log.propagate) for log in loggers]
    _configure_mlflow_loggers(root_module_name="mlflow")  # what `import mlflow` does
    yield
    for log, (handlers, level, propagate) in zip(loggers, saved):
        log.handlers[:] = handlers
        log.setLevel(level)
        log.propagate = propagate


def test_mlflow_records_follow_the_runs_logging(
    clean_root: logging.Logger,
    mlflow_loggers: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """MLflow configures its loggers at import, after Kedro applied conf/logging.yml: its
    own stderr handler, INFO, no propagation. The run takes them back: the configured level,
    the console filter and the log file."""
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    mlflow_log = logging.getLogger("mlflow")
    assert mlflow_log.level == logging.INFO and not mlflow_log.propagate  # MLflow's own set-up
    assert any(type(h.formatter).__name__ == "MlflowFormatter" for h in mlflow_log.handlers)

    stream = io.StringIO()
    clean_root.handlers[:] = [PlainConsoleHandler(stream)]
    clean_root.setLevel(logging.INFO)
    _, log_file = configure_run_logging(tmp_path, {"mlflow": "WARNING", "kedro": "INFO"})
    for name in MLFLOW_OWN_LOGGERS:
        log = logging.getLogger(name)
        mlflows = [h for h in log.handlers if type(h.formatter).__name__ == "MlflowFormatter"]
        assert log.propagate and not mlflows, (name, log.handlers)
    assert mlflow_log.level == logging.WARNING
    assert logging.getLogger("alembic").level == logging.WARNING  # MLflow's own choice, kept

    db_utils = logging.getLogger("mlflow.store.db.utils")
    db_utils.info("Creating initial MLflow database tables...")
    db_utils.warning("the tracking database is locked; retrying")
    for handler in clean_root.handlers:
        handler.flush()
    shown, written = stream.getvalue(), log_file.read_text(encoding="utf-8")
    assert "Creating initial MLflow database tables" not in shown + written  # below WARNING
    assert "the tracking database is locked" in shown and "the tracking database is locked" in (
        written
    )
    assert "Creating initial" not in capsys.readouterr().err  # MLflow's stderr handler is gone

    # MLFLOW_LOGGING_LEVEL, when set, wins over the configuration, as MLflow documents it
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "debug")
    assert adopt_mlflow_loggers({"mlflow": "WARNING"})["mlflow"] == logging.DEBUG
    # without a configured level, MLflow's own stays
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL")
    mlflow_log.setLevel(logging.ERROR)
    assert adopt_mlflow_loggers(None)["mlflow"] == logging.ERROR


def test_configured_levels_reads_the_loggers_section() -> None:
    config = {
        "version": 1,
        "loggers": {"mlflow": {"level": "WARNING"}, "kedro": {"handlers": []}, "x": "bad"},
    }
    assert configured_levels(config) == {"mlflow": "WARNING"}
    assert configured_levels(None) == {} and configured_levels({"loggers": None}) == {}


@pytest.mark.parametrize("rank", [0, 1])
def test_rank_logging_names_the_rank_and_only_rank_0_speaks_at_info(
    clean_root: logging.Logger,
    mlflow_loggers: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rank: int,
) -> None:
    from kedro.logging import RichHandler

    hold_startup_warnings().release()
    clean_root.handlers[:] = [RichHandler()]  # what Kedro's conf/logging.yml installs
    clean_root.setLevel(logging.INFO)
    _, log_file = configure_rank_logging(tmp_path, rank, {"mlflow": "WARNING"})
    consoles = [h for h in clean_root.handlers if not isinstance(h, logging.FileHandler)]
    assert len(consoles) == 1 and isinstance(consoles[0], PlainConsoleHandler)
    log = logging.getLogger("cxr_spurious.training.engine")
    long = "epoch 1: loss 0.6931, val AUROC 0.512, val robust AUROC 0.433, " + "x" * 80
    log.info(long)
    log.warning("rank-local trouble")
    logging.getLogger("kedro.io.data_catalog").info("Loading data from seg.config ...")
    for handler in clean_root.handlers:
        handler.flush()
    lines = capsys.readouterr().out.splitlines()
    pattern = rf"^\d\d:\d\d:\d\d \[rank {rank}\] (INFO|WARNING) +"
    assert lines and all(re.match(pattern, line) for line in lines), lines
    assert sum("rank-local trouble" in line for line in lines) == 1
    assert not any("Loading data from" in line for line in lines)
    info_lines = [line for line in lines if long in line]  # whole, on one line
    if rank == 0:
        assert len(info_lines) == 1
        assert log_file == tmp_path / "logs" / "info.log"
        assert "Loading data from seg.config" in log_file.read_text(encoding="utf-8")
    else:  # the other ranks: warnings only, no log file (one writer per file)
        assert info_lines == [] and log_file is None
        assert not (tmp_path / "logs").exists()
        assert not [h for h in clean_root.handlers if isinstance(h, logging.FileHandler)]


def _spawned_worker_logs(stream_marker: str) -> str:
    """In a spawned worker: Kedro's logging as ``ParallelRunner`` leaves it (a rich console,
    INFO), then what the project's hook does before the first load; what it printed."""
    import warnings

    from kedro.logging import RichHandler
    from rich.console import Console

    from cxr_spurious.logging_filters import join_run_logging

    stream = io.StringIO()
    root = logging.getLogger()
    root.handlers[:] = [RichHandler(console=Console(file=stream))]
    root.setLevel(logging.INFO)
    joined = join_run_logging()
    logging.getLogger("kedro.io.data_catalog").info("Loading data from a (MemoryDataset)...")
    logging.getLogger("cxr_spurious.worker").info(stream_marker)
    logging.captureWarnings(True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit("Mean of empty slice", RuntimeWarning, f"{SITE}/numpy/x.py", 3)
    for handler in root.handlers:
        handler.flush()
    return f"joined={joined}\n" + stream.getvalue()


def test_spawned_workers_join_the_runs_console_filter_and_log_file(
    clean_root: logging.Logger, tmp_path: Path
) -> None:
    """Workers started by spawn (KEDRO_MP_CONTEXT=spawn; macOS's default) configure logging
    from conf/logging.yml alone; the project's hook makes them route as forked ones do."""
    import multiprocessing

    hold_startup_warnings().release()
    clean_root.handlers[:] = [PlainConsoleHandler(io.StringIO())]
    clean_root.setLevel(logging.INFO)
    console_filter, log_file = configure_run_logging(tmp_path)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        shown = pool.apply(_spawned_worker_logs, ("rows ready in the worker",))
    assert shown.startswith("joined=True\n"), shown
    lines = shown.splitlines()[1:]
    assert len(lines) == 1 and lines[0].endswith("INFO     rows ready in the worker"), lines
    written = log_file.read_text(encoding="utf-8")
    assert "Loading data from a (MemoryDataset)" in written and "rows ready" in written
    assert "RuntimeWarning: Mean of empty slice" in written
    assert console_filter.summary("logs/info.log") == (
        "1 warning(s) from libraries (1 RuntimeWarning) are in logs/info.log"
    )
    # the run's own process does not join (it routes the run's output already; without a
    # multiprocessing parent that started it, no process does)
    assert _spawned_worker_logs("x").startswith("joined=False")


def test_spawned_parallel_workers_run_the_projects_hooks(
    clean_root: logging.Logger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``KEDRO_MP_CONTEXT=spawn`` (macOS's default): Kedro bootstraps the project in a
    worker only when ``PACKAGE_NAME`` is set there, which it never is in a fresh
    interpreter, so the workers ran every node with no project hook (no ``Node ... done
    in`` line). The package, imported by the worker when it unpickles its node, now points
    the worker's settings at the project's; the hooks' node line reaches the run's log file
    (the console filter passes it too)."""
    from kedro.framework.hooks.manager import _create_hook_manager
    from kedro.io import MemoryDataset, SharedMemoryDataCatalog
    from kedro.pipeline import Node, Pipeline
    from kedro.runner import ParallelRunner

    monkeypatch.setenv("KEDRO_MP_CONTEXT", "spawn")
    hold_startup_warnings().release()
    clean_root.handlers[:] = [PlainConsoleHandler(io.StringIO())]
    clean_root.setLevel(logging.INFO)
    _, log_file = configure_run_logging(tmp_path)
    pipeline = Pipeline([Node(mean_of_nothing, "a", "o0", name="m0", tags=["study"])])
    catalog = SharedMemoryDataCatalog({"a": MemoryDataset(1)})
    ParallelRunner(max_workers=1).run(pipeline, catalog, _create_hook_manager())
    written = log_file.read_text(encoding="utf-8")
    assert re.search(r"Node m0 done in \d+\.\d s \(study\)", written), written[-2000:]


def _log_from_fork(log_file: str, n: int) -> None:
    """In a forked worker: write ``n`` lines through the inherited run log handler."""
    log = logging.getLogger("cxr_spurious.worker")
    for i in range(n):
        log.info("worker line %03d %s", i, "x" * 60)
    for handler in logging.getLogger().handlers:
        handler.flush()


def test_only_the_runs_process_rotates_the_log_file(
    clean_root: logging.Logger, tmp_path: Path
) -> None:
    """Each process rotating the shared file on its own count renamed it under the others
    (and overwrote info.log.1): a forked worker past the size limit does not rotate, the
    run's process does, and the worker's next line goes to the new file."""
    import multiprocessing

    from cxr_spurious.logging_filters import RunLogFileHandler

    log_file = tmp_path / "info.log"
    handler = RunLogFileHandler(log_file, owner=os.getpid(), max_bytes=2_000, backups=3)
    handler.setFormatter(logging.Formatter("%(message)s"))
    clean_root.handlers[:] = [handler]
    clean_root.setLevel(logging.INFO)
    worker = multiprocessing.get_context("fork").Process(
        target=_log_from_fork, args=(str(log_file), 60)
    )
    worker.start()
    worker.join(30)
    assert worker.exitcode == 0
    assert not (tmp_path / "info.log.1").exists()  # 60 lines of ~80 bytes, not rotated
    assert log_file.read_text().count("worker line") == 60
    log = logging.getLogger("cxr_spurious.run")
    log.info("run line %s", "y" * 60)  # the owner: past 2,000 bytes, rotates first
    assert (tmp_path / "info.log.1").read_text().count("worker line") == 60
    assert log_file.read_text().count("run line") == 1
    # a worker holding the renamed file reopens the current one
    stale = RunLogFileHandler(log_file, owner=os.getpid() + 1, max_bytes=2_000)
    stale.setFormatter(logging.Formatter("%(message)s"))
    log.info("second run line")  # (owner's handler)
    os.replace(log_file, tmp_path / "info.log.9")  # rotated under the stale handler
    stale.emit(logging.LogRecord("w", logging.INFO, __file__, 1, "after rotation", None, None))
    stale.close()
    assert "after rotation" in log_file.read_text()
    assert "after rotation" not in (tmp_path / "info.log.9").read_text()
    handler.close()
