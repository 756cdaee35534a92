// rope.wgsl: rotary position embedding, Llama's rotate_half convention, in place. One invocation
// per (row, head, pair i < hd/2): (x[i], x[i + hd/2]) rotated by angle = f32(position) * inv_freq[i].
// Bindings: 0 params {n, heads, hd}; 1 positions u32 [n] (read); 2 x f32 [n, heads * hd]
// (read_write); 3 inv_freq f32 [hd / 2] (read, scaling already applied).

struct Params { n: u32, heads: u32, hd: u32, _pad: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> positions: array<u32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
@group(0) @binding(3) var<storage, read> inv_freq: array<f32>;

@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let half = p.hd / 2u;
    let t = (wid.x + wid.y * nwg.x) * WG + lid;
    if (t >= p.n * p.heads * half) { return; }
    let i = t % half;
    let head = (t / half) % p.heads;
    let row = t / (half * p.heads);
    let angle = f32(positions[row]) * inv_freq[i];
    let c = cos(angle);
    let s = sin(angle);
    let base = row * p.heads * p.hd + head * p.hd + i;
    let x1 = x[base];
    let x2 = x[base + half];
    x[base] = x1 * c - x2 * s;
    x[base + half] = x2 * c + x1 * s;
}
