"""Every in-memory catalog entry crosses processes: ``kedro run --runner ParallelRunner``
(and ``cxr_spurious.runner.DaskRunner``) run nodes in other processes, where a plain
``MemoryDataset`` arrives empty (pickled without its data) and a node loads a bare
``object()`` from it instead of the upstream node's output."""

from __future__ import annotations

from pathlib import Path

import yaml

CONF = Path(__file__).resolve().parents[2] / "conf"
PLAIN = {"MemoryDataset", "kedro.io.MemoryDataset", "kedro.io.memory_dataset.MemoryDataset"}
RUNNER = "cxr_spurious.datasets.shared_memory.RunnerMemoryDataset"


def _entries() -> dict[str, dict]:
    out = {}
    for path in sorted(CONF.glob("*/catalog*.yml")):
        for name, entry in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).items():
            if isinstance(entry, dict) and not name.startswith("_"):
                out[f"{path.relative_to(CONF)}: {name}"] = entry
    return out


def test_no_plain_memory_dataset_in_the_catalog() -> None:
    entries = _entries()
    assert len(entries) > 50  # the catalog was read
    plain = sorted(k for k, e in entries.items() if e.get("type") in PLAIN)
    assert not plain, f"use {RUNNER} (works under every runner): {plain}"
    assert sum(e.get("type") == RUNNER for e in entries.values()) >= 10
