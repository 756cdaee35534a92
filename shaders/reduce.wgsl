// reduce.wgsl: one token-reduction step as filter, correlate and compress stages.
// Terms (scripts/reduce_reference.py, "Decisions"): a sequence of n tokens, hidden [n, d] f32
// row-major; attn [n, n] f32 head-averaged softmax probabilities, row = query, column = key.
// Candidates P = the span [cand0, cand0 + ncand) without token `cls` (NONE = no [CLS]), indexed
// c = 0..np in sequence order. Sources S (discarded) and targets T (kept candidates) come from
// the scores; every other token passes through.
// The plan buffer (u32, 5n + 3 words) written by split_tokens:
//   [0, n)   slot[seq]  output row of each input token, NONE if discarded
//   [n, 2n)  src[a]     sequence index of source a (ascending)
//   [2n, 3n) tgt[b]     sequence index of target b (ascending)
//   [3n, 4n) kept[r]    input token of output row r
//   [4n, 5n) tidx[seq]  target index of each input token, NONE if not a target
//   [5n..]   ns, nt, n_out
// Entry points (one per stage; each is compiled with its own flag, which declares its bindings):
//   score_tokens   E_SCORE    1 attn (r), 2 scores [np] (rw)
//                  s_c = w1 / div1 * sum over rows [r1_0, r1_0 + r1_n) of attn[row, seq(c)]
//                      + w2 / div2 * (the same over rows [r2_0, r2_0 + r2_n))
//   local_penalty  E_PENALTY  1 raw scores (r), 2 scores (rw), 3 positions i32 [n] (r)
//                  the largest raw score of each window x window cell of the patch grid
//                  (ties: lower index) is multiplied by coef if > 0, divided if < 0
//   split_tokens   E_SPLIT    1 scores (r), 2 plan (rw), 3 positions i32 (r), 4 positions out (rw)
//                  one workgroup; rank by descending score (ties: lower index first); sources
//                  are the n_drop top-ranked (keep_high = 0) or all but the np - n_drop
//                  top-ranked (keep_high = 1)
//   correlate      E_CORRELATE 1 attn (r), 2 C [ns, nt] (rw), 3 plan (r)
//                  C[a, b] = g_direct * (A[i, j] + symmetric * A[j, i])
//                          + g_indirect / ntext * sum_k A[k, i] * A[k, j], k over the text rows
//   assign_targets E_ASSIGN   1 C (r), 2 weights [ns, nt] (rw)
//                  one workgroup per source (per target when convergent): members are the
//                  entries >= the eps-quantile of the row (torch.quantile's linear rule) or the
//                  fixed_k largest; weight = entry / sum over members (1 with `average`), else 0
//   compress       E_COMPRESS 1 hidden (r), 2 out [n_out, d] (rw), 3 plan (r), 4 weights (r)
//                  out[slot[j]] = (X_j + sum_a w[a, b] X_src[a]) / (1 + sum_a w[a, b])

const NONE = 0xffffffffu;

struct Params {
    n: u32, d: u32, cand0: u32, ncand: u32,
    cls: u32, n_drop: u32, keep_high: u32, ns: u32,
    r1_0: u32, r1_n: u32, r2_0: u32, r2_n: u32,
    w1: f32, w2: f32, div1: f32, div2: f32,
    grid: u32, window: u32, coef: f32, nt: u32,
    text0: u32, ntext: u32, symmetric: f32, fixed_k: u32,
    g_direct: f32, g_indirect: f32, eps: f32, convergent: u32,
    average: u32, _p0: u32, _p1: u32, _p2: u32,
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

fn flat(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * 64u + lid;
}

// ---------------------------------------------------------------- filter: scores

#ifdef E_SCORE
@group(0) @binding(1) var<storage, read> attn: array<f32>;
@group(0) @binding(2) var<storage, read_write> scores: array<f32>;

fn column_sum(row0: u32, rows: u32, col: u32) -> f32 {
    var s = 0.0;
    for (var r = row0; r < row0 + rows; r++) { s += attn[r * p.n + col]; }
    return s;
}

@compute @workgroup_size(64)
fn score_tokens(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let c = flat(wid, nwg, lid);
    if (c >= num_candidates()) { return; }
    let col = seq_of(c);
    var s = 0.0;
    if (p.r1_n > 0u) { s += p.w1 / p.div1 * column_sum(p.r1_0, p.r1_n, col); }
    if (p.r2_n > 0u) { s += p.w2 / p.div2 * column_sum(p.r2_0, p.r2_n, col); }
    scores[c] = s;
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
    // Pass 1 (parallel): mark sources in the tidx region, by rank in descending score order.
    for (var c = lid; c < np; c += 256u) {
        let s = scores[c];
        var rank = 0u;
        for (var o = 0u; o < np; o++) {
            if (scores[o] > s || (scores[o] == s && o < c)) { rank++; }
        }
        let source = select((rank < p.n_drop), (rank >= np - p.n_drop), p.keep_high == 1u);
        plan[4u * n + seq_of(c)] = select(0u, 1u, source);
    }
    storageBarrier();
    workgroupBarrier();
    if (lid != 0u) { return; }
    // Pass 2 (one invocation, O(n)): compact into the lists in sequence order.
    var c = 0u;
    var ns = 0u;
    var nt = 0u;
    var r = 0u;
    for (var seq = 0u; seq < n; seq++) {
        let candidate = c < np && seq_of(c) == seq;
        var source = false;
        if (candidate) {
            source = plan[4u * n + seq] == 1u;
            c++;
        }
        if (source) {
            plan[n + ns] = seq;
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
            positions_out[r] = positions[seq];
            r++;
        }
    }
    plan[5u * n] = ns;
    plan[5u * n + 1u] = nt;
    plan[5u * n + 2u] = r;
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

// ---------------------------------------------------------------- compress

#ifdef E_COMPRESS
@group(0) @binding(1) var<storage, read> hidden: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> plan: array<u32>;
@group(0) @binding(4) var<storage, read> weights: array<f32>;

@compute @workgroup_size(64)
fn compress(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let r = wid.x + wid.y * nwg.x;
    let n = p.n;
    if (r >= plan[5u * n + 2u]) { return; }
    let seq = plan[3u * n + r];
    let b = plan[4u * n + seq];
    for (var c = lid; c < p.d; c += 64u) {
        var acc = hidden[seq * p.d + c];
        var wsum = 0.0;
        if (b != NONE) {
            for (var a = 0u; a < p.ns; a++) {
                let w = weights[a * p.nt + b];
                if (w != 0.0) {
                    acc += w * hidden[plan[n + a] * p.d + c];
                    wsum += w;
                }
            }
        }
        out[r * p.d + c] = acc / (1.0 + wsum);
    }
}
#endif
