"""Kedro pipelines, one folder each; discovered by ``find_pipelines``."""
