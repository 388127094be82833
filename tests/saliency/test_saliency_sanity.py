"""Model-randomisation sanity check (Adebayo et al. 2018)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from cxr_spurious.saliency import model_randomisation_check, randomized_copy
from cxr_spurious.saliency.sanity import SANITY_COLUMNS, spearman_per_map


def test_spearman_per_map_matches_scipy_and_flags_constant_maps():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 5, 5)), rng.random((3, 5, 5))
    b[2] = 0.7
    rho = spearman_per_map(a, b)
    for i in range(2):
        assert rho[i] == pytest.approx(spearmanr(a[i].ravel(), b[i].ravel()).statistic)
    assert np.isnan(rho[2])


def test_randomized_copy_is_seeded_and_leaves_the_model_and_global_rng_alone(classifier):
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    state = torch.random.get_rng_state()
    r1, r2, r3 = randomized_copy(classifier, 1), randomized_copy(classifier, 1), randomized_copy(classifier, 2)
    assert torch.equal(state, torch.random.get_rng_state())
    for k, v in classifier.state_dict().items():
        assert torch.equal(v, before[k])
        assert torch.equal(r1.state_dict()[k], r2.state_dict()[k])
    for name, p in r1.named_parameters():
        assert not torch.equal(p, dict(classifier.named_parameters())[name]), name
    assert not torch.equal(r1.fc.weight, r3.fc.weight)


def test_identical_models_give_correlation_one(classifier, images):
    table = model_randomisation_check(classifier, images, ["gradcam", "saliency"], ["Pneumothorax"],
                                      model_name="erm", random_model=classifier, n_boot=50, device="cpu")
    assert list(table.columns) == list(SANITY_COLUMNS)
    assert (table["spearman"] > 0.999).all()
    assert (table["n_images"] == len(images)).all()


def test_randomised_weights_give_low_correlation(toys):
    model = toys.LinearModel().eval()
    images = toys.blob_images(12)
    table = model_randomisation_check(model, images, ["saliency", "integrated_gradients"], ["Pneumothorax"],
                                      model_name="erm", seed=0, n_boot=200, device="cpu")
    rho = table.set_index("method")["spearman"]
    # The gradient of w . x is w: random weights give an unrelated map.
    assert abs(rho["saliency"]) < 0.2, table
    # Integrated gradients of w . x is x * w: the image itself survives randomisation
    # (the input-dominance Adebayo et al. warn about), so the check must show it.
    assert rho["integrated_gradients"] > rho["saliency"] + 0.3, table
    assert (table["spearman_lo"] <= table["spearman"]).all() and (table["spearman"] <= table["spearman_hi"]).all()
    again = model_randomisation_check(model, images, ["saliency", "integrated_gradients"], ["Pneumothorax"],
                                      model_name="erm", seed=0, n_boot=200, device="cpu")
    np.testing.assert_array_equal(table["spearman_lo"], again["spearman_lo"])
