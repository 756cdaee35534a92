#!/usr/bin/env bash
# The browser test: builds the demo site (build.sh), answers a fixed question about a fixed
# image with the native `generate` CLI with and without reduction, then asks the same in the
# page in headless Chromium (WebGPU on SwiftShader: no shader-f16, 128 MiB bindings) and fails
# unless the answers are identical. Prints both answers and the screenshot's path.
#
#   bash examples/web/test.sh [--model DIR] [--image FILE]
#
# Needs Debian's chromium (`apt-get install chromium`, or CHROMIUM=/path) and node with npm.
# Artifacts (screenshot.png, results.json) go to $FICOCO_WEB_ARTIFACTS, default
# $CARGO_TARGET_DIR/web-test (target/web-test).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

model=assets/llava-vqa
image=assets/vqa-test/images/000003.png
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --image) image="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "test.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
question="What character is on the label?"
max_new_tokens=32
# The screenshot shows the last case: a vision-side reduction, so the overlay shows merges.
cases=(none ficoco-l:64 ficoco-v:64)
# Then the page loads again with the decoder quantised while loading (as --quantize).
quantize=q4_k
quantized_cases=(none ficoco-v:64)

chromium="${CHROMIUM:-/usr/bin/chromium}"
[ -x "$chromium" ] || { echo "test.sh: $chromium not found: apt-get install -y chromium (or set CHROMIUM)" >&2; exit 2; }
command -v node >/dev/null || { echo "test.sh: node is missing: apt-get install -y nodejs npm" >&2; exit 2; }

target_dir="${CARGO_TARGET_DIR:-$root/target}"
artifacts="${FICOCO_WEB_ARTIFACTS:-$target_dir/web-test}"
site="$artifacts/site"
mkdir -p "$artifacts"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"

t0=$SECONDS
bash examples/web/build.sh --model "$model" --image "$image" --out "$site"
echo "test.sh: site built in $((SECONDS - t0)) s"

t0=$SECONDS
cargo build --release --example generate
generate="$target_dir/release/examples/generate"
expect="$artifacts/expected.json"
native_cases() { # extra generate options..., then --cases and the reductions
  local opts=() sep=""
  while [ "$1" != --cases ]; do opts+=("$1"); shift; done
  shift
  for c in "$@"; do
    native=$("$generate" --model "$model" --image "$image" --prompt "$question" \
      --max-new-tokens "$max_new_tokens" --reduce "$c" --json "${opts[@]}")
    printf '%s{"reduce": "%s", "native": %s}' "$sep" "$c" "$native"
    sep=", "
  done
}
{
  printf '{"question": "%s", "max_new_tokens": %s, "cases": [' "$question" "$max_new_tokens"
  native_cases --cases "${cases[@]}"
  printf '], "quantized": {"quantize": "%s", "cases": [' "$quantize"
  native_cases --quantize "$quantize" --cases "${quantized_cases[@]}"
  printf ']}}\n'
} > "$expect"
echo "test.sh: native answers in $((SECONDS - t0)) s"

if [ ! -d examples/web/node_modules/playwright-core ]; then
  (cd examples/web && npm ci --no-audit --no-fund)
fi
t0=$SECONDS
status=0
node examples/web/drive.mjs --site "$site" --expect "$expect" --chromium "$chromium" \
  --screenshot "$artifacts/screenshot.png" --report "$artifacts/results.json" || status=$?
echo "test.sh: browser run in $((SECONDS - t0)) s"
if [ "$status" -ne 0 ]; then
  echo "test.sh: FAILED (the browser's answers differ from the native CLI's, or the page failed)" >&2
fi
exit "$status"
