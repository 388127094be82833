"""Every seed parameter is checked once, by ``check_seed``, naming its key.

Before, most nodes took ``int(seed)``: ``--params robustness.seed=1.5`` ran seed 1 without a
word, ``"3"`` ran seed 3, ``true`` ran seed 1, and a negative seed failed late inside numpy
with a message that named no parameter. ``ingestion.seed`` (the adapters) truncated too.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.datasets.skippable import SKIPPED
from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.comparison.nodes import resampling_seed, seed_overrides
from cxr_spurious.pipelines.comparison.pipeline import comparison_seeds
from cxr_spurious.pipelines.debiasing.nodes import resample_train_rows
from cxr_spurious.pipelines.ingestion.nodes import generate_phantom
from cxr_spurious.pipelines.robustness.nodes import (
    compute_calibration,
    compute_fairness,
    compute_subgroup_auroc,
    find_hidden_strata,
)
from cxr_spurious.pipelines.saliency.nodes import (
    check_saliency_sanity,
    compute_heatmaps,
    plot_heatmap_overlays,
)
from cxr_spurious.pipelines.sweep.nodes import detect_shortcuts
from cxr_spurious.sources.adapters._common import seed_param
from cxr_spurious.stats.seed_param import MAX_SEED, check_seed
from cxr_spurious.sweep.confounding import assign_artefacts
from cxr_spurious.sweep.grid import expand_grid
from cxr_spurious.training.config import resolve_training_config

SRC = Path(__file__).resolve().parents[2] / "src" / "cxr_spurious"

BAD = [1.5, -1, MAX_SEED + 1, True, "3", None, float("nan")]

GRID = {
    "artefacts": ["tube_random"],
    "strengths": {"strong": [0.9, 0.1]},
    "supervisions": ["erm"],
    "location_fractions": [1.0],
    "seeds": [0],
}


def _manifest() -> pd.DataFrame:
    rows = [
        {"image_id": f"{split}{label}_{i}", "split": split, "Pneumothorax": label}
        for split in ("train", "val", "test")
        for label in (0, 1)
        for i in range(4)
    ]
    return pd.DataFrame(rows)


def _entry_points(seed: Any) -> dict[str, Callable[[], Any]]:
    """``key -> call`` with ``seed`` as that parameter's value; inputs as small as the node
    allows before it uses the seed."""
    table = pd.DataFrame({"image_id": ["a"], "split": ["test"]})
    sal = {"image_cache": None, "manifest": _manifest(), "methods": None, "tasks": None}
    sal_split = {**sal, "split": "test", "batch_size": 1, "device": "cpu"}
    return {
        "ingestion.seed (adapters)": lambda: seed_param({"seed": seed}),
        "ingestion.seed": lambda: generate_phantom("phantom", {}, seed, 1),
        "training.seed": lambda: resolve_training_config(
            {"seed": seed}, {"name": "erm", "supervision": "erm"}
        ),
        "training.variants.erm.seed": lambda: resolve_training_config(
            {}, {"name": "erm", "supervision": "erm", "seed": seed}
        ),
        "comparison.seeds[1]": lambda: comparison_seeds(
            {"training": {"seed": 0}, "comparison": {"seeds": [0, seed]}}
        ),
        "training.seed (comparison)": lambda: comparison_seeds(
            {"training": {"seed": seed}, "comparison": {"seeds": [0]}}
        ),
        "comparison.debiasing.seed": lambda: comparison_seeds(
            {"training": {"seed": 0}, "comparison": {"seeds": [0], "debiasing": {"seed": seed}}}
        ),
        "comparison.seeds (overrides)": lambda: seed_overrides(seed=seed, name="erm"),
        "comparison.seeds (resampling)": lambda: resampling_seed(seed=seed),
        "debiasing.seed": lambda: resample_train_rows(
            _manifest(), pd.DataFrame(), pd.DataFrame(), "none", "max", seed, 2
        ),
        "robustness.seed (subgroups)": lambda: compute_subgroup_auroc(
            table, ["Pneumothorax"], [], None, 1, 10, seed, 0.95
        ),
        "robustness.seed (fairness)": lambda: compute_fairness(
            table, pd.DataFrame(), [], 1, 10, seed, 0.95
        ),
        "robustness.seed (calibration)": lambda: compute_calibration(
            table, ["Pneumothorax"], [], 10, 1, 10, seed, 0.95
        ),
        "robustness.strata.seed": lambda: find_hidden_strata(
            table, pd.DataFrame(), pd.DataFrame(), {"seed": seed}, []
        ),
        "saliency.seed (heatmaps)": lambda: compute_heatmaps(
            SKIPPED,
            {"name": "erm"},
            **sal,
            split="test",
            max_images=None,
            seed=seed,
            batch_size=1,
            device="cpu",
            method_options=None,
        ),
        "saliency.seed (sanity)": lambda: check_saliency_sanity(
            SKIPPED,
            {"name": "erm"},
            **sal_split,
            seed=seed,
            enabled=True,
            n_images=1,
            n_boot=10,
            method_options=None,
        ),
        "saliency.seed (overlays)": lambda: plot_heatmap_overlays({}, None, 1, seed),
        "sweep.grid.seeds[0]": lambda: expand_grid({**GRID, "seeds": [seed]}),
        "sweep.test_seed": lambda: assign_artefacts(
            _manifest(),
            task="Pneumothorax",
            p_given_ptx=0.9,
            p_given_no_ptx=0.1,
            seed=0,
            test_seed=seed,
        ),
        "sweep.detection.seed": lambda: detect_shortcuts(
            pd.DataFrame(),
            {
                "reliance_threshold": 0.05,
                "flag_k": 2.0,
                "n_boot": 10,
                "seed": seed,
                "ci_level": 0.95,
            },
        ),
    }


def _key(name: str) -> str:
    return name.split(" (")[0]


@pytest.mark.parametrize("bad", BAD, ids=repr)
@pytest.mark.parametrize("name", list(_entry_points(0)))
def test_a_bad_seed_is_refused_naming_its_key(name: str, bad: object) -> None:
    key = _key(name)
    if key == "training.variants.erm.seed":
        key = "training.seed"
    if key == "sweep.test_seed" and bad is None:  # null is valid: drawn with each seed
        assert len(_entry_points(bad)[name]()) == len(_manifest())
        return
    with pytest.raises(
        ParameterError, match=rf"'{re.escape(key)}'.*must be an integer in \[0, 4294967295\]"
    ):
        _entry_points(bad)[name]()


@pytest.mark.parametrize("good", [0, 7, 3.0, np.int64(5), MAX_SEED])
def test_check_seed_returns_a_python_int(good: object) -> None:
    out = check_seed(good, "x.seed")
    assert type(out) is int and out == int(good)  # type: ignore[call-overload]


def test_an_integral_float_seed_is_that_seed() -> None:
    """``--params`` may parse ``1e3`` as ``1000.0``: the same seed, stored as an int."""
    assert seed_param({"seed": 1000.0}) == 1000
    cfg = resolve_training_config({"seed": 3.0}, {"name": "erm", "supervision": "erm"})
    assert cfg["seed"] == 3 and type(cfg["seed"]) is int
    assert comparison_seeds({"training": {"seed": 0.0}, "comparison": {"seeds": [0, 2.0]}}) == (
        [0, 2],
        0,
    )
    assert [c.seed for c in expand_grid({**GRID, "seeds": [4.0]})] == [4]
    assert [c.namespace for c in expand_grid({**GRID, "seeds": [4.0]})] == [
        c.namespace for c in expand_grid({**GRID, "seeds": [4]})
    ]
    assert seed_overrides(seed=2.0, name="x") == {"variant": {"seed": 2, "name": "x"}}


def test_no_node_converts_a_seed_with_int() -> None:
    """The guard: ``int(seed)`` / ``int(x["seed"])`` / ``int(x.get("seed", ...))`` in a
    pipeline node or a parameter reader would truncate 1.5 to 1 again."""

    def is_seed(node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            return node.id.endswith("seed")
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            return str(node.slice.value).endswith("seed")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return (
                node.func.attr == "get"
                and bool(node.args)
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).endswith("seed")
            )
        return False

    files = [*sorted((SRC / "pipelines").rglob("*.py")), SRC / "training" / "config.py"]
    files += sorted((SRC / "sources" / "adapters").glob("*.py"))
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "int"
                and node.args
                and is_seed(node.args[0])
            ):
                offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert offenders == [], f"seeds converted with int() instead of check_seed: {offenders}"
