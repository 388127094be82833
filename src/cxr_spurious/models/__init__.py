"""Architecture registry and the model interface (see docs/ARCHITECTURE.md, Models)."""

from cxr_spurious.models.base import POOLINGS, CXRModel, pool_dense_logits
from cxr_spurious.models.registry import (
    ARCHITECTURES,
    DENSE_ARCHITECTURES,
    build_model,
    load_weights,
    model_from_artifact,
)

__all__ = [
    "ARCHITECTURES",
    "DENSE_ARCHITECTURES",
    "POOLINGS",
    "CXRModel",
    "build_model",
    "load_weights",
    "model_from_artifact",
    "pool_dense_logits",
]
