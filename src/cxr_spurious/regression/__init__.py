"""Regressions of localization performance on pathology geometry and model confidence."""
