"""What a ``kedro run`` prints on the console, and the log file that keeps everything else.

The console shows one line per node (``StageTimingHooks``), progress bars, the warnings that
need the user's attention (the project's own; Kedro's, MLflow's), and the stage summary.
Everything (every dataset load and save, every library warning, full tracebacks) is written
to the log file, ``logs/info.log`` under the project root.

Kedro 1.7 accepts only ``logging`` / ``kedro.logging`` classes in ``conf/logging.yml`` (and no
``()`` factories), so the console filter and the file handler cannot be named there; the
project's ``run`` command (``cli.py``) installs them with ``configure_run_logging`` before the
session starts. Levels per logger stay in ``conf/logging.yml``.

A record is kept off the console (and still written to the file) when:

* it carries ``extra={"console": False}`` (e.g. the traceback of a user's mistake);
* it is one of Kedro's per-dataset / per-node INFO lines (``CONSOLE_QUIET_INFO``);
* it is a Python warning (``py.warnings``) raised inside an installed library
  (``site-packages``, this package aside) or a deprecation notice: their count is printed at
  the end of the run instead (``ConsoleFilter.summary``). Worker processes forked by Kedro's
  ``ParallelRunner`` inherit the filter and the file handler; what they drop is counted in a
  tally file that the run's process reads back (``ConsoleFilter.share_with_workers``).
  Workers started by ``spawn`` / ``forkserver`` (``KEDRO_MP_CONTEXT``; Python's default on
  macOS) start with Kedro's logging from ``conf/logging.yml`` alone; they join the run's
  (the filter, the log file, the tally) through ``RUN_LOGGING_ENV`` when they import this
  package and again before their first dataset load (``join_run_logging``, called by the
  package's ``__init__`` and by ``hooks.WorkerLoggingHook``).

MLflow configures its own loggers when it is imported (``mlflow``, ``alembic``,
``sqlalchemy.engine``, ``huey``: a stderr handler of its own, level ``MLFLOW_LOGGING_LEVEL``
or INFO, no propagation), and kedro-mlflow imports it after Kedro has applied
``conf/logging.yml``: its records would bypass both the console filter and the log file,
and ``mlflow: WARNING`` there would have no effect (a fresh ``mlflow.db`` printed MLflow's
"Creating initial MLflow database tables..." in its own format). ``configure_run_logging``
takes those loggers back (``adopt_mlflow_loggers``): MLflow's handler removed, propagation
to the run's handlers, and the level that the logging configuration names for them
(``MLFLOW_LOGGING_LEVEL``, when set, wins, as MLflow documents it).

A few library warnings come earlier, while Kedro loads its plugins, before any ``kedro``
command has started (``STARTUP_WARNINGS``: MLflow's "Add type hints to the `predict`
method", raised when kedro-mlflow defines ``KedroPipelineModel``). The package's
``__init__`` installs ``hold_startup_warnings`` before any plugin is imported: those records
are held off the console, and ``configure_run_logging`` writes them to the log file (and
counts them in the summary). Other commands (``kedro registry list``, ``kedro viz run``)
have no log file; there they are dropped. Every other warning passes.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import multiprocessing
import os
import re
import sys
import tempfile
import weakref
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

#: The log file, relative to the project root.
LOG_FILE = Path("logs") / "info.log"

#: INFO lines kept off the console: (logger name prefix, message prefix).
CONSOLE_QUIET_INFO: tuple[tuple[str, str], ...] = (
    ("kedro.io.data_catalog", ""),  # "Loading data from ..." / "Saving data to ..."
    ("kedro.pipeline.node", "Running node:"),  # replaced by the hook's line with the time
    ("kedro.runner", "Completed "),  # "Completed node: x", "Completed 3 out of 9 tasks"
    ("cxr_spurious.runner", "Completed "),  # DaskRunner's: "Completed node: x (on <worker>)"
    ("kedro.runner", "Using synchronous mode"),
    ("kedro.validation", "No typed parameter requirements"),
    ("kedro_mlflow", "Registering new custom resolver"),
    ("kedro_mlflow", "Mlflow run '"),  # tracking.py logs the run's name for what ran
    ("kedro_mlflow", "The run '"),  # "... was closed because of an error" (once per run)
    # one per output of each variant that ``training.only`` leaves out (16 per variant)
    ("cxr_spurious.datasets.skippable", "Skipped saving "),
)

#: WARNING lines of libraries' loggers kept off the console (written to the log file and
#: counted in the end-of-run line): (logger name prefix, message prefix). Kedro 1.7's
#: parameter validation says, once per annotation, that it cannot validate a node argument
#: typed as a union (e.g. ``methods: list[str] | str | None``): the project's nodes check
#: those parameters themselves (``ParameterError`` naming the key). kedro-viz 12.5's run hook
#: says on every partial run (``--pipeline``, ``--nodes``, ...) and every non-sequential
#: runner that it records no run events for kedro-viz's workflow view: nothing is wrong.
CONSOLE_QUIET_WARNINGS: tuple[tuple[str, str], ...] = (
    ("kedro.validation", "Union type hint"),
    ("kedro_viz", "Workflow tracking is disabled"),
    # kedro-viz's dataset statistics hook in a worker started by spawn: it never saw the
    # catalog (after_catalog_created runs in the run's process), so each save warns
    ("kedro_viz", "[hook: after_dataset_saved] Unable to create statistics"),
)

#: Warning categories that never need a user's attention on the console.
QUIET_CATEGORIES = frozenset(
    {"DeprecationWarning", "PendingDeprecationWarning", "FutureWarning", "KedroDeprecationWarning"}
)

#: Warnings a library raises about a choice the project makes on purpose, reported at the
#: project's line (so not recognised as a library's by their path): (category, message start).
#: Kedro 1.7 warns once per process that "dataset names contain '.'" when a node reads a
#: namespaced dataset from outside its namespace; the project's collectors (study, report,
#: comparison, sweep summaries) read ``<model>.<dataset>`` outputs that way by design, so
#: that each model stays one collapsible namespace in kedro-viz (docs/ARCHITECTURE.md).
EXPECTED_LIBRARY_WARNINGS: tuple[tuple[str, str], ...] = (
    ("UserWarning", "One or more dataset names contain '.' characters"),
)

# ``logging.captureWarnings`` logs "path:line: Category: message\n  source line".
_WARNING_HEAD = re.compile(r"^(?P<path>.*?):(?P<line>\d+): (?P<category>\w+): ")
_LIBRARY_DIRS = ("site-packages", "dist-packages")

_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"


def warning_origin(record: logging.LogRecord) -> tuple[str, str] | None:
    """``(file path, warning category)`` of a ``py.warnings`` record, else None."""
    if record.name != "py.warnings":
        return None
    match = _WARNING_HEAD.match(record.getMessage())
    if match is None:
        return None
    return match.group("path"), match.group("category")


def is_library_warning(record: logging.LogRecord) -> bool:
    """A Python warning raised inside an installed package, or any deprecation notice."""
    origin = warning_origin(record)
    if origin is None:
        return False
    path, category = origin
    parts = Path(path).parts
    if category in QUIET_CATEGORIES:
        return True
    match = _WARNING_HEAD.match(record.getMessage())
    text = record.getMessage()[match.end() :] if match else ""
    if any(category == c and text.startswith(m) for c, m in EXPECTED_LIBRARY_WARNINGS):
        return True
    return "cxr_spurious" not in parts and any(d in parts for d in _LIBRARY_DIRS)


class ConsoleFilter(logging.Filter):
    """Keep per-dataset INFO lines, library warnings and file-only records off the console.

    Counts the library warnings it drops (per category) for the end-of-run summary: in
    ``dropped_warnings`` in the process that made it, and, once ``share_with_workers`` is
    called, in a tally file in the processes forked from it (``ParallelRunner``'s workers,
    whose copy of ``dropped_warnings`` is lost when they end).
    """

    def __init__(self) -> None:
        super().__init__()
        self.dropped_warnings: Counter[str] = Counter()
        self._pid = os.getpid()
        self._tally: Path | None = None

    @classmethod
    def counting_in(cls, tally: Path, owner_pid: int) -> ConsoleFilter:
        """A filter of a worker the run did not fork (``join_run_logging``): what it drops
        is counted in the run's tally file ``tally``, as a forked worker's copy does."""
        joined = cls()
        joined._tally, joined._pid = tally, owner_pid
        return joined

    def share_with_workers(self) -> Path:
        """Have forked worker processes count what they drop in a tally file; idempotent.

        Returns:
            The tally file (one category per line, appended by the workers; removed when
            this filter is garbage-collected or the process exits).
        """
        if self._tally is None:
            fd, name = tempfile.mkstemp(prefix="cxr-spurious-warnings-", suffix=".txt")
            os.close(fd)
            self._tally = Path(name)
            weakref.finalize(self, _remove_tally, self._tally, self._pid)
        return self._tally

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", True) is False:
            return False
        if record.levelno == logging.INFO and _quiet_info(record):
            return False
        if is_library_warning(record):
            origin = warning_origin(record)
            self._count(origin[1] if origin else "Warning")
            return False
        if record.levelno == logging.WARNING and _quiet(record, CONSOLE_QUIET_WARNINGS):
            self._count(record.name.split(".")[0])
            return False
        return True

    def _count(self, kind: str) -> None:
        """Count a dropped warning here, or in the tally file from a forked worker."""
        if self._tally is not None and os.getpid() != self._pid:
            try:
                # one short line per write on a file opened for appending: workers that
                # write at the same time do not interleave
                with self._tally.open("a", encoding="utf-8") as tally:
                    tally.write(kind + "\n")
                return
            except OSError:
                pass  # counted in this worker's copy only (lost with it)
        self.dropped_warnings[kind] += 1

    def counts(self) -> Counter[str]:
        """The dropped library warnings per category, this process's and its workers'."""
        total = Counter(self.dropped_warnings)
        if self._tally is not None and os.getpid() == self._pid:
            try:
                lines = self._tally.read_text(encoding="utf-8").splitlines()
            except OSError:
                lines = []
            total.update(line for line in lines if line)
        return total

    def summary(self, log_file: Path | str) -> str | None:
        """One line naming how many library warnings went to the log file only (None: none)."""
        counts = self.counts()
        total = sum(counts.values())
        if not total:
            return None
        kinds = ", ".join(f"{n} {cat}" for cat, n in counts.most_common())
        return f"{total} warning(s) from libraries ({kinds}) are in {Path(log_file).as_posix()}"


def _remove_tally(path: Path, owner_pid: int) -> None:
    """Remove a ``ConsoleFilter``'s tally file, from the process that made it only."""
    if os.getpid() == owner_pid:
        path.unlink(missing_ok=True)


#: Library warnings raised while Kedro loads its plugins, before a command starts: (folder
#: of the library in the warning's path, text of its message). They are about a plugin's
#: code, not the project's.
STARTUP_WARNINGS: tuple[tuple[str, str], ...] = (
    # kedro-mlflow 2.0's ``KedroPipelineModel.predict`` has no type hints (MLflow 3 checks).
    ("mlflow", "Add type hints to the `predict` method"),
)


def is_startup_warning(record: logging.LogRecord) -> bool:
    """A ``py.warnings`` record of ``STARTUP_WARNINGS`` raised inside an installed library."""
    origin = warning_origin(record)
    if origin is None:
        return False
    parts = Path(origin[0]).parts
    if not any(d in parts for d in _LIBRARY_DIRS):
        return False
    message = record.getMessage()
    return any(lib in parts and text in message for lib, text in STARTUP_WARNINGS)


class StartupWarningHold(logging.Filter):
    """Filter of the ``py.warnings`` logger: holds ``STARTUP_WARNINGS`` records back (off
    every handler) until ``configure_run_logging`` writes them to the log file."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if is_startup_warning(record):
            self.held.append(record)
            return False
        return True

    def release(self) -> list[logging.LogRecord]:
        """The held records, in order; the hold is emptied."""
        held, self.held = self.held, []
        return held


_STARTUP_HOLD = StartupWarningHold()


def hold_startup_warnings() -> StartupWarningHold:
    """Install the (one) ``StartupWarningHold`` on the ``py.warnings`` logger; idempotent.

    A filter on the logger, not on a handler: Kedro re-applies ``conf/logging.yml`` (new
    root handlers) after the project's package is imported, and leaves this logger's filters.
    """
    logger = logging.getLogger("py.warnings")
    if _STARTUP_HOLD not in logger.filters:
        logger.addFilter(_STARTUP_HOLD)
    return _STARTUP_HOLD


def _release_startup_warnings(file_handler: logging.Handler, console_filter: ConsoleFilter) -> None:
    """Write the held startup warnings to ``file_handler``, count them for the summary, and
    stop holding: from now on the console filter keeps them off the console."""
    logging.getLogger("py.warnings").removeFilter(_STARTUP_HOLD)
    for record in _STARTUP_HOLD.release():
        file_handler.handle(record)
        origin = warning_origin(record)
        console_filter.dropped_warnings[origin[1] if origin else "Warning"] += 1


def _quiet_info(record: logging.LogRecord) -> bool:
    return _quiet(record, CONSOLE_QUIET_INFO)


def _quiet(record: logging.LogRecord, rules: tuple[tuple[str, str], ...]) -> bool:
    """Whether a (logger name prefix, message prefix) rule matches the record."""
    message: str | None = None
    for logger_prefix, message_prefix in rules:
        if record.name == logger_prefix or record.name.startswith(logger_prefix + "."):
            if message is None:
                message = str(record.msg)
                # a worker's record forwarded by DaskRunner: "[node] " before its message
                forwarded = getattr(record, "forwarded_from", "")
                if forwarded and message.startswith(forwarded):
                    message = message[len(forwarded) :]
            if message.startswith(message_prefix):
                return True
    return False


class PlainConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Console handler for output that is not a terminal (a file, a pipe, CI logs).

    One record, one line per line of its message: no wrapping at the console width (rich
    wraps at 80 columns when it cannot see a terminal, in the middle of words), no colours.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream if stream is not None else sys.stdout)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-8s %(message)s", "%H:%M:%S"))


def _is_console_handler(handler: logging.Handler) -> bool:
    if isinstance(handler, logging.FileHandler):
        return False
    if hasattr(handler, "console"):  # rich.logging.RichHandler (and Kedro's subclass)
        return True
    return isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) in (
        sys.stdout,
        sys.stderr,
        sys.__stdout__,
        sys.__stderr__,
    )


def _is_terminal(handler: logging.Handler) -> bool:
    console = getattr(handler, "console", None)
    if console is not None:
        return bool(console.is_terminal)
    stream = getattr(handler, "stream", None)
    return bool(stream is not None and hasattr(stream, "isatty") and stream.isatty())


#: The loggers MLflow configures for itself when it is imported (its own stderr handler,
#: no propagation): ``mlflow.utils.logging_utils._configure_mlflow_loggers``.
MLFLOW_OWN_LOGGERS: tuple[str, ...] = ("mlflow", "alembic", "sqlalchemy.engine", "huey")


def _is_mlflow_handler(handler: logging.Handler) -> bool:
    """Whether ``handler`` is the one MLflow installs on its loggers (MLflow's formatter)."""
    return type(handler.formatter).__name__ == "MlflowFormatter"


def adopt_mlflow_loggers(levels: Mapping[str, object] | None = None) -> dict[str, int]:
    """Route MLflow's self-configured loggers (``MLFLOW_OWN_LOGGERS``) like every other.

    Imports MLflow first (its import configures them; done later, it would undo this), then
    removes MLflow's own handler from each, lets its records propagate to the root's
    handlers (the console filter, the log file) and sets its level: ``MLFLOW_LOGGING_LEVEL``
    for ``mlflow`` when that variable is set, else ``levels[name]`` (the ``loggers``
    entries of the logging configuration, e.g. ``conf/logging.yml``'s ``mlflow: WARNING``),
    else the level MLflow gave it.

    Args:
        levels: Logger name -> level (a name such as ``"WARNING"`` or a number).

    Returns:
        The level each logger was set to.
    """
    import mlflow  # noqa: F401  (configures MLFLOW_OWN_LOGGERS on first import)

    levels = dict(levels or {})
    env_level = os.environ.get("MLFLOW_LOGGING_LEVEL", "").strip().upper()
    if env_level:
        levels["mlflow"] = env_level
    applied = {}
    for name in MLFLOW_OWN_LOGGERS:
        log = logging.getLogger(name)
        for handler in [h for h in log.handlers if _is_mlflow_handler(h)]:
            log.removeHandler(handler)
        log.propagate = True
        level = levels.get(name)
        if level is not None:
            log.setLevel(level.upper() if isinstance(level, str) else int(level))  # type: ignore[call-overload]
        applied[name] = log.level
    return applied


def configured_levels(config: Mapping[str, object] | None) -> dict[str, object]:
    """Logger name -> level of a logging configuration (``dictConfig`` schema, e.g. Kedro's
    ``LOGGING.data`` read from ``conf/logging.yml``): its ``loggers`` entries with a level."""
    loggers = (config or {}).get("loggers") or {}
    if not isinstance(loggers, Mapping):
        return {}
    return {
        str(name): entry["level"]
        for name, entry in loggers.items()
        if isinstance(entry, Mapping) and entry.get("level") is not None
    }


def configure_rank_logging(
    project_path: Path | str, rank: int, logger_levels: Mapping[str, object] | None = None
) -> tuple[ConsoleFilter, Path | None]:
    """Logging of one process of a ``torchrun`` group (``training.distributed``).

    Every rank prints plain lines (no wrapping; several processes share the terminal) that
    name the rank, ``HH:MM:SS [rank k] LEVEL message``, through the console filter. Rank 0
    is set up as ``kedro run`` is (``configure_run_logging``: its INFO lines, the log file
    ``logs/info.log``); the other ranks print warnings and errors only and write no log
    file (one writer per file), so each epoch's line is printed once.

    Returns:
        The rank's console filter and the log file (None on ranks other than 0).
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if _is_console_handler(h)]:
        root.removeHandler(handler)
    console = PlainConsoleHandler()
    console.setFormatter(
        logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)-8s %(message)s", "%H:%M:%S")
    )
    root.addHandler(console)
    if rank == 0:
        return configure_run_logging(project_path, logger_levels)
    console.setLevel(logging.WARNING)
    console_filter = ConsoleFilter()
    console.addFilter(console_filter)
    adopt_mlflow_loggers(logger_levels)
    return console_filter, None


#: Environment variable through which the run's process hands its logging set-up to worker
#: processes started by ``spawn`` / ``forkserver`` (``KEDRO_MP_CONTEXT``; Python's default
#: on macOS): JSON ``{"log_file", "tally", "pid", "levels"}`` (``join_run_logging``).
RUN_LOGGING_ENV = "CXR_SPURIOUS_RUN_LOGGING"


def configure_run_logging(
    project_path: Path | str = ".", logger_levels: Mapping[str, object] | None = None
) -> tuple[ConsoleFilter, Path]:
    """Route a run's output: a quiet console, everything in ``<project>/logs/info.log``.

    Idempotent: handlers and filters installed by an earlier call are replaced. MLflow's
    own loggers are taken back into that routing (``adopt_mlflow_loggers``). Worker
    processes forked from this one inherit it; workers started by ``spawn`` /
    ``forkserver`` join it through ``RUN_LOGGING_ENV`` (``join_run_logging``).

    Args:
        project_path: The project root (the log file goes under its ``logs/``).
        logger_levels: Logger name -> level from the logging configuration (its
            ``loggers`` section), for the loggers MLflow reconfigured after it was applied.

    Returns:
        The console filter (its ``summary`` names the library warnings dropped by this
        process and its worker processes) and the log file's path.
    """
    log_file = Path(project_path).resolve() / LOG_FILE
    log_file.parent.mkdir(parents=True, exist_ok=True)
    console_filter = ConsoleFilter()
    tally = console_filter.share_with_workers()
    _route(console_filter, log_file, logger_levels, owner=os.getpid())
    os.environ[RUN_LOGGING_ENV] = json.dumps(
        {
            "log_file": str(log_file),
            "tally": str(tally),
            "pid": os.getpid(),
            "levels": {str(k): v for k, v in (logger_levels or {}).items()},
        }
    )
    _release_startup_warnings(_run_file_handler(), console_filter)
    return console_filter, log_file


def join_run_logging() -> bool:
    """In a worker process started by ``spawn`` / ``forkserver``, route its output as the
    run's own (``configure_run_logging``): the console filter, whose dropped warnings are
    counted in the run's tally file, and the run's log file, appended to.

    Kedro's ``ParallelRunner`` configures such a worker's logging from ``conf/logging.yml``
    alone (every INFO line on the console, rich-wrapped; nothing in the log file); the
    project's hooks call this before a worker's first dataset load. A no-op outside a run
    (no ``RUN_LOGGING_ENV``) and in a process that already routes the run's output (the
    run's own, a forked worker).

    Returns:
        Whether this call set up the process's logging.
    """
    raw = os.environ.get(RUN_LOGGING_ENV)
    if not raw or _run_file_handler() is not None:
        return False
    try:
        shared = json.loads(raw)
        log_file, tally, owner = Path(shared["log_file"]), Path(shared["tally"]), int(shared["pid"])
    except (ValueError, KeyError, TypeError):
        return False
    parent = multiprocessing.parent_process()
    # only a worker the run's process started itself (the variable is inherited by any
    # process started later, e.g. by a test or a notebook, long after that run)
    if parent is None or parent.pid != owner or not log_file.parent.is_dir():
        return False
    _route(
        ConsoleFilter.counting_in(tally, owner), log_file, shared.get("levels") or {}, owner=owner
    )
    return True


def _run_file_handler() -> logging.Handler | None:
    """The root logger's run log file handler (``configure_run_logging``'s), if any."""
    for handler in logging.getLogger().handlers:
        if getattr(handler, "_cxr_run_logging", 0):
            return handler
    return None


class RunLogFileHandler(logging.handlers.RotatingFileHandler):
    """The run's log file, shared by the run's process and its worker processes.

    Only the run's own process (``owner``) rotates it (at ``max_bytes``, keeping
    ``backups`` old files). A worker (forked with a copy of this handler, or joined through
    ``RUN_LOGGING_ENV``) never rotates: each process rotating on its own count would rename
    the file under the others and overwrite ``info.log.1`` with another process's
    rotation, losing lines. Instead a worker reopens the file once the run's process has
    rotated it, so its lines land in the current file, not in the renamed one.
    """

    def __init__(
        self, filename: Path | str, *, owner: int, max_bytes: int = 20_000_000, backups: int = 3
    ) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        self.owner = owner

    def shouldRollover(self, record: logging.LogRecord) -> bool:  # noqa: N802 (logging's name)
        if os.getpid() == self.owner:
            return bool(super().shouldRollover(record))
        self._reopen_if_rotated()
        return False

    def _reopen_if_rotated(self) -> None:
        """Reopen the file when the name no longer points to the open one (rotated)."""
        if self.stream is None:
            return
        try:
            current = os.stat(self.baseFilename)
            rotated = not os.path.samestat(current, os.fstat(self.stream.fileno()))
        except OSError:  # renamed and not created again yet: create it
            rotated = True
        if rotated:
            self.stream.close()
            self.stream = self._open()


def _route(
    console_filter: ConsoleFilter,
    log_file: Path,
    logger_levels: Mapping[str, object] | None,
    *,
    owner: int,
) -> None:
    """Install ``console_filter`` on the root's console handlers (plain ones off a terminal)
    and a handler appending to ``log_file`` (replacing earlier ones; rotated by the run's
    process ``owner`` only, ``RunLogFileHandler``); adopt MLflow's loggers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler) and getattr(handler, "_cxr_run_logging", 0):
            root.removeHandler(handler)
            handler.close()
    for handler in list(root.handlers):
        if not _is_console_handler(handler):
            continue
        for old in [f for f in handler.filters if isinstance(f, ConsoleFilter)]:
            handler.removeFilter(old)
        if not _is_terminal(handler) and not isinstance(handler, PlainConsoleHandler):
            plain = PlainConsoleHandler(getattr(getattr(handler, "console", None), "file", None))
            plain.setLevel(handler.level)
            plain.addFilter(console_filter)
            root.removeHandler(handler)
            root.addHandler(plain)
        else:
            handler.addFilter(console_filter)
    file_handler = RunLogFileHandler(log_file, owner=owner)
    file_handler.setFormatter(logging.Formatter(_FORMAT))
    file_handler.setLevel(logging.INFO)
    file_handler._cxr_run_logging = True  # type: ignore[attr-defined]
    root.addHandler(file_handler)
    adopt_mlflow_loggers(logger_levels)
