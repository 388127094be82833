"""Wiring of the ``debiasing`` pipeline.

``create_debiasing_template`` builds one resampling run (un-namespaced): ``features`` picks
the cluster features of ``cluster_downsample`` (``thumbnails`` of the image cache, or the
``embeddings`` input), ``jtt=True`` replaces the resampling node by JTT's upweighting of
``erm_predictions`` errors. The default ``debiasing`` pipeline is the thumbnail template,
writing ``resampled_manifest`` for training.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal

from kedro.pipeline import Node, Pipeline

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.debiasing import nodes

P = "params:debiasing"


def _call_with_keys(
    func: Callable[..., Any], keys: Mapping[str, str], /, *args: Any, **kw: Any
) -> Any:
    try:
        return func(*args, **kw)
    except ParameterError as err:
        if err.key not in keys:
            raise
        raise ParameterError(keys[err.key], err.problem) from err


def with_parameter_keys(
    func: Callable[..., Any], keys: Mapping[str, str] | None, **bound: Any
) -> Callable[..., Any]:
    """``func`` whose ``ParameterError`` names the key the node really reads.

    The debiasing code names the ``debiasing.<k>`` keys of the default pipeline; where the
    template reads other keys (the comparison's ``comparison.debiasing.<k>`` and
    ``comparison.strategies.<variant>.<k>``), ``keys`` maps the one to the other, so an
    error never points at a key that had no effect. A ``functools.partial`` (picklable,
    like ``_recipe.bind``, with ``bound`` as its keywords) that keeps ``func``'s name and
    docstring, and the signature Kedro checks the node's inputs against.

    Args:
        func: A node function.
        keys: ``{"debiasing.<k>": "<key the node reads>"}``; None or empty: ``func`` itself
            (with ``bound``).
        **bound: Arguments fixed when the pipeline is built (``_recipe.bind``).
    """
    inner = functools.partial(func, **bound) if bound else func
    if not keys:
        return functools.update_wrapper(inner, func) if bound else func
    wrapper = functools.partial(_call_with_keys, func, dict(keys), **bound)
    functools.update_wrapper(wrapper, func)
    wrapper.__signature__ = inspect.signature(inner, follow_wrapped=False)  # type: ignore[attr-defined]
    return wrapper


def parameter_keys(mapping: Mapping[str, str]) -> dict[str, str]:
    """``{"debiasing.<k>": "<key>"}`` of a ``per_variant`` parameter mapping
    (``{"params:debiasing.<k>": "params:<key>"}``)."""
    return {
        src.removeprefix("params:"): dst.removeprefix("params:")
        for src, dst in mapping.items()
        if src.startswith(f"{P}.")
    }


def create_debiasing_template(
    features: Literal["thumbnails", "embeddings"] = "thumbnails",
    *,
    jtt: bool = False,
    seed: str = f"{P}.seed",
    keys: Mapping[str, str] | None = None,
) -> Pipeline:
    """One resampling run: groups -> (features) -> resampled manifest -> group-count report.

    ``seed`` names the resampling seed's input: the parameter, or a dataset of the same
    namespace (the comparison's seeds other than ``training.seed``, ``pipelines/comparison``).
    ``keys`` (``with_parameter_keys``): the keys that errors name when an instance reads
    other parameters than ``debiasing.<k>`` (``parameter_keys`` of its mapping).
    """

    def fn(func: Callable[..., Any]) -> Callable[..., Any]:
        return with_parameter_keys(func, keys)

    group_node = Node(
        func=fn(nodes.assign_row_groups),
        inputs={
            "manifest": "manifest",
            "group_by": f"{P}.group_by",
            "age_bins": f"{P}.age_bins",
            "cross_label": f"{P}.cross_label",
            "tasks": f"{P}.tasks",
            "strategy": f"{P}.strategy",
            "min_patients": f"{P}.min_patients_per_group",
        },
        outputs="debiasing_groups",
        name="assign_row_groups",
        tags=["debiasing"],
    )
    if jtt:
        core = [
            Node(
                func=fn(nodes.upweight_erm_errors),
                inputs={
                    "manifest": "manifest",
                    "groups": "debiasing_groups",
                    "erm_predictions": "erm_predictions",
                    "tasks": f"{P}.tasks",
                    "threshold": f"{P}.jtt_threshold",
                    "upweight": f"{P}.jtt_upweight",
                    "mode": f"{P}.jtt_mode",
                },
                outputs="resampled_manifest",
                name="upweight_erm_errors",
                tags=["debiasing", "jtt"],
            )
        ]
    else:
        core = []
        if features == "thumbnails":
            core.append(
                Node(
                    func=fn(nodes.compute_thumbnail_features),
                    inputs={
                        "manifest": "manifest",
                        "image_cache": "image_cache",
                        "strategy": f"{P}.strategy",
                        "size": f"{P}.thumbnail_size",
                    },
                    outputs="cluster_features",
                    name="compute_thumbnail_features",
                    tags=["debiasing"],
                )
            )
        core.append(
            Node(
                func=fn(nodes.resample_train_rows),
                inputs={
                    "manifest": "manifest",
                    "groups": "debiasing_groups",
                    "features": "cluster_features" if features == "thumbnails" else "embeddings",
                    "strategy": f"{P}.strategy",
                    "target": f"{P}.target",
                    "seed": seed,
                    "n_clusters": f"{P}.n_clusters",
                },
                outputs="resampled_manifest",
                name="resample_train_rows",
                tags=["debiasing"],
            )
        )
    report = [
        Node(
            func=fn(nodes.summarise_group_counts),
            inputs={
                "manifest": "manifest",
                "groups": "debiasing_groups",
                "resampled_manifest": "resampled_manifest",
            },
            outputs="group_counts",
            name="summarise_group_counts",
            tags=["debiasing", "reporting"],
        ),
        Node(
            func=fn(nodes.plot_group_count_bars),
            inputs={"group_counts": "group_counts", "strategy": f"{P}.strategy"},
            outputs="group_counts_plot",
            name="plot_group_count_bars",
            tags=["debiasing", "reporting"],
        ),
    ]
    return Pipeline([group_node, *core, *report])


def create_pipeline(**kwargs: object) -> Pipeline:
    """The default debiasing run (strategy from ``debiasing.strategy``)."""
    return create_debiasing_template("thumbnails")
