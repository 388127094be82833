"""MLflow runs a person can compare: what ran and when, on the training-runs view.

``MlflowRunNamingHook`` runs after kedro-mlflow has started the session's (parent) run:

* names the run for what ran and when (``run_title``: ``study 2026-12-04 17:40`` for the
  default pipeline, ``comparison ...``, ``sweep ...``, ``ingestion+training ...``) instead of
  kedro-mlflow's pipeline name (``__default__``); a name set in ``conf/*/mlflow.yml``
  (``tracking.run.name``) is kept;
* gives it a one-line description (the ``mlflow.note.content`` tag, shown in the UI);
* records the run as this process's session run
  (``cxr_spurious.datasets.mlflow_run.remember_session_run``, forgotten when the pipeline
  ends), so that the MLflow datasets pickled for other processes (``ParallelRunner``,
  ``DaskRunner``) carry it and log there;
* marks the experiment as model training (``EXPERIMENT_KIND``; kept if someone chose another
  kind). MLflow UIs that read the tag open the experiment on its runs table; MLflow 3.17 lets
  a browser-wide switch (GenAI / Model training, top left, remembered by the browser) decide,
  so the README links to ``#/experiments/<id>?workflowType=machine_learning``.

Each variant's child run gets its own description from ``MlflowChildRunDataset``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from mlflow.tracking import MlflowClient

from cxr_spurious.datasets.mlflow_run import RunReference, remember_session_run
from cxr_spurious.hooks import STAGES

logger = logging.getLogger(__name__)

#: The experiment tag the MLflow UI reads to choose an experiment's first view.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: "Traditional ML" experiments open on the runs table (MLflow 3).
EXPERIMENT_KIND = "custom_model_development"
#: The tag the MLflow UI shows as a run's description.
DESCRIPTION_TAG = "mlflow.note.content"

#: Names given to registered pipelines in run titles.
_TITLES = {"__default__": "study"}
#: What a run of each pipeline does, for the parent run's description.
_DESCRIPTIONS = {
    "study": "the whole study: each trained variant is a child run; the findings table and "
    "figures are this run's artifacts",
    "comparison": "the headline comparison: every variant on the same data, a child run each",
    "sweep": "the shortcut sweep over its grid (parameters_sweep.yml)",
}


def pipeline_names(run_params: dict[str, Any]) -> list[str]:
    """The pipelines of a run (``__default__`` when none), in study order (``STAGES``)."""
    return sorted(_as_list(run_params), key=lambda n: (STAGES.index(n) if n in STAGES else -1, n))


def _as_list(run_params: dict[str, Any]) -> list[str]:
    """The pipelines as kedro-mlflow reads them (in the order given)."""
    names = run_params.get("pipeline_name") or run_params.get("pipeline_names") or ["__default__"]
    return [names] if isinstance(names, str) else [str(n) for n in names]


def run_title(names: Sequence[str], when: datetime) -> str:
    """``"<what ran> <YYYY-MM-DD HH:MM>"``, e.g. ``study 2026-12-04 17:40``."""
    what = "+".join(_TITLES.get(n, n) for n in names)
    return f"{what} {when:%Y-%m-%d %H:%M}"


def run_description(names: Sequence[str], run_params: dict[str, Any]) -> str:
    """One line on what the run did: the pipelines, the environment, parameter overrides."""
    titles = [_TITLES.get(n, n) for n in names]
    if len(titles) == 1 and titles[0] in _DESCRIPTIONS:
        what = _DESCRIPTIONS[titles[0]]
    else:
        what = f"the pipeline(s) {', '.join(titles)}"
    extra = run_params.get("runtime_params") or run_params.get("extra_params") or {}
    setting = f"env {run_params.get('env') or 'local'}"
    if extra:
        setting += ", " + ", ".join(f"{k}={v}" for k, v in sorted(_flatten(extra).items()))
    return f"{what[0].upper()}{what[1:]} ({setting})."


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(_flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def mark_experiment_kind(client: MlflowClient, experiment_id: str) -> None:
    """Tag the experiment as model training unless a kind was chosen (not just inferred)."""
    current = client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG)
    if current is None or current.endswith("_inferred") or current == "no_inferred_type":
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


class MlflowRunNamingHook:
    """Name and describe the session's MLflow run; set the experiment's kind; record it as
    the run that datasets in other processes log under."""

    @hook_impl(trylast=True)  # after kedro-mlflow's hook has started the run
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        run = mlflow.active_run()
        if run is None:  # tracking disabled for this pipeline
            remember_session_run(None)
            return
        remember_session_run(RunReference(run.info.run_id, mlflow.get_tracking_uri()))
        names = pipeline_names(run_params)
        client = MlflowClient()
        tags: dict[str, str] = {}
        default_name = "+".join(_as_list(run_params))  # kedro-mlflow's name: the pipelines
        if run.info.run_name in (default_name, None, ""):
            tags["mlflow.runName"] = run_title(names, datetime.now())
        if DESCRIPTION_TAG not in run.data.tags:
            tags[DESCRIPTION_TAG] = run_description(names, run_params)
        for key, value in tags.items():
            client.set_tag(run.info.run_id, key, value)
        mark_experiment_kind(client, run.info.experiment_id)
        if "mlflow.runName" in tags:
            logger.info("MLflow run '%s' (%s)", tags["mlflow.runName"], run.info.run_id)

    @hook_impl
    def after_pipeline_run(self) -> None:
        remember_session_run(None)

    @hook_impl
    def on_pipeline_error(self) -> None:
        remember_session_run(None)
