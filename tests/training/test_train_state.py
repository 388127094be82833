"""The epoch bookkeeping of ``fit``: model selection, stop rules, checkpoint round trip."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cxr_spurious.training.checkpoints import save_checkpoint
from cxr_spurious.training.engine import (
    TrainState,
    fit_result,
    record_epoch,
    stop_reason,
)

METRIC = "val_auroc"
NO_LIMITS = {"patience": None, "max_steps": None, "time_budget_s": None}


def _row(epoch: int, value: float, steps: int = 2) -> dict[str, Any]:
    return {"epoch": epoch, "steps": steps, METRIC: value, "selected": False}


def _model(fill: float) -> nn.Module:
    model = nn.Linear(2, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(fill)
    return model


def _run(values: list[float]) -> tuple[TrainState, list[bool]]:
    """Record one epoch per value; epoch ``e``'s weights are all ``e``."""
    state = TrainState()
    picked = [
        record_epoch(state, _row(e, v), METRIC, _model(float(e)))
        for e, v in enumerate(values, start=1)
    ]
    return state, picked


def test_the_best_epoch_is_selected_with_its_weights_and_the_counter_restarts() -> None:
    state, picked = _run([0.6, 0.8, 0.7, 0.75])
    assert picked == [True, True, False, False]
    assert (state.best_epoch, state.best_metric, state.bad_epochs) == (2, 0.8, 2)
    assert (state.epoch, state.global_step, len(state.history)) == (4, 8, 4)
    assert torch.equal(state.best_state_dict["weight"], torch.full((1, 2), 2.0))


def test_the_selected_weights_are_a_copy_not_the_live_model() -> None:
    state, model = TrainState(), _model(1.0)
    record_epoch(state, _row(1, 0.5), METRIC, model)
    with torch.no_grad():
        model.weight.fill_(9.0)
    assert torch.equal(state.best_state_dict["weight"], torch.full((1, 2), 1.0))


def test_a_tie_does_not_move_the_selection() -> None:
    state, picked = _run([0.7, 0.7])
    assert picked == [True, False] and state.best_epoch == 1 and state.bad_epochs == 1


def test_nan_metrics_select_only_the_first_epoch_and_any_finite_value_wins_over_them() -> None:
    state, picked = _run([math.nan, math.nan, 0.1, math.nan])
    assert picked == [True, False, True, False]
    assert state.best_epoch == 3 and state.bad_epochs == 1


@pytest.mark.parametrize(
    ("limits", "bad_epochs", "global_step", "elapsed", "expected"),
    [
        ({"patience": 2}, 1, 0, 0.0, ""),
        ({"patience": 2}, 2, 0, 0.0, "early_stopping"),
        ({"max_steps": 10}, 0, 9, 0.0, ""),
        ({"max_steps": 10}, 0, 10, 0.0, "max_steps"),
        ({"time_budget_s": 5}, 0, 0, 4.9, ""),
        ({"time_budget_s": 5}, 0, 0, 5.0, "time_budget"),
        # Several at once: early stopping before max_steps before the time budget.
        ({"patience": 1, "max_steps": 1, "time_budget_s": 1}, 1, 1, 1.0, "early_stopping"),
        ({"patience": 1, "max_steps": 1, "time_budget_s": 1}, 0, 1, 1.0, "max_steps"),
        ({}, 100, 10**6, 1e9, ""),  # no limits: never stops early
    ],
)
def test_stop_reason(
    limits: dict, bad_epochs: int, global_step: int, elapsed: float, expected: str
) -> None:
    state = TrainState(bad_epochs=bad_epochs, global_step=global_step)
    assert stop_reason({**NO_LIMITS, **limits}, state, elapsed) == expected


def test_checkpoint_round_trip_keeps_every_field(tmp_path: Path) -> None:
    """Through a file, as ``fit`` resumes: saved, loaded back with ``weights_only``."""
    state, _ = _run([0.6, 0.8, 0.7])
    state.stopped, state.fingerprint, state.fingerprint_items = "max_steps", "ab" * 32, {"lr": 1}
    path = save_checkpoint(tmp_path, state.to_checkpoint())
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert list(saved) == [
        "epoch", "history", "best", "bad_epochs", "global_step", "stopped",
        "fingerprint", "fingerprint_items",
    ]  # fmt: skip
    assert saved["best"]["epoch"] == 2 and saved["best"]["metric"] == 0.8
    loaded = TrainState.from_checkpoint(saved)
    assert loaded.best_state_dict is not state.best_state_dict  # a copy from disk
    for f in dataclasses.fields(TrainState):
        if f.name != "best_state_dict":
            assert getattr(loaded, f.name) == getattr(state, f.name), f.name
    assert loaded.best_state_dict.keys() == state.best_state_dict.keys()
    for key, value in state.best_state_dict.items():
        assert torch.equal(loaded.best_state_dict[key], value), key


def test_unselected_unfingerprinted_state_checkpoints_best_none_no_fingerprint() -> None:
    saved = TrainState(epoch=3).to_checkpoint()
    assert saved["best"] is None and "fingerprint" not in saved


def test_fit_result_returns_the_selected_epoch_marked_in_the_history() -> None:
    state, _ = _run([0.6, 0.8, 0.7])
    items = {"_data": "d" * 64, "_code": {"cxr_spurious.errors": "0" * 16}}
    result = fit_result(state, _model(7.0), ("digest", items))
    assert result.best_epoch == 2 and result.stopped == "epochs" and result.fingerprint == "digest"
    assert result.fingerprint_items == items  # what train_model records as trained_on
    assert result.history["selected"].tolist() == [False, True, False]
    assert torch.equal(result.state_dict["weight"], torch.full((1, 2), 2.0))


def test_fit_result_without_a_selected_epoch_returns_the_current_weights() -> None:
    result = fit_result(TrainState(epoch=4, stopped="time_budget"), _model(7.0), ("", {}))
    assert result.best_epoch == 4 and result.stopped == "time_budget" and result.history.empty
    assert torch.equal(result.state_dict["weight"], torch.full((1, 2), 7.0))
