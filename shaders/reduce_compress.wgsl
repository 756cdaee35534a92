// reduce_compress.wgsl: the compress stage of one token-reduction step (folding sources into
// targets and new tokens), and the merge attribution read after a step.
// Terms, the plan buffer's layout and Params (binding 0): reduce_common.wgsl.
// Entry points (each compiled with its own flag, which declares its bindings). Parallel over
// tokens, pairs or rows unless marked "one workgroup".
//   compress       E_COMPRESS 1 hidden (r), 2 out [n_out, d] (rw), 3 plan (r), 4 weights (r),
//                  5 scores (r), 6 sizes [n_out] (rw); one workgroup per output row
//                  kept row r of token j (target b): out = (u_j X_j + sum_a m_a X_src[a]) /
//                  (u_j + sum_a m_a) over the sources a with weights[a, b] != 0, m_a = that weight
//                  (or the source's score when score_members), u_j = 1 (or j's score when
//                  score_self), no division without `normalise`; a token without sources is
//                  copied; sizes = 1 + number of sources; new rows are left to compress_new.
//                  CARRIED_SIZES (ToMe): 7 carried sizes z [n] (r); u_j and every m_a are
//                  multiplied by the token's z, and sizes = z_j + sum of the sources' z
//   compress_new   E_COMPRESS with NEW_TOKENS, the same bindings (weights unread); one
//                  workgroup per new token g: out[new0 + g] = sum_{group[a] = g} m_a X_src[a]
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

#include "reduce_common"

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

#ifdef NEW_TOKENS
// Source a feeds new token `key`.
fn is_member(a: u32, key: u32) -> bool {
    return plan[5u * p.n + a] == key;
}

fn member_weight(a: u32, key: u32) -> f32 {
    return select(1.0, scores[cand_of(plan[p.n + a])], p.score_members == 1u);
}
#else
// Source a merges into target `key` (NONE: the row is no target).
fn is_member(a: u32, key: u32) -> bool {
    return key != NONE && weights[a * p.nt + key] != 0.0;
}

fn member_weight(a: u32, key: u32) -> f32 {
    let m = select(weights[a * p.nt + key], scores[cand_of(plan[p.n + a])], p.score_members == 1u);
    return m * size_of(plan[p.n + a]);
}
#endif

// Output row `row` from its members (sources of `key`) and, unless `seq` is NONE, the kept
// token `seq` itself. Every invocation tests every source: the test reads the same weight in
// all of them (a broadcast, a uniform branch), and no barrier is needed, which on CPU adapters
// costs more than the loads it would save.
fn merge_row(row: u32, seq: u32, key: u32, lid: u32) {
    let d = p.d;
    var members = 0u;
    var wsum = 0.0;
    var size = 0.0;
    for (var a = 0u; a < p.ns; a++) {
        if (is_member(a, key)) {
            members++;
            wsum += member_weight(a, key);
            size += size_of(plan[p.n + a]);
        }
    }
    var self_w = 0.0;
    if (seq != NONE) {
        self_w = size_of(seq);
        if (members > 0u && p.score_self == 1u) { self_w *= scores[cand_of(seq)]; }
        size += size_of(seq);
    }
    if (lid == 0u) { sizes[row] = size; }
    for (var c = lid; c < d; c += 64u) {
        var acc = 0.0;
        if (members > 0u) {
            for (var a = 0u; a < p.ns; a++) {
                if (is_member(a, key)) { acc += member_weight(a, key) * hidden[plan[p.n + a] * d + c]; }
            }
        }
        if (seq != NONE) {
            let x = hidden[seq * d + c];
            acc = select(self_w * x + acc, x, members == 0u);
        }
        let total = wsum + self_w;
        if (p.normalise == 1u && members > 0u && total != 0.0) { acc /= total; }
        out[row * d + c] = acc;
    }
}

#ifdef NEW_TOKENS
@compute @workgroup_size(64)
fn compress_new(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let g = group_index(wid, nwg);
    if (g >= plan[7u * p.n + 4u]) { return; }
    merge_row(plan[7u * p.n + 3u] + g, NONE, g, lid);
}
#else
@compute @workgroup_size(64)
fn compress(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let r = group_index(wid, nwg);
    let n = p.n;
    if (r >= plan[7u * n + 2u]) { return; }
    let seq = plan[3u * n + r];
    if (seq == NONE) { return; }
    merge_row(r, seq, plan[4u * n + seq], lid);
}
#endif
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
