"""``kedro run`` on output that is not a terminal: a user's mistake is one message, a bug
keeps its traceback; both tracebacks are in ``logs/info.log``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.conftest import kedro_env

from cxr_spurious.cli import USER_ERRORS, one_line, user_error
from cxr_spurious.errors import (
    ContractError,
    CxrSpuriousError,
    DataFormatError,
    ParameterError,
    StaleOutputError,
)
from cxr_spurious.stats.bootstrap import BootstrapDropError

MESSAGE = (
    "parameter 'ingestion.phantom.n_images': must be at least 19 so that train, val and test "
    "each get a patient (split_fractions {'train': 0.59, 'val': 0.16, 'test': 0.25}, up to 3 "
    "studies per patient); got 3"
)

# A genuine bug: the first node's helper raises KeyError (patched before the pipelines load).
BUGGY_RUN = """
import sys
import cxr_spurious.pipelines.ingestion.nodes as nodes
def broken(*args, **kwargs):
    raise KeyError("genuine bug in check_phantom_size")
nodes.check_phantom_size = broken
from kedro.framework.cli import main
sys.argv = ["kedro", "run", "--pipelines", "ingestion", "--env", "test"]
main()
"""


def _run(project: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = kedro_env()
    env.pop("COLUMNS", None)  # rich then wraps at 80 columns, as in a CI log or a pipe
    return subprocess.run(
        [sys.executable, *argv],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.integration
def test_a_bad_parameter_is_one_line_without_traceback(kedro_project: Path) -> None:
    proc = _run(
        kedro_project,
        "-m",
        "kedro",
        "run",
        "--pipelines",
        "ingestion",
        "--env",
        "test",
        "--params",
        "ingestion.phantom.n_images=3",
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert f"Error: {MESSAGE}" in proc.stderr.splitlines(), proc.stderr
    assert "(ParameterError; the full traceback is in logs/info.log)" in proc.stderr
    assert "Traceback" not in out and "╭" not in out  # no plain nor rich traceback
    log = (kedro_project / "logs" / "info.log").read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in log
    assert f"The run stopped: {MESSAGE}" in log
    assert "raise ParameterError(" in log and "check_phantom_size" in log


@pytest.mark.integration
def test_a_genuine_bug_keeps_its_traceback(kedro_project: Path) -> None:
    proc = _run(kedro_project, "-c", BUGGY_RUN)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "KeyError" in proc.stderr and "genuine bug in check_phantom_size" in proc.stderr
    assert "the full traceback is in" not in out
    log = (kedro_project / "logs" / "info.log").read_text(encoding="utf-8")
    assert "The run failed with an unexpected error" in log
    assert "Traceback (most recent call last)" in log and "KeyError" in log


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ParameterError("a.b", "must be > 0"), True),
        (DataFormatError("labels.csv", "missing column 'x'", where="row 3"), True),
        (BootstrapDropError("too many undefined replicates"), True),
        (CxrSpuriousError("unknown architecture 'x'; valid names are: a, b"), True),
        (StaleOutputError("seg.model_summary describes an earlier training"), True),
        (ContractError("table lacks column 'image_id'"), False),
        (KeyError("x"), False),
        (ValueError("Failed to find the pipeline named 'trainin'. Did you mean: training"), True),
        (ValueError("Pipeline does not contain nodes named ['nope']."), True),
        (ValueError("Pipeline does not contain datasets named ['x']"), True),
        (ValueError("Pipeline contains no nodes after applying all provided filters."), True),
        (ValueError("could not convert string to float: 'x'"), False),
    ],
)
def test_which_errors_are_a_users_mistake(exc: Exception, expected: bool) -> None:
    assert (user_error(exc) is exc) is expected
    assert set(USER_ERRORS) >= {
        ParameterError,
        DataFormatError,
        BootstrapDropError,
        StaleOutputError,
    }


def test_a_mistake_wrapped_by_kedro_is_found_and_flattened() -> None:
    from kedro.io.core import DatasetError

    inner = DataFormatError("images/a.png", "polygon 0 has 2 point(s)\n  need at least 3")
    try:
        try:
            raise inner
        except DataFormatError as exc:
            raise DatasetError("Failed while loading data from dataset X") from exc
    except DatasetError as outer:
        assert user_error(outer) is inner
    assert one_line(inner) == "images/a.png: polygon 0 has 2 point(s) need at least 3"


def test_a_bug_raised_while_a_mistake_is_handled_is_a_bug() -> None:
    # Kedro's session calls ``on_pipeline_error`` inside ``except``: a hook failing there has
    # the user's mistake as its ``__context__`` only, and must keep its own traceback.
    try:
        try:
            raise ParameterError("training.lr", "must be > 0, got -1")
        except ParameterError:
            raise KeyError("genuine bug in a hook")  # noqa: B904 (the shape under test)
    except KeyError as bug:
        assert isinstance(bug.__context__, ParameterError) and bug.__cause__ is None
        assert user_error(bug) is None


def test_a_mistake_inside_a_wrapper_without_from_is_found() -> None:
    # kedro-mlflow raises ``DatasetError(err)`` inside ``except`` (no ``from``).
    from kedro.io.core import DatasetError

    inner = DataFormatError("model.pt", "not a checkpoint")
    try:
        try:
            raise inner
        except DataFormatError as exc:
            raise DatasetError(str(exc))  # noqa: B904 (the shape under test)
    except DatasetError as outer:
        assert user_error(outer) is inner


def test_a_refused_env_in_credentials_is_one_line(tmp_path: Path) -> None:
    # omegaconf re-raises a resolver's error with ``__cause__`` cleared: the ParameterError
    # is only the ``__context__`` of its InterpolationResolutionError.
    from omegaconf.errors import OmegaConfBaseException

    from cxr_spurious.settings import CONFIG_LOADER_ARGS, ProjectConfigLoader

    (tmp_path / "base").mkdir()
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "credentials.yml").write_text("db:\n  pw: ${env:HOME}\n")
    loader = ProjectConfigLoader(str(tmp_path), **CONFIG_LOADER_ARGS)
    with pytest.raises(OmegaConfBaseException) as info:
        loader["credentials"]
    assert info.value.__cause__ is None
    mistake = user_error(info.value)
    assert isinstance(mistake, ParameterError) and mistake.key == "env:HOME"


def test_the_console_keeps_the_traceback_of_a_failing_error_hook(
    tmp_path: Path, clean_root: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    from click.testing import CliRunner

    import cxr_spurious.cli as cli

    def session_run(**kwargs: object) -> None:  # the shape of KedroSession.run
        try:
            raise ParameterError("training.lr", "must be > 0, got -1")
        except Exception as error:
            _failing_on_pipeline_error(error)
            raise

    fake = types.SimpleNamespace(callback=session_run, params=[], help="")
    monkeypatch.setattr(cli, "kedro_run", fake)
    result = CliRunner().invoke(cli.run, [], obj=types.SimpleNamespace(project_path=tmp_path))
    assert isinstance(result.exception, AttributeError), result.output
    assert "Error: parameter 'training.lr'" not in result.output
    log = (tmp_path / "logs" / "info.log").read_text(encoding="utf-8")
    assert "The run failed with an unexpected error" in log and "AttributeError" in log


def _failing_on_pipeline_error(error: Exception) -> None:
    """A hook's ``on_pipeline_error`` with a bug of its own."""
    run = None
    run.info  # type: ignore[attr-defined]  # noqa: B018
