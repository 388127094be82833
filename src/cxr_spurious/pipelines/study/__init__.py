"""The study: one findings table (``study_findings``) from every stage's outputs."""

from cxr_spurious.pipelines.study.pipeline import create_pipeline, create_study_template

__all__ = ["create_pipeline", "create_study_template"]
