"""The fast kernels against the exact torch path, numpy, cv2 and brute force."""

import pickle

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from sklearn.metrics import roc_auc_score

from cxr_spurious.errors import DataFormatError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.chexlocalize import load_heatmap_pickle
from cxr_spurious.io.masks import decode_rle, encode_rle
from cxr_spurious.io.safe_pickle import load_torch_pickle
from cxr_spurious.localization import tuning
from cxr_spurious.localization.evaluate import evaluate_heatmap_set
from cxr_spurious.localization.kernels import (
    level_edges,
    otsu_threshold,
    segment_map_cpu,
    segment_map_torch,
    upsample_t,
)
from cxr_spurious.localization.segmentation import (
    SegmentationConfig,
    heatmap_to_segmentation,
)

GRID = tuning.threshold_grid(0.2, 0.8, 0.1)


def _blobs(rng, h=12, w=10, zero_floor=True):
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w))
    for _ in range(2):
        cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, 3)
        m += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    m = np.maximum(m - 0.2 * m.max(), 0) if zero_floor else m + 0.5
    return (m * 1e-3).astype(np.float32)


def _torch_up(m, h, w):
    return F.interpolate(
        torch.from_numpy(m)[None, None], size=(h, w), mode="bilinear", align_corners=False
    )[0, 0].numpy()


def test_upsample_matches_torch_bilinear():
    m = _blobs(np.random.default_rng(0))
    ref = _torch_up(m, 97, 83)
    ours = upsample_t(m, 97, 83).T
    assert ours.shape == ref.shape
    np.testing.assert_allclose(
        ours, ref, rtol=0, atol=1e-6 * float(ref.max())
    )  # bit for bit: test_bilinear


@pytest.mark.parametrize("zero_floor", [True, False])
def test_level_edges_reproduce_float32_thresholds_exactly(zero_floor):
    rng = np.random.default_rng(1)
    for _ in range(3):
        up = upsample_t(_blobs(rng, zero_floor=zero_floor), 131, 117)
        lo = np.float32(up.min())
        span = np.float32(up.max() - lo)
        norm = (up - lo) / span  # the reference's float32 chain
        for t, e in zip(GRID, level_edges(lo, span, GRID)):
            np.testing.assert_array_equal(norm > t, up >= e)
        u8 = np.uint8(255 * norm)
        for k, e in zip(
            range(1, 256), level_edges(lo, span, range(1, 256), scale=255, strict=False)
        ):
            assert np.array_equal(u8 >= k, up >= e), k


def test_otsu_threshold_replicates_cv2():
    rng = np.random.default_rng(3)
    images = [
        rng.integers(0, 256, (40, 37), dtype=np.uint8),
        np.full((8, 8), 7, np.uint8),
        np.repeat(np.array([[0, 200]], np.uint8), 9, axis=0),
        np.clip(rng.normal(60, 10, (50, 50)), 0, 255).astype(np.uint8),
        (rng.random((30, 30)) > 0.9).astype(np.uint8) * 255,
    ]
    for _ in range(200):  # skewed, narrow and two-level images of every size
        n = int(rng.integers(1, 3000))
        img = (rng.random((1, n)) ** rng.uniform(0.1, 8) * rng.uniform(1, 256)).astype(np.uint8)
        if rng.random() < 0.2:
            img[img > img.mean()] = 255
        images.append(img)
    for img in images:
        hist = cv2.calcHist([img], [0], None, [256], [0, 256]).ravel()
        expected = int(cv2.threshold(img, 0, 255, cv2.THRESH_OTSU)[0])
        assert otsu_threshold(hist) == expected
        assert otsu_threshold(hist.tolist()) == expected  # a plain list, as the CUDA path gives


@pytest.mark.parametrize(
    "config",
    [
        SegmentationConfig(),
        SegmentationConfig(threshold=0.4),
        SegmentationConfig(smoothing_k=5),
        SegmentationConfig(prob_cutoff=0.5),
    ],
)
def test_cpu_kernel_matches_exact_torch_path(config):
    rng = np.random.default_rng(4)
    diff = 0
    for _ in range(6):
        m = _blobs(rng)
        fast = segment_map_cpu(m, 143, 121, 0.6, config)
        exact = heatmap_to_segmentation(m, 143, 121, config, prob=0.6)
        diff += int((exact != decode_rle(fast.rle)).sum())
        up = _torch_up(m, 143, 121)
        assert fast.argmax == np.unravel_index(np.argmax(up), up.shape)
    assert diff == 0  # torch-exact arithmetic (see test_bilinear)


@pytest.mark.parametrize(
    ("config", "steps"),
    [
        (SegmentationConfig(), ["setup", "extremes", "histogram", "otsu", "mask"]),
        (SegmentationConfig(threshold=0.4), ["setup", "extremes", "mask"]),
        (SegmentationConfig(prob_cutoff=0.9), ["setup", "extremes"]),
    ],
)
def test_cpu_kernel_timings_name_the_steps_run_and_change_nothing(config, steps):
    m = _blobs(np.random.default_rng(8))
    timings = {"setup": 1.0}  # added to, not replaced
    timed = segment_map_cpu(m, 143, 121, 0.6, config, timings=timings)
    plain = segment_map_cpu(m, 143, 121, 0.6, config)
    assert list(timings) == steps and all(t > 0 for t in timings.values())
    assert timings["setup"] > 1.0
    assert (timed.rle, timed.lo, timed.span, timed.argmax) == (
        plain.rle,
        plain.lo,
        plain.span,
        plain.argmax,
    )


def test_torch_kernel_matches_cpu_kernel():
    rng = np.random.default_rng(5)
    for config in (SegmentationConfig(), SegmentationConfig(threshold=0.3)):
        m = _blobs(rng)
        cpu = segment_map_cpu(m, 90, 77, 1.0, config)
        gpu = segment_map_torch(m, 90, 77, 1.0, config, torch.device("cpu"))
        assert (
            int((decode_rle(cpu.rle) != decode_rle(gpu.rle)).sum()) <= 2
            and cpu.argmax == gpu.argmax
        )


def test_map_only_loader_equals_full_loader(sample_dir, tmp_path):
    path = tmp_path / "p1_study1_view1_frontal_Edema_map.pkl"
    with path.open("wb") as fh:  # the CheXlocalize layout, cxr_img included
        pickle.dump(
            {
                "map": torch.rand(1, 1, 5, 4),
                "prob": 0.3,
                "task": "Edema",
                "gt": 1,
                "cxr_img": torch.rand(3, 5, 4),
                "cxr_dims": (9, 11),
            },
            fh,
            protocol=3,
        )
    paths = [path, *sorted((sample_dir / "gradcam_maps_val").glob("*_map.pkl"))]
    for p in paths:
        full, lazy = load_torch_pickle(p), load_heatmap_pickle(p)
        assert (
            torch.equal(full["map"], lazy["map"])
            and full["prob"] == lazy["prob"]
            and tuple(full["cxr_dims"]) == tuple(lazy["cxr_dims"])
        )
        assert full.keys() == lazy.keys()
    assert isinstance(full["map"], torch.Tensor) and not isinstance(
        load_heatmap_pickle(path)["cxr_img"], torch.Tensor
    )  # never built


def _memory_set(n=18, h=41, w=35, seed=6):
    rng = np.random.default_rng(seed)
    rows, maps, gt = [], [], {}
    for i in range(n):
        cxr = f"p{i // 2}_study1_view1_frontal"
        task = ("Edema", "Cardiomegaly")[i % 2]
        mask = np.zeros((h, w), np.uint8)
        if rng.random() < 0.7:
            mask[int(rng.integers(0, h // 2)) :, int(rng.integers(0, w // 2)) : w - 3] = 1
        gt.setdefault(cxr, {})[task] = encode_rle(mask)
        rows.append(
            {
                "image_id": cxr,
                "task": task,
                "prob": float(rng.random()),
                "gt": float(mask.any()),
                "cxr_w": w,
                "cxr_h": h,
                "model": "m",
                "method": "g",
            }
        )
        maps.append(_blobs(rng, 7, 6))
    return HeatmapSet(pd.DataFrame(rows), np.stack(maps)), gt


def test_shortcut_attribution_per_map():
    hs, gt = _memory_set(n=6)
    h, w = 41, 35
    tube = np.zeros((h, w), bool)
    tube[:, 30:32] = True
    spurious = {
        cxr: {"Chest Tube": encode_rle(tube.astype(np.uint8))} for cxr in hs.index["image_id"]
    }
    table, _ = evaluate_heatmap_set(
        hs, gt, spurious_segmentations=spurious, progress=False, workers=1
    )
    for row, m in zip(table.to_dict("records"), hs.maps):
        up = _torch_up(np.asarray(m, np.float32), h, w).astype(np.float64)
        score = (up - up.min()) / (up.max() - up.min())
        keep = ~decode_rle(gt[row["image_id"]][row["task"]]).astype(
            bool
        )  # the lesion is left out of the rank metric
        assert np.isclose(row["shortcut_Chest Tube"], score[tube].sum() / score.sum())
        assert np.isclose(row["shortcut_auroc_Chest Tube"], roc_auc_score(tube[keep], score[keep]))


def test_parallel_pass_equals_serial_pass():
    hs, gt = _memory_set()
    serial, seg1 = evaluate_heatmap_set(
        hs, gt, tuning_grid=GRID, progress=False, workers=1, prefer_gpu=False
    )
    parallel, seg2 = evaluate_heatmap_set(
        hs, gt, tuning_grid=GRID, progress=False, workers=2, prefer_gpu=False
    )
    pd.testing.assert_frame_equal(serial, parallel)
    assert seg1 == seg2


def test_worker_error_names_the_map():
    hs, gt = _memory_set()
    hs.maps[5, 2, 2] = np.nan
    bad = f"{hs.index.loc[5, 'image_id']}/{hs.index.loc[5, 'task']}"
    with pytest.raises(DataFormatError, match="NaN") as exc:
        evaluate_heatmap_set(hs, gt, progress=False, workers=2, prefer_gpu=False)
    assert bad in str(exc.value)


def test_tuning_counts_match_brute_force_and_evaluation_pass():
    hs, gt = _memory_set()
    counts = tuning.tuning_counts(hs, gt, GRID, workers=1, progress=False)
    per_map, _ = evaluate_heatmap_set(
        hs, gt, tuning_grid=GRID, progress=False, workers=1, prefer_gpu=False
    )
    assert len(counts) == int((per_map["gt_area"] > 0).sum()) > 0
    merged = counts.merge(per_map, on=["image_id", "task"], suffixes=("", "_eval"))
    for t in GRID:
        np.testing.assert_array_equal(merged[f"tune_area_{t:g}"], merged[f"tune_area_{t:g}_eval"])
        np.testing.assert_array_equal(merged[f"tune_inter_{t:g}"], merged[f"tune_inter_{t:g}_eval"])
    for row in counts.to_dict("records"):  # brute force with the exact torch path, every threshold
        i = int(
            np.flatnonzero(
                (hs.index["image_id"] == row["image_id"]) & (hs.index["task"] == row["task"])
            )[0]
        )
        g = mask_utils.decode(gt[row["image_id"]][row["task"]]).astype(bool)
        for t in GRID:
            seg = heatmap_to_segmentation(
                hs.maps[i], 41, 35, SegmentationConfig(threshold=t)
            ).astype(bool)
            assert (row[f"tune_area_{t:g}"], row[f"tune_inter_{t:g}"]) == (
                seg.sum(),
                (seg & g).sum(),
            )
    best, _ = tuning.tune_thresholds(counts, GRID)
    best_eval, _ = tuning.tune_thresholds(per_map, GRID)
    pd.testing.assert_frame_equal(best, best_eval)


def test_heatmap_pickle_folder_streams_through_workers(tmp_path, sample_dir):
    # 16+ pickles so the pool is used: copies of the two sample maps under new ids
    from cxr_spurious.io.chexlocalize import read_heatmap_folder

    src = sorted((sample_dir / "gradcam_maps_val").glob("*_map.pkl"))
    for k in range(8):
        for path in src:
            info = load_torch_pickle(path)
            info["cxr_dims"] = (120, 100)  # small originals keep the test fast
            name = path.name.replace("patient6454", f"patient9{k}54")
            with (tmp_path / name).open("wb") as fh:
                pickle.dump(info, fh, protocol=3)
    hs = read_heatmap_folder(tmp_path, workers=2)
    per_map, seg = evaluate_heatmap_set(hs, {}, progress=False, workers=2, prefer_gpu=False)
    assert len(per_map) == 16 and len({v["counts"] for s in seg.values() for v in s.values()}) == 2


def test_large_payloads_are_seeked_over_and_read_on_demand(tmp_path):
    """The index reads no tensor bytes; the map's bytes are read only when it is built."""
    import pickle

    from cxr_spurious.io import chexlocalize as cio

    path = tmp_path / "p9_study1_view1_frontal_Edema_map.pkl"
    m = torch.arange(200 * 150, dtype=torch.float32).reshape(1, 1, 200, 150)  # 120 kB payload
    img = torch.rand(3, 256, 256)  # 786 kB payload
    pickle.dump(
        {"map": m, "prob": 0.25, "task": "Edema", "gt": 1, "cxr_img": img, "cxr_dims": (300, 400)},
        path.open("wb"),
        protocol=3,
    )
    reads = []

    class CountingReader(cio._SkippingReader):
        def read(self, n=-1):
            data = super().read(n)
            reads.append(len(data))
            return data

        def readinto(self, buffer):
            n = super().readinto(buffer)
            if len(memoryview(buffer)) < cio.SKIP_PAYLOAD_BYTES:
                reads.append(n)
            return n

    original = cio._SkippingReader
    cio._SkippingReader = CountingReader
    try:
        header = cio.read_heatmap_pickle(path, with_map=False)
        header_bytes = sum(reads)
        reads.clear()
        full = cio.read_heatmap_pickle(path)
    finally:
        cio._SkippingReader = original
    assert (
        header.map.shape == (200, 150)
        and (header.width, header.height) == (300, 400)
        and header.prob == 0.25
    )
    assert header_bytes < 10_000  # neither payload was read
    np.testing.assert_array_equal(full.map, m[0, 0].numpy())  # the map's bytes, read on demand
    assert full.prob == 0.25 and full.gt == 1.0


def _tuned_in_child(_: int) -> bool:
    from cxr_spurious.parallel import tune_worker_malloc

    return tune_worker_malloc()


def test_worker_allocator_tuning_applies_on_glibc():
    import multiprocessing as mp
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt tuning applies to glibc only")
    with mp.get_context("fork").Pool(1) as pool:  # a child: the test process keeps its allocator
        assert pool.map(_tuned_in_child, [0]) == [True]


def test_missing_maps_scope_all_vs_evaluated():
    """``all`` (reference) charges every gt pair without a map as an empty prediction;
    ``evaluated`` only those of the CXRs and tasks the set has maps for."""
    from cxr_spurious.errors import ParameterError

    hs, gt = _memory_set()
    mask = np.zeros((31, 27), np.uint8)
    mask[5:20, 5:20] = 1
    other = dict(gt)
    other["q9_study1_view1_frontal"] = {"Edema": encode_rle(mask)}  # a CXR of another split, no map
    first = hs.index.loc[0, "image_id"]
    other[first] = {**gt[first], "Pneumothorax": encode_rle(mask)}  # a task the set has no maps for
    full, _ = evaluate_heatmap_set(
        hs, other, progress=False, workers=1, prefer_gpu=False, missing="all"
    )
    scoped, _ = evaluate_heatmap_set(
        hs, other, progress=False, workers=1, prefer_gpu=False, missing="evaluated"
    )
    assert len(full) == len(hs) + 2 and len(scoped) == len(hs)
    extra = full.iloc[len(hs) :]
    assert set(zip(extra["image_id"], extra["task"])) == {
        ("q9_study1_view1_frontal", "Edema"),
        (first, "Pneumothorax"),
    }
    assert extra["hit"].isna().all() and (extra["pred_area"] == 0).all()  # IoU charged, no hit
    pd.testing.assert_frame_equal(
        full.iloc[: len(hs)], scoped, check_dtype=False
    )  # NaN rows upcast ints
    # a missing pair of an evaluated CXR and task is still charged in the scoped mode
    dropped = HeatmapSet(hs.index.iloc[1:].reset_index(drop=True), hs.maps[1:])
    scoped_dropped, _ = evaluate_heatmap_set(
        dropped, gt, progress=False, workers=1, prefer_gpu=False, missing="evaluated"
    )
    charged = scoped_dropped.iloc[len(dropped) :]
    assert hs.index.loc[0, "image_id"] in set(
        dropped.index["image_id"]
    )  # its other task keeps the CXR evaluated
    assert list(zip(charged["image_id"], charged["task"])) == [
        (hs.index.loc[0, "image_id"], hs.index.loc[0, "task"])
    ]
    with pytest.raises(
        ParameterError, match=r"localization.missing_maps.*'all', 'evaluated'.*'some'"
    ):
        evaluate_heatmap_set(hs, gt, progress=False, workers=1, prefer_gpu=False, missing="some")


def test_missing_map_is_left_out_of_the_hit_rate():
    """The reference's ``get_hitrates`` only scores the maps it finds: a positive gt pair
    without a map has a NaN hit (not a miss), while its IoU is still that of an empty mask."""
    from cxr_spurious.localization import summary

    hs, gt = _memory_set()
    full, _ = evaluate_heatmap_set(hs, gt, progress=False, workers=1, prefer_gpu=False)
    row = int(np.flatnonzero(full["gt_area"] > 0)[0])
    keep = np.arange(len(hs)) != row
    dropped = HeatmapSet(hs.index[keep].reset_index(drop=True), hs.maps[keep])
    table, _ = evaluate_heatmap_set(dropped, gt, progress=False, workers=1, prefer_gpu=False)
    key = (full.loc[row, "image_id"], full.loc[row, "task"])
    (missing,) = table[(table["image_id"] == key[0]) & (table["task"] == key[1])].to_dict("records")
    assert np.isnan(missing["hit"]) and missing["iou_full"] == 0.0 and missing["pred_area"] == 0
    hits = summary.per_cxr_table(table, "hit").set_index("img_id")[key[1]]
    others = full[(full["task"] == key[1]) & (np.arange(len(full)) != row)]
    assert hits.mean() == pytest.approx(others["hit"].mean())  # the pair is not a miss


def test_probability_tuning_counts_are_plain_otsu_whatever_the_config():
    """The reference tunes the probability cutoff on plain Otsu masks (no cutoff, no fixed
    threshold), over every map, CXRs outside the gt included: the counts an evaluation with
    configured cutoffs and thresholds records for the tuning are those of the plain one."""
    from cxr_spurious.pipelines.localization import nodes

    hs, gt = _memory_set()
    outside = hs.index.loc[0, "image_id"]
    gt = {c: v for c, v in gt.items() if c != outside}  # a CXR with maps but no gt
    plain, _ = evaluate_heatmap_set(
        hs, gt, tuning_grid=GRID, progress=False, workers=1, prefer_gpu=False
    )
    configs = {
        "Edema": SegmentationConfig(prob_cutoff=0.95),
        "Cardiomegaly": SegmentationConfig(threshold=0.6),
    }
    tuned, _ = evaluate_heatmap_set(
        hs, gt, configs=configs, tuning_grid=GRID, progress=False, workers=1, prefer_gpu=False
    )
    assert (tuned["pred_area"] != plain["pred_area"]).any()  # the configs change the masks
    for col, plain_col in (("tune_otsu_area", "pred_area"), ("tune_otsu_inter", "intersection")):
        np.testing.assert_array_equal(tuned[col], plain[plain_col])
        np.testing.assert_array_equal(plain[col], plain[plain_col])
    # brute force: the reference's compute_miou on the exact torch path
    cutoffs = [0.0, 0.3, 0.6]
    expected = []
    for task in sorted(hs.index["task"].unique()):
        for c in cutoffs:
            ious = []
            for i, r in enumerate(hs.index.to_dict("records")):
                if r["task"] != task:
                    continue
                pred = heatmap_to_segmentation(hs.maps[i], 41, 35).astype(bool)
                pred &= r["prob"] > c
                entry = gt.get(r["image_id"])
                g = decode_rle(entry[task]).astype(bool) if entry else np.zeros_like(pred)
                union = (pred | g).sum()
                ious.append((pred & g).sum() / union if union else np.nan)
            expected.append(round(float(np.nanmean(ious)), 3))
    for table in (plain, tuned):
        _, _, prob = nodes.tune_segmentation(table.assign(set="s"), [0.2, 0.8, 0.1], [0, 0.7, 0.3])
        assert prob["mIoU"].tolist() == expected


def test_the_sets_model_fingerprint_reaches_every_row_missing_maps_included():
    """The study compares each localization row's ``model_fingerprint`` with the model's
    record; the rows charged for a missing map carry the set's too."""
    hs, gt = _memory_set()
    row = 0
    keep = np.arange(len(hs)) != row
    index = hs.index[keep].reset_index(drop=True).assign(model_fingerprint="f" * 64)
    table, _ = evaluate_heatmap_set(
        HeatmapSet(index, hs.maps[keep]), gt, progress=False, workers=1, prefer_gpu=False
    )
    assert len(table) == len(hs)  # the dropped pair is charged as an empty prediction
    assert (table["model_fingerprint"] == "f" * 64).all()
    # and the summary per set keeps it, for the report's stale-row check
    from cxr_spurious.pipelines.localization import nodes

    per_map, _ = nodes.evaluate_heatmaps(
        {"erm.gradcam": HeatmapSet(index, hs.maps[keep])},
        gt,
        {},
        None,
        None,
        0,
        [],
        False,
        10,
        False,
    )
    summary = nodes.summarise_localization(per_map, n_boot=10, seed=0)
    assert len(summary) and set(summary["model_fingerprint"]) == {"f" * 64}
