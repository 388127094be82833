"""Image selection, heatmap-set assembly, method planning and the real model registry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxr_spurious.errors import ContractError, CxrSpuriousError, ParameterError
from cxr_spurious.heatmaps import INDEX_COLUMNS
from cxr_spurious.saliency import heatmap_set_for, select_image_ids
from cxr_spurious.saliency.compute import load_model, plan_methods


def _manifest(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame(
        {"image_id": [f"p{i}" for i in range(n)], "split": ["test", "val"] * (n // 2)}
    )


def test_select_image_ids_whole_split_in_manifest_order():
    assert select_image_ids(_manifest(), "test", None, 0) == ["p0", "p2", "p4", "p6", "p8"]


def test_select_image_ids_seeded_subset():
    a = select_image_ids(_manifest(40), "test", 5, seed=1)
    assert a == select_image_ids(_manifest(40), "test", 5, seed=1)
    assert a != select_image_ids(_manifest(40), "test", 5, seed=2)
    assert len(a) == 5 and a == sorted(a, key=lambda s: int(s[1:]))
    assert set(a) <= set(select_image_ids(_manifest(40), "test", None, 0))


def test_select_image_ids_errors():
    with pytest.raises(ParameterError, match="split == 'train'.*'test', 'val'"):
        select_image_ids(_manifest(), "train", None, 0)
    with pytest.raises(ParameterError, match="max_images"):
        select_image_ids(_manifest(), "test", 0, 0)


def test_heatmap_set_index_from_model_and_manifest(classifier, images, toys):
    ids = [f"patient{i:05d}_study1_view1_frontal" for i in range(len(images))]
    manifest = toys.toy_manifest(ids)
    hset = heatmap_set_for(
        classifier,
        images,
        ids,
        manifest,
        model_name="erm",
        method="gradcam",
        device="cpu",
        progress=False,
    )
    assert list(hset.index.columns) == list(INDEX_COLUMNS)
    assert len(hset) == len(ids) * 2 and hset.maps.shape == (len(ids) * 2, toys.SIZE, toys.SIZE)
    assert hset.maps.dtype == np.float16
    first = hset.index.iloc[:2]
    assert first["image_id"].tolist() == [ids[0]] * 2 and first["task"].tolist() == toys.TASKS
    last = hset.index.iloc[-1]
    assert np.isnan(last["gt"])  # unknown label stays unknown
    np.testing.assert_array_equal(hset.index["gt"].to_numpy()[:4], [0.0, 1.0, 1.0, 0.0])
    assert hset.index["cxr_w"].tolist()[:4] == [100, 100, 101, 101]
    assert hset.index["cxr_h"].tolist()[:4] == [200, 200, 201, 201]
    assert set(hset.index["model"]) == {"erm"} and set(hset.index["method"]) == {"gradcam"}
    assert hset.index["prob"].between(0, 1).all()


def test_heatmap_set_rejects_ids_missing_from_manifest(classifier, images, toys):
    manifest = toys.toy_manifest([f"a{i}" for i in range(len(images))])
    with pytest.raises(ContractError, match="not in the manifest"):
        heatmap_set_for(
            classifier,
            images,
            [f"b{i}" for i in range(len(images))],
            manifest,
            model_name="erm",
            method="gradcam",
            device="cpu",
            progress=False,
        )


def test_plan_methods_defaults_and_overrides(classifier, dense):
    pairs = (("erm", "gradcam"), ("seg", "gradcam"), ("seg", "seg_prob"))
    assert plan_methods("erm", classifier, None, pairs) == ["gradcam"]
    assert plan_methods("seg", dense, None, pairs) == ["gradcam", "seg_prob"]
    assert plan_methods("erm", classifier, ["gradcam", "integrated_gradients", "seg_prob"]) == [
        "gradcam",
        "integrated_gradients",
    ]
    assert plan_methods("seg", dense, ["seg_prob", "seg_prob"]) == ["seg_prob"]
    with pytest.raises(ParameterError, match="unknown saliency method 'gradkam'"):
        plan_methods("erm", classifier, ["gradkam"])
    # a default pair the variant's architecture cannot run (erm retrained as a classifier)
    # is skipped
    assert plan_methods("erm", classifier, None, (("erm", "gradcam"), ("erm", "seg_prob"))) == [
        "gradcam"
    ]
    assert plan_methods("erm", dense, None, (("erm", "gradcam"), ("erm", "seg_prob"))) == [
        "gradcam",
        "seg_prob",
    ]


def _artifact(config: dict) -> dict:
    from cxr_spurious.models import build_model

    return {"state_dict": build_model(config).state_dict(), "config": config}


def test_real_registry_resnet18_and_unet_small(toys):
    images = toys.blob_images(2, size=64)
    ids = ["a", "b"]
    manifest = toys.toy_manifest(ids, tasks=["Pneumothorax"])
    erm = load_model(_artifact({"architecture": "resnet18", "tasks": ["Pneumothorax"]}), "erm")
    seg = load_model(
        _artifact({"architecture": "unet_small", "tasks": ["Pneumothorax"], "base_channels": 8}),
        "seg",
    )
    for model, method in (
        (erm, "gradcam"),
        (erm, "integrated_gradients"),
        (seg, "gradcam"),
        (seg, "seg_prob"),
        (seg, "saliency"),
    ):
        hset = heatmap_set_for(
            model,
            images,
            ids,
            manifest,
            model_name="m",
            method=method,
            device="cpu",
            progress=False,
        )
        assert hset.maps.shape == (2, 64, 64) and np.isfinite(hset.maps).all()
        assert toys.hooks_on(model) == 0
    with pytest.raises(CxrSpuriousError, match="'seg_prob' needs a dense model"):
        heatmap_set_for(
            erm, images, ids, manifest, model_name="erm", method="seg_prob", progress=False
        )


def test_deeplift_on_a_resnet_is_a_clear_error(toys):
    from cxr_spurious.models import build_model

    model = build_model({"architecture": "resnet18", "tasks": ["Pneumothorax"]}).eval()
    with pytest.raises(
        CxrSpuriousError, match="deeplift cannot explain this model.*integrated_gradients"
    ):
        heatmap_set_for(
            model,
            toys.blob_images(1, size=64),
            ["a"],
            toys.toy_manifest(["a"], tasks=["Pneumothorax"]),
            model_name="erm",
            method="deeplift",
            progress=False,
        )
    assert toys.hooks_on(model) == 0


def test_name_list_accepts_cli_strings(classifier):
    from cxr_spurious.saliency.compute import name_list

    assert name_list("gradcam integrated_gradients") == ["gradcam", "integrated_gradients"]
    assert name_list("gradcam;gradcam++") == ["gradcam", "gradcam++"]
    assert name_list("Pleural Effusion;Lung Lesion", spaces=False) == [
        "Pleural Effusion",
        "Lung Lesion",
    ]
    assert name_list(None) is None and name_list(["a"]) == ["a"]
    assert plan_methods("erm", classifier, "gradcam saliency") == ["gradcam", "saliency"]


def _bad_image_arrays(images: np.ndarray) -> dict[str, np.ndarray]:
    nan = images.astype(np.float32) / 255
    nan[0, 3, 3] = np.nan
    return {
        "dtype float64": images.astype(np.float64),  # 0-255 taken as [0, 1] intensities
        "dtype uint16": images.astype(np.uint16),
        "dtype int64": images.astype(np.int64),
        "dtype bool": images > 100,
        "shape (6, 1, 32, 32)": images[:, None],
        "shape (32, 32)": images[0],
        "non-finite": nan,
        "range": images.astype(np.float32) / 127.5 - 1,
    }


@pytest.mark.parametrize(
    "case",
    [
        "dtype float64",
        "dtype uint16",
        "dtype int64",
        "dtype bool",
        "shape (6, 1, 32, 32)",
        "shape (32, 32)",
        "non-finite",
        "range",
    ],
)
def test_images_that_are_not_uint8_or_float_in_0_1_are_refused(classifier, images, case):
    # uint16 / int64 / float images in 0-255 ran as if in [0, 1]; a channel axis failed in
    # torch ("required rank 4 tensor"); a NaN pixel surfaced as non-finite maps
    from cxr_spurious.saliency.compute import compute_maps, to_input

    bad = _bad_image_arrays(images)[case]
    word = case.split()[0]
    with pytest.raises(ContractError, match=word):
        compute_maps(classifier, bad, "gradcam", ["Pneumothorax"], device="cpu", progress=False)
    with pytest.raises(ContractError, match=word):
        to_input(bad, torch.device("cpu"))


def test_uint8_and_float_in_0_1_images_give_the_same_maps(classifier, images):
    from cxr_spurious.saliency.compute import compute_maps

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return compute_maps(classifier, x, "gradcam", None, device="cpu", progress=False)

    as_uint8, as_float = run(images), run(images.astype(np.float32) / 255)
    np.testing.assert_array_equal(as_uint8[0], as_float[0])
    np.testing.assert_allclose(as_uint8[1], as_float[1], rtol=1e-6)
    assert run(images[:0])[0].shape == (0, 2, *images.shape[1:])


def test_a_method_named_twice_is_computed_once(classifier, images, toys):
    # it used to give 2N maps for N images, then a heatmap set of mismatched lengths
    from cxr_spurious.saliency.compute import compute_method_maps, heatmap_sets_for

    out = compute_method_maps(
        classifier,
        images,
        ["saliency", "gradcam", "saliency"],
        ["Pneumothorax"],
        device="cpu",
        progress=False,
    )
    assert list(out) == ["saliency", "gradcam"]
    assert out["saliency"][0].shape == (len(images), 1, toys.SIZE, toys.SIZE)
    assert out["saliency"][1].shape == (len(images), 1)
    ids = [f"i{i}" for i in range(len(images))]
    sets = heatmap_sets_for(
        classifier,
        images,
        ids,
        toys.toy_manifest(ids),
        model_name="erm",
        methods=["gradcam", "gradcam"],
        device="cpu",
        progress=False,
    )
    assert list(sets) == ["gradcam"] and len(sets["gradcam"]) == 2 * len(images)


@pytest.mark.parametrize(
    ("tasks", "twice"),
    [("Pneumothorax;Pneumothorax", "Pneumothorax"), (["Lung Lesion"] * 2, "Lung Lesion")],
)
def test_a_task_named_twice_is_refused(classifier, tasks, twice):
    # 'A;A' gave duplicate sanity rows, and heatmap sets refused only after every map
    from cxr_spurious.saliency.compute import resolve_tasks

    with pytest.raises(ParameterError, match=rf"\['{twice}'\] more than once") as e:
        resolve_tasks(classifier, tasks)
    assert e.value.key == "saliency.tasks"
