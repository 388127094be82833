"""Small synthetic inputs of the study report (fast: no Kedro run), shared with the browser test."""

from __future__ import annotations

import io

import pandas as pd
from matplotlib.figure import Figure

from cxr_spurious.report.study import StudyReportInputs

MODELS = ("erm", "box", "seg")


def png(label: str, colour: str = "tab:blue") -> bytes:
    """A small PNG figure with a bar chart and ``label`` as title."""
    fig = Figure(figsize=(3, 2), dpi=60)
    ax = fig.subplots()
    ax.bar([0, 1, 2], [1, 3, 2], color=colour)
    ax.set_title(label)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _ci(value: float) -> dict[str, float]:
    return {"": value, "_lo": value - 0.05, "_hi": value + 0.05}


def findings() -> pd.DataFrame:
    rows = []
    for m, auroc, robust in zip(MODELS, (0.66, 0.98, 0.97), (0.20, 0.97, 0.96)):
        row = {
            "model": m,
            "supervision": m,
            "architecture": "unet_small",
            "task": "Pneumothorax",
            "n_test": 431,
        }
        for name, v in (("auroc", auroc), ("robust_auroc", robust), ("cf_drop_no_tube", 0.3)):
            row.update({f"{name}{k}": x for k, x in _ci(v).items()})
            row[f"{name}_dropped"] = 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def dataset_report() -> pd.DataFrame:
    rows = []
    for split, n in (("train", 100), ("val", 30), ("test", 40)):
        for label, share in (("negative", 0.7), ("positive", 0.3)):
            k = int(n * share)
            rows.append([split, "Pneumothorax", label, "all", "all", k, k])
            for sex, half in (("F", 0.5), ("M", 0.5)):
                k = int(n * share * half)
                rows.append([split, "Pneumothorax", label, "sex", sex, k, k])
    return pd.DataFrame(
        rows, columns=["split", "task", "label", "attribute", "value", "n_images", "n_patients"]
    )


def localization_summary() -> pd.DataFrame:
    rows = []
    for m in MODELS:
        row = {
            "set": f"{m}.gradcam",
            "model": m,
            "method": "gradcam",
            "task": "Pneumothorax",
            "n_cxr": 40,
        }
        for name, v in (("miou_tp", 0.3), ("hit_rate", 0.5), ("relevance_mass", 0.4)):
            row.update({f"{name}{k}": x for k, x in _ci(v).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def human_benchmark() -> dict[str, pd.DataFrame]:
    table = pd.DataFrame(
        {
            "Index": ["Pneumothorax", "Average"],
            "hb": [0.82, 0.82],
            "pred": [0.06, 0.06],
            "pct_diff": [92.2, 92.2],
            "pct_diff_lower": [90.5, 90.5],
            "pct_diff_upper": [93.8, 93.8],
        }
    )
    out = {}
    for m in MODELS:
        out[f"{m}.gradcam/iou_pct_decrease"] = table
        out[f"{m}.gradcam/hitmiss_pct_decrease"] = table.assign(hb=0.9)
    return out


def robustness_summary() -> pd.DataFrame:
    rows = []
    for m in MODELS:
        row = {"model": m, "task": "Pneumothorax", "worst_group": "race"}
        for name, v in (("auroc", 0.9), ("worst_group_auroc", 0.8), ("fnr_gap", 0.1)):
            row.update({f"{name}{k}": x for k, x in _ci(v).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def calibration() -> pd.DataFrame:
    one = pd.DataFrame(
        {
            "task": "Pneumothorax",
            "attribute": ["all", "sex"],
            "group": ["all", "F"],
            "n": [40, 20],
            "ece": [0.1, 0.2],
            "ece_lo": [0.05, 0.1],
            "ece_hi": [0.15, 0.3],
            "ece_dropped": [0, 0],
        }
    )
    return pd.concat(
        [one.assign(model=m)[["model", *one.columns]] for m in MODELS], ignore_index=True
    )


def fairness_gaps() -> pd.DataFrame:
    one = pd.DataFrame(
        {
            "task": "Pneumothorax",
            "attribute": ["sex", "sex"],
            "metric": ["fnr_gap", "equalized_odds_difference"],
            "estimate": [0.1, 0.2],
            "lo": [0.0, 0.1],
            "hi": [0.2, 0.3],
            "n_groups": [2, 2],
        }
    )
    return pd.concat(
        [one.assign(model=m)[["model", *one.columns]] for m in MODELS], ignore_index=True
    )


def headline_table() -> pd.DataFrame:
    rows = []
    for v in ("erm", "cmp_upsample", "cmp_jtt"):
        row = {"variant": v, "task": "Pneumothorax"}
        row.update({f"robust_tube_auroc{k}": x for k, x in _ci(0.5).items()})
        rows.append(row)
    return pd.DataFrame(rows)


SEEDS_NOTE = (
    "95% t interval across 3 training seeds (0,1,2), cut to the metric's range; test-sampling "
    "CIs of each seed are in headline_table_per_seed"
)
PAIRED_NOTE = (
    "95% paired t interval over training seeds of variant - erm (same seed and task), cut to "
    "the range of a difference; p: paired t-test; p_adj: Holm (family-wise error) over each "
    "metric and task; the intervals are not adjusted; <metric>_n: the pairs where the metric "
    "is defined on both sides (n_pairs counts every paired seed)"
)


def headline_table_seeds() -> pd.DataFrame:
    """``headline_table_seeds`` of three variants over seeds 0, 1, 2 (columns as written);
    cmp_jtt's worst-group AUROC is defined on 2 of the 3 seeds."""
    return pd.DataFrame(
        {
            "variant": ["erm", "cmp_upsample", "cmp_jtt"],
            "task": "Pneumothorax",
            "n_seeds": 3,
            "seeds": "0,1,2",
            "worst_group_auroc": [0.4122, 0.3867, 0.6023],
            "worst_group_auroc_lo": [0.2964, 0.2530, 0.4705],
            "worst_group_auroc_hi": [0.5279, 0.5204, 0.7342],
            "worst_group_auroc_n": [3, 3, 2],
            "robust_tube_auroc": [0.0648, 0.0280, 0.5156],
            "robust_tube_auroc_lo": [0.0, 0.0, 0.3645],  # cut to [0, 1]
            "robust_tube_auroc_hi": [0.2492, 0.0955, 0.6666],
            "robust_tube_auroc_n": [3, 3, 3],
            "ci_note": SEEDS_NOTE,
        }
    )


def headline_paired_differences(*, adjusted: bool = True) -> pd.DataFrame:
    """``headline_paired_differences`` of two variants minus erm over seeds 0, 1, 2.

    ``adjusted=False``: as written before the multiplicity adjustment (no ``<m>_p_adj``,
    and a note without ``p_adj``). cmp_upsample's worst-group AUROC has no adjusted p (NaN)
    and is defined on 2 of the 3 pairs; cmp_jtt's is below 0.001 before and after adjusting.
    """
    table = pd.DataFrame(
        {
            "variant": ["cmp_upsample", "cmp_jtt"],
            "task": "Pneumothorax",
            "reference": "erm",
            "n_pairs": 3,
            "seeds": "0,1,2",
            "worst_group_auroc": [-0.0255, 0.19],
            "worst_group_auroc_lo": [-0.1027, 0.16],
            "worst_group_auroc_hi": [0.0518, 0.22],
            "worst_group_auroc_p": [0.2916, 0.0004],
            "worst_group_auroc_p_adj": [float("nan"), 0.0008],
            "worst_group_auroc_n": [2, 3],
            "robust_tube_auroc": [-0.0368, 0.4508],
            "robust_tube_auroc_lo": [-0.1574, 0.3012],
            "robust_tube_auroc_hi": [0.0838, 0.6004],
            "robust_tube_auroc_p": [0.3197, 0.00214],
            "robust_tube_auroc_p_adj": [0.6394, 0.0231],
            "robust_tube_auroc_n": [3, 3],
            "ci_note": PAIRED_NOTE,
        }
    )
    if adjusted:
        return table
    note = PAIRED_NOTE.replace(
        "p_adj: Holm (family-wise error) over each metric and task; the intervals are "
        "not adjusted; ",
        "",
    )
    return table.drop(columns=[c for c in table.columns if c.endswith("_p_adj")]).assign(
        ci_note=note
    )


def sweep_summary() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "artefact": ["tube", "tube"],
            "strength": ["none", "strong"],
            "supervision": ["erm", "erm"],
            "robust_auroc": [0.9, 0.3],
            "robust_auroc_lo": [0.85, 0.2],
            "robust_auroc_hi": [0.95, 0.4],
        }
    )


def shortcut_detection() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "method": ["gradcam"],
            "artefact": ["tube"],
            "detection_auroc": [0.8],
            "detection_auroc_lo": [0.7],
            "detection_auroc_hi": [0.9],
        }
    )


def inputs(*, optional: bool = True) -> StudyReportInputs:
    """Every input of the report; ``optional=False`` leaves out comparison and sweep tables."""
    colours = dict(zip(MODELS, ("tab:red", "tab:green", "tab:purple")))
    return StudyReportInputs(
        dataset_report=dataset_report(),
        example_grid=png("example grid", "0.4"),
        study_findings=findings(),
        study_findings_figure=png("findings", "tab:orange"),
        overlays={f"{m}.gradcam": png(f"{m}.gradcam overlays", colours[m]) for m in MODELS},
        localization_summary=localization_summary(),
        human_benchmark=human_benchmark(),
        regression_forest_plot=png("forest plot", "tab:cyan"),
        robustness_summary=robustness_summary(),
        calibration=calibration(),
        fairness_gaps=fairness_gaps(),
        headline_table=headline_table() if optional else None,
        headline_table_seeds=headline_table_seeds() if optional else None,
        headline_paired_differences=headline_paired_differences() if optional else None,
        sweep_summary=sweep_summary() if optional else None,
        shortcut_detection=shortcut_detection() if optional else None,
    )
