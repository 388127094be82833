"""``DaskRunner``: run a Kedro pipeline's nodes as tasks on a Dask distributed cluster.

``kedro run --pipeline <name> --runner cxr_spurious.runner.DaskRunner`` (the approach of
Kedro's deployment guide for Dask, written against Kedro 1.7's ``AbstractRunner``):

* **Cluster.** With ``DASK_SCHEDULER_ADDRESS`` set (Dask's own configuration convention;
  or ``--runner-params address=...``) the runner connects to that scheduler; otherwise it
  starts a ``LocalCluster`` on 127.0.0.1 with one single-threaded worker process per core
  (``--runner-params n_workers=2`` for fewer), its HTTP server on a free loopback port, and
  closes it at the end.
* **Scheduling.** The client submits a node when the nodes it depends on have finished (as
  Kedro's own runners do) and lets go of its task as soon as it has finished; Dask picks the
  worker. A node that was running on a worker that died is retried on another worker by
  Dask (``distributed.scheduler.allowed-failures``, 3 by default); a node that had finished
  there is not run again (it marks itself done at the scheduler; one with in-memory outputs
  does run again when those are lost and still needed). When the retries are used up the
  run stops with a ``RuntimeError`` naming the node.
* **Data.** A node loads its inputs and saves its outputs itself, on its worker, through the
  catalog's dataset objects (pickled to the worker): file-backed datasets must be reachable
  from every worker at the same path (a shared filesystem or object storage). In-memory
  datasets (``MemoryDataset``: parameters, unregistered intermediates) are transferred
  explicitly through Dask: pipeline inputs are scattered once, an intermediate stays on
  the worker that produced it and moves to the worker of each consumer, with the copy rules
  of ``MemoryDataset`` (each load is a copy); free in-memory outputs come back to the
  client's catalog, as under ``SequentialRunner``. A
  ``cxr_spurious.datasets.shared_memory.RunnerMemoryDataset`` moves the same way, its
  ``copy_mode`` (``assign`` included) applying within a worker.
* **MLflow.** The project's MLflow datasets (``cxr_spurious.datasets.mlflow_run``) carry
  the session's run to the workers when they are pickled: child runs and artifacts saved
  on a worker land under the session's (parent) run.
* **Pre-flight check.** Before anything starts, the run is refused (``ContractError``
  naming each dataset) when a dataset cannot cross processes: a ``MemoryDataset`` with
  ``copy_mode="assign"`` (an object shared by reference, e.g. a Spark frame or a
  connection) that another node reads or that must come back to the client, an in-memory
  input whose data does not pickle, a dataset marked ``_SINGLE_PROCESS`` or other
  ephemeral dataset types (``CachedDataset``, ``SharedMemoryDataset``), a dataset object
  that does not pickle, and nodes that do not pickle. An intermediate whose data turns out
  not to pickle fails on its worker, naming the dataset and node.
* **Logs, hooks, errors.** Log records a node emits on its worker (at the client's levels)
  are re-emitted on the client, prefixed with the node name. Node hooks run on the client:
  ``before_node_run`` when the worker starts the node, ``after_node_run`` /
  ``on_node_error`` when it ends, with the node's parameters as ``inputs`` (the data stay
  on the workers, ``outputs`` is empty); dataset hooks are not called. A failing node stops
  the run with its own exception (type and message; the worker's traceback) and Kedro's
  hint of where to resume.
* **Stopping.** As under Kedro's ``ParallelRunner``, a failing node stops the run only
  once the nodes already running on other workers have finished (they count as completed
  in the resume hint); nodes that had not started do not run. A run interrupted meanwhile
  (Ctrl-C) cuts off the nodes still running: the runner names them, says that their
  outputs may be partial and deletes those it can (file datasets with an fsspec
  ``_filepath``) once its own cluster is closed, so that ``--only-missing-outputs`` runs
  them again; the others are named for deletion by hand. A node lost with its workers
  (``KilledWorker``: they died while it was assigned to them, e.g. killed mid-save for
  lack of memory) or dropped by the scheduler after it started counts as cut off too.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import operator
import os
import pickle
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, NoReturn

import cloudpickle
from kedro.framework.hooks.manager import _create_hook_manager, _NullPluginManager
from kedro.io import AbstractDataset, DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro.runner import AbstractRunner
from kedro.runner.task import Task

from cxr_spurious.datasets.shared_memory import RunnerMemoryDataset
from cxr_spurious.errors import ContractError
from cxr_spurious.parallel import available_cores

try:
    import dask
    from distributed import Client, Event, Future, KilledWorker, LocalCluster, get_worker
except ImportError as exc:  # pragma: no cover - the `dask` extra is part of `.[dev]`
    raise ImportError(
        "cxr_spurious.runner.DaskRunner needs Dask distributed: pip install -e '.[dask]'"
    ) from exc

logger = logging.getLogger(__name__)

#: Environment variable naming the scheduler (``dask.config`` key ``scheduler-address``).
ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"
#: Loggers whose client-side levels are not copied to the workers (Dask's own machinery).
_OWN_LOGGERS = ("distributed", "dask", "tornado", "asyncio", "bokeh")
_POLL_S = 0.2  # how often the client drains worker events while nodes run


class _NotRun:
    """What a node's task returns when the run was stopping before the node started."""


def _did_run(result: Any) -> bool:
    """On the worker holding a node's result: False when the node's task did not run it."""
    return not isinstance(result, _NotRun)


def _stop_event_name(topic: str) -> str:
    return f"{topic}-stop"


@dataclass(frozen=True)
class _NodeJob:
    """Everything a worker needs to run one node (pickled with the task)."""

    node: Node
    datasets: dict[str, AbstractDataset]  # the node's file-backed (non-memory) datasets
    copy_modes: dict[str, str | None]  # in-memory inputs and outputs -> MemoryDataset copy_mode
    memory_outputs: tuple[str, ...]
    is_async: bool
    run_id: str | None
    topic: str
    log_levels: dict[str, int]
    quiet: bool  # a worker of the runner's own LocalCluster: its stderr is the client's


@dataclass
class _Plan:
    """What the pre-flight check found: the in-memory datasets, and those back to the client."""

    memory: dict[str, MemoryDataset | RunnerMemoryDataset]
    free_memory_outputs: set[str] = field(default_factory=set)


class _WorkerMemoryDataset(MemoryDataset):
    """``MemoryDataset`` on a worker: hands its object to Dask without a further copy."""

    @classmethod
    def holding(cls, data: Any, copy_mode: str | None) -> _WorkerMemoryDataset:
        dataset = cls(copy_mode=copy_mode)  # type: ignore[arg-type]
        dataset._data = data  # received from Dask: every load copies it (MemoryDataset rules)
        return dataset

    def peek(self) -> Any:
        return self._data


class _EventForwarder(logging.Handler):
    """On a worker: sends the records of one node's thread to the client as Dask events."""

    def __init__(self, topic: str, node_name: str) -> None:
        super().__init__()
        self._topic, self._node, self._thread = topic, node_name, threading.get_ident()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self._thread:  # another task's thread on a multi-threaded worker
            return
        try:
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            attrs = {
                k: v
                for k, v in record.__dict__.items()
                if isinstance(v, str | int | float | bool | type(None))
            }
            attrs["msg"], attrs["args"] = record.getMessage(), None
            attrs.pop("message", None)
            _send({"kind": "log", "node": self._node, "record": attrs}, self._topic)
        except Exception:  # a log line must never fail the node
            self.handleError(record)


def _send(event: dict[str, Any], topic: str) -> None:
    get_worker().log_event(topic, event)


def _check_transferable(name: str, node: Node, value: Any) -> None:
    """Raise ``ContractError`` when an in-memory output cannot leave its worker."""
    try:  # protocol 5 with a buffer callback: arrays are not copied by the check
        cloudpickle.dumps(value, protocol=5, buffer_callback=lambda _buffer: None)
    except Exception as exc:
        raise ContractError(
            f"in-memory output '{name}' of node '{node.name}' cannot be pickled, so it cannot "
            f"move between Dask workers ({type(exc).__name__}: {exc}); give '{name}' a "
            "file-backed catalog entry or run with SequentialRunner"
        ) from exc


def _portable(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives pickling, else a ``RuntimeError`` carrying its text."""
    try:
        clone = pickle.loads(cloudpickle.dumps(exc))
        if type(clone) is type(exc) and str(clone) == str(exc):
            return exc
    except Exception:
        pass
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return RuntimeError(f"{kind}: {exc} (the exception itself could not be pickled)")


def _run_node_on_worker(job: _NodeJob, memory_inputs: dict[str, Any]) -> dict[str, Any] | _NotRun:
    """The Dask task of one node: load, run, save on this worker; return in-memory outputs.

    Returns ``_NotRun`` without running the node when the run is stopping (another node
    failed) before this node starts: the check happens at the scheduler before the node's
    start, so the client either sees the node start or sees it not run.
    """
    for name, level in job.log_levels.items():
        logging.getLogger(name or None).setLevel(level)
    root = logging.getLogger()
    if job.quiet:  # records reach the client through the forwarder, not twice
        for handler in list(root.handlers):
            if not isinstance(handler, _EventForwarder):
                root.removeHandler(handler)
    forwarder = _EventForwarder(job.topic, job.node.name)
    root.addHandler(forwarder)
    worker = get_worker()
    started = time.perf_counter()
    # A node without in-memory outputs marks itself done at the scheduler before it returns:
    # if its worker dies before the client has let go of its task, Dask would run it again
    # (its result was lost), rewriting files that later nodes may be reading; it skips.
    done = None if job.memory_outputs else Event(f"{job.topic}-done-{job.node.name}")
    if done is not None and done.is_set():
        _send({"kind": "skipped", "node": job.node.name, "worker": worker.address}, job.topic)
        root.removeHandler(forwarder)
        return {}
    if Event(_stop_event_name(job.topic)).is_set():
        _send({"kind": "not-run", "node": job.node.name}, job.topic)
        root.removeHandler(forwarder)
        return _NotRun()
    _send(
        {"kind": "started", "node": job.node.name, "worker": worker.address, "pid": os.getpid()},
        job.topic,
    )
    try:
        datasets: dict[str, AbstractDataset] = dict(job.datasets)
        for name, data in memory_inputs.items():
            datasets[name] = _WorkerMemoryDataset.holding(data, job.copy_modes.get(name))
        outputs = {
            name: _WorkerMemoryDataset(copy_mode=job.copy_modes.get(name))
            for name in job.memory_outputs
        }  # type: ignore[arg-type]
        datasets.update(outputs)
        Task(
            node=job.node,
            catalog=DataCatalog(datasets=datasets),
            is_async=job.is_async,
            hook_manager=_create_hook_manager(),  # node hooks run on the client
            run_id=job.run_id,
        ).execute()
        result = {name: dataset.peek() for name, dataset in outputs.items()}
        for name, value in result.items():
            _check_transferable(name, job.node, value)
        if done is not None:
            done.set()
        return result
    except Exception as exc:
        portable = _portable(exc)
        if portable is exc:
            raise
        raise portable from None
    finally:
        root.removeHandler(forwarder)
        seconds = time.perf_counter() - started
        _send({"kind": "finished", "node": job.node.name, "seconds": seconds}, job.topic)


def _identity(value: Any) -> Any:
    return value


#: Logging levels a ``DaskRunner`` accepts for Dask's own loggers.
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Dask's setting of the ``distributed`` loggers' level, as an environment variable: read by
#: every process that imports ``distributed``, so the workers the nannies spawn (and
#: re-spawn after a crash) start with it.
DASK_LOG_ENV = "DASK_LOGGING__DISTRIBUTED"


@contextlib.contextmanager
def _dask_log_level(level: str) -> Iterator[None]:
    """Dask's ``distributed`` loggers at ``level`` in this process and in the processes it
    starts meanwhile (``DASK_LOG_ENV``); both restored afterwards."""
    log = logging.getLogger("distributed")
    saved_level, saved_env = log.level, os.environ.get(DASK_LOG_ENV)
    os.environ[DASK_LOG_ENV] = level.lower()
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(saved_level)
        if saved_env is None:
            os.environ.pop(DASK_LOG_ENV, None)
        else:
            os.environ[DASK_LOG_ENV] = saved_env


def _is_daemon() -> bool:
    return multiprocessing.current_process().daemon


def _client_log_levels() -> dict[str, int]:
    """Levels set on the client's loggers (root as ``""``), to apply on the workers."""
    levels = {"": logging.getLogger().level}
    for name, item in logging.root.manager.loggerDict.items():
        own = name.startswith(_OWN_LOGGERS)
        if isinstance(item, logging.Logger) and item.level != logging.NOTSET and not own:
            levels[name] = item.level
    return levels


def _memory_kind(dataset: AbstractDataset) -> str | None:
    """Why ``dataset`` cannot cross processes, or None when it can (or is not in memory)."""
    if isinstance(dataset, RunnerMemoryDataset):  # in memory, and made to cross processes
        return None
    if getattr(dataset, "_SINGLE_PROCESS", False):
        return f"{type(dataset).__name__} is bound to one process (_SINGLE_PROCESS)"
    if isinstance(dataset, MemoryDataset):
        if getattr(dataset, "_copy_mode", None) == "assign":
            return (
                "MemoryDataset with copy_mode='assign' holds an object shared by reference, "
                "which cannot be copied to another process"
            )
        return None
    if getattr(dataset, "_EPHEMERAL", False):
        return f"in-memory {type(dataset).__name__} lives in one process"
    return None


def _pickle_problem(obj: Any) -> str | None:
    try:
        cloudpickle.dumps(obj, protocol=5, buffer_callback=lambda _buffer: None)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def plan_transfers(pipeline: Pipeline, catalog: Any) -> _Plan:
    """The pre-flight check: which datasets cross in memory; refuse those that cannot.

    Raises:
        ContractError: naming every dataset (and its writer / readers) or node that cannot
            be sent to, or come back from, a Dask worker.
    """
    writers = {out: n for n in pipeline.nodes for out in n.outputs}
    readers: dict[str, list[Node]] = {}
    for n in pipeline.nodes:
        for name in n.inputs:
            readers.setdefault(name, []).append(n)
    outputs = pipeline.outputs()
    problems: list[str] = []
    memory: dict[str, MemoryDataset | RunnerMemoryDataset] = {}
    for name in sorted(pipeline.datasets()):
        dataset = catalog.get(name, fallback_to_runtime_pattern=True)
        writer = writers.get(name)
        users = [n.name for n in readers.get(name, [])]
        where = (f"written by node '{writer.name}'" if writer else "a pipeline input") + (
            f", read by {', '.join(repr(u) for u in sorted(users))}" if users else ""
        )
        reason = _memory_kind(dataset)  # every dataset here is read by a node or an output
        if reason is not None:
            problems.append(f"'{name}' ({where}): {reason}")
            continue
        if isinstance(dataset, MemoryDataset | RunnerMemoryDataset):
            memory[name] = dataset
            if writer is None and users:  # the data exist already: check them now
                problem = _pickle_problem(catalog.load(name))
                if problem:
                    problems.append(f"'{name}' ({where}): its data cannot be pickled ({problem})")
            continue
        problem = _pickle_problem(dataset)
        if problem:
            problems.append(f"'{name}' ({where}): the dataset object cannot be pickled ({problem})")
    for n in pipeline.nodes:
        problem = _pickle_problem(n)
        if problem:
            problems.append(f"node '{n.name}' cannot be pickled ({problem})")
    if problems:
        raise ContractError(
            "DaskRunner cannot run this pipeline: these cannot move between Dask workers "
            "(give each dataset a file-backed catalog entry, e.g. pickle.PickleDataset, or "
            "run with SequentialRunner):\n  " + "\n  ".join(problems)
        )
    free = {name for name in outputs if name in memory and name in writers}
    return _Plan(memory=memory, free_memory_outputs=free)


class DaskRunner(AbstractRunner):
    """Runs a pipeline's nodes as Dask tasks (see the module docstring for the rules).

    Args:
        is_async: Load and save each node's data with threads (Kedro's ``--async``).
        address: Scheduler address (``tcp://host:8786``); default ``DASK_SCHEDULER_ADDRESS``
            (or Dask's ``scheduler-address`` setting); without one, a ``LocalCluster``.
        n_workers: Workers of the ``LocalCluster`` (default: one per available core).
        threads_per_worker: Threads of each ``LocalCluster`` worker (default 1: nodes that
            use every core through ``cxr_spurious.parallel`` run one per process).
        memory_limit: Per-worker memory limit of the ``LocalCluster`` (Dask's syntax; default
            0 = none: a node may use the machine's memory, as under ``SequentialRunner``).
        connect_timeout_s: How long to wait for the scheduler and for a first worker.
        cluster_log_level: Level of Dask's own loggers (``distributed``) in the client and
            in the workers of the ``LocalCluster`` (default WARNING: the scheduler's, the
            nannies' and each worker's start-up INFO lines, about 40 for two workers, stay
            off the console; ``INFO`` shows them). A cluster at ``address`` keeps its own.
    """

    def __init__(
        self,
        is_async: bool = False,
        address: str | None = None,
        n_workers: int | None = None,
        threads_per_worker: int = 1,
        memory_limit: str | int = 0,
        connect_timeout_s: float = 60.0,
        cluster_log_level: str = "WARNING",
    ) -> None:
        super().__init__(is_async=is_async)
        if n_workers is not None and int(n_workers) < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        if int(threads_per_worker) < 1:
            raise ValueError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
        level = str(cluster_log_level).upper()
        if level not in LOG_LEVELS:
            raise ValueError(
                f"cluster_log_level must be one of {', '.join(LOG_LEVELS)}, "
                f"got {cluster_log_level!r}"
            )
        self._cluster_log_level = level
        self._address = address
        self._n_workers = None if n_workers is None else int(n_workers)
        self._threads = int(threads_per_worker)
        self._memory_limit = memory_limit
        self._timeout = float(connect_timeout_s)

    def scheduler_address(self) -> str | None:
        """The scheduler to connect to, or None to start a ``LocalCluster``."""
        if self._address:
            return self._address
        return os.environ.get(ADDRESS_ENV) or dask.config.get("scheduler-address", None)

    def local_cluster_options(self) -> dict[str, Any]:
        """Keyword arguments of the ``LocalCluster`` started without a scheduler address."""
        return {
            "n_workers": self._n_workers or available_cores(),
            "threads_per_worker": self._threads,
            "processes": True,
            "host": "127.0.0.1",
            # the scheduler's HTTP server (and dashboard, if bokeh is installed): loopback,
            # a free port (None would still listen, on 8787)
            "dashboard_address": "127.0.0.1:0",
            "memory_limit": self._memory_limit,
        }

    @contextlib.contextmanager
    def _client(self) -> Iterator[Client]:
        address = self.scheduler_address()
        with contextlib.ExitStack() as stack:
            if address:
                self._logger.info("Connecting to the Dask scheduler at %s", address)
                client = stack.enter_context(Client(address, timeout=f"{self._timeout}s"))
            else:
                options = self.local_cluster_options()
                # Worker processes that may start process pools (cxr_spurious.parallel); the
                # nannies read this setting at every (re)start, so it stays set meanwhile.
                stack.enter_context(dask.config.set({"distributed.worker.daemon": False}))
                stack.enter_context(_dask_log_level(self._cluster_log_level))
                cluster = stack.enter_context(LocalCluster(**options))
                client = stack.enter_context(Client(cluster))
                self._logger.info(
                    "Started a local Dask cluster at %s: %d worker(s) x %d thread(s); dashboard %s",
                    cluster.scheduler_address,
                    options["n_workers"],
                    options["threads_per_worker"],
                    cluster.dashboard_link,
                )
            client.wait_for_workers(1, timeout=self._timeout)
            daemonic = sorted(addr for addr, flag in client.run(_is_daemon).items() if flag)
            if daemonic:
                self._logger.warning(
                    "Dask worker(s) %s are daemonic processes: nodes that start process pools "
                    "(cxr_spurious.parallel) fail there; start workers with "
                    "DASK_DISTRIBUTED__WORKER__DAEMON=False",
                    ", ".join(daemonic),
                )
            yield client

    def _get_executor(self, max_workers: int) -> None:  # the Dask client is the executor
        return None

    def _run(
        self,
        pipeline: Pipeline,
        catalog: Any,
        hook_manager: Any = None,
        run_id: str | None = None,
    ) -> None:
        hooks = hook_manager or _NullPluginManager()
        plan = plan_transfers(pipeline, catalog)  # before any cluster starts
        if not pipeline.nodes:  # e.g. --only-missing-outputs with every output there
            return
        own_cluster = not self.scheduler_address()
        cut_off: list[Node] = []
        try:
            with self._client() as client:
                session = _Session(
                    self, pipeline, catalog, hooks, run_id, plan, client, own_cluster
                )
                session.cut_off = cut_off
                session.run()
        finally:  # after the runner's own cluster is closed: no worker writes them any more
            if cut_off:
                _discard_partial_outputs(cut_off, catalog, plan, self._logger)


def _remove_file_output(dataset: AbstractDataset) -> bool:
    """Delete what a file dataset (fsspec ``_fs`` and ``_filepath``) saved; False if unable."""
    fs, path = getattr(dataset, "_fs", None), getattr(dataset, "_filepath", None)
    if fs is None or path is None or getattr(dataset, "_version", None) is not None:
        return False  # not a plain file dataset (a versioned one saves under a new version)
    try:
        if fs.exists(str(path)):
            fs.rm(str(path), recursive=True)
    except Exception:
        return False
    return True


def _discard_partial_outputs(
    nodes: list[Node], catalog: Any, plan: _Plan, log: logging.Logger
) -> None:
    """Name the nodes cut off mid-run; delete (or name) the outputs they may have left partial."""
    removed: list[str] = []
    left: list[str] = []
    for name in sorted({out for n in nodes for out in n.outputs}):
        if name in plan.memory:
            continue  # in memory on a worker: gone with the run
        dataset = catalog.get(name, fallback_to_runtime_pattern=True)
        with contextlib.suppress(Exception):
            catalog.release(name)
        if _remove_file_output(dataset):
            removed.append(name)
        else:
            left.append(f"{name} ({dataset})")
    log.warning(
        "The run stopped while node(s) %s were still running on Dask workers (or had died "
        "with them): outputs they had started to write may be partial. Deleted: %s. Delete "
        "by hand before rerunning with --only-missing-outputs: %s",
        ", ".join(sorted(n.name for n in nodes)),
        ", ".join(removed) or "none",
        ", ".join(left) or "none",
    )


class _Session:
    """One run's scheduling loop on the client."""

    def __init__(
        self,
        runner: DaskRunner,
        pipeline: Pipeline,
        catalog: Any,
        hooks: Any,
        run_id: str | None,
        plan: _Plan,
        client: Client,
        quiet: bool,
    ) -> None:
        self.runner, self.pipeline, self.catalog = runner, pipeline, catalog
        self.hooks, self.run_id, self.plan, self.client = hooks, run_id, plan, client
        self.quiet = quiet
        self.log = runner._logger
        self.topic = f"cxr-spurious-dask-runner-{uuid.uuid4().hex}"
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.wake = threading.Event()  # a future finished or an event arrived
        self.levels = _client_log_levels()
        self.memory: dict[str, Future] = {}  # in-memory dataset -> future of its data
        self.holders: dict[str, Future] = {}  # ... and the producing node's future (lineage)
        self.pending_reads = Counter(chain.from_iterable(n.inputs for n in pipeline.nodes))
        self.started: dict[str, str] = {}  # node -> worker address of its latest start
        self.finished_events: Counter[str] = Counter()
        self.done: set[Node] = set()
        self.inputs, self.outputs = pipeline.inputs(), pipeline.outputs()
        self.by_name = {n.name: n for n in pipeline.nodes}
        self.running: dict[Future, Node] = {}
        self.stopping = False
        # nodes left running when the run ended, or lost mid-run (filled by run)
        self.cut_off: list[Node] = []

    # -- events from the workers ------------------------------------------------------
    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        self.events.put(event[1])  # runs in the client's event loop: hand over only
        self.wake.set()

    def _wake(self, _future: Future) -> None:
        self.wake.set()

    def _drain(self) -> None:
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                return
            kind, name = event.get("kind"), event.get("node", "")
            if kind == "log":
                self._emit(name, event["record"])
            elif kind == "started":
                if name in self.started:
                    self.log.warning("Node %s started again, on %s", name, event["worker"])
                self.started[name] = event["worker"]
                node = self._node(name)
                if node is not None and node not in self.done:
                    self._hook("before_node_run", node)
            elif kind == "finished":
                self.finished_events[name] += 1
            elif kind == "not-run":
                self.log.debug("Node %s not started: the run is stopping", name)
            elif kind == "skipped":
                self.log.info(
                    "Node %s had finished before its worker died: not run again (on %s)",
                    name,
                    event["worker"],
                )

    def _emit(self, node_name: str, attrs: dict[str, Any]) -> None:
        record = logging.makeLogRecord(attrs)
        target = logging.getLogger(record.name)
        if target.isEnabledFor(record.levelno):
            record.msg = f"[{node_name}] {record.msg}"
            record.forwarded_from = f"[{node_name}] "  # the prefix (console filter rules)
            record.markup = False  # plain text (Kedro's RichHandler would eat "[node]")
            target.handle(record)

    def _node(self, name: str) -> Node | None:
        return self.by_name.get(name)

    # -- hooks on the client ----------------------------------------------------------
    def _params(self, node: Node) -> dict[str, Any]:
        return {
            name: self.catalog.load(name)
            for name in node.inputs
            if name.startswith("params:") or name == "parameters"
        }

    def _hook(self, which: str, node: Node, **extra: Any) -> None:
        getattr(self.hooks.hook, which)(
            node=node,
            catalog=self.catalog,
            inputs=self._params(node),
            is_async=self.runner._is_async,
            run_id=self.run_id,
            **extra,
        )

    # -- submitting -------------------------------------------------------------------
    def _memory_future(self, name: str) -> Future:
        if name not in self.memory:
            # A pipeline input (e.g. a parameter): a task that returns it, not ``scatter``,
            # so that Dask can recompute it when the worker holding it dies.
            key = f"{name}-input-{uuid.uuid4().hex[:8]}"
            value = self.catalog.load(name)
            self.memory[name] = self.client.submit(_identity, value, key=key, pure=False)
        return self.memory[name]

    def _submit(self, node: Node) -> Future:
        plan = self.plan
        names = [*node.inputs, *node.outputs]
        job = _NodeJob(
            node=node,
            datasets={
                n: self.catalog.get(n, fallback_to_runtime_pattern=True)
                for n in names
                if n not in plan.memory
            },
            copy_modes={
                n: getattr(plan.memory[n], "_copy_mode", None) for n in names if n in plan.memory
            },
            memory_outputs=tuple(n for n in node.outputs if n in plan.memory),
            is_async=self.runner._is_async,
            run_id=self.run_id,
            topic=self.topic,
            log_levels=self.levels,
            quiet=self.quiet,
        )
        memory_inputs = {n: self._memory_future(n) for n in node.inputs if n in plan.memory}
        key = f"{node.name}-{uuid.uuid4().hex[:8]}"
        return self.client.submit(_run_node_on_worker, job, memory_inputs, key=key, pure=False)

    # -- completion -------------------------------------------------------------------
    def _completed(self, node: Node, future: Future) -> None:
        for name in node.outputs:
            if name not in self.plan.memory or self.stopping:  # no node will read them
                continue
            picked = self.client.submit(operator.getitem, future, name, key=f"{name}-{future.key}")
            if name in self.plan.free_memory_outputs:
                self.catalog.save(name, picked.result())  # back to the client, as in Kedro
            elif self.pending_reads[name] > 0:
                self.memory[name], self.holders[name] = picked, future
        self.done.add(node)
        if node.name not in self.started:  # its start event is still on the way
            self.started[node.name] = "?"
            self._hook("before_node_run", node)
        self._hook("after_node_run", node, outputs={})
        self.log.info("Completed node: %s (on %s)", node.name, self.started.get(node.name, "?"))
        self.log.info("Completed %d out of %d tasks", len(self.done), len(self.pipeline.nodes))
        if self.stopping:
            return
        for name in node.inputs:
            self.pending_reads[name] -= 1
            if self.pending_reads[name] < 1:
                self.memory.pop(name, None)
                self.holders.pop(name, None)
                if name not in self.inputs:
                    self.catalog.release(name)
        for name in node.outputs:
            if self.pending_reads[name] < 1 and name not in self.outputs:
                self.catalog.release(name)

    def _error_of(self, node: Node, future: Future) -> BaseException:
        """The exception to report for a failed (or dropped) node's future."""
        if future.status == "cancelled":
            return RuntimeError(
                f"node '{node.name}' was cancelled: the Dask scheduler dropped its task "
                "(did the scheduler or every worker go away?)"
            )
        error, traceback = future.exception(), future.traceback()
        worker = self.started.get(node.name, "an unknown worker")
        if isinstance(error, KilledWorker):
            allowed = error.allowed_failures
            return RuntimeError(
                f"node '{node.name}' was lost: the Dask workers running it died {allowed + 1} "
                f"time(s) (last on {worker}; the scheduler's "
                f"distributed.scheduler.allowed-failures = {allowed}). Outputs it had started "
                "to write may be incomplete: the runner deletes those it can (a warning names "
                "them); rerun from this node"
            )
        error.add_note(f"(raised by node '{node.name}' on Dask worker {worker})")
        return error.with_traceback(traceback)

    def _lost(self, node: Node, future: Future) -> bool:
        """Whether a failed node's outputs may be partial: its task was lost with its
        workers (``KilledWorker``), or dropped by the scheduler after the node started.

        A ``KilledWorker`` node counts whether or not its start event arrived: the worker
        that died may have taken the event with it (a node killed right after it began to
        write), and deleting the outputs of a node that had not started only makes a rerun
        with ``--only-missing-outputs`` write them again.
        """
        if future.status == "cancelled":
            return node.name in self.started
        return isinstance(future.exception(), KilledWorker)

    def _finish_running(self) -> None:
        """After a failure: let the started nodes finish; the others do not start.

        Each task checks the run's stop event before its node starts, so every future left
        ends soon after its node (if it started) ends. Finished nodes count as completed;
        further failures are logged (and reach ``on_node_error``), not raised.
        """
        Event(_stop_event_name(self.topic), client=self.client).set()
        self._drain()
        started = sorted(n.name for n in self.running.values() if n.name in self.started)
        if started:
            self.log.warning(
                "Waiting for the node(s) already running to finish before stopping (nodes "
                "not yet started will not run; Ctrl-C would cut these off, their outputs "
                "partial): %s",
                ", ".join(started),
            )
        while self.running:
            self.wake.wait(_POLL_S)
            self.wake.clear()
            self._drain()
            finished = sorted(
                (f for f in self.running if f.done()), key=lambda f: self.running[f].name
            )
            for future in finished:
                node = self.running.pop(future)
                if future.status == "finished":
                    ran = self.client.submit(_did_run, future, key=f"ran-{future.key}")
                    if ran.result():
                        self._completed(node, future)
                    elif node.name in self.started:  # an earlier try's worker died mid-run
                        self.cut_off.append(node)
                    continue
                if self._lost(node, future):
                    self.cut_off.append(node)  # its worker died, or the scheduler dropped it
                error = self._error_of(node, future)
                self.log.error(
                    "Node %s also failed: %s: %s", node.name, type(error).__name__, error
                )
                self._hook("on_node_error", node, error=error)
            del finished

    def _failed(self, node: Node, future: Future) -> NoReturn:
        self.stopping = True
        self._drain()  # the node's start event names its worker
        error = self._error_of(node, future)
        if self._lost(node, future):  # it may have written part of its outputs
            self.cut_off.append(node)
        del future
        self._finish_running()
        self._hook("on_node_error", node, error=error)
        self.runner._suggest_resume_scenario(self.pipeline, self.done, self.catalog)
        raise error

    def _settle(self, finished: set[Future]) -> None:
        """Record the finished futures (successes first, so the resume hint counts them).

        Their references end with this call: the scheduler forgets a node's task as soon
        as no future refers to it, so a worker lost later never makes it run again.
        """
        running = self.running
        for future in sorted(finished, key=lambda f: (f.status != "finished", running[f].name)):
            node = running.pop(future)
            if future.status == "finished":
                self._completed(node, future)
            else:  # the other failures are still in ``running``: settled while stopping
                self._failed(node, future)

    def run(self) -> None:
        todo = set(self.pipeline.nodes)
        dependencies = self.pipeline.node_dependencies
        running = self.running
        self.client.subscribe_topic(self.topic, self._on_event)
        try:
            while todo or running:
                ready = sorted((n for n in todo if dependencies[n] <= self.done), key=str)
                for node in ready:
                    future = self._submit(node)
                    future.add_done_callback(self._wake)
                    running[future] = node
                    todo.discard(node)
                    del future
                if not running:
                    raise RuntimeError(
                        "DaskRunner cannot schedule the nodes left: "
                        + ", ".join(sorted(n.name for n in todo))
                    )
                # no distributed.wait(timeout=...): its TimeoutError's traceback would keep
                # references to the futures (a cycle), which keeps finished tasks wanted
                self.wake.wait(_POLL_S)
                self.wake.clear()
                self._drain()
                finished = {f for f in running if f.done()}
                self._settle(finished)
                del finished  # a future still referenced here stays wanted (and recomputed)
            deadline = time.monotonic() + 2.0  # let the last log lines arrive
            while time.monotonic() < deadline and sum(self.finished_events.values()) < len(
                self.done
            ):
                time.sleep(0.05)
                self._drain()
            self._drain()
        except BaseException:  # e.g. Ctrl-C: the nodes still running are cut off
            self._drain()
            self.cut_off.extend(
                n for n in running.values() if n.name in self.started and n not in self.done
            )
            raise
        finally:
            running.clear()
            self.memory.clear()
            self.holders.clear()
            self.client.unsubscribe_topic(self.topic)
            if self.stopping:
                with contextlib.suppress(Exception):  # the scheduler may be gone
                    Event(_stop_event_name(self.topic), client=self.client).clear()
            for node in self.done:  # the scheduler keeps set events until they are cleared
                if not any(name in self.plan.memory for name in node.outputs):
                    Event(f"{self.topic}-done-{node.name}", client=self.client).clear()
