"""The saliency benchmark: a tiny run prints its table, and both sides produce the same maps."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

from tests.benchmarks.loader import load_benchmark


def _bench() -> ModuleType:
    return load_benchmark("bench_saliency")


def test_a_tiny_run_prints_one_row_per_method_and_size_with_matching_maps(
    tmp_path: Path, capsys
) -> None:
    out = tmp_path / "saliency.json"
    argv = ["--images", "6", "--sizes", "32", "--batch", "4", "--repeats", "1"]
    argv += ["--ig-steps", "3", "--base-channels", "8", "--json", str(out)]
    assert _bench().main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text(encoding="utf-8"))
    rows = result["rows"]
    assert [(r["method"], r["size"]) for r in rows] == [
        ("gradcam", 32),
        ("integrated_gradients", 32),
    ]
    for r in rows:
        # the project's maps are the library's, post-processed (float16 rounding at most)
        assert r["max_map_diff"] < 1e-3, r
        assert r["project_maps_s"] > 0 and r["library_maps_s"] > 0
        assert abs(r["ratio"] - r["project_maps_s"] / r["library_maps_s"]) < 1e-9
        assert len(r["rounds"]) == 1
        assert f"| {r['method']} | 32 |" in printed
