"""Write a synthetic CheXlocalize-format validation set for ``bench_localization.py``.

Usage:
    python benchmarks/make_chexlocalize_set.py --out DIR [--n 234] [--seed 0] [--pos-frac 0.3]

Everything comes from this repository and its dependencies. The same ``--n`` and ``--seed``
always give the same content: identical JSON files, and pickles that load to identical
values (their bytes differ between runs only in the storage keys that torch's pickling
takes from memory addresses). Under ``--out``:

* ``gradcam_maps_val/<cxr_id>_<task>_map.pkl``: ``--n`` CXRs x the 10 CheXlocalize tasks.
  Each is a protocol-3 ``pickle.dump`` of the CheXlocalize dict: ``map`` float32 tensor
  (1, 1, 320, 320), non-negative with minimum 0 (a few Gaussian blobs on a 10 x 10 grid,
  clipped like a ReLU and bilinearly upsampled, like Grad-CAM of a 10 x 10 feature map),
  its maximum log-uniform in [1e-5, 1e-2]; ``prob`` float; ``task`` str; ``gt`` 0/1;
  ``cxr_img`` float32 tensor (3, 320, 320) of k/255 values, three equal channels;
  ``cxr_dims`` (w, h), each uniform in [1750, 2900] px.
* ``gt_annotations_val.json``: ``{cxr_id: {"img_size": [h, w], task: [polygon, ...]}}`` for
  the positive tasks (one contour, or two for about one positive in five).
* ``gt_segmentations_val.json``: ``{cxr_id: {task: RLE}}`` for all 10 tasks, each mask the
  polygons rasterised the CheXlocalize way (``cxr_spurious.io.masks``), empty for negatives.
  As in the real validation set, both JSON files list only CXRs with a positive task.
* ``manifest.json``: the arguments and counts.

About ``--pos-frac`` of the (CXR, task) pairs are positive; seven in ten of their maps have
a blob near the first contour's centre, the others are unrelated to the annotation.
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxr_spurious.io.masks import encode_rle, rasterize_polygons
from cxr_spurious.tasks import CHEXLOCALIZE_TASKS

MAP_SIDE = 320
CAM_GRID = 10
SIDE_RANGE = (1750, 2900)  # inclusive, pixels
MAP_DIR = "gradcam_maps_val"
FIRST_PATIENT = 70000


def _contour(
    rng: np.random.Generator, h: int, w: int
) -> tuple[list[list[float]], tuple[float, float]]:
    """A smooth closed contour (x, y points) and its centre as fractions (x / w, y / h)."""
    centre = rng.uniform(0.15, 0.85, size=2)
    if rng.random() < 0.25:  # long and thin, like a tube or a line
        radii = np.array([rng.uniform(0.1, 0.3) * w, rng.uniform(0.01, 0.04) * h])
    else:
        radii = np.array([rng.uniform(0.04, 0.2) * w, rng.uniform(0.04, 0.2) * h])
    n_points = int(rng.integers(60, 300))
    angle = np.linspace(0.0, 2.0 * np.pi, n_points, endpoint=False)
    wobble = 1.0 + sum(
        rng.uniform(0.0, 0.06) * np.sin(k * angle + rng.uniform(0.0, 2.0 * np.pi))
        for k in range(2, 6)
    )
    turn = rng.uniform(0.0, np.pi)
    dx, dy = radii[0] * wobble * np.cos(angle), radii[1] * wobble * np.sin(angle)
    xs = np.clip(centre[0] * w + dx * np.cos(turn) - dy * np.sin(turn), 0, w - 1)
    ys = np.clip(centre[1] * h + dx * np.sin(turn) + dy * np.cos(turn), 0, h - 1)
    return [[round(float(x), 5), round(float(y), 5)] for x, y in zip(xs, ys)], (
        float(centre[0]),
        float(centre[1]),
    )


def _cam(rng: np.random.Generator, near: tuple[float, float] | None) -> torch.Tensor:
    """A Grad-CAM-like (1, 1, 320, 320) float32 map, optionally with a blob near ``near``.

    ``near`` is given as (x, y) fractions of the width and height.
    """
    rows, cols = np.mgrid[0:CAM_GRID, 0:CAM_GRID] + 0.5
    blobs = [rng.uniform(0, CAM_GRID, size=2) for _ in range(int(rng.integers(1, 4)))]  # (col, row)
    if near is not None:
        blobs[0] = np.clip(np.array(near) * CAM_GRID + rng.normal(0.0, 1.0, size=2), 0, CAM_GRID)
    grid = np.zeros((CAM_GRID, CAM_GRID))
    for col, row in blobs:
        spread = rng.uniform(0.8, 3.0)
        grid += rng.uniform(0.3, 1.0) * np.exp(
            -((rows - row) ** 2 + (cols - col) ** 2) / (2.0 * spread**2)
        )
    grid += rng.normal(0.0, 0.02, grid.shape)
    grid = np.maximum(grid - rng.uniform(0.05, 0.4) * grid.max(), 0.0)  # ReLU after a shift
    cam = F.interpolate(
        torch.from_numpy(grid).float()[None, None],
        size=(MAP_SIDE, MAP_SIDE),
        mode="bilinear",
        align_corners=False,
    ).clamp_min(0.0)
    cam = cam - cam.min()
    peak = float(cam.max())
    scale = float(10.0 ** rng.uniform(-5.0, -2.0))
    return (cam * (scale / peak if peak > 0 else 0.0)).contiguous()


def _image(rng: np.random.Generator) -> torch.Tensor:
    """A (3, 320, 320) float32 image of k/255 values: smooth noise plus a horizontal ramp."""
    coarse = torch.from_numpy(rng.normal(0.0, 1.0, (16, 16))).float()[None, None]
    smooth = F.interpolate(coarse, size=(MAP_SIDE, MAP_SIDE), mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()
    smooth = (smooth - smooth.min()) / max(float(smooth.max() - smooth.min()), 1e-12)
    gray = 0.8 * smooth + 0.2 * np.linspace(0.0, 1.0, MAP_SIDE)[None, :]
    levels = np.clip(np.rint(gray * 255.0), 0, 255).astype(np.float32) / 255.0
    return torch.from_numpy(levels)[None].expand(3, -1, -1).contiguous()


def generate(out: str | Path, n: int = 234, seed: int = 0, pos_frac: float = 0.3) -> dict[str, Any]:
    """Write the set under ``out`` (created if needed) and return its manifest."""
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    if not 0.0 <= pos_frac <= 1.0:
        raise ValueError(f"--pos-frac must be in [0, 1], got {pos_frac}")
    out = Path(out)
    maps = out / MAP_DIR
    maps.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    annotations: dict[str, Any] = {}
    segmentations: dict[str, Any] = {}
    n_positive = n_contours = 0
    for i in range(n):
        cxr_id = f"patient{FIRST_PATIENT + i}_study1_view1_frontal"
        w, h = (int(v) for v in rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, size=2))
        image = _image(rng)
        ann: dict[str, Any] = {"img_size": [h, w]}
        seg: dict[str, Any] = {}
        for task in CHEXLOCALIZE_TASKS:
            positive = bool(rng.random() < pos_frac)
            near = None
            if positive:
                contours = [_contour(rng, h, w) for _ in range(1 if rng.random() < 0.8 else 2)]
                ann[task] = [points for points, _ in contours]
                seg[task] = encode_rle(rasterize_polygons(ann[task], h, w))
                near = contours[0][1] if rng.random() < 0.7 else None
                prob = float(rng.beta(2.0, 3.0))
                n_positive += 1
                n_contours += len(contours)
            else:
                seg[task] = encode_rle(np.zeros((h, w), np.uint8))
                prob = float(rng.beta(1.0, 8.0))
            payload = {
                "map": _cam(rng, near),
                "prob": prob,
                "task": task,
                "gt": int(positive),
                "cxr_img": image.clone(),
                "cxr_dims": (w, h),
            }
            with (maps / f"{cxr_id}_{task}_map.pkl").open("wb") as fh:
                pickle.dump(payload, fh, protocol=3)
        if len(ann) > 1:
            annotations[cxr_id] = ann
            segmentations[cxr_id] = seg
    (out / "gt_annotations_val.json").write_text(json.dumps(annotations))
    (out / "gt_segmentations_val.json").write_text(json.dumps(segmentations))
    manifest = {
        "generator": "benchmarks/make_chexlocalize_set.py",
        "n_cxr": n,
        "n_heatmaps": n * len(CHEXLOCALIZE_TASKS),
        "seed": seed,
        "pos_frac": pos_frac,
        "n_positive_pairs": n_positive,
        "n_contours": n_contours,
        "n_cxr_in_gt_json": len(segmentations),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder to write (created if needed)")
    ap.add_argument(
        "--n",
        type=int,
        default=234,
        help="CXRs (10 heatmaps each; default 234, the real validation set's size)",
    )
    ap.add_argument(
        "--seed", type=int, default=0, help="random seed (same seed and --n, same files)"
    )
    ap.add_argument(
        "--pos-frac", type=float, default=0.3, help="share of positive (CXR, task) pairs"
    )
    args = ap.parse_args(argv)
    print(json.dumps(generate(args.out, n=args.n, seed=args.seed, pos_frac=args.pos_frac)))


if __name__ == "__main__":
    main()
