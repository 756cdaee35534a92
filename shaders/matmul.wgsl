// matmul.wgsl: out = epilogue(x @ W + bias) for f32 activations and f16-or-f32 weights, f32
// accumulation. W is [K, ldw4 * 4] (PyTorch's [out, in] transposed, columns padded to a
// multiple of 8), row-major or, with W_BLOCKS, in blocks of 8 columns (see w_at), and may be one
// column chunk of a larger matrix: the chunk's columns land at out[:, n_off .. n_off + n].
// Bindings and epilogue flags: see matmul_common.wgsl; here binding 2 is the W chunk (read):
// f32 as array<vec4<f32>> (array<vec2<f32>> with W_COLS2), or with W_F16 f16 packed two per
// u32, low half first (array<vec2<u32>>, or array<u32> with W_COLS2).
// Entry points:
//   matmul_tiled     16x16 invocations, 64x64 output tile, 4x4 per invocation; A and B tiles of
//                    depth 16 in workgroup memory (discrete GPUs, iGPUs, browsers).
//   matmul_register  64 invocations along contiguous columns of W, each owning 4 rows (8 with
//                    ROWS8) x 4 columns (2 with W_COLS2, 8 with W_COLS8) in named accumulators; no workgroup
//                    memory (CPU adapters such as llvmpipe prefer this). With SG_X (needs
//                    subgroups whose size is a multiple of 8) each lane loads one activation of a
//                    K-step of 8 and subgroupBroadcast shares it, instead of every lane loading all
//                    8: llvmpipe turns each per-lane storage load into ~13 scalar instructions.
//   matvec           m = MV_ROWS <= 4 (decode): 64 vec4 columns x KSPLIT slices of K per workgroup,
//                    partial sums combined in workgroup memory (GPUs).
//                    The valued define ROWS_USED (<= the tile's rows) skips the arithmetic of
//                    rows that do not exist: the decode mat-vec of CPU adapters is this kernel
//                    with 4 x 8 columns (W_COLS8: 16-byte f16 loads) and ROWS_USED = m.

#include "matmul_common"

// Where W's values live. Row-major (GPUs: lanes along N load consecutive words): value (k, c) at
// k * ldw4 * 4 + c. With W_BLOCKS (CPU adapters) the columns come in blocks of 8, each stored
// [K, 8] contiguously, [N / 8, K, 8] in all: an invocation that walks its columns down K reads
// its own stretch of memory in order, as streaming reads want, instead of 16 bytes per row
// at a stride of a whole row.
// w_at(k, c, per): the index, in units of `per` (2, 4 or 8) columns, of columns
// c * per .. c * per + per of row k.
fn w_at(k: u32, c: u32, per: u32) -> u32 {
#ifdef W_BLOCKS
    let g = 8u / per;
    return ((c / g) * p.k + k) * g + c % g;
#else
    return k * (p.ldw4 * 4u / per) + c;
#endif
}

// load_w4(k, c4): columns 4 c4 .. 4 c4 + 4 of row k (tiled, matvec). load_wc(k, g): the WC
// columns of group g of row k (matmul_register).
#ifdef W_COLS8
// Groups of 8 columns, as the two columns of a mat2x4.
#ifdef W_F16
@group(0) @binding(2) var<storage, read> w: array<vec4<u32>>;
fn load_wc(k: u32, g: u32) -> mat2x4<f32> {
    let q = w[w_at(k, g, 8u)];
    return mat2x4<f32>(vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)),
                       vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)));
}
#else
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
fn load_wc(k: u32, g: u32) -> mat2x4<f32> {
    let i = 2u * w_at(k, g, 8u);
    return mat2x4<f32>(w[i], w[i + 1u]);
}
#endif
#else
#ifdef W_F16
#ifdef W_COLS2
@group(0) @binding(2) var<storage, read> w: array<u32>;
fn load_w4(k: u32, c4: u32) -> vec4<f32> {
    let i = w_at(k, c4, 4u) * 2u;
    return vec4<f32>(unpack2x16float(w[i]), unpack2x16float(w[i + 1u]));
}
fn load_wc(k: u32, g: u32) -> vec2<f32> { return unpack2x16float(w[w_at(k, g, 2u)]); }
#else
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;
fn load_w4(k: u32, c4: u32) -> vec4<f32> {
    let q = w[w_at(k, c4, 4u)];
    return vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
}
fn load_wc(k: u32, g: u32) -> vec4<f32> { return load_w4(k, g); }
#endif
#else
#ifdef W_COLS2
@group(0) @binding(2) var<storage, read> w: array<vec2<f32>>;
fn load_w4(k: u32, c4: u32) -> vec4<f32> {
    let i = w_at(k, c4, 4u) * 2u;
    return vec4<f32>(w[i], w[i + 1u]);
}
fn load_wc(k: u32, g: u32) -> vec2<f32> { return w[w_at(k, g, 2u)]; }
#else
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
fn load_w4(k: u32, c4: u32) -> vec4<f32> { return w[w_at(k, c4, 4u)]; }
fn load_wc(k: u32, g: u32) -> vec4<f32> { return load_w4(k, g); }
#endif
#endif
#endif

#ifndef W_COLS8
// ---------------------------------------------------------------- tiled

var<workgroup> tile_a: array<f32, 1024>;       // [64 rows][16 k]
var<workgroup> tile_b: array<vec4<f32>, 256>;  // [16 k][16 vec4 columns]

@compute @workgroup_size(16, 16)
fn matmul_tiled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let m0 = wid.y * 64u;
    let c40 = wid.x * 16u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var k0 = 0u; k0 < p.k; k0 += 16u) {
        for (var i = 0u; i < 4u; i++) {
            let e = lid + i * 256u;
            let row = m0 + e / 16u;
            let kk = k0 + e % 16u;
            tile_a[e] = select(0.0, xs(min(row, p.m - 1u) * p.k + min(kk, p.k - 1u)), row < p.m && kk < p.k);
        }
        let kb = k0 + lid / 16u;
        let cb = c40 + lid % 16u;
        tile_b[lid] = select(vec4<f32>(0.0), load_w4(min(kb, p.k - 1u), min(cb, p.ldw4 - 1u)),
                             kb < p.k && cb < p.ldw4);
        workgroupBarrier();
        for (var kk = 0u; kk < 16u; kk++) {
            let bv = tile_b[kk * 16u + l.x];
            let r = l.y * 4u;
            acc0 += tile_a[r * 16u + kk] * bv;
            acc1 += tile_a[(r + 1u) * 16u + kk] * bv;
            acc2 += tile_a[(r + 2u) * 16u + kk] * bv;
            acc3 += tile_a[(r + 3u) * 16u + kk] * bv;
        }
        workgroupBarrier();
    }
    let row = m0 + l.y * 4u;
    let c4 = c40 + l.x;
    store4(row, c4, acc0);
    store4(row + 1u, c4, acc1);
    store4(row + 2u, c4, acc2);
    store4(row + 3u, c4, acc3);
}

#endif  // W_COLS8

// ---------------------------------------------------------------- register

// WV holds the WC columns one invocation owns, in one row.
#ifdef W_COLS8
alias WV = mat2x4<f32>;
const WC = 8u;
fn wv_at(a: WV, j: u32) -> f32 { return a[j / 4u][j % 4u]; }
#else
#ifdef W_COLS2
alias WV = vec2<f32>;
const WC = 2u;
#else
alias WV = vec4<f32>;
const WC = 4u;
#endif
fn wv_at(a: WV, j: u32) -> f32 { return a[j]; }
#endif

fn store_wc(row: u32, cg: u32, acc: WV) {
    if (row >= p.m) { return; }
    for (var j = 0u; j < WC; j++) {
        let col = cg * WC + j;
        if (col < p.n) {
            let i = out_index(row, p.n_off + col);
#ifdef EPI_ACCUMULATE
            out[i] = out[i] + finish(wv_at(acc, j), col);
#else
            out[i] = finish(wv_at(acc, j), col);
#endif
        }
    }
}

#ifdef SG_X
// acc + sum over t of x(lane t) * w_t: x holds, in lane t, the activation at k = kb + t.
fn step8(acc: WV, x: f32, w0: WV, w1: WV, w2: WV, w3: WV, w4: WV, w5: WV, w6: WV, w7: WV) -> WV {
    return acc + subgroupBroadcast(x, 0u) * w0 + subgroupBroadcast(x, 1u) * w1
               + subgroupBroadcast(x, 2u) * w2 + subgroupBroadcast(x, 3u) * w3
               + subgroupBroadcast(x, 4u) * w4 + subgroupBroadcast(x, 5u) * w5
               + subgroupBroadcast(x, 6u) * w6 + subgroupBroadcast(x, 7u) * w7;
}
#else
fn mac4(acc: WV, a: vec4<f32>, w0: WV, w1: WV, w2: WV, w3: WV) -> WV {
    return acc + a.x * w0 + a.y * w1 + a.z * w2 + a.w * w3;
}
#endif

@compute @workgroup_size(64)
fn matmul_register(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32
#ifdef SG_X
                   , @builtin(subgroup_invocation_id) sid: u32
#endif
                   ) {
    let ldw = p.ldw4 * 4u / WC;
    let cg = wid.x * 64u + lid;
    let cw = min(cg, ldw - 1u);
#ifdef ROWS8
    let row = wid.y * 8u;
#else
    let row = wid.y * 4u;
#endif
    // Rows past the end re-read the last row; their results are never stored.
    let last = p.m - 1u;
    let o0 = min(row, last) * p.k;
    let o1 = min(row + 1u, last) * p.k;
    let o2 = min(row + 2u, last) * p.k;
    let o3 = min(row + 3u, last) * p.k;
    var a0 = WV();
    var a1 = WV();
    var a2 = WV();
    var a3 = WV();
#ifdef ROWS8
    let o4 = min(row + 4u, last) * p.k;
    let o5 = min(row + 5u, last) * p.k;
    let o6 = min(row + 6u, last) * p.k;
    let o7 = min(row + 7u, last) * p.k;
    var a4 = WV();
    var a5 = WV();
    var a6 = WV();
    var a7 = WV();
#endif
#ifdef SG_X
    // K in steps of 8; past the end, activations read as 0 and weight rows are clamped.
    let kl = sid & 7u;
    let kmax = p.k - 1u;
    for (var kb = 0u; kb < p.k; kb += 8u) {
        let kx = kb + kl;
        let ok = kx < p.k;
        let kc = min(kx, kmax);
        let w0 = load_wc(min(kb, kmax), cw);
        let w1 = load_wc(min(kb + 1u, kmax), cw);
        let w2 = load_wc(min(kb + 2u, kmax), cw);
        let w3 = load_wc(min(kb + 3u, kmax), cw);
        let w4 = load_wc(min(kb + 4u, kmax), cw);
        let w5 = load_wc(min(kb + 5u, kmax), cw);
        let w6 = load_wc(min(kb + 6u, kmax), cw);
        let w7 = load_wc(min(kb + 7u, kmax), cw);
        a0 = step8(a0, select(0.0, xs(o0 + kc), ok), w0, w1, w2, w3, w4, w5, w6, w7);
        if (ROWS_USED > 1u) { a1 = step8(a1, select(0.0, xs(o1 + kc), ok), w0, w1, w2, w3, w4, w5, w6, w7); }
        if (ROWS_USED > 2u) { a2 = step8(a2, select(0.0, xs(o2 + kc), ok), w0, w1, w2, w3, w4, w5, w6, w7); }
        if (ROWS_USED > 3u) { a3 = step8(a3, select(0.0, xs(o3 + kc), ok), w0, w1, w2, w3, w4, w5, w6, w7); }
#ifdef ROWS8
        if (ROWS_USED > 4u) { a4 = step8(a4, select(0.0, xs(o4 + kc), ok), w0, w1, w2, w3, w4, w5, w6, w7); }
        if (ROWS_USED > 5u) { a5 = step8(a5, select(0.0, xs(o5 + kc), ok), w0, w1, w2, w3, w4, w5, w6, w7); }
        if (ROWS_USED > 6u) { a6 = step8(a6, select(0.0, xs(o6 + kc), ok), w0, w1, w2, w3, w4, w5, w6, w7); }
        if (ROWS_USED > 7u) { a7 = step8(a7, select(0.0, xs(o7 + kc), ok), w0, w1, w2, w3, w4, w5, w6, w7); }
#endif
    }
#else
    let k4 = p.k & ~3u;
    for (var k = 0u; k < k4; k += 4u) {
        let w0 = load_wc(k, cw);
        let w1 = load_wc(k + 1u, cw);
        let w2 = load_wc(k + 2u, cw);
        let w3 = load_wc(k + 3u, cw);
        a0 = mac4(a0, x4(o0, k), w0, w1, w2, w3);
        if (ROWS_USED > 1u) { a1 = mac4(a1, x4(o1, k), w0, w1, w2, w3); }
        if (ROWS_USED > 2u) { a2 = mac4(a2, x4(o2, k), w0, w1, w2, w3); }
        if (ROWS_USED > 3u) { a3 = mac4(a3, x4(o3, k), w0, w1, w2, w3); }
#ifdef ROWS8
        if (ROWS_USED > 4u) { a4 = mac4(a4, x4(o4, k), w0, w1, w2, w3); }
        if (ROWS_USED > 5u) { a5 = mac4(a5, x4(o5, k), w0, w1, w2, w3); }
        if (ROWS_USED > 6u) { a6 = mac4(a6, x4(o6, k), w0, w1, w2, w3); }
        if (ROWS_USED > 7u) { a7 = mac4(a7, x4(o7, k), w0, w1, w2, w3); }
#endif
    }
    for (var k = k4; k < p.k; k++) {
        let wv = load_wc(k, cw);
        a0 += xs(o0 + k) * wv;
        if (ROWS_USED > 1u) { a1 += xs(o1 + k) * wv; }
        if (ROWS_USED > 2u) { a2 += xs(o2 + k) * wv; }
        if (ROWS_USED > 3u) { a3 += xs(o3 + k) * wv; }
#ifdef ROWS8
        if (ROWS_USED > 4u) { a4 += xs(o4 + k) * wv; }
        if (ROWS_USED > 5u) { a5 += xs(o5 + k) * wv; }
        if (ROWS_USED > 6u) { a6 += xs(o6 + k) * wv; }
        if (ROWS_USED > 7u) { a7 += xs(o7 + k) * wv; }
#endif
    }
#endif
    if (cg < ldw) {
        store_wc(row, cg, a0);
        store_wc(row + 1u, cg, a1);
        store_wc(row + 2u, cg, a2);
        store_wc(row + 3u, cg, a3);
#ifdef ROWS8
        store_wc(row + 4u, cg, a4);
        store_wc(row + 5u, cg, a5);
        store_wc(row + 6u, cg, a6);
        store_wc(row + 7u, cg, a7);
#endif
    }
}

#ifndef W_COLS8
// ---------------------------------------------------------------- matvec

#ifdef MV_ROWS
var<workgroup> partial: array<vec4<f32>, 256>;

// MV_ROWS (1..=4, the rows of x) is a constant, so decoding's single row does no extra work.
@compute @workgroup_size(64, KSPLIT)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) l: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let c4 = wid.x * 64u + l.x;
    let cw = min(c4, p.ldw4 - 1u);
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let last = p.m - 1u;
    for (var k = l.y; k < p.k; k += KSPLIT) {
        let wv = load_w4(k, cw);
        acc0 += xs(k) * wv;
        if (MV_ROWS > 1u) { acc1 += xs(min(1u, last) * p.k + k) * wv; }
        if (MV_ROWS > 2u) { acc2 += xs(min(2u, last) * p.k + k) * wv; }
        if (MV_ROWS > 3u) { acc3 += xs(min(3u, last) * p.k + k) * wv; }
    }
    for (var r = 0u; r < MV_ROWS; r++) {
        var acc = acc0;
        if (r == 1u) { acc = acc1; }
        if (r == 2u) { acc = acc2; }
        if (r == 3u) { acc = acc3; }
        partial[lid] = acc;
        workgroupBarrier();
        if (l.y == 0u && c4 < p.ldw4) {
            var s = vec4<f32>(0.0);
            for (var j = 0u; j < KSPLIT; j++) { s += partial[j * 64u + l.x]; }
            store4(r, c4, s);
        }
        workgroupBarrier();
    }
}
#endif
#endif  // W_COLS8
