"""TorchModelDataset: atomic torch.save, weights_only load, architecture checks.

Kedro wraps the project's DataFormatError messages in DatasetError.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kedro.io.core import DatasetError

from cxr_spurious.datasets.torch_model import TorchModelDataset
from cxr_spurious.models import build_model, model_from_artifact

CONFIG = {"architecture": "unet_small", "tasks": ["Pneumothorax"], "base_channels": 4}


def test_round_trip(tmp_path: Path) -> None:
    model = build_model(CONFIG)
    ds = TorchModelDataset(filepath=str(tmp_path / "m" / "model.pt"))
    assert not ds.exists()
    ds.save({"state_dict": model.state_dict(), "config": CONFIG})
    assert ds.exists() and [p.name for p in (tmp_path / "m").iterdir()] == ["model.pt"]
    loaded = ds.load()
    assert loaded["config"] == CONFIG
    rebuilt = model_from_artifact(loaded)
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model.eval()(x))


def test_load_refuses_pickled_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "config": {}, "hook": print}, path)
    with pytest.raises(DatasetError, match=r"evil\.pt.*weights_only=True"):
        TorchModelDataset(filepath=str(path)).load()


def test_checkpoint_from_another_architecture(tmp_path: Path) -> None:
    path = str(tmp_path / "model.pt")
    TorchModelDataset(filepath=path).save(
        {"state_dict": build_model(CONFIG).state_dict(), "config": CONFIG}
    )
    with pytest.raises(DatasetError, match=r"model\.pt.*'unet_small'.*'resnet18'"):
        TorchModelDataset(filepath=path, architecture="resnet18").load()


def test_save_rejects_non_artifacts(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="state_dict"):
        TorchModelDataset(filepath=str(tmp_path / "m.pt")).save({"weights": 1})
    assert not (tmp_path / "m.pt").exists()
