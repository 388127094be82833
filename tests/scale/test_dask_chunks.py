"""In-node chunking on a real Dask cluster (2 single-threaded workers, loopback).

A node run by ``DaskRunner`` that maps over many items (``cxr_spurious.parallel.ordered_map``:
localization's per-map evaluation and tuning counts, saliency's (method, image batch)
chunks) submits its chunks to the cluster as Dask tasks, which the scheduler sees (keys
``cxr-chunk-...``), and its outputs are identical to a sequential run's.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import tests.scale.test_dask_runner as localization_run
import torch
from distributed import get_task_stream
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner

from cxr_spurious.errors import ParameterError
from cxr_spurious.parallel import CHUNK_KEY_PREFIX, MIN_ITEMS_FOR_POOL, ordered_map
from cxr_spurious.pipelines.localization import create_pipeline
from cxr_spurious.pipelines.saliency import nodes as saliency_nodes
from cxr_spurious.runner import DaskRunner
from cxr_spurious.sources.cache import ImageCache

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("dask")]

# 12 CXRs x 2 tasks = 24 maps per heatmap set: above MIN_ITEMS_FOR_POOL, so mapped in chunks
MANY_IDS = [f"p{i}_study1_view1_frontal" for i in range(12)]
TASKS = ["Pneumothorax", "Lung Lesion"]
METHODS = ["gradcam", "integrated_gradients", "smoothgrad", "seg_prob"]
N_IMAGES, BATCH, SIZE = 7, 2, 32  # 4 batches (the last one short) per method


def _chunk_keys(stream: Any) -> list[str]:
    """Keys of the chunk tasks the scheduler ran while ``stream`` was recording."""
    keys = [str(t["key"]) for t in stream.data]
    return [k for k in keys if k.startswith(f"{CHUNK_KEY_PREFIX}-")]


def test_localization_chunks_run_as_dask_tasks_with_identical_outputs(
    cluster: Any, tmp_path: Path
) -> None:
    local, client = cluster
    assert 2 * len(MANY_IDS) >= MIN_ITEMS_FOR_POOL
    with mock.patch.object(localization_run, "IDS", MANY_IDS):
        SequentialRunner().run(create_pipeline(), localization_run._catalog(tmp_path / "seq"))
        catalog = localization_run._catalog(tmp_path / "dask")
    with get_task_stream(client) as stream:
        DaskRunner(address=local.scheduler_address).run(create_pipeline(), catalog)
    localization_run._assert_same_outputs(tmp_path / "seq", tmp_path / "dask")
    keys = _chunk_keys(stream)
    # per-map evaluation of both sets (24 maps each) at least; each map in one chunk
    labels = Counter(k.rsplit("-", 2)[0] for k in keys)
    assert len(labels) >= 2, f"expected chunk tasks of several maps, saw {sorted(labels)}"
    assert all(n >= 2 for n in labels.values())


def _saliency_inputs() -> dict[str, Any]:
    from cxr_spurious import models

    rng = np.random.default_rng(1)
    ids = [f"patient{i:05d}_study1_view1_frontal" for i in range(N_IMAGES + 2)]
    n = len(ids)
    cache = ImageCache(
        image_ids=ids,
        tasks=TASKS,
        objects=["Chest Tube"],
        size=SIZE,
        images=rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8),
        masks=np.zeros((n, len(TASKS), SIZE, SIZE), np.uint8),
        boxes=np.zeros((n, len(TASKS), SIZE, SIZE), np.uint8),
        spurious=np.zeros((n, 1, SIZE, SIZE), np.uint8),
        has_mask=np.ones((n, len(TASKS)), bool),
    )
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "split": ["test"] * N_IMAGES + ["val"] * 2,
            "width": 1024,
            "height": 1000,
            "Pneumothorax": rng.integers(0, 2, n).astype(float),
            "Lung Lesion": rng.integers(0, 2, n).astype(float),
        }
    )
    config = {"architecture": "unet_small", "tasks": TASKS, "base_channels": 8}
    torch.manual_seed(0)
    artifact = {"state_dict": models.build_model(config).state_dict(), "config": config}
    return {
        "model_artifact": artifact,
        "variant": {"name": "seg"},
        "image_cache": cache,
        "manifest": manifest,
        "methods": METHODS,
        "tasks": None,
        "split": "test",
        "max_images": None,
        "seed": 3,
        "batch_size": BATCH,
        "device": "cpu",
        "method_options": {"ig_steps": 4, "smoothgrad_samples": 3},
    }


def test_saliency_node_chunks_run_as_dask_tasks_with_identical_maps(cluster: Any) -> None:
    local, client = cluster
    inputs = _saliency_inputs()
    expected = saliency_nodes.compute_heatmaps(**inputs)  # in this process, sequential
    node = Node(
        saliency_nodes.compute_heatmaps,
        {name: f"in_{name}" for name in inputs},
        "heatmaps",
        name="compute_heatmaps",
    )
    catalog = DataCatalog({f"in_{k}": MemoryDataset(v) for k, v in inputs.items()})
    with get_task_stream(client) as stream:
        outputs = DaskRunner(address=local.scheduler_address).run(Pipeline([node]), catalog)
    assert set(outputs) == {"heatmaps"}  # a free output: back in the client's catalog
    got = catalog.load("heatmaps")
    assert sorted(got) == sorted(f"seg.{m}" for m in METHODS)
    for name, hset in expected.items():
        np.testing.assert_array_equal(got[name].maps, hset.maps, err_msg=name)
        pd.testing.assert_frame_equal(got[name].index, hset.index)
    # one chunk task per (method, batch); none of that work ran inside the node
    keys = _chunk_keys(stream)
    n_batches = -(-N_IMAGES // BATCH)
    assert len(keys) == len(METHODS) * n_batches, keys
    workers = {t["worker"] for t in stream.data if str(t["key"]) in set(keys)}
    assert len(workers) == 2  # the node's worker seceded: both workers took chunks


def _fail_on_three(x: int) -> int:
    if x == 3:
        raise ParameterError("test.item", "three is not allowed")
    return x


def _map_in_task(n: int, workers: int | None) -> list[int]:
    return list(ordered_map(_fail_on_three, range(n), n_items=n, workers=workers, min_items=2))


def test_a_chunk_error_reaches_the_node_as_itself_and_workers_1_stays_in_the_task(
    cluster: Any,
) -> None:
    _local, client = cluster
    with (
        get_task_stream(client) as failing,
        pytest.raises(ParameterError, match="three is not allowed") as raised,
    ):
        client.submit(_map_in_task, 8, None, pure=False).result()
    assert raised.value.key == "test.item"
    # the failing map's chunks still in flight may finish while the next maps run
    failed_tokens = {k.rsplit("-", 1)[0] for k in _chunk_keys(failing)}
    with get_task_stream(client) as stream:
        assert client.submit(_map_in_task, 3, None, pure=False).result() == [0, 1, 2]
        assert client.submit(_map_in_task, 3, 1, pure=False).result() == [0, 1, 2]
    keys = [k for k in _chunk_keys(stream) if k.rsplit("-", 1)[0] not in failed_tokens]
    # the first map: one chunk per item, all of one map; the second (workers=1) none
    assert len(keys) == 3 and len({k.rsplit("-", 1)[0] for k in keys}) == 1, keys


def _identity(x: int) -> int:
    return x


def _stop_at_the_last_item(n: int) -> tuple[list[int], list[str]]:
    """Consume ``ordered_map`` as ``zip(jobs, results)`` does (``n`` items, then stop
    without asking for the end), and let the generator be finalised in another thread, as
    the cyclic garbage collector may do; what its clean-up raised, if anything."""
    results = ordered_map(_identity, range(n), n_items=n, min_items=2, progress=False)
    got = [r for _, r in zip(range(n), results)]
    caught: list[str] = []

    def close() -> None:
        try:
            results.close()  # the inner chunk generator is finalised with it
        except BaseException as exc:
            caught.append(f"{type(exc).__name__}: {exc}")

    previous = sys.unraisablehook  # "Exception ignored in: <generator ...>" goes through it
    sys.unraisablehook = lambda u: caught.append(f"{u.exc_type.__name__}: {u.exc_value}")
    try:
        closer = threading.Thread(target=close)
        closer.start()
        closer.join()
    finally:
        sys.unraisablehook = previous
    return got, caught


def test_a_map_consumed_to_its_last_item_leaves_the_worker_client_cleanly(cluster: Any) -> None:
    """A consumer that stops at the last item (``zip`` with a shorter first iterable) used
    to leave the chunk generator suspended inside ``worker_client``; finalised outside the
    worker's task thread, its clean-up failed ("Exception ignored in: <generator object
    _dask_map>", AttributeError from Dask's ``rejoin``), printed with a traceback on the
    console of a DaskRunner run."""
    _local, client = cluster
    got, caught = client.submit(_stop_at_the_last_item, 12, pure=False).result()
    assert got == list(range(12))
    assert caught == []
