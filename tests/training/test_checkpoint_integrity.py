"""What a checkpoint is checked against before a run continues it.

* The pretrained weights: ``training.pretrained`` is a path, so the fingerprint (and the
  model's ``trained_on`` record) digests the file's content: weights replaced at the same
  path are not continued from a checkpoint started from the old ones.
* The payload: a checkpoint file that unpickles to something other than a complete
  checkpoint dict is refused with a ``DataFormatError`` naming it (it gave an
  ``AttributeError`` or a misleading "written with architecture None").
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from tests.training.training_tiny_data import tiny_config

from cxr_spurious.errors import ContractError, DataFormatError
from cxr_spurious.training.checkpoints import (
    CHECKPOINT_KEYS,
    load_latest_checkpoint,
    prepare_run_folder,
    result_fingerprint,
)
from cxr_spurious.training.data import build_training_table
from cxr_spurious.training.device import resolve_device
from cxr_spurious.training.engine import fit
from cxr_spurious.training.outputs import recorded_trained_on, trained_on

CPU = resolve_device("cpu")


def _fingerprint(cfg: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return result_fingerprint(cfg, data="d", precision="fp32", device="cpu")


def _write_weights(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    torch.save(torchvision.models.resnet18().state_dict(), path)


def test_the_fingerprint_digests_the_pretrained_file_not_only_its_path(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"weights A")
    cfg = tiny_config(architecture="resnet18", pretrained=str(weights))
    digest_a, items_a = _fingerprint(cfg)
    assert items_a["_weights"] == hashlib.sha256(b"weights A").hexdigest()
    weights.write_bytes(b"weights B")  # other weights at the same path
    digest_b, items_b = _fingerprint(cfg)
    assert items_b["pretrained"] == items_a["pretrained"]  # the path alone is the same
    assert digest_b != digest_a
    # a checkpoint started from A is not resumed from B, and the message says why
    written = prepare_run_folder(tmp_path / "ck", digest_a, items_a, resume=False)
    (written / "epoch_001.pt").write_bytes(b"")
    with pytest.raises(
        DataFormatError, match=r"pretrained weights \(SHA-256 of the training\.pretrained file\)"
    ):
        prepare_run_folder(tmp_path / "ck", digest_b, items_b, resume=True)


def test_a_run_without_pretrained_weights_has_no_weights_item() -> None:
    _, items = _fingerprint(tiny_config())
    assert "_weights" not in items
    assert "weights" not in trained_on(items)


def test_trained_on_records_the_pretrained_file_digest(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"weights A")
    _, items = _fingerprint(tiny_config(architecture="resnet18", pretrained=str(weights)))
    record = trained_on(items)
    assert record["weights"] == hashlib.sha256(b"weights A").hexdigest()
    # it travels from the model artifact to test_metrics as it is
    assert recorded_trained_on({"trained_on": record}, "erm.model") == record
    with pytest.raises(ContractError, match=r"erm\.model: 'trained_on' should map .*'weights'"):
        recorded_trained_on({"trained_on": {**record, "weights": 3}}, "erm.model")


def test_resume_refuses_a_checkpoint_started_from_replaced_weights(tiny, tmp_path: Path) -> None:
    """The audit's case: the weights file replaced between the run and its resumption."""
    manifest, cache = tiny
    weights = tmp_path / "weights.pth"
    kw = {"architecture": "resnet18", "schedule": "constant", "pretrained": str(weights)}
    table = build_training_table(manifest, cache, tiny_config(**kw))
    train = table[table["split"] == "train"].reset_index(drop=True)
    val = table[table["split"] == "val"].reset_index(drop=True)
    _write_weights(weights, seed=1)
    fit(train, val, cache, tiny_config(epochs=1, **kw), CPU, checkpoint_dir=tmp_path / "ck")
    _write_weights(weights, seed=2)  # the file now holds other weights
    with pytest.raises(DataFormatError, match=r"pretrained weights \(SHA-256"):
        fit(
            train,
            val,
            cache,
            tiny_config(epochs=2, resume=True, **kw),
            CPU,
            checkpoint_dir=tmp_path / "ck",
        )


def _complete_checkpoint() -> dict[str, Any]:
    """A payload of the shape ``engine.save_epoch_checkpoint`` writes."""
    return {
        "epoch": 1, "global_step": 2, "bad_epochs": 0, "history": [{"steps": 2}],
        "best": None, "stopped": "", "fingerprint": "f" * 64, "fingerprint_items": {},
        "config": dict(tiny_config()), "model": {}, "optimizer": {}, "scheduler": {},
        "rng": {"torch": torch.get_rng_state()},
    }  # fmt: skip


def _load(tmp_path: Path, payload: Any) -> dict[str, Any] | None:
    torch.save(payload, tmp_path / "epoch_001.pt")
    return load_latest_checkpoint(tmp_path, tiny_config(), fingerprint=("f" * 64, {}))


def test_a_checkpoint_that_is_not_a_dict_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        DataFormatError, match=r"epoch_001\.pt: not a training checkpoint: it holds a list"
    ):
        _load(tmp_path, [1, 2, 3])


def test_a_checkpoint_without_its_keys_is_named_with_them(tmp_path: Path) -> None:
    payload = {k: v for k, v in _complete_checkpoint().items() if k not in ("config", "rng")}
    with pytest.raises(
        DataFormatError,
        match=r"epoch_001\.pt: not a complete training checkpoint \(missing 'config', 'rng'\)",
    ):
        _load(tmp_path, payload)


def test_a_checkpoint_key_of_another_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"epoch_001\.pt: .*'config' is a list"):
        _load(tmp_path, {**_complete_checkpoint(), "config": ["architecture"]})


def test_a_complete_checkpoint_payload_loads(tmp_path: Path) -> None:
    payload = _complete_checkpoint()
    assert set(payload) == set(CHECKPOINT_KEYS)
    loaded = _load(tmp_path, payload)
    assert loaded is not None and loaded["epoch"] == 1 and loaded["history"] == [{"steps": 2}]
