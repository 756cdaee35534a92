#!/usr/bin/env python3
"""A tiny GGUF file written by the `gguf` package (llama.cpp's own Python writer), for the
reader tests in tests/gguf_reader.rs: metadata of every value type, tensors of several GGML
types and shapes, and what the package says they hold.

    .venv/bin/python scripts/make_gguf_fixtures.py [--out tests/fixtures/gguf]

Writes <out>/tiny.gguf (a few KB, alignment 64) and <out>/tiny.json: the metadata values, and
per tensor its ggml dims, type id, byte offset in the file and dequantised values.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/gguf")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tiny.gguf"
    rng = np.random.default_rng(7)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -5)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4000000000)
    w.add_int32("test.i32", -2000000000)
    w.add_uint64("test.u64", 2**40 + 3)
    w.add_int64("test.i64", -(2**40))
    w.add_float32("test.f32", 0.15625)
    w.add_float64("test.f64", 1e-300)
    w.add_bool("test.bool", True)
    w.add_string("test.str", "grüße ✓")
    w.add_array("test.arr_i32", [1, -2, 3])
    w.add_array("test.arr_str", ["a", "", "ccc"])

    tensors = {
        "f32.vec": (rng.standard_normal(7).astype(np.float32), None),
        "f16.mat": (rng.standard_normal((3, 5)).astype(np.float16), None),
        "q8_0.mat": (rng.standard_normal((3, 64)).astype(np.float32), Q.Q8_0),
        "q5_0.mat": (rng.standard_normal((2, 96)).astype(np.float32), Q.Q5_0),
    }
    for name, (t, ty) in tensors.items():
        if ty is None:
            w.add_tensor(name, t)
        else:
            q = gguf.quantize(t, ty)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=ty)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    r = gguf.GGUFReader(str(path))
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("test.") or k == "general.architecture":
            meta[k] = f.contents()
    info = {}
    for t in r.tensors:
        values = gguf.dequantize(t.data, t.tensor_type).astype(np.float64).ravel()
        info[t.name] = {
            "dims": [int(d) for d in t.shape],
            "type": int(t.tensor_type),
            "offset": int(t.data_offset),
            "bytes": int(t.n_bytes),
            "values": [float(v) for v in values],
        }
    doc = {"gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19.0",
           "metadata": meta, "tensors": info}
    (out / "tiny.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
