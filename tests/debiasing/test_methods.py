"""Tests of augmentation, feature alignment, JTT errors, GEORGE groups, DFR and Group DRO."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from tests.debiasing.debias_fixtures import TASK, make_manifest

from cxr_spurious.augment import augment_image
from cxr_spurious.debiasing.dfr import dfr_training_rows, fit_dfr
from cxr_spurious.debiasing.features import embedding_matrix, thumbnails
from cxr_spurious.debiasing.george import discover_groups
from cxr_spurious.debiasing.groups import assign_groups, group_keys
from cxr_spurious.debiasing.jtt import error_set
from cxr_spurious.debiasing.objectives import GroupDROObjective, make_group_dro
from cxr_spurious.debiasing.report import group_count_table, plot_group_counts
from cxr_spurious.debiasing.resampling import resample_manifest
from cxr_spurious.errors import ContractError, DataFormatError, ParameterError
from cxr_spurious.sources.contract import align_table


def _embeddings(m: pd.DataFrame, d: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(m), d))
    x[:, 0] += 3 * m[TASK].to_numpy()
    x[:, 1] += 4 * (m["sex"] == "F").to_numpy()
    return pd.DataFrame({"image_id": m["image_id"], **{f"e{i}": x[:, i] for i in range(d)}})


def test_augment_deterministic_no_flip() -> None:
    img = np.zeros((64, 64), np.uint8)
    img[10:30, 5:20] = 200  # bright block on the left
    a, b, c = augment_image(img, 7), augment_image(img, 7), augment_image(img, 8)
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a[:, :32].mean() > 2 * a[:, 32:].mean()  # laterality kept
    with pytest.raises(ParameterError, match="2-D uint8"):
        augment_image(img.astype(float), 0)


def test_align_and_misaligned_embeddings() -> None:
    m = make_manifest()
    emb = _embeddings(m).sample(frac=1.0, random_state=0)
    x = embedding_matrix(m, emb)
    assert np.allclose(x[:, 0], _embeddings(m)["e0"])
    with pytest.raises(ContractError, match="misaligned with the manifest: 1 of"):
        embedding_matrix(m, emb.iloc[1:])
    with pytest.raises(ContractError, match="duplicated"):
        align_table(m, pd.concat([emb, emb.iloc[:1]]), name="embeddings")
    with pytest.raises(ContractError, match="e0..e"):
        embedding_matrix(m, emb[["image_id"]])


def test_thumbnails_area_mean() -> None:
    imgs = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    t = thumbnails(imgs, size=2)
    assert t.shape == (2, 4)
    assert np.isclose(t[0, 0], imgs[0, :4, :4].mean() / 255.0)


def test_jtt_error_set() -> None:
    m = make_manifest()
    p = np.where(m[TASK] == 1, 0.9, 0.1)
    flip = np.arange(len(m)) % 4 == 0
    p[flip] = 1 - p[flip]
    preds = pd.DataFrame(
        {"image_id": m["image_id"], "split": m["split"], "model": "erm", f"p_{TASK}": p}
    )
    err = error_set(m, preds, TASK)
    assert (err == (flip & (m["split"] == "train").to_numpy())).all()
    with pytest.raises(ContractError, match="erm.predictions is misaligned"):
        error_set(m, preds[m["split"] != "train"], TASK)


def test_george_groups_recover_hidden_attribute() -> None:
    m = make_manifest(n_patients=120)
    g = discover_groups(m, _embeddings(m), TASK, n_clusters=2, seed=0)
    from sklearn.metrics import adjusted_rand_score

    for cls in (0, 1):
        rows = m[TASK] == cls
        assert adjusted_rand_score(m.loc[rows, "sex"], g[rows]) > 0.8
        assert set(g[rows]) == {2 * cls, 2 * cls + 1}


def test_george_errors_name_its_own_argument() -> None:
    # discover_groups is a library function: no parameter feeds it, so its errors name its
    # argument n_clusters, not a debiasing.george_clusters key the parameter check refuses
    m = make_manifest(n_patients=60)
    emb = _embeddings(m)
    with pytest.raises(ParameterError, match="^parameter 'n_clusters': .*>= 1, got 0") as err:
        discover_groups(m, emb, TASK, n_clusters=0)
    assert "george_clusters" not in str(err.value)
    train = (m["split"] == "train").to_numpy()
    n_pos = int((train & (m[TASK] == 1).to_numpy()).sum())
    with pytest.raises(
        ParameterError, match=f"^parameter 'n_clusters': .*class 1 .* {n_pos} train rows"
    ) as err:
        discover_groups(m, emb, TASK, n_clusters=n_pos + 1)
    assert "george_clusters" not in str(err.value)


def test_dfr_matches_sklearn_on_balanced_half() -> None:
    m = make_manifest(n_patients=150)
    ids, _ = assign_groups(group_keys(m, ["sex"]))
    emb = _embeddings(m)
    rows = dfr_training_rows(m, ids.to_numpy(), TASK, seed=0)
    assert (m.loc[rows, "split"] == "val").all()
    cells = m.loc[rows].groupby(["sex", TASK]).size()
    assert cells.nunique() == 1 and len(cells) == 4
    preds = fit_dfr(m, emb, ids.to_numpy(), [TASK], seed=0)
    x = emb[[f"e{i}" for i in range(6)]].to_numpy()
    sc = StandardScaler().fit(x[rows])
    ref = LogisticRegression(C=1.0, max_iter=2000, random_state=0).fit(
        sc.transform(x[rows]), m[TASK].to_numpy()[rows].astype(int)
    )
    np.testing.assert_allclose(preds[f"p_{TASK}"], ref.predict_proba(sc.transform(x))[:, 1])
    assert list(preds.columns) == ["image_id", "split", "model", f"p_{TASK}"]


def test_dfr_empty_cell_error() -> None:
    m = make_manifest(n_patients=150)
    m.loc[(m["split"] == "val") & (m["sex"] == "F"), TASK] = 0.0
    ids, _ = assign_groups(group_keys(m, ["sex"]))
    with pytest.raises(DataFormatError, match="no rows for \\(group, label\\)"):
        dfr_training_rows(m, ids.to_numpy(), TASK)


def test_dfr_refuses_a_group_that_the_validation_half_misses() -> None:
    # a third site on 2 validation patients (one with each label): the patient halving puts
    # both in the other half for some seeds, and the group must not drop out of the
    # "group-balanced" set without a word
    m = make_manifest(n_patients=150)
    rare = sorted(m.loc[m["split"] == "val", "patient_id"].unique())[:2]
    m.loc[m["patient_id"].isin(rare), "site"] = "s3"
    m.loc[m["patient_id"] == rare[0], TASK] = 1.0
    m.loc[m["patient_id"] == rare[1], TASK] = 0.0
    ids, _ = assign_groups(group_keys(m, ["site"]))
    g = ids.to_numpy()
    s3 = int(np.unique(g[m["site"].to_numpy() == "s3"])[0])
    outcomes = []
    for seed in range(20):
        try:
            rows = dfr_training_rows(m, g, TASK, seed=seed)
        except DataFormatError as err:
            assert "no rows for (group, label)" in str(err)
            outcomes.append("refused")
            continue
        assert s3 in set(g[rows]), seed  # every group it returns rows for is balanced in
        cells = m.loc[rows].groupby([g[rows], TASK]).size()
        assert cells.nunique() == 1 and len(cells) == 2 * len(np.unique(g[g >= 0]))
        outcomes.append("ok")
    assert "refused" in outcomes  # some seeds miss a patient of s3


def test_group_dro_matches_hand_computation() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 1, requires_grad=True)
    labels = torch.tensor([[1.0], [0.0], [1.0], [0.0], [1.0], [float("nan")]])
    valid = ~labels.isnan()
    group = torch.tensor([0, 0, 1, 1, 1, 1])
    obj = GroupDROObjective(3, step_size=0.5)
    loss = obj(
        logits, labels, valid, {"group": group, "weight": torch.ones(6), "index": torch.arange(6)}
    )
    per = F.binary_cross_entropy_with_logits(
        logits[:5, 0], labels[:5, 0], reduction="none"
    ).detach()
    l0, l1 = per[:2].mean(), per[2:5].mean()
    q = torch.tensor([np.exp(0.5 * l0.item()), np.exp(0.5 * l1.item()), 1.0]) / 3
    q = (q / q.sum()).float()
    assert torch.allclose(obj.q, q.float(), atol=1e-6)
    assert torch.isclose(loss, q[0] * l0 + q[1] * l1, atol=1e-6)
    loss.backward()
    assert logits.grad is not None and logits.grad[5].abs().sum() == 0


def _bce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Binary cross-entropy with logits, by hand (float64)."""
    return np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))


def test_group_dro_uses_the_per_sample_weights_within_each_group() -> None:
    # weights below 1 (reweight gives large groups < 1) and above 1 (JTT's weight mode)
    rng = np.random.default_rng(3)
    z = rng.normal(size=(8, 2))
    y = (rng.random((8, 2)) < 0.5).astype(float)
    y[2, 1] = np.nan  # a missing label: that row's loss is the mean over its other task
    group = np.array([0, 0, 0, 1, 1, 2, 2, -1])
    w = np.array([6.0, 1.0, 0.5, 0.25, 0.5, 2.0, 1.0, 9.0])
    eta = 0.3
    per = np.nanmean(np.where(np.isnan(y), np.nan, _bce(z, np.nan_to_num(y))), axis=1)
    means = np.array([(w * per)[group == g].sum() / w[group == g].sum() for g in range(3)])
    q = np.exp(eta * means) / 3
    q /= q.sum()
    obj = GroupDROObjective(3, step_size=eta)
    logits = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    labels = torch.tensor(y, dtype=torch.float32)
    batch = {"group": torch.tensor(group), "weight": torch.tensor(w, dtype=torch.float32)}
    loss = obj(logits, labels, ~labels.isnan(), batch)
    np.testing.assert_allclose(obj.q.numpy(), q, rtol=1e-5)
    np.testing.assert_allclose(float(loss.detach()), float((q * means).sum()), rtol=1e-5)
    # the unweighted mean would give another loss: the weights matter
    plain = np.array([per[group == g].mean() for g in range(3)])
    assert abs(float(loss.detach()) - float((q * plain).sum())) > 1e-2
    # gradient of sum_g q_g * weighted mean_g (q held fixed), by hand
    loss.backward()
    coef = np.zeros(8)
    for g in range(3):
        rows = group == g
        coef[rows] = q[g] * w[rows] / w[rows].sum()
    n_valid = (~np.isnan(y)).sum(1)
    sig = 1 / (1 + np.exp(-z))
    grad = np.where(np.isnan(y), 0.0, (sig - np.nan_to_num(y)) * (coef / n_valid)[:, None])
    assert logits.grad is not None
    np.testing.assert_allclose(logits.grad.numpy(), grad, rtol=1e-4, atol=1e-7)


def test_group_dro_with_unit_weights_equals_no_weights() -> None:
    # all weights 1 (every strategy but reweight / JTT's weight mode): bitwise the loss and q
    # of the plain group means, as before the weights were read
    torch.manual_seed(1)
    logits = torch.randn(16, 2)
    labels = (torch.rand(16, 2) < 0.4).float()
    labels[3, 0] = float("nan")
    valid = ~labels.isnan()
    group = torch.tensor([0, 1, 2, 3] * 4)
    group[5] = -1
    a, b = GroupDROObjective(4, step_size=0.2), GroupDROObjective(4, step_size=0.2)
    for _ in range(3):
        la = a(logits, labels, valid, {"group": group, "weight": torch.ones(16)})
        lb = b(logits, labels, valid, {"group": group})
        assert torch.equal(la, lb) and torch.equal(a.q, b.q)
    per = (
        F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(labels), reduction="none")
        * valid
    ).sum(1) / valid.sum(1)
    fresh = GroupDROObjective(4, step_size=0.2)
    loss = fresh(logits, labels, valid, {"group": group, "weight": torch.ones(16)})
    means = torch.stack([per[group == g].mean() for g in range(4)])
    q = torch.exp(0.2 * means) / 4
    q = q / q.sum()
    assert torch.allclose(loss, (q * means).sum(), atol=1e-6)


def test_group_dro_upweights_worst_group_over_steps() -> None:
    obj = make_group_dro({"n_groups": 2, "step_size": 0.1})
    logits = torch.tensor([[3.0], [-3.0], [-3.0], [3.0]])
    labels = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    batch = {"group": torch.tensor([0, 0, 1, 1])}
    for _ in range(10):
        obj(logits, labels, torch.ones_like(labels, dtype=torch.bool), batch)
    assert obj.q[1] > 0.9
    with pytest.raises(ParameterError, match="n_groups"):
        make_group_dro({})
    with pytest.raises(ParameterError, match="step_size"):
        GroupDROObjective(2, step_size=0)


def test_group_dro_under_bf16_autocast_updates_q_as_in_float32() -> None:
    """The engine calls the objective on bf16 logits (``precision: bf16``, or ``auto`` on a
    CPU or GPU with native bf16): the update must not round ``exp(0.01 * loss_g)`` to the
    same bf16 value for every group (``q`` stayed uniform: 1/3 each)."""
    logits = torch.tensor([[0.1], [-0.2], [0.05], [0.3], [-0.1], [0.2]])  # losses ~0.6-0.8
    labels = torch.tensor([[1.0], [0.0], [0.0], [1.0], [0.0], [0.0]])
    batch = {"group": torch.tensor([0, 0, 1, 1, 2, 2])}
    valid = torch.ones_like(labels, dtype=torch.bool)
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        obj = GroupDROObjective(3, step_size=0.01)
        for _ in range(200):
            loss = obj(logits.to(dtype), labels, valid, batch)
        runs[dtype] = (obj.q.clone(), loss)
    q32, qbf = runs[torch.float32][0], runs[torch.bfloat16][0]
    assert qbf.dtype == torch.float32 and runs[torch.bfloat16][1].dtype == torch.float32
    assert not torch.allclose(qbf, torch.full((3,), 1 / 3), atol=1e-3)  # q moved
    # bf16 logits are rounded inputs (about 3 significant digits): q follows fp32 closely
    torch.testing.assert_close(qbf, q32, atol=5e-3, rtol=0)
    assert int(qbf.argmax()) == int(q32.argmax())


def test_group_count_report() -> None:
    m = make_manifest()
    ids, names = assign_groups(group_keys(m, ["sex"]))
    out = resample_manifest(m, ids, "upsample", target="max")
    table = group_count_table(m.assign(group=ids), out, names)
    assert list(table["key"]) == ["sex=F", "sex=M"]
    assert table["n_after"].nunique() == 1 and (table["n_before"] <= table["n_after"]).all()
    assert (table["patients_after"] == table["patients_before"]).all()
    fig = plot_group_counts(table)
    assert len(fig.axes[0].patches) == 4


def test_group_dro_registered_with_training_and_resumes() -> None:
    from cxr_spurious.training import objectives

    obj = objectives.make_objective(
        "group_dro", np.zeros((6, 1)), np.array([0, 0, 1, 2, 2, -1]), {"step_size": 0.2}
    )
    assert isinstance(obj, GroupDROObjective) and obj.n_groups == 3
    labels = torch.tensor([[1.0], [0.0], [1.0], [0.0], [1.0], [0.0]])
    batch = {"group": torch.tensor([0, 0, 1, 2, 2, -1])}
    obj(torch.zeros(6, 1), labels, torch.ones(6, 1, dtype=torch.bool), batch)
    fresh = objectives.make_objective(
        "group_dro", np.zeros((6, 1)), np.array([0, 0, 1, 2, 2, -1]), {"step_size": 0.2}
    )
    fresh.load_state_dict(obj.state_dict())
    assert torch.equal(fresh.q, obj.q)
    with pytest.raises(ParameterError, match="'group' column"):
        objectives.make_objective("group_dro", np.zeros((2, 1)), np.array([-1, -1]), {})


def test_george_refuses_a_number_of_components_below_one() -> None:
    # n_components <= 0 silently became 1 PCA dimension (max(1, ...))
    m = make_manifest(n_patients=60)
    emb = _embeddings(m)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ParameterError, match="^parameter 'n_components': .*>= 1") as err:
            discover_groups(m, emb, TASK, n_clusters=2, n_components=bad)  # type: ignore[arg-type]
        assert err.value.key == "n_components"
    assert discover_groups(m, emb, TASK, n_clusters=2, n_components=1).ge(0).any()


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"step_size": float("nan")}, "step_size"),
        ({"step_size": float("inf")}, "step_size"),
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": -0.1}, "step_size"),
        ({"step_size": True}, "step_size"),
        ({"size_adjustment": -2.0}, "size_adjustment"),
        ({"size_adjustment": float("nan")}, "size_adjustment"),
        ({"size_adjustment": float("inf")}, "size_adjustment"),
    ],
)
def test_group_dro_refuses_settings_out_of_range(params: dict[str, float], key: str) -> None:
    # a NaN / inf step size made q and the loss NaN; a negative or NaN size adjustment was
    # silently no adjustment
    from cxr_spurious.training import objectives

    labels, groups = np.zeros((4, 1)), np.array([0, 0, 0, 1])
    with pytest.raises(ParameterError, match="finite number") as err:
        objectives.make_objective("group_dro", labels, groups, params)
    assert err.value.key == f"training.objective_params.{key}"
    with pytest.raises(ParameterError) as err:
        make_group_dro({"n_groups": 2, "group_sizes": [3, 1], **params})
    assert err.value.key == f"training.group_dro.{key}"
    with pytest.raises(ParameterError):
        GroupDROObjective(2, group_sizes=torch.tensor([3, 1]), **params)  # type: ignore[arg-type]
    ok = objectives.make_objective(
        "group_dro", labels, groups, {"step_size": 0.5, "size_adjustment": 0.0}
    )
    assert isinstance(ok, GroupDROObjective) and ok.step_size == 0.5
