"""Wiring of the ``comparison`` pipeline (``kedro run --pipeline comparison``).

On the same data and seed: ERM without resampling (``cmp_erm``), one ERM per resampling
strategy (debiasing template namespaced ``cmp_<strategy>`` feeding the training template
in the same namespace), Group DRO on the debiasing groups, JTT (upweights ``cmp_erm``'s
train errors), DFR (last layer refit on ``cmp_erm``'s embeddings, no training), and the
spatial-specificity models (``cmp_box``, ``cmp_seg``). Each variant gets the robustness
template; ``headline_table`` stacks their summaries. Trained variants log one MLflow child
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
PLAIN: tuple[str, ...] = ("cmp_erm", "cmp_box", "cmp_seg")
JTT = "cmp_jtt"
DFR = "cmp_dfr"
VARIANTS: tuple[str, ...] = ("cmp_erm", *RESAMPLED, JTT, DFR, "cmp_box", "cmp_seg")


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
        inputs["embeddings"] = "cmp_erm.embeddings"
    if jtt:
        inputs["erm_predictions"] = "cmp_erm.predictions"
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
    parts = [_training(v, "manifest") for v in PLAIN]
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
                        "embeddings": "cmp_erm.embeddings",
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
    parts += [_robustness(v) for v in VARIANTS if v != DFR]
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
