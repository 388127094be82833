"""A team MLflow tracking server on PostgreSQL, on loopback (``make mlflow-server``).

``python -m cxr_spurious.tracking_server start|stop|status``:

* ``start`` starts ``mlflow server`` on ``127.0.0.1:$MLFLOW_PORT`` (default 5000) with a
  PostgreSQL backend store and proxied artifact serving (``--artifacts-destination``, by
  default the git-ignored ``mlartifacts/``; clients get ``mlflow-artifacts:/`` URIs and
  upload through the server). Without ``MLFLOW_BACKEND_STORE_URI`` it first initialises
  (once) and starts a project-local PostgreSQL cluster in ``.pgdata/`` listening on
  ``127.0.0.1:$PGPORT`` (default 5433, next to a system cluster's 5432) and nowhere else;
  its random password lives in ``conf/local/credentials.yml`` (git-ignored) under
  ``mlflow_server_postgres``. PostgreSQL refuses to run as root: as root, ``initdb`` and
  ``pg_ctl`` run as the ``postgres`` user (``runuser``) and the data folder is theirs.
* ``stop`` stops the MLflow server (its whole process group) and the local cluster; it
  also finds the server's processes after their launcher (the pid file's ``mlflow server``
  process) was killed: they keep its process group, which ``stop`` then ends, and
  ``status`` reports such a server as answering without its launcher.
* Both are idempotent: a second ``start`` says the server is running, ``stop`` with
  nothing running says so and succeeds.

The server's log, pid file and PostgreSQL's log are in ``.mlflow-server/``. The backend
URI reaches ``mlflow server`` through its ``MLFLOW_BACKEND_STORE_URI`` environment
variable, so the password never shows in a process list.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"  #: the only interface either server binds
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_PG_PORT = 5433
CREDENTIALS_KEY = "mlflow_server_postgres"  #: entry of ``conf/local/credentials.yml``
PG_USER = "mlflow"
PG_DATABASE = "mlflow"
PG_OS_USER = "postgres"  #: the account PostgreSQL runs under when we are root
PG_INSTALL_HINT = "install Debian's postgresql package: bash scripts/install_postgres.sh"
STARTUP_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0
#: The web servers ``mlflow server`` runs its app under (a word of their command line).
SERVER_PROGRAMS: tuple[bytes, ...] = (b"uvicorn", b"gunicorn")
#: MLflow's app as those servers are given it (``mlflow.server.fastapi_app:app``, ...).
SERVER_APP_PREFIX = b"mlflow.server"
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


class TrackingServerError(RuntimeError):
    """The tracking server or its PostgreSQL cluster could not be started or stopped."""


@dataclass(frozen=True)
class ServerConfig:
    """Where the server and its database live, and on which ports they listen."""

    mlflow_port: int
    pg_port: int
    pgdata: Path
    artifacts: str
    credentials: Path
    state_dir: Path
    backend_store_uri: str | None = None
    workers: int = 2

    @classmethod
    def from_env(cls, root: Path, environ: Mapping[str, str]) -> ServerConfig:
        """The defaults for a project folder, overridden by environment variables.

        ``MLFLOW_PORT``, ``PGPORT``, ``MLFLOW_BACKEND_STORE_URI``,
        ``MLFLOW_ARTIFACTS_DESTINATION`` (a local folder, or a URI such as ``s3://bucket``)
        and ``MLFLOW_SERVER_WORKERS``.

        Raises:
            TrackingServerError: A port or the worker count is not a positive integer.
        """
        root = root.resolve()
        return cls(
            mlflow_port=_int_setting(environ, "MLFLOW_PORT", DEFAULT_MLFLOW_PORT),
            pg_port=_int_setting(environ, "PGPORT", DEFAULT_PG_PORT),
            pgdata=root / ".pgdata",
            artifacts=environ.get("MLFLOW_ARTIFACTS_DESTINATION") or str(root / "mlartifacts"),
            credentials=root / "conf" / "local" / "credentials.yml",
            state_dir=root / ".mlflow-server",
            backend_store_uri=environ.get("MLFLOW_BACKEND_STORE_URI") or None,
            workers=_int_setting(environ, "MLFLOW_SERVER_WORKERS", 2),
        )

    @property
    def url(self) -> str:
        """Tracking URI of the server (``MLFLOW_TRACKING_URI`` for clients)."""
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "mlflow.pid"

    @property
    def mlflow_log(self) -> Path:
        return self.state_dir / "mlflow.log"

    @property
    def pg_log(self) -> Path:
        return self.state_dir / "postgres.log"


def _int_setting(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise TrackingServerError(f"{name}={raw!r}: expected a positive integer")
    return value


# --- PostgreSQL -----------------------------------------------------------------------


def pg_binary(name: str) -> str:
    """Path of a PostgreSQL server program (``initdb``, ``pg_ctl``).

    Debian keeps them in ``/usr/lib/postgresql/<major>/bin`` (not on ``PATH``); the
    newest major version there is used when ``PATH`` has none.

    Raises:
        TrackingServerError: PostgreSQL is not installed.
    """
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else -1,
    )
    if candidates:
        return str(candidates[-1])
    raise TrackingServerError(f"PostgreSQL's `{name}` was not found; {PG_INSTALL_HINT}")


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _postgres_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        raise TrackingServerError(
            f"running as root, but there is no `{PG_OS_USER}` user to run PostgreSQL as "
            f"(PostgreSQL refuses to run as root); {PG_INSTALL_HINT}"
        ) from None


def _as_pg_user(command: Sequence[str]) -> list[str]:
    """``command`` run as the ``postgres`` user when we are root, else as ourselves."""
    if _running_as_root():
        _postgres_account()
        return ["runuser", "-u", PG_OS_USER, "--", *command]
    return list(command)


def _give_to_pg_user(path: Path) -> None:
    """Make ``path`` owned by the ``postgres`` user (only needed, and done, as root)."""
    if _running_as_root():
        account = _postgres_account()
        os.chown(path, account.pw_uid, account.pw_gid)


def _check_reachable_by_pg_user(folder: Path) -> None:
    """As root: every folder above ``folder`` must be searchable by the ``postgres`` user."""
    if not _running_as_root():
        return
    uid = _postgres_account().pw_uid
    for parent in folder.resolve().parents:
        info = parent.stat()
        if info.st_uid != uid and not info.st_mode & 0o001:
            raise TrackingServerError(
                f"{folder}: the folder above it, {parent}, is not searchable by the "
                f"`{PG_OS_USER}` user (mode {oct(info.st_mode & 0o777)}); put the data "
                "folder elsewhere or allow others to enter it (chmod o+x)"
            )


def _run(command: Sequence[str], what: str, timeout: float = 120.0) -> str:
    proc = subprocess.run(
        list(command), capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise TrackingServerError(
            f"{what} failed (exit {proc.returncode}): {' '.join(command)}\n"
            f"{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return proc.stdout


def load_credentials(path: Path) -> dict[str, str] | None:
    """The ``mlflow_server_postgres`` entry of a credentials file, or None if absent.

    Raises:
        TrackingServerError: The file is not a YAML mapping, or the entry lacks a key.
    """
    if not path.is_file():
        return None
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict):
        raise TrackingServerError(f"{path}: expected a YAML mapping of credential entries")
    entry = content.get(CREDENTIALS_KEY)
    if entry is None:
        return None
    missing = {"username", "password", "database"} - set(entry if isinstance(entry, dict) else ())
    if missing:
        raise TrackingServerError(
            f"{path}: entry '{CREDENTIALS_KEY}' must hold username, password and database; "
            f"missing {sorted(missing)}"
        )
    return {key: str(entry[key]) for key in ("username", "password", "database")}


def save_credentials(path: Path, credentials: Mapping[str, str]) -> None:
    """Write (or replace) the ``mlflow_server_postgres`` entry; other entries are kept.

    The file is readable by its owner only. Comments in an existing file are not kept.
    """
    content: dict = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise TrackingServerError(f"{path}: expected a YAML mapping of credential entries")
        content = loaded
    content[CREDENTIALS_KEY] = dict(credentials)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(
            "# Local secrets (git-ignored). mlflow_server_postgres: written by\n"
            "# `make mlflow-server` for its project-local PostgreSQL cluster (.pgdata/).\n"
        )
        yaml.safe_dump(content, handle, sort_keys=False)
    os.replace(partial, path)


def postgres_uri(credentials: Mapping[str, str], port: int) -> str:
    """SQLAlchemy URI of the local cluster's MLflow database."""
    user = urllib.parse.quote(credentials["username"], safe="")
    password = urllib.parse.quote(credentials["password"], safe="")
    return f"postgresql+psycopg2://{user}:{password}@{HOST}:{port}/{credentials['database']}"


def cluster_exists(config: ServerConfig) -> bool:
    return (config.pgdata / "PG_VERSION").is_file()


def postgres_running(config: ServerConfig) -> bool:
    """Whether the cluster in ``config.pgdata`` has a running server (``pg_ctl status``)."""
    if not cluster_exists(config):
        return False
    command = _as_pg_user([pg_binary("pg_ctl"), "status", "-D", str(config.pgdata)])
    proc = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0


def postgres_pid(config: ServerConfig) -> int | None:
    """The postmaster's pid (first line of ``postmaster.pid``), or None when not running."""
    pid_file = config.pgdata / "postmaster.pid"
    if not postgres_running(config) or not pid_file.is_file():
        return None
    return int(pid_file.read_text().split("\n", 1)[0])


def init_cluster(config: ServerConfig) -> dict[str, str]:
    """``initdb`` a new cluster into ``config.pgdata``; save and return its credentials.

    The superuser is ``mlflow`` with a random password (SCRAM); the server listens on
    ``127.0.0.1`` only and has no Unix socket.

    Raises:
        TrackingServerError: ``pgdata`` exists and is not empty, or ``initdb`` failed.
    """
    pgdata = config.pgdata
    if pgdata.exists() and any(pgdata.iterdir()):
        raise TrackingServerError(
            f"{pgdata}: not empty but not a PostgreSQL cluster (no PG_VERSION); "
            "remove it or point the server elsewhere"
        )
    pgdata.mkdir(parents=True, exist_ok=True)
    pgdata.chmod(0o700)
    _check_reachable_by_pg_user(pgdata)
    _give_to_pg_user(pgdata)
    credentials = {
        "username": PG_USER,
        "password": secrets.token_urlsafe(24),
        "database": PG_DATABASE,
    }
    with tempfile.TemporaryDirectory(prefix="cxr-initdb-") as scratch:
        folder = Path(scratch)
        pwfile = folder / "pw"
        pwfile.write_text(credentials["password"] + "\n")
        pwfile.chmod(0o600)
        _give_to_pg_user(folder)
        _give_to_pg_user(pwfile)
        _run(
            _as_pg_user(
                [
                    pg_binary("initdb"),
                    "-D",
                    str(pgdata),
                    "-U",
                    PG_USER,
                    f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256",
                    "--auth-local=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                ]
            ),
            f"initdb of {pgdata}",
        )
    with (pgdata / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# cxr_spurious.tracking_server: loopback TCP only, no Unix socket\n"
            f"listen_addresses = '{HOST}'\n"
            "unix_socket_directories = ''\n"
        )
    save_credentials(config.credentials, credentials)
    return credentials


def start_postgres(config: ServerConfig) -> dict[str, str]:
    """Initialise the cluster if needed, start it, make sure the MLflow database exists.

    Returns:
        The cluster's credentials.

    Raises:
        TrackingServerError: No credentials for an existing cluster, the port is taken,
            or the server did not start (the message holds its log).
    """
    if cluster_exists(config):
        credentials = load_credentials(config.credentials)
        if credentials is None:
            raise TrackingServerError(
                f"{config.pgdata} holds a cluster but {config.credentials} has no "
                f"'{CREDENTIALS_KEY}' entry with its password; restore it, or remove "
                f"{config.pgdata} to start over with an empty database"
            )
    else:
        logger.info(f"initialising PostgreSQL in {config.pgdata}")
        credentials = init_cluster(config)
    if postgres_running(config):
        logger.info(f"PostgreSQL already running ({config.pgdata})")
    else:
        _require_free_port(config.pg_port, "PGPORT")
        config.state_dir.mkdir(parents=True, exist_ok=True)
        config.pg_log.touch()
        _give_to_pg_user(config.pg_log)
        command = [
            pg_binary("pg_ctl"),
            "start",
            "-D",
            str(config.pgdata),
            "-l",
            str(config.pg_log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {config.pg_port}",
        ]
        try:
            _run(_as_pg_user(command), f"starting PostgreSQL in {config.pgdata}")
        except TrackingServerError as exc:
            tail = config.pg_log.read_text(errors="replace")[-3000:]
            raise TrackingServerError(f"{exc}\n--- {config.pg_log} ---\n{tail}") from None
        logger.info(f"PostgreSQL on {HOST}:{config.pg_port}")
    _ensure_database(credentials, _postgres_port(config))
    return credentials


def _postgres_port(config: ServerConfig) -> int:
    """The port the running cluster listens on (4th line of ``postmaster.pid``)."""
    lines = (config.pgdata / "postmaster.pid").read_text().split("\n")
    return int(lines[3])


def _ensure_database(credentials: Mapping[str, str], port: int) -> None:
    """Create the MLflow database if the cluster does not have it yet."""
    import psycopg2

    connection = psycopg2.connect(
        host=HOST,
        port=port,
        user=credentials["username"],
        password=credentials["password"],
        dbname="postgres",
        connect_timeout=10,
    )
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (credentials["database"],)
            )
            if cursor.fetchone() is None:
                name = credentials["database"]
                if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                    raise TrackingServerError(
                        f"database name {name!r}: expected lower-case letters, digits and _"
                    )
                cursor.execute(f"CREATE DATABASE {name}")
    finally:
        connection.close()


def stop_postgres(config: ServerConfig, wait_s: float = 10.0) -> bool:
    """Stop the local cluster (fast shutdown). Returns whether it was running.

    ``pg_ctl stop -w`` returns once ``postmaster.pid`` is gone, which the postmaster removes
    just before it exits; the postmaster and its children are then waited for (up to
    ``wait_s``), so that nothing of the cluster runs when this returns.

    Raises:
        TrackingServerError: ``pg_ctl`` failed, or a process of the cluster still runs after
            ``wait_s``.
    """
    if not postgres_running(config):
        return False
    postmaster = postgres_pid(config)
    family = _children_and_self(postmaster) if postmaster is not None else []
    command = [pg_binary("pg_ctl"), "stop", "-D", str(config.pgdata), "-m", "fast", "-w"]
    _run(_as_pg_user(command), f"stopping PostgreSQL in {config.pgdata}")
    deadline = time.monotonic() + wait_s
    while (left := [pid for pid in family if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        raise TrackingServerError(
            f"PostgreSQL in {config.pgdata}: pg_ctl stopped it, but its processes {left} "
            f"still run after {wait_s:g} s"
        )
    return True


def _proc_table() -> Iterator[tuple[int, str, int, int]]:
    """``(pid, state, ppid, pgid)`` of every process in ``/proc`` (nothing without ``/proc``)."""
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, ppid, pgid = stat[stat.rindex(")") + 2 :].split()[:3]
        yield int(entry.name), state, int(ppid), int(pgid)


def _running(pid: int) -> bool:
    """Whether ``pid`` is a living process (a zombie, already dead, is not), from ``/proc``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] not in {"Z", "X"}


def _children_and_self(pid: int) -> list[int]:
    """``pid`` and its living child processes, from ``/proc``."""
    return [pid] + [
        p for p, state, ppid, _ in _proc_table() if ppid == pid and state not in {"Z", "X"}
    ]


def _require_free_port(port: int, setting: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            raise TrackingServerError(
                f"port {port} on {HOST} is in use by another program; choose another with "
                f"{setting}=<port>"
            ) from None


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _boot_id() -> str:
    """This boot's id (``/proc/sys/kernel/random/boot_id``; empty where there is none)."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _write_pid_file(config: ServerConfig, pid: int) -> None:
    """The pid file: the launcher's pid, then the boot it was started in."""
    config.pid_file.write_text(f"{pid}\n{_boot_id()}\n")


def _pid_file_pid(config: ServerConfig) -> int | None:
    """The pid in the pid file (also the server's process group id), or None.

    None also when the file was written in another boot (a reboot or a container restart
    kept the project folder): its pid may now be any program's.
    """
    try:
        lines = config.pid_file.read_text().split()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    if len(lines) > 1 and lines[1] != _boot_id():
        return None
    return pid


def _words(args: list[bytes]) -> list[bytes]:
    """The program names in ``args``: each argument's basename without ``.py``."""
    return [os.path.basename(a).removesuffix(b".py") for a in args]


def _is_server_process(args: list[bytes]) -> bool:
    """``mlflow server`` (the launcher), or the uvicorn / gunicorn serving MLflow's app.

    Whole words only: ``mlflow ui`` or a program that merely has ``mlflow`` in a path is
    not the server.
    """
    words = _words(args)
    launcher = any(a == b"mlflow" and b == b"server" for a, b in zip(words, words[1:]))
    serving = any(w in SERVER_PROGRAMS for w in words) and any(
        a.startswith(SERVER_APP_PREFIX) for a in args
    )
    return launcher or serving


def _cmdline(pid: int) -> list[bytes]:
    """The arguments of process ``pid`` (empty when it is gone or a zombie)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def mlflow_pid(config: ServerConfig) -> int | None:
    """Pid of the MLflow server this module started, or None when it is not running.

    The pid file's process must still exist and be ``mlflow server`` (a reused pid is
    not taken for the server).
    """
    pid = _pid_file_pid(config)
    if pid is None:
        return None
    words = _words(_cmdline(pid))
    return pid if any(a == b"mlflow" and b == b"server" for a, b in zip(words, words[1:])) else None


def _group_processes(pgid: int) -> list[int]:
    """The living (not zombie) processes of process group ``pgid``, from ``/proc``."""
    return [p for p, state, _, group in _proc_table() if state != "Z" and group == pgid]


def server_group(config: ServerConfig) -> int | None:
    """Process group of the MLflow server this module started, while any of it still runs.

    The group id is the pid file's pid (the launcher runs in a session of its own). The
    launcher itself may be gone (killed) while its ``uvicorn`` / ``gunicorn`` server keeps
    serving in its group; a group none of whose processes is ``mlflow server`` or a web
    server of MLflow's app (``_is_server_process``: a reused id, say a user's ``mlflow ui``)
    is not taken for the server, nor is a pid file of another boot.
    """
    pgid = _pid_file_pid(config)
    if pgid is None:
        return None
    for pid in _group_processes(pgid):
        if _is_server_process(_cmdline(pid)):
            return pgid
    return None


def _is_uri(location: str) -> bool:
    return "://" in location


def mlflow_command(config: ServerConfig) -> list[str]:
    """The ``mlflow server`` command line (the backend URI goes in the environment)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        HOST,
        "--port",
        str(config.mlflow_port),
        "--serve-artifacts",
        "--artifacts-destination",
        config.artifacts if _is_uri(config.artifacts) else str(Path(config.artifacts).resolve()),
        "--workers",
        str(config.workers),
    ]


def start_mlflow(config: ServerConfig, backend_store_uri: str) -> int:
    """Start ``mlflow server`` in its own session; wait until ``/health`` answers.

    Returns:
        The server's pid.

    Raises:
        TrackingServerError: The port is taken, or the server exited or did not answer
            within ``STARTUP_TIMEOUT_S`` (the message ends with its log).
    """
    _require_free_port(config.mlflow_port, "MLFLOW_PORT")
    config.state_dir.mkdir(parents=True, exist_ok=True)
    if not _is_uri(config.artifacts):
        Path(config.artifacts).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["MLFLOW_BACKEND_STORE_URI"] = backend_store_uri
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "1")
    with config.mlflow_log.open("wb") as log:
        proc = subprocess.Popen(
            mlflow_command(config),
            cwd=config.state_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _write_pid_file(config, proc.pid)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _healthy(config.url):
        if proc.poll() is not None or time.monotonic() > deadline:
            reason = (
                f"exited with code {proc.returncode}"
                if proc.poll() is not None
                else f"did not answer within {STARTUP_TIMEOUT_S:.0f} s"
            )
            _stop_group(proc.pid)
            config.pid_file.unlink(missing_ok=True)
            tail = config.mlflow_log.read_text(errors="replace")[-4000:]
            raise TrackingServerError(
                f"mlflow server on {config.url} {reason}\n--- {config.mlflow_log} ---\n{tail}"
            )
        time.sleep(0.5)
    return proc.pid


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, already dead, do not count)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(-pgid, os.WNOHANG)  # reap our own children of the group
    return bool(_group_processes(pgid))


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise TrackingServerError(
            f"process group {pgid} (the pid file's) belongs to another user: not ours to stop"
        ) from None


def _stop_group(pgid: int) -> None:
    """SIGTERM the process group, SIGKILL what is left after ``STOP_GRACE_S``; wait until
    no process of it runs (at most ``STOP_GRACE_S`` more).

    Raises:
        TrackingServerError: the group belongs to another user.
    """
    _signal_group(pgid, signal.SIGTERM)
    for sig in (signal.SIGKILL, None):
        deadline = time.monotonic() + STOP_GRACE_S
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if sig is not None and _group_alive(pgid):
            _signal_group(pgid, sig)


def stop_mlflow(config: ServerConfig) -> bool:
    """Stop the MLflow server and its workers. Returns whether it was running.

    The server's process group is stopped also when its launcher (the pid file's pid) is
    gone; the pid file goes only once no process of the group runs.

    Raises:
        TrackingServerError: processes of the group still run after SIGKILL (the pid file
            is kept, so that a later ``stop`` finds them).
    """
    pgid = server_group(config)
    if pgid is not None:
        _stop_group(pgid)  # started with start_new_session: its pid is its group id
        left = _group_processes(pgid)
        if left:
            raise TrackingServerError(
                f"processes {left} of the MLflow server's process group {pgid} still run "
                f"after SIGKILL; kept {config.pid_file}"
            )
    config.pid_file.unlink(missing_ok=True)
    return pgid is not None


# --- commands -----------------------------------------------------------------------------


def start(config: ServerConfig) -> str:
    """Start PostgreSQL (unless ``backend_store_uri`` is given) and the MLflow server.

    Returns:
        The tracking URI.
    """
    pid = mlflow_pid(config)
    if pid is not None and _healthy(config.url):
        logger.info(f"MLflow server already running at {config.url} (pid {pid})")
        return config.url
    if server_group(config) is not None:
        stop_mlflow(config)  # a process that no longer answers, or one without its launcher
    if config.backend_store_uri:
        backend = config.backend_store_uri
        shown = "MLFLOW_BACKEND_STORE_URI"
    else:
        backend = postgres_uri(start_postgres(config), _postgres_port(config))
        shown = f"PostgreSQL on {HOST}:{_postgres_port(config)}, password in {config.credentials}"
    pid = start_mlflow(config, backend)
    logger.info(
        f"MLflow server at {config.url} (pid {pid}); backend: {shown}; "
        f"artifacts: {config.artifacts}; log: {config.mlflow_log}\n"
        f"  point clients at it: export MLFLOW_TRACKING_URI={config.url}"
    )
    return config.url


def stop(config: ServerConfig) -> None:
    """Stop the MLflow server, then the local PostgreSQL cluster; fine if neither runs."""
    stopped = stop_mlflow(config)
    logger.info(f"MLflow server {'stopped' if stopped else 'was not running'}")
    if cluster_exists(config):
        stopped = stop_postgres(config)
        logger.info(f"PostgreSQL {'stopped' if stopped else 'was not running'}")


def status(config: ServerConfig) -> bool:
    """Report what runs (logged); True when the MLflow server answers."""
    pid, group = mlflow_pid(config), server_group(config)
    healthy = group is not None and _healthy(config.url)
    if healthy and pid is not None:
        logger.info(f"MLflow server running at {config.url} (pid {pid})")
    elif healthy:
        logger.warning(
            f"MLflow server answering at {config.url} but its launcher (pid {group}) is gone; "
            "run stop"
        )
    elif group is not None:
        logger.warning(
            f"MLflow server not answering at {config.url}, but processes of its process group "
            f"{group} still run; run stop"
        )
    else:
        logger.info("MLflow server not running")
    pg = postgres_pid(config)
    logger.info(f"PostgreSQL {f'running (pid {pg})' if pg else 'not running'}")
    return healthy


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``start``, ``stop`` or ``status`` (exit 1 on an error, with its reason)."""
    parser = argparse.ArgumentParser(
        prog="python -m cxr_spurious.tracking_server",
        description="MLflow tracking server on PostgreSQL, bound to 127.0.0.1.",
    )
    parser.add_argument("command", choices=("start", "stop", "status"))
    parser.add_argument(
        "--root",
        type=Path,
        default=Path.cwd(),
        help="project folder holding .pgdata/, mlartifacts/, .mlflow-server/ and conf/local/",
    )
    args = parser.parse_args(argv)
    with _console():
        return _run_command(args)


@contextlib.contextmanager
def _console() -> Iterator[None]:
    """Messages of this module on the console: progress on stdout, errors on stderr."""
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(lambda record: record.levelno < logging.ERROR)
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.ERROR)
    handlers = (out, err)
    for handler in handlers:
        handler.setFormatter(logging.Formatter("tracking_server: %(message)s"))
        logger.addHandler(handler)
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        for handler in handlers:
            handler.flush()
            logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _run_command(args: argparse.Namespace) -> int:
    try:
        config = ServerConfig.from_env(args.root, os.environ)
        if args.command == "start":
            start(config)
        elif args.command == "stop":
            stop(config)
        else:
            return 0 if status(config) else 3
    except TrackingServerError as exc:
        logger.error(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
