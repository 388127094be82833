"""``saliency.method_options.seed`` is refused, pointing at ``saliency.seed``.

Before, ``_options({"seed": 7}, 0)`` silently used seed 0: ``saliency.seed`` overwrote it.
"""

from __future__ import annotations

import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.saliency.nodes import _options
from cxr_spurious.saliency.registry import OPTION_PARAMETERS, MethodOptions


def test_a_seed_among_the_method_options_is_refused_naming_saliency_seed() -> None:
    with pytest.raises(ParameterError) as info:
        _options({"seed": 7, "ig_steps": 4}, 0)
    assert info.value.key == "saliency.method_options.seed"
    assert "'saliency.seed'" in info.value.problem and "saliency.seed=7" in info.value.problem


def test_the_seed_is_saliency_seed_and_the_options_are_kept() -> None:
    options = _options({"ig_steps": 4, "smoothgrad_samples": 3}, 7)
    assert options == MethodOptions(ig_steps=4, smoothgrad_samples=3, seed=7)


def test_the_sweeps_block_names_its_own_seed() -> None:
    with pytest.raises(ParameterError, match="'sweep.saliency.seed'"):
        MethodOptions.from_params({"seed": 1}, "sweep.saliency.method_options", seed=0)


def test_the_valid_options_listed_leave_out_the_seed() -> None:
    assert "seed" not in OPTION_PARAMETERS
    assert set(OPTION_PARAMETERS) == set(MethodOptions.__dataclass_fields__) - {"seed"}
    with pytest.raises(ParameterError, match="valid options are") as info:
        MethodOptions.from_params({"ig_stepz": 3})
    assert "'seed'" not in info.value.problem
