"""The study refuses localization rows of another training of the model.

``kedro run --pipeline training`` (or torchrun) retrains a model; ``kedro run --pipeline
study`` then read the new model's test metrics and counterfactual predictions and the
localization results of the heatmaps the earlier model gave, and wrote one findings row
of two models. The heatmap sets and ``test_metrics`` now record the model artifact's
fingerprint, and ``summarise_findings`` compares them.
"""

from __future__ import annotations

import pandas as pd
import pytest
from tests.study.test_ci_level import _inputs

from cxr_spurious.errors import StaleOutputError
from cxr_spurious.pipelines.study import nodes

NOW, EARLIER = "c" * 64, "e" * 64


def _with_fingerprints(maps: str | None, metrics: str | None) -> dict[str, object]:
    kw = _inputs()
    if maps is not None:
        per_cxr = kw["localization_per_cxr"]
        assert isinstance(per_cxr, pd.DataFrame)
        kw["localization_per_cxr"] = per_cxr.assign(model_fingerprint=maps)
    if metrics is not None:
        kw["test_metrics"] = {**kw["test_metrics"], "model_fingerprint": metrics}  # type: ignore[dict-item]
    return kw


def test_maps_of_the_same_training_pass() -> None:
    row = nodes.summarise_findings(**_with_fingerprints(NOW, NOW), ci_level=0.95)  # type: ignore[arg-type]
    assert row["gradcam_miou"] > 0


def test_maps_of_an_earlier_training_are_refused() -> None:
    # a stale output the user reruns: one line on the console, not a bug's traceback
    with pytest.raises(StaleOutputError) as info:
        nodes.summarise_findings(**_with_fingerprints(EARLIER, NOW), ci_level=0.95)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith("erm: localization_per_cxr holds the gradcam maps of another")
    assert f"model_fingerprint {EARLIER[:12]}" in message and NOW[:12] in message
    # what to rerun: the stages after training, not a whole run that would retrain
    assert message.endswith(
        "kedro run --pipelines saliency,localization,regression,robustness,study,report "
        "(the stages after training; a plain kedro run would train the model again)"
    )


@pytest.mark.parametrize(("maps", "metrics"), [(None, NOW), (NOW, None), (None, None)])
def test_without_a_fingerprint_on_either_side_nothing_is_compared(
    maps: str | None, metrics: str | None
) -> None:
    """Files written before the record, and imported CheXlocalize maps, have none."""
    row = nodes.summarise_findings(**_with_fingerprints(maps, metrics), ci_level=0.95)  # type: ignore[arg-type]
    assert row["gradcam_miou"] > 0
