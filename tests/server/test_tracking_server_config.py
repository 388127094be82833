"""``cxr_spurious.tracking_server`` without servers: settings, credentials, command line."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import pytest
import yaml

from cxr_spurious.tracking_server import (
    CREDENTIALS_KEY,
    ServerConfig,
    TrackingServerError,
    init_cluster,
    load_credentials,
    main,
    mlflow_command,
    postgres_uri,
    save_credentials,
    start,
)


def test_defaults_bind_loopback_with_project_local_folders(tmp_path: Path) -> None:
    config = ServerConfig.from_env(tmp_path, {})
    assert (config.mlflow_port, config.pg_port) == (5000, 5433)
    assert config.url == "http://127.0.0.1:5000"
    assert config.pgdata == tmp_path.resolve() / ".pgdata"
    assert config.artifacts == str(tmp_path.resolve() / "mlartifacts")
    assert config.credentials == tmp_path.resolve() / "conf" / "local" / "credentials.yml"
    assert config.backend_store_uri is None
    command = mlflow_command(config)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--artifacts-destination") + 1] == config.artifacts
    assert "--backend-store-uri" not in command  # it travels in the environment


def test_environment_overrides_and_rejects_bad_ports(tmp_path: Path) -> None:
    env = {
        "MLFLOW_PORT": "5123",
        "PGPORT": "6543",
        "MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://u:p@db:5432/mlflow",
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://team-bucket/mlflow",
    }
    config = ServerConfig.from_env(tmp_path, env)
    assert (config.mlflow_port, config.pg_port) == (5123, 6543)
    assert config.backend_store_uri == env["MLFLOW_BACKEND_STORE_URI"]
    command = mlflow_command(config)
    assert command[command.index("--artifacts-destination") + 1] == "s3://team-bucket/mlflow"
    for bad in ("abc", "0", "-5"):
        with pytest.raises(TrackingServerError, match=f"PGPORT='{bad}': expected a positive"):
            ServerConfig.from_env(tmp_path, {"PGPORT": bad})


def test_credentials_keep_other_entries_and_stay_private(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "local" / "credentials.yml"
    path.parent.mkdir(parents=True)
    path.write_text("aws_s3:\n  key: abc\n")
    credentials = {"username": "mlflow", "password": "p@ss/w:rd", "database": "mlflow"}
    save_credentials(path, credentials)
    content = yaml.safe_load(path.read_text())
    assert content["aws_s3"] == {"key": "abc"}
    assert content[CREDENTIALS_KEY] == credentials
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_credentials(path) == credentials
    assert load_credentials(tmp_path / "absent.yml") is None

    uri = postgres_uri(credentials, 6543)
    assert uri.startswith("postgresql+psycopg2://mlflow:")
    assert uri.endswith("@127.0.0.1:6543/mlflow")
    assert urllib.parse.unquote(urllib.parse.urlsplit(uri).password or "") == "p@ss/w:rd"

    path.write_text(f"{CREDENTIALS_KEY}:\n  username: mlflow\n")
    with pytest.raises(TrackingServerError, match=r"credentials.yml: entry .* missing"):
        load_credentials(path)


def test_existing_cluster_without_its_password_is_refused(tmp_path: Path) -> None:
    config = ServerConfig.from_env(tmp_path, {})
    config.pgdata.mkdir()
    (config.pgdata / "PG_VERSION").write_text("15\n")
    with pytest.raises(TrackingServerError, match=r"has no 'mlflow_server_postgres' entry"):
        start(config)


def test_init_refuses_a_folder_that_is_not_a_cluster(tmp_path: Path) -> None:
    config = ServerConfig.from_env(tmp_path, {})
    config.pgdata.mkdir()
    (config.pgdata / "notes.txt").write_text("mine\n")
    with pytest.raises(TrackingServerError, match=r"\.pgdata: not empty but not a PostgreSQL"):
        init_cluster(config)


def test_stop_with_nothing_running_succeeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["stop", "--root", str(tmp_path)]) == 0
    assert "MLflow server was not running" in capsys.readouterr().out
    assert main(["status", "--root", str(tmp_path)]) == 3
    assert "not running" in capsys.readouterr().out
