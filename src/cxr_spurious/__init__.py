"""cxr-spurious: measure and reduce shortcut learning in chest X-ray classifiers."""

from cxr_spurious.logging_filters import hold_startup_warnings, join_run_logging

__version__ = "0.1.0"

# Kedro imports this package before it loads its plugins; kedro-mlflow's warns then, before
# any command has set up the console (see ``logging_filters.STARTUP_WARNINGS``).
hold_startup_warnings()
# A worker process a run started with ``spawn`` / ``forkserver`` (ParallelRunner under
# KEDRO_MP_CONTEXT=spawn, which bootstraps no project hooks in its workers on Linux) imports
# this package when it unpickles its first node: it joins the run's logging here (a no-op
# in every other process); on macOS, where Kedro re-applies conf/logging.yml in such a
# worker, the project's WorkerLoggingHook joins again before the first load.
join_run_logging()
