"""DFR's operating point: chosen on the validation patients DFR was not fitted on.

DFR fits its last layer on half the validation patients; a threshold chosen on the whole
val split (half of it DFR's own fitting data) moves every test metric read at it (FNR gap,
equalized-odds difference, per-group rates). The comparison runs here through its real
wiring (``refit_last_layer`` and the DFR / ``cmp_upsample`` robustness nodes) on a small
synthetic manifest; the thresholds are checked against a by-hand Youden choice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from tests.debiasing.debias_fixtures import TASK, make_manifest

from cxr_spurious.debiasing.dfr import dfr_held_out_rows, dfr_training_rows
from cxr_spurious.debiasing.groups import assign_groups, group_keys
from cxr_spurious.errors import ContractError
from cxr_spurious.pipelines.comparison.pipeline import DFR, create_study_seed_pipeline
from cxr_spurious.pipelines.robustness.nodes import choose_operating_points

CONF = Path(__file__).resolve().parents[3] / "conf/base"
OTHER = "cmp_upsample"  # any variant but DFR: its operating point must not change
SEED = 3  # comparison.debiasing.seed: DFR's patient halving


class _Kept(MemoryDataset):
    """A MemoryDataset the runner does not release."""

    def _release(self) -> None:
        pass


def _hand_half(manifest: pd.DataFrame, seed: int) -> np.ndarray:
    """The held-out validation rows, drawn by hand as DFR documents its halving."""
    val = (manifest["split"] == "val").to_numpy()
    patients = np.array(sorted(manifest.loc[val, "patient_id"].astype(str).unique()))
    fitting = set(np.random.default_rng(seed).permutation(patients)[: patients.size // 2])
    return val & ~manifest["patient_id"].astype(str).isin(fitting).to_numpy()


def _youden_by_hand(y: np.ndarray, p: np.ndarray) -> float:
    """Highest score threshold (predict ``p >= t``) maximising TPR - FPR."""
    best, best_t = -np.inf, np.nan
    for t in np.unique(p)[::-1]:
        j = (p[y == 1] >= t).mean() - (p[y == 0] >= t).mean()
        if j > best:
            best, best_t = j, float(t)
    return best_t


def _data() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    m = make_manifest(n_patients=400, seed=1)
    rng = np.random.default_rng(0)
    d = 48  # many dimensions for ~60 fitting rows: DFR fits its own rows closely
    x = rng.normal(size=(len(m), d))
    x[:, 0] += 1.5 * m[TASK].to_numpy()
    emb = pd.DataFrame({"image_id": m["image_id"], **{f"e{i}": x[:, i] for i in range(d)}})
    other = m[["image_id", "split"]].assign(
        model=OTHER, **{f"p_{TASK}": 1 / (1 + np.exp(-(x[:, 0] + rng.normal(size=len(m)))))}
    )
    return m, emb, other


def _run() -> tuple[DataCatalog, pd.DataFrame, pd.DataFrame]:
    m, emb, other = _data()
    with open(CONF / "parameters_robustness.yml") as fh:
        rob = yaml.safe_load(fh)["robustness"]
    with open(CONF / "parameters_comparison.yml") as fh:
        cmp = yaml.safe_load(fh)["comparison"]
    rob.update(
        tasks=[TASK],
        attributes=["sex", "site"],
        worst_group_attributes=["sex"],
        fairness_attribute="sex",
        reliability_attribute="sex",
        ami_attributes=["sex"],
        operating_point="youden",
    )
    cmp["debiasing"].update(tasks=[TASK], group_by=["sex"], seed=SEED)
    wanted = [
        "refit_last_layer",
        *(f"{ns}.{n}" for ns in (DFR, OTHER) for n in ("build_evaluation_table",)),
        *(f"{ns}.choose_operating_points" for ns in (DFR, OTHER)),
    ]
    pipe = create_study_seed_pipeline().only_nodes(*wanted)
    data: dict[str, object] = {
        "manifest": m,
        "checked_erm_embeddings": emb,
        f"{OTHER}.predictions": other,
        **{f"params:robustness.{k}": v for k, v in rob.items()},
        **{f"params:comparison.debiasing.{k}": v for k, v in cmp["debiasing"].items()},
        "params:comparison.dfr_c": cmp["dfr_c"],
    }
    assert pipe.inputs() <= set(data), pipe.inputs() - set(data)
    catalog = DataCatalog({k: MemoryDataset(v, copy_mode="assign") for k, v in data.items()})
    for name in pipe.all_outputs():
        catalog[name] = _Kept(copy_mode="assign")
    SequentialRunner().run(pipe, catalog)
    return catalog, m, other


def test_dfr_threshold_is_chosen_on_its_held_out_half_and_others_on_all_of_val() -> None:
    catalog, m, other = _run()
    val = (m["split"] == "val").to_numpy()
    held = _hand_half(m, SEED)
    y = m[TASK].to_numpy()
    p_dfr = catalog.load(f"{DFR}.predictions")[f"p_{TASK}"].to_numpy()
    dfr_ops = catalog.load(f"{DFR}.operating_points")
    by_hand = _youden_by_hand(y[held], p_dfr[held])
    assert float(dfr_ops["threshold"].iloc[0]) == by_hand
    assert dfr_ops["val_rows"].iloc[0] == "held_out" and dfr_ops["n_val"].iloc[0] == held.sum()
    # the whole val split (half of it DFR's fitting data) gives another threshold: the test
    # can tell the two apart
    assert _youden_by_hand(y[val], p_dfr[val]) != by_hand
    # the rows DFR was fitted on are none of them
    ids, _ = assign_groups(group_keys(m, ["sex"]))
    fitted = dfr_training_rows(m, ids.to_numpy(), TASK, seed=SEED)
    assert not held[fitted].any()
    assert not m["patient_id"][held].isin(m["patient_id"].iloc[fitted]).any()
    assert set(catalog.load(f"{DFR}.dfr_held_out_val")["image_id"]) == set(m["image_id"][held])
    # every other variant: all of val, as before
    other_ops = catalog.load(f"{OTHER}.operating_points")
    p_other = other[f"p_{TASK}"].to_numpy()
    assert float(other_ops["threshold"].iloc[0]) == _youden_by_hand(y[val], p_other[val])
    assert other_ops["val_rows"].iloc[0] == "all" and other_ops["n_val"].iloc[0] == val.sum()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_dfr_held_out_rows_are_the_other_half_of_val(seed: int) -> None:
    m = make_manifest(n_patients=200, seed=seed)
    held = dfr_held_out_rows(m, seed=seed)
    np.testing.assert_array_equal(held, _hand_half(m, seed))
    val_patients = m.loc[m["split"] == "val", "patient_id"].nunique()
    assert m.loc[held, "patient_id"].nunique() == val_patients - val_patients // 2


def test_operating_rows_must_be_validation_rows() -> None:
    m = make_manifest(n_patients=60)
    table = m[["image_id", "patient_id", "split", TASK]].assign(
        **{f"p_{TASK}": np.linspace(0, 1, len(m))}
    )
    test_id = m.loc[m["split"] == "test", "image_id"].iloc[0]
    with pytest.raises(ContractError, match=f"1 of 1 image ids are not validation.*{test_id}"):
        choose_operating_points(table, [TASK], "youden", 0.9, pd.DataFrame({"image_id": [test_id]}))
    one_class = m[(m["split"] == "val") & (m[TASK] == 0)][["image_id"]]
    with pytest.raises(ContractError, match="held-out validation rows.*single class"):
        choose_operating_points(table, [TASK], "youden", 0.9, one_class)
