"""The scaling benchmark: its growth fit on known numbers, its memory probe, and a tiny run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from tests.benchmarks.loader import load_benchmark

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "bench_scaling.py"


def _bench() -> ModuleType:
    return load_benchmark("bench_scaling")


def _rows(ns: list[int], wall: list[float], work_mb: list[float], items=None) -> list[dict]:
    return [
        {"n": n, "items": n if items is None else items[k], "wall_s": w, "peak_mb": 500 + m,
         "work_mb": m}
        for k, (n, w, m) in enumerate(zip(ns, wall, work_mb, strict=True))
    ]  # fmt: skip


def test_loglog_slope_recovers_the_exponent_of_a_power_law() -> None:
    b = _bench()
    x = [500, 1000, 2000, 4000]
    assert b.loglog_slope(x, [3 * v**1.0 for v in x]) == pytest.approx(1.0)
    assert b.loglog_slope(x, [0.5 * v**2 for v in x]) == pytest.approx(2.0)
    assert b.loglog_slope(x, [7.0] * 4) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="two distinct x"):
        b.loglog_slope([1000, 1000], [1.0, 2.0])
    with pytest.raises(ValueError, match="2 x values but 3"):
        b.loglog_slope([1, 2], [1.0, 2.0, 3.0])


def test_fit_growth_tells_a_streaming_stage_from_one_that_holds_everything() -> None:
    b = _bench()
    ns = [500, 1000, 2000]
    # Time linear in N (flat per image), work memory constant up to noise: flat / flat.
    g = b.fit_growth("cache", _rows(ns, [5.0, 10.2, 19.8], [40.0, 44.0, 41.0]))
    assert g.time_slope == pytest.approx(0.99, abs=0.03)
    assert (g.time_verdict, g.mem_verdict) == ("flat", "flat")
    # Work memory proportional to N (every map kept): grows, ~0.1 MB per image.
    g = b.fit_growth("saliency:x", _rows(ns, [5.0, 10.0, 20.0], [50.0, 100.0, 200.0]))
    assert g.mem_slope == pytest.approx(1.0)
    assert g.mb_per_1k == pytest.approx(100.0)
    assert g.mem_rise_mb == pytest.approx(150.0)
    assert g.mem_verdict == "grows"
    # Quadratic time: the per-item time grows.
    g = b.fit_growth("x", _rows(ns, [1.0, 4.0, 16.0], [10.0, 10.0, 10.0]))
    assert g.time_slope == pytest.approx(2.0) and g.time_verdict == "grows"
    # A steep slope on a few megabytes is sampling noise, not growth (MEM_FLOOR_MB).
    g = b.fit_growth("x", _rows(ns, [1.0, 2.0, 4.0], [2.0, 4.0, 8.0]))
    assert g.mem_slope == pytest.approx(1.0) and g.mem_verdict == "flat"
    # Rows in any order; a capped stage (same items at every N) fits time against N.
    g = b.fit_growth("x", _rows([2000, 500, 1000], [2.0, 2.0, 2.0], [5, 5, 5], [64, 64, 64]))
    assert g.time_slope == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="two distinct"):
        b.fit_growth("x", _rows([1000], [1.0], [1.0]))


def test_growth_verdict_thresholds() -> None:
    b = _bench()
    assert b.growth_verdicts(1.0 + b.TIME_TOL, 0.0, 0.0) == ("flat", "flat")
    assert b.growth_verdicts(1.0 + b.TIME_TOL + 0.01, 0.0, 0.0)[0] == "grows"
    assert b.growth_verdicts(1.0, b.MEM_SLOPE, b.MEM_FLOOR_MB + 1)[1] == "grows"
    assert b.growth_verdicts(1.0, b.MEM_SLOPE - 0.01, 1000.0)[1] == "flat"


def test_growth_explained_by_per_image_tables_is_rows_and_only_then() -> None:
    b = _bench()
    ns = [500, 1000, 2000]
    # Work memory rises 150 MB, its per-image tables 120 MB: the tables account for it.
    rows = _rows(ns, [1.0, 2.0, 4.0], [50.0, 100.0, 200.0])
    for r, tables in zip(rows, [30.0, 60.0, 150.0], strict=True):
        r["rows_mb"] = tables
    g = b.fit_growth("read", rows)
    assert g.rows_rise_mb == pytest.approx(120.0) and g.mem_verdict == "rows"
    # The same rise with tables of 40 MB: 110 MB are something else, so it grows.
    for r, tables in zip(rows, [10.0, 20.0, 50.0], strict=True):
        r["rows_mb"] = tables
    assert b.fit_growth("read", rows).mem_verdict == "grows"
    # The thresholds: the excess may be ROWS_SLACK of the tables' rise or MEM_FLOOR_MB.
    assert b.growth_verdicts(1.0, 1.0, 100.0 + 100.0 * b.ROWS_SLACK, 100.0)[1] == "rows"
    assert b.growth_verdicts(1.0, 1.0, 100.0 + 100.0 * b.ROWS_SLACK + 1, 100.0)[1] == "grows"
    assert b.growth_verdicts(1.0, 1.0, 10.0 + b.MEM_FLOOR_MB + 1, 10.0)[1] == "grows"
    assert b.growth_verdicts(1.0, 1.0, 10.0 + b.MEM_FLOOR_MB, 10.0)[1] == "rows"
    # Flat memory stays flat whatever the tables do.
    assert b.growth_verdicts(1.0, 0.0, 1.0, 50.0)[1] == "flat"


def test_deep_size_counts_what_a_document_holds() -> None:
    b = _bench()
    import pandas as pd

    key = "counts"
    doc = {"a": {key: "x" * 1000, "size": [224, 224]}, "b": {key: "y" * 1000, "size": [1, 2]}}
    expected = (
        sys.getsizeof(doc)
        + sum(sys.getsizeof(k) for k in ("a", "b"))
        + sum(sys.getsizeof(v) for v in doc.values())
        + sys.getsizeof(key) + sys.getsizeof("size")  # shared keys, counted once
        + sys.getsizeof("x" * 1000) + sys.getsizeof("y" * 1000)
        + 2 * sys.getsizeof([224, 224]) + sum(sys.getsizeof(i) for i in (224, 224, 1, 2))
    )  # fmt: skip
    assert b.deep_size_mb(doc) * 2**20 == pytest.approx(expected)
    frame = pd.DataFrame({"image_id": [f"img{i}" for i in range(100)], "v": range(100)})
    assert b.deep_size_mb([frame]) * 2**20 == pytest.approx(
        sys.getsizeof([frame]) + frame.memory_usage(deep=True).sum()
    )
    # A million floats in lists: about 24 MB of floats, plus the lists.
    assert 24 < b.deep_size_mb([[float(i), float(i)] for i in range(500_000)]) < 80


def test_stage_selection_keeps_order_and_refuses_a_stage_without_its_input() -> None:
    b = _bench()
    assert b.stages_for(["gradcam"]) == [
        "phantom", "read", "cache", "train_epoch", "saliency:gradcam", "localization"
    ]  # fmt: skip
    assert b.stages_for(["gradcam"], ["cache", "phantom", "read"]) == ["phantom", "read", "cache"]
    with pytest.raises(ValueError, match=r"'cache' reads the output of \['read'\]"):
        b.stages_for(["gradcam"], ["phantom", "cache"])
    with pytest.raises(ValueError, match="unknown stage"):
        b.stages_for(["gradcam"], ["phantom", "nosuch"])


def test_memory_probe_counts_a_worker_process() -> None:
    b = _bench()
    before = b.tree_anon_mb()
    child = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; x = bytearray(200 * 2**20); x[::4096] = b'1' * len(x[::4096]);"
         " print('ok', flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ok"
        with b.PeakSampler(interval=0.01) as sampler:
            time.sleep(0.1)
        assert b.tree_anon_mb() - before > 150
        assert sampler.peak - before > 150
        assert child.pid in b.process_tree(b.os.getpid())
    finally:
        child.kill()
        child.wait()


@pytest.mark.integration  # about a minute: two tiny phantoms through every stage
def test_quick_run_measures_every_stage_at_every_size(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out), "--work-dir", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((out / "scaling.json").read_text())
    stages = ["phantom", "read", "cache", "train_epoch", "saliency:gradcam", "localization"]
    assert [(r["stage"], r["n"]) for r in result["rows"]] == [
        (s, n) for n in (40, 80) for s in stages
    ]
    for row in result["rows"]:
        assert row["wall_s"] > 0 and row["items"] > 0, row
        assert row["per_item_ms"] == pytest.approx(1000 * row["wall_s"] / row["items"])
        assert row["peak_mb"] >= row["base_mb"] > 0 and row["hwm_mb"] > 0, row
    by = {(r["stage"], r["n"]): r for r in result["rows"]}
    assert by[("phantom", 80)]["items"] == by[("read", 80)]["items"] == 80
    assert by[("cache", 80)]["items"] == 80
    # the read stage sizes its per-image tables, which grow with N; no other stage has any
    assert 0 < by[("read", 40)]["rows_mb"] < by[("read", 80)]["rows_mb"]
    assert all(r["rows_mb"] == 0 for r in result["rows"] if r["stage"] != "read")
    # one Pneumothorax map per test image, and localization evaluates exactly those maps
    assert by[("saliency:gradcam", 80)]["items"] == by[("localization", 80)]["items"] > 0
    assert [g["stage"] for g in result["growth"]] == stages
    assert {g["mem_verdict"] for g in result["growth"]} <= {"flat", "grows", "rows"}
    assert [p["stage"] for p in result["projections"]] == stages
    assert all(p["hours_MIMIC-CXR-JPG"] > p["hours_CheXpert"] > 0 for p in result["projections"])
    with open(out / "scaling.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["stage"], int(r["n"])) for r in table] == [
        (r["stage"], r["n"]) for r in result["rows"]
    ]
    assert "| stage | N | items | wall s |" in done.stdout
    assert not list(tmp_path.glob("bench_scaling_*"))  # the temporary folders are gone


def test_refuses_a_single_size_and_an_unknown_method() -> None:
    for argv, message in (
        (["--sizes", "100"], "at least two distinct sizes"),
        (["--methods", "nosuch"], "--methods"),
        (["--stages", "phantom", "localization"], "--stages: stage 'localization' reads"),
    ):
        done = subprocess.run(
            [sys.executable, str(BENCH), *argv],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 2 and message in done.stderr, done.stderr
