"""Source adapters: one module per dataset, all returning ``IngestedSource``."""

from cxr_spurious.sources.adapters.base import ADAPTERS, IngestedSource, get_adapter

__all__ = ["ADAPTERS", "IngestedSource", "get_adapter"]
