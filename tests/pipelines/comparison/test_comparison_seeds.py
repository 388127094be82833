"""The comparison over seeds: one set of namespaces per seed, the study's seed unchanged,
each other seed's training and resampling seeds, and the build-time parameters."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from cxr_spurious import hooks
from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.comparison import pipeline as comparison
from cxr_spurious.pipelines.comparison.pipeline import (
    DFR,
    ERM,
    JTT,
    RESAMPLED,
    TRAINED,
    VARIANTS,
    comparison_seeds,
    create_pipeline,
    create_study_seed_pipeline,
    seed_namespace,
)
from cxr_spurious.pipelines.training.nodes import resolve_config
from cxr_spurious.variants import STUDY_MODELS


def _build(monkeypatch, seeds: list[int], study_seed: int = 0):
    params = {"training": {"seed": study_seed}, "comparison": {"seeds": seeds}}
    monkeypatch.setattr(comparison, "comparison_parameters", lambda: params)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = create_pipeline()
    assert not [w for w in caught if "is interrupted" in str(w.message)]
    return pipe


def _node(pipe, name: str):
    found = [n for n in pipe.nodes if n.name == name]
    assert len(found) == 1, f"{name}: {len(found)} nodes"
    return found[0]


def _run(node) -> dict[str, Any]:
    return node.run({})


def test_one_namespace_per_variant_and_seed(monkeypatch) -> None:
    pipe = _build(monkeypatch, [0, 1, 2])
    namespaces = {n.namespace for n in pipe.nodes if n.namespace}
    study = {*TRAINED, DFR}
    retrained = {f"cmp_{m}" for m in STUDY_MODELS} | study
    headline = {f"headline_s{s}" for s in (1, 2)}  # each seed's build_headline_table node
    assert namespaces == study | headline | {f"{v}_s{s}" for v in retrained for s in (1, 2)}
    assert seed_namespace(ERM, 1, 0) == "cmp_erm_s1" and seed_namespace(JTT, 2, 0) == "cmp_jtt_s2"
    assert seed_namespace(JTT, 0, 0) == JTT and seed_namespace("box", 0, 0) == "box"
    # the study's erm / box / seg are never trained by the comparison (seed 0 reuses them)
    assert not any(n.namespace in STUDY_MODELS for n in pipe.nodes)
    outputs = pipe.all_outputs()
    assert {"headline_table", "headline_table_s1", "headline_table_s2"} <= outputs
    assert {"headline_table_seeds", "headline_paired_differences"} <= pipe.outputs()
    assert "headline_table_per_seed" in outputs
    stack = _node(pipe, "stack_seed_tables")
    assert stack.inputs == ["headline_table", "headline_table_s1", "headline_table_s2"]
    headline = _node(pipe, "headline_s1.build_headline_table")
    assert headline.inputs == [f"{seed_namespace(v, 1, 0)}.model_summary" for v in VARIANTS]


def test_the_study_seed_is_todays_pipeline(monkeypatch) -> None:
    today = create_study_seed_pipeline()
    pipe = _build(monkeypatch, [0, 1])
    by_name = {n.name: n for n in pipe.nodes}
    for node in today.nodes:  # every node, with its inputs and outputs, unchanged
        assert node.name in by_name, node.name
        assert by_name[node.name].inputs == node.inputs, node.name
        assert by_name[node.name].outputs == node.outputs, node.name
    assert _node(pipe, "build_headline_table").outputs == ["headline_table"]
    assert _node(pipe, "cmp_upsample.resample_train_rows").inputs[5] == (
        "params:comparison.debiasing.seed"
    )
    config = _node(pipe, "cmp_jtt.resolve_config")
    assert config.inputs == ["params:training", "params:comparison.training_variants.cmp_jtt"]
    # one seed only: today's pipeline and the collectors
    only = _build(monkeypatch, [0])
    assert {n.name for n in only.nodes} == {n.name for n in today.nodes} | {
        "stack_seed_tables",
        "summarise_headline_seeds",
    }


def test_another_seed_sets_the_training_and_resampling_seeds(monkeypatch) -> None:
    pipe = _build(monkeypatch, [0, 1])
    training = {"seed": 0, "tasks": ["Pneumothorax"], "epochs": 5, "variants": {}}
    for variant in TRAINED:
        name = f"{variant}_s1"
        node = _node(pipe, f"{name}.resolve_config")
        block = f"params:comparison.training_variants.{variant}"
        assert node.inputs == ["params:training", block, f"{name}.seed_overrides"]
        overrides = _run(_node(pipe, f"{name}.seed_overrides"))[f"{name}.seed_overrides"]
        assert overrides == {"variant": {"seed": 1, "name": name}}
        cfg = resolve_config(
            training, {"name": variant, "supervision": "erm", "seed": 0}, overrides
        )
        assert cfg["seed"] == 1 and cfg["variant"] == name
        assert _node(pipe, f"{name}.prepare_training_table").inputs[0] == (
            f"{name}.resampled_manifest"
        )
    for variant in RESAMPLED:
        name = f"{variant}_s1"
        resample = _node(pipe, f"{name}.resample_train_rows")
        assert f"{name}.resampling_seed" in resample.inputs
        assert "params:comparison.debiasing.seed" not in resample.inputs
        assert _run(_node(pipe, f"{name}.resampling_seed")) == {f"{name}.resampling_seed": 1}
    # JTT and cluster features come from the retrained erm of the same seed
    assert "cmp_erm_s1.predictions" in _node(pipe, "cmp_jtt_s1.upweight_erm_errors").inputs
    cluster = _node(pipe, "cmp_cluster_downsample_s1.resample_train_rows")
    assert "cmp_erm_s1.embeddings" in cluster.inputs
    dfr = _node(pipe, "cmp_dfr_s1.refit_last_layer")
    assert "cmp_erm_s1.embeddings" in dfr.inputs and dfr.func.keywords == {"seed": 1}
    assert dfr.outputs == [
        "cmp_dfr_s1.predictions",
        "cmp_dfr_s1.dfr_embeddings",
        "cmp_dfr_s1.dfr_held_out_val",
    ]
    # DFR's operating point is chosen on the validation rows it was not fitted on
    choose = _node(pipe, "cmp_dfr_s1.choose_operating_points")
    assert choose.inputs[-1] == "cmp_dfr_s1.dfr_held_out_val"
    # the study's models, retrained from their own blocks on the study's resampled manifest
    for model in STUDY_MODELS:
        name = f"cmp_{model}_s1"
        node = _node(pipe, f"{name}.resolve_config")
        assert node.inputs[1] == f"params:training.variants.{model}"
        assert _node(pipe, f"{name}.prepare_training_table").inputs[0] == "resampled_manifest"
        overrides = _run(_node(pipe, f"{name}.seed_overrides"))[f"{name}.seed_overrides"]
        assert overrides == {"variant": {"seed": 1, "name": name}}
        assert f"{name}.model_summary" in pipe.all_outputs()


def test_the_study_seed_may_be_another_one(monkeypatch) -> None:
    pipe = _build(monkeypatch, [0, 1], study_seed=1)
    assert _node(pipe, "stack_seed_tables").inputs == ["headline_table_s0", "headline_table"]
    assert "cmp_jtt_s0.seed_overrides" in pipe.all_outputs()
    assert not any(n.namespace == "cmp_jtt_s1" for n in pipe.nodes)


@pytest.mark.parametrize(
    ("seeds", "study", "message"),
    [
        ([1, 2], 0, "must contain training.seed"),
        ([0, 1, 1], 0, "seeds repeat"),
        ([0, -1], 0, r"comparison\.seeds\[1\]'.*must be an integer in \[0, 4294967295\]"),
        ([0, True], 0, r"comparison\.seeds\[1\]'.*must be an integer in \[0, 4294967295\]"),
        ("0,1", 0, "non-empty list"),
        ([], 0, "non-empty list"),
        ([0], "0", "training.seed"),
    ],
)
def test_bad_seeds_name_the_key(seeds: Any, study: Any, message: str) -> None:
    with pytest.raises(ParameterError, match=message):
        comparison_seeds({"training": {"seed": study}, "comparison": {"seeds": seeds}})


def test_a_debiasing_seed_shared_with_another_seed_is_refused() -> None:
    # training.seed 1 with conf/base's comparison.debiasing.seed 0: the study's seed (1)
    # would resample with seed 0, as the namespaces of seed 0 do
    def params(debiasing_seed: int) -> dict:
        return {
            "training": {"seed": 1},
            "comparison": {"seeds": [0, 1], "debiasing": {"seed": debiasing_seed}},
        }

    with pytest.raises(ParameterError, match="comparison.debiasing.seed") as err:
        comparison_seeds(params(0))
    assert "same draws" in str(err.value)
    assert comparison_seeds(params(1)) == ([0, 1], 1)  # the study's own seed
    assert comparison_seeds(params(7)) == ([0, 1], 1)  # a seed no other namespace uses


def test_seeds_come_from_the_sessions_parameters_else_conf_base(monkeypatch) -> None:
    monkeypatch.setattr(hooks, "_PARAMS", None)
    monkeypatch.setattr(hooks, "_SWEEP_PARAMS", None)
    base_seeds, base_study = comparison_seeds(comparison.comparison_parameters())
    assert base_seeds == [0, 1, 2] and base_study == 0

    class _Loader(dict):
        pass

    class _Context:  # the session's parameters, --params overrides included
        config_loader = _Loader(
            parameters={"training": {"seed": 0}, "comparison": {"seeds": [0, 4]}, "sweep": {}}
        )

    hooks.SweepParamsHook().after_context_created(_Context())
    assert comparison_seeds(comparison.comparison_parameters()) == ([0, 4], 0)
    pipe = create_pipeline()
    assert any(n.namespace == "cmp_jtt_s4" for n in pipe.nodes)
    assert not any(n.namespace == "cmp_jtt_s1" for n in pipe.nodes)
    assert hooks.stashed_sweep_params() == {}


def test_dfr_outputs_are_on_disk_so_its_robustness_can_resume(monkeypatch) -> None:
    """``--from-nodes`` after ``refit_last_layer`` loads what it wrote: every output of the
    DFR nodes (every seed) resolves to a file dataset in ``conf/base``'s catalog, not to a
    memory dataset that a resumed run would not have."""
    from kedro.io import DataCatalog, MemoryDataset
    from tests.framework.test_catalog_overwrite import _catalog

    pipe = _build(monkeypatch, [0, 1])
    dfr_nodes = [n for n in pipe.nodes if n.name.endswith("refit_last_layer")]
    assert len(dfr_nodes) == 2  # one per seed
    catalog = DataCatalog.from_config(_catalog("base"))
    outputs = [name for node in dfr_nodes for name in node.outputs]
    assert "cmp_dfr_s1.dfr_held_out_val" in outputs and "cmp_dfr.dfr_embeddings" in outputs
    for name in outputs:
        dataset = catalog.get(name)
        assert dataset is not None and not isinstance(dataset, MemoryDataset), name
        assert "data/07_model_output/" in str(dataset), name
