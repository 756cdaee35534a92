#!/usr/bin/env bash
# Regenerate every oracle fixture (tests/fixtures/, assets/llava-tiny-random, assets/images/demo.png)
# with HF transformers on the CPU. Creates .venv with the pinned requirements on first use.
# Needs network access to PyPI once; the CPU-only torch wheel is enough:
#   PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu scripts/make_fixtures.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${FICOCO_VENV:-$root/.venv}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet -r "$root/scripts/requirements.txt"
fi
"$venv/bin/python" "$root/scripts/make_fixtures.py" --root "$root" "$@"
# ToMe across tower layers on the model just written.
"$venv/bin/python" "$root/scripts/make_tome_fixture.py" --root "$root"
