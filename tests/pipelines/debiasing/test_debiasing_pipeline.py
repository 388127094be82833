"""The debiasing pipeline run with a SequentialRunner on a tiny manifest and image cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from tests.debiasing.debias_fixtures import TASK, make_manifest

from cxr_spurious.errors import ContractError
from cxr_spurious.pipelines.debiasing import nodes
from cxr_spurious.pipelines.debiasing.pipeline import create_debiasing_template, create_pipeline
from cxr_spurious.sources.cache import ImageCache

PARAMS_FILE = "conf/base/parameters_debiasing.yml"


class _Kept(MemoryDataset):
    """A MemoryDataset the runner does not release, so tests can read intermediates."""

    def _release(self) -> None:
        pass


def _params(**over: object) -> dict[str, object]:
    with open(Path(__file__).resolve().parents[3] / PARAMS_FILE) as fh:
        params = yaml.safe_load(fh)["debiasing"]
    params.update({"group_by": ["sex"], **over})
    return params


def _cache(manifest: pd.DataFrame) -> ImageCache:
    n = len(manifest)
    rng = np.random.default_rng(0)
    return ImageCache(
        image_ids=manifest["image_id"].tolist(),
        tasks=[TASK],
        objects=[],
        size=16,
        images=rng.integers(0, 255, (n, 16, 16), dtype=np.uint8),
        masks=np.zeros((n, 1, 16, 16), np.uint8),
        boxes=np.zeros((n, 1, 16, 16), np.uint8),
        spurious=np.zeros((n, 0, 16, 16), np.uint8),
        has_mask=np.zeros((n, 1), bool),
    )


def _run(
    pipeline: object, manifest: pd.DataFrame, params: dict[str, object], **extra: object
) -> dict[str, object]:
    data = {"manifest": manifest, "image_cache": _cache(manifest), **extra}
    data.update({f"params:debiasing.{k}": v for k, v in params.items()})
    catalog = DataCatalog({k: MemoryDataset(v, copy_mode="assign") for k, v in data.items()})
    for name in (
        "resampled_manifest",
        "group_counts",
        "group_counts_plot",
        "debiasing_groups",
        "cluster_features",
    ):
        catalog[name] = _Kept(copy_mode="assign")
    SequentialRunner().run(pipeline, catalog)
    return {name: catalog.load(name) for name in ("resampled_manifest", "group_counts")}


@pytest.mark.parametrize(
    "strategy", ["none", "upsample", "cluster_downsample", "group_balance", "reweight"]
)
def test_default_pipeline_strategies(strategy: str) -> None:
    m = make_manifest()
    out = _run(
        create_pipeline(),
        m,
        _params(strategy=strategy, target="min" if "down" in strategy else "max"),
    )
    res, counts = out["resampled_manifest"], out["group_counts"]
    assert {"weight", "augment", "group"} <= set(res.columns)
    assert counts["n_before"].sum() == (m["split"] == "train").sum()
    assert counts["n_after"].sum() == (res["split"] == "train").sum()
    if strategy == "cluster_downsample":
        assert (
            counts["n_after"].nunique() == 1
            and counts["n_after"].iloc[0] == counts["n_before"].min()
        )


def test_jtt_template_reads_erm_predictions() -> None:
    m = make_manifest()
    preds = pd.DataFrame(
        {"image_id": m["image_id"], "split": m["split"], "model": "erm", f"p_{TASK}": 1.0 - m[TASK]}
    )
    out = _run(
        create_debiasing_template(jtt=True),
        m,
        # JTT's settings are the comparison's (comparison.debiasing.jtt_*), not debiasing.*
        _params(strategy="jtt", jtt_upweight=3, jtt_threshold=0.5, jtt_mode="duplicate"),
        erm_predictions=preds,
    )
    train = m["split"] == "train"
    assert (out["resampled_manifest"]["split"] == "train").sum() == 3 * train.sum()


def test_embedding_template_and_misaligned_embeddings() -> None:
    m = make_manifest()
    emb = pd.DataFrame({"image_id": m["image_id"], "e0": np.arange(len(m), dtype=float), "e1": 1.0})
    template = create_debiasing_template("embeddings")
    assert "embeddings" in template.inputs() and "image_cache" not in template.inputs()
    out = _run(template, m, _params(strategy="cluster_downsample", target="min"), embeddings=emb)
    assert out["group_counts"]["n_after"].nunique() == 1
    with pytest.raises(ContractError, match="misaligned with the manifest"):
        _run(
            template,
            m,
            _params(strategy="cluster_downsample", target="min"),
            embeddings=emb.iloc[10:],
        )


def test_group_node_errors() -> None:
    m = make_manifest()
    with pytest.raises(Exception, match="ethnicity"):
        nodes.assign_row_groups(m, ["ethnicity"], [0, 20], False, [TASK], "upsample", 2)
    with pytest.raises(Exception, match="debiasing.tasks"):
        nodes.assign_row_groups(m, ["sex"], [0, 20], False, [], "upsample", 2)
    groups = nodes.assign_row_groups(m, ["sex"], [0, 20], False, [TASK], "group_balance", 2)
    assert groups["group_key"].str.contains("label=").all()
