"""Source adapters: one module per dataset, all returning ``IngestedSource``."""

from cxr_spurious.data.adapters.base import ADAPTERS, IngestedSource, get_adapter

__all__ = ["ADAPTERS", "IngestedSource", "get_adapter"]
