"""The evaluation table refuses bad predictions naming the column, how many images and
which (the first few image ids with their values), as ``validate_manifest`` does."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.robustness.robust_fixtures import TASK, make_table

from cxr_spurious.errors import ContractError
from cxr_spurious.robustness.evaluation import N_EXAMPLES, evaluation_table

TASKS = [TASK, "Effusion"]


def _inputs() -> tuple[pd.DataFrame, pd.DataFrame]:
    t = make_table()
    t["Effusion"] = t[TASK]
    manifest = t.drop(columns=[f"p_{TASK}"])
    preds = t[["image_id", f"p_{TASK}"]].assign(p_Effusion=0.3)
    return manifest, preds


def _message(preds: pd.DataFrame) -> str:
    manifest, _ = _inputs()
    with pytest.raises(ContractError) as err:
        evaluation_table(manifest, preds, TASKS, ["sex"], name="erm.predictions")
    return str(err.value)


def test_a_nan_score_is_named_with_column_count_and_image() -> None:
    _, preds = _inputs()
    preds.loc[17, "p_Effusion"] = np.nan
    msg = _message(preds)
    image = preds.loc[17, "image_id"]
    assert msg.startswith(
        f"erm.predictions: p_Effusion is NaN or infinite for 1 image(s), e.g. {image} (nan)"
    )
    assert f"p_{TASK}" not in msg  # the clean column is not blamed


def test_out_of_range_scores_are_counted_and_the_first_few_listed() -> None:
    _, preds = _inputs()
    rows = list(range(3, 3 + N_EXAMPLES + 2))
    preds.loc[rows, "p_Effusion"] = 1.5
    preds.loc[40, f"p_{TASK}"] = -np.inf
    msg = _message(preds)
    first = ", ".join(f"{preds.loc[r, 'image_id']} (1.5)" for r in rows[:N_EXAMPLES])
    assert f"p_Effusion is outside [0, 1] for {len(rows)} image(s), e.g. {first}, ..." in msg
    assert (
        f"p_{TASK} is NaN or infinite for 1 image(s), e.g. {preds.loc[40, 'image_id']} (-inf)"
        in msg
    )
    assert msg.count("(1.5)") == N_EXAMPLES  # the first few, not all of them
    assert "expected probabilities in [0, 1]" in msg and "not logits" in msg


def test_logits_are_named_as_such() -> None:
    _, preds = _inputs()
    preds["p_Effusion"] = np.log(0.3 / 0.7)  # a logit: negative for every image
    msg = _message(preds)
    assert f"p_Effusion is outside [0, 1] for {len(preds)} image(s)" in msg
