"""Which training of a model a table describes, for readers of tables computed from a
model that may have been retrained since: ``model_digest`` (from ``test_metrics``: study
findings, robustness summaries) and ``model_fingerprint`` (from the model artifact, which
``test_metrics`` also records: heatmap sets and the localization tables built on them).
Standard library only, so a module whose import closure is recorded
(``pipelines.robustness.nodes.SUMMARY_MODULES``) can use it cheaply.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: The column of a table computed from one trained model that names that model
#: (``model_digest``): study findings and robustness summaries carry it, so a later reader
#: can tell a table of an earlier training from one of the model on disk now.
MODEL_DIGEST_COLUMN = "model_digest"

#: What to run when outputs were computed from an earlier training of a model (e.g. after
#: ``torchrun`` trained it again): the stages after training. A plain ``kedro run`` would
#: train the model once more and replace the new one.
RERUN_AFTER_RETRAINING = (
    "kedro run --pipelines saliency,localization,regression,robustness,study,report "
    "(the stages after training; a plain kedro run would train the model again)"
)


def model_digest(test_metrics: Mapping[str, Any]) -> str | None:
    """A short digest of the trained model ``test_metrics`` describes: its settings
    (``training_config_digest``) with what it was trained on (``trained_on``: the data's
    and the training code's digests). Two records with the same digest describe the same
    training; None for a record without ``training_config_digest`` (written before it) or
    no record (a skipped variant's sentinel).
    """
    settings = (
        test_metrics.get("training_config_digest") if isinstance(test_metrics, Mapping) else None
    )
    if settings is None:
        return None
    what = {"settings": settings, "trained_on": test_metrics.get("trained_on")}
    text = json.dumps(what, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: The key (in ``test_metrics``) and the column (in a heatmap set's index and the
#: localization tables) naming the trained model artifact behind them.
MODEL_FINGERPRINT_KEY = "model_fingerprint"


def model_fingerprint(artifact: object) -> str | None:
    """The trained model artifact's ``fingerprint`` (``checkpoints.result_fingerprint`` of
    its run: the settings that change the result, the DDP world size, the training data and
    code), or None for an artifact without one (an older file, a skipped variant)."""
    if not isinstance(artifact, Mapping):
        return None
    value = artifact.get("fingerprint")
    return str(value) if value else None


def recorded_fingerprint(test_metrics: object) -> str | None:
    """The ``model_fingerprint`` a ``test_metrics`` record holds, or None (a record written
    before it, or no record)."""
    if not isinstance(test_metrics, Mapping):
        return None
    value = test_metrics.get(MODEL_FINGERPRINT_KEY)
    return str(value) if value else None
