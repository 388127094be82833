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

``BatchedParamsMlflowHook`` is kedro-mlflow's hook (registered from ``settings.HOOKS``, the
plugin's own entry-point instance is disabled there) with one change: the ``params:`` inputs of
a node are sent to MLflow in one ``log_batch`` call, and a parameter already logged in this run
with the same value is not sent again. kedro-mlflow logs them one ``log_param`` call each, and
each call re-reads the whole run from the tracking store, so a pipeline with many nodes paid a
cost that grew with the number of parameters already logged: in the 240-model sweep grid, 36 %
of the wall time before training went to it (py-spy, 2026-12-05).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import CatalogProtocol
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
from kedro_mlflow.framework.hooks.utils import _flatten_dict
from mlflow.entities import Param, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

from cxr_spurious.datasets.mlflow_run import RunReference, remember_session_run, url_suffix
from cxr_spurious.hooks import STAGES

logger = logging.getLogger(__name__)


def end_interrupted_runs() -> list[str]:
    """End every active MLflow run of this process as KILLED (a ``kedro run`` stopped by
    Ctrl-C: Kedro calls ``on_pipeline_error`` for exceptions only, and MLflow would record
    the session's run as FINISHED at exit). Returns the ids of the runs ended."""
    ended = []
    killed = RunStatus.to_string(RunStatus.KILLED)
    try:
        while (active := mlflow.active_run()) is not None:
            ended.append(active.info.run_id)
            mlflow.end_run(killed)
    except Exception as exc:  # cleanup on the way out: keep the interrupt
        logger.warning("Could not mark the MLflow run(s) %s as KILLED: %s", ended, exc)
    return ended


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
        if run is None:  # tracking disabled for this pipeline (mlflow.yml)
            remember_session_run(None, untracked=True)
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
        logger.info(
            "MLflow run '%s' (%s)%s",
            tags.get("mlflow.runName", run.info.run_name),
            run.info.run_id,
            url_suffix(mlflow.get_tracking_uri(), run.info.experiment_id, run.info.run_id),
        )

    @hook_impl
    def after_pipeline_run(self) -> None:
        remember_session_run(None)

    @hook_impl
    def on_pipeline_error(self) -> None:
        remember_session_run(None)


def node_params(inputs: dict[str, Any]) -> dict[str, Any]:
    """A node's parameter inputs by name (``params:a.b`` -> ``a.b``; ``parameters`` kept)."""
    found: dict[str, Any] = {}
    for name, value in inputs.items():
        if name.startswith("params:"):
            found[name[len("params:") :]] = value
        elif name == "parameters":
            found[name] = value
    return found


class BatchedParamsMlflowHook(MlflowHook):
    """kedro-mlflow's hook, logging parameters in batches, each value once.

    Same parameters, names (flattened with ``tracking.params.dict_params``, sanitised) and
    long-value strategy (``truncate``, ``tag`` or ``fail``) as kedro-mlflow. Every parameter
    input of the pipeline is logged when the pipeline starts, in the session's process, so
    runs under ``ParallelRunner`` or ``DaskRunner`` (whose node hooks run in workers that do
    not know the session's run) record them too; each node then sends only what is new to
    this process. A parameter whose value changes within a run is still sent, so MLflow
    refuses it as before.
    """

    def __init__(self) -> None:
        super().__init__()
        self._logged: dict[str, str] = {}

    @hook_impl
    def before_pipeline_run(
        self, run_params: dict[str, Any], pipeline: Pipeline, catalog: CatalogProtocol
    ) -> None:
        self._logged = {}
        # The hook outlives a session (one instance in settings.HOOKS): kedro-mlflow keeps
        # the last session's run id, and its before_node_run would reopen that (finished)
        # run in a later session whose pipeline is not tracked.
        self.run_id = None
        super().before_pipeline_run(run_params=run_params, pipeline=pipeline, catalog=catalog)
        if not self._is_mlflow_enabled or self.run_id is None:
            return
        try:
            names = sorted(
                n for n in pipeline.inputs() if n.startswith("params:") or n == "parameters"
            )
            self._log_params(node_params({n: catalog.load(n) for n in names}), "the pipeline")
        except BaseException:
            # Kedro calls this hook outside the try whose except calls on_pipeline_error:
            # close the run here, or it stays RUNNING (and MLflow ends it FINISHED at exit).
            self._fail_pipeline_run()
            raise

    def _fail_pipeline_run(self) -> None:
        """End the pipeline's MLflow run as FAILED (what kedro-mlflow's on_pipeline_error does)."""
        if getattr(self, "_already_active_mlflow", False):
            logger.warning(
                "The MLflow run %s was open before 'kedro run' started, so it is not closed;"
                " close it yourself",
                self.run_id,
            )
            return
        failed = RunStatus.to_string(RunStatus.FAILED)
        try:
            while mlflow.active_run() is not None:
                mlflow.end_run(failed)
            MlflowClient().set_terminated(self.run_id, failed)
        except Exception as exc:  # keep the original error; this is cleanup
            logger.warning("Could not mark the MLflow run %s as FAILED: %s", self.run_id, exc)
        else:
            logger.info("The MLflow run %s was closed as FAILED", self.run_id)

    @hook_impl
    def before_node_run(
        self, node: Node, catalog: CatalogProtocol, inputs: dict[str, Any], is_async: bool
    ) -> None:
        params = node_params(inputs)
        others = {
            name: value
            for name, value in inputs.items()
            if not name.startswith("params:") and name != "parameters"
        }
        # kedro-mlflow reopens the session's run in this thread / process; given no
        # parameter inputs it logs nothing itself.
        super().before_node_run(node=node, catalog=catalog, inputs=others, is_async=is_async)
        if self._is_mlflow_enabled and self.run_id is not None and params:
            self._log_params(params, f"node '{node.name}'")

    def _log_params(self, params: dict[str, Any], where: str) -> None:
        if self.flatten:
            params = _flatten_dict(d=params, recursive=self.recursive, sep=self.sep)
        batch: dict[str, str] = {}
        tags: dict[str, str] = {}
        for name, value in params.items():
            text = str(value)
            if self._logged.get(name) == text:
                continue
            self._logged[name] = text
            key = self.sanitize_param_name(name)
            if len(text) <= MAX_PARAM_VAL_LENGTH:
                batch[key] = text
            elif self.long_params_strategy == "fail":
                raise ValueError(
                    f"Parameter '{name}' of {where} is {len(text)} characters "
                    f"long; MLflow accepts at most {MAX_PARAM_VAL_LENGTH}. Set "
                    "tracking.params.long_params_strategy to 'tag' or 'truncate' in mlflow.yml."
                )
            elif self.long_params_strategy == "tag":
                logger.warning("Parameter '%s' (%d characters) is logged as a tag", key, len(text))
                tags[key] = text
            else:
                logger.warning(
                    "Parameter '%s' (%d characters) is truncated to its first %d",
                    key,
                    len(text),
                    MAX_PARAM_VAL_LENGTH,
                )
                batch[key] = text[:MAX_PARAM_VAL_LENGTH]
        items = [Param(key, value) for key, value in batch.items()]
        client = MlflowClient()
        for start in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            client.log_batch(self.run_id, params=items[start : start + MAX_PARAMS_TAGS_PER_BATCH])
        for key, value in tags.items():
            client.set_tag(self.run_id, key, value)
