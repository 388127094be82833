"""The report pipeline: its nodes, its place in the default run, its catalog entries."""

from __future__ import annotations

import pandas as pd
import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.project import configure_project
from kedro.io import DataCatalog
from tests.report import synthetic

from cxr_spurious.datasets.optional import OptionalDataset
from cxr_spurious.pipelines.report import nodes
from cxr_spurious.pipelines.report.pipeline import create_pipeline
from cxr_spurious.settings import CONFIG_LOADER_ARGS
from cxr_spurious.variants import STUDY_MODELS

OPTIONAL_SOURCES = {
    "report_headline_table": "headline_table",
    "report_headline_table_seeds": "headline_table_seeds",
    "report_headline_paired_differences": "headline_paired_differences",
    "report_sweep_summary": "sweep_summary",
    "report_shortcut_detection": "shortcut_detection",
    "report_study_findings_written": "study_findings",  # only when its file was written
}


def _catalog_config() -> dict:
    args = {
        k: v for k, v in CONFIG_LOADER_ARGS.items() if k in ("merge_strategy", "config_patterns")
    }
    return OmegaConfigLoader(conf_source="conf", base_env="base", default_run_env="base", **args)[
        "catalog"
    ]


def test_build_report_loads_partitions_and_keeps_only_the_human_benchmark_tables():
    inputs = synthetic.inputs(optional=False)
    loaded: list[str] = []

    def lazy(key, value):
        def load():
            loaded.append(key)
            return value

        return load

    reports = {k: lazy(k, v) for k, v in inputs.human_benchmark.items()}
    reports["erm.gradcam/iou_results_per_cxr"] = lazy("per_cxr", pd.DataFrame({"x": [1]}))
    page = nodes.build_report(
        inputs.dataset_report,
        inputs.example_grid,
        inputs.study_findings,
        inputs.study_findings_figure,
        {k: lazy(k, v) for k, v in inputs.overlays.items()},
        inputs.localization_summary,
        reports,
        inputs.regression_forest_plot,
        inputs.robustness_summary,
        inputs.calibration,
        inputs.fairness_gaps,
        None,
        None,
        None,
        None,
        None,
        title="T & t",
        max_rows=5,
    )
    assert "per_cxr" not in loaded and set(inputs.overlays) <= set(loaded)
    assert "<title>T &amp; t</title>" in page and 'id="comparison"' not in page
    assert page.count('class="note"') >= 2  # cut tables and the omitted sections


def test_stacking_names_each_model():
    one = pd.DataFrame({"task": ["Pneumothorax"], "ece": [0.1]})
    stacked = nodes.stack_calibration(erm=one, seg=one.assign(ece=0.2))
    assert stacked.to_dict("list") == {
        "model": ["erm", "seg"],
        "task": ["Pneumothorax"] * 2,
        "ece": [0.1, 0.2],
    }
    assert list(nodes.stack_fairness_gaps()) == ["model"]


def test_report_is_in_the_default_run_after_every_stage_it_reads():
    from cxr_spurious.pipeline_registry import register_pipelines

    configure_project("cxr_spurious")
    pipelines = register_pipelines()
    default = pipelines["__default__"]
    assert "build_report" in {n.name for n in default.nodes}
    report = create_pipeline()
    free = {i for i in report.inputs() if not i.startswith("params:")}
    produced = default.all_outputs()
    # every input but the optional tables is written by an earlier node of the default run
    assert free - produced == set(OPTIONAL_SOURCES)
    assert {f"{m}.calibration" for m in STUDY_MODELS} <= free
    order = [n.name for n in default.nodes]  # topologically sorted
    writers = {o: n.name for n in default.nodes for o in n.outputs}
    for dataset in free & produced:
        assert order.index(writers[dataset]) < order.index("build_report"), dataset


def test_optional_tables_read_the_files_their_pipelines_write(tmp_path):
    config = _catalog_config()
    for entry, source in OPTIONAL_SOURCES.items():
        assert config[entry]["type"] == "cxr_spurious.datasets.optional.OptionalDataset"
        if source in config:  # the sweep's catalog may name its own files
            inner = config[source].get("dataset", config[source])
            assert config[entry]["dataset"]["filepath"] == inner["filepath"], entry
    # the checks above have something to check
    assert {"headline_table", "headline_table_seeds", "headline_paired_differences"} <= set(config)
    catalog = DataCatalog.from_config(
        {
            "t": {
                **config["report_headline_table"],
                "dataset": {"type": "pandas.CSVDataset", "filepath": str(tmp_path / "h.csv")},
            }
        }
    )
    assert catalog.load("t") is None
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "h.csv", index=False)
    assert catalog.load("t").to_dict("list") == {"a": [1]}


def test_figures_the_report_embeds_load_back():
    config = _catalog_config()
    for name in ("example_grid", "regression_forest_plot"):
        assert config[name]["type"] == "cxr_spurious.datasets.figures.FigureDataset", name
    for name in ("study_findings_figure", "localization_overlays"):
        assert config[name]["dataset"]["type"] == "cxr_spurious.datasets.figures.FigureDataset"


def test_optional_dataset_is_read_only(tmp_path):
    ds = OptionalDataset({"type": "pandas.CSVDataset", "filepath": str(tmp_path / "x.csv")})
    with pytest.raises(Exception, match="read-only"):
        ds.save(pd.DataFrame())
    with pytest.raises(Exception, match="needs a dataset or a config with a 'type'"):
        OptionalDataset({"filepath": "x"})
    with pytest.raises(Exception, match=r"arguments \['path'\] beside a dataset config"):
        OptionalDataset({"type": "pandas.CSVDataset", "filepath": "x"}, path="y")
    # a type name with its arguments beside it (how an environment wraps a base entry)
    named = OptionalDataset("pandas.CSVDataset", filepath=str(tmp_path / "y.csv"))
    assert named.load() is None
    pd.DataFrame({"a": [2]}).to_csv(tmp_path / "y.csv", index=False)
    assert named.load().to_dict("list") == {"a": [2]}
