"""The findings row records which training of its model it describes (``model_digest``)."""

from __future__ import annotations

import pandas as pd

from cxr_spurious.study.findings import MODEL_DIGEST_COLUMN, findings_metrics, model_row
from cxr_spurious.training.provenance import model_digest

METRICS = {
    "Pneumothorax": {"auroc": 0.9, "auroc_lo": 0.8, "auroc_hi": 0.95},
    "training_config_digest": "a" * 64,
    "trained_on": {"data": "d1", "code": {"cxr_spurious.training.engine": "c1"}},
    "n_test": 10,
}


def test_model_digest_follows_settings_data_and_code() -> None:
    base = model_digest(METRICS)
    assert base is not None and len(base) == 16 and base == model_digest(dict(METRICS))
    assert model_digest({**METRICS, "training_config_digest": "b" * 64}) != base
    assert model_digest({**METRICS, "trained_on": {**METRICS["trained_on"], "data": "d2"}}) != (
        base
    )
    code = {"data": "d1", "code": {"cxr_spurious.training.engine": "c2"}}
    assert model_digest({**METRICS, "trained_on": code}) != base
    assert model_digest({"Pneumothorax": {}}) is None  # a record from before the digest


def test_findings_row_records_it_and_mlflow_does_not_get_it_as_a_metric() -> None:
    row = model_row("erm", {"supervision": "erm"}, METRICS, "Pneumothorax")
    assert row[MODEL_DIGEST_COLUMN] == model_digest(METRICS)
    metrics = findings_metrics(pd.DataFrame([row]))
    assert "erm.auroc" in metrics and not any(MODEL_DIGEST_COLUMN in k for k in metrics)
