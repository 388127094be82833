"""The one recipe for per-variant pipelines (``cxr_spurious.pipelines._recipe``) and the
registered pipelines built with it: no interrupted namespace, node names = functions,
one catalog placeholder."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
from kedro.framework.project import configure_project
from kedro.pipeline import Node, Pipeline
from kedro.pipeline.pipeline import PipelineError

from cxr_spurious.pipeline_registry import OVERVIEW_NODES, OVERVIEW_TAG, register_pipelines
from cxr_spurious.pipelines._recipe import per_variant, variant_datasets

REPO = Path(__file__).resolve().parents[2]
INTERRUPTED = "is interrupted"


def _echo(x: object, variant: object = None) -> object:
    return x


def _collect(*xs: object) -> list[object]:
    return list(xs)


def _template() -> Pipeline:
    return Pipeline(
        [
            Node(_echo, {"x": "model", "variant": "params:variant"}, "scores", name="score"),
            Node(_echo, {"x": "scores", "variant": "params:stage.seed"}, "report", name="report"),
        ]
    )


def _built(build) -> tuple[object, list[str]]:
    """``build()`` and the messages of the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = build()
    return result, [str(w.message) for w in caught]


def test_per_variant_namespaces_datasets_and_maps_the_variant_block() -> None:
    pipe = per_variant(_template(), ["a", "b"])
    assert {n.name for n in pipe.nodes} == {"a.score", "a.report", "b.score", "b.report"}
    assert pipe.inputs() == {
        "a.model",
        "b.model",
        "params:training.variants.a",
        "params:training.variants.b",
        "params:stage.seed",
    }
    assert pipe.outputs() == {"a.report", "b.report"}
    other = per_variant(_template(), ["c"], variant_blocks="params:comparison.training_variants")
    assert "params:comparison.training_variants.c" in other.inputs()


def test_per_variant_shared_inputs_and_parameter_maps() -> None:
    shared = per_variant(_template(), ["a"], shared_inputs={"model": "erm.model"})
    assert "erm.model" in shared.inputs() and "a.model" not in shared.inputs()
    kept = per_variant(_template(), ["a"], shared_inputs=["model"])
    assert "model" in kept.inputs()
    per_name = per_variant(
        _template(),
        ["a", "b"],
        parameters=lambda name: {"params:stage.seed": f"params:{name}.seed"},
    )
    assert {"params:a.seed", "params:b.seed"} <= per_name.inputs()
    fixed = per_variant(_template(), ["a"], parameters={"params:stage.seed": "params:other.seed"})
    assert "params:other.seed" in fixed.inputs()


def test_per_variant_refuses_no_repeated_or_unknown_names() -> None:
    with pytest.raises(ValueError, match="distinct variant names"):
        per_variant(_template(), [])
    with pytest.raises(ValueError, match=r"distinct variant names; got \['a', 'a'\]"):
        per_variant(_template(), ["a", "a"])
    with pytest.raises(PipelineError, match="image_cache"):
        per_variant(_template(), ["a"], shared_inputs=["image_cache"])


def test_a_per_variant_stage_after_a_collector_needs_its_group() -> None:
    """Why the study passes ``group``: variant -> collector -> the same variant again
    interrupts the variant's namespace; under ``<group>.<variant>`` it does not, and the
    datasets keep their ``<variant>.`` names."""
    names = ["a", "b"]
    collector = Pipeline(
        [Node(_collect, variant_datasets(names, "report"), "everything", name="collect")]
    )
    after = Pipeline([Node(_echo, {"x": "everything", "variant": "scores"}, "row", name="row")])

    def build(group: str | None) -> Pipeline:
        later = per_variant(after, names, shared_inputs=["everything"], group=group)
        return per_variant(_template(), names) + collector + later

    _, messages = _built(lambda: build(None))
    assert any(f"Namespace 'a' {INTERRUPTED}" in m for m in messages), messages
    pipe, messages = _built(lambda: build("later"))
    assert not [m for m in messages if INTERRUPTED in m]
    row = next(n for n in pipe.nodes if n.name == "later.a.row")
    assert row.namespace == "later.a" and row.inputs == ["everything", "a.scores"]
    assert row.outputs == ["a.row"]


@pytest.fixture(scope="module")
def registered() -> tuple[dict[str, Pipeline], list[str]]:
    """The project's registered pipelines (``kedro run``'s).

    Returned with the warnings that building them raised.
    """
    configure_project("cxr_spurious")
    return _built(register_pipelines)


def test_registered_pipelines_have_no_interrupted_namespace(registered) -> None:
    pipelines, messages = registered
    assert {"__default__", "training", "saliency", "robustness", "study", "comparison"} <= set(
        pipelines
    )
    assert not [m for m in messages if INTERRUPTED in m], messages
    # the study's rows sit under study.<model>, next to the training / saliency namespaces
    study = {n.namespace for n in pipelines["study"].nodes if n.namespace}
    assert study and all(ns.startswith("study.") for ns in study)


def test_the_overview_nodes_are_nodes_of_the_full_default_pipeline(registered) -> None:
    pipelines, _ = registered
    default = {n.name: n for n in pipelines["__default__"].nodes}
    assert set(OVERVIEW_NODES) <= set(default), sorted(set(OVERVIEW_NODES) - set(default))
    tagged = {name for name, n in default.items() if OVERVIEW_TAG in n.tags}
    assert tagged == set(OVERVIEW_NODES)


def test_registering_only_the_requested_pipelines_works() -> None:
    """``kedro run --pipeline ingestion`` loads only that pipeline (Kedro 1.7)."""
    from kedro.framework.project import pipelines as project_pipelines

    configure_project("cxr_spurious")
    project_pipelines.set_requested(["ingestion"])
    try:
        loaded = dict(project_pipelines)
    finally:
        project_pipelines.set_requested(None)
    assert "ingestion" in loaded and loaded["__default__"].nodes


def test_every_node_is_named_after_the_function_it_runs(registered) -> None:
    pipelines, _ = registered
    differ = sorted(
        {
            f"{n.name} runs {n.func.__name__}"
            for pipe in pipelines.values()
            for n in pipe.nodes
            if n.name.rsplit(".", 1)[-1] != n.func.__name__
        }
    )
    assert not differ, differ


def test_the_catalog_namespace_placeholder_is_variant() -> None:
    placeholders = {
        f"{path.name}: {{{name}}}"
        for path in sorted((REPO / "conf").rglob("catalog*.yml"))
        for name in re.findall(r"\{(\w+)\}", path.read_text())
        if name != "variant"
    }
    assert not placeholders, placeholders


def test_a_requested_pipeline_without_a_folder_is_a_key_error_not_a_failed_import() -> None:
    """Kedro 1.7's ``find_pipelines`` raises ImportError (no cause) for a requested name with
    no folder; one that exists and fails to import keeps its ImportError and its cause."""
    from cxr_spurious.pipeline_registry import _missing_pipeline

    missing = ImportError(
        "An error occurred while importing the 'cxr_spurious.pipelines.trainin' module."
    )
    assert _missing_pipeline(missing) == "trainin"
    existing = ImportError(
        "An error occurred while importing the 'cxr_spurious.pipelines.training' module."
    )
    assert _missing_pipeline(existing) is None
    try:
        try:
            raise SyntaxError("bad line")
        except SyntaxError as cause:
            raise ImportError(
                "An error occurred while importing the 'cxr_spurious.pipelines.trainin' module."
            ) from cause
    except ImportError as broken:
        assert _missing_pipeline(broken) is None
    assert _missing_pipeline(ImportError("No module named 'foo'")) is None
