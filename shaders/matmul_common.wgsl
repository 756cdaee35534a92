// matmul_common.wgsl (included by matmul.wgsl and matmul_quant.wgsl): the parameters, the
// activation, output and bias bindings and the epilogue shared by every matmul kernel.
// Bindings: 0 params {m, n (columns of this W chunk), k, ldw4 (dense) or row_words (quantised),
// ldo, n_off, s1, s2}; 1 x f32 [m, k] (array<vec4<f32>> with X_VEC4, else array<f32>); 3 out f32
// (read_write): ldo output columns, the chunk's at n_off .., where columns [0, s1), [s1, s2)
// and [s2, ldo) are three row-major [m, width] blocks one after another, each starting on 64
// floats (the q, k and v of a fused projection; s1 = s2 = ldo for one plain [m, ldo] output); 4 bias f32 [ldo] (with
// HAS_BIAS). The includer declares binding 2, the weights.
// Epilogue flags: EPI_GELU (erf GELU), EPI_GELU_TANH (tanh GELU), EPI_QUICK_GELU,
// EPI_ACCUMULATE (out += result).

#include "erf"

struct Params { m: u32, n: u32, k: u32, ldw4: u32, ldo: u32, n_off: u32, s1: u32, s2: u32 }

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
#ifdef EPI_GELU_TANH
    r = gelu_tanh(r);
#endif
#ifdef EPI_QUICK_GELU
    r = quick_gelu(r);
#endif
    return r;
}

// Where output column `oc` (0..ldo) of row `row` lives: each block starts on 64 floats (256
// bytes, so that it can be bound on its own).
fn align64(n: u32) -> u32 { return (n + 63u) & ~63u; }
fn out_index(row: u32, oc: u32) -> u32 {
    if (oc < p.s1) { return row * p.s1 + oc; }
    let b1 = align64(p.m * p.s1);
    if (oc < p.s2) { return b1 + row * (p.s2 - p.s1) + oc - p.s1; }
    return b1 + align64(p.m * (p.s2 - p.s1)) + row * (p.ldo - p.s2) + oc - p.s2;
}

// One output value of row `row`, column `col` of this chunk (both in range).
fn store1(row: u32, col: u32, v: f32) {
    let i = out_index(row, p.n_off + col);
#ifdef EPI_ACCUMULATE
    out[i] = out[i] + finish(v, col);
#else
    out[i] = finish(v, col);
#endif
}

fn store4(row: u32, c4: u32, acc: vec4<f32>) {
    if (row >= p.m) { return; }
    for (var j = 0u; j < 4u; j++) {
        let col = c4 * 4u + j;
        if (col < p.n) {
            store1(row, col, acc[j]);
        }
    }
}
