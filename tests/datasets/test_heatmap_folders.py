"""HeatmapSetDataset, HeatmapCollectionDataset, ChexlocalizeExportDataset round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from kedro.io.core import DatasetError

from cxr_spurious.datasets.heatmap_folders import (
    ChexlocalizeExport,
    ChexlocalizeExportDataset,
    HeatmapCollectionDataset,
    HeatmapSetDataset,
)
from cxr_spurious.errors import DataFormatError
from cxr_spurious.heatmaps import HeatmapSet


def _set(model: str = "erm", method: str = "gradcam", n: int = 4, seed: int = 0) -> HeatmapSet:
    rng = np.random.default_rng(seed)
    index = pd.DataFrame(
        {
            "image_id": [f"patient{i}_study1_view1_frontal" for i in range(n)],
            "task": "Pneumothorax",
            "prob": rng.random(n),
            "gt": [1.0, 0.0, np.nan, 1.0][:n],
            "cxr_w": 300,
            "cxr_h": 200,
            "model": model,
            "method": method,
        }
    )
    return HeatmapSet(index, rng.random((n, 6, 6)).astype(np.float32))


def _assert_same(a: HeatmapSet, b: HeatmapSet) -> None:
    pd.testing.assert_frame_equal(a.index, b.index)
    assert b.maps.dtype == np.float16
    np.testing.assert_array_equal(a.maps.astype(np.float16), b.maps)


def test_set_round_trip_mmap(tmp_path):
    ds = HeatmapSetDataset(path=str(tmp_path / "erm.gradcam"))
    assert not ds.exists()
    ds.save(_set())
    assert ds.exists()
    back = ds.load()
    _assert_same(_set(), back)
    assert isinstance(back.maps, np.memmap)


def test_collection_round_trip_and_replacement(tmp_path):
    ds = HeatmapCollectionDataset(path=str(tmp_path / "heatmaps"))
    first = {"erm.gradcam": _set(), "seg.seg_prob": _set("seg", "seg_prob", seed=1)}
    ds.save(first)
    back = ds.load()
    assert sorted(back) == ["erm.gradcam", "seg.seg_prob"]
    for name in first:
        _assert_same(first[name], back[name])
    ds.save({"box.gradcampp": _set("box", "gradcam++")})  # a new save replaces the whole collection
    assert sorted(ds.load()) == ["box.gradcampp"]
    assert not [
        p for p in (tmp_path).iterdir() if p.name.startswith(".")
    ]  # no temporary folders left


def test_collection_in_memory_filesystem():
    ds = HeatmapCollectionDataset(path="memory://saliency-test/heatmaps")
    ds.save({"erm.gradcam": _set()})
    _assert_same(_set(), ds.load()["erm.gradcam"])


def test_an_interrupted_remote_collection_save_is_refused_not_loaded_partially(monkeypatch):
    """On fsspec (memory://, as s3://) a save is not atomic: a save interrupted after some
    sets must not load back as a partial collection (no record is not a legacy collection)."""
    from cxr_spurious.datasets import heatmap_folders

    ds = HeatmapCollectionDataset(path="memory://interrupted-save/heatmaps")
    names = ["box.gradcam", "erm.gradcam", "seg.gradcam"]
    ds.save({n: _set(n.split(".")[0], seed=i) for i, n in enumerate(names)})
    assert sorted(ds.load()) == names and ds.exists()
    real = heatmap_folders._FolderDataset._write_remote_set
    calls = []

    def dies_on_second_set(self, heatmaps, *parts):
        calls.append(parts)
        if len(calls) == 2:
            raise KeyboardInterrupt("lost connection")
        return real(self, heatmaps, *parts)

    monkeypatch.setattr(heatmap_folders._FolderDataset, "_write_remote_set", dies_on_second_set)
    with pytest.raises(KeyboardInterrupt):
        ds.save({n: _set(n.split(".")[0], seed=10 + i) for i, n in enumerate(names)})
    monkeypatch.undo()
    assert not ds.exists()
    with pytest.raises(
        DatasetError, match=r"memory://.*heatmaps/collection\.json: missing.*incomplete"
    ) as info:
        ds.load()
    assert isinstance(info.value.__cause__, DataFormatError)
    ds.save({"erm.gradcam": _set()})  # a complete save loads again
    assert list(ds.load()) == ["erm.gradcam"]


def test_an_interrupted_remote_set_save_does_not_load_new_maps_under_the_old_index(
    monkeypatch,
):
    """A single remote set: the old index goes first and the new one is written last, so a
    save that dies after the maps leaves an incomplete set that is refused by name."""
    ds = HeatmapSetDataset(path="memory://interrupted-set/erm.gradcam")
    ds.save(_set("erm", seed=0))
    written = []
    real_open = ds._fs.open

    def dies_on_the_index(path, mode="rb", **kwargs):
        if "w" in mode and str(path).endswith("index.parquet"):
            raise KeyboardInterrupt("lost connection")
        written.append(str(path))
        return real_open(path, mode, **kwargs)

    monkeypatch.setattr(ds._fs, "open", dies_on_the_index)
    with pytest.raises(KeyboardInterrupt):
        ds.save(_set("box", seed=1))
    monkeypatch.undo()
    assert written and written[-1].endswith("maps.npy")  # the new maps are there
    assert not ds.exists()
    with pytest.raises(DatasetError, match=r"erm\.gradcam/index\.parquet: missing.*incomplete"):
        ds.load()
    ds.save(_set("box", seed=1))
    _assert_same(_set("box", seed=1), ds.load())


def test_collection_errors(tmp_path):
    ds = HeatmapCollectionDataset(path=str(tmp_path / "none"))
    with pytest.raises(DatasetError, match="no heatmap sets found"):
        ds.load()
    with pytest.raises(DatasetError, match="bad/name"):
        ds.save({"bad/name": _set()})
    broken = tmp_path / "set"
    broken.mkdir()
    np.save(broken / "maps.npy", np.zeros((2, 3, 3), np.float16))
    with pytest.raises(DatasetError, match="index.parquet: missing") as info:
        HeatmapSetDataset(path=str(broken)).load()
    assert isinstance(info.value.__cause__, DataFormatError)


def test_chexlocalize_export_dataset_round_trip(tmp_path):
    hset = _set(method="gradcam++")
    images = {i: np.full((6, 6), 128, np.uint8) for i in hset.index["image_id"]}
    ds = ChexlocalizeExportDataset(path=str(tmp_path / "export"), progress=False)
    ds.save({"erm.gradcampp": ChexlocalizeExport(hset, images)})
    assert len(list((tmp_path / "export" / "erm.gradcampp").glob("*_map.pkl"))) == 4
    back = ds.load()["erm.gradcampp"]
    assert set(back.index["method"]) == {"gradcam++"} and set(back.index["model"]) == {"erm"}
    merged = hset.index.merge(back.index, on=["image_id", "task"], suffixes=("", "_b"))
    np.testing.assert_allclose(merged["prob"], merged["prob_b"])
    np.testing.assert_array_equal(merged["gt"].fillna(-9), merged["gt_b"].fillna(-9))


def test_chexlocalize_export_save_replaces_sets_of_earlier_runs(tmp_path):
    def export(model: str, seed: int) -> ChexlocalizeExport:
        hset = _set(model, seed=seed)
        return ChexlocalizeExport(
            hset, {i: np.full((6, 6), 128, np.uint8) for i in hset.index["image_id"]}
        )

    ds = ChexlocalizeExportDataset(path=str(tmp_path / "export"), progress=False)
    ds.save({"erm.gradcam": export("erm", 0), "seg.gradcam": export("seg", 1)})  # run 1
    ds.save({"erm.gradcam": export("erm", 2)})  # run 2 no longer exports seg.gradcam
    back = ds.load()
    assert sorted(back) == ["erm.gradcam"]
    np.testing.assert_allclose(
        back["erm.gradcam"].index.sort_values("image_id")["prob"].to_numpy(),
        _set("erm", seed=2).index.sort_values("image_id")["prob"].to_numpy(),
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # nothing left beside it


def test_chexlocalize_export_disabled_leaves_no_earlier_export(tmp_path, caplog):
    """Export disabled (``{}``) after a run that exported: the earlier run's pickles used to
    stay and load as if this run had written them."""
    hset = _set("erm", seed=0)
    images = {i: np.full((6, 6), 128, np.uint8) for i in hset.index["image_id"]}
    ds = ChexlocalizeExportDataset(path=str(tmp_path / "export"), progress=False)
    ds.save({"erm.gradcam": ChexlocalizeExport(hset, images)})
    assert ds.exists() and sorted(ds.load()) == ["erm.gradcam"]
    with caplog.at_level("INFO", logger="cxr_spurious.datasets.heatmap_folders"):
        ds.save({})
    assert ds.load() == {} and not ds.exists()
    assert list((tmp_path / "export").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # nothing left beside it
    assert "1 set folder(s)" in caplog.text and "erm.gradcam" in caplog.text


def test_collection_missing_a_recorded_set_is_an_error(tmp_path):
    """A removed `erm.gradcam` must stop localization, not become NaN findings (#15.4)."""
    import shutil

    ds = HeatmapCollectionDataset(path=str(tmp_path / "heatmaps"))
    ds.save({"erm.gradcam": _set(), "seg.gradcam": _set("seg", seed=1)})
    shutil.rmtree(tmp_path / "heatmaps" / "erm.gradcam")
    with pytest.raises(
        DatasetError,
        match=r"erm\.gradcam: heatmap set\(s\) \['erm\.gradcam'\].*missing.*--pipeline saliency",
    ):
        ds.load()
    # an incomplete folder counts as missing too
    ds.save({"erm.gradcam": _set(), "seg.gradcam": _set("seg", seed=1)})
    (tmp_path / "heatmaps" / "seg.gradcam" / "maps.npy").unlink()
    with pytest.raises(DatasetError, match=r"seg\.gradcam.*missing or incomplete"):
        ds.load()


def test_collection_ignores_unrecorded_folders_and_reads_legacy_collections(tmp_path, caplog):
    ds = HeatmapCollectionDataset(path=str(tmp_path / "heatmaps"))
    ds.save({"erm.gradcam": _set()})
    HeatmapSetDataset(path=str(tmp_path / "heatmaps" / "old.gradcam")).save(_set("old"))
    assert list(ds.load()) == ["erm.gradcam"]
    assert "ignoring set folder(s) ['old.gradcam']" in caplog.text
    (tmp_path / "heatmaps" / "collection.json").unlink()  # a collection saved before the record
    assert sorted(ds.load()) == ["erm.gradcam", "old.gradcam"]


def test_per_set_outputs_of_a_set_no_longer_evaluated_are_removed(tmp_path):
    """The base catalog's per-set partitioned outputs drop partitions of sets not saved again."""
    from kedro.config import OmegaConfigLoader
    from kedro.io import DataCatalog

    conf = OmegaConfigLoader(conf_source="conf", base_env="base", default_run_env="base")["catalog"]
    entries = {}
    for name in ("localization_segmentations", "chexlocalize_reports"):
        entry = dict(conf[name])
        assert entry.get("overwrite") is True, name
        entries[name] = {**entry, "path": str(tmp_path / name)}
    catalog = DataCatalog.from_config(entries)
    catalog.save("localization_segmentations", {"erm.gradcam": {"a": 1}, "seg.gradcam": {"b": 2}})
    catalog.save("localization_segmentations", {"seg.gradcam": {"b": 3}})
    assert sorted(p.name for p in (tmp_path / "localization_segmentations").iterdir()) == [
        "seg.gradcam.json"
    ]
    table = pd.DataFrame({"x": [1]})
    catalog.save(
        "chexlocalize_reports",
        {"erm.gradcam/iou_summary_results": table, "seg.gradcam/iou_summary_results": table},
    )
    catalog.save("chexlocalize_reports", {"seg.gradcam/iou_summary_results": table})
    assert sorted(p.name for p in (tmp_path / "chexlocalize_reports").iterdir()) == ["seg.gradcam"]
