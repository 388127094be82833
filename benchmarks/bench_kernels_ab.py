"""The exact localization kernels against an earlier revision of them, interleaved in one process.

Usage:
    python benchmarks/bench_kernels_ab.py --rev REV [--dir DIR] [--maps 200] [--rounds 3]

``localization/bilinear.py`` as it was at git revision ``REV`` (``git show``) is imported
beside the current module, and both time the same maps, one after the other in each round
(same process, same moment, so the machine's load affects both alike): the cell bounds
(computed anew each time; the other kernels reuse each map's cached bounds), the exact
extremes, the Otsu mask's runs, the threshold-tuning counts (the grid 0.2..0.8 inside the
ground truth mask) and the histogram. Results must agree; the script stops at the first
difference. The maps are the first ``--maps`` of a CheXlocalize-format folder, every
other file (``--dir``; generated with ``make_chexlocalize_set.py`` when missing or empty,
as ``bench_localization.py`` does).

Prints ms per map for each kernel, before and after, and their ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_localization import prepare_set

from cxr_spurious.io.chexlocalize import load_json, read_heatmap_pickle
from cxr_spurious.localization import bilinear
from cxr_spurious.localization.kernels import level_edges, otsu_threshold
from cxr_spurious.localization.metrics import rle_runs

REPO = Path(__file__).resolve().parents[1]
MODULE = "src/cxr_spurious/localization/bilinear.py"
GRID = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def load_revision(rev: str, folder: Path) -> Any:
    """``bilinear.py`` at ``rev``, imported as a separate module from ``folder``."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{rev}:{MODULE}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    name = f"bilinear_{rev.replace('/', '_').replace('~', '_').replace('^', '_')}"
    path = folder / f"{name}.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cases(map_dir: Path, gt: dict, n_maps: int, old: Any) -> list[dict[str, Any]]:
    cases = []
    for path in sorted(map_dir.glob("*_map.pkl"))[: 2 * n_maps : 2]:
        rec = read_heatmap_pickle(path)
        new_map = bilinear.BilinearMap(rec.map, rec.height, rec.width)
        old_map = old.BilinearMap(rec.map, rec.height, rec.width)
        lo, hi, _ = new_map.extremes()
        span = float(np.float32(np.float32(hi) - np.float32(lo)))
        level = otsu_threshold(new_map.histogram(lo, hi))
        entry = gt.get(rec.cxr_id, {}).get(rec.task)
        cases.append(
            {
                "maps": (old_map, new_map),
                "lo": lo,
                "hi": hi,
                "otsu_edge": level_edges(lo, span, [level + 1], scale=255.0, strict=False)[0],
                "grid_edges": level_edges(lo, span, GRID),
                "gt_runs": None if entry is None else rle_runs(entry),
            }
        )
    return cases


def _fresh_cell_bounds(m: Any) -> tuple[Any, Any]:
    """A map's cell bounds computed anew (``BilinearMap`` caches them on first use): the
    ``_bounds`` property of the current module, ``_cells`` of revisions before it."""
    prop = getattr(type(m), "_bounds", None) or type(m)._cells
    lo, hi = prop.func(m)[:2]
    return lo, hi


KERNELS: dict[str, Callable[[Any, dict[str, Any]], Any]] = {
    "cell bounds": lambda m, c: _fresh_cell_bounds(m),
    "exact extremes": lambda m, c: m.extremes(),
    "Otsu mask runs": lambda m, c: m.runs(c["otsu_edge"]),
    "tuning counts (7 thresholds)": lambda m, c: (
        None if c["gt_runs"] is None else m.edge_counts(c["grid_edges"], c["gt_runs"])
    ),
    "histogram": lambda m, c: m.histogram(c["lo"], c["hi"]),
}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return a == b


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rev", required=True, help="git revision of the earlier kernels")
    ap.add_argument("--dir", type=Path, default=None, help="CheXlocalize-format bench folder")
    ap.add_argument("--n", type=int, default=234, help="CXRs to generate when --dir is empty")
    ap.add_argument("--seed", type=int, default=0, help="seed of the generated set")
    ap.add_argument("--maps", type=int, default=200, help="maps timed (every other file)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per kernel")
    args = ap.parse_args(argv)
    folder, tmp_set = prepare_set(args.dir, args.n, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_ab_") as scratch:
        old = load_revision(args.rev, Path(scratch))
        gt = load_json(folder / "gt_segmentations_val.json")
        cases = _cases(folder / "gradcam_maps_val", gt, args.maps, old)
        print(f"{len(cases)} maps, {args.rounds} rounds; earlier kernels: {args.rev}")
        print(f"{'kernel':<30}{'earlier ms/map':>16}{'now ms/map':>12}{'ratio':>8}")
        for name, kernel in KERNELS.items():
            used = [c for c in cases if kernel(c["maps"][1], c) is not None]
            for case in used:  # compile / warm both, and check they agree
                before, after = (kernel(m, case) for m in case["maps"])
                if not _same(before, after):
                    raise SystemExit(f"{name}: results differ between {args.rev} and now")
            seconds = [0.0, 0.0]
            for _ in range(args.rounds):
                for side in (0, 1):
                    start = time.perf_counter()
                    for case in used:
                        kernel(case["maps"][side], case)
                    seconds[side] += time.perf_counter() - start
            per = [1e3 * s / (args.rounds * len(used)) for s in seconds]
            print(f"{name:<30}{per[0]:>16.3f}{per[1]:>12.3f}{per[0] / per[1]:>8.2f}")
    if tmp_set is not None:
        tmp_set.cleanup()


if __name__ == "__main__":
    sys.exit(main())
