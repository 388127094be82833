#!/usr/bin/env bash
# Install Debian's `chromium` package for the browser tests (tests/browser) when missing.
#
# Idempotent and silent when Chromium is already there. Needs root (or password-less
# sudo) and apt-get; elsewhere it says so and exits 0: the browser tests then skip,
# except on CI (CI=1) where they fail because a browser is required.
# Ubuntu's `chromium` is a snap wrapper that does not run headless in containers; use
# Debian (the CI image) or install Chromium yourself and put it on PATH.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
# shellcheck source=scripts/apt_install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh"
status=0
apt_install install_chromium "install Chromium yourself (browser tests skip without it)" \
    chromium fonts-dejavu-core || status=$?
[ "$status" -eq 1 ] && exit 0  # no apt-get or no root: said so above
[ "$status" -eq 0 ] || exit "$status"
command -v chromium >/dev/null 2>&1 || { echo "install_chromium: chromium still not on PATH" >&2; exit 1; }
echo "install_chromium: $(chromium --version 2>/dev/null || echo chromium) installed" >&2
