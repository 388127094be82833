"""Counterfactual findings: probability drops and tube-free AUROC with CIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ContractError
from cxr_spurious.stats.metrics import auroc
from cxr_spurious.study.counterfactual import counterfactual_findings, paired_renders


def _data(shortcut: bool, n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n).astype(float)
    tube = rng.integers(0, 2, n).astype(float)
    ids = [f"img{i}" for i in range(n)]
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "Pneumothorax": y,
            "tube": tube,
        }
    )
    base = 0.1 + 0.1 * rng.random(n)
    if shortcut:  # the model reads the tube
        p_orig = base + 0.7 * tube
        p_no_tube = base
        p_no_lesion = p_orig
    else:  # the model reads the lesion
        p_orig = base + 0.7 * y
        p_no_tube = p_orig
        p_no_lesion = base
    rows = []
    for render, p in (("original", p_orig), ("no_tube", p_no_tube), ("no_lesion", p_no_lesion)):
        rows += [{"image_id": i, "render": render, "p_Pneumothorax": v} for i, v in zip(ids, p)]
    return pd.DataFrame(rows), manifest, y, p_no_tube


def test_shortcut_model_drops_without_tube() -> None:
    preds, manifest, y, p_no_tube = _data(shortcut=True)
    out = counterfactual_findings(preds, manifest, "Pneumothorax", n_boot=200, seed=1)
    assert out["cf_drop_no_tube"] == pytest.approx(0.7)
    assert out["cf_drop_no_lesion"] == pytest.approx(0.0)
    assert out["cf_auroc_no_tube"] == pytest.approx(auroc(y, p_no_tube))
    assert out["cf_auroc_no_tube_lo"] <= out["cf_auroc_no_tube"] <= out["cf_auroc_no_tube_hi"]
    assert 0.3 < out["cf_auroc_no_tube"] < 0.7


def test_lesion_model_drops_without_lesion() -> None:
    preds, manifest, *_ = _data(shortcut=False)
    out = counterfactual_findings(preds, manifest, "Pneumothorax", n_boot=200, seed=1)
    assert out["cf_drop_no_tube"] == pytest.approx(0.0)
    assert out["cf_drop_no_lesion"] == pytest.approx(0.7)
    assert out["cf_auroc_no_tube"] == pytest.approx(1.0)


def test_same_seed_same_ci_and_missing_render() -> None:
    preds, manifest, *_ = _data(shortcut=True, n=60)
    a = counterfactual_findings(preds, manifest, "Pneumothorax", n_boot=100, seed=3)
    b = counterfactual_findings(preds, manifest, "Pneumothorax", n_boot=100, seed=3)
    assert a == b
    only_tube = preds[preds["render"] != "no_lesion"]
    c = counterfactual_findings(only_tube, manifest, "Pneumothorax", n_boot=50, seed=3)
    assert np.isnan(c["cf_drop_no_lesion"]) and not np.isnan(c["cf_drop_no_tube"])


def test_paired_renders_errors() -> None:
    preds, *_ = _data(shortcut=True, n=10)
    with pytest.raises(ContractError, match="lack column 'p_Edema'"):
        paired_renders(preds, "Edema", "no_tube")
    with pytest.raises(ContractError, match="no 'no_device' render"):
        paired_renders(preds, "Pneumothorax", "no_device")


def test_repeated_or_undefined_predictions_and_unknown_images_are_refused() -> None:
    """One prediction per (image, render): a repeated pair used to keep its first value, a
    NaN probability dropped its image, and an image outside the manifest failed in the
    bootstrap's sort; each is now a ContractError naming the rows."""
    preds, manifest, *_ = _data(shortcut=True, n=20)
    twice = pd.concat([preds, preds.iloc[[0]].assign(p_Pneumothorax=0.1)], ignore_index=True)
    with pytest.raises(ContractError, match=r"repeat 1 \(image_id, render\).*'img0', 'original'"):
        paired_renders(twice, "Pneumothorax", "no_tube")
    undefined = preds.copy()
    undefined.loc[3, "p_Pneumothorax"] = np.nan
    with pytest.raises(ContractError, match=r"NaN on 1 row\(s\), e.g. \[\('img3', 'original'\)\]"):
        paired_renders(undefined, "Pneumothorax", "no_tube")
    with pytest.raises(ContractError, match=r"of erm predictions, e.g. \['img0'\]"):
        counterfactual_findings(
            preds, manifest[manifest["image_id"] != "img0"], "Pneumothorax", n_boot=20, label="erm"
        )


@pytest.mark.parametrize(
    ("column", "needed"),
    [("tube", "cf_drop_no_tube"), ("Pneumothorax", "cf_drop_no_lesion, cf_auroc_no_tube")],
)
def test_a_manifest_without_the_tube_or_task_column_is_refused_naming_it(
    column: str, needed: str
) -> None:
    """A missing column failed with a bare KeyError deep in the bootstrap loop."""
    preds, manifest, *_ = _data(shortcut=True, n=20)
    with pytest.raises(
        ContractError,
        match=rf"counterfactual findings of erm: the manifest lacks column '{column}' "
        rf"\(needed for {needed}\)",
    ):
        counterfactual_findings(
            preds, manifest.drop(columns=column), "Pneumothorax", n_boot=20, label="erm"
        )
    if column == "tube":  # without a no_tube render the tube column is not needed
        kept = preds[preds["render"] != "no_tube"]
        out = counterfactual_findings(
            kept, manifest.drop(columns="tube"), "Pneumothorax", n_boot=20, label="erm"
        )
        assert np.isnan(out["cf_drop_no_tube"]) and not np.isnan(out["cf_drop_no_lesion"])
