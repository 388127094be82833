"""Project localization tables: one patient bootstrap, checked against a slow reference."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ContractError
from cxr_spurious.localization import summary
from cxr_spurious.stats.bootstrap import BootstrapDropError


def slow_patient_ci(values, patients, n_boot, seed, level=0.95):
    """Obviously-correct reference: per replicate draw patients (numpy's default_rng, sorted
    patient labels, ``integers(0, P, P)``), take all their rows, mean of the finite values."""
    rng = np.random.default_rng(seed)
    labels = sorted(set(patients))
    rows_of = {p: [i for i, q in enumerate(patients) if q == p] for p in labels}
    reps = []
    for _ in range(n_boot):
        picked = rng.integers(0, len(labels), size=len(labels))
        drawn = [values[i] for k in picked for i in rows_of[labels[k]]]
        finite = [v for v in drawn if np.isfinite(v)]
        reps.append(sum(finite) / len(finite) if finite else np.nan)
    kept = [r for r in reps if np.isfinite(r)]
    alpha = (1 - level) / 2
    return (
        float(np.quantile(kept, alpha)),
        float(np.quantile(kept, 1 - alpha)),
        len(reps) - len(kept),
    )


def _per_map(n_patients=12, cxr_per_patient=3, seed=0):
    """Patients with several CXRs whose IoUs are strongly correlated within the patient."""
    rng = np.random.default_rng(seed)
    rows, manifest = [], []
    for p in range(n_patients):
        level = rng.random()
        for k in range(cxr_per_patient):
            cxr = f"img{p:02d}x{k}"  # not CheXpert-style: the patient comes from the manifest
            manifest.append({"image_id": cxr, "patient_id": f"P{p:02d}"})
            for task in ("Edema", "Cardiomegaly"):
                iou = float(np.clip(level + rng.normal(0, 0.02), 0, 1))
                rows.append(
                    {
                        "set": "erm.gradcam",
                        "model": "erm",
                        "method": "gradcam",
                        "image_id": cxr,
                        "task": task,
                        "in_gt": True,
                        "iou_tp": iou if rng.random() < 0.8 else np.nan,
                        "iou_full": iou,
                        "hit": float(level > 0.5),
                    }
                )
    return pd.DataFrame(rows), pd.DataFrame(manifest)


def test_summary_cis_resample_patients_like_the_slow_reference():
    per_map, manifest = _per_map()
    table = summary.summary_table(per_map, n_boot=300, seed=3, by=("set",), manifest=manifest)
    overall = table[table["task"] == "overall"].iloc[0]
    assert (
        overall["cluster_unit"] == "patient"
        and overall["n_clusters"] == 12
        and overall["n_cxr"] == 36
    )
    order = np.arange(len(per_map))  # the cell's rows in table order
    patients = per_map["image_id"].map(manifest.set_index("image_id")["patient_id"]).to_numpy()
    for metric, col in (("miou_tp", "iou_tp"), ("miou_full", "iou_full"), ("hit_rate", "hit")):
        lo, hi, dropped = slow_patient_ci(
            per_map[col].to_numpy()[order], list(patients[order]), 300, 3
        )
        assert overall[f"{metric}_lo"] == pytest.approx(lo, abs=1e-12)
        assert overall[f"{metric}_hi"] == pytest.approx(hi, abs=1e-12)
        assert overall[f"{metric}_dropped"] == dropped == 0
    edema = per_map[per_map["task"] == "Edema"]
    lo, hi, _ = slow_patient_ci(
        edema["iou_tp"].to_numpy(),
        list(edema["image_id"].map(manifest.set_index("image_id")["patient_id"])),
        300,
        3,
    )
    row = table[table["task"] == "Edema"].iloc[0]
    assert (row["miou_tp_lo"], row["miou_tp_hi"]) == (
        pytest.approx(lo, abs=1e-12),
        pytest.approx(hi, abs=1e-12),
    )
    # Resampling CXRs instead (the old behaviour) gives a narrower, wrong interval here.
    by_cxr = summary.bootstrap_means(per_map, n_boot=300, seed=3)
    assert by_cxr["cluster_unit"] == "cxr"
    assert (by_cxr["miou_full_hi"] - by_cxr["miou_full_lo"]) < 0.8 * (
        overall["miou_full_hi"] - overall["miou_full_lo"]
    )


def test_same_seed_same_cis_and_subgroups_use_patients():
    per_map, manifest = _per_map(seed=1)
    manifest["sex"] = np.where(manifest["patient_id"].str[1:].astype(int) % 2 == 0, "F", "M")
    a = summary.summary_table(per_map, n_boot=100, seed=5, by=("set",), manifest=manifest)
    b = summary.summary_table(per_map, n_boot=100, seed=5, by=("set",), manifest=manifest)
    pd.testing.assert_frame_equal(a, b)
    sub = summary.subgroup_table(per_map, manifest, ["sex"], n_boot=100, seed=5)
    assert set(sub["cluster_unit"]) == {"patient"} and set(
        sub.loc[sub["task"] == "overall", "n_clusters"]
    ) == {6.0}


def test_patient_clusters_sources():
    ids = pd.Series(
        [
            "patient00012_study1_view1_frontal",
            "patient00012_study2_view1_frontal",
            "patient00013_study1_view1_frontal",
        ]
    )
    labels, unit = summary.patient_clusters(ids, {})  # chexlocalize env: no manifest DataFrame
    assert unit == "patient" and list(labels) == ["patient00012", "patient00012", "patient00013"]
    manifest = pd.DataFrame({"image_id": ids, "patient_id": ["a", "a", "b"]})
    assert list(summary.patient_clusters(ids, manifest)[0]) == ["a", "a", "b"]
    with pytest.raises(ContractError, match=r"no patient_id for 1 CXR\(s\).*'other'"):
        summary.patient_clusters(pd.Series([*ids, "other"]), manifest)


def test_unknown_patients_fall_back_to_cxrs_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="cxr_spurious.localization.summary"):
        labels, unit = summary.patient_clusters(pd.Series(["1.2.840.1", "1.2.840.2"]), None)
    assert unit == "cxr" and list(labels) == ["1.2.840.1", "1.2.840.2"]
    assert "CXRs are resampled, not patients" in caplog.text


def test_too_many_undefined_replicates_is_an_error_naming_the_cell():
    rng = np.random.default_rng(2)
    rows = []
    for p in range(40):
        for task in ("Edema",):
            rows.append(
                {
                    "set": "s",
                    "image_id": f"patient{p:05d}_study1_view1_frontal",
                    "task": task,
                    "in_gt": True,
                    "iou_tp": float(rng.random()) if p < 5 else np.nan,
                    "iou_full": 0.5,
                    "hit": 1.0,
                }
            )
    per_map = pd.DataFrame(rows)
    # 5 of 40 patients carry an IoU: (35/40)^40 = 0.5 % of the replicates draw none -> fine at 5 %
    ok = summary.summary_table(per_map, n_boot=2000, seed=0, by=("set",))
    assert ok.loc[0, "miou_tp_dropped"] >= 0 and np.isfinite(ok.loc[0, "miou_tp_lo"])
    # at a 0.1 % limit the same cell is an error that names it and the counts
    dropped = int(ok.loc[0, "miou_tp_dropped"])
    assert 0 < dropped < 100
    with pytest.raises(
        BootstrapDropError,
        match=rf"s/Edema: miou_tp: {dropped} of 2000 bootstrap replicates are undefined",
    ):
        summary.summary_table(per_map, n_boot=2000, seed=0, by=("set",), max_dropped_share=0.001)


def test_metric_on_too_few_patients_gets_no_ci_and_a_note():
    rows = [
        {
            "set": "s",
            "image_id": f"patient{p:05d}_study1_view1_frontal",
            "task": "Edema",
            "in_gt": True,
            "iou_tp": 0.3 if p < 2 else np.nan,
            "iou_full": 0.1 * p,
            "hit": 1.0,
        }
        for p in range(10)
    ]
    table = summary.summary_table(pd.DataFrame(rows), n_boot=200, seed=0, by=("set",))
    row = table.iloc[0]
    assert (
        row["miou_tp"] == pytest.approx(0.3)
        and np.isnan(row["miou_tp_lo"])
        and np.isnan(row["miou_tp_hi"])
    )
    assert row["ci_note"] == "no CI (finite in < 5 patients): miou_tp"
    assert np.isfinite(row["miou_full_lo"])


def test_paired_comparisons_resample_patients():
    per_map, manifest = _per_map(seed=4)
    other = per_map.assign(
        set="seg.gradcam",
        iou_tp=per_map["iou_tp"] * 0.5,
        iou_full=per_map["iou_full"] * 0.5,
        hit=0.0,
    )
    both = pd.concat([per_map, other], ignore_index=True)
    out = summary.paired_comparisons(
        both, [["erm.gradcam", "seg.gradcam"]], n_boot=200, seed=1, manifest=manifest
    )
    row = out[(out["task"] == "overall") & (out["metric"] == "miou_full")].iloc[0]
    assert row["cluster_unit"] == "patient" and row["n_clusters"] == 12 and row["diff_dropped"] == 0
    left = (
        per_map.set_index(["image_id", "task"])
        .loc[other.set_index(["image_id", "task"]).index]
        .reset_index()
    )
    diff = (left["iou_full"] * 0.5).to_numpy()
    pats = list(left["image_id"].map(manifest.set_index("image_id")["patient_id"]))
    lo, hi, _ = slow_patient_ci(diff, pats, 200, 1)
    assert (row["diff_lo"], row["diff_hi"]) == (
        pytest.approx(lo, abs=1e-12),
        pytest.approx(hi, abs=1e-12),
    )


def _reference_inputs(per_map: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A model table with the counts the reports need, and a human benchmark on every CXR."""
    model = per_map.assign(pred_area=5, gt_area=10, intersection=3, n_pixels=100)
    hb = per_map.drop(columns=["set", "model", "method"]).assign(
        iou_tp=lambda t: (t["iou_tp"] * 0.5 + 0.4).clip(upper=1),
        iou_full=lambda t: (t["iou_full"] * 0.5 + 0.4).clip(upper=1),
        hit=1.0,
    )
    return model, hb


def test_percentage_decrease_is_paired_on_the_shared_cxrs():
    """With ``missing_maps: evaluated`` the model's per-CXR table holds fewer CXRs than the
    human benchmark's: both are cut to the shared CXRs before the same-seed bootstrap, so
    replicate r of each resamples the same CXRs (the reference pairs its two bootstrap files
    row by row, which is only that when both list the same CXRs)."""
    from cxr_spurious.pipelines.localization import nodes

    per_map, _ = _per_map()
    model, hb = _reference_inputs(per_map)
    kept = sorted(model["image_id"].unique())[5:]  # the model was evaluated on fewer CXRs
    model = model[model["image_id"].isin(kept)]
    reports = nodes.build_reference_reports(model, hb, n_boot=200, seed=0, true_pos_only=True)
    for metric, col in (("iou", "iou_tp"), ("hitmiss", "hit")):
        pred_bs = summary.reference_bootstrap(summary.per_cxr_table(model, col), 200, 0)
        hb_shared = summary.per_cxr_table(hb[hb["image_id"].isin(kept)], col)
        hb_bs = summary.reference_bootstrap(hb_shared, 200, 0)
        expected = summary.percentage_decrease(pred_bs, hb_bs).reset_index()
        pd.testing.assert_frame_equal(reports[f"{metric}_pct_decrease"], expected)
    # on the same CXRs (the reference's own case) the two bootstrap files are paired as is
    model_all, _ = _reference_inputs(per_map)
    full = nodes.build_reference_reports(model_all, hb, n_boot=200, seed=0, true_pos_only=True)
    expected = summary.percentage_decrease(
        full["iou_bootstrap_results_per_cxr"], full["iou_humanbenchmark_bootstrap_results_per_cxr"]
    ).reset_index()
    pd.testing.assert_frame_equal(full["iou_pct_decrease"], expected)


def test_unpairable_percentage_decrease_is_an_error():
    per_map, _ = _per_map(n_patients=3)
    pred = summary.per_cxr_table(per_map, "iou_tp")
    other = pred.assign(img_id=[f"other{i}" for i in range(len(pred))])
    with pytest.raises(ContractError, match="share 0 CXR"):
        summary.paired_percentage_decrease(pred, other, n_boot=20)
    with pytest.raises(ContractError, match="human benchmark per-CXR table has no 'img_id'"):
        summary.paired_per_cxr(pred, pred.drop(columns=["img_id"]))
    bs = summary.reference_bootstrap(pred, n_boot=20)
    with pytest.raises(ContractError, match="20 model and 10 human-benchmark"):
        summary.percentage_decrease(bs, bs.iloc[:10])


def test_a_paired_difference_over_few_patients_has_no_ci_and_no_p_value():
    """One patient resampled gives the same difference in every replicate: before the
    few-patient rule that read as p = 2 / (B + 1), "significant" for any difference."""
    per_map, manifest = _per_map(seed=4)
    few = manifest.assign(patient_id=np.where(np.arange(len(manifest)) < 3, "p0", "p1"))
    other = per_map.assign(set="seg.gradcam", iou_full=per_map["iou_full"] * 0.5)
    both = pd.concat([per_map, other], ignore_index=True)
    out = summary.paired_comparisons(
        both, [["erm.gradcam", "seg.gradcam"]], n_boot=200, seed=1, manifest=few
    )
    row = out[(out["task"] == "overall") & (out["metric"] == "miou_full")].iloc[0]
    assert row["n_clusters"] == 2 and row["diff"] > 0
    assert np.isnan(row["diff_lo"]) and np.isnan(row["diff_hi"]) and np.isnan(row["p_value"])
    assert row["ci_note"] == "no CI or p-value: 2 patients (fewer than 5)"
    many = summary.paired_comparisons(
        both, [["erm.gradcam", "seg.gradcam"]], n_boot=200, seed=1, manifest=manifest
    )
    assert (many["ci_note"] == "").all() and many["p_value"].notna().all()


def test_paired_bootstrap_needs_five_clusters_or_rows():
    from cxr_spurious.stats.bootstrap import paired_bootstrap

    values = np.arange(8, dtype=float)
    a = lambda i: float(values[i].mean())  # noqa: E731
    b = lambda i: float(values[i].mean() - 1.0)  # noqa: E731
    res, p = paired_bootstrap(a, b, 8, n_boot=50, clusters=[0, 0, 0, 0, 1, 1, 2, 3])
    assert res.estimate == pytest.approx(1.0) and np.isnan(res.lo) and np.isnan(p)
    res, p = paired_bootstrap(a, b, 4, n_boot=50)
    assert np.isnan(res.lo) and np.isnan(p)
    res, p = paired_bootstrap(a, b, 8, n_boot=50, clusters=[0, 0, 1, 1, 2, 2, 3, 4])
    assert res.lo == pytest.approx(1.0) and p == pytest.approx(2 / 51)
