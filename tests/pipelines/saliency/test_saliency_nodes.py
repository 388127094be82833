"""Nodes of the saliency pipeline on tiny real inputs."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.saliency import nodes
from cxr_spurious.saliency.sanity import SANITY_COLUMNS


def _run_args(params, **over):
    args = {
        "methods": params["params:saliency.methods"],
        "tasks": None,
        "split": "test",
        "seed": 0,
        "batch_size": 3,
        "device": "cpu",
        "method_options": params["params:saliency.method_options"],
    }
    args.update(over)
    return args


def test_compute_heatmaps_default_pairs(params, cache_and_manifest, artifacts):
    cache, manifest = cache_and_manifest
    erm = nodes.compute_heatmaps(
        artifacts["erm"], {"name": "erm"}, cache, manifest, max_images=None, **_run_args(params)
    )
    seg = nodes.compute_heatmaps(
        artifacts["seg"], {"name": "seg"}, cache, manifest, max_images=3, **_run_args(params)
    )
    assert sorted(erm) == ["erm.gradcam"]
    assert sorted(seg) == ["seg.gradcam", "seg.seg_prob"]
    assert len(erm["erm.gradcam"]) == 4 and len(seg["seg.seg_prob"]) == 3  # test split; seeded cap
    assert set(erm["erm.gradcam"].index["image_id"]) <= set(
        manifest.loc[manifest["split"] == "test", "image_id"]
    )


def test_compute_heatmaps_methods_param(params, cache_and_manifest, artifacts):
    cache, manifest = cache_and_manifest
    out = nodes.compute_heatmaps(
        artifacts["erm"],
        {"name": "erm"},
        cache,
        manifest,
        max_images=2,
        **_run_args(params, methods=["gradcam", "integrated_gradients", "seg_prob"]),
    )
    assert sorted(out) == [
        "erm.gradcam",
        "erm.integrated_gradients",
    ]  # seg_prob skipped for a classifier


def test_sanity_node_enabled_and_disabled(params, cache_and_manifest, artifacts):
    cache, manifest = cache_and_manifest
    args = _run_args(params)
    seg = {"name": "seg"}
    table = nodes.check_saliency_sanity(
        artifacts["seg"], seg, cache, manifest, enabled=True, n_images=3, n_boot=20, **args
    )
    assert list(table.columns) == list(SANITY_COLUMNS)
    assert table["method"].tolist() == ["gradcam", "seg_prob"]
    off = nodes.check_saliency_sanity(
        artifacts["seg"], seg, cache, manifest, enabled=False, n_images=3, n_boot=20, **args
    )
    assert off.empty and list(off.columns) == list(SANITY_COLUMNS)


def test_overlays_and_export_nodes(params, cache_and_manifest, artifacts):
    cache, manifest = cache_and_manifest
    sets = nodes.compute_heatmaps(
        artifacts["box"], {"name": "box"}, cache, manifest, max_images=None, **_run_args(params)
    )
    figs = nodes.plot_heatmap_overlays(sets, cache, n_images=2, seed=0)
    assert sorted(figs) == ["box.gradcam.png", "box.seg_prob.png"]
    assert all(isinstance(f, Figure) for f in figs.values())
    assert nodes.export_chexlocalize(sets, cache, enabled=False, sets=None) == {}
    export = nodes.export_chexlocalize(sets, cache, enabled=True, sets=["box.seg_prob"])
    assert list(export) == ["box.seg_prob"]
    np.testing.assert_array_equal(
        export["box.seg_prob"].images[cache.image_ids[0]], cache.images[0]
    )
    with pytest.raises(ParameterError, match="erm.gradcam.*box.gradcam"):
        nodes.export_chexlocalize(sets, cache, enabled=True, sets=["erm.gradcam"])


def test_a_variant_block_without_a_name_is_refused(params, cache_and_manifest, artifacts):
    cache, manifest = cache_and_manifest
    with pytest.raises(ParameterError, match=r"training\.variants\.<name>.*'name'.*\['method'\]"):
        nodes.compute_heatmaps(
            artifacts["erm"], {"method": "erm"}, cache, manifest, max_images=2, **_run_args(params)
        )


def test_collect_nodes():
    assert nodes.collect_heatmaps({"a": 1}, {"b": 2}) == {"a": 1, "b": 2}
    assert list(nodes.collect_saliency_sanity()) == list(SANITY_COLUMNS)


def test_a_skipped_model_gives_no_sanity_rows_and_no_overlays(params, cache_and_manifest):
    """A variant that training.only skips, with no trained model, loads as SKIPPED."""
    from cxr_spurious.datasets.skippable import SKIPPED

    cache, manifest = cache_and_manifest
    table = nodes.check_saliency_sanity(
        SKIPPED, {"name": "seg"}, cache, manifest, enabled=True, n_images=3, n_boot=20,
        **_run_args(params),
    )  # fmt: skip
    assert table.empty and list(table.columns) == list(SANITY_COLUMNS)
    assert nodes.plot_heatmap_overlays(SKIPPED, cache, n_images=2, seed=0) == {}
    heatmaps = nodes.compute_heatmaps(
        SKIPPED, {"name": "seg"}, cache, manifest, max_images=None, **_run_args(params)
    )
    assert heatmaps is SKIPPED


def test_collect_leaves_a_skipped_variant_out_and_names_it(caplog):
    from cxr_spurious.datasets.skippable import SKIPPED

    with caplog.at_level("WARNING", logger="cxr_spurious.pipelines.saliency.nodes"):
        merged = nodes.collect_heatmaps(
            {"erm.gradcam": 1}, SKIPPED, {"seg.gradcam": 3}, variants=("erm", "box", "seg")
        )
    assert merged == {"erm.gradcam": 1, "seg.gradcam": 3}
    assert "no sets of box" in caplog.text and "training.only" in caplog.text


def test_export_of_a_skipped_variants_set_names_the_variant(cache_and_manifest):
    cache, _ = cache_and_manifest
    with pytest.raises(
        ParameterError, match=r"\['box.gradcam'\].*\['box'\] have no heatmap set.*training.only"
    ):
        nodes.export_chexlocalize({"erm.gradcam": None}, cache, enabled=True, sets=["box.gradcam"])
    with pytest.raises(ParameterError) as info:  # a variant that has sets: no such hint
        nodes.export_chexlocalize({"erm.gradcam": None}, cache, enabled=True, sets=["erm.nope"])
    assert "training.only" not in str(info.value)


def test_deeplift_is_planned_away_for_unet_small(params, cache_and_manifest, artifacts, caplog):
    cache, manifest = cache_and_manifest
    with caplog.at_level("WARNING", logger="cxr_spurious.saliency.compute"):
        out = nodes.compute_heatmaps(
            artifacts["seg"],
            {"name": "seg"},
            cache,
            manifest,
            max_images=2,
            **_run_args(params, methods=["deeplift", "saliency"]),
        )
    assert sorted(out) == ["seg.saliency"]
    assert "skipping saliency method 'deeplift' for seg" in caplog.text
    assert "summation-to-delta" in caplog.text


def test_heatmap_sets_record_the_model_artifacts_fingerprint(params, cache_and_manifest, artifacts):
    """The study tells the maps of an earlier training of a model by this column."""
    cache, manifest = cache_and_manifest
    trained = {**artifacts["erm"], "fingerprint": "f" * 64}
    sets = nodes.compute_heatmaps(
        trained, {"name": "erm"}, cache, manifest, max_images=2, **_run_args(params)
    )
    assert set(sets["erm.gradcam"].index["model_fingerprint"]) == {"f" * 64}
    # an artifact without one (an older file): no column, nothing to compare
    older = nodes.compute_heatmaps(
        artifacts["erm"], {"name": "erm"}, cache, manifest, max_images=2, **_run_args(params)
    )
    assert "model_fingerprint" not in older["erm.gradcam"].index
