"""``test_n_boot`` of ``study_findings``: the replicates training used, as an ``int``,
through ``check_n_boot``. It used to be ``int(value)``: a recorded ``2.5`` became ``2``
without a word, and ``True`` became ``1``."""

from __future__ import annotations

import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.study.findings import training_ci_settings

MODEL = "erm"


def _n_boot(test_metrics: dict, variant: dict, training_n_boot: object = 1000) -> int:
    return training_ci_settings(MODEL, variant, test_metrics, 0.95, training_n_boot)[1]


@pytest.mark.parametrize(
    ("test_metrics", "variant", "training", "expected"),
    [
        ({"n_boot": 1e4}, {"n_boot": 7}, 3, 10000),  # recorded by training: wins
        ({}, {"n_boot": 2e3}, 3, 2000),  # the variant's block over the shared value
        ({}, {}, 5e2, 500),
        ({}, {}, 300, 300),
    ],
)
def test_the_recorded_value_is_an_int(
    test_metrics: dict, variant: dict, training: object, expected: int
) -> None:
    got = _n_boot(test_metrics, variant, training)
    assert got == expected and type(got) is int


@pytest.mark.parametrize(
    ("test_metrics", "variant", "training", "key"),
    [
        ({"n_boot": 2.5}, {}, 1000, f"{MODEL}.test_metrics (n_boot)"),
        ({}, {"n_boot": 2.5}, 1000, f"training.variants.{MODEL}.n_boot"),
        ({}, {}, 2.5, "training.n_boot"),
        ({}, {}, True, "training.n_boot"),
        ({}, {}, 0, "training.n_boot"),
    ],
)
def test_a_non_integer_is_refused_naming_where_it_came_from(
    test_metrics: dict, variant: dict, training: object, key: str
) -> None:
    with pytest.raises(ParameterError) as err:
        _n_boot(test_metrics, variant, training)
    assert err.value.key == key
