// peak.wgsl: the adapter's roofs, for the bench, so that achieved GFLOP/s and GB/s can be read
// against what the adapter can execute.
//   alu_peak   the arithmetic of matmul_register's inner loop (vec4 multiply-adds, written
//              `a * w + c` like mac4's `acc + x * w`) with no memory traffic: `steps` steps of 8
//              independent vec4 multiply-adds a = a * w + (1 - w) (64 flops per step; each
//              converges to 1), w from the invocation index so that the compiler cannot fold them.
//   read_peak  streaming reads as the mat-vecs do them: invocation i sums row i of `data`
//              ([n, steps] 16-byte words, read in order) and stores the sum's bits.
// Bindings: 0 params {steps, n}; 1 out f32 [n] (read_write), one value per invocation (so that no
// work is dead code); 2 data array<vec4<u32>> [n * steps] (read_peak).
// Layout: invocation i = (wid.x + wid.y * nwg.x) * 64 + lid.

struct Params { steps: u32, n: u32, _p0: u32, _p1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read> data: array<vec4<u32>>;

@compute @workgroup_size(64)
fn alu_peak(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 64u + lid;
    let s = f32(i & 7u) * 1e-7;
    let w = vec4<f32>(0.999 + s, 0.998 + s, 0.997 + s, 0.996 + s);
    let c = 1.0 - w;
    var a0 = vec4<f32>(s, 1.0, 2.0, 3.0);
    var a1 = a0 + 1.0;
    var a2 = a0 + 2.0;
    var a3 = a0 + 3.0;
    var a4 = a0 + 4.0;
    var a5 = a0 + 5.0;
    var a6 = a0 + 6.0;
    var a7 = a0 + 7.0;
    for (var t = 0u; t < p.steps; t++) {
        a0 = a0 * w + c;
        a1 = a1 * w + c;
        a2 = a2 * w + c;
        a3 = a3 * w + c;
        a4 = a4 * w + c;
        a5 = a5 * w + c;
        a6 = a6 * w + c;
        a7 = a7 * w + c;
    }
    if (i < p.n) {
        out[i] = dot(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7, vec4<f32>(1.0));
    }
}

@compute @workgroup_size(64)
fn read_peak(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * 64u + lid;
    if (i >= p.n) { return; }
    var acc = vec4<u32>(0u);
    for (var t = 0u; t < p.steps; t++) {
        acc += data[i * p.steps + t];
    }
    out[i] = bitcast<f32>(acc.x + acc.y + acc.z + acc.w);
}
