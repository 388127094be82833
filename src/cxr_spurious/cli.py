"""Project CLI: Kedro's ``run`` command with a readable console and readable errors.

Kedro loads ``<package>.cli`` and lets its ``cli`` group replace built-in commands of the same
name (``kedro run`` and ``python -m cxr_spurious`` both use this ``run``). It takes exactly
Kedro's options and does Kedro's run, and in addition:

* routes logging (``logging_filters.configure_run_logging``): one line per node on the
  console, everything else (dataset loads, library warnings, tracebacks) in ``logs/info.log``;
* stops on a user's mistake (``USER_ERRORS``: bad data, a bad parameter, too few samples for
  a confidence interval, an unknown name; a ``--pipeline``, ``--nodes`` or other selection
  naming nothing that exists) with its message on one line and where the full
  traceback is, instead of a screenful of traceback. Any other exception is a bug: it keeps
  its traceback on the console (and in the log file), also when it was raised while a
  user's mistake was being handled (``user_error``);
* closes the MLflow runs still open when the run is interrupted (Ctrl-C) as KILLED: Kedro
  calls ``on_pipeline_error`` for exceptions only, so MLflow would record them as FINISHED.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from pathlib import Path
from typing import Any, cast

import click
from kedro.framework.cli.project import run as kedro_run
from kedro.framework.project import LOGGING
from kedro.io.core import DatasetError
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cxr_spurious.errors import (
    CxrSpuriousError,
    DataFormatError,
    ParameterError,
    StaleOutputError,
)
from cxr_spurious.logging_filters import configure_run_logging, configured_levels
from cxr_spurious.stats.bootstrap import BootstrapDropError

logger = logging.getLogger(__name__)

#: Errors a user causes and fixes (their message says what to change). ``CxrSpuriousError``
#: itself is an unknown name (``unknown_name_error`` without a parameter key).
#: ``StaleOutputError`` is an earlier run's output that this run cannot reuse (the message
#: names what to rerun). ``ContractError`` (a pipeline's output breaking its contract) and
#: ``WorkerError`` (a worker process died) are bugs to report, and keep their traceback.
USER_ERRORS: tuple[type[CxrSpuriousError], ...] = (
    DataFormatError,
    ParameterError,
    BootstrapDropError,
    StaleOutputError,
)


#: Exceptions that exist to wrap another one: Kedro's ``DatasetError`` around an error
#: raised while loading or saving a dataset (kedro-mlflow raises it inside ``except``, without
#: ``from``), omegaconf's errors around an error raised by a resolver (omegaconf clears
#: ``__cause__`` and leaves the resolver's error only as ``__context__``; e.g. a refused
#: ``${env:...}`` in ``credentials.yml``). The mistake behind them may be their ``__context__``.
WRAPPERS: tuple[type[BaseException], ...] = (DatasetError, OmegaConfBaseException)

#: How Kedro's ``ValueError`` begins for a run selection that names nothing that exists:
#: ``--pipeline`` (``KedroSession.run``, with its close matches), ``--nodes``, ``--namespaces``,
#: ``--from-inputs`` / ``--to-outputs``, and filters that leave no node (``Pipeline.filter``).
RUN_SELECTION_MISTAKES: tuple[str, ...] = (
    "Failed to find the pipeline named",
    "Pipeline does not contain nodes named",
    "Pipeline does not contain nodes with the following namespaces",
    "Pipeline does not contain datasets named",
    "Pipeline contains no nodes after applying all provided filters",
)


def _selection_mistake(exc: BaseException) -> bool:
    return type(exc) is ValueError and str(exc).startswith(RUN_SELECTION_MISTAKES)


def user_error(exc: BaseException) -> Exception | None:
    """The user's mistake behind ``exc`` (itself, or what it wraps), if any: one of
    ``USER_ERRORS``, or Kedro's error for a run selection naming nothing that exists
    (``RUN_SELECTION_MISTAKES``).

    Follows ``__cause__`` (``raise ... from``), and ``__context__`` only from ``WRAPPERS``.
    Any other exception raised while a user's mistake was being handled (e.g. a hook's
    ``on_pipeline_error`` failing inside Kedro's ``except``) is a bug of its own: None, so
    that its traceback is kept.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if (
            isinstance(current, USER_ERRORS)
            or type(current) is CxrSpuriousError
            or _selection_mistake(current)
        ):
            return current  # type: ignore[return-value]
        if current.__cause__ is not None:
            current = current.__cause__
        elif isinstance(current, WRAPPERS):
            current = current.__context__
        else:
            current = None
    return None


def one_line(message: object) -> str:
    """``message`` with its line breaks (and the indentation after them) turned into spaces."""
    return re.sub(r"\s*\n\s*", " ", str(message)).strip()


def _project_path(ctx: click.Context) -> Path:
    metadata = ctx.obj
    return Path(getattr(metadata, "project_path", None) or Path.cwd())


#: The characters after which a quote opens a quoted string inside a list or map value.
_QUOTE_OPENERS_NESTED = "[{,:"


def split_items(value: str) -> list[str]:
    """``--params`` split at the commas outside brackets, braces and quoted strings.

    A quote opens a quoted string only as the first non-blank character of an item's value
    (right after its first ``=``) or of an element of a list or map (after ``[``, ``{``,
    ``,`` or ``:`` inside brackets or braces), where OmegaConf reads one; elsewhere it is a
    character of the value.
    """
    items: list[str] = []
    current: list[str] = []
    depth, quote, previous = 0, "", ""
    for char in value:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'" and (
            (depth == 0 and previous == "=" and _first_equals(current))
            or (depth > 0 and previous != "" and previous in _QUOTE_OPENERS_NESTED)
        ):
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
        elif char == "," and depth == 0:
            items.append("".join(current))
            current, previous = [], ""
            continue
        current.append(char)
        if not char.isspace():
            previous = char
    items.append("".join(current))
    return items


def _first_equals(current: list[str]) -> bool:
    """Whether the last non-blank character of ``current`` is the item's first ``=``."""
    text = "".join(current).rstrip()
    return text.endswith("=") and text.index("=") == len(text) - 1


@click.group(name="cxr-spurious")
def cli() -> None:
    """Commands of the cxr-spurious project (they replace Kedro's of the same name)."""


def split_params(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``--params`` as Kedro reads it, but a comma inside ``[...]`` / ``{...}`` or quotes
    does not end an item: ``sweep.grid.seeds=[0,1,2],training.epochs=2`` is two items.

    Kedro 1.7 splits on every comma, so a list value (``[0,1]``) stopped the run before it
    started ("Item `1]` must contain a key and a value"). A quote opens a quoted string only
    where OmegaConf's grammar (which parses each value, ``OmegaConf.from_dotlist``) reads
    one: at the start of a value or of a list / map element; an apostrophe inside a word
    (``report.title=Saab's study``) is a character of the value (``split_items``).
    """
    if not value or isinstance(value, dict):
        return value or {}
    try:
        return params_from_text(str(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def params_from_text(value: str) -> dict[str, Any]:
    """``--params`` text (``a.b=1,c=[0,1]``) as a nested dict: items split by
    ``split_items``, values typed by OmegaConf's grammar (``OmegaConf.from_dotlist``).
    ``kedro run`` (``split_params``) and the ``torchrun`` entry point
    (``training.distributed``) read it alike.

    Raises:
        ValueError: an item without ``=`` or without a key.
    """
    dot_list = []
    for item in (i.strip() for i in split_items(value) if i.strip()):
        key, equals, val = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"item `{item}` must be a key and a value separated by `=`")
        dot_list.append(f"{key.strip()}={val}")
    return cast(dict[str, Any], OmegaConf.to_container(OmegaConf.from_dotlist(dot_list)))


def _run_params() -> list[click.Parameter]:
    """Kedro's ``run`` options, with ``--params`` read by ``split_params``."""
    params = []
    for option in kedro_run.params:
        if option.name == "params":
            option = copy.copy(option)
            option.callback = split_params
        params.append(option)
    return params


@cli.command(name="parameter-keys")
@click.option(
    "--conf",
    "conf",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="The configuration folder to read (default: the project's conf).",
)
def parameter_keys(conf: Path | None) -> None:
    """Write the parameter-key snapshot (parameter_keys.json) from the shipped configuration.

    Run it after adding a key that the code reads to conf/base or a shipped environment:
    every run checks its parameters against this snapshot, so a key that a shipped file
    holds but the snapshot does not is refused as a typo.
    """
    # imported here: parameter_schema imports torch, which other commands need not
    from cxr_spurious import parameter_schema
    from cxr_spurious.hooks import SOURCE_CONF

    source = conf or SOURCE_CONF
    written = parameter_schema.write_snapshot(source, parameter_schema.SNAPSHOT_PATH)
    click.echo(f"wrote {written} from {source}")


#: MLflow's switch for the run and experiment links it prints to stdout (``true``: off).
MLFLOW_QUIET_URLS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"


@cli.command(name="run", params=_run_params(), help=kedro_run.help)
@click.pass_context
def run(ctx: click.Context, **kwargs: Any) -> None:
    """Kedro's ``run`` with the project's logging and one-line errors for user mistakes."""
    project = _project_path(ctx)
    console_filter, log_file = configure_run_logging(project, configured_levels(LOGGING.data))
    # MLflow writes two lines of its own to stdout ("View run ... at: <url>", "View
    # experiment at: ...") for each run it ends on a tracking server; the project's log
    # lines name each run with its URL instead (``datasets.mlflow_run.run_url``)
    os.environ.setdefault(MLFLOW_QUIET_URLS, "true")
    shown = log_file.relative_to(project) if log_file.is_relative_to(project) else log_file

    def library_warnings() -> None:
        summary = console_filter.summary(shown)
        if summary:
            logger.info(summary)

    try:
        ctx.invoke(kedro_run.callback, **kwargs)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        from cxr_spurious.tracking import end_interrupted_runs

        for run_id in end_interrupted_runs():
            logger.warning("Interrupted: the MLflow run %s is closed as KILLED", run_id)
        raise
    except Exception as exc:
        library_warnings()
        mistake = user_error(exc)
        if mistake is None:
            logger.error(
                "The run failed with an unexpected error", exc_info=exc, extra={"console": False}
            )
            raise
        logger.error(
            "The run stopped: %s", one_line(mistake), exc_info=exc, extra={"console": False}
        )
        click.echo(f"Error: {one_line(mistake)}", err=True)
        click.echo(f"({type(mistake).__name__}; the full traceback is in {shown})", err=True)
        ctx.exit(1)
    library_warnings()
