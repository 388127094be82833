"""The ``training`` pipeline: one namespaced training template per study variant."""

from cxr_spurious.pipelines.training.pipeline import create_pipeline, create_training_template

__all__ = ["create_pipeline", "create_training_template"]
