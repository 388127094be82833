"""``localization.bilinear``: torch's bilinear arithmetic and the cell-wise Otsu kernels.

Both are checked for exact agreement.
"""

import cv2
import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from cxr_spurious.io.masks import encode_rle
from cxr_spurious.localization.bilinear import (
    _LEVELS_PAD,
    _SPREAD_PAD,
    BilinearMap,
    _axis,
    _cell_bounds,
    _count_runs,
    _fma,
    _group_rows,
    _max_abs,
    _width_part,
    bilinear_taps,
    rle_from_runs,
    runs_have_hole,
)
from cxr_spurious.localization.kernels import level_edges, segment_map_cpu
from cxr_spurious.localization.segmentation import SegmentationConfig, heatmap_to_segmentation

# torch's CPU bilinear kernel contracts its multiply-adds into FMAs in the AVX2/AVX512
# builds (the ones these machines run) for outputs of more than 4,096 pixels; smaller
# outputs and the scalar build take other code paths that round differently.
TORCH_FMA = torch.backends.cpu.get_cpu_capability() in {"AVX2", "AVX512"}


def _torch_up(m, h, w):
    return F.interpolate(
        torch.from_numpy(m)[None, None], size=(h, w), mode="bilinear", align_corners=False
    )[0, 0].numpy()


def _gradcam_like(rng, n=32, grid=5, scale=1e-3):
    """ReLU'd Gaussian field on a coarse grid, bilinearly upsampled (like CheXlocalize's maps)."""
    coarse = np.maximum(rng.normal(size=(grid, grid)), 0).astype(np.float32)
    m = _torch_up(coarse, n, n)
    return (m / max(float(m.max()), 1e-12) * scale).astype(np.float32)


def _assert_same_as_torch(m, h, w):
    ours, ref = BilinearMap(m, h, w).full(), _torch_up(m, h, w)
    assert ours.shape == ref.shape == (h, w)
    if TORCH_FMA:
        assert int((ours != ref).sum()) == 0
    else:  # pragma: no cover - other torch builds
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-30)


@pytest.mark.parametrize(
    ("src", "out"),
    [
        ((32, 32), (263, 241)),
        ((7, 5), (500, 61)),
        ((1, 9), (130, 400)),
        ((20, 20), (20, 20)),
        ((400, 300), (170, 120)),
        ((320, 320), (1987, 2411)),
    ],
)
def test_full_map_is_torch_bilinear_bit_for_bit(src, out):
    rng = np.random.default_rng(sum(src) + sum(out))
    _assert_same_as_torch((rng.random(src) * 10.0 ** rng.uniform(-6, 1)).astype(np.float32), *out)


@pytest.mark.parametrize(("src", "out"), [((7, 5), (50, 61)), ((1, 9), (13, 40))])
def test_small_outputs_agree_with_torch_within_rounding(src, out):
    m = np.random.default_rng(1).random(src).astype(np.float32)
    np.testing.assert_allclose(BilinearMap(m, *out).full(), _torch_up(m, *out), rtol=1e-6, atol=0)


def test_taps_follow_torch_index_rules():
    i0, i1, w0, w1 = bilinear_taps(4, 10)
    assert i0[0] == 0 and w1[0] == 0 and w0[0] == 1  # clamped below 0
    assert i0[-1] == 3 and i1[-1] == 3  # last source row has no successor
    assert (np.diff(i0) >= 0).all() and ((i1 - i0) <= 1).all()
    with pytest.raises(ValueError, match="positive sizes"):
        bilinear_taps(0, 5)


def _ref_extremes(up):
    flat = int(np.argmax(up))  # numpy: first maximum in C order
    return float(up.min()), float(up.max()), divmod(flat, up.shape[1])


@pytest.mark.parametrize("kind", ["gradcam", "signed", "plateau", "constant_rows", "tiny"])
def test_extremes_and_first_argmax_are_exact(kind):
    rng = np.random.default_rng(3)
    if kind == "gradcam":
        m = _gradcam_like(rng)
    elif kind == "signed":
        m = (rng.normal(size=(16, 12))).astype(np.float32)
    elif kind == "plateau":  # the maximum held by a block of source pixels: many tied outputs
        m = np.zeros((12, 12), np.float32)
        m[4:8, 3:9] = 0.5
    elif kind == "constant_rows":
        m = np.repeat(rng.random((1, 10)).astype(np.float32), 8, axis=0)
    else:  # subnormal-range values
        m = (rng.random((9, 9)) * 1e-39).astype(np.float32)
    h, w = 97, 83
    lo, hi, argmax = BilinearMap(m, h, w).extremes()
    up = BilinearMap(m, h, w).full()
    assert (lo, hi, argmax) == _ref_extremes(up)
    if TORCH_FMA:
        assert (lo, hi, argmax) == _ref_extremes(_torch_up(m, h, w))


def test_histogram_equals_reference_uint8_image():
    rng = np.random.default_rng(4)
    for _ in range(4):
        m = _gradcam_like(rng)
        bm = BilinearMap(m, 211, 187)
        lo, hi, _ = bm.extremes()
        up = bm.full()
        span = np.float32(np.float32(hi) - np.float32(lo))
        u8 = ((up - np.float32(lo)) / span * np.float32(255)).astype(np.uint8)
        np.testing.assert_array_equal(bm.histogram(lo, hi), np.bincount(u8.ravel(), minlength=256))
    with pytest.raises(ValueError, match="hi > lo"):
        bm.histogram(1.0, 1.0)


def test_runs_equal_the_rle_of_the_thresholded_full_map():
    rng = np.random.default_rng(5)
    for _ in range(5):
        m = _gradcam_like(rng)
        bm = BilinearMap(m, 157, 203)
        up = bm.full()
        for q in (0.0, 0.3, 0.5, 0.97, 1.0):
            edge = np.float32(np.quantile(up, q))
            got = rle_from_runs(bm.runs(edge), 157, 203)
            assert got == encode_rle((up >= edge).astype(np.uint8))
        assert rle_from_runs(bm.runs(np.float32(np.inf)), 157, 203) == encode_rle(
            np.zeros((157, 203), np.uint8)
        )
    noisy = BilinearMap(
        rng.random((64, 64)).astype(np.float32), 300, 280
    )  # > 4,096 runs: the buffer grows
    up = noisy.full()
    edge = np.float32(np.median(up))
    runs = noisy.runs(edge)
    assert runs.size > 4096
    assert rle_from_runs(runs, 300, 280) == encode_rle((up >= edge).astype(np.uint8))
    # cells of ~400 rows: one column of a mixed cell can add hundreds of runs (the buffer is
    # sized per column group before the pixel loops)
    coarse = BilinearMap((rng.random((3, 4)) > 0.5).astype(np.float32), 1201, 901)
    up = coarse.full()
    for q in (0.1, 0.5, 0.9):
        edge = np.float32(np.quantile(up, q))
        assert rle_from_runs(coarse.runs(edge), 1201, 901) == encode_rle(
            (up >= edge).astype(np.uint8)
        )


def test_rle_string_matches_pycocotools():
    rng = np.random.default_rng(6)
    masks = [
        np.zeros((5, 4), np.uint8),
        np.ones((5, 4), np.uint8),
        (rng.random((31, 17)) > 0.5).astype(np.uint8),
    ]
    masks.append((cv2.GaussianBlur(rng.random((300, 200)), (0, 0), 12) > 0.5).astype(np.uint8))
    for mask in masks:
        flat = np.asfortranarray(mask).ravel(order="F")
        change = np.flatnonzero(np.diff(flat)) + 1
        bounds = np.concatenate([[0], change, [flat.size]])
        runs = np.diff(bounds)
        if flat[0] == 1:
            runs = np.concatenate([[0], runs])
        assert rle_from_runs(runs, *mask.shape) == encode_rle(mask)
    with pytest.raises(ValueError, match="run lengths sum to 3, expected 20"):
        rle_from_runs(np.array([1, 2]), 5, 4)


def _cv2_has_hole(mask):
    _, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is not None and bool((hierarchy[0][:, 3] >= 0).any())


def _runs_of(mask):
    return np.array(_decode_counts(mask_utils.encode(np.asfortranarray(mask))["counts"]), np.int64)


def _decode_counts(s):
    """pycocotools' compressed counts string -> run lengths (its ``rleFrString``)."""
    out, p, s = [], 0, bytes(s)
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def test_hole_check_agrees_with_find_contours():
    rng = np.random.default_rng(7)
    cases = []
    ring = np.zeros((11, 9), np.uint8)
    ring[2:9, 2:7] = 1
    ring[5, 4] = 0
    cases.append(ring)
    diag = np.zeros(
        (6, 6), np.uint8
    )  # background pixel meeting the outside only diagonally: still a hole
    diag[1:4, 1:4] = 1
    diag[2, 2] = 0
    diag[1, 1] = 0
    cases.append(diag)
    edge = np.ones((5, 5), np.uint8)  # background touching the border is not a hole
    edge[0, 2] = 0
    cases.append(edge)
    cases.extend(
        (rng.random((15, 13)) > p).astype(np.uint8)
        for p in (0.2, 0.35, 0.5, 0.65)
        for _ in range(40)
    )
    seen = set()
    for mask in cases:
        expected = _cv2_has_hole(mask)
        seen.add(expected)
        assert runs_have_hole(_runs_of(mask), *mask.shape) == expected
    assert seen == {True, False}


@pytest.mark.parametrize(
    "config",
    [
        SegmentationConfig(),
        SegmentationConfig(threshold=0.4),
        SegmentationConfig(smoothing_k=5),
        SegmentationConfig(prob_cutoff=0.7),
        SegmentationConfig(fill_contours=False),
    ],
)
def test_segmentation_equals_the_reference_pixel_for_pixel(config):
    rng = np.random.default_rng(8)
    for _ in range(5):
        m = _gradcam_like(rng, grid=4)
        fast = segment_map_cpu(m, 143, 121, 0.6, config)
        ref = heatmap_to_segmentation(m, 143, 121, config, prob=0.6)
        if TORCH_FMA:
            assert fast.rle == encode_rle(ref)
        up = _torch_up(m, 143, 121)
        assert fast.argmax == divmod(int(np.argmax(up)), 121)


def test_filled_holes_like_the_reference():
    yy, xx = np.mgrid[0:24, 0:24]
    r = np.hypot(yy - 11.5, xx - 11.5)
    m = np.exp(-((r - 7) ** 2) / 4).astype(np.float32)  # a ring: Otsu leaves a hole in the middle
    fast = segment_map_cpu(m, 96, 96, 1.0, SegmentationConfig())
    ref = heatmap_to_segmentation(m, 96, 96)
    assert ref[48, 48] == 1  # filled
    assert fast.rle == encode_rle(ref)
    unfilled = segment_map_cpu(m, 96, 96, 1.0, SegmentationConfig(fill_contours=False))
    assert (
        mask_utils.decode({"size": [96, 96], "counts": unfilled.rle["counts"].encode()})[48, 48]
        == 0
    )


def test_level_edge_is_the_exact_uint8_boundary():
    rng = np.random.default_rng(9)
    m = _gradcam_like(rng)
    bm = BilinearMap(m, 120, 130)
    lo, hi, _ = bm.extremes()
    up = bm.full()
    span = float(np.float32(np.float32(hi) - np.float32(lo)))
    u8 = ((up - np.float32(lo)) / np.float32(span) * np.float32(255)).astype(np.uint8)
    for level in (0, 17, 100, 254):
        edge = level_edges(lo, span, [level + 1], scale=255.0, strict=False)[0]
        np.testing.assert_array_equal(up >= edge, u8 > level)


def test_random_sweep_of_shapes_and_value_distributions():
    """Random source/output sizes and value distributions: RLE, argmax and extremes exact."""
    rng = np.random.default_rng(10)
    kinds = ("gradcam", "signed", "spikes", "steps")
    for i in range(24):
        h0, w0 = int(rng.integers(1, 40)), int(rng.integers(2, 40))
        h, w = int(rng.integers(65, 260)), int(rng.integers(65, 260))
        kind = kinds[i % len(kinds)]
        if kind == "gradcam":
            m = np.maximum(rng.normal(size=(h0, w0)), 0)
        elif kind == "signed":
            m = rng.normal(size=(h0, w0)) * 10.0 ** rng.uniform(-8, 3)
        elif kind == "spikes":  # mostly zero, a few isolated peaks
            m = np.zeros((h0, w0))
            m.flat[rng.integers(0, m.size, 3)] = rng.random(3)
        else:  # few distinct values: ties and flat cells
            m = rng.integers(0, 3, (h0, w0)) / 2.0
        m = m.astype(np.float32)
        if m.max() == m.min():
            m.flat[0] += np.float32(1.0)
        bm = BilinearMap(m, h, w)
        up = bm.full()
        assert bm.extremes() == _ref_extremes(up)
        fast = segment_map_cpu(m, h, w, 1.0, SegmentationConfig())
        ref = heatmap_to_segmentation(m, h, w)
        if TORCH_FMA:
            assert fast.rle == encode_rle(ref), (i, kind, (h0, w0), (h, w))


@pytest.mark.parametrize("kind", ["gradcam", "steps", "spikes", "noise"])
def test_edge_counts_equal_counts_on_the_full_map(kind):
    """Area above each edge and its overlap with a mask: exact against the materialised map,
    in the order of the edges given (unsorted, repeated, +inf), whatever the map's shape."""
    rng = np.random.default_rng({"gradcam": 11, "steps": 12, "spikes": 13, "noise": 14}[kind])
    for h, w in ((157, 203), (64, 300), (211, 90)):
        if kind == "gradcam":
            m = _gradcam_like(rng, n=24)
        elif kind == "steps":  # flat cells: most of the map counts cell by cell
            m = (rng.integers(0, 3, (9, 7)) / 2.0).astype(np.float32)
        elif kind == "spikes":
            m = np.zeros((12, 12), np.float32)
            m.flat[rng.integers(0, m.size, 3)] = rng.random(3).astype(np.float32)
        else:
            m = rng.random((40, 33)).astype(np.float32)
        bm = BilinearMap(m, h, w)
        up = bm.full()
        mask = np.zeros((h, w), np.uint8)
        mask[h // 5 : h // 2, w // 3 : w - 5] = 1
        mask[rng.random((h, w)) < 0.05] = 1  # scattered pixels: many short runs
        runs = _column_major_runs(mask)
        assert rle_from_runs(runs, h, w) == encode_rle(mask)  # pycocotools' order
        qs = np.quantile(up, [0.9, 0.0, 0.5, 0.999, 0.5, 1.0]).astype(np.float32)
        edges = np.concatenate([qs, np.float32([np.inf, up.min() - 1])])
        areas, inside = bm.edge_counts(edges, runs)
        for e, a, i in zip(edges, areas, inside, strict=True):
            above = up >= e
            assert a == int(above.sum()), (kind, (h, w), e)
            assert i == int((above & (mask == 1)).sum()), (kind, (h, w), e)
    with pytest.raises(ValueError, match="sum to"):
        bm.edge_counts(edges, runs[:-1])


def _column_major_runs(mask: np.ndarray) -> np.ndarray:
    """Run lengths of ``mask`` in column-major order, zeros first (pycocotools' RLE)."""
    flat = mask.T.ravel()
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds)
    return np.concatenate([[0], runs]) if flat[0] == 1 else runs


def test_histogram_on_flat_cells_equals_reference_uint8_image():
    """Step and spike maps (whole cells at one level, counted without their pixels)."""
    rng = np.random.default_rng(15)
    for shape, (h, w) in (((9, 7), (300, 257)), ((12, 12), (150, 410))):
        m = (rng.integers(0, 4, shape) / 3.0).astype(np.float32)
        m.flat[0] = np.float32(1.7)
        bm = BilinearMap(m, h, w)
        lo, hi, _ = bm.extremes()
        up = bm.full()
        span = np.float32(np.float32(hi) - np.float32(lo))
        u8 = ((up - np.float32(lo)) / span * np.float32(255)).astype(np.uint8)
        np.testing.assert_array_equal(bm.histogram(lo, hi), np.bincount(u8.ravel(), minlength=256))


@numba.njit
def _width_direct(r, xi0, xi1, xw0, xw1, out):
    """The width pass indexed per output column: torch's formula as written."""
    for x in range(out.shape[0]):
        out[x] = _fma(r[xi0[x]], xw0[x], r[xi1[x]] * xw1[x])


@pytest.mark.parametrize(
    ("w0", "w", "cases"),
    [
        (13, 97, {8, 16}),
        (13, 160, {8, 16, 17}),
        (7, 150, {16, 17}),
        (5, 200, {17}),
        (40, 23, {8}),
    ],
)
def test_group_rows_hold_the_width_rows_over_every_requested_range(w0, w, cases):
    """The histogram's two row buffers: rows reused across groups, columns filled on demand.

    Cells of up to 8, 9-16 and over 16 columns (the spread stores' three cases: 13 -> 97,
    13 -> 160, 7 -> 150 and 5 -> 200 px), and a downsampling (one column per cell).
    """
    rng = np.random.default_rng(16)
    m = rng.random((11, w0)).astype(np.float32)
    xi0, xi1, xw0, xw1, xs, xe = _axis(w0, w)
    widths = xe - xs  # cells of <= 8 columns, 9-16, over 16
    assert set(np.select([widths <= 8, widths <= 16], [8, 16], 17).tolist()) == cases
    spread = np.full((2, w + _SPREAD_PAD), np.nan, np.float32)
    rows = np.empty((11, w), np.float32)
    for k in range(11):
        _width_part(m[k], xi0, xi1, xw0, xw1, xs, xe, spread, rows[k], 0, w)
    direct = np.empty((11, w), np.float32)
    for k in range(11):
        _width_direct(m[k], xi0, xi1, xw0, xw1, direct[k])
    np.testing.assert_array_equal(rows, direct)
    np.testing.assert_array_equal(rows, BilinearMap(m, 11, w).full())  # same width pass
    bufs = np.zeros((2, w), np.float32)
    state = np.full((2, 3), -1, np.int64)
    k0 = 0
    for _ in range(400):  # consecutive groups share a row; ranges overlap, extend, or not
        k0 = int(min(max(k0 + rng.integers(-1, 3), 0), 10))
        k1 = min(k0 + 1, 10)
        a = int(rng.integers(0, w))
        b = int(rng.integers(a, w + 1))
        args = (xi0, xi1, xw0, xw1, xs, xe, spread)
        i0, i1 = _group_rows(m, *args, k0, k1, bufs, state, a, b)
        assert i0 != i1
        np.testing.assert_array_equal(bufs[i0, a:b], rows[k0, a:b])
        np.testing.assert_array_equal(bufs[i1, a:b], rows[k1, a:b])


def test_count_runs_equals_a_bincount_of_the_range():
    """Runs shorter and longer than the 64-level blocks, changes on the blocks' edges.

    The bytes after ``b`` (the rest of the row and the padding) differ from its last level,
    so counting one of them, or missing a change between two blocks, shows.
    """
    rng = np.random.default_rng(17)
    w = 700
    for trial in range(300):
        lengths = rng.choice([1, 2, 7, 63, 64, 65, 130], size=40)
        values = rng.integers(0, 256, size=lengths.size).astype(np.uint8)
        row = np.repeat(values, lengths)[:w]
        levels = np.full(w + _LEVELS_PAD, 255 - row[-1], np.uint8)
        levels[: row.size] = row
        a = int(rng.integers(0, min(row.size, 150)))
        b = int(rng.integers(a + 1, row.size + 1))
        if trial % 3 == 0:  # a range ending on a block's edge, the last block full
            b = min(a + 1 + 64 * int(rng.integers(1, 5)), row.size)
        levels[b:] = 255 - levels[b - 1]
        hist = np.zeros(256, np.int64)
        _count_runs(levels, a, b, hist)
        np.testing.assert_array_equal(hist, np.bincount(levels[a:b], minlength=256))


def test_histogram_over_wide_spans_equals_reference_uint8_image():
    """Rows whose mixed cells span several 64-level blocks, with frequent level changes."""
    rng = np.random.default_rng(18)
    for shape, (h, w) in (((40, 40), (90, 700)), ((20, 60), (64, 1000))):
        m = rng.random(shape).astype(np.float32)
        bm = BilinearMap(m, h, w)
        lo, hi, _ = bm.extremes()
        span = np.float32(np.float32(hi) - np.float32(lo))
        u8 = ((bm.full() - np.float32(lo)) / span * np.float32(255)).astype(np.uint8)
        assert (np.diff(u8.astype(int), axis=1) != 0).mean() > 0.2  # frequent changes
        np.testing.assert_array_equal(bm.histogram(lo, hi), np.bincount(u8.ravel(), minlength=256))


@pytest.mark.parametrize("kind", ["random", "signed", "plateau", "constant", "ties_in_a_row"])
def test_cell_bounds_find_the_cells_argmax_and_argmin_would(kind):
    """The first largest upper and smallest lower bound in C order, ties included."""
    rng = np.random.default_rng(19)
    if kind == "random":
        m = rng.random((30, 41)).astype(np.float32)
    elif kind == "signed":
        m = (rng.random((30, 41)) - 0.7).astype(np.float32)
    elif kind == "plateau":  # equal bounds over blocks of cells, in several rows
        m = np.zeros((30, 41), np.float32)
        m[10:14, 5:9] = 0.5
        m[20:22, 1:3] = -0.25
    elif kind == "constant":
        m = np.full((30, 41), 0.25, np.float32)
    else:  # the maximum tied in one row at columns 30 and 3: the earlier column wins
        m = rng.random((30, 41)).astype(np.float32) * 0.5
        m[12, 30] = m[12, 3] = m[25, 0] = 1.0
    for h, w in ((97, 203), (30, 41), (12, 17)):
        xi0, xi1, _, _, xs, _ = _axis(41, w)
        yi0, yi1, _, _, ys, _ = _axis(30, h)
        lo, hi, best, low = _cell_bounds(m, xi0[xs], xi1[xs], yi0[ys], yi1[ys])
        assert best == np.argmax(hi.ravel())
        assert low == np.argmin(lo.ravel())
        assert (lo <= hi).all()
    assert _max_abs(m) == np.abs(m).max()


def test_drop_isolated_runs_equals_the_pixel_version():
    """The kernel's runs form drops exactly the one-pixel components the OpenCV path drops
    (runs wrapping a column boundary, 1-row and 1-column masks included), and encodes to
    pycocotools' own RLE string."""
    from cxr_spurious.io.masks import encode_rle
    from cxr_spurious.localization.bilinear import drop_isolated_runs, rle_from_runs
    from cxr_spurious.localization.metrics import rle_runs
    from cxr_spurious.localization.segmentation import drop_isolated_pixels

    rng = np.random.default_rng(12)
    dropped = 0
    for _ in range(1500):
        h, w = (int(v) for v in rng.integers(1, 25, 2))
        binary = (rng.random((h, w)) < rng.uniform(0.01, 0.6)).astype(np.uint8)
        expected = drop_isolated_pixels(binary)
        got = rle_from_runs(drop_isolated_runs(rle_runs(encode_rle(binary)), h, w), h, w)
        assert got == encode_rle(expected), (h, w)
        dropped += int((expected != binary).sum())
    assert dropped > 1000  # the masks had specks to drop
