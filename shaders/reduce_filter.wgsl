// reduce_filter.wgsl: the filter stage of one token-reduction step (scores, and the split of
// the candidates into sources and targets).
// Terms, the plan buffer's layout and Params (binding 0): reduce_common.wgsl.
// Entry points (each compiled with its own flag, which declares its bindings). Parallel over
// tokens, pairs or rows unless marked "one workgroup".
//   score_tokens   E_SCORE    1 attn (r), 2 scores [np] (rw), 3 row weights [n] (r)
//                  s_c = sum over the (at most two) terms t of w_t / div_t * v_t(c),
//                      v_t(c) = sum over rows [r_t0, r_t0 + r_tn) of (rw[row]) attn[row, seq(c)]
//                  (rw[row] only for a term whose bit is set in `weighted`), or for a term whose
//                  bit is set in `along_rows` the sum over those columns of attn[seq(c), col],
//                  the [CLS] column left out; no terms writes 0
//   score_tokens_normalised E_SCORE one workgroup: the same terms, each divided by its L2 norm
//                  over the candidates, max(|v_t|, 1e-12), before weighting (the authors' FiCoCo-V)
//   rate_rows      E_RATE     1 attn (r), 2 row weights [n] (rw); one workgroup, O(M np)
//                  SparseVLM's raters: r_k = mean over candidates of attn[k, .] for the text rows
//                  k; raters = {k : r_k >= mean r} (all text rows if none); rw[k] = 1/|raters|
//                  for raters, 0 for other text rows
//   metric_norms   E_NORMS    1 metric (r), 2 norms [n] (rw)
//                  norms[i] = 1 / max(|M_i|, 1e-12)
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

#include "reduce_common"

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

fn row_sum(row: u32, col0: u32, cols: u32) -> f32 {
    var s = 0.0;
    for (var col = col0; col < col0 + cols; col++) {
        if (col != p.cls) { s += attn[row * p.n + col]; }
    }
    return s;
}

// Term t (0 or 1) of candidate token `seq`, before its weight and divisor.
fn term(t: u32, seq: u32) -> f32 {
    let r0 = select(p.r1_0, p.r2_0, t == 1u);
    let rn = select(p.r1_n, p.r2_n, t == 1u);
    if (rn == 0u) { return 0.0; }
    if ((p.along_rows & (1u << t)) != 0u) { return row_sum(seq, r0, rn); }
    return column_sum(r0, rn, seq, (p.weighted & (1u << t)) != 0u);
}

@compute @workgroup_size(64)
fn score_tokens(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let c = flat(wid, nwg, lid);
    if (c >= num_candidates()) { return; }
    let seq = seq_of(c);
    var s = 0.0;
    if (p.r1_n > 0u) { s += p.w1 / p.div1 * term(0u, seq); }
    if (p.r2_n > 0u) { s += p.w2 / p.div2 * term(1u, seq); }
    scores[c] = s;
}

var<workgroup> squares: array<vec2<f32>, 64>;

@compute @workgroup_size(64)
fn score_tokens_normalised(@builtin(local_invocation_index) lid: u32) {
    let np = num_candidates();
    var ss = vec2<f32>(0.0);
    for (var c = lid; c < np; c += 64u) {
        let v = vec2<f32>(term(0u, seq_of(c)), term(1u, seq_of(c)));
        ss += v * v;
    }
    squares[lid] = ss;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (lid < s) { squares[lid] += squares[lid + s]; }
        workgroupBarrier();
    }
    // A mean's divisor cancels in its normalised value; an absent term (no rows) is 0.
    let norms = max(sqrt(squares[0]), vec2<f32>(NORM_FLOOR));
    let w = vec2<f32>(p.w1, p.w2) / norms;
    for (var c = lid; c < np; c += 64u) {
        let seq = seq_of(c);
        scores[c] = w.x * term(0u, seq) + w.y * term(1u, seq);
    }
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

@compute @workgroup_size(64)
fn metric_norms(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = flat(wid, nwg, lid);
    if (i >= p.n) { return; }
    var ss = 0.0;
    for (var x = 0u; x < p.dk; x++) {
        let v = metric[i * p.dk + x];
        ss += v * v;
    }
    norms[i] = 1.0 / max(sqrt(ss), NORM_FLOOR);
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
