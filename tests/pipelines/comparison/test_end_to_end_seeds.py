"""`kedro run` then `kedro run --pipeline comparison` over three seeds in a throwaway project:
every variant trains once per seed in its own namespace, through the real catalog, and the
three across-seed tables agree with the per-seed rows.

Tiny settings: a 400-image phantom at 32 px, one epoch per model, groups by sex (site C has
too few validation rows at this size for DFR's groups); about 4 minutes on two CPU cores.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cxr_spurious.pipelines.comparison.nodes import HEADLINE_METRICS
from cxr_spurious.pipelines.comparison.pipeline import VARIANTS, seed_namespace

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("e2e")]

TINY_COMPARISON = """
comparison:
  seeds: [0, 1, 2]
  debiasing:
    group_by: [sex]
  training_variants:
"""


def test_comparison_over_three_seeds_end_to_end(kedro_project: Path, run_kedro) -> None:
    tiny = kedro_project / "conf/test/parameters_tiny.yml"
    text = tiny.read_text().replace("n_images: 96", "n_images: 400")
    trained = [v for v in VARIANTS if v.startswith("cmp_") and v != "cmp_dfr"]
    text += TINY_COMPARISON + "".join(f"    {v}: {{epochs: 1}}\n" for v in trained)
    tiny.write_text(text)
    run_kedro(kedro_project, "run", "--env", "test", timeout=900)
    proc = run_kedro(
        kedro_project, "run", "--pipeline", "comparison", "--env", "test", timeout=1200
    )
    assert "Pipeline execution completed successfully" in proc.log

    # every variant of seeds 1 and 2 trained in its own namespace (the study's models too)
    models = kedro_project / "data/06_models"
    for seed in (1, 2):
        for variant in (*trained, "erm", "box", "seg"):
            ns = seed_namespace(variant, seed, 0)
            assert any((models / ns).iterdir()), f"no model saved for {ns}"
    assert not (models / "cmp_erm").exists()  # seed 0 reuses the study's erm

    reports = kedro_project / "data/08_reporting/comparison"
    per_seed = pd.read_csv(reports / "headline_table_per_seed.csv")
    headline = pd.read_csv(reports / "headline_table.csv")
    assert sorted(per_seed["seed"].unique()) == [0, 1, 2]
    assert (
        per_seed.groupby("seed")["variant"].apply(sorted).map(lambda v: v == sorted(VARIANTS)).all()
    )
    # seed 0's rows are the single-seed headline table
    seed0 = per_seed[per_seed["seed"] == 0].drop(columns="seed").reset_index(drop=True)
    pd.testing.assert_frame_equal(seed0[headline.columns], headline, check_dtype=False)
    # seeds differ: training and resampling really used the seed
    erm = per_seed[per_seed["variant"] == "erm"].set_index("seed")["auroc"]
    assert erm.nunique() == 3, erm

    seeds = pd.read_csv(reports / "headline_table_seeds.csv")
    assert len(seeds) == len(VARIANTS) and (seeds["n_seeds"] == 3).all()
    assert (seeds["seeds"] == "0,1,2").all()
    for _, row in seeds.iterrows():  # the interval is scipy's t interval over the 3 seeds
        values = per_seed.loc[per_seed["variant"] == row["variant"], "auroc"].to_numpy()
        lo, hi = stats.t.interval(0.95, 2, loc=values.mean(), scale=stats.sem(values))
        assert np.isclose(row["auroc"], values.mean())
        assert np.isclose(row["auroc_lo"], lo) and np.isclose(row["auroc_hi"], hi)
    assert "across 3 training seeds" in seeds["ci_note"].iloc[0]

    paired = pd.read_csv(reports / "headline_paired_differences.csv")
    assert sorted(paired["variant"]) == sorted(v for v in VARIANTS if v != "erm")
    assert (paired["reference"] == "erm").all() and (paired["n_pairs"] == 3).all()
    jtt = paired.set_index("variant").loc["cmp_jtt"]
    diff = (
        per_seed[per_seed["variant"] == "cmp_jtt"].set_index("seed")["auroc"]
        - per_seed[per_seed["variant"] == "erm"].set_index("seed")["auroc"]
    )
    assert np.isclose(jtt["auroc"], diff.mean())
    assert np.isclose(jtt["auroc_p"], stats.ttest_1samp(diff, 0).pvalue)
    assert {f"{m}_p" for m in HEADLINE_METRICS} <= set(paired.columns)

    # one MLflow child run per trained variant and seed: "<namespace>-<supervision>-...-seed<s>"
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{kedro_project / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    names = {r.info.run_name for r in runs}
    for seed in (1, 2):
        for variant in (*trained, "erm", "box", "seg"):
            ns = seed_namespace(variant, seed, 0)
            assert [n for n in names if n.startswith(f"{ns}-") and n.endswith(f"-seed{seed}")], (
                ns,
                sorted(names),
            )
