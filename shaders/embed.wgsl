// embed.wgsl: token-embedding gather from one row chunk of a [vocab, dim] table.
// One invocation per output element (index = (wid.x + wid.y * nwg.x) * WG + lid).
// Bindings: 0 params {n, dim, row_start, rows, vocab}; 1 ids u32 [n]; 2 out f32 [n, dim] (write);
// 3 table rows [row_start, row_start + rows) x dim: f32, or with W_F16 f16 packed two per u32
// (low half first). Each chunk's dispatch writes only ids inside its rows; the first chunk's
// dispatch also writes zeros for ids >= vocab so nothing is read out of bounds.

struct Params { n: u32, dim: u32, row_start: u32, rows: u32, vocab: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#ifdef W_F16
@group(0) @binding(3) var<storage, read> table: array<u32>;
fn load(e: u32) -> f32 { return unpack2x16float(table[e >> 1u])[e & 1u]; }
#else
@group(0) @binding(3) var<storage, read> table: array<f32>;
fn load(e: u32) -> f32 { return table[e]; }
#endif

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
