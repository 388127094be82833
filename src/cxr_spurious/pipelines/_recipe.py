"""The one recipe for per-variant pipelines (docs/ARCHITECTURE.md, "Per-variant pipelines").

A stage that does the same work for every model variant writes that work once, as an
un-namespaced *template* (``create_training_template``, ``create_saliency_template``,
``create_robustness_template``, ``create_study_template``, ``create_debiasing_template``),
and ``per_variant`` instantiates it once per variant name:

* namespace = the variant name, so every dataset of the template that is not shared
  becomes ``<variant>.<dataset>`` and is placed by the catalog's ``"{variant}.<dataset>"``
  factory pattern (no catalog entry per variant);
* the inputs every variant shares (``manifest``, ``image_cache``, ...) keep their names, or
  take the names a mapping gives them;
* every parameter keeps its name, except ``params:variant`` (the variant's own block),
  which becomes ``<variant_blocks>.<variant>`` (``params:training.variants.<variant>`` by
  default).

A *collector* node then gathers one dataset of every variant (``variant_datasets``); it is
un-namespaced because it belongs to no single variant (saliency's ``collect_heatmaps``,
robustness's ``combine_robustness_summary``, study's ``compile_findings``, comparison's
``build_headline_table``). Localization is such a collector as a whole: it evaluates every
heatmap set of ``heatmap_collection`` in one pass (one parallel kernel over all sets, and
comparisons across sets), keyed by ``variants.heatmap_set_name``.

A stage downstream of a collector that still works per variant (study: each row needs the
localization outcome of every set) passes ``group``: its nodes are namespaced
``<group>.<variant>`` while its datasets keep the ``<variant>.`` prefix. Leaving the
variant's namespace (``erm``) and coming back into it after a collector would *interrupt*
that namespace (Kedro warns "Namespace 'erm' is interrupted", and kedro-viz cannot draw
the namespace as one collapsible box without a cycle).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kedro.pipeline import Pipeline

VARIANT_PARAMETER = "params:variant"
VARIANT_BLOCKS = "params:training.variants"

ParameterMap = Mapping[str, str] | Callable[[str], Mapping[str, str]]


def template_parameters(template: Pipeline) -> dict[str, str]:
    """Identity mapping of the template's parameters (kept un-namespaced in instances)."""
    return {p: p for p in sorted(template.inputs()) if p.startswith("params:")}


def bind(func: Callable[..., Any], **kwargs: Any) -> Callable[..., Any]:
    """``func`` with keyword arguments fixed when the pipeline is built (a sweep cell, a
    comparison seed), keeping its name and docstring (the node's name in kedro-viz)."""
    return functools.update_wrapper(functools.partial(func, **kwargs), func)


def variant_datasets(names: Iterable[str], dataset: str) -> list[str]:
    """``<variant>.<dataset>`` for every variant: the inputs of a collector node."""
    return [f"{name}.{dataset}" for name in names]


def per_variant(
    template: Pipeline,
    names: Iterable[str],
    *,
    shared_inputs: Iterable[str] | Mapping[str, str] = (),
    parameters: ParameterMap | None = None,
    variant_blocks: str = VARIANT_BLOCKS,
    group: str | None = None,
) -> Pipeline:
    """``template`` once per variant name, namespace = the name.

    Args:
        template: The un-namespaced pipeline of one variant.
        names: Variant names (``variants.STUDY_MODELS``, or the comparison's ``cmp_*``).
        shared_inputs: Template inputs every variant reads under one name: a collection
            (names kept) or a mapping template name -> catalog name (e.g. JTT's
            ``erm_predictions`` -> ``erm.predictions``). Every other free input of the
            template is the variant's own (``model`` -> ``<variant>.model``).
        parameters: Parameter renames on top of the identity mapping, as a mapping or as a
            function of the variant name (the comparison's per-variant strategy).
        variant_blocks: Where ``params:variant`` points: ``<variant_blocks>.<name>``.
        group: If given, nodes are namespaced ``<group>.<name>`` (datasets keep
            ``<name>.``), for a per-variant stage downstream of a collector (see the
            module docstring).

    Returns:
        The instances, summed.

    Raises:
        ValueError: ``names`` is empty or repeats a name.
    """
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"per_variant needs distinct variant names; got {names}")
    if isinstance(shared_inputs, Mapping):
        inputs: dict[str, str] = dict(shared_inputs)
    else:
        inputs = {name: name for name in shared_inputs}
    base = template_parameters(template)
    instances = []
    for name in names:
        params = dict(base)
        if VARIANT_PARAMETER in params:
            params[VARIANT_PARAMETER] = f"{variant_blocks}.{name}"
        if parameters is not None:
            params.update(parameters(name) if callable(parameters) else parameters)
        instance = Pipeline(template, namespace=name, inputs=inputs, parameters=params)
        if group is not None:
            instance = Pipeline(instance, namespace=group, prefix_datasets_with_namespace=False)
        instances.append(instance)
    return sum(instances, start=Pipeline([]))
