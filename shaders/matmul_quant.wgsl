// matmul_quant.wgsl: out = epilogue(x @ W^T + bias) with W in GGML blocks, dequantised while it
// is read (ggml_blocks.wgsl: the type flag, QK values per block, the row layout), f32 accumulation.
// W is one chunk of rows of the weight matrix: row c (output column c of this chunk) is
// `row_words` (params.ldw4, a multiple of 4) words in the layout of ggml_blocks.wgsl; K is a
// multiple of 32, so x rows start on 16 bytes (X_VEC4).
// Bindings and epilogue flags: see matmul_common.wgsl; binding 2 is the rows, array<vec4<u32>>.
// Entry points:
//   qmatmul_lanes   64 invocations, each owning 4 consecutive W rows (output columns) and XR <= 4
//                   rows of x (grid.y steps over blocks of 4 rows), in named accumulators, no
//                   workgroup memory. 32-value types go a block per step (its values in one or
//                   two 16-byte loads, the scale applied once to the block's integer dot
//                   product; with SG_X the x values come by subgroup broadcast); K-quants go 8
//                   values per step, each group used XR times and every x load 4 times.
//                   CPU adapters (llvmpipe), for mat-vec and prefill.
//   qmatvec_split   64 x 4 invocations: 4 W rows per workgroup, 64 lanes along K of each, partial
//                   sums reduced in workgroup memory; grid.y = row of x (m <= 4). GPU decode.
//   qmatmul_tiled   16 x 16 invocations, 64 x 64 output tile, 4 x 4 per invocation; per K-step
//                   of 32 a 64 x 32 x tile and a dequantised 32 x 64 W tile in workgroup memory.
//                   GPU prefill.

#include "matmul_common"

@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

#include "ggml_blocks"

fn row_at(c: u32) -> RowRef { return row_ref(min(c, p.n - 1u) * p.ldw4, p.k / QK); }

// The dot products of 8 x values with 8 values of each of 4 W rows.
fn mac8(x: V8, w0: V8, w1: V8, w2: V8, w3: V8) -> vec4<f32> {
    return vec4<f32>(dot(w0.a, x.a) + dot(w0.b, x.b), dot(w1.a, x.a) + dot(w1.b, x.b),
                     dot(w2.a, x.a) + dot(w2.b, x.b), dot(w3.a, x.a) + dot(w3.b, x.b));
}

fn dot8(v: V8, base: u32, k: u32) -> f32 {
    return dot(v.a, x4(base, k)) + dot(v.b, x4(base, k + 4u));
}

#ifdef SPLIT_ROWS
// The 32 activations of one block, 4 per field.
struct X32 { v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
             v4: vec4<f32>, v5: vec4<f32>, v6: vec4<f32>, v7: vec4<f32> }

// Activations kb .. kb+32 of the x row at `base`. With SG_X lane `lane` (0..8) of every 8
// loads one vec4 and broadcasts hand it to the others, so the 64 invocations, whose W rows
// differ but whose x rows are the same, load each x value once per subgroup.
fn x32(base: u32, kb: u32, lane: u32) -> X32 {
#ifdef SG_X
    let v = x4(base, kb + 4u * lane);
    return X32(subgroupBroadcast(v, 0u), subgroupBroadcast(v, 1u), subgroupBroadcast(v, 2u),
               subgroupBroadcast(v, 3u), subgroupBroadcast(v, 4u), subgroupBroadcast(v, 5u),
               subgroupBroadcast(v, 6u), subgroupBroadcast(v, 7u));
#else
    return X32(x4(base, kb), x4(base, kb + 4u), x4(base, kb + 8u), x4(base, kb + 12u),
               x4(base, kb + 16u), x4(base, kb + 20u), x4(base, kb + 24u), x4(base, kb + 28u));
#endif
}

// Sum of a block's integers times its activations.
fn qdot(b: QB, x: X32) -> f32 {
    return dot(group_q(b, 0u), x.v0) + dot(group_q(b, 1u), x.v1) + dot(group_q(b, 2u), x.v2)
         + dot(group_q(b, 3u), x.v3) + dot(group_q(b, 4u), x.v4) + dot(group_q(b, 5u), x.v5)
         + dot(group_q(b, 6u), x.v6) + dot(group_q(b, 7u), x.v7);
}

// One block of 4 W rows against one x row: sum d q x + c x = d (q . x) + c (sum of x).
fn block_mac(x: X32, q0: QB, q1: QB, q2: QB, q3: QB, d: vec4<f32>, c: vec4<f32>) -> vec4<f32> {
    let sx = dot(x.v0 + x.v1 + x.v2 + x.v3 + x.v4 + x.v5 + x.v6 + x.v7, vec4<f32>(1.0));
    return d * vec4<f32>(qdot(q0, x), qdot(q1, x), qdot(q2, x), qdot(q3, x)) + c * sx;
}
#endif

@compute @workgroup_size(64)
fn qmatmul_lanes(@builtin(global_invocation_id) g: vec3<u32>
#ifdef SG_X
                 , @builtin(subgroup_invocation_id) sid: u32
#endif
                 ) {
    // No early exit past the last column: with SG_X every lane takes part in the broadcasts;
    // such lanes re-read the last W row and store nothing.
    let c0 = g.x * 4u;
    let rw0 = row_at(c0);
    let rw1 = row_at(c0 + 1u);
    let rw2 = row_at(c0 + 2u);
    let rw3 = row_at(c0 + 3u);
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
#ifdef SPLIT_ROWS
#ifdef SG_X
    let lane = sid % 8u;
#else
    let lane = 0u;
#endif
    // A whole block per step: each W row's values in one or two 16-byte loads, its scale once.
    for (var blk = 0u; blk < p.k / 32u; blk++) {
        let kb = blk * 32u;
        let q0 = block_quants(rw0, blk);
        let q1 = block_quants(rw1, blk);
        let q2 = block_quants(rw2, blk);
        let q3 = block_quants(rw3, blk);
        let s0 = block_scale(rw0, blk);
        let s1 = block_scale(rw1, blk);
        let s2 = block_scale(rw2, blk);
        let s3 = block_scale(rw3, blk);
        let d = vec4<f32>(s0.x, s1.x, s2.x, s3.x);
        let c = vec4<f32>(s0.y, s1.y, s2.y, s3.y);
        acc0 += block_mac(x32(x0, kb, lane), q0, q1, q2, q3, d, c);
        if (XR > 1u) { acc1 += block_mac(x32(x1, kb, lane), q0, q1, q2, q3, d, c); }
        if (XR > 2u) { acc2 += block_mac(x32(x2, kb, lane), q0, q1, q2, q3, d, c); }
        if (XR > 3u) { acc3 += block_mac(x32(x3, kb, lane), q0, q1, q2, q3, d, c); }
    }
#else
    for (var kb = 0u; kb < p.k; kb += QK) {
        let blk = kb / QK;
        for (var j = 0u; j < QK; j += 8u) {
            let k = kb + j;
            let w0 = deq8(rw0, blk, j);
            let w1 = deq8(rw1, blk, j);
            let w2 = deq8(rw2, blk, j);
            let w3 = deq8(rw3, blk, j);
            // Each x row's 8 values are loaded once and used by the 4 W rows.
            acc0 += mac8(V8(x4(x0, k), x4(x0, k + 4u)), w0, w1, w2, w3);
            if (XR > 1u) { acc1 += mac8(V8(x4(x1, k), x4(x1, k + 4u)), w0, w1, w2, w3); }
            if (XR > 2u) { acc2 += mac8(V8(x4(x2, k), x4(x2, k + 4u)), w0, w1, w2, w3); }
            if (XR > 3u) { acc3 += mac8(V8(x4(x3, k), x4(x3, k + 4u)), w0, w1, w2, w3); }
        }
    }
#endif
    store4(r0, g.x, acc0);
    if (XR > 1u) { store4(r0 + 1u, g.x, acc1); }
    if (XR > 2u) { store4(r0 + 2u, g.x, acc2); }
    if (XR > 3u) { store4(r0 + 3u, g.x, acc3); }
}

var<workgroup> partial: array<f32, 256>;

@compute @workgroup_size(64, 4)
fn qmatvec_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>) {
    let c = wid.x * 4u + l.y;
    let row = row_at(c);
    let xb = wid.y * p.k;
    var acc = 0.0;
    // Lane l.x takes values 8 l.x .. 8 l.x + 8 of every 512: neighbouring lanes read
    // neighbouring words of a block.
    for (var k = l.x * 8u; k < p.k; k += 512u) {
        acc += dot8(deq8(row, k / QK, k % QK), xb, k);
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
    let wrow = row_at(col0 + wc);
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
        let v = deq8(wrow, k / QK, k % QK);
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
