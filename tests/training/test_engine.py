"""fit / train_one_epoch / evaluate: determinism, resume, checkpoints, stopping rules."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.training.training_tiny_data import TASK, tiny_config

from cxr_spurious.errors import DataFormatError
from cxr_spurious.stats.metrics import auroc
from cxr_spurious.training.checkpoints import list_checkpoints
from cxr_spurious.training.data import CacheBatches, build_training_table, make_loader
from cxr_spurious.training.device import resolve_device
from cxr_spurious.training.engine import evaluate, fit, init_model, predict

CPU = resolve_device("cpu")


def _split(manifest, cache, cfg):
    table = build_training_table(manifest, cache, cfg)
    return table[table["split"] == "train"].reset_index(drop=True), table[
        table["split"] == "val"
    ].reset_index(drop=True)


def _fit(tiny, cfg, ckpt: Path | None = None):
    manifest, cache = tiny
    train, val = _split(manifest, cache, cfg)
    return fit(train, val, cache, cfg, CPU, checkpoint_dir=ckpt)


def _run_checkpoints(variant_dir: Path) -> list[Path]:
    """The checkpoint files of the only run folder under ``variant_dir``."""
    folders = sorted(p.parent for p in variant_dir.glob("*/fingerprint.json"))
    assert len(folders) == 1, folders
    return list_checkpoints(folders[0])


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("supervision", ["erm", "seg"])
def test_resume_after_interruption_gives_the_uninterrupted_result(
    tiny, tmp_path: Path, supervision: str
) -> None:
    cfg = tiny_config(epochs=2, supervision=supervision, architecture="unet_small")
    full = _fit(tiny, cfg, tmp_path / "full")
    assert [p.name for p in _run_checkpoints(tmp_path / "full")] == ["epoch_001.pt", "epoch_002.pt"]
    shutil.copytree(tmp_path / "full", tmp_path / "crashed")
    _run_checkpoints(tmp_path / "crashed")[-1].unlink()  # killed during epoch 2
    resumed = _fit(tiny, {**cfg, "resume": True}, tmp_path / "crashed")
    assert _same_state(full.state_dict, resumed.state_dict)
    cols = ["epoch", "train_loss", "dense_loss", "val_auroc", "val_robust_auroc", "lr", "selected"]
    assert full.history[cols].equals(resumed.history[cols])


def test_one_epoch_then_resume_one_more_equals_two_epochs(tiny, tmp_path: Path) -> None:
    kw = {"supervision": "seg", "architecture": "unet_small", "schedule": "constant"}
    full = _fit(tiny, tiny_config(epochs=2, **kw), tmp_path / "full")
    _fit(tiny, tiny_config(epochs=1, **kw), tmp_path / "split")
    resumed = _fit(tiny, tiny_config(epochs=2, resume=True, **kw), tmp_path / "split")
    assert _same_state(full.state_dict, resumed.state_dict)
    assert full.history["train_loss"].tolist() == resumed.history["train_loss"].tolist()


def test_resume_of_a_finished_run_trains_nothing_more(tiny, tmp_path: Path) -> None:
    cfg = tiny_config(epochs=1)
    first = _fit(tiny, cfg, tmp_path)
    again = _fit(tiny, {**cfg, "resume": True}, tmp_path)
    assert _same_state(first.state_dict, again.state_dict) and len(again.history) == 1


def test_same_seed_same_weights_other_seed_differs(tiny) -> None:
    a = _fit(tiny, tiny_config(seed=3))
    b = _fit(tiny, tiny_config(seed=3))
    c = _fit(tiny, tiny_config(seed=4))
    assert _same_state(a.state_dict, b.state_dict)
    assert not _same_state(a.state_dict, c.state_dict)


def test_checkpoint_from_another_architecture_is_refused(tiny, tmp_path: Path) -> None:
    _fit(tiny, tiny_config(supervision="seg", architecture="unet_small"), tmp_path)
    with pytest.raises(
        DataFormatError,
        match=r"other settings \(.*training\.architecture: "
        r"checkpoint 'unet_small', this run 'resunet18'",
    ):
        _fit(
            tiny,
            tiny_config(supervision="seg", architecture="resunet18", resume=True, epochs=2),
            tmp_path,
        )


def test_checkpoint_holds_the_documented_keys(tiny, tmp_path: Path) -> None:
    _fit(tiny, tiny_config(), tmp_path)
    state = torch.load(_run_checkpoints(tmp_path)[-1], weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "config", "rng", "history", "best"} <= set(
        state
    )
    assert state["epoch"] == 1 and state["config"]["architecture"] == "unet_small"
    assert len(state["fingerprint"]) == 64 and state["fingerprint_items"]["lr"] == 0.003


def test_fresh_run_never_prunes_or_resumes_another_runs_checkpoints(tiny, tmp_path: Path) -> None:
    """An older run's epoch_003 must not make a fresh run delete its own epoch_001 (issue #15.1)."""
    old = _fit(tiny, tiny_config(epochs=3, schedule="constant", lr=0.001), tmp_path)
    old_files = {p: p.read_bytes() for p in tmp_path.glob("*/epoch_*.pt")}
    assert len(old_files) == 2  # keep_checkpoints: 2
    _fit(tiny, tiny_config(epochs=1, schedule="constant", lr=0.01), tmp_path)
    assert {p: p.read_bytes() for p in old_files} == old_files  # untouched
    new = [p for p in tmp_path.glob("*/epoch_*.pt") if p not in old_files]
    assert [p.name for p in new] == ["epoch_001.pt"]
    # Resuming the lr=0.01 run continues it, not the lr=0.001 run.
    resumed = _fit(tiny, tiny_config(epochs=2, schedule="constant", lr=0.01, resume=True), tmp_path)
    assert resumed.history["epoch"].tolist() == [1, 2]
    assert not _same_state(resumed.state_dict, old.state_dict)


def test_resume_with_other_settings_is_refused_naming_what_differs(tiny, tmp_path: Path) -> None:
    _fit(tiny, tiny_config(epochs=1, lr=0.001), tmp_path)
    with pytest.raises(DataFormatError, match=r"training\.lr: checkpoint 0\.001, this run 0\.01"):
        _fit(tiny, tiny_config(epochs=1, lr=0.01, resume=True), tmp_path)


def test_resume_on_other_training_data_is_refused(tiny, tmp_path: Path) -> None:
    manifest, cache = tiny
    cfg = tiny_config(epochs=1)
    train, val = _split(manifest, cache, cfg)
    fit(train, val, cache, cfg, CPU, checkpoint_dir=tmp_path)
    with pytest.raises(DataFormatError, match="training data: checkpoint"):
        fit(train.iloc[1:], val, cache, {**cfg, "resume": True}, CPU, checkpoint_dir=tmp_path)


def test_fresh_run_of_the_same_settings_starts_its_folder_over(tiny, tmp_path: Path) -> None:
    """Stale epochs of an identical earlier run never outrank a fresh run's own checkpoints."""
    _fit(tiny, tiny_config(epochs=3, schedule="constant"), tmp_path)
    _fit(tiny, tiny_config(epochs=1, schedule="constant"), tmp_path)
    assert [p.name for p in _run_checkpoints(tmp_path)] == ["epoch_001.pt"]


def test_unfingerprinted_checkpoint_is_refused_on_resume(tiny, tmp_path: Path) -> None:
    torch.save({"epoch": 4, "config": {}}, tmp_path / "epoch_004.pt")
    with pytest.raises(
        DataFormatError, match=r"epoch_004\.pt: checkpoint written without a fingerprint"
    ):
        _fit(tiny, tiny_config(resume=True), tmp_path)


def test_max_steps_and_early_stopping(tiny) -> None:
    limited = _fit(tiny, tiny_config(epochs=3, max_steps=3))  # 2 steps per epoch
    assert limited.history["steps"].tolist() == [2, 1] and limited.stopped == "max_steps"
    # lr 0 cannot improve the metric after epoch 1: patience 1 stops at epoch 2.
    stopped = _fit(tiny, tiny_config(epochs=5, patience=1, lr=0.0))
    assert (
        stopped.stopped == "early_stopping"
        and len(stopped.history) == 2
        and stopped.best_epoch == 1
    )


def test_history_records_data_wait_and_selection(tiny) -> None:
    result = _fit(tiny, tiny_config(epochs=2))
    h = result.history
    assert ((h["data_wait_fraction"] >= 0) & (h["data_wait_fraction"] < 1)).all()
    assert (
        h["selected"].sum() == 1 and int(h.loc[h["selected"], "epoch"].iloc[0]) == result.best_epoch
    )


def test_evaluate_matches_sklearn_auroc_on_predictions(tiny) -> None:
    manifest, cache = tiny
    cfg = tiny_config()
    _, val = _split(manifest, cache, cfg)
    model = init_model(cfg)
    loader = make_loader(
        CacheBatches(val, cache, cfg, train=False), 5, seed=0, shuffle=False, drop_last=False
    )
    metrics = evaluate(model, loader, val, cfg, CPU)
    probs, embs = predict(model, loader, CPU)
    assert probs.shape == (len(val), 1) and embs.shape == (len(val), model.embed_dim)
    assert metrics["auroc"] == pytest.approx(auroc(val["y_" + TASK].to_numpy(), probs[:, 0]))
    assert np.isfinite(metrics["robust_auroc"])


def test_checkpoint_from_before_the_supervision_rename_resumes(tiny, tmp_path: Path) -> None:
    """A checkpoint whose config says ``method`` (the old name) continues: same fingerprint."""
    cfg = tiny_config(supervision="seg", schedule="constant")
    _fit(tiny, cfg, tmp_path)
    (path,) = _run_checkpoints(tmp_path)
    state = torch.load(path, weights_only=True)
    assert state["fingerprint_items"]["method"] == "seg"  # digested under the old name
    assert "supervision" not in state["fingerprint_items"]
    old_config = {("method" if k == "supervision" else k): v for k, v in state["config"].items()}
    torch.save({**state, "config": old_config}, path)
    resumed = _fit(tiny, {**cfg, "epochs": 2, "resume": True}, tmp_path)
    assert resumed.history["epoch"].tolist() == [1, 2]


def test_resume_with_another_supervision_names_training_supervision(tiny, tmp_path: Path) -> None:
    _fit(tiny, tiny_config(supervision="seg"), tmp_path)
    with pytest.raises(
        DataFormatError, match=r"training\.supervision: checkpoint 'seg', this run 'box'"
    ):
        _fit(tiny, tiny_config(supervision="box", name="seg", resume=True), tmp_path)
