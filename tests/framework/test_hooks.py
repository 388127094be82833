"""Project hooks: stage timing per stage, the conf folder read without a session, and the
pipelines rebuilt for a later session of the same process."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kedro.framework.hooks.manager import _create_hook_manager
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner, ThreadRunner
from tests.conftest import kedro_env

from cxr_spurious import hooks
from cxr_spurious.hooks import (
    StageTimingHooks,
    base_parameters,
    project_conf,
    stage_of,
    union_length,
)


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
    hooks.after_node_run(node, {"b": 1})
    hooks.before_dataset_saved("b", node)
    time.sleep(0.03)
    hooks.after_dataset_saved("b", node)
    with caplog.at_level(logging.INFO, logger="cxr_spurious.hooks"):
        hooks.after_pipeline_run()
    assert hooks.stage_seconds()["ingestion"] >= 0.05
    assert "Wall time by stage: ingestion 0 s" in caplog.text


def _node_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if " done in " in r.getMessage()]


def test_a_nodes_line_comes_after_its_saves_and_counts_loads_and_saves(caplog) -> None:
    """Kedro calls after_node_run before it saves the outputs: a node whose work is in a
    dataset's save (the phantom's images) used to read "done in 0.0 s"."""
    hooks = StageTimingHooks()
    node = Node(_f, "a", ["b", "c"], name="n", tags=["ingestion"])
    hooks.before_pipeline_run({})
    with caplog.at_level(logging.INFO, logger="cxr_spurious.hooks"):
        hooks.before_dataset_loaded("a", node)
        time.sleep(0.05)
        hooks.after_dataset_loaded("a", node)
        hooks.before_node_run(node)
        hooks.after_node_run(node, {"b": 1, "c": 2})
        assert _node_lines(caplog) == []  # not before its outputs are saved
        for name in ("b", "c"):
            hooks.before_dataset_saved(name, node)
            time.sleep(0.1)
            hooks.after_dataset_saved(name, node)
            if name == "b":
                assert _node_lines(caplog) == []  # "c" is still to be saved
    lines = _node_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("Node n done in ") and "(ingestion)" in lines[0]
    seconds = float(re.search(r"done in (\d+\.\d) s", lines[0]).group(1))
    assert seconds >= 0.2  # the load and both saves, not the node's own 0.0 s


def test_a_node_reported_without_outputs_to_save_gets_its_line_at_once(caplog) -> None:
    """DaskRunner reports a node done (its worker loaded and saved) with outputs={}; a node
    without outputs has nothing to wait for either."""
    hooks = StageTimingHooks()
    node = Node(_f, "a", "b", name="remote", tags=["localization"])
    hooks.before_pipeline_run({})
    with caplog.at_level(logging.INFO, logger="cxr_spurious.hooks"):
        hooks.before_node_run(node)
        time.sleep(0.05)
        hooks.after_node_run(node, {})
    lines = _node_lines(caplog)
    assert len(lines) == 1 and re.match(
        r"Node remote done in 0\.[0-9] s \(localization\)", lines[0]
    )


def _project(root: Path, marker: int) -> Path:
    """A minimal Kedro project at ``root`` whose conf/base has one parameter."""
    (root / "conf" / "base").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[tool.kedro]\npackage_name = "cxr_spurious"\n')
    (root / "conf" / "base" / "parameters.yml").write_text(f"marker: {marker}\n")
    return root


def test_base_parameters_come_from_the_project_holding_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = _project(tmp_path / "study", 7)
    (project / "notebooks").mkdir()
    monkeypatch.chdir(project / "notebooks")  # a sub-folder: the project is found above it
    assert project_conf() == project / "conf"
    assert base_parameters() == {"marker": 7}


def test_base_parameters_fall_back_to_the_source_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no Kedro project here or above
    assert project_conf() == hooks.SOURCE_CONF
    assert "sweep" in base_parameters()


def test_no_conf_anywhere_names_both_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed copy of the package (no conf beside it) run outside a project."""
    monkeypatch.setattr(hooks, "SOURCE_CONF", tmp_path / "site-packages" / "conf")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no Kedro project.*site-packages/conf/base"):
        project_conf()


def _sleep(x: int) -> int:
    time.sleep(0.5)
    return x


def _fail(x: int) -> int:
    time.sleep(0.3)
    raise RuntimeError("boom")


def _run_timed(pipe: Pipeline, runner: object, caplog) -> tuple[StageTimingHooks, float]:
    """Run ``pipe`` with the timing hooks registered as Kedro's runners call them."""
    timing = StageTimingHooks()
    manager = _create_hook_manager()
    manager.register(timing)
    catalog = DataCatalog({"a": MemoryDataset(1)})
    manager.hook.before_pipeline_run(run_params={}, pipeline=pipe, catalog=catalog)
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="cxr_spurious.hooks"):
        try:
            runner.run(pipe, catalog, manager)  # type: ignore[attr-defined]
        except RuntimeError as exc:
            manager.hook.on_pipeline_error(error=exc, run_params={}, pipeline=pipe, catalog=catalog)
        else:
            manager.hook.after_pipeline_run(
                run_params={}, run_result={}, pipeline=pipe, catalog=catalog
            )
    return timing, time.perf_counter() - started


def _summary(caplog) -> str:
    lines = [r.getMessage() for r in caplog.records if "Wall time by stage" in r.getMessage()]
    assert len(lines) == 1, lines
    return lines[0]


def _logged_seconds(caplog, stage: str) -> int:
    return int(re.search(rf"{stage} (\d+) s", _summary(caplog)).group(1))


def test_union_length_counts_overlaps_once() -> None:
    # by hand: [0, 3] and [5, 6] covered -> 4
    assert union_length([(1.0, 3.0), (0.0, 2.0), (5.0, 6.0), (2.5, 2.7)]) == pytest.approx(4.0)
    assert union_length([]) == 0.0


def test_parallel_threads_count_the_stages_wall_time_not_the_sum(caplog) -> None:
    """4 nodes of 0.5 s on 4 threads: the stage took about 0.5 s of wall time, not 2 s."""
    pipe = Pipeline(
        [Node(_sleep, "a", f"o{i}", name=f"train_{i}", tags=["training"]) for i in range(4)]
        + [Node(_sleep, "a", "p", name="ingest", tags=["ingestion"])]
    )
    timing, wall = _run_timed(pipe, ThreadRunner(max_workers=5), caplog)
    assert wall < 1.5  # they did run side by side
    # the logged stage time is within the run's wall time (the sum of the nodes is 2 s)
    assert _logged_seconds(caplog, "training") <= round(wall)
    seconds = timing.stage_seconds()
    assert 0.5 <= seconds["training"] <= wall
    assert 0.5 <= seconds["ingestion"] <= wall
    assert list(seconds) == ["ingestion", "training"]  # study order


def test_sequential_stage_time_is_the_sum_of_its_nodes(caplog) -> None:
    pipe = Pipeline(
        [Node(_sleep, "a", f"o{i}", name=f"train_{i}", tags=["training"]) for i in range(4)]
    )
    timing, wall = _run_timed(pipe, SequentialRunner(), caplog)
    assert _logged_seconds(caplog, "training") == 2
    assert 2.0 <= timing.stage_seconds()["training"] <= wall


def test_a_failed_run_logs_the_stage_times_it_has(caplog) -> None:
    pipe = Pipeline(
        [
            Node(_sleep, "a", "o", name="ingest", tags=["ingestion"]),
            Node(_fail, "o", "p", name="train", tags=["training"]),
        ]
    )
    timing, wall = _run_timed(pipe, SequentialRunner(), caplog)
    line = _summary(caplog)
    assert line.startswith("Wall time by stage: ingestion 1 s, training 0 s; whole run ")
    assert line.endswith(" s (run failed)"), line
    seconds = timing.stage_seconds()
    assert 0.5 <= seconds["ingestion"] < 0.8
    assert 0.3 <= seconds["training"] <= wall - 0.5  # the failing node's time counts too


def test_no_node_timed_in_this_process_says_so(caplog) -> None:
    """``ParallelRunner`` runs the node hooks in its workers: none reach this instance."""
    timing = StageTimingHooks()
    timing.before_pipeline_run({})
    with caplog.at_level(logging.INFO, logger="cxr_spurious.hooks"):
        timing.after_pipeline_run()
    assert "Wall time by stage: not available (nodes ran in worker processes)" in caplog.text
    assert "; whole run 0 s" in caplog.text


SESSIONS = """
import json, sys
from pathlib import Path
from kedro.framework.project import pipelines
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
project = Path(sys.argv[1]); out = []
bootstrap_project(project)
for runtime in json.loads(sys.argv[2]):
    with KedroSession.create(project_path=project, env="test", runtime_params=runtime) as s:
        params = s.load_context().params
        comparison, sweep = pipelines["comparison"], pipelines["sweep"]
        out.append({
            "seeds": params["comparison"]["seeds"],
            "grid": params["sweep"]["grid"],
            "comparison": sorted({n.namespace for n in comparison.nodes if n.namespace}),
            "sweep": sorted({n.namespace.split(".")[0] for n in sweep.nodes if n.namespace}),
            "same_objects": [id(comparison), id(sweep)],
        })
print("JSON:" + json.dumps(out))
"""


@pytest.mark.integration
def test_a_later_session_in_the_same_process_builds_its_own_pipelines(
    kedro_project: Path,
) -> None:
    """Kedro keeps its registry of pipelines for the process; a second session with other
    comparison seeds or another sweep grid must not run the first session's pipelines."""
    from cxr_spurious.sweep.grid import expand_grid

    runs = [
        {"comparison": {"seeds": [0, 1, 2]}},
        {"comparison": {"seeds": [0]}, "sweep": {"grid": {"seeds": [5]}}},
        {"comparison": {"seeds": [0]}, "sweep": {"grid": {"seeds": [5]}}},
    ]
    env = kedro_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{kedro_project / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-c", SESSIONS, str(kedro_project), json.dumps(runs)],
        cwd=kedro_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    first, second, third = json.loads(
        next(ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:"))[5:]
    )
    per_seed = re.compile(r"_s(\d+)$")
    seeds_built = [
        {int(m.group(1)) for ns in run["comparison"] if (m := per_seed.search(ns))}
        for run in (first, second)
    ]
    # the study's seed (0) has no suffix; every other seed asked for has namespaces
    assert first["seeds"] == [0, 1, 2] and seeds_built[0] == {1, 2}
    assert second["seeds"] == [0] and seeds_built[1] == set()
    # one namespace per cell of the session's own grid (and "sweep", its data)
    assert first["grid"]["seeds"] == [0, 1, 2] and second["grid"]["seeds"] == [5]
    for run in (first, second):
        cells = {c.namespace for c in expand_grid(run["grid"])}
        assert set(run["sweep"]) == cells | {"sweep"}
    assert {ns[-3:] for ns in second["sweep"] if ns != "sweep"} == {"_s5"}
    # the same parameters again: the pipelines already built are kept
    assert third["same_objects"] == second["same_objects"]
