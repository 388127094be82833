"""Stage timing hook: node, load and save time attributed to the node's stage."""

from __future__ import annotations

import logging
import time

from kedro.pipeline import Node

from cxr_spurious.hooks import StageTimingHooks, stage_of


def _f(x):
    return x


def test_stage_of_uses_the_first_stage_tag() -> None:
    assert stage_of(Node(_f, "a", "b", name="n", tags=["figures", "training"])) == "training"
    assert stage_of(Node(_f, "a", "b", name="m")) == "other"


def test_times_are_summed_per_stage(caplog) -> None:
    hooks = StageTimingHooks()
    node = Node(_f, "a", "b", name="n", tags=["ingestion"])
    hooks.before_pipeline_run({})
    hooks.before_node_run(node)
    time.sleep(0.02)
    hooks.after_node_run(node)
    hooks.before_dataset_saved("b", node)
    time.sleep(0.03)
    hooks.after_dataset_saved("b", node)
    with caplog.at_level(logging.INFO, logger="cxr_spurious.hooks"):
        hooks.after_pipeline_run()
    assert hooks._totals["ingestion"] >= 0.05
    assert "Wall time by stage: ingestion 0 s" in caplog.text
