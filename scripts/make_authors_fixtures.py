#!/usr/bin/env python3
"""Fixtures of tests/reduce_oracle.rs's check of the FiCoCo authors' readings: the step inputs
that `scripts/ficoco_audit.py --dump DIR` took from the demo model (the first reducing step of
FiCoCo-V and of FiCoCo-L on the first test question: hidden states and the head-averaged
pre-softmax scores), stored as f16 to stay small, and the output of scripts/ficoco_authors.py's
reading on exactly those (f16-rounded) values.

    python scripts/ficoco_audit.py --limit 1 --readings ficoco --dump DIR
    python scripts/make_authors_fixtures.py DIR [--out tests/fixtures/reduce]

Writes authors_v.safetensors, authors_l.safetensors (inputs `hidden` f16, `attn` f16,
`positions` i32; `expected_kept` i64, `expected_hidden` f32, `expected_scores` f32) and
authors.json (each case's spans, drop and the score margin at the kept/dropped boundary, which
must stay far above f32 rounding for the kept sets to be comparable).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import ficoco_authors as authors  # noqa: E402


def margin(s, drop):
    v = np.sort(np.asarray(s, dtype=np.float64))[::-1]
    return float(v[drop - 1] - v[drop]) if 0 < drop < len(v) else float("inf")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dump")
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "reduce"))
    a = ap.parse_args()
    dump, out = Path(a.dump), Path(a.out)
    meta = json.loads((dump / "audit_dumps.json").read_text())
    cases = []
    for site in ("v", "l"):
        m = meta[f"audit_{site}"]
        t = load_file(dump / f"audit_{site}_scores.safetensors")
        hidden = t["hidden"].astype(np.float16)
        attn = t["attn"].astype(np.float16)
        pos = t["positions"].astype(np.int32)
        x, s_map = hidden.astype(np.float32), attn.astype(np.float32)
        drop = m["drop"]
        case = {"name": f"ficoco-{site}@authors", "file": f"authors_{site}.safetensors",
                "method": f"ficoco-{site}@authors", "drop": drop, "layer": m["layer"]}
        if site == "v":
            grid = int(round(np.sqrt(len(pos) - 1)))
            got, kept, s = authors.reading_v(x, s_map, 0, pos, grid, drop)
            case.update(cls=0, grid=grid)
        else:
            vis, text = m["visual"], m["text"]
            got, kept, s = authors.reading_l(x, s_map, vis, text, drop)
            case.update(visual=vis, text=text)
        case["score_margin"] = margin(s, drop)
        save_file({"hidden": hidden, "attn": attn, "positions": pos,
                   "expected_kept": kept.astype(np.int64), "expected_hidden": got,
                   "expected_scores": np.asarray(s, dtype=np.float32)}, out / case["file"])
        cases.append(case)
        print(f"{case['name']}: {len(pos)} -> {len(kept)} tokens, boundary margin "
              f"{case['score_margin']:.3g}")
    (out / "authors.json").write_text(json.dumps({"generator": "scripts/make_authors_fixtures.py",
                                                  "cases": cases}, indent=1) + "\n")


if __name__ == "__main__":
    main()
