"""Saliency maps: method registry, batched computation, sanity check, CheXlocalize I/O, overlays."""

from cxr_spurious.saliency.compute import (
    compute_maps,
    compute_method_maps,
    heatmap_set_for,
    heatmap_sets_for,
    load_model,
    select_image_ids,
)
from cxr_spurious.saliency.registry import METHODS, MethodOptions, available_methods, get_method
from cxr_spurious.saliency.sanity import model_randomisation_check, randomized_copy

__all__ = [
    "METHODS",
    "MethodOptions",
    "available_methods",
    "compute_maps",
    "compute_method_maps",
    "get_method",
    "heatmap_set_for",
    "heatmap_sets_for",
    "load_model",
    "model_randomisation_check",
    "randomized_copy",
    "select_image_ids",
]
