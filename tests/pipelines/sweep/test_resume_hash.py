"""What the sweep's resume hash covers (``plan_cell``).

Before, it hashed all of ``sweep.ingestion``, so the two keys no sweep node reads
(``report_attributes``, ``examples``) retrained every cell when edited; and it hashed
``training.precision: auto`` as written, with no device and no code digest, so a sweep
resumed on a machine that resolves ``auto`` to another precision (bf16 / fp32), on another
kind of device, or after a code change reused rows computed otherwise.
"""

from __future__ import annotations

import copy
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from tests.import_closure import project_import_closure

from cxr_spurious.errors import ParameterError
from cxr_spurious.hooks import base_parameters, runtime_param_names, shipped_parameters
from cxr_spurious.parameter_schema import check_parameter_keys, parameter_schema
from cxr_spurious.pipelines.ingestion.pipeline import create_pipeline as create_ingestion
from cxr_spurious.pipelines.sweep import nodes
from cxr_spurious.pipelines.sweep.pipeline import create_data_pipeline, sweep_cells
from cxr_spurious.pipelines.training.nodes import resolve_config
from cxr_spurious.settings import CONFIG_LOADER_ARGS, ProjectConfigLoader
from cxr_spurious.training import device as device_module
from cxr_spurious.training.checkpoints import RESULT_MODULES
from cxr_spurious.training.device import precision_name, setup_for

CONF = Path(__file__).resolve().parents[3] / "conf"
PARAMS = base_parameters()
CELL = sweep_cells(PARAMS["sweep"])[0]


def _plan(
    previous: dict[str, Any] | None = None,
    sweep: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return nodes.plan_cell(
        previous,
        PARAMS["training"] if training is None else training,
        PARAMS["sweep"] if sweep is None else sweep,
        cell=CELL,
    )


def _machine(monkeypatch: pytest.MonkeyPatch, *, cuda: bool, native_bf16: bool) -> None:
    """What ``device: auto`` / ``precision: auto`` find on this (pretend) machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native_bf16)


# --- keys no sweep node reads --------------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [("report_attributes", ["sex"]), ("examples", {"n": 8})])
def test_an_unread_ingestion_key_keeps_every_row(key: str, value: Any) -> None:
    first = _plan()
    sweep = copy.deepcopy(PARAMS["sweep"])
    sweep["ingestion"][key] = value
    again = _plan({"config_hash": first["config_hash"]}, sweep)
    assert again["config_hash"] == first["config_hash"] and again["skip"]
    # a key the sweep's data does read still retrains (the test can fail)
    sweep["ingestion"]["cache"] = {"size": 32}
    assert not _plan({"config_hash": first["config_hash"]}, sweep)["skip"]


def _ingestion_keys(params: set[str], prefix: str) -> set[str]:
    """Top-level ``ingestion`` keys named by ``params:<prefix>.<key>[...]`` inputs."""
    return {p[len(prefix) + 1 :].split(".")[0] for p in params if p.startswith(f"{prefix}.")}


def test_the_unread_keys_are_those_of_the_nodes_the_sweep_leaves_out() -> None:
    """Derived from the pipelines: the ingestion keys that only nodes outside the sweep's
    data pipeline (the report and example figure) name."""
    every = {i for n in create_ingestion().nodes for i in n.inputs if i.startswith("params:")}
    data = {i for n in create_data_pipeline().nodes for i in n.inputs if i.startswith("params:")}
    read_by_ingestion = _ingestion_keys(every, "params:ingestion")
    read_by_sweep = _ingestion_keys(data, "params:sweep.ingestion")
    assert read_by_ingestion - read_by_sweep == set(nodes.UNREAD_INGESTION_KEYS)
    assert not set(nodes.UNREAD_INGESTION_KEYS) & set(PARAMS["sweep"]["ingestion"])


def test_an_unread_key_is_refused_as_unknown() -> None:
    runtime = OmegaConf.to_container(OmegaConf.from_dotlist(["sweep.ingestion.examples.n=8"]))
    loader = ProjectConfigLoader(
        conf_source=str(CONF), env=None, runtime_params=runtime, **CONFIG_LOADER_ARGS
    )
    schema = parameter_schema(shipped_parameters(CONF), runtime_param_names(CONF))
    with pytest.raises(ParameterError) as err:
        check_parameter_keys(dict(loader["parameters"]), schema)
    assert err.value.key == "sweep.ingestion.examples"


# --- the resolved precision and device -------------------------------------------------------


def _trained_precision(plan: dict[str, Any]) -> str:
    """The precision the training template's config resolves to (the reference)."""
    sweep = PARAMS["sweep"]
    cfg = resolve_config(PARAMS["training"], sweep["training"], plan)
    return precision_name(setup_for(cfg))


def test_precision_auto_is_hashed_as_resolved(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PARAMS["training"].get("precision", "auto") == "auto"
    _machine(monkeypatch, cuda=False, native_bf16=False)  # an AVX2 CPU
    fp32 = _plan()
    assert fp32["precision"] == _trained_precision(fp32) == "fp32"
    _machine(monkeypatch, cuda=False, native_bf16=True)  # an AMX CPU
    resumed = _plan({"config_hash": fp32["config_hash"]})
    assert resumed["precision"] == _trained_precision(resumed) == "bf16"
    assert resumed["config_hash"] != fp32["config_hash"] and not resumed["skip"]


def test_a_forced_precision_resumes_on_either_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    training = {**PARAMS["training"], "precision": "fp32"}
    _machine(monkeypatch, cuda=False, native_bf16=False)
    first = _plan(training=training)
    _machine(monkeypatch, cuda=False, native_bf16=True)
    again = _plan({"config_hash": first["config_hash"]}, training=training)
    assert again["precision"] == "fp32" and again["skip"]


def test_the_device_type_is_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    _machine(monkeypatch, cuda=False, native_bf16=True)
    cpu = _plan()
    _machine(monkeypatch, cuda=True, native_bf16=True)
    gpu = _plan({"config_hash": cpu["config_hash"]})
    assert (cpu["device"], gpu["device"]) == ("cpu", "cuda")
    assert cpu["precision"] == gpu["precision"] == "bf16"  # only the device differs
    assert gpu["config_hash"] != cpu["config_hash"] and not gpu["skip"]


# --- the code ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module",
    [
        "cxr_spurious.training.engine",  # the training code (RESULT_MODULES)
        "cxr_spurious.sweep.metrics",  # the row's metrics
        "cxr_spurious.sweep.confounding",  # which images carry the artefact
        "cxr_spurious.saliency.compute",  # the maps
        "cxr_spurious.phantom.render",  # the sweep's images
    ],
)
def test_a_code_change_makes_the_row_stale(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    first = _plan()
    source = Path(importlib.util.find_spec(module).origin)
    find_spec = importlib.util.find_spec

    def served_from(path: Path) -> None:
        def fake(name: str, *args: Any) -> Any:
            return types.SimpleNamespace(origin=str(path)) if name == module else find_spec(name)

        monkeypatch.setattr(importlib.util, "find_spec", fake)

    same = tmp_path / "same.py"
    same.write_bytes(source.read_bytes())
    served_from(same)
    assert _plan({"config_hash": first["config_hash"]})["skip"]  # the content, not the path

    edited = tmp_path / "edited.py"
    edited.write_bytes(source.read_bytes() + b"\n# one more line\n")
    served_from(edited)
    again = _plan({"config_hash": first["config_hash"]})
    assert again["config_hash"] != first["config_hash"] and not again["skip"]


#: The modules whose functions compute a row (``ROW_MODULES``'s rule).
ROW_ROOTS = (
    "cxr_spurious.pipelines.ingestion.nodes",
    "cxr_spurious.sources.adapters.phantom",
    "cxr_spurious.pipelines.training.nodes",
    "cxr_spurious.pipelines.saliency.nodes",
    "cxr_spurious.pipelines.sweep.nodes",
)
#: Pulled in by those imports but decide no number of a row (``ROW_MODULES``'s rule).
NOT_ROW = {
    "cxr_spurious.hooks",
    "cxr_spurious.pipelines._recipe",
    "cxr_spurious.pipelines.ingestion.pipeline",
    "cxr_spurious.pipelines.saliency.pipeline",
    "cxr_spurious.pipelines.sweep.pipeline",
    "cxr_spurious.pipelines.training.pipeline",
    "cxr_spurious.sweep.summary",
    "cxr_spurious.stats.multiplicity",  # adjusts the paired table, after the rows
    "cxr_spurious.sweep.detection",
    "cxr_spurious.sweep.figures",
    "cxr_spurious.sweep.tables",
    "cxr_spurious.report.html",
    "cxr_spurious.phantom.figures",
    "cxr_spurious.localization.figures",
    "cxr_spurious.saliency.overlays",
    "cxr_spurious.sources.report",
    "cxr_spurious.ci_marks",
}


def test_row_modules_are_the_row_code_import_closure() -> None:
    closure = project_import_closure(*ROW_ROOTS)
    assert closure >= NOT_ROW  # every exclusion is still imported (else drop it here)
    assert tuple(sorted(closure - NOT_ROW)) == nodes.ROW_MODULES
    assert set(RESULT_MODULES) <= set(nodes.ROW_MODULES)
