"""``ImageCacheDataset``: saves a ``CacheSpec`` by building the cache, loads an ``ImageCache``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset

from cxr_spurious.sources.cache import (
    CACHE_FORMAT_VERSION,
    CacheSpec,
    ImageCache,
    build_cache,
    load_cache,
    read_cache_index,
    remove_stale_builds,
    verify_cache_files,
)

logger = logging.getLogger(__name__)


class ImageCacheDataset(AbstractDataset[CacheSpec, ImageCache]):
    """A folder of memory-mapped arrays (see ``cxr_spurious.sources.cache``).

    ``save`` decodes and resizes every image of the spec (in parallel, with progress bars)
    into a temporary folder that replaces the old cache only when complete. When the cache
    on disk already has the spec's fingerprint and its files pass ``verify_cache_files``
    (sizes and sampled hashes recorded at build time), ``save`` does nothing (re-runs are
    cheap); a damaged cache is rebuilt with a warning naming the file, and a cache of an
    older format version (its fingerprint differs) with a log line naming both versions.
    Memory mapping needs a local path, so this dataset is local-only.
    """

    def __init__(
        self, path: str, progress: bool = True, metadata: dict[str, Any] | None = None
    ) -> None:
        """Create the dataset.

        Args:
            path: Cache folder.
            progress: Show progress bars while building.
            metadata: Kedro metadata (kedro-viz layer etc.).
        """
        self._path = Path(path)
        self._progress = progress
        self.metadata = metadata

    def load(self) -> ImageCache:
        """Open the cache with memory-mapped arrays."""
        return load_cache(self._path)

    def save(self, data: CacheSpec) -> None:
        """Build the cache described by ``data`` unless an identical one is already there."""
        remove_stale_builds(self._path)  # also when no rebuild follows
        index = read_cache_index(self._path)
        fingerprint = data.fingerprint()
        if index is not None and index.get("format_version") != CACHE_FORMAT_VERSION:
            logger.info(
                "Image cache %s was written in format %s; this version writes format %d"
                " (renders/ with masks instead of variants/): rebuilding it",
                self._path,
                index.get("format_version", "unknown"),
                CACHE_FORMAT_VERSION,
            )
        if index is not None and index.get("fingerprint") == fingerprint:
            problems = verify_cache_files(self._path, index)
            if not problems:
                logger.info(
                    "Image cache %s is up to date (fingerprint %s); skipping the rebuild",
                    self._path,
                    fingerprint,
                )
                return
            logger.warning(
                "Image cache %s is damaged, rebuilding it: %s", self._path, "; ".join(problems)
            )
        build_cache(data, self._path, progress=self._progress)

    def _exists(self) -> bool:
        return read_cache_index(self._path) is not None

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "progress": self._progress}
