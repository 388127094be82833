"""Nodes of the ``comparison`` pipeline.

The across-seed statistics are ``cxr_spurious.stats.seeds``'s (the sweep's too).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pandas as pd

from cxr_spurious.debiasing.dfr import dfr_held_out_rows, fit_dfr
from cxr_spurious.debiasing.groups import assign_groups, group_keys
from cxr_spurious.debiasing.resampling import resampling_differences
from cxr_spurious.errors import ContractError, ParameterError, StaleOutputError
from cxr_spurious.pipelines.robustness.nodes import SUMMARY_MODULES
from cxr_spurious.robustness.evaluation import (
    SETTINGS_COLUMN,
    recorded_summary_code,
    settings_differences,
)
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.stats.multiplicity import adjust_table, family_note, read_settings
from cxr_spurious.stats.seed_param import check_seed
from cxr_spurious.stats.seeds import SEED_COLUMN, paired_over_seeds, summarise_over_seeds
from cxr_spurious.training.checkpoints import (
    changed_code_modules,
    code_digests,
    training_data_digest,
    weights_digest,
)
from cxr_spurious.training.config import resolve_training_config
from cxr_spurious.training.data import build_training_table, split_training_table
from cxr_spurious.training.outputs import (
    RESOLVED_KEYS,
    TRAINED_ON_KEY,
    recorded_differences,
    recorded_trained_on,
    resolved_precision_and_device,
)
from cxr_spurious.training.provenance import MODEL_DIGEST_COLUMN, model_digest

logger = logging.getLogger(__name__)

HEADLINE_METRICS: tuple[str, ...] = (
    "auroc",
    "worst_group_auroc",
    "robust_tube_auroc",
    "fnr_gap",
    "equalized_odds_difference",
)
#: The variant every other one is compared with on the same seed (the study's ERM).
ERM_VARIANT = "erm"


def refit_last_layer(
    manifest: pd.DataFrame,
    embeddings: pd.DataFrame,
    tasks: list[str],
    group_by: list[str],
    age_bins: list[float],
    c: float,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """DFR: logistic regression on the ERM embeddings, group-balanced on half the val split.

    Returns:
        ``(predictions, embeddings, held_out)``: predictions and embeddings in the training
        formats (the embeddings are ERM's); ``held_out`` (``image_id, patient_id``) the
        validation rows of the patients DFR was not fitted on (``dfr_held_out_rows``), on
        which the robustness template chooses DFR's operating point.
    """
    seed = check_seed(seed, "comparison.debiasing.seed")
    ids, _ = assign_groups(group_keys(manifest, group_by, age_edges=age_bins))
    preds = fit_dfr(
        manifest, embeddings, ids.to_numpy(), tasks, c=float(c), seed=seed, model_name="dfr"
    )
    held = dfr_held_out_rows(manifest, seed=seed)
    held_out = manifest.loc[held, ["image_id", "patient_id"]].reset_index(drop=True)
    return preds, embeddings, held_out


RERUN_STUDY = "run `kedro run` with the same --params first"
MACHINE_NOTE = (
    "precision and device are recorded as training resolved them (precision 'auto': bf16 on "
    "CUDA and on CPUs with native bf16, fp32 elsewhere; 'auto' in a record: written before "
    "test_metrics recorded the resolved values), so the study must train on this kind of "
    "machine or under the same explicit training.precision / training.device: "
)


def check_study_models(
    training: Mapping[str, Any],
    manifest: pd.DataFrame,
    resampled_manifest: pd.DataFrame,
    image_cache: ImageCache,
    **test_metrics: Mapping[str, Any],
) -> dict[str, str]:
    """Check that the study's models were trained as this run trains its variants.

    On ``training.seed`` the comparison reuses the study's models as the last ``kedro run``
    left them and trains every ``cmp_*`` variant under this run's parameters, on this
    run's data, with this code. Each study model's ``test_metrics`` records:

    * its resolved training configuration (``training.outputs.training_record``), which
      must equal the configuration this run's ``training`` parameters give the model
      (``training.variants.<model>`` over them), with the precision (``bf16`` / ``fp32``)
      and device type they resolve to on this machine: a study trained under other
      settings (``--params training.epochs=8`` given to the comparison only), or at
      another precision (``precision: auto`` is bf16 on one CPU and fp32 on another),
      would be compared with variants trained differently;
    * what it trained on (``trained_on``): the digest of its train and validation rows and
      image cache, which must equal the digest of the rows this run's
      ``resampled_manifest`` and ``image_cache`` give it (ingestion re-run with other
      parameters since, or a changed image cache), and the source digest of each training
      module (``checkpoints.RESULT_MODULES``), which must equal this code's (the project
      updated between the two runs).

    The study's ``resampled_manifest`` must also be ``manifest`` unresampled: the
    comparison's ``erm`` row is ERM without resampling, and a study run with
    ``debiasing.strategy`` other than ``none`` trained its models on resampled rows.

    Args:
        training: This run's ``training`` parameters.
        manifest: The manifest every ``cmp_*`` variant is resampled from.
        resampled_manifest: The study's resampled manifest (what its models trained on).
        image_cache: The image cache.
        **test_metrics: ``<model>.test_metrics`` of every study model (keyword = model).

    Returns:
        ``{model: model_digest}`` (``training.outputs.model_digest``: the settings, data and
        code checked): the headline table and the inputs that read ``erm``'s outputs wait
        for it, and ``check_study_summaries`` checks the study's summaries against it.

    Raises:
        StaleOutputError: a model's record differs (naming the model and every differing key
            with both values, the data, or the modules whose source changed), a record is
            missing (a ``test_metrics`` written by an older version), or the study's
            ``resampled_manifest`` is resampled (saying how).
        ParameterError: ``training.variants`` has no block for a study model, or its device
            is not available here or its precision unknown (``resolve_device``).
    """
    variants = training.get("variants") or {}
    missing: list[str] = []
    differing: list[str] = []
    machine = False  # a precision or device differs
    checked: dict[str, str] = {}
    configs: dict[str, dict[str, Any]] = {}
    for model, metrics in test_metrics.items():
        block = variants.get(model) if isinstance(variants, Mapping) else None
        if not isinstance(block, Mapping):
            raise ParameterError(
                f"training.variants.{model}",
                f"missing: the comparison reuses the study's model '{model}' and checks it "
                "against its block",
            )
        cfg = resolve_training_config(training, block)
        resolved = resolved_precision_and_device(cfg)
        diff = (
            recorded_differences(metrics, cfg, resolved) if isinstance(metrics, Mapping) else None
        )
        if diff is None:
            missing.append(f"{model}.test_metrics")
        elif diff:
            values = "; ".join(
                f"{key}={old!r} (this run: {new!r})" for key, (old, new) in diff.items()
            )
            differing.append(f"{model}.test_metrics records {values}")
            machine = machine or bool(set(diff) & set(RESOLVED_KEYS))
        else:
            checked[model] = str(model_digest(metrics))
            configs[model] = cfg
    if missing:
        raise StaleOutputError(
            f"{', '.join(missing)}: no record of the training configuration (training_config): "
            "the study models predate the record (written by an older version), so the "
            "comparison cannot show they were trained under this run's parameters; re-run "
            f"them: {RERUN_STUDY}"
        )
    if differing:
        raise StaleOutputError(
            "the study's models were trained under other settings than this run's "
            "parameters give them (training.<key>, or training.variants.<model>.<key>): "
            + "; ".join(differing)
            + ". The comparison reuses them on training.seed and trains every cmp_* variant "
            "under this run's parameters, so its rows would compare different training; "
            + (MACHINE_NOTE if machine else "")
            + RERUN_STUDY
        )
    _check_trained_on(configs, manifest, resampled_manifest, image_cache, test_metrics)
    logger.info(
        "study models %s: trained under this run's training settings, on this run's data, "
        "by this code",
        ", ".join(checked),
    )
    return checked


def _check_trained_on(
    configs: Mapping[str, dict[str, Any]],
    manifest: pd.DataFrame,
    resampled_manifest: pd.DataFrame,
    image_cache: ImageCache,
    test_metrics: Mapping[str, Mapping[str, Any]],
) -> None:
    """``check_study_models``'s data and code part (the configurations already agree)."""
    resampled = resampling_differences(manifest, resampled_manifest)
    if resampled:
        raise StaleOutputError(
            "resampled_manifest: the study's models were trained on rows that are not the "
            f"manifest left unresampled ({'; '.join(resampled)}): the study ran with a "
            "debiasing.strategy other than none, or ingestion re-ran since. The comparison's "
            f"'{ERM_VARIANT}' row is ERM without resampling and every cmp_* variant is "
            f"resampled from the manifest; {RERUN_STUDY}, with debiasing.strategy=none"
        )
    code_now = code_digests()
    missing: list[str] = []
    differing: list[str] = []
    for model, cfg in configs.items():
        record = recorded_trained_on(test_metrics[model], f"{model}.test_metrics")
        if record is None:
            missing.append(f"{model}.test_metrics")
            continue
        changed = changed_code_modules(record["code"], code_now)
        if changed:
            differing.append(
                f"{model} was trained by other code (the source of {', '.join(changed)} "
                "changed since)"
            )
        if cfg.get("pretrained") and record.get("weights") != weights_digest(cfg["pretrained"]):
            why = "its recorded SHA-256 differs" if record.get("weights") else "none recorded"
            differing.append(
                f"{model} may have started from other weights than the file "
                f"training.pretrained ({cfg['pretrained']}) holds now ({why})"
            )
        table = build_training_table(resampled_manifest, image_cache, cfg)
        if record["data"] != training_data_digest(*split_training_table(table), image_cache):
            differing.append(
                f"{model} was trained on other data than resampled_manifest and image_cache "
                "hold now (ingestion or the image cache ran since with other parameters or "
                "sources)"
            )
    if missing:
        raise StaleOutputError(
            f"{', '.join(missing)}: no record of the training data and code "
            f"({TRAINED_ON_KEY}): the study models predate the record (written by an older "
            "version), so the comparison cannot show they were trained on this run's data "
            f"by this code; re-run them: {RERUN_STUDY}"
        )
    if differing:
        raise StaleOutputError(
            "; ".join(differing)
            + ". The comparison reuses the study's models on training.seed and trains every "
            "cmp_* variant on this run's data with this code, so its rows would compare "
            f"different data or code; {RERUN_STUDY}"
        )


def check_study_summaries(
    robustness: Mapping[str, Any],
    study_check: Mapping[str, str] | None = None,
    **summaries: pd.DataFrame,
) -> dict[str, str]:
    """Check that the study's robustness summaries were computed under this run's settings,
    on the models this run reuses.

    ``headline_table`` stacks the study models' ``model_summary`` (from the last
    ``kedro run``) with the ``cmp_*`` variants' (computed in this run): a study summary made
    under other ``robustness`` settings (``--params robustness.fairness_attribute=sex``
    given to the comparison only) would put another attribute's FNR gap in the same column.
    Each summary row records its settings (``robustness_settings``,
    ``robustness.evaluation.summary_settings``) and the source digests of the code that
    computed it (``pipelines.robustness.nodes.SUMMARY_MODULES``): a summary computed by
    other code (the project updated between the two runs) is refused too, naming the
    modules. With ``study_check`` (``check_study_models``' ``{model: model_digest}``) each
    summary must also describe that training of its model (its ``model_digest``): a model
    retrained since the study's robustness ran (``kedro run --pipeline training``,
    ``torchrun``) would have its new model compared on an old model's summary.

    Args:
        robustness: This run's ``robustness`` parameters.
        study_check: ``check_study_models``' result (the models' digests), or None.
        **summaries: ``<model>.model_summary`` of every study model (keyword = model).

    Returns:
        ``{model: recorded settings}``: what was checked (``headline_table`` waits for it).

    Raises:
        StaleOutputError: a summary's record differs (naming the model and every differing key
            with both values, or the modules whose source changed) or is missing (a summary
            written before the record, or before it held the code digests).
    """
    missing: list[str] = []
    differing: list[str] = []
    checked: dict[str, str] = {}
    for model, summary in summaries.items():
        records = summary[SETTINGS_COLUMN].dropna().unique() if SETTINGS_COLUMN in summary else []
        if len(records) != 1:
            missing.append(f"{model}.model_summary")
            continue
        diff = settings_differences(str(records[0]), robustness)
        code = recorded_summary_code(str(records[0]))
        if diff:
            values = "; ".join(
                f"robustness.{key}={old!r} (this run: {new!r})" for key, (old, new) in diff.items()
            )
            differing.append(f"{model}.model_summary records {values}")
        elif code is None:
            missing.append(f"{model}.model_summary")
        elif changed := changed_code_modules(code, code_digests(SUMMARY_MODULES)):
            differing.append(
                f"{model}.model_summary was computed by other code (the source of "
                f"{', '.join(changed)} changed since)"
            )
        elif (
            study_check is not None
            and model in study_check
            and (stale := _summary_model_differs(summary, study_check[model]))
        ):
            differing.append(f"{model}.model_summary {stale}")
        else:
            checked[model] = str(records[0])
    if missing:
        raise StaleOutputError(
            f"{', '.join(missing)}: no record of the robustness settings and code "
            f"({SETTINGS_COLUMN}): the study's summaries predate the record (written by an "
            "older version), so the comparison cannot show they were computed under this "
            f"run's parameters by this code; re-run them: {RERUN_STUDY}"
        )
    if differing:
        raise StaleOutputError(
            "the study's robustness summaries were computed under other settings or by "
            "other code than this run's: "
            + "; ".join(differing)
            + f". headline_table would mix them with the cmp_* variants' rows; {RERUN_STUDY}"
        )
    logger.info("study summaries %s: this run's robustness settings", ", ".join(checked))
    return checked


def _summary_model_differs(summary: pd.DataFrame, current: str) -> str:
    """Why ``summary`` does not describe the model whose digest is ``current`` ("" if it
    does)."""
    recorded = (
        summary[MODEL_DIGEST_COLUMN].dropna().unique() if MODEL_DIGEST_COLUMN in summary else []
    )
    if len(recorded) != 1:
        return (
            f"records no single {MODEL_DIGEST_COLUMN} (written before the record): it cannot "
            "show which training of the model it describes"
        )
    if str(recorded[0]) != current:
        return (
            f"describes an earlier training of the model ({MODEL_DIGEST_COLUMN} "
            f"{recorded[0]}; the model now: {current}): the model was retrained after the "
            "study's robustness ran (`kedro run --pipeline robustness` recomputes it)"
        )
    return ""


def gate_study_erm(
    study_check: Mapping[str, str], predictions: pd.DataFrame, embeddings: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``erm``'s predictions and embeddings, unchanged, once ``check_study_models`` passed
    (``study_check``): JTT, ``cluster_downsample`` and DFR read them."""
    return predictions, embeddings


def build_headline_table(
    study_check: Mapping[str, str] | None = None,
    summary_check: Mapping[str, str] | None = None,
    **summaries: pd.DataFrame,
) -> pd.DataFrame:
    """One row per variant (keyword = variant) and task with the headline metrics and CIs.

    ``study_check`` / ``summary_check``: ``check_study_models`` / ``check_study_summaries``
    results on ``training.seed``, where the study's models are reused (the table waits for
    them); None on another seed.

    Raises:
        ContractError: a summary lacks ``task`` or a headline metric or its CI column
            (naming ``<variant>.model_summary`` and the columns): the robustness summary
            writes them all, NaN where a metric is undefined.
    """
    required = ["task", *(f"{m}{end}" for m in HEADLINE_METRICS for end in ("", "_lo", "_hi"))]
    missing = {
        variant: [c for c in required if c not in summary.columns]
        for variant, summary in summaries.items()
    }
    if problems := [
        f"{v}.model_summary lacks {', '.join(cols)}" for v, cols in missing.items() if cols
    ]:
        raise ContractError(
            "build_headline_table: "
            + "; ".join(problems)
            + " (a robustness model_summary has 'task' and every headline metric with its CI, "
            "NaN where undefined: a file of an older version or of another writer?)"
        )
    rows = []
    for variant, summary in summaries.items():
        for rec in summary.to_dict("records"):
            row = {"variant": variant, "task": rec["task"]}
            for m in HEADLINE_METRICS:
                row.update(
                    {m: rec.get(m), f"{m}_lo": rec.get(f"{m}_lo"), f"{m}_hi": rec.get(f"{m}_hi")}
                )
            rows.append(row)
    table = pd.DataFrame(rows)
    logger.info(
        "headline table:\n%s", table[["variant", *HEADLINE_METRICS]].round(3).to_string(index=False)
    )
    return table


def seed_overrides(*, seed: int, name: str) -> dict[str, Any]:
    """The training template's overrides of one variant on a seed other than the study's:
    ``training.seed`` and the variant's name (its checkpoints, model file and MLflow run)."""
    return {"variant": {"seed": check_seed(seed, "comparison.seeds"), "name": name}}


def resampling_seed(*, seed: int) -> int:
    """The debiasing template's resampling seed on a seed other than the study's."""
    return check_seed(seed, "comparison.seeds")


def stack_seed_tables(**tables: pd.DataFrame) -> pd.DataFrame:
    """``headline_table_per_seed``: each seed's headline table (keyword ``s<seed>``), with
    a ``seed`` column first."""
    frames = []
    for key, table in tables.items():
        if not key.startswith("s") or not key[1:].isdigit():
            raise ContractError(f"stack_seed_tables: keyword '{key}' is not s<seed>")
        frames.append(table.assign(seed=int(key[1:])))
    out = pd.concat(frames, ignore_index=True)
    return out[[SEED_COLUMN, *(c for c in out.columns if c != SEED_COLUMN)]]


def summarise_headline_seeds(
    per_seed: pd.DataFrame, level: float, multiplicity: dict[str, str] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``headline_table_seeds`` and ``headline_paired_differences`` from the per-seed rows.

    ``headline_table_seeds``: one row per variant and task, each headline metric's mean over
    the training seeds with a Student t interval across seeds (``stats.seeds.t_interval``),
    ``n_seeds`` and ``ci_note``. ``headline_paired_differences``: every variant minus
    ``erm`` on the same seed and task, with a paired t interval, p-value and
    ``<metric>_p_adj``, the p-value adjusted for the table's number of tests
    (``comparison.multiplicity``: ``method`` holm | bonferroni | fdr_bh | none, ``family``
    metric (each metric within each task) | table; ``stats.multiplicity``).
    """
    method, family = read_settings(multiplicity, "comparison.multiplicity")
    metrics = list(HEADLINE_METRICS)
    source = "headline_table_per_seed"
    summary = summarise_over_seeds(
        per_seed, ["variant", "task"], metrics, level=level, source=source
    )
    summary["ci_note"] = [_ci_note(row, metrics, level) for row in summary.to_dict("records")]
    paired = paired_over_seeds(
        per_seed, "variant", ERM_VARIANT, ["task"], metrics, level=level, source=source
    )
    _check_pairs(per_seed, paired, source)
    paired = adjust_table(
        paired, metrics, method=method, family=family, groups=["task"], source=source
    )
    paired["ci_note"] = (
        f"{100 * level:g}% paired t interval over training seeds of variant - {ERM_VARIANT} "
        "(same seed and task), cut to the range of a difference; p: paired t-test; "
        f"{family_note(method, family, ['task'])}; <metric>_n: the pairs where the metric "
        "is defined on both sides (n_pairs counts every paired seed)"
    )
    logger.info(
        "headline table over seeds:\n%s",
        summary[["variant", "n_seeds", *metrics]].round(3).to_string(index=False),
    )
    return summary, paired


def _check_pairs(per_seed: pd.DataFrame, paired: pd.DataFrame, source: str) -> None:
    """Warn of each variant and task with no seed in common with ``erm``'s rows of that
    task (``paired_over_seeds`` leaves it out of ``headline_paired_differences``).

    Raises:
        ContractError: no variant pairs with ``erm`` at all (naming ``source``).
    """
    groups = per_seed.groupby(["variant", "task"], sort=False, dropna=False)[SEED_COLUMN]
    by_key = {key: sorted(int(s) for s in group.unique()) for key, group in groups}
    erm = {task: seeds for (variant, task), seeds in by_key.items() if variant == ERM_VARIANT}
    done = set(zip(paired["variant"], paired["task"], strict=True)) if len(paired) else set()
    unpaired = [
        f"{variant} on {task} (seeds {seeds}; {ERM_VARIANT}: {erm.get(task, [])})"
        for (variant, task), seeds in by_key.items()
        if variant != ERM_VARIANT and (variant, task) not in done
    ]
    if paired.empty:
        raise ContractError(
            f"{source}: no variant shares a training seed and task with '{ERM_VARIANT}', so "
            "headline_paired_differences has nothing to compare: "
            + ("; ".join(unpaired) or f"no variant but '{ERM_VARIANT}'")
            + f" (each seed's headline table needs an '{ERM_VARIANT}' row of every task)"
        )
    if unpaired:
        logger.warning(
            "%s: left out of headline_paired_differences, no seed shared with '%s' on the task: %s",
            source,
            ERM_VARIANT,
            "; ".join(unpaired),
        )


def _ci_note(row: dict[str, Any], metrics: list[str], level: float) -> str:
    n = int(row["n_seeds"])
    if n < 2:
        note = (
            f"one training seed ({row['seeds']}): no across-seed interval; "
            "the test-sampling CI is in headline_table_per_seed"
        )
    else:
        note = (
            f"{100 * level:g}% t interval across {n} training seeds ({row['seeds']}), cut to "
            "the metric's range; test-sampling CIs of each seed are in headline_table_per_seed"
        )
    short = [f"{m}: {row[f'{m}_n']} of {n}" for m in metrics if row[f"{m}_n"] < n]
    return note + ("; defined on " + ", ".join(short) if short else "")
