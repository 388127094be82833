"""Node parameters reach MLflow as kedro-mlflow logs them, in one batch, each value once
(``cxr_spurious.tracking.BatchedParamsMlflowHook``; a temporary SQLite store)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import mlflow
import pandas as pd
import pytest
from kedro.framework.hooks.manager import (
    _create_hook_manager,
    _register_hooks,
    _register_hooks_entry_points,
)
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node
from kedro_mlflow.framework.hooks.mlflow_hook import MlflowHook
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cxr_spurious import settings
from cxr_spurious.tracking import BatchedParamsMlflowHook, node_params

NODE = node(lambda: None, inputs=None, outputs="nothing", name="some_node")


def _experiment(name: str) -> str:
    """A new experiment, made the active one (MLflow refuses to reopen a run of another
    experiment than the active one, which an earlier test in this process may have set)."""
    return mlflow.set_experiment(name).experiment_id


def _configured(hook: MlflowHook, run_id: str, strategy: str = "truncate") -> MlflowHook:
    """The state kedro-mlflow's ``before_pipeline_run`` leaves for ``before_node_run``."""
    hook._is_mlflow_enabled = True
    hook.flatten, hook.recursive, hook.sep = True, True, "."
    hook.long_params_strategy = strategy
    hook.run_id = run_id
    hook.mlflow_config = SimpleNamespace(tracking=SimpleNamespace(run=SimpleNamespace(nested=True)))
    return hook


def _inputs() -> dict[str, Any]:
    return {
        "params:training": {"epochs": 4, "optimizer": {"lr": 1e-3, "name": "adam"}},
        "params:sweep_tube_s0.variant": {"seed": 0, "supervision": "seg", "bad key!": 1},
        "params:study.n_boot": 200,
        "params:long": "x" * 7000,
        "features": pd.DataFrame({"a": [1, 2]}),
    }


def _end_runs() -> None:
    """kedro-mlflow reopens the session's run in each node (as its ``after_pipeline_run``
    does, end every level)."""
    while mlflow.active_run() is not None:
        mlflow.end_run()


def _params_logged_by(hook: MlflowHook, experiment: str) -> dict[str, str]:
    run_id = mlflow.start_run(experiment_id=experiment).info.run_id
    try:
        _configured(hook, run_id).before_node_run(NODE, None, _inputs(), False)
    finally:
        _end_runs()
    return MlflowClient().get_run(run_id).data.params


def test_node_params_picks_parameter_inputs() -> None:
    assert node_params({"params:a.b": 1, "parameters": {"c": 2}, "data": 3}) == {
        "a.b": 1,
        "parameters": {"c": 2},
    }


def test_the_same_params_as_kedro_mlflow_logs(tracking: str) -> None:
    experiment = _experiment("params-parity")
    reference = _params_logged_by(MlflowHook(), experiment)
    batched = _params_logged_by(BatchedParamsMlflowHook(), experiment)
    assert batched == reference
    assert batched["training.optimizer.lr"] == "0.001"
    assert batched["sweep_tube_s0.variant.bad key_"] == "1"  # sanitised as kedro-mlflow does
    assert len(batched["long"]) == 6000  # truncated


def test_one_batch_per_node_and_each_value_once(
    tracking: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = MlflowClient.log_batch

    def counting(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        calls.append(len(params))
        return original(self, run_id, metrics=metrics, params=params, tags=tags, **kwargs)

    def one_by_one(*args, **kwargs):
        raise AssertionError("a parameter was logged on its own (mlflow.log_param)")

    monkeypatch.setattr(MlflowClient, "log_batch", counting)
    monkeypatch.setattr(mlflow, "log_param", one_by_one)
    experiment = _experiment("params-batches")
    hook = BatchedParamsMlflowHook()
    many = {"params:grid": {f"p{i:03d}": i for i in range(150)}}
    run = mlflow.start_run(experiment_id=experiment)
    try:
        _configured(hook, run.info.run_id)
        hook.before_node_run(NODE, None, _inputs(), False)
        assert calls == [8]  # every parameter of the node in one call
        hook.before_node_run(NODE, None, _inputs(), False)
        assert calls == [8]  # nothing new: nothing sent
        hook.before_node_run(NODE, None, many, False)
        assert calls == [8, 100, 50]  # MLflow's limit of 100 per batch
        changed = {"params:study.n_boot": 500}
        with pytest.raises(MlflowException, match="n_boot"):
            hook.before_node_run(NODE, None, changed, False)  # refused, as before
    finally:
        _end_runs()
    assert len(MlflowClient().get_run(run.info.run_id).data.params) == 158


def test_fail_strategy_names_the_parameter_and_node(tracking: str) -> None:
    experiment = _experiment("params-fail")
    run = mlflow.start_run(experiment_id=experiment)
    try:
        hook = _configured(BatchedParamsMlflowHook(), run.info.run_id, strategy="fail")
        with pytest.raises(ValueError, match="Parameter 'long' of node 'some_node' is 7000"):
            hook.before_node_run(NODE, None, _inputs(), False)
    finally:
        _end_runs()


@pytest.mark.parametrize("failure", ["long_param", "interrupt"])
def test_a_failure_in_before_pipeline_run_marks_the_run_failed(
    tracking: str, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """Kedro calls before_pipeline_run outside the try that calls on_pipeline_error: a
    failure after the run started must still end it FAILED, not leave it RUNNING."""
    experiment = _experiment("params-before-pipeline-fails")

    def kedro_mlflow_starts_the_run(self, run_params, pipeline, catalog) -> None:
        _configured(self, mlflow.start_run(experiment_id=experiment).info.run_id, "fail")
        self._already_active_mlflow = False

    monkeypatch.setattr(MlflowHook, "before_pipeline_run", kedro_mlflow_starts_the_run)
    value: Any = "x" * 7000
    error: type[BaseException] = ValueError
    if failure == "interrupt":

        def interrupted(_: str) -> Any:
            raise KeyboardInterrupt

        value, error = "short", KeyboardInterrupt
    catalog = DataCatalog(datasets={"params:notes": MemoryDataset(value)})
    if failure == "interrupt":
        monkeypatch.setattr(catalog, "load", interrupted)
    hook = BatchedParamsMlflowHook()
    pipeline = Pipeline([node(lambda x: None, "params:notes", None, name="n")])
    try:
        with pytest.raises(error):
            hook.before_pipeline_run(run_params={}, pipeline=pipeline, catalog=catalog)
        assert mlflow.active_run() is None
    finally:
        _end_runs()
    assert MlflowClient().get_run(hook.run_id).info.status == "FAILED"


def test_the_project_registers_exactly_one_mlflow_hook() -> None:
    manager = _create_hook_manager()
    _register_hooks(manager, settings.HOOKS)
    _register_hooks_entry_points(manager, settings.DISABLE_HOOKS_FOR_PLUGINS)
    hooks = [p for p in manager.get_plugins() if isinstance(p, MlflowHook)]
    assert len(hooks) == 1 and isinstance(hooks[0], BatchedParamsMlflowHook)


def test_a_later_untracked_pipeline_does_not_reopen_the_last_run(tracking: str) -> None:
    """The hook lives for the whole process (one instance in settings.HOOKS): a session
    whose pipeline mlflow.yml does not track must not reopen the last session's run."""
    from kedro_mlflow.config.kedro_mlflow_config import KedroMlflowConfig

    experiment = _experiment("params-untracked-later-session")
    hook = BatchedParamsMlflowHook()
    earlier = mlflow.start_run(experiment_id=experiment).info.run_id
    mlflow.end_run("FAILED")  # the earlier session's run, closed by kedro-mlflow
    _configured(hook, earlier)
    hook._already_active_mlflow = False
    hook.mlflow_config = KedroMlflowConfig(
        tracking={"disable_tracking": {"pipelines": ["untracked"]}}
    )
    pipeline = Pipeline([NODE])
    try:
        hook.before_pipeline_run(
            run_params={"pipeline_names": ["untracked"]}, pipeline=pipeline, catalog=DataCatalog()
        )
        assert not hook._is_mlflow_enabled and hook.run_id is None
        hook.before_node_run(NODE, DataCatalog(), {"params:x": 1}, False)
        assert mlflow.active_run() is None
    finally:
        _end_runs()
    assert MlflowClient().get_run(earlier).info.status == "FAILED"
