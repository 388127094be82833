"""The ``robustness`` pipeline: subgroup AUROC, fairness, calibration, hidden strata."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
