// elementwise.wgsl: memory-bound per-element kernels over f32 tensors, one invocation per
// element (index = (wid.x + wid.y * nwg.x) * WG + lid, so grids above 65535 groups fold into y).
// Entry points and bindings (0 is always the params uniform):
//   activate   1 x [n] (read), 2 out [n]            out = act(x), ACT_* flag: gelu, gelu_tanh, quick_gelu, silu
//   add        1 a [n], 2 out [n], 3 c [n]           out = a + c
//   silu_mul   1 gate, then up at row0 (IN_PLACE)    gate[i] = silu(gate[i]) * up[i], in place
//   copy_rows  1 src [rows, d], 2 dst [.., d]        dst[row0 + r] = src[r]
//   gather_rows 1 src [.., d], 2 dst [rows, d], 3 idx u32 [rows]   dst[r] = src[idx[r]]
// Layout: row-major; `d` is the row length, `row0` the destination row offset. IN_PLACE makes
// binding 1 read_write for the kernels that update it in place.

#include "erf"

struct Params { n: u32, d: u32, row0: u32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
#ifdef IN_PLACE
@group(0) @binding(1) var<storage, read_write> src: array<f32>;
#else
@group(0) @binding(1) var<storage, read> src: array<f32>;
#endif
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
// Binding 3 is f32 data (add) or u32 indices (gather_rows): declared as words.
@group(0) @binding(3) var<storage, read> aux: array<u32>;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn activate(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let x = src[i];
#ifdef ACT_GELU
    dst[i] = gelu_erf(x);
#endif
#ifdef ACT_GELU_TANH
    dst[i] = gelu_tanh(x);
#endif
#ifdef ACT_QUICK_GELU
    dst[i] = quick_gelu(x);
#endif
#ifdef ACT_SILU
    dst[i] = silu(x);
#endif
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    dst[i] = src[i] + bitcast<f32>(aux[i]);
}

#ifdef IN_PLACE
@compute @workgroup_size(WG)
fn silu_mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    src[i] = silu(src[i]) * src[p.row0 + i];
}
#endif

@compute @workgroup_size(WG)
fn copy_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    dst[p.row0 * p.d + i] = src[i];
}

@compute @workgroup_size(WG)
fn gather_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let r = i / p.d;
    dst[i] = src[aux[r] * p.d + i % p.d];
}
