// matmul_quant.wgsl: out = epilogue(x @ W^T + bias) with W in GGML blocks, dequantised while it
// is read (ggml_blocks.wgsl: one type flag, QK values and BW words per block), f32 accumulation.
// W is one chunk of rows of the weight matrix in llama.cpp's layout: row c (output column c of
// this chunk) is `row_words` (params.ldw4) words of consecutive blocks along K; K is a multiple
// of 32, so x rows start on 16 bytes (X_VEC4).
// Bindings and epilogue flags: see matmul_common.wgsl; binding 2 is the blocks, array<u32>.
// Entry points:
//   qmatmul_lanes   64 invocations, each owning 4 consecutive W rows (output columns) and XR <= 4
//                   rows of x (grid.y steps over blocks of 4 rows): every dequantised group of 8
//                   weights is used XR times and every x load 4 times, in named accumulators, no
//                   workgroup memory. CPU adapters (llvmpipe), for mat-vec and prefill.
//   qmatvec_split   64 x 4 invocations: 4 W rows per workgroup, 64 lanes along K of each, partial
//                   sums reduced in workgroup memory; grid.y = row of x (m <= 4). GPU decode.
//   qmatmul_tiled   16 x 16 invocations, 64 x 64 output tile, 4 x 4 per invocation; per K-step
//                   of 32 a 64 x 32 x tile and a dequantised 32 x 64 W tile in workgroup memory.
//                   GPU prefill.

#include "matmul_common"

@group(0) @binding(2) var<storage, read> w: array<u32>;

#include "ggml_blocks"

fn row_base(c: u32) -> u32 { return min(c, p.n - 1u) * p.ldw4; }

// The dot products of 8 x values with 8 values of each of 4 W rows.
fn mac8(x: V8, w0: V8, w1: V8, w2: V8, w3: V8) -> vec4<f32> {
    return vec4<f32>(dot(w0.a, x.a) + dot(w0.b, x.b), dot(w1.a, x.a) + dot(w1.b, x.b),
                     dot(w2.a, x.a) + dot(w2.b, x.b), dot(w3.a, x.a) + dot(w3.b, x.b));
}

fn dot8(v: V8, base: u32, k: u32) -> f32 {
    return dot(v.a, x4(base, k)) + dot(v.b, x4(base, k + 4u));
}

@compute @workgroup_size(64)
fn qmatmul_lanes(@builtin(global_invocation_id) g: vec3<u32>) {
    let c0 = g.x * 4u;
    if (c0 >= p.n) { return; }
    let b0 = row_base(c0);
    let b1 = row_base(c0 + 1u);
    let b2 = row_base(c0 + 2u);
    let b3 = row_base(c0 + 3u);
    let r0 = g.y * 4u;
    let last = p.m - 1u;
    let x0 = min(r0, last) * p.k;
    let x1 = min(r0 + 1u, last) * p.k;
    let x2 = min(r0 + 2u, last) * p.k;
    let x3 = min(r0 + 3u, last) * p.k;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var kb = 0u; kb < p.k; kb += QK) {
        let blk = (kb / QK) * BW;
        for (var j = 0u; j < QK; j += 8u) {
            let k = kb + j;
            let w0 = deq8(b0 + blk, j);
            let w1 = deq8(b1 + blk, j);
            let w2 = deq8(b2 + blk, j);
            let w3 = deq8(b3 + blk, j);
            // Each x row's 8 values are loaded once and used by the 4 W rows.
            acc0 += mac8(V8(x4(x0, k), x4(x0, k + 4u)), w0, w1, w2, w3);
            if (XR > 1u) { acc1 += mac8(V8(x4(x1, k), x4(x1, k + 4u)), w0, w1, w2, w3); }
            if (XR > 2u) { acc2 += mac8(V8(x4(x2, k), x4(x2, k + 4u)), w0, w1, w2, w3); }
            if (XR > 3u) { acc3 += mac8(V8(x4(x3, k), x4(x3, k + 4u)), w0, w1, w2, w3); }
        }
    }
    store4(r0, g.x, acc0);
    if (XR > 1u) { store4(r0 + 1u, g.x, acc1); }
    if (XR > 2u) { store4(r0 + 2u, g.x, acc2); }
    if (XR > 3u) { store4(r0 + 3u, g.x, acc3); }
}

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(64, 4)
fn qmatvec_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
    let c = wid.x * 4u + l.y;
    let base = row_base(c);
    let xb = wid.y * p.k;
    var acc = 0.0;
    // Lane l.x takes values 8 l.x .. 8 l.x + 8 of every 512: neighbouring lanes read
    // neighbouring words of a block.
    for (var k = l.x * 8u; k < p.k; k += 512u) {
        acc += dot8(deq8(base + (k / QK) * BW, k % QK), xb, k);
    }
    let slot = l.y * 64u + l.x;
    partial[slot] = acc;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (l.x < s) { partial[slot] += partial[slot + s]; }
        workgroupBarrier();
    }
    if (l.x == 0u && c < p.n) { store1(wid.y, c, partial[slot]); }
}

var<workgroup> tile_x: array<vec4<f32>, 512>;  // [64 rows of x][8 vec4 of K]
var<workgroup> tile_w: array<vec4<f32>, 512>;  // [32 K][16 vec4 of W rows]

@compute @workgroup_size(16, 16)
fn qmatmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
                 @builtin(local_invocation_index) t: u32) {
    let row0 = wid.y * 64u;
    let col0 = wid.x * 64u;
    let last = p.m - 1u;
    // This invocation dequantises 8 values of W row col0 + t / 4 per K-step.
    let wc = t / 4u;
    let wq = (t % 4u) * 8u;
    let wbase = row_base(col0 + wc);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += 32u) {
        for (var i = t; i < 512u; i += 256u) {
            let r = min(row0 + i / 8u, last);
            tile_x[i] = x4(r * p.k, k0 + (i % 8u) * 4u);
        }
        let k = k0 + wq;
        let v = deq8(wbase + (k / QK) * BW, k % QK);
        for (var j = 0u; j < 4u; j++) {
            tile_w[(wq + j) * 16u + wc / 4u][wc % 4u] = v.a[j];
            tile_w[(wq + 4u + j) * 16u + wc / 4u][wc % 4u] = v.b[j];
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk++) {
            let b = tile_w[kk * 16u + l.x];
            let xi = (l.y * 4u) * 8u + kk / 4u;
            let e = kk % 4u;
            acc0 += tile_x[xi][e] * b;
            acc1 += tile_x[xi + 8u][e] * b;
            acc2 += tile_x[xi + 16u][e] * b;
            acc3 += tile_x[xi + 24u][e] * b;
        }
        workgroupBarrier();
    }
    let c4 = wid.x * 16u + l.x;
    let r = row0 + l.y * 4u;
    store4(r, c4, acc0);
    store4(r + 1u, c4, acc1);
    store4(r + 2u, c4, acc2);
    store4(r + 3u, c4, acc3);
}
