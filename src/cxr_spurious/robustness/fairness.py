"""Operating points and group fairness at that point (Fairlearn), with bootstrap CIs.

The threshold is chosen on validation and carried to test. Per-group TPR / FPR / FNR / PPV
and the gaps (equalized-odds difference, FNR gap, FPR gap; Fairlearn's ``between_groups``
differences) come from Fairlearn's ``MetricFrame`` and ``equalized_odds_difference``.
The bootstrap replicates use ``_fast_gaps``, a vectorised count of the same quantities
(one MetricFrame costs about 60 ms, so 200 replicates x attributes x models would take
minutes on a small CPU); the tests check it equals Fairlearn on random data.

Convention for a replicate in which a reported group lacks a class: the point estimate is
taken on groups that all have at least ``min_per_class`` (>= 1) positives and negatives, so
every rate in it is defined. In a patient-bootstrap replicate a group can draw no positive
(TPR / FNR undefined) or no negative (FPR undefined). Fairlearn would score such a rate 0
(TPR and FNR both 0), and dropping the group would compare fewer groups than the estimate;
neither is the same statistic. The replicate's gap is therefore undefined (NaN) for the
gaps that need the missing class (``fnr_gap``: positives; ``fpr_gap``: negatives;
``equalized_odds_difference``: both), counted in ``n_dropped`` and, above
``max_dropped_share`` of the replicates, an error.

The gaps are max - min differences over groups, so they are >= 0 and biased upwards: two
groups drawn from one population have a positive sample gap, and the percentile bootstrap
interval of a max - min gap (``lo`` / ``hi``) lies above 0 almost always, whether or not the
groups differ. It is an interval for the size of the observed gap, not a test that there is
one. The test is ``p_no_gap``: a permutation test of "no gap" (``permutation_p_values``)
that shuffles the group labels over whole patients at the fixed operating point and asks
how often a gap at least as large as the observed one arises by chance.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
from fairlearn.metrics import (
    MetricFrame,
    equalized_odds_difference,
    false_negative_rate,
    false_positive_rate,
    true_positive_rate,
)
from sklearn.metrics import precision_score, roc_curve

from cxr_spurious.errors import ContractError, check_integer, check_number, unknown_name_error
from cxr_spurious.stats.bootstrap import (
    MAX_DROPPED_SHARE,
    bootstrap_indices,
    check_cluster_labels,
    check_n_boot,
    count_dropped,
    few_clusters_note,
    percentile_ci,
)

from .subgroups import eligible_groups, left_out_note

logger = logging.getLogger(__name__)

# Operating-point rules (``robustness.operating_point``).
RULES: tuple[str, ...] = ("youden", "fixed_sensitivity", "fixed_specificity")
Rule = Literal["youden", "fixed_sensitivity", "fixed_specificity"]
# The threshold that calls no probability positive (``p >= ABOVE_ONE`` is never true).
ABOVE_ONE = float(np.nextafter(1.0, 2.0))
#: The gaps of ``fairness_point`` / ``_fast_gaps``, in the order of the table's rows.
GAP_METRICS: tuple[str, ...] = ("equalized_odds_difference", "fnr_gap", "fpr_gap")
#: A permuted gap within this of the observed one counts as "at least as large" (the two are
#: computed by different float sums; an identical split must not count as smaller).
_GAP_TIE = 1e-12


def choose_threshold(
    y: np.ndarray, p: np.ndarray, rule: Rule = "youden", target: float = 0.9
) -> float:
    """Decision threshold on validation scores (predict positive when ``p >= threshold``).

    Args:
        y: Labels 1 / 0 (NaN ignored).
        p: Scores.
        rule: ``youden`` (max TPR - FPR), ``fixed_sensitivity`` (highest threshold with
            TPR >= target) or ``fixed_specificity`` (lowest threshold with 1 - FPR >= target).
        target: Sensitivity or specificity for the fixed rules.

    Returns:
        The threshold.

    Raises:
        ParameterError: unknown rule or target outside (0, 1].
        ContractError: the validation labels have one class only.
    """
    if rule not in RULES:
        raise unknown_name_error(
            "operating-point rule", rule, RULES, key="robustness.operating_point"
        )
    target = check_number(target, "robustness.operating_target", low=0, high=1, low_open=True)
    yy = np.asarray(y, dtype=float)
    keep = np.isfinite(yy)
    if np.unique(yy[keep]).size < 2:
        raise ContractError(
            "validation labels have a single class; cannot choose an operating point"
        )
    fpr, tpr, thr = roc_curve(yy[keep], np.asarray(p, dtype=float)[keep], drop_intermediate=False)
    # sklearn's first threshold is +inf (nothing called positive). It becomes the smallest
    # float above 1: still above every probability, including scores that a float32 sigmoid
    # rounded to exactly 1.0 (``p >= 1.0`` would call those positive and miss the target).
    thr = np.minimum(thr, ABOVE_ONE)
    if rule == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    if rule == "fixed_sensitivity":
        return float(thr[int(np.flatnonzero(tpr >= target)[0])])
    return float(thr[int(np.flatnonzero(1 - fpr >= target)[-1])])


def _ppv(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(precision_score(y_true, y_pred, zero_division=np.nan))


RATE_METRICS = {
    "tpr": true_positive_rate,
    "fpr": false_positive_rate,
    "fnr": false_negative_rate,
    "ppv": _ppv,
}


def group_metric_frame(y: np.ndarray, y_pred: np.ndarray, sensitive: np.ndarray) -> MetricFrame:
    """Fairlearn ``MetricFrame`` of TPR, FPR, FNR, PPV and count per group."""
    metrics = {**RATE_METRICS, "count": lambda a, b: float(len(a))}
    return MetricFrame(metrics=metrics, y_true=y, y_pred=y_pred, sensitive_features=sensitive)


def fairness_point(y: np.ndarray, y_pred: np.ndarray, sensitive: np.ndarray) -> dict[str, float]:
    """Equalized-odds difference, FNR gap and FPR gap, computed by Fairlearn."""
    frame = MetricFrame(
        metrics={k: RATE_METRICS[k] for k in ("fnr", "fpr")},
        y_true=y,
        y_pred=y_pred,
        sensitive_features=sensitive,
    )
    diff = frame.difference(method="between_groups")
    return {
        "equalized_odds_difference": float(
            equalized_odds_difference(y, y_pred, sensitive_features=sensitive)
        ),
        "fnr_gap": float(diff["fnr"]),
        "fpr_gap": float(diff["fpr"]),
    }


def _fast_gaps(
    y: np.ndarray, y_pred: np.ndarray, codes: np.ndarray, n_groups: int
) -> dict[str, float]:
    """Same gaps as ``fairness_point`` by counting, over all ``n_groups`` groups.

    Equal to Fairlearn whenever every group has positives and negatives. A gap that needs a
    class some group lacks (or a group without rows) is NaN (module docstring), never a
    gap over fewer groups.
    """
    pos = np.bincount(codes, weights=(y == 1), minlength=n_groups)
    neg = np.bincount(codes, weights=(y == 0), minlength=n_groups)
    tp = np.bincount(codes, weights=(y == 1) & (y_pred == 1), minlength=n_groups)
    fp = np.bincount(codes, weights=(y == 0) & (y_pred == 1), minlength=n_groups)
    has_pos, has_neg = bool((pos > 0).all()), bool((neg > 0).all())
    tpr_gap = float(np.ptp(tp / pos)) if has_pos else np.nan
    fpr_gap = float(np.ptp(fp / neg)) if has_neg else np.nan
    eod = max(tpr_gap, fpr_gap) if has_pos and has_neg else np.nan
    return {"equalized_odds_difference": eod, "fnr_gap": tpr_gap, "fpr_gap": fpr_gap}


def permutation_p_values(
    y: np.ndarray,
    y_pred: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
    patients: np.ndarray,
    *,
    n_perm: int,
    seed: int,
) -> dict[str, tuple[float, int]]:
    """Permutation test of "no gap" for each gap of ``_fast_gaps``.

    Null hypothesis: the group does not matter, so the rows' group labels are exchangeable
    over patients. Each permutation shuffles the group labels over whole patients (the
    clusters the bootstrap resamples; a patient keeps all its rows and the labels ``y`` and
    predictions ``y_pred`` at the fixed operating point, and the groups keep their numbers
    of patients) and recomputes the gap. A patient whose images fall in several groups (an
    age bin that changes between visits) contributes one unit per group. Then
    ``p = (1 + #{permuted gap >= observed gap}) / (1 + n)`` over the ``n`` permutations in
    which the gap is defined (every group has the class it needs); it is never 0, and its
    smallest value is ``1 / (1 + n)``.

    Args:
        y: Labels 1 / 0.
        y_pred: Predictions 1 / 0 at the operating point (not recomputed).
        codes: Group code ``0..n_groups-1`` per row.
        n_groups: Number of groups.
        patients: Patient per row.
        n_perm: Permutations (>= 1).
        seed: Seed (the permutations use a stream apart from the bootstrap's).

    Returns:
        ``{gap: (p_value, undefined permutations)}``; ``p_value`` NaN when the observed gap
        or every permuted one is undefined.

    Raises:
        ContractError: a patient label is None or NaN (``check_cluster_labels``).
    """
    n_perm = check_n_boot(n_perm, "robustness.n_boot")
    check_cluster_labels(patients)
    codes = np.asarray(codes)
    _, patient = np.unique(np.asarray(patients), return_inverse=True)
    # units: (patient, group) blocks, sorted, so the result does not depend on the row order
    blocks, unit = np.unique(np.c_[patient.ravel(), codes], axis=0, return_inverse=True)
    unit = unit.ravel()
    unit_group = blocks[:, 1]
    observed = _fast_gaps(y, y_pred, codes, n_groups)
    rng = np.random.default_rng((int(seed), 1))  # not the bootstrap's default_rng(seed)
    perms = [
        _fast_gaps(y, y_pred, rng.permutation(unit_group)[unit], n_groups) for _ in range(n_perm)
    ]
    out = {}
    for metric in GAP_METRICS:
        values = np.array([r[metric] for r in perms], dtype=float)
        finite = values[np.isfinite(values)]
        undefined = int(values.size - finite.size)
        if not np.isfinite(observed[metric]) or finite.size == 0:
            out[metric] = (float("nan"), undefined)
            continue
        extreme = int((finite >= observed[metric] - _GAP_TIE).sum())
        out[metric] = ((1 + extreme) / (1 + finite.size), undefined)
    return out


def fairness_tables(
    table: pd.DataFrame,
    task: str,
    threshold: float,
    attributes: Sequence[str],
    *,
    min_per_class: int = 5,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    max_dropped_share: float = MAX_DROPPED_SHARE,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-group rates and gaps (with patient-bootstrap CIs and a test of "no gap") at a
    fixed threshold.

    Groups with fewer than ``min_per_class`` positives or negatives are left out (a rate on
    a handful of cases is noise, and Fairlearn scores a group without positives TPR 0).
    Left-out groups are never silent: a warning names them with their counts, and so does
    each gap row's ``ci_note`` (as the worst-group AUROC row does), since a gap over the
    remaining groups can hide the group that is served worst. With fewer than two groups
    left the attribute has no gap rows (a warning says so).

    Each gap is a max - min difference over the groups (>= 0): ``lo`` / ``hi`` is the
    percentile bootstrap interval of that max - min gap, biased away from 0 (it excludes 0
    even when the groups do not differ; module docstring), so it says how large the gap
    may be, not whether there is one. ``p_no_gap`` is the test: the permutation p-value of
    "no gap" (``permutation_p_values``: group labels shuffled over whole patients at the
    fixed threshold, ``n_boot`` permutations, seeded by ``seed``). A gap over a group of
    fewer than ``MIN_CI_CLUSTERS`` patients has no interval (NaN ``lo`` / ``hi``) and
    ``ci_note`` says which group and how many patients; its ``p_no_gap`` stands.

    Args:
        table: Evaluation rows of one split (labels, ``p_<task>``, ``patient_id``, attributes).
        task: The label column.
        threshold: Positive when ``p >= threshold``.
        attributes: Sensitive attributes (columns of ``table``).
        min_per_class: Smallest class count of a reported group (>= 1).
        n_boot: Bootstrap replicates for the gap CIs, and permutations for ``p_no_gap``.
        seed: Bootstrap and permutation seed.
        level: CI level.
        max_dropped_share: Largest share of undefined replicates (a reported group without
            the class a gap needs, see the module docstring); above it an error.

    Returns:
        ``(by_group, gaps)``: ``task, attribute, group, tpr, fpr, fnr, ppv, count`` and
        ``task, attribute, metric, estimate, lo, hi, p_no_gap, n_groups, n_patients,
        n_dropped, ci_note`` (``lo`` / ``hi``: percentile interval of the max - min gap;
        ``p_no_gap``: permutation p-value of no gap; ``ci_note``: groups too small in
        patients for a CI, the left-out groups and their counts, and permutations in which
        the gap was undefined; ``""`` if none).

    Raises:
        ParameterError: ``min_per_class`` < 1.
        BootstrapDropError: too many undefined replicates for a gap.
    """
    # a reported group needs both classes
    min_per_class = check_integer(min_per_class, "robustness.min_per_class", low=1)
    labelled = table[np.isfinite(table[task].to_numpy(dtype=float))]
    by_group, gaps = [], []
    for attr in attributes:
        if attr not in labelled.columns:
            raise ContractError(f"evaluation table has no attribute column '{attr}'")
        y_all = labelled[task].to_numpy(dtype=float)
        groups = eligible_groups(y_all, labelled[attr], min_per_class)
        left_out = left_out_note(y_all, labelled[attr], groups, min_per_class)
        if len(groups) < 2:  # no gap to report: say so (the summary's gap columns are NaN)
            logger.warning(
                "fairness %s / %s: no gaps, %d group(s) with at least %d positives and "
                "negatives; %s",
                task, attr, len(groups), min_per_class, left_out or "one group only",
            )  # fmt: skip
            continue
        if left_out:  # the gaps compare fewer groups than the attribute has: say which
            logger.warning(
                "fairness %s / %s: gaps over %d groups; %s", task, attr, len(groups), left_out
            )
        sub = labelled[labelled[attr].isin(groups)]
        y = sub[task].to_numpy(dtype=int)
        y_pred = (sub[f"p_{task}"].to_numpy(dtype=float) >= threshold).astype(int)
        sens = sub[attr].astype(str).to_numpy()
        frame = group_metric_frame(y, y_pred, sens).by_group.reset_index()
        frame.columns = ["group", *frame.columns[1:]]
        by_group.append(frame.assign(task=task, attribute=attr))
        codes = pd.Categorical(sens).codes
        pid = sub["patient_id"].to_numpy()
        point = fairness_point(y, y_pred, sens)
        # a group of a handful of patients gives the gap no interval (MIN_CI_CLUSTERS)
        few = "; ".join(
            note
            for g in pd.Categorical(sens).categories
            if (note := few_clusters_note(pid[sens == g], what=f"group {g}"))
        )
        reps = (
            []
            if few
            else [
                _fast_gaps(y[i], y_pred[i], codes[i], len(groups))
                for i in bootstrap_indices(len(y), n_boot, seed, pid)
            ]
        )
        tests = permutation_p_values(y, y_pred, codes, len(groups), pid, n_perm=n_boot, seed=seed)
        if few:
            logger.warning("fairness %s / %s: gap CIs: %s", task, attr, few)
        for metric, value in point.items():
            values = np.array([r[metric] for r in reps], dtype=float)
            lo, hi = (
                (float("nan"), float("nan"))
                if few
                else percentile_ci(
                    values,
                    level,
                    max_dropped_share=max_dropped_share,
                    label=f"fairness {task}/{attr}/{metric}",
                )
            )
            p_value, undefined = tests[metric]
            perm_note = (
                f"p_no_gap over {n_boot - undefined} of {n_boot} permutations ({undefined} "
                "left a group without the class the gap needs)"
                if undefined
                else ""
            )
            gaps.append(
                {
                    "task": task,
                    "attribute": attr,
                    "metric": metric,
                    "estimate": value,
                    "lo": lo,
                    "hi": hi,
                    "p_no_gap": p_value,
                    "n_groups": len(groups),
                    "n_patients": int(pd.unique(pid).size),
                    "n_dropped": count_dropped(values),
                    "ci_note": "; ".join(part for part in (few, left_out, perm_note) if part),
                }
            )
    group_cols = ["task", "attribute", "group", "tpr", "fpr", "fnr", "ppv", "count"]
    by = (
        pd.concat(by_group, ignore_index=True)[group_cols]
        if by_group
        else pd.DataFrame(columns=group_cols)
    )
    return by, pd.DataFrame(gaps, columns=list(GAP_COLUMNS))


#: The columns of the gaps table (``fairness_tables``).
GAP_COLUMNS: tuple[str, ...] = (
    "task",
    "attribute",
    "metric",
    "estimate",
    "lo",
    "hi",
    "p_no_gap",
    "n_groups",
    "n_patients",
    "n_dropped",
    "ci_note",
)
