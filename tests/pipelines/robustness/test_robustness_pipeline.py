"""The robustness pipeline, namespaced per model, run on tiny synthetic predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score
from tests.robustness.robust_fixtures import TASK, make_table

from cxr_spurious.pipelines.robustness import create_pipeline, nodes
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.training.provenance import model_digest
from cxr_spurious.variants import STUDY_MODELS

PARAMS = Path(__file__).resolve().parents[3] / "conf/base/parameters_robustness.yml"


class _Kept(MemoryDataset):
    """A MemoryDataset the runner does not release."""

    def _release(self) -> None:
        pass


def _inputs(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, ImageCache]:
    t = make_table(n_patients=160, seed=seed)
    rng = np.random.default_rng(seed)
    t["split"] = np.where(t["patient_id"].str[1:].astype(int) % 4 == 0, "train", t["split"])
    manifest = t.drop(columns=[f"p_{TASK}"]).assign(
        age_years=rng.uniform(20, 90, len(t)), race="A", insurance="x"
    )
    preds = t[["image_id", "split", f"p_{TASK}"]].assign(model="m")
    emb = pd.DataFrame(
        {
            "image_id": t["image_id"],
            **{f"e{i}": rng.normal(size=len(t)) + 3 * t["tube"] * (i == 0) for i in range(4)},
        }
    )
    cache = ImageCache(
        image_ids=t["image_id"].tolist(),
        tasks=[TASK],
        objects=[],
        size=8,
        images=rng.integers(0, 255, (len(t), 8, 8), dtype=np.uint8),
        masks=np.zeros((len(t), 1, 8, 8), np.uint8),
        boxes=np.zeros((len(t), 1, 8, 8), np.uint8),
        spurious=np.zeros((len(t), 0, 8, 8), np.uint8),
        has_mask=np.zeros((len(t), 1), bool),
    )
    return manifest, preds, emb, cache


def test_namespaced_run_and_summary() -> None:
    manifest, preds, emb, cache = _inputs()
    with open(PARAMS) as fh:
        params = yaml.safe_load(fh)["robustness"]
    params.update(
        n_boot=20,
        attributes=["sex", "site", "tube", "age_bin"],
        worst_group_attributes=["sex", "site"],
        fairness_attribute="sex",
        reliability_attribute="sex",
    )
    models = list(STUDY_MODELS)
    pipe = create_pipeline()
    assert {n.namespace for n in pipe.nodes} == {*models, None}
    data: dict[str, object] = {
        "manifest": manifest,
        "image_cache": cache,
        "params:robustness": params,
        **{f"params:robustness.{k}": v for k, v in params.items()},
    }
    noise = np.random.default_rng(5)
    for i, m in enumerate(models):
        p = preds.copy()
        p[f"p_{TASK}"] = np.clip(p[f"p_{TASK}"] + noise.normal(0, 0.1 * i, len(p)), 0, 1)
        data[f"{m}.predictions"] = p
        data[f"{m}.embeddings"] = emb
        data[f"{m}.test_metrics"] = {"training_config_digest": f"settings-{m}"}
    catalog = DataCatalog({k: MemoryDataset(v, copy_mode="assign") for k, v in data.items()})
    for name in pipe.all_outputs():
        catalog[name] = _Kept(copy_mode="assign")
    SequentialRunner().run(pipe, catalog)
    summary = catalog.load("robustness_summary")
    assert list(summary["model"]) == models
    # each row names the training of its model it was computed on (the report checks it)
    assert list(summary["model_digest"]) == [
        model_digest(data[f"{m}.test_metrics"]) for m in models
    ]
    test = manifest.assign(p=data["erm.predictions"][f"p_{TASK}"])
    test = test[test["split"] == "test"]
    assert np.isclose(summary.loc[0, "auroc"], roc_auc_score(test[TASK], test["p"]))
    for col in (
        "auroc",
        "worst_group_auroc",
        "robust_tube_auroc",
        "fnr_gap",
        "equalized_odds_difference",
    ):
        assert {col, f"{col}_lo", f"{col}_hi"} <= set(summary.columns)
        assert summary[col].notna().all()
    assert (summary["worst_group_auroc"] <= summary["auroc"] + 1e-9).all()
    ops = catalog.load("erm.operating_points")
    assert 0 < ops["threshold"].iloc[0] < 1
    assert isinstance(catalog.load("seg.strata_plot"), Figure) and isinstance(
        catalog.load("box.flagged_thumbnails"), Figure
    )
    ami = catalog.load("erm.strata_ami")
    assert set(ami["attribute"]) <= {"tube", "site", "sex"} and len(ami) > 0


def _youden_by_hand(y: np.ndarray, p: np.ndarray) -> float:
    """The score t maximising TPR - FPR of ``p >= t`` (the first on ties, from the top)."""
    best, best_t = -np.inf, np.inf
    for t in np.unique(p)[::-1]:
        j = np.mean(p[y == 1] >= t) - np.mean(p[y == 0] >= t)
        if j > best:
            best, best_t = j, t
    return float(best_t)


def test_operating_points_come_from_val_and_are_applied_to_test() -> None:
    manifest, preds, emb, cache = _inputs()
    # Test scores cubed: the same ranking, so Youden's point on test sits elsewhere.
    test = preds["split"] == "test"
    preds.loc[test, f"p_{TASK}"] = preds.loc[test, f"p_{TASK}"] ** 3
    with open(PARAMS) as fh:
        params = yaml.safe_load(fh)["robustness"]
    params.update(
        n_boot=20,
        attributes=["sex", "site", "tube", "age_bin"],
        worst_group_attributes=["sex", "site"],
        fairness_attribute="sex",
        reliability_attribute="sex",
        operating_point="youden",
    )
    pipe = create_pipeline()
    data: dict[str, object] = {
        "manifest": manifest,
        "image_cache": cache,
        "params:robustness": params,
        **{f"params:robustness.{k}": v for k, v in params.items()},
    }
    for m in STUDY_MODELS:
        data[f"{m}.predictions"], data[f"{m}.embeddings"] = preds, emb
        data[f"{m}.test_metrics"] = {"training_config_digest": f"settings-{m}"}
    catalog = DataCatalog({k: MemoryDataset(v, copy_mode="assign") for k, v in data.items()})
    for name in pipe.all_outputs():
        catalog[name] = _Kept(copy_mode="assign")
    SequentialRunner().run(pipe, catalog)

    table = manifest.merge(preds[["image_id", f"p_{TASK}"]], on="image_id")
    val, tst = (table[table["split"] == s] for s in ("val", "test"))
    on_val = _youden_by_hand(val[TASK].to_numpy(), val[f"p_{TASK}"].to_numpy())
    on_test = _youden_by_hand(tst[TASK].to_numpy(), tst[f"p_{TASK}"].to_numpy())
    assert abs(on_val - on_test) > 0.05, "the fixture must tell the two splits apart"
    threshold = float(catalog.load("erm.operating_points")["threshold"].iloc[0])
    assert threshold == pytest.approx(on_val)
    by_group = catalog.load("erm.fairness_by_group")
    assert np.allclose(by_group["threshold"], on_val)
    # The test split's TPR per sex at the validation threshold, by hand.
    for sex, rows in tst.groupby("sex"):
        pos = rows[rows[TASK] == 1]
        expected = float(np.mean(pos[f"p_{TASK}"] >= on_val))
        got = by_group.loc[(by_group["group"] == sex), "tpr"]
        assert len(got) == 1 and got.iloc[0] == pytest.approx(expected), (sex, got, expected)


def test_summarise_model_picks_worst_attribute() -> None:
    sub = pd.DataFrame(
        [
            {
                "task": TASK,
                "metric": "auroc",
                "attribute": "all",
                "group": "all",
                "estimate": 0.9,
                "lo": 0.8,
                "hi": 0.95,
            },
            {
                "task": TASK,
                "metric": "worst_group_auroc",
                "attribute": "sex",
                "group": "worst",
                "estimate": 0.7,
                "lo": 0.6,
                "hi": 0.8,
            },
            {
                "task": TASK,
                "metric": "worst_group_auroc",
                "attribute": "site",
                "group": "worst",
                "estimate": 0.6,
                "lo": 0.5,
                "hi": 0.7,
            },
            {
                "task": TASK,
                "metric": "robust_auroc",
                "attribute": "tube",
                "group": "all",
                "estimate": 0.3,
                "lo": 0.2,
                "hi": 0.4,
            },
        ]
    )
    gaps = pd.DataFrame(
        [
            {
                "task": TASK,
                "attribute": "site",
                "metric": m,
                "estimate": v,
                "lo": v - 0.1,
                "hi": v + 0.1,
            }
            for m, v in (("fnr_gap", 0.4), ("equalized_odds_difference", 0.5))
        ]
    )
    row = nodes.summarise_model(sub, gaps, ["sex", "site"], "site", ["sex", "site", "tube"]).iloc[0]
    assert row["worst_group_auroc"] == 0.6 and row["worst_group"] == "site"
    assert (
        row["robust_tube_auroc_lo"] == 0.2
        and row["fnr_gap"] == 0.4
        and row["equalized_odds_difference_hi"] == 0.6
    )
