"""The team tracking server (``make mlflow-server``) end to end, on a throwaway PostgreSQL.

One server per module: ``python -m cxr_spurious.tracking_server start`` (what the make
target runs) with a fresh data folder and free ports on 127.0.0.1. A tiny training
(``kedro run --to-outputs {m}.mlflow_run``: ingestion, debiasing, training of the three
study variants on the tiny phantom) logs to it with ``MLFLOW_TRACKING_URI``; the runs are
read back through MLflow's REST API and the run table through the UI in headless Chromium;
two such runs at the same time both arrive complete; ``stop`` leaves no process behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tests.browser.harness import (
    REPO,
    artifacts_dir,
    dump_dom,
    free_port,
    make_project_copy,
    port_is_free,
    require_chromium,
    screenshot,
    visible_text,
)
from tests.conftest import TINY_TEST_ENV, kedro_env

from cxr_spurious.tracking_server import CREDENTIALS_KEY, pg_binary
from cxr_spurious.variants import STUDY_MODELS

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("mlflow_server")]

MODEL_OUTPUTS = ",".join(f"{m}.mlflow_run" for m in STUDY_MODELS)
METRIC = "test_Pneumothorax_auroc"
KEDRO_TIMEOUT_S = 300
RENDER_BUDGET_MS = 20000


@dataclass(frozen=True)
class TeamServer:
    """A server started by the module's CLI in a throwaway project folder."""

    root: Path
    env: dict[str, str]
    url: str
    mlflow_port: int
    pg_port: int


def _cli(server_root: Path, env: dict[str, str], command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cxr_spurious.tracking_server", command, "--root", str(server_root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


@pytest.fixture(scope="module")
def team_server() -> Iterator[TeamServer]:
    """Server + PostgreSQL in a fresh folder (outside pytest's 0700 temp root: the
    ``postgres`` user must be able to enter it when the tests run as root)."""
    pg_binary("initdb")  # fails with the install hint when PostgreSQL is missing
    root = Path(tempfile.mkdtemp(prefix="cxr-team-server-"))
    root.chmod(0o711)
    mlflow_port, pg_port = free_port(), free_port()
    while pg_port == mlflow_port:
        pg_port = free_port()
    env = kedro_env() | {"MLFLOW_PORT": str(mlflow_port), "PGPORT": str(pg_port)}
    env.pop("MLFLOW_BACKEND_STORE_URI", None)
    env.pop("MLFLOW_ARTIFACTS_DESTINATION", None)
    started = _cli(root, env, "start")
    try:
        assert started.returncode == 0, f"start failed:\n{started.stdout}\n{started.stderr}"
        yield TeamServer(
            root=root,
            env=env,
            url=f"http://127.0.0.1:{mlflow_port}",
            mlflow_port=mlflow_port,
            pg_port=pg_port,
        )
    finally:
        _cli(root, env, "stop")  # idempotent: test_stop_leaves_no_process stops it first
        shutil.rmtree(root, ignore_errors=True)


def _api(server: TeamServer, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """One call of MLflow's REST API (POST with a JSON body, else GET with a query)."""
    url = f"{server.url}/api/2.0/mlflow/{endpoint}"
    if body is None:
        request = urllib.request.Request(f"{url}?{urllib.parse.urlencode(query)}")
    else:
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _search_runs(server: TeamServer, experiment_id: str) -> list[dict]:
    runs: list[dict] = []
    token = None
    while True:
        body = {"experiment_ids": [experiment_id], "max_results": 100}
        if token:
            body["page_token"] = token
        page = _api(server, "runs/search", body)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _params(run: dict) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def _metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def _tiny_project(root: Path) -> Path:
    project = make_project_copy(root)
    (project / "conf" / "test").mkdir(exist_ok=True)
    (project / "conf" / "test" / "parameters_tiny.yml").write_text(TINY_TEST_ENV)
    return project


def _train(project: Path, server: TeamServer, experiment: str) -> subprocess.CompletedProcess:
    """The tiny training of every study variant, logging to the server."""
    env = kedro_env() | {"MLFLOW_TRACKING_URI": server.url, "CXR_SPURIOUS_EXPERIMENT": experiment}
    command = [sys.executable, "-m", "kedro", "run", "--env", "test", "--to-outputs", MODEL_OUTPUTS]
    return subprocess.run(
        command,
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=KEDRO_TIMEOUT_S,
        check=False,
    )


def _check_complete(server: TeamServer, experiment_id: str, runs: list[dict]) -> list[dict]:
    """Assert each parent run of ``runs`` has one finished child per variant with a model
    artifact on the server; return the children."""
    parents = [r for r in runs if "mlflow.parentRunId" not in _tags(r)]
    children = [r for r in runs if "mlflow.parentRunId" in _tags(r)]
    assert parents, "no parent (session) run"
    for parent in parents:
        mine = [c for c in children if _tags(c)["mlflow.parentRunId"] == parent["info"]["run_id"]]
        assert sorted(_tags(c)["variant"] for c in mine) == sorted(STUDY_MODELS), parent["info"]
        for child in mine:
            info = child["info"]
            assert info["status"] == "FINISHED", info
            assert info["experiment_id"] == experiment_id
            assert info["artifact_uri"].startswith("mlflow-artifacts:/"), info["artifact_uri"]
            listed = _api(server, "artifacts/list", run_id=info["run_id"], path="model")
            files = {f["path"] for f in listed.get("files", [])}
            assert {"model/model.pt", "model/config.json"} <= files, (info["run_name"], listed)
    assert len(children) == len(STUDY_MODELS) * len(parents)
    return children


@dataclass(frozen=True)
class LoggedStudy:
    """What one tiny training logged to the server."""

    project: Path
    experiment_id: str
    runs: list[dict]
    console: str  # the run's stdout and stderr


@pytest.fixture(scope="module")
def logged_study(team_server: TeamServer, tmp_path_factory: pytest.TempPathFactory) -> LoggedStudy:
    project = _tiny_project(tmp_path_factory.mktemp("team-single"))
    proc = _train(project, team_server, "team_single")
    assert proc.returncode == 0, f"kedro run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    experiment = _api(team_server, "experiments/get-by-name", experiment_name="team_single")
    experiment_id = experiment["experiment"]["experiment_id"]
    runs = _search_runs(team_server, experiment_id)
    return LoggedStudy(project, experiment_id, runs, proc.stdout + proc.stderr)


def test_console_links_each_run_once_in_the_projects_lines(
    team_server: TeamServer, logged_study: LoggedStudy
) -> None:
    """MLflow's own stdout links (two lines per ended run) are off; the project's line for
    the session run and for each model's run carries the run's page on the server."""
    console = logged_study.console
    assert "View run" not in console and "View experiment at" not in console, console[-3000:]
    experiment_url = f"{team_server.url}/#/experiments/{logged_study.experiment_id}/runs/"
    for run in logged_study.runs:
        url = experiment_url + run["info"]["run_id"]
        lines = [line for line in console.splitlines() if line.endswith(f": {url}")]
        assert len(lines) == 1, (run["info"]["run_name"], lines)
        assert f"MLflow run '{run['info']['run_name']}' ({run['info']['run_id']})" in lines[0]


def test_second_start_reports_running_and_keeps_the_password_private(
    team_server: TeamServer,
) -> None:
    again = _cli(team_server.root, team_server.env, "start")
    assert again.returncode == 0, again.stderr
    assert f"already running at {team_server.url}" in again.stdout

    credentials = team_server.root / "conf" / "local" / "credentials.yml"
    entry = yaml.safe_load(credentials.read_text())[CREDENTIALS_KEY]
    assert entry["username"] and len(entry["password"]) >= 24
    assert credentials.stat().st_mode & 0o077 == 0, "credentials must be private to the owner"
    pid = int((team_server.root / ".mlflow-server" / "mlflow.pid").read_text().split()[0])
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert entry["password"] not in cmdline, "the password shows in the process list"
    conf = (team_server.root / ".pgdata" / "postgresql.conf").read_text()
    assert "listen_addresses = '127.0.0.1'" in conf


def test_runs_arrive_through_the_rest_api(team_server: TeamServer, logged_study: LoggedStudy):
    experiment = _api(team_server, "experiments/get", experiment_id=logged_study.experiment_id)
    assert experiment["experiment"]["artifact_location"].startswith("mlflow-artifacts:/")
    parents = [r for r in logged_study.runs if "mlflow.parentRunId" not in _tags(r)]
    assert len(parents) == 1
    parent = parents[0]
    assert parent["info"]["run_name"]  # named by the session (kedro-mlflow and the hooks)
    assert parent["info"]["status"] == "FINISHED"
    assert _params(parent)["training.batch_size"] == "16"  # the run's parameters, flattened

    children = _check_complete(team_server, logged_study.experiment_id, logged_study.runs)
    for child in children:
        variant = _tags(child)["variant"]
        assert child["info"]["run_name"].startswith(f"{variant}-"), child["info"]["run_name"]
        assert _params(child)["variant"] == variant
        assert 0.0 <= _metrics(child)[METRIC] <= 1.0
        assert "train_loss" in _metrics(child)
        listed = _api(team_server, "artifacts/list", run_id=child["info"]["run_id"])
        assert "training_curves.png" in {f["path"] for f in listed["files"]}

    # Uploaded through the server into its artifact folder, nothing beside the project.
    stored = team_server.root / "mlartifacts" / logged_study.experiment_id
    for child in children:
        model = stored / child["info"]["run_id"] / "artifacts" / "model" / "model.pt"
        assert model.is_file() and model.stat().st_size > 0, model
    assert not (logged_study.project / "mlruns").exists()
    assert not (logged_study.project / "mlflow.db").exists()


@pytest.mark.browser
def test_ui_run_table_shows_the_children_by_name(
    team_server: TeamServer, logged_study: LoggedStudy, tmp_path: Path
) -> None:
    binary = require_chromium()
    # Sorting by a metric lists nested runs flat (the date order folds them under the parent).
    order = urllib.parse.urlencode({"orderByKey": f"metrics.`{METRIC}`", "orderByAsc": "false"})
    url = f"{team_server.url}/#/experiments/{logged_study.experiment_id}/runs?{order}"
    dom = dump_dom(binary, url, tmp_path / "profile-1", budget_ms=RENDER_BUDGET_MS)
    out = artifacts_dir(REPO)
    (out / "mlflow_server_runs.html").write_text(dom)
    screenshot(binary, url, out / "mlflow_server_runs.png", tmp_path / "profile-2")
    text = visible_text(dom)
    assert "team_single" in text
    missing = [
        r["info"]["run_name"] for r in logged_study.runs if r["info"]["run_name"] not in text
    ]
    assert not missing, f"runs missing from the run table: {missing}\n{text[:2000]}"
    assert f"{len(logged_study.runs)} matching runs" in text  # the parent and its children


def test_two_parallel_runs_both_arrive_complete(
    team_server: TeamServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # A team's experiment exists before its members log to it (kedro-mlflow's
    # get-or-create of the experiment is not atomic: two first runs could race on it).
    created = _api(team_server, "experiments/create", {"name": "team_parallel"})
    experiment_id = created["experiment_id"]
    projects = [_tiny_project(tmp_path_factory.mktemp(f"team-parallel-{i}")) for i in (1, 2)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(lambda p: _train(p, team_server, "team_parallel"), projects))
    for proc in procs:
        assert proc.returncode == 0, (
            f"kedro run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    runs = _search_runs(team_server, experiment_id)
    assert len([r for r in runs if "mlflow.parentRunId" not in _tags(r)]) == 2
    children = _check_complete(team_server, experiment_id, runs)
    assert all(METRIC in _metrics(child) for child in children)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in {"Z", "X"}


def _family(mlflow_pgid: int, postmaster: int) -> set[int]:
    """Live pids of the MLflow server's process group and of the postmaster and its children."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid, ppid, pgid = int(entry.name), int(fields[1]), int(fields[2])
        if fields[0] not in {"Z", "X"} and (
            pgid == mlflow_pgid or pid == postmaster or ppid == postmaster
        ):
            found.add(pid)
    return found


def test_stop_leaves_no_process(team_server: TeamServer) -> None:
    mlflow_pid = int((team_server.root / ".mlflow-server" / "mlflow.pid").read_text().split()[0])
    postmaster = (team_server.root / ".pgdata" / "postmaster.pid").read_text().split("\n")
    pg_pid = int(postmaster[0])
    assert int(postmaster[3]) == team_server.pg_port
    family = _family(mlflow_pid, pg_pid)
    assert {mlflow_pid, pg_pid} <= family
    assert len(family) > 3, family  # uvicorn workers, PostgreSQL's background processes

    stopped = _cli(team_server.root, team_server.env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "MLflow server stopped" in stopped.stdout
    assert "PostgreSQL stopped" in stopped.stdout
    left = {pid for pid in family if _alive(pid)}
    assert not left, f"processes left behind: {left}"
    assert port_is_free(team_server.mlflow_port) and port_is_free(team_server.pg_port)

    again = _cli(team_server.root, team_server.env, "stop")
    assert again.returncode == 0, again.stderr
    assert "MLflow server was not running" in again.stdout
    assert "PostgreSQL was not running" in again.stdout
