import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro_datasets.pickle import PickleDataset

from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.pipelines.localization import create_pipeline
from cxr_spurious.sources.cache import ImageCache

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "tests" / "fixtures" / "chexlocalize_sample"
PARAMS = {
    "n_boot": 20,
    "seed": 0,
    "true_pos_only": True,
    "fixed_thresholds": {},
    "prob_cutoffs": {},
    "smoothing_k": 0,
    "tuning_grid": [0.2, 0.8, 0.1],
    "prob_cutoffs_grid": [0.0, 0.85, 0.1],
    "prob_cutoffs_grid_by_task": {"Lung Lesion": [0.1, 0.85, 0.1]},
    "extra_metrics": True,
    "top_k": 5,
    "prefer_gpu": False,
    "missing_maps": "all",
    "subgroup_attributes": ["sex"],
    "compare_pairs": None,
    "max_dropped_share": 0.05,
    "multiplicity": {"method": "holm", "family": "metric"},
}


def _collection():
    rng = np.random.default_rng(0)
    ids = [f"p{i}_study1_view1_frontal" for i in range(4)]
    tasks = ["Edema", "Cardiomegaly"]
    gt, sets = {}, {}
    for cxr in ids:
        gt[cxr] = {}
        for t in tasks:
            m = np.zeros((16, 12), np.uint8)
            if rng.random() < 0.7:
                m[4:10, 3:8] = 1
            gt[cxr][t] = encode_rle(m)
    for model in ("erm", "seg"):
        rows = [
            {
                "image_id": c,
                "task": t,
                "prob": float(rng.random()),
                "gt": 1.0,
                "cxr_w": 12,
                "cxr_h": 16,
                "model": model,
                "method": "gradcam",
            }
            for c in ids
            for t in tasks
        ]
        sets[f"{model}.gradcam"] = HeatmapSet(
            pd.DataFrame(rows), rng.random((len(rows), 4, 3)).astype(np.float32)
        )
    manifest = pd.DataFrame({"image_id": ids, "sex": ["M", "F", "M", "F"]})
    return sets, gt, manifest


def _cache(ids: list[str], size: int = 8) -> ImageCache:
    """A tiny image cache of ``ids`` (the overlays draw the maps over its images)."""
    n = len(ids)
    images = np.random.default_rng(1).integers(0, 256, (n, size, size), dtype=np.uint8)
    masks = np.zeros((n, 1, size, size), np.uint8)
    return ImageCache(
        image_ids=ids,
        tasks=["Edema"],
        objects=[],
        size=size,
        images=images,
        masks=masks,
        boxes=masks.copy(),
        spurious=np.zeros((n, 0, size, size), np.uint8),
        has_mask=np.zeros((n, 1), bool),
    )


def test_localization_pipeline_runs_on_memory_catalog(tmp_path):
    sets, gt, manifest = _collection()
    data = {
        "heatmap_collection": sets,
        "gt_segmentations": gt,
        "spurious_segmentations": {},
        "hb_segmentations": {},
        "hb_salient_points": {},
        "manifest": manifest,
    }
    data["image_cache"] = _cache(manifest["image_id"].tolist())
    data.update({f"params:localization.{k}": v for k, v in PARAMS.items()})
    data["params:localization.overlays.n_images"] = 2
    data["params:saliency.split"] = "test"  # the split the maps were made on
    datasets = {k: MemoryDataset(v) for k, v in data.items()}
    kept = (
        "localization_summary",
        "localization_tuning_results",
        "localization_probability_tuning_results",
        "chexlocalize_reports",
        "localization_comparisons",
        "localization_overlays",
    )
    datasets.update(
        {k: PickleDataset(filepath=str(tmp_path / f"{k}.pkl")) for k in kept}
    )  # survive release
    catalog = DataCatalog(datasets)
    SequentialRunner().run(create_pipeline(), catalog)
    summary = catalog.load("localization_summary")
    overlays = catalog.load("localization_overlays")
    assert overlays and all(fig.axes for fig in overlays.values())  # one figure per heatmap set
    # each panel draws its radiograph (grey) under the heatmap
    panels = [ax for fig in overlays.values() for ax in fig.axes if ax.images]
    assert panels and all(ax.images[0].get_cmap().name == "gray" for ax in panels)
    assert set(summary["set"]) == {"erm.gradcam", "seg.gradcam"}
    assert {"miou_tp", "miou_tp_lo", "miou_tp_hi", "hit_rate_lo", "relevance_mass"} <= set(
        summary.columns
    )
    assert (summary["task"] == "overall").sum() == 2
    reports = catalog.load("chexlocalize_reports")
    assert (
        "erm.gradcam/iou_results_per_cxr" in reports
        and "seg.gradcam/hitmiss_summary_results" in reports
    )
    assert list(reports["erm.gradcam/iou_summary_results"].columns) == [
        "name",
        "lower",
        "mean",
        "upper",
    ]
    comps = catalog.load("localization_comparisons")
    assert set(comps["metric"]) >= {"miou_tp", "hit_rate"}
    # 4 CXRs at most (no manifest patients: the CXR is the cluster, "cxr"), fewer than the 5 a
    # paired difference needs for a CI or a p-value: every difference is there, none tested
    assert comps["diff"].notna().all() and comps["n_clusters"].between(1, 4).all()
    assert comps[["diff_lo", "diff_hi", "p_value", "p_adj"]].isna().all().all()
    notes = [f"no CI or p-value: {n} cxrs (fewer than 5)" for n in comps["n_clusters"]]
    assert comps["ci_note"].tolist() == notes
    assert comps["p_adj_note"].str.contains("Holm").all()
    for name in ("localization_tuning_results", "localization_probability_tuning_results"):
        assert (catalog.load(name)["split"] == "test").all(), name


@pytest.mark.integration
def test_kedro_run_chexlocalize_env(tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    shutil.copy(ROOT / "pyproject.toml", project)
    shutil.copytree(ROOT / "conf", project / "conf")
    shutil.copytree(
        ROOT / "src", project / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__")
    )
    cmd = [
        sys.executable,
        "-m",
        "kedro",
        "run",
        "--pipeline",
        "localization",
        "--env",
        "chexlocalize",
        "--params",
        f"chexlocalize_dir={SAMPLE}",
    ]
    res = subprocess.run(
        cmd,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        env={
            "PATH": "/usr/bin:/bin",
            "OMP_NUM_THREADS": "1",
            "KEDRO_DISABLE_TELEMETRY": "true",
            "HOME": str(tmp_path),
        },
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = project / "data" / "08_reporting" / "chexlocalize" / "reports"
    iou = pd.read_csv(out / "iou_results_per_cxr.csv")
    assert list(iou.columns)[-1] == "img_id" and len(iou) == 2
    # the two positive maps kept in the trimmed sample: Cardiomegaly (64541) and
    # Support Devices (64542)
    assert np.isclose(iou.loc[0, "Cardiomegaly"], 0.366206, atol=1e-6)
    assert np.isclose(iou.loc[1, "Support Devices"], 0.03329, atol=1e-5)
    hit = pd.read_csv(out / "hitmiss_results_per_cxr.csv")
    assert hit.loc[0, "Cardiomegaly"] == 1.0
    for name in (
        "iou_bootstrap_results_per_cxr.csv",
        "iou_summary_results.csv",
        "hitmiss_summary_results.csv",
        "../tuning_results.csv",
        "../probability_tuning_results.csv",
        "../segmentations/chexlocalize.gradcam.json",
    ):
        assert (out / name).is_file(), name


def test_overlays_without_an_image_cache_draw_every_map_without_its_radiograph(caplog):
    from cxr_spurious.pipelines.localization.nodes import plot_localization_overlays

    sets, gt, manifest = _collection()
    figures = plot_localization_overlays(sets, gt, None, n=2, seed=0)
    titles = [ax.get_title() for fig in figures.values() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 4 and all("(no image)" in t for t in titles)
    assert "2 of 2 overlay images are not in the image cache" in caplog.text
    cache = _cache(manifest["image_id"].tolist())
    cached = plot_localization_overlays(sets, gt, cache, n=2, seed=0)
    assert not any("(no image)" in ax.get_title() for fig in cached.values() for ax in fig.axes)


def test_each_overlay_png_records_the_model_it_was_drawn_from(tmp_path) -> None:
    """The overlay PNG carries its set's model and model fingerprint (``tEXt`` chunks), so
    the report can tell an overlay of an earlier training; a set without a fingerprint (an
    outside CheXlocalize folder) or naming two models records none."""
    from cxr_spurious.datasets.figures import FigureDataset
    from cxr_spurious.io.png_text import read_png_text
    from cxr_spurious.pipelines.localization.nodes import (
        overlay_provenance,
        plot_localization_overlays,
    )

    sets, gt, _ = _collection()
    erm = sets["erm.gradcam"]
    sets["erm.gradcam"] = HeatmapSet(erm.index.assign(model_fingerprint="f" * 64), erm.maps)
    figures = plot_localization_overlays(sets, gt, None, n=2, seed=0)
    for name, fig in figures.items():
        FigureDataset(filepath=str(tmp_path / f"{name}.png")).save(fig)
    text = read_png_text((tmp_path / "erm.gradcam.png").read_bytes())
    assert (text["model"], text["model_fingerprint"]) == ("erm", "f" * 64)
    assert "model_fingerprint" not in read_png_text((tmp_path / "seg.gradcam.png").read_bytes())
    mixed = HeatmapSet(
        erm.index.assign(model=["erm", "seg"] * (len(erm) // 2), model_fingerprint="f"), erm.maps
    )
    assert overlay_provenance(mixed) == {"model_fingerprint": "f"}


def test_the_chexlocalize_env_writes_no_reporting_output_over_the_studys() -> None:
    """`kedro run --pipeline localization --env chexlocalize` must not replace an output of
    the default study (the report reads the overlays back): every reporting dataset of the
    localization pipeline that the env's run writes goes to a path of its own."""
    from kedro.config import OmegaConfigLoader

    conf = str(Path(__file__).resolve().parents[3] / "conf")
    base = OmegaConfigLoader(conf, base_env="base", default_run_env="base")["catalog"]
    env = OmegaConfigLoader(conf, base_env="base", default_run_env="chexlocalize")["catalog"]

    def where(entry: dict) -> str:
        return str(entry.get("filepath") or entry.get("path") or "")

    written = {o for n in create_pipeline().nodes for o in n.outputs}
    shared = [
        name
        for name in sorted(written)
        if name in base
        and where(base[name]).startswith("data/08_reporting/")
        and where(env.get(name, base[name])) == where(base[name])
    ]
    assert not shared, shared
    assert where(env["localization_overlays"]).startswith("data/08_reporting/chexlocalize/")
