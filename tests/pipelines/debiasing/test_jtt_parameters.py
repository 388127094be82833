"""JTT's upweight is checked for its mode, and debiasing errors name the keys really read.

``int(upweight)`` used to turn ``jtt_upweight: 1.9`` into one copy (JTT == ERM, silently)
and a weight of 2.5 into 2.0; under the comparison, a bad ``comparison.debiasing.*`` value
was reported as the default pipeline's ``debiasing.*`` key, which has no effect there.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.debiasing.debias_fixtures import TASK, make_manifest

from cxr_spurious.errors import ParameterError
from cxr_spurious.pipelines.comparison.pipeline import (
    DFR,
    JTT,
    create_seed_pipeline,
    create_study_seed_pipeline,
)
from cxr_spurious.pipelines.debiasing import nodes
from cxr_spurious.pipelines.debiasing.pipeline import create_debiasing_template

REPO = Path(__file__).resolve().parents[3]


def _inputs() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Manifest, one group, ERM predictions and the train errors at 0.5 by hand."""
    m = make_manifest()
    rng = np.random.default_rng(3)
    p = rng.random(len(m))
    preds = pd.DataFrame({"image_id": m["image_id"], f"p_{TASK}": p})
    groups = pd.DataFrame({"image_id": m["image_id"], "group": 0, "group_key": "all"})
    wrong = ((p >= 0.5) != (m[TASK].to_numpy() == 1)) & (m["split"] == "train").to_numpy()
    return m, groups, preds, wrong


@pytest.mark.parametrize("upweight", [1.9, 2.5, "3", True, 0, float("nan")])
def test_duplicate_mode_refuses_a_non_integer_upweight(upweight: object) -> None:
    m, groups, preds, _ = _inputs()
    with pytest.raises(ParameterError) as err:
        nodes.upweight_erm_errors(m, groups, preds, [TASK], 0.5, upweight, "duplicate")  # type: ignore[arg-type]
    assert err.value.key == "debiasing.jtt_upweight"


@pytest.mark.parametrize("upweight", [3, 3.0])
def test_duplicate_mode_repeats_each_error(upweight: float) -> None:
    m, groups, preds, wrong = _inputs()
    out = nodes.upweight_erm_errors(m, groups, preds, [TASK], 0.5, upweight, "duplicate")
    counts = out[out["split"] == "train"]["image_id"].value_counts()
    n_train = int((m["split"] == "train").sum())
    assert wrong.sum() > 3 and len(counts) == n_train
    assert counts.sum() == n_train + 2 * int(wrong.sum())
    assert (counts[m.loc[wrong, "image_id"]] == 3).all()


def test_weight_mode_keeps_a_fractional_weight() -> None:
    m, groups, preds, wrong = _inputs()
    out = nodes.upweight_erm_errors(m, groups, preds, [TASK], 0.5, 2.5, "weight")
    assert len(out) == len(m)
    np.testing.assert_array_equal(out["weight"].to_numpy(), np.where(wrong, 2.5, 1.0))
    with pytest.raises(ParameterError, match="jtt_upweight"):
        nodes.upweight_erm_errors(m, groups, preds, [TASK], 0.5, 0.5, "weight")


def test_jtt_keys_are_not_in_the_default_debiasing_block() -> None:
    """They were read by no node: the comparison reads comparison.debiasing.jtt_*."""
    with open(REPO / "conf/base/parameters_debiasing.yml") as fh:
        debiasing = yaml.safe_load(fh)["debiasing"]
    with open(REPO / "conf/base/parameters_comparison.yml") as fh:
        comparison = yaml.safe_load(fh)["comparison"]["debiasing"]
    jtt = {"jtt_upweight", "jtt_threshold", "jtt_mode"}
    assert not jtt & set(debiasing) and jtt <= set(comparison)


def _node(pipeline, name: str):  # type: ignore[no-untyped-def]
    return next(n for n in pipeline.nodes if n.name == name)


@pytest.fixture(scope="module")
def study_seed():  # type: ignore[no-untyped-def]
    return create_study_seed_pipeline()


def test_comparison_errors_name_the_comparison_keys(study_seed) -> None:  # type: ignore[no-untyped-def]
    m, groups, preds, _ = _inputs()
    jtt = _node(study_seed, f"{JTT}.upweight_erm_errors")
    assert "params:comparison.debiasing.jtt_threshold" in jtt.inputs
    cases = [
        ({"threshold": 1.5, "upweight": 6, "mode": "duplicate"}, "jtt_threshold"),
        ({"threshold": 0.5, "upweight": 1.9, "mode": "duplicate"}, "jtt_upweight"),
        ({"threshold": 0.5, "upweight": 6, "mode": "copy"}, "jtt_mode"),
    ]
    for kw, key in cases:
        with pytest.raises(ParameterError) as err:
            jtt.func(manifest=m, groups=groups, erm_predictions=preds, tasks=[TASK], **kw)
        assert err.value.key == f"comparison.debiasing.{key}"
        assert str(err.value).startswith(f"parameter 'comparison.debiasing.{key}'")
    groups_node = _node(study_seed, "cmp_upsample.assign_row_groups")
    with pytest.raises(ParameterError) as err:
        groups_node.func(m, ["ethnicity"], [0, 20], False, [TASK], "upsample", 2)
    assert err.value.key == "comparison.debiasing.group_by"
    resample = _node(study_seed, "cmp_upsample.resample_train_rows")
    with pytest.raises(ParameterError) as err:
        resample.func(m, groups, pd.DataFrame(), "upsample", "largest", 0, 8)
    assert err.value.key == "comparison.strategies.cmp_upsample.target"
    with pytest.raises(ParameterError) as err:
        resample.func(m, groups, pd.DataFrame(), "upsampling", "max", 0, 8)
    assert err.value.key == "comparison.strategies.cmp_upsample.strategy"
    dfr = _node(study_seed, "refit_last_layer")
    emb = pd.DataFrame({"image_id": m["image_id"], "e0": 0.0})
    with pytest.raises(ParameterError) as err:
        dfr.func(m, emb, [TASK], ["sex"], [0, 20], 0.0, 0)
    assert err.value.key == "comparison.dfr_c"
    # the wrapped functions still pickle (process runners) and keep their names
    assert pickle.loads(pickle.dumps(jtt.func)).__name__ == "upweight_erm_errors"


def test_other_seeds_name_the_comparison_keys_too() -> None:
    pipe = create_seed_pipeline(1, 0)
    m, groups, preds, _ = _inputs()
    jtt = _node(pipe, f"{JTT}_s1.upweight_erm_errors")
    with pytest.raises(ParameterError) as err:
        jtt.func(m, groups, preds, [TASK], 1.5, 6, "duplicate")
    assert err.value.key == "comparison.debiasing.jtt_threshold"
    dfr = _node(pipe, f"{DFR}_s1.refit_last_layer")
    with pytest.raises(ParameterError) as err:
        dfr.func(m, pd.DataFrame({"image_id": m["image_id"], "e0": 0.0}), [TASK], [], [0], 1.0)
    assert err.value.key == "comparison.debiasing.group_by"


def test_the_default_template_names_the_debiasing_keys() -> None:
    m, groups, preds, _ = _inputs()
    jtt = _node(create_debiasing_template(jtt=True), "upweight_erm_errors")
    with pytest.raises(ParameterError) as err:
        jtt.func(m, groups, preds, [TASK], 1.5, 6, "duplicate")
    assert err.value.key == "debiasing.jtt_threshold"
