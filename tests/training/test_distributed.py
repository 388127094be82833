"""DDP on CPU (gloo, 2 processes) matches a single-process run with the same global batch.

What differs: BatchNorm batch statistics are per process (4 images instead of 8), so the
weights agree to a tolerance, not bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.training.training_tiny_data import tiny_config

from cxr_spurious.models import build_model
from cxr_spurious.training.config import model_config
from cxr_spurious.training.data import build_training_table
from cxr_spurious.training.device import resolve_device
from cxr_spurious.training.distributed import parse_params, spawn_fit
from cxr_spurious.training.engine import fit, init_model
from cxr_spurious.training.outputs import predict_images


def test_parse_params_like_kedro() -> None:
    assert parse_params("training.epochs=3,training.method=seg,training.resume=true") == {
        "training": {"epochs": 3, "method": "seg", "resume": True}
    }


@pytest.mark.integration
def test_ddp_two_cpu_processes_match_one_process(tiny) -> None:
    manifest, cache = tiny
    cfg = tiny_config(method="seg", epochs=2, batch_size=8, lr=0.001)
    table = build_training_table(manifest, cache, cfg)
    single = fit(
        table[table["split"] == "train"].reset_index(drop=True),
        table[table["split"] == "val"].reset_index(drop=True),
        cache,
        cfg,
        resolve_device("cpu"),
    )
    ddp = spawn_fit(table, cache, cfg, world=2)
    assert ddp.history["steps"].tolist() == single.history["steps"].tolist() == [2, 2]
    np.testing.assert_allclose(ddp.history["train_loss"], single.history["train_loss"], rtol=0.05)
    probs = []
    for result in (single, ddp):
        model = build_model(model_config(cfg))
        model.load_state_dict(result.state_dict)
        probs.append(predict_images(model.eval(), manifest, cache, cfg, resolve_device("cpu"))[0])
    assert np.abs(probs[0] - probs[1]).max() < 0.05
    conv = "enc.0.0.weight"
    rel = (ddp.state_dict[conv] - single.state_dict[conv]).norm() / single.state_dict[conv].norm()
    assert float(rel) < 0.05
    assert not torch.equal(ddp.state_dict[conv], init_model(cfg).state_dict()[conv])  # it trained
