"""The data a study trains on, and model artifacts that record it, for the comparison's
checks of the study's models (``check_study_models``).

``study_data`` is the tiny training set of ``tests/training`` (32 train rows: one batch
at ``conf/base``'s ``batch_size``, which ``build_training_table`` requires) with the
study's resampled manifest (``debiasing.strategy: none``); ``study_artifact`` is the
artifact ``train_model`` writes, without weights: ``trained_as`` as the model's precision
and device resolve here and ``trained_on`` as ``engine.fit`` digests the rows
``train_model`` gives it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from tests.training.training_tiny_data import tiny_study

from cxr_spurious.debiasing.resampling import resample_manifest
from cxr_spurious.training.checkpoints import code_digests, training_data_digest
from cxr_spurious.training.data import build_training_table, split_training_table
from cxr_spurious.training.outputs import resolved_precision_and_device


def study_data(**resampling: Any) -> dict[str, Any]:
    """``{"manifest", "resampled_manifest", "image_cache"}`` of a tiny study; ``resampling``
    (``strategy``, ``target``) resamples it, by default not at all (``none``)."""
    manifest, cache = tiny_study(n_train=32, n_val=16, n_test=8, p_confound=0.75)
    groups = (np.arange(len(manifest)) % 3 == 0).astype(np.int64)  # groups of 1/3 and 2/3
    resampled = resample_manifest(
        manifest,
        groups,
        resampling.get("strategy", "none"),
        target=resampling.get("target", "max"),
        seed=0,
    )
    return {"manifest": manifest, "resampled_manifest": resampled, "image_cache": cache}


def study_artifact(config: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The records of the model artifact ``train_model`` writes for ``config`` on ``data``."""
    table = build_training_table(data["resampled_manifest"], data["image_cache"], config)
    digest = training_data_digest(*split_training_table(table), data["image_cache"])
    return {
        "variant": config["variant"],
        "trained_as": resolved_precision_and_device(config),
        "trained_on": {"data": digest, "code": code_digests()},
    }


def changed(frame: pd.DataFrame, column: str, row: int, value: Any) -> pd.DataFrame:
    """A copy of ``frame`` with one value changed."""
    out = frame.copy()
    out.loc[out.index[row], column] = value
    return out
