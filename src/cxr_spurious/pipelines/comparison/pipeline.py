"""Wiring of the ``comparison`` pipeline (``kedro run --pipeline comparison``).

On the same data and seed as the default study: ERM without resampling and the
spatial-specificity models are the study's own ``erm``, ``box`` and ``seg`` (trained and
evaluated by ``kedro run``: same data, seed and configuration, so they are not trained
twice); then one ERM per resampling strategy (debiasing template namespaced
``cmp_<strategy>`` feeding the training template in the same namespace), Group DRO on the
debiasing groups, JTT (upweights ``erm``'s train errors) and DFR (last layer refit on
``erm``'s embeddings, no training). Each new variant gets the robustness template;
``headline_table`` stacks every variant's summary. Trained variants log one MLflow child
run each through the training template's ``<variant>.mlflow_run``.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from cxr_spurious.pipelines.comparison import nodes
from cxr_spurious.pipelines.debiasing.pipeline import create_debiasing_template
from cxr_spurious.pipelines.robustness.pipeline import (
    create_robustness_template,
    template_parameters,
)
from cxr_spurious.pipelines.training.pipeline import create_training_template

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
# The study's models (variants.STUDY_MODELS), reused: ERM without resampling and the
# spatial-specificity models.
ERM = "erm"
STUDY: tuple[str, ...] = ("erm", "box", "seg")
JTT = "cmp_jtt"
DFR = "cmp_dfr"
VARIANTS: tuple[str, ...] = (ERM, *RESAMPLED, JTT, DFR, "box", "seg")


def _debias_params(template: Pipeline, variant: str) -> dict[str, str]:
    """Shared settings from ``comparison.debiasing``; strategy and target per variant."""
    out = {}
    for p in template_parameters(template):
        key = p.removeprefix("params:debiasing.")
        per_variant = key in ("strategy", "target")
        out[p] = f"{C}.strategies.{variant}.{key}" if per_variant else f"{C}.debiasing.{key}"
    return out


def _debiasing(variant: str, features: str, *, jtt: bool = False) -> Pipeline:
    template = create_debiasing_template(features, jtt=jtt)  # type: ignore[arg-type]
    inputs = {"manifest": "manifest"}
    if "image_cache" in template.inputs():
        inputs["image_cache"] = "image_cache"
    if "embeddings" in template.inputs():
        inputs["embeddings"] = f"{ERM}.embeddings"
    if jtt:
        inputs["erm_predictions"] = f"{ERM}.predictions"
    return Pipeline(template, namespace=variant, inputs=inputs, parameters=_debias_params(template, variant))


def _training(variant: str, resampled: str) -> Pipeline:
    return Pipeline(
        create_training_template(),
        namespace=variant,
        inputs={"manifest": "manifest", "image_cache": "image_cache", "resampled_manifest": resampled},
        parameters={"params:training": "params:training", "params:variant": f"{C}.training_variants.{variant}"},
    )


def _robustness(variant: str, embeddings: str | None = None) -> Pipeline:
    template = create_robustness_template()
    inputs = {"manifest": "manifest", "image_cache": "image_cache"}
    if embeddings is not None:
        inputs["embeddings"] = embeddings
    return Pipeline(template, namespace=variant, inputs=inputs, parameters=template_parameters(template))


def create_pipeline(**kwargs: object) -> Pipeline:
    """Every comparison variant, its robustness evaluation and ``headline_table``."""
    parts: list[Pipeline] = []
    for variant, features in RESAMPLED.items():
        parts += [_debiasing(variant, features), _training(variant, f"{variant}.resampled_manifest")]
    parts += [_debiasing(JTT, "thumbnails", jtt=True), _training(JTT, f"{JTT}.resampled_manifest")]
    parts.append(
        Pipeline(
            [
                Node(
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
            ]
        )
    )
    parts += [_robustness(v) for v in VARIANTS if v not in (DFR, *STUDY)]
    parts.append(_robustness(DFR, embeddings=f"{DFR}.dfr_embeddings"))
    parts.append(
        Pipeline(
            [
                Node(
                    func=nodes.build_headline_table,
                    inputs={v: f"{v}.model_summary" for v in VARIANTS},
                    outputs="headline_table",
                    name="build_headline_table",
                    tags=["comparison", "summary"],
                )
            ]
        )
    )
    return sum(parts, start=Pipeline([]))
