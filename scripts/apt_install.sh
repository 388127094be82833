#!/usr/bin/env bash
# Shared by install_chromium.sh and install_postgres.sh (source it, then call
# `apt_install <name> <hint> <package>...`): installs Debian packages non-interactively with
# apt-get, as root or through password-less sudo. Without apt-get or root it prints
# "<name>: ... <hint>" and returns 1, so the caller decides whether that is an error; a
# failing apt-get returns 2.

apt_install() {
    local name=$1 hint=$2
    shift 2
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$name: apt-get not found; $hint" >&2
        return 1
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "$name: needs root to run apt-get install $*; $hint" >&2
            return 1
        fi
    fi
    echo "$name: installing Debian's $* (a minute or two)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq >/dev/null || return 2
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null || return 2
}
