"""The sweep's grid: one ``Cell`` per trained model, expanded from the sweep parameters.

A cell is an artefact kind, a confounding strength (P(artefact | PTX), P(artefact | no PTX)
in train and val), a supervision, the share of training images whose location labels are
used (Saab et al.) and a seed. ``erm`` uses no location labels: its cells carry
``location_fraction`` 0.0 and are not crossed with the fractions.

Parameters (``expand_grid``)::

    artefacts: [tube_random, tube_lesion, marker_port, faint_texture]
    strengths: {none: [0.5, 0.5], medium: [0.7, 0.3], strong: [0.9, 0.1]}
    supervisions: [erm, box, seg]
    location_fractions: [1.0]          # box and seg
    extra_fractions: {seg: [0.1]}      # optional: further fractions for one supervision
    seeds: [0, 1, 2]
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cxr_spurious.errors import ParameterError, check_number
from cxr_spurious.phantom import ARTEFACT_KINDS  # the kinds the phantom renders (with_<kind>)
from cxr_spurious.stats.seed_param import check_seed

__all__ = ["ARTEFACT_KINDS", "CELL_COLUMNS", "Cell", "config_hash", "expand_grid"]
#: Supervisions of the sweep; ``LOCATION_SUPERVISIONS`` use location labels.
SUPERVISIONS: tuple[str, ...] = ("erm", "box", "seg")
LOCATION_SUPERVISIONS: frozenset[str] = frozenset({"box", "seg"})
#: Columns that identify a cell (everything but the seed).
CELL_COLUMNS: tuple[str, ...] = (
    "artefact",
    "strength",
    "p_given_ptx",
    "p_given_no_ptx",
    "supervision",
    "location_fraction",
)
GRID_KEYS: frozenset[str] = frozenset(
    {"artefacts", "strengths", "supervisions", "location_fractions", "extra_fractions", "seeds"}
)
_LABEL = re.compile(r"[A-Za-z0-9]+")
#: Where the grid's parameters are (``conf/base/parameters_sweep.yml``): errors name this key.
GRID = "sweep.grid"


@dataclass(frozen=True)
class Cell:
    """One trained model of the sweep."""

    artefact: str
    strength: str
    p_given_ptx: float
    p_given_no_ptx: float
    supervision: str
    location_fraction: float
    seed: int

    @property
    def confounding(self) -> float:
        """P(artefact | PTX) - P(artefact | no PTX) in train and val (0: unconfounded)."""
        return self.p_given_ptx - self.p_given_no_ptx

    @property
    def namespace(self) -> str:
        """A Kedro-namespace-safe id (letters, digits, underscores), unique per cell and seed.

        The fraction is written with ``repr`` (exact for distinct floats), ``.`` -> ``p``.
        """
        fraction = repr(float(self.location_fraction)).replace(".", "p").replace("-", "m")
        return f"sweep_{self.artefact}_{self.strength}_{self.supervision}_f{fraction}_s{self.seed}"

    def as_dict(self) -> dict[str, Any]:
        """The cell's fields (for a table row or MLflow tags)."""
        return asdict(self)


def expand_grid(params: Mapping[str, Any]) -> list[Cell]:
    """Every cell of the sweep, in a stable order (artefact, strength, supervision, fraction, seed).

    Raises:
        ParameterError: naming the key (``sweep.grid.<key>``) and what was expected.
    """
    unknown = sorted(set(params) - GRID_KEYS)
    if unknown:
        raise ParameterError(f"{GRID}.{unknown[0]}", f"unknown key; expected {sorted(GRID_KEYS)}")
    artefacts = _names(params, "artefacts", ARTEFACT_KINDS)
    supervisions = _names(params, "supervisions", SUPERVISIONS)
    strengths = _strengths(_required(params, "strengths"))
    seeds = _seeds(_required(params, "seeds"))
    fractions = _fraction_rows(params, supervisions)
    return [
        Cell(artefact, label, p1, p0, sup, frac, seed)
        for artefact in artefacts
        for label, (p1, p0) in strengths.items()
        for sup, frac in fractions
        for seed in seeds
    ]


def config_hash(cell: Cell, training_params: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the cell and the training parameters (for resuming).

    Canonical: sorted keys, no whitespace, tuples as lists, numpy scalars as Python numbers;
    the same configuration gives the same hash whatever the key order.

    Raises:
        ParameterError: a training parameter that JSON cannot hold (named by its key).
    """
    payload = {"cell": cell.as_dict(), "training": _canonical(training_params, "training")}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _canonical(value: Any, key: str) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        raise ParameterError(key, f"must be a finite number for the config hash, got {value}")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise ParameterError(key, f"cannot be hashed: {type(value).__name__} is not JSON")


def _required(params: Mapping[str, Any], key: str) -> Any:
    if key not in params:
        raise ParameterError(f"{GRID}.{key}", "is missing")
    return params[key]


def _names(params: Mapping[str, Any], key: str, valid: Sequence[str]) -> list[str]:
    names = _required(params, key)
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise ParameterError(f"{GRID}.{key}", f"must be a non-empty list of {list(valid)}")
    bad = [n for n in names if n not in valid]
    if bad:
        raise ParameterError(f"{GRID}.{key}", f"unknown {bad}; valid names are {list(valid)}")
    if len(set(names)) != len(names):
        raise ParameterError(f"{GRID}.{key}", f"names repeat in {list(names)}")
    return list(names)


def _strengths(raw: Any) -> dict[str, tuple[float, float]]:
    if not isinstance(raw, Mapping) or not raw:
        raise ParameterError(
            f"{GRID}.strengths", "must map a label to [P(art | PTX), P(art | no PTX)]"
        )
    out: dict[str, tuple[float, float]] = {}
    for label, pair in raw.items():
        key = f"{GRID}.strengths.{label}"
        if not isinstance(label, str) or not _LABEL.fullmatch(label):
            raise ParameterError(key, "the label must be letters and digits only")
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ParameterError(key, f"must be [P(art | PTX), P(art | no PTX)], got {pair!r}")
        out[label] = (_probability(pair[0], key), _probability(pair[1], key))
    return out


def _probability(value: Any, key: str) -> float:
    return check_number(value, key, low=0, high=1)


def _fraction(value: Any, key: str) -> float:
    """A location-label fraction in (0, 1]."""
    return check_number(value, key, low=0, high=1, low_open=True)


def _fraction_list(raw: Any, key: str) -> list[float]:
    if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
        raise ParameterError(key, f"must be a non-empty list of fractions in (0, 1], got {raw!r}")
    return [_fraction(v, key) for v in raw]


def _fraction_rows(params: Mapping[str, Any], supervisions: list[str]) -> list[tuple[str, float]]:
    base = _fraction_list(params.get("location_fractions", [1.0]), f"{GRID}.location_fractions")
    extra = params.get("extra_fractions") or {}
    if not isinstance(extra, Mapping):
        raise ParameterError(
            f"{GRID}.extra_fractions", "must map a supervision to a list of fractions"
        )
    for sup in extra:
        if sup not in supervisions or sup not in LOCATION_SUPERVISIONS:
            raise ParameterError(
                f"{GRID}.extra_fractions.{sup}",
                f"must be one of the swept location supervisions "
                f"{sorted(LOCATION_SUPERVISIONS & set(supervisions))}",
            )
    rows: list[tuple[str, float]] = []
    for sup in supervisions:
        if sup not in LOCATION_SUPERVISIONS:
            rows.append((sup, 0.0))
            continue
        more = extra.get(sup)
        key = f"{GRID}.extra_fractions.{sup}"
        fractions = base + ([] if more is None else _fraction_list(more, key))
        rows.extend((sup, f) for f in dict.fromkeys(fractions))  # in order, without repeats
    return rows


def _seeds(raw: Any) -> list[int]:
    if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
        raise ParameterError(f"{GRID}.seeds", f"must be a non-empty list of integers, got {raw!r}")
    seeds = [check_seed(s, f"{GRID}.seeds[{i}]") for i, s in enumerate(raw)]
    if len(set(seeds)) != len(seeds):
        raise ParameterError(f"{GRID}.seeds", f"seeds repeat in {list(raw)}")
    return seeds
