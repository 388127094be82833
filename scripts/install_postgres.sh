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
# shellcheck source=scripts/apt_install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh"
status=0
apt_install install_postgres "install PostgreSQL (initdb, pg_ctl) yourself" postgresql || status=$?
[ "$status" -eq 1 ] && exit 0  # no apt-get or no root: said so above
[ "$status" -eq 0 ] || exit "$status"
have_postgres || { echo "install_postgres: initdb still not found after the install" >&2; exit 1; }
echo "install_postgres: $(ls -d /usr/lib/postgresql/*/ 2>/dev/null | tr '\n' ' ')installed" >&2
