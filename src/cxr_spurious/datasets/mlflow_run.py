"""``MlflowChildRunDataset``: log one trained variant as its own (child) MLflow run.

``save(record)`` takes::

    {"run_name": "seg-seg-unet_small-none-seed0",
     "description": "one line" (optional; default: ``describe_variant`` of the tags / params),
     "tags": {...}, "params": {...},
     "metric_history": {"train_loss": [per epoch], "val_auroc": [...], ...},
     "metrics": {"test_Pneumothorax_auroc": 0.9, ...},
     "figures": {"training_curves.png": matplotlib Figure},
     "model": {"state_dict": ..., "config": ...} (what ``TorchModelDataset`` saves) or None}

and creates a run nested under the active run (the kedro-mlflow session run), in the
active run's experiment; with no active run it creates a top-level run in ``experiment``.
It exists (``kedro run --only-missing-outputs`` skips it) once saved in this process, or
when the experiment already holds a finished run of the trained model at ``model_filepath``
(the catalog's ``data/06_models/{variant}/model.pt``): a run whose ``variant`` and
``model_fingerprint`` tags are that artifact's (the training pipeline's record carries
them). Without ``model_filepath``, or for a model file without a fingerprint, only a save
in this process counts.
The run's description (the ``mlflow.note.content`` tag the MLflow UI shows) says what the
variant is: supervision, architecture, data (``describe_variant``).
The tracking URI is ``tracking_uri`` if given, else whatever MLflow is configured with
(``MLFLOW_TRACKING_URI`` or the URI kedro-mlflow set from ``conf/*/mlflow.yml``). The git
commit of the project is added as the ``git_commit`` parameter. Loading returns the
data (params, metrics) of the run saved (or, found as above, the existing one), for
inspection.

The model is logged as the run artifact ``model/model.pt``: the same ``{"state_dict",
"config"}`` file the catalog writes, readable with ``torch.load(weights_only=True)`` (no
MLflow pytorch flavour, whose pickled model would run code when loaded), plus
``model/config.json`` for reading in the UI. ``load_model_from_run(run_id)`` rebuilds the
model from a run id; ``load_model_artifact(run_id)`` returns the raw artifact.

``MlflowRunArtifactDataset`` wraps a file dataset: each save also logs the file as an
artifact of the session's (parent) run (what kedro-mlflow's ``MlflowArtifactDataset``
does, as a class that pickles, so that ``ParallelRunner`` and ``DaskRunner`` can use it).

**Other processes.** Both datasets log under ``run_for_logging()``: the run active in this
thread, else the run of this process's Kedro session (``remember_session_run``, called by
``cxr_spurious.tracking.MlflowRunNamingHook`` while a pipeline runs), else the run they
carried: a dataset that is pickled (``ParallelRunner`` sends the catalog to its worker
processes, ``DaskRunner`` each node's datasets to its Dask worker) takes that run's id and
tracking URI with it, so a node saved in another process logs under the session's run. A
worker must reach the same tracking store (a relative ``sqlite:///mlflow.db`` resolves
against the worker's working directory, the client's for a ``LocalCluster``; an
``http://`` tracking server for remote workers).
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
import mlflow.artifacts
from kedro.io import AbstractDataset
from kedro.io.core import DatasetError, parse_dataset_definition
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cxr_spurious.training.provenance import MODEL_FINGERPRINT_KEY

logger = logging.getLogger(__name__)

_MAX_BATCH = 900  # MLflow's log_batch limit is 1000 metrics per call
MODEL_ARTIFACT = "model/model.pt"  #: path of the model file inside a run's artifacts
DESCRIPTION_TAG = "mlflow.note.content"  #: the tag the MLflow UI shows as a run's description
_LOCAL_PROTOCOLS = ("file", "local")  #: fsspec protocols of a local file

#: How each supervision (``training.config.SUPERVISIONS``) is described.
SUPERVISION_TEXT = {
    "erm": "image labels only (ERM)",
    "coarse": "image labels + coarse location masks",
    "box": "image labels + bounding-box masks",
    "seg": "image labels + segmentation masks",
    "multitask": "image labels + a segmentation head (multitask)",
}


def describe_variant(tags: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """One line on what a trained variant is: supervision, architecture, data.

    Example: ``erm: trained on image labels only (ERM); unet_small from scratch; 59 training
    images (resampling none), seed 0``.
    """
    info = {**{str(k): v for k, v in params.items()}, **{str(k): v for k, v in tags.items()}}

    def known(key: str) -> bool:
        return info.get(key) not in (None, "", "null")

    parts = [str(info.get("variant", "model"))]
    if known("supervision"):
        supervision = str(info["supervision"])
        parts[0] += f": trained on {SUPERVISION_TEXT.get(supervision, supervision)}"
    if known("architecture"):
        pretrained = str(info.get("pretrained", "")).lower() in ("true", "1", "imagenet")
        parts.append(f"{info['architecture']} {'pretrained' if pretrained else 'from scratch'}")
    data = f"{info['n_train_images']} training images" if known("n_train_images") else ""
    if known("resampling"):
        data += f" (resampling {info['resampling']})"
    if known("seed"):
        data += f", seed {info['seed']}" if data else f"seed {info['seed']}"
    if data.strip():
        parts.append(data.strip())
    return "; ".join(parts)


@dataclass(frozen=True)
class RunReference:
    """An MLflow run and the tracking URI of its store."""

    run_id: str
    tracking_uri: str


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page in the MLflow UI of a tracking server (``http(s)://`` URIs), as MLflow
    links it (``<server>/#/experiments/<id>/runs/<run>``); None for a local store (SQLite,
    files), which has no server to link to. A user name and password in the URI
    (``https://user:secret@host``) are left out: the link goes into log lines."""
    if not tracking_uri.lower().startswith(("http://", "https://")):
        return None
    server = _without_credentials(tracking_uri).split("#", 1)[0].rstrip("/")
    return f"{server}/#/experiments/{experiment_id}/runs/{run_id}"


def _without_credentials(uri: str) -> str:
    """``uri`` without the user name and password of its address
    (``postgresql://user:secret@host/db`` -> ``postgresql://host/db``), for log lines."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def url_suffix(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """``": <run_url>"`` for a tracking server, "" for a local store (log-line helper)."""
    url = run_url(tracking_uri, experiment_id, run_id)
    return f": {url}" if url else ""


_session_run: RunReference | None = None
_session_untracked = False


def remember_session_run(run: RunReference | None, *, untracked: bool = False) -> None:
    """Record (or, with None, forget) the run of this process's Kedro session.

    ``mlflow.active_run()`` is per thread; the session's run must also be found by the
    threads that pickle datasets for other processes (e.g. Dask's event loop).

    Args:
        run: The session's run; None when there is none (or the pipeline has ended).
        untracked: The running pipeline is one ``mlflow.yml`` does not track
            (``tracking.disable_tracking.pipelines``): the datasets here log nothing.
    """
    global _session_run, _session_untracked
    _session_run = run
    _session_untracked = untracked and run is None


def session_untracked() -> bool:
    """Whether this process runs a pipeline that ``mlflow.yml`` does not track."""
    return _session_untracked


def run_for_logging() -> RunReference | None:
    """The run to log under in this process: the one active in this thread, else the
    Kedro session's (``remember_session_run``); None when there is neither."""
    active = mlflow.active_run()
    if active is not None:
        return RunReference(active.info.run_id, mlflow.get_tracking_uri())
    return _session_run


class _CarriesRun:
    """Mixin: the dataset takes ``run_for_logging()`` along when it is pickled, and whether
    the session's pipeline is tracked at all."""

    _carried_run: RunReference | None = None
    _carried_untracked = False
    #: kedro-mlflow's switch (``switch_catalog_logging``) for pipelines it does not track;
    #: it reaches only catalog entries whose class name starts with "Mlflow" (not through a
    #: wrapper such as ``SkippableDataset``), so ``session_untracked()`` is checked as well.
    _logging_activated = True

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_carried_run"] = run_for_logging() or self._carried_run
        state["_carried_untracked"] = session_untracked() or self._carried_untracked
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def _run(self) -> RunReference | None:
        """The run to log under: this process's, else the one carried from the client."""
        return run_for_logging() or self._carried_run

    def _tracking_off(self) -> bool:
        """The pipeline saving this dataset is one ``mlflow.yml`` leaves untracked."""
        return not self._logging_activated or session_untracked() or self._carried_untracked


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


class MlflowChildRunDataset(_CarriesRun, AbstractDataset[Mapping[str, Any], dict[str, Any]]):
    """Write a run record as one MLflow run (nested under the session's run when there is
    one: ``run_for_logging()``, or the run it carried to this process)."""

    def __init__(
        self,
        experiment: str | None = None,
        tracking_uri: str | None = None,
        log_model: bool = True,
        model_filepath: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Create the dataset.

        Args:
            experiment: Experiment of top-level runs (used when no run is active).
            tracking_uri: Tracking URI; None = MLflow's current one.
            log_model: Log ``record["model"]`` as the ``model/model.pt`` artifact.
            model_filepath: The model file (``TorchModelDataset``) whose run this dataset
                logs: the dataset exists when the experiment holds a finished run tagged
                with that artifact's ``variant`` and ``model_fingerprint``. None: it exists
                only after a save in this process.
            metadata: Free-form metadata (kedro-viz layer).
        """
        self._experiment = experiment
        self._tracking_uri = tracking_uri
        self._log_model = log_model
        self._model_filepath = model_filepath
        self._last_run_id: str | None = None
        self._last_uri: str | None = None
        self._found: RunReference | None = None  # an existing run of the model (``_exists``)
        self.metadata = metadata

    def _uri(self, parent: RunReference | None) -> str:
        """The parent's store, else ``tracking_uri``, else MLflow's current one."""
        if parent is not None:
            return parent.tracking_uri
        return self._tracking_uri or mlflow.get_tracking_uri()

    def _parent(self, *, warn: bool = True) -> RunReference | None:
        """The run to nest under; None where ``tracking_uri`` names another store than the
        session run's (a run cannot have its parent in another store): then a top-level run
        in ``experiment`` of that store, and (with ``warn``) a warning says so."""
        parent = self._run()
        if parent is None or not self._tracking_uri:
            return parent
        if self._tracking_uri != parent.tracking_uri:
            if not warn:
                return None
            logger.warning(
                "MlflowChildRunDataset: tracking_uri %s is not the store of the session's run"
                " %s (%s); the run is logged there as a top-level run of experiment '%s'",
                _without_credentials(self._tracking_uri),
                parent.run_id,
                _without_credentials(parent.tracking_uri),
                self._experiment or "Default",
            )
            return None
        return parent

    def _experiment_id(self, client: MlflowClient, parent: RunReference | None) -> str:
        if parent is not None:
            return client.get_run(parent.run_id).info.experiment_id
        name = self._experiment or "Default"
        found = client.get_experiment_by_name(name)
        return found.experiment_id if found is not None else client.create_experiment(name)

    def save(self, data: Mapping[str, Any]) -> None:
        """Create the run and log params, tags, metric history, metrics, figures and model."""
        if not isinstance(data, Mapping) or "run_name" not in data:
            raise DatasetError(
                "MlflowChildRunDataset expects a record dict with 'run_name', "
                f"got {type(data).__name__}"
            )
        if self._tracking_off():
            logger.info(
                "MLflow tracking is off for this pipeline (mlflow.yml): run '%s' not logged",
                data["run_name"],
            )
            return
        # MLflow's process-wide tracking URI is left alone: the session's run and every
        # later log call of this process keep their store.
        parent = self._parent()
        uri = self._uri(parent)
        client = MlflowClient(tracking_uri=uri)
        tags = {str(k): str(v) for k, v in (data.get("tags") or {}).items()}
        tags.setdefault(
            DESCRIPTION_TAG,
            " ".join(
                str(
                    data.get("description") or describe_variant(tags, data.get("params") or {})
                ).split()
            ),
        )
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.run_id
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
        self._last_run_id, self._last_uri = run_id, uri
        logger.info(
            "Logged MLflow run '%s' (%s)%s%s",
            data["run_name"],
            run_id,
            f" under {parent.run_id}" if parent else "",
            url_suffix(uri, run.info.experiment_id, run_id),
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

    @staticmethod
    def _log_torch_model(client: MlflowClient, run_id: str, model: Any) -> None:
        """Upload the ``{"state_dict", "config"}`` artifact as ``model/model.pt`` (+ config.json).

        The weights are checked against the architecture first, and the file against
        ``torch.load(weights_only=True)`` (``artifact_bytes``): a run never holds a model
        that cannot be read back or rebuilt. No fluent ``start_run`` here: it would clash
        with the session's active experiment.
        """
        from cxr_spurious.datasets.torch_model import artifact_bytes
        from cxr_spurious.models import model_from_artifact

        if not isinstance(model, Mapping) or not {"state_dict", "config"} <= set(model):
            raise DatasetError(
                "MlflowChildRunDataset: record['model'] must be the model artifact "
                f"{{'state_dict', 'config'}} saved by the catalog, got {type(model).__name__}"
            )
        model_from_artifact(model, source="record['model']")  # weights fit the architecture
        payload = {
            "state_dict": {k: v.detach().cpu() for k, v in model["state_dict"].items()},
            "config": dict(model["config"]),
            **{k: model[k] for k in ("variant", "fingerprint") if model.get(k) is not None},
        }
        data = artifact_bytes(payload, f"runs:/{run_id}/{MODEL_ARTIFACT}")
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "model"
            target.mkdir()
            (target / "model.pt").write_bytes(data)
            (target / "config.json").write_text(
                json.dumps(payload["config"], indent=2, sort_keys=True, default=str) + "\n"
            )
            client.log_artifacts(run_id, str(target), "model")

    def load(self) -> dict[str, Any]:
        """Params and latest metrics of the run this dataset last wrote, else of the
        existing run of its model that ``exists()`` found."""
        if self._last_run_id is not None:
            run_id, uri = self._last_run_id, self._last_uri
        elif (found := self._existing_run()) is not None:
            run_id, uri = found.run_id, found.tracking_uri
        else:
            raise DatasetError(
                "MlflowChildRunDataset has not written a run in this session; nothing to load"
            )
        run = MlflowClient(tracking_uri=uri).get_run(run_id)
        return {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "params": dict(run.data.params),
            "metrics": dict(run.data.metrics),
        }

    def _exists(self) -> bool:
        """Saved in this process, or a finished run of the model at ``model_filepath`` is
        in the experiment (``_existing_run``)."""
        return self._last_run_id is not None or self._existing_run() is not None

    def _model_identity(self) -> tuple[str, str] | None:
        """``(variant, fingerprint)`` of the model file at ``model_filepath``; None without
        the option, the file, or those records (an older file), or for an unreadable file
        (whatever reads it next reports that)."""
        if not self._model_filepath:
            return None
        from cxr_spurious.datasets.torch_model import TorchModelDataset

        try:
            artifact = TorchModelDataset(filepath=self._model_filepath).load()
        except FileNotFoundError:
            return None
        except Exception as exc:  # a broken file: not this dataset's error to raise
            logger.debug("MlflowChildRunDataset: cannot read %s: %s", self._model_filepath, exc)
            return None
        variant, fingerprint = artifact.get("variant"), artifact.get("fingerprint")
        if not variant or not fingerprint:
            return None
        return str(variant), str(fingerprint)

    def _existing_run(self) -> RunReference | None:
        """A finished run in this dataset's experiment (the session run's, else
        ``experiment``) tagged with the ``variant`` and ``model_fingerprint`` of the model
        at ``model_filepath``: the record of that trained model, logged by an earlier run.
        None when there is none, when tracking is off for this pipeline, or when the store
        cannot be searched (with a warning: the record is then logged again)."""
        if self._found is not None:
            return self._found
        if self._tracking_off():
            return None
        identity = self._model_identity()
        if identity is None:
            return None
        variant, fingerprint = identity
        if "'" in variant or not fingerprint.isalnum():
            return None  # not a value a filter string can quote; never written by training
        parent = self._parent(warn=False)
        uri = self._uri(parent)
        client = MlflowClient(tracking_uri=uri)
        try:
            if parent is not None:
                experiment_id = client.get_run(parent.run_id).info.experiment_id
            else:
                found = client.get_experiment_by_name(self._experiment or "Default")
                if found is None:
                    return None
                experiment_id = found.experiment_id
            runs = client.search_runs(
                [experiment_id],
                filter_string=(
                    f"tags.variant = '{variant}' and tags.{MODEL_FINGERPRINT_KEY} = "
                    f"'{fingerprint}' and attributes.status = 'FINISHED'"
                ),
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
        except MlflowException as exc:
            logger.warning(
                "MlflowChildRunDataset: could not search %s for the run of model '%s' (%s); "
                "its run is logged again",
                _without_credentials(uri),
                variant,
                exc,
            )
            return None
        if not runs:
            return None
        self._found = RunReference(runs[0].info.run_id, uri)
        logger.info(
            "MLflow run '%s' (%s) already records the model of variant '%s' (fingerprint %s)",
            runs[0].info.run_name,
            runs[0].info.run_id,
            variant,
            fingerprint[:12],
        )
        return self._found

    def _describe(self) -> dict[str, Any]:
        return {
            "experiment": self._experiment,
            "tracking_uri": self._tracking_uri,
            "model_filepath": self._model_filepath,
        }


class MlflowRunArtifactDataset(_CarriesRun, AbstractDataset[Any, Any]):
    """A file dataset whose every save is also logged as an artifact of the session's run.

    The catalog entry is kedro-mlflow's ``MlflowArtifactDataset``'s (``dataset``,
    ``artifact_path``), e.g.::

        sweep_models:
          type: cxr_spurious.datasets.mlflow_run.MlflowRunArtifactDataset
          dataset:
            type: pandas.CSVDataset
            filepath: data/08_reporting/sweep/sweep_models.csv

    Loads read the local file. With no run to log under (tracking off, or a bare
    ``catalog.save``) the file is written and a warning says it was not logged; kedro-mlflow
    switches logging off (``_logging_activated``) for pipelines it does not track.
    """

    def __init__(
        self,
        dataset: str | dict[str, Any],
        artifact_path: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Create the dataset.

        Args:
            dataset: The wrapped dataset's type, or its catalog entry (``type`` and its
                arguments); it must write one local file (``filepath``), unversioned.
            artifact_path: Folder of the artifact in the run (None: the run's root).
            metadata: Free-form metadata (kedro-viz layer, preview arguments).

        Raises:
            DatasetError: the wrapped dataset has no ``filepath``, its ``filepath`` is not a
                local file (``s3://``, ``memory://``...) or it is versioned.
        """
        config = {"type": dataset} if isinstance(dataset, str) else dict(dataset)
        dataset_class, dataset_args = parse_dataset_definition(config)
        self._dataset = dataset_class(**dataset_args)
        if not isinstance(getattr(self._dataset, "_filepath", None), PurePath):
            raise DatasetError(
                f"MlflowRunArtifactDataset: the wrapped {dataset_class.__name__} has no "
                "local 'filepath' to log as an artifact"
            )
        # kedro's get_protocol_and_path gives "file" for a local path; fsspec also says
        # "local". Another protocol's ``_filepath`` is the path without it (``s3://b/t.csv``
        # -> ``b/t.csv``): logging that would upload an unrelated local file.
        protocol = getattr(self._dataset, "_protocol", "file")
        if protocol not in _LOCAL_PROTOCOLS:
            raise DatasetError(
                f"MlflowRunArtifactDataset: the wrapped {dataset_class.__name__}'s filepath "
                f"'{dataset_args.get('filepath', self._dataset._filepath)}' is not a local "
                f"file (protocol '{protocol}'); it must be a local file to log as an "
                "artifact (or use the plain dataset, unlogged)"
            )
        if getattr(self._dataset, "_version", None) is not None:
            raise DatasetError(
                f"MlflowRunArtifactDataset: the wrapped {dataset_class.__name__} is "
                "versioned; log an unversioned file (the run keeps the history)"
            )
        self._artifact_path = artifact_path
        self.metadata = metadata
        if hasattr(self._dataset, "preview"):  # kedro-viz reads the method's return type
            self.preview = self._dataset.preview

    def load(self) -> Any:
        """The wrapped dataset's data (the local file)."""
        return self._dataset.load()

    def save(self, data: Any) -> None:
        """Save through the wrapped dataset, then log its file to the run."""
        self._dataset.save(data)
        if self._tracking_off():
            return
        local = str(self._dataset._filepath)  # type: ignore[attr-defined]
        run = self._run()
        if run is None:
            logger.warning("No MLflow run to log %s under: saved, not logged", local)
            return
        MlflowClient(tracking_uri=run.tracking_uri).log_artifact(
            run.run_id, local, self._artifact_path
        )

    def _exists(self) -> bool:
        return bool(self._dataset.exists())

    def _describe(self) -> dict[str, Any]:
        return {"dataset": self._dataset._describe(), "artifact_path": self._artifact_path}


def load_model_artifact(run_id: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """The ``{"state_dict", "config"}`` model artifact of an MLflow run, read safely.

    Args:
        run_id: The run's id (shown in the MLflow UI).
        tracking_uri: Tracking URI; None = MLflow's current one (``MLFLOW_TRACKING_URI``).

    Returns:
        The artifact, loaded with ``torch.load(weights_only=True)`` (it cannot run code).

    Raises:
        DataFormatError: the run has no ``model/model.pt`` or it is not a model artifact.
    """
    import torch

    from cxr_spurious.errors import DataFormatError

    source = f"runs:/{run_id}/{MODEL_ARTIFACT}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=MODEL_ARTIFACT, tracking_uri=tracking_uri, dst_path=tmp
            )
        except Exception as exc:
            raise DataFormatError(source, f"the run has no model artifact: {exc}") from exc
        data = Path(local).read_bytes()
    try:
        artifact = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataFormatError(
            source, f"not a torch model artifact (loaded with weights_only=True): {exc}"
        ) from exc
    if not isinstance(artifact, dict) or not {"state_dict", "config"} <= set(artifact):
        raise DataFormatError(source, "expected a dict with 'state_dict' and 'config'")
    return artifact


def load_model_from_run(run_id: str, tracking_uri: str | None = None) -> Any:
    """Rebuild the model an MLflow run logged (eval mode, CPU), without unpickling code.

    Example::

        from cxr_spurious.datasets.mlflow_run import load_model_from_run
        model = load_model_from_run("<run id>", tracking_uri="sqlite:///mlflow.db")
    """
    from cxr_spurious.models import model_from_artifact

    artifact = load_model_artifact(run_id, tracking_uri)
    return model_from_artifact(artifact, source=f"runs:/{run_id}/{MODEL_ARTIFACT}")
