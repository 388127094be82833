"""``expand_grid``'s errors name the key as it is written: ``sweep.grid.<key>``.

They used to drop ``.grid``: ``--params "sweep.grid.seed=[0]"`` was refused as
``parameter 'sweep.seed': unknown key``, a key that is not in any file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cxr_spurious.errors import ParameterError
from cxr_spurious.sweep.grid import expand_grid

SHIPPED = Path(__file__).resolve().parents[2] / "conf" / "base" / "parameters_sweep.yml"


def _grid() -> dict[str, Any]:
    return dict(yaml.safe_load(SHIPPED.read_text())["sweep"]["grid"])


def _has_path(dotted: str) -> bool:
    node: Any = yaml.safe_load(SHIPPED.read_text())
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_the_audit_example_names_the_grid_key() -> None:
    grid = {k: v for k, v in _grid().items() if k != "seeds"}
    with pytest.raises(ParameterError) as err:
        expand_grid({**grid, "seed": [0]})
    assert err.value.key == "sweep.grid.seed"
    assert "parameter 'sweep.grid.seed'" in str(err.value)


@pytest.mark.parametrize(
    ("change", "drop"),
    [
        ({"artefacts": ["laser"]}, None),
        ({"supervisions": ["erm", "erm"]}, None),
        ({"strengths": {"strong": [0.9, 1.2]}}, None),
        ({"seeds": [-1]}, None),
        ({"location_fractions": [0.0]}, None),
        ({"extra_fractions": "seg"}, None),
        ({}, "strengths"),
    ],
)
def test_every_error_names_a_key_of_the_shipped_file(change: dict, drop: str | None) -> None:
    """The named key (or, for a strength label, its map) is a path of
    conf/base/parameters_sweep.yml, the file a user edits."""
    grid = {k: v for k, v in {**_grid(), **change}.items() if k != drop}
    with pytest.raises(ParameterError) as err:
        expand_grid(grid)
    key = err.value.key
    assert key.startswith("sweep.grid.")
    assert _has_path(key) or _has_path(key.rpartition(".")[0]), key
