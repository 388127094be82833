"""``localization.warmup``: the numba kernels compiled ahead of the first run.

``make install`` runs it so that a fresh clone's first pipeline run loads the kernels
from the cache instead of compiling them in every worker. That only helps if it compiles
the type signatures the evaluation and the tuning then use: a fresh interpreter warms up,
evaluates a heatmap set (extra metrics, tuning counts, shortcut objects, holes) and must
not compile anything more.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from cxr_spurious.localization.warmup import warm_kernels

CHECK = textwrap.dedent(
    """
    import numba
    import numpy as np
    import pandas as pd
    from numba.core.registry import CPUDispatcher

    from cxr_spurious.heatmaps import HeatmapSet
    from cxr_spurious.io import masks
    from cxr_spurious.io.masks import encode_rle
    from cxr_spurious.localization import bilinear, kernels, tuning
    from cxr_spurious.localization.evaluate import evaluate_heatmap_set
    from cxr_spurious.localization.warmup import warm_kernels

    def signatures():
        out = {}
        for module in (bilinear, kernels, masks):
            for name, obj in vars(module).items():
                if isinstance(obj, CPUDispatcher):
                    out[f"{module.__name__}.{name}"] = len(obj.signatures)
        return out

    warm_kernels()
    before = signatures()
    rng = np.random.default_rng(4)
    rows, maps, gt, tubes = [], [], {}, {}
    h, w = 83, 67
    for i in range(12):
        cxr = f"p{i // 2}_study1_view1_frontal"
        task = ("Edema", "Pneumothorax")[i % 2]
        mask = np.zeros((h, w), np.uint8)
        mask[10 + i : 60, 5 : 40 + i] = 1
        gt.setdefault(cxr, {})[task] = encode_rle(mask)
        tube = np.zeros((h, w), np.uint8)
        tube[:, 50:53] = 1
        tubes.setdefault(cxr, {})["chest_tube"] = encode_rle(tube)
        coarse = np.maximum(rng.normal(size=(9, 7)), 0).astype(np.float32)
        if i == 3:  # a ring: its Otsu mask has a hole to fill
            coarse = np.zeros((9, 7), np.float32)
            coarse[1:8, 1:6] = 1.0
            coarse[3:6, 3:4] = 0.0
        maps.append(coarse)
        rows.append({"image_id": cxr, "task": task, "prob": 0.9, "gt": 1.0,
                     "cxr_w": w, "cxr_h": h, "model": "m", "method": "g"})
    hs = HeatmapSet(pd.DataFrame(rows), np.stack(maps))
    evaluate_heatmap_set(hs, gt, tuning_grid=(0.3, 0.5), extra_metrics=True,
                         spurious_segmentations=tubes, workers=1, progress=False)
    tuning.tuning_counts(hs, gt, tuning.threshold_grid(0.2, 0.8, 0.1), workers=1,
                         progress=False)
    after = signatures()
    grown = {k: (before.get(k, 0), v) for k, v in after.items() if v != before.get(k, 0)}
    assert not grown, f"compiled after the warm-up (kernel: before, after): {grown}"
    assert sum(before.values()) >= 10, before
    print("ok", sum(before.values()))
    """
)


def test_warm_up_runs_every_group_of_kernels() -> None:
    times = warm_kernels()
    assert set(times) == {"segmentation", "tuning", "full_map", "rle"}
    assert all(t >= 0 for t in times.values())


def test_warm_up_compiles_every_signature_the_evaluation_uses() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("ok ")
