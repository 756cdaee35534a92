// attention.wgsl: scaled dot-product attention of q_len queries over the first kv_len rows of a
// key/value cache, f32, with grouped-query heads (query head h reads kv head h / (heads / kv_heads)).
// Causal: the queries are the last q_len entries of the sequence, so query i sees keys
// j <= kv_len - q_len + i (by cache index). Layouts, row-major: q and out [q_len, heads * hd],
// k and v [capacity, kv_heads * hd], lse [q_len, heads], probs [q_len, kv_len].
//   attention  (variant `shared`, the real-GPU shape) one workgroup of 64 per (4 consecutive
//              queries, head), flattened as wid.x + wid.y * nwg.x: the four queries share every
//              key and value load. Keys go by in chunks of 64 (one per invocation), with an online
//              softmax (running max and sum, a vec4 for the four queries); each invocation owns
//              output dims lid and lid + 64. With WRITE_LSE it also stores each (query, head)'s
//              log-sum-exp for the probs pass.
//              Bindings: 1 q, 2 k, 3 v (read), 4 out (write), 5 lse (write, WRITE_LSE only).
//   attention_rows  (variant `rows`, with ROWS and the valued define HD = head_dim, a multiple
//              of 4; needs subgroups of at least 8) one invocation per query, one workgroup per
//              (64 consecutive queries, head). Keys go by eight at a time: lane t of each group
//              of 8 loads a vec4 of key (then value) j0 + t straight from the cache, and
//              subgroupBroadcast hands it to the other seven, so each load feeds 8 x 4
//              multiply-adds per lane. Each invocation keeps its query and output row in
//              registers and rescales once per eight keys. No workgroup memory, barriers or
//              cross-invocation reductions: the shape CPU adapters want (llvmpipe runs
//              invocations as SIMD lanes and every loop-indexed load lane by lane).
//              With DECODE_HEADS (one query: decode) one invocation per head instead, each kv
//              head's query heads on whole groups of 8 lanes (lanes past them idle), 64 lanes per
//              workgroup, so the 8 lanes of a subgroup share one kv head's keys by the same
//              broadcasts.
//              Bindings as `attention`, with k and v read as vec4s.
//   probs      head-averaged softmax probabilities, one workgroup of 64 per query, invocations
//              strided over keys; masked entries are exactly 0.
//              Bindings: 1 q, 2 k (read), 3 probs (write), 4 lse (read).
//              With SCORES instead the head-averaged pre-softmax scores scale * q.k over every
//              key, unmasked and without size bias (what the FiCoCo authors' code scores with);
//              no lse binding.
//   probs_rows (with ROWS) the same map, one invocation per query, 64 queries per workgroup,
//              keys eight at a time through subgroupBroadcast as in attention_rows.
// KEY_SIZES (both entries): ToMe's proportional attention, key j's logit gains log(size[j]) (a
// token standing for size[j] merged patches counts that many times). One more read binding after
// the others: size [kv_len].

struct Params {
    q_len: u32, kv_len: u32, heads: u32, kv_heads: u32,
    hd: u32, causal: u32, scale: f32, _pad: u32,
}

const CHUNK: u32 = 64u;
// The lowest f32, written exactly: WGSL refuses a literal beyond the f32 range (browsers check).
const NEG_INF: f32 = -3.4028234663852886e38;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
#ifndef ROWS
@group(0) @binding(2) var<storage, read> k: array<f32>;
#endif

fn visible(i: u32) -> u32 {
    return select(p.kv_len, p.kv_len - p.q_len + i + 1u, p.causal != 0u);
}

fn kv_head(h: u32) -> u32 {
    return h / (p.heads / p.kv_heads);
}

#ifdef KEY_SIZES
#ifdef PROBS
@group(0) @binding(5) var<storage, read> key_size: array<f32>;
#else
#ifdef WRITE_LSE
@group(0) @binding(6) var<storage, read> key_size: array<f32>;
#else
@group(0) @binding(5) var<storage, read> key_size: array<f32>;
#endif
#endif
fn key_bias(j: u32) -> f32 {
    return log(key_size[j]);
}
#else
fn key_bias(j: u32) -> f32 {
    return 0.0;
}
#endif

#ifdef ROWS
// Keys (and values) as vec4s: kv_heads * HD / 4 per cache row.
@group(0) @binding(2) var<storage, read> k4: array<vec4<f32>>;
const C4 = HD / 4u;

// Lanes t = 0..7 of each group of 8 hold a vec4 of key j0 + t; each lane gets its query's dot
// with all eight (columns 0 and 1: keys 0-3 and 4-7).
fn dots8(qc: vec4<f32>, kv: vec4<f32>) -> mat2x4<f32> {
    return mat2x4<f32>(
        vec4<f32>(dot(qc, subgroupBroadcast(kv, 0u)), dot(qc, subgroupBroadcast(kv, 1u)),
                  dot(qc, subgroupBroadcast(kv, 2u)), dot(qc, subgroupBroadcast(kv, 3u))),
        vec4<f32>(dot(qc, subgroupBroadcast(kv, 4u)), dot(qc, subgroupBroadcast(kv, 5u)),
                  dot(qc, subgroupBroadcast(kv, 6u)), dot(qc, subgroupBroadcast(kv, 7u))));
}

fn max4(x: vec4<f32>) -> f32 {
    return max(max(x.x, x.y), max(x.z, x.w));
}

// x of lanes 0..7 of each group of 8, as columns 0 (lanes 0-3) and 1 (lanes 4-7).
fn lanes8(x: f32) -> mat2x4<f32> {
    return mat2x4<f32>(
        vec4<f32>(subgroupBroadcast(x, 0u), subgroupBroadcast(x, 1u), subgroupBroadcast(x, 2u),
                  subgroupBroadcast(x, 3u)),
        vec4<f32>(subgroupBroadcast(x, 4u), subgroupBroadcast(x, 5u), subgroupBroadcast(x, 6u),
                  subgroupBroadcast(x, 7u)));
}
#endif

#ifdef ATTENTION
#ifndef ROWS
@group(0) @binding(3) var<storage, read> v: array<f32>;
#endif
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
#ifdef WRITE_LSE
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
#endif

#ifdef ROWS
@group(0) @binding(3) var<storage, read> v4: array<vec4<f32>>;

// sum over t of w[t] * (the vec4 of value j0 + t that lane t holds).
fn mix8(w: mat2x4<f32>, vv: vec4<f32>) -> vec4<f32> {
    return w[0].x * subgroupBroadcast(vv, 0u) + w[0].y * subgroupBroadcast(vv, 1u)
         + w[0].z * subgroupBroadcast(vv, 2u) + w[0].w * subgroupBroadcast(vv, 3u)
         + w[1].x * subgroupBroadcast(vv, 4u) + w[1].y * subgroupBroadcast(vv, 5u)
         + w[1].z * subgroupBroadcast(vv, 6u) + w[1].w * subgroupBroadcast(vv, 7u);
}

@compute @workgroup_size(64)
fn attention_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32,
                  @builtin(subgroup_invocation_id) sid: u32) {
    let flat = wid.x + wid.y * nwg.x;
#ifdef DECODE_HEADS
    // One query; each kv head gets whole groups of 8 lanes (its query heads, the rest idle), so
    // the 8 lanes of a subgroup are heads of one kv head and share its keys as below.
    let group = p.heads / p.kv_heads;
    let lanes = ((group + 7u) / 8u) * 8u;
    if (flat * 64u >= p.kv_heads * lanes) { return; }
    let slot = flat * 64u + lid;
    let hk = min(slot / lanes, p.kv_heads - 1u);
    let live = slot < p.kv_heads * lanes && slot % lanes < group;
    let h = hk * group + min(slot % lanes, group - 1u);
    let first = 0u;
    let i = 0u;
#else
    if (flat >= ((p.q_len + 63u) / 64u) * p.heads) { return; }
    let h = flat % p.heads;
    let first = (flat / p.heads) * 64u;
    let i = min(first + lid, p.q_len - 1u);
#endif
    let kvd4 = p.kv_heads * C4;
    let koff4 = kv_head(h) * C4;
    let qb = i * p.heads * HD + h * HD;
    var qv: array<vec4<f32>, C4>;
    for (var c = 0u; c < C4; c++) {
        let d = qb + c * 4u;
        qv[c] = vec4<f32>(q[d], q[d + 1u], q[d + 2u], q[d + 3u]) * p.scale;
    }
    let seen = vec4<u32>(visible(i));
    // The workgroup's last query sees the most keys: a bound uniform over the workgroup.
#ifdef DECODE_HEADS
    let n = visible(0u);
#else
    let n = visible(min(first + 63u, p.q_len - 1u));
#endif
    let kl = sid & 7u;
    var m = NEG_INF;
    var l = 0.0;
    var o: array<vec4<f32>, C4>;
    for (var j0 = 0u; j0 < n; j0 += 8u) {
        // This lane's key row of the eight (clamped past the end: weighed 0 below).
        let row = min(j0 + kl, p.kv_len - 1u) * kvd4 + koff4;
        var sc = mat2x4<f32>(vec4<f32>(0.0), vec4<f32>(0.0));
        for (var c = 0u; c < C4; c++) { sc += dots8(qv[c], k4[row + c]); }
        let ja = vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u);
        let jb = ja + vec4<u32>(4u);
#ifdef KEY_SIZES
        sc += lanes8(key_bias(min(j0 + kl, p.kv_len - 1u)));
#endif
        let live_a = ja < seen;
        let live_b = jb < seen;
        let sa = select(vec4<f32>(NEG_INF), sc[0], live_a);
        let sb = select(vec4<f32>(NEG_INF), sc[1], live_b);
        let m_new = max(m, max(max4(sa), max4(sb)));
        let alpha = exp(m - m_new);
        let w = mat2x4<f32>(select(vec4<f32>(0.0), exp(sa - m_new), live_a),
                            select(vec4<f32>(0.0), exp(sb - m_new), live_b));
        l = l * alpha + dot(w[0] + w[1], vec4<f32>(1.0));
        m = m_new;
        for (var c = 0u; c < C4; c++) { o[c] = o[c] * alpha + mix8(w, v4[row + c]); }
    }
#ifdef DECODE_HEADS
    if (!live) { return; }
#else
    if (first + lid >= p.q_len) { return; }
#endif
    let ob = i * p.heads * HD + h * HD;
    for (var c = 0u; c < C4; c++) {
        let r = o[c] / l;
        out[ob + c * 4u] = r.x;
        out[ob + c * 4u + 1u] = r.y;
        out[ob + c * 4u + 2u] = r.z;
        out[ob + c * 4u + 3u] = r.w;
    }
#ifdef WRITE_LSE
    lse[i * p.heads + h] = m + log(l);
#endif
}
#else

// Four queries share each workgroup, so every key and value load feeds four multiply-adds.
const QB: u32 = 4u;

var<workgroup> qs: array<vec4<f32>, 128>;
var<workgroup> ps: array<vec4<f32>, CHUNK>;
var<workgroup> red: array<vec4<f32>, CHUNK>;

fn reduce(lid: u32, v: vec4<f32>, is_max: bool) -> vec4<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var s = CHUNK / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let o = red[lid + s];
            red[lid] = select(red[lid] + o, max(red[lid], o), is_max);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(CHUNK)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let flat = wid.x + wid.y * nwg.x;
    let blocks = (p.q_len + QB - 1u) / QB;
    if (flat >= blocks * p.heads) { return; }
    let i0 = (flat / p.heads) * QB;
    let h = flat % p.heads;
    let qd = p.heads * p.hd;
    let kvd = p.kv_heads * p.hd;
    let koff = kv_head(h) * p.hd;
    // Queries past the end repeat the last one; their results are not stored.
    let last = p.q_len - 1u;
    for (var d = lid; d < p.hd; d += CHUNK) {
        let c = h * p.hd + d;
        qs[d] = vec4<f32>(q[min(i0, last) * qd + c], q[min(i0 + 1u, last) * qd + c],
                          q[min(i0 + 2u, last) * qd + c], q[min(i0 + 3u, last) * qd + c]);
    }
    workgroupBarrier();
    let nv = vec4<u32>(visible(min(i0, last)), visible(min(i0 + 1u, last)),
                       visible(min(i0 + 2u, last)), visible(min(i0 + 3u, last)));
    let n = max(max(nv.x, nv.y), max(nv.z, nv.w));
    var m = vec4<f32>(NEG_INF);
    var l = vec4<f32>(0.0);
    var o0 = vec4<f32>(0.0);
    var o1 = vec4<f32>(0.0);
    for (var j0 = 0u; j0 < n; j0 += CHUNK) {
        let j = j0 + lid;
        var acc = vec4<f32>(0.0);
        var bias = 0.0;
        if (j < n) {
            let kb = j * kvd + koff;
            for (var d = 0u; d < p.hd; d++) { acc += qs[d] * k[kb + d]; }
            bias = key_bias(j);
        }
        let seen = vec4<u32>(j) < nv;
        let s = select(vec4<f32>(NEG_INF), acc * p.scale + bias, seen);
        let m_new = max(m, reduce(lid, s, true));
        let alpha = exp(m - m_new);
        let pj = select(vec4<f32>(0.0), exp(s - m_new), seen);
        ps[lid] = pj;
        l = l * alpha + reduce(lid, pj, false);
        m = m_new;
        let cnt = min(CHUNK, n - j0);
        o0 *= alpha;
        o1 *= alpha;
        for (var t = 0u; t < cnt; t++) {
            let vb = (j0 + t) * kvd + koff;
            let w = ps[t];
            if (lid < p.hd) { o0 += w * v[vb + lid]; }
            if (lid + CHUNK < p.hd) { o1 += w * v[vb + lid + CHUNK]; }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < QB; r++) {
        let i = i0 + r;
        if (i >= p.q_len) { break; }
        let ob = i * qd + h * p.hd;
        if (lid < p.hd) { out[ob + lid] = o0[r] / l[r]; }
        if (lid + CHUNK < p.hd) { out[ob + lid + CHUNK] = o1[r] / l[r]; }
#ifdef WRITE_LSE
        if (lid == 0u) { lse[i * p.heads + h] = m[r] + log(l[r]); }
#endif
    }
}
#endif
#endif

#ifdef PROBS
@group(0) @binding(3) var<storage, read_write> probs: array<f32>;
#ifndef SCORES
@group(0) @binding(4) var<storage, read> lse_in: array<f32>;
#endif

#ifdef ROWS
@compute @workgroup_size(64)
fn probs_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32,
              @builtin(subgroup_invocation_id) sid: u32) {
    let flat = wid.x + wid.y * nwg.x;
    if (flat >= (p.q_len + 63u) / 64u) { return; }
    let first = flat * 64u;
    let i = min(first + lid, p.q_len - 1u);
    let kvd4 = p.kv_heads * C4;
    let kl = sid & 7u;
    let seen = vec4<u32>(visible(i));
    let store = first + lid < p.q_len;
    for (var j0 = 0u; j0 < p.kv_len; j0 += 8u) {
        let jr = min(j0 + kl, p.kv_len - 1u);
        let ja = vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u);
        let jb = ja + vec4<u32>(4u);
        var a = mat2x4<f32>(vec4<f32>(0.0), vec4<f32>(0.0));
#ifndef SCORES
        let bias = lanes8(key_bias(jr));
#endif
        for (var h = 0u; h < p.heads; h++) {
            let qb = i * p.heads * HD + h * HD;
            let row = jr * kvd4 + kv_head(h) * C4;
            var sc = mat2x4<f32>(vec4<f32>(0.0), vec4<f32>(0.0));
            for (var c = 0u; c < C4; c++) {
                let d = qb + c * 4u;
                let qc = vec4<f32>(q[d], q[d + 1u], q[d + 2u], q[d + 3u]);
                sc += dots8(qc, k4[row + c]);
            }
#ifdef SCORES
            a += sc * p.scale;
#else
            let ls = lse_in[i * p.heads + h];
            a[0] += select(vec4<f32>(0.0), exp(sc[0] * p.scale + bias[0] - ls), ja < seen);
            a[1] += select(vec4<f32>(0.0), exp(sc[1] * p.scale + bias[1] - ls), jb < seen);
#endif
        }
        if (store) {
            let row = i * p.kv_len;
            for (var t = 0u; t < 8u; t++) {
                if (j0 + t < p.kv_len) { probs[row + j0 + t] = a[t / 4u][t % 4u] / f32(p.heads); }
            }
        }
    }
}
#else
@compute @workgroup_size(CHUNK)
fn probs_mean(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let i = wid.x + wid.y * nwg.x;
    if (i >= p.q_len) { return; }
    let qd = p.heads * p.hd;
    let kvd = p.kv_heads * p.hd;
    let n = visible(i);
    for (var j = lid; j < p.kv_len; j += CHUNK) {
        var a = 0.0;
#ifdef SCORES
        for (var h = 0u; h < p.heads; h++) {
            let qb = i * qd + h * p.hd;
            let kb = j * kvd + kv_head(h) * p.hd;
            var acc = 0.0;
            for (var d = 0u; d < p.hd; d++) { acc += q[qb + d] * k[kb + d]; }
            a += acc * p.scale;
        }
#else
        if (j < n) {
            for (var h = 0u; h < p.heads; h++) {
                let qb = i * qd + h * p.hd;
                let kb = j * kvd + kv_head(h) * p.hd;
                var acc = 0.0;
                for (var d = 0u; d < p.hd; d++) { acc += q[qb + d] * k[kb + d]; }
                a += exp(acc * p.scale + key_bias(j) - lse_in[i * p.heads + h]);
            }
        }
#endif
        probs[i * p.kv_len + j] = a / f32(p.heads);
    }
}
#endif
#endif
