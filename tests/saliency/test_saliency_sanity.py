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
    r1, r2, r3 = (
        randomized_copy(classifier, 1),
        randomized_copy(classifier, 1),
        randomized_copy(classifier, 2),
    )
    assert torch.equal(state, torch.random.get_rng_state())
    for k, v in classifier.state_dict().items():
        assert torch.equal(v, before[k])
        assert torch.equal(r1.state_dict()[k], r2.state_dict()[k])
    for name, p in r1.named_parameters():
        assert not torch.equal(p, dict(classifier.named_parameters())[name]), name
    assert not torch.equal(r1.fc.weight, r3.fc.weight)


def test_identical_models_give_correlation_one(classifier, images):
    table = model_randomisation_check(
        classifier,
        images,
        ["gradcam", "saliency"],
        ["Pneumothorax"],
        model_name="erm",
        random_model=classifier,
        n_boot=50,
        device="cpu",
    )
    assert list(table.columns) == list(SANITY_COLUMNS)
    assert (table["spearman"] > 0.999).all()
    assert (table["n_images"] == len(images)).all()


def test_randomised_weights_give_low_correlation(toys):
    model = toys.LinearModel().eval()
    images = toys.blob_images(12)
    table = model_randomisation_check(
        model,
        images,
        ["saliency", "integrated_gradients"],
        ["Pneumothorax"],
        model_name="erm",
        seed=0,
        n_boot=200,
        device="cpu",
    )
    rho = table.set_index("method")["spearman"]
    # The gradient of w . x is w: random weights give an unrelated map.
    assert abs(rho["saliency"]) < 0.2, table
    # Integrated gradients of w . x is x * w: the image itself survives randomisation
    # (the input-dominance Adebayo et al. warn about), so the check must show it.
    assert rho["integrated_gradients"] > rho["saliency"] + 0.3, table
    # (identical correlations on every image: replicate means equal the estimate up to
    # float rounding)
    assert (table["spearman_lo"] <= table["spearman"] + 1e-12).all() and (
        table["spearman"] <= table["spearman_hi"] + 1e-12
    ).all()
    again = model_randomisation_check(
        model,
        images,
        ["saliency", "integrated_gradients"],
        ["Pneumothorax"],
        model_name="erm",
        seed=0,
        n_boot=200,
        device="cpu",
    )
    np.testing.assert_array_equal(table["spearman_lo"], again["spearman_lo"])


def test_similarity_ci_resamples_patients_like_a_slow_loop():
    from cxr_spurious.saliency.sanity import summarise_similarity

    rng = np.random.default_rng(3)
    patients = np.repeat([f"pt{k}" for k in range(10)], 3)  # three images per patient
    rho = np.repeat(rng.uniform(-0.5, 0.9, 10), 3) + rng.normal(0, 0.01, 30)
    rho[[4, 17]] = np.nan  # constant maps
    out = summarise_similarity(rho, n_boot=300, seed=2, patients=patients)
    gen = np.random.default_rng(2)
    labels = sorted(set(patients))
    reps = []
    for _ in range(300):
        drawn = np.concatenate(
            [rho[patients == labels[k]] for k in gen.integers(0, len(labels), size=len(labels))]
        )
        reps.append(np.nanmean(drawn))
    assert out["spearman_lo"] == pytest.approx(np.quantile(reps, 0.025), abs=1e-12)
    assert out["spearman_hi"] == pytest.approx(np.quantile(reps, 0.975), abs=1e-12)
    assert out["spearman"] == pytest.approx(np.nanmean(rho)) and out["n_valid"] == 28
    assert out["n_patients"] == 10 and out["spearman_dropped"] == 0
    # per-image resampling treats correlated images of one patient as independent: narrower
    per_image = summarise_similarity(rho, n_boot=300, seed=2)
    assert per_image["spearman_hi"] - per_image["spearman_lo"] < 0.8 * (
        out["spearman_hi"] - out["spearman_lo"]
    )


def test_sanity_table_reports_patients_and_dropped_replicates(classifier, images):
    patients = ["a", "a", "b", "c", "d", "e"][: len(images)]
    table = model_randomisation_check(
        classifier,
        images,
        ["saliency"],
        ["Pneumothorax"],
        model_name="erm",
        random_model=classifier,
        n_boot=40,
        device="cpu",
        patients=patients,
    )
    assert (
        table.loc[0, "n_patients"] == len(set(patients)) and table.loc[0, "spearman_dropped"] == 0
    )
