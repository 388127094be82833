"""The ``comparison`` pipeline: the headline table of debiasing and supervision choices."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
