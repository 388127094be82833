"""`kedro run --pipeline sweep` on a tiny grid in a throwaway project: the three tables,
the MLflow child runs, resuming without retraining, two cells retrained to the same rows
(depth first, `DepthFirstRunner`), two more under `ParallelRunner`,
and a `--params` override of a grid axis.

Tiny settings: a 160-image phantom cached at 32 px, one epoch, 8 saliency maps per model,
2 artefacts x 2 strengths x (erm, seg) x 2 seeds = 16 models (about a minute and a half on
two CPU cores).
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from cxr_spurious.sweep.grid import expand_grid

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("e2e")]

GRID = {
    "artefacts": ["tube_random", "marker_port"],
    "strengths": {"none": [0.5, 0.5], "strong": [0.9, 0.1]},
    "supervisions": ["erm", "seg"],
    "seeds": [0, 1],
}
TINY_SWEEP = """
sweep:
  grid:
    artefacts: [tube_random, marker_port]
    strengths: {none: [0.5, 0.5], strong: [0.9, 0.1]}
    supervisions: [erm, seg]
    seeds: [0, 1]
  ingestion:
    n_jobs: 1
    cache: {size: 32}
    phantom: {n_images: 160, image_size: 64}
  training: {epochs: 1, n_boot: 20, batch_size: 16}
  saliency:
    max_images: 8
    batch_size: 8
    method_options: {ig_steps: 2, smoothgrad_samples: 2, occlusion_window: 8,
                     occlusion_stride: 8}
  metrics: {n_boot: 20}
  detection: {n_boot: 50}
"""
METHODS = ("gradcam", "gradcam++", "integrated_gradients", "occlusion", "smoothgrad", "seg_prob")
TABLES = ("sweep_models", "sweep_summary", "sweep_paired_differences", "shortcut_detection")


def _tables(project: Path) -> dict[str, bytes]:
    return {t: (project / f"data/08_reporting/sweep/{t}.csv").read_bytes() for t in TABLES}


def _trained(log: str) -> int:
    return log.count("selected epoch")


def test_sweep_writes_its_tables_resumes_and_follows_params(kedro_project: Path, run_kedro) -> None:
    (kedro_project / "conf/test/parameters_sweep_tiny.yml").write_text(TINY_SWEEP)
    cells = expand_grid(GRID)
    proc = run_kedro(kedro_project, "run", "--pipeline", "sweep", "--env", "test", timeout=900)
    assert "Pipeline execution completed successfully" in proc.log
    assert "is interrupted" not in proc.log
    assert _trained(proc.log) == len(cells) == 16

    reports = kedro_project / "data/08_reporting/sweep"
    models = pd.read_csv(reports / "sweep_models.csv")
    assert len(models) == 16 and sorted(models["namespace"]) == sorted(c.namespace for c in cells)
    assert (
        models.groupby(["artefact", "strength", "supervision"])["seed"]
        .apply(set)
        .map(lambda s: s == {0, 1})
        .all()
    )
    for metric in (
        "auroc",
        "robust_auroc",
        "artefact_reliance",
        "artefact_rise",
        "lesion_reliance",
        *(f"{m}_artefact_mass" for m in METHODS),
        *(f"{m}_miou" for m in METHODS),
        "gradcam_hit_rate",
        "gradcam_artefact_auroc",
    ):
        assert {metric, f"{metric}_lo", f"{metric}_hi"} <= set(models.columns), metric
    assert models["auroc"].between(0, 1).all() and models["config_hash"].str.len().eq(64).all()
    assert models["seg_prob_miou"].notna().all()  # erm and seg share the dense unet_small
    # internal check of issue 17: without confounding, erm's mean reliance is near zero
    unconfounded = models[(models["strength"] == "none") & (models["supervision"] == "erm")]
    assert len(unconfounded) == 4
    assert (unconfounded.groupby("artefact")["artefact_reliance"].mean().abs() < 0.05).all()

    summary = pd.read_csv(reports / "sweep_summary.csv")
    assert len(summary) == 8 and (summary["n_seeds"] == 2).all()
    assert (summary["ci_covers"] == "seeds").all()
    assert {"robust_auroc_lo", "robust_auroc_hi", "artefact_reliance_lo"} <= set(summary.columns)
    paired = pd.read_csv(reports / "sweep_paired_differences.csv")
    assert set(paired["pair"]) == {"seg - erm"} and (paired["n_pairs"] == 2).all()
    detection = pd.read_csv(reports / "shortcut_detection.csv")
    assert set(detection["method"]) == set(METHODS)
    assert set(detection["artefact"]) == {"tube_random", "marker_port", "all"}
    assert {"detection_auroc_lo", "spearman_hi", "false_flag_rate_lo"} <= set(detection.columns)
    for figure in ("strength_curves.png", "detection.png"):
        assert (reports / figure).stat().st_size > 0, figure
    markdown = (reports / "sweep_tables.md").read_text()
    assert markdown.startswith("# Shortcut sweep: findings\n\n8 cells, 2 seed(s) each")
    assert "## Where `erm` starts to rely on the artefact" in markdown
    assert markdown.count("| Grad-CAM |") == 2  # the all-artefact and per-artefact tables

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.data.tags["variant"] for r in children) == sorted(c.namespace for c in cells)
    assert len({r.data.tags["mlflow.parentRunId"] for r in children}) == 1  # one per sweep
    assert {"artefact", "strength", "seed", "config_hash"} <= set(children[0].data.tags)
    parent = client.get_run(children[0].data.tags["mlflow.parentRunId"])
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"strength_curves.png", "detection.png", "sweep_models.csv", "sweep_tables.md"} <= logged

    # resume: the same grid again trains nothing and gives identical tables
    first = _tables(kedro_project)
    again = run_kedro(kedro_project, "run", "--pipeline", "sweep", "--env", "test")
    assert _trained(again.log) == 0 and again.log.count("exists (resume)") == 16
    assert _tables(kedro_project) == first

    # two cells' rows removed: only those cells are retrained, to the same rows; under
    # DepthFirstRunner the first cell is summarised before the second one trains
    one, two = cells[5].namespace, cells[6].namespace
    for ns in (one, two):
        (kedro_project / f"data/07_model_output/sweep/{ns}/row.json").unlink()
    redo = run_kedro(
        kedro_project,
        "run",
        "--pipeline",
        "sweep",
        "--env",
        "test",
        "--runner",
        "cxr_spurious.depth_first.DepthFirstRunner",
    )
    assert _trained(redo.log) == 2 and f"[{one}] selected epoch" in redo.log
    done = re.findall(r"Node (\S+) done in", redo.log)  # the log is whitespace-normalised
    cell_nodes = [n for n in done if n.startswith((f"{one}.", f"{two}."))]
    assert cell_nodes.index(f"{one}.summarise_cell") < cell_nodes.index(f"{two}.train_model"), (
        cell_nodes
    )
    assert _tables(kedro_project) == first

    # --params overriding an axis changes the set of namespaces (here: seed 0 only)
    fewer = run_kedro(
        kedro_project,
        "run",
        "--pipeline",
        "sweep",
        "--env",
        "test",
        "--params",
        "sweep.grid.seeds=[0]",
    )
    assert _trained(fewer.log) == 0
    seed0 = pd.read_csv(reports / "sweep_models.csv")
    assert sorted(seed0["namespace"]) == sorted(c.namespace for c in cells if c.seed == 0)
    assert not [c for c in cells if c.seed == 1 and f"{c.namespace}.plan_cell" in fewer.log]

    # ParallelRunner: two cells' rows removed, retrained in worker processes; their MLflow
    # child runs land under that session's parent run, and the tables are as before
    redo_cells = [cells[2], cells[9]]
    for cell in redo_cells:
        (kedro_project / f"data/07_model_output/sweep/{cell.namespace}/row.json").unlink()
    parallel = run_kedro(
        kedro_project, "run", "--pipeline", "sweep", "--env", "test", "--runner", "ParallelRunner"
    )
    assert "Pipeline execution completed successfully" in parallel.log
    assert _trained(parallel.log) == 2
    assert _tables(kedro_project) == first
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    redone = [r for r in runs if r.info.run_id not in {c.info.run_id for c in children}]
    redone_children = [r for r in redone if r.data.tags.get("mlflow.parentRunId")]
    assert sorted(r.data.tags["variant"] for r in redone_children) == sorted(
        c.namespace for c in redo_cells + [cells[5], cells[6]]
    )  # the ParallelRunner's two, and the two retrained depth first above
    newest_parent = max(
        (r for r in redone if not r.data.tags.get("mlflow.parentRunId")),
        key=lambda r: r.info.start_time,
    )
    in_parallel = [r for r in redone_children if r.data.tags["variant"] not in (one, two)]
    assert {r.data.tags["mlflow.parentRunId"] for r in in_parallel} == {newest_parent.info.run_id}
    logged = {a.path for a in client.list_artifacts(newest_parent.info.run_id)}
    assert {"sweep_models.csv", "strength_curves.png"} <= logged  # saved in a worker
    # the pipeline's parameters reach the parent run from the session's process, though
    # every node ran in a worker (BatchedParamsMlflowHook.before_pipeline_run)
    params = newest_parent.data.params
    assert params.get("sweep.task") == "Pneumothorax", sorted(params)[:20]
    assert params.get("sweep.detection.flag_k") == "2.0"
