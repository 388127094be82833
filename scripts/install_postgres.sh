#!/usr/bin/env bash
# Install Debian's `postgresql` package for the team MLflow server (`make mlflow-server`,
# src/cxr_spurious/tracking_server.py) and its tests (tests/server) when missing.
#
# Idempotent and silent when PostgreSQL's server programs are there (`initdb` on PATH or in
# Debian's /usr/lib/postgresql/<major>/bin). Needs root (or password-less sudo) and
# apt-get; elsewhere it says so and exits 0: install PostgreSQL yourself (any packaging
# that provides initdb and pg_ctl), or point the server at an existing database with
# MLFLOW_BACKEND_STORE_URI. Debian's package may also create and start its own `main`
# cluster on port 5432; the project's cluster is a separate one (.pgdata/, port 5433).
set -euo pipefail

have_postgres() {
    command -v initdb >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null 2>&1
}

if have_postgres; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_postgres: apt-get not found; install PostgreSQL (initdb, pg_ctl) yourself" >&2
    exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install_postgres: needs root to run apt-get install postgresql" >&2
        exit 0
    fi
fi
echo "install_postgres: installing Debian's postgresql for the MLflow server (a minute)..." >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >/dev/null
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends postgresql >/dev/null
have_postgres || { echo "install_postgres: initdb still not found after the install" >&2; exit 1; }
echo "install_postgres: $(ls -d /usr/lib/postgresql/*/ 2>/dev/null | tr '\n' ' ')installed" >&2
