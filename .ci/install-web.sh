#!/usr/bin/env bash
# Installs what the browser test (tests/web.rs -> examples/web/test.sh) needs on Debian 12 besides
# Rust: Debian's chromium, node, and the node packages of examples/web (playwright-core, which
# drives Chromium; no browser download). examples/web/build.sh adds the wasm32 target and the
# wasm-bindgen CLI of the pinned version itself when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
apt_install() {
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@" ||
    { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "$@"; }
}
[ -x /usr/bin/chromium ] || apt_install chromium
# Debian's node 18 is enough (playwright-core 1.55 needs >= 18); keep a node that is already
# there (e.g. NodeSource's, which bundles npm and conflicts with Debian's npm package).
command -v npm >/dev/null || apt_install nodejs npm
(cd examples/web && npm ci --no-audit --no-fund)
