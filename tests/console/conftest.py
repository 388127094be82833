"""Fixtures of the console tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def clean_root() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level restored after the test (the tests install
    the run's console and file handlers)."""
    import os

    from cxr_spurious.logging_filters import RUN_LOGGING_ENV

    root = logging.getLogger()
    saved = (list(root.handlers), root.level, os.environ.get(RUN_LOGGING_ENV))
    yield root
    if saved[2] is None:  # configure_run_logging hands its set-up to workers through it
        os.environ.pop(RUN_LOGGING_ENV, None)
    else:
        os.environ[RUN_LOGGING_ENV] = saved[2]
    for handler in list(root.handlers):
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
