#!/usr/bin/env python3
"""Random GGML blocks of every type ficoco reads, dequantised by the `gguf` package (the oracle).

    .venv/bin/python scripts/make_quant_fixtures.py [--root REPO_ROOT]

Writes tests/fixtures/quant/blocks.safetensors: for each type T, `T.bytes` (u8, whole blocks: 3
rows of 2 blocks for the 32-value types, 3 rows of 1 block for the K types) and `T.values` (f32,
gguf.quants.dequantize of those bytes). Random bytes are valid blocks once every f16 scale is
replaced by a finite one, which this script does. Checked by tests/ops_quant.rs.
"""

import argparse
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize
from safetensors.numpy import save_file

# Byte offsets of the f16 scales inside one block.
SCALES = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=Path(__file__).resolve().parent.parent, type=Path)
    root = ap.parse_args().root
    rng = np.random.default_rng(26)
    out = {}
    for name, offsets in SCALES.items():
        qt = Q[name]
        elems, size = GGML_QUANT_SIZES[qt]
        per_row = 2 if elems == 32 else 1
        blocks = rng.integers(0, 256, size=(3 * per_row, size), dtype=np.uint8)
        for o in offsets:
            scale = rng.uniform(-0.1, 0.1, size=3 * per_row).astype(np.float16)
            blocks[:, o:o + 2] = scale.view(np.uint8).reshape(-1, 2)
        raw = blocks.reshape(3, per_row * size)
        values = dequantize(raw, qt).astype(np.float32)
        assert values.shape == (3, per_row * elems) and np.isfinite(values).all()
        out[f"{name}.bytes"] = raw.reshape(-1)
        out[f"{name}.values"] = values.reshape(-1)
    path = root / "tests/fixtures/quant/blocks.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
