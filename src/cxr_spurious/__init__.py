"""cxr-spurious: measure and reduce shortcut learning in chest X-ray classifiers."""

from cxr_spurious.logging_filters import hold_startup_warnings, join_run_logging

__version__ = "0.1.0"


def _join_run_settings() -> None:
    """Point Kedro's settings at this project's in a worker process that has none, so that
    the worker registers the project's hooks (``settings.HOOKS``: the node lines; the
    plugins ``DISABLE_HOOKS_FOR_PLUGINS`` turns off stay off).

    A ``ParallelRunner`` worker started by spawn / forkserver (``KEDRO_MP_CONTEXT=spawn``;
    macOS's default) bootstraps the project only when ``kedro.framework.project.
    PACKAGE_NAME`` is set in the worker, which it never is in a fresh interpreter, so its
    nodes ran without the project's hooks. Setting ``PACKAGE_NAME`` here would not do: Kedro
    then re-applies its logging settings object to itself and recurses without end
    (Kedro 1.7, ``Task._bootstrap_subprocess(PACKAGE_NAME, LOGGING)``). Only the settings
    module is set; logging was joined by ``join_run_logging``.
    """
    from kedro.framework import project

    if project.PACKAGE_NAME is None:
        project.settings.configure(f"{__name__}.settings")


# Kedro imports this package before it loads its plugins; kedro-mlflow's warns then, before
# any command has set up the console (see ``logging_filters.STARTUP_WARNINGS``).
hold_startup_warnings()
# A worker process a run started with ``spawn`` / ``forkserver`` imports this package when
# it unpickles its first node: it joins the run's logging and the project's settings here
# (a no-op in every other process).
if join_run_logging():
    _join_run_settings()
