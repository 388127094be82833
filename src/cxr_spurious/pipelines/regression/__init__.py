"""Regression pipeline: localization performance vs pathology geometry and confidence."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
