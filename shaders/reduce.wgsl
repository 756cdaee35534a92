// reduce.wgsl: one token-reduction step as filter, correlate and compress stages.
// Terms (scripts/reduce_reference.py, "Decisions"): a sequence of n tokens, hidden [n, d] f32
// row-major; attn [n, n] f32 head-averaged softmax probabilities, row = query, column = key;
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
// Entry points (each compiled with its own flag, which declares its bindings; binding 0 is the
// Params uniform). Parallel over tokens, pairs or rows unless marked "one workgroup".
//   score_tokens   E_SCORE    1 attn (r), 2 scores [np] (rw), 3 row weights [n] (r)
//                  s_c = sum over the (at most two) terms t of
//                      w_t / div_t * sum over rows [r_t0, r_t0 + r_tn) of (rw[row]) attn[row, seq(c)]
//                  (rw[row] only for a term whose bit is set in `weighted`); no terms writes 0
//   rate_rows      E_RATE     1 attn (r), 2 row weights [n] (rw); one workgroup, O(M np)
//                  SparseVLM's raters: r_k = mean over candidates of attn[k, .] for the text rows
//                  k; raters = {k : r_k >= mean r} (all text rows if none); rw[k] = 1/|raters|
//                  for raters, 0 for other text rows
//   metric_norms   E_NORMS    1 metric (r), 2 norms [n] (rw)
//                  one workgroup per token: norms[i] = 1 / max(|M_i|, 1e-12)
//   metric_mean    E_MEAN     1 metric (r), 2 mean [dk] (rw)
//                  one invocation per dimension: mean[x] = mean over candidates of M[seq(c), x]
//   score_similarity E_SIMILARITY 1 metric (r), 2 norms (r), 3 mean (r), 4 scores (rw)
//                  one workgroup per candidate, adds w * (mode 0) cos(mean, M_c) (FiCoCo's
//                  equivalent token, negated), or (mode 1, ToMe's bipartite split) for even c
//                  (set A) the max over odd c' (set B) of cos(M_c, M_c'); odd c get LOWEST
//   local_penalty  E_PENALTY  1 raw scores (r), 2 scores (rw), 3 positions i32 [n] (r)
//                  the largest raw score of each window x window cell of the patch grid
//                  (ties: lower index) is multiplied by coef if > 0, divided if < 0
//   split_tokens   E_SPLIT    1 scores (r), 2 plan (rw), 3 positions i32 (r), 4 positions out (rw)
//                  one workgroup; pass 1 (parallel) ranks by descending score (ties: lower
//                  index first); sources are the n_src top-ranked (keep_high = 0) or all but the
//                  np - n_src top-ranked (keep_high = 1), recycled = the n_recycle best-ranked
//                  sources (keep_high = 1); pass 2 (one invocation, O(n)) lays out the plan with
//                  n_new new rows at span_end
//   correlate      E_CORRELATE 1 attn (r), 2 C [ns, nt] (rw), 3 plan (r)
//                  C[a, b] = g_direct * (A[i, j] + symmetric * A[j, i])
//                          + g_indirect / ntext * sum_k A[k, i] * A[k, j], k over the text rows
//   metric_pairs   E_PAIRS    1 metric (r), 2 norms (r), 3 plan (r), 4 out [nr, nc] (rw)
//                  out[r, c] = cos(M_i, M_j) (mode 0) or |M_i - M_j| / sqrt(dk) (mode 1) for
//                  i = list `rows`[r], j = list `cols`[c]; lists: 0 sources, 1 targets, 2 every
//                  stride-th source, 3 recycled sources; with `bipartite`, a column token of ToMe's
//                  set A (even candidate index) gets LOWEST
//   assign_targets E_ASSIGN   1 C (r), 2 weights [ns, nt] (rw)
//                  one workgroup per source (per target when convergent): members are the
//                  entries >= the eps-quantile of the row (torch.quantile's linear rule) or the
//                  fixed_k largest; weight = entry / sum over members (1 with `average`), else 0
//   group_sources  E_GROUP    1 plan (rw), 2 positions (r), 3 pairs [ns, count] (r)
//                  group[a] of each source: mode 0 one fused token (0); mode 1 its window x window
//                  cell of the grid (raster order); mode 2 sources a = t * stride (t < count) are
//                  centre t, every other joins the centre of highest pairs[a, t] (ties: lower t)
//   dpc_density    E_DPC      1 dist [q, q] (r), 2 aux [3q] (rw), 3 plan (rw); q = nr
//                  rho_a = exp(-mean of the k = min(knn, q - 1) smallest dist^2 to others), 1 if
//                  k = 0 (aux[a])
//   dpc_peaks      E_DPC      delta_a = min dist to a denser point, else the largest dist (0 if
//                  q = 1); aux[q + a] = rho_a * delta_a
//   dpc_centres    E_DPC      aux[2q + a] = 1 if a ranks among the `count` largest rho * delta
//                  (ties: lower index), else 0
//   dpc_assign     E_DPC      each recycled point joins its nearest centre (ties: lower index; a
//                  centre joins itself): group[rec[a]] = that centre's ordinal among the centres
//   compress       E_COMPRESS 1 hidden (r), 2 out [n_out, d] (rw), 3 plan (r), 4 weights (r),
//                  5 scores (r), 6 sizes [n_out] (rw)
//                  kept row r of token j (target b): out = (u_j X_j + sum_a m_a X_src[a]) /
//                  (u_j + sum_a m_a) over the sources a with weights[a, b] != 0, m_a = that weight
//                  (or the source's score when score_members), u_j = 1 (or j's score when
//                  score_self), no division without `normalise`; a token without sources is
//                  copied; sizes = 1 + number of sources; new rows are left to compress_new.
//                  CARRIED_SIZES (ToMe): 7 carried sizes z [n] (r); u_j and every m_a are
//                  multiplied by the token's z, and sizes = z_j + sum of the sources' z
//   compress_new   E_NEW      1 hidden (r), 2 out (rw), 3 plan (r), 4 scores (r), 5 sizes (rw)
//                  one workgroup per new token g: out[new0 + g] = sum_{group[a] = g} m_a X_src[a]
//                  (/ sum m_a with `normalise`), m_a = 1 or the source's score (score_members);
//                  sizes = number of members
// Merge attribution (opt-in, after a step; not part of the reduction itself):
//   route_tokens   E_ROUTE    1 plan (r), 2 weights [ns, nt] (r), 3 route i32 [n] (rw)
//                  route[seq] for every input token: its own output row (slot[seq]) if it
//                  survived; else, for source a with src[a] = seq, by `mode`: 0 (pruned) -1;
//                  1 (merged with weights) the output row slot[tgt[b]] of the target b with the
//                  largest weights[a, b] (first maximum; -1 if every weight is 0); 2 (grouped)
//                  new0 + group[a], -1 if group[a] = NONE. ns, nt are read from the plan's counts
//                  (weights are read only in mode 1)
//   compose_routes E_COMPOSE  1 route i32 [n] (r), 2 owner i32 [count] (rw)
//                  owner[q] = route[owner[q]] for q < count, -1 stays -1: each patch's owner
//                  (the row of the token that absorbed it) followed through one more step

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

// ---------------------------------------------------------------- filter: attention scores

#ifdef E_SCORE
@group(0) @binding(1) var<storage, read> attn: array<f32>;
@group(0) @binding(2) var<storage, read_write> scores: array<f32>;
@group(0) @binding(3) var<storage, read> row_weights: array<f32>;

fn column_sum(row0: u32, rows: u32, col: u32, weighted: bool) -> f32 {
    var s = 0.0;
    if (weighted) {
        for (var r = row0; r < row0 + rows; r++) { s += row_weights[r] * attn[r * p.n + col]; }
    } else {
        for (var r = row0; r < row0 + rows; r++) { s += attn[r * p.n + col]; }
    }
    return s;
}

@compute @workgroup_size(64)
fn score_tokens(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let c = flat(wid, nwg, lid);
    if (c >= num_candidates()) { return; }
    let col = seq_of(c);
    var s = 0.0;
    if (p.r1_n > 0u) { s += p.w1 / p.div1 * column_sum(p.r1_0, p.r1_n, col, (p.weighted & 1u) != 0u); }
    if (p.r2_n > 0u) { s += p.w2 / p.div2 * column_sum(p.r2_0, p.r2_n, col, (p.weighted & 2u) != 0u); }
    scores[c] = s;
}
#endif

#ifdef E_RATE
@group(0) @binding(1) var<storage, read> attn: array<f32>;
@group(0) @binding(2) var<storage, read_write> row_weights: array<f32>;

var<workgroup> part: array<f32, 256>;
var<workgroup> raters: atomic<u32>;

@compute @workgroup_size(256)
fn rate_rows(@builtin(local_invocation_index) lid: u32) {
    let np = num_candidates();
    var local = 0.0;
    for (var t = lid; t < p.ntext; t += 256u) {
        let k = p.text0 + t;
        var s = 0.0;
        for (var c = 0u; c < np; c++) { s += attn[k * p.n + seq_of(c)]; }
        let r = s / f32(np);
        row_weights[k] = r;
        local += r;
    }
    part[lid] = local;
    if (lid == 0u) { atomicStore(&raters, 0u); }
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { part[lid] += part[lid + s]; }
        workgroupBarrier();
    }
    let mean = part[0] / f32(p.ntext);
    var mine = 0u;
    for (var t = lid; t < p.ntext; t += 256u) {
        if (row_weights[p.text0 + t] >= mean) { mine++; }
    }
    atomicAdd(&raters, mine);
    workgroupBarrier();
    let total = atomicLoad(&raters);
    let w = 1.0 / f32(select(total, p.ntext, total == 0u));
    for (var t = lid; t < p.ntext; t += 256u) {
        let k = p.text0 + t;
        let rater = total == 0u || row_weights[k] >= mean;
        row_weights[k] = select(0.0, w, rater);
    }
}
#endif

// ---------------------------------------------------------------- filter: metric scores

#ifdef E_NORMS
@group(0) @binding(1) var<storage, read> metric: array<f32>;
@group(0) @binding(2) var<storage, read_write> norms: array<f32>;

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn metric_norms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wid, nwg);
    if (i >= p.n) { return; }
    var ss = 0.0;
    for (var x = lid; x < p.dk; x += 64u) {
        let v = metric[i * p.dk + x];
        ss += v * v;
    }
    part[lid] = ss;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) { part[lid] += part[lid + s]; }
        workgroupBarrier();
    }
    if (lid == 0u) { norms[i] = 1.0 / max(sqrt(part[0]), NORM_FLOOR); }
}
#endif

#ifdef E_MEAN
@group(0) @binding(1) var<storage, read> metric: array<f32>;
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;

@compute @workgroup_size(64)
fn metric_mean(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let x = flat(wid, nwg, lid);
    if (x >= p.dk) { return; }
    let np = num_candidates();
    var s = 0.0;
    for (var c = 0u; c < np; c++) { s += metric[seq_of(c) * p.dk + x]; }
    mean[x] = s / f32(np);
}
#endif

#ifdef E_SIMILARITY
@group(0) @binding(1) var<storage, read> metric: array<f32>;
@group(0) @binding(2) var<storage, read> norms: array<f32>;
@group(0) @binding(3) var<storage, read> mean: array<f32>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;

var<workgroup> part: array<f32, 64>;
var<workgroup> part2: array<f32, 64>;

@compute @workgroup_size(64)
fn score_similarity(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let c = group_index(wid, nwg);
    let np = num_candidates();
    if (c >= np) { return; }
    let i = seq_of(c);
    if (p.mode == 0u) {
        var dot = 0.0;
        var mm = 0.0;
        for (var x = lid; x < p.dk; x += 64u) {
            let m = mean[x];
            dot += m * metric[i * p.dk + x];
            mm += m * m;
        }
        part[lid] = dot;
        part2[lid] = mm;
        workgroupBarrier();
        for (var s = 32u; s > 0u; s >>= 1u) {
            if (lid < s) {
                part[lid] += part[lid + s];
                part2[lid] += part2[lid + s];
            }
            workgroupBarrier();
        }
        if (lid == 0u) {
            scores[c] += p.weight * (part[0] * norms[i] / max(sqrt(part2[0]), NORM_FLOOR));
        }
        return;
    }
    if (c % 2u == 1u) {
        if (lid == 0u) { scores[c] = LOWEST; }
        return;
    }
    var best = LOWEST;
    for (var o = 2u * lid + 1u; o < np; o += 128u) {
        let j = seq_of(o);
        var dot = 0.0;
        for (var x = 0u; x < p.dk; x++) { dot += metric[i * p.dk + x] * metric[j * p.dk + x]; }
        best = max(best, dot * norms[i] * norms[j]);
    }
    part[lid] = best;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) { part[lid] = max(part[lid], part[lid + s]); }
        workgroupBarrier();
    }
    if (lid == 0u) { scores[c] += p.weight * part[0]; }
}
#endif

#ifdef E_PENALTY
@group(0) @binding(1) var<storage, read> raw: array<f32>;
@group(0) @binding(2) var<storage, read_write> scores: array<f32>;
@group(0) @binding(3) var<storage, read> positions: array<i32>;

fn cell(c: u32) -> u32 {
    let pos = u32(positions[seq_of(c)]);
    let cells = (p.grid + p.window - 1u) / p.window;
    return (pos / p.grid / p.window) * cells + (pos % p.grid) / p.window;
}

@compute @workgroup_size(64)
fn local_penalty(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let c = flat(wid, nwg, lid);
    let np = num_candidates();
    if (c >= np) { return; }
    let s = raw[c];
    let mine = cell(c);
    var is_max = true;
    for (var o = 0u; o < np; o++) {
        if (o != c && cell(o) == mine && (raw[o] > s || (raw[o] == s && o < c))) {
            is_max = false;
        }
    }
    var v = s;
    if (is_max && s > 0.0) { v = s * p.coef; }
    if (is_max && s < 0.0) { v = s / p.coef; }
    scores[c] = v;
}
#endif

// ---------------------------------------------------------------- filter: split S / T

#ifdef E_SPLIT
@group(0) @binding(1) var<storage, read> scores: array<f32>;
@group(0) @binding(2) var<storage, read_write> plan: array<u32>;
@group(0) @binding(3) var<storage, read> positions: array<i32>;
@group(0) @binding(4) var<storage, read_write> positions_out: array<i32>;

@compute @workgroup_size(256)
fn split_tokens(@builtin(local_invocation_index) lid: u32) {
    let n = p.n;
    let np = num_candidates();
    // Pass 1 (parallel): each candidate's rank in descending score order, in the tidx region.
    for (var c = lid; c < np; c += 256u) {
        let s = scores[c];
        var rank = 0u;
        for (var o = 0u; o < np; o++) {
            if (scores[o] > s || (scores[o] == s && o < c)) { rank++; }
        }
        plan[4u * n + seq_of(c)] = rank;
    }
    storageBarrier();
    workgroupBarrier();
    if (lid != 0u) { return; }
    // Pass 2 (one invocation, O(n)): compact into the lists in sequence order.
    let kept_top = np - p.n_src;
    var c = 0u;
    var ns = 0u;
    var nt = 0u;
    var nq = 0u;
    var r = 0u;
    var new0 = 0u;
    for (var seq = 0u; seq <= n; seq++) {
        if (seq == p.span_end) {
            new0 = r;
            for (var g = 0u; g < p.n_new; g++) {
                plan[3u * n + r] = NONE;
                // RoPE positions: the span's last token's, so order and distances to the text
                // hold; grid positions: no cell.
                positions_out[r] = select(-1, positions[p.span_end - 1u], p.positions_mode == 1u);
                if (p.positions_mode == 2u) { positions_out[r] = i32(r); }
                r++;
            }
        }
        if (seq == n) { break; }
        let candidate = c < np && seq_of(c) == seq;
        var source = false;
        var recycled = false;
        if (candidate) {
            let rank = plan[4u * n + seq];
            if (p.keep_high == 1u) {
                source = rank >= kept_top;
                recycled = source && rank < kept_top + p.n_recycle;
            } else {
                source = rank < p.n_src;
            }
            c++;
        }
        if (source) {
            plan[n + ns] = seq;
            plan[5u * n + ns] = NONE;
            if (recycled) {
                plan[6u * n + nq] = ns;
                nq++;
            }
            ns++;
            plan[seq] = NONE;
            plan[4u * n + seq] = NONE;
        } else {
            if (candidate) {
                plan[2u * n + nt] = seq;
                plan[4u * n + seq] = nt;
                nt++;
            } else {
                plan[4u * n + seq] = NONE;
            }
            plan[seq] = r;
            plan[3u * n + r] = seq;
            positions_out[r] = select(positions[seq], i32(r), p.positions_mode == 2u);
            r++;
        }
    }
    plan[7u * n] = ns;
    plan[7u * n + 1u] = nt;
    plan[7u * n + 2u] = r;
    plan[7u * n + 3u] = new0;
    plan[7u * n + 4u] = p.n_new;
    plan[7u * n + 5u] = nq;
}
#endif

// ---------------------------------------------------------------- correlate

#ifdef E_CORRELATE
@group(0) @binding(1) var<storage, read> attn: array<f32>;
@group(0) @binding(2) var<storage, read_write> corr: array<f32>;
@group(0) @binding(3) var<storage, read> plan: array<u32>;

@compute @workgroup_size(64)
fn correlate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let e = flat(wid, nwg, lid);
    if (e >= p.ns * p.nt) { return; }
    let n = p.n;
    let i = plan[n + e / p.nt];
    let j = plan[2u * n + e % p.nt];
    var c = 0.0;
    if (p.g_direct != 0.0) {
        c = p.g_direct * (attn[i * n + j] + p.symmetric * attn[j * n + i]);
    }
    if (p.g_indirect != 0.0 && p.ntext > 0u) {
        var s = 0.0;
        for (var k = p.text0; k < p.text0 + p.ntext; k++) { s += attn[k * n + i] * attn[k * n + j]; }
        c += p.g_indirect / f32(p.ntext) * s;
    }
    corr[e] = c;
}
#endif

#ifdef E_PAIRS
@group(0) @binding(1) var<storage, read> metric: array<f32>;
@group(0) @binding(2) var<storage, read> norms: array<f32>;
@group(0) @binding(3) var<storage, read> plan: array<u32>;
@group(0) @binding(4) var<storage, read_write> pairs: array<f32>;

fn listed(list: u32, x: u32) -> u32 {
    let n = p.n;
    if (list == 0u) { return plan[n + x]; }
    if (list == 1u) { return plan[2u * n + x]; }
    if (list == 2u) { return plan[n + x * p.stride]; }
    return plan[n + plan[6u * n + x]];
}

@compute @workgroup_size(64)
fn metric_pairs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let e = flat(wid, nwg, lid);
    if (e >= p.nr * p.nc) { return; }
    let i = listed(p.rows, e / p.nc);
    let j = listed(p.cols, e % p.nc);
    if (p.bipartite == 1u && cand_of(j) % 2u == 0u) {
        pairs[e] = LOWEST;
        return;
    }
    var acc = 0.0;
    if (p.mode == 0u) {
        for (var x = 0u; x < p.dk; x++) { acc += metric[i * p.dk + x] * metric[j * p.dk + x]; }
        pairs[e] = acc * norms[i] * norms[j];
    } else {
        for (var x = 0u; x < p.dk; x++) {
            let v = metric[i * p.dk + x] - metric[j * p.dk + x];
            acc += v * v;
        }
        pairs[e] = sqrt(acc) / sqrt(f32(p.dk));
    }
}
#endif

// ---------------------------------------------------------------- correlate: targets per source

#ifdef E_ASSIGN
@group(0) @binding(1) var<storage, read> corr: array<f32>;
@group(0) @binding(2) var<storage, read_write> weights: array<f32>;

var<workgroup> sorted: array<f32, SORT_N>;
var<workgroup> partial: array<f32, 256>;

// Row r of the assignment: a source's entries over the targets, or (convergent) a target's
// entries over the sources.
fn row_len() -> u32 { return select(p.nt, p.ns, p.convergent == 1u); }
fn at(r: u32, col: u32) -> u32 { return select(r * p.nt + col, col * p.nt + r, p.convergent == 1u); }

@compute @workgroup_size(256)
fn assign_targets(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let r = wid.x + wid.y * nwg.x;
    let rows = select(p.ns, p.nt, p.convergent == 1u);
    // Uniform per workgroup: the whole group returns together.
    if (r >= rows) { return; }
    let len = row_len();
    var tau = 0.0;
    if (p.fixed_k == NONE) {
        let big = bitcast<f32>(0x7f7fffffu);
        for (var i = lid; i < SORT_N; i += 256u) {
            sorted[i] = select(big, corr[at(r, min(i, len - 1u))], i < len);
        }
        workgroupBarrier();
        for (var k = 2u; k <= SORT_N; k <<= 1u) {
            for (var j = k >> 1u; j > 0u; j >>= 1u) {
                for (var i = lid; i < SORT_N; i += 256u) {
                    let l = i ^ j;
                    if (l > i) {
                        let a = sorted[i];
                        let b = sorted[l];
                        if ((a > b) == ((i & k) == 0u)) {
                            sorted[i] = b;
                            sorted[l] = a;
                        }
                    }
                }
                workgroupBarrier();
            }
        }
        let q = p.eps * f32(len - 1u);
        let lo = u32(floor(q));
        let hi = min(lo + 1u, len - 1u);
        let w = q - f32(lo);
        tau = min(sorted[lo] + w * (sorted[hi] - sorted[lo]), sorted[hi]);
    }
    var sum = 0.0;
    for (var col = lid; col < len; col += 256u) {
        let v = corr[at(r, col)];
        var member = false;
        if (p.fixed_k == NONE) {
            member = v >= tau;
        } else {
            var rank = 0u;
            for (var o = 0u; o < len; o++) {
                let u = corr[at(r, o)];
                if (u > v || (u == v && o < col)) { rank++; }
            }
            member = rank < p.fixed_k;
        }
        var wgt = 0.0;
        if (member) { wgt = select(v, 1.0, p.average == 1u); }
        weights[at(r, col)] = wgt;
        sum += wgt;
    }
    partial[lid] = sum;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lid < s) { partial[lid] += partial[lid + s]; }
        workgroupBarrier();
    }
    let total = partial[0];
    if (p.average == 1u) { return; }
    // alpha = C / sum over the members; a row whose members sum to 0 contributes nothing.
    for (var col = lid; col < len; col += 256u) {
        let idx = at(r, col);
        weights[idx] = select(0.0, weights[idx] / total, total != 0.0);
    }
}
#endif

// ---------------------------------------------------------------- correlate: new-token groups

#ifdef E_GROUP
@group(0) @binding(1) var<storage, read_write> plan: array<u32>;
@group(0) @binding(2) var<storage, read> positions: array<i32>;
@group(0) @binding(3) var<storage, read> pairs: array<f32>;

@compute @workgroup_size(64)
fn group_sources(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let a = flat(wid, nwg, lid);
    if (a >= p.ns) { return; }
    let n = p.n;
    var g = 0u;
    if (p.mode == 1u) {
        let pos = u32(positions[plan[n + a]]);
        g = (pos / p.grid / p.window) * (p.grid / p.window) + (pos % p.grid) / p.window;
    } else if (p.mode == 2u) {
        if (a % p.stride == 0u && a / p.stride < p.count) {
            g = a / p.stride;
        } else {
            var best = pairs[a * p.count];
            for (var t = 1u; t < p.count; t++) {
                let v = pairs[a * p.count + t];
                if (v > best) {
                    best = v;
                    g = t;
                }
            }
        }
    }
    plan[5u * n + a] = g;
}
#endif

#ifdef E_DPC
@group(0) @binding(1) var<storage, read> dist: array<f32>;
@group(0) @binding(2) var<storage, read_write> aux: array<f32>;
@group(0) @binding(3) var<storage, read_write> plan: array<u32>;

@compute @workgroup_size(64)
fn dpc_density(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let a = flat(wid, nwg, lid);
    let q = p.nr;
    if (a >= q) { return; }
    let k = min(p.knn, q - 1u);
    var best: array<f32, 16>;
    var have = 0u;
    for (var b = 0u; b < q; b++) {
        if (b == a || k == 0u) { continue; }
        let v = dist[a * q + b];
        let v2 = v * v;
        if (have < k || v2 < best[k - 1u]) {
            var t = min(have, k - 1u);
            while (t > 0u && best[t - 1u] > v2) {
                best[t] = best[t - 1u];
                t--;
            }
            best[t] = v2;
            have = min(have + 1u, k);
        }
    }
    var s = 0.0;
    for (var t = 0u; t < k; t++) { s += best[t]; }
    aux[a] = select(1.0, exp(-s / f32(max(k, 1u))), k > 0u);
}

@compute @workgroup_size(64)
fn dpc_peaks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let a = flat(wid, nwg, lid);
    let q = p.nr;
    if (a >= q) { return; }
    let rho = aux[a];
    var near = 0.0;
    var found = false;
    var far = 0.0;
    for (var b = 0u; b < q; b++) {
        if (b == a) { continue; }
        let v = dist[a * q + b];
        far = max(far, v);
        if (aux[b] > rho && (!found || v < near)) {
            near = v;
            found = true;
        }
    }
    aux[q + a] = rho * select(far, near, found);
}

@compute @workgroup_size(64)
fn dpc_centres(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let a = flat(wid, nwg, lid);
    let q = p.nr;
    if (a >= q) { return; }
    let g = aux[q + a];
    var rank = 0u;
    for (var b = 0u; b < q; b++) {
        let o = aux[q + b];
        if (o > g || (o == g && b < a)) { rank++; }
    }
    aux[2u * q + a] = select(0.0, 1.0, rank < p.count);
}

@compute @workgroup_size(64)
fn dpc_assign(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let a = flat(wid, nwg, lid);
    let q = p.nr;
    if (a >= q) { return; }
    var label = a;
    if (aux[2u * q + a] == 0.0) {
        var near = 0.0;
        var found = false;
        for (var b = 0u; b < q; b++) {
            let v = dist[a * q + b];
            if (aux[2u * q + b] != 0.0 && (!found || v < near)) {
                near = v;
                label = b;
                found = true;
            }
        }
    }
    var ordinal = 0u;
    for (var b = 0u; b < label; b++) {
        if (aux[2u * q + b] != 0.0) { ordinal++; }
    }
    plan[5u * p.n + plan[6u * p.n + a]] = ordinal;
}
#endif

// ---------------------------------------------------------------- compress

#ifdef E_COMPRESS
@group(0) @binding(1) var<storage, read> hidden: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> plan: array<u32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;
@group(0) @binding(5) var<storage, read> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> sizes: array<f32>;
#ifdef CARRIED_SIZES
@group(0) @binding(7) var<storage, read> carried: array<f32>;
fn size_of(seq: u32) -> f32 {
    return carried[seq];
}
#else
fn size_of(seq: u32) -> f32 {
    return 1.0;
}
#endif

fn member_weight(a: u32, w: f32) -> f32 {
    let m = select(w, scores[cand_of(plan[p.n + a])], p.score_members == 1u);
    return m * size_of(plan[p.n + a]);
}

@compute @workgroup_size(64)
fn compress(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let r = group_index(wid, nwg);
    let n = p.n;
    if (r >= plan[7u * n + 2u]) { return; }
    let seq = plan[3u * n + r];
    if (seq == NONE) { return; }
    let b = plan[4u * n + seq];
    var members = 0u;
    if (b != NONE) {
        for (var a = 0u; a < p.ns; a++) {
            if (weights[a * p.nt + b] != 0.0) { members++; }
        }
    }
    if (lid == 0u) {
        var size = size_of(seq);
        if (b != NONE) {
            for (var a = 0u; a < p.ns; a++) {
                if (weights[a * p.nt + b] != 0.0) { size += size_of(plan[p.n + a]); }
            }
        }
        sizes[r] = size;
    }
    var self_w = size_of(seq);
    if (members > 0u && p.score_self == 1u) { self_w = scores[cand_of(seq)] * size_of(seq); }
    for (var c = lid; c < p.d; c += 64u) {
        let x = hidden[seq * p.d + c];
        if (members == 0u) {
            out[r * p.d + c] = x;
            continue;
        }
        var acc = self_w * x;
        var wsum = self_w;
        for (var a = 0u; a < p.ns; a++) {
            let w = weights[a * p.nt + b];
            if (w != 0.0) {
                let m = member_weight(a, w);
                acc += m * hidden[plan[n + a] * p.d + c];
                wsum += m;
            }
        }
        out[r * p.d + c] = select(acc, acc / wsum, p.normalise == 1u);
    }
}
#endif

#ifdef E_NEW
@group(0) @binding(1) var<storage, read> hidden: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> plan: array<u32>;
@group(0) @binding(4) var<storage, read> scores: array<f32>;
@group(0) @binding(5) var<storage, read_write> sizes: array<f32>;

@compute @workgroup_size(64)
fn compress_new(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    let n = p.n;
    if (g >= plan[7u * n + 4u]) { return; }
    let row = plan[7u * n + 3u] + g;
    if (lid == 0u) {
        var members = 0u;
        for (var a = 0u; a < p.ns; a++) {
            if (plan[5u * n + a] == g) { members++; }
        }
        sizes[row] = f32(members);
    }
    for (var c = lid; c < p.d; c += 64u) {
        var acc = 0.0;
        var wsum = 0.0;
        for (var a = 0u; a < p.ns; a++) {
            if (plan[5u * n + a] == g) {
                let seq = plan[n + a];
                let m = select(1.0, scores[cand_of(seq)], p.score_members == 1u);
                acc += m * hidden[seq * p.d + c];
                wsum += m;
            }
        }
        out[row * p.d + c] = select(acc, acc / wsum, p.normalise == 1u && wsum != 0.0);
    }
}
#endif

// ---------------------------------------------------------------- merge attribution

#ifdef E_ROUTE
@group(0) @binding(1) var<storage, read> plan: array<u32>;
@group(0) @binding(2) var<storage, read> weights: array<f32>;
@group(0) @binding(3) var<storage, read_write> route: array<i32>;

@compute @workgroup_size(64)
fn route_tokens(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let seq = flat(wid, nwg, lid);
    let n = p.n;
    if (seq >= n) { return; }
    let slot = plan[seq];
    if (slot != NONE) {
        route[seq] = i32(slot);
        return;
    }
    let ns = plan[7u * n];
    let nt = plan[7u * n + 1u];
    var a = NONE;
    for (var i = 0u; i < ns; i++) {
        if (plan[n + i] == seq) {
            a = i;
            break;
        }
    }
    var out = -1;
    if (a != NONE && p.mode == 1u) {
        var best = 0.0;
        var found = NONE;
        for (var b = 0u; b < nt; b++) {
            let w = weights[a * nt + b];
            if (w > best) {
                best = w;
                found = b;
            }
        }
        if (found != NONE) { out = i32(plan[plan[2u * n + found]]); }
    } else if (a != NONE && p.mode == 2u) {
        let g = plan[5u * n + a];
        if (g != NONE) { out = i32(plan[7u * n + 3u] + g); }
    }
    route[seq] = out;
}
#endif

#ifdef E_COMPOSE
@group(0) @binding(1) var<storage, read> route: array<i32>;
@group(0) @binding(2) var<storage, read_write> owner: array<i32>;

@compute @workgroup_size(64)
fn compose_routes(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let q = flat(wid, nwg, lid);
    if (q >= p.count) { return; }
    let o = owner[q];
    if (o >= 0) { owner[q] = route[u32(o)]; }
}
#endif
