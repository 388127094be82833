"""``MlflowChildRunDataset``: log one trained variant as its own (child) MLflow run.

``save(record)`` takes::

    {"run_name": "seg-seg-unet_small-none-seed0",
     "tags": {...}, "params": {...},
     "metric_history": {"train_loss": [per epoch], "val_auroc": [...], ...},
     "metrics": {"test_Pneumothorax_auroc": 0.9, ...},
     "figures": {"training_curves.png": matplotlib Figure},
     "model": torch nn.Module (logged with the MLflow pytorch flavour) or None}

and creates a run nested under the active run (the kedro-mlflow session run), in the
active run's experiment; with no active run it creates a top-level run in ``experiment``.
The tracking URI is ``tracking_uri`` if given, else whatever MLflow is configured with
(``MLFLOW_TRACKING_URI`` or the URI kedro-mlflow set from ``conf/*/mlflow.yml``). The git
commit of the project is added as the ``git_commit`` parameter. Loading returns the
latest run's data (params, metrics) of that run name, for inspection.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from kedro.io import AbstractDataset
from kedro.io.core import DatasetError
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

_MAX_BATCH = 900  # MLflow's log_batch limit is 1000 metrics per call


def git_commit(path: str | Path = ".") -> str:
    """The ``HEAD`` commit of the repository containing ``path`` ("unknown" outside git)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=path,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class MlflowChildRunDataset(AbstractDataset[Mapping[str, Any], dict[str, Any]]):
    """Write a run record as one MLflow run (nested under the active run when there is one)."""

    def __init__(
        self,
        experiment: str | None = None,
        tracking_uri: str | None = None,
        log_model: bool = True,
        pip_requirements: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Create the dataset.

        Args:
            experiment: Experiment of top-level runs (used when no run is active).
            tracking_uri: Tracking URI; None = MLflow's current one.
            log_model: Log ``record["model"]`` with ``mlflow.pytorch.log_model``.
            pip_requirements: Requirements stored with the model (default: this torch).
            metadata: Free-form metadata (kedro-viz layer).
        """
        self._experiment = experiment
        self._tracking_uri = tracking_uri
        self._log_model = log_model
        self._pip_requirements = pip_requirements
        self._last_run_id: str | None = None
        self.metadata = metadata

    def _client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self._tracking_uri or mlflow.get_tracking_uri())

    def _experiment_id(self, client: MlflowClient, parent: Any) -> str:
        if parent is not None:
            return parent.info.experiment_id
        name = self._experiment or "Default"
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else client.create_experiment(name)

    def save(self, data: Mapping[str, Any]) -> None:
        """Create the run and log params, tags, metric history, metrics, figures and model."""
        if not isinstance(data, Mapping) or "run_name" not in data:
            raise DatasetError(
                f"MlflowChildRunDataset expects a record dict with 'run_name', got {type(data).__name__}"
            )
        if self._tracking_uri:
            mlflow.set_tracking_uri(self._tracking_uri)
        client = self._client()
        parent = mlflow.active_run()
        tags = {str(k): str(v) for k, v in (data.get("tags") or {}).items()}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.info.run_id
        run = client.create_run(
            self._experiment_id(client, parent), run_name=str(data["run_name"]), tags=tags
        )
        run_id = run.info.run_id
        try:
            self._log_values(client, run_id, data)
            self._log_figures(client, run_id, data.get("figures") or {})
            if self._log_model and data.get("model") is not None:
                self._log_torch_model(client, run_id, data["model"])
            client.set_terminated(run_id, "FINISHED")
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        self._last_run_id = run_id
        logger.info(
            "Logged MLflow run '%s' (%s)%s",
            data["run_name"],
            run_id,
            f" under {parent.info.run_id}" if parent else "",
        )

    @staticmethod
    def _log_values(client: MlflowClient, run_id: str, data: Mapping[str, Any]) -> None:
        params = {
            "git_commit": git_commit(),
            **{str(k): v for k, v in (data.get("params") or {}).items()},
        }
        metrics: list[Metric] = []
        for name, values in (data.get("metric_history") or {}).items():
            for step, value in enumerate(values, start=1):
                if value is not None:
                    metrics.append(Metric(str(name), float(value), 0, step))
        for name, value in (data.get("metrics") or {}).items():
            if value is not None:
                metrics.append(Metric(str(name), float(value), 0, 0))
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        for start in range(0, len(metrics), _MAX_BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + _MAX_BATCH])

    @staticmethod
    def _log_figures(client: MlflowClient, run_id: str, figures: Mapping[str, Any]) -> None:
        for name, fig in figures.items():
            client.log_figure(run_id, fig, str(name))

    def _log_torch_model(self, client: MlflowClient, run_id: str, model: Any) -> None:
        """Save with the pytorch flavour and upload as the run's ``model`` artifact.

        (No fluent ``start_run`` here: it would clash with the session's active experiment.)
        """
        import mlflow.pytorch
        import torch

        requirements = self._pip_requirements or [f"torch=={torch.__version__.split('+')[0]}"]
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "model"
            mlflow.pytorch.save_model(
                model.cpu().eval(),
                str(target),
                pip_requirements=requirements,
                serialization_format="pickle",
            )
            client.log_artifacts(run_id, str(target), "model")

    def load(self) -> dict[str, Any]:
        """Params and latest metrics of the run this dataset last wrote."""
        if self._last_run_id is None:
            raise DatasetError(
                "MlflowChildRunDataset has not written a run in this session; nothing to load"
            )
        run = self._client().get_run(self._last_run_id)
        return {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        }

    def _exists(self) -> bool:
        return self._last_run_id is not None

    def _describe(self) -> dict[str, Any]:
        return {"experiment": self._experiment, "tracking_uri": self._tracking_uri}
