"""TorchModelDataset: atomic torch.save, weights_only load, architecture checks.

Kedro wraps the project's DataFormatError messages in DatasetError.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def test_another_variants_model_file_is_refused(tmp_path: Path) -> None:
    """`cp seg/model.pt erm/model.pt` must not make erm's saliency silently use seg (#15.5)."""
    seg = tmp_path / "seg" / "model.pt"
    state = build_model(CONFIG).state_dict()
    artifact = {"state_dict": state, "config": CONFIG, "variant": "seg", "fingerprint": "ab" * 32}
    TorchModelDataset(filepath=str(seg), variant="seg").save(artifact)
    assert TorchModelDataset(filepath=str(seg), variant="seg").load()["variant"] == "seg"
    erm = tmp_path / "erm" / "model.pt"
    erm.parent.mkdir()
    erm.write_bytes(seg.read_bytes())
    with pytest.raises(
        DatasetError,
        match=r"erm/model\.pt: holds the model of variant 'seg' .*abababababab.*not of 'erm'",
    ):
        TorchModelDataset(filepath=str(erm), variant="erm").load()


def test_model_without_a_variant_record_is_refused_where_one_is_expected(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    TorchModelDataset(filepath=str(path)).save(
        {"state_dict": build_model(CONFIG).state_dict(), "config": CONFIG}
    )
    with pytest.raises(
        DatasetError, match=r"does not record which variant .*expected 'erm'.*retrain"
    ):
        TorchModelDataset(filepath=str(path), variant="erm").load()
    assert TorchModelDataset(filepath=str(path)).load()["config"] == CONFIG  # no check asked for


def test_saving_another_variants_model_is_refused(tmp_path: Path) -> None:
    artifact = {"state_dict": build_model(CONFIG).state_dict(), "config": CONFIG, "variant": "seg"}
    with pytest.raises(DatasetError, match="variant 'seg' as 'erm'"):
        TorchModelDataset(filepath=str(tmp_path / "m.pt"), variant="erm").save(artifact)
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize(
    ("config", "where", "kind"),
    [
        ({"lr": np.float64(0.1)}, r"config\['lr'\]", "numpy.float64"),
        ({"root": Path("/data")}, r"config\['root'\]", r"pathlib\.\w*Path"),
        (
            {"opt": {"betas": [0.9, np.float32(0.99)]}},
            r"config\['opt'\]\['betas'\]\[1\]",
            "float32",
        ),
    ],
)
def test_save_refuses_what_load_would_refuse_and_writes_nothing(
    tmp_path: Path, config: dict, where: str, kind: str
) -> None:
    """A numpy scalar or a Path in the config was saved and only refused by the next run's
    ``torch.load(weights_only=True)``; the old file (and no temporary one) stays."""
    path = tmp_path / "m" / "model.pt"
    good = {"state_dict": build_model(CONFIG).state_dict(), "config": CONFIG}
    TorchModelDataset(filepath=str(path)).save(good)
    before = path.read_bytes()
    bad = {**good, "config": {**CONFIG, **config}}
    with pytest.raises(DatasetError, match=rf"model\.pt: {where} holds a \S*{kind}.*weights_only"):
        TorchModelDataset(filepath=str(path)).save(bad)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]
    assert path.read_bytes() == before
    remote = TorchModelDataset(filepath="memory:///refused/model.pt")
    with pytest.raises(DatasetError, match=rf"memory:///refused/model\.pt: {where}"):
        remote.save(bad)
    assert not remote.exists()
