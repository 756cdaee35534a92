// patch.wgsl: ViT patch embedding helpers (CLIP, SigLIP). One invocation per output element
// (index = (wid.x + wid.y * nwg.x) * WG + lid).
//   im2col        1 pixels f32 [3, H, W] (CHW), 2 out [P, 3*ps*ps]: row = patch in row-major grid
//                 order over the (H / ps) x (W / ps) grid (a remainder of the image is dropped, as
//                 the unpadded convolution does), column = c*ps*ps + ky*ps + kx, so
//                 out @ conv_weight[D, 3*ps*ps]^T is the stride-ps convolution.
//   vision_embed  1 patches [P, D], 2 out [T, D]; with CLASS_TOKEN (CLIP) 3 class [D],
//                 4 positions [T, D], T = P+1: out[0] = class + positions[0],
//                 out[1+p] = patches[p] + positions[1+p]; without (SigLIP) 3 positions [T, D],
//                 T = P: out[p] = patches[p] + positions[p].
// Params: {n (outputs), height, width, ps (patch size), d}.

struct Params { n: u32, height: u32, width: u32, ps: u32, d: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#ifdef CLASS_TOKEN
@group(0) @binding(3) var<storage, read> class_emb: array<f32>;
@group(0) @binding(4) var<storage, read> positions: array<f32>;
#else
@group(0) @binding(3) var<storage, read> positions: array<f32>;
#endif

@compute @workgroup_size(WG)
fn im2col(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.n) { return; }
    let k = 3u * p.ps * p.ps;
    let pi = i / k;
    let col = i % k;
    let c = col / (p.ps * p.ps);
    let ky = (col / p.ps) % p.ps;
    let kx = col % p.ps;
    let grid_w = p.width / p.ps;
    let y = (pi / grid_w) * p.ps + ky;
    let x = (pi % grid_w) * p.ps + kx;
    out[i] = src[(c * p.height + y) * p.width + x];
}

@compute @workgroup_size(WG)
fn vision_embed(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.n) { return; }
#ifdef CLASS_TOKEN
    if (i < p.d) {
        out[i] = class_emb[i] + positions[i];
    } else {
        out[i] = src[i - p.d] + positions[i];
    }
#else
    out[i] = src[i] + positions[i];
#endif
}
