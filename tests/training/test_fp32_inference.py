"""Predictions, embeddings and counterfactual scores are fp32 whatever the training precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.training.training_tiny_data import tiny_config

from cxr_spurious.training.data import CacheBatches, build_training_table, make_loader
from cxr_spurious.training.device import resolve_device
from cxr_spurious.training.engine import fit, init_model, predict
from cxr_spurious.training.outputs import _inference_table, predict_images

BF16 = resolve_device("cpu", precision="bf16")
FP32 = resolve_device("cpu", precision="fp32")


@pytest.fixture(scope="module")
def bf16_model(tiny):
    """A unet_small trained 2 epochs under bf16 autocast (scores spread away from 0.5)."""
    manifest, cache = tiny
    cfg = tiny_config(epochs=2, precision="bf16", architecture="unet_small")
    table = build_training_table(manifest, cache, cfg)
    train = table[table["split"] == "train"].reset_index(drop=True)
    val = table[table["split"] == "val"].reset_index(drop=True)
    result = fit(train, val, cache, cfg, BF16)
    model = init_model(cfg)
    model.load_state_dict(result.state_dict)
    return model.eval(), cfg


def _plain_fp32(model, manifest, cache, cfg, render: str = "original"):
    """Reference: the model called directly in fp32, no project inference code."""
    data = CacheBatches(
        _inference_table(manifest, cache, model.tasks), cache, cfg, train=False, render=render
    )
    loader = make_loader(
        data, 16, seed=0, shuffle=False, drop_last=False, num_workers=0, pin_memory=False
    )
    probs, embs = [], []
    with torch.no_grad():
        for batch in loader:
            logits, emb = model.logits_and_embedding(batch["image"].float())
            assert logits.dtype == torch.float32
            probs.append(torch.sigmoid(logits).numpy())
            embs.append(emb.numpy())
    return np.concatenate(probs), np.concatenate(embs)


def test_bf16_trained_model_predicts_test_scores_in_fp32(tiny, bf16_model) -> None:
    manifest, cache = tiny
    model, cfg = bf16_model
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    probs, embs = predict_images(model, test, cache, cfg, BF16)
    ref_probs, ref_embs = _plain_fp32(model, test, cache, cfg)
    assert probs.dtype == embs.dtype == np.float32
    assert len(np.unique(probs)) == len(np.unique(ref_probs))
    np.testing.assert_allclose(probs, ref_probs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(embs, ref_embs, rtol=1e-6, atol=1e-6)  # DFR's features


def test_counterfactual_render_scores_are_fp32(tiny, bf16_model) -> None:
    manifest, cache = tiny
    model, cfg = bf16_model
    test = manifest[manifest["split"] == "test"].reset_index(drop=True)
    for render in ("no_tube", "no_lesion"):
        probs, _ = predict_images(model, test, cache, cfg, BF16, render=render)
        ref, _ = _plain_fp32(model, test, cache, cfg, render=render)
        assert len(np.unique(probs)) == len(np.unique(ref))
        np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-6)


def test_predict_switches_off_an_enclosing_autocast(tiny, bf16_model) -> None:
    manifest, cache = tiny
    model, cfg = bf16_model
    data = CacheBatches(_inference_table(manifest, cache, model.tasks), cache, cfg, train=False)
    loader = make_loader(
        data, 16, seed=0, shuffle=False, drop_last=False, num_workers=0, pin_memory=False
    )
    plain, _ = predict(model, loader, FP32)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        inside, _ = predict(model, loader, BF16)
    np.testing.assert_array_equal(inside, plain)
