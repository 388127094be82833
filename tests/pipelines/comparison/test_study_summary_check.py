"""The comparison stacks the study models' robustness summaries (from the last ``kedro run``)
with the ``cmp_*`` variants' (computed in this run): ``--params
robustness.fairness_attribute=sex`` given to the comparison only put sex's FNR gap in the
variants' rows and site's in the study models', in one column. Each summary row now records
the settings it was computed under and ``check_study_summaries`` refuses a mismatch.

The study summaries here are written by the robustness template's own node
(``summarise_model``) and saved and loaded through the catalog's file format (CSV).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kedro_datasets.pandas import CSVDataset

from cxr_spurious.errors import ContractError, StaleOutputError
from cxr_spurious.hooks import base_parameters
from cxr_spurious.pipelines.comparison.nodes import check_study_summaries
from cxr_spurious.pipelines.robustness.nodes import combine_robustness_summary, summarise_model
from cxr_spurious.robustness.evaluation import SETTINGS_COLUMN
from cxr_spurious.training.provenance import MODEL_DIGEST_COLUMN, model_digest
from cxr_spurious.variants import STUDY_MODELS

TASK = "Pneumothorax"


def _robustness(**changes: Any) -> dict[str, Any]:
    robustness = copy.deepcopy(base_parameters()["robustness"])
    robustness.update(changes)
    return robustness


def _subgroup_and_gaps() -> tuple[pd.DataFrame, pd.DataFrame]:
    base = {"task": TASK, "lo": 0.5, "hi": 0.9}
    subgroup = pd.DataFrame(
        [
            {**base, "metric": "auroc", "attribute": "all", "group": "all", "estimate": 0.8},
            {**base, "metric": "worst_group_auroc", "attribute": "site", "estimate": 0.6},
            {**base, "metric": "worst_group_auroc", "attribute": "sex", "estimate": 0.7},
            {**base, "metric": "robust_auroc", "attribute": "tube", "estimate": 0.5},
        ]
    )
    gaps = pd.DataFrame(
        [
            {"task": TASK, "attribute": a, "metric": m, "estimate": v, "lo": 0.0, "hi": 0.4}
            for a, v in (("site", 0.3), ("sex", 0.1))
            for m in ("fnr_gap", "equalized_odds_difference")
        ]
    )
    return subgroup, gaps


def _study_summaries(tmp_path: Path, robustness: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """Every study model's ``model_summary`` as the robustness node writes it, via CSV."""
    subgroup, gaps = _subgroup_and_gaps()
    out = {}
    for model in STUDY_MODELS:
        summary = summarise_model(
            subgroup,
            gaps,
            robustness["worst_group_attributes"],
            robustness["fairness_attribute"],
            robustness["attributes"],
            settings=robustness,
        )
        dataset = CSVDataset(filepath=str(tmp_path / model / "model_summary.csv"))
        dataset.save(summary)
        out[model] = dataset.load()
    return out


def test_same_settings_pass(tmp_path: Path) -> None:
    checked = check_study_summaries(_robustness(), **_study_summaries(tmp_path, _robustness()))
    assert sorted(checked) == sorted(STUDY_MODELS)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"fairness_attribute": "sex"}, "robustness.fairness_attribute='site' (this run: 'sex')"),
        ({"n_boot": 50}, "robustness.n_boot=200 (this run: 50)"),
        ({"operating_point": "fixed_sensitivity"}, "robustness.operating_point='youden'"),
    ],
)
def test_other_settings_are_refused_naming_the_key(
    tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    summaries = _study_summaries(tmp_path, _robustness())
    with pytest.raises(ContractError) as info:
        check_study_summaries(_robustness(**change), **summaries)
    message = str(info.value)
    assert all(f"{m}.model_summary records" in message for m in STUDY_MODELS), message
    assert expected in message and "kedro run" in message


def test_settings_that_feed_other_outputs_do_not_matter(tmp_path: Path) -> None:
    summaries = _study_summaries(tmp_path, _robustness())
    later = _robustness(calibration_bins=5, thumbnails_per_cluster=2, ami_attributes=["sex"])
    assert sorted(check_study_summaries(later, **summaries)) == sorted(STUDY_MODELS)


def test_summaries_without_the_record_are_refused(tmp_path: Path) -> None:
    summaries = _study_summaries(tmp_path, _robustness())
    summaries["box"] = summaries["box"].drop(columns=[SETTINGS_COLUMN])
    with pytest.raises(ContractError, match=r"box\.model_summary: no record of the robustness"):
        check_study_summaries(_robustness(), **summaries)


def test_the_stacked_summary_leaves_the_record_in_the_per_model_files(tmp_path: Path) -> None:
    summaries = _study_summaries(tmp_path, _robustness())
    assert SETTINGS_COLUMN in summaries["erm"]
    stacked = combine_robustness_summary(**summaries)
    assert SETTINGS_COLUMN not in stacked and list(stacked["model"]) == list(STUDY_MODELS)
    assert stacked["fnr_gap"].tolist() == [0.3] * len(STUDY_MODELS)  # site, the default


# --- the code that computed the summaries ----------------------------------------------------


def test_the_record_holds_the_summary_code(tmp_path: Path) -> None:
    import json

    from cxr_spurious.pipelines.robustness.nodes import SUMMARY_MODULES
    from cxr_spurious.training.checkpoints import code_digests

    summary = _study_summaries(tmp_path, _robustness())["erm"]
    record = json.loads(summary[SETTINGS_COLUMN].iloc[0])
    assert record["_code"] == code_digests(SUMMARY_MODULES)
    assert "cxr_spurious.robustness.fairness" in record["_code"]


def test_a_summary_computed_by_other_code_is_refused_naming_the_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``git pull`` between ``kedro run`` and the comparison that changed how the FNR gap
    is computed: the study's summaries hold the old code's gaps, the variants' the new."""
    from cxr_spurious.pipelines.comparison import nodes
    from cxr_spurious.pipelines.robustness.nodes import SUMMARY_MODULES
    from cxr_spurious.training.checkpoints import code_digests

    summaries = _study_summaries(tmp_path, _robustness())
    now = code_digests(SUMMARY_MODULES)
    now["cxr_spurious.robustness.fairness"] = "0" * 16
    monkeypatch.setattr(nodes, "code_digests", lambda modules: now)
    with pytest.raises(ContractError) as err:
        check_study_summaries(_robustness(), **summaries)
    message = str(err.value)
    for model in STUDY_MODELS:
        assert (
            f"{model}.model_summary was computed by other code (the source of "
            "cxr_spurious.robustness.fairness changed since)"
        ) in message
    assert "run `kedro run` with the same --params first" in message


def test_a_record_without_the_code_is_refused(tmp_path: Path) -> None:
    import json

    summaries = _study_summaries(tmp_path, _robustness())
    record = json.loads(summaries["seg"][SETTINGS_COLUMN].iloc[0])
    del record["_code"]  # as written before the record held it
    summaries["seg"][SETTINGS_COLUMN] = json.dumps(record, sort_keys=True)
    with pytest.raises(ContractError, match=r"seg.model_summary: no record of the robustness"):
        check_study_summaries(_robustness(), **summaries)


def test_summary_modules_follow_their_rule() -> None:
    """``SUMMARY_MODULES``: the import closure of ``pipelines.robustness.nodes`` less the
    wiring it pulls in and the modules that feed only other outputs."""
    from tests.import_closure import project_import_closure

    from cxr_spurious.pipelines.robustness.nodes import SUMMARY_MODULES

    closure = project_import_closure("cxr_spurious.pipelines.robustness.nodes")
    not_summary = {
        "cxr_spurious.pipelines._recipe",
        "cxr_spurious.pipelines.robustness.pipeline",
        "cxr_spurious.robustness.calibration",
        "cxr_spurious.robustness.strata",
        "cxr_spurious.debiasing.features",
    }
    assert closure >= not_summary  # every exclusion is still imported (else drop it here)
    assert tuple(sorted(closure - not_summary)) == SUMMARY_MODULES


def _test_metrics(epochs: int) -> dict[str, Any]:
    """The part of a ``test_metrics`` record that ``model_digest`` reads."""
    return {
        "training_config_digest": f"settings-{epochs}",
        "trained_on": {"data": "d" * 64, "code": {"cxr_spurious.training.engine": "c" * 64}},
    }


def test_a_summary_of_an_earlier_training_of_the_model_is_refused(tmp_path: Path) -> None:
    """The study's robustness ran, then ``box`` was retrained (``kedro run --pipeline
    training`` with other settings, or torchrun): its summary, still on disk, describes the
    earlier model. ``check_study_models`` passes the retrained model (it matches this run's
    settings), so only the summary's ``model_digest`` tells."""
    robustness = _robustness()
    subgroup, gaps = _subgroup_and_gaps()
    args = (
        subgroup,
        gaps,
        robustness["worst_group_attributes"],
        robustness["fairness_attribute"],
        robustness["attributes"],
    )
    summaries = {}
    for model in STUDY_MODELS:
        summary = summarise_model(*args, settings=robustness, test_metrics=_test_metrics(4))
        dataset = CSVDataset(filepath=str(tmp_path / model / "model_summary.csv"))
        dataset.save(summary)
        summaries[model] = dataset.load()
    current = {m: model_digest(_test_metrics(4)) for m in STUDY_MODELS}
    assert summaries["box"][MODEL_DIGEST_COLUMN].iloc[0] == current["box"]
    assert sorted(check_study_summaries(robustness, current, **summaries)) == sorted(STUDY_MODELS)
    retrained = {**current, "box": model_digest(_test_metrics(8))}
    with pytest.raises(StaleOutputError) as info:
        check_study_summaries(robustness, retrained, **summaries)
    message = str(info.value)
    assert "box.model_summary describes an earlier training of the model" in message
    assert f"the model now: {retrained['box']}" in message
    assert "kedro run --pipeline robustness" in message
    assert "erm.model_summary" not in message and "seg.model_summary" not in message
    # a summary written before the column cannot show which model it describes
    summaries["seg"] = summaries["seg"].drop(columns=[MODEL_DIGEST_COLUMN])
    with pytest.raises(ContractError, match=r"seg\.model_summary records no single model_dig"):
        check_study_summaries(robustness, current, **summaries)
    # the robustness collector keeps the column for the report
    combined = combine_robustness_summary(**{m: summaries[m] for m in ("erm", "box")})
    assert list(combined[MODEL_DIGEST_COLUMN]) == [current["erm"], current["box"]]
