"""The model variants of the study, declared once.

Each name is a Kedro namespace: the training template pipeline is instantiated once per
name, and saliency, localization and robustness follow the same names. The supervision
method, architecture and budget of each variant are parameters
(``conf/base/parameters_training.yml``).
"""

from __future__ import annotations

# Spatial-specificity study (Saab et al.): image labels, boxes, pixel masks.
STUDY_MODELS: tuple[str, ...] = ("erm", "box", "seg")
