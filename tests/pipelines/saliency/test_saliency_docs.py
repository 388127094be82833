"""The saliency docs state what the code does: export size, map resolution, SmoothGrad seed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import cxr_spurious.heatmaps
from cxr_spurious.datasets.heatmap_folders import ChexlocalizeExportDataset
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.models import build_model
from cxr_spurious.pipelines.saliency import nodes
from cxr_spurious.saliency import compute_maps
from cxr_spurious.saliency.registry import MethodOptions

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "src" / "cxr_spurious" / "pipelines" / "saliency" / "README.md"
PARAMS = ROOT / "conf" / "base" / "parameters_saliency.yml"


def _kb_per_map_at_96(text: str) -> float:
    found = re.findall(r"(\d+(?:\.\d+)?) kB per map at 96 px", text)
    assert len(found) == 1, found
    return float(found[0])


def test_documented_export_size_is_the_written_size(tmp_path, cache_and_manifest):
    """One exported 96-px map, written by the pipeline's own export, against the docs."""
    cache, _ = cache_and_manifest
    size = 96
    image_id = cache.image_ids[0]
    index = pd.DataFrame(
        {
            "image_id": [image_id],
            "task": ["Pneumothorax"],
            "prob": [0.3],
            "gt": [1.0],
            "cxr_w": [size],
            "cxr_h": [size],
            "model": "m",
            "method": "gradcam",
        }
    )
    rng = np.random.default_rng(0)
    hset = HeatmapSet(index, rng.random((1, size, size)).astype(np.float16))
    cache.images = rng.integers(0, 256, (len(cache.image_ids), size, size), dtype=np.uint8)
    export = nodes.export_chexlocalize({"m.gradcam": hset}, cache, enabled=True, sets=None)
    ChexlocalizeExportDataset(path=str(tmp_path), progress=False).save(export)
    (written,) = list((tmp_path / "m.gradcam").glob("*.pkl"))
    kb = written.stat().st_size / 1000
    for doc in (README, PARAMS):
        documented = _kb_per_map_at_96(doc.read_text())
        assert abs(documented - kb) / kb < 0.02, (doc.name, documented, kb)


def test_cam_maps_are_at_the_input_size_as_the_heatmaps_docs_say():
    torch.manual_seed(0)
    model = build_model(
        {"architecture": "cnn_small", "tasks": ["Pneumothorax"], "base_channels": 8}
    )
    images = (np.random.default_rng(0).random((2, 96, 96)) * 255).astype(np.uint8)
    maps, _ = compute_maps(
        model.eval(), images, "gradcam", ["Pneumothorax"], device="cpu", progress=False
    )
    assert maps.shape[-2:] == (96, 96)  # its cam layer is 12x12: resized to the input
    doc = cxr_spurious.heatmaps.__doc__
    assert "12x12 for Grad-CAM" not in doc
    assert "resizes its maps to the input" in doc


def test_the_seed_docstring_describes_the_per_image_noise_seed():
    doc = " ".join(MethodOptions.__doc__.split())
    assert "seed + k" not in doc
    assert "image_noise_seed(seed, image, t)" in doc
