"""The model variants of the study, declared once.

Each name is a Kedro namespace: the training template pipeline is instantiated once per
name, and saliency, localization and robustness follow the same names. The supervision
method, architecture and budget of each variant are parameters
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


def heatmap_namespace(model: str, method: str) -> str:
    """Kedro namespace of one (model, method) heatmap set, e.g. ``erm.gradcam``.

    Kedro namespaces may not contain '+', so ``gradcam++`` becomes ``gradcampp``.
    """
    return f"{model}.{method.replace('+', 'p')}"
