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
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium: apt-get not found; install Chromium yourself (browser tests skip without it)" >&2
    exit 0
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "install_chromium: needs root to run apt-get install chromium (browser tests skip without it)" >&2
        exit 0
    fi
fi
echo "install_chromium: installing Debian's chromium for the browser tests (a minute or two)..." >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >/dev/null
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "install_chromium: chromium still not on PATH" >&2; exit 1; }
echo "install_chromium: $(chromium --version 2>/dev/null || echo chromium) installed" >&2
