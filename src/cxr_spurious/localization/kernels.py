"""Fast per-map kernels: heatmap -> Otsu mask (as an RLE), first argmax and threshold counts.

Same semantics as ``segmentation`` (CheXlocalize's reference). On the CPU the work is done
by ``localization.bilinear``, which replicates torch's bilinear arithmetic bit for bit and
answers the segmentation questions per source cell, without building the full-size map:
the exact minimum, maximum and first C-order argmax, the 256-bin histogram of the
reference's ``uint8`` image, Otsu's level on it (``otsu_threshold``, a replica of
``cv2.THRESH_OTSU``), the mask as column-major runs (encoded straight to the pycocotools
RLE string) without its one-pixel components (``drop_isolated_runs``: the reference
draws no single-point contour) and the hole check for the filled outer contours. The masks
therefore equal the reference's. On CUDA the same steps run on the full map in torch.

Thresholds on the normalised map are applied as exact float32 *edges* on the upsampled
map (the normalisation is monotone), so no normalised copy is ever made. A full-size map,
when a caller needs one (tuning counts, mass metrics), is kept *transposed*, shape (w, h):
its C order is the column-major order of pycocotools RLEs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import torch
import torch.nn.functional as F

from cxr_spurious.io.masks import decode_rle, encode_rle
from cxr_spurious.localization.bilinear import (
    BilinearMap,
    drop_isolated_runs,
    rle_from_runs,
    runs_have_hole,
)
from cxr_spurious.localization.metrics import rle_bbox, rle_decode_t, rle_runs
from cxr_spurious.localization.segmentation import (
    SegmentationConfig,
    fill_outer_contours,
    normalise,
    segment,
)


@dataclass
class FastMap:
    """One map after the fast kernel.

    Attributes:
        rle: The predicted segmentation, a CheXlocalize RLE (``counts`` str).
        lo: Minimum of the upsampled map (float32 value).
        span: ``max - lo`` in float32; 0 for a constant map.
        argmax: (row, col) of the first maximum of the (h, w) upsampled map in C order.
        source: The implicit upsampled map (CPU), materialised only on demand.
        up: The upsampled (h, w) map once materialised (numpy, or a torch tensor on CUDA).
    """

    rle: dict[str, Any]
    lo: float
    span: float
    argmax: tuple[int, int]
    source: BilinearMap | None = None
    up: Any = None

    @property
    def up_t(self) -> Any:
        """The upsampled map transposed, (w, h) (a view; built from ``source`` on first use)."""
        if self.up is None:
            if self.source is None:
                raise ValueError("FastMap has neither an upsampled map nor its source")
            self.up = self.source.full()
        return self.up.t() if isinstance(self.up, torch.Tensor) else self.up.T


def upsample_t(map2d: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch-exact bilinear upsampling (half-pixel centres).

    Returned transposed, as (width, height).
    """
    return BilinearMap(np.asarray(map2d, dtype=np.float32), height, width).full().T


@numba.njit(cache=True, nogil=True)
def _key(x):  # pragma: no cover - compiled
    """float32 -> int64 key with the same order (negative floats reversed)."""
    bits = np.int64(np.array([x], np.float32).view(np.int32)[0])
    return bits if bits >= 0 else -(bits & 0x7FFFFFFF)


@numba.njit(cache=True, nogil=True)
def _float(key):  # pragma: no cover - compiled
    """Inverse of ``_key``."""
    bits = key if key >= 0 else (-key) | 0x80000000
    return np.array([bits], np.int64).astype(np.uint32).view(np.float32)[0]


@numba.njit(cache=True, nogil=True)
def _level_edges(lo, span, targets, scale, strict):  # pragma: no cover - compiled
    top = _key(np.float32(lo + span))
    out = np.empty(targets.shape[0], np.float32)
    for i in range(targets.shape[0]):
        a, b = _key(lo), top + 1  # top + 1 = "no qualifying value"
        while a < b:  # smallest key whose float qualifies (v is non-decreasing in x)
            mid = (a + b) // 2
            v = ((_float(mid) - lo) / span) * scale
            if (v > targets[i]) if strict else (v >= targets[i]):
                b = mid
            else:
                a = mid + 1
        out[i] = np.float32(np.inf) if a > top else _float(a)
    return out


def level_edges(
    lo: float,
    span: float,
    levels: Sequence[float],
    *,
    scale: float | None = None,
    strict: bool = True,
) -> np.ndarray:
    """Exact float32 edges of thresholds on the normalised map.

    For each level ``L`` returns the smallest float32 ``x`` in ``[lo, lo + span]`` with
    ``v(x) > L`` (``>= L`` when not ``strict``), where ``v`` is the reference's float32
    chain ``(x - lo) / span`` (times ``scale``). Since ``v`` is non-decreasing,
    ``v(up) > L`` holds exactly where ``up >= edge``. ``+inf`` when no value qualifies.

    Args:
        lo: Minimum of the upsampled map.
        span: ``max - min`` of the upsampled map (float32, > 0).
        levels: Thresholds, compared in float32 like the reference.
        scale: Optional factor applied after the division (255 for the uint8 image).
        strict: ``>`` (fixed thresholds) instead of ``>=`` (uint8 truncation levels).

    Returns:
        float32 array of edges, one per level.
    """
    targets = np.atleast_1d(np.asarray(levels, dtype=np.float32))
    # a missing scale multiplies by 1, which is exact in float32
    return _level_edges(
        np.float32(lo),
        np.float32(span),
        targets,
        np.float32(1.0 if scale is None else scale),
        bool(strict),
    )


@numba.njit(cache=True, nogil=True)
def _otsu(h):  # pragma: no cover - compiled
    """OpenCV's Otsu recursion over a float64 histogram (IEEE order kept: no fastmath)."""
    total = 0.0
    for v in h:
        total += v
    if total <= 0.0:
        return 0
    scale = 1.0 / total
    mu = 0.0
    for i in range(h.shape[0]):
        mu += i * h[i]
    mu *= scale
    mu1 = q1 = 0.0
    max_sigma, max_val = 0.0, 0
    eps = np.float64(np.finfo(np.float32).eps)
    for i in range(h.shape[0]):
        p_i = h[i] * scale
        mu1 *= q1
        q1 += p_i
        q2 = 1.0 - q1
        if min(q1, q2) < eps or max(q1, q2) > 1.0 - eps:
            continue
        mu1 = (mu1 + i * p_i) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
        if sigma > max_sigma:
            max_sigma, max_val = sigma, i
    return max_val


def otsu_threshold(hist: Sequence[float] | np.ndarray) -> int:
    """Otsu's threshold of a 256-bin histogram, replicating ``cv2.THRESH_OTSU`` bit for bit.

    Follows OpenCV's sequential double-precision recursion (including its skip of bins
    where one class is empty, which leaves the running class mean scaled) and its first
    strict maximum. Compiled (the interpreted loop was 4 % of a map's segmentation).
    """
    return int(_otsu(np.ascontiguousarray(hist, dtype=np.float64).reshape(-1)))


def _empty_rle(height: int, width: int) -> dict[str, Any]:
    return rle_from_runs(np.array([int(height) * int(width)], np.int64), height, width)


def _reference_segment(
    up: np.ndarray | torch.Tensor, prob: float, config: SegmentationConfig
) -> dict[str, Any]:
    """The reference's own path on a materialised map (box-filter smoothing only)."""
    t = torch.as_tensor(up)
    mask = segment(normalise(t), tuple(t.shape), prob, config)
    return encode_rle(mask)


class _Laps:
    """Seconds spent in each named step, added to a caller's dict (no-op without one)."""

    def __init__(self, into: dict[str, float] | None) -> None:
        self.into = into
        self.t = time.perf_counter() if into is not None else 0.0

    def __call__(self, step: str) -> None:
        if self.into is not None:
            now = time.perf_counter()
            self.into[step] = self.into.get(step, 0.0) + now - self.t
            self.t = now


def segment_map_cpu(
    map2d: np.ndarray,
    height: int,
    width: int,
    prob: float,
    config: SegmentationConfig,
    *,
    timings: dict[str, float] | None = None,
) -> FastMap:
    """Segment one map at (height, width) without building the full-size map (see module doc).

    Args:
        map2d: 2-D map at native resolution (finite).
        height: Original image height.
        width: Original image width.
        prob: Model probability (for the probability cutoff).
        config: Segmentation options.
        timings: Optional dict to which the seconds of each step are added (``setup``:
            the bilinear taps; ``extremes``: the cell bounds, then the exact minimum,
            maximum and argmax; ``histogram``; ``otsu``: the level and its edge;
            ``mask``: the runs, one-pixel components, RLE string and hole check).
            ``bench_localization.py --profile`` sums them over maps.

    Returns:
        The mask RLE, normalisation constants, first argmax and the implicit map.
    """
    lap = _Laps(timings)
    m = np.ascontiguousarray(map2d, dtype=np.float32)
    src = BilinearMap(m, height, width)
    lap("setup")
    lo, hi, argmax = src.extremes()
    span = float(np.float32(np.float32(hi) - np.float32(lo)))
    constant = bool(m.max() == m.min()) or span <= 0
    fast = FastMap(_empty_rle(height, width), lo, 0.0 if constant else span, argmax, src)
    lap("extremes")
    if constant or prob < config.prob_cutoff:
        return fast
    if config.threshold is not None:
        edge = level_edges(lo, span, [float(config.threshold)])[0]
        fast.rle = rle_from_runs(src.runs(edge), height, width)
        lap("mask")
        return fast
    if config.smoothing_k > 0:
        fast.rle = _reference_segment(fast.up_t.T, prob, config)
        lap("mask")
        return fast
    hist = src.histogram(lo, hi)
    lap("histogram")
    if hist[0] == int(height) * int(
        width
    ):  # reference: maxval = max(uint8) = 0 gives an empty mask
        return fast
    level = otsu_threshold(hist)
    edge = level_edges(lo, span, [level + 1], scale=255.0, strict=False)[
        0
    ]  # uint8 > level  <=>  v >= edge
    lap("otsu")
    runs = src.runs(edge)
    if config.fill_contours:  # the reference draws no single-point contour
        runs = drop_isolated_runs(runs, height, width)
    fast.rle = rle_from_runs(runs, height, width)
    if config.fill_contours and runs_have_hole(runs, height, width):
        fast.rle = encode_rle(
            fill_outer_contours(decode_rle(fast.rle, source="segmentation", key="mask"))
        )
    lap("mask")
    return fast


def segment_map_torch(
    map2d: np.ndarray,
    height: int,
    width: int,
    prob: float,
    config: SegmentationConfig,
    device: torch.device,
) -> FastMap:
    """GPU variant of ``segment_map_cpu``: the full-size work runs in torch on ``device``.

    Upsampling (torch bilinear), min/max, the uint8 image, its histogram, the Otsu
    threshold (``otsu_threshold``) and the argmax run on the device; the binary mask comes
    back to the CPU for the hole check and RLE encoding. ``up`` stays on the device.
    """
    t = torch.as_tensor(np.ascontiguousarray(map2d, dtype=np.float32), device=device)[None, None]
    up = (
        F.interpolate(t, size=(int(height), int(width)), mode="bilinear", align_corners=False)[0, 0]
        if tuple(t.shape[-2:]) != (height, width)
        else t[0, 0]
    )
    lo_t, hi_t = torch.aminmax(up)
    lo, span = float(lo_t), float(hi_t - lo_t)
    flat = int(torch.argmax(up))  # first maximal index
    constant = bool(t.max() == t.min()) or span <= 0
    fast = FastMap(
        _empty_rle(height, width), lo, 0.0 if constant else span, divmod(flat, int(width)), None, up
    )
    if constant or prob < config.prob_cutoff:
        return fast
    if config.threshold is not None:
        edge = float(level_edges(lo, span, [float(config.threshold)])[0])
        fast.rle = encode_rle((up >= edge).to(torch.uint8).cpu().numpy())
        return fast
    if config.smoothing_k > 0:
        fast.rle = _reference_segment(up.cpu(), prob, config)
        return fast
    u8 = torch.mul(torch.div(torch.sub(up, lo_t), hi_t - lo_t), 255).to(torch.uint8)
    if int(u8.max()) == 0:
        return fast
    level = otsu_threshold(torch.bincount(u8.reshape(-1), minlength=256).cpu().tolist())
    binary = (u8 > level).to(torch.uint8).cpu().numpy()
    fast.rle = encode_rle(fill_outer_contours(binary) if config.fill_contours else binary)
    return fast


def threshold_counts(
    fast: FastMap, thresholds: Sequence[float], gt_rle: Mapping[str, Any]
) -> tuple[list[int], list[int]]:
    """Pixels above each fixed threshold, over the image and inside the ground truth.

    ``norm > t`` (float32, like the reference's tuning) is evaluated as ``up >= edge``.
    On the CPU (``fast.source``) all thresholds are counted in one pass over the cells of
    the implicit map (``BilinearMap.edge_counts``: only cells an edge crosses are
    evaluated pixel by pixel, the ground truth is read as its runs, never decoded); a
    materialised map without its source (CUDA) is compared in full, the intersection
    only inside the ground truth's bounding box.

    Args:
        fast: Output of a ``segment_map_*`` kernel.
        thresholds: Fixed thresholds on the normalised map.
        gt_rle: The ground-truth RLE, of the map's (height, width).

    Returns:
        (areas, intersections), one int per threshold.
    """
    if fast.span <= 0:
        return [0] * len(thresholds), [0] * len(thresholds)
    edges = level_edges(fast.lo, fast.span, thresholds)
    if fast.source is not None:
        areas, inside = fast.source.edge_counts(edges, rle_runs(gt_rle))
        return [int(a) for a in areas], [int(i) for i in inside]
    bbox = rle_bbox(gt_rle)
    x0, y0 = int(bbox[0]), int(bbox[1])
    x1, y1 = x0 + int(np.ceil(bbox[2])), y0 + int(np.ceil(bbox[3]))
    up_t = fast.up_t
    g_t = np.ascontiguousarray(rle_decode_t(gt_rle)[x0:x1, y0:y1]).view(bool)
    if isinstance(up_t, torch.Tensor):
        inside_t = up_t[x0:x1, y0:y1][torch.as_tensor(g_t, device=up_t.device)]
        return [int((up_t >= float(e)).sum()) for e in edges], [
            int((inside_t >= float(e)).sum()) for e in edges
        ]
    inside_np = up_t[x0:x1, y0:y1][g_t]
    return [int(np.count_nonzero(up_t >= e)) for e in edges], [
        int(np.count_nonzero(inside_np >= e)) for e in edges
    ]
