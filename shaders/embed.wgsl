// embed.wgsl: token-embedding gather from one row chunk of a [vocab, dim] table.
// One invocation per output element (index = (wid.x + wid.y * nwg.x) * WG + lid).
// Bindings: 0 params {n, dim, row_start, rows, vocab}; 1 ids u32 [n]; 2 out f32 [n, dim] (write);
// 3 table rows [row_start, row_start + rows) x dim: f32, or with W_F16 f16 packed two per u32
// (low half first), or with QUANT GGML rows (ggml_blocks.wgsl; `row_words` words per row, in
// groups of RG rows).
// Each chunk's dispatch writes only ids inside its rows; the first chunk's dispatch also writes
// zeros for ids >= vocab so nothing is read out of bounds. With QUANT (entry qembed) each
// invocation writes 8 consecutive values of a row (dim is a multiple of 32).

struct Params { n: u32, dim: u32, row_start: u32, rows: u32, vocab: u32, row_words: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#ifdef QUANT
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
#include "ggml_blocks"
#else
#ifdef W_F16
@group(0) @binding(3) var<storage, read> table: array<u32>;
fn load(e: u32) -> f32 { return unpack2x16float(table[e >> 1u])[e & 1u]; }
#else
@group(0) @binding(3) var<storage, read> table: array<f32>;
fn load(e: u32) -> f32 { return table[e]; }
#endif
#endif

#ifdef QUANT
@compute @workgroup_size(WG)
fn qembed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = ((wid.x + wid.y * nwg.x) * WG + lid) * 8u;
    if (i >= p.n * p.dim) { return; }
    let id = ids[i / p.dim];
    if (id >= p.vocab) {
        if (p.row_start == 0u) {
            for (var j = 0u; j < 8u; j++) { out[i + j] = 0.0; }
        }
        return;
    }
    if (id < p.row_start || id >= p.row_start + p.rows) { return; }
    let e = i % p.dim;
    let v = deq8(row_ref(id - p.row_start, p.row_words, p.dim / QK), e / 32u, (e % 32u) / 4u);
    for (var j = 0u; j < 4u; j++) {
        out[i + j] = v.a[j];
        out[i + 4u + j] = v.b[j];
    }
}
#else
@compute @workgroup_size(WG)
fn embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.n * p.dim) { return; }
    let id = ids[i / p.dim];
    if (id >= p.vocab) {
        if (p.row_start == 0u) { out[i] = 0.0; }
        return;
    }
    if (id < p.row_start || id >= p.row_start + p.rows) { return; }
    out[i] = load((id - p.row_start) * p.dim + i % p.dim);
}
#endif
