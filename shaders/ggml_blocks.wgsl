// ggml_blocks.wgsl (included): dequantisation of GGML weight rows for the quantised matmul /
// mat-vec and embedding kernels, 8 consecutive values at a time (deq8) or, for 32-value types,
// a whole block's integers at once (block_quants, block_scale, group_q).
// The includer declares `w: array<vec4<u32>>` (the rows) and defines exactly one type flag
// (T_Q4_0, T_Q4_1, T_Q5_0, T_Q5_1, T_Q8_0, T_Q4_K, T_Q5_K, T_Q6_K), QK (values per block) and
// either SPLIT_ROWS (32-value types; with SCALE_PAIRS for Q4_1 / Q5_1 and HIGH_BITS for Q5_0 /
// Q5_1) or BW (u32 words per K-quant block).
// Every row starts on a 16-byte word (rows are padded to a multiple of 4 u32 words).
// SPLIT_ROWS, a row of nb blocks is three parts, each padded to whole 16-byte words:
//   scales   Q4_0, Q5_0, Q8_0: f16 d of block b in half b % 2 of word b / 2;
//            Q4_1, Q5_1: one word per block, d (low half) and m (high half)
//   qh       Q5_0, Q5_1 only: one word per block, bit j = 5th bit of value j
//   values   per block 4 words of nibbles (value j: byte j % 16, high nibble if j >= 16) or,
//            for Q8_0, 8 words of signed bytes
// K-quant rows are llama.cpp's blocks, BW words each, fields word-aligned:
//   Q4_K (36 words) d, dmin f16; 12 bytes of 6-bit sub-block scales/mins; 128 bytes of nibbles
//   Q5_K (44 words) as Q4_K, with 32 bytes of 5th bits (qh) before the nibbles
//   Q6_K (53 words) 128 bytes low nibbles, 64 bytes 2-bit highs, 16 signed scales, d f16, 2 pad
// Value j of a block: x = d*q (+ m, or - dmin*min, per type), as ggml defines each format.

struct V8 { a: vec4<f32>, b: vec4<f32> }

const BYTE_SHIFTS = vec4<u32>(0u, 8u, 16u, 24u);

fn word(i: u32) -> u32 { return w[i >> 2u][i & 3u]; }

fn half_lo(v: u32) -> f32 { return unpack2x16float(v).x; }

// Byte i of the words from `base` on.
fn byte_at(base: u32, i: u32) -> u32 { return (word(base + i / 4u) >> (8u * (i % 4u))) & 255u; }

// Bytes 4i .. 4i+8 of the words at `base`, one per lane of two vec4s.
fn bytes8(base: u32, i: u32) -> array<vec4<u32>, 2> {
    return array<vec4<u32>, 2>((vec4<u32>(word(base + i)) >> BYTE_SHIFTS) & vec4<u32>(255u),
                               (vec4<u32>(word(base + i + 1u)) >> BYTE_SHIFTS) & vec4<u32>(255u));
}

// Where the parts of one row start, in words.
struct RowRef { base: u32, scales: u32, qh: u32, values: u32 }

#ifdef SPLIT_ROWS
fn pad4(n: u32) -> u32 { return (n + 3u) & ~3u; }

#ifdef SCALE_PAIRS
fn scale_words(nb: u32) -> u32 { return pad4(nb); }
#else
fn scale_words(nb: u32) -> u32 { return pad4((nb + 1u) / 2u); }
#endif
#ifdef HIGH_BITS
fn qh_words(nb: u32) -> u32 { return pad4(nb); }
#else
fn qh_words(nb: u32) -> u32 { return 0u; }
#endif
#ifdef T_Q8_0
const QW = 8u;
#else
const QW = 4u;
#endif

// The row of `nb` blocks that starts at word `base`.
fn row_ref(base: u32, nb: u32) -> RowRef {
    let qh = base + scale_words(nb);
    return RowRef(base, base, qh, qh + qh_words(nb));
}

// (d, c) of block `blk`: its values are d * q + c for the integers q of group_q.
fn block_scale(r: RowRef, blk: u32) -> vec2<f32> {
#ifdef SCALE_PAIRS
    return unpack2x16float(word(r.scales + blk));
#else
    let d = unpack2x16float(word(r.scales + blk / 2u))[blk % 2u];
#ifdef T_Q4_0
    return vec2<f32>(d, -8.0 * d);
#endif
#ifdef T_Q5_0
    return vec2<f32>(d, -16.0 * d);
#endif
#ifdef T_Q8_0
    return vec2<f32>(d, 0.0);
#endif
#endif
}

// A block's packed integers: lo (and, for Q8_0, hi) are its value words, h its 5th bits.
struct QB { lo: vec4<u32>, hi: vec4<u32>, h: u32 }

fn block_quants(r: RowRef, blk: u32) -> QB {
    let v = (r.values + blk * QW) >> 2u;
#ifdef T_Q8_0
    return QB(w[v], w[v + 1u], 0u);
#else
#ifdef HIGH_BITS
    return QB(w[v], vec4<u32>(0u), word(r.qh + blk));
#else
    return QB(w[v], vec4<u32>(0u), 0u);
#endif
#endif
}

// The integers of values 4g .. 4g+4 of a block (g = 0..7, a constant at every call).
fn group_q(b: QB, g: u32) -> vec4<f32> {
#ifdef T_Q8_0
    let v = select(b.hi[g % 4u], b.lo[g % 4u], g < 4u);
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(v) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
#else
    // Values 4g.. are the low nibbles of word g for g < 4, the high nibbles of word g - 4 after.
    let q = (vec4<u32>(b.lo[g % 4u]) >> (BYTE_SHIFTS + vec4<u32>(4u * (g / 4u)))) & vec4<u32>(15u);
#ifdef HIGH_BITS
    let h = ((vec4<u32>(b.h >> (4u * g)) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u)) << vec4<u32>(4u);
    return vec4<f32>(q | h);
#else
    return vec4<f32>(q);
#endif
#endif
}

fn deq8(r: RowRef, blk: u32, j: u32) -> V8 {
    let s = block_scale(r, blk);
    let b = block_quants(r, blk);
    let g = j / 4u;
    return V8(group_q(b, g) * s.x + s.y, group_q(b, g + 1u) * s.x + s.y);
}
#else
fn row_ref(base: u32, nb: u32) -> RowRef { return RowRef(base, base, base, base); }
#endif

#ifdef KQUANT_SCALES
// The 6-bit scale and min of sub-block `sb` (0..8) from the 12 scale bytes at words 1..4.
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
fn deq8(r: RowRef, blk: u32, j: u32) -> V8 {
    let base = r.base + blk * BW;
    // Groups of 64 values: sub-block 2g in the low nibbles of 32 bytes, 2g+1 in the high ones.
    let g = j / 64u;
    let hi = (j / 32u) % 2u;
    let l = j % 32u;
    let dm = unpack2x16float(word(base));
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
fn deq8(r: RowRef, blk: u32, j: u32) -> V8 {
    let base = r.base + blk * BW;
    let g = j / 64u;
    let hi = (j / 32u) % 2u;
    let l = j % 32u;
    let sb = 2u * g + hi;
    let dm = unpack2x16float(word(base));
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
fn deq8(r: RowRef, blk: u32, j: u32) -> V8 {
    let base = r.base + blk * BW;
    // Halves of 128 values; quarter qq of a half takes low nibbles of ql[l] / ql[l+32]
    // (qq 0, 1) or their high nibbles (qq 2, 3), and bits 2qq..2qq+2 of qh[l].
    let h = j / 128u;
    let qq = (j % 128u) / 32u;
    let l = j % 32u;
    let ql = bytes8(base, (h * 64u + l + 32u * (qq % 2u)) / 4u);
    let qh = bytes8(base + 32u, (h * 32u + l) / 4u);
    let sc_byte = byte_at(base + 48u, h * 8u + l / 16u + 2u * qq);
    let sc = f32(bitcast<i32>(sc_byte << 24u) >> 24u);
    let d = half_lo(word(base + 52u)) * sc;
    let s = vec4<u32>(4u * (qq / 2u));
    let hs = vec4<u32>(2u * qq);
    let a = ((ql[0] >> s) & vec4<u32>(15u)) | (((qh[0] >> hs) & vec4<u32>(3u)) << vec4<u32>(4u));
    let b = ((ql[1] >> s) & vec4<u32>(15u)) | (((qh[1] >> hs) & vec4<u32>(3u)) << vec4<u32>(4u));
    return V8((vec4<f32>(a) - 32.0) * d, (vec4<f32>(b) - 32.0) * d);
}
#endif
