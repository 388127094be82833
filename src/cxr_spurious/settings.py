"""Kedro project settings."""

from __future__ import annotations

import os

from kedro.config import OmegaConfigLoader

from cxr_spurious.hooks import StageTimingHooks


def _env(name: str, default: str | None = None) -> str | None:
    """``${env:NAME,default}``: read an environment variable in any config file."""
    return os.environ.get(name, default)


CONFIG_LOADER_CLASS = OmegaConfigLoader
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

HOOKS = (StageTimingHooks(),)
