"""Numeric parameters are checked once, by ``errors.check_number`` / ``check_integer``.

Before, each module wrote its own check, and most let something through: ``training.lr``
took NaN, infinity and ``true`` (a NaN rate stopped training only at the first step's
loss); ``training.location_fraction=abc`` and
``training.topk=abc`` raised a bare ``ValueError`` from ``float()``; ``training.step_size=0``
was silently 1; ``robustness.calibration_bins``, ``debiasing.n_clusters``,
``saliency.batch_size`` and others took NaN (``nan < 1`` is false) or ``true``, and
``robustness.min_per_class=2.7`` ran as 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.training.training_tiny_data import tiny_config

from cxr_spurious.debiasing.dfr import fit_dfr
from cxr_spurious.debiasing.features import thumbnails
from cxr_spurious.debiasing.jtt import error_set
from cxr_spurious.debiasing.objectives import GroupDROObjective
from cxr_spurious.errors import ParameterError, check_integer, check_number
from cxr_spurious.parallel import resolve_workers
from cxr_spurious.robustness.calibration import reliability_bins
from cxr_spurious.saliency.compute import image_batches
from cxr_spurious.saliency.registry import MethodOptions
from cxr_spurious.sweep.detection import RELIANCE_COLUMN, shortcut_detection

BAD_TYPES = [True, np.True_, "0.5", None, [0.5], float("nan"), float("inf"), -float("inf")]


@pytest.mark.parametrize("value", BAD_TYPES)
def test_check_number_refuses_non_numbers_and_non_finite(value: object) -> None:
    with pytest.raises(ParameterError) as info:
        check_number(value, "block.key", low=0, high=1)
    assert info.value.key == "block.key"
    assert info.value.problem == f"must be a finite number in [0, 1], got {value!r}"


@pytest.mark.parametrize(
    ("kwargs", "inside", "outside", "text"),
    [
        ({"low": 0, "high": 1}, [0, 1, 0.5, np.float32(0.25)], [-1e-9, 1.0000001], "in [0, 1]"),
        ({"low": 0, "high": 1, "low_open": True}, [1e-12, 1], [0], "in (0, 1]"),
        ({"low": 0, "high": 1, "high_open": True}, [0, 0.999], [1], "in [0, 1)"),
        ({"low": 0, "low_open": True}, [1e-300, 1e300], [0, -2], "> 0"),
        ({"low": 1}, [1, 2.5], [0.999], ">= 1"),
        ({"high": 2.5}, [-1e9, 2.5], [2.5000001], "<= 2.5"),
        ({"high": 2, "high_open": True}, [1.99], [2], "< 2"),
        ({}, [-1e30, 0, 7], [], ""),
    ],
)
def test_check_number_bounds(
    kwargs: dict[str, Any], inside: list[float], outside: list[float], text: str
) -> None:
    for value in inside:
        result = check_number(value, "k", **kwargs)
        assert type(result) is float and result == float(value)
    for value in outside:
        with pytest.raises(ParameterError, match="^parameter 'k': must be a finite number"):
            check_number(value, "k", **kwargs)
    problem = f"must be a finite number{' ' + text if text else ''}, got 'x'"
    with pytest.raises(ParameterError) as info:
        check_number("x", "k", **kwargs)
    assert info.value.problem == problem


def test_check_number_words_unit_and_null() -> None:
    with pytest.raises(ParameterError) as info:
        check_number(-1, "training.time_budget_s", low=0, low_open=True, unit="of seconds",
                     nullable=True)  # fmt: skip
    assert info.value.problem == "must be a finite number of seconds > 0 or null, got -1"


def test_check_integer_takes_integral_floats_and_refuses_fractions() -> None:
    assert check_integer(1e3, "k", low=1) == 1000 and type(check_integer(1e3, "k")) is int
    assert check_integer(np.int64(7), "k") == 7 and type(check_integer(np.int64(7), "k")) is int
    assert check_integer(2**63 + 1, "k") == 2**63 + 1  # exact, not through float
    for bad in (2.7, True, "3", float("nan"), 0, -1):
        with pytest.raises(ParameterError) as info:
            check_integer(bad, "k", low=1)
        assert info.value.problem == f"must be an integer >= 1, got {bad!r}"
    with pytest.raises(ParameterError, match=r"must be an integer in \[0, 4294967295\], got -1"):
        check_integer(-1, "k", low=0, high=2**32 - 1)


# --- training: the keys the merged config checks ------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("lr", True),
        ("lr", -1e-3),
        ("momentum", 1.0),
        ("momentum", float("nan")),
        ("gamma", 0),
        ("gamma", 1.5),
        ("weight_decay", float("nan")),
        ("multitask_weight", -0.1),
        ("location_fraction", "abc"),
        ("location_fraction", True),
        ("topk", "abc"),
        ("topk", 0),
        ("step_size", 0),
        ("epochs", 2.5),
        ("batch_size", True),
        ("time_budget_s", float("nan")),
        ("max_steps", 0),
        ("patience", 1.5),
        ("num_workers", -1),
    ],
)
def test_training_refuses_a_bad_number_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ParameterError) as info:
        tiny_config(**{key: value})
    assert info.value.key == f"training.{key}"
    assert info.value.problem.endswith(f"got {value!r}")


def test_training_integral_floats_become_ints() -> None:
    cfg = tiny_config(epochs=2.0, batch_size=1e1, lr=1, time_budget_s=30)
    assert (cfg["epochs"], cfg["batch_size"]) == (2, 10)
    assert type(cfg["epochs"]) is int and type(cfg["batch_size"]) is int
    assert type(cfg["lr"]) is float and cfg["time_budget_s"] == 30.0
    assert cfg["max_steps"] is None and cfg["patience"] is None


# --- library checks that took NaN, booleans or fractions ----------------------------------

_MANIFEST = pd.DataFrame({"image_id": ["a"], "split": ["train"], "y": [1.0]})

CALLS: list[tuple[str, Callable[[object], object]]] = [
    (
        "robustness.calibration_bins",
        lambda v: reliability_bins(np.array([0, 1]), np.array([0.2, 0.8]), v),
    ),
    ("saliency.batch_size", lambda v: image_batches(np.zeros((3, 4, 4)), v)),
    ("localization.workers", lambda v: resolve_workers(v, 100)),
    ("debiasing.thumbnail_size", lambda v: thumbnails(np.zeros((1, 4, 4)), v)),
    ("training.group_dro.n_groups", lambda v: GroupDROObjective(v)),
    ("saliency.method_options.ig_steps", lambda v: MethodOptions.from_params({"ig_steps": v})),
    (
        "saliency.method_options.occlusion_window",
        lambda v: MethodOptions.from_params({"occlusion_window": v}),
    ),
]


@pytest.mark.parametrize(("key", "call"), CALLS, ids=[k for k, _ in CALLS])
@pytest.mark.parametrize("value", [float("nan"), True, 2.5, "4"])
def test_library_integer_settings_name_the_key(
    key: str, call: Callable[[object], object], value: object
) -> None:
    with pytest.raises(ParameterError) as info:
        call(value)
    assert info.value.key == key
    assert info.value.problem.startswith("must be an integer")


def test_real_number_settings_refuse_nan() -> None:
    predictions = pd.DataFrame({"image_id": ["a"], "p_y": [0.5]})
    with pytest.raises(ParameterError) as info:
        error_set(_MANIFEST, predictions, "y", threshold=math.nan)
    assert info.value.key == "debiasing.jtt_threshold"
    with pytest.raises(ParameterError) as info:
        fit_dfr(_MANIFEST, pd.DataFrame(), np.zeros(1), ["y"], c=math.nan)
    assert info.value.key == "debiasing.dfr_c"
    models = pd.DataFrame(
        columns=["artefact", "p_given_ptx", "p_given_no_ptx", RELIANCE_COLUMN], dtype=float
    )
    for kwargs, key in (({"flag_k": math.nan}, "flag_k"), ({"flag_k": 0}, "flag_k"),
                        ({"reliance_threshold": math.inf}, "reliance_threshold")):  # fmt: skip
        with pytest.raises(ParameterError) as info:
            shortcut_detection(models, **kwargs)
        assert info.value.key == key
