// sample.wgsl: choose the next token from a logits row, in one workgroup of WG invocations.
// Each invocation owns a contiguous slice of the vocabulary (so prefix sums follow index order).
//   argmax  largest logit, lowest index on ties (as torch.argmax).
//   sample  softmax(logits / temperature); nucleus = tokens with p >= t for the largest t whose
//           kept mass is >= top_p (found by bisection, no sort; ties at t are kept); then the
//           token where the cumulative kept mass, in index order, passes random * kept mass.
// Bindings: 0 params {v, temperature, top_p, random}; 1 logits f32 [v]; 2 out u32 [1] (write).

struct Params { v: u32, temperature: f32, top_p: f32, random: f32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

var<workgroup> red_v: array<f32, WG>;
var<workgroup> red_i: array<u32, WG>;

fn slice_range(lid: u32) -> vec2<u32> {
    let per = (p.v + WG - 1u) / WG;
    let lo = min(lid * per, p.v);
    return vec2<u32>(lo, min(lo + per, p.v));
}

// Max with lowest-index tie break across the workgroup; returns (value bits, index).
fn reduce_argmax(lid: u32, v: f32, i: u32) -> vec2<u32> {
    red_v[lid] = v;
    red_i[lid] = i;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            let ov = red_v[lid + s];
            let oi = red_i[lid + s];
            if (ov > red_v[lid] || (ov == red_v[lid] && oi < red_i[lid])) {
                red_v[lid] = ov;
                red_i[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    let r = vec2<u32>(bitcast<u32>(red_v[0]), red_i[0]);
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red_v[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) { red_v[lid] = red_v[lid] + red_v[lid + s]; }
        workgroupBarrier();
    }
    let r = red_v[0];
    workgroupBarrier();
    return r;
}

fn local_argmax(lid: u32) -> vec2<u32> {
    let r = slice_range(lid);
    var best = -3.4028234663852886e38; // the lowest f32, written exactly
    var bi = 0xffffffffu;
    for (var i = r.x; i < r.y; i++) {
        let v = logits[i];
        if (v > best || bi == 0xffffffffu) { best = v; bi = i; }
    }
    return reduce_argmax(lid, best, bi);
}

@compute @workgroup_size(WG)
fn argmax(@builtin(local_invocation_index) lid: u32) {
    let r = local_argmax(lid);
    if (lid == 0u) { out[0] = r.y; }
}

@compute @workgroup_size(WG)
fn sample(@builtin(local_invocation_index) lid: u32) {
    let best = local_argmax(lid);
    let m = bitcast<f32>(best.x);
    let r = slice_range(lid);
    let inv_t = 1.0 / p.temperature;
    var z = 0.0;
    for (var i = r.x; i < r.y; i++) { z += exp((logits[i] - m) * inv_t); }
    let total = reduce_sum(lid, z);
    // Bisection on the probability threshold: mass(t) falls as t rises.
    var lo = 0.0;
    var hi = 1.0;
    for (var it = 0u; it < 40u; it++) {
        let t = 0.5 * (lo + hi);
        var mass = 0.0;
        for (var i = r.x; i < r.y; i++) {
            let q = exp((logits[i] - m) * inv_t) / total;
            if (q >= t) { mass += q; }
        }
        if (reduce_sum(lid, mass) >= p.top_p) { lo = t; } else { hi = t; }
    }
    // Kept mass per slice, then an exclusive scan over slices (WG entries, done by one lane).
    var kept = 0.0;
    for (var i = r.x; i < r.y; i++) {
        let q = exp((logits[i] - m) * inv_t) / total;
        if (q >= lo) { kept += q; }
    }
    red_v[lid] = kept;
    workgroupBarrier();
    if (lid == 0u) {
        var acc = 0.0;
        for (var s = 0u; s < WG; s++) { let k = red_v[s]; red_v[s] = acc; acc += k; }
        red_i[0] = bitcast<u32>(acc);
        // Fallback if rounding pushes the target past the end: the argmax is always kept.
        out[0] = best.y;
    }
    workgroupBarrier();
    let goal = p.random * bitcast<f32>(red_i[0]);
    let start = red_v[lid];
    if (goal >= start && goal < start + kept) {
        var acc = start;
        for (var i = r.x; i < r.y; i++) {
            let q = exp((logits[i] - m) * inv_t) / total;
            if (q >= lo) {
                acc += q;
                if (goal < acc) { out[0] = i; break; }
            }
        }
    }
}
