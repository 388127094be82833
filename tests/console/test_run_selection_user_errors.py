"""``cli.user_error``: the run-selection mistakes are taken from Kedro itself (so that a
change of its wording shows up), and only Kedro's own ``ValueError`` messages count: a
subclass, or a message that merely quotes Kedro's words, is a bug and keeps its traceback."""

from __future__ import annotations

import pytest
from kedro.pipeline import Pipeline, node

from cxr_spurious.cli import user_error


def _pipeline() -> Pipeline:
    return Pipeline([node(lambda x: x, "a", "b", name="n", namespace="training")])


@pytest.mark.parametrize(
    "select",
    [
        lambda p: p.only_nodes_with_namespaces(["trainin"]),
        lambda p: p.only_nodes("nope"),
        lambda p: p.from_inputs("nope"),
    ],
    ids=["namespaces", "nodes", "from_inputs"],
)
def test_kedros_own_selection_errors_are_user_errors(select) -> None:
    with pytest.raises(ValueError) as info:
        select(_pipeline())
    assert user_error(info.value) is info.value


def test_look_alikes_of_a_selection_error_are_bugs() -> None:
    class SubclassError(ValueError):
        pass

    assert user_error(SubclassError("Pipeline does not contain nodes named ['x']")) is None
    assert user_error(ValueError("bad row: Pipeline does not contain nodes named ['x']")) is None
