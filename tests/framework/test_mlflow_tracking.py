"""MLflow for comparing runs: the parent run's name and description, the experiment's kind,
each child run's description, the parent run's artifacts (a temporary SQLite store)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient

from cxr_spurious.datasets.mlflow_run import MlflowChildRunDataset, describe_variant
from cxr_spurious.tracking import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MlflowRunNamingHook,
    pipeline_names,
    run_description,
    run_title,
)

REPO = Path(__file__).resolve().parents[2]
WHEN = datetime(2026, 12, 4, 17, 40)


def test_run_titles_say_what_ran_and_when() -> None:
    assert run_title(pipeline_names({}), WHEN) == "study 2026-12-04 17:40"
    assert run_title(pipeline_names({"pipeline_names": ["__default__"]}), WHEN).startswith("study ")
    assert run_title(pipeline_names({"pipeline_names": ["comparison"]}), WHEN) == (
        "comparison 2026-12-04 17:40"
    )
    assert run_title(pipeline_names({"pipeline_name": "sweep"}), WHEN) == "sweep 2026-12-04 17:40"
    names = pipeline_names({"pipeline_names": ["training", "ingestion"]})
    assert run_title(names, WHEN) == "ingestion+training 2026-12-04 17:40"  # study order


def test_run_descriptions_are_one_line() -> None:
    study = run_description(["__default__"], {"env": "local"})
    assert study.startswith("The whole study: each trained variant is a child run")
    assert study.endswith("(env local).") and "\n" not in study
    overrides = {"training": {"only": "seg"}, "study.n_boot": 50}
    assert run_description(["training"], {"env": "test", "runtime_params": overrides}) == (
        "The pipeline(s) training (env test, study.n_boot=50, training.only=seg)."
    )


def _experiment(client: MlflowClient, name: str, kind: str | None) -> str:
    tags = {EXPERIMENT_KIND_TAG: kind} if kind else None
    return client.create_experiment(name, tags=tags)


@pytest.mark.parametrize(
    ("configured_name", "kind_before", "name_after", "kind_after"),
    [
        (None, None, r"study \d{4}-\d\d-\d\d \d\d:\d\d", EXPERIMENT_KIND),
        (None, "genai_development_inferred", r"study .*", EXPERIMENT_KIND),
        ("my baseline", "genai_development", r"my baseline", "genai_development"),
    ],
)
def test_the_hook_names_the_parent_run_and_sets_the_experiment_kind(
    tracking: str, configured_name, kind_before, name_after, kind_after
) -> None:
    client = MlflowClient(tracking)
    exp = _experiment(client, f"exp-{configured_name}-{kind_before}", kind_before)
    with mlflow.start_run(experiment_id=exp, run_name=configured_name or "__default__") as run:
        MlflowRunNamingHook().before_pipeline_run({"pipeline_names": None, "env": "local"})
    stored = client.get_run(run.info.run_id)
    assert re.fullmatch(name_after, stored.info.run_name), stored.info.run_name
    assert stored.data.tags["mlflow.note.content"].startswith("The whole study")
    assert client.get_experiment(exp).tags[EXPERIMENT_KIND_TAG] == kind_after


def test_the_hook_does_nothing_without_an_active_run(tracking: str) -> None:
    from cxr_spurious.datasets import mlflow_run

    assert mlflow.active_run() is None
    hook = MlflowRunNamingHook()
    hook.before_pipeline_run({"pipeline_names": ["training"]})
    assert mlflow.active_run() is None and mlflow_run.run_for_logging() is None
    hook.on_pipeline_error()
    assert not mlflow_run.session_untracked()


def test_mlflow_yml_creates_the_experiment_as_model_training() -> None:
    conf = yaml.safe_load((REPO / "conf/base/mlflow.yml").read_text(encoding="utf-8"))
    tags = conf["tracking"]["experiment"]["create_experiment_kwargs"]["tags"]
    assert tags == {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    assert conf["tracking"]["run"]["name"] is None  # the hook names the run


def test_child_runs_carry_a_description(tracking: str) -> None:
    client = MlflowClient(tracking)
    exp = _experiment(client, "children", None)
    record = {
        "run_name": "box-box-unet_small-none-seed1",
        "tags": {"variant": "box", "supervision": "box", "architecture": "unet_small"},
        "params": {"pretrained": "False", "n_train_images": 59, "resampling": "none", "seed": 1},
    }
    with mlflow.start_run(experiment_id=exp) as parent:
        dataset = MlflowChildRunDataset(log_model=False)
        dataset.save(record)
        dataset.save({**record, "run_name": "custom", "description": "A hand-written\nnote."})
    runs = {
        r.info.run_name: r
        for r in client.search_runs([exp])
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert runs["box-box-unet_small-none-seed1"].data.tags["mlflow.note.content"] == (
        "box: trained on image labels + bounding-box masks; unet_small from scratch; "
        "59 training images (resampling none), seed 1"
    )
    assert runs["custom"].data.tags["mlflow.note.content"] == "A hand-written note."


def test_describe_variant_without_details() -> None:
    assert describe_variant({"variant": "x"}, {}) == "x"
    assert describe_variant({"variant": "m", "supervision": "multitask"}, {"seed": 2}) == (
        "m: trained on image labels + a segmentation head (multitask); seed 2"
    )


def test_the_findings_table_and_figure_are_parent_run_artifacts(
    tracking: str, tmp_path: Path
) -> None:
    """``catalog_study.yml`` logs them to the session's (parent) run, not a child run."""
    catalog_conf = yaml.safe_load(
        (REPO / "conf/base/catalog_study.yml").read_text(encoding="utf-8")
    )
    entries = {}
    for name in ("study_findings", "study_findings_figure"):
        entry = dict(catalog_conf[name])
        assert entry["type"] == "cxr_spurious.datasets.mlflow_run.MlflowRunArtifactDataset", name
        entry["dataset"] = {
            **entry["dataset"],
            "filepath": str(tmp_path / Path(entry["dataset"]["filepath"]).name),
        }
        entries[name] = entry
    catalog = DataCatalog.from_config(entries)
    fig = Figure()
    fig.subplots().plot([0, 1], [0, 1])
    client = MlflowClient(tracking)
    exp = _experiment(client, "parent-artifacts", None)
    with mlflow.start_run(experiment_id=exp) as parent:
        catalog.save("study_findings", pd.DataFrame({"model": ["erm"], "auroc": [0.8]}))
        catalog.save("study_findings_figure", fig)
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"study_findings.csv", "study_findings.png"} <= logged


def test_an_untracked_pipeline_saves_parent_artifacts_without_logging(
    tracking: str, tmp_path: Path
) -> None:
    """With no run (mlflow.yml does not track the pipeline) the file is written, nothing
    is logged, and the naming hook marks the session untracked until the pipeline ends."""
    from cxr_spurious.datasets import mlflow_run

    hook = MlflowRunNamingHook()
    hook.before_pipeline_run({"pipeline_names": ["training"]})  # no active run
    try:
        assert mlflow_run.session_untracked()
        ds = mlflow_run.MlflowRunArtifactDataset(
            {"type": "pandas.CSVDataset", "filepath": str(tmp_path / "t.csv")}
        )
        with mlflow.start_run() as other:  # a run a user opened: still not the pipeline's
            ds._logging_activated = False  # what kedro-mlflow's switch does
            ds.save(pd.DataFrame({"a": [1]}))
        assert (tmp_path / "t.csv").exists()
        assert MlflowClient(tracking).list_artifacts(other.info.run_id) == []
    finally:
        hook.after_pipeline_run()
    assert not mlflow_run.session_untracked()
