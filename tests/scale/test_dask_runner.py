"""``cxr_spurious.runner.DaskRunner`` on a real Dask cluster (2 single-threaded workers, loopback).

The localization pipeline's outputs under Dask are byte-identical to ``SequentialRunner``'s;
a node's ``ParameterError`` reaches the caller as itself; the pre-flight check names an
in-memory dataset that cannot cross processes before any cluster is contacted; a worker
killed while it runs a node gets that node retried (and only that node), with the same final
outputs, and with no retries allowed the run stops naming the node, which saved nothing; a
node lost with its worker mid-save has its partial output deleted, as a cut-off node has.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import pytest
import yaml
from distributed import LocalCluster
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner
from kedro_datasets.pickle import PickleDataset
from tests.pipelines.localization.test_pipeline import PARAMS as LOCALIZATION_PARAMS
from tests.scale.slow_nodes import (
    ROWS,
    DiesMidSave,
    SlowLines,
    count_rows,
    fails_while_b_saves,
    rows,
)

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.parallel import available_cores
from cxr_spurious.pipelines.localization import create_pipeline
from cxr_spurious.runner import DASK_LOG_ENV, DaskRunner, _Session
from cxr_spurious.sources.cache import ImageCache

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("dask")]

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "conf" / "base" / "catalog_localization.yml"
IDS = [f"p{i}_study1_view1_frontal" for i in range(6)]
TASKS = ["Edema", "Cardiomegaly"]
CSV_PER_CXR = "data/07_model_output/localization/localization_per_cxr.csv"
# the localization pipeline test's parameters, plus the overlay count this test needs
PARAMS = {**LOCALIZATION_PARAMS, "overlays.n_images": 2}


def _inputs() -> dict[str, Any]:
    """Small localization inputs: two heatmap sets over 6 CXRs x 2 tasks, masks, a cache."""
    rng = np.random.default_rng(0)
    gt: dict[str, dict[str, Any]] = {}
    for cxr in IDS:
        gt[cxr] = {}
        for task in TASKS:
            mask = np.zeros((16, 12), np.uint8)
            if rng.random() < 0.7:
                mask[4:10, 3:8] = 1
            gt[cxr][task] = encode_rle(mask)
    sets = {}
    for model in ("erm", "seg"):
        rows = [
            {"image_id": c, "task": t, "prob": float(rng.random()), "gt": 1.0, "cxr_w": 12,
             "cxr_h": 16, "model": model, "method": "gradcam"}
            for c in IDS
            for t in TASKS
        ]  # fmt: skip
        maps = rng.random((len(rows), 4, 3)).astype(np.float32)
        sets[f"{model}.gradcam"] = HeatmapSet(pd.DataFrame(rows), maps)
    n, size = len(IDS), 8
    cache = ImageCache(
        image_ids=IDS,
        tasks=TASKS,
        objects=["Chest Tube"],
        size=size,
        images=rng.integers(0, 255, (n, size, size), dtype=np.uint8),
        masks=np.zeros((n, len(TASKS), size, size), np.uint8),
        boxes=np.zeros((n, len(TASKS), size, size), np.uint8),
        spurious=np.zeros((n, 1, size, size), np.uint8),
        has_mask=np.ones((n, len(TASKS)), bool),
    )
    manifest = pd.DataFrame({"image_id": IDS, "sex": (["M", "F"] * len(IDS))[: len(IDS)]})
    data = {
        "heatmap_collection": sets,
        "gt_segmentations": gt,
        "spurious_segmentations": {},
        "hb_segmentations": {},
        "hb_salient_points": {},
        "manifest": manifest,
        "image_cache": cache,
    }
    data.update({f"params:localization.{k}": v for k, v in PARAMS.items()})
    data["params:saliency.split"] = "test"  # the maps' split, written in the tuning tables
    return data


def _catalog(root: Path, **overrides: Any) -> DataCatalog:
    """Inputs in memory; the localization outputs as in conf/base, written under ``root``."""
    config = {
        name: entry
        for name, entry in yaml.safe_load(CATALOG.read_text(encoding="utf-8")).items()
        if not name.startswith("_")
    }
    for entry in config.values():
        for key in ("filepath", "path"):
            if key in entry:
                entry[key] = str(root / entry[key])
    catalog = DataCatalog.from_config(config)
    data = {**_inputs(), **overrides}
    pipeline = create_pipeline()
    missing = pipeline.inputs() - set(data)
    assert not missing, f"the localization pipeline now also reads {sorted(missing)}"
    for name, value in data.items():
        catalog[name] = MemoryDataset(value)
    return catalog


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _assert_same_outputs(first: Path, second: Path, *, extra: tuple[str, ...] = ()) -> None:
    a, b = _files(first), _files(second)
    assert sorted(a) == sorted(set(b) - set(extra))
    assert len(a) >= 10  # every table, the segmentations, the reports and the figures
    different = [name for name in a if a[name] != b[name]]
    assert not different, f"outputs differ from SequentialRunner's: {different}"


@pytest.fixture(scope="module")
def sequential_outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The localization outputs written by ``SequentialRunner`` (the reference)."""
    root = tmp_path_factory.mktemp("sequential")
    SequentialRunner().run(create_pipeline(), _catalog(root))
    return root


def test_localization_outputs_identical_to_sequential_runner(
    cluster: Any, sequential_outputs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local, _client = cluster
    caplog.set_level(logging.INFO)
    DaskRunner(address=local.scheduler_address).run(create_pipeline(), _catalog(tmp_path / "dask"))
    _assert_same_outputs(sequential_outputs, tmp_path / "dask")
    # the workers' log records reach the client, prefixed with their node
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("[evaluate_heatmaps] Running node: evaluate_heatmaps") for m in messages
    )
    assert any(
        m.startswith("[select_per_cxr] Saving data to localization_per_cxr") for m in messages
    )
    assert sum(m.startswith("Completed node: ") for m in messages) == len(create_pipeline().nodes)


def test_a_failing_node_raises_its_own_error(
    cluster: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local, _client = cluster
    bad = {"params:localization.smoothing_k": -1}
    with pytest.raises(ParameterError) as sequential:
        SequentialRunner().run(create_pipeline(), _catalog(tmp_path / "seq", **bad))
    caplog.set_level(logging.INFO)
    with pytest.raises(ParameterError) as distributed:
        DaskRunner(address=local.scheduler_address).run(
            create_pipeline(), _catalog(tmp_path / "dask", **bad)
        )
    assert type(distributed.value) is ParameterError
    assert distributed.value.key == "localization.smoothing_k"
    assert str(distributed.value) == str(sequential.value)
    assert any("raised by node 'evaluate_heatmaps'" in n for n in distributed.value.__notes__)
    # the node's own error line came from the worker; nothing after it was written
    assert any(
        r.getMessage().startswith("[evaluate_heatmaps] Node evaluate_heatmaps")
        and r.levelno == logging.ERROR
        for r in caplog.records
    )
    for written_after in (
        "data/07_model_output/localization/per_map.parquet",
        "data/08_reporting/localization/localization_summary.csv",
    ):
        assert not (tmp_path / "dask" / written_after).exists()


def _keep(x: Any) -> Any:
    return x


class _NoPickle:
    """Copies (as a ``MemoryDataset`` does on load) but does not pickle."""

    def __deepcopy__(self, memo: dict[int, Any]) -> _NoPickle:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("this object does not pickle")


def test_preflight_names_in_memory_datasets_that_cannot_cross(tmp_path: Path) -> None:
    pipeline = Pipeline(
        [
            Node(_keep, "source", "handle", name="open_handle"),
            Node(_keep, "handle", "copied", name="use_handle"),
            Node(_keep, "lock", "locked", name="use_lock"),
        ]
    )
    catalog = DataCatalog(
        {
            "source": MemoryDataset(1),
            "handle": MemoryDataset(copy_mode="assign"),  # shared by reference
            "lock": MemoryDataset(threading.Lock(), copy_mode="assign"),
            "copied": PickleDataset(filepath=str(tmp_path / "copied.pkl")),
            "locked": PickleDataset(filepath=str(tmp_path / "locked.pkl")),
        }
    )
    # nothing listens at this address: the check must refuse before connecting
    runner = DaskRunner(address="tcp://127.0.0.1:9", connect_timeout_s=1)
    with pytest.raises(ContractError) as refused:
        runner.run(pipeline, catalog)
    text = str(refused.value)
    assert "'handle' (written by node 'open_handle', read by 'use_handle')" in text
    assert "copy_mode='assign'" in text
    assert "'lock' (a pipeline input, read by 'use_lock')" in text
    assert "'source'" not in text and "'copied'" not in text  # these can cross
    # an unpicklable in-memory input with the default copy mode is refused for its data
    catalog["lock"] = MemoryDataset(_NoPickle())
    with pytest.raises(ContractError, match=r"'lock' \(a pipeline input.*cannot be pickled"):
        runner.run(Pipeline([Node(_keep, "lock", "locked", name="use_lock")]), catalog)


def _slow_once(per_cxr: pd.DataFrame, marker_dir: str) -> pd.DataFrame:
    """First attempt: record this worker's pid and sleep (the test kills it); then pass."""
    folder = Path(marker_dir)
    attempts = len(list(folder.glob("attempt-*")))
    (folder / f"attempt-{attempts}-{os.getpid()}").touch()
    if attempts == 0:
        time.sleep(120)
    return per_cxr


def _with_slow_node(marker_dir: Path) -> tuple[Pipeline, dict[str, Any]]:
    slow = Node(
        _slow_once,
        ["localization_per_cxr", "params:marker_dir"],
        "per_cxr_copy",
        name="slow_once",
    )
    return create_pipeline() + Pipeline([slow]), {"params:marker_dir": str(marker_dir)}


def _add(catalog: DataCatalog, root: Path, extra: dict[str, Any]) -> DataCatalog:
    for name, value in extra.items():
        catalog[name] = MemoryDataset(value)
    catalog["per_cxr_copy"] = PickleDataset(filepath=str(root / "per_cxr_copy.pkl"))
    return catalog


def test_a_killed_worker_gets_its_node_retried_with_the_same_outputs(
    cluster: Any, sequential_outputs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local, client = cluster
    dask_markers = tmp_path / "dask_markers"
    dask_markers.mkdir()

    killed: dict[str, Any] = {}

    def kill_first_attempt() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            first = sorted(dask_markers.glob("attempt-0-*"))
            if first:
                pid = int(first[0].name.rsplit("-", 1)[1])
                # the worker running the node: its address from the scheduler, pid from itself
                pids = client.run(os.getpid, workers=list(client.scheduler_info()["workers"]))
                killed["address"] = next((a for a, p in pids.items() if p == pid), None)
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_first_attempt)
    killer.start()
    pipeline, extra = _with_slow_node(dask_markers)
    catalog = _add(_catalog(tmp_path / "dask"), tmp_path / "dask", extra)
    started = time.monotonic()
    caplog.set_level(logging.INFO)
    caplog.clear()
    DaskRunner(address=local.scheduler_address).run(pipeline, catalog)
    killer.join()
    assert "pid" in killed, "the slow node never started"
    assert killed["address"] is not None  # the pid was a Dask worker's
    # retried: a second attempt ran in another (living) worker process, long before the sleep
    attempts = sorted(p.name for p in dask_markers.glob("attempt-*"))
    assert len(attempts) == 2 and not attempts[1].endswith(f"-{killed['pid']}")
    assert time.monotonic() - started < 60
    # only the lost node ran again: nodes that had finished on the dead worker (and that
    # Dask may resubmit, their results lost with it) did not
    again = [r.getMessage() for r in caplog.records if "started again" in r.getMessage()]
    assert len(again) == 1 and again[0].startswith("Node slow_once started again, on tcp://")
    # the killed worker is gone from the scheduler (its nanny started a new one)
    assert killed["address"] not in client.scheduler_info()["workers"]
    _assert_same_outputs(sequential_outputs, tmp_path / "dask", extra=("per_cxr_copy.pkl",))
    copied = pd.read_pickle(tmp_path / "dask" / "per_cxr_copy.pkl")
    pd.testing.assert_frame_equal(copied, pd.read_csv(sequential_outputs / CSV_PER_CXR))


def test_a_node_whose_workers_keep_dying_stops_the_run_naming_it(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    pipeline = Pipeline([Node(_slow_once, ["x", "params:marker_dir"], "y", name="slow_once")])
    y = tmp_path / "y.pkl"
    catalog = DataCatalog(
        {
            "x": MemoryDataset(1),
            "params:marker_dir": MemoryDataset(str(markers)),
            "y": PickleDataset(filepath=str(y)),
        }
    )
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            memory_limit=0,
        ) as local,
    ):

        def kill_first_attempt() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not list(markers.glob("attempt-0-*")):
                time.sleep(0.05)
            first = sorted(markers.glob("attempt-0-*"))
            if first:
                os.kill(int(first[0].name.rsplit("-", 1)[1]), signal.SIGKILL)

        killer = threading.Thread(target=kill_first_attempt)
        killer.start()
        with pytest.raises(RuntimeError, match=r"node 'slow_once' was lost: the Dask workers"):
            DaskRunner(address=local.scheduler_address).run(pipeline, catalog)
        killer.join()
    assert len(list(markers.glob("attempt-*"))) == 1  # not retried (allowed-failures = 0)
    assert not y.exists()  # it died before saving: no output, complete or not


def test_scheduler_address_from_the_environment(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, _client = cluster
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", local.scheduler_address)
    runner = DaskRunner()
    assert runner.scheduler_address() == local.scheduler_address
    # in-memory data move through Dask: an input, an intermediate, a free output
    catalog = DataCatalog(
        {"x": MemoryDataset([1, 2]), "y": PickleDataset(filepath=str(tmp_path / "y.pkl"))}
    )
    pipeline = Pipeline(
        [
            Node(_keep, "x", "mid", name="a"),
            Node(_keep, "mid", "y", name="b"),
            Node(_keep, "mid", "free", name="c"),
        ]
    )
    outputs = runner.run(pipeline, catalog)
    assert catalog.load("y") == [1, 2]
    assert set(outputs) == {"y", "free"} and catalog.load("free") == [1, 2]


def test_without_an_address_a_loopback_local_cluster_sized_to_the_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    options = DaskRunner().local_cluster_options()
    assert options["host"] == "127.0.0.1" and options["dashboard_address"] == "127.0.0.1:0"
    assert options["n_workers"] == available_cores() and options["threads_per_worker"] == 1
    caplog.set_level(logging.INFO)
    catalog = DataCatalog(
        {"x": MemoryDataset(3), "y": PickleDataset(filepath=str(tmp_path / "y.pkl"))}
    )
    DaskRunner(n_workers=1).run(Pipeline([Node(_keep, "x", "y", name="a")]), catalog)
    assert catalog.load("y") == 3
    started = [r.getMessage() for r in caplog.records if "Started a local Dask" in r.getMessage()]
    assert (
        started and "tcp://127.0.0.1:" in started[0] and "1 worker(s) x 1 thread(s)" in started[0]
    )
    assert "; dashboard http://127.0.0.1:" in started[0]  # the scheduler's, on loopback


def _worker_dask_logging(_x: object) -> dict[str, object]:
    """What a node sees on its worker: Dask's logging setting and its logger's level."""
    return {
        "env": os.environ.get(DASK_LOG_ENV),
        "level": logging.getLogger("distributed").getEffectiveLevel(),
    }


@pytest.mark.parametrize("level", ["WARNING", "INFO"])
def test_dask_chatter_follows_cluster_log_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, level: str
) -> None:
    """The scheduler's and nannies' INFO lines (this process) are off at the default WARNING
    and there at INFO; the worker processes start with the same level (their start-up
    lines); the ``distributed`` logger and the environment are restored after the run."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.delenv(DASK_LOG_ENV, raising=False)
    dask_logger = logging.getLogger("distributed")
    before = dask_logger.level
    caplog.set_level(logging.INFO)
    catalog = DataCatalog(
        {"x": MemoryDataset(3), "y": PickleDataset(filepath=str(tmp_path / "y.pkl"))}
    )
    runner = DaskRunner(n_workers=1, cluster_log_level=level)
    runner.run(Pipeline([Node(_worker_dask_logging, "x", "y", name="a")]), catalog)
    on_worker = catalog.load("y")
    assert on_worker == {"env": level.lower(), "level": getattr(logging, level)}
    chatter = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("distributed") and r.levelno < logging.WARNING
    ]
    if level == "WARNING":
        assert chatter == [], chatter[:5]
    else:
        assert any("Scheduler at" in m for m in chatter), chatter[:5]
    assert dask_logger.level == before and DASK_LOG_ENV not in os.environ


def test_cluster_log_level_must_be_a_level_name() -> None:
    with pytest.raises(ValueError, match=r"cluster_log_level must be one of DEBUG, INFO, .*'LOUD'"):
        DaskRunner(cluster_log_level="LOUD")
    assert DaskRunner(cluster_log_level="info")._cluster_log_level == "INFO"


def test_a_failing_node_lets_a_running_node_finish_its_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    pipeline = Pipeline(
        [
            Node(fails_while_b_saves, ["a_in", "params:folder"], "a_out", name="a"),
            Node(rows, "b_in", "b_out", name="b"),
            Node(count_rows, "b_out", "c_out", name="c"),
        ]
    )

    def catalog() -> DataCatalog:
        files = {k: SlowLines(str(tmp_path / f"{k}.txt")) for k in ("a_out", "c_out")}
        # b's save takes ROWS x 0.12 s = 6 s, longer than the 4 s a closing LocalCluster
        # grants its workers before killing them
        files["b_out"] = SlowLines(str(tmp_path / "b_out.txt"), pause_s=0.12)
        memory = {"a_in": MemoryDataset(1), "b_in": MemoryDataset(2)}
        return DataCatalog({**files, **memory, "params:folder": MemoryDataset(str(tmp_path))})

    caplog.set_level(logging.INFO)
    # the runner's own cluster, closed when the run stops (as under `kedro run`)
    with pytest.raises(ValueError, match=r"boom") as failed:
        DaskRunner(n_workers=2).run(pipeline, catalog())
    assert any("raised by node 'a'" in note for note in failed.value.__notes__)
    # b's save was complete when the run stopped (not cut off by the cluster's closing)
    assert (tmp_path / "b_out.txt").read_text().splitlines() == rows(None)
    messages = [r.getMessage() for r in caplog.records]
    # b had started its save when a failed: the run waited for it, and b counts as done
    waiting = [m for m in messages if m.startswith("Waiting for the node(s) already running")]
    assert waiting and waiting[0].endswith(": b")
    assert "Completed node: b (on tcp://127.0.0.1:" in "\n".join(messages)
    assert any(m.startswith("There are 2 nodes that have not run.") for m in messages)
    assert not (tmp_path / "c_out.txt").exists()  # c (after b) did not start
    # the resumed run reuses b's output: it is complete
    (tmp_path / "a_fixed").touch()
    SequentialRunner().run(pipeline, catalog(), only_missing_outputs=True)
    assert (tmp_path / "c_out.txt").read_text().split() == [str(ROWS)]


def test_an_interrupted_run_deletes_the_outputs_it_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    pipeline = Pipeline([Node(rows, "b_in", "b_out", name="b")])
    b_out = tmp_path / "b_out.txt"
    catalog = DataCatalog({"b_in": MemoryDataset(2), "b_out": SlowLines(str(b_out), pause_s=0.12)})

    drain = _Session._drain
    interrupted: list[bool] = []

    def drain_then_interrupt(session: _Session) -> None:  # Ctrl-C while b writes its 6 s save
        drain(session)
        if not interrupted and "b" in session.started and b_out.exists():
            interrupted.append(True)
            raise KeyboardInterrupt

    monkeypatch.setattr(_Session, "_drain", drain_then_interrupt)
    caplog.set_level(logging.INFO)
    with pytest.raises(KeyboardInterrupt):
        DaskRunner(n_workers=1).run(pipeline, catalog)
    assert interrupted
    # the closing cluster killed b mid-save: its partial file is gone, so that
    # --only-missing-outputs runs b again, and the log says so
    assert not b_out.exists()
    warning = next(r.getMessage() for r in caplog.records if "still running" in r.getMessage())
    assert warning.startswith("The run stopped while node(s) b were still running")
    assert "may be partial. Deleted: b_out." in warning


def test_a_node_lost_with_its_worker_mid_save_has_its_partial_output_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its worker died (KilledWorker) after half of b's file was written: the partial file
    used to stay, and ``--only-missing-outputs`` then took it for b's output."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    pipeline = Pipeline([Node(rows, "b_in", "b_out", name="b")])
    b_out = tmp_path / "b_out.txt"
    catalog = DataCatalog({"b_in": MemoryDataset(2), "b_out": DiesMidSave(str(b_out))})
    caplog.set_level(logging.INFO)
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        pytest.raises(RuntimeError, match=r"node 'b' was lost: the Dask workers running it died"),
    ):
        DaskRunner(n_workers=1).run(pipeline, catalog)  # the scheduler reads the setting
    assert not b_out.exists()  # the half-written file is gone: a rerun writes b again
    warning = next(r.getMessage() for r in caplog.records if "still running" in r.getMessage())
    assert warning.startswith("The run stopped while node(s) b were still running")
    assert "may be partial. Deleted: b_out." in warning
