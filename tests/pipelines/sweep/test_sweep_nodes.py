"""The sweep's nodes on a small in-memory cache, and its wiring (one namespace per cell)."""

from __future__ import annotations

import dataclasses
import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests
from tests.sweep.sweep_rows import cell_rows

from cxr_spurious.cli import user_error
from cxr_spurious.datasets.skippable import SKIPPED, SkippableDataset, is_skipped
from cxr_spurious.errors import ContractError, ParameterError, StaleOutputError
from cxr_spurious.hooks import SweepParamsHook, stashed_sweep_params
from cxr_spurious.pipelines.sweep import nodes
from cxr_spurious.pipelines.sweep import pipeline as sweep_pipeline
from cxr_spurious.pipelines.training.nodes import resolve_config
from cxr_spurious.sources.cache import ImageCache
from cxr_spurious.sweep.grid import Cell, expand_grid

SIZE = 8
TASK = "Pneumothorax"
CELL = Cell("marker_port", "strong", 0.9, 0.1, "seg", 1.0, 3)
OTHER_CELL = Cell("marker_port", "none", 0.5, 0.5, "seg", 1.0, 3)
TRAINING = {"tasks": [TASK], "epochs": 2, "only": None, "variants": {"erm": {}}}
SWEEP = {
    "task": TASK,
    "test_p": 0.5,
    "training": {"name": "sweep", "supervision": "erm", "architecture": "unet_small"},
    "metrics": {"n_boot": 10},
}


def _world(n: int = 24) -> tuple[pd.DataFrame, ImageCache]:
    ids = [f"img{i:02d}" for i in range(n)]
    split = np.array(["train", "val", "test"])[np.arange(n) % 3]
    manifest = pd.DataFrame(
        {
            "image_id": ids,
            "patient_id": [f"p{i}" for i in range(n)],
            "split": split,
            TASK: (np.arange(n) // 3) % 2,
        }
    )
    manifest.attrs["tasks"] = [TASK]
    images = np.full((n, SIZE, SIZE), 10, np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:2, :2] = 1
    with_marker = images.copy()
    with_marker[:, :2, :2] = 250
    cache = ImageCache(
        image_ids=ids,
        tasks=[TASK],
        objects=[],
        size=SIZE,
        images=images,
        masks=np.zeros((n, 1, SIZE, SIZE), np.uint8),
        boxes=np.zeros((n, 1, SIZE, SIZE), np.uint8),
        spurious=np.zeros((n, 0, SIZE, SIZE), np.uint8),
        has_mask=np.ones((n, 1), bool),
        renders={"with_marker_port": with_marker},
        render_ids={"with_marker_port": ids},
        render_masks={"with_marker_port": np.repeat(mask[None], n, axis=0)},
        fingerprint="f0",
    )
    return manifest, cache


def test_plan_cell_hashes_the_configuration_and_resumes_only_on_the_same_hash() -> None:
    first = nodes.plan_cell(None, TRAINING, SWEEP, cell=CELL)
    assert not first["skip"] and first["variant"] == {
        "name": CELL.namespace,
        "supervision": "seg",
        "location_fraction": 1.0,
        "seed": 3,
    }
    again = nodes.plan_cell({"config_hash": first["config_hash"]}, TRAINING, SWEEP, cell=CELL)
    assert again["skip"] and "resume" in again["reason"]
    changed = nodes.plan_cell(
        {"config_hash": first["config_hash"]}, {**TRAINING, "epochs": 3}, SWEEP, cell=CELL
    )
    assert not changed["skip"] and changed["config_hash"] != first["config_hash"]
    other_metrics = {**SWEEP, "metrics": {"n_boot": 11}}
    assert (
        nodes.plan_cell({}, TRAINING, other_metrics, cell=CELL)["config_hash"]
        != first["config_hash"]
    )
    # the gate and the variant list do not change what a cell trains
    gated = nodes.plan_cell({}, {**TRAINING, "only": "seg", "variants": {}}, SWEEP, cell=CELL)
    assert gated["config_hash"] == first["config_hash"]
    # sweep.test_seed: null keeps the hash of a configuration without the key (rows of
    # earlier runs still resume); a set test seed changes what the cell measures
    unset = nodes.plan_cell({}, TRAINING, {**SWEEP, "test_seed": None}, cell=CELL)
    assert unset["config_hash"] == first["config_hash"]
    fixed = {
        s: nodes.plan_cell({}, TRAINING, {**SWEEP, "test_seed": s}, cell=CELL)["config_hash"]
        for s in (0, 1)
    }
    assert len({first["config_hash"], *fixed.values()}) == 3


def test_the_plan_reaches_the_training_config() -> None:
    plan = nodes.plan_cell({}, TRAINING, SWEEP, cell=CELL)
    cfg = resolve_config(TRAINING, SWEEP["training"], plan)
    assert (cfg["variant"], cfg["supervision"], cfg["seed"]) == (CELL.namespace, "seg", 3)
    assert cfg["epochs"] == 2 and cfg["skip"] is False
    skipped = resolve_config(TRAINING, SWEEP["training"], {**plan, "skip": True})
    assert skipped["skip"] is True
    # without overrides the study's gate still applies
    assert resolve_config({**TRAINING, "only": "box"}, SWEEP["training"], plan)["skip"] is True


def test_compose_cell_puts_the_render_on_the_chosen_images_only() -> None:
    manifest, cache = _world()
    plan = nodes.plan_cell({}, TRAINING, SWEEP, cell=CELL)
    cell_manifest, test, cell_cache = nodes.compose_cell(manifest, cache, plan, TASK, 0.5)
    assert set(test["split"]) == {"test"} and len(test) == (manifest["split"] == "test").sum()
    carries = cell_manifest["artefact"].to_numpy(dtype=bool)
    assert set(cell_manifest["artefact"]) == {0, 1} and cell_manifest.attrs["tasks"] == [TASK]
    train_pos = (cell_manifest["split"] == "train") & (cell_manifest[TASK] == 1)
    train_neg = (cell_manifest["split"] == "train") & (cell_manifest[TASK] == 0)
    assert carries[train_pos].mean() > carries[train_neg].mean()  # confounded with the label
    assert (cell_cache.images[carries][:, :2, :2] == 250).all()
    assert (cell_cache.images[~carries] == 10).all()
    assert (cell_cache.images[:, 2:, :] == 10).all()  # nothing changes outside the mask
    assert cell_cache.objects == ["marker_port"]
    assert cell_cache.spurious[carries, 0].sum() == 4 * carries.sum()
    assert cell_cache.spurious[~carries].sum() == 0
    assert cell_cache.fingerprint.startswith("f0-") and not cell_cache.renders
    assert (cache.images == 10).all()  # the sweep's cache is untouched
    skipped = nodes.compose_cell(manifest, cache, {**plan, "skip": True}, TASK, 0.5)
    assert all(is_skipped(x) for x in skipped)


def test_run_record_gets_the_cell_and_seed() -> None:
    plan = nodes.plan_cell({}, TRAINING, SWEEP, cell=CELL)
    record = {"run_name": "r", "tags": {"variant": CELL.namespace}, "params": {"lr": 0.1}}
    tagged = nodes.tag_run_record(record, plan)
    assert tagged["tags"]["artefact"] == "marker_port" and tagged["tags"]["seed"] == "3"
    assert tagged["tags"]["config_hash"] == plan["config_hash"]
    assert tagged["params"]["strength"] == "strong" and tagged["params"]["lr"] == 0.1
    assert is_skipped(nodes.tag_run_record(SKIPPED, plan))


def test_collector_leaves_out_cells_without_a_row() -> None:
    plans = [nodes.plan_cell(None, TRAINING, SWEEP, cell=c) for c in (CELL, OTHER_CELL)]
    row = {"namespace": CELL.namespace, "config_hash": plans[0]["config_hash"], "x": 1.0}
    table = nodes.collect_sweep_models(row, SKIPPED, *plans)
    assert list(table["namespace"]) == [CELL.namespace]
    with pytest.raises(ParameterError, match="'training.only': selects none of the sweep's 1 "):
        nodes.collect_sweep_models(SKIPPED, plans[0])
    with pytest.raises(ContractError, match="odd number"):
        nodes.collect_sweep_models(row, *plans)


def test_collector_leaves_out_stale_rows_that_training_only_did_not_retrain(
    tmp_path, caplog
) -> None:
    """Run 1 writes every cell's row; run 2 changes a hashed setting (epochs) and retrains
    only the seg cells (training.only): the erm cell keeps its run-1 row file."""
    erm = dataclasses.replace(CELL, supervision="erm", location_fraction=0.0)
    old = {c: nodes.plan_cell(None, TRAINING, SWEEP, cell=c) for c in (erm, CELL)}
    files = {}
    for cell, plan in old.items():
        files[cell] = SkippableDataset(
            {"type": "json.JSONDataset", "filepath": str(tmp_path / f"{cell.namespace}.json")}
        )
        files[cell].save({"namespace": cell.namespace, "config_hash": plan["config_hash"]})
    rerun = {**TRAINING, "epochs": 8, "only": "seg"}
    new = {c: nodes.plan_cell(files[c].load(), rerun, SWEEP, cell=c) for c in (erm, CELL)}
    assert not new[erm]["skip"]  # the hash changed ...
    assert resolve_config(rerun, SWEEP["training"], new[erm])["skip"]  # ... but not selected
    files[erm] = SkippableDataset(files[erm].wrapped)  # run 2's dataset: nothing saved yet
    files[erm].save(SKIPPED)  # summarise_cell returned SKIPPED: run 1's file stays
    files[CELL] = SkippableDataset(files[CELL].wrapped)
    files[CELL].save({"namespace": CELL.namespace, "config_hash": new[CELL]["config_hash"]})
    rows = [files[c].load() for c in (erm, CELL)]
    assert rows[0]["config_hash"] == old[erm]["config_hash"] != new[erm]["config_hash"]
    with caplog.at_level(logging.WARNING):
        table = nodes.collect_sweep_models(*rows, new[erm], new[CELL])
    assert list(table["namespace"]) == [CELL.namespace]
    assert list(table["config_hash"]) == [new[CELL]["config_hash"]]
    warning = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "stale: configuration changed but the cell was not retrained (training.only)" in warning
    assert erm.namespace in warning and CELL.namespace not in warning
    # every row stale: nothing of the current configuration to tabulate
    with pytest.raises(StaleOutputError, match="1 cell\\(s\\) hold rows of an earlier") as err:
        nodes.collect_sweep_models(rows[0], new[erm])
    assert erm.namespace in str(err.value) and user_error(err.value) is err.value


def test_collector_nodes_name_the_configured_levels() -> None:
    rows = cell_rows(
        {"none": (0.5, 0.5), "strong": (0.9, 0.1)},
        (("erm", 0.0), ("seg", 1.0)),
        lambda conf, sup, seed, _artefact: {
            "artefact_reliance": conf * (sup == "erm") + 0.01 * seed,
            "robust_auroc": 0.8 - 0.01 * seed,
        },
    )
    summary, paired = nodes.summarise_sweep(
        pd.DataFrame(rows), {"ci_level": 0.8, "pairs": [["seg", "erm"]]}
    )
    text = nodes.write_sweep_tables(
        summary,
        paired,
        pd.DataFrame(),
        {"onset_threshold": 0.05, "study_cell": None},
        {"ci_level": 0.8},
        {"ci_level": 0.9},
    )
    assert "[80 % t interval across seeds" in text and "paired 80 % t interval" in text
    assert "90 % bootstrap CI over models" in text and "95" not in text
    strength = nodes.plot_sweep_strength(summary, {"ci_level": 0.8})
    assert "band = 80% CI across seeds" in strength._suptitle.get_text()
    detection = pd.DataFrame(
        {"method": ["gradcam"], "artefact": ["tube_random"], "detection_auroc": [0.7]}
    )
    figure = nodes.plot_sweep_detection(detection, {"ci_level": 0.9})
    assert "(90% bootstrap CI over models)" in figure._suptitle.get_text()


def test_one_namespace_per_cell_and_not_in_the_default_run(monkeypatch) -> None:
    grid = {
        "artefacts": ["tube_random", "faint_texture"],
        "strengths": {"none": [0.5, 0.5]},
        "supervisions": ["erm", "seg"],
        "seeds": [0, 1],
    }
    monkeypatch.setattr(sweep_pipeline, "stashed_sweep_params", lambda: {"grid": grid})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe = sweep_pipeline.create_pipeline()
    assert not [w for w in caught if "is interrupted" in str(w.message)]
    cells = {c.namespace for c in expand_grid(grid)}
    namespaces = {n.namespace for n in pipe.nodes if n.namespace}
    assert namespaces == cells | {"sweep"}
    one = next(iter(cells))
    names = {n.name.rsplit(".", 1)[-1] for n in pipe.nodes if n.namespace == one}
    assert {
        "plan_cell",
        "compose_cell",
        "train_model",
        "compute_heatmaps",
        "predict_renders",
        "summarise_cell",
    } <= names and "predict_counterfactuals" not in names
    assert {"sweep_models", "sweep_summary", "shortcut_detection"} <= pipe.all_outputs()
    collectors = {n.name: n for n in pipe.nodes if not n.namespace}
    inputs = collectors["collect_sweep_models"].inputs  # every row, then every plan
    rows, plans = inputs[: len(cells)], inputs[len(cells) :]
    assert len(inputs) == 2 * len(cells) and {r.rsplit(".", 1)[0] for r in rows} == cells
    assert [r.rsplit(".", 1) for r in rows] == [[p.rsplit(".", 1)[0], "sweep_row"] for p in plans]
    assert all(p.endswith(".plan") for p in plans)
    assert "params:sweep.summary" in collectors["plot_sweep_strength"].inputs
    assert "params:sweep.detection" in collectors["plot_sweep_detection"].inputs
    assert {"params:sweep.summary", "params:sweep.detection"} <= set(
        collectors["write_sweep_tables"].inputs
    )
    from cxr_spurious.pipeline_registry import NOT_IN_DEFAULT

    assert "sweep" in NOT_IN_DEFAULT


def test_the_hook_stashes_the_sweep_parameters_with_overrides() -> None:
    class _Loader(dict):
        pass

    class _Context:
        config_loader = _Loader(parameters={"sweep": {"grid": {"seeds": [7]}}, "other": 1})

    SweepParamsHook().after_context_created(_Context())
    assert stashed_sweep_params() == {"grid": {"seeds": [7]}}
    _Context.config_loader = _Loader(parameters={"other": 1})
    SweepParamsHook().after_context_created(_Context())
    assert stashed_sweep_params() is None
    # without a stash the grid comes from conf/base
    assert sweep_pipeline.sweep_parameters()["grid"]["seeds"]


def test_a_skipped_model_gets_no_heatmaps() -> None:
    from cxr_spurious.pipelines.saliency.nodes import compute_heatmaps

    manifest, cache = _world()
    out = compute_heatmaps(
        SKIPPED, {"name": "sweep"}, cache, manifest, ["gradcam"], None, "test", 4, 0, 4, "cpu", None
    )
    assert is_skipped(out)


def _pair_rows() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        cell_rows(
            {"none": (0.5, 0.5), "medium": (0.7, 0.3), "strong": (0.9, 0.1)},
            (("erm", 0.0), ("seg", 1.0), ("box", 1.0)),
            lambda conf, sup, seed, _artefact: {
                "artefact_reliance": conf * (sup == "erm") + rng.normal(0, 0.05),
                "robust_auroc": 0.8 - 0.2 * conf * (sup == "erm") + rng.normal(0, 0.05),
            },
        )
    )


def test_paired_differences_are_adjusted_per_metric_and_pair_over_the_cells() -> None:
    summary_params = {"ci_level": 0.95, "pairs": [["seg", "erm"], ["box", "erm"]]}
    summary, paired = nodes.summarise_sweep(_pair_rows(), summary_params)
    assert set(paired["pair"]) == {"seg - erm", "box - erm"}
    for metric in ("artefact_reliance", "robust_auroc"):
        for _, family in paired.groupby("pair"):
            assert len(family) == 3  # one test per strength
            expected = multipletests(family[f"{metric}_p"], method="holm")[1]
            np.testing.assert_allclose(family[f"{metric}_p_adj"], expected)
    assert paired["p_adj_note"].iloc[0].startswith("p_adj: Holm (family-wise error) over each")
    text = nodes.write_sweep_tables(
        summary,
        paired,
        pd.DataFrame(),
        {"onset_threshold": 0.05, "study_cell": None},
        {"ci_level": 0.95},
        {"ci_level": 0.95},
    )
    assert "adj.: Holm (family-wise error) over each metric, pair and location_fraction;" in text
    strong = paired[(paired["pair"] == "seg - erm") & (paired["strength"] == "strong")].iloc[0]
    q = strong["artefact_reliance_p_adj"]
    assert f"(adj. {'< 0.001' if q < 0.001 else f'= {q:.3f}'})" in text


def test_the_sweep_multiplicity_parameter_is_read_and_checked() -> None:
    settings = {
        "ci_level": 0.95,
        "pairs": [["seg", "erm"], ["box", "erm"]],
        "multiplicity": {"method": "bonferroni", "family": "table"},
    }
    _, paired = nodes.summarise_sweep(_pair_rows(), settings)
    p = paired[["artefact_reliance_p", "robust_auroc_p"]].to_numpy().ravel()
    adjusted = paired[["artefact_reliance_p_adj", "robust_auroc_p_adj"]].to_numpy().ravel()
    np.testing.assert_allclose(adjusted, np.minimum(1, np.isfinite(p).sum() * p))
    with pytest.raises(ParameterError, match="sweep.summary.multiplicity.method"):
        nodes.summarise_sweep(_pair_rows(), {**settings, "multiplicity": {"method": "x"}})
    with pytest.raises(ParameterError, match=r"sweep.summary.multiplicity.*\['alpha'\]"):
        nodes.summarise_sweep(_pair_rows(), {**settings, "multiplicity": {"alpha": 0.1}})
