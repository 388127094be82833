"""Project hooks: per-stage wall time, logged at the end of every run; the parameter keys
checked before anything runs; and the sweep's parameters handed to pipeline construction.

A stage's time is the wall time during which at least one of its nodes was running,
loading its inputs or saving its outputs (saving is where the phantom is generated and the
image cache is built): the length of the union of those intervals, so nodes that run side
by side (``ThreadRunner``) count once. Under ``ParallelRunner`` the nodes run in worker
processes, whose hooks this process does not see: the line then says the stage times are
not available. A failed run logs the line too, marked "(run failed)".

``ParameterKeysHook`` refuses, when the context is created (before any node, and before
the other hooks), a parameter key that nothing reads: the merged parameters (environments
and ``--params`` included) against the keys of the shipped configuration of ``conf/base``
and of the run's environment when it is one of the ``SHIPPED_ENVS``, from the committed
snapshot ``parameter_keys.json`` (``cxr_spurious.parameter_schema``), and the names the
loaded environments read with ``${runtime_params:...}``. A misspelt ``study.nboot`` stops
the run with a ``ParameterError`` naming ``study.n_boot``; a key of a shipped file
(``conf/base``, ``conf/<shipped env>``) that the snapshot does not know is refused naming
the file.

``SweepParamsHook`` stashes the ``sweep`` parameters (with ``--params`` overrides) when the
context is created, which Kedro does before the first access to the registered pipelines
(``KedroSession.run``: ``load_context()``, then ``pipelines[name]``), so that
``pipelines/sweep/pipeline.py`` can build one namespace per grid cell; it stashes every
parameter too (``stashed_parameters``), which the comparison reads for its seeds
(``pipelines/comparison/pipeline.py``); both are cleared once the run ends, done or failed
(``clear_stash``; a run that fails before its runner starts keeps its stash until the next
context). Kedro loads the registered pipelines once per
process and keeps them; when a later session of the same process (a notebook, a script)
has other ``PIPELINE_PARAMETERS`` than the previous one, the hook empties Kedro's registry,
so that its pipelines are built again from its own parameters. Without a session,
``base_parameters`` reads ``conf/base`` (kedro-viz, tests, a bare ``register_pipelines()``)
of the Kedro project that holds the current directory, else of the source checkout this
package was imported from.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from kedro.config import OmegaConfigLoader
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.framework.project import pipelines as project_pipelines
from kedro.pipeline import Node
from kedro.utils import find_kedro_project

from cxr_spurious.errors import ParameterError
from cxr_spurious.logging_filters import join_run_logging

logger = logging.getLogger(__name__)

# Pipeline (stage) names, in study order; a node's stage is the first of its tags listed here.
STAGES: tuple[str, ...] = (
    "ingestion",
    "debiasing",
    "training",
    "saliency",
    "localization",
    "regression",
    "robustness",
    "study",
    "comparison",
    "sweep",
    "report",
)

_SWEEP_PARAMS: dict[str, Any] | None = None
_PARAMS: dict[str, Any] | None = None
#: Top-level parameter blocks that pipeline construction reads: the sweep's grid
#: (``pipelines/sweep``), the comparison's seeds and the study's seed (``training.seed``,
#: ``pipelines/comparison``).
PIPELINE_PARAMETERS: tuple[str, ...] = ("sweep", "comparison", "training")
# PIPELINE_PARAMETERS of the last context created in this process (None: no context yet).
_BUILT_FROM: dict[str, Any] | None = None
# ``conf`` beside ``src/`` when the package is imported from its source checkout (an
# editable install); an installed copy (site-packages) has none there.
SOURCE_CONF = Path(__file__).resolve().parents[2] / "conf"
#: The environments shipped in ``conf/`` besides ``base`` and ``local``: the keys their
#: parameters add (``chexlocalize_dir``, more sweep strengths) are valid in every run.
SHIPPED_ENVS: tuple[str, ...] = ("chexlocalize", "sweep_full", "sweep_readme")
_CONFIG_SUFFIXES = (".yml", ".yaml", ".json")
_RUNTIME_PARAM = re.compile(r"\$\{\s*runtime_params\s*:\s*([\w.\-]+)")


def project_conf(start: Path | None = None) -> Path:
    """The ``conf`` folder for ``base_parameters``: that of the Kedro project holding
    ``start`` (default: the current directory), else ``SOURCE_CONF``.

    Raises:
        FileNotFoundError: neither has a ``base`` folder (the message names both places).
    """
    project = find_kedro_project(Path.cwd() if start is None else start)
    for conf in ([project / "conf"] if project is not None else []) + [SOURCE_CONF]:
        if (conf / "base").is_dir():
            return conf
    where = f"the Kedro project {project}" if project is not None else "no Kedro project"
    raise FileNotFoundError(
        f"no conf/base to read the parameters from: {where} holds the current directory, "
        f"and {SOURCE_CONF / 'base'} does not exist; run from the project's folder"
    )


def stashed_sweep_params() -> dict[str, Any] | None:
    """The ``sweep`` parameters of the current session's context (None before one exists)."""
    return None if _SWEEP_PARAMS is None else dict(_SWEEP_PARAMS)


def stashed_parameters() -> dict[str, Any] | None:
    """Every parameter of the current session's context (None before one exists)."""
    return None if _PARAMS is None else dict(_PARAMS)


def base_parameters() -> dict[str, Any]:
    """Every parameter of ``conf/base`` (pipeline construction without a session)."""
    loader = OmegaConfigLoader(str(project_conf()), base_env="base", default_run_env="base")
    return dict(loader["parameters"])


def _config_files(folder: Path) -> list[Path]:
    return sorted(
        f
        for f in folder.rglob("*")
        if f.is_file()
        and f.suffix in _CONFIG_SUFFIXES
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )


def env_parameter_files(conf: Path, env: str) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, parameters)`` of each parameter file of ``conf/<env>`` (none when the folder
    does not exist), read unresolved (only their keys matter): files named ``parameters*``
    or under a ``parameters*`` folder, as Kedro's config loader finds them."""
    folder = conf / env
    if not folder.is_dir():
        return []
    out: list[tuple[Path, dict[str, Any]]] = []
    for path in _config_files(folder):
        if any(part.startswith("parameters") for part in path.relative_to(folder).parts):
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                out.append((path, loaded))
    return out


def shipped_parameters(conf: Path) -> list[dict[str, Any]]:
    """The parameters of ``conf/base`` and of each of ``SHIPPED_ENVS`` present, each read
    on its own and unresolved (``env_parameter_files``)."""
    return [
        loaded for env in ("base", *SHIPPED_ENVS) for _, loaded in env_parameter_files(conf, env)
    ]


def runtime_param_names(conf: Path, envs: tuple[str, ...] | None = None) -> list[str]:
    """Names read with ``${runtime_params:NAME}`` in ``conf`` (``--params NAME=...`` sets
    them, which also adds them to the parameters): in the folders ``envs`` only (the
    environments a run loads), or anywhere in ``conf`` when ``envs`` is None."""
    folders = [conf] if envs is None else [conf / env for env in dict.fromkeys(envs)]
    names = {
        match.group(1)
        for folder in folders
        if folder.is_dir()
        for path in _config_files(folder)
        if not path.name.startswith("credentials")  # never read here
        for match in _RUNTIME_PARAM.finditer(path.read_text(encoding="utf-8"))
    }
    return sorted(names)


def run_env(config_loader: Any) -> str:
    """The environment a run loads over ``base`` (``--env``, else the default ``local``)."""
    return str(
        getattr(config_loader, "env", None)
        or getattr(config_loader, "default_run_env", None)
        or "local"
    )


#: Why the top-level ``split`` is not read outside the ``chexlocalize`` environment.
SPLIT_HINT = "the maps' split is 'saliency.split' here (--params saliency.split=val)"


def other_env_hints(conf: Path, env: str, snapshot: Mapping[str, Any]) -> dict[str, str]:
    """``{key: hint}`` for the top-level keys and runtime names that only other shipped
    environments read (``chexlocalize_dir``, ``split``, ``map_dir`` outside ``--env
    chexlocalize``): given to a run of ``env`` that sets them, instead of a guess."""
    hints: dict[str, str] = {}
    for other in SHIPPED_ENVS:
        if other == env:
            continue
        names = [*runtime_param_names(conf, (other,)), *snapshot.get(other, {})]
        for name in names:
            hints.setdefault(name, f"read only with --env {other}")
    if "split" in hints:
        hints["split"] += f"; {SPLIT_HINT}"
    return hints


SPLIT_NAMED_PARAMS: tuple[str, ...] = ("map_dir", "gt_segmentations")
_SPLIT_TOKEN = re.compile(r"(?<![a-z])(train|val|test)(?![a-z])", re.IGNORECASE)


def check_split_names(runtime_params: Mapping[str, Any], split: str | None) -> None:
    """Refuse a map folder or ground-truth file name that says another split than ``split``.

    In ``--env chexlocalize``, ``map_dir`` / ``gt_segmentations`` override a file name while
    the tuning and reference tables write ``saliency.split`` in their ``split`` column:
    ``map_dir=gradcam_maps_test`` without ``split=test`` would label test-split maps ``val``
    (and thresholds tuned on them could then be "applied" to the test split).

    Args:
        runtime_params: The run's ``--params``.
        split: The run's ``saliency.split`` (None: nothing to compare with).

    Raises:
        ParameterError: a name whose split token (``train`` / ``val`` / ``test`` as a word
            of the name) differs from ``split``, naming the key, both splits and the fix.
    """
    if not split:
        return
    for key in SPLIT_NAMED_PARAMS:
        value = runtime_params.get(key)
        if not isinstance(value, str):
            continue
        named = {t.lower() for t in _SPLIT_TOKEN.findall(Path(value).name)}
        if named and named != {str(split).lower()}:
            raise ParameterError(
                key,
                f"{value!r} names the split {sorted(named)} but saliency.split is {split!r}, "
                "which the tuning and reference tables write as their split; pass "
                f"--params split={sorted(named)[0]} (it picks every file of that split)",
            )


class ParameterKeysHook:
    """Refuse unknown parameter keys when the context is created, before any node runs."""

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: KedroContext) -> None:
        """Check ``config_loader["parameters"]`` against the shipped configuration's keys.

        Raises:
            ParameterError: a key nothing reads, naming its dotted path and the closest
                valid key (``cxr_spurious.parameter_schema.check_parameter_keys``).
        """
        # imported here: it imports torch, which `settings` (every kedro command) need not
        from cxr_spurious.parameter_schema import (
            SNAPSHOT_PATH,
            check_parameter_keys,
            check_shipped_files,
            load_snapshot,
            parameter_schema,
            snapshot_from_conf,
        )

        conf = Path(context.config_loader.conf_source)
        if not (conf / "base").is_dir():
            logger.warning("Parameter keys not checked: %s has no base folder", conf)
            return
        env = run_env(context.config_loader)
        envs = ("base", env)
        if SNAPSHOT_PATH.is_file():
            snapshot = load_snapshot()
        else:  # an installed copy without the snapshot: the shipped files say
            logger.warning("%s not found: parameter keys read from %s", SNAPSHOT_PATH, conf)
            snapshot = snapshot_from_conf(conf)
        schema = parameter_schema(
            [snapshot.get(e, {}) for e in envs], runtime_param_names(conf, envs)
        )
        # a typo written into a shipped file: named with the file (the snapshot, not the
        # file, says which keys exist)
        check_shipped_files(
            [
                (_shown(path, conf), config)
                for e in envs
                if e in snapshot
                for path, config in env_parameter_files(conf, e)
            ],
            schema,
        )
        params = context.config_loader["parameters"]
        check_parameter_keys(params, schema, other_env_hints(conf, env, snapshot))
        saliency = params.get("saliency") if isinstance(params, Mapping) else None
        check_split_names(
            context.config_loader.runtime_params or {},
            saliency.get("split") if isinstance(saliency, Mapping) else None,
        )


def _shown(path: Path, conf: Path) -> str:
    """``path`` as ``conf/<env>/<file>`` (relative to the folder holding ``conf``)."""
    try:
        return str(path.relative_to(conf.parent))
    except ValueError:
        return str(path)


def reset_pipeline_registry() -> None:
    """Empty Kedro's registry of pipelines (``kedro.framework.project.pipelines``), so that
    the next access builds them again (``register_pipelines``).

    Kedro 1.x loads the registry once and keeps it until ``configure`` is called again:
    it is configured with the same module, and the pipelines the current ``KedroSession.run``
    asked for (``set_requested``, called before the context is created) are asked again.
    """
    module = getattr(project_pipelines, "_pipelines_module", None)
    requested = getattr(project_pipelines, "_requested_pipelines", None)
    project_pipelines.configure(module)
    project_pipelines.set_requested(requested)


class SweepParamsHook:
    """Stash ``config_loader["parameters"]["sweep"]`` (runtime overrides included) at
    context creation; reading ``context.params`` here would load the pipelines first.

    When the ``PIPELINE_PARAMETERS`` differ from those of the previous context of this
    process (or there was none), Kedro's registry of pipelines is emptied
    (``reset_pipeline_registry``): it would otherwise keep the pipelines an earlier session
    built, e.g. the comparison's namespaces of seeds this session did not ask for.
    """

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        global _SWEEP_PARAMS, _PARAMS, _BUILT_FROM
        _PARAMS = dict(context.config_loader["parameters"])
        sweep = _PARAMS.get("sweep")
        _SWEEP_PARAMS = dict(sweep) if isinstance(sweep, dict) else None
        blocks = {k: copy.deepcopy(_PARAMS.get(k)) for k in PIPELINE_PARAMETERS}
        if blocks != _BUILT_FROM:
            reset_pipeline_registry()
            _BUILT_FROM = blocks

    @hook_impl
    def after_pipeline_run(self) -> None:
        clear_stash()

    @hook_impl
    def on_pipeline_error(self) -> None:
        clear_stash()


def clear_stash() -> None:
    """Forget the stashed parameters once the session's run is over (done or failed).

    A run that fails before its runner starts (an unknown ``--pipeline``, ``--nodes``
    matching nothing, the catalog) calls neither ``after_pipeline_run`` nor
    ``on_pipeline_error``: its stash stays until the next context of the process replaces
    it, and a session-less construction in between (a notebook's bare
    ``register_pipelines()``) reads it. Tying the stash to the context instead made it end
    whenever the garbage collector took a context that a live session had dropped
    (``session.load_context().params``), before that session built its pipelines.

    The pipelines are built from them before the run starts (``KedroSession.run``: the
    context, then ``pipelines[name]``, then the runner); a later construction without a
    session (a bare ``register_pipelines()``, kedro-viz) reads ``conf/base`` again instead
    of the finished run's ``--params``. The registry built from them is kept: the next
    context builds it again (``SweepParamsHook``) as none is recorded.
    """
    global _SWEEP_PARAMS, _PARAMS, _BUILT_FROM
    _SWEEP_PARAMS = None
    _PARAMS = None
    _BUILT_FROM = None


class WorkerLoggingHook:
    """Worker processes of ``ParallelRunner`` started by ``spawn`` / ``forkserver``
    (``KEDRO_MP_CONTEXT``, Python's default on macOS) join the run's logging before their
    first dataset load or node (``logging_filters.join_run_logging``): the console filter
    and the log file, as forked workers inherit them. A no-op everywhere else."""

    @hook_impl(tryfirst=True)
    def before_dataset_loaded(self) -> None:
        join_run_logging()

    @hook_impl(tryfirst=True)
    def before_node_run(self) -> None:
        join_run_logging()


class StageTimingHooks:
    """Times every node: one console line per node, each stage's wall time at the end.

    Every node's run, input loads and output saves are recorded as ``(start, end)``
    intervals per stage; a stage's wall time is the length of their union
    (``union_length``), so nodes running side by side count once. The hooks may be called
    from a runner's threads (``ThreadRunner``): the records are guarded by a lock.

    The line ``Node <name> done in <s> s (<stage>)`` is logged once the node's outputs are
    saved (Kedro calls ``after_node_run`` between the run and the saves) and its time runs
    from its first input load: what the person at the console waits for, also for a node
    whose work is in a dataset's save (the phantom's images, the image cache). A runner
    that reports a node done with no outputs to save (``DaskRunner``, whose workers load and
    save) gets the line at ``after_node_run``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # what is running now: key -> (start, stage)
        self._start: dict[str, tuple[float, str]] = {}
        self._intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self._run_start = 0.0
        self._node_first: dict[str, float] = {}  # node -> its first load (or its start)
        self._unsaved: dict[str, set[str]] = {}  # node -> outputs not saved yet

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        with self._lock:
            self._start.clear()
            self._intervals.clear()
            self._node_first.clear()
            self._unsaved.clear()
            self._run_start = time.perf_counter()

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        with self._lock:
            self._node_first.setdefault(node.name, time.perf_counter())
        self._begin(node.name, node)

    @hook_impl
    def after_node_run(self, node: Node, outputs: dict[str, Any]) -> None:
        if self._stop(node.name, node) is None:
            return
        with self._lock:
            if outputs:  # the line once they are saved (after_dataset_saved)
                self._unsaved[node.name] = set(outputs)
                return
        self._node_done(node)

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str, node: Node) -> None:
        with self._lock:
            self._node_first.setdefault(node.name, time.perf_counter())
        self._begin(f"load:{dataset_name}:{node.name}", node)

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, node: Node) -> None:
        self._stop(f"load:{dataset_name}:{node.name}", node)

    @hook_impl
    def before_dataset_saved(self, dataset_name: str, node: Node) -> None:
        self._begin(f"save:{dataset_name}:{node.name}", node)

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, node: Node) -> None:
        self._stop(f"save:{dataset_name}:{node.name}", node)
        with self._lock:
            unsaved = self._unsaved.get(node.name)
            if unsaved is None:
                return
            unsaved.discard(dataset_name)
            if unsaved:
                return
            del self._unsaved[node.name]
        self._node_done(node)

    def _node_done(self, node: Node) -> None:
        """The console's one line per node (logging_filters.py), from its first load."""
        with self._lock:
            first = self._node_first.pop(node.name, None)
        if first is not None:
            seconds = time.perf_counter() - first
            logger.info("Node %s done in %.1f s (%s)", node.name, seconds, stage_of(node))

    def _begin(self, key: str, node: Node) -> None:
        now = time.perf_counter()
        with self._lock:
            self._start[key] = (now, stage_of(node))

    def _stop(self, key: str, node: Node) -> tuple[float, float] | None:
        now = time.perf_counter()
        with self._lock:
            started = self._start.pop(key, None)
            if started is None:
                return None
            self._intervals[started[1]].append((started[0], now))
        return started[0], now

    def _close_running(self) -> None:
        """End, now, the intervals still open (a failed run: the node that raised)."""
        now = time.perf_counter()
        with self._lock:
            for started, stage in self._start.values():
                self._intervals[stage].append((started, now))
            self._start.clear()

    def stage_seconds(self) -> dict[str, float]:
        """Each timed stage's wall time in seconds (union of its intervals), in study order."""
        with self._lock:
            intervals = {stage: list(spans) for stage, spans in self._intervals.items()}
        return {stage: union_length(intervals[stage]) for stage in sorted(intervals, key=_order)}

    def summary(self, *, failed: bool = False) -> str:
        """The line logged at the end of a run: each stage's wall time, then the whole run's.

        Stages with no timed node are left out; with none at all (``ParallelRunner`` runs
        the nodes and their hooks in worker processes) the stage times are "not available".

        Args:
            failed: The run stopped on an error (the line ends with "(run failed)").
        """
        total = time.perf_counter() - self._run_start
        seconds = self.stage_seconds()
        if seconds:
            parts = ", ".join(f"{stage} {s:.0f} s" for stage, s in seconds.items())
        elif failed:  # ParallelRunner's workers, or a run that failed before any node
            parts = "not available (no node ran in this process)"
        else:
            parts = "not available (nodes ran in worker processes)"
        return f"Wall time by stage: {parts}; whole run {total:.0f} s" + (
            " (run failed)" if failed else ""
        )

    @hook_impl
    def after_pipeline_run(self) -> None:
        logger.info(self.summary())

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._close_running()
        logger.info(self.summary(failed=True))


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by ``(start, end)`` intervals, overlaps counted once."""
    total = 0.0
    current_start = current_end = None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def stage_of(node: Node) -> str:
    """The stage a node belongs to (its first tag that names a pipeline), else 'other'."""
    for stage in STAGES:
        if stage in node.tags:
            return stage
    return "other"


def _order(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)
