#!/usr/bin/env bash
# The whole test suite: unit tests, the real-sshd and real-IdP end-to-end tests.
# As root it installs what the tests need (openssh-server, the test IdP's npm packages).
# With CI=true a missing sshd, Node.js or root fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
    echo "== installing openssh-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
    mkdir -p -m 0755 /run/sshd
elif [ "${CI:-}" = true ]; then
    echo "CI=true but not running as root: the end-to-end tests need root to create OS users" >&2
    exit 1
fi

if [ -f tests/idp/package-lock.json ]; then
    if command -v node >/dev/null && command -v npm >/dev/null; then
        echo "== npm ci (test IdP)"
        (cd tests/idp && npm ci --no-audit --no-fund --loglevel=error)
    elif [ "${CI:-}" = true ]; then
        echo "CI=true but Node.js (>= 20.18) is missing: the test IdP needs it" >&2
        exit 1
    fi
fi

echo "== building binaries"
cargo build --workspace --bins
echo "== running tests"
cargo test --workspace
