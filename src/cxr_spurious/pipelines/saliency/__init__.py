"""The saliency pipeline: maps of every trained model, sanity check, overlays, CheXlocalize
export."""

from cxr_spurious.pipelines.saliency.pipeline import create_pipeline, create_saliency_template

__all__ = ["create_pipeline", "create_saliency_template"]
