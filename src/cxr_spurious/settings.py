"""Kedro project settings.

Environment variables reach the configuration only through ``${env:NAME,default}`` in
``credentials*`` and ``mlflow*`` files, and only for the names in ``ENV_ALLOWED``
(MLflow / cloud-storage credentials, the tracking URI and the experiment name). Kedro's own
``${oc.env:NAME}``, which it resolves in ``credentials*`` files while reading them, is held
to the same list. Any other use (a parameters or catalog file, another variable,
``oc.env`` outside credentials) is refused with an error naming the file and key, so a
config file can never copy e.g. ``$HOME`` or a token into parameters that end up logged as
MLflow params.
"""

from __future__ import annotations

import contextvars
import fnmatch
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kedro.config import OmegaConfigLoader
from omegaconf import DictConfig, OmegaConf

from cxr_spurious.errors import ParameterError
from cxr_spurious.hooks import (
    ParameterKeysHook,
    StageTimingHooks,
    SweepParamsHook,
    WorkerLoggingHook,
)
from cxr_spurious.tracking import BatchedParamsMlflowHook, MlflowRunNamingHook

#: Config keys (groups of files) in which ``${env:...}`` may be used.
ENV_CONFIG_KEYS = ("credentials", "mlflow")
#: Environment variables ``${env:...}`` may read (shell-style patterns).
ENV_ALLOWED = (
    "MLFLOW_*",
    "AWS_*",
    "AZURE_STORAGE_*",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CXR_SPURIOUS_EXPERIMENT",
)

# ``${env:NAME...}`` and ``${oc.env:NAME...}``: (resolver, NAME)
_ENV_USE = re.compile(r"\$\{\s*(env|oc\.env)\s*:\s*([^,}]*)")
_LOADING: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cxr_config_key", default=None
)


def env_name_allowed(name: str) -> bool:
    """Whether ``${env:name}`` may be read (``name`` matches one of ``ENV_ALLOWED``)."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ENV_ALLOWED)


def _rule() -> str:
    return (
        f"${{env:...}} may only be used in {' / '.join(f'{k}*.yml' for k in ENV_CONFIG_KEYS)} "
        f"files (${{oc.env:...}} in credentials*.yml only), for the variables "
        f"{', '.join(ENV_ALLOWED)}"
    )


def _env(name: str, default: str | None = None) -> str | None:
    """``${env:NAME,default}``: an allowed environment variable, in credentials / mlflow config.

    A variable that is set but empty (``export MLFLOW_TRACKING_URI=``) counts as unset when
    the use gives a default, as the shell's ``${NAME:-default}`` does: an empty tracking URI
    would otherwise select MLflow's refused file store and an empty experiment name fail.
    """
    key = _LOADING.get()
    if key not in ENV_CONFIG_KEYS or not env_name_allowed(str(name)):
        where = f"'{key}' configuration" if key else "configuration outside the config loader"
        raise ParameterError(f"env:{name}", f"refused in {where}: {_rule()}")
    value = os.environ.get(str(name))
    if default is not None and (value is None or not value.strip()):
        return default
    return value


def _env_uses(node: Any, prefix: str = "") -> Iterator[tuple[str, str, str]]:
    """``(dotted key, resolver, variable name)`` of every ``${env:...}`` and
    ``${oc.env:...}`` in a raw (unresolved) config."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _env_uses(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _env_uses(v, f"{prefix}[{i}]")
    elif isinstance(node, str):
        for match in _ENV_USE.finditer(node):
            yield prefix, match.group(1), match.group(2).strip()


def _check_env_uses(
    key: str, path: Path | str, config: DictConfig, resolvers: tuple[str, ...] = ("env", "oc.env")
) -> None:
    """Refuse a use of ``resolvers`` (``${env:...}`` / ``${oc.env:...}``) in ``config`` (the
    file ``path``, read for the config key ``key``) that ``ENV_CONFIG_KEYS`` /
    ``ENV_ALLOWED`` do not allow; ``oc.env`` only in credentials, where Kedro resolves it.

    Raises:
        ParameterError: naming the dotted key, the file and the variable.
    """
    raw = OmegaConf.to_container(config, resolve=False)
    for dotted, resolver, name in _env_uses(raw):
        if resolver not in resolvers:
            continue
        allowed_here = key == "credentials" if resolver == "oc.env" else key in ENV_CONFIG_KEYS
        if not allowed_here or not env_name_allowed(name):
            raise ParameterError(
                dotted,
                f"{Path(path).as_posix()} uses ${{{resolver}:{name}}} ('{key}' configuration), "
                f"which is refused: {_rule()}",
            )


class ProjectConfigLoader(OmegaConfigLoader):
    """``OmegaConfigLoader`` that confines ``${env:...}`` to credentials / mlflow files."""

    def __getitem__(self, key: str) -> dict[str, Any]:
        # Credentials are resolved while their files are read, before any merge.
        token = _LOADING.set(key)
        try:
            return super().__getitem__(key)
        finally:
            _LOADING.reset(token)

    def _read_dir_configs(
        self,
        conf_path: str,
        patterns: Any,
        key: str,
        processed_files: set,
        read_environment_variables: bool | None = False,
    ) -> dict[Path, DictConfig]:
        """Kedro's reading of one folder's files, with ``${oc.env:...}`` checked per file
        before Kedro resolves it in credentials (``${env:...}`` is checked by its resolver,
        ``_env``, there).

        Raises:
            ParameterError: a refused ``${oc.env:...}`` (``_check_env_uses``).
        """
        configs = super()._read_dir_configs(
            conf_path, patterns, key, processed_files, read_environment_variables=False
        )
        for path, config in configs.items():
            _check_env_uses(key, path, config, resolvers=("oc.env",))
            if read_environment_variables:
                self._resolve_environment_variables(config)
        return configs

    def _merge_and_resolve(
        self, key: str, config_per_file: dict[Path, DictConfig]
    ) -> dict[str, Any]:
        for path, config in config_per_file.items():
            _check_env_uses(key, path, config)
        token = _LOADING.set(key)
        try:
            return super()._merge_and_resolve(key, config_per_file)
        finally:
            _LOADING.reset(token)


CONFIG_LOADER_CLASS = ProjectConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    "custom_resolvers": {"env": _env},
    # An environment (e.g. `--env chexlocalize`) overrides single keys, not whole blocks.
    "merge_strategy": {"parameters": "soft", "catalog": "soft"},
    "config_patterns": {
        "mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"],
    },
}

# kedro-mlflow's hook, with each node's parameters logged in one batch (src/cxr_spurious/
# tracking.py), in place of the instance the plugin registers itself (disabled below).
# ParameterKeysHook refuses unknown parameter keys first (``tryfirst``), before the MLflow
# hooks open a run.
HOOKS = (
    ParameterKeysHook(),
    WorkerLoggingHook(),
    StageTimingHooks(),
    SweepParamsHook(),
    BatchedParamsMlflowHook(),
    MlflowRunNamingHook(),
)
DISABLE_HOOKS_FOR_PLUGINS = ("kedro_mlflow", "kedro-mlflow")
