"""Augmentation for the copies made by ``augment_upsample``: see ``cxr_spurious.augment``.

The training loader applies ``cxr_spurious.augment.augment_pair`` to rows whose
``augment`` flag is set; this module re-exports the uint8 entry point for the debiasing API.
"""

from cxr_spurious.augment import AugmentConfig, augment_image

__all__ = ["AugmentConfig", "augment_image"]
