"""The small-group settings reach the nodes: ``strata.min_stratum_size`` (shipped in
``parameters_robustness.yml``) decides which hidden strata are flagged, and the reliability
diagram leaves out the groups below ``calibration_min_rows``, as the calibration table does."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml
from tests.robustness.robust_fixtures import TASK, make_table, outlier_data

from cxr_spurious.pipelines.robustness import create_pipeline, nodes
from cxr_spurious.robustness.strata import MIN_STRATUM_SIZE

PARAMS = Path(__file__).resolve().parents[3] / "conf/base/parameters_robustness.yml"


def _strata_inputs(n_outliers: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Test rows whose negatives include ``n_outliers`` far-away images called positive."""
    y, p, x = outlier_data(120, 4, n_outliers)
    ids = [f"i{k}" for k in range(len(y))]
    table = pd.DataFrame(
        {"image_id": ids, "split": "test", TASK: y, f"p_{TASK}": p, "tube": y, "site": "a"}
    )
    emb = pd.DataFrame({"image_id": ids, **{f"e{j}": x[:, j] for j in range(4)}})
    ops = pd.DataFrame({"task": [TASK], "threshold": [0.5]})
    return table, emb, ops


def test_shipped_min_stratum_size_is_the_default_and_reaches_find_strata() -> None:
    with open(PARAMS) as fh:
        strata = yaml.safe_load(fh)["robustness"]["strata"]
    assert strata["min_stratum_size"] == MIN_STRATUM_SIZE == 5
    table, emb, ops = _strata_inputs(n_outliers=2)
    shipped = {**strata, "k": 2}
    _, clusters, _ = nodes.find_hidden_strata(table, emb, ops, shipped, ["site"])
    pair = clusters[(clusters["class"] == 0) & (clusters["size"] == 2)]
    assert len(pair) == 1 and pair["error_rate"].iloc[0] == 1.0
    assert not clusters["flagged"].any()  # two images are below the shipped 5
    _, loose, _ = nodes.find_hidden_strata(
        table, emb, ops, {**shipped, "min_stratum_size": 2}, ["site"]
    )
    assert loose.loc[loose["flagged"], "cluster"].tolist() == pair["cluster"].tolist()


def test_reliability_diagram_node_reads_calibration_min_rows() -> None:
    nodes_by_name = {n.name: n for n in create_pipeline().nodes}
    plot = nodes_by_name["erm.plot_reliability_diagram"]
    assert "params:robustness.calibration_min_rows" in plot.inputs
    t = make_table()
    t["split"] = "test"
    t.loc[t.index[:12], "site"] = "tiny"
    fig = nodes.plot_reliability_diagram(t, [TASK], "site", 10, 20)
    labels = [line.get_label().split(" ")[0] for line in fig.axes[0].lines[1:]]
    assert labels == ["a", "b"]
    assert [text.get_text() for text in fig.texts] == [
        "left out (fewer than 20 labelled rows): tiny (n=12)"
    ]
