"""Localization speed benchmark: this project's evaluator vs the CheXlocalize reference algorithm.

Usage:
    python benchmarks/bench_localization.py [--dir DIR] [--n 234] [--seed 0] [--ref-maps 120]
        [--workers N] [--profile N]

The set is a CheXlocalize-format folder written by ``make_chexlocalize_set.py`` next to this
file (``--n`` CXRs x 10 tasks, ``--seed``): without ``--dir`` it is generated in a temporary
folder and removed afterwards; a ``--dir`` that is missing or empty is filled (and kept for
the next run); a ``--dir`` with files is used as it is. Both sides run in
this process, one after the other (same machine, same moment; the 1-minute load average
is printed before and after). Each stage starts from a cold page cache, as a run on files
not read recently does: the files are evicted from the cache (``evict``) before each of our
runs (listing, evaluation pass, tuning run) and before each reference script (segmentation,
hit/miss, threshold tuning). The reference's tuning script loops task by task and re-reads
each of the task's maps for every threshold, so only the first threshold's read of a map is
cold and the six others find it in the page cache (a task's maps, about 360 MB of the
3.6 GB ``--n 234`` set, fit in it); the benchmark reads them the same way.

Ours: list the folder as the pipeline's dataset does (``read_heatmap_folder(lazy=True)``),
one evaluation pass that reads each pickle once (its index fields and map; segmentation,
IoU, hit/miss), the reference CSV bootstrap (IoU and hit/miss, 1000 replicates each), and
a separate threshold-tuning run (a fresh listing; only the positive pickles are read, for
the counts of the grid 0.2..0.8 from one upsampling per map) + the tuning table. The
reference side is a straightforward re-implementation of
rajpurkarlab/cheXlocalize's scripts (pickle.load-style load of the whole pickle, torch
bilinear upsampling, Otsu, contours filled with PIL, RLE; IoU re-decodes both masks;
hit/miss re-loads and re-upsamples the map; tuning re-reads and re-upsamples every map of
a gt CXR for every threshold; each stage is a separate pass over the files, as with the
reference's separate scripts; bootstrap with ``np.random.seed`` and pandas means), timed
on the first ``--ref-maps`` maps and extrapolated per applicable map to the whole set.

Prints per-heatmap milliseconds of each stage, totals, speed-ups and result agreement on
the reference maps: differing mask pixels, hit/miss values, max |IoU diff| and NaN/non-NaN
mismatches, and the true-positive IoU of every positive reference map at every threshold
against our tuning counts (maps missing on our side count as disagreements). Both sides
divide the same integer pixel counts once, so every agreement figure must be exactly 0;
the exit status is 1, with each failed check named on stderr, when one is not, or when the
reference maps include no positive map (raise ``--ref-maps``).

``--profile N`` instead splits our evaluation pass into its steps on the first N maps, in
this process (one core, no workers): reading and parsing the map from disk, the kernel's
steps (``segment_map_cpu(timings=...)``), the scoring (IoU, hit/miss), next to the time to
read the same files whole, once.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from cxr_spurious.io.chexlocalize import (
    load_json,
    parse_map_filename,
    read_heatmap_folder,
    read_heatmap_pickle,
)
from cxr_spurious.io.safe_pickle import load_torch_pickle
from cxr_spurious.localization import summary, tuning
from cxr_spurious.localization.evaluate import build_jobs, evaluate_heatmap_set, score_fast_map
from cxr_spurious.localization.kernels import segment_map_cpu

GEN = Path(__file__).resolve().with_name("make_chexlocalize_set.py")
N_BOOT = 1000


def _ref_upsampled(path: Path) -> torch.Tensor:
    info = load_torch_pickle(path)  # the whole pickle, cxr_img included, like pickle.load
    w, h = info["cxr_dims"]
    return F.interpolate(info["map"], size=(h, w), mode="bilinear", align_corners=False)


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
            ImageDraw.Draw(img).polygon(
                [(int(p[0][0]), int(p[0][1])) for p in c], outline=1, fill=1
            )
    return np.array(img, dtype="int")


def _ref_encode(seg: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(seg.astype("uint8")))
    rle["counts"] = rle["counts"].decode()
    return rle


def _ref_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    if pred.sum() == 0 or gt.sum() == 0:
        return np.nan
    return float(np.logical_and(pred, gt).sum() / np.logical_or(pred, gt).sum())


def evict(paths: list[Path]) -> None:
    """Drop these files' pages from the OS page cache (``posix_fadvise DONTNEED``).

    Called at the start of each stage on both sides, so that each reads the files from
    disk as a run on files not read recently does, whatever ran before it (the set fits in
    the page cache of a machine with a few GB free, so it would otherwise be warm).
    """
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def reference(
    paths: list[Path], gt: dict, grid: list[float]
) -> tuple[dict[str, float], dict[str, int], dict]:
    """Seconds spent in each reference stage on ``paths``, how many maps each covered, outputs.

    Stages are separate passes over the files like the reference scripts
    (heatmap_to_segmentation, eval --metric iou, eval --metric hitmiss,
    tune_heatmap_threshold), each script starting from a cold page cache. Tuning loops as
    ``tune_heatmap_threshold.py`` does: task by task, one pass over the task's maps per
    threshold, so a map's first read is cold and its six re-reads are warm.
    """
    keys = [parse_map_filename(p) for p in paths]
    in_gt = [(p, k) for p, k in zip(paths, keys) if k[0] in gt]
    t: dict[str, float] = {}
    out: dict = {"seg": {}, "iou": {}, "hit": {}, "tune_iou": {}}
    evict(paths)
    s = time.perf_counter()
    for p, k in zip(paths, keys):
        out["seg"][k] = _ref_encode(_ref_segment(_ref_upsampled(p)))
    t["segment"] = time.perf_counter() - s
    s = time.perf_counter()
    for _, (cxr, task) in in_gt:
        out["iou"][(cxr, task)] = _ref_iou(
            mask_utils.decode(out["seg"][(cxr, task)]), mask_utils.decode(gt[cxr][task])
        )
    t["iou"] = time.perf_counter() - s
    evict(paths)
    s = time.perf_counter()
    for p, (cxr, task) in in_gt:
        sal = _ref_upsampled(p).squeeze().numpy()
        r, c = np.unravel_index(np.argmax(sal), sal.shape)
        g = mask_utils.decode(gt[cxr][task])
        out["hit"][(cxr, task)] = np.nan if g.sum() == 0 else float(g[r, c] == 1)
    t["hitmiss"] = time.perf_counter() - s
    t["tuning"] = 0.0
    evict(paths)  # once: the tuning script's later thresholds re-read the maps warm
    for task_name in sorted({task for _, (_, task) in in_gt}):
        task_maps = [(p, k) for p, k in in_gt if k[1] == task_name]
        for thr in grid:
            s = time.perf_counter()
            for p, (cxr, task) in task_maps:
                seg = _ref_segment(_ref_upsampled(p), thr)
                out["tune_iou"][(cxr, task, round(thr, 1))] = _ref_iou(
                    seg, mask_utils.decode(gt[cxr][task])
                )
            t["tuning"] += time.perf_counter() - s
    n = {"segment": len(paths), "iou": len(in_gt), "hitmiss": len(in_gt), "tuning": len(in_gt)}
    return t, n, out


def reference_bootstrap(wide: pd.DataFrame, n_boot: int) -> pd.DataFrame:
    """The reference's bootstrap: global seed, ``np.random.choice`` rows, pandas means."""
    np.random.seed(0)
    cols = [c for c in wide.columns if c != "img_id"]
    reps = [
        wide.iloc[np.random.choice(len(wide), size=len(wide), replace=True)][cols].mean()
        for _ in range(n_boot)
    ]
    return pd.DataFrame(reps)


@dataclass(frozen=True)
class Agreement:
    """How our results compare with the reference's on the reference maps.

    Attributes:
        n_maps: Reference maps.
        mask_pixels: Pixels where our Otsu mask differs from the reference's.
        missing_masks: Reference maps with no mask on our side.
        hit_diff: (CXR, task) pairs of the gt whose hit/miss differs or is missing on our side.
        n_iou: IoUs compared (both sides non-NaN).
        iou_diff: Largest |IoU difference| over those.
        iou_nan_diff: Pairs where exactly one side's IoU is NaN.
        missing_iou: Reference (CXR, task) pairs of the gt missing from our per-map table.
        n_positive: Positive reference maps (CXR in the gt, non-empty gt mask).
        n_thresholds: Tuning thresholds.
        tune_expected: (map, threshold) tuning IoUs to compare: thresholds x ``n_positive``.
        n_tune: Tuning IoUs compared (equal NaN-ness on both sides).
        tune_diff: Largest |tuning IoU difference| over those.
        tune_nan_diff: Tuning IoUs where exactly one side is NaN.
        tune_missing: Tuning IoUs of positive reference maps our tuning counts lack.
    """

    n_maps: int
    mask_pixels: int
    missing_masks: int
    hit_diff: int
    n_iou: int
    iou_diff: float
    iou_nan_diff: int
    missing_iou: int
    n_positive: int
    n_thresholds: int
    tune_expected: int
    n_tune: int
    tune_diff: float
    tune_nan_diff: int
    tune_missing: int


def _tuning_iou(row: pd.Series | None, thr: float) -> float | None:
    """Our true-positive tuning IoU of one map at ``thr`` from its counts; None if absent."""
    cols = (f"tune_area_{thr:g}", f"tune_inter_{thr:g}", "gt_area")
    if row is None or any(c not in row.index or pd.isna(row[c]) for c in cols):
        return None
    a, i, g = (int(row[c]) for c in cols)
    return i / (a + g - i) if a > 0 and g > 0 else np.nan


def compare_with_reference(
    ref: dict,
    per_map: pd.DataFrame,
    seg: dict,
    counts: pd.DataFrame,
    gt: dict,
    grid: list[float],
) -> Agreement:
    """Our evaluation and tuning counts against the reference's outputs (``reference``).

    Every reference value is compared; one that our side lacks counts as a disagreement.
    The tuning IoUs compared are those of every positive reference map at every threshold
    of ``grid`` (the reference's IoU is NaN for the other maps); ours come from the counts
    as ``tune_thresholds`` computes them.

    Args:
        ref: The third output of ``reference``.
        per_map: Our per-map table (``evaluate_heatmap_set``).
        seg: Our ``{cxr: {task: rle}}`` Otsu segmentations.
        counts: Our tuning counts (``tuning.tuning_counts``).
        gt: CheXlocalize gt JSON.
        grid: The tuning thresholds.

    Returns:
        The agreement figures.
    """
    mask_pixels = missing_masks = 0
    for (cxr, task), rle in ref["seg"].items():
        ours = seg.get(cxr, {}).get(task)
        if ours is None:
            missing_masks += 1
            continue
        mask_pixels += int((mask_utils.decode(ours) != mask_utils.decode(rle)).sum())
    table = per_map.set_index(["image_id", "task"])
    hit_diff = 0
    for key, v in ref["hit"].items():
        o = table.loc[key, "hit"] if key in table.index else None
        hit_diff += o is None or not ((np.isnan(v) and np.isnan(o)) or v == o)
    n_iou = iou_nan_diff = missing_iou = 0
    iou_diff = 0.0
    for key, v in ref["iou"].items():
        if key not in table.index:
            missing_iou += 1
            continue
        o = float(table.loc[key, "iou_tp"])
        if np.isnan(v) != np.isnan(o):
            iou_nan_diff += 1
        elif not np.isnan(v):
            iou_diff = max(iou_diff, abs(v - o))
            n_iou += 1
    rows = {
        (str(r["image_id"]), str(r["task"])): r for _, r in counts.iterrows()
    }  # a duplicated map keeps its last row
    positive = [
        (cxr, task) for cxr, task in ref["seg"] if cxr in gt and mask_utils.area(gt[cxr][task]) > 0
    ]
    n_tune = tune_nan_diff = tune_missing = 0
    tune_diff = 0.0
    for cxr, task in positive:
        for thr in grid:
            v = ref["tune_iou"].get((cxr, task, round(thr, 1)))
            o = _tuning_iou(rows.get((cxr, task)), thr)
            if v is None or o is None:
                tune_missing += 1
            elif np.isnan(v) != np.isnan(o):
                tune_nan_diff += 1
            else:
                if not np.isnan(v):
                    tune_diff = max(tune_diff, abs(v - o))
                n_tune += 1
    return Agreement(
        n_maps=len(ref["seg"]),
        mask_pixels=mask_pixels,
        missing_masks=missing_masks,
        hit_diff=hit_diff,
        n_iou=n_iou,
        iou_diff=iou_diff,
        iou_nan_diff=iou_nan_diff,
        missing_iou=missing_iou,
        n_positive=len(positive),
        n_thresholds=len(grid),
        tune_expected=len(grid) * len(positive),
        n_tune=n_tune,
        tune_diff=tune_diff,
        tune_nan_diff=tune_nan_diff,
        tune_missing=tune_missing,
    )


def agreement_failures(a: Agreement) -> list[str]:
    """One sentence per failed agreement check; empty when our results equal the reference's.

    Both sides divide the same integer pixel counts once (correctly rounded float64), so
    equal results give IoUs equal to the last bit: the tolerance is 0.
    """
    checks = [
        (a.mask_pixels == 0, f"{a.mask_pixels} mask pixels differ from the reference's"),
        (a.missing_masks == 0, f"{a.missing_masks} reference maps have no mask on our side"),
        (a.hit_diff == 0, f"{a.hit_diff} hit/miss values differ or are missing on our side"),
        (a.iou_diff == 0.0, f"max |IoU diff| is {a.iou_diff:.3e}, not 0"),
        (a.iou_nan_diff == 0, f"{a.iou_nan_diff} IoUs are NaN on one side only"),
        (a.missing_iou == 0, f"{a.missing_iou} reference IoUs are missing on our side"),
        (a.n_iou > 0, "no non-NaN IoU was compared (raise --ref-maps)"),
        (a.tune_diff == 0.0, f"max |tuning IoU diff| is {a.tune_diff:.3e}, not 0"),
        (a.tune_nan_diff == 0, f"{a.tune_nan_diff} tuning IoUs are NaN on one side only"),
        (
            a.tune_missing == 0,
            f"{a.tune_missing} of {a.tune_expected} (map, threshold) tuning IoUs of positive "
            "reference maps are missing from our tuning counts",
        ),
        (a.n_positive > 0, "no positive map among the reference maps (raise --ref-maps)"),
    ]
    return [message for ok, message in checks if not ok]


def format_agreement(a: Agreement) -> str:
    """The agreement line printed by ``main``."""
    return (
        f"agreement on the {a.n_maps} reference maps: {a.mask_pixels} differing mask pixels, "
        f"{a.hit_diff} differing hit/miss values, max |IoU diff| {a.iou_diff:.2e} over "
        f"{a.n_iou} IoUs ({a.iou_nan_diff} NaN/non-NaN disagreements, {a.missing_iou} "
        f"missing, {a.missing_masks} masks missing), max |tuning IoU diff| {a.tune_diff:.2e} "
        f"over {a.n_tune} of {a.tune_expected} (map, threshold) IoUs ({a.n_thresholds} "
        f"thresholds x {a.n_positive} positive reference maps; {a.tune_nan_diff} NaN/non-NaN "
        f"disagreements, {a.tune_missing} missing from our tuning counts)"
    )


def _cpu() -> float:
    """CPU seconds used so far by this process and its finished children (all cores)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _load() -> float:
    return os.getloadavg()[0]


def _ms(seconds: float, n: int) -> str:
    return f"{1e3 * seconds / max(n, 1):8.2f}"


PROFILE_STEPS: tuple[tuple[str, str], ...] = (
    ("read", "read + parse the map (restricted unpickler, disk)"),
    ("setup", "kernel: bilinear taps"),
    ("extremes", "kernel: cell bounds + exact min / max / argmax"),
    ("histogram", "kernel: 256-bin histogram of the uint8 image"),
    ("otsu", "kernel: Otsu level and its float32 edge"),
    ("mask", "kernel: mask runs, RLE string, hole check"),
    ("score", "score: IoU, hit/miss"),
)


def profile_pass(
    map_dir: Path, gt: dict, n_maps: int
) -> tuple[dict[str, float], float, float, int]:
    """Seconds of each step of our evaluation pass over the first ``n_maps`` maps.

    One process, no workers: each map is read from disk (evicted first), segmented with
    ``segment_map_cpu(timings=...)`` and scored, as ``evaluate_job`` does. Also returns
    the seconds to read the same files whole once (evicted first), to parse their maps
    again from the page cache (the CPU part of the read), and the number of maps.
    """
    hs = read_heatmap_folder(map_dir, workers=1)
    jobs = build_jobs(
        hs,
        gt,
        configs={},
        tuning_grid=(),
        extra_metrics=False,
        top_k=1000,
        spurious_segmentations={},
    )[:n_maps]
    paths = [Path(job.source) for job in jobs]
    warm = jobs[0]  # compile / load the kernels before timing
    score_fast_map(
        segment_map_cpu(
            read_heatmap_pickle(warm.source).map, warm.height, warm.width, 1.0, warm.config
        ),
        warm,
    )
    evict(paths)
    t0 = time.perf_counter()
    for path in paths:
        path.read_bytes()
    t_files = time.perf_counter() - t0
    evict(paths)
    steps: dict[str, float] = dict.fromkeys([key for key, _ in PROFILE_STEPS], 0.0)
    for job in jobs:
        t0 = time.perf_counter()
        map2d = read_heatmap_pickle(job.source).map
        steps["read"] += time.perf_counter() - t0
        fast = segment_map_cpu(map2d, job.height, job.width, job.prob, job.config, timings=steps)
        t0 = time.perf_counter()
        score_fast_map(fast, job)
        steps["score"] += time.perf_counter() - t0
    t0 = time.perf_counter()
    for job in jobs:  # now in the page cache
        read_heatmap_pickle(job.source)
    return steps, t_files, time.perf_counter() - t0, len(jobs)


def print_profile(steps: dict[str, float], t_files: float, t_parse: float, n: int) -> None:
    """The profile as a table (ms per map, share of the pass)."""
    total = sum(steps.values())
    print(f"\nour evaluation pass, step by step ({n} maps, one process, files read from disk)")
    print(f"{'step':<52}{'ms/map':>8}{'share':>8}")
    for key, label in PROFILE_STEPS:
        print(f"{label:<52}{_ms(steps[key], n):>8}{steps[key] / total:>8.0%}")
    print(f"{'whole pass':<52}{_ms(total, n):>8}{1:>8.0%}")
    print(f"{'reading the same files whole, once (bytes only)':<52}{_ms(t_files, n):>8}")
    print(f"{'parsing their maps again from the page cache':<52}{_ms(t_parse, n):>8}")


def prepare_set(
    folder: Path | None, n: int, seed: int
) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """The bench folder: ``folder`` as it is if it has files, else a set generated into it
    (or into a temporary folder when ``folder`` is None, returned to be cleaned up)."""
    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_loc_")
        folder = Path(tmp.name)
    if folder.is_dir() and any(folder.iterdir()):
        return folder, tmp
    subprocess.run(
        [sys.executable, str(GEN), "--n", str(n), "--seed", str(seed), "--out", str(folder)],
        check=True,
    )
    return folder, tmp


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or ``--profile``) and print its tables.

    Returns:
        The exit status: 0, or 1 when an agreement check with the reference fails.
    """
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="bench folder (default: generate one in a temporary folder)",
    )
    ap.add_argument(
        "--n", type=int, default=234, help="CXRs to generate when --dir is missing or empty"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated set")
    ap.add_argument(
        "--ref-maps",
        type=int,
        default=120,
        help="maps timed on the reference side (first N in name order)",
    )
    ap.add_argument(
        "--workers", type=int, default=None, help="our worker processes (default: one per core)"
    )
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="only split our evaluation pass into its steps on the first N maps",
    )
    args = ap.parse_args(argv)
    args.dir, tmp = prepare_set(args.dir, args.n, args.seed)
    gt = load_json(args.dir / "gt_segmentations_val.json")
    if args.profile > 0:
        print_profile(*profile_pass(args.dir / "gradcam_maps_val", gt, args.profile))
        if tmp is not None:
            tmp.cleanup()
        return 0
    grid = tuning.threshold_grid(0.2, 0.8, 0.1)
    map_dir = args.dir / "gradcam_maps_val"
    load_before = _load()
    print(
        f"set: {map_dir}; cores: {os.cpu_count()}, "
        f"torch threads (reference side): {torch.get_num_threads()}, "
        f"cuda: {torch.cuda.is_available()}, 1-min load before: {load_before:.2f}"
    )

    all_paths = sorted(map_dir.glob("*_map.pkl"))
    evict(all_paths)
    c0 = _cpu()
    t0 = time.perf_counter()
    # the folder as the pipeline's dataset loads it: the pass reads each pickle once and
    # takes the index from the same read (``t_index``: listing the folder)
    hs = read_heatmap_folder(map_dir, workers=args.workers, lazy=True)
    t_index = time.perf_counter() - t0
    n = len(hs)
    evict(all_paths)
    t0 = time.perf_counter()
    per_map, seg = evaluate_heatmap_set(
        hs, gt, workers=args.workers, progress=False, prefer_gpu=False
    )  # the exact CPU kernel (the GPU path is opt-in)
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    for col in ("iou_tp", "hit"):
        wide = summary.per_cxr_table(per_map, col)
        summary.reference_summary(summary.reference_bootstrap(wide, N_BOOT, 0))
    t_boot = time.perf_counter() - t0
    evict(all_paths)
    c_eval = _cpu() - c0
    c0 = _cpu()
    t0 = time.perf_counter()
    # a separate run, like the reference's tuning script: a fresh listing of the folder,
    # whose positive pickles alone are read (once each)
    hs_tune = read_heatmap_folder(map_dir, workers=args.workers, lazy=True)
    counts = tuning.tuning_counts(hs_tune, gt, grid, workers=args.workers, progress=False)
    _, tune_grid = tuning.tune_thresholds(counts, grid)
    t_tune = time.perf_counter() - t0
    c_tune = _cpu() - c0
    ours_eval = t_index + t_eval + t_boot
    ours_tune = t_tune
    in_gt = per_map["in_gt"].astype(bool)
    n_gt_maps = int(in_gt.sum())
    peak_parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    paths = all_paths[: args.ref_maps]
    c0 = _cpu()
    t_ref, n_ref, ref = reference(paths, gt, grid)
    c_ref = _cpu() - c0
    t0 = time.perf_counter()
    for col in ("iou_tp", "hit"):
        reference_bootstrap(summary.per_cxr_table(per_map, col), N_BOOT)
    t_ref_boot = time.perf_counter() - t0
    load_after = _load()
    per_ref = {k: t_ref[k] / max(n_ref[k], 1) for k in t_ref}  # seconds per applicable map
    ref_stage = {
        "segment": per_ref["segment"] * n,
        "iou": per_ref["iou"] * n_gt_maps,
        "hitmiss": per_ref["hitmiss"] * n_gt_maps,
        "tuning": per_ref["tuning"] * n_gt_maps,
    }
    ref_eval = ref_stage["segment"] + ref_stage["iou"] + ref_stage["hitmiss"] + t_ref_boot
    ref_tune = ref_stage["tuning"]

    print(
        f"\n{n} heatmaps ({n_gt_maps} of CXRs in the ground truth, {len(counts)} positive); "
        f"reference timed on {len(paths)} maps, extrapolated per applicable map"
    )
    print(f"{'stage':<44}{'ours ms/map':>12}{'ref ms/map':>12}")
    print(f"{'list the folder (names, first header)':<44}{_ms(t_index, n):>12}{'-':>12}")
    print(
        f"{'read + index + segment + IoU + hit/miss':<44}{_ms(t_eval, n):>12}"
        f"{_ms(ref_stage['segment'] + ref_stage['iou'] + ref_stage['hitmiss'], n):>12}"
    )
    print(
        f"{'  reference: segment (Otsu, contours, RLE)':<44}{'':>12}"
        f"{_ms(ref_stage['segment'], n):>12}"
    )
    print(f"{'  reference: IoU':<44}{'':>12}{_ms(ref_stage['iou'], n):>12}")
    print(f"{'  reference: hit/miss':<44}{'':>12}{_ms(ref_stage['hitmiss'], n):>12}")
    print(
        f"{'bootstrap (IoU + hit/miss, 2 x 1000)':<44}{_ms(t_boot, n):>12}{_ms(t_ref_boot, n):>12}"
    )
    print(f"{'threshold tuning (7 thresholds)':<44}{_ms(t_tune, n):>12}{_ms(ref_tune, n):>12}")
    print(
        f"\nwhole evaluation (listing + pass + bootstrap): ours {ours_eval:.1f} s, "
        f"reference {ref_eval:.1f} s -> speed-up x{ref_eval / ours_eval:.1f}"
    )
    print(
        f"threshold tuning (listing + tuning pass + table): ours {ours_tune:.1f} s, "
        f"reference {ref_tune:.1f} s -> speed-up x{ref_tune / ours_tune:.1f}"
    )
    ref_wall = sum(t_ref.values())
    print(
        f"CPU time (all cores, load-independent cost): ours {1e3 * c_eval / n:.1f} ms/map "
        "for the evaluation (listing + pass + bootstrap, includes the fork of the workers), "
        f"{1e3 * c_tune / n:.1f} ms/map for tuning (listing + tuning pass); "
        f"reference {c_ref / ref_wall:.2f} CPU-s per wall-s over its timed stages "
        f"-> CPU-time speed-ups x{ref_eval * (c_ref / ref_wall) / c_eval:.1f} (evaluation), "
        f"x{ref_tune * (c_ref / ref_wall) / c_tune:.1f} (tuning)"
    )
    print(
        f"peak RSS: this process {peak_parent:.0f} MiB, largest worker {peak_child:.0f} MiB; "
        f"1-min load after: {load_after:.2f}"
    )

    agreement = compare_with_reference(ref, per_map, seg, counts, gt, list(grid))
    print(format_agreement(agreement))
    print(tune_grid.pivot(index="task", columns="threshold", values="mIoU").round(4).to_string())
    if tmp is not None:
        tmp.cleanup()
    failures = agreement_failures(agreement)
    for message in failures:
        print(f"agreement check failed: {message}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
