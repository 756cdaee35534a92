// norm.wgsl: LayerNorm and RMSNorm over the last dimension of a row-major f32 matrix.
// One workgroup of WG invocations per row (row = wid.x + wid.y * nwg.x); strided loads, then a
// workgroup-memory tree reduction. Statistics are accumulated in f32.
// Bindings: 0 params {rows, dim, eps}; 1 x [rows, dim] (read); 2 weight [dim] (read);
// 3 out [rows, dim] (write); 4 bias [dim] (read, layer_norm only).

struct Params { rows: u32, dim: u32, eps: f32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

var<workgroup> red: array<f32, WG>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.dim;
    var s = 0.0;
    for (var i = lid; i < p.dim; i += WG) { s += x[base + i]; }
    let mean = reduce_sum(lid, s) / f32(p.dim);
    var v = 0.0;
    for (var i = lid; i < p.dim; i += WG) { let d = x[base + i] - mean; v += d * d; }
    let inv = inverseSqrt(reduce_sum(lid, v) / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        out[base + i] = (x[base + i] - mean) * inv * weight[i] + bias[i];
    }
}

@compute @workgroup_size(WG)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    let base = row * p.dim;
    var s = 0.0;
    for (var i = lid; i < p.dim; i += WG) { let v = x[base + i]; s += v * v; }
    let inv = inverseSqrt(reduce_sum(lid, s) / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        out[base + i] = x[base + i] * inv * weight[i];
    }
}
