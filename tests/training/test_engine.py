"""fit / train_one_epoch / evaluate: determinism, resume, checkpoints, stopping rules."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.training.training_tiny_data import TASK, tiny_config

from cxr_spurious.errors import DataFormatError, ParameterError
from cxr_spurious.stats.metrics import auroc
from cxr_spurious.training import engine
from cxr_spurious.training.checkpoints import (
    list_checkpoints,
    prepare_run_folder,
    result_fingerprint,
)
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


def _interrupt_after(variant_dir: Path, copy_to: Path, epoch: int) -> None:
    """Copy ``variant_dir`` to ``copy_to`` and drop the checkpoints after ``epoch`` there."""
    shutil.copytree(variant_dir, copy_to)
    for path in _run_checkpoints(copy_to)[epoch:]:
        path.unlink()


def test_resume_after_two_of_four_cosine_epochs_with_patience_is_bit_identical(
    tiny, tmp_path: Path
) -> None:
    """The cosine position and the early-stopping counter come back from the checkpoint.

    With this seed the metric peaks at epoch 1, so the counter is 1 at the interruption and
    patience 3 stops the run after epoch 4; epochs 3 and 4 train at cosine learning rates that
    a schedule restarted on resume would not give.
    """
    cfg = tiny_config(epochs=4, schedule="cosine", patience=3, seed=1, lr=0.01, keep_checkpoints=10)
    full = _fit(tiny, cfg, tmp_path / "full")
    assert full.stopped == "early_stopping" and full.history["epoch"].tolist() == [1, 2, 3, 4]
    assert full.best_epoch == 1  # the counter is 1 after epoch 2: it must survive the resume
    _interrupt_after(tmp_path / "full", tmp_path / "cut", 2)
    resumed = _fit(tiny, {**cfg, "resume": True}, tmp_path / "cut")
    assert _same_state(full.state_dict, resumed.state_dict)
    cols = ["epoch", "train_loss", "val_auroc", "val_robust_auroc", "lr", "steps", "selected"]
    assert full.history[cols].equals(resumed.history[cols])
    assert (resumed.stopped, resumed.best_epoch) == (full.stopped, full.best_epoch)
    last_full = torch.load(_run_checkpoints(tmp_path / "full")[-1], weights_only=True)
    last_resumed = torch.load(_run_checkpoints(tmp_path / "cut")[-1], weights_only=True)
    assert _same_state(last_full["model"], last_resumed["model"])  # the live weights too
    assert last_full["bad_epochs"] == last_resumed["bad_epochs"] == 3


def test_resume_after_the_time_budget_ran_out_continues(tiny, tmp_path: Path) -> None:
    """A run stopped by its time budget goes on when resumed (the budget is per run)."""
    kw = {"epochs": 3, "schedule": "constant"}
    stopped = _fit(tiny, tiny_config(time_budget_s=1e-9, **kw), tmp_path)
    assert stopped.stopped == "time_budget" and stopped.history["epoch"].tolist() == [1]
    resumed = _fit(tiny, tiny_config(resume=True, **kw), tmp_path)
    fresh = _fit(tiny, tiny_config(**kw))
    assert resumed.stopped == "epochs" and resumed.history["epoch"].tolist() == [1, 2, 3]
    assert _same_state(resumed.state_dict, fresh.state_dict)
    assert resumed.history["train_loss"].tolist() == fresh.history["train_loss"].tolist()


def test_resume_decides_early_stopping_with_this_runs_patience(tiny, tmp_path: Path) -> None:
    """lr 0 never improves after epoch 1: patience 1 stops after epoch 2."""
    kw = {"epochs": 4, "schedule": "constant", "lr": 0.0}
    first = _fit(tiny, tiny_config(patience=1, **kw), tmp_path)
    assert first.stopped == "early_stopping" and len(first.history) == 2
    same = _fit(tiny, tiny_config(patience=1, resume=True, **kw), tmp_path)
    assert same.stopped == "early_stopping" and len(same.history) == 2  # still stopped
    raised = _fit(tiny, tiny_config(patience=2, resume=True, **kw), tmp_path)
    assert raised.stopped == "early_stopping" and raised.history["epoch"].tolist() == [1, 2, 3]
    removed = _fit(tiny, tiny_config(patience=None, resume=True, **kw), tmp_path)
    assert removed.stopped == "epochs" and removed.history["epoch"].tolist() == [1, 2, 3, 4]


def test_resume_under_another_max_steps_after_it_cut_an_epoch_is_refused(
    tiny, tmp_path: Path
) -> None:
    """max_steps 3 cuts epoch 2 (2 steps per epoch) after 1 step: those weights need it."""
    kw = {"epochs": 4, "schedule": "constant"}
    cut = _fit(tiny, tiny_config(max_steps=3, **kw), tmp_path)
    assert cut.history["steps"].tolist() == [2, 1] and cut.stopped == "max_steps"
    for other, shown in ((None, "null"), (5, "5")):
        with pytest.raises(
            DataFormatError,
            match=rf"epoch_002\.pt: training\.max_steps 3 cut the checkpoint's last epoch "
            rf"\(epoch 2\) short .* this run has training\.max_steps {shown}",
        ):
            _fit(tiny, tiny_config(max_steps=other, resume=True, **kw), tmp_path)
    same = _fit(tiny, tiny_config(max_steps=3, resume=True, **kw), tmp_path)
    assert same.stopped == "max_steps" and _same_state(same.state_dict, cut.state_dict)


def test_resume_after_max_steps_at_an_epoch_boundary_continues(tiny, tmp_path: Path) -> None:
    """max_steps 4 ends exactly after epoch 2: without it the run goes on to a fresh result."""
    kw = {"epochs": 3, "schedule": "constant"}
    first = _fit(tiny, tiny_config(max_steps=4, **kw), tmp_path)
    assert first.history["steps"].tolist() == [2, 2] and first.stopped == "max_steps"
    resumed = _fit(tiny, tiny_config(resume=True, **kw), tmp_path)
    fresh = _fit(tiny, tiny_config(**kw))
    assert resumed.stopped == "epochs" and resumed.history["epoch"].tolist() == [1, 2, 3]
    assert _same_state(resumed.state_dict, fresh.state_dict)


def test_resume_past_this_runs_max_steps_is_refused(tiny, tmp_path: Path) -> None:
    """A checkpoint with 4 steps cannot give a run that stops after 3."""
    kw = {"epochs": 2, "schedule": "constant"}
    _fit(tiny, tiny_config(**kw), tmp_path)
    with pytest.raises(
        DataFormatError,
        match=r"epoch_002\.pt: checkpoint has taken 4 optimiser steps, more than this run's "
        r"training\.max_steps \(3\)",
    ):
        _fit(tiny, tiny_config(max_steps=3, resume=True, **kw), tmp_path)


def test_resume_with_fewer_epochs_than_the_checkpoint_is_refused(tiny, tmp_path: Path) -> None:
    """Epochs are not digested with the step schedule: 3 epochs cannot give a 1-epoch run."""
    kw = {"schedule": "step", "step_size": 1, "gamma": 0.5, "lr": 0.01}
    _fit(tiny, tiny_config(epochs=3, **kw), tmp_path)
    with pytest.raises(
        DataFormatError,
        match=r"epoch_003\.pt: checkpoint has 3 completed epochs, more than this run's "
        r"training\.epochs \(1\)",
    ):
        _fit(tiny, tiny_config(epochs=1, resume=True, **kw), tmp_path)
    again = _fit(tiny, tiny_config(epochs=3, resume=True, **kw), tmp_path)  # equal: the result
    assert again.history["epoch"].tolist() == [1, 2, 3]


def test_world_size_is_part_of_the_fingerprint_and_named_when_it_differs(tmp_path: Path) -> None:
    cfg = tiny_config()
    one = result_fingerprint(cfg, data="d", precision="fp32", device="cpu")
    assert result_fingerprint(cfg, data="d", precision="fp32", device="cpu", world=1) == one
    assert "_world" not in one[1]  # single-process digests are unchanged
    two = result_fingerprint(cfg, data="d", precision="fp32", device="cpu", world=2)
    assert two[0] != one[0] and two[1]["_world"] == 2
    # A 2-process run's checkpoint, resumed by one process.
    written = prepare_run_folder(tmp_path, *two, resume=False)
    (written / "epoch_001.pt").write_bytes(b"")
    with pytest.raises(
        DataFormatError,
        match=r"number of processes \(world size\): checkpoint 2, this run 1",
    ):
        prepare_run_folder(tmp_path, *one, resume=True)
    with pytest.raises(DataFormatError, match=r"world size\): checkpoint 2, this run 3"):
        prepare_run_folder(
            tmp_path,
            *result_fingerprint(cfg, data="d", precision="fp32", device="cpu", world=3),
            resume=True,
        )


def test_a_checkpoint_is_not_resumed_under_changed_training_code(
    tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pooling change of an earlier version would have continued old weights silently."""
    from cxr_spurious.training import checkpoints

    _fit(tiny, tiny_config(epochs=1), tmp_path)
    real = checkpoints.code_digests()
    edited = {**real, "cxr_spurious.models.ops": "0" * 16}
    monkeypatch.setattr(checkpoints, "code_digests", lambda: edited)
    with pytest.raises(
        DataFormatError,
        match=r"training code: the source of cxr_spurious\.models\.ops changed since the "
        r"checkpoint",
    ):
        _fit(tiny, tiny_config(epochs=1, resume=True), tmp_path)
    # The code as it was: the (complete) checkpoint is taken up again.
    monkeypatch.setattr(checkpoints, "code_digests", lambda: real)
    assert _fit(tiny, tiny_config(epochs=1, resume=True), tmp_path).history["epoch"].tolist() == [1]


def test_a_checkpoint_without_code_digests_is_named_as_older(tmp_path: Path) -> None:
    cfg = tiny_config()
    digest, items = result_fingerprint(cfg, data="d", precision="fp32", device="cpu")
    old_items = {k: v for k, v in items.items() if k != "_code"}
    written = prepare_run_folder(tmp_path, "f" * 64, old_items, resume=False)
    (written / "epoch_001.pt").write_bytes(b"")
    with pytest.raises(DataFormatError, match=r"checkpoint predates code digests"):
        prepare_run_folder(tmp_path, digest, items, resume=True)


def test_result_modules_are_the_training_code_import_closure() -> None:
    from tests.import_closure import project_import_closure

    from cxr_spurious.training.checkpoints import RESULT_MODULES

    closure = project_import_closure(
        "cxr_spurious.training.engine", "cxr_spurious.training.distributed"
    )
    assert tuple(sorted(closure)) == RESULT_MODULES


@pytest.mark.parametrize("supervision", ["erm", "seg"])
def test_a_non_finite_loss_stops_training_naming_variant_epoch_and_step(
    tiny, monkeypatch: pytest.MonkeyPatch, supervision: str
) -> None:
    """A NaN loss used to train on: the weights became NaN and epoch 1 was still selected
    and returned."""
    real = engine.make_objective
    calls = []

    def poisoned_at_step_2(*args, **kwargs):
        objective = real(*args, **kwargs)

        def loss(logits, labels, valid, batch):
            calls.append(1)
            value = objective(logits, labels, valid, batch)
            return value * float("nan") if len(calls) == 2 else value

        return loss

    monkeypatch.setattr(engine, "make_objective", poisoned_at_step_2)
    cfg = tiny_config(epochs=2, supervision=supervision, architecture="unet_small")
    with pytest.raises(
        ParameterError,
        match=rf"training\.lr.*\[{supervision}, unet_small\] the training loss is nan at "
        r"epoch 1, step 2.*lower training\.lr.*check the inputs",
    ) as err:
        _fit(tiny, cfg)
    assert type(err.value).__name__ == "NonFiniteLossError" and len(calls) == 2


@pytest.mark.parametrize("arch", ["unet_small", "cnn_small", "resnet18"])
def test_predict_on_no_images_gives_empty_arrays_of_the_usual_widths(tiny, arch: str) -> None:
    """Used to crash in ``np.concatenate`` (e.g. an empty test split)."""
    from cxr_spurious.training.outputs import predict_images

    manifest, cache = tiny
    cfg = tiny_config(architecture=arch)
    model = init_model(cfg)
    full_probs, full_embs = predict(model, [{"image": torch.rand(2, 1, 32, 32)}], CPU)
    for probs, embs in (
        predict(model, [], CPU),
        predict_images(model, manifest[manifest["split"] == "none"], cache, cfg, CPU),
    ):
        assert probs.shape == (0, full_probs.shape[1]) and embs.shape == (0, full_embs.shape[1])
        assert probs.dtype == embs.dtype == np.float32
