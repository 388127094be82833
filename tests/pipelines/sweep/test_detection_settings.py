"""``detect_shortcuts`` (the sweep node) hands every ``sweep.detection`` setting to
``shortcut_detection``: ``reliance_threshold``, ``flag_k`` and ``ci_level`` as well as the
seed and ``n_boot``. The node test of ``test_node_params`` uses the library's defaults, so
a setting left out of the call would not show there."""

from __future__ import annotations

import pandas as pd
from tests.pipelines.sweep.test_node_params import DETECTION, _models

from cxr_spurious.pipelines.sweep import nodes
from cxr_spurious.sweep.detection import shortcut_detection


def test_non_default_detection_settings_reach_the_table() -> None:
    models = _models()
    settings = {
        **DETECTION,
        "reliance_threshold": 0.2,
        "flag_k": 1.1,
        "ci_level": 0.8,
        "n_boot": 60,
        "seed": 3,
    }
    node = nodes.detect_shortcuts(models, settings)
    library = shortcut_detection(
        models, reliance_threshold=0.2, flag_k=1.1, level=0.8, n_boot=60, seed=3
    )
    pd.testing.assert_frame_equal(node, library)
    # each setting matters on this data, so leaving any one out changes the table
    for change in ({"reliance_threshold": 0.1}, {"flag_k": 2.0}, {"level": 0.95}):
        kw = {"reliance_threshold": 0.2, "flag_k": 1.1, "level": 0.8, **change}
        other = shortcut_detection(models, n_boot=60, seed=3, **kw)
        assert not node.equals(other), change
