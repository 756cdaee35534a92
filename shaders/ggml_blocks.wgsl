// ggml_blocks.wgsl (included): dequantisation of GGML weight blocks, 8 consecutive values at a
// time, for the quantised matmul / mat-vec and embedding kernels.
// The includer declares `w: array<u32>` (the blocks) and defines exactly one type flag
// (T_Q4_0, T_Q4_1, T_Q5_0, T_Q5_1, T_Q8_0, T_Q4_K, T_Q5_K, T_Q6_K) plus the valued defines QK
// (values per block) and BW (u32 words per block).
// GPU block layout: llama.cpp's bytes, little-endian, padded so every field is word-aligned:
//   Q4_0 (5 words)  d f16, 2 pad bytes, 16 bytes of nibbles (value j: byte j%16, high nibble if j>=16)
//   Q4_1 (5 words)  d f16, m f16, 16 bytes of nibbles
//   Q5_0 (6 words)  d f16, 2 pad bytes, qh u32 (bit j = 5th bit of value j), 16 bytes of nibbles
//   Q5_1 (6 words)  d f16, m f16, qh u32, 16 bytes of nibbles
//   Q8_0 (9 words)  d f16, 2 pad bytes, 32 signed bytes
//   Q4_K (36 words) d, dmin f16; 12 bytes of 6-bit sub-block scales/mins; 128 bytes of nibbles
//   Q5_K (44 words) as Q4_K, with 32 bytes of 5th bits (qh) before the nibbles
//   Q6_K (53 words) 128 bytes low nibbles, 64 bytes 2-bit highs, 16 signed scales, d f16, 2 pad
// Value j of a block: x = d*q (+ m, or - dmin*min, per type), as ggml defines each format.

struct V8 { a: vec4<f32>, b: vec4<f32> }

const BYTE_SHIFTS = vec4<u32>(0u, 8u, 16u, 24u);

// Bytes 4i .. 4i+8 of the block at word `base`, one per lane of two vec4s.
fn bytes8(base: u32, i: u32) -> array<vec4<u32>, 2> {
    return array<vec4<u32>, 2>((vec4<u32>(w[base + i]) >> BYTE_SHIFTS) & vec4<u32>(255u),
                               (vec4<u32>(w[base + i + 1u]) >> BYTE_SHIFTS) & vec4<u32>(255u));
}

fn half_lo(word: u32) -> f32 { return unpack2x16float(word).x; }

// Bits `j .. j+8` of `bits`, one per lane, as 0 or `one`.
fn bits8(bits: u32, j: u32, one: f32) -> array<vec4<f32>, 2> {
    let lo = (vec4<u32>(bits >> j) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u);
    let hi = (vec4<u32>(bits >> (j + 4u)) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u);
    return array<vec4<f32>, 2>(vec4<f32>(lo) * one, vec4<f32>(hi) * one);
}

#ifdef T_Q8_0
fn deq8(base: u32, j: u32) -> V8 {
    let d = half_lo(w[base]);
    // Sign-extend each byte: shift it to the top, arithmetic shift back.
    let a = bitcast<vec4<i32>>(vec4<u32>(w[base + 1u + j / 4u]) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    let b = bitcast<vec4<i32>>(vec4<u32>(w[base + 2u + j / 4u]) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u);
    return V8(vec4<f32>(a) * d, vec4<f32>(b) * d);
}
#endif

#ifdef T_Q4_0
fn deq8(base: u32, j: u32) -> V8 {
    let d = half_lo(w[base]);
    let q = bytes8(base + 1u, (j % 16u) / 4u);
    let s = vec4<u32>(4u * (j / 16u));
    return V8((vec4<f32>((q[0] >> s) & vec4<u32>(15u)) - 8.0) * d,
              (vec4<f32>((q[1] >> s) & vec4<u32>(15u)) - 8.0) * d);
}
#endif

#ifdef T_Q4_1
fn deq8(base: u32, j: u32) -> V8 {
    let dm = unpack2x16float(w[base]);
    let q = bytes8(base + 1u, (j % 16u) / 4u);
    let s = vec4<u32>(4u * (j / 16u));
    return V8(vec4<f32>((q[0] >> s) & vec4<u32>(15u)) * dm.x + dm.y,
              vec4<f32>((q[1] >> s) & vec4<u32>(15u)) * dm.x + dm.y);
}
#endif

#ifdef T_Q5_0
fn deq8(base: u32, j: u32) -> V8 {
    let d = half_lo(w[base]);
    let q = bytes8(base + 2u, (j % 16u) / 4u);
    let s = vec4<u32>(4u * (j / 16u));
    let h = bits8(w[base + 1u], j, 16.0);
    return V8((vec4<f32>((q[0] >> s) & vec4<u32>(15u)) + h[0] - 16.0) * d,
              (vec4<f32>((q[1] >> s) & vec4<u32>(15u)) + h[1] - 16.0) * d);
}
#endif

#ifdef T_Q5_1
fn deq8(base: u32, j: u32) -> V8 {
    let dm = unpack2x16float(w[base]);
    let q = bytes8(base + 2u, (j % 16u) / 4u);
    let s = vec4<u32>(4u * (j / 16u));
    let h = bits8(w[base + 1u], j, 16.0);
    return V8((vec4<f32>((q[0] >> s) & vec4<u32>(15u)) + h[0]) * dm.x + dm.y,
              (vec4<f32>((q[1] >> s) & vec4<u32>(15u)) + h[1]) * dm.x + dm.y);
}
#endif

#ifdef KQUANT_SCALES
// The 6-bit scale and min of sub-block `sb` (0..8) from the 12 scale bytes at words 1..4.
fn byte_at(base: u32, i: u32) -> u32 { return (w[base + i / 4u] >> (8u * (i % 4u))) & 255u; }
fn scale_min(base: u32, sb: u32) -> vec2<f32> {
    let s = base + 1u;
    if (sb < 4u) {
        return vec2<f32>(f32(byte_at(s, sb) & 63u), f32(byte_at(s, sb + 4u) & 63u));
    }
    let x = byte_at(s, sb + 4u);
    return vec2<f32>(f32((x & 15u) | ((byte_at(s, sb - 4u) >> 6u) << 4u)),
                     f32((x >> 4u) | ((byte_at(s, sb) >> 6u) << 4u)));
}
#endif

#ifdef T_Q4_K
fn deq8(base: u32, j: u32) -> V8 {
    // Groups of 64 values: sub-block 2g in the low nibbles of 32 bytes, 2g+1 in the high ones.
    let g = j / 64u;
    let hi = (j / 32u) % 2u;
    let l = j % 32u;
    let dm = unpack2x16float(w[base]);
    let sm = scale_min(base, 2u * g + hi);
    let q = bytes8(base + 4u, (g * 32u + l) / 4u);
    let s = vec4<u32>(4u * hi);
    let dl = dm.x * sm.x;
    let ml = dm.y * sm.y;
    return V8(vec4<f32>((q[0] >> s) & vec4<u32>(15u)) * dl - ml,
              vec4<f32>((q[1] >> s) & vec4<u32>(15u)) * dl - ml);
}
#endif

#ifdef T_Q5_K
fn deq8(base: u32, j: u32) -> V8 {
    let g = j / 64u;
    let hi = (j / 32u) % 2u;
    let l = j % 32u;
    let sb = 2u * g + hi;
    let dm = unpack2x16float(w[base]);
    let sm = scale_min(base, sb);
    let q = bytes8(base + 12u, (g * 32u + l) / 4u);
    let qh = bytes8(base + 4u, l / 4u);
    let s = vec4<u32>(4u * hi);
    let hs = vec4<u32>(sb);
    let dl = dm.x * sm.x;
    let ml = dm.y * sm.y;
    return V8(vec4<f32>(((q[0] >> s) & vec4<u32>(15u)) | (((qh[0] >> hs) & vec4<u32>(1u)) << vec4<u32>(4u))) * dl - ml,
              vec4<f32>(((q[1] >> s) & vec4<u32>(15u)) | (((qh[1] >> hs) & vec4<u32>(1u)) << vec4<u32>(4u))) * dl - ml);
}
#endif

#ifdef T_Q6_K
fn deq8(base: u32, j: u32) -> V8 {
    // Halves of 128 values; quarter qq of a half takes low nibbles of ql[l] / ql[l+32]
    // (qq 0, 1) or their high nibbles (qq 2, 3), and bits 2qq..2qq+2 of qh[l].
    let h = j / 128u;
    let qq = (j % 128u) / 32u;
    let l = j % 32u;
    let ql = bytes8(base, (h * 64u + l + 32u * (qq % 2u)) / 4u);
    let qh = bytes8(base + 32u, (h * 32u + l) / 4u);
    let sc_byte = (w[base + 48u + (h * 8u + l / 16u + 2u * qq) / 4u] >> (8u * ((h * 8u + l / 16u + 2u * qq) % 4u))) & 255u;
    let sc = f32(bitcast<i32>(sc_byte << 24u) >> 24u);
    let d = unpack2x16float(w[base + 52u]).x * sc;
    let s = vec4<u32>(4u * (qq / 2u));
    let hs = vec4<u32>(2u * qq);
    let a = ((ql[0] >> s) & vec4<u32>(15u)) | (((qh[0] >> hs) & vec4<u32>(3u)) << vec4<u32>(4u));
    let b = ((ql[1] >> s) & vec4<u32>(15u)) | (((qh[1] >> hs) & vec4<u32>(3u)) << vec4<u32>(4u));
    return V8((vec4<f32>(a) - 32.0) * d, (vec4<f32>(b) - 32.0) * d);
}
#endif
