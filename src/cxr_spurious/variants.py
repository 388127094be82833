"""The model variants of the study, declared once.

Each name is a Kedro namespace: the training, saliency, robustness and study templates
are instantiated once per name (``cxr_spurious.pipelines._recipe.per_variant``; the recipe
and a worked example of adding a variant are in docs/ARCHITECTURE.md), and the catalog's
``"{variant}.<dataset>"`` patterns place each variant's datasets. The supervision, the
architecture and the budget of each variant are parameters, ``training.variants.<name>``
(``conf/base/parameters_training.yml``).
"""

from __future__ import annotations

# Spatial-specificity study (Saab et al.): image labels, boxes, pixel masks.
STUDY_MODELS: tuple[str, ...] = ("erm", "box", "seg")

# Saliency maps the default study computes and evaluates: (model, method) pairs. The three
# models share a dense network, so each also gets its own probability map (``seg_prob``).
STUDY_HEATMAPS: tuple[tuple[str, str], ...] = (
    ("erm", "gradcam"),
    ("erm", "seg_prob"),
    ("box", "gradcam"),
    ("box", "seg_prob"),
    ("seg", "gradcam"),
    ("seg", "seg_prob"),
)


def heatmap_set_name(model: str, method: str) -> str:
    """Name of one (model, method) heatmap set, e.g. ``erm.gradcam``.

    The one place heatmap set names are made: the keys of ``heatmap_collection``, the
    ``set`` column of the localization tables, ``saliency.export.sets`` and the overlay
    figures' names. Not a Kedro namespace. ``gradcam++`` becomes ``gradcampp`` (the name
    of the set's folders and files, kept as it was when set names were namespaces).
    """
    return f"{model}.{method.replace('+', 'p')}"
