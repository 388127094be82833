"""Localization speed benchmark: this project's streaming evaluator vs the reference algorithm.

Usage:
    python benchmarks/bench_localization.py [--dir DIR] [--n 234] [--ref-maps 60] [--max-maps N]

``--dir`` defaults to a fresh set made by /work/shared/bench/make_chexlocalize_bench.py
(``--n`` CXRs x 10 tasks) in a temporary folder. The reference side is a straightforward
re-implementation of rajpurkarlab/cheXlocalize's per-map algorithm (load pickle, torch
upsample, Otsu, contours, PIL fill, RLE; IoU and hit/miss re-decode / re-load; tuning
re-reads every map for every threshold), timed on ``--ref-maps`` maps and extrapolated.
Prints per-heatmap milliseconds of each stage, totals, speed-ups and result agreement.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from cxr_spurious.io.safe_pickle import load_torch_pickle
from cxr_spurious.localization import summary, tuning
from cxr_spurious.localization.chexlocalize_io import (
    load_json,
    parse_map_filename,
    read_heatmap_folder,
)
from cxr_spurious.localization.evaluate import evaluate_heatmap_set

GEN = Path("/work/shared/bench/make_chexlocalize_bench.py")


def _ref_upsampled(path: Path) -> tuple[torch.Tensor, float]:
    info = load_torch_pickle(path)
    w, h = info["cxr_dims"]
    return F.interpolate(info["map"], size=(h, w), mode="bilinear", align_corners=False), float(info["prob"])


def _ref_segment(up: torch.Tensor, threshold: float | None = None) -> np.ndarray:
    m = up.squeeze()
    m = m - m.min()
    m = m.div(m.max()).numpy()
    if threshold is not None:
        return np.array(m > threshold, dtype="int")
    u8 = np.uint8(255 * m)
    thresh = cv2.threshold(u8, 0, int(np.max(u8)), cv2.THRESH_OTSU)[1]
    cnts = cv2.findContours(thresh, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    img = Image.new("1", (u8.shape[1], u8.shape[0]))
    for c in cnts:
        if len(c) > 1:
            ImageDraw.Draw(img).polygon([(int(p[0][0]), int(p[0][1])) for p in c], outline=1, fill=1)
    return np.array(img, dtype="int")


def _encode(seg: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(seg.astype("uint8")))
    rle["counts"] = rle["counts"].decode()
    return rle


def reference(paths: list[Path], gt: dict, grid: list[float]) -> tuple[dict[str, float], dict, dict]:
    """Per-map seconds of each reference stage on ``paths`` and its outputs."""
    t = {"segment": 0.0, "iou": 0.0, "hitmiss": 0.0, "tuning": 0.0}
    segs, hits = {}, {}
    for p in paths:
        cxr, task = parse_map_filename(p)
        s = time.perf_counter()
        up, _ = _ref_upsampled(p)
        segs[(cxr, task)] = _encode(_ref_segment(up))
        t["segment"] += time.perf_counter() - s
        if cxr not in gt:
            continue
        s = time.perf_counter()
        g = mask_utils.decode(gt[cxr][task])
        pm = mask_utils.decode(segs[(cxr, task)])
        inter, union = np.logical_and(pm, g).sum(), np.logical_or(pm, g).sum()
        _ = np.nan if pm.sum() == 0 or g.sum() == 0 else inter / union
        t["iou"] += time.perf_counter() - s
        s = time.perf_counter()
        sal = _ref_upsampled(p)[0].squeeze().numpy()
        r, c = np.unravel_index(np.argmax(sal), sal.shape)
        g = mask_utils.decode(gt[cxr][task])
        hits[(cxr, task)] = 1.0 if g[r, c] == 1 else (np.nan if g.sum() == 0 else 0.0)
        t["hitmiss"] += time.perf_counter() - s
        s = time.perf_counter()
        for thr in grid:
            seg = _ref_segment(_ref_upsampled(p)[0], thr)
            g = mask_utils.decode(gt[cxr][task])
            _ = np.logical_and(seg, g).sum() / max(np.logical_or(seg, g).sum(), 1)
        t["tuning"] += time.perf_counter() - s
    n = len(paths)
    return {k: v / n for k, v in t.items()}, segs, hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--n", type=int, default=234)
    ap.add_argument("--ref-maps", type=int, default=60)
    ap.add_argument("--max-maps", type=int, default=None, help="evaluate only the first N maps with our code")
    args = ap.parse_args()
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_loc_")
        args.dir = Path(tmp.name)
        subprocess.run([sys.executable, str(GEN), "--n", str(args.n), "--out", str(args.dir)], check=True)
    gt = load_json(args.dir / "gt_segmentations_val.json")
    grid = tuning.threshold_grid(0.2, 0.8, 0.1)
    print(f"torch threads: {torch.get_num_threads()}, cuda: {torch.cuda.is_available()}")

    t0 = time.perf_counter()
    hs = read_heatmap_folder(args.dir / "gradcam_maps_val")
    n_indexed = len(hs)
    if args.max_maps:
        hs = hs.select(np.arange(len(hs)) < args.max_maps)
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_map, seg = evaluate_heatmap_set(hs, gt, tuning_grid=grid, progress=False)
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    for col in ("iou_tp", "hit"):
        wide = summary.per_cxr_table(per_map, col)
        summary.reference_summary(summary.reference_bootstrap(wide, 1000, 0))
    t_boot = time.perf_counter() - t0
    t0 = time.perf_counter()
    tuning.tune_thresholds(per_map, grid)
    t_tune = time.perf_counter() - t0
    n = len(hs)
    t_index *= n / n_indexed  # the index pass reads every pickle; charge only the evaluated share
    ours_eval = t_index + t_eval + t_boot
    print(f"ours on {n} maps: index {1e3 * t_index / n:.1f} ms/map, segment+IoU+hit+tuning counts {1e3 * t_eval / n:.1f} ms/map, "
          f"bootstrap (2 x 1000) {t_boot:.2f} s, tuning from counts {t_tune:.3f} s; evaluation total {ours_eval:.1f} s")

    paths = sorted((args.dir / "gradcam_maps_val").glob("*_map.pkl"))[: args.ref_maps]
    per, segs, hits = reference(paths, gt, grid)
    ref_eval = (per["segment"] + per["iou"] + per["hitmiss"]) * n
    print("reference per map (ms): " + ", ".join(f"{k} {1e3 * v:.1f}" for k, v in per.items()) + f"  (timed on {len(paths)} maps)")
    print(f"reference extrapolated to {n} maps: evaluation {ref_eval:.1f} s, tuning {per['tuning'] * n:.1f} s")
    print(f"speed-up: evaluation x{ref_eval / ours_eval:.1f}, tuning x{per['tuning'] * n / (t_tune + t_eval + t_index):.1f} (tuning vs our whole pass)")
    diff = sum(int((mask_utils.decode(seg[c][t]) != mask_utils.decode(r)).sum()) for (c, t), r in segs.items() if c in seg and t in seg[c])
    idx = per_map.set_index(["image_id", "task"])["hit"]
    hit_mismatch = sum(1 for k, v in hits.items() if not (np.isnan(v) and np.isnan(idx[k]) or v == idx[k]))
    print(f"agreement on the {len(segs)} reference maps: {diff} differing mask pixels, {hit_mismatch} differing hit/miss values")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
