"""``DepthFirstRunner``: Kedro's sequential runner in an order that finishes each branch of
the pipeline before starting the next, so that in-memory intermediates do not pile up.

Kedro's ``SequentialRunner`` runs the nodes in ``Pipeline.nodes`` order: topological
*layers* (every node whose parents are done, sorted by name, then the next layer). In a
pipeline of many independent branches, such as the shortcut sweep's one namespace per cell,
that trains every cell before the first cell's saliency node runs, and each cell's
in-memory outputs (model, predictions, heatmaps, figures: about 29 MB per cell of the sweep)
stay until their last reader has run: the 240-model sweep peaked at 10.1 GB.

``kedro run --pipeline sweep --runner cxr_spurious.depth_first.DepthFirstRunner`` runs the
same nodes, one at a time in this process, in a depth-first topological order
(``depth_first_order``): after a node, the nodes it made ready run first, so a cell goes
from training to its evaluation row before the next cell starts, and its intermediates are
released (Kedro releases a memory dataset after its last reader) before the next cell's
exist. Loading, saving, hooks, releasing and the resume hint are Kedro's own
(``SequentialRunner``); only the order differs, and every order is a valid topological
order, so the outputs are those of ``SequentialRunner``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node
from kedro.runner import SequentialRunner

__all__ = ["DepthFirstRunner", "depth_first_order"]


def depth_first_order(pipeline: Pipeline) -> list[Node]:
    """The pipeline's nodes in a depth-first topological order.

    A stack of ready nodes: the next node is the most recently readied one, and the nodes
    one node readies are stacked so that they run in Kedro's own order among themselves
    (ties, and the first nodes, follow ``Pipeline.nodes``). Each node comes after all of
    its parents.

    Args:
        pipeline: Any Kedro pipeline.

    Returns:
        Every node of ``pipeline`` once.
    """
    kedro_order = pipeline.nodes
    rank = {node: i for i, node in enumerate(kedro_order)}
    parents = pipeline.node_dependencies
    children: dict[Node, list[Node]] = {node: [] for node in kedro_order}
    for node, its_parents in parents.items():
        for parent in its_parents:
            children[parent].append(node)
    waiting = {node: len(parents[node]) for node in kedro_order}

    def stacked(nodes: Iterable[Node]) -> list[Node]:  # first in Kedro's order on top
        return sorted(nodes, key=rank.__getitem__, reverse=True)

    stack = stacked(node for node in kedro_order if waiting[node] == 0)
    order: list[Node] = []
    while stack:
        node = stack.pop()
        order.append(node)
        readied = []
        for child in children[node]:
            waiting[child] -= 1
            if waiting[child] == 0:
                readied.append(child)
        stack.extend(stacked(readied))
    return order


class _InOrder:
    """A pipeline that lists its nodes in a given order (everything else delegated)."""

    def __init__(self, pipeline: Pipeline, order: list[Node]) -> None:
        self._pipeline = pipeline
        self._order = order

    @property
    def nodes(self) -> list[Node]:
        return list(self._order)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)


class DepthFirstRunner(SequentialRunner):
    """``SequentialRunner`` in ``depth_first_order`` (see the module docstring).

    Args:
        is_async: Load and save each node's data with threads (Kedro's ``--async``).
    """

    def _run(
        self,
        pipeline: Pipeline,
        catalog: Any,
        hook_manager: Any = None,
        run_id: str | None = None,
    ) -> None:
        ordered = _InOrder(pipeline, depth_first_order(pipeline))
        super()._run(ordered, catalog, hook_manager=hook_manager, run_id=run_id)  # type: ignore[arg-type]
