"""Wiring of the ``comparison`` pipeline (``kedro run --pipeline comparison``).

On the same data and seed as the default study: ERM without resampling and the
spatial-specificity models are the study's own ``erm``, ``box`` and ``seg`` (trained and
evaluated by ``kedro run``: same data, seed and configuration, so they are not trained
twice); then one ERM per resampling strategy (debiasing template namespaced
``cmp_<strategy>`` feeding the training template in the same namespace), Group DRO on the
debiasing groups, JTT (upweights ``erm``'s train errors) and DFR (last layer refit on
``erm``'s embeddings, no training). Each new variant gets the robustness template;
``headline_table`` stacks every variant's summary. Trained variants log one MLflow child
run each through the training template's ``<variant>.mlflow_run``. Every template is
instantiated with the one recipe (``cxr_spurious.pipelines._recipe.per_variant``), one
namespace per variant, so the debiasing, training and robustness catalog patterns
(``"{variant}.<dataset>"``) place its outputs.
"""

from __future__ import annotations

from collections.abc import Callable

from kedro.pipeline import Node, Pipeline

from cxr_spurious.pipelines._recipe import per_variant, template_parameters, variant_datasets
from cxr_spurious.pipelines.comparison import nodes
from cxr_spurious.pipelines.debiasing.pipeline import create_debiasing_template
from cxr_spurious.pipelines.robustness.pipeline import create_robustness_template
from cxr_spurious.pipelines.training.pipeline import create_training_template
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
# What the debiasing templates read from the study's ERM (cluster features, JTT's errors).
FROM_ERM: dict[str, str] = {
    "embeddings": f"{ERM}.embeddings",
    "erm_predictions": f"{ERM}.predictions",
}
PER_VARIANT_DEBIASING: frozenset[str] = frozenset({"strategy", "target"})


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


def _debiasing(variants: list[str], features: str, *, jtt: bool = False) -> Pipeline:
    template = create_debiasing_template(features, jtt=jtt)  # type: ignore[arg-type]
    links = {**SHARED_INPUTS, **FROM_ERM}
    shared = {name: links[name] for name in sorted(template.inputs()) if name in links}
    return per_variant(
        template, variants, shared_inputs=shared, parameters=_debias_params(template)
    )


def create_pipeline(**kwargs: object) -> Pipeline:
    """Every comparison variant, its robustness evaluation and ``headline_table``."""
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
        func=nodes.refit_last_layer,
        inputs={
            "manifest": "manifest",
            "embeddings": f"{ERM}.embeddings",
            "tasks": f"{C}.debiasing.tasks",
            "group_by": f"{C}.debiasing.group_by",
            "age_bins": f"{C}.debiasing.age_bins",
            "c": f"{C}.dfr_c",
            "seed": f"{C}.debiasing.seed",
        },
        outputs=[f"{DFR}.predictions", f"{DFR}.dfr_embeddings"],
        name="refit_last_layer",
        tags=["comparison", "dfr"],
    )
    robustness = per_variant(
        create_robustness_template(), TRAINED, shared_inputs=SHARED_INPUTS
    ) + per_variant(
        create_robustness_template(),
        [DFR],
        shared_inputs={**SHARED_INPUTS, "embeddings": f"{DFR}.dfr_embeddings"},
    )
    headline = Node(
        func=nodes.build_headline_table,
        inputs=dict(zip(VARIANTS, variant_datasets(VARIANTS, "model_summary"), strict=True)),
        outputs="headline_table",
        name="build_headline_table",
        tags=["comparison", "summary"],
    )
    return debiasing + training + Pipeline([dfr]) + robustness + Pipeline([headline])
