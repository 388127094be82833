"""Project hooks: per-stage wall time, logged at the end of every run; the parameter keys
checked before anything runs; and the sweep's parameters handed to pipeline construction.

A stage's time is its nodes' run time plus the time spent loading their inputs and saving
their outputs (saving is where the phantom is generated and the image cache is built).

``ParameterKeysHook`` refuses, when the context is created (before any node, and before
the other hooks), a parameter key that nothing reads: the merged parameters (environments
and ``--params`` included) against the keys of the shipped configuration, ``conf/base`` and
the ``SHIPPED_ENVS`` (``cxr_spurious.parameter_schema``). A misspelt ``study.nboot`` stops
the run with a ``ParameterError`` naming ``study.n_boot``.

``SweepParamsHook`` stashes the ``sweep`` parameters (with ``--params`` overrides) when the
context is created, which Kedro does before the first access to the registered pipelines
(``KedroSession.run``: ``load_context()``, then ``pipelines[name]``), so that
``pipelines/sweep/pipeline.py`` can build one namespace per grid cell; it stashes every
parameter too (``stashed_parameters``), which the comparison reads for its seeds
(``pipelines/comparison/pipeline.py``). Without a session, ``base_parameters`` reads
``conf/base`` (kedro-viz, tests, a bare ``register_pipelines()``) of the Kedro project that
holds the current directory, else of the source checkout this package was imported from.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml
from kedro.config import OmegaConfigLoader
from kedro.framework.context import KedroContext
from kedro.framework.hooks import hook_impl
from kedro.pipeline import Node
from kedro.utils import find_kedro_project

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


def shipped_parameters(conf: Path) -> list[dict[str, Any]]:
    """The parameters of ``conf/base`` and of each of ``SHIPPED_ENVS`` present, each read
    on its own and unresolved (only their keys matter): files named ``parameters*`` or
    under a ``parameters*`` folder, as Kedro's config loader finds them."""
    out: list[dict[str, Any]] = []
    for env in ("base", *SHIPPED_ENVS):
        folder = conf / env
        if not folder.is_dir():
            continue
        for path in _config_files(folder):
            if any(part.startswith("parameters") for part in path.relative_to(folder).parts):
                loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
                if isinstance(loaded, dict):
                    out.append(loaded)
    return out


def runtime_param_names(conf: Path) -> list[str]:
    """Names read with ``${runtime_params:NAME}`` anywhere in ``conf`` (``--params NAME=...``
    sets them, which also adds them to the parameters)."""
    names = {
        match.group(1)
        for path in _config_files(conf)
        if not path.name.startswith("credentials")  # never read here
        for match in _RUNTIME_PARAM.finditer(path.read_text(encoding="utf-8"))
    }
    return sorted(names)


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
        from cxr_spurious.parameter_schema import check_parameter_keys, parameter_schema

        conf = Path(context.config_loader.conf_source)
        if not (conf / "base").is_dir():
            logger.warning("Parameter keys not checked: %s has no base folder", conf)
            return
        params = context.config_loader["parameters"]
        schema = parameter_schema(shipped_parameters(conf), runtime_param_names(conf))
        check_parameter_keys(params, schema)


class SweepParamsHook:
    """Stash ``config_loader["parameters"]["sweep"]`` (runtime overrides included) at
    context creation; reading ``context.params`` here would load the pipelines first."""

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        global _SWEEP_PARAMS, _PARAMS
        _PARAMS = dict(context.config_loader["parameters"])
        sweep = _PARAMS.get("sweep")
        _SWEEP_PARAMS = dict(sweep) if isinstance(sweep, dict) else None


class StageTimingHooks:
    """Times every node and logs one line per stage with its wall time when the run ends."""

    def __init__(self) -> None:
        self._start: dict[str, float] = {}
        self._totals: dict[str, float] = defaultdict(float)
        self._run_start = 0.0

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        self._start.clear()
        self._totals.clear()
        self._run_start = time.perf_counter()

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        self._start[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        started = self._start.get(node.name)
        self._stop(node.name, node)
        if started is not None:  # the console's one line per node (logging_filters.py)
            seconds = time.perf_counter() - started
            logger.info("Node %s done in %.1f s (%s)", node.name, seconds, stage_of(node))

    @hook_impl
    def before_dataset_loaded(self, dataset_name: str, node: Node) -> None:
        self._start[f"load:{dataset_name}:{node.name}"] = time.perf_counter()

    @hook_impl
    def after_dataset_loaded(self, dataset_name: str, node: Node) -> None:
        self._stop(f"load:{dataset_name}:{node.name}", node)

    @hook_impl
    def before_dataset_saved(self, dataset_name: str, node: Node) -> None:
        self._start[f"save:{dataset_name}:{node.name}"] = time.perf_counter()

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, node: Node) -> None:
        self._stop(f"save:{dataset_name}:{node.name}", node)

    def _stop(self, key: str, node: Node) -> None:
        started = self._start.pop(key, None)
        if started is not None:
            self._totals[stage_of(node)] += time.perf_counter() - started

    @hook_impl
    def after_pipeline_run(self) -> None:
        total = time.perf_counter() - self._run_start
        parts = ", ".join(
            f"{stage} {seconds:.0f} s"
            for stage, seconds in sorted(self._totals.items(), key=lambda kv: _order(kv[0]))
        )
        logger.info("Wall time by stage: %s; whole run %.0f s", parts, total)


def stage_of(node: Node) -> str:
    """The stage a node belongs to (its first tag that names a pipeline), else 'other'."""
    for stage in STAGES:
        if stage in node.tags:
            return stage
    return "other"


def _order(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)
