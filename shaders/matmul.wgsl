// matmul.wgsl: out = epilogue(x @ W + bias) for f32 activations and f16-or-f32 weights, f32
// accumulation. W is stored [K, ldw4 * 4] row-major (PyTorch's [out, in] transposed, columns
// padded to a multiple of 4) and may be one column chunk of a larger matrix: the chunk's columns
// land at out[:, n_off .. n_off + n].
// Bindings: 0 params; 1 x f32 [m, k] (read); 2 W chunk (read): array<vec4<f32>>, or with W_F16
// f16 packed two per u32 (low half first, 4 columns = 2 words); 3 out f32 [m, ldo] (read_write);
// 4 bias f32 [n_off + n] (read, with HAS_BIAS).
// Epilogue flags: EPI_GELU (erf GELU), EPI_QUICK_GELU, EPI_ACCUMULATE (out += result).
// Entry points:
//   matmul_tiled     16x16 invocations, 64x64 output tile, 4x4 per invocation; A and B tiles of
//                    depth 16 in workgroup memory (discrete GPUs, iGPUs, browsers).
//   matmul_register  64 invocations along contiguous vec4 columns of W, 4 rows each, no
//                    workgroup memory (CPU adapters such as llvmpipe prefer this).
//   matvec           m <= 4 (decode): 64 vec4 columns x KSPLIT slices of K per workgroup,
//                    partial sums combined in workgroup memory.

#include "erf"

struct Params { m: u32, n: u32, k: u32, ldw4: u32, ldo: u32, n_off: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
#ifdef X_VEC4
@group(0) @binding(1) var<storage, read> xv: array<vec4<f32>>;
fn xs(i: u32) -> f32 { return xv[i >> 2u][i & 3u]; }
fn x4(base: u32, k: u32) -> vec4<f32> { return xv[(base + k) >> 2u]; }
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
fn xs(i: u32) -> f32 { return x[i]; }
fn x4(base: u32, k: u32) -> vec4<f32> {
    return vec4<f32>(x[base + k], x[base + k + 1u], x[base + k + 2u], x[base + k + 3u]);
}
#endif
#ifdef W_F16
@group(0) @binding(2) var<storage, read> w: array<vec2<u32>>;
fn load_w4(k: u32, c4: u32) -> vec4<f32> {
    let q = w[k * p.ldw4 + c4];
    return vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
}
#else
@group(0) @binding(2) var<storage, read> w: array<vec4<f32>>;
fn load_w4(k: u32, c4: u32) -> vec4<f32> {
    return w[k * p.ldw4 + c4];
}
#endif
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
#ifdef HAS_BIAS
@group(0) @binding(4) var<storage, read> bias: array<f32>;
#endif

fn finish(v: f32, col: u32) -> f32 {
    var r = v;
#ifdef HAS_BIAS
    r += bias[p.n_off + col];
#endif
#ifdef EPI_GELU
    r = gelu_erf(r);
#endif
#ifdef EPI_QUICK_GELU
    r = quick_gelu(r);
#endif
    return r;
}

fn store4(row: u32, c4: u32, acc: vec4<f32>) {
    if (row >= p.m) { return; }
    for (var j = 0u; j < 4u; j++) {
        let col = c4 * 4u + j;
        if (col < p.n) {
            let i = row * p.ldo + p.n_off + col;
#ifdef EPI_ACCUMULATE
            out[i] = out[i] + finish(acc[j], col);
#else
            out[i] = finish(acc[j], col);
#endif
        }
    }
}

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

// ---------------------------------------------------------------- register

fn mac4(acc: vec4<f32>, a: vec4<f32>, w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>) -> vec4<f32> {
    return acc + a.x * w0 + a.y * w1 + a.z * w2 + a.w * w3;
}

@compute @workgroup_size(64)
fn matmul_register(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c4 = wid.x * 64u + lid;
    let cw = min(c4, p.ldw4 - 1u);
    let row = wid.y * 4u;
    // Rows past the end re-read the last row; their results are never stored.
    let last = p.m - 1u;
    let x0 = min(row, last) * p.k;
    let x1 = min(row + 1u, last) * p.k;
    let x2 = min(row + 2u, last) * p.k;
    let x3 = min(row + 3u, last) * p.k;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    let k4 = p.k & ~3u;
    for (var k = 0u; k < k4; k += 4u) {
        let w0 = load_w4(k, cw);
        let w1 = load_w4(k + 1u, cw);
        let w2 = load_w4(k + 2u, cw);
        let w3 = load_w4(k + 3u, cw);
        acc0 = mac4(acc0, x4(x0, k), w0, w1, w2, w3);
        acc1 = mac4(acc1, x4(x1, k), w0, w1, w2, w3);
        acc2 = mac4(acc2, x4(x2, k), w0, w1, w2, w3);
        acc3 = mac4(acc3, x4(x3, k), w0, w1, w2, w3);
    }
    for (var k = k4; k < p.k; k++) {
        let wv = load_w4(k, cw);
        acc0 += xs(x0 + k) * wv;
        acc1 += xs(x1 + k) * wv;
        acc2 += xs(x2 + k) * wv;
        acc3 += xs(x3 + k) * wv;
    }
    if (c4 < p.ldw4) {
        store4(row, c4, acc0);
        store4(row + 1u, c4, acc1);
        store4(row + 2u, c4, acc2);
        store4(row + 3u, c4, acc3);
    }
}

// ---------------------------------------------------------------- matvec

var<workgroup> partial: array<vec4<f32>, 256>;

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
        acc1 += xs(min(1u, last) * p.k + k) * wv;
        acc2 += xs(min(2u, last) * p.k + k) * wv;
        acc3 += xs(min(3u, last) * p.k + k) * wv;
    }
    for (var r = 0u; r < 4u; r++) {
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
