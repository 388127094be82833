"""cxr-spurious: measure and reduce shortcut learning in chest X-ray classifiers."""

from cxr_spurious.logging_filters import hold_startup_warnings

__version__ = "0.1.0"

# Kedro imports this package before it loads its plugins; kedro-mlflow's warns then, before
# any command has set up the console (see ``logging_filters.STARTUP_WARNINGS``).
hold_startup_warnings()
