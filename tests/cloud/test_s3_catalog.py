"""The localization, training and saliency outputs on S3, through the project's own catalog.

A local S3-compatible server (moto's standalone server on 127.0.0.1) stands in for S3. The
catalog files of conf/base are copied into a throwaway configuration folder, loaded with the
project's config loader settings, every file path is moved to ``s3://<bucket>/...`` and every
dataset is given ``credentials: s3_test`` from ``conf/local/credentials.yml`` (fake keys and
the server's ``endpoint_url``), as a user would configure a bucket. Representative data is
saved through each entry and loaded back through a fresh catalog: tables, JSON, figures
(write-only: their bytes are compared with a local save of the same entry), models and
heatmaps.
"""

from __future__ import annotations

import copy
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import s3fs
import torch
import yaml
from kedro.io import DataCatalog
from kedro.io.core import DatasetError
from moto.server import ThreadedMotoServer

from cxr_spurious.datasets.heatmap_folders import ChexlocalizeExportDataset
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.settings import CONFIG_LOADER_ARGS, CONFIG_LOADER_CLASS

REPO = Path(__file__).resolve().parents[2]
CATALOGS = ("catalog_localization.yml", "catalog_training.yml", "catalog_saliency.yml")
LOCAL_ONLY = {"chexlocalize_export"}  # CheXlocalize pickle folders: local disk only (tested below)
NOT_FILES = ("MemoryDataset", "MlflowChildRunDataset")
KINDS = {
    "pandas.ParquetDataset": "table",
    "pandas.CSVDataset": "table",
    "json.JSONDataset": "json",
    "matplotlib.MatplotlibDataset": "figure",
    "cxr_spurious.datasets.figures.FigureDataset": "figure",  # also loads the PNG bytes back
    "cxr_spurious.datasets.torch_model.TorchModelDataset": "model",
    "cxr_spurious.datasets.heatmap_folders.HeatmapCollectionDataset": "heatmaps",
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1, with fake credentials and no AWS config files."""
    aws = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            mp.setenv(name, "testing")
        mp.delenv("AWS_SESSION_TOKEN", raising=False)
        mp.delenv("AWS_PROFILE", raising=False)
        mp.setenv("AWS_CONFIG_FILE", str(aws / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(aws / "credentials"))
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        port = _free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = f"cxr-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


def _credentials(endpoint: str) -> dict[str, Any]:
    return {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


def _load_config(tmp_path: Path, endpoint: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The three catalogs and the credentials, read by the project's config loader settings."""
    conf = tmp_path / "conf"
    (conf / "base").mkdir(parents=True)
    (conf / "local").mkdir()
    for name in CATALOGS:
        shutil.copy(REPO / "conf" / "base" / name, conf / "base" / name)
    (conf / "local" / "credentials.yml").write_text(
        yaml.safe_dump({"s3_test": _credentials(endpoint)})
    )
    loader = CONFIG_LOADER_CLASS(conf_source=str(conf), **CONFIG_LOADER_ARGS)
    return dict(loader["catalog"]), dict(loader["credentials"])


def _relocate(catalog: dict[str, Any], root: str, credentials: str | None) -> dict[str, Any]:
    """Move every ``data/...`` file path under ``root``.

    ``credentials`` is added to each file dataset.
    """
    out = {}
    for name, entry in catalog.items():
        if name.startswith("_") or name in LOCAL_ONLY or not isinstance(entry, dict):
            continue
        entry = copy.deepcopy(entry)
        target = entry["dataset"] if entry["type"].endswith("SkippableDataset") else entry
        if target["type"].endswith(NOT_FILES):
            continue
        key = "path" if "path" in target else "filepath"
        assert target[key].startswith("data/"), f"{name}: {key} {target[key]!r} is not under data/"
        target[key] = f"{root}/{target[key]}"
        if credentials is not None:
            target["credentials"] = credentials
        out[name] = entry
    return out


def _inner_type(entry: dict[str, Any]) -> str:
    """The dataset type inside a ``SkippableDataset`` / ``PartitionedDataset`` wrapper."""
    target = entry["dataset"] if entry["type"].endswith("SkippableDataset") else entry
    inner = target["dataset"] if target["type"] == "partitions.PartitionedDataset" else target
    return inner if isinstance(inner, str) else inner["type"]


def _kind(entry: dict[str, Any]) -> tuple[str, bool]:
    """(data kind, partitioned) of a catalog entry."""
    target = entry["dataset"] if entry["type"].endswith("SkippableDataset") else entry
    partitioned = target["type"] == "partitions.PartitionedDataset"
    inner = target["dataset"] if partitioned else target
    type_name = inner if isinstance(inner, str) else inner["type"]
    if type_name not in KINDS:
        pytest.fail(f"catalog type {type_name} has no S3 round trip in this test; add one")
    return KINDS[type_name], partitioned


def _heatmap_set(seed: int) -> HeatmapSet:
    rng = np.random.default_rng(seed)
    index = pd.DataFrame(
        {
            "image_id": [f"patient{i}_study1_view1_frontal" for i in range(3)],
            "task": "Pneumothorax",
            "prob": rng.random(3),
            "gt": [1.0, 0.0, np.nan],
            "cxr_w": 300,
            "cxr_h": 200,
            "model": "erm",
            "method": "gradcam",
        }
    )
    return HeatmapSet(index, rng.random((3, 7, 5)).astype(np.float32))


def _figure(seed: int) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot(np.random.default_rng(seed).random(5))
    return fig


def _sample(kind: str, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    if kind == "table":
        return pd.DataFrame(
            {
                "image_id": [f"patient{i}_study1_view1_frontal" for i in range(4)],
                "task": ["Edema", "Cardiomegaly", "Edema", "Lung Lesion"],
                "iou": [rng.random(), np.nan, rng.random(), 0.0],
                "n": [1, 2, 3, 4],
                "hit": [True, False, True, True],
            }
        )
    if kind == "json":
        return {
            "auroc": float(rng.random()),
            "n": 4,
            "tasks": ["Edema", "Pneumothorax"],
            "Edema": {"size": [2320, 2828], "counts": "PVWX6"},
        }
    if kind == "figure":
        return _figure(seed)
    if kind == "model":
        return {
            "state_dict": {
                "conv.weight": torch.from_numpy(rng.random((2, 1, 3, 3)).astype(np.float32)),
                "conv.bias": torch.zeros(2),
            },
            "config": {"architecture": "unet_small", "in_channels": 1, "tasks": ["Pneumothorax"]},
            "variant": "erm",
            "fingerprint": "0" * 64,
        }  # the catalog's model entries check the variant
    assert kind == "heatmaps"
    return {"erm.gradcam": _heatmap_set(seed), "seg.seg_prob": _heatmap_set(seed + 1)}


def _assert_same(kind: str, saved: Any, loaded: Any, where: str) -> None:
    if kind == "table":
        pd.testing.assert_frame_equal(saved, loaded, obj=where)
    elif kind == "json":
        assert loaded == saved, where
    elif kind == "model":
        assert loaded["config"] == saved["config"], where
        assert (loaded["variant"], loaded["fingerprint"]) == (
            saved["variant"],
            saved["fingerprint"],
        ), where
        assert loaded["state_dict"].keys() == saved["state_dict"].keys(), where
        for key, tensor in saved["state_dict"].items():
            assert torch.equal(loaded["state_dict"][key], tensor), f"{where}: {key}"
    else:
        assert sorted(loaded) == sorted(saved), where
        for name, hset in saved.items():
            pd.testing.assert_frame_equal(hset.index, loaded[name].index, obj=f"{where}/{name}")
            np.testing.assert_array_equal(
                hset.maps.astype(np.float16), loaded[name].maps, err_msg=f"{where}/{name}"
            )


def _dataset_name(pattern: str) -> str:
    return pattern.replace("{variant}", "erm").replace("{model}", "erm")


def _figure_path(entry: dict[str, Any]) -> str:
    """Where a figure entry writes (file or folder), for reading its bytes back."""
    target = entry["dataset"] if entry["type"].endswith("SkippableDataset") else entry
    return (
        target.get("path", target.get("filepath"))
        .replace("{variant}", "erm")
        .replace("{model}", "erm")
    )


def test_outputs_round_trip_through_s3(tmp_path: Path, s3_endpoint: str, bucket: str) -> None:
    catalog, credentials = _load_config(tmp_path, s3_endpoint)
    s3_conf = _relocate(catalog, f"s3://{bucket}/study", "s3_test")
    local_conf = _relocate(catalog, str(tmp_path / "local"), None)
    assert {"localization_per_map", "{variant}.model", "heatmap_collection"} <= set(s3_conf)

    writer = DataCatalog.from_config(s3_conf, credentials)
    local = DataCatalog.from_config(local_conf)
    saved: dict[str, tuple[str, bool, Any]] = {}
    for i, (pattern, entry) in enumerate(sorted(s3_conf.items())):
        kind, partitioned = _kind(entry)
        data = (
            {"erm.gradcam": _sample(kind, i), "seg.seg_prob": _sample(kind, i + 50)}
            if partitioned
            else _sample(kind, i)
        )
        if pattern == "{variant}.saliency_overlays":  # a folder of figures (overwrite: true)
            data = {"overlay_0.png": _figure(i), "overlay_1.png": _figure(i + 50)}
        name = _dataset_name(pattern)
        writer.save(name, data)
        if kind == "figure":
            local.save(name, data)
        saved[pattern] = (kind, partitioned, data)
    assert {kind for kind, _, _ in saved.values()} == set(KINDS.values())

    fs = s3fs.S3FileSystem(**_credentials(s3_endpoint))
    reader = DataCatalog.from_config(s3_conf, credentials)  # fresh datasets: nothing cached
    for pattern, (kind, partitioned, data) in saved.items():
        name = _dataset_name(pattern)
        if kind == "figure":  # write-only datasets: the S3 files hold the bytes a local save writes
            remote = _figure_path(s3_conf[pattern])
            local_root = Path(_figure_path(local_conf[pattern]))
            local_files = (
                sorted(p for p in local_root.rglob("*") if p.is_file())
                if local_root.is_dir()
                else [local_root]
            )
            assert local_files, name
            for path in local_files:
                rel = path.relative_to(local_root).as_posix() if local_root.is_dir() else ""
                key = f"{remote}/{rel}" if rel else remote
                assert fs.cat_file(key) == path.read_bytes(), f"{name}: {key}"
            if _inner_type(s3_conf[pattern]).endswith("FigureDataset") and not partitioned:
                assert reader.load(name) == local_files[0].read_bytes(), name
            continue
        loaded = reader.load(name)
        if partitioned:
            assert sorted(loaded) == sorted(data), name
            for part, value in data.items():
                _assert_same(kind, value, loaded[part](), f"{name}/{part}")
        else:
            _assert_same(kind, data, loaded, name)
    plt.close("all")


def test_heatmap_collection_save_replaces_the_s3_collection(
    tmp_path: Path, s3_endpoint: str, bucket: str
) -> None:
    catalog, _ = _load_config(tmp_path, s3_endpoint)
    entry = _relocate(catalog, f"s3://{bucket}/study", None)["heatmap_collection"]
    entry["fs_args"] = _credentials(s3_endpoint)  # the other way to configure the filesystem
    conf = {"heatmap_collection": entry}
    DataCatalog.from_config(conf).save("heatmap_collection", _sample("heatmaps", 0))
    DataCatalog.from_config(conf).save("heatmap_collection", {"box.gradcampp": _heatmap_set(7)})
    back = DataCatalog.from_config(conf).load("heatmap_collection")
    assert sorted(back) == ["box.gradcampp"]  # the earlier sets are gone, as with a local folder
    _assert_same("heatmaps", {"box.gradcampp": _heatmap_set(7)}, back, "heatmap_collection")


def test_chexlocalize_export_refuses_a_cloud_url() -> None:
    with pytest.raises(DatasetError, match=r"s3://bucket/export.*local disk only"):
        ChexlocalizeExportDataset(path="s3://bucket/export")
