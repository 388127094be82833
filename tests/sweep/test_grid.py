"""The sweep grid: cells, namespaces, validation naming the key, the resume hash."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from cxr_spurious.errors import ParameterError
from cxr_spurious.sweep.grid import Cell, config_hash, expand_grid

PARAMS = {
    "artefacts": ["tube_random", "faint_texture"],
    "strengths": {"none": [0.5, 0.5], "medium": [0.7, 0.3], "strong": [0.9, 0.1]},
    "supervisions": ["erm", "box", "seg"],
    "location_fractions": [1.0],
    "extra_fractions": {"seg": [0.1]},
    "seeds": [0, 1, 2],
}


def test_grid_crosses_every_axis_and_erm_uses_no_location_labels() -> None:
    cells = expand_grid(PARAMS)
    # 2 artefacts x 3 strengths x (erm, box@1, seg@1, seg@0.1) x 3 seeds
    assert len(cells) == 2 * 3 * 4 * 3
    assert len(set(cells)) == len(cells)
    combos = {(c.supervision, c.location_fraction) for c in cells}
    assert combos == {("erm", 0.0), ("box", 1.0), ("seg", 1.0), ("seg", 0.1)}
    strong = [c for c in cells if c.strength == "strong"]
    assert {(c.p_given_ptx, c.p_given_no_ptx) for c in strong} == {(0.9, 0.1)}
    assert strong[0].confounding == pytest.approx(0.8)
    assert cells[0] == Cell("tube_random", "none", 0.5, 0.5, "erm", 0.0, 0)


def test_namespaces_are_kedro_safe_and_unique() -> None:
    cells = expand_grid({**PARAMS, "extra_fractions": {"seg": [0.1, 0.12, 0.125]}})
    names = [c.namespace for c in cells]
    assert all(re.fullmatch(r"[A-Za-z0-9_]+", n) for n in names)
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"artefacts": ["tube_random", "laser"]}, "sweep.grid.artefacts"),
        ({"supervisions": ["erm", "erm"]}, "sweep.grid.supervisions"),
        ({"strengths": {"strong": [0.9, 1.2]}}, "sweep.grid.strengths.strong"),
        ({"strengths": {"very-strong": [0.9, 0.1]}}, "sweep.grid.strengths.very-strong"),
        ({"strengths": {"strong": [0.9]}}, "sweep.grid.strengths.strong"),
        ({"seeds": [0, 0]}, "sweep.grid.seeds"),
        ({"seeds": [0, -1]}, "sweep.grid.seeds[1]"),
        ({"location_fractions": [0.0]}, "sweep.grid.location_fractions"),
        ({"extra_fractions": {"erm": [0.5]}}, "sweep.grid.extra_fractions.erm"),
        ({"extra_fractions": {"seg": [1.5]}}, "sweep.grid.extra_fractions.seg"),
        ({"epochs": 3}, "sweep.grid.epochs"),
    ],
)
def test_bad_parameters_name_their_key(change: dict, key: str) -> None:
    with pytest.raises(ParameterError) as err:
        expand_grid({**PARAMS, **change})
    assert err.value.key == key


def test_missing_axis_is_named() -> None:
    params = {k: v for k, v in PARAMS.items() if k != "strengths"}
    with pytest.raises(ParameterError) as err:
        expand_grid(params)
    assert err.value.key == "sweep.grid.strengths"


def test_config_hash_is_canonical_sha256() -> None:
    cell = Cell("marker_port", "strong", 0.9, 0.1, "seg", 0.1, 2)
    training = {"epochs": 3, "lr": 0.001, "sizes": (64, 64)}
    expected_text = json.dumps(
        {"cell": cell.as_dict(), "training": {"epochs": 3, "lr": 0.001, "sizes": [64, 64]}},
        sort_keys=True,
        separators=(",", ":"),
    )
    digest = config_hash(cell, training)
    assert digest == hashlib.sha256(expected_text.encode()).hexdigest()
    reordered = {"sizes": [64, 64], "lr": np.float64(0.001), "epochs": np.int64(3)}
    assert config_hash(cell, reordered) == digest


def test_config_hash_changes_with_the_seed_and_the_training() -> None:
    cell = Cell("marker_port", "strong", 0.9, 0.1, "seg", 0.1, 2)
    digest = config_hash(cell, {"epochs": 3})
    other_seed = Cell("marker_port", "strong", 0.9, 0.1, "seg", 0.1, 3)
    assert config_hash(other_seed, {"epochs": 3}) != digest
    assert config_hash(cell, {"epochs": 4}) != digest


def test_config_hash_refuses_values_json_cannot_hold() -> None:
    cell = Cell("marker_port", "strong", 0.9, 0.1, "seg", 0.1, 2)
    with pytest.raises(ParameterError) as err:
        config_hash(cell, {"optim": {"lr": float("nan")}})
    assert err.value.key == "training.optim.lr"
    with pytest.raises(ParameterError, match="object"):
        config_hash(cell, {"thing": object()})
