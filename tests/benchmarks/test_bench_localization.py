"""The localization benchmark runs from this repository alone, on a set it generates itself."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from tests.benchmarks.loader import load_benchmark

from cxr_spurious.io.chexlocalize import (
    load_json,
    rasterize_annotations,
    read_heatmap_folder,
    validate_segmentation_json,
)
from cxr_spurious.io.safe_pickle import load_torch_pickle
from cxr_spurious.tasks import CHEXLOCALIZE_TASKS

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "make_chexlocalize_set", BENCH / "make_chexlocalize_set.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pickles(folder: Path) -> dict[str, dict]:
    return {
        p.name: load_torch_pickle(p)
        for p in sorted((folder / "gradcam_maps_val").glob("*_map.pkl"))
    }


def _same_payload(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def test_generated_set_has_the_chexlocalize_format_and_depends_only_on_the_seed(
    tmp_path: Path,
) -> None:
    gen = _generator()
    manifest = gen.generate(tmp_path / "a", n=2, seed=3)
    gen.generate(tmp_path / "b", n=2, seed=3)
    gen.generate(tmp_path / "c", n=2, seed=4)
    assert manifest["n_heatmaps"] == 20

    maps = _pickles(tmp_path / "a")
    assert len(maps) == 20 and {p["task"] for p in maps.values()} == set(CHEXLOCALIZE_TASKS)
    for payload in maps.values():
        assert list(payload) == ["map", "prob", "task", "gt", "cxr_img", "cxr_dims"]
        assert payload["map"].shape == (1, 1, 320, 320) and payload["map"].dtype == torch.float32
        assert float(payload["map"].min()) == 0.0 and 1e-5 <= float(payload["map"].max()) <= 1e-2
        assert payload["cxr_img"].shape == (3, 320, 320)
        w, h = payload["cxr_dims"]
        assert 1750 <= w <= 2900 and 1750 <= h <= 2900
    for name in ("gt_annotations_val.json", "gt_segmentations_val.json"):  # same seed, same content
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = _pickles(tmp_path / "b")
    assert maps.keys() == other.keys() and all(_same_payload(maps[k], other[k]) for k in maps)
    third = _pickles(tmp_path / "c")
    assert not all(_same_payload(maps[k], third[k]) for k in maps)  # another seed, another set

    # The segmentations are the annotations rasterised the CheXlocalize way, and both
    # agree with the pickles' gt labels; the project's reader accepts the folder.
    segs = load_json(tmp_path / "a" / "gt_segmentations_val.json")
    annotations = load_json(tmp_path / "a" / "gt_annotations_val.json")
    validate_segmentation_json(segs, source="gt_segmentations_val.json", decode=True)
    assert rasterize_annotations(annotations, list(CHEXLOCALIZE_TASKS)) == segs
    for name, payload in maps.items():
        cxr = name.split("_")[0] + "_study1_view1_frontal"
        assert payload["gt"] == int(cxr in annotations and payload["task"] in annotations[cxr])
    index = read_heatmap_folder(tmp_path / "a" / "gradcam_maps_val", workers=1).index
    assert len(index) == 20 and index["gt"].sum() == manifest["n_positive_pairs"]
    assert np.isfinite(index["prob"]).all()


@pytest.mark.integration  # about 20 s: generation, our evaluation and the reference on 4 maps
def test_benchmark_generates_its_set_into_an_empty_dir_and_runs(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_localization.py"),
            "--dir",
            str(folder),
            "--n",
            "3",
            "--ref-maps",
            "4",
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "\n30 heatmaps (" in out, out
    assert re.search(
        r"whole evaluation \(listing \+ pass \+ bootstrap\): ours [\d.]+ s, reference [\d.]+ s",
        out,
    ), out
    assert (
        "agreement on the 4 reference maps: 0 differing mask pixels, 0 differing hit/miss values"
        in out
    ), out
    assert (
        json.loads((folder / "manifest.json").read_text())["n_cxr"] == 3
    )  # the set is kept for reuse


def test_profile_splits_our_pass_into_its_steps(tmp_path: Path) -> None:
    bench = load_benchmark("bench_localization")
    _generator().generate(tmp_path / "set", n=2, seed=5)
    gt = load_json(tmp_path / "set" / "gt_segmentations_val.json")
    steps, t_files, t_parse, n = bench.profile_pass(tmp_path / "set" / "gradcam_maps_val", gt, 6)
    assert n == 6
    assert list(steps) == [key for key, _ in bench.PROFILE_STEPS]
    # every map is read, set up, bounded and scored; the generated maps are segmented by Otsu
    assert all(seconds > 0 for seconds in steps.values()), steps
    assert t_files > 0 and t_parse > 0


def test_benchmarks_need_nothing_outside_the_repository() -> None:
    files = [p for p in BENCH.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert {p.name for p in files} >= {"bench_localization.py", "make_chexlocalize_set.py"}
    for path in files:
        text = path.read_text(encoding="utf-8")
        for needle in ("../shared", "/work/shared", '"shared"', "'shared'"):
            assert needle not in text, f"{path.relative_to(REPO)} refers to {needle}"
