"""``<model>.test_metrics`` records its CI settings (``ci_level``, ``n_boot``).

The study reads a recorded level before the parameters (``study.findings.
training_ci_settings``), but training did not record it: after ``kedro run --params
training.ci_level=0.9`` a later study run with ``training.ci_level`` back at 0.95 and
training skipped checked the 90 % AUROC CIs as 95 % ones and put them in a 95 % table.

Its training record held ``precision`` and ``device`` as written (``auto``), not what
training used (bf16 on one CPU, fp32 on another); it now holds the resolved values.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from kedro_datasets.json import JSONDataset
from sklearn.metrics import roc_auc_score

from cxr_spurious.errors import ContractError, ParameterError
from cxr_spurious.pipelines.study import nodes as study
from cxr_spurious.pipelines.training.nodes import evaluate_test_metrics, resolve_config
from cxr_spurious.stats.bootstrap import bootstrap_indices
from cxr_spurious.training import device as device_module
from cxr_spurious.training import outputs
from cxr_spurious.training.outputs import flat_metrics

TASK = "Pneumothorax"
N_BOOT = 60
VARIANT = {"name": "erm", "supervision": "erm", "architecture": "unet_small"}


def _test_split(n: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    ids = [f"img{i}" for i in range(n)]
    y = (np.arange(n) % 2).astype(float)
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "split": "test",
            TASK: y,
            "tube": (np.arange(n) % 3 == 0).astype(float),
        }
    )
    preds = pd.DataFrame({"image_id": ids, f"p_{TASK}": 0.5 * y + 0.5 * np.linspace(0, 1, n)})
    return preds, manifest


def _metrics(tmp_path, level: float, **training) -> dict:
    """``erm.test_metrics`` as training writes it at ``level``, through its JSON file."""
    preds, manifest = _test_split()
    config = resolve_config(
        {
            "tasks": [TASK],
            "n_boot": N_BOOT,
            "ci_level": level,
            "variants": {"erm": VARIANT},
            **training,
        },
        VARIANT,
    )
    dataset = JSONDataset(filepath=str(tmp_path / "test_metrics.json"))
    dataset.save(evaluate_test_metrics(preds, manifest, config))
    return dataset.load()


def test_test_metrics_record_the_level_and_replicates_of_their_cis(tmp_path) -> None:
    metrics = _metrics(tmp_path, 0.9)
    assert metrics["ci_level"] == 0.9 and metrics["n_boot"] == N_BOOT
    # the recorded level is the CI's: by hand, the patient bootstrap's 5th / 95th percentiles
    preds, manifest = _test_split()
    y, p = manifest[TASK].to_numpy(), preds[f"p_{TASK}"].to_numpy()
    reps = [
        roc_auc_score(y[i], p[i])
        for i in bootstrap_indices(len(y), N_BOOT, 0, manifest["patient_id"].to_numpy())
    ]
    assert metrics[TASK]["auroc_lo"] == pytest.approx(np.quantile(reps, 0.05))
    assert metrics[TASK]["auroc_hi"] == pytest.approx(np.quantile(reps, 0.95))
    # settings, not findings: not logged as MLflow metrics
    flat = flat_metrics(metrics)
    assert f"test_{TASK}_auroc_lo" in flat
    assert not [k for k in flat if "ci_level" in k or "n_boot" in k or "training_config" in k]


def _summarise(metrics: dict, ci_level: float) -> dict:
    manifest = _test_split()[1]
    per_cxr = pd.DataFrame(columns=["image_id", "task", "model", "method", "iou_tp"])
    return study.summarise_findings(
        metrics,
        pd.DataFrame(columns=["image_id", "render", f"p_{TASK}"]),
        manifest,
        per_cxr,
        pd.DataFrame(),
        VARIANT,
        TASK,
        n_boot=20,
        seed=0,
        ci_level=ci_level,
        training_ci_level=0.95,  # the parameter today; training (at 0.9) was skipped
        training_n_boot=1000,
    )


def test_the_study_sees_the_recorded_level_when_training_was_skipped(tmp_path) -> None:
    metrics = _metrics(tmp_path, 0.9)
    with pytest.raises(ParameterError, match=r"erm\.test_metrics.*0\.9") as err:
        _summarise(metrics, 0.95)
    assert err.value.key == "study.ci_level"
    row = _summarise(metrics, 0.9)
    assert (row["ci_level"], row["test_n_boot"]) == (0.9, N_BOOT)


@pytest.mark.parametrize(
    ("cuda", "native_bf16", "written", "recorded"),
    [
        (False, True, {}, ("bf16", "cpu")),  # auto on an AMX CPU
        (False, False, {}, ("fp32", "cpu")),  # auto on an AVX2 CPU
        (True, False, {}, ("bf16", "cuda")),  # auto on a GPU
        (True, False, {"device": "cuda:0", "precision": "fp32"}, ("fp32", "cuda")),
        (True, True, {"device": "cpu"}, ("bf16", "cpu")),
    ],
)
def test_test_metrics_record_the_precision_and_device_training_resolved_to(
    tmp_path, monkeypatch: pytest.MonkeyPatch, cuda, native_bf16, written, recorded
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native_bf16)
    metrics = _metrics(tmp_path, 0.95, **written)
    config = metrics["training_config"]
    assert (config["precision"], config["device"]) == recorded
    blob = json.dumps(config, sort_keys=True).encode()
    assert metrics["training_config_digest"] == hashlib.sha256(blob).hexdigest()


def _metrics_of(model: dict | None, **training) -> dict:
    preds, manifest = _test_split()
    config = resolve_config(
        {"tasks": [TASK], "n_boot": N_BOOT, "variants": {"erm": VARIANT}, **training}, VARIANT
    )
    return evaluate_test_metrics(preds, manifest, config, model)


def test_the_record_holds_how_the_model_trained_not_how_this_machine_resolves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``kedro run --from-nodes evaluate_test_metrics`` on a CPU for a model trained on a GPU
    under two DDP processes: the record said fp32 / cpu (resolved where it ran)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    model = {
        "variant": "erm",
        "trained_as": {"precision": "bf16", "device": "cuda", "processes": 2},
    }
    config = _metrics_of(model)["training_config"]
    assert (config["precision"], config["device"], config["processes"]) == ("bf16", "cuda", 2)
    # one process is not recorded (records of single-process runs keep their digest)
    single = _metrics_of({"variant": "erm", "trained_as": {"precision": "bf16", "device": "cpu"}})
    assert "processes" not in single["training_config"]
    assert single["training_config"]["precision"] == "bf16"


def test_a_model_file_without_the_record_gets_this_machine_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    with caplog.at_level("WARNING"):
        config = _metrics_of({"variant": "erm", "state_dict": {}})["training_config"]
    assert (config["precision"], config["device"]) == ("fp32", "cpu")
    assert "does not record the precision" in caplog.text and "precision=fp32" in caplog.text
    caplog.clear()
    with pytest.raises(ContractError, match="trained_as"):
        _metrics_of({"variant": "erm", "trained_as": "bf16"})


def test_resolution_inside_a_process_group_counts_its_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the comparison (and the sweep's hash) expect under ``torchrun``: N processes."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(outputs, "process_group", lambda: (1, 2))
    assert outputs.resolved_precision_and_device({}) == {
        "precision": "fp32",
        "device": "cpu",
        "processes": 2,
    }
    monkeypatch.setattr(outputs, "process_group", lambda: (0, 1))
    assert outputs.resolved_precision_and_device({}) == {"precision": "fp32", "device": "cpu"}


def test_test_metrics_record_the_model_artifacts_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    trained = {
        "variant": "erm",
        "fingerprint": "a" * 64,
        "trained_as": {"precision": "fp32", "device": "cpu"},
    }
    assert _metrics_of(trained)["model_fingerprint"] == "a" * 64
    older = {"variant": "erm", "trained_as": {"precision": "fp32", "device": "cpu"}}
    assert "model_fingerprint" not in _metrics_of(older)
