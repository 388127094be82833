"""``study_findings``: one row per model with every headline metric and its CI.

Per model: overall and robust (tube-subgroup) AUROC from training; for each saliency
method, localisation of the true pathology (mIoU, hit rate, share of saliency mass on the
lesion), the share of saliency mass on the chest tube, and the percentage decrease from the
(simulated) human benchmark; and the counterfactual tests (probability drop without the
tube / without the lesion, AUROC on tube-free renders).

Every CI of the table is at one level, ``ci_level`` (a column, with the replicates of each
CI family: ``test_n_boot`` for the AUROC, robust and reverse AUROC copied from training's
``test_metrics``, ``study_n_boot`` for the study's own saliency and counterfactual CIs);
``training_ci_settings`` finds the level training used, so a table never mixes two levels.

Every CI comes with ``<metric>_dropped``: its undefined bootstrap replicates (a resample
where the statistic does not exist, e.g. a zero human denominator). Above
``max_dropped_share`` of them the CI is an error (``BootstrapDropError`` naming the model's
metric), never an interval of the resamples where the statistic happened to exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxr_spurious.errors import ContractError, StaleOutputError
from cxr_spurious.sources.contract import patient_ids
from cxr_spurious.stats.bootstrap import (
    MAX_DROPPED_SHARE,
    bootstrap,
    check_ci_level,
    check_max_dropped_share,
    check_n_boot,
)
from cxr_spurious.training.provenance import (
    MODEL_DIGEST_COLUMN,
    MODEL_FINGERPRINT_KEY,
    RERUN_AFTER_RETRAINING,
    model_digest,
    recorded_fingerprint,
)

TUBE_MASS_COLUMN = "shortcut_Chest Tube"
TUBE_AUROC_COLUMN = "shortcut_auroc_Chest Tube"
# estimate, lo, hi, dropped replicates (NaN: no bootstrap ran)
_NAN4 = (np.nan, np.nan, np.nan, np.nan)


def _with_ci(name: str, values: tuple[float, float, float, float]) -> dict[str, float]:
    est, lo, hi, dropped = values
    return {name: est, f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_dropped": dropped}


def _bootstrap4(
    stat: Callable[[np.ndarray], float],
    n: int,
    clusters: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    level: float,
    max_dropped_share: float,
    label: str,
) -> tuple[float, float, float, float]:
    """(estimate, lo, hi, dropped replicates) of a patient-cluster bootstrap of ``stat``."""
    res = bootstrap(
        stat,
        n,
        n_boot=n_boot,
        seed=seed,
        clusters=clusters,
        level=level,
        max_dropped_share=max_dropped_share,
        desc=label,
    )
    return res.estimate, res.lo, res.hi, float(res.n_dropped)


def _mean_ci(
    values: np.ndarray,
    clusters: np.ndarray,
    *,
    n_boot: int,
    seed: int,
    level: float,
    max_dropped_share: float,
    label: str,
) -> tuple[float, float, float, float]:
    keep = np.isfinite(values)
    values, clusters = values[keep], clusters[keep]
    if values.size == 0:
        return _NAN4
    return _bootstrap4(
        lambda i: float(values[i].mean()),
        values.size,
        clusters,
        n_boot=n_boot,
        seed=seed,
        level=level,
        max_dropped_share=max_dropped_share,
        label=label,
    )


def saliency_findings(
    per_map: pd.DataFrame,
    manifest: pd.DataFrame,
    human: pd.DataFrame | None,
    *,
    n_boot: int,
    seed: int,
    level: float = 0.95,
    max_dropped_share: float = MAX_DROPPED_SHARE,
    label: str = "",
) -> dict[str, float]:
    """Localisation and shortcut metrics of one heatmap set, with patient-clustered CIs.

    Args:
        per_map: The set's rows of ``localization_per_cxr`` (image_id, task, iou_tp, hit,
            optionally gt, relevance_mass, ``shortcut_Chest Tube`` and
            ``shortcut_auroc_Chest Tube``).
        manifest: For patients and the ``tube`` attribute.
        human: ``localization_human_benchmark`` (image_id, task, iou_tp, hit) or None.
        n_boot: Bootstrap replicates.
        seed: Seed.
        level: CI level.
        max_dropped_share: Largest share of undefined replicates; above it ``BootstrapDropError``.
        label: The set (e.g. ``erm/gradcam``), prefixed to the metric in errors.

    Returns:
        ``miou``, ``hit_rate``, ``lesion_mass``, ``tube_mass`` (images with a tube),
        ``tube_mass_no_finding`` (images with a tube whose task label ``gt`` is 0),
        ``tube_auroc`` (the map as a pixel score for the tube outside the lesion, images with
        a tube) and, with a human benchmark, ``miou_pct_below_human`` and
        ``hit_pct_below_human``, each with ``_lo``/``_hi``/``_dropped``; for ``lesion_mass`` (images
        with a lesion), ``tube_mass`` and ``tube_mass_no_finding`` also ``_n_maps`` and
        ``_n_nonzero`` (the maps the share averages: all-zero maps have no share).
    """
    meta = manifest.set_index("image_id")
    patients = patient_ids(
        per_map["image_id"], manifest, table=f"the maps of {label}" if label else "the maps"
    )
    out: dict[str, float] = {}
    share = check_max_dropped_share(max_dropped_share)
    prefix = f"{label}/" if label else ""
    boot: dict[str, Any] = {
        "n_boot": n_boot,
        "seed": seed,
        "level": level,
        "max_dropped_share": share,
    }
    for name, col in (("miou", "iou_tp"), ("hit_rate", "hit"), ("lesion_mass", "relevance_mass")):
        vals = (
            per_map[col].to_numpy(dtype=float) if col in per_map else np.full(len(per_map), np.nan)
        )
        out.update(_with_ci(name, _mean_ci(vals, patients, label=prefix + name, **boot)))
    if "gt_area" in per_map:
        out.update(
            _mass_counts(
                "lesion_mass",
                per_map,
                "relevance_mass",
                per_map["gt_area"].to_numpy(dtype=float) > 0,
            )
        )
    with_tube = per_map["image_id"].map(meta["tube"]).to_numpy(dtype=float) == 1
    # the label of the map's task (0 = the pathology is absent): the tube is all there is to find
    negative = (
        per_map["gt"].to_numpy(dtype=float) == 0
        if "gt" in per_map
        else np.zeros(len(per_map), dtype=bool)
    )
    for name, col, rows in (
        ("tube_mass", TUBE_MASS_COLUMN, with_tube),
        ("tube_mass_no_finding", TUBE_MASS_COLUMN, with_tube & negative),
        ("tube_auroc", TUBE_AUROC_COLUMN, with_tube),
    ):
        if col in per_map:
            vals = np.where(rows, per_map[col].to_numpy(dtype=float), np.nan)
            out.update(_with_ci(name, _mean_ci(vals, patients, label=prefix + name, **boot)))
        else:
            out.update(_with_ci(name, _NAN4))
        if name != "tube_auroc":
            out.update(_mass_counts(name, per_map, col, rows))
    for name, col in (("miou_pct_below_human", "iou_tp"), ("hit_pct_below_human", "hit")):
        out.update(
            _with_ci(name, _pct_below_human(per_map, human, col, meta, label=prefix + name, **boot))
        )
    return out


def _mass_counts(name: str, per_map: pd.DataFrame, col: str, rows: np.ndarray) -> dict[str, float]:
    """``<name>_n_maps`` (maps in the group) and ``<name>_n_nonzero`` (those with any mass).

    A mass share is undefined for an all-zero map (Grad-CAM after its ReLU often is), so the
    share averages the ``_n_nonzero`` maps only; the two counts show how selective that is.
    """
    n_maps = int(rows.sum())
    nonzero = (
        int(np.isfinite(per_map[col].to_numpy(dtype=float)[rows]).sum()) if col in per_map else 0
    )
    return {f"{name}_n_maps": float(n_maps), f"{name}_n_nonzero": float(nonzero)}


def _pct_below_human(
    per_map: pd.DataFrame,
    human: pd.DataFrame | None,
    col: str,
    meta: pd.DataFrame,
    *,
    n_boot: int,
    seed: int,
    level: float,
    max_dropped_share: float,
    label: str,
) -> tuple[float, float, float, float]:
    """(human - model) / human x 100 on the (image, task) pairs both scored (paired bootstrap).

    Undefined in a replicate whose human mean is 0 (counted in the fourth value).
    """
    if human is None or human.empty or col not in human or col not in per_map:
        return _NAN4
    pairs = per_map[["image_id", "task", col]].merge(
        human[["image_id", "task", col]], on=["image_id", "task"], suffixes=("_model", "_human")
    )
    pairs = pairs.dropna()
    if pairs.empty:
        return _NAN4
    m = pairs[f"{col}_model"].to_numpy(float)
    h = pairs[f"{col}_human"].to_numpy(float)
    clusters = patient_ids(pairs["image_id"], meta.reset_index(), table=f"{label} (human pairs)")

    def pct(i: np.ndarray) -> float:
        denominator = h[i].mean()
        return (
            float((denominator - m[i].mean()) / denominator * 100)
            if denominator > 0
            else float("nan")
        )

    return _bootstrap4(
        pct,
        len(pairs),
        clusters,
        n_boot=n_boot,
        seed=seed,
        level=level,
        max_dropped_share=max_dropped_share,
        label=label,
    )


def model_row(
    model: str,
    variant: Mapping[str, Any],
    test_metrics: Mapping[str, Any],
    task: str,
) -> dict[str, Any]:
    """Identity and AUROC columns of one model from its ``test_metrics``."""
    if task not in test_metrics:
        # a task's entry has an auroc (training's recorded training_config has none)
        tasks = sorted(
            k for k, v in test_metrics.items() if isinstance(v, Mapping) and "auroc" in v
        )
        raise ContractError(f"{model}.test_metrics has no entry for task '{task}'; it has {tasks}")
    entry = test_metrics[task]
    # what was trained (recorded by training) wins over the study's variant parameters;
    # test metrics written before the rename to ``supervision`` hold it as ``method``
    recorded = test_metrics.get("supervision", test_metrics.get("method"))
    supervision = recorded if recorded is not None else variant.get("supervision", model)
    architecture = test_metrics.get("architecture", variant.get("architecture"))
    row: dict[str, Any] = {
        "model": model,
        "supervision": supervision,
        "architecture": architecture,
        "task": task,
        "n_test": test_metrics.get("n_test"),
    }
    for name in ("auroc", "robust_auroc", "reverse_auroc"):
        row.update(
            {
                name: entry.get(name),
                f"{name}_lo": entry.get(f"{name}_lo"),
                f"{name}_hi": entry.get(f"{name}_hi"),
                f"{name}_dropped": entry.get(f"{name}_dropped"),
            }
        )
    row["test_ci_note"] = entry.get("ci_note", "")
    # which trained model the row describes (its settings, data and code): the report
    # compares it with the model's current test_metrics
    row[MODEL_DIGEST_COLUMN] = model_digest(test_metrics)
    return row


# Columns that record how the CIs were made (settings, not findings: not logged as metrics).
CI_SETTING_COLUMNS: tuple[str, ...] = ("ci_level", "test_n_boot", "study_n_boot")


def check_same_model(model: str, per_map: pd.DataFrame, test_metrics: Mapping[str, Any]) -> None:
    """Refuse localization rows of ``model`` computed from another training of it.

    The heatmap sets record the fingerprint of the model artifact they were computed from
    (``model_fingerprint``), and so does ``test_metrics``: a model retrained after its
    saliency maps were computed (``kedro run --pipeline training``, ``torchrun``, then
    ``--pipeline study``) would otherwise get one findings row that mixes the new model's
    AUROCs with the earlier model's saliency results. Rows or records without a
    fingerprint (older files, imported CheXlocalize maps) are not compared.

    Raises:
        StaleOutputError: naming the model, both fingerprints and what to run.
    """
    current = recorded_fingerprint(test_metrics)
    if not current or MODEL_FINGERPRINT_KEY not in per_map:
        return
    other = sorted({str(v) for v in per_map[MODEL_FINGERPRINT_KEY].dropna()} - {current})
    if other:
        methods = sorted(
            per_map.loc[per_map[MODEL_FINGERPRINT_KEY].astype(str).isin(other), "method"]
            .astype(str)
            .unique()
        )
        raise StaleOutputError(
            f"{model}: localization_per_cxr holds the {', '.join(methods)} maps of another "
            f"training of {model} (model_fingerprint {', '.join(v[:12] for v in other)}; "
            f"{model}.test_metrics describes {current[:12]}): the model was trained again "
            "after its saliency maps were computed, so its findings would mix two models. "
            f"Run the saliency and localization stages again first: {RERUN_AFTER_RETRAINING}"
        )


def training_ci_settings(
    model: str,
    variant: Mapping[str, Any],
    test_metrics: Mapping[str, Any],
    training_ci_level: float,
    training_n_boot: int,
) -> tuple[float, int, str]:
    """The level and replicates of ``<model>.test_metrics``'s CIs, and the key that set it.

    What ``test_metrics`` records (``ci_level``, ``n_boot``) wins; otherwise the model's
    block ``training.variants.<model>`` over the shared ``training`` values, as training
    merges them.

    Returns:
        ``(ci_level, n_boot, key)``: ``key`` names where the level came from.
    """
    block = f"training.variants.{model}"
    if test_metrics.get("ci_level") is not None:
        level, key = test_metrics["ci_level"], f"{model}.test_metrics (ci_level)"
    elif "ci_level" in variant:
        level, key = variant["ci_level"], f"{block}.ci_level"
    else:
        level, key = training_ci_level, "training.ci_level"
    return (
        check_ci_level(level, key),
        _recorded_n_boot(model, variant, test_metrics, training_n_boot),
        key,
    )


def _recorded_n_boot(
    model: str,
    variant: Mapping[str, Any],
    test_metrics: Mapping[str, Any],
    training_n_boot: object,
) -> int:
    """The replicates of ``<model>.test_metrics``'s CIs as an ``int`` (``check_n_boot``):
    ``10000`` for ``1e4`` (``10000.0``); a fraction is refused, not truncated.

    Raises:
        ParameterError: naming the key the value came from.
    """
    if "n_boot" in test_metrics:
        return check_n_boot(test_metrics["n_boot"], f"{model}.test_metrics (n_boot)")
    if "n_boot" in variant:
        return check_n_boot(variant["n_boot"], f"training.variants.{model}.n_boot")
    return check_n_boot(training_n_boot, "training.n_boot")


def assemble_findings(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows -> table with identity columns first, then metrics with their CIs side by side."""
    table = pd.DataFrame(list(rows))
    ident = [c for c in ("model", "supervision", "architecture", "task", "n_test") if c in table]
    ident += [MODEL_DIGEST_COLUMN] if MODEL_DIGEST_COLUMN in table else []
    ident += [c for c in CI_SETTING_COLUMNS if c in table]
    rest = [c for c in table.columns if c not in ident]
    out = table[ident + rest]
    for col in CI_SETTING_COLUMNS:
        values = out[col].dropna().unique() if col in out else []
        if len(values) == 1:  # e.g. attrs["ci_level"] = 0.95, for a report's wording
            out.attrs[col] = values[0].item() if hasattr(values[0], "item") else values[0]
    return out


def findings_metrics(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Flatten the findings for MLflow.

    Returns ``{"<model>.<metric>": {"value": v, "step": 0}}``, finite values only.
    """
    out: dict[str, dict[str, float]] = {}
    for rec in table.to_dict("records"):
        for key, value in rec.items():
            if key in {"model", "supervision", "architecture", "task", "n_test"}:
                continue
            if key == MODEL_DIGEST_COLUMN:
                continue
            if key in CI_SETTING_COLUMNS:
                continue
            if isinstance(value, int | float | np.floating) and np.isfinite(value):
                out[f"{rec['model']}.{key}".replace(" ", "_")] = {"value": float(value), "step": 0}
    return out
