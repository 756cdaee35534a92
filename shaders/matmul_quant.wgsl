// matmul_quant.wgsl: out = epilogue(x @ W^T + bias) with W in GGML blocks, dequantised while it
// is read (ggml_blocks.wgsl: the type flag, QK values per block, the row layout), f32 accumulation.
// W is one chunk of rows of the weight matrix: row c (output column c of this chunk) is
// `row_words` (params.ldw4, a multiple of 4) words in the layout of ggml_blocks.wgsl, in
// groups of RG rows (4 for qmatmul_lanes on CPU adapters: each invocation's rows); K is a
// multiple of 32, so x rows start on 16 bytes (X_VEC4).
// Bindings and epilogue flags: see matmul_common.wgsl; binding 2 is the rows, array<vec4<u32>>.
// Entry points:
//   qmatmul_lanes   64 invocations, each owning 4 consecutive W rows (output columns) and XR <= 4
//                   rows of x (grid.y steps over blocks of 4 rows), in named accumulators, no
//                   workgroup memory; a step of UNITS units of 32 values at a time (integers
//                   and scales in 16-byte loads shared by the step's units, the scales applied
//                   once per half unit to integer dot products; with SG_X the x values come by
//                   subgroup broadcast). CPU adapters (llvmpipe), for mat-vec and prefill.
//   qmatvec_split   64 x 4 invocations: 4 W rows per workgroup, 64 lanes along K of each, partial
//                   sums reduced in workgroup memory; grid.y = row of x (m <= 4). GPU decode.
//   qmatmul_tiled   16 x 16 invocations, 64 x 64 output tile, 4 x 4 per invocation; per K-step
//                   of 32 a 64 x 32 x tile and a dequantised 32 x 64 W tile in workgroup memory.
//                   GPU prefill.

#include "matmul_common"

@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;

#include "ggml_blocks"

fn row_at(c: u32) -> RowRef { return row_ref(min(c, p.n - 1u), p.ldw4, p.k / QK); }

fn dot8(v: V8, base: u32, k: u32) -> f32 {
    return dot(v.a, x4(base, k)) + dot(v.b, x4(base, k + 4u));
}

// The 32 activations of one unit, 4 per field.
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

// One unit of one W row against x: with scales (d0, d1, c0, c1) and sums (sx0, sx1) of the two
// halves of x, d0 (q . x over groups 0..3) + d1 (q . x over 4..7) + c0 sx0 + c1 sx1.
fn unit_dot(b: QB, s: vec4<f32>, x: X32, sx: vec2<f32>) -> f32 {
    let t0 = dot(group_q(b, 0u), x.v0) + dot(group_q(b, 1u), x.v1) + dot(group_q(b, 2u), x.v2)
           + dot(group_q(b, 3u), x.v3);
    let t1 = dot(group_q(b, 4u), x.v4) + dot(group_q(b, 5u), x.v5) + dot(group_q(b, 6u), x.v6)
           + dot(group_q(b, 7u), x.v7);
    return dot(s, vec4<f32>(t0, t1, sx));
}

// One unit of 4 W rows against one x row.
fn unit_mac(x: X32, q0: QB, q1: QB, q2: QB, q3: QB, s0: vec4<f32>, s1: vec4<f32>, s2: vec4<f32>,
            s3: vec4<f32>) -> vec4<f32> {
    let one = vec4<f32>(1.0);
    let sx = vec2<f32>(dot(x.v0 + x.v1 + x.v2 + x.v3, one), dot(x.v4 + x.v5 + x.v6 + x.v7, one));
    return vec4<f32>(unit_dot(q0, s0, x, sx), unit_dot(q1, s1, x, sx), unit_dot(q2, s2, x, sx),
                     unit_dot(q3, s3, x, sx));
}

// Per x row, 4 W rows' sums.
struct Acc { r0: vec4<f32>, r1: vec4<f32>, r2: vec4<f32>, r3: vec4<f32> }

// acc plus unit i of the steps t0..t3 (4 W rows) against the XR x rows at xr, values kb ...
fn unit_rows(acc: Acc, xr: vec4<u32>, kb: u32, lane: u32, t0: Step, t1: Step, t2: Step, t3: Step,
             i: u32) -> Acc {
    let q0 = step_unit(t0, i);
    let q1 = step_unit(t1, i);
    let q2 = step_unit(t2, i);
    let q3 = step_unit(t3, i);
    let s0 = step_scale(t0, i);
    let s1 = step_scale(t1, i);
    let s2 = step_scale(t2, i);
    let s3 = step_scale(t3, i);
    var a = acc;
    a.r0 += unit_mac(x32(xr.x, kb, lane), q0, q1, q2, q3, s0, s1, s2, s3);
    if (XR > 1u) { a.r1 += unit_mac(x32(xr.y, kb, lane), q0, q1, q2, q3, s0, s1, s2, s3); }
    if (XR > 2u) { a.r2 += unit_mac(x32(xr.z, kb, lane), q0, q1, q2, q3, s0, s1, s2, s3); }
    if (XR > 3u) { a.r3 += unit_mac(x32(xr.w, kb, lane), q0, q1, q2, q3, s0, s1, s2, s3); }
    return a;
}

@compute @workgroup_size(64)
fn qmatmul_lanes(@builtin(global_invocation_id) g: vec3<u32>
#ifdef SG_X
                 , @builtin(subgroup_invocation_id) sid: u32
#endif
                 ) {
#ifdef SG_X
    let lane = sid % 8u;
#else
    let lane = 0u;
#endif
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
    let xr = vec4<u32>(x0, x1, x2, x3);
    var acc = Acc(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    // A step of UNITS units of 32 values: each W row's integers and scales in 16-byte loads
    // shared by the step's units (unrolled by hand: llvmpipe runs a loop over them, even of
    // constant length, under execution masks, at up to half the speed).
    for (var st = 0u; st < p.k / (32u * UNITS); st++) {
        let t0 = step_load(rw0, st);
        let t1 = step_load(rw1, st);
        let t2 = step_load(rw2, st);
        let t3 = step_load(rw3, st);
        acc = unit_rows(acc, xr, unit_k(st, 0u), lane, t0, t1, t2, t3, 0u);
#ifndef SPLIT_ROWS
        acc = unit_rows(acc, xr, unit_k(st, 1u), lane, t0, t1, t2, t3, 1u);
#endif
    }
    store4(r0, g.x, acc.r0);
    if (XR > 1u) { store4(r0 + 1u, g.x, acc.r1); }
    if (XR > 2u) { store4(r0 + 2u, g.x, acc.r2); }
    if (XR > 3u) { store4(r0 + 3u, g.x, acc.r3); }
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
        acc += dot8(deq8(row, k / 32u, (k % 32u) / 4u), xb, k);
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
        let v = deq8(wrow, k / 32u, (k % 32u) / 4u);
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
