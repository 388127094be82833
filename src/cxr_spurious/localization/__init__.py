"""Saliency-map localization: CheXlocalize-exact segmentation, IoU, hit/miss, tuning, summaries."""
