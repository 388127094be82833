"""Project pipelines.

Each folder under ``pipelines/`` registers itself under its folder name (``ingestion``,
``debiasing``, ``training``, ``saliency``, ``localization``, ``regression``,
``robustness``, ``study``, ...). ``__default__`` is the end-to-end study: every stage except
the long headline ``comparison`` and the shortcut ``sweep``, which run on request
(``kedro run --pipeline comparison``, ``kedro run --pipeline sweep``).

Every node carries its stage's name as a tag (kedro-viz's tag filter, ``kedro run --tags
training``, the stage timings). The nodes of ``OVERVIEW_NODES`` also carry the tag
``overview``: the study's story in kedro-viz (``/?pid=__default__&tags=overview``), data
-> one collapsed box per model -> heatmaps -> localization -> findings. It is a view, not a
run selection: ``kedro run --tags overview`` lacks the inputs those nodes' neighbours make.

kedro-viz 12.5's plain address (``/``) always draws ``__default__`` unfiltered (tags and
element types come only from the URL), and draws every dataset a namespace writes that no
node inside it reads beside the collapsed box (kedro-org/kedro-viz#1817). ``__default__``
writes 41 datasets that no node reads, so no namespacing of its nodes draws it legibly: with
every stage in a namespace of its own it still draws 95 elements (139 now).
"""

from __future__ import annotations

import importlib.util
import re

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

from cxr_spurious.variants import STUDY_MODELS

# Pipelines that are registered but not part of the default end-to-end run.
NOT_IN_DEFAULT: frozenset[str] = frozenset({"comparison", "sweep"})

OVERVIEW_TAG = "overview"
# The nodes of the study's story (full names, namespaces included): one box per model, its
# heatmaps collected, localized against the lesion and the chest-tube outlines, the findings.
# kedro-viz shows a dataset when a node that reads or writes it is shown, and draws an edge
# through the nodes and datasets it hides; a model's box shows when one of its nodes does
# (`<model>.prepare_training_table`, which reads the resampled manifest).
OVERVIEW_NODES: tuple[str, ...] = (
    *(f"{model}.prepare_training_table" for model in STUDY_MODELS),
    "collect_heatmaps",
    "evaluate_heatmaps",
    "compile_findings",
)


def tag_overview(pipeline: Pipeline, names: frozenset[str]) -> Pipeline:
    """``pipeline`` with the tag ``overview`` added to the nodes named in ``names``."""
    return Pipeline(
        [node.tag(OVERVIEW_TAG) if node.name in names else node for node in pipeline.nodes]
    )


def _missing_pipeline(exc: ImportError) -> str | None:
    """The pipeline name of ``find_pipelines``' error for a requested name that has no
    folder under ``pipelines/`` (``kedro run --pipeline trainin``), else None (a pipeline
    module that exists and failed to import)."""
    match = re.search(r"'([\w.]+)\.pipelines\.(\w+)' module", str(exc))
    if exc.__cause__ is not None or match is None:
        return None
    module = f"{match.group(1)}.pipelines.{match.group(2)}"
    return match.group(2) if importlib.util.find_spec(module) is None else None


def register_pipelines() -> dict[str, Pipeline]:
    """Register the project's pipelines.

    Returns:
        A mapping from pipeline names to ``Pipeline`` objects.

    Kedro 1.7 may load only the pipelines a run asks for (``kedro run --pipeline
    ingestion``), so ``__default__`` can be partial here; that every name of
    ``OVERVIEW_NODES`` is a node of the full default pipeline is checked by
    ``tests/framework/test_pipeline_recipe.py``.
    """
    overview = frozenset(OVERVIEW_NODES)
    try:
        found = find_pipelines(raise_errors=True)
    except ImportError as exc:
        missing = _missing_pipeline(exc)
        if missing is None:
            raise
        # Kedro 1.7 reports a requested name without a folder as a failed import; a KeyError
        # lets ``KedroSession.run`` name the pipeline and suggest the close matches.
        raise KeyError(f"no pipeline named {missing!r}") from exc
    # The overview tag goes on every registered pipeline holding those nodes: kedro-viz keeps
    # the tags of a node from the first registered pipeline it reads the node from.
    pipelines = {
        name: tag_overview(pipeline.tag(name), overview) for name, pipeline in found.items()
    }
    pipelines["__default__"] = sum(
        (p for name, p in pipelines.items() if name not in NOT_IN_DEFAULT), start=Pipeline([])
    )
    return pipelines
