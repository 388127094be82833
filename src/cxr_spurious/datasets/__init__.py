"""Custom Kedro datasets. Reference them in the catalog by full path, e.g.
``type: cxr_spurious.datasets.image_cache.ImageCacheDataset``."""
