"""``stop`` / ``status`` find an MLflow server whose launcher was killed (no PostgreSQL).

A fake server stands in for ``mlflow server``: a launcher whose command line reads
``... mlflow server`` starts, in its own session (as ``start_mlflow`` does), a child
``uvicorn.py ... mlflow.server.fastapi_app:app`` that answers ``/health`` on 127.0.0.1 and
ignores SIGTERM. SIGKILL the launcher: the child keeps serving in its process group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr_spurious import tracking_server
from cxr_spurious.tracking_server import ServerConfig, main

CHILD = """
import http.server, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a worker slow to stop: SIGKILL ends it

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Health).serve_forever()
"""

LAUNCHER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2], "mlflow.server.fastapi_app:app"])
time.sleep(600)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def _args(proc: Path) -> list[bytes]:
    try:
        return (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@pytest.fixture
def orphaned_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ServerConfig, int, int]]:
    """``(config, launcher pid, child pid)`` of a fake server whose launcher was SIGKILLed."""
    port = _free_port()
    monkeypatch.setenv("MLFLOW_PORT", str(port))
    monkeypatch.setattr(tracking_server, "STOP_GRACE_S", 1.0)
    config = ServerConfig.from_env(tmp_path, os.environ)
    # named as uvicorn and given MLflow's app, as the real server's child
    child_script, launcher_script = tmp_path / "uvicorn.py", tmp_path / "launcher.py"
    child_script.write_text(CHILD)
    launcher_script.write_text(LAUNCHER)
    launcher = subprocess.Popen(
        [sys.executable, str(launcher_script), str(child_script), str(port), "mlflow", "server"],
        start_new_session=True,
    )
    config.state_dir.mkdir()
    config.pid_file.write_text(f"{launcher.pid}\n")
    try:
        deadline = time.monotonic() + 30
        while not _answers(port):
            assert time.monotonic() < deadline, "the fake server did not answer"
            time.sleep(0.05)
        assert main(["status", "--root", str(tmp_path)]) == 0  # the launcher runs
        (child,) = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _args(p)[1:2] == [str(child_script).encode()]
        ]
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()  # reaped, as the real launcher is by init
        yield config, launcher.pid, child
    finally:  # whatever the test left running
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)


def test_status_and_stop_find_a_server_whose_launcher_was_killed(
    orphaned_server: tuple[ServerConfig, int, int], capsys: pytest.CaptureFixture[str]
) -> None:
    config, launcher, child = orphaned_server
    root, port = str(config.state_dir.parent), config.mlflow_port
    capsys.readouterr()
    assert _answers(port) and _alive(child) and not _alive(launcher)
    assert main(["status", "--root", root]) == 0
    assert (
        f"MLflow server answering at http://127.0.0.1:{port} but its launcher "
        f"(pid {launcher}) is gone; run stop" in capsys.readouterr().out
    )
    assert main(["stop", "--root", root]) == 0
    assert "MLflow server stopped" in capsys.readouterr().out
    assert not _alive(child) and not _answers(port)  # SIGTERM ignored: SIGKILL ended it
    assert not config.pid_file.exists()
    assert main(["status", "--root", root]) == 3
    assert "MLflow server not running" in capsys.readouterr().out


def test_a_reused_group_id_is_not_taken_for_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The pid file names a group of other programs (a reused id): ``stop`` leaves it."""
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        config = ServerConfig.from_env(tmp_path, {})
        config.state_dir.mkdir()
        config.pid_file.write_text(f"{other.pid}\n")
        assert main(["stop", "--root", str(tmp_path)]) == 0
        assert "MLflow server was not running" in capsys.readouterr().out
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize(
    ("args", "server"),
    [
        ([b"/usr/bin/python3", b"-m", b"mlflow", b"server", b"--port", b"5000"], True),
        ([b"/venv/bin/mlflow", b"server"], True),
        (
            [b"python", b"-m", b"uvicorn", b"--port", b"5000", b"mlflow.server.fastapi_app:app"],
            True,
        ),
        ([b"/venv/bin/gunicorn", b"-b", b"127.0.0.1:5000", b"mlflow.server:app"], True),
        ([b"/venv/bin/mlflow", b"ui", b"--port", b"5000"], False),  # a user's `make mlflow-ui`
        ([b"python", b"-m", b"uvicorn", b"myapp:app"], False),  # another web app
        ([b"sqlite3", b"/home/u/mlflow.db"], False),  # "mlflow" only inside a path
        ([b"make", b"mlflow-server"], False),
    ],
)
def test_only_the_server_s_own_processes_are_recognised(args: list[bytes], server: bool) -> None:
    assert tracking_server._is_server_process(args) is server


def test_a_user_s_mlflow_ui_under_a_reused_group_id_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ui = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "mlflow", "ui"],
        start_new_session=True,
    )
    try:
        config = ServerConfig.from_env(tmp_path, {})
        config.state_dir.mkdir()
        config.pid_file.write_text(f"{ui.pid}\n")
        assert tracking_server.server_group(config) is None
        assert main(["stop", "--root", str(tmp_path)]) == 0
        assert "MLflow server was not running" in capsys.readouterr().out
        assert ui.poll() is None
    finally:
        ui.kill()
        ui.wait()


def test_a_pid_file_of_another_boot_is_stale(tmp_path: Path) -> None:
    """After a reboot the pid file's number may be any program's, even an `mlflow server`."""
    other = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)", "mlflow", "server"],
        start_new_session=True,
    )
    try:
        config = ServerConfig.from_env(tmp_path, {})
        config.state_dir.mkdir()
        tracking_server._write_pid_file(config, other.pid)
        assert config.pid_file.read_text().split() == [str(other.pid), tracking_server._boot_id()]
        assert tracking_server.server_group(config) == other.pid  # this boot's: the server
        config.pid_file.write_text(f"{other.pid}\nanother-boot\n")
        assert tracking_server.server_group(config) is None
        assert tracking_server.mlflow_pid(config) is None
    finally:
        other.kill()
        other.wait()
