"""Compile the project's numba kernels into their on-disk cache ahead of the first run.

The exact localization kernels (``bilinear``, ``kernels``) and the RLE decoder
(``io.masks``) are compiled by numba on first use and cached next to their source
(``__pycache__``, keyed by the source file and this CPU). In a fresh clone the first
``kedro run`` would compile them in every worker process of its first pool at once (about
13 s each on the project's 2-core CPU); ``make install`` runs ``warm_kernels`` once
instead, so later processes load them from the cache (about 0.05 s).

Each kernel is called through the functions the pipelines use, with the argument types
they pass (numba caches one machine-code version per type signature), on maps small
enough to take no time once compiled.

Usage:
    python -m cxr_spurious.localization.warmup
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np

from cxr_spurious.io.masks import encode_rle, validate_rle
from cxr_spurious.localization.bilinear import BilinearMap
from cxr_spurious.localization.kernels import segment_map_cpu
from cxr_spurious.localization.metrics import rle_runs
from cxr_spurious.localization.segmentation import SegmentationConfig

logger = logging.getLogger(__name__)


def warm_kernels(seed: int = 0) -> dict[str, float]:
    """Run every compiled kernel once on small inputs; returns seconds per group.

    Groups: ``segmentation`` (extremes, histogram, Otsu, mask runs, RLE string, hole
    check; Otsu and fixed-threshold paths), ``tuning`` (per-threshold counts inside a
    mask) and ``full_map`` (the materialised upsampled map), ``rle`` (the RLE decoder).
    The results are checked for shape only: the kernels' values are the tests' business.
    """
    rng = np.random.default_rng(seed)
    # a blob with a hole-free mask and one with a hole, so that every path of the mask
    # step runs (the hole check and the contour filling)
    src = rng.random((12, 10)).astype(np.float32)
    ring = np.zeros((12, 10), np.float32)
    ring[2:10, 2:8] = 1.0
    ring[5:7, 4:6] = 0.0
    height, width = 90, 70
    times: dict[str, float] = {}

    start = time.perf_counter()
    for m in (src, ring):
        for config in (SegmentationConfig(), SegmentationConfig(threshold=0.5)):
            fast = segment_map_cpu(m, height, width, 0.9, config)
            if fast.rle["size"] != [height, width]:
                raise RuntimeError(f"warm-up segmentation has size {fast.rle['size']}")
    times["segmentation"] = time.perf_counter() - start

    start = time.perf_counter()
    bmap = BilinearMap(src, height, width)
    inside = np.zeros((height, width), np.uint8)
    inside[20:60, 10:50] = 1
    runs = rle_runs(encode_rle(inside), source="warm-up", key="mask")
    area, within = bmap.edge_counts(np.array([0.2, 0.5, 0.8], np.float32), runs)
    if area.shape != (3,) or within.shape != (3,):
        raise RuntimeError("warm-up threshold counts have the wrong shape")
    times["tuning"] = time.perf_counter() - start

    start = time.perf_counter()
    if bmap.full().shape != (height, width):
        raise RuntimeError("warm-up full map has the wrong shape")
    times["full_map"] = time.perf_counter() - start

    start = time.perf_counter()
    validate_rle(encode_rle(inside), source="warm-up", key="mask")
    times["rle"] = time.perf_counter() - start
    return times


def main() -> None:
    """Report (on stdout) how long compiling or loading each group of kernels took."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    start = time.perf_counter()
    times = warm_kernels()
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in times.items())
    total = time.perf_counter() - start
    logger.info(f"numba kernels compiled or loaded from the cache in {total:.1f} s ({parts})")


if __name__ == "__main__":
    main()
