"""``summarise_sweep``: the Holm family of a paired metric is one pair *and one location
fraction* (``PAIR_FAMILY``), as its note says, also when a supervision is trained at
several location fractions."""

from __future__ import annotations

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests
from tests.sweep.sweep_rows import cell_rows

from cxr_spurious.pipelines.sweep import nodes


def _two_fractions() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    return pd.DataFrame(
        cell_rows(
            {"none": (0.5, 0.5), "medium": (0.7, 0.3), "strong": (0.9, 0.1)},
            (("erm", 0.0), ("seg", 0.5), ("seg", 1.0)),
            lambda conf, sup, seed, _artefact: {
                "artefact_reliance": conf * (sup == "erm") + rng.normal(0, 0.05),
                "robust_auroc": 0.8 - 0.2 * conf * (sup == "erm") + rng.normal(0, 0.05),
            },
        )
    )


def test_each_location_fraction_is_its_own_family() -> None:
    _, paired = nodes.summarise_sweep(
        _two_fractions(), {"ci_level": 0.95, "pairs": [["seg", "erm"]]}
    )
    assert sorted(paired["location_fraction"].unique()) == [0.5, 1.0]
    for metric in ("artefact_reliance", "robust_auroc"):
        for _, family in paired.groupby(["pair", "location_fraction"]):
            assert len(family) == 3  # one test per strength
            expected = multipletests(family[f"{metric}_p"], method="holm")[1]
            np.testing.assert_allclose(family[f"{metric}_p_adj"], expected)
