"""Structure of the comparison pipeline: variants, inputs, parameters and catalog entries."""

from __future__ import annotations

from pathlib import Path

import pytest
from kedro.config import OmegaConfigLoader

from cxr_spurious.pipelines.comparison.pipeline import (
    DFR,
    ERM,
    FROM_ERM,
    JTT,
    RESAMPLED,
    STUDY_CHECK,
    SUMMARY_CHECK,
    VARIANTS,
    create_pipeline,
)
from cxr_spurious.variants import STUDY_MODELS

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pipeline():
    return create_pipeline()


def _params() -> dict:
    loader = OmegaConfigLoader(str(REPO / "conf"), base_env="base", default_run_env="base")
    return loader["parameters"]


def _lookup(params: dict, dotted: str) -> object:
    node: object = params
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, (
            f"parameter '{dotted}' is missing (at '{part}')"
        )
        node = node[part]
    return node


def test_every_parameter_input_is_configured(pipeline) -> None:
    params = _params()
    for name in pipeline.inputs():
        if name.startswith("params:"):
            _lookup(params, name.removeprefix("params:"))
    for variant in VARIANTS:
        if variant not in (DFR, *STUDY_MODELS):
            block = _lookup(params, f"comparison.training_variants.{variant}")
            assert block["name"] == variant


def test_variants_train_on_their_own_resampled_manifest(pipeline) -> None:
    free = pipeline.inputs()
    assert {"manifest", "image_cache"} <= free
    # The study's models are reused, not retrained: their outputs are the only free model inputs.
    assert {n for n in free if n.endswith((".predictions", ".embeddings", ".model_summary"))} == {
        "erm.predictions",
        "erm.embeddings",
        *(f"{m}.model_summary" for m in STUDY_MODELS),
    }
    assert not any(n.endswith(".resampled_manifest") for n in free)
    # the study's resampled manifest: checked against the study's models, and the rows the
    # study's models are retrained on at the other seeds
    readers = {n.name for n in pipeline.nodes if "resampled_manifest" in n.inputs}
    assert "check_study_models" in readers
    assert readers - {"check_study_models"} == {
        f"cmp_{m}_s{s}.prepare_training_table" for m in STUDY_MODELS for s in (1, 2)
    }
    for variant in (*RESAMPLED, JTT):
        node = next(n for n in pipeline.nodes if n.name == f"{variant}.prepare_training_table")
        assert f"{variant}.resampled_manifest" in node.inputs
    # erm's outputs reach JTT, cluster_downsample and DFR once check_study_models passed
    gate = next(n for n in pipeline.nodes if n.name == "gate_study_erm")
    assert gate.inputs == [STUDY_CHECK, "erm.predictions", "erm.embeddings"]
    assert gate.outputs == [FROM_ERM["erm_predictions"], FROM_ERM["embeddings"]]
    jtt = next(n for n in pipeline.nodes if n.name == f"{JTT}.upweight_erm_errors")
    assert FROM_ERM["erm_predictions"] in jtt.inputs
    cluster = next(
        n for n in pipeline.nodes if n.name == "cmp_cluster_downsample.resample_train_rows"
    )
    assert FROM_ERM["embeddings"] in cluster.inputs
    dfr = next(n for n in pipeline.nodes if n.name == "refit_last_layer")
    assert FROM_ERM["embeddings"] in dfr.inputs
    headline = next(n for n in pipeline.nodes if n.name == "build_headline_table")
    assert headline.inputs == [
        STUDY_CHECK,
        SUMMARY_CHECK,
        *(f"{v}.model_summary" for v in VARIANTS),
    ]
    assert headline.outputs == ["headline_table"]
    check = next(n for n in pipeline.nodes if n.name == "check_study_models")
    assert check.inputs == [
        "params:training",
        "manifest",
        "resampled_manifest",
        "image_cache",
        *(f"{m}.test_metrics" for m in STUDY_MODELS),
    ]
    summaries = next(n for n in pipeline.nodes if n.name == "check_study_summaries")
    # the summaries are checked against the models check_study_models passed (model_digest)
    assert summaries.inputs == [
        "params:robustness",
        STUDY_CHECK,
        *(f"{m}.model_summary" for m in STUDY_MODELS),
    ]
    assert summaries.outputs == [SUMMARY_CHECK]


def test_the_study_models_come_from_variants() -> None:
    # ERM without resampling is the study's erm; every study model closes the table once.
    assert ERM in STUDY_MODELS
    assert all(VARIANTS.count(m) == 1 for m in STUDY_MODELS) and VARIANTS[0] == ERM
    assert len(set(VARIANTS)) == len(VARIANTS)


def test_group_dro_variant_uses_group_dro_objective() -> None:
    block = _lookup(_params(), "comparison.training_variants.cmp_group_dro")
    assert block["objective"] == "group_dro"
    assert _lookup(_params(), "comparison.strategies.cmp_group_dro.strategy") == "none"


@pytest.mark.parametrize("epochs", [None, 20])
def test_every_comparison_variant_trains_like_erm_but_for_its_method(epochs) -> None:
    """A variant minus ``erm`` must compare training methods, not training lengths: every
    ``comparison.training_variants`` block resolves to ``erm``'s configuration except its
    name and objective, also under ``--params training.epochs=20``."""
    from cxr_spurious.training.config import resolve_training_config

    params = _params()
    shared = dict(params["training"])
    if epochs is not None:
        shared["epochs"] = epochs
    erm = resolve_training_config(shared, shared["variants"]["erm"])
    method_keys = {"variant", "objective", "objective_params"}
    for name, block in params["comparison"]["training_variants"].items():
        cfg = resolve_training_config(shared, block)
        differs = {k for k in cfg.keys() | erm.keys() if cfg.get(k) != erm.get(k)}
        assert differs <= method_keys, (name, {k: (cfg.get(k), erm.get(k)) for k in differs})
        assert cfg["epochs"] == shared["epochs"]
