"""Wiring of the ``comparison`` pipeline (``kedro run --pipeline comparison``).

On the same data and seed as the default study: ERM without resampling and the
spatial-specificity models are the study's own ``erm``, ``box`` and ``seg`` (trained and
evaluated by ``kedro run``: same data, seed and configuration, so they are not trained
twice); then one ERM per resampling strategy (debiasing template namespaced
``cmp_<strategy>`` feeding the training template in the same namespace), Group DRO on the
debiasing groups, JTT (upweights ``erm``'s train errors) and DFR (last layer refit on
``erm``'s embeddings, no training). Each new variant gets the robustness template; DFR's
chooses its operating point on the validation patients DFR was not fitted on
(``cmp_dfr.dfr_held_out_val``, the template's ``operating_rows``), every other on all of val;
``headline_table`` stacks every variant's summary. Since ``erm``, ``box`` and ``seg`` come
from the last ``kedro run`` while every ``cmp_*`` variant trains under this run's
parameters, ``check_study_models`` first compares the training configuration each study
model's ``test_metrics`` records with the one this run's ``training`` parameters give it,
and stops the run naming the keys that differ (or saying the record is missing: models
trained before it was recorded); ``headline_table`` and ``erm``'s predictions and
embeddings (through ``gate_study_erm``) wait for it. Trained variants log one MLflow child
run each through the training template's ``<variant>.mlflow_run``. Every template is
instantiated with the one recipe (``cxr_spurious.pipelines._recipe.per_variant``), one
namespace per variant, so the debiasing, training and robustness catalog patterns
(``"{variant}.<dataset>"``) place its outputs.

Seeds (``comparison.seeds``, read when the pipeline is built: this session's parameters
stashed by ``hooks.SweepParamsHook``, ``--params`` included, else ``conf/base``): the seed
``training.seed`` is the above, unchanged. Every other seed ``s`` repeats it in namespaces
``seed_namespace(variant, s)`` (``cmp_jtt_s1``; the study's models retrained as
``cmp_erm_s1``, ``cmp_box_s1``, ``cmp_seg_s1``; DFR refit on ``cmp_erm_s1``), with the same
templates; a ``seed_overrides`` node sets ``training.seed`` (and the variant's name) through
the training template's ``overrides``, a ``resampling_seed`` node the debiasing seed, and
DFR's seed is ``s``. ``headline_table_s<s>`` is that seed's headline table; the collectors
stack every seed (``headline_table_per_seed``) and summarise across seeds
(``headline_table_seeds``, ``headline_paired_differences``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kedro.pipeline import Node, Pipeline

from cxr_spurious.errors import ParameterError
from cxr_spurious.hooks import base_parameters, stashed_parameters
from cxr_spurious.pipelines._recipe import (
    bind,
    per_variant,
    template_parameters,
    variant_datasets,
)
from cxr_spurious.pipelines.comparison import nodes
from cxr_spurious.pipelines.debiasing.pipeline import (
    create_debiasing_template,
    parameter_keys,
    with_parameter_keys,
)
from cxr_spurious.pipelines.robustness.pipeline import create_robustness_template
from cxr_spurious.pipelines.training.pipeline import create_training_template
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.variants import STUDY_MODELS

C = "params:comparison"
# Resampling variants: namespace -> cluster features ("thumbnails" or ERM "embeddings").
RESAMPLED: dict[str, str] = {
    "cmp_upsample": "thumbnails",
    "cmp_downsample": "thumbnails",
    "cmp_group_balance": "thumbnails",
    "cmp_cluster_downsample": "embeddings",
    "cmp_augment_upsample": "thumbnails",
    "cmp_reweight": "thumbnails",
    "cmp_group_dro": "thumbnails",
}
# The study's image-label model (one of variants.STUDY_MODELS), reused as ERM without
# resampling; the study's other models (box, seg) close the table.
ERM = "erm"
JTT = "cmp_jtt"
DFR = "cmp_dfr"
TRAINED: tuple[str, ...] = (*RESAMPLED, JTT)
VARIANTS: tuple[str, ...] = (ERM, *TRAINED, DFR, *(m for m in STUDY_MODELS if m != ERM))
SHARED_INPUTS: dict[str, str] = {"manifest": "manifest", "image_cache": "image_cache"}
# What the study's models read (their resampled manifest is the study's debiasing output).
STUDY_INPUTS: dict[str, str] = {**SHARED_INPUTS, "resampled_manifest": "resampled_manifest"}
# check_study_models's result: the study's models were trained under this run's parameters.
STUDY_CHECK = "study_models_check"
# check_study_summaries's result: the study's robustness summaries use this run's settings.
SUMMARY_CHECK = "study_summaries_check"
# What the debiasing templates read from the study's ERM (cluster features, JTT's errors):
# erm.embeddings and erm.predictions passed on once the check passed (gate_study_erm).
FROM_ERM: dict[str, str] = {
    "embeddings": "checked_erm_embeddings",
    "erm_predictions": "checked_erm_predictions",
}
PER_VARIANT_DEBIASING: frozenset[str] = frozenset({"strategy", "target"})
# The comparison.debiasing keys DFR reads.
DFR_DEBIASING_KEYS: tuple[str, ...] = ("tasks", "group_by", "age_bins", "seed")
# DFR's validation rows it was not fitted on (``<dfr namespace>.dfr_held_out_val``): its
# robustness instance chooses the operating point on them, every other variant on all of val.
DFR_HELD_OUT = "dfr_held_out_val"


def _debias_params(template: Pipeline) -> Callable[[str], dict[str, str]]:
    """Shared settings from ``comparison.debiasing``; strategy and target per variant."""
    keys = [p.removeprefix("params:debiasing.") for p in template_parameters(template)]

    def for_variant(variant: str) -> dict[str, str]:
        return {
            f"params:debiasing.{key}": f"{C}.strategies.{variant}.{key}"
            if key in PER_VARIANT_DEBIASING
            else f"{C}.debiasing.{key}"
            for key in keys
        }

    return for_variant


def _shared(template: Pipeline, links: Mapping[str, str]) -> dict[str, str]:
    """The template's inputs that ``links`` names (the others are the variant's own)."""
    return {name: links[name] for name in sorted(template.inputs()) if name in links}


def _debiasing(variants: list[str], features: str, *, jtt: bool = False) -> Pipeline:
    template = create_debiasing_template(features, jtt=jtt)  # type: ignore[arg-type]
    shared = _shared(template, {**SHARED_INPUTS, **FROM_ERM})
    params = _debias_params(template)
    # one instance per variant: its errors name the variant's own keys
    # (comparison.strategies.<variant>.strategy), not the default pipeline's debiasing.*
    return sum(
        (
            per_variant(
                create_debiasing_template(
                    features,  # type: ignore[arg-type]
                    jtt=jtt,
                    keys=parameter_keys(params(variant)),
                ),
                [variant],
                shared_inputs=shared,
                parameters=params(variant),
            )
            for variant in variants
        ),
        start=Pipeline([]),
    )


def _dfr_function(**bound: Any) -> Callable[..., Any]:
    """``refit_last_layer`` (with ``bound`` arguments) whose errors name the comparison's
    keys (``comparison.debiasing.<k>``, ``comparison.dfr_c``)."""
    keys = {f"debiasing.{k}": f"comparison.debiasing.{k}" for k in DFR_DEBIASING_KEYS}
    return with_parameter_keys(
        nodes.refit_last_layer, {**keys, "debiasing.dfr_c": "comparison.dfr_c"}, **bound
    )


def comparison_parameters() -> dict[str, Any]:
    """Every parameter of this session (``hooks.stashed_parameters``), else of ``conf/base``."""
    stashed = stashed_parameters()
    return stashed if stashed is not None else base_parameters()


def comparison_seeds(params: Mapping[str, Any]) -> tuple[list[int], int]:
    """``comparison.seeds`` and the study's seed ``training.seed`` (one of them), checked.

    Raises:
        ParameterError: naming the key and what was expected.
    """
    study = check_seed((params.get("training") or {}).get("seed", 0), "training.seed")
    raw = (params.get("comparison") or {}).get("seeds", [study])
    if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
        raise ParameterError("comparison.seeds", f"must be a non-empty list of seeds, got {raw!r}")
    raw = [check_seed(s, f"comparison.seeds[{i}]") for i, s in enumerate(raw)]
    if len(set(raw)) != len(raw):
        raise ParameterError("comparison.seeds", f"seeds repeat in {list(raw)}")
    if study not in raw:
        raise ParameterError(
            "comparison.seeds",
            f"must contain training.seed ({study}), the seed of the study's erm, box and seg "
            f"that the comparison reuses; got {list(raw)}",
        )
    # the study's seed resamples (and fits DFR) with comparison.debiasing.seed, every other
    # seed s with s: a debiasing seed equal to another seed of the list would give two
    # "seeds" the same resampling draws
    debiasing = ((params.get("comparison") or {}).get("debiasing") or {}).get("seed", study)
    debiasing = check_seed(debiasing, "comparison.debiasing.seed")
    if debiasing != study and debiasing in raw:
        raise ParameterError(
            "comparison.debiasing.seed",
            f"is {debiasing}, which is also a seed of comparison.seeds {list(raw)}: seeds "
            f"{study} (training.seed, the study's) and {debiasing} would resample and fit DFR "
            f"with the same draws; set comparison.debiasing.seed to {study} (training.seed) "
            "or to a value outside comparison.seeds",
        )
    return list(raw), study


def seed_namespace(variant: str, seed: int, study_seed: int) -> str:
    """The namespace of ``variant`` on ``seed``: the variant itself on the study's seed, else
    ``<variant>_s<seed>`` (``cmp_jtt_s1``; the study's models ``cmp_<model>_s<seed>``, so a
    retrained ``erm`` never takes the study's catalog entries)."""
    if seed == study_seed:
        return variant
    base = variant if variant.startswith("cmp_") else f"cmp_{variant}"
    return f"{base}_s{seed}"


def headline_seed_table(seed: int, study_seed: int) -> str:
    """The headline table of one seed: ``headline_table`` on the study's seed."""
    return "headline_table" if seed == study_seed else f"headline_table_s{seed}"


def create_study_model_check() -> Pipeline:
    """``check_study_models`` (the study's models against this run's ``training``) and
    ``gate_study_erm`` (``erm``'s outputs, passed on once it passed)."""
    tags = ["comparison", "check"]
    return Pipeline(
        [
            Node(
                func=nodes.check_study_models,
                inputs={
                    "training": "params:training",
                    **STUDY_INPUTS,
                    **{m: f"{m}.test_metrics" for m in STUDY_MODELS},
                },
                outputs=STUDY_CHECK,
                name="check_study_models",
                tags=tags,
            ),
            Node(
                func=nodes.gate_study_erm,
                inputs={
                    "study_check": STUDY_CHECK,
                    "predictions": f"{ERM}.predictions",
                    "embeddings": f"{ERM}.embeddings",
                },
                outputs=[FROM_ERM["erm_predictions"], FROM_ERM["embeddings"]],
                name="gate_study_erm",
                tags=tags,
            ),
            Node(
                func=nodes.check_study_summaries,
                inputs={
                    "robustness": "params:robustness",
                    "study_check": STUDY_CHECK,
                    **{m: f"{m}.model_summary" for m in STUDY_MODELS},
                },
                outputs=SUMMARY_CHECK,
                name="check_study_summaries",
                tags=tags,
            ),
        ]
    )


def create_study_seed_pipeline() -> Pipeline:
    """Every comparison variant on the study's seed, its robustness and ``headline_table``.

    The study's models are reused here: ``create_study_model_check`` checks them first, and
    ``headline_table`` and every input read from ``erm`` wait for the check.
    """
    by_features = {
        f: [v for v, g in RESAMPLED.items() if g == f] for f in ("thumbnails", "embeddings")
    }
    debiasing = sum(
        (_debiasing(variants, features) for features, variants in by_features.items()),
        start=_debiasing([JTT], "thumbnails", jtt=True),
    )
    # resampled_manifest is each variant's own: <variant>.resampled_manifest from debiasing.
    training = per_variant(
        create_training_template(),
        TRAINED,
        shared_inputs=SHARED_INPUTS,
        variant_blocks=f"{C}.training_variants",
    )
    dfr = Node(
        func=_dfr_function(),
        inputs={
            "manifest": "manifest",
            "embeddings": FROM_ERM["embeddings"],
            "tasks": f"{C}.debiasing.tasks",
            "group_by": f"{C}.debiasing.group_by",
            "age_bins": f"{C}.debiasing.age_bins",
            "c": f"{C}.dfr_c",
            "seed": f"{C}.debiasing.seed",
        },
        outputs=[f"{DFR}.predictions", f"{DFR}.dfr_embeddings", f"{DFR}.{DFR_HELD_OUT}"],
        name="refit_last_layer",
        tags=["comparison", "dfr"],
    )
    robustness = per_variant(
        create_robustness_template(), TRAINED, shared_inputs=SHARED_INPUTS
    ) + per_variant(
        create_robustness_template(operating_rows=DFR_HELD_OUT, model_digest=False),
        [DFR],
        shared_inputs={**SHARED_INPUTS, "embeddings": f"{DFR}.dfr_embeddings"},
    )
    headline = Node(
        func=nodes.build_headline_table,
        inputs={
            "study_check": STUDY_CHECK,
            "summary_check": SUMMARY_CHECK,
            **dict(zip(VARIANTS, variant_datasets(VARIANTS, "model_summary"), strict=True)),
        },
        outputs="headline_table",
        name="build_headline_table",
        tags=["comparison", "summary"],
    )
    return (
        create_study_model_check()
        + debiasing
        + training
        + Pipeline([dfr])
        + robustness
        + Pipeline([headline])
    )


def _seed_nodes(seed: int, name: str, *, resampling: bool) -> Pipeline:
    """The un-namespaced nodes that set one variant's seed (and name) on ``seed``."""
    tags = ["comparison", "seeds"]
    made = [
        Node(
            bind(nodes.seed_overrides, seed=seed, name=name),
            None,
            "seed_overrides",
            name="seed_overrides",
            tags=tags,
        )
    ]
    if resampling:
        made.append(
            Node(
                bind(nodes.resampling_seed, seed=seed),
                None,
                "resampling_seed",
                name="resampling_seed",
                tags=tags,
            )
        )
    return Pipeline(made)


def _trained_on_seed(variant: str, seed: int, study_seed: int) -> Pipeline:
    """``variant`` (a ``TRAINED`` one) on ``seed``: its seed nodes, debiasing and training."""
    name = seed_namespace(variant, seed, study_seed)
    erm = seed_namespace(ERM, seed, study_seed)
    features = RESAMPLED.get(variant, "thumbnails")
    debiasing = create_debiasing_template(
        features,  # type: ignore[arg-type]
        jtt=variant == JTT,
        seed="resampling_seed",
    )
    params = _debias_params(debiasing)(variant)
    debiasing = create_debiasing_template(
        features,  # type: ignore[arg-type]
        jtt=variant == JTT,
        seed="resampling_seed",
        keys=parameter_keys(params),
    )
    links = {
        **SHARED_INPUTS,
        "embeddings": f"{erm}.embeddings",
        "erm_predictions": f"{erm}.predictions",
    }
    # three instances in one namespace (the debiasing template's ``embeddings`` input is
    # ERM's, the training template's output is the variant's own)
    return (
        per_variant(
            _seed_nodes(seed, name, resampling="resampling_seed" in debiasing.inputs()), [name]
        )
        + per_variant(
            debiasing,
            [name],
            shared_inputs=_shared(debiasing, links),
            parameters=params,
        )
        + per_variant(
            create_training_template(overrides="seed_overrides"),
            [name],
            shared_inputs=SHARED_INPUTS,
            parameters={"params:variant": f"{C}.training_variants.{variant}"},
        )
    )


def _study_model_on_seed(model: str, seed: int, study_seed: int) -> Pipeline:
    """A study model (``training.variants.<model>``) retrained on ``seed``."""
    name = seed_namespace(model, seed, study_seed)
    template = _seed_nodes(seed, name, resampling=False) + create_training_template(
        overrides="seed_overrides"
    )
    return per_variant(
        template,
        [name],
        shared_inputs=_shared(template, STUDY_INPUTS),
        parameters={"params:variant": f"params:training.variants.{model}"},
    )


def create_seed_pipeline(seed: int, study_seed: int) -> Pipeline:
    """Every variant on a seed other than the study's, its robustness and its headline table
    (``headline_table_s<seed>``)."""
    if seed == study_seed:
        raise ValueError(f"seed {seed} is the study's seed: create_study_seed_pipeline builds it")

    def ns(variant: str) -> str:
        return seed_namespace(variant, seed, study_seed)

    study_models = list(STUDY_MODELS)
    trained = sum(
        (_trained_on_seed(v, seed, study_seed) for v in TRAINED),
        start=sum(
            (_study_model_on_seed(m, seed, study_seed) for m in study_models),
            start=Pipeline([]),
        ),
    )
    dfr = Node(
        func=_dfr_function(seed=seed),
        inputs={
            "manifest": "manifest",
            "embeddings": f"{ns(ERM)}.embeddings",
            "tasks": f"{C}.debiasing.tasks",
            "group_by": f"{C}.debiasing.group_by",
            "age_bins": f"{C}.debiasing.age_bins",
            "c": f"{C}.dfr_c",
        },
        outputs=[
            f"{ns(DFR)}.predictions",
            f"{ns(DFR)}.dfr_embeddings",
            f"{ns(DFR)}.{DFR_HELD_OUT}",
        ],
        name="refit_last_layer",
        namespace=ns(DFR),
        tags=["comparison", "dfr"],
    )
    robustness = per_variant(
        create_robustness_template(),
        [ns(v) for v in (*study_models, *TRAINED)],
        shared_inputs=SHARED_INPUTS,
    ) + per_variant(
        create_robustness_template(operating_rows=DFR_HELD_OUT, model_digest=False),
        [ns(DFR)],
        shared_inputs={**SHARED_INPUTS, "embeddings": f"{ns(DFR)}.dfr_embeddings"},
    )
    headline = Node(
        func=nodes.build_headline_table,
        inputs={v: f"{ns(v)}.model_summary" for v in VARIANTS},
        outputs=headline_seed_table(seed, study_seed),
        name="build_headline_table",
        namespace=f"headline_s{seed}",  # one node name per seed: headline_s1.build_headline_table
        tags=["comparison", "summary"],
    )
    return trained + Pipeline([dfr]) + robustness + Pipeline([headline])


def create_collectors(seeds: Sequence[int], study_seed: int) -> Pipeline:
    """Every seed's headline table stacked, and the across-seed summaries."""
    return Pipeline(
        [
            Node(
                func=nodes.stack_seed_tables,
                inputs={f"s{s}": headline_seed_table(s, study_seed) for s in seeds},
                outputs="headline_table_per_seed",
                name="stack_seed_tables",
                tags=["comparison", "summary"],
            ),
            Node(
                func=nodes.summarise_headline_seeds,
                inputs=[
                    "headline_table_per_seed",
                    f"{C}.ci_level",
                    f"{C}.multiplicity",
                ],
                outputs=["headline_table_seeds", "headline_paired_differences"],
                name="summarise_headline_seeds",
                tags=["comparison", "summary"],
            ),
        ]
    )


def create_pipeline(**kwargs: object) -> Pipeline:
    """Every comparison variant on every seed of ``comparison.seeds``, and the summaries."""
    seeds, study_seed = comparison_seeds(comparison_parameters())
    others = [create_seed_pipeline(s, study_seed) for s in seeds if s != study_seed]
    return sum(others, start=create_study_seed_pipeline()) + create_collectors(seeds, study_seed)
