"""The localization benchmark runs from this repository alone, on a set it generates itself."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import torch
from tests.benchmarks.loader import load_benchmark

from cxr_spurious.io.chexlocalize import (
    load_json,
    parse_map_filename,
    rasterize_annotations,
    read_heatmap_folder,
    validate_segmentation_json,
)
from cxr_spurious.io.safe_pickle import load_torch_pickle
from cxr_spurious.localization import tuning
from cxr_spurious.localization.evaluate import evaluate_heatmap_set
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


def _positive(folder: Path, names: list[str]) -> list[tuple[str, str]]:
    """The (CXR, task) maps among ``names`` with an annotation (the generator's gt labels)."""
    annotations = load_json(folder / "gt_annotations_val.json")
    keys = [parse_map_filename(Path(name)) for name in names]
    return [(c, t) for c, t in keys if c in annotations and t in annotations[c]]


def _map_names(folder: Path) -> list[str]:
    return [p.name for p in sorted((folder / "gradcam_maps_val").glob("*_map.pkl"))]


_AGREEMENT = re.compile(
    r"agreement on the (?P<maps>\d+) reference maps: (?P<px>\d+) differing mask pixels, "
    r"(?P<hit>\d+) differing hit/miss values, max \|IoU diff\| (?P<iou>\S+) over "
    r"(?P<n_iou>\d+) IoUs \((?P<iou_nan>\d+) NaN/non-NaN disagreements, (?P<iou_missing>\d+) "
    r"missing, (?P<masks_missing>\d+) masks missing\), max \|tuning IoU diff\| (?P<tune>\S+) "
    r"over (?P<n_tune>\d+) of (?P<tune_expected>\d+) \(map, threshold\) IoUs "
    r"\((?P<thresholds>\d+) thresholds x (?P<positive>\d+) positive reference maps; "
    r"(?P<tune_nan>\d+) NaN/non-NaN disagreements, (?P<tune_missing>\d+) missing from our "
    r"tuning counts\)"
)


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
    found = _AGREEMENT.search(out)
    assert found is not None, out
    figures = found.groupdict()
    # the first 4 maps of seed 0 include positive maps, so IoUs and tuning IoUs are compared
    positive = _positive(folder, _map_names(folder)[:4])
    assert len(positive) == 3
    expected = {
        "maps": "4",
        "px": "0",
        "hit": "0",
        "iou": "0.00e+00",
        "iou_nan": "0",
        "iou_missing": "0",
        "masks_missing": "0",
        "tune": "0.00e+00",
        "n_tune": str(7 * len(positive)),
        "tune_expected": str(7 * len(positive)),
        "thresholds": "7",
        "positive": str(len(positive)),
        "tune_nan": "0",
        "tune_missing": "0",
    }
    assert {k: figures[k] for k in expected} == expected, out
    assert int(figures["n_iou"]) > 0, out
    assert "agreement check failed" not in done.stderr
    assert (
        json.loads((folder / "manifest.json").read_text())["n_cxr"] == 3
    )  # the set is kept for reuse


@pytest.mark.integration  # about 10 s: our evaluation of 30 maps, no reference map
def test_benchmark_exits_non_zero_when_nothing_is_compared(tmp_path: Path) -> None:
    _generator().generate(tmp_path / "set", n=3, seed=0)
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_localization.py"),
            "--dir",
            str(tmp_path / "set"),
            "--ref-maps",
            "0",
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "agreement check failed: no positive map among the reference maps" in done.stderr
    assert "agreement check failed: no non-NaN IoU was compared" in done.stderr


@dataclass
class SmallRun:
    """Our results and the reference's on a generated set (3 CXRs, seed 0, 4 reference maps)."""

    folder: Path
    gt: dict
    per_map: pd.DataFrame
    seg: dict
    counts: pd.DataFrame
    grid: list[float]
    ref_paths: list[Path]
    ref_times: dict
    ref_counts: dict
    ref: dict
    events: list[tuple[str, object]]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> SmallRun:
    """One run of both sides, the reference's evictions and map reads recorded in order."""
    bench = load_benchmark("bench_localization")
    folder = tmp_path_factory.mktemp("bench_loc") / "set"
    _generator().generate(folder, n=3, seed=0)
    gt = load_json(folder / "gt_segmentations_val.json")
    map_dir = folder / "gradcam_maps_val"
    grid = tuning.threshold_grid(0.2, 0.8, 0.1)
    per_map, seg = evaluate_heatmap_set(
        read_heatmap_folder(map_dir, workers=1, lazy=True),
        gt,
        workers=1,
        progress=False,
        prefer_gpu=False,
    )
    counts = tuning.tuning_counts(
        read_heatmap_folder(map_dir, workers=1, lazy=True), gt, grid, workers=1, progress=False
    )
    paths = sorted(map_dir.glob("*_map.pkl"))[:4]
    events: list[tuple[str, object]] = []
    evict, upsampled = bench.evict, bench._ref_upsampled

    def recording_evict(batch: list[Path]) -> None:
        events.append(("evict", frozenset(batch)))
        evict(batch)

    def recording_upsampled(path: Path) -> torch.Tensor:
        events.append(("read", path))
        return upsampled(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "evict", recording_evict)
        mp.setattr(bench, "_ref_upsampled", recording_upsampled)
        times, n, ref = bench.reference(paths, gt, grid)
    return SmallRun(folder, gt, per_map, seg, counts, grid, paths, times, n, ref, events)


def _compare(run: SmallRun, **changes: object):
    bench = load_benchmark("bench_localization")
    parts = {"per_map": run.per_map, "seg": run.seg, "counts": run.counts, "ref": run.ref}
    parts.update(changes)
    agreement = bench.compare_with_reference(
        parts["ref"], parts["per_map"], parts["seg"], parts["counts"], run.gt, run.grid
    )
    return agreement, bench.agreement_failures(agreement)


def test_agreement_compares_every_positive_reference_map_at_every_threshold(
    small_run: SmallRun,
) -> None:
    agreement, failures = _compare(small_run)
    assert failures == []
    positive = _positive(small_run.folder, [p.name for p in small_run.ref_paths])
    assert len(positive) == 3 and len(small_run.grid) == 7
    assert agreement.n_positive == 3 and agreement.tune_expected == 21
    assert agreement.n_tune == 21 and agreement.tune_missing == 0
    assert agreement.tune_diff == 0.0 and agreement.tune_nan_diff == 0
    # the reference's true-positive IoU is non-NaN exactly for the positive maps
    ref_non_nan = [k for k, v in small_run.ref["iou"].items() if not np.isnan(v)]
    assert sorted(ref_non_nan) == sorted(positive)
    assert agreement.n_iou == 3 and agreement.iou_diff == 0.0
    assert agreement.mask_pixels == 0 and agreement.hit_diff == 0


def test_agreement_fails_on_wrong_ious(small_run: SmallRun) -> None:
    halved = small_run.per_map.copy()
    halved["iou_tp"] = halved["iou_tp"] * 0.5
    agreement, failures = _compare(small_run, per_map=halved)
    largest = max(v for v in small_run.ref["iou"].values() if not np.isnan(v))
    assert agreement.iou_diff == pytest.approx(largest / 2, rel=1e-12)
    assert failures == [f"max |IoU diff| is {largest / 2:.3e}, not 0"]

    nan_one = small_run.per_map.copy()
    positive = _positive(small_run.folder, [small_run.ref_paths[0].name])[0]
    row = (nan_one["image_id"] == positive[0]) & (nan_one["task"] == positive[1])
    assert row.sum() == 1
    nan_one.loc[row, "iou_tp"] = np.nan
    agreement, failures = _compare(small_run, per_map=nan_one)
    assert agreement.iou_nan_diff == 1 and agreement.n_iou == 2
    assert failures == ["1 IoUs are NaN on one side only"]

    dropped = small_run.per_map[small_run.per_map["task"] != positive[1]]
    agreement, failures = _compare(small_run, per_map=dropped)
    assert agreement.missing_iou == 1 and agreement.hit_diff == 1
    assert "1 reference IoUs are missing on our side" in failures


def test_agreement_fails_on_wrong_tuning_counts(small_run: SmallRun) -> None:
    zeroed = small_run.counts.copy()
    for col in [c for c in zeroed.columns if c.startswith("tune_inter_")]:
        zeroed[col] = 0
    agreement, failures = _compare(small_run, counts=zeroed)
    # every positive tuning IoU of ours becomes 0: the largest difference is the largest
    # reference tuning IoU of a positive map
    positive = set(_positive(small_run.folder, [p.name for p in small_run.ref_paths]))
    largest = max(v for (c, t, _), v in small_run.ref["tune_iou"].items() if (c, t) in positive)
    assert largest > 0 and agreement.tune_diff == largest
    assert agreement.n_tune == 21
    assert failures == [f"max |tuning IoU diff| is {largest:.3e}, not 0"]


def test_agreement_counts_maps_missing_from_our_tuning_as_disagreements(
    small_run: SmallRun,
) -> None:
    first = parse_map_filename(small_run.ref_paths[0])[0]
    dropped = small_run.counts[small_run.counts["image_id"] != first]
    agreement, failures = _compare(small_run, counts=dropped)
    assert agreement.tune_missing == 21 and agreement.n_tune == 0
    assert failures == [
        "21 of 21 (map, threshold) tuning IoUs of positive reference maps are missing from "
        "our tuning counts"
    ]
    bench = load_benchmark("bench_localization")
    line = bench.format_agreement(agreement)
    assert "over 0 of 21 (map, threshold) IoUs (7 thresholds x 3 positive reference maps;" in line
    assert "21 missing from our tuning counts" in line

    no_last = small_run.counts.drop(columns=["tune_area_0.8"])  # one threshold missing
    agreement, failures = _compare(small_run, counts=no_last)
    assert agreement.tune_missing == 3 and agreement.n_tune == 18
    assert failures == [
        "3 of 21 (map, threshold) tuning IoUs of positive reference maps are missing from "
        "our tuning counts"
    ]

    nan_one = small_run.counts.copy()
    nan_one.loc[nan_one["image_id"] == first, "tune_area_0.5"] = 0  # empty prediction: NaN
    agreement, failures = _compare(small_run, counts=nan_one)
    assert agreement.tune_nan_diff == 3 and agreement.n_tune == 18
    assert failures == ["3 tuning IoUs are NaN on one side only"]


def test_agreement_fails_without_a_positive_reference_map(small_run: SmallRun) -> None:
    positive = _positive(small_run.folder, [p.name for p in small_run.ref_paths])
    negative = [parse_map_filename(p) for p in small_run.ref_paths]
    negative = [k for k in negative if k not in positive]
    assert len(negative) == 1
    ref = {
        "seg": {k: small_run.ref["seg"][k] for k in negative},
        "iou": {k: small_run.ref["iou"][k] for k in negative},
        "hit": {k: small_run.ref["hit"][k] for k in negative},
        "tune_iou": {},
    }
    agreement, failures = _compare(small_run, ref=ref)
    assert agreement.tune_expected == 0 and agreement.n_iou == 0
    assert failures == [
        "no non-NaN IoU was compared (raise --ref-maps)",
        "no positive map among the reference maps (raise --ref-maps)",
    ]


def test_main_returns_1_and_names_the_failed_check(
    small_run: SmallRun, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_benchmark("bench_localization")
    counts = tuning.tuning_counts
    first = parse_map_filename(small_run.ref_paths[0])[0]

    def losing_the_first_cxr(*args: object, **kwargs: object) -> pd.DataFrame:
        c = counts(*args, **kwargs)
        return c[c["image_id"] != first].reset_index(drop=True)

    def cached_reference(paths: list[Path], gt: dict, grid: list[float]):
        assert paths == small_run.ref_paths
        return small_run.ref_times, small_run.ref_counts, small_run.ref

    monkeypatch.setattr(bench.tuning, "tuning_counts", losing_the_first_cxr)
    monkeypatch.setattr(bench, "reference", cached_reference)
    argv = ["--dir", str(small_run.folder), "--ref-maps", "4", "--workers", "1"]
    assert bench.main(argv) == 1
    printed = capsys.readouterr()
    assert "over 0 of 21 (map, threshold) IoUs" in printed.out
    assert (
        "agreement check failed: 21 of 21 (map, threshold) tuning IoUs of positive reference "
        "maps are missing from our tuning counts"
    ) in printed.err


def test_reference_tuning_reads_each_map_cold_once_like_the_reference_script(
    small_run: SmallRun,
) -> None:
    """A page-cache model over the recorded evictions and reads: the reference's tuning
    script (task by task, every threshold re-reading the task's maps) reads a map from disk
    on the first threshold only; every stage starts cold."""
    in_gt = [p for p in small_run.ref_paths if parse_map_filename(p)[0] in small_run.gt]
    assert len(in_gt) == 4
    cached: set[Path] = set()
    cold: dict[Path, int] = dict.fromkeys(small_run.ref_paths, 0)
    reads: dict[Path, int] = dict.fromkeys(small_run.ref_paths, 0)
    for kind, what in small_run.events:
        if kind == "evict":
            cached -= what  # type: ignore[operator]
        else:
            reads[what] += 1  # type: ignore[index]
            cold[what] += what not in cached  # type: ignore[index]
            cached.add(what)  # type: ignore[arg-type]
    # segmentation 1 + hit/miss 1 + tuning 7 reads; segmentation, hit/miss, tuning cold once
    assert reads == dict.fromkeys(in_gt, 9)
    assert cold == dict.fromkeys(in_gt, 3)
    # the tuning reads, in order: task by task, the 7 thresholds, the task's maps
    tuning_reads = [what for kind, what in small_run.events if kind == "read"][-7 * len(in_gt) :]
    tasks = sorted({parse_map_filename(p)[1] for p in in_gt})
    expected = [
        p for task in tasks for _ in range(7) for p in in_gt if parse_map_filename(p)[1] == task
    ]
    assert tuning_reads == expected
    assert small_run.ref_counts["tuning"] == len(in_gt)


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
