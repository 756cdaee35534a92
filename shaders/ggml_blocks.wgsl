// ggml_blocks.wgsl (included): dequantisation of GGML weight rows for the quantised matmul /
// mat-vec and embedding kernels. Every type is read in units of 32 consecutive values of a row
// (unit u holds values 32u .. 32u + 32), fetched in 16-byte loads a step of UNITS units at a time
// (step_load) or one unit at a time (unit_step); step_unit and step_scale give one unit's packed
// integers and scales, group_q the integers of its values 4g .. 4g + 4 (g = 0..7); deq8 gives 8
// dequantised values.
// The includer declares `w: array<vec4<u32>>` (the rows) and defines exactly one type flag
// (T_Q4_0, T_Q4_1, T_Q5_0, T_Q5_1, T_Q8_0, T_Q4_K, T_Q5_K, T_Q6_K), QK (values per block) and
// either SPLIT_ROWS (32-value types; with SCALE_PAIRS for Q4_1 / Q5_1 and HIGH_BITS for Q5_0 /
// Q5_1) or BW (u32 words per K-quant block, a multiple of 4).
// Every row starts on a 16-byte word (rows are padded to a multiple of 4 u32 words).
// RG (1 or 4) rows make a group that is stored interleaved: each part of the layout below (or,
// for K-quants, each block) holds its unit for row 0, 1, .. RG - 1 of the group side by side
// (units: a scale or qh word, a block's values, a K-quant block), so one invocation that owns
// a group's RG rows reads one stretch of memory instead of RG (CPU adapters; `RG = 1u` is the
// plain row layout, coalesced along K for GPUs). The includer defines RG.
// SPLIT_ROWS, a row of nb blocks is three parts, each padded to whole 16-byte words:
//   scales   Q4_0, Q5_0, Q8_0: f16 d of block b in half b % 2 of word b / 2;
//            Q4_1, Q5_1: one word per block, d (low half) and m (high half)
//   qh       Q5_0, Q5_1 only: one word per block, bit j = 5th bit of value j
//   values   per block 4 words of nibbles (value j: byte j % 16, high nibble if j >= 16) or,
//            for Q8_0, 8 words of signed bytes
// K-quant rows are llama.cpp's blocks of 256 values, fields word-aligned, each block padded to BW:
//   Q4_K (36 words) d, dmin f16; 12 bytes of 6-bit sub-block scales/mins; 128 bytes of nibbles
//   Q5_K (44 words) as Q4_K, with 32 bytes of 5th bits (qh) before the nibbles
//   Q6_K (56 words) 128 bytes low nibbles, 64 bytes 2-bit highs, 16 signed scales, d f16, pad
// Value j of a block: x = d*q (+ m, or - dmin*min, per type), as ggml defines each format.

struct V8 { a: vec4<f32>, b: vec4<f32> }

const BYTE_SHIFTS = vec4<u32>(0u, 8u, 16u, 24u);

fn word(i: u32) -> u32 { return w[i >> 2u][i & 3u]; }

// Byte i (0..16) of a 16-byte word.
fn byte_of(v: vec4<u32>, i: u32) -> u32 { return (v[i / 4u] >> (8u * (i % 4u))) & 255u; }

// Where the parts of one row start, in words (unit j of a part is RG units further on).
struct RowRef { base: u32, scales: u32, qh: u32, values: u32 }

// The first word of the group that holds row `row` (rows of `row_words` words).
fn group_base(row: u32, row_words: u32) -> u32 { return (row / RG) * RG * row_words; }

// A unit's packed integers: lo (and hi) are 16-byte words of its values, hlo / hhi those of its
// high bits; shift and hshift select the nibble or bits of each byte that belong to the unit.
struct QB { lo: vec4<u32>, hi: vec4<u32>, hlo: vec4<u32>, hhi: vec4<u32>, shift: u32, hshift: u32 }

// The words of a step: UNITS units of a row whose integers and scales share loads (1 for
// 32-value types, 2 for the K-quants), unit i starting at value unit_k(st, i). Which word holds
// what is the type's business; step_unit and step_scale take unit i (0..UNITS) apart.
struct Step { a: vec4<u32>, b: vec4<u32>, e: vec4<u32>, f: vec4<u32>, s: vec4<u32>, first: u32,
              dw: u32 }

// Word gi (0..8) of a 32-byte pair.
fn pick(lo: vec4<u32>, hi: vec4<u32>, gi: u32) -> u32 { return select(hi[gi % 4u], lo[gi % 4u], gi < 4u); }

// The 4 bytes of a word as values. The types build each group's 4 integers as the bytes of one
// word with whole-word masks and shifts first (a quarter of the per-value operations).
fn byte_values(v: u32) -> vec4<f32> { return vec4<f32>((vec4<u32>(v) >> BYTE_SHIFTS) & vec4<u32>(255u)); }

const NIBBLES = 0x0F0F0F0Fu;

fn i8_of(v: vec4<u32>, i: u32) -> f32 { return f32(bitcast<i32>(byte_of(v, i) << 24u) >> 24u); }

#ifdef SPLIT_ROWS
const UNITS = 1u;

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

// Row `row` of `nb` blocks, `row_words` words each.
fn row_ref(row: u32, row_words: u32, nb: u32) -> RowRef {
    let base = group_base(row, row_words);
    let lane = row % RG;
    let qh = base + RG * scale_words(nb);
    return RowRef(base, base + lane, qh + lane, qh + RG * qh_words(nb) + lane * QW);
}

// a (and b for Q8_0): the block's values; e.x: its high bits; s.x: its scale word.
fn step_load(r: RowRef, u: u32) -> Step {
    let v = (r.values + u * QW * RG) >> 2u;
    let z = vec4<u32>(0u);
#ifdef SCALE_PAIRS
    let sw = word(r.scales + u * RG);
#else
    let sw = word(r.scales + (u / 2u) * RG);
#endif
#ifdef T_Q8_0
    let hi = w[v + 1u];
#else
    let hi = z;
#endif
#ifdef HIGH_BITS
    let qh = vec4<u32>(word(r.qh + u * RG));
#else
    let qh = z;
#endif
    return Step(w[v], hi, qh, z, vec4<u32>(sw), u, 0u);
}

fn unit_step(r: RowRef, u: u32) -> Step { return step_load(r, u); }

fn step_unit(t: Step, i: u32) -> QB { return QB(t.a, t.b, t.e, t.f, 0u, 0u); }

// (d0, d1, c0, c1): values of groups 0..3 are d0 q + c0, of groups 4..7 d1 q + c1.
fn step_scale(t: Step, i: u32) -> vec4<f32> {
#ifdef SCALE_PAIRS
    let dm = unpack2x16float(t.s.x);
    return vec4<f32>(dm.x, dm.x, dm.y, dm.y);
#else
    let d = unpack2x16float(t.s.x)[t.first % 2u];
#ifdef T_Q4_0
    return vec4<f32>(d, d, -8.0 * d, -8.0 * d);
#endif
#ifdef T_Q5_0
    return vec4<f32>(d, d, -16.0 * d, -16.0 * d);
#endif
#ifdef T_Q8_0
    return vec4<f32>(d, d, 0.0, 0.0);
#endif
#endif
}

fn group_q(b: QB, g: u32) -> vec4<f32> {
#ifdef T_Q8_0
    let v = vec4<u32>(pick(b.lo, b.hi, g));
    return vec4<f32>(bitcast<vec4<i32>>(v << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
#else
    // Values 4g.. are the low nibbles of word g for g < 4, the high nibbles of word g - 4 after.
    let q = (b.lo[g % 4u] >> (4u * (g / 4u))) & NIBBLES;
#ifdef HIGH_BITS
    // Their fifth bits, bits 4g.. of qh, moved to bit 4 of bytes 0..3 (the multiply places the
    // 4 bits at 0, 8, 16 and 24 without carries).
    let h = ((((b.hlo.x >> (4u * g)) & 15u) * 0x204081u) & 0x01010101u) << 4u;
    return byte_values(q | h);
#else
    return byte_values(q);
#endif
#endif
}
#else
fn row_ref(row: u32, row_words: u32, nb: u32) -> RowRef {
    let base = group_base(row, row_words) + (row % RG) * BW;
    return RowRef(base, base, base, base);
}

// 16-byte word i of block `blk` of the row.
fn block_vec(r: RowRef, blk: u32, i: u32) -> vec4<u32> { return w[((r.base + blk * BW * RG) >> 2u) + i]; }

#ifdef T_Q6_K
// A step is quarters p and p + 2 of half h of a block (values 128h + 32p .. and 128h + 32p + 64 ..,
// units 0 and 1): the low and the high nibbles of ql bytes 64h + 32p .. + 32 (a, b), the half's
// 32 qh bytes (e, f; quarter qq takes bits 2qq of byte l), the block's 16 scales (s; quarter qq
// scales values l < 16 by scale 8h + 2qq and the rest by the next) and d (dw); first = 8h + 2p.
// (A step of all four quarters shares the qh loads but holds 28 16-byte words for 4 rows and
// ran at half the speed under llvmpipe.)
const UNITS = 2u;

fn step_load(r: RowRef, st: u32) -> Step {
    let blk = st / 4u;
    let h = (st / 2u) % 2u;
    let ql = 4u * h + 2u * (st % 2u);
    return Step(block_vec(r, blk, ql), block_vec(r, blk, ql + 1u),
                block_vec(r, blk, 8u + 2u * h), block_vec(r, blk, 9u + 2u * h),
                block_vec(r, blk, 12u), 8u * h + 2u * (st % 2u), block_vec(r, blk, 13u).x);
}

fn unit_k(st: u32, i: u32) -> u32 { return (st / 2u) * 128u + (st % 2u) * 32u + 64u * i; }

// Unit u is quarter u % 4 of half (u / 4) % 2 of block u / 8.
fn unit_step(r: RowRef, u: u32) -> Step { return step_load(r, (u / 4u) * 2u + u % 2u); }

fn unit_slot(u: u32) -> u32 { return (u % 4u) / 2u; }

fn step_unit(t: Step, i: u32) -> QB {
    return QB(t.a, t.b, t.e, t.f, 4u * i, t.first % 8u + 4u * i);
}

fn step_scale(t: Step, i: u32) -> vec4<f32> {
    let d = unpack2x16float(t.dw).x;
    let d0 = d * i8_of(t.s, t.first + 4u * i);
    let d1 = d * i8_of(t.s, t.first + 4u * i + 1u);
    return vec4<f32>(d0, d1, -32.0 * d0, -32.0 * d1);
}

fn group_q(b: QB, g: u32) -> vec4<f32> {
    let h = ((pick(b.hlo, b.hhi, g) >> b.hshift) & 0x03030303u) << 4u;
    return byte_values(((pick(b.lo, b.hi, g) >> b.shift) & NIBBLES) | h);
}
#else
// Q4_K / Q5_K: a step is group g of a block, sub-blocks 2g and 2g + 1 (units 0 and 1): the low
// and the high nibbles of its 32 bytes (a, b), scaled by d * scale - dmin * min (6-bit, packed
// in the header's words 1..3: s); Q5_K's 5th bits are bit (sub-block) of the 32 qh bytes (e, f).
const UNITS = 2u;
#ifdef T_Q5_K
const QS_AT = 3u;   // the nibbles start at word 12, after 32 bytes of high bits at word 4
#else
const QS_AT = 1u;
#endif

fn step_load(r: RowRef, st: u32) -> Step {
    let blk = st / 4u;
    let g = st % 4u;
    let z = vec4<u32>(0u);
#ifdef T_Q5_K
    let e = block_vec(r, blk, 1u);
    let f = block_vec(r, blk, 2u);
#else
    let e = z;
    let f = z;
#endif
    return Step(block_vec(r, blk, QS_AT + 2u * g), block_vec(r, blk, QS_AT + 2u * g + 1u), e, f,
                block_vec(r, blk, 0u), 2u * g, 0u);
}

fn unit_step(r: RowRef, u: u32) -> Step { return step_load(r, u / 2u); }

fn step_unit(t: Step, i: u32) -> QB { return QB(t.a, t.b, t.e, t.f, 4u * i, t.first + i); }

fn step_scale(t: Step, i: u32) -> vec4<f32> {
    let sb = t.first + i;
    let dm = unpack2x16float(t.s.x);
    let sv = vec4<u32>(t.s.y, t.s.z, t.s.w, 0u);
    var sm: vec2<f32>;
    if (sb < 4u) {
        sm = vec2<f32>(f32(byte_of(sv, sb) & 63u), f32(byte_of(sv, sb + 4u) & 63u));
    } else {
        let x = byte_of(sv, sb + 4u);
        sm = vec2<f32>(f32((x & 15u) | ((byte_of(sv, sb - 4u) >> 6u) << 4u)),
                       f32((x >> 4u) | ((byte_of(sv, sb) >> 6u) << 4u)));
    }
    let d = dm.x * sm.x;
    let c = -dm.y * sm.y;
    return vec4<f32>(d, d, c, c);
}

fn group_q(b: QB, g: u32) -> vec4<f32> {
    let q = (pick(b.lo, b.hi, g) >> b.shift) & NIBBLES;
#ifdef T_Q5_K
    return byte_values(q | (((pick(b.hlo, b.hhi, g) >> b.hshift) & 0x01010101u) << 4u));
#else
    return byte_values(q);
#endif
}
#endif
#endif

#ifndef T_Q6_K
// The first value of unit i of step st, and unit u's place in its step.
fn unit_k(st: u32, i: u32) -> u32 { return (st * UNITS + i) * 32u; }
fn unit_slot(u: u32) -> u32 { return u % UNITS; }
#endif

// Values 4g .. 4g + 8 of unit u (g even).
fn deq8(r: RowRef, u: u32, g: u32) -> V8 {
    let t = unit_step(r, u);
    let s = step_scale(t, unit_slot(u));
    let b = step_unit(t, unit_slot(u));
    let d = select(s.y, s.x, g < 4u);
    let c = select(s.w, s.z, g < 4u);
    return V8(group_q(b, g) * d + c, group_q(b, g + 1u) * d + c);
}
