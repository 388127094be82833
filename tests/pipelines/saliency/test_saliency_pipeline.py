"""The saliency pipeline with a SequentialRunner over tiny real inputs."""

from __future__ import annotations

import numpy as np
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner

from cxr_spurious.datasets.heatmap_folders import (
    ChexlocalizeExportDataset,
    HeatmapCollectionDataset,
)
from cxr_spurious.pipelines.saliency import create_pipeline, create_saliency_template
from cxr_spurious.variants import STUDY_HEATMAPS, STUDY_MODELS, heatmap_set_name


def _catalog(tmp_path, params, cache, manifest, artifacts):
    datasets = {name: MemoryDataset(value) for name, value in params.items()}
    datasets.update({f"{m}.model": MemoryDataset(artifacts[m]) for m in STUDY_MODELS})
    # each model's name comes from its block training.variants.<m> (params:variant)
    datasets.update(
        {f"params:training.variants.{m}": MemoryDataset({"name": m}) for m in STUDY_MODELS}
    )
    datasets["image_cache"] = MemoryDataset(cache, copy_mode="assign")
    datasets["manifest"] = MemoryDataset(manifest)
    datasets["heatmap_collection"] = HeatmapCollectionDataset(path=str(tmp_path / "heatmaps"))
    datasets["chexlocalize_export"] = ChexlocalizeExportDataset(
        path=str(tmp_path / "export"), progress=False
    )
    return DataCatalog(datasets=datasets)


def test_pipeline_structure():
    template = create_saliency_template()
    assert {n.namespace for n in template.nodes} == {None}
    assert {"model", "image_cache", "manifest", "params:variant"} <= template.inputs()
    pipe = create_pipeline()
    names = {n.name for n in pipe.nodes}
    assert {f"{m}.compute_heatmaps" for m in STUDY_MODELS} <= names
    assert {"collect_heatmaps", "collect_saliency_sanity", "export_chexlocalize"} <= names
    assert {f"{m}.model" for m in STUDY_MODELS} | {"image_cache", "manifest"} <= pipe.inputs()
    assert {f"params:training.variants.{m}" for m in STUDY_MODELS} <= pipe.inputs()
    assert "params:variant" not in pipe.inputs()
    assert "heatmap_collection" in pipe.all_outputs()
    collect = next(n for n in pipe.nodes if n.name == "collect_heatmaps")
    assert collect.inputs == [f"{m}.heatmaps" for m in STUDY_MODELS]


@pytest.mark.integration
def test_pipeline_runs_default_pairs_and_exports(tmp_path, params, cache_and_manifest, artifacts):
    cache, manifest = cache_and_manifest
    params = {
        **params,
        "params:saliency.batch_size": 4,
        "params:saliency.sanity.n_images": 3,
        "params:saliency.sanity.n_boot": 20,
        "params:saliency.export.enabled": True,
        "params:saliency.export.sets": ["seg.seg_prob"],
        "params:saliency.device": "cpu",
    }
    catalog = _catalog(tmp_path, params, cache, manifest, artifacts)
    SequentialRunner().run(create_pipeline(), catalog)
    collection = HeatmapCollectionDataset(path=str(tmp_path / "heatmaps")).load()
    # the fixture's erm is a resnet18 classifier: its default seg_prob pair is skipped, the rest run
    runnable = [(m, k) for m, k in STUDY_HEATMAPS if (m, k) != ("erm", "seg_prob")]
    assert ("erm", "seg_prob") in STUDY_HEATMAPS
    assert sorted(collection) == sorted(heatmap_set_name(m, k) for m, k in runnable)
    for hset in collection.values():
        assert hset.maps.dtype == np.float16 and len(hset) == 4
    exported = ChexlocalizeExportDataset(path=str(tmp_path / "export"), progress=False).load()
    assert list(exported) == ["seg.seg_prob"]
    np.testing.assert_allclose(
        exported["seg.seg_prob"].maps, collection["seg.seg_prob"].maps.astype(np.float32)
    )
    sanity = catalog.load("saliency_sanity")
    assert len(sanity) == len(runnable) and sanity["spearman"].notna().any()


@pytest.mark.integration
def test_pipeline_methods_param(tmp_path, params, cache_and_manifest, artifacts):
    cache, manifest = cache_and_manifest
    params = {
        **params,
        "params:saliency.methods": ["gradcam", "integrated_gradients"],
        "params:saliency.sanity.enabled": False,
        "params:saliency.max_images": 2,
        "params:saliency.method_options": {"ig_steps": 4},
        "params:saliency.device": "cpu",
    }
    catalog = _catalog(tmp_path, params, cache, manifest, artifacts)
    SequentialRunner().run(create_pipeline(), catalog)
    collection = HeatmapCollectionDataset(path=str(tmp_path / "heatmaps")).load()
    assert sorted(collection) == sorted(
        f"{m}.{k}" for m in STUDY_MODELS for k in ("gradcam", "integrated_gradients")
    )
    assert not (tmp_path / "export").exists()


@pytest.mark.integration
def test_pipeline_with_a_variant_skipped_by_training_only(
    tmp_path, params, cache_and_manifest, artifacts
):
    """``box`` has no trained model and is not selected: its model loads as SKIPPED."""
    from cxr_spurious.datasets.skippable import SKIPPED

    cache, manifest = cache_and_manifest
    params = {
        **params,
        "params:saliency.methods": ["saliency"],
        "params:saliency.sanity.n_images": 3,
        "params:saliency.sanity.n_boot": 20,
        "params:saliency.max_images": 2,
        "params:saliency.device": "cpu",
    }
    catalog = _catalog(tmp_path, params, cache, manifest, {**artifacts, "box": SKIPPED})
    SequentialRunner().run(create_pipeline(), catalog)
    collection = HeatmapCollectionDataset(path=str(tmp_path / "heatmaps")).load()
    assert sorted(collection) == ["erm.saliency", "seg.saliency"]
    sanity = catalog.load("saliency_sanity")
    assert sorted(sanity["model"].unique()) == ["erm", "seg"]
    assert catalog.load("box.saliency_overlays") == {}
