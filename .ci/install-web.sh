#!/usr/bin/env bash
# Installs what the browser test (tests/web.rs -> examples/web/test.sh) needs on Debian 12:
# Debian's chromium, the wasm32 target, the wasm-bindgen CLI of the version Cargo.lock pins and
# the node packages of examples/web (playwright-core, driving Chromium; no browser download).
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
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print }' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $version"; then
  cargo install wasm-bindgen-cli --version "=$version" --locked ||
    cargo install wasm-bindgen-cli --version "=$version"
fi
(cd examples/web && npm ci --no-audit --no-fund)
