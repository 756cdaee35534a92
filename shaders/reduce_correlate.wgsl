// reduce_correlate.wgsl: the correlate stage of one token-reduction step (source-target
// relations, targets per source, groups of sources that form new tokens).
// Terms, the plan buffer's layout and Params (binding 0): reduce_common.wgsl.
// Entry points (each compiled with its own flag, which declares its bindings). Parallel over
// tokens, pairs or rows unless marked "one workgroup".
//   correlate      E_CORRELATE 1 attn (r), 2 C [ns, nt] (rw), 3 plan (r)
//                  C[a, b] = g_direct * (A[i, j] + symmetric * A[j, i])
//                          + g_indirect / ntext * sum_k A[k, i] * A[k, j], k over the text rows
//                  or with `path` (the authors' FiCoCo-L) + g_indirect * sum_k A[i, k] * A[k, j]
//   metric_pairs   E_PAIRS    1 metric (r), 2 norms (r), 3 plan (r), 4 out [nr, nc] (rw)
//                  out[r, c] = cos(M_i, M_j) (mode 0) or |M_i - M_j| / sqrt(dk) (mode 1) for
//                  i = list `rows`[r], j = list `cols`[c]; lists: 0 sources, 1 targets, 2 every
//                  stride-th source, 3 recycled sources; with `bipartite`, a column token of ToMe's
//                  set A (even candidate index) gets LOWEST
//   assign_targets E_ASSIGN   1 C (r), 2 weights [ns, nt] (rw)
//                  one workgroup per source (per target when convergent): members are the
//                  entries >= the eps-quantile of the row (torch.quantile's linear rule) or the
//                  fixed_k largest; weight = entry / sum over members (1 with `average`; with
//                  `softmax` exp(entry - row max) / its sum over members), else 0
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

#include "reduce_common"

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
        if (p.path == 1u) {
            for (var k = p.text0; k < p.text0 + p.ntext; k++) { s += attn[i * n + k] * attn[k * n + j]; }
            c += p.g_indirect * s;
        } else {
            for (var k = p.text0; k < p.text0 + p.ntext; k++) { s += attn[k * n + i] * attn[k * n + j]; }
            c += p.g_indirect / f32(p.ntext) * s;
        }
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
var<workgroup> partial_col: array<u32, 256>;

// Row r of the assignment: a source's entries over the targets, or (convergent) a target's
// entries over the sources.
fn row_len() -> u32 { return select(p.nt, p.ns, p.convergent == 1u); }
fn at(r: u32, col: u32) -> u32 { return select(r * p.nt + col, col * p.nt + r, p.convergent == 1u); }

// Entry (v, col) ranks before (w, o): larger value first, ties by lower column.
fn ranks_before(v: f32, col: u32, w: f32, o: u32) -> bool {
    return v > w || (v == w && col < o);
}

struct Pick { v: f32, col: u32 }

// Ranks this close to the top are found by argmax rounds (each a tree of workgroup barriers)
// rather than a full sort or per-entry rank counts; barriers are dear on CPU adapters (lavapipe:
// two rounds beat both, four lose to the rank counts).
const QUICK_RANKS = 2u;

// The k-th entry of row r in rank order (k >= 1, k <= len): k rounds of a workgroup argmax over
// the entries ranked after the previous round's pick; `before` gets the (k-1)-th (k >= 2).
fn kth_ranked(r: u32, len: u32, k: u32, lid: u32, before: ptr<function, Pick>) -> Pick {
    // Round 0 takes any entry, so the first bound's value is never read.
    var bound = Pick(0.0, NONE);
    for (var round = 0u; round < k; round++) {
        *before = bound;
        var best = Pick(LOWEST, NONE);
        for (var col = lid; col < len; col += 256u) {
            let v = corr[at(r, col)];
            let after = ranks_before(bound.v, bound.col, v, col) || round == 0u;
            if (after && (best.col == NONE || ranks_before(v, col, best.v, best.col))) {
                best = Pick(v, col);
            }
        }
        partial[lid] = best.v;
        partial_col[lid] = best.col;
        workgroupBarrier();
        for (var s = 128u; s > 0u; s >>= 1u) {
            if (lid < s) {
                let o = partial_col[lid + s];
                let mine = partial_col[lid];
                if (o != NONE && (mine == NONE || ranks_before(partial[lid + s], o, partial[lid], mine))) {
                    partial[lid] = partial[lid + s];
                    partial_col[lid] = o;
                }
            }
            workgroupBarrier();
        }
        bound = Pick(partial[0], partial_col[0]);
        workgroupBarrier();
    }
    return bound;
}

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
        // torch.quantile: sorted[lo] + w (sorted[hi] - sorted[lo]), hi = lo + 1 (or lo at the end).
        let q = p.eps * f32(len - 1u);
        let lo = u32(floor(q));
        let hi = min(lo + 1u, len - 1u);
        let w = q - f32(lo);
        var v_lo = 0.0;
        var v_hi = 0.0;
        let from_top = len - lo;
        if (from_top <= QUICK_RANKS) {
            // A high quantile (FiCoCo's 0.998): its entries are among the few largest.
            var above = Pick(0.0, NONE);
            let at_lo = kth_ranked(r, len, from_top, lid, &above);
            v_lo = at_lo.v;
            v_hi = select(above.v, at_lo.v, hi == lo);
        } else {
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
            v_lo = sorted[lo];
            v_hi = sorted[hi];
        }
        tau = min(v_lo + w * (v_hi - v_lo), v_hi);
    }
    // The softmax weights subtract the row's largest entry (the exponent stays <= 0).
    var top = LOWEST;
    if (p.softmax == 1u) {
        var mine = LOWEST;
        for (var col = lid; col < len; col += 256u) { mine = max(mine, corr[at(r, col)]); }
        partial[lid] = mine;
        workgroupBarrier();
        for (var s = 128u; s > 0u; s >>= 1u) {
            if (lid < s) { partial[lid] = max(partial[lid], partial[lid + s]); }
            workgroupBarrier();
        }
        top = partial[0];
        workgroupBarrier();
    }
    // fixed_k: the members rank at or before the fixed_k-th entry.
    let quick_k = p.fixed_k != NONE && p.fixed_k > 0u && min(p.fixed_k, len) <= QUICK_RANKS;
    var kth = Pick(LOWEST, NONE);
    if (quick_k) {
        var unused = Pick(0.0, NONE);
        kth = kth_ranked(r, len, min(p.fixed_k, len), lid, &unused);
    }
    var sum = 0.0;
    for (var col = lid; col < len; col += 256u) {
        let v = corr[at(r, col)];
        var member = false;
        if (p.fixed_k == NONE) {
            member = v >= tau;
        } else if (quick_k) {
            member = kth.col != NONE && (col == kth.col || ranks_before(v, col, kth.v, kth.col));
        } else {
            var rank = 0u;
            for (var o = 0u; o < len && rank < p.fixed_k; o++) {
                if (ranks_before(corr[at(r, o)], o, v, col)) { rank++; }
            }
            member = rank < p.fixed_k;
        }
        var wgt = 0.0;
        if (member) {
            wgt = select(v, 1.0, p.average == 1u);
            if (p.softmax == 1u) { wgt = exp(v - top); }
        }
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
