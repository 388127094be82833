"""Robustness evaluation: subgroup AUROC, fairness at an operating point, calibration and
hidden stratification, all with bootstrap CIs over patients."""
