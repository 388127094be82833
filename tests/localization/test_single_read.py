"""A CheXlocalize pickle folder is read once: the evaluation indexes it from its own reads.

``read_heatmap_folder(lazy=True)`` (what the pipeline's folder dataset returns) defers the
index; ``evaluate_heatmap_set`` and ``tuning_counts`` then read each pickle they need once
and take the index fields from the same read. Results must equal those of the indexed set.
"""

import numpy as np
import pandas as pd
import pytest

from cxr_spurious.errors import ContractError, DataFormatError
from cxr_spurious.heatmaps import HeatmapSet
from cxr_spurious.io import chexlocalize as cio
from cxr_spurious.io.masks import encode_rle
from cxr_spurious.localization import tuning
from cxr_spurious.localization.evaluate import evaluate_heatmap_set
from cxr_spurious.pipelines.localization import nodes

GRID = tuning.threshold_grid(0.2, 0.8, 0.1)
H, W = 41, 35


def _folder(tmp_path, n=20, seed=3, dims=(W, H)):
    """A pickle folder of ``n`` maps (two tasks per CXR) and its ground truth (some positive)."""
    rng = np.random.default_rng(seed)
    rows, maps, gt, images = [], [], {}, {}
    for i in range(n):
        cxr = f"p{i // 2}_study1_view1_frontal"
        task = ("Edema", "Cardiomegaly")[i % 2]
        mask = np.zeros((H, W), np.uint8)
        if rng.random() < 0.6:
            mask[int(rng.integers(0, H // 2)) :, int(rng.integers(0, W // 2)) : W - 3] = 1
        if i < n - 2:  # the last CXR is not in the ground truth
            gt.setdefault(cxr, {})[task] = encode_rle(mask)
        coarse = np.maximum(rng.normal(size=(7, 6)), 0).astype(np.float32)
        maps.append(coarse)
        images[cxr] = rng.integers(0, 255, (16, 16), dtype=np.uint8)
        rows.append(
            {
                "image_id": cxr,
                "task": task,
                "prob": float(rng.random()),
                "gt": float(mask.any()),
                "cxr_w": dims[0],
                "cxr_h": dims[1],
                "model": "m",
                "method": "g",
            }
        )
    folder = tmp_path / "maps"
    cio.write_chexlocalize_folder(
        HeatmapSet(pd.DataFrame(rows), np.stack(maps)), images, folder, progress=False
    )
    return folder, gt


@pytest.fixture
def reads(monkeypatch):
    """Paths read by ``read_heatmap_pickle`` in this process (workers=1)."""
    seen: list[str] = []
    original = cio.read_heatmap_pickle

    def counting(path, *, with_map=True):
        seen.append(str(path))
        return original(path, with_map=with_map)

    monkeypatch.setattr(cio, "read_heatmap_pickle", counting)
    return seen


def test_lazy_folder_names_its_pairs_without_reading(tmp_path, reads):
    folder, _ = _folder(tmp_path)
    hs = cio.read_heatmap_folder(folder, workers=1, lazy=True)
    assert hs.index_pending and len(hs) == 20 and len(reads) == 1  # the first file's shape
    assert hs.pairs.iloc[:2].to_dict("records") == [
        {"image_id": "p0_study1_view1_frontal", "task": "Cardiomegaly"},
        {"image_id": "p0_study1_view1_frontal", "task": "Edema"},
    ]
    assert len(reads) == 1
    eager = cio.read_heatmap_folder(folder, workers=1)
    pd.testing.assert_frame_equal(hs.index, eager.index)  # read on first use
    assert not hs.index_pending
    pd.testing.assert_frame_equal(hs.pairs, eager.pairs)


@pytest.mark.parametrize("workers", [1, 2])
def test_evaluation_of_a_lazy_folder_reads_each_pickle_once_and_equals_the_indexed_pass(
    tmp_path, reads, workers
):
    folder, gt = _folder(tmp_path)
    eager = cio.read_heatmap_folder(folder, workers=1)
    want, want_seg = evaluate_heatmap_set(eager, gt, tuning_grid=GRID, progress=False, workers=1)
    reads.clear()
    lazy = cio.read_heatmap_folder(folder, workers=1, lazy=True)
    got, got_seg = evaluate_heatmap_set(lazy, gt, tuning_grid=GRID, progress=False, workers=workers)
    pd.testing.assert_frame_equal(got, want)
    assert got_seg == want_seg
    pd.testing.assert_frame_equal(lazy.index, eager.index)  # supplied by the pass
    assert not lazy.index_pending
    if workers == 1:  # in this process: the first file at listing, then each file once
        assert sorted(reads) == sorted([str(lazy.paths[0])] + [str(p) for p in lazy.paths])


def test_tuning_counts_of_a_lazy_folder_read_only_the_positive_pickles(tmp_path, reads):
    folder, gt = _folder(tmp_path)
    eager = cio.read_heatmap_folder(folder, workers=1)
    want = tuning.tuning_counts(eager, gt, GRID, workers=1, progress=False)
    reads.clear()
    lazy = cio.read_heatmap_folder(folder, workers=1, lazy=True)
    got = tuning.tuning_counts(lazy, gt, GRID, workers=1, progress=False)
    pd.testing.assert_frame_equal(got, want)
    assert 0 < len(want) < len(lazy)
    assert len(reads) == 1 + len(want)
    assert lazy.index_pending  # a subset does not make the index


def test_a_lazy_folder_reports_bad_sizes_from_its_single_read(tmp_path):
    folder, gt = _folder(tmp_path, dims=(W + 1, H))
    lazy = cio.read_heatmap_folder(folder, workers=1, lazy=True)
    with pytest.raises(DataFormatError, match=r"disagree with the ground-truth size") as exc:
        evaluate_heatmap_set(lazy, gt, progress=False, workers=1)
    assert "p0_study1_view1_frontal/Cardiomegaly" in str(exc.value)
    huge, _ = _folder(tmp_path / "huge", dims=(10**6, 10**6))
    with pytest.raises(DataFormatError, match=r"cxr_dims.*exceed") as exc:
        evaluate_heatmap_set(
            cio.read_heatmap_folder(huge, workers=1, lazy=True), {}, progress=False, workers=1
        )
    assert "p0_study1_view1_frontal_Cardiomegaly_map.pkl" in str(exc.value)


def test_set_index_takes_one_row_per_pickle_in_file_order(tmp_path):
    folder, _ = _folder(tmp_path, n=4)
    lazy = cio.read_heatmap_folder(folder, workers=1, lazy=True)
    rows = [cio.index_pickle(p)[0] for p in lazy.paths]
    with pytest.raises(ContractError, match="one row per pickle"):
        lazy.set_index(rows[:3])
    with pytest.raises(ContractError, match="one row per pickle"):
        lazy.set_index(rows[::-1])
    assert lazy.index_pending
    lazy.set_index(rows)
    assert lazy.index["model"].tolist() == ["chexlocalize"] * 4


def test_the_pipeline_node_evaluates_a_lazy_folder(tmp_path):
    folder, gt = _folder(tmp_path)
    lazy = cio.read_heatmap_folder(folder, workers=1, lazy=True)
    eager = cio.read_heatmap_folder(folder, workers=1)
    args = (gt, {}, None, None, 0, [0.2, 0.8, 0.1], False, 10, False)
    got, _ = nodes.evaluate_heatmaps({"chexlocalize.gradcam": lazy}, *args)
    want, _ = nodes.evaluate_heatmaps({"chexlocalize.gradcam": eager}, *args)
    pd.testing.assert_frame_equal(got, want)
    assert got["skipped_map_files"].tolist() == [0] * len(got)


def test_overlays_of_a_lazy_folder_read_only_the_sampled_pickles(tmp_path, reads):
    from cxr_spurious.localization.figures import plot_overlays

    folder, gt = _folder(tmp_path)
    eager = cio.read_heatmap_folder(folder, workers=1)
    want = plot_overlays(eager, gt, {}, n=4, seed=1)
    reads.clear()
    lazy = cio.read_heatmap_folder(folder, workers=1, lazy=True)
    got = plot_overlays(lazy, gt, {}, n=4, seed=1)
    titles = [[ax.get_title() for ax in fig.axes if ax.get_title()] for fig in (got, want)]
    assert titles[0] == titles[1] and len(titles[0]) == 4
    # the listing's first header, then the 4 sampled pickles: their index fields and maps
    assert len(reads) == 1 + 1 + 2 * 4 and lazy.index_pending


def test_select_of_a_lazy_folder_stays_lazy_and_keeps_a_known_index(tmp_path):
    folder, _ = _folder(tmp_path, n=6)
    lazy = cio.read_heatmap_folder(folder, workers=1, lazy=True)
    mask = np.array([True, False, True, False, False, True])
    part = lazy.select(mask)
    assert isinstance(part, cio.PickleFolderSet) and part.index_pending and len(part) == 3
    eager = cio.read_heatmap_folder(folder, workers=1)
    pd.testing.assert_frame_equal(
        part.index, eager.index.loc[mask].reset_index(drop=True), check_like=False
    )
    known = eager.select(mask)
    assert not known.index_pending
    pd.testing.assert_frame_equal(known.index, part.index)
    np.testing.assert_array_equal(known.maps[1], eager.maps[2])
