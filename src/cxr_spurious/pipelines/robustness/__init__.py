"""The ``robustness`` pipeline: subgroup AUROC, fairness, calibration, hidden strata."""

from .pipeline import create_pipeline, create_robustness_template

__all__ = ["create_pipeline", "create_robustness_template"]
