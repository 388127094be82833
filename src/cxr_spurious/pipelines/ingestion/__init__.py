"""Ingestion: read a source through its adapter into the manifest, ground truth and image cache."""

from cxr_spurious.pipelines.ingestion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
