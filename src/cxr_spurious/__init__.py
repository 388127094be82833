"""cxr-spurious: measure and reduce shortcut learning in chest X-ray classifiers."""

from cxr_spurious.logging_filters import hold_startup_warnings, join_run_logging

__version__ = "0.1.0"


def _join_run_project() -> None:
    """Configure this project in a worker process that has not configured one, so that
    Kedro registers the project's hooks there (``settings.HOOKS``: the node lines,
    the parameter and MLflow hooks). Kedro bootstraps the project in a ``ParallelRunner``
    worker only when the process-wide start method is spawn / forkserver (macOS), not when
    ``KEDRO_MP_CONTEXT`` asks for one on Linux, where the worker otherwise runs its nodes
    with no project hook. Logging, set up by ``join_run_logging``, is kept."""
    from kedro.framework import project

    if project.PACKAGE_NAME is None:
        project.configure_project(__name__, preserve_logging=True)


# Kedro imports this package before it loads its plugins; kedro-mlflow's warns then, before
# any command has set up the console (see ``logging_filters.STARTUP_WARNINGS``).
hold_startup_warnings()
# A worker process a run started with ``spawn`` / ``forkserver`` (ParallelRunner under
# KEDRO_MP_CONTEXT=spawn, or macOS's default) imports this package when it unpickles its
# first node: it joins the run's logging and the project here (a no-op in every other
# process); on macOS, where Kedro re-applies conf/logging.yml in such a worker, the
# project's WorkerLoggingHook joins the logging again before the first load.
if join_run_logging():
    _join_run_project()
