"""The parameter keys come from a committed snapshot; runtime names from the run's env.

Before: the valid keys were rebuilt from the run's own ``conf/base`` and shipped
environments, so a misspelt key written into one of those files became "valid" and was
ignored; the ``${runtime_params:...}`` names of every environment folder passed the check
in any environment (``--params split=val`` in the base environment did nothing); and the
session's stashed parameters outlived its run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import kedro_env

from cxr_spurious import hooks, parameter_schema
from cxr_spurious.errors import ParameterError
from cxr_spurious.hooks import ParameterKeysHook, SweepParamsHook, runtime_param_names
from cxr_spurious.settings import CONFIG_LOADER_ARGS, ProjectConfigLoader

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"


def test_the_committed_snapshot_is_what_the_shipped_files_give() -> None:
    """Fails when a shipped parameter file gains or loses a key: regenerate the snapshot
    (``kedro parameter-keys``) when the code reads the new key."""
    snapshot = parameter_schema.snapshot_from_conf(CONF)
    text = parameter_schema.SNAPSHOT_PATH.read_text(encoding="utf-8")
    assert text == parameter_schema.snapshot_text(snapshot)
    assert set(parameter_schema.load_snapshot()) == {"base", *hooks.SHIPPED_ENVS}


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A copy of the shipped ``conf`` (an empty ``local``) to write mistakes into."""
    copy = tmp_path / "conf"
    shutil.copytree(CONF, copy, ignore=shutil.ignore_patterns("local"))
    (copy / "local").mkdir()
    return copy


def _hook(conf: Path, env: str | None = None, runtime: dict[str, Any] | None = None) -> None:
    loader = ProjectConfigLoader(
        conf_source=str(conf), env=env, runtime_params=runtime, **CONFIG_LOADER_ARGS
    )
    ParameterKeysHook().after_context_created(types.SimpleNamespace(config_loader=loader))  # type: ignore[arg-type]


def _add_line(path: Path, after: str, line: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert after in text
    path.write_text(text.replace(after, f"{after}\n{line}", 1), encoding="utf-8")


@pytest.mark.parametrize(
    ("file", "env"),
    [("chexlocalize/parameters.yml", "chexlocalize"), ("base/parameters_localization.yml", None)],
)
def test_a_typo_written_into_a_shipped_file_is_refused_naming_the_file(
    conf: Path, file: str, env: str | None
) -> None:
    _hook(conf, env)  # the shipped files pass
    _add_line(conf / file, "localization:", "  fixed_threshold: {Pneumothorax: 0.3}")
    with pytest.raises(ParameterError) as info:
        _hook(conf, env)
    assert info.value.key == "localization.fixed_threshold"
    assert "did you mean 'localization.fixed_thresholds'?" in info.value.problem
    assert f"conf/{file}" in info.value.problem


def test_a_typo_in_conf_local_keeps_its_message(conf: Path) -> None:
    (conf / "local" / "parameters_typo.yml").write_text("localization:\n  n_bot: 5\n")
    with pytest.raises(ParameterError) as info:
        _hook(conf)
    assert info.value.key == "localization.n_bot"
    assert "did you mean 'localization.n_boot'?" in info.value.problem
    assert "shipped file" not in info.value.problem


def test_data_written_into_a_shipped_map_is_accepted(conf: Path) -> None:
    path = conf / "base/parameters_localization.yml"
    text = path.read_text(encoding="utf-8")
    for old, new in (
        ("fixed_thresholds: {}", "fixed_thresholds: {Pneumothorax: 0.3}"),
        ("prob_cutoffs_grid_by_task: {}", "prob_cutoffs_grid_by_task: {Edema: [0.1, 0.8, 0.1]}"),
    ):
        assert old in text
        text = text.replace(old, new, 1)
    path.write_text(text, encoding="utf-8")
    _hook(conf)
    # data, not keys: the snapshot stays as it is
    assert parameter_schema.snapshot_from_conf(conf) == parameter_schema.load_snapshot()


@pytest.mark.parametrize(
    ("runtime", "key", "hint"),
    [
        ({"split": "val"}, "split", "'saliency.split'"),
        ({"chexlocalize_dir": "/data/chexlocalize"}, "chexlocalize_dir", "--env chexlocalize"),
        ({"map_dir": "gradcam_maps_val"}, "map_dir", "--env chexlocalize"),
        ({"method": "integrated_gradients"}, "method", "--env chexlocalize"),
    ],
)
def test_another_environments_runtime_names_are_refused_in_the_base_env(
    conf: Path, runtime: dict[str, Any], key: str, hint: str
) -> None:
    with pytest.raises(ParameterError) as info:
        _hook(conf, None, runtime)
    assert info.value.key == key
    assert hint in info.value.problem
    _hook(conf, "chexlocalize", runtime)  # where they are read


def test_runtime_names_come_from_the_environments_the_run_loads() -> None:
    assert "split" not in runtime_param_names(CONF, ("base", "local"))
    assert {"split", "chexlocalize_dir", "map_dir"} <= set(
        runtime_param_names(CONF, ("base", "chexlocalize"))
    )


class _Context:
    def __init__(self, params: dict[str, Any]) -> None:
        self.config_loader = {"parameters": params}


@pytest.mark.parametrize("end", ["after_pipeline_run", "on_pipeline_error"])
def test_the_stashed_parameters_are_forgotten_when_the_run_ends(end: str) -> None:
    hook = SweepParamsHook()
    context = _Context({"comparison": {"seeds": [0, 7]}, "sweep": {"a": 1}})
    hook.after_context_created(context)  # type: ignore[arg-type]
    assert hooks.stashed_parameters() == {"comparison": {"seeds": [0, 7]}, "sweep": {"a": 1}}
    assert hooks.stashed_sweep_params() == {"a": 1}
    getattr(hook, end)()
    assert hooks.stashed_parameters() is None
    assert hooks.stashed_sweep_params() is None


FAILING_SESSIONS = """
import json, sys
from pathlib import Path
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
project = Path(sys.argv[1]); out = []
bootstrap_project(project)
runtime = {"comparison": {"seeds": [0, 7]}}
for names, nodes in (["trainin"], None), (["ingestion"], ["nope"]):
    with KedroSession.create(project_path=project, runtime_params=runtime) as s:
        try:
            s.run(pipeline_names=names, node_names=nodes)
            error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
    out.append({"error": error})
print("JSON:" + json.dumps(out))
"""


@pytest.mark.integration
def test_a_misspelt_pipeline_gets_kedros_error_with_its_close_matches(
    kedro_project: Path,
) -> None:
    """Kedro 1.7's ``find_pipelines`` reports a requested name without a folder as a failed
    import; ``pipeline_registry`` turns it into the KeyError ``KedroSession.run`` expects,
    which names the pipeline and its close matches (``--nodes`` matching nothing is
    Kedro's own error, for comparison)."""
    proc = subprocess.run(
        [sys.executable, "-c", FAILING_SESSIONS, str(kedro_project)],
        capture_output=True,
        text=True,
        env={**kedro_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{kedro_project / 'mlflow.db'}"},
        cwd=kedro_project,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("JSON:"))
    pipeline, nodes = json.loads(line[len("JSON:") :])
    assert pipeline["error"].startswith("ValueError: Failed to find the pipeline named 'trainin'")
    assert "training" in pipeline["error"]  # the close match
    assert nodes["error"] == "ValueError: Pipeline does not contain nodes named ['nope']."


def test_the_parameter_keys_command_writes_the_snapshot_of_a_conf(
    conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from cxr_spurious.cli import cli

    target = tmp_path / "parameter_keys.json"
    monkeypatch.setattr(parameter_schema, "SNAPSHOT_PATH", target)
    _add_line(conf / "base/parameters_localization.yml", "localization:", "  new_key: 1")
    result = CliRunner().invoke(cli, ["parameter-keys", "--conf", str(conf)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"wrote {target} from {conf}"
    written = target.read_text(encoding="utf-8")
    assert written == parameter_schema.snapshot_text(parameter_schema.snapshot_from_conf(conf))
    assert "new_key" in parameter_schema.load_snapshot(target)["base"]["localization"]
