"""The ``debiasing`` pipeline: group the train split and resample it."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
