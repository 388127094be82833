"""``DepthFirstRunner``: Kedro's sequential runner in a depth-first order, which finishes
each branch (a sweep cell) before the next and so holds one branch's intermediates at a
time, with the outputs of ``SequentialRunner``."""

from __future__ import annotations

import numpy as np
import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Pipeline, node
from kedro.runner import SequentialRunner

from cxr_spurious.depth_first import DepthFirstRunner, depth_first_order

CELLS = 6


class Big:
    """A cell's large intermediate; ``Big.live`` counts the instances alive."""

    live = 0

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        Big.live += 1

    def __del__(self) -> None:
        Big.live -= 1


def _make(seed: int) -> Big:
    return Big(np.random.default_rng(seed).normal(size=10_000))


def _transform(big: Big) -> Big:
    return Big(big.values * 2.0)


def _row(big: Big, peak: list[int]) -> float:
    peak.append(Big.live)
    return float(big.values.sum())


def _collect(*rows: float) -> list[float]:
    return list(rows)


def _sweep_like(peak: list[int]) -> tuple[Pipeline, DataCatalog]:
    """CELLS independent branches seed -> make -> transform -> row, then one collector."""
    nodes, data = [], {"params:peak": MemoryDataset(peak, copy_mode="assign")}
    for c in range(CELLS):
        data[f"params:seed_{c}"] = MemoryDataset(c)
        for name in ("made", "transformed"):
            data[f"cell{c}.{name}"] = MemoryDataset(copy_mode="assign")
        nodes += [
            node(_make, f"params:seed_{c}", f"cell{c}.made", name=f"cell{c}.make"),
            node(_transform, f"cell{c}.made", f"cell{c}.transformed", name=f"cell{c}.transform"),
            node(
                _row, [f"cell{c}.transformed", "params:peak"], f"cell{c}.row", name=f"cell{c}.row"
            ),
        ]
    nodes.append(node(_collect, [f"cell{c}.row" for c in range(CELLS)], "rows", name="collect"))
    return Pipeline(nodes), DataCatalog(data)


def _run(runner, peak: list[int]) -> list[float]:
    pipeline, catalog = _sweep_like(peak)
    runner.run(pipeline, catalog)
    return catalog.load("rows")


def test_depth_first_holds_one_branch_where_sequential_holds_all() -> None:
    assert Big.live == 0
    seq_peak: list[int] = []
    seq_rows = _run(SequentialRunner(), seq_peak)
    dfs_peak: list[int] = []
    dfs_rows = _run(DepthFirstRunner(), dfs_peak)
    assert dfs_rows == seq_rows  # same outputs
    # Kedro's layered order transforms every cell before the first row: when the first
    # row runs, all the cells' transformed intermediates are alive
    assert seq_peak == list(range(CELLS, 0, -1)), seq_peak
    # depth first: each cell's row runs right after its own transform, the earlier cells'
    # intermediates already released: one alive at a time
    assert dfs_peak == [1] * CELLS, dfs_peak
    assert Big.live == 0


def test_order_is_topological_and_goes_depth_first() -> None:
    pipeline, _ = _sweep_like([])
    order = depth_first_order(pipeline)
    assert sorted(n.name for n in order) == sorted(n.name for n in pipeline.nodes)
    position = {n: i for i, n in enumerate(order)}
    for child, parents in pipeline.node_dependencies.items():
        assert all(position[p] < position[child] for p in parents), child.name
    names = [n.name for n in order]
    # one cell at a time, in Kedro's order of the cells, the collector last
    expected = [f"cell{c}.{step}" for c in range(CELLS) for step in ("make", "transform", "row")]
    assert names == [*expected, "collect"]


def test_a_diamond_runs_each_node_once_after_both_parents() -> None:
    def one() -> int:
        return 1

    def inc(x: int) -> int:
        return x + 1

    def add(a: int, b: int) -> int:
        return a + b

    pipeline = Pipeline(
        [
            node(one, None, "a", name="a"),
            node(inc, "a", "b", name="b"),
            node(inc, "a", "c", name="c"),
            node(add, ["b", "c"], "d", name="d"),
        ]
    )
    assert [n.name for n in depth_first_order(pipeline)] == ["a", "b", "c", "d"]
    catalog = DataCatalog({"d": MemoryDataset()})
    DepthFirstRunner().run(pipeline, catalog)
    assert catalog.load("d") == 4


def test_a_failing_node_stops_the_run_with_its_own_error() -> None:
    def boom(x: int) -> int:
        raise ValueError("cell 1 failed")

    pipeline = Pipeline(
        [
            node(lambda: 1, None, "x", name="first"),
            node(boom, "x", "y", name="boom"),
        ]
    )
    with pytest.raises(ValueError, match="cell 1 failed"):
        DepthFirstRunner().run(pipeline, DataCatalog())
