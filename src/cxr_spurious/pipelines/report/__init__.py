"""Report pipeline: the study's results as one self-contained HTML page."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
