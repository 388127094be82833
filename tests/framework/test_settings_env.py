"""The ``env`` config resolver reads only allowed variables, only in credentials / mlflow files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from cxr_spurious.errors import ParameterError
from cxr_spurious.settings import CONFIG_LOADER_ARGS, ProjectConfigLoader, env_name_allowed

REPO = Path(__file__).resolve().parents[2]


def _loader(conf: Path) -> ProjectConfigLoader:
    return ProjectConfigLoader(conf_source=str(conf), **CONFIG_LOADER_ARGS)


def _conf(tmp_path: Path, **files: str) -> Path:
    conf = tmp_path / "conf"
    (conf / "local").mkdir(parents=True)
    (conf / "base").mkdir()
    for name, text in files.items():
        (conf / "base" / name).write_text(text)
    return conf


def test_project_mlflow_config_reads_the_tracking_uri_and_experiment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(REPO / "conf", conf, ignore=shutil.ignore_patterns("local"))
    (conf / "local").mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    monkeypatch.setenv("CXR_SPURIOUS_EXPERIMENT", "my_exp")
    loader = _loader(conf)
    mlflow_conf = loader["mlflow"]
    assert mlflow_conf["server"]["mlflow_tracking_uri"] == "sqlite:///elsewhere.db"
    assert mlflow_conf["tracking"]["experiment"]["name"] == "my_exp"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert _loader(conf)["mlflow"]["server"]["mlflow_tracking_uri"] == "sqlite:///mlflow.db"
    # set but empty (``export MLFLOW_TRACKING_URI=``) reads as unset: the default, not the
    # empty string that MLflow would take for its refused file store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.setenv("CXR_SPURIOUS_EXPERIMENT", "  ")
    empty = _loader(conf)["mlflow"]
    assert empty["server"]["mlflow_tracking_uri"] == "sqlite:///mlflow.db"
    assert empty["tracking"]["experiment"]["name"] == "cxr_spurious_study"
    # the project's parameters and catalog load under the restricted loader
    assert loader["parameters"] and loader["catalog"]


def test_credentials_may_read_allowed_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-test")
    conf = _conf(tmp_path, **{"credentials.yml": "s3: {key: '${env:AWS_ACCESS_KEY_ID}'}\n"})
    assert _loader(conf)["credentials"] == {"s3": {"key": "AKIA-test"}}


def test_parameters_file_reading_an_environment_variable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    conf = _conf(tmp_path, **{"parameters_x.yml": "x:\n  home: ${env:HOME,/nowhere}\n"})
    with pytest.raises(ParameterError) as err:
        _loader(conf)["parameters"]
    message = str(err.value)
    assert "x.home" in message and "parameters_x.yml" in message and "env:HOME" in message
    assert "credentials*.yml / mlflow*.yml" in message
    # even an allowed name is refused outside credentials / mlflow files
    conf = _conf(
        tmp_path / "b", **{"catalog_x.yml": "d:\n  type: x\n  uri: ${env:MLFLOW_TRACKING_URI}\n"}
    )
    with pytest.raises(ParameterError, match=r"catalog_x.yml uses \$\{env:MLFLOW_TRACKING_URI\}"):
        _loader(conf)["catalog"]


def test_mlflow_file_reading_another_variable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GITHUB_TOKEN", "secret")
    conf = _conf(tmp_path, **{"mlflow.yml": "tracking:\n  run:\n    name: ${env:GITHUB_TOKEN}\n"})
    with pytest.raises(
        ParameterError, match=r"tracking.run.name.*mlflow.yml uses \$\{env:GITHUB_TOKEN\}"
    ):
        _loader(conf)["mlflow"]


def test_resolver_refuses_outside_the_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    _loader(_conf(tmp_path))  # registers the `env` resolver with OmegaConf, process-wide
    with pytest.raises(Exception, match="refused in configuration outside the config loader"):
        OmegaConf.to_container(OmegaConf.create({"u": "${env:MLFLOW_TRACKING_URI}"}), resolve=True)


def test_allow_list() -> None:
    assert env_name_allowed("MLFLOW_TRACKING_URI") and env_name_allowed("AWS_SECRET_ACCESS_KEY")
    assert not env_name_allowed("HOME") and not env_name_allowed("mlflow_tracking_uri")


def test_kedro_oc_env_in_credentials_is_held_to_the_allow_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kedro resolves ``${oc.env:...}`` in credentials files while reading them."""
    monkeypatch.setenv("CXR_TEST_SECRET", "leaked")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-test")
    conf = _conf(tmp_path, **{"credentials.yml": "db:\n  pw: ${oc.env:CXR_TEST_SECRET}\n"})
    with pytest.raises(ParameterError) as err:
        _loader(conf)["credentials"]
    message = str(err.value)
    assert "db.pw" in message and "credentials.yml" in message
    assert "${oc.env:CXR_TEST_SECRET}" in message and "leaked" not in message
    # an allowed name reads the variable, as ${env:...} does
    conf = _conf(
        tmp_path / "b", **{"credentials.yml": "s3: {key: '${oc.env:AWS_ACCESS_KEY_ID}'}\n"}
    )
    assert _loader(conf)["credentials"] == {"s3": {"key": "AKIA-test"}}
    # in an environment's credentials too (conf/local here)
    conf = _conf(tmp_path / "c")
    (conf / "local" / "credentials.yml").write_text("x: ${oc.env:HOME}\n")
    with pytest.raises(ParameterError, match=r"local/credentials.yml uses \$\{oc.env:HOME\}"):
        _loader(conf)["credentials"]


def test_oc_env_outside_credentials_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///x.db")
    conf = _conf(
        tmp_path,
        **{"mlflow.yml": "server:\n  mlflow_tracking_uri: ${oc.env:MLFLOW_TRACKING_URI}\n"},
    )
    with pytest.raises(
        ParameterError, match=r"server.mlflow_tracking_uri.*mlflow.yml uses \$\{oc.env:MLFLOW"
    ):
        _loader(conf)["mlflow"]
    conf = _conf(tmp_path / "b", **{"parameters.yml": "x: ${oc.env:HOME}\n"})
    with pytest.raises(ParameterError, match=r"parameter 'x'.*parameters.yml uses \$\{oc.env:HOME"):
        _loader(conf)["parameters"]
