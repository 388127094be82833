"""torch's bilinear upsampling, bit for bit, and Otsu segmentation without the full-size map.

The reference upsamples a 320 x 320 map to the ~2,000 x 2,500 image with
``F.interpolate(mode="bilinear", align_corners=False)`` and then touches every pixel
several times (normalise, ``uint8``, histogram, threshold, contours, RLE). Two facts make
most of that unnecessary:

1. **torch's CPU arithmetic can be replicated exactly.** The kernel interpolates along
   the width, then the height: for output (y, x) with source rows ``k0, k1`` and columns
   ``j0, j1`` (``bilinear_taps``), ``r_k(x) = fma(m[k, j0], wx0, m[k, j1] * wx1)`` and
   ``v(y, x) = fma(r_k0(x), wy0, r_k1(x) * wy1)`` in float32, where the source coordinate is
   ``fma(n_in / n_out, d + 0.5, -0.5)`` and the weights are ``1 - lambda`` and ``lambda``.
   The fused multiply-adds are LLVM's ``llvm.fma.f32`` (one rounding). Verified bit for bit
   against ``F.interpolate`` (AVX2/AVX512 builds, outputs above 4,096 pixels: every CXR)
   in the tests; torch's path for smaller outputs, or a build that rounds differently,
   differs by float rounding only.
2. **Output pixels come in cells.** All output pixels of a cell (the ~8 x 8 pixels
   sharing the same four source values) are convex combinations of those four values, up
   to a few float32 roundings. So an interval per cell (``_cell_bounds``: the four values
   widened by a rounding bound) settles most questions without touching the pixels:

   * minimum, maximum and the first C-order argmax: only cells that can reach an extreme
     are evaluated pixel by pixel;
   * the mask ``v >= edge`` as column-major run lengths (pycocotools' RLE order): cells
     entirely above or below the edge are whole runs; only the cells the mask boundary
     crosses are evaluated pixel by pixel;
   * holes (for the reference's filled outer contours): a union-find over the background
     runs of adjacent columns (4-connected background, as ``cv2.findContours`` sees it).

   Only the 256-bin histogram of the reference's ``uint8`` image (for Otsu) needs every
   pixel's level. A cell whose interval lies within one level is counted at once; the
   other cells are evaluated row by row from the width-interpolated source rows, which
   are computed over those cells' span only (contiguous, vectorised; nothing full-size
   kept), and each row's levels are counted run by run (64 levels compared at once).

So the masks, argmax and histograms equal those of the reference's torch arithmetic, not
only up to rounding, and no full-size array is allocated unless a caller asks for
``BilinearMap.full_t`` (mass metrics, tuning counts, smoothing).
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

# Bound on the rounding of one interpolated value relative to the largest of the four
# source values: two fused multiply-adds and one product per direction (~3 ulps each, at
# most 2**-24 relative per rounding); 2**-20 (16 ulps) per direction leaves a wide margin.
_ROUNDING_REL = 2.0**-20
_ROUNDING_ABS = 1e-40  # subnormal inputs
# Bound, in levels, on the error of the reference's float32 chain ``255 * (v - lo) / span``
# (three roundings of at most 2**-24 relative each, on values <= 255: < 1e-4 levels).
_LEVEL_SLACK = 1e-3


@intrinsic
def _fma(typingctx, a, b, c):  # pragma: no cover - compiled
    """float32 fused multiply-add ``a * b + c`` with one rounding (``llvm.fma.f32``)."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fn = builder.module.declare_intrinsic(
            "llvm.fma", [f32], ir.FunctionType(f32, [f32, f32, f32])
        )
        return builder.call(fn, args)

    return sig, codegen


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and float32 weights of torch's bilinear resize (``align_corners=False``).

    ``src = max(fma(n_in / n_out, d + 0.5, -0.5), 0)``, ``i0 = min(floor(src), n_in - 1)``,
    ``lambda = clamp(src - i0, 0, 1)``, ``i1 = i0 + (i0 < n_in - 1)`` (torch's
    ``area_pixel_compute_source_index`` and ``guard_index_and_lambda``; the float32
    product is exact in float64, so one float32 rounding of the float64 expression is the
    fused multiply-add).

    Returns:
        (i0, i1, w0, w1): int64 indices and float32 weights ``1 - lambda`` and ``lambda``.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"bilinear_taps needs positive sizes, got n_in={n_in}, n_out={n_out}")
    scale = np.float32(np.float32(n_in) / np.float32(n_out))
    d = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    src = np.maximum(
        (np.float64(scale) * d.astype(np.float64) - 0.5).astype(np.float32), np.float32(0.0)
    )
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, (np.float32(1.0) - lam).astype(np.float32), lam


def _groups(i0: np.ndarray, i1: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of the maximal runs of outputs that share the same source pair."""
    change = np.flatnonzero((np.diff(i0) != 0) | (np.diff(i1) != 0)) + 1
    return np.concatenate([[0], change]).astype(np.int64), np.concatenate([change, [n]]).astype(
        np.int64
    )


@lru_cache(maxsize=32)
def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, ...]:
    """``bilinear_taps`` of one axis and its groups (``_groups``), cached by size.

    The maps of a folder share their sizes (one per task of each CXR, in file-name order),
    so most maps reuse their axes. The arrays are shared between maps: never written.
    """
    i0, i1, w0, w1 = bilinear_taps(n_in, n_out)
    return (i0, i1, w0, w1, *_groups(i0, i1, n_out))


# The loops below compile with LLVM's no-NaN / no-infinity / no-signed-zero flags, which
# let it turn their comparisons into vector min / max instructions; maps are checked finite
# before they get here (``BilinearMap`` needs finite values), and a minimum or maximum of
# finite floats involves no rounding, so the flags do not change any value. LLVM does not
# vectorise a min / max reduction into one scalar here (it stays a chain of scalar
# ``vmaxsd``), so each loop keeps one running value per column instead, element-wise.
_FINITE = {"nnan", "ninf", "nsz"}


@numba.njit(cache=True, nogil=True, fastmath=_FINITE)
def _abs_max_into(row, acc):  # pragma: no cover - compiled
    """``acc[j] = max(acc[j], |row[j]|)`` (vectorised)."""
    for j in range(acc.shape[0]):
        x = abs(row[j])
        acc[j] = x if x > acc[j] else acc[j]


@numba.njit(cache=True, nogil=True)
def _max_abs(m):  # pragma: no cover - compiled
    """Largest magnitude of a finite 2-D float32 array (0 for an empty one)."""
    acc = np.zeros(m.shape[1], np.float32)
    for k in range(m.shape[0]):
        _abs_max_into(m[k], acc)
    big = np.float32(0.0)
    for j in range(acc.shape[0]):
        big = max(big, acc[j])
    return big


@numba.njit(cache=True, nogil=True, fastmath=_FINITE)
def _pair_extremes(row, k0, k1, rmin, rmax):  # pragma: no cover - compiled
    """``rmin[j], rmax[j]``: min and max of ``row[k0[j]]`` and ``row[k1[j]]``."""
    for j in range(rmin.shape[0]):
        a, b = row[k0[j]], row[k1[j]]
        rmin[j], rmax[j] = min(a, b), max(a, b)


@numba.njit(cache=True, nogil=True, fastmath=_FINITE)
def _bounds_row(
    a_min, b_min, a_max, b_max, slack, lo, hi, g, top, top_row, bottom, bottom_row
):  # pragma: no cover - compiled
    """Row ``g`` of cells' bounds, and per column the largest ``hi`` / smallest ``lo`` so far
    (``top`` / ``bottom``) with the first row holding it (``top_row`` / ``bottom_row``)."""
    for j in range(lo.shape[0]):
        mn = np.float64(min(a_min[j], b_min[j]))
        # products and sums of non-negative floats are non-negative: no slack below 0
        low = mn - slack if mn < 0.0 else max(mn - slack, 0.0)
        high = np.float64(max(a_max[j], b_max[j])) + slack
        lo[j], hi[j] = low, high
        up, down = high > top[j], low < bottom[j]  # strictly: the first row keeps it
        top[j] = high if up else top[j]
        top_row[j] = g if up else top_row[j]
        bottom[j] = low if down else bottom[j]
        bottom_row[j] = g if down else bottom_row[j]


@numba.njit(cache=True, nogil=True)
def _cell_bounds(m, xk0, xk1, yk0, yk1):  # pragma: no cover - compiled
    """Per cell [y group, x group]: an interval holding every output value of the cell.

    Returns:
        (lo, hi, best, low): the (ny, nx) float64 bounds, and the flat (C-order) indices of
        the first largest ``hi`` and the first smallest ``lo`` (``np.argmax(hi)`` and
        ``np.argmin(lo)``, kept per column while the bounds are computed: separate scans
        of the two arrays took 0.16 ms per CheXlocalize map).
    """
    h0, nx, ny = m.shape[0], xk0.shape[0], yk0.shape[0]
    hmin = np.empty((h0, nx), np.float32)  # min / max of each source row over each column pair
    hmax = np.empty((h0, nx), np.float32)
    for k in range(h0):
        _pair_extremes(m[k], xk0, xk1, hmin[k], hmax[k])
    # one rounding bound for the whole map (from its largest magnitude): looser for cells of
    # small values, but a single constant keeps the loop vectorised
    slack = 2.0 * (np.float64(_max_abs(m)) * _ROUNDING_REL + _ROUNDING_ABS)
    lo = np.empty((ny, nx), np.float64)
    hi = np.empty((ny, nx), np.float64)
    top, bottom = np.full(nx, -np.inf), np.full(nx, np.inf)
    top_row, bottom_row = np.zeros(nx, np.int64), np.zeros(nx, np.int64)
    for g in range(ny):
        _bounds_row(
            hmin[yk0[g]],
            hmin[yk1[g]],
            hmax[yk0[g]],
            hmax[yk1[g]],
            slack,
            lo[g],
            hi[g],
            g,
            top,
            top_row,
            bottom,
            bottom_row,
        )
    best_v, low_v = top.max(), bottom.min()
    best, low = ny * nx, ny * nx
    for j in range(nx):  # the first in C order among the columns holding the extreme
        if top[j] == best_v:
            best = min(best, top_row[j] * nx + j)
        if bottom[j] == low_v:
            low = min(low, bottom_row[j] * nx + j)
    return lo, hi, best, low


@numba.njit(cache=True, nogil=True)
def _cell_extremes(
    m, xi0, xi1, xw0, xw1, xs, xe, yk0, ys, ye, yk1, yw0, yw1, g, j, ext
):  # pragma: no cover - compiled
    """Fold cell (g, j)'s pixels into ``ext`` = [min, max, argmax row, argmax col] (float64)."""
    k0, k1 = yk0[g], yk1[g]
    j0, j1 = xi0[xs[j]], xi1[xs[j]]  # the cell's source columns (one pair per x group)
    a0, b0, a1, b1 = m[k0, j0], m[k0, j1], m[k1, j0], m[k1, j1]
    vmin, vmax = np.float32(ext[0]), np.float32(ext[1])
    arow, acol = np.int64(ext[2]), np.int64(ext[3])
    for x in range(xs[j], xe[j]):
        c0 = _fma(a0, xw0[x], b0 * xw1[x])
        c1 = _fma(a1, xw0[x], b1 * xw1[x])
        for y in range(ys[g], ye[g]):
            v = _fma(c0, yw0[y], c1 * yw1[y])
            if v < vmin:
                vmin = v
            if v > vmax or (v == vmax and (y < arow or (y == arow and x < acol))):
                vmax, arow, acol = v, y, x
    ext[0], ext[1], ext[2], ext[3] = vmin, vmax, arow, acol


@numba.njit(cache=True, nogil=True)
def _extremes(
    m, xi0, xi1, xw0, xw1, xs, xe, yk0, ys, ye, yk1, yw0, yw1, clo, chi, best, low
):  # pragma: no cover - compiled
    """Exact (min, max, argmax row, argmax col) of the upsampled map, first maximum in C order.

    ``best`` and ``low``: the flat indices of the cells with the largest upper and the
    smallest lower bound (``_cell_bounds``). The cells are scanned in row-major order (the
    bounds' memory order); the result does not depend on the order, since ties of the
    maximum are broken by (row, col).
    """
    ny, nx = clo.shape
    gb, jb = best // nx, best % nx
    gl, jl = low // nx, low % nx
    # float64 holds every float32 value and row/column index exactly
    ext = np.array([np.inf, -np.inf, np.float64(1 << 52), np.float64(1 << 52)])
    args = (m, xi0, xi1, xw0, xw1, xs, xe, yk0, ys, ye, yk1, yw0, yw1)
    # the two most promising cells first: real values to prune the others with
    _cell_extremes(*args, gb, jb, ext)
    if (gl, jl) != (gb, jb):
        _cell_extremes(*args, gl, jl, ext)
    e0, e1 = ext[0], ext[1]  # kept in registers; refreshed after each evaluated cell
    for g in range(ny):
        for j in range(nx):
            if chi[g, j] < e1 and clo[g, j] >= e0:
                # cannot hold a larger (or equal, earlier) maximum nor a smaller minimum
                continue
            if (g == gb and j == jb) or (g == gl and j == jl):
                continue
            _cell_extremes(*args, g, j, ext)
            e0, e1 = ext[0], ext[1]
    return np.float32(ext[0]), np.float32(ext[1]), np.int64(ext[2]), np.int64(ext[3])


# Padding, in values, after the end of ``_width_part``'s ``spread`` rows: a cell is spread
# with whole 8- or 16-value stores that may run past the last column.
_SPREAD_PAD = 16


def _c_vector(arr: Any, dtype: Any) -> bool:
    """Whether the numba type ``arr`` is a 1-D C-contiguous array of ``dtype`` (the operand
    the vector intrinsics below load from or store to without bounds checks)."""
    return (
        isinstance(arr, types.Array) and arr.dtype == dtype and arr.ndim == 1 and arr.layout == "C"
    )


@intrinsic
def _splat8(typingctx, arr, start, val):  # pragma: no cover - compiled
    """Store ``val`` into ``arr[start : start + 8]`` (1-D C-contiguous float32) at once.

    One 8-lane vector store (LLVM lowers it to the machine's widest stores); the caller
    guarantees ``start + 8 <= len(arr)`` (no bounds check).
    """
    if not _c_vector(arr, types.float32):
        return None
    sig = types.void(arr, types.intp, types.float32)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        lanes = ir.VectorType(ir.FloatType(), 8)
        one = builder.insert_element(
            ir.Constant(lanes, ir.Undefined), args[2], ir.Constant(ir.IntType(32), 0)
        )
        vec = builder.shuffle_vector(
            one,
            ir.Constant(lanes, ir.Undefined),
            ir.Constant(ir.VectorType(ir.IntType(32), 8), [0] * 8),
        )
        target = builder.bitcast(builder.gep(data, [args[1]]), lanes.as_pointer())
        builder.store(vec, target, align=4)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def _fma_rows(a, b, wa, wb, out):  # pragma: no cover - compiled
    """``out[x] = fma(a[x], wa[x], b[x] * wb[x])`` (views from 0: LLVM vectorises it)."""
    for x in range(out.shape[0]):
        out[x] = _fma(a[x], wa[x], b[x] * wb[x])


@numba.njit(cache=True, nogil=True)
def _width_part(r, xi0, xi1, xw0, xw1, xs, xe, spread, out, a, b):  # pragma: no cover - compiled
    """``out[a:b]``: source row ``r`` interpolated along the width at output columns [a, b).

    The output columns of a cell (x group ``j``: columns ``xs[j]:xe[j]``) share their two
    source values, so these are spread over the cell's columns first (``spread`` (2,
    ``w + _SPREAD_PAD``) scratch rows; one or two 8-lane stores per value and cell, each
    cell's stores overwriting the previous cell's overrun), then one contiguous
    vectorised pass computes ``fma(r[j0], wx0, r[j1] * wx1)``: the same float32
    operations as indexing ``r`` per column (``r[xi0[x]]``), without a gathered load per
    value and column (the histogram's width pass took 0.6-0.7 of its 2.2 ms that way).
    """
    j = np.searchsorted(xs, a, side="right") - 1
    sa, sb = spread[0], spread[1]
    while j < xs.shape[0] and xs[j] < b:
        s, n = xs[j], xe[j] - xs[j]
        va, vb = r[xi0[s]], r[xi1[s]]
        if n <= 8:
            _splat8(sa, s, va)
            _splat8(sb, s, vb)
        elif n <= 16:
            _splat8(sa, s, va)
            _splat8(sa, s + 8, va)
            _splat8(sb, s, vb)
            _splat8(sb, s + 8, vb)
        else:
            sa[s : s + n] = va
            sb[s : s + n] = vb
        j += 1
    _fma_rows(sa[a:b], sb[a:b], xw0[a:b], xw1[a:b], out[a:b])


@numba.njit(cache=True, nogil=True)
def _cover(
    m, xi0, xi1, xw0, xw1, xs, xe, spread, k, buf, state, a, b
):  # pragma: no cover - compiled
    """Make ``buf`` hold source row ``k`` width-interpolated over at least [a, b).

    ``state`` = [row, v0, v1]: the row ``buf`` holds and its valid columns [v0, v1). Only
    the missing columns are computed (the values do not depend on the range).
    """
    args = (xi0, xi1, xw0, xw1, xs, xe, spread, buf)
    if state[0] != k:
        _width_part(m[k], *args, a, b)
        state[0], state[1], state[2] = k, a, b
        return
    v0, v1 = state[1], state[2]
    if b < v0 or a > v1:  # disjoint from the valid range: keep the request only
        _width_part(m[k], *args, a, b)
        state[1], state[2] = a, b
        return
    if a < v0:
        _width_part(m[k], *args, a, v0)
        state[1] = a
    if b > v1:
        _width_part(m[k], *args, v1, b)
        state[2] = b


@numba.njit(cache=True, nogil=True)
def _group_rows(
    m, xi0, xi1, xw0, xw1, xs, xe, spread, k0, k1, bufs, state, a, b
):  # pragma: no cover - compiled
    """Width-interpolated source rows ``k0`` and ``k1`` over columns [a, b).

    ``spread`` is ``_width_part``'s scratch. ``bufs`` (2, w) and ``state`` (2, 3) persist
    across a map's row groups: consecutive groups share a source row, which stays where it
    is and is not recomputed; only the columns a group needs are computed (the histogram
    needs its mixed cells' span only).

    Returns:
        The indices in ``bufs`` of row ``k0`` and row ``k1``.
    """
    i0 = 0 if state[0, 0] == k0 else (1 if state[1, 0] == k0 else -1)
    if i0 < 0:  # neither holds k0: take the buffer that does not hold k1
        i0 = 1 if state[0, 0] == k1 else 0
    i1 = 1 - i0
    _cover(m, xi0, xi1, xw0, xw1, xs, xe, spread, k0, bufs[i0], state[i0], a, b)
    _cover(m, xi0, xi1, xw0, xw1, xs, xe, spread, k1, bufs[i1], state[i1], a, b)
    return i0, i1


@numba.njit(cache=True, nogil=True, inline="always")
def _level(v, lo, span):  # pragma: no cover - compiled
    """The reference's ``uint8(255 * (v - lo) / span)`` in float32 (for lo <= v <= lo + span)."""
    return np.uint8(((v - lo) / span) * np.float32(255.0))


@numba.njit(cache=True, nogil=True)
def _row_levels(ra, rb, wa, wb, lo, span, out):  # pragma: no cover - compiled
    """``out[x]``: level of ``fma(ra[x], wa, rb[x] * wb)``, the reference's float32 chain.

    A loop from 0 over views: LLVM vectorises it (the same loop over an offset range in
    the caller was not, and ran ~3x slower).
    """
    for x in range(out.shape[0]):
        out[x] = _level(_fma(ra[x], wa, rb[x] * wb), lo, span)


# Padding, in bytes, after the end of the histogram's ``levels`` row: a change mask reads
# 64 levels at once and may run past the last column (the bits past it are cleared).
_LEVELS_PAD = 64


@intrinsic
def _change_mask64(typingctx, arr, i):  # pragma: no cover - compiled
    """Bit ``k`` set where ``arr[i + k] != arr[i + k - 1]``, for k in 0..63 (uint64).

    Two unaligned 64-byte loads, one vector compare (AVX-512: one ``vpcmpb`` into a mask
    register; AVX2: two compares and two byte-mask moves). ``arr`` is 1-D C-contiguous
    uint8; the caller guarantees ``1 <= i`` and ``i + 64 <= len(arr)`` (no bounds check).
    """
    if not _c_vector(arr, types.uint8):
        return None
    sig = types.uint64(arr, types.intp)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        lanes = ir.VectorType(ir.IntType(8), 64).as_pointer()
        before = builder.sub(args[1], ir.Constant(args[1].type, 1))
        here = builder.load(builder.bitcast(builder.gep(data, [args[1]]), lanes), align=1)
        prev = builder.load(builder.bitcast(builder.gep(data, [before]), lanes), align=1)
        return builder.bitcast(builder.icmp_unsigned("!=", here, prev), ir.IntType(64))

    return sig, codegen


@intrinsic
def _lowest_bit(typingctx, mask):  # pragma: no cover - compiled
    """Index of the lowest set bit of a non-zero uint64 (``llvm.cttz``, one ``tzcnt``)."""
    if mask != types.uint64:
        return None
    sig = types.intp(types.uint64)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        fn = builder.module.declare_intrinsic(
            "llvm.cttz", [i64], ir.FunctionType(i64, [i64, ir.IntType(1)])
        )
        return builder.call(fn, [args[0], ir.Constant(ir.IntType(1), 1)])

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def _count_runs(levels, a, b, hist):  # pragma: no cover - compiled
    """Add the levels ``levels[a:b]`` (``a < b``) to ``hist``, one run of equal levels at once.

    Along an output row the level changes about once in 8 pixels where it changes at all
    (the mixed cells' span), so the row is scanned 64 levels at a time for changes
    (``_change_mask64``), and each run adds its length to its level's bin: a few
    instructions per change instead of one table increment per pixel. ``levels`` holds
    ``_LEVELS_PAD`` bytes after ``b`` (read, never counted).
    """
    cur, start = levels[a], a
    i = a + 1
    while i < b:
        mask = _change_mask64(levels, i)
        if b - i < 64:  # the last block: only the changes before b
            mask &= (np.uint64(1) << np.uint64(b - i)) - np.uint64(1)
        while mask != 0:
            p = i + _lowest_bit(mask)
            hist[cur] += p - start
            cur, start = levels[p], p
            mask &= mask - np.uint64(1)
        i += 64
    hist[cur] += b - start


@numba.njit(cache=True, nogil=True)
def _histogram(
    m, xi0, xi1, xw0, xw1, xs, xe, yk0, ys, ye, yk1, yw0, yw1, clo, chi, lo, span
):  # pragma: no cover - compiled
    """256-bin histogram of ``uint8(255 * (v - lo) / span)`` over all output pixels.

    A cell whose interval maps to one level (the level is non-decreasing in ``v``) is
    counted at once, unless it lies between the row group's first and last mixed cells:
    that span is evaluated row by row (contiguous, vectorised), from the width-interpolated
    source rows, which are computed over the span only (``_group_rows``), and its levels
    are counted run by run (``_count_runs``).
    """
    ny, nx = clo.shape
    w = xi0.shape[0]
    bufs = np.empty((2, w), np.float32)
    spread = np.empty((2, w + _SPREAD_PAD), np.float32)
    state = np.full((2, 3), -1, np.int64)
    levels = np.zeros(w + _LEVELS_PAD, np.uint8)
    hist = np.zeros(256, np.int64)
    la = np.empty(nx, np.float64)  # lowest and highest level a cell's values can have
    lb = np.empty(nx, np.float64)
    lo64, inv = np.float64(lo), 255.0 / np.float64(span)
    for g in range(ny):
        rows = ye[g] - ys[g]
        for j in range(nx):  # vectorised
            la[j] = max(np.floor((clo[g, j] - lo64) * inv - _LEVEL_SLACK), 0.0)
            lb[j] = min(np.floor((chi[g, j] - lo64) * inv + _LEVEL_SLACK), 255.0)
        # the single-level cells before the first mixed one and after the last one
        first = 0
        while first < nx and la[first] == lb[first]:
            hist[np.int64(la[first])] += rows * (xe[first] - xs[first])
            first += 1
        if first == nx:
            continue
        last = nx - 1
        while la[last] == lb[last]:
            hist[np.int64(la[last])] += rows * (xe[last] - xs[last])
            last -= 1
        lo_x, hi_x = xs[first], xe[last]
        i0, i1 = _group_rows(
            m, xi0, xi1, xw0, xw1, xs, xe, spread, yk0[g], yk1[g], bufs, state, lo_x, hi_x
        )
        ra, rb = bufs[i0], bufs[i1]
        for y in range(ys[g], ye[g]):
            _row_levels(ra[lo_x:hi_x], rb[lo_x:hi_x], yw0[y], yw1[y], lo, span, levels[lo_x:hi_x])
            _count_runs(levels, lo_x, hi_x, hist)
    return hist


@numba.njit(cache=True, nogil=True)
def _append(counts, n, length):  # pragma: no cover - compiled
    """``counts[n] = length`` with ``counts`` doubled when full; returns (counts, n + 1)."""
    if n >= counts.shape[0]:
        grown = np.empty(counts.shape[0] * 2, np.int64)
        grown[: counts.shape[0]] = counts
        counts = grown
    counts[n] = length
    return counts, n + 1


@numba.njit(cache=True, nogil=True)
def _runs(
    m, xi0, xi1, xw0, xw1, xs, xe, yk0, ys, ye, yk1, yw0, yw1, clo, chi, edge
):  # pragma: no cover - compiled
    """Column-major run lengths (zeros first, pycocotools order) of the mask ``v >= edge``."""
    ny, nx = clo.shape
    e64 = np.float64(edge)
    seg_g = np.empty(
        ny, np.int64
    )  # the x group's column as segments: merged whole cells, or one mixed cell
    seg_len = np.empty(ny, np.int64)
    seg_state = np.empty(ny, np.int8)  # 1 inside, 0 outside, -1 mixed
    # a mixed segment's four source values: rows k0, k1 at the group's columns j0, j1
    seg_src = np.empty((ny, 4), np.float32)
    counts = np.empty(4096, np.int64)
    n = 0
    cur = np.int8(0)
    length = np.int64(0)
    # each cell's state in one row-major pass (branch-free, vectorised: clo <= chi, so
    # 2 * (clo >= edge) + (chi < edge) - 1 is 1 inside, 0 outside, -1 mixed); the column
    # loop below reads it down the columns from a 1-byte array that stays in the cache
    # (reading the float64 bounds down a column missed it at every cell: 0.5 ms of the
    # 0.8 ms this function took on a 320 x 320 map)
    cell_state = np.empty((ny, nx), np.int8)
    for g in range(ny):
        for j in range(nx):
            cell_state[g, j] = np.int8(2 * np.int8(clo[g, j] >= e64) + np.int8(chi[g, j] < e64) - 1)
    for j in range(nx):
        ns = 0
        bound = 0  # run ends one column of this group can add: 1 per whole segment, 1 per pixel
        j0, j1 = xi0[xs[j]], xi1[xs[j]]
        for g in range(ny):
            st = cell_state[g, j]
            if st >= 0 and ns > 0 and seg_state[ns - 1] == st:
                seg_len[ns - 1] += ye[g] - ys[g]
            else:
                seg_g[ns], seg_len[ns], seg_state[ns] = g, ye[g] - ys[g], st
                if st < 0:
                    k0, k1 = yk0[g], yk1[g]
                    seg_src[ns, 0], seg_src[ns, 1] = m[k0, j0], m[k0, j1]
                    seg_src[ns, 2], seg_src[ns, 3] = m[k1, j0], m[k1, j1]
                ns += 1
                bound += 1 if st >= 0 else ye[g] - ys[g]
        need = n + bound * (xe[j] - xs[j]) + 1
        if need > counts.shape[0]:  # grown here, never inside the pixel loops
            grown = np.empty(max(need, 2 * counts.shape[0]), np.int64)
            grown[:n] = counts[:n]
            counts = grown
        for x in range(xs[j], xe[j]):
            for s in range(ns):
                st = seg_state[s]
                if st >= 0:
                    if st != cur:
                        counts[n] = length
                        n += 1
                        cur, length = st, np.int64(0)
                    length += seg_len[s]
                    continue
                g = seg_g[s]
                c0 = _fma(seg_src[s, 0], xw0[x], seg_src[s, 1] * xw1[x])
                c1 = _fma(seg_src[s, 2], xw0[x], seg_src[s, 3] * xw1[x])
                for y in range(ys[g], ye[g]):
                    on = np.int8(1) if _fma(c0, yw0[y], c1 * yw1[y]) >= edge else np.int8(0)
                    if on != cur:
                        counts[n] = length
                        n += 1
                        cur, length = on, np.int64(0)
                    length += 1
    counts, n = _append(counts, n, length)
    return counts[:n]


@numba.njit(cache=True, nogil=True, inline="always")
def _bucket_between(v, edges, b_lo, b_hi):  # pragma: no cover - compiled
    """Number of (ascending) ``edges`` ``<= v`` for a value known to lie in buckets
    ``b_lo .. b_hi``: every edge below ``b_lo`` is ``<= v`` and none from ``b_hi`` on is."""
    b = b_lo
    for t in range(b_lo, b_hi):
        b += v >= edges[t]
    return b


@numba.njit(cache=True, nogil=True)
def _edge_counts(
    m, xi0, xi1, xw0, xw1, xs, xe, yk0, ys, ye, yk1, yw0, yw1, clo, chi, edges, gt_runs
):  # pragma: no cover - compiled
    """Pixels per bucket between ascending float32 ``edges``, over the map and inside a mask.

    ``gt_runs``: column-major run lengths (zeros first) of the mask. A cell whose interval
    lies in one bucket counts at once (its area, and its overlap with each mask run);
    only the pixels of cells an edge crosses are evaluated.

    Returns:
        (area, inside): int64 arrays of ``len(edges) + 1`` buckets.
    """
    ny, nx = clo.shape
    h, n_edges = ye[ny - 1], edges.shape[0]
    e64 = edges.astype(np.float64)
    # the buckets of the cell's lowest and highest values (equal: the whole cell is in one
    # bucket), one edge at a time over a row of cells (vectorised); a pixel of a crossed
    # cell is compared with the edges between them only
    blo = np.zeros((ny, nx), np.int32)
    bhi = np.zeros((ny, nx), np.int32)
    area = np.zeros(n_edges + 1, np.int64)
    inside = np.zeros(n_edges + 1, np.int64)
    for g in range(ny):
        lo_row, hi_row, clo_row, chi_row = blo[g], bhi[g], clo[g], chi[g]
        for t in range(n_edges):
            et = e64[t]
            for j in range(nx):
                lo_row[j] += np.int32(clo_row[j] >= et)
                hi_row[j] += np.int32(chi_row[j] >= et)
    for g in range(ny):  # row-major: the counts do not depend on the order of the cells
        rows = ye[g] - ys[g]
        k0, k1 = yk0[g], yk1[g]
        for j in range(nx):
            b0, b1 = blo[g, j], bhi[g, j]
            if b0 == b1:
                area[b0] += rows * (xe[j] - xs[j])
                continue
            j0, j1 = xi0[xs[j]], xi1[xs[j]]  # the cell's source columns
            s00, s01, s10, s11 = m[k0, j0], m[k0, j1], m[k1, j0], m[k1, j1]
            for x in range(xs[j], xe[j]):
                c0 = _fma(s00, xw0[x], s01 * xw1[x])
                c1 = _fma(s10, xw0[x], s11 * xw1[x])
                for y in range(ys[g], ye[g]):
                    area[_bucket_between(_fma(c0, yw0[y], c1 * yw1[y]), edges, b0, b1)] += 1
    col_group = np.empty(xi0.shape[0], np.int64)
    for j in range(nx):
        col_group[xs[j] : xe[j]] = j
    row_group = np.empty(h, np.int64)
    for g in range(ny):
        row_group[ys[g] : ye[g]] = g
    pos = np.int64(0)
    for i in range(gt_runs.shape[0]):
        start, end = pos, pos + gt_runs[i]
        pos = end
        if i % 2 == 0:  # background run
            continue
        while start < end:  # the run's part in column x: rows [y0, y1)
            x = start // h
            y0, y1 = start - x * h, min(end - x * h, h)
            start = x * h + y1
            j = col_group[x]
            g = row_group[y0]
            while g < ny and ys[g] < y1:
                a, b = max(y0, ys[g]), min(y1, ye[g])
                b0, b1 = blo[g, j], bhi[g, j]  # down a column, for the mask's runs only
                if b0 == b1:
                    inside[b0] += b - a
                else:
                    k0, k1 = yk0[g], yk1[g]
                    c0 = _fma(m[k0, xi0[x]], xw0[x], m[k0, xi1[x]] * xw1[x])
                    c1 = _fma(m[k1, xi0[x]], xw0[x], m[k1, xi1[x]] * xw1[x])
                    for y in range(a, b):
                        v = _fma(c0, yw0[y], c1 * yw1[y])
                        inside[_bucket_between(v, edges, b0, b1)] += 1
                g += 1
    return area, inside


@numba.njit(cache=True, nogil=True)
def _full(
    m, xi0, xi1, xw0, xw1, xs, xe, yk0, ys, ye, yk1, yw0, yw1, h
):  # pragma: no cover - compiled
    """The upsampled map, (h, w) C order."""
    w = xi0.shape[0]
    out = np.empty((h, w), np.float32)
    bufs = np.empty((2, w), np.float32)
    spread = np.empty((2, w + _SPREAD_PAD), np.float32)
    state = np.full((2, 3), -1, np.int64)
    for g in range(yk0.shape[0]):
        i0, i1 = _group_rows(
            m, xi0, xi1, xw0, xw1, xs, xe, spread, yk0[g], yk1[g], bufs, state, 0, w
        )
        ra, rb = bufs[i0], bufs[i1]
        for y in range(ys[g], ye[g]):
            wa, wb = yw0[y], yw1[y]
            o = out[y]
            for x in range(w):
                o[x] = _fma(ra[x], wa, rb[x] * wb)
    return out


@numba.njit(cache=True, nogil=True)
def _find(parent, i):  # pragma: no cover - compiled
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, nogil=True)
def _runs_have_hole(counts, h, w):  # pragma: no cover - compiled
    n_bg = 0  # background runs split at column boundaries
    pos = np.int64(0)
    for i in range(0, counts.shape[0], 2):
        if counts[i] > 0:
            n_bg += (pos + counts[i] - 1) // h - pos // h + 1
        pos += counts[i] + (counts[i + 1] if i + 1 < counts.shape[0] else 0)
    col = np.empty(n_bg, np.int64)
    top = np.empty(n_bg, np.int64)
    bottom = np.empty(n_bg, np.int64)
    k = 0
    pos = 0
    for i in range(0, counts.shape[0], 2):
        start, end = pos, pos + counts[i]
        while start < end:
            cx = start // h
            stop = min(end, (cx + 1) * h)
            col[k], top[k], bottom[k] = cx, start - cx * h, stop - cx * h
            k += 1
            start = stop
        pos = end + (counts[i + 1] if i + 1 < counts.shape[0] else 0)
    outside = n_bg
    parent = np.arange(n_bg + 1)
    for i in range(n_bg):
        if col[i] == 0 or col[i] == w - 1 or top[i] == 0 or bottom[i] == h:
            parent[_find(parent, i)] = _find(parent, outside)
    i = 0
    while i < n_bg:  # runs of column c against runs of column c + 1, sorted by row
        j = i
        while j < n_bg and col[j] == col[i]:
            j += 1
        q, q_end = j, j
        while q_end < n_bg and col[q_end] == col[i] + 1:
            q_end += 1
        p = i
        while p < j and q < q_end:
            if top[p] < bottom[q] and top[q] < bottom[p]:  # share a row: 4-connected
                ra, rb = _find(parent, p), _find(parent, q)
                if ra != rb:
                    parent[ra] = rb
            if bottom[p] < bottom[q]:
                p += 1
            else:
                q += 1
        i = j
    root = _find(parent, outside)
    for i in range(n_bg):  # noqa: SIM110 - compiled loop, no generator
        if _find(parent, i) != root:
            return True
    return False


def runs_have_hole(counts: np.ndarray, height: int, width: int) -> bool:
    """Whether a column-major RLE mask has a hole.

    A hole is a 4-connected background component that does not touch the image border:
    what ``cv2.findContours`` (8-connected foreground) reports as a hole contour.
    """
    return bool(
        _runs_have_hole(np.ascontiguousarray(counts, dtype=np.int64), int(height), int(width))
    )


@numba.njit(cache=True, nogil=True)
def _drop_isolated_runs(counts, h, w):  # pragma: no cover - compiled
    # an isolated pixel is a one-pixel piece of a column: without any (the usual case: a
    # run's pieces are its first and last column's, the others span whole columns), the
    # mask is unchanged at the cost of one pass over the runs
    single = h <= 1
    pos = np.int64(0)
    for i in range(counts.shape[0]):
        if i % 2 == 1 and counts[i] > 0 and not single:
            s, e = pos, pos + counts[i]
            first_end = min(e, (s // h + 1) * h)
            last_start = max(s, ((e - 1) // h) * h)
            single = first_end - s == 1 or e - last_start == 1
        pos += counts[i]
    if not single:
        return counts
    # foreground runs split at column boundaries, as (column, top, bottom) segments in
    # column-major order (a run of one column is maximal: its neighbours above and below
    # are background)
    n_fg = 0
    pos = np.int64(0)
    for i in range(counts.shape[0]):
        if i % 2 == 1 and counts[i] > 0:
            n_fg += (pos + counts[i] - 1) // h - pos // h + 1
        pos += counts[i]
    col = np.empty(n_fg, np.int64)
    top = np.empty(n_fg, np.int64)
    bottom = np.empty(n_fg, np.int64)
    k = 0
    pos = 0
    for i in range(counts.shape[0]):
        start, end = pos, pos + counts[i]
        pos = end
        if i % 2 == 0:
            continue
        while start < end:
            cx = start // h
            stop = min(end, (cx + 1) * h)
            r0, r1 = start - cx * h, stop - cx * h
            if k > 0 and col[k - 1] == cx and bottom[k - 1] == r0:  # a zero-length gap
                bottom[k - 1] = r1
            else:
                col[k], top[k], bottom[k] = cx, r0, r1
                k += 1
            start = stop
    n_fg = k
    first = np.empty(w + 1, np.int64)  # first segment of each column (n_fg past the last)
    j = 0
    for c in range(w + 1):
        while j < n_fg and col[j] < c:
            j += 1
        first[c] = j
    drop = np.zeros(n_fg, np.bool_)
    n_drop = 0
    for k in range(n_fg):
        if bottom[k] - top[k] != 1:
            continue
        r, c = top[k], col[k]
        alone = True
        for nc in (c - 1, c + 1):
            if nc < 0 or nc >= w:
                continue
            a, b = first[nc], first[nc + 1]
            while a < b:  # the first segment of column nc reaching row r - 1
                mid = (a + b) // 2
                if bottom[mid] >= r:
                    b = mid
                else:
                    a = mid + 1
            if a < first[nc + 1] and top[a] <= r + 1:
                alone = False
                break
        if alone:
            drop[k] = True
            n_drop += 1
    if n_drop == 0:
        return counts
    out = np.empty(2 * n_fg + 1, np.int64)
    n = 0
    done = np.int64(0)  # pixels written so far
    run_start, run_end = np.int64(-1), np.int64(-1)
    for k in range(n_fg):
        if drop[k]:
            continue
        s, e = col[k] * h + top[k], col[k] * h + bottom[k]
        if s == run_end:
            run_end = e
            continue
        if run_start >= 0:
            out[n], out[n + 1] = run_start - done, run_end - run_start
            n += 2
            done = run_end
        run_start, run_end = s, e
    if run_start >= 0:
        out[n], out[n + 1] = run_start - done, run_end - run_start
        n += 2
        done = run_end
    if done < h * w or n == 0:
        out[n] = h * w - done
        n += 1
    return out[:n]


def drop_isolated_runs(counts: np.ndarray, height: int, width: int) -> np.ndarray:
    """Column-major run lengths of a mask without its one-pixel components.

    The runs form of ``segmentation.drop_isolated_pixels`` (the reference draws no contour
    of a single point, so an isolated pixel, 8-connectivity, is never in its mask): a
    one-pixel piece of a column is dropped when neither neighbouring column has a set
    pixel in the rows above, beside or below it. Costs O(runs) plus a binary search per
    one-pixel piece; the mask is never decoded. Returns ``counts`` itself when nothing is
    dropped, otherwise runs in pycocotools' form (zeros first, no trailing empty run).
    """
    return _drop_isolated_runs(
        np.ascontiguousarray(counts, dtype=np.int64), int(height), int(width)
    )


@numba.njit(cache=True, nogil=True)
def _rle_string(counts):  # pragma: no cover - compiled
    """pycocotools' compressed RLE string of run lengths (its ``rleToString``), as bytes."""
    out = np.empty(counts.shape[0] * 14 + 1, np.uint8)
    p = 0
    for i in range(counts.shape[0]):
        x = counts[i]
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out[p] = c + 48
            p += 1
    return out[:p]


def rle_from_runs(counts: np.ndarray, height: int, width: int) -> dict[str, Any]:
    """CheXlocalize RLE (``size`` [h, w], ``counts`` str) from column-major run lengths."""
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if int(counts.sum()) != int(height) * int(width):
        raise ValueError(
            f"run lengths sum to {int(counts.sum())}, "
            f"expected {int(height) * int(width)} = {height} x {width}"
        )
    return {
        "size": [int(height), int(width)],
        "counts": _rle_string(counts).tobytes().decode("ascii"),
    }


class BilinearMap:
    """A map and the size it is upsampled to, with exact answers computed without the full map.

    Args:
        src: 2-D map at native resolution (finite float values).
        height: Output height.
        width: Output width.
    """

    def __init__(self, src: np.ndarray, height: int, width: int) -> None:
        self.src = np.ascontiguousarray(src, dtype=np.float32)
        if self.src.ndim != 2:
            raise ValueError(f"BilinearMap needs a 2-D map, got shape {self.src.shape}")
        self.height, self.width = int(height), int(width)
        h0, w0 = self.src.shape
        xi0, xi1, xw0, xw1, self._xs, self._xe = _axis(w0, self.width)
        self._x = (xi0, xi1, xw0, xw1)
        y0, y1, yw0, yw1, ys, ye = _axis(h0, self.height)
        self._y = (y0[ys], ys, ye, y1[ys], yw0, yw1)

    @cached_property
    def _bounds(self) -> tuple[np.ndarray, np.ndarray, int, int]:
        xi0, xi1 = self._x[0], self._x[1]
        return _cell_bounds(self.src, xi0[self._xs], xi1[self._xs], self._y[0], self._y[3])

    @property
    def _cells(self) -> tuple[np.ndarray, np.ndarray]:
        return self._bounds[0], self._bounds[1]

    def _cell_args(self) -> tuple[Any, ...]:
        return (self.src, *self._x, self._xs, self._xe, *self._y, *self._cells)

    def extremes(self) -> tuple[float, float, tuple[int, int]]:
        """(min, max, (row, col) of the first maximum in C order) of the upsampled map."""
        lo, hi, row, col = _extremes(*self._cell_args(), *self._bounds[2:])
        return float(lo), float(hi), (int(row), int(col))

    def histogram(self, lo: float, hi: float) -> np.ndarray:
        """256-bin histogram of the reference's ``uint8(255 * (v - lo) / (hi - lo))``.

        Needs ``hi > lo``.
        """
        span = np.float32(np.float32(hi) - np.float32(lo))
        if not span > 0:
            raise ValueError(f"histogram needs hi > lo, got lo={lo}, hi={hi}")
        return _histogram(*self._cell_args(), np.float32(lo), span)

    def runs(self, edge: float) -> np.ndarray:
        """Column-major run lengths (zeros first) of the mask ``v >= edge`` (float32 edge)."""
        return _runs(*self._cell_args(), np.float32(edge))

    def edge_counts(
        self, edges: np.ndarray, mask_runs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pixels with ``v >= edge``, over the map and inside a mask, for each edge.

        Args:
            edges: float32 edges (any order; ``+inf`` counts nothing).
            mask_runs: Column-major run lengths (zeros first, pycocotools order) of a
                (height, width) mask, summing to height x width.

        Returns:
            (areas, inside): int64, one count per edge, in the order of ``edges``.
        """
        edges = np.asarray(edges, dtype=np.float32).reshape(-1)
        runs = np.ascontiguousarray(mask_runs, dtype=np.int64)
        if int(runs.sum()) != self.height * self.width or (runs < 0).any():
            raise ValueError(
                f"mask runs must be >= 0 and sum to {self.height} x {self.width}, "
                f"got a sum of {int(runs.sum())}"
            )
        order = np.argsort(edges, kind="stable")
        area, inside = _edge_counts(*self._cell_args(), edges[order], runs)
        out_area, out_inside = np.empty(edges.size, np.int64), np.empty(edges.size, np.int64)
        # v >= edges[order[t]]  <=>  bucket(v) > t
        out_area[order] = np.cumsum(area[::-1])[::-1][1:]
        out_inside[order] = np.cumsum(inside[::-1])[::-1][1:]
        return out_area, out_inside

    def full(self) -> np.ndarray:
        """The upsampled map, (height, width) float32, equal to torch's ``F.interpolate``."""
        if self.src.shape == (self.height, self.width):
            return self.src
        return _full(self.src, *self._x, self._xs, self._xe, *self._y, self.height)
