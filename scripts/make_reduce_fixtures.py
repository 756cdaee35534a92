#!/usr/bin/env python3
"""Oracle fixtures for the token-reduction methods, from scripts/reduce_reference.py.

    python scripts/make_reduce_fixtures.py [--root REPO_ROOT]

Writes tests/fixtures/reduce/<case>.safetensors and tests/fixtures/reduce/cases.json. Deterministic
(legacy numpy RandomState streams, no clock, no environment): rerunning writes identical files.

cases.json: {"generator", "versions", "cases": [...]}; each case has
    name, file (expected outputs), inputs (the file holding the inputs; the 24x24 cases share one),
    method, drop, n, d, cls, grid, visual [start, len] | null, text [start, len] | null,
    input_seed (the RandomState seed of the inputs; the random method's own seed is options.seed),
    options (the keyword arguments given to reduce_reference.reduce on top of its DEFAULTS),
    params (all resolved hyperparameters), summary (a few derived facts, e.g. targets per source).
Inputs: hidden f32 [N, D], attn f32 [N, N], positions i32 [N], keys f32 [N, Dk] (some cases),
    sizes f32 [N] (ToMe's carried token sizes, one case).
Expected: expected_hidden f32 [N-R, D], expected_kept i64 [N-R] (-1 = new token),
    expected_sources i64 (ascending input indices absent from the output), and where the method
    has them: expected_score_index i64 + expected_scores f32 (the score used to select, per
    candidate; ficoco: redundancy, highest discarded; others: importance, highest kept; tome: per
    token of set A), expected_raw_scores f32 (ficoco-v before the local penalty),
    expected_edges i64 [E, 2] (source input index, receiving token: ficoco/tome/prumerge target,
    visionzip target, sparsevlm centre, -1 for evit's fused token) + expected_weights f32 [E]
    (ficoco alpha_ij, prumerge/evit [CLS] attention of the source, 1 otherwise), expected_sizes f32
    (tome).
"""

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reduce_reference as rr  # noqa: E402

# one key only: safetensors writes metadata from a hash map, so several keys come out in random order
METADATA = {"generator": "scripts/make_reduce_fixtures.py from scripts/reduce_reference.py"}


# ---------------------------------------------------------------------------------------------
# inputs

def softmax_rows(logits):
    m = logits.max(axis=1, keepdims=True)
    e = np.exp(logits - m)
    return e / e.sum(axis=1, keepdims=True)


def vision_inputs(seed, grid, cls=True, d=32, dk=None, removed=0, dup_pairs=()):
    """A ViT layer: [CLS] at 0 (optional) then the present patches in grid order; bidirectional
    attention = softmax of N(0, 2^2) logits; dup_pairs (patch a, patch b) copy b's logit column
    from a's so their attention columns are bit-identical (exact score ties)."""
    rs = np.random.RandomState(seed)
    n_patch = grid * grid
    present = np.arange(n_patch)
    if removed:
        present = np.sort(rs.choice(n_patch, n_patch - removed, replace=False))
    positions = np.concatenate([[-1] if cls else [], present]).astype(np.int32)
    n = len(positions)
    logits = rs.standard_normal((n, n)) * 2.0
    col = {int(p): i for i, p in enumerate(positions) if p >= 0}
    for a, b in dup_pairs:
        logits[:, col[b]] = logits[:, col[a]]
    t = {
        "hidden": rs.standard_normal((n, d)).astype(np.float32),
        "attn": softmax_rows(logits).astype(np.float32),
        "positions": positions,
    }
    if dk:
        t["keys"] = rs.standard_normal((n, dk)).astype(np.float32)
    return t


def llm_inputs(seed, n_sys=10, side=6, n_text=12, d=32):
    """An LLM prefill layer: system prompt, side x side image tokens, question; causal softmax of
    N(0, 2^2) logits with an attention sink on token 0."""
    rs = np.random.RandomState(seed)
    n_vis = side * side
    n = n_sys + n_vis + n_text
    logits = rs.standard_normal((n, n)) * 2.0
    logits[:, 0] += 2.0
    logits[np.triu_indices(n, 1)] = -np.inf
    positions = -np.ones(n, dtype=np.int32)
    positions[n_sys:n_sys + n_vis] = np.arange(n_vis)
    t = {
        "hidden": rs.standard_normal((n, d)).astype(np.float32),
        "attn": softmax_rows(logits).astype(np.float32),
        "positions": positions,
    }
    return t, (n_sys, n_vis), (n_sys + n_vis, n_text)


def tie_inputs():
    """4x4 grid + [CLS] with exact ties: patches 0 and 1 (one window) tie for their window's
    maximum, so the lower index (0) alone gets the penalty; patches 2 and 14 (different windows,
    neither a window maximum) tie across the selection boundary, so the lower index (2) is
    discarded. Returns (inputs, drop, seed) for the first seed where both happen."""
    for seed in range(1000):
        t = vision_inputs(seed, 4, d=16, dup_pairs=((0, 1), (2, 14)))
        pos = t["positions"]
        cand = np.arange(1, len(pos))
        s, raw = rr.filter_ficoco_v(t["attn"].astype(np.float64), pos.astype(np.int64), cand, 0, 4,
                                    None, dict(rr.DEFAULTS))
        r = {int(pos[c]): (s[k], raw[k]) for k, c in enumerate(cand)}
        win = {p: (p // 4 // 2, p % 4 // 2) for p in range(16)}
        top = lambda p: max(raw[k] for k, c in enumerate(cand) if win[int(pos[c])] == win[p])  # noqa: E731
        if not (r[0][1] == r[1][1] == top(0) and r[0][1] != 0):
            continue
        if r[2][1] == top(2) or r[14][1] == top(14) or r[2][0] != r[14][0]:
            continue
        drop = int((s > r[2][0]).sum()) + 1
        if 2 <= drop <= 12:
            return t, drop, seed
    raise RuntimeError("no seed gives the wanted ties")


# ---------------------------------------------------------------------------------------------
# independent cross-checks (torch, dense formulations)

def mt19937_permutation(seed, n):
    """O7 re-implemented from its Decisions text (MT19937 + masked rejection), to pin it."""
    mt = [0] * 624
    mt[0] = seed & 0xFFFFFFFF
    for i in range(1, 624):
        mt[i] = (1812433253 * (mt[i - 1] ^ (mt[i - 1] >> 30)) + i) & 0xFFFFFFFF
    state = {"i": 624}

    def next32():
        if state["i"] >= 624:
            for k in range(624):
                y = (mt[k] & 0x80000000) | (mt[(k + 1) % 624] & 0x7FFFFFFF)
                mt[k] = mt[(k + 397) % 624] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
            state["i"] = 0
        y = mt[state["i"]]
        state["i"] += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        y ^= y >> 18
        return y

    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        mask = i
        for sh in (1, 2, 4, 8, 16):
            mask |= mask >> sh
        while True:
            j = next32() & mask
            if j <= i:
                break
        perm[i], perm[j] = perm[j], perm[i]
    return np.array(perm)


def torch_ficoco_check(case, t, st):
    """Dense re-derivation with torch: torch.quantile membership and matrix-form compress."""
    p = st.params
    A = torch.tensor(t["attn"], dtype=torch.float64)
    X = torch.tensor(t["hidden"], dtype=torch.float64)
    S = torch.tensor(st.sources)
    kept = st.kept
    T = torch.tensor(kept[np.isin(kept, st.score_index)])
    if case["method"] == "ficoco-v":
        C = A[S][:, T]
    else:
        tx = torch.arange(case["text"][0], sum(case["text"]))
        g = p["gamma"] if p["direct"] and p["indirect"] else (0.0 if not p["direct"] else 1.0)
        C = g * (A[S][:, T] + A[T][:, S].T) + (1 - g) * (A[tx][:, S].T @ A[tx][:, T]) / len(tx)
    if len(S) == 0 or len(T) == 0:
        return {}
    if p["fixed_k"] is None:
        if p["correlation"] == "divergent":
            M = C >= torch.quantile(C, p["eps"], dim=1, keepdim=True)
        else:
            M = C >= torch.quantile(C, p["eps"], dim=0, keepdim=True)
    else:
        M = torch.zeros_like(C, dtype=torch.bool)
        if p["correlation"] == "divergent":
            for a in range(len(S)):
                M[a, rr.topk(C[a].numpy(), T.numpy(), p["fixed_k"])] = True
        else:
            for b in range(len(T)):
                M[rr.topk(C[:, b].numpy(), S.numpy(), p["fixed_k"]), b] = True
    W = torch.where(M, C, torch.zeros_like(C))
    W = W / W.sum(dim=1 if p["correlation"] == "divergent" else 0, keepdim=True).clamp_min(1e-300)
    if p["compress"] == "average":
        W = M.to(torch.float64)
    XT = (X[T] + W.T @ X[S]) / (1 + W.sum(dim=0))[:, None]
    got = torch.tensor(st.hidden[np.isin(kept, st.score_index)], dtype=torch.float64)
    err = float((XT - got).abs().max())
    assert err < 1e-5, f"{case['name']}: dense torch compress differs by {err}"
    edges = {(int(i), int(j)) for i, j in st.edges}
    dense = {(int(S[a]), int(T[b])) for a, b in M.nonzero().tolist()}
    assert edges == dense, f"{case['name']}: correlation sets differ from torch.quantile's"
    counts = M.sum(dim=1 if p["correlation"] == "divergent" else 0)
    return {"targets_per_source" if p["correlation"] == "divergent" else "sources_per_target":
            {str(k): int(v) for k, v in zip(*np.unique(counts.numpy(), return_counts=True))}}


def check(case, t, st):
    """Properties every step must have, plus per-method ones. Returns summary facts."""
    n, drop = case["n"], case["drop"]
    X = t["hidden"]
    kept, H = st.kept, st.hidden
    assert H.shape == (n - drop, X.shape[1]) and kept.shape == (n - drop,), case["name"]
    real = kept[kept >= 0]
    assert np.all(np.diff(real) > 0), f"{case['name']}: order not preserved"
    end = n if case["visual"] is None else sum(case["visual"])
    newpos = np.nonzero(kept < 0)[0]
    if len(newpos):
        first = int((real < end).sum())
        assert list(newpos) == list(range(first, first + len(newpos))), "new tokens misplaced"
    if case["cls"] is not None:
        assert case["cls"] in real, f"{case['name']}: [CLS] dropped"
    cand = set(rr.candidates(n, case["cls"], case["visual"]).tolist())
    receivers = set() if st.edges is None else {int(j) for j in st.edges[:, 1]}
    for o, i in enumerate(kept):
        if i >= 0 and (i not in cand or i not in receivers):
            assert np.array_equal(H[o], X[i]), f"{case['name']}: token {i} changed without sources"
    facts = {}
    if case["method"] in ("ficoco-v", "ficoco-l"):
        facts.update(torch_ficoco_check(case, t, st))
    if case["method"] == "random":
        perm = mt19937_permutation(case["params"]["seed"], len(cand))
        assert np.array_equal(perm, np.random.RandomState(case["params"]["seed"]).permutation(len(cand)))
        facts["mt19937_reimplementation"] = "matches"
    return facts


# ---------------------------------------------------------------------------------------------
# cases

ABLATION_BASE = {
    "ficoco_v_5x5_cls_no_penalty": "ficoco_v_5x5_cls",
    "ficoco_v_5x5_cls_fixed_k0": "ficoco_v_5x5_cls",
    "ficoco_v_5x5_cls_fixed_k2": "ficoco_v_5x5_cls",
    "ficoco_v_5x5_cls_convergent": "ficoco_v_5x5_cls",
    "ficoco_v_24x24_cls_T520_average": "ficoco_v_24x24_cls_T520",
    "ficoco_v_24x24_cls_T520_fixed_k1": "ficoco_v_24x24_cls_T520",
    "ficoco_l_causal_fixed_k0": "ficoco_l_causal",
    "ficoco_l_causal_fixed_k2": "ficoco_l_causal",
    "ficoco_l_causal_average_k2": "ficoco_l_causal_fixed_k2",
    "ficoco_l_causal_convergent": "ficoco_l_causal",
    "ficoco_l_causal_no_direct": "ficoco_l_causal",
    "ficoco_l_causal_no_indirect_k2": "ficoco_l_causal_fixed_k2",
}


def build_cases():
    cases = []  # (case dict, inputs dict or name of the case holding them)

    def add(name, method, drop, t, cls=None, grid=None, visual=None, text=None, input_seed=None,
            **opt):
        c = {"name": name, "method": method, "drop": drop, "cls": cls, "grid": grid,
             "visual": list(visual) if visual else None, "text": list(text) if text else None,
             "input_seed": input_seed, "options": opt}
        cases.append((c, t))

    # FiCoCo-V
    v5 = vision_inputs(101, 5, d=32)
    add("ficoco_v_5x5_cls", "ficoco-v", 10, v5, cls=0, grid=5, input_seed=101)
    big = vision_inputs(102, 24, d=16)
    for keep in (520, 501, 500, 480):  # K = 2, 2 (boundary), 1 (boundary), 1
        add(f"ficoco_v_24x24_cls_T{keep}", "ficoco-v", 576 - keep,
            big if keep == 520 else "ficoco_v_24x24_cls_T520", cls=0, grid=24, input_seed=102)
    # nearly every token a source (536 of 576)
    add("ficoco_v_24x24_cls_T40", "ficoco-v", 536, "ficoco_v_24x24_cls_T520", cls=0, grid=24,
        input_seed=102)
    add("ficoco_v_6x6_cls_odd_partial", "ficoco-v", 9, vision_inputs(103, 6, d=24, removed=8),
        cls=0, grid=6, input_seed=103)
    tie, tie_drop, tie_seed = tie_inputs()
    add("ficoco_v_4x4_cls_ties", "ficoco-v", tie_drop, tie, cls=0, grid=4, input_seed=tie_seed)
    add("ficoco_v_6x6_nocls_keys", "ficoco-v", 12, vision_inputs(104, 6, cls=False, d=24, dk=16),
        grid=6, input_seed=104)
    add("ficoco_v_5x5_cls_no_penalty", "ficoco-v", 10, v5, cls=0, grid=5, input_seed=101,
        local_penalty=False)
    for k in (0, 2):
        add(f"ficoco_v_5x5_cls_fixed_k{k}", "ficoco-v", 10, v5, cls=0, grid=5, input_seed=101, fixed_k=k)
    # fixed K = 1 only differs from the adaptive K where the quantile gives 2 (|T| >= 501)
    add("ficoco_v_24x24_cls_T520_fixed_k1", "ficoco-v", 56, "ficoco_v_24x24_cls_T520", cls=0,
        grid=24, input_seed=102, fixed_k=1)
    # with one target per source alpha = 1 and "average" equals self-preserving: use K = 2 (|T| 520)
    add("ficoco_v_24x24_cls_T520_average", "ficoco-v", 56, "ficoco_v_24x24_cls_T520", cls=0, grid=24,
        input_seed=102, compress="average")
    # a lower quantile: its entries lie deeper than the few largest (the kernel sorts the row)
    add("ficoco_v_24x24_cls_T520_eps0.9", "ficoco-v", 56, "ficoco_v_24x24_cls_T520", cls=0, grid=24,
        input_seed=102, eps=0.9)
    add("ficoco_v_5x5_cls_convergent", "ficoco-v", 10, v5, cls=0, grid=5, input_seed=101,
        correlation="convergent")

    # FiCoCo-L
    l1, vis, txt = llm_inputs(201)
    add("ficoco_l_causal", "ficoco-l", 20, l1, visual=vis, text=txt, input_seed=201)
    add("ficoco_l_causal_fixed_k0", "ficoco-l", 20, l1, visual=vis, text=txt, input_seed=201, fixed_k=0)
    add("ficoco_l_causal_fixed_k2", "ficoco-l", 20, l1, visual=vis, text=txt, input_seed=201, fixed_k=2)
    add("ficoco_l_causal_average_k2", "ficoco-l", 20, l1, visual=vis, text=txt, input_seed=201,
        compress="average", fixed_k=2)
    add("ficoco_l_causal_convergent", "ficoco-l", 20, l1, visual=vis, text=txt, input_seed=201,
        correlation="convergent")
    add("ficoco_l_causal_no_direct", "ficoco-l", 20, l1, visual=vis, text=txt, input_seed=201,
        direct=False)
    # the indirect term is small next to the direct one: with K = 1 both pick the same targets here,
    # so the no-indirect case uses K = 2, where the weights alpha change too
    add("ficoco_l_causal_no_indirect_k2", "ficoco-l", 20, l1, visual=vis, text=txt, input_seed=201,
        indirect=False, fixed_k=2)

    # other methods
    add("tome_6x6_cls_keys", "tome", 8, vision_inputs(301, 6, d=24, dk=16), cls=0, grid=6, input_seed=301)
    # a later ToMe step: tokens carry the sizes of earlier merges ([CLS] stays 1)
    sized = vision_inputs(301, 6, d=24, dk=16)
    sized["sizes"] = np.random.RandomState(312).randint(1, 5, size=37).astype(np.float32)
    sized["sizes"][0] = 1.0
    add("tome_6x6_cls_keys_sizes", "tome", 8, sized, cls=0, grid=6, input_seed=301)
    add("evit_6x6_cls", "evit", 10, vision_inputs(302, 6, d=24), cls=0, grid=6, input_seed=302)
    l2, vis, txt = llm_inputs(303)
    add("fastv_causal", "fastv", 18, l2, visual=vis, text=txt, input_seed=303)
    l3, vis, txt = llm_inputs(304)
    add("pdrop_causal", "pdrop", 18, l3, visual=vis, text=txt, input_seed=304)
    l4, vis, txt = llm_inputs(305)
    add("sparsevlm_causal", "sparsevlm", 16, l4, visual=vis, text=txt, input_seed=305)
    add("prumerge_6x6_cls_keys", "prumerge", 24, vision_inputs(306, 6, d=24, dk=16), cls=0, grid=6,
        input_seed=306, knn=4)
    add("visionzip_6x6_cls_keys", "visionzip", 24, vision_inputs(307, 6, d=24, dk=16), cls=0,
        grid=6, input_seed=307)
    add("random_6x6_cls", "random", 12, vision_inputs(308, 6, d=24), cls=0, grid=6, input_seed=308, seed=1234)
    add("topk_cls_6x6_cls", "topk-cls", 12, vision_inputs(309, 6, d=24), cls=0, grid=6, input_seed=309)
    add("pool2_6x6_cls", "pool", 27, vision_inputs(310, 6, d=24), cls=0, grid=6, input_seed=310, pool_k=2)
    add("pool4_8x8_cls", "pool", 60, vision_inputs(311, 8, d=16), cls=0, grid=8, input_seed=311, pool_k=4)
    # rows longer than one workgroup (256): ToMe's argmax over 376 targets, PruMerge's 4 nearest
    # of 500 sources, and 576 sources pooled into new tokens
    add("tome_24x24_cls", "tome", 200, "ficoco_v_24x24_cls_T520", cls=0, grid=24, input_seed=102)
    add("prumerge_24x24_cls", "prumerge", 500, "ficoco_v_24x24_cls_T520", cls=0, grid=24,
        input_seed=102, knn=4)
    add("pool2_24x24_cls", "pool", 432, "ficoco_v_24x24_cls_T520", cls=0, grid=24, input_seed=102,
        pool_k=2)
    add("pool3_6x6_cls", "pool", 32, vision_inputs(313, 6, d=24), cls=0, grid=6, input_seed=313, pool_k=3)
    return cases


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]))
    args = ap.parse_args()
    out_dir = Path(args.root) / "tests" / "fixtures" / "reduce"
    out_dir.mkdir(parents=True, exist_ok=True)

    inputs_by_case, results = {}, {}
    index = []
    for case, t in build_cases():
        name = case["name"]
        file = f"{name}.safetensors"
        if isinstance(t, str):
            case["inputs"] = f"{t}.safetensors"
            t = inputs_by_case[t]
            own = {}
        else:
            case["inputs"] = file
            own = dict(t)
        inputs_by_case[name] = t
        case["file"] = file
        case["n"], case["d"] = t["hidden"].shape
        st = rr.reduce(case["method"], t["hidden"], t["attn"], t["positions"], case["drop"],
                       keys=t.get("keys"), sizes=t.get("sizes"), cls=case["cls"], grid=case["grid"],
                       visual=case["visual"], text=case["text"], **case["options"])
        case["params"] = st.params
        tensors = dict(own)
        tensors["expected_hidden"] = st.hidden
        tensors["expected_kept"] = st.kept
        tensors["expected_sources"] = st.sources
        for key, val in (("expected_score_index", st.score_index), ("expected_scores", st.scores),
                         ("expected_raw_scores", st.raw_scores), ("expected_edges", st.edges),
                         ("expected_weights", st.weights), ("expected_sizes", st.sizes)):
            if val is not None:
                tensors[key] = np.ascontiguousarray(val)
        facts = check(case, t, st)
        if name == "ficoco_v_4x4_cls_ties":  # [CLS] is input 0, patch p is input p + 1
            src = st.sources.tolist()
            assert 3 in src and 15 not in src, "tie at the cut not resolved to the lower index"
            sc, raw = st.scores, st.raw_scores
            assert raw[0] == raw[1] and sc[0] != raw[0] and sc[1] == raw[1], "window-max tie"
            assert sc[2] == sc[14], "tie lost"
            facts["ties"] = ("patches 0/1 tie for their window's max: only patch 0 penalised; "
                             "patches 2/14 tie at the cut: patch 2 discarded, patch 14 kept")
        facts.update({k: np.asarray(v).tolist() for k, v in st.extra.items()})
        results[name] = st.hidden
        base = ABLATION_BASE.get(name)
        if base is not None:  # an ablation must change the result, or it pins nothing
            assert not np.array_equal(results[base], st.hidden), f"{name} equals {base}"
        case["summary"] = facts
        save_file(tensors, str(out_dir / file), metadata=METADATA)
        index.append(case)
        digest = hashlib.sha256((out_dir / file).read_bytes()).hexdigest()[:12]
        e = 0 if st.edges is None else len(st.edges)
        print(f"{name:34s} {case['method']:9s} N {case['n']:3d} -> {len(st.kept):3d}  "
              f"new {int((st.kept < 0).sum()):2d}  edges {e:3d}  {json.dumps(facts)[:70]}  {digest}")

    # the tie case's assertions above use input indices: [CLS] is input 0, patch p is input p + 1
    doc = {
        "generator": "scripts/make_reduce_fixtures.py",
        "reference": "scripts/reduce_reference.py (module docstring: Decisions)",
        "versions": {"numpy": np.__version__, "torch": torch.__version__.split("+")[0]},
        "cases": index,
    }
    (out_dir / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")
    total = sum(f.stat().st_size for f in out_dir.iterdir())
    print(f"{len(index)} cases, {total / 1e6:.2f} MB in {out_dir}")


if __name__ == "__main__":
    main()
