"""Localization pipeline: CheXlocalize-exact evaluation of saliency heatmaps."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
