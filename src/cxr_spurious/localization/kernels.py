"""Fast per-map kernels: heatmap -> Otsu mask, first argmax and threshold counts.

Same semantics as ``segmentation`` (CheXlocalize's reference), computed with cv2 on the
CPU or torch on CUDA instead of torch's CPU bilinear kernel, which is 6-7x slower than
cv2's. The two bilinear kernels (both ``align_corners=False`` / half-pixel centres, edge
samples clamped) differ by float rounding only (~2e-7 relative), so a mask differs from the
reference only where a pixel's value sits within rounding of the Otsu threshold; the
benchmark (``benchmarks/bench_localization.py``) counts those pixels.

Everything full-size is kept *transposed*, shape (w, h): its C order is the column-major
order of pycocotools RLEs, so ``mask_t.T`` encodes without a copy and a decoded ground
truth ``decode(rle).T`` is already in this orientation. Normalisation, ``uint8`` truncation
and fixed thresholds follow the reference's float32 arithmetic exactly; thresholds on the
normalised map are applied as exact float32 *edges* on the upsampled map (the
normalisation is monotone), so no normalised copy is ever made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numba
import numpy as np
import torch
import torch.nn.functional as F

from cxr_spurious.localization.segmentation import SegmentationConfig, fill_outer_contours


@dataclass
class FastMap:
    """One map after the fast kernel, in transposed (w, h) orientation.

    Attributes:
        mask_t: uint8 0/1 segmentation, shape (w, h); ``mask_t.T`` is the (h, w) mask.
        up_t: Upsampled map, float32 (w, h) (numpy, or a torch tensor on the GPU path).
        lo: Minimum of the upsampled map (float32 value).
        span: ``max - lo`` in float32; 0 for a constant map.
        argmax: (row, col) of the first maximum of the (h, w) upsampled map in C order.
    """

    mask_t: np.ndarray
    up_t: Any
    lo: float
    span: float
    argmax: tuple[int, int]


def upsample_t(map2d: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling (half-pixel centres) with cv2, returned transposed as (width, height)."""
    src = np.ascontiguousarray(np.asarray(map2d, dtype=np.float32).T)
    if src.shape == (int(width), int(height)):
        return src
    return cv2.resize(src, (int(height), int(width)), interpolation=cv2.INTER_LINEAR)


def _keys(values: np.ndarray) -> np.ndarray:
    """float32 -> int64 keys with the same order (negative floats reversed)."""
    bits = np.asarray(values, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.where(bits >= 0, bits, -(bits & 0x7FFFFFFF))


def _floats(keys: np.ndarray) -> np.ndarray:
    """Inverse of ``_keys``."""
    bits = np.where(keys >= 0, keys, (-keys) | 0x80000000).astype(np.uint32)
    return bits.view(np.float32)


def _normalised(x: np.ndarray, lo: np.float32, span: np.float32, scale: np.float32 | None) -> np.ndarray:
    """The reference's float32 chain ``(x - lo) / span`` (then ``* scale``)."""
    v = np.divide(np.subtract(x, lo, dtype=np.float32), span, dtype=np.float32)
    return v if scale is None else np.multiply(v, scale, dtype=np.float32)


def level_edges(lo: float, span: float, levels: Sequence[float], *, scale: float | None = None, strict: bool = True) -> np.ndarray:
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
    lo32, span32 = np.float32(lo), np.float32(span)
    scale32 = None if scale is None else np.float32(scale)
    target = np.asarray(levels, dtype=np.float32)
    a = np.full(target.shape, _keys(np.array([lo32]))[0], dtype=np.int64)
    top = int(_keys(np.array([np.float32(lo32 + span32)]))[0])
    b = np.full(target.shape, top + 1, dtype=np.int64)  # top + 1 = "no qualifying value"
    while bool((a < b).any()):
        mid = (a + b) // 2
        v = _normalised(_floats(np.minimum(mid, top)), lo32, span32, scale32)
        ok = ((v > target) if strict else (v >= target)) & (mid <= top)
        b = np.where(ok & (a < b), mid, b)
        a = np.where(~ok & (a < b), mid + 1, a)
    edges = _floats(np.minimum(a, top))
    return np.where(a > top, np.float32(np.inf), edges).astype(np.float32)


@numba.njit(cache=True, nogil=True)
def _u8_hist_row_max(up_t: np.ndarray, lo: np.float32, span: np.float32, out: np.ndarray, hist: np.ndarray, row_max: np.ndarray) -> None:  # pragma: no cover - compiled
    s255 = np.float32(255.0)
    n = up_t.shape[1]
    sub = np.zeros((4, 256), dtype=np.int64)  # four interleaved histograms: no store-to-load stalls
    for i in range(up_t.shape[0]):
        row = up_t[i]
        o = out[i]
        for j in range(n):  # vectorisable: float32 chain, C truncation, running maxima
            x = row[j]
            row_max[j] = max(row_max[j], x)
            o[j] = np.uint8(((x - lo) / span) * s255)
        j = 0
        while j + 4 <= n:
            sub[0, o[j]] += 1
            sub[1, o[j + 1]] += 1
            sub[2, o[j + 2]] += 1
            sub[3, o[j + 3]] += 1
            j += 4
        while j < n:
            sub[0, o[j]] += 1
            j += 1
    for k in range(256):
        hist[k] = sub[0, k] + sub[1, k] + sub[2, k] + sub[3, k]


def uint8_hist_and_row_max(up_t: np.ndarray, lo: float, span: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One pass: ``uint8(255 * (up - lo) / span)``, its 256-bin histogram, each original row's max.

    The reference's float32 chain (subtract, divide, multiply by 255, truncate) in a compiled
    loop over the transposed map; bit-identical to the numpy expression (no fast-math). The
    histogram feeds ``otsu_threshold`` and the row maxima give the first C-order argmax, so
    the full-size map is read once.

    Returns:
        (uint8 image (w, h), int64 histogram (256,), float32 row maxima (h,)).
    """
    up_t = np.ascontiguousarray(up_t, dtype=np.float32)
    out = np.empty(up_t.shape, dtype=np.uint8)
    hist = np.zeros(256, dtype=np.int64)
    row_max = np.full(up_t.shape[1], -np.inf, dtype=np.float32)
    _u8_hist_row_max(up_t, np.float32(lo), np.float32(span), out, hist, row_max)
    return out, hist, row_max


def first_argmax(up_t: Any, row_max: Any) -> tuple[int, int]:
    """(row, col) of the first maximum in C order of the (h, w) map, from its transposed copy."""
    row = int(row_max.argmax())  # first row holding the maximum
    col = int(up_t[:, row].argmax())  # first column of that row holding it
    return row, col


def otsu_threshold(hist: Sequence[float]) -> int:
    """Otsu's threshold of a 256-bin histogram, replicating ``cv2.THRESH_OTSU`` bit for bit.

    Follows OpenCV's sequential double-precision recursion (including its skip of bins
    where one class is empty, which leaves the running class mean scaled) and its first
    strict maximum.
    """
    h = [float(v) for v in hist]
    total = sum(h)
    if total <= 0:
        return 0
    scale = 1.0 / total
    mu = 0.0
    for i, v in enumerate(h):
        mu += i * v
    mu *= scale
    mu1 = q1 = 0.0
    max_sigma, max_val = 0.0, 0
    eps = float(np.finfo(np.float32).eps)
    for i, v in enumerate(h):
        p_i = v * scale
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


def _smooth(u8_t: np.ndarray, k: int) -> np.ndarray:
    """The reference's optional smoothing (JET colour map -> grey -> box filter -> inverted)."""
    u8 = np.ascontiguousarray(u8_t.T)
    jet = cv2.applyColorMap(u8, cv2.COLORMAP_JET)
    grey = cv2.boxFilter(cv2.cvtColor(jet, cv2.COLOR_RGB2GRAY), -1, (k, k))
    return np.ascontiguousarray((255 - grey).T)


def fill_holes_t(binary_t: np.ndarray) -> np.ndarray:
    """Outer contours filled (reference), for a transposed 0/1 mask.

    Holes are topological, so they are detected on the transposed mask; only a mask with
    holes is transposed back and filled by PIL like the reference (rare, and exact).
    """
    _, hierarchy = cv2.findContours(binary_t, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None or not (hierarchy[0][:, 3] >= 0).any():
        return binary_t
    return np.ascontiguousarray(fill_outer_contours(np.ascontiguousarray(binary_t.T)).T)


def _binarise(u8_t: np.ndarray, hist: np.ndarray, up_t: np.ndarray, lo: float, span: float, config: SegmentationConfig) -> np.ndarray:
    """Transposed 0/1 mask from the uint8 image (Otsu) or the float map (fixed threshold)."""
    if config.threshold is not None:
        edge = level_edges(lo, span, [float(config.threshold)])[0]
        return (up_t >= edge).view(np.uint8)
    if config.smoothing_k > 0:
        return _binarise_cpu_u8(_smooth(u8_t, config.smoothing_k), config)
    if hist[0] == u8_t.size:  # reference: maxval = max(uint8) = 0 gives an empty mask
        return np.zeros_like(u8_t)
    _, binary = cv2.threshold(u8_t, otsu_threshold(hist), 1, cv2.THRESH_BINARY)
    return fill_holes_t(binary) if config.fill_contours else binary


def segment_map_cpu(map2d: np.ndarray, height: int, width: int, prob: float, config: SegmentationConfig) -> FastMap:
    """Upsample, normalise, binarise and locate the maximum of one map with cv2 / numpy.

    Args:
        map2d: 2-D map at native resolution (finite).
        height: Original image height.
        width: Original image width.
        prob: Model probability (for the probability cutoff).
        config: Segmentation options.

    Returns:
        The transposed mask, upsampled map, normalisation constants and first argmax.
    """
    m = np.asarray(map2d, dtype=np.float32)
    up_t = upsample_t(m, height, width)
    lo, hi = cv2.minMaxLoc(up_t)[:2]
    span = float(np.float32(np.float32(hi) - np.float32(lo)))
    constant = bool(m.max() == m.min()) or span <= 0
    if constant:
        row_max = up_t.max(axis=0)
        return FastMap(np.zeros(up_t.shape, np.uint8), up_t, float(lo), 0.0, first_argmax(up_t, row_max))
    u8_t, hist, row_max = uint8_hist_and_row_max(up_t, lo, span)
    argmax = first_argmax(up_t, row_max)
    if prob < config.prob_cutoff:
        return FastMap(np.zeros(up_t.shape, np.uint8), up_t, float(lo), span, argmax)
    return FastMap(_binarise(u8_t, hist, up_t, lo, span, config), up_t, float(lo), span, argmax)


def segment_map_torch(map2d: np.ndarray, height: int, width: int, prob: float, config: SegmentationConfig, device: torch.device) -> FastMap:
    """GPU variant of ``segment_map_cpu``: the full-size work runs in torch on ``device``.

    Upsampling (torch bilinear), min/max, the uint8 image, its histogram, the Otsu
    threshold (``otsu_threshold``) and the argmax run on the device; the binary mask comes
    back to the CPU for the contour check and RLE encoding. ``up_t`` stays on the device.
    """
    t = torch.as_tensor(np.ascontiguousarray(map2d, dtype=np.float32), device=device)[None, None]
    up = F.interpolate(t, size=(int(height), int(width)), mode="bilinear", align_corners=False)[0, 0] if tuple(t.shape[-2:]) != (height, width) else t[0, 0]
    lo_t, hi_t = torch.aminmax(up)
    lo, span = float(lo_t), float(hi_t - lo_t)
    flat = int(torch.argmax(up))  # first maximal index
    argmax = divmod(flat, int(width))
    up_t = up.t().contiguous()
    empty = np.zeros((int(width), int(height)), np.uint8)
    if bool(t.max() == t.min()) or span <= 0 or prob < config.prob_cutoff:
        return FastMap(empty, up_t, lo, span, argmax)
    if config.threshold is not None:
        edge = float(level_edges(lo, span, [float(config.threshold)])[0])
        return FastMap((up_t >= edge).to(torch.uint8).cpu().numpy(), up_t, lo, span, argmax)
    u8_t = torch.mul(torch.div(torch.sub(up_t, lo_t), hi_t - lo_t), 255).to(torch.uint8)
    if config.smoothing_k > 0:
        cpu = _smooth(u8_t.cpu().numpy(), config.smoothing_k)
        return FastMap(_binarise_cpu_u8(cpu, config), up_t, lo, span, argmax)
    if int(u8_t.max()) == 0:
        return FastMap(empty, up_t, lo, span, argmax)
    thresh = otsu_threshold(torch.bincount(u8_t.reshape(-1), minlength=256).cpu().tolist())
    binary = (u8_t > thresh).to(torch.uint8).cpu().numpy()
    return FastMap(fill_holes_t(binary) if config.fill_contours else binary, up_t, lo, span, argmax)


def _binarise_cpu_u8(u8_t: np.ndarray, config: SegmentationConfig) -> np.ndarray:
    """Otsu + contour fill of an already smoothed transposed uint8 image."""
    if int(u8_t.max()) == 0:
        return np.zeros_like(u8_t)
    _, binary = cv2.threshold(u8_t, 0, 1, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    return fill_holes_t(binary) if config.fill_contours else binary


def threshold_counts(fast: FastMap, thresholds: Sequence[float], gt_t: np.ndarray, bbox: Sequence[float]) -> tuple[list[int], list[int]]:
    """Pixels above each fixed threshold, over the image and inside the ground truth.

    ``norm > t`` (float32, like the reference's tuning) is evaluated as ``up >= edge``;
    the intersection only looks inside the ground truth's bounding box.

    Args:
        fast: Output of a ``segment_map_*`` kernel.
        thresholds: Fixed thresholds on the normalised map.
        gt_t: Transposed (w, h) uint8 ground-truth mask (``pycocotools.mask.decode(rle).T``,
            a view without copy).
        bbox: pycocotools bounding box of the ground truth: [x, y, w, h] in (h, w) coordinates.

    Returns:
        (areas, intersections), one int per threshold.
    """
    if fast.span <= 0:
        return [0] * len(thresholds), [0] * len(thresholds)
    edges = level_edges(fast.lo, fast.span, thresholds)
    x0, y0 = int(bbox[0]), int(bbox[1])
    x1, y1 = x0 + int(np.ceil(bbox[2])), y0 + int(np.ceil(bbox[3]))
    up_t = fast.up_t
    g_t = np.ascontiguousarray(gt_t[x0:x1, y0:y1]).view(bool)
    if isinstance(up_t, torch.Tensor):
        inside = up_t[x0:x1, y0:y1][torch.as_tensor(g_t, device=up_t.device)]
        return [int((up_t >= float(e)).sum()) for e in edges], [int((inside >= float(e)).sum()) for e in edges]
    inside = up_t[x0:x1, y0:y1][g_t]
    return [int(np.count_nonzero(up_t >= e)) for e in edges], [int(np.count_nonzero(inside >= e)) for e in edges]
