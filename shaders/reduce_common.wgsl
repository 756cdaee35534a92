// reduce_common.wgsl: what every token-reduction kernel shares (reduce_filter, reduce_correlate,
// reduce_compress include it): the terms, the plan buffer's layout, the Params uniform at
// binding 0 and the candidate-index helpers. No entry points, no other bindings.
// Terms (scripts/reduce_reference.py, "Decisions"): a sequence of n tokens, hidden [n, d] f32
// row-major; attn [n, n] f32 head-averaged softmax probabilities (or, for the FiCoCo authors'
// readings, pre-softmax scores: scripts/ficoco_authors.py), row = query, column = key;
// metric [n, dk] f32 (the keys if given, else hidden: G5); cos(u, v) = u.v / (max(|u|, 1e-12)
// max(|v|, 1e-12)). Candidates P = the span [cand0, cand0 + ncand) without token `cls` (NONE =
// no [CLS]), indexed c = 0..np in sequence order. Sources S (leave the sequence) and targets T
// (kept candidates) come from the scores; every other token passes through. New tokens (kept =
// NONE) are written after the surviving tokens before `span_end` (G3); their position is -1 (no
// grid cell), or with `positions_mode` 1 (RoPE positions) that of the span's last input token;
// mode 2 (renumbered RoPE positions) gives every output row its row index.
// The plan buffer (u32, 7n + 6 words) written by split_tokens:
//   [0, n)   slot[seq]  output row of each input token, NONE if it left the sequence
//   [n, 2n)  src[a]     sequence index of source a (ascending)
//   [2n, 3n) tgt[b]     sequence index of target b (ascending)
//   [3n, 4n) kept[r]    input token of output row r, NONE for a new token
//   [4n, 5n) tidx[seq]  target index of each input token, NONE if not a target (pass 1 of
//                       split_tokens keeps each candidate's score rank here)
//   [5n, 6n) group[a]   new token fed by source a, NONE if none (pruned, or merged into targets)
//   [6n, 7n) rec[q]     source index a of the q-th recycled source (ascending)
//   [7n..]   ns, nt, n_out, new0 (row of the first new token), n_new, nq

const NONE = 0xffffffffu;
// The lowest f32, written exactly: WGSL refuses a literal beyond the f32 range (browsers check).
const LOWEST = -3.4028234663852886e38;
const NORM_FLOOR = 1e-12;

struct Params {
    n: u32, d: u32, cand0: u32, ncand: u32,
    cls: u32, n_src: u32, keep_high: u32, ns: u32,
    r1_0: u32, r1_n: u32, r2_0: u32, r2_n: u32,
    w1: f32, w2: f32, div1: f32, div2: f32,
    grid: u32, window: u32, coef: f32, nt: u32,
    text0: u32, ntext: u32, symmetric: f32, fixed_k: u32,
    g_direct: f32, g_indirect: f32, eps: f32, convergent: u32,
    average: u32, dk: u32, mode: u32, weight: f32,
    weighted: u32, n_new: u32, span_end: u32, n_recycle: u32,
    rows: u32, cols: u32, nr: u32, nc: u32,
    stride: u32, bipartite: u32, count: u32, knn: u32,
    score_self: u32, score_members: u32, normalise: u32, positions_mode: u32,
    along_rows: u32, path: u32, softmax: u32, _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

fn cls_in_span() -> bool {
    return p.cls != NONE && p.cls >= p.cand0 && p.cls < p.cand0 + p.ncand;
}

fn num_candidates() -> u32 {
    return p.ncand - select(0u, 1u, cls_in_span());
}

fn seq_of(c: u32) -> u32 {
    let s = p.cand0 + c;
    return select(s, s + 1u, cls_in_span() && s >= p.cls);
}

// Candidate index of candidate token `seq` (inverse of seq_of).
fn cand_of(seq: u32) -> u32 {
    let c = seq - p.cand0;
    return select(c, c - 1u, cls_in_span() && seq > p.cls);
}

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

fn group_index(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
