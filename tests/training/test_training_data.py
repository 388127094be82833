"""Training table checks, location-label selection, batches, targets and augmentation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from tests.training.training_tiny_data import TASK, tiny_config

from cxr_spurious.errors import ContractError, DataFormatError, ParameterError
from cxr_spurious.training.data import (
    CacheBatches,
    GlobalBatchSampler,
    augment_pair,
    build_training_table,
    dense_targets,
    grid_cells,
)


def test_table_defaults_when_resampling_columns_are_absent(tiny) -> None:
    manifest, cache = tiny
    table = build_training_table(manifest, cache, tiny_config())
    assert (
        (table["weight"] == 1).all() and not table["augment"].any() and (table["group"] == -1).all()
    )
    assert table["row"].tolist() == [cache.row(i) for i in manifest["image_id"]]
    assert not table["loc"].any()  # erm never uses location labels


def test_resampled_rows_keep_weight_augment_group(tiny) -> None:
    manifest, cache = tiny
    resampled = manifest.copy()
    resampled["weight"] = np.linspace(0.5, 2, len(manifest))
    resampled["augment"] = np.arange(len(manifest)) % 3 == 0
    resampled["group"] = np.arange(len(manifest)) % 4
    resampled = resampled.loc[list(resampled.index) + [0, 0]]  # up-sampled train row
    table = build_training_table(
        resampled, cache, tiny_config(supervision="seg", architecture="unet_small")
    )
    assert len(table) == len(manifest) + 2
    assert table["weight"].tolist() == resampled["weight"].tolist()
    assert (table["group"].to_numpy() == resampled["group"].to_numpy()).all()
    assert table.loc[table["image_id"] == manifest["image_id"][0], "loc"].all()


def test_missing_task_column(tiny) -> None:
    manifest, cache = tiny
    with pytest.raises(
        ContractError,
        match=r"resampled_manifest: missing target task column\(s\) \['Pneumothorax'\]",
    ):
        build_training_table(manifest.drop(columns=[TASK]), cache, tiny_config())


def test_subgroup_column_is_read_as_0_1_and_a_text_attribute_is_refused(tiny, caplog) -> None:
    manifest, cache = tiny
    table = build_training_table(manifest, cache, tiny_config())
    np.testing.assert_array_equal(table["subgroup"], manifest["tube"].to_numpy(dtype=float))
    # booleans and empty values are fine
    as_bool = manifest.assign(tube=manifest["tube"].astype(bool).astype(object))
    as_bool.loc[as_bool.index[:2], "tube"] = None
    got = build_training_table(as_bool, cache, tiny_config())["subgroup"].to_numpy()
    assert np.isnan(got[:2]).all() and (got[2:] == manifest["tube"].to_numpy()[2:]).all()
    # a text attribute (sex M / F) used to become NaN everywhere, without a word
    text = manifest.assign(sex=np.where(np.arange(len(manifest)) % 2, "M", "F"))
    with pytest.raises(DataFormatError, match=r"column 'sex' \(training.subgroup\) must be 1"):
        build_training_table(text, cache, tiny_config(subgroup="sex"))
    # a dataset without the column: NaN, with a warning naming the column
    with caplog.at_level("WARNING", logger="cxr_spurious.training.data"):
        none = build_training_table(manifest.drop(columns=["tube"]), cache, tiny_config())
    assert none["subgroup"].isna().all()
    assert "no column 'tube' (training.subgroup)" in caplog.text


def test_robust_auroc_selection_needs_the_subgroup_in_validation(tiny) -> None:
    manifest, cache = tiny
    cfg = tiny_config(selection_metric="robust_auroc")
    build_training_table(manifest, cache, cfg)  # the tiny set defines it in val
    # as with SIIM, where every tube-labelled patient is in test: val has no tube values
    siim_like = manifest.copy()
    siim_like.loc[siim_like["split"] == "val", "tube"] = np.nan
    with pytest.raises(ParameterError, match="robust_auroc is undefined") as err:
        build_training_table(siim_like, cache, cfg)
    assert err.value.key == "training.selection_metric"
    assert "0 of" in str(err.value)
    # positives in val all carry the tube: no positive without it, still undefined
    one_sided = manifest.copy()
    one_sided.loc[(one_sided["split"] == "val") & (one_sided[TASK] == 1), "tube"] = 1.0
    with pytest.raises(ParameterError, match="robust_auroc is undefined"):
        build_training_table(one_sided, cache, cfg)
    # selecting on auroc does not need it
    build_training_table(siim_like, cache, tiny_config())


def test_task_without_positives_in_train(tiny) -> None:
    manifest, cache = tiny
    bad = manifest.copy()
    bad.loc[bad["split"] == "train", TASK] = 0.0
    with pytest.raises(DataFormatError, match="task 'Pneumothorax' has no positive label in train"):
        build_training_table(bad, cache, tiny_config())


def test_missing_mask_for_seg_names_the_image(tiny) -> None:
    manifest, cache = tiny
    positive = manifest[(manifest["split"] == "train") & (manifest[TASK] == 1)]["image_id"].iloc[0]
    has_mask = cache.has_mask.copy()
    has_mask[cache.row(positive)] = False
    from dataclasses import replace

    broken = replace(cache, has_mask=has_mask)
    with pytest.raises(DataFormatError, match=f"missing masks.*{positive}"):
        build_training_table(
            manifest, broken, tiny_config(supervision="seg", architecture="unet_small")
        )
    # With a lower location fraction the image without a mask is simply not used for location.
    table = build_training_table(
        manifest,
        broken,
        tiny_config(supervision="seg", architecture="unet_small", location_fraction=0.5),
    )
    assert not table.loc[table["image_id"] == positive, "loc"].any()
    assert table["loc"].sum() == 8


def test_location_fraction_is_seeded(tiny) -> None:
    manifest, cache = tiny
    a = build_training_table(
        manifest,
        cache,
        tiny_config(supervision="box", architecture="unet_small", location_fraction=0.25, seed=1),
    )
    b = build_training_table(
        manifest,
        cache,
        tiny_config(supervision="box", architecture="unet_small", location_fraction=0.25, seed=1),
    )
    c = build_training_table(
        manifest,
        cache,
        tiny_config(supervision="box", architecture="unet_small", location_fraction=0.25, seed=2),
    )
    assert a["loc"].sum() == 4 and a["loc"].equals(b["loc"]) and not a["loc"].equals(c["loc"])
    assert not a.loc[a["split"] != "train", "loc"].any()


def test_ddp_slices_form_the_single_process_batches() -> None:
    single = list(GlobalBatchSampler(20, 8, seed=3, shuffle=True, drop_last=True))
    ranks = [
        list(GlobalBatchSampler(20, 8, seed=3, shuffle=True, drop_last=True, rank=r, world=2))
        for r in range(2)
    ]
    assert len(single) == 2 == len(ranks[0]) == len(ranks[1])
    for k, (_, batch) in enumerate(single):
        assert ranks[0][k][1] + ranks[1][k][1] == batch
    with pytest.raises(ParameterError, match="divisible"):
        GlobalBatchSampler(20, 7, seed=0, shuffle=True, drop_last=True, world=2)


def test_shuffle_changes_per_epoch_and_repeats_per_seed() -> None:
    sampler = GlobalBatchSampler(16, 16, seed=0, shuffle=True, drop_last=True)
    first = list(sampler)[0][1]
    sampler.set_epoch(1)
    second = list(sampler)[0][1]
    sampler.set_epoch(0)
    assert list(sampler)[0][1] == first != second
    assert sorted(first) == list(range(16))


def test_dense_targets_per_supervision(tiny) -> None:
    manifest, cache = tiny
    rows = np.array([0, 1, 3])
    seg = dense_targets(cache, rows, tiny_config(supervision="seg", architecture="unet_small"))
    assert np.array_equal(seg, cache.masks[rows].astype(np.float32))
    box = dense_targets(cache, rows, tiny_config(supervision="box", architecture="unet_small"))
    assert np.array_equal(box, cache.boxes[rows].astype(np.float32))
    coarse = dense_targets(
        cache, rows, tiny_config(supervision="coarse", architecture="unet_small", coarse_radius=2)
    )
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    assert np.array_equal(coarse[1, 0], cv2.dilate(cache.masks[1, 0], kernel).astype(np.float32))
    assert coarse.sum() > seg.sum()


def test_grid_cells() -> None:
    mask = np.zeros((1, 1, 8, 8), dtype=np.float32)
    mask[0, 0, 5, 1] = 1
    cells = grid_cells(mask, 4)
    expected = np.zeros((8, 8))
    expected[4:8, 0:4] = 1
    assert np.array_equal(cells[0, 0], expected)


def test_augmentation_moves_image_and_target_together_and_never_flips() -> None:
    rng = np.random.default_rng(0)
    mask = np.zeros((32, 32), dtype=np.float32)
    mask[4:12, 2:10] = 1.0  # left-side lesion
    image, target = augment_pair(mask.copy(), mask[None].copy(), rng)
    assert ((image > 0.5) == (target[0] > 0.5)).mean() > 0.97
    assert target[0, :, :16].sum() > 0.9 * target[0].sum()  # stays on the left


def test_a_finding_at_the_edge_is_in_the_image_and_the_target_alike() -> None:
    # the image reflects what the affine pulls in from beyond its edge: so must the target
    from cxr_spurious.augment import AugmentConfig

    geometry_only = AugmentConfig(
        max_rotation_deg=5.0, max_scale=0.05, max_translation=0.1, max_gamma=0.0,
        max_contrast=0.0, noise_std=0.0,
    )  # fmt: skip
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[20:40, 0:6] = 1.0  # a lesion touching the left edge
    worst = 0
    for seed in range(30):
        image, target = augment_pair(
            mask.copy(), mask[None].copy(), np.random.default_rng(seed), geometry_only
        )
        worst = max(worst, int(((image > 0.5) != (target[0] > 0.5)).sum()))
    # linear (image) against nearest (target) interpolation differ along the outline only
    assert worst <= 12, worst


def test_batches_are_deterministic_and_masked(tiny) -> None:
    manifest, cache = tiny
    resampled = manifest.copy()
    resampled["augment"] = True
    resampled.loc[resampled.index[1], TASK] = np.nan
    cfg = tiny_config(supervision="seg", architecture="unet_small")
    table = build_training_table(resampled, cache, cfg)
    data = CacheBatches(table, cache, cfg, train=True)
    a, b, c = data[(1, [0, 1, 2])], data[(1, [0, 1, 2])], data[(2, [0, 1, 2])]
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert a["image"].shape == (3, 1, 32, 32) and a["image"].dtype == torch.float32
    assert a["valid"][:, 0].tolist() == [True, False, True]
    assert a["target"].shape == (3, 1, 32, 32)
    assert a["dense_valid"].all()


def test_selection_and_batches_that_could_not_train_are_refused(tiny) -> None:
    """Each of these used to train silently into the untrained or first-epoch weights: a
    batch larger than the train split (the loader drops it: no step), a validation split
    without both classes under ``selection_metric: auroc`` (NaN every epoch: the first
    kept), and no validation split at all (a bare numpy error in the validation pass)."""
    manifest, cache = tiny
    n_train = int((manifest["split"] == "train").sum())
    with pytest.raises(ParameterError, match=f"more than resampled_manifest's {n_train} train"):
        build_training_table(manifest, cache, tiny_config(batch_size=n_train + 1))
    build_training_table(manifest, cache, tiny_config(batch_size=n_train))
    one_class = manifest.copy()
    one_class.loc[one_class["split"] == "val", TASK] = 0.0
    with pytest.raises(ParameterError, match="auroc is undefined") as err:
        build_training_table(one_class, cache, tiny_config())
    assert err.value.key == "training.selection_metric"
    no_val = manifest[manifest["split"] != "val"]
    with pytest.raises(DataFormatError, match=r"no validation rows \(split == 'val'\)"):
        build_training_table(no_val, cache, tiny_config())


def test_a_positive_location_fraction_never_rounds_to_no_image(tiny, caplog) -> None:
    """0.03 of 16 train images used to round to 0: a seg run without a single location
    label, silently."""
    manifest, cache = tiny
    with caplog.at_level("WARNING", logger="cxr_spurious.training.data"):
        small = build_training_table(
            manifest,
            cache,
            tiny_config(supervision="seg", architecture="unet_small", location_fraction=0.03),
        )
    assert small["loc"].sum() == 1 and not small.loc[small["split"] != "train", "loc"].any()
    assert any(
        "training.location_fraction" in r.getMessage()
        and "0.03" in r.getMessage()
        and "1 of 16" in r.getMessage()
        for r in caplog.records
    ), caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cxr_spurious.training.data"):
        for fraction, expected in ((0.0, 0), (0.5, 8)):
            table = build_training_table(
                manifest,
                cache,
                tiny_config(
                    supervision="seg", architecture="unet_small", location_fraction=fraction
                ),
            )
            assert table["loc"].sum() == expected
    assert "location_fraction" not in caplog.text
