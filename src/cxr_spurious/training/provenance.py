"""Which training of a model a table describes (``model_digest``), for readers of tables
computed from a model that may have been retrained since (study findings, robustness
summaries). Standard library only, so a module whose import closure is recorded
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
