"""Project pipelines.

Each folder under ``pipelines/`` registers itself under its folder name (``ingestion``,
``debiasing``, ``training``, ``saliency``, ``localization``, ``regression``,
``robustness``, ``study``, ...). ``__default__`` is the end-to-end study: every stage except
the long headline ``comparison`` and the shortcut ``sweep``, which run on request
(``kedro run --pipeline comparison``, ``kedro run --pipeline sweep``).
"""

from __future__ import annotations

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# Pipelines that are registered but not part of the default end-to-end run.
NOT_IN_DEFAULT: frozenset[str] = frozenset({"comparison", "sweep"})


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.
    """
    # Every node carries its stage's name as a tag (`kedro run --tags training`, timings).
    pipelines = {
        name: pipeline.tag(name) for name, pipeline in find_pipelines(raise_errors=True).items()
    }
    pipelines["__default__"] = sum(
        (p for name, p in pipelines.items() if name not in NOT_IN_DEFAULT), start=Pipeline([])
    )
    return pipelines
