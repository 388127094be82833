"""Unknown parameter keys are refused before any node runs (``hooks.ParameterKeysHook``).

Before, a misspelt key (``--params study.nboot=50``; the key is ``study.n_boot``) was
accepted and changed nothing; only ``training``'s top-level keys, ``ingestion.phantom``,
``sweep.grid`` and ``saliency.method_options`` refused unknown keys, and only when their
node ran.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import OmegaConf
from tests.conftest import kedro_env

from cxr_spurious import hooks, settings
from cxr_spurious.errors import ParameterError
from cxr_spurious.hooks import (
    SHIPPED_ENVS,
    ParameterKeysHook,
    runtime_param_names,
    shipped_parameters,
)
from cxr_spurious.parameter_schema import (
    ADAPTER_OPTIONS,
    DELEGATED,
    OPEN,
    OPEN_MAPS,
    check_parameter_keys,
    key_tree,
    parameter_schema,
)
from cxr_spurious.settings import CONFIG_LOADER_ARGS, ProjectConfigLoader

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def _params(*dotlist: str, env: str | None = None, conf: Path = CONF) -> dict[str, Any]:
    """The run's parameters as ``kedro run [--env env] --params a.b=1,...`` merges them."""
    runtime = OmegaConf.to_container(OmegaConf.from_dotlist(list(dotlist)))
    loader = ProjectConfigLoader(
        conf_source=str(conf), env=env, runtime_params=runtime, **CONFIG_LOADER_ARGS
    )
    return dict(loader["parameters"])


def _check(*dotlist: str, env: str | None = None) -> None:
    schema = parameter_schema(shipped_parameters(CONF), runtime_param_names(CONF))
    check_parameter_keys(_params(*dotlist, env=env), schema)


@pytest.mark.parametrize(
    ("override", "key", "suggestion"),
    [
        ("study.nboot=50", "study.nboot", "study.n_boot"),
        ("localization.n_bot=5", "localization.n_bot", "localization.n_boot"),
        ("robustness.nboot=3", "robustness.nboot", "robustness.n_boot"),
        ("saliency.sanity.enable=false", "saliency.sanity.enable", "saliency.sanity.enabled"),
        ("comparison.seed=[0]", "comparison.seed", "comparison.seeds"),
        ("sweep.seeds=[0]", "sweep.seeds", "sweep.grid.seeds"),  # one block down
        ("robustness.strata.reduce=pca", "robustness.strata.reduce", "robustness.strata.reducer"),
        ("robustness.reducer=umap", "robustness.reducer", "robustness.strata.reducer"),
        (
            "comparison.strategies.cmp_upsample.targt=max",
            "comparison.strategies.cmp_upsample.targt",
            "comparison.strategies.cmp_upsample.target",
        ),
        ("report.max_rows=5", "report.max_rows", "report.max_table_rows"),
        ("regression.min_cluster=3", "regression.min_cluster", "regression.min_clusters"),
        ("ingestion.cache.sise=64", "ingestion.cache.sise", "ingestion.cache.size"),
        ("training.variants.sge.epochs=1", "training.variants.sge", "training.variants.seg"),
        ("studdy.n_boot=3", "studdy", "study"),
    ],
)
def test_a_misspelt_key_is_refused_naming_it_and_the_closest_valid_key(
    override: str, key: str, suggestion: str
) -> None:
    with pytest.raises(ParameterError) as info:
        _check(override)
    assert info.value.key == key
    assert f"did you mean '{suggestion}'?" in info.value.problem


def test_every_unknown_key_of_a_run_is_in_the_one_message() -> None:
    with pytest.raises(ParameterError) as info:
        _check("study.nboot=50", "localization.n_bot=5")
    message = str(info.value)
    assert "'study.nboot'" in message and "'localization.n_bot'" in message
    assert "did you mean 'study.n_boot'?" in message
    assert "did you mean 'localization.n_boot'?" in message


def test_known_mistakes_get_their_own_message() -> None:
    with pytest.raises(ParameterError, match="'saliency.seed'") as info:
        _check("saliency.method_options.seed=7")
    assert info.value.key == "saliency.method_options.seed"
    with pytest.raises(ParameterError, match="renamed to 'training.only'"):
        _check("training.method=erm")
    with pytest.raises(ParameterError, match="renamed to 'supervision'"):
        _check("comparison.training_variants.cmp_jtt.method=erm")
    with pytest.raises(ParameterError, match="set per variant"):
        _check("training.supervision=erm")


def test_objective_params_follow_each_variants_objective() -> None:
    _check(
        "training.variants.erm.objective=group_dro",
        "training.variants.erm.objective_params.step_size=0.2",
    )
    with pytest.raises(ParameterError) as info:
        _check("comparison.training_variants.cmp_group_dro.objective_params.stepsize=0.5")
    assert info.value.key == "comparison.training_variants.cmp_group_dro.objective_params.stepsize"
    assert "did you mean 'step_size'?" in info.value.problem
    # bce (the shared objective) reads no settings
    with pytest.raises(ParameterError) as info:
        _check("training.objective_params.step_size=0.5")
    assert info.value.key == "training.objective_params.step_size"
    # a variant that inherits the shared settings with another objective is named
    with pytest.raises(ParameterError, match=r"the objective of training\.variants\.erm"):
        _check(
            "training.objective=group_dro",
            "training.objective_params.step_size=0.5",
            "training.variants.erm.objective=bce",
        )


def test_delegated_blocks_keep_their_own_check() -> None:
    with pytest.raises(ParameterError) as info:
        _check("ingestion.phantom.tube.sid=ptx")
    assert info.value.key == "ingestion.phantom.tube.sid"
    _check("ingestion.phantom.image_size=64", "sweep.ingestion.phantom.tube.width_frac=0.01")


@pytest.mark.parametrize(
    "override",
    [
        "localization.fixed_thresholds.Pneumothorax=0.3",  # per-task maps
        "localization.prob_cutoffs.Cardiomegaly=0.2",
        "sweep.grid.strengths.weak=[0.6,0.4]",  # strength labels
        "sweep.grid.extra_fractions.box=[0.5]",
        # an objective's settings (checked against that objective)
        "comparison.training_variants.cmp_group_dro.objective_params.size_adjustment=1",
        "ingestion.tube_labels=cxr_tube_dict.pkl",  # adapter options (adapters' README)
        "ingestion.mimic_iv_dir=/data/mimiciv",
        "training.architecture=resnet18",  # training.config.DEFAULTS, not in the shipped file
        "training.variants.box.batch_size=8",
        "comparison.training_variants.cmp_jtt.epochs=1",
        "sweep.training.batch_size=8",
        "chexlocalize_dir=/data/chexlocalize",  # ${runtime_params:...} in conf/chexlocalize
        "map_dir=maps",
    ],
)
def test_open_maps_and_keys_the_code_reads_are_accepted(override: str) -> None:
    _check(override)


@pytest.mark.parametrize("env", [None, *SHIPPED_ENVS])
def test_the_shipped_configuration_of_every_environment_passes(env: str | None) -> None:
    _check(env=env)


def test_the_shipped_environments_are_the_folders_of_conf() -> None:
    folders = {p.name for p in CONF.iterdir() if p.is_dir()} - {"base", "local"}
    assert folders == set(SHIPPED_ENVS)


def _empty_maps(node: Any, path: tuple[str, ...] = ()) -> list[str]:
    if not isinstance(node, dict):
        return []
    if not node and path:
        return [".".join(path)]
    return [m for k, v in node.items() for m in _empty_maps(v, (*path, k))]


def test_every_empty_map_of_the_shipped_files_is_open_or_delegated() -> None:
    """An empty shipped map would otherwise refuse every key a user puts in it."""
    schema = parameter_schema(shipped_parameters(CONF))
    for dotted in _empty_maps(key_tree(*shipped_parameters(CONF))):
        node: Any = schema
        for part in dotted.split("."):
            node = node[part]
        assert node is OPEN or callable(node), f"{dotted} is an empty map; add it to OPEN_MAPS"
    assert {p for p, _ in DELEGATED} <= {".".join(k) for k in _paths(schema)}
    assert all(p.split(".")[0] in schema for p in OPEN_MAPS)


def _paths(node: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if not isinstance(node, dict):
        return [path]
    return [path, *(p for k, v in node.items() for p in _paths(v, (*path, k)))]


def test_every_documented_adapter_option_is_accepted() -> None:
    readme = (REPO / "src/cxr_spurious/sources/adapters/README.md").read_text(encoding="utf-8")
    section = readme.split("## Parameters", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.MULTILINE))
    assert {"tube_labels", "mimic_iv_dir", "sex_conflict"} <= documented
    shipped = set(yaml.safe_load((CONF / "base/parameters_ingestion.yml").read_text())["ingestion"])
    assert documented <= set(ADAPTER_OPTIONS) | shipped
    _check(*(f"ingestion.{key}=x" for key in sorted(documented - shipped)))


def test_the_hook_checks_the_run_and_runs_before_the_other_hooks() -> None:
    assert isinstance(settings.HOOKS[0], ParameterKeysHook)
    impl = ParameterKeysHook.after_context_created
    assert getattr(impl, "kedro_impl", {}).get("tryfirst") is True
    loader = ProjectConfigLoader(
        conf_source=str(CONF), runtime_params={"study": {"nboot": 50}}, **CONFIG_LOADER_ARGS
    )
    context = types.SimpleNamespace(config_loader=loader)
    with pytest.raises(ParameterError, match="did you mean 'study.n_boot'"):
        ParameterKeysHook().after_context_created(context)  # type: ignore[arg-type]
    ParameterKeysHook().after_context_created(
        types.SimpleNamespace(config_loader=ProjectConfigLoader(str(CONF), **CONFIG_LOADER_ARGS))
    )  # type: ignore[arg-type]


def test_a_project_of_its_own_is_checked_against_its_own_files(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "base").mkdir(parents=True)
    (conf / "local").mkdir()
    (conf / "base" / "parameters.yml").write_text("marker: {value: 1}\n")
    schema = parameter_schema(shipped_parameters(conf), runtime_param_names(conf))
    check_parameter_keys(_params("marker.value=2", conf=conf), schema)
    with pytest.raises(ParameterError, match="did you mean 'marker.value'"):
        check_parameter_keys(_params("marker.valeu=2", conf=conf), schema)
    # a key that exists in one other place only is suggested there
    schema = parameter_schema([{"a": {"x": 1}, "b": {"c": {"only_here": 1}}}])
    with pytest.raises(ParameterError, match="did you mean 'b.c.only_here'"):
        check_parameter_keys({"a": {"only_here": 2}}, schema)
    assert hooks.SOURCE_CONF == CONF


SESSIONS = """
import json, sys
from pathlib import Path
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
project = Path(sys.argv[1]); out = {}
bootstrap_project(project)
for env, runtime in json.loads(sys.argv[2]):
    try:
        with KedroSession.create(project_path=project, env=env, runtime_params=runtime) as s:
            s.load_context()
        out[f"{env} {runtime}"] = "ok"
    except Exception as exc:
        out[f"{env} {runtime}"] = f"{type(exc).__name__}: {exc}"
print("JSON:" + json.dumps(out))
"""


@pytest.mark.integration
def test_every_environment_builds_its_context_and_a_typo_stops_it(kedro_project: Path) -> None:
    """Real sessions (``load_context``, every project hook), no pipeline run."""
    cases = [[env, None] for env in (None, "test", *SHIPPED_ENVS)]
    cases.append(["test", {"study": {"nboot": 50}}])
    env = kedro_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{kedro_project / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "-c", SESSIONS, str(kedro_project), json.dumps(cases)],
        cwd=kedro_project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:"))[5:])
    bad = out.pop("test {'study': {'nboot': 50}}")
    assert out == {f"{e} None": "ok" for e in (None, "test", *SHIPPED_ENVS)}, out
    assert bad.startswith("ParameterError: parameter 'study.nboot': unknown key"), bad


@pytest.mark.integration
def test_kedro_run_prints_the_typo_as_one_line_and_runs_nothing(kedro_project: Path) -> None:
    env = kedro_env()
    env.pop("COLUMNS", None)
    proc = subprocess.run(
        # a list with commas first: Kedro's own --params parser stopped at "Item `1]`"
        [
            sys.executable,
            "-m",
            "kedro",
            "run",
            "--env",
            "test",
            "--params",
            "sweep.grid.seeds=[0,1],study.nboot=50",
        ],  # fmt: skip
        cwd=kedro_project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    expected = (
        "Error: parameter 'study.nboot': unknown key, which nothing reads; "
        "did you mean 'study.n_boot'?"
    )
    assert expected in proc.stderr.splitlines(), proc.stderr
    assert "(ParameterError; the full traceback is in logs/info.log)" in proc.stderr
    assert "Traceback" not in out and " done in " not in out  # no node ran
    assert not any((kedro_project / "data" / "03_primary").iterdir())
