#!/usr/bin/env bash
# Builds the browser demo as a static site: the `web` example for wasm32-unknown-unknown, its JS
# glue from the wasm-bindgen CLI (the version Cargo.lock pins, installed if missing), the page,
# the model files with a manifest, and the default image. Any static server can host the result.
#
#   bash examples/web/build.sh [--model DIR] [--image FILE] [--out DIR]
#
# Defaults: --model assets/llava-vqa, --image assets/vqa-test/images/000003.png,
# --out examples/web/dist. Serve with e.g. `python3 -m http.server -d examples/web/dist 8000
# --bind 127.0.0.1` and open http://127.0.0.1:8000/ in a browser with WebGPU.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

model=assets/llava-vqa
image=assets/vqa-test/images/000003.png
out=examples/web/dist
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
for f in config.json model.safetensors tokenizer.json; do
  [ -f "$model/$f" ] || { echo "build.sh: $model/$f is missing (the demo needs a single-file safetensors llava-hf model)" >&2; exit 1; }
done
[ -f "$image" ] || { echo "build.sh: image $image not found" >&2; exit 1; }

# The wasm-bindgen CLI must be the exact version of the wasm-bindgen crate in Cargo.lock.
version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print }' Cargo.lock)
[ -n "$version" ] || { echo "build.sh: no wasm-bindgen in Cargo.lock" >&2; exit 1; }
if ! wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $version"; then
  echo "build.sh: installing wasm-bindgen-cli $version" >&2
  # Only the wasm-bindgen binary, without TLS (for the test runner's downloads): builds faster.
  lean="--no-default-features --bin wasm-bindgen"
  cargo install wasm-bindgen-cli --version "=$version" $lean --locked ||
    # The CLI's own lock file can name versions a registry mirror lacks: resolve afresh.
    cargo install wasm-bindgen-cli --version "=$version" $lean
fi
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown ||
  rustup target add wasm32-unknown-unknown

cargo build --release --target wasm32-unknown-unknown --example web
target_dir="${CARGO_TARGET_DIR:-$root/target}"
wasm="$target_dir/wasm32-unknown-unknown/release/examples/web.wasm"

rm -rf "$out"
mkdir -p "$out/pkg" "$out/model"
wasm-bindgen --target web --no-typescript --out-dir "$out/pkg" "$wasm"
cp examples/web/index.html examples/web/app.js "$out/"
cp "$image" "$out/demo.png"

# The model files the page loads, and a manifest naming them with their sizes; its id (a hash
# of the contents) names the browser cache, so a changed model is fetched again.
files=()
for f in config.json model.safetensors tokenizer.json tokenizer_config.json \
         preprocessor_config.json processor_config.json; do
  if [ -f "$model/$f" ]; then
    cp "$model/$f" "$out/model/$f"
    files+=("$f")
  fi
done
id=$(cd "$out/model" && sha256sum "${files[@]}" | sha256sum | cut -c1-16)
{
  printf '{"name": "%s", "id": "%s", "files": [' "$(basename "$model")" "$id"
  sep=""
  for f in "${files[@]}"; do
    printf '%s{"name": "%s", "size": %s}' "$sep" "$f" "$(stat -c %s "$out/model/$f")"
    sep=", "
  done
  printf ']}\n'
} > "$out/model/manifest.json"
echo "built $out (wasm $(stat -c %s "$out/pkg/web_bg.wasm") bytes, model $(basename "$model") id $id)"
