"""cxr-spurious: measure and reduce shortcut learning in chest X-ray classifiers."""

__version__ = "0.1.0"
