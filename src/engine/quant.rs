//! ggml tensor blocks: f32 <-> F32 / F16 / BF16 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q2_K .. Q6_K / MXFP4.
//!
//! Written from ggml's reference code (`ggml-quants.c`: `dequantize_row_*` and `quantize_row_*_ref`,
//! with `make_qx_quants`, `make_q3_quants` and `make_qkx2_quants` for the K-quants), because that is
//! what `llama-quantize` runs when it has no importance matrix: given the same f32 values, [`quantize`]
//! writes the same bytes, and [`dequantize`] gives the same f32 values as ggml. That only holds if every
//! floating-point operation happens in ggml's order with ggml's rounding, so the code below keeps the
//! reference's expression shapes (`w * x * l` is `(w * x) * l`, sums run element by element, scales
//! are divided, not multiplied by an inverse, where ggml divides) even where another form would read
//! better. Rust never contracts `a * b + c` into a fused multiply-add, and neither does the ggml
//! build llama.cpp ships for its reference functions, so the two agree bit for bit.
//!
//! Why not candle-core's `k_quants` (0.11): it brings about a hundred more crates (gemm, rayon, zip,
//! tokenizers, ...), two more minutes of clean release build on two cores, and its `from_float`
//! for Q2_K / Q4_K / Q5_K still uses the older `make_qkx1_quants` search, so it would not write
//! what `llama-quantize` writes.
//!
//! Speed: the K-quant searches are long chains of dependent float additions (ggml sums in element
//! order, and changing that order changes the bytes). Run one sub-block at a time they are bound by
//! add latency, so the searches here run all sub-blocks of a super-block side by side: lane `k` of
//! each `[f32; LANES]` is sub-block `k`, every lane does exactly ggml's sequence of operations, and
//! the compiler turns the lane loops into SIMD. Decisions ggml takes with `if` become per-lane masks.
//! Several super-blocks go side by side (more lanes), each encoder is compiled for the baseline, AVX2
//! and AVX-512 and picked at run time ([`Simd`]), and work that cannot change a byte is skipped (levels
//! no one reads, `nearest_int`'s integer round trip where the value is provably small). Every level
//! writes the same bytes; the tests compare them with ggml's and with each other.
//!
//! Everything is a pure function of its arguments: no allocation, no global state, safe to call from
//! any number of threads.

// Index loops mirror ggml's reference code line by line (and keep lanes and elements apart in the
// lane-parallel searches), which iterator chains would obscure.
#![allow(clippy::needless_range_loop)]

use crate::formats::gguf::GgmlType;

mod simd;
pub use simd::Simd;

/// Why a conversion could not run.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// A type without a codec here (see [`can_quantize`], [`can_dequantize`]).
    #[error("tensor type {0} cannot be converted to or from f32 by this tool")]
    Unsupported(GgmlType),
    /// The input is not a whole number of blocks.
    #[error("{ty}: {len} {unit} is not a whole number of blocks of {block}")]
    PartialBlock {
        /// The type converted to or from.
        ty: GgmlType,
        /// The input's length, in `unit`s.
        len: usize,
        /// `bytes` (dequantizing) or `values` (quantizing).
        unit: &'static str,
        /// The block, in `unit`s.
        block: usize,
    },
    /// The output's length is not what the input's blocks give.
    #[error("{ty}: {values} values do not fit {bytes} bytes of blocks ({block} values per {block_bytes} bytes)")]
    SizeMismatch {
        /// The type converted to or from.
        ty: GgmlType,
        /// Length of the f32 side.
        values: usize,
        /// Length of the encoded side, in bytes.
        bytes: usize,
        /// Values per block.
        block: usize,
        /// Bytes per block.
        block_bytes: usize,
    },
}

/// `(elements per block, bytes per block)` of the types this module converts.
fn layout(ty: GgmlType) -> Option<(usize, usize)> {
    Some(match ty {
        GgmlType::F32 => (1, 4),
        GgmlType::F16 | GgmlType::BF16 => (1, 2),
        GgmlType::Q4_0 => (32, 18),
        GgmlType::Q4_1 => (32, 20),
        GgmlType::Q5_0 => (32, 22),
        GgmlType::Q5_1 => (32, 24),
        GgmlType::Q8_0 => (32, 34),
        GgmlType::Q2_K => (QK_K, 84),
        GgmlType::Q3_K => (QK_K, 110),
        GgmlType::Q4_K => (QK_K, 144),
        GgmlType::Q5_K => (QK_K, 176),
        GgmlType::Q6_K => (QK_K, 210),
        GgmlType::MXFP4 => (32, 17),
        _ => return None,
    })
}

/// Whether this tool can turn f32 values back into this type.
pub fn can_quantize(ty: GgmlType) -> bool {
    layout(ty).is_some()
}

/// Whether this tool can read the type as f32.
pub fn can_dequantize(ty: GgmlType) -> bool {
    layout(ty).is_some()
}

/// Elements per block (1 for float types), or 0 for a type this module does not handle.
pub fn block_len(ty: GgmlType) -> usize {
    layout(ty).map_or(0, |(n, _)| n)
}

/// Bytes per block, or 0 for a type this module does not handle.
pub fn block_bytes(ty: GgmlType) -> usize {
    layout(ty).map_or(0, |(_, b)| b)
}

/// Decodes `src` (a whole number of blocks of `ty`, little-endian as in GGUF) into `dst`
/// (len = blocks * block_len), giving exactly the values ggml's `dequantize_row_*` gives.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let (qk, bs) = layout(ty).ok_or(QuantError::Unsupported(ty))?;
    if !src.len().is_multiple_of(bs) {
        return Err(QuantError::PartialBlock {
            ty,
            len: src.len(),
            unit: "bytes",
            block: bs,
        });
    }
    if dst.len() != src.len() / bs * qk {
        return Err(QuantError::SizeMismatch {
            ty,
            values: dst.len(),
            bytes: src.len(),
            block: qk,
            block_bytes: bs,
        });
    }
    match ty {
        GgmlType::F32 => {
            for (b, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
                *y = fp16_to_fp32(u16::from_le_bytes([b[0], b[1]]));
            }
        }
        GgmlType::BF16 => {
            for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
                *y = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        GgmlType::Q4_0 => blocks(src, dst, dequantize_q4_0),
        GgmlType::Q4_1 => blocks(src, dst, dequantize_q4_1),
        GgmlType::Q5_0 => blocks(src, dst, dequantize_q5_0),
        GgmlType::Q5_1 => blocks(src, dst, dequantize_q5_1),
        GgmlType::Q8_0 => blocks(src, dst, dequantize_q8_0),
        GgmlType::Q2_K => blocks(src, dst, dequantize_q2_k),
        GgmlType::Q3_K => blocks(src, dst, dequantize_q3_k),
        GgmlType::Q4_K => blocks(src, dst, dequantize_q4_k),
        GgmlType::Q5_K => blocks(src, dst, dequantize_q5_k),
        GgmlType::Q6_K => blocks(src, dst, dequantize_q6_k),
        GgmlType::MXFP4 => blocks(src, dst, dequantize_mxfp4),
        _ => unreachable!("layout() covers the same types"),
    }
    Ok(())
}

/// Encodes `src` (len a multiple of block_len) into `dst` (exactly the bytes `ty` takes), with
/// ggml's reference quantizers (`quantize_row_*_ref`), so the output equals what llama-quantize
/// writes without an importance matrix. Runs at the highest [`Simd`] level this CPU has, capped by
/// `OLLAMA_TOOLS_SIMD`.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    quantize_with(Simd::current(), ty, src, dst)
}

/// [`quantize`] at a given instruction-set level (the bytes are the same at every level; tests and
/// benchmarks compare them). Panics if the CPU cannot run `level` (not in [`Simd::available`]).
pub fn quantize_with(level: Simd, ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    assert!(level.supported(), "this CPU cannot run the {} encoders", level.name());
    let (qk, bs) = layout(ty).ok_or(QuantError::Unsupported(ty))?;
    if !src.len().is_multiple_of(qk) {
        return Err(QuantError::PartialBlock {
            ty,
            len: src.len(),
            unit: "values",
            block: qk,
        });
    }
    if dst.len() != src.len() / qk * bs {
        return Err(QuantError::SizeMismatch {
            ty,
            values: src.len(),
            bytes: dst.len(),
            block: qk,
            block_bytes: bs,
        });
    }
    match ty {
        GgmlType::F32 => {
            for (x, b) in src.iter().zip(dst.chunks_exact_mut(4)) {
                b.copy_from_slice(&x.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (x, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
                b.copy_from_slice(&fp32_to_fp16(*x).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (x, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
                b.copy_from_slice(&fp32_to_bf16(*x).to_le_bytes());
            }
        }
        GgmlType::Q4_0 => encode_q4_0(level, src, dst),
        GgmlType::Q4_1 => encode_q4_1(level, src, dst),
        GgmlType::Q5_0 => encode_q5_0(level, src, dst),
        GgmlType::Q5_1 => encode_q5_1(level, src, dst),
        GgmlType::Q8_0 => encode_q8_0(level, src, dst),
        GgmlType::Q2_K => encode_q2_k(level, src, dst),
        GgmlType::Q3_K => encode_q3_k(level, src, dst),
        GgmlType::Q4_K => encode_q4_k(level, src, dst),
        GgmlType::Q5_K => encode_q5_k(level, src, dst),
        GgmlType::Q6_K => encode_q6_k(level, src, dst),
        GgmlType::MXFP4 => encode_mxfp4(level, src, dst),
        _ => unreachable!("layout() covers the same types"),
    }
    Ok(())
}

/// Runs a per-block decoder over whole blocks (fixed-size arrays let the compiler drop the bounds
/// checks inside the block functions).
#[inline(always)]
fn blocks<const BS: usize, const QK: usize>(src: &[u8], dst: &mut [f32], f: impl Fn(&[u8; BS], &mut [f32; QK])) {
    for (b, y) in src.chunks_exact(BS).zip(dst.chunks_exact_mut(QK)) {
        f(b.try_into().unwrap(), y.try_into().unwrap());
    }
}

/// Defines `$name(level, src, dst)`, which runs the per-block encoder `$block` over whole blocks,
/// compiled once per [`Simd`] level: the K-quant searches are SIMD across lanes, and 8- or 16-wide
/// vectors do them several times as fast as the 4-wide baseline. The results are the same at every
/// level (the same IEEE operations; Rust never fuses a multiply and an add). A macro rather than a
/// generic function so that `$block` is called directly, and so really inlined into each copy.
macro_rules! encoder {
    // One block at a time.
    ($name:ident, $block:ident, $qk:expr, $bs:expr) => {
        encoder!(@ $name, fn run(src: &[f32], dst: &mut [u8]) {
            for (x, b) in src.chunks_exact($qk).zip(dst.chunks_exact_mut($bs)) {
                $block(x.try_into().unwrap(), b.try_into().unwrap());
            }
        }, run, run, run);
    };
    // `$group::<G, LANES>` encodes G blocks at once, searching their `LANES = G * $lanes` sub-blocks
    // side by side; a short last group goes in padded with zero blocks. G per level (scalar, AVX2,
    // AVX-512): enough lanes that the searches' dependent addition chains have independent work
    // beside them, but no more than the vector registers hold without spilling.
    (groups $name:ident, $group:ident, $qk:expr, $bs:expr, $lanes:literal, [$g0:literal, $g2:literal, $g5:literal]) => {
        encoder!(@ $name, fn run<const G: usize, const LANES: usize>(src: &[f32], dst: &mut [u8]) {
            let mut xs = src.chunks_exact(G * $qk);
            let mut ys = dst.chunks_exact_mut(G * $bs);
            for (x, b) in (&mut xs).zip(&mut ys) {
                $group::<G, LANES>(x, b);
            }
            let (x, b) = (xs.remainder(), ys.into_remainder());
            if !x.is_empty() {
                let mut x2 = [[0.0f32; $qk]; G];
                x2.as_flattened_mut()[..x.len()].copy_from_slice(x);
                let mut b2 = [[0u8; $bs]; G];
                $group::<G, LANES>(x2.as_flattened(), b2.as_flattened_mut());
                b.copy_from_slice(&b2.as_flattened()[..b.len()]);
            }
        }, run::<$g0, { $g0 * $lanes }>, run::<$g2, { $g2 * $lanes }>, run::<$g5, { $g5 * $lanes }>);
    };
    (@ $name:ident, $run:item, $r0:expr, $r2:expr, $r5:expr) => {
        fn $name(level: Simd, src: &[f32], dst: &mut [u8]) {
            #[inline(always)]
            $run
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            unsafe fn run_avx2(src: &[f32], dst: &mut [u8]) {
                $r2(src, dst)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
            unsafe fn run_avx512(src: &[f32], dst: &mut [u8]) {
                $r5(src, dst)
            }
            match level {
                // SAFETY: `quantize_with` checked that the CPU supports `level`, the only
                // requirement of these copies.
                #[cfg(target_arch = "x86_64")]
                Simd::Avx2 => unsafe { run_avx2(src, dst) },
                #[cfg(target_arch = "x86_64")]
                Simd::Avx512 => unsafe { run_avx512(src, dst) },
                _ => $r0(src, dst),
            }
        }
    };
}

encoder!(encode_q4_0, quantize_q4_0, 32, 18);
encoder!(encode_q4_1, quantize_q4_1, 32, 20);
encoder!(encode_q5_0, quantize_q5_0, 32, 22);
encoder!(encode_q5_1, quantize_q5_1, 32, 24);
encoder!(encode_q8_0, quantize_q8_0, 32, 34);
encoder!(encode_mxfp4, quantize_mxfp4, 32, 17);
// Group sizes measured on a Xeon with AVX-512: more lanes than this spill at AVX2 (16 vector
// registers); at AVX-512 (32 registers) 64 lanes of 16 values beat 32, and 128 gain nothing.
encoder!(groups encode_q2_k, quantize_q2_k, QK_K, 84, 16, [1, 2, 4]);
encoder!(groups encode_q3_k, quantize_q3_k, QK_K, 110, 16, [1, 2, 4]);
encoder!(groups encode_q4_k, quantize_q4_k, QK_K, 144, 8, [2, 2, 4]);
encoder!(groups encode_q5_k, quantize_q5_k, QK_K, 176, 8, [2, 2, 4]);
encoder!(groups encode_q6_k, quantize_q6_k, QK_K, 210, 16, [1, 2, 4]);

// ---------------------------------------------------------------------------------------------
// Scalars
// ---------------------------------------------------------------------------------------------

const QK_K: usize = 256;
/// ggml's threshold under which a group counts as all zero (`GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// IEEE half -> f32, exact (a rebias of the bits; subnormal halves go through one exact float op).
#[inline(always)]
fn fp16_to_fp32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let exp = (h >> 10) & 0x1f;
    let man = h & 0x3ff;
    let bits = if exp == 0x1f {
        sign | 0x7f80_0000 | (man << 13)
    } else if exp != 0 {
        sign | ((exp + 112) << 23) | (man << 13)
    } else {
        // 0 or subnormal: man * 2^-24 is exact in f32.
        sign | (man as f32 * f32::from_bits(0x3380_0000)).to_bits()
    };
    f32::from_bits(bits)
}

/// f32 -> IEEE half, round to nearest even, NaN -> quiet NaN 0x7E00 with the sign: the behaviour of
/// ggml's portable `ggml_compute_fp32_to_fp16`. The trick: scaling |f| by 2^112 then 2^-110 makes
/// out-of-range values overflow to infinity and lets one float addition of a power of two (chosen
/// from the exponent, at least 2^-14 for subnormal results) do the rounding to 10 mantissa bits.
#[inline(always)]
fn fp32_to_fp16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xff00_0000).max(0x7100_0000);
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x7c00;
    let mantissa_bits = bits & 0x0fff;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16) | if shl1_w > 0xff00_0000 { 0x7e00 } else { nonsign }) as u16
}

/// f32 -> bfloat16 as ggml's `ggml_compute_fp32_to_bf16`: round to nearest even, NaN made quiet.
#[inline(always)]
fn fp32_to_bf16(f: f32) -> u16 {
    let u = f.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// Half at `b[at..at + 2]` as f32.
#[inline(always)]
fn half_at(b: &[u8], at: usize) -> f32 {
    fp16_to_fp32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// ggml's `nearest_int`: adding 1.5 * 2^23 leaves round(f) (ties to even) in the low mantissa bits.
/// Kept as a bit trick rather than `round_ties_even` so that out-of-range inputs give the same
/// (meaningless, later clamped) values as in ggml, and because it vectorizes.
#[inline(always)]
fn nearest_int(f: f32) -> i32 {
    ((f + 12_582_912.0).to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// C's `roundf` (halves away from zero) for the |x| <= 127.x values Q8_0 rounds, then the cast to
/// an integer ([`c_f32_to_i32`]; a float of 2^31 or more is already an integer); `f32::round`
/// would be a libm call on baseline x86-64.
#[inline(always)]
fn round_away(x: f32) -> i32 {
    let t = c_f32_to_i32(x);
    let frac = x - t as f32;
    // t = i32::MIN only for NaN, infinities and |x| >= 2^31, where C's cast of roundf(x) gives it too.
    if t == i32::MIN {
        t
    } else {
        t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
    }
}

/// C's `(int8_t)f` for a float in (roughly) [0, 32]: truncation toward zero.
#[inline(always)]
fn trunc_i8(f: f32) -> i8 {
    c_f32_to_i32(f) as i8
}

/// C's float -> integer cast as ggml's x86-64 build runs it (`cvttss2si`, of which the narrower casts
/// keep the low bits): truncation toward zero, and i32::MIN for NaN or a value outside the i32 range,
/// where Rust's `as` saturates. Such values come from blocks whose largest magnitude is so small that
/// the inverse scale overflows to infinity (all below about 2^-126): ggml then writes code 0 where a
/// saturating cast would give the top code.
#[inline(always)]
fn c_f32_to_i32(f: f32) -> i32 {
    if f.abs() < 2_147_483_648.0 {
        // SAFETY: f is not NaN and truncates to a value in i32's range. (Unchecked so that no
        // saturation is computed only to be thrown away: this is `cvttss2si` itself.)
        unsafe { f.to_int_unchecked() }
    } else {
        i32::MIN
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the 12 packed bytes.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// 32-element blocks
// ---------------------------------------------------------------------------------------------

fn dequantize_q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let qs = &b[2..18];
    for j in 0..16 {
        y[j] = ((qs[j] & 0xf) as i32 - 8) as f32 * d;
        y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
    }
}

fn dequantize_q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qs = &b[4..20];
    for j in 0..16 {
        y[j] = (qs[j] & 0xf) as f32 * d + m;
        y[j + 16] = (qs[j] >> 4) as f32 * d + m;
    }
}

fn dequantize_q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..22];
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (((qs[j] & 0xf) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

fn dequantize_q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = half_at(b, 0);
    let m = half_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..24];
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((qs[j] & 0xf) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((qs[j] >> 4) as u32 | h1) as f32 * d + m;
    }
}

fn dequantize_q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = half_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// The value with the largest magnitude, sign kept (the first one on ties), as the Q4_0 / Q5_0
/// reference picks it: its level is the extreme -8 (-16), which gives the block one level more on
/// the other side.
///
/// ggml's loop skips NaN and keeps the first of equal magnitudes; so does this, in two passes that
/// need no sequential chain: the largest magnitude, then the first value that has it.
#[inline(always)]
fn signed_absmax(x: &[f32; 32]) -> f32 {
    let amax = absmax_skipping_nan(x);
    if amax == 0.0 {
        return 0.0; // ggml's `max` keeps its initial +0.0 (a -0.0 in x never replaces it)
    }
    let mut first = 0u32;
    for j in 0..32 {
        first |= ((x[j].abs() == amax) as u32) << j;
    }
    x[first.trailing_zeros() as usize]
}

/// The largest magnitude in `x`, NaN skipped, 0 at least: `max` is exact, so any grouping of the
/// comparisons gives the same value; 8 running maxima make the loop SIMD instead of one chain.
#[inline(always)]
fn absmax_skipping_nan(x: &[f32; 32]) -> f32 {
    let mut m = [0.0f32; 8];
    for c in x.chunks_exact(8) {
        for k in 0..8 {
            let a = c[k].abs();
            m[k] = if a > m[k] { a } else { m[k] };
        }
    }
    m.into_iter().fold(0.0f32, |acc, a| if a > acc { a } else { acc })
}

#[inline(always)]
fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 { 1.0 / d } else { 0.0 }
}

#[inline(always)]
fn quantize_q4_0(x: &[f32; 32], y: &mut [u8; 18]) {
    let d = signed_absmax(x) / -8.0;
    let id = inverse_or_zero(d);
    y[0..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
    for j in 0..16 {
        let x0 = trunc_i8(x[j] * id + 8.5).min(15) as u8;
        let x1 = trunc_i8(x[j + 16] * id + 8.5).min(15) as u8;
        y[2 + j] = x0 | (x1 << 4);
    }
}

/// Min and max as the Q4_1 / Q5_1 reference finds them (comparisons, so NaN is skipped).
#[inline(always)]
fn min_max(x: &[f32; 32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

#[inline(always)]
fn quantize_q4_1(x: &[f32; 32], y: &mut [u8; 20]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = inverse_or_zero(d);
    y[0..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
    y[2..4].copy_from_slice(&fp32_to_fp16(min).to_le_bytes());
    for j in 0..16 {
        let x0 = trunc_i8((x[j] - min) * id + 0.5).min(15) as u8;
        let x1 = trunc_i8((x[j + 16] - min) * id + 0.5).min(15) as u8;
        y[4 + j] = x0 | (x1 << 4);
    }
}

#[inline(always)]
fn quantize_q5_0(x: &[f32; 32], y: &mut [u8; 22]) {
    let d = signed_absmax(x) / -16.0;
    let id = inverse_or_zero(d);
    y[0..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let x0 = trunc_i8(x[j] * id + 16.5).min(31) as u8;
        let x1 = trunc_i8(x[j + 16] * id + 16.5).min(31) as u8;
        y[6 + j] = (x0 & 0xf) | ((x1 & 0xf) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    y[2..6].copy_from_slice(&qh.to_le_bytes());
}

#[inline(always)]
fn quantize_q5_1(x: &[f32; 32], y: &mut [u8; 24]) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = inverse_or_zero(d);
    y[0..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
    y[2..4].copy_from_slice(&fp32_to_fp16(min).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        // No clamp here in ggml (`(uint8_t)(x0 + 0.5f)`): the top value lands on 31 anyway.
        let x0 = c_f32_to_i32((x[j] - min) * id + 0.5) as u8;
        let x1 = c_f32_to_i32((x[j + 16] - min) * id + 0.5) as u8;
        y[8 + j] = (x0 & 0xf) | ((x1 & 0xf) << 4);
        qh |= (((x0 & 0x10) >> 4) as u32) << j;
        qh |= (((x1 & 0x10) >> 4) as u32) << (j + 16);
    }
    y[4..8].copy_from_slice(&qh.to_le_bytes());
}

#[inline(always)]
fn quantize_q8_0(x: &[f32; 32], y: &mut [u8; 34]) {
    let amax = if x.iter().any(|v| v.is_nan()) {
        // ggml's MAX(amax, fabsf(v)), in its order: a NaN survives only when no larger value follows.
        x.iter()
            .fold(0.0f32, |amax, v| if amax > v.abs() { amax } else { v.abs() })
    } else {
        absmax_skipping_nan(x)
    };
    let d = amax / 127.0;
    let id = inverse_or_zero(d);
    y[0..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
    for j in 0..32 {
        y[2 + j] = round_away(x[j] * id) as i8 as u8;
    }
}

// ---------------------------------------------------------------------------------------------
// MXFP4: 32 e2m1 values sharing one power-of-two (E8M0) scale
// ---------------------------------------------------------------------------------------------

/// ggml's `kvalues_mxfp4`: the e2m1 values doubled, so that they are integers (the scale is halved
/// to match). Codes 8..15 are the negatives of 0..7; code 8 is -0, which the quantizer never picks.
const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// ggml's `GGML_E8M0_TO_FP32_HALF`: 2^(e - 128), half the E8M0 scale because the table is doubled.
/// e = 0 and 1 give the subnormals 2^-128 and 2^-127; e = 255 is 2^127, not NaN, as in ggml.
#[inline(always)]
fn e8m0_to_fp32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

fn dequantize_mxfp4(b: &[u8; 17], y: &mut [f32; 32]) {
    let d = e8m0_to_fp32_half(b[0]);
    for j in 0..16 {
        y[j] = KVALUES_MXFP4[(b[1 + j] & 0xf) as usize] as f32 * d;
        y[j + 16] = KVALUES_MXFP4[(b[1 + j] >> 4) as usize] as f32 * d;
    }
}

/// The shared exponent as ggml computes it, `(uint8_t)(floorf(log2f(amax)) - 2 + 127)`, 0 for a
/// zero block. Two details decide bytes:
/// - `log2f` is the C library's in both (Rust's `f32::log2` calls it). It rounds log2 of values a
///   few ulps below a power of two up to the integer, and floor then takes the higher exponent.
/// - The float -> uint8 cast is undefined in C outside [0, 255]. ggml's x86-64 build truncates to a
///   32-bit int and keeps the low byte (`cvttss2si`), so an amax below 2^-125 wraps round to
///   e = 232..255 (all codes 0), and an infinite amax, whose int is 0x80000000, gives e = 0.
#[inline(always)]
fn mxfp4_exponent(amax: f32) -> u8 {
    if amax <= 0.0 {
        return 0;
    }
    let e = amax.log2().floor() - 2.0 + 127.0;
    if e.is_finite() { e as i32 as u8 } else { 0 }
}

/// ggml's `best_index_mxfp4` for a whole block: the code whose value `k * d` is nearest. The scan
/// moves only on a strictly smaller error, so a tie keeps the lower code (the smaller magnitude,
/// +0 over -0) and NaN keeps code 0. Codes in the outer loop, values in the inner one: every value
/// still sees the codes in ggml's order, and the inner loop becomes SIMD compares and blends.
#[inline(always)]
fn mxfp4_codes(x: &[f32; 32], d: f32) -> [u8; 32] {
    // Codes kept as u32, the width of the f32 errors, so that one mask selects both.
    let mut best = [0u32; 32];
    let mut best_err = [0f32; 32];
    let v0 = KVALUES_MXFP4[0] as f32 * d;
    for j in 0..32 {
        best_err[j] = (v0 - x[j]).abs();
    }
    for i in 1..16 {
        let v = KVALUES_MXFP4[i] as f32 * d;
        for j in 0..32 {
            let err = (v - x[j]).abs();
            let better = err < best_err[j];
            best[j] = if better { i as u32 } else { best[j] };
            best_err[j] = if better { err } else { best_err[j] };
        }
    }
    best.map(|c| c as u8)
}

#[inline(always)]
fn quantize_mxfp4(x: &[f32; 32], y: &mut [u8; 17]) {
    let mut amax = 0.0f32;
    for &v in x {
        // The comparison skips NaN, as ggml's does.
        if amax < v.abs() {
            amax = v.abs();
        }
    }
    let e = mxfp4_exponent(amax);
    let q = mxfp4_codes(x, e8m0_to_fp32_half(e));
    y[0] = e;
    for j in 0..16 {
        y[1 + j] = q[j] | (q[j + 16] << 4);
    }
}

// ---------------------------------------------------------------------------------------------
// K-quants: 256-element super-blocks
// ---------------------------------------------------------------------------------------------

fn dequantize_q2_k(b: &[u8; 84], y: &mut [f32; 256]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = half_at(b, 80);
    let min = half_at(b, 82);
    let mut is = 0;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0xf) as f32;
                let ml = min * (sc >> 4) as f32;
                let out = &mut y[128 * n + 32 * j + 16 * half..][..16];
                for l in 0..16 {
                    out[l] = dl * ((q[16 * half + l] >> shift) & 3) as f32 - ml;
                }
            }
        }
    }
}

fn dequantize_q3_k(b: &[u8; 110], y: &mut [f32; 256]) {
    let hm = &b[0..32];
    let qs = &b[32..96];
    let sc = &b[96..108];
    let d_all = half_at(b, 108);
    let mut m = 1u8;
    let mut is = 0;
    for n in 0..2 {
        let q = &qs[32 * n..32 * n + 32];
        for j in 0..4 {
            let shift = 2 * j;
            for half in 0..2 {
                let dl = d_all * (q3k_scale(sc, is) as i32 - 32) as f32;
                is += 1;
                let out = &mut y[128 * n + 32 * j + 16 * half..][..16];
                for l in 0..16 {
                    let i = 16 * half + l;
                    let v = ((q[i] >> shift) & 3) as i32 - if hm[i] & m != 0 { 0 } else { 4 };
                    out[l] = dl * v as f32;
                }
            }
            m <<= 1;
        }
    }
}

/// The 6-bit scale of sub-block `j` of a Q3_K block (low 4 bits in bytes 0..8, high 2 in 8..12).
#[inline(always)]
fn q3k_scale(sc: &[u8], j: usize) -> u8 {
    let low = if j < 8 { sc[j] & 0xf } else { sc[j - 8] >> 4 };
    low | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)
}

fn dequantize_q4_k(b: &[u8; 144], y: &mut [f32; 256]) {
    let d = half_at(b, 0);
    let min = half_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for n in 0..4 {
        let q = &qs[32 * n..32 * n + 32];
        let (sc1, m1) = scale_min_k4(2 * n, scales);
        let (sc2, m2) = scale_min_k4(2 * n + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let out = &mut y[64 * n..64 * n + 64];
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0xf) as f32 - m1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn dequantize_q5_k(b: &[u8; 176], y: &mut [f32; 256]) {
    let d = half_at(b, 0);
    let min = half_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for n in 0..4 {
        let ql = &qs[32 * n..32 * n + 32];
        let (u1, u2) = (1u8 << (2 * n), 2u8 << (2 * n));
        let (sc1, m1) = scale_min_k4(2 * n, scales);
        let (sc2, m2) = scale_min_k4(2 * n + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let out = &mut y[64 * n..64 * n + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((ql[l] & 0xf) + h1) as f32 - m1;
            out[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

fn dequantize_q6_k(b: &[u8; 210], y: &mut [f32; 256]) {
    let d = half_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let out = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

/// Lays groups of N values out as `t[i][k] = x[N * k + i]`: lane `k` is group `k`.
#[inline(always)]
fn transpose<const N: usize, const LANES: usize>(x: &[f32]) -> [[f32; LANES]; N] {
    assert_eq!(x.len(), N * LANES);
    let mut t = [[0.0f32; LANES]; N];
    for k in 0..LANES {
        for i in 0..N {
            t[i][k] = x[N * k + i];
        }
    }
    t
}

/// What `make_qkx2_quants` found for each lane: the scale, the min (`-min`, so >= 0), and what its
/// levels are a function of, so that they are computed only where they are used.
struct Qkx2<const LANES: usize> {
    scale: [f32; LANES],
    min: [f32; LANES],
    /// The inverse scale and the min the best candidate's levels were taken with.
    iscale: [f32; LANES],
    qmin: [f32; LANES],
    /// All values equal: ggml returns levels 0 (and scale 0).
    flat: [bool; LANES],
    nmax: i32,
}

impl<const LANES: usize> Qkx2<LANES> {
    /// The levels ggml's `make_qkx2_quants` returns for lane `k`, whose values are `x`.
    #[inline(always)]
    fn levels(&self, k: usize, x: &[f32], out: &mut [u8]) {
        for (o, &v) in out.iter_mut().zip(x) {
            let l = qkx2_level(self.iscale[k], v, self.qmin[k], self.nmax) as u8;
            *o = if self.flat[k] { 0 } else { l };
        }
    }
}

/// ggml's `make_qkx2_quants` (levels `0..=nmax` with a scale and a min, searched over `nstep + 1`
/// candidate inverse scales, keeping the one with the lowest weighted error) on LANES groups of N
/// values at once (`x[i][k]` is value `i` of lane `k`).
///
/// One function on purpose: split into steps that take and return lane arrays, the compiler stopped
/// keeping them in registers and Q4_K fell from ~200 to ~144 M values/s per core (the throughput
/// bench at AVX-512).
#[inline(always)]
fn make_qkx2_quants<const N: usize, const LANES: usize>(
    x: &[[f32; LANES]; N],
    w: &[[f32; LANES]; N],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> Qkx2<LANES> {
    let nmaxf = nmax as f32;
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = [0.0f32; LANES];
    let mut no_nan = [true; LANES];
    for k in 0..LANES {
        sum_x[k] = sum_w[k] * x[0][k];
    }
    for i in 0..N {
        for k in 0..LANES {
            let v = x[i][k];
            min[k] = if v < min[k] { v } else { min[k] };
            max[k] = if v > max[k] { v } else { max[k] };
            if i > 0 {
                sum_w[k] += w[i][k];
                sum_x[k] += w[i][k] * v;
            }
            no_nan[k] &= !v.is_nan();
        }
    }
    let lowest = min;
    // A lane whose values are all equal (after pulling min up to 0) returns at once in ggml; here it
    // runs along with its updates masked off, and gets ggml's answer at the end.
    let mut flat = [false; LANES];
    let mut iscale = [0.0f32; LANES];
    let mut scale = [0.0f32; LANES];
    for k in 0..LANES {
        if min[k] > 0.0 {
            min[k] = 0.0;
        }
        flat[k] = max[k] == min[k];
        iscale[k] = nmaxf / (max[k] - min[k]);
        scale[k] = 1.0 / iscale[k];
    }
    let mut aux = [[0.0f32; LANES]; N];
    for i in 0..N {
        for k in 0..LANES {
            aux[i][k] = qkx2_level(iscale[k], x[i][k], min[k], nmax);
        }
    }
    let mut best_error = qkx2_error(x, w, &aux, &scale, &min, use_mad);
    // The best candidate's levels are a function of its inverse scale and of the min they were
    // taken against: keeping those two and recomputing the levels where needed gives the same
    // levels as copying them at every improvement, without the copying.
    let mut best_iscale = iscale;
    let mut best_qmin = min;
    for is in 0..=nstep {
        for k in 0..LANES {
            iscale[k] = (rmin + rdelta * is as f32 + nmaxf) / (max[k] - min[k]);
        }
        // fl(iscale * fl(x - min)) lies between its values at the lane's lowest and highest x, by the
        // monotony of rounding: where those round into 0..=nmax (in every lane) no level needs
        // clamping on that side, and each clamp skipped is one vector operation of about 18 per
        // value. Flat lanes' levels are never used, so they need not be exact.
        let (mut small, mut clamp_lo, mut clamp_hi) = (true, false, false);
        for k in 0..LANES {
            let [a, b] = [lowest[k], max[k]].map(|v| iscale[k] * (v - min[k]));
            let (lo, hi) = (a.min(b), a.max(b));
            small &= flat[k] || (no_nan[k] && lo.abs() < ROUND_SMALL_LIMIT && hi.abs() < ROUND_SMALL_LIMIT);
            clamp_lo |= !flat[k] && lo <= -0.5;
            clamp_hi |= !flat[k] && hi >= nmaxf + 0.5;
        }
        let sums = match (small, clamp_lo, clamp_hi) {
            (false, _, _) => qkx2_sums::<false, true, true, N, LANES>(x, w, &iscale, &min, nmax, &mut aux),
            (true, false, false) => qkx2_sums::<true, false, false, N, LANES>(x, w, &iscale, &min, nmax, &mut aux),
            (true, false, true) => qkx2_sums::<true, false, true, N, LANES>(x, w, &iscale, &min, nmax, &mut aux),
            (true, true, false) => qkx2_sums::<true, true, false, N, LANES>(x, w, &iscale, &min, nmax, &mut aux),
            (true, true, true) => qkx2_sums::<true, true, true, N, LANES>(x, w, &iscale, &min, nmax, &mut aux),
        };
        let (ok, this_scale, this_min) = qkx2_fit(&sum_w, &sum_x, sums, &flat);
        let cur_error = qkx2_error(x, w, &aux, &this_scale, &this_min, use_mad);
        for k in 0..LANES {
            if ok[k] && cur_error[k] < best_error[k] {
                best_error[k] = cur_error[k];
                best_iscale[k] = iscale[k];
                best_qmin[k] = min[k];
                scale[k] = this_scale[k];
                min[k] = this_min[k];
            }
        }
    }
    for k in 0..LANES {
        min[k] = -min[k];
        scale[k] = if flat[k] { 0.0 } else { scale[k] };
    }
    Qkx2 {
        scale,
        min,
        iscale: best_iscale,
        qmin: best_qmin,
        flat,
        nmax,
    }
}

/// How `make_qkx2_quants` picks a level: `clamp(nearest_int(iscale * (x - min)), 0, nmax)`.
#[inline(always)]
fn qkx2_level(iscale: f32, x: f32, min: f32, nmax: i32) -> f32 {
    nearest_int(iscale * (x - min)).clamp(0, nmax) as f32
}

/// `make_qkx2_quants`' least-squares scale and min for one candidate's sums (of w l, w l², w l x):
/// (whether the fit is usable, scale, min).
#[inline(always)]
fn qkx2_fit<const LANES: usize>(
    sum_w: &[f32; LANES],
    sum_x: &[f32; LANES],
    (sum_l, sum_l2, sum_xl): ([f32; LANES], [f32; LANES], [f32; LANES]),
    flat: &[bool; LANES],
) -> ([bool; LANES], [f32; LANES], [f32; LANES]) {
    let mut ok = [false; LANES];
    let mut this_scale = [0.0f32; LANES];
    let mut this_min = [0.0f32; LANES];
    for k in 0..LANES {
        let d = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
        ok[k] = d > 0.0 && !flat[k];
        let mut s = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / d;
        let mut m = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / d;
        if m > 0.0 {
            m = 0.0;
            s = sum_xl[k] / sum_l2[k];
        }
        this_scale[k] = s;
        this_min[k] = m;
    }
    (ok, this_scale, this_min)
}

/// `make_qkx2_quants`' weighted error of the levels `l` with a scale and min: the sum, in element
/// order, of `w * diff²` (`w * |diff|` with `use_mad`), `diff = scale * l + min - x`.
#[inline(always)]
fn qkx2_error<const N: usize, const LANES: usize>(
    x: &[[f32; LANES]; N],
    w: &[[f32; LANES]; N],
    l: &[[f32; LANES]; N],
    scale: &[f32; LANES],
    min: &[f32; LANES],
    use_mad: bool,
) -> [f32; LANES] {
    let mut error = [0.0f32; LANES];
    for i in 0..N {
        for k in 0..LANES {
            let diff = scale[k] * l[i][k] + min[k] - x[i][k];
            let diff = if use_mad { diff.abs() } else { diff * diff };
            error[k] += w[i][k] * diff;
        }
    }
    error
}

/// One candidate's levels (into `aux`) and sums (of w l, w l², w l x) in `make_qkx2_quants`. SMALL:
/// every `iscale * (x - min)` is known to be under [`ROUND_SMALL_LIMIT`] in magnitude (and not NaN),
/// so the levels can be rounded with [`round_small`]; then LO / HI: whether some level may round
/// below 0 / above nmax, so needs clamping (the general path always clamps).
#[inline(always)]
fn qkx2_sums<const SMALL: bool, const LO: bool, const HI: bool, const N: usize, const LANES: usize>(
    x: &[[f32; LANES]; N],
    w: &[[f32; LANES]; N],
    iscale: &[f32; LANES],
    min: &[f32; LANES],
    nmax: i32,
    aux: &mut [[f32; LANES]; N],
) -> ([f32; LANES], [f32; LANES], [f32; LANES]) {
    let mut sum_l = [0.0f32; LANES];
    let mut sum_l2 = [0.0f32; LANES];
    let mut sum_xl = [0.0f32; LANES];
    for i in 0..N {
        for k in 0..LANES {
            let l = if SMALL {
                let l = round_small(iscale[k] * (x[i][k] - min[k]));
                let l = if LO && l < 0.0 { 0.0 } else { l };
                if HI && l > nmax as f32 { nmax as f32 } else { l }
            } else {
                qkx2_level(iscale[k], x[i][k], min[k], nmax)
            };
            aux[i][k] = l;
            let wi = w[i][k];
            sum_l[k] += wi * l;
            sum_l2[k] += wi * l * l;
            sum_xl[k] += wi * l * x[i][k];
        }
    }
    (sum_l, sum_l2, sum_xl)
}

/// Magnitude under which [`round_small`] equals `nearest_int` (2^21; it holds up to 2^22 - 1).
const ROUND_SMALL_LIMIT: f32 = 2_097_152.0;

/// `nearest_int(t) as f32` for |t| < [`ROUND_SMALL_LIMIT`]: t + 1.5 * 2^23 lies in [2^23, 2^24), where
/// floats are the integers, so the addition rounds t to the nearest integer (ties to even, as 1.5 *
/// 2^23 is even) and the subtraction is exact: the value whose bits `nearest_int` reads. Two float
/// operations instead of four integer ones and a conversion. Callers bound t by the monotony of
/// rounding: if x lies in [a, b], `fl(s * fl(x - m))` lies between its values at a and b.
#[inline(always)]
fn round_small(t: f32) -> f32 {
    (t + 12_582_912.0) - 12_582_912.0
}

/// `clamp` of an integer-valued float, as two selects (min / max instructions); the same value as
/// clamping the integer and converting it.
#[inline(always)]
fn clamp_integral(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v < lo { lo } else { v };
    if v > hi { hi } else { v }
}

/// Per lane, the largest magnitude and the value that has it (sign kept, the first on ties): where
/// ggml's `make_qx_quants` and `make_q3_quants` start.
#[inline(always)]
fn lanes_signed_absmax<const N: usize, const LANES: usize>(x: &[[f32; LANES]; N]) -> ([f32; LANES], [f32; LANES]) {
    let mut amax = [0.0f32; LANES];
    let mut max = [0.0f32; LANES];
    for i in 0..N {
        for k in 0..LANES {
            let ax = x[i][k].abs();
            if ax > amax[k] {
                amax[k] = ax;
                max[k] = x[i][k];
            }
        }
    }
    (amax, max)
}

/// What `make_qx_quants` found for each lane: the scale, and the inverse scale its levels come from.
struct Qx<const LANES: usize> {
    scale: [f32; LANES],
    iscale: [f32; LANES],
    /// All values (near) zero: ggml returns at once, with levels 0 (not nmax) and scale 0.
    zero: [bool; LANES],
    nmax: i32,
}

impl<const LANES: usize> Qx<LANES> {
    /// The levels ggml's `make_qx_quants` returns for lane `k`, whose values are `x`.
    #[inline(always)]
    fn levels(&self, k: usize, x: &[f32], out: &mut [u8]) {
        for (o, &v) in out.iter_mut().zip(x) {
            let l = (qx_level(self.iscale[k], v, self.nmax) + self.nmax) as u8;
            *o = if self.zero[k] { 0 } else { l };
        }
    }
}

/// How `make_qx_quants` and `make_q3_quants` pick a signed level.
#[inline(always)]
fn qx_level(iscale: f32, x: f32, nmax: i32) -> i32 {
    nearest_int(iscale * x).clamp(-nmax, nmax - 1)
}

/// The weights `make_qx_quants` and `make_q3_quants` use without importance weights, `w = x * x`,
/// and `w * x`, which they multiply by the level (`w * x * l` is `(w * x) * l`).
#[inline(always)]
fn x2_weights<const N: usize, const LANES: usize>(x: &[[f32; LANES]; N]) -> ([[f32; LANES]; N], [[f32; LANES]; N]) {
    let mut w = [[0.0f32; LANES]; N];
    let mut wx = [[0.0f32; LANES]; N];
    for i in 0..N {
        for k in 0..LANES {
            w[i][k] = x[i][k] * x[i][k];
            wx[i][k] = w[i][k] * x[i][k];
        }
    }
    (w, wx)
}

/// ggml's `make_qx_quants` with `rmse_type = 1` and no importance weights (weights x²): signed levels
/// `-nmax..nmax` stored as `l + nmax`, the scale refined by least squares over 19 candidate inverse
/// scales. LANES groups of N values at once (`x[i][k]` is value `i` of lane `k`).
#[inline(always)]
fn make_qx_quants<const N: usize, const LANES: usize>(x: &[[f32; LANES]; N], nmax: i32) -> Qx<LANES> {
    let nmaxf = nmax as f32;
    let (amax, max) = lanes_signed_absmax(x);
    let (w, wx) = x2_weights(x);
    let mut zero = [false; LANES];
    let mut no_nan = [true; LANES];
    for k in 0..LANES {
        zero[k] = amax[k] < GROUP_MAX_EPS;
        for i in 0..N {
            no_nan[k] &= !x[i][k].is_nan();
        }
    }
    // |fl(iscale * x)| <= fl(|iscale| * amax) by the monotony of rounding; all-zero lanes' levels
    // are never used, so they need not be exact. (A function, not a closure: a closure that is not
    // inlined would lose the encoder's target features.)
    #[inline(always)]
    fn sums<const N: usize, const LANES: usize>(
        x: &[[f32; LANES]; N],
        (w, wx): (&[[f32; LANES]; N], &[[f32; LANES]; N]),
        (amax, zero, no_nan): (&[f32; LANES], &[bool; LANES], &[bool; LANES]),
        iscale: &[f32; LANES],
        nmax: i32,
    ) -> ([f32; LANES], [f32; LANES]) {
        let mut small = true;
        for k in 0..LANES {
            small &= zero[k] || (no_nan[k] && (iscale[k] * amax[k]).abs() < ROUND_SMALL_LIMIT);
        }
        if small {
            qx_sums::<true, N, LANES>(x, w, wx, iscale, nmax)
        } else {
            qx_sums::<false, N, LANES>(x, w, wx, iscale, nmax)
        }
    }
    let (weights, lanes) = ((&w, &wx), (&amax, &zero, &no_nan));
    let mut iscale = [0.0f32; LANES];
    for k in 0..LANES {
        iscale[k] = -nmaxf / max[k];
    }
    let (sumlx, suml2) = sums(x, weights, lanes, &iscale, nmax);
    let mut scale = [0.0f32; LANES];
    let mut best = [0.0f32; LANES];
    for k in 0..LANES {
        scale[k] = if suml2[k] != 0.0 { sumlx[k] / suml2[k] } else { 0.0 };
        best[k] = scale[k] * sumlx[k];
    }
    // As in make_qkx2_quants, the levels are recomputed from the best inverse scale where needed.
    let mut best_iscale = iscale;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        for k in 0..LANES {
            iscale[k] = -(nmaxf + 0.1 * is as f32) / max[k];
        }
        let (sumlx, suml2) = sums(x, weights, lanes, &iscale, nmax);
        for k in 0..LANES {
            if suml2[k] > 0.0 && sumlx[k] * sumlx[k] > best[k] * suml2[k] {
                scale[k] = sumlx[k] / suml2[k];
                best[k] = scale[k] * sumlx[k];
                best_iscale[k] = iscale[k];
            }
        }
    }
    for k in 0..LANES {
        scale[k] = if zero[k] { 0.0 } else { scale[k] };
    }
    Qx {
        scale,
        iscale: best_iscale,
        zero,
        nmax,
    }
}

/// `make_qx_quants`' sums for one candidate inverse scale: (sum of w x l, sum of w l²). SMALL: every
/// `iscale * x` is known to be under [`ROUND_SMALL_LIMIT`] in magnitude (and not NaN).
#[inline(always)]
fn qx_sums<const SMALL: bool, const N: usize, const LANES: usize>(
    x: &[[f32; LANES]; N],
    w: &[[f32; LANES]; N],
    wx: &[[f32; LANES]; N],
    iscale: &[f32; LANES],
    nmax: i32,
) -> ([f32; LANES], [f32; LANES]) {
    let mut sumlx = [0.0f32; LANES];
    let mut suml2 = [0.0f32; LANES];
    for i in 0..N {
        for k in 0..LANES {
            let l = if SMALL {
                clamp_integral(round_small(iscale[k] * x[i][k]), -nmax as f32, (nmax - 1) as f32)
            } else {
                qx_level(iscale[k], x[i][k], nmax) as f32
            };
            sumlx[k] += wx[i][k] * l;
            suml2[k] += w[i][k] * l * l;
        }
    }
    (sumlx, suml2)
}

/// ggml's `make_q3_quants` with `do_rmse = true`: signed levels `-nmax..nmax`, then up to five
/// passes that move single values to the level that most improves the weighted (x²) fit. Each
/// lane stops when a pass changes nothing, as in ggml. Levels come back as `l + nmax` (floats).
#[inline(always)]
fn make_q3_quants<const N: usize, const LANES: usize>(
    x: &[[f32; LANES]; N],
    nmax: i32,
    levels: &mut [[f32; LANES]; N],
    scale_out: &mut [f32; LANES],
) {
    let nmaxf = nmax as f32;
    let (amax, max) = lanes_signed_absmax(x);
    let (w, wx) = x2_weights(x);
    let mut iscale = [0.0f32; LANES];
    for k in 0..LANES {
        iscale[k] = -nmaxf / max[k];
    }
    // Signed levels while searching.
    let mut sumlx = [0.0f32; LANES];
    let mut suml2 = [0.0f32; LANES];
    for i in 0..N {
        for k in 0..LANES {
            let l = qx_level(iscale[k], x[i][k], nmax) as f32;
            levels[i][k] = l;
            sumlx[k] += wx[i][k] * l;
            suml2[k] += w[i][k] * l * l;
        }
    }
    let mut active = [true; LANES];
    for _ in 0..5 {
        let mut changed = [false; LANES];
        for i in 0..N {
            for k in 0..LANES {
                let (v, w, wx) = (x[i][k], w[i][k], wx[i][k]);
                let old = levels[i][k];
                let slx = sumlx[k] - wx * old;
                let sl2 = suml2[k] - w * old * old;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1) as f32;
                let slx2 = slx + wx * new_l;
                let sl22 = sl2 + w * new_l * new_l;
                let accept = active[k]
                    && slx > 0.0
                    && new_l != old
                    && sl22 > 0.0
                    && slx2 * slx2 * suml2[k] > sumlx[k] * sumlx[k] * sl22;
                if accept {
                    levels[i][k] = new_l;
                    sumlx[k] = slx2;
                    suml2[k] = sl22;
                }
                changed[k] |= accept;
            }
        }
        let mut any = false;
        for k in 0..LANES {
            active[k] &= changed[k];
            any |= active[k];
        }
        if !any {
            break;
        }
    }
    for k in 0..LANES {
        if amax[k] < GROUP_MAX_EPS {
            scale_out[k] = 0.0;
            for i in 0..N {
                levels[i][k] = 0.0;
            }
        } else {
            scale_out[k] = if suml2[k] > 0.0 { sumlx[k] / suml2[k] } else { 0.0 };
            for i in 0..N {
                levels[i][k] += nmaxf;
            }
        }
    }
}

/// Lane `k`'s levels from `t[i][k]` (floats holding small non-negative integers).
#[inline(always)]
fn lane_levels<const N: usize, const LANES: usize>(t: &[[f32; LANES]; N], k: usize, out: &mut [u8]) {
    for i in 0..N {
        out[i] = t[i][k] as i32 as u8;
    }
}

/// Packs 2-bit levels as Q2_K and Q3_K store them: byte `32 * n + l` of `qs` holds elements
/// `128 * n + l + 32 * s` in bits `2 * s`.
#[inline(always)]
fn pack_2bit(l: &[u8; 256], qs: &mut [u8]) {
    for n in 0..2 {
        let j = 128 * n;
        for i in 0..32 {
            qs[32 * n + i] = l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
}

/// SB Q2_K super-blocks (LANES = 16 * SB sub-blocks of 16) from `x` (256 * SB values) into `y`.
#[inline(always)]
fn quantize_q2_k<const SB: usize, const LANES: usize>(x: &[f32], y: &mut [u8]) {
    let xt = transpose::<16, LANES>(x);
    let mut wt = [[0.0f32; LANES]; 16];
    for i in 0..16 {
        for k in 0..LANES {
            wt[i][k] = xt[i][k].abs();
        }
    }
    let q = make_qkx2_quants(&xt, &wt, 3, -0.5, 0.1, 15, true);
    for h in 0..SB {
        let x = block_of(x, h);
        let levels = |j: usize, out: &mut [u8]| q.levels(16 * h + j, &x[16 * j..16 * j + 16], out);
        let (sc, mn) = (&q.scale[16 * h..16 * h + 16], &q.min[16 * h..16 * h + 16]);
        finish_q2_k(x, sc, mn, levels, block_of_mut(y, h));
    }
}

/// Super-block `h` of a group.
#[inline(always)]
fn block_of<const N: usize, T>(x: &[T], h: usize) -> &[T; N] {
    x[N * h..N * h + N].try_into().unwrap()
}

#[inline(always)]
fn block_of_mut<const N: usize, T>(x: &mut [T], h: usize) -> &mut [T; N] {
    (&mut x[N * h..N * h + N]).try_into().unwrap()
}

/// One Q2_K super-block from its sub-blocks' scales and mins; `levels(j, out)` gives the search's
/// levels of sub-block `j`, which ggml keeps where the stored scale is zero.
#[inline(always)]
fn finish_q2_k(x: &[f32; 256], scales: &[f32], mins: &[f32], levels: impl Fn(usize, &mut [u8]), y: &mut [u8; 84]) {
    let mut max_scale = 0.0f32;
    let mut max_min = 0.0f32;
    for j in 0..16 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }
    let mut sc = [0u8; 16];
    let d = if max_scale > 0.0 {
        let iscale = 15.0 / max_scale;
        for j in 0..16 {
            sc[j] = nearest_int(iscale * scales[j]) as u8;
        }
        fp32_to_fp16(max_scale / 15.0)
    } else {
        fp32_to_fp16(0.0)
    };
    let dmin = if max_min > 0.0 {
        let iscale = 15.0 / max_min;
        for j in 0..16 {
            sc[j] |= nearest_int(iscale * mins[j]).wrapping_shl(4) as u8;
        }
        fp32_to_fp16(max_min / 15.0)
    } else {
        fp32_to_fp16(0.0)
    };
    let (df, dminf) = (fp16_to_fp32(d), fp16_to_fp32(dmin));
    let mut l = [0u8; 256];
    for j in 0..16 {
        let dd = df * (sc[j] & 0xf) as f32;
        if dd == 0.0 {
            levels(j, &mut l[16 * j..16 * j + 16]);
            continue;
        }
        let dm = dminf * (sc[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dd).clamp(0, 3) as u8;
        }
    }
    y[0..16].copy_from_slice(&sc);
    pack_2bit(&l, &mut y[16..80]);
    y[80..82].copy_from_slice(&d.to_le_bytes());
    y[82..84].copy_from_slice(&dmin.to_le_bytes());
}

/// SB Q3_K super-blocks (LANES = 16 * SB sub-blocks of 16) from `x` (256 * SB values) into `y`.
#[inline(always)]
fn quantize_q3_k<const SB: usize, const LANES: usize>(x: &[f32], y: &mut [u8]) {
    let xt = transpose::<16, LANES>(x);
    let mut lt = [[0.0f32; LANES]; 16];
    let mut scales = [0.0f32; LANES];
    make_q3_quants(&xt, 4, &mut lt, &mut scales);
    for h in 0..SB {
        let levels = |j: usize, out: &mut [u8]| lane_levels(&lt, 16 * h + j, out);
        finish_q3_k(block_of(x, h), &scales[16 * h..16 * h + 16], levels, block_of_mut(y, h));
    }
}

/// One Q3_K super-block from its sub-blocks' scales; `levels(j, out)` gives the search's levels of
/// sub-block `j`, which ggml keeps where the stored scale is zero.
#[inline(always)]
fn finish_q3_k(x: &[f32; 256], scales: &[f32], levels: impl Fn(usize, &mut [u8]), y: &mut [u8; 110]) {
    let mut max_scale = 0.0f32;
    let mut amax = 0.0f32;
    for &s in scales {
        if s.abs() > amax {
            amax = s.abs();
            max_scale = s;
        }
    }
    let mut sc = [0u8; 12];
    let d = if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for j in 0..16 {
            // int8_t l = nearest_int(..); l = MAX(-32, MIN(31, l)) + 32;
            let v = ((nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32) as u8;
            if j < 8 {
                sc[j] = v & 0xf;
            } else {
                sc[j - 8] |= (v & 0xf) << 4;
            }
            sc[j % 4 + 8] |= (v >> 4) << (2 * (j / 4));
        }
        fp32_to_fp16(1.0 / iscale)
    } else {
        fp32_to_fp16(0.0)
    };
    let df = fp16_to_fp32(d);
    let mut l = [0u8; 256];
    for j in 0..16 {
        let dd = df * (q3k_scale(&sc, j) as i32 - 32) as f32;
        if dd == 0.0 {
            levels(j, &mut l[16 * j..16 * j + 16]);
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / dd).clamp(-4, 3) + 4) as u8;
        }
    }
    // High bit of element j goes to hmask[j % 32], bit j / 32.
    let mut hmask = [0u8; 32];
    for j in 0..256 {
        if l[j] > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            l[j] -= 4;
        }
    }
    y[0..32].copy_from_slice(&hmask);
    pack_2bit(&l, &mut y[32..96]);
    y[96..108].copy_from_slice(&sc);
    y[108..110].copy_from_slice(&d.to_le_bytes());
}

/// The part Q4_K and Q5_K share: per 32-value sub-block a (scale, min) pair by `make_qkx2_quants`,
/// both quantized to 6 bits against the super-block's largest, then every value re-quantized with
/// the scales as stored. Returns (d, dmin, the 12 scale bytes, the levels) for each of SB
/// super-blocks (256 * SB values in `x`): their LANES = 8 * SB sub-blocks are searched side by side.
#[allow(clippy::type_complexity)]
#[inline(always)]
fn quantize_k_scale_min<const SB: usize, const LANES: usize>(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> [(u16, u16, [u8; 12], [u8; 256]); SB] {
    let xt = transpose::<32, LANES>(x);
    let mut wt = [[0.0f32; LANES]; 32];
    let mut sum_x2 = [0.0f32; LANES];
    for i in 0..32 {
        for k in 0..LANES {
            sum_x2[k] += xt[i][k] * xt[i][k];
        }
    }
    for k in 0..LANES {
        let av_x = (sum_x2[k] / 32.0).sqrt();
        for i in 0..32 {
            wt[i][k] = av_x + xt[i][k].abs();
        }
    }
    let q = make_qkx2_quants(&xt, &wt, nmax, rmin, 0.1, nstep, false);
    let mut out = [(0u16, 0u16, [0u8; 12], [0u8; 256]); SB];
    for (h, out) in out.iter_mut().enumerate() {
        let x: &[f32; 256] = block_of(x, h);
        let scales = &q.scale[8 * h..8 * h + 8];
        let mins = &q.min[8 * h..8 * h + 8];
        let mut l = [0u8; 256];

        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..8 {
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        let mut sc = [0u8; 12];
        for j in 0..8 {
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            if j < 4 {
                sc[j] = ls;
                sc[j + 4] = lm;
            } else {
                sc[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
                sc[j - 4] |= (ls >> 4) << 6;
                sc[j] |= (lm >> 4) << 6;
            }
        }
        let d = fp32_to_fp16(max_scale / 63.0);
        let dmin = fp32_to_fp16(max_min / 63.0);
        let (df, dminf) = (fp16_to_fp32(d), fp16_to_fp32(dmin));
        for j in 0..8 {
            let (s, m) = scale_min_k4(j, &sc);
            let dd = df * s as f32;
            if dd == 0.0 {
                // ggml keeps the search's levels where the stored scale is zero.
                q.levels(8 * h + j, &x[32 * j..32 * j + 32], &mut l[32 * j..32 * j + 32]);
                continue;
            }
            let dm = dminf * m as f32;
            for ii in 0..32 {
                l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dd).clamp(0, nmax) as u8;
            }
        }
        *out = (d, dmin, sc, l);
    }
    out
}

#[inline(always)]
fn quantize_q4_k<const SB: usize, const LANES: usize>(x: &[f32], y: &mut [u8]) {
    for (h, (d, dmin, sc, l)) in quantize_k_scale_min::<SB, LANES>(x, 15, -1.0, 20)
        .into_iter()
        .enumerate()
    {
        let y = &mut y[144 * h..144 * h + 144];
        y[0..2].copy_from_slice(&d.to_le_bytes());
        y[2..4].copy_from_slice(&dmin.to_le_bytes());
        y[4..16].copy_from_slice(&sc);
        let qs = &mut y[16..144];
        for n in 0..4 {
            for i in 0..32 {
                qs[32 * n + i] = l[64 * n + i] | (l[64 * n + i + 32] << 4);
            }
        }
    }
}

#[inline(always)]
fn quantize_q5_k<const SB: usize, const LANES: usize>(x: &[f32], y: &mut [u8]) {
    for (h, (d, dmin, sc, l)) in quantize_k_scale_min::<SB, LANES>(x, 31, -0.5, 15)
        .into_iter()
        .enumerate()
    {
        let y = &mut y[176 * h..176 * h + 176];
        y[0..2].copy_from_slice(&d.to_le_bytes());
        y[2..4].copy_from_slice(&dmin.to_le_bytes());
        y[4..16].copy_from_slice(&sc);
        let mut qh = [0u8; 32];
        let qs = &mut y[48..176];
        // Levels are 0..=31: bit 4 goes to qh, the low four bits to qs (ggml's `if l > 15`, without
        // the branches, so that the loop is SIMD).
        for n in 0..4 {
            for i in 0..32 {
                let (l1, l2) = (l[64 * n + i], l[64 * n + i + 32]);
                qh[i] |= ((l1 >> 4) << (2 * n)) | ((l2 >> 4) << (2 * n + 1));
                qs[32 * n + i] = (l1 & 0xf) | ((l2 & 0xf) << 4);
            }
        }
        y[16..48].copy_from_slice(&qh);
    }
}

/// SB Q6_K super-blocks (LANES = 16 * SB sub-blocks of 16) from `x` (256 * SB values) into `y`.
#[inline(always)]
fn quantize_q6_k<const SB: usize, const LANES: usize>(x: &[f32], y: &mut [u8]) {
    let xt = transpose::<16, LANES>(x);
    let q = make_qx_quants(&xt, 32);
    for h in 0..SB {
        let x = block_of(x, h);
        let levels = |j: usize, out: &mut [u8]| q.levels(16 * h + j, &x[16 * j..16 * j + 16], out);
        finish_q6_k(x, &q.scale[16 * h..16 * h + 16], levels, block_of_mut(y, h));
    }
}

/// One Q6_K super-block from its sub-blocks' scales; `levels(j, out)` gives the search's levels of
/// sub-block `j`, which ggml keeps where the stored scale is zero.
#[inline(always)]
fn finish_q6_k(x: &[f32; 256], scales: &[f32], levels: impl Fn(usize, &mut [u8]), y: &mut [u8; 210]) {
    let mut max_scale = 0.0f32;
    let mut max_abs_scale = 0.0f32;
    for &s in scales {
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = s;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = fp32_to_fp16(1.0 / iscale);
    let mut sc = [0i8; 16];
    for j in 0..16 {
        sc[j] = nearest_int(iscale * scales[j]).min(127) as i8;
    }
    let df = fp16_to_fp32(d);
    let mut l = [0u8; 256];
    for j in 0..16 {
        let dd = df * sc[j] as f32;
        if dd == 0.0 {
            levels(j, &mut l[16 * j..16 * j + 16]);
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / dd).clamp(-32, 31) + 32) as u8;
        }
    }
    for n in 0..2 {
        let j = 128 * n;
        for i in 0..32 {
            let (a, b, c, e) = (l[j + i], l[j + i + 32], l[j + i + 64], l[j + i + 96]);
            y[64 * n + i] = (a & 0xf) | ((c & 0xf) << 4);
            y[64 * n + i + 32] = (b & 0xf) | ((e & 0xf) << 4);
            y[128 + 32 * n + i] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
    for j in 0..16 {
        y[192 + j] = sc[j] as u8;
    }
    y[208..210].copy_from_slice(&d.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [GgmlType; 14] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::MXFP4,
    ];

    /// Deterministic standard normal values (xorshift64* + Box-Muller).
    fn normal(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut uniform = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            ((s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let (u, v) = (uniform(), uniform());
                ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
            })
            .collect()
    }

    fn bytes_for(ty: GgmlType, n: usize) -> usize {
        n / block_len(ty) * block_bytes(ty)
    }

    fn roundtrip(ty: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
        let mut q = vec![0u8; bytes_for(ty, x.len())];
        quantize(ty, x, &mut q).unwrap();
        let mut y = vec![0f32; x.len()];
        dequantize(ty, &q, &mut y).unwrap();
        (q, y)
    }

    fn rel_rms(x: &[f32], y: &[f32]) -> f64 {
        let num: f64 = x.iter().zip(y).map(|(&a, &b)| ((a - b) as f64).powi(2)).sum();
        let den: f64 = x.iter().map(|&a| (a as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    #[test]
    fn sizes_agree_with_the_gguf_table() {
        for ty in ALL {
            assert!(can_quantize(ty) && can_dequantize(ty));
            let n = block_len(ty) as u64 * 4;
            assert_eq!(ty.byte_size(&[n]), Some(4 * block_bytes(ty) as u64), "{ty}");
        }
        for ty in [GgmlType::Q8_1, GgmlType::Q8_K, GgmlType(16), GgmlType(99)] {
            assert!(!can_quantize(ty) && !can_dequantize(ty));
            assert_eq!(block_len(ty), 0);
            assert!(matches!(
                quantize(ty, &[0.0; 256], &mut [0; 512]),
                Err(QuantError::Unsupported(_))
            ));
            assert!(matches!(
                dequantize(ty, &[0; 292], &mut [0.0; 256]),
                Err(QuantError::Unsupported(_))
            ));
        }
    }

    #[test]
    fn error_within_each_formats_bound() {
        // Relative RMS error on N(0, 1) data. Measured (the same as ggml's: the bytes are ggml's):
        // Q8_0 0.0055, Q6_K 0.0178, Q5_0 0.0437, Q5_1 0.0381, Q5_K 0.0364, Q4_0 0.0878,
        // Q4_1 0.0790, Q4_K 0.0718, Q3_K 0.1525, Q2_K 0.2985, MXFP4 0.1150, F16 0.0002, BF16 0.0017;
        // the bounds leave ~10% headroom. The symmetric Q4_0 / Q5_0 lose a level to the sign, hence
        // their higher figures; MXFP4 has a power-of-two scale and an uneven grid (0 .. 6 in e2m1).
        // (Values far below 1e-2 lose more: the f16 super-block scales go subnormal, in ggml too.)
        let x = normal(256 * 64, 1);
        let bounds = [
            (GgmlType::Q8_0, 0.007),
            (GgmlType::Q6_K, 0.02),
            (GgmlType::Q5_0, 0.048),
            (GgmlType::Q5_1, 0.042),
            (GgmlType::Q5_K, 0.04),
            (GgmlType::Q4_0, 0.095),
            (GgmlType::Q4_1, 0.087),
            (GgmlType::Q4_K, 0.08),
            (GgmlType::Q3_K, 0.165),
            (GgmlType::Q2_K, 0.32),
            (GgmlType::MXFP4, 0.127),
            (GgmlType::F16, 0.0003),
            (GgmlType::BF16, 0.0025),
        ];
        for (ty, bound) in bounds {
            for scale in [1.0, 0.02] {
                let xs: Vec<f32> = x.iter().map(|v| v * scale).collect();
                let (_, y) = roundtrip(ty, &xs);
                let e = rel_rms(&xs, &y);
                assert!(e < bound, "{ty} at scale {scale}: relative RMS error {e} >= {bound}");
            }
        }
        let (_, y) = roundtrip(GgmlType::F32, &x);
        assert_eq!(x, y);
    }

    #[test]
    fn float_types_round_to_nearest_even() {
        // Every half decodes exactly (checked against the `half` crate), and f32 -> f16 rounds to
        // nearest even, including subnormals, overflow to infinity, and NaN kept NaN.
        for h in 0..=u16::MAX {
            let ours = fp16_to_fp32(h);
            let want = half::f16::from_bits(h).to_f32();
            assert!(
                ours.to_bits() == want.to_bits() || (ours.is_nan() && want.is_nan()),
                "{h:#06x}"
            );
            if !ours.is_nan() {
                assert_eq!(fp32_to_fp16(ours), h, "{h:#06x} round trip");
            }
        }
        let mut s = 0x1234_5678_9abc_def0u64;
        for _ in 0..2_000_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let f = f32::from_bits(s as u32);
            let want = half::f16::from_f32(f);
            if f.is_nan() {
                assert_eq!(fp32_to_fp16(f) & 0x7fff, 0x7e00);
            } else {
                assert_eq!(fp32_to_fp16(f), want.to_bits(), "{f:e}");
            }
            // bf16: nearest even, NaN stays NaN.
            let b = fp32_to_bf16(f);
            if f.is_nan() {
                assert!(f32::from_bits((b as u32) << 16).is_nan());
            } else {
                assert_eq!(b, half::bf16::from_f32(f).to_bits(), "{f:e}");
            }
        }
        // Ties: 1 + 2^-11 is halfway between two halves and goes to the even one (1.0).
        assert_eq!(fp32_to_fp16(1.0 + f32::powi(2.0, -11)), 0x3c00);
        assert_eq!(fp32_to_fp16(1.0 + 3.0 * f32::powi(2.0, -11)), 0x3c02);
        assert_eq!(fp32_to_fp16(65520.0), 0x7c00);
        assert_eq!(fp32_to_bf16(1.0 + f32::powi(2.0, -8)), 0x3f80);
        assert_eq!(fp32_to_bf16(1.0 + 3.0 * f32::powi(2.0, -8)), 0x3f82);
    }

    #[test]
    fn requantizing_decoded_blocks_is_stable() {
        // quantize(dequantize(q)) == q exactly for Q8_0 and the float types; for the others the
        // search may settle on another encoding of nearly the same values, so check the values.
        let x = normal(256 * 32, 2);
        for ty in ALL {
            let (q, y) = roundtrip(ty, &x);
            let (q2, y2) = roundtrip(ty, &y);
            // MXFP4 too: decoded blocks keep their top code (8 or 12 times the scale), hence their
            // exponent, and every decoded value is exactly on the grid.
            if matches!(
                ty,
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::MXFP4
            ) {
                assert_eq!(q, q2, "{ty}: re-quantizing decoded values changed the bytes");
            } else {
                let drift = rel_rms(&y, &y2);
                let err = rel_rms(&x, &y);
                assert!(
                    drift < err / 2.0,
                    "{ty}: second round moved values by {drift} (first error {err})"
                );
            }
        }
    }

    #[test]
    fn special_blocks_match_ggml_conventions() {
        // All zeros: every format stores zeros and decodes zeros.
        for ty in ALL {
            let (q, y) = roundtrip(ty, &[0.0; 256]);
            assert!(y.iter().all(|&v| v == 0.0), "{ty}");
            if matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0) {
                // Symmetric formats with unsigned storage: zero is level 8 (16), and d is -0.0
                // (ggml computes it as max / -8, max / -16).
                assert!(
                    q.chunks(block_bytes(ty)).all(|b| b[0] == 0 && b[1] == 0x80),
                    "{ty}: {q:?}"
                );
            } else {
                assert!(q.iter().all(|&b| b == 0), "{ty}: {q:?}");
            }
        }
        // Q8_0 of one block: d = max|x| / 127 as f16, then round-half-away levels.
        let mut x = [0.0f32; 32];
        x[0] = 127.0;
        x[1] = -63.5; // exactly halfway: goes away from zero
        x[2] = 0.5;
        let mut q = [0u8; 34];
        quantize(GgmlType::Q8_0, &x, &mut q).unwrap();
        assert_eq!(u16::from_le_bytes([q[0], q[1]]), 0x3c00); // d = 1.0
        assert_eq!((q[2] as i8, q[3] as i8, q[4] as i8), (127, -64, 1));
        // Values so small (subnormal) that the inverse scale overflows: ggml's x86-64 float -> int
        // cast of the infinities gives code 0 and the f16 scale is 0, so every byte is 0 but the
        // f16 min of Q4_1 / Q5_1 (-0.0). These are ggml's bytes, through llama-cpp-python.
        let tiny: Vec<f32> = (0..32).map(|j| (j as f32 - 15.5) * 1e-43).collect();
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
        ] {
            let (q, _) = roundtrip(ty, &tiny);
            let min_high = matches!(ty, GgmlType::Q4_1 | GgmlType::Q5_1).then_some(3);
            let want: Vec<u8> = (0..q.len())
                .map(|i| if Some(i) == min_high { 0x80 } else { 0 })
                .collect();
            assert_eq!(q, want, "{ty}");
        }
        // Constant blocks stay (nearly) constant in the min-based formats.
        for ty in [
            GgmlType::Q4_1,
            GgmlType::Q5_1,
            GgmlType::Q2_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
        ] {
            let (_, y) = roundtrip(ty, &[1.5; 256]);
            assert!(y.iter().all(|&v| (v - 1.5).abs() < 0.01), "{ty}: {:?}", &y[..4]);
        }
    }

    /// One MXFP4 block of `x` (padded with zeros): (exponent byte, the 32 codes).
    fn mxfp4_block(x: &[f32]) -> (u8, Vec<u8>) {
        let mut v = [0.0f32; 32];
        v[..x.len()].copy_from_slice(x);
        let mut q = [0u8; 17];
        quantize(GgmlType::MXFP4, &v, &mut q).unwrap();
        let codes = (0..32)
            .map(|j| if j < 16 { q[1 + j] & 0xf } else { q[j - 15] >> 4 })
            .collect();
        (q[0], codes)
    }

    #[test]
    fn mxfp4_follows_ggml_on_ties_nan_and_extremes() {
        // amax 6 gives e = 127, d = 0.5: the grid is 0, 0.5, 1, 1.5, 2, 3, 4, 6. Ties go to the
        // lower code (smaller magnitude, +0 for -0.25); 7 saturates to 6; -0.0 is code 0.
        let x = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.25, -5.0, 7.0, -0.0, -6.0];
        let (e, c) = mxfp4_block(&x);
        assert_eq!((e, &c[..13]), (127, &[7, 0, 1, 2, 3, 4, 5, 6, 0, 14, 7, 0, 15][..]));
        // NaN is skipped by the max and keeps code 0; 1.0 = 8 * 2^-3 is code 6.
        assert_eq!(mxfp4_block(&[f32::NAN, 1.0]), (125, [&[0, 6][..], &[0; 30]].concat()));
        assert_eq!(mxfp4_block(&[f32::NAN; 32]).0, 0);
        // ggml's x86-64 float -> uint8 cast: infinity gives e = 0 (d = 2^-128, so 1.0 is as far
        // from every grid value and keeps code 0), amax under 2^-125 wraps round.
        let x = [f32::INFINITY, 1.0, f32::powi(2.0, -126)];
        assert_eq!(mxfp4_block(&x), (0, [&[0, 0, 4][..], &[0; 29]].concat()));
        assert_eq!(mxfp4_block(&[f32::powi(2.0, -126)]).0, 255);
        assert_eq!(mxfp4_block(&[f32::from_bits(1)]).0, 232);
        assert_eq!(mxfp4_block(&[f32::powi(2.0, -125)]).0, 0);
        // log2f rounds log2 of a value just under 2^k up to k: one ulp under 2^20 takes e = 145,
        // as 2^20 does. f32::MAX so gets d = 2^125, where 8d and 12d overflow, and decodes as 6d.
        assert_eq!(mxfp4_block(&[f32::from_bits(0x497f_ffff)]).0, 145);
        assert_eq!(mxfp4_block(&[f32::MAX]), (253, [&[5][..], &[0; 31]].concat()));
        // The scale, with its two subnormal exponents.
        let scales = [0u8, 1, 2, 128, 255].map(e8m0_to_fp32_half);
        let want = [-128, -127, -126, 0, 127].map(|p| 2f64.powi(p) as f32);
        assert_eq!(scales, want);
    }

    #[test]
    fn mxfp4_decodes_every_byte_pattern() {
        // Every exponent with every code: k * 2^(e-128), overflowing to infinity only at e = 255.
        for e in 0..=255u8 {
            let b: Vec<u8> = [e].into_iter().chain((0..16u8).map(|j| j | ((15 - j) << 4))).collect();
            let mut y = [0.0f32; 32];
            dequantize(GgmlType::MXFP4, &b, &mut y).unwrap();
            for j in 0..32 {
                let k = KVALUES_MXFP4[if j < 16 { j } else { 31 - j }] as f64;
                assert_eq!(y[j], (k * 2f64.powi(e as i32 - 128)) as f32, "e {e} value {j}");
            }
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        for ty in ALL {
            let (qk, bs) = (block_len(ty), block_bytes(ty));
            let x = vec![0.5f32; qk * 2];
            let mut q = vec![0u8; bs * 2];
            if qk > 1 {
                let e = quantize(ty, &x[..qk + 1], &mut q).unwrap_err();
                assert!(matches!(e, QuantError::PartialBlock { .. }), "{ty}: {e}");
            }
            let e = quantize(ty, &x, &mut q[..bs]).unwrap_err();
            assert!(matches!(e, QuantError::SizeMismatch { .. }), "{ty}: {e}");
            let e = quantize(ty, &x, &mut vec![0u8; bs * 3]).unwrap_err();
            assert!(matches!(e, QuantError::SizeMismatch { .. }), "{ty}: {e}");
            let mut y = vec![0f32; qk * 2];
            if bs > 1 {
                let e = dequantize(ty, &q[..bs + 1], &mut y).unwrap_err();
                assert!(matches!(e, QuantError::PartialBlock { .. }), "{ty}: {e}");
            }
            let e = dequantize(ty, &q, &mut y[..qk]).unwrap_err();
            assert!(matches!(e, QuantError::SizeMismatch { .. }), "{ty}: {e}");
            // Empty input is fine.
            quantize(ty, &[], &mut []).unwrap();
            dequantize(ty, &[], &mut []).unwrap();
        }
    }

    #[test]
    fn blocks_are_independent() {
        // Each block depends on its own values only (the K-quants encode two at a time, and pad
        // an odd last one): three blocks at once give the bytes of three single-block calls.
        let x = normal(256 * 3, 6);
        for ty in ALL {
            let (q, _) = roundtrip(ty, &x);
            let bs = bytes_for(ty, 256);
            for b in 0..3 {
                let (qb, _) = roundtrip(ty, &x[256 * b..256 * (b + 1)]);
                assert_eq!(&q[bs * b..bs * (b + 1)], &qb[..], "{ty} block {b}");
            }
        }
    }

    #[test]
    fn unaligned_buffers_work() {
        // GGUF data need not be aligned for f16 or f32 access: the byte slices are read bytewise.
        let x = normal(512, 3);
        for ty in ALL {
            let n = bytes_for(ty, x.len());
            let mut store = vec![0u8; n + 1];
            quantize(ty, &x, &mut store[1..]).unwrap();
            let mut y = vec![0f32; x.len()];
            dequantize(ty, &store[1..], &mut y).unwrap();
            let (q, y2) = roundtrip(ty, &x);
            assert_eq!(&store[1..], &q[..]);
            assert_eq!(y, y2);
        }
    }

    #[test]
    fn threads_share_nothing() {
        let x = normal(256 * 16, 4);
        let (q, _) = roundtrip(GgmlType::Q4_K, &x);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20 {
                        assert_eq!(roundtrip(GgmlType::Q4_K, &x).0, q);
                    }
                });
            }
        });
    }

    #[test]
    fn every_level_writes_the_same_bytes() {
        // The committed ggml fixtures (tests/quant_reference.rs) check each level on a few blocks;
        // this checks the levels against each other on many, odd ones included: NaN, infinities,
        // subnormals, huge values, constant and sparse blocks, and raw random bit patterns.
        let mut x = normal(256 * 96, 7);
        let n = x.len();
        for (b, block) in x.chunks_mut(256).enumerate() {
            let scale = [1.0, 1e-3, 1e-30, 1e30, 3e38, 1e-42][b % 6];
            block.iter_mut().for_each(|v| *v *= scale);
            match b % 8 {
                1 => block[b % 256] = f32::NAN,
                2 => block[(7 * b) % 256] = f32::INFINITY,
                3 => block[..128].fill(0.0),
                4 => block.fill(block[0]),
                5 => block.iter_mut().step_by(3).for_each(|v| *v = -v.abs()),
                _ => {}
            }
        }
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        // 7 blocks: an odd total, so that the last group of every K-quant is a short one.
        x.extend((0..256 * 7).map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // NaN payloads are unspecified in Rust (and C): which one an operation on two NaNs
            // passes on may change with operand order, so raw NaN bit patterns are left out.
            let v = f32::from_bits(s as u32);
            if v.is_nan() { f32::NAN } else { v }
        }));
        assert!(x.len() > n);
        for ty in ALL {
            let mut want = vec![0u8; bytes_for(ty, x.len())];
            quantize_with(Simd::Scalar, ty, &x, &mut want).unwrap();
            for level in Simd::available() {
                let mut got = vec![0u8; want.len()];
                quantize_with(level, ty, &x, &mut got).unwrap();
                let bs = block_bytes(ty);
                let bad = (0..want.len() / bs).find(|&b| got[b * bs..][..bs] != want[b * bs..][..bs]);
                assert_eq!(bad, None, "{ty} at {}: first differing block", level.name());
            }
        }
    }

    /// Quantizer throughput per core at every instruction-set level this CPU has (and dequantizer
    /// throughput); run with
    /// `cargo test --release --lib quant::tests::throughput -- --ignored --nocapture`.
    /// `QUANT_BENCH_TYPES=Q4_K,Q6_K` limits the types, `QUANT_BENCH_LEVELS=avx512` the levels.
    #[test]
    #[ignore]
    fn throughput() {
        let n = 256 * 4096; // 1 Mi values, 4 MiB of f32: cache-resident like a merge's row chunk
        let x = normal(n, 5);
        let only = std::env::var("QUANT_BENCH_TYPES").unwrap_or_default();
        let only_levels = std::env::var("QUANT_BENCH_LEVELS").unwrap_or_default();
        let levels: Vec<_> = Simd::available()
            .into_iter()
            .filter(|l| only_levels.is_empty() || only_levels.split(',').any(|n| n == l.name()))
            .collect();
        let names: Vec<_> = levels.iter().map(|l| format!("{:>8}", l.name())).collect();
        eprintln!("M values/s per core; quantize at {}, then dequantize", names.join(" "));
        for ty in ALL {
            if !only.is_empty() && !only.split(',').any(|t| t == ty.name()) {
                continue;
            }
            let mut q = vec![0u8; bytes_for(ty, n)];
            let mut y = vec![0f32; n];
            let time = |f: &mut dyn FnMut()| {
                f();
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let t = std::time::Instant::now();
                    f();
                    best = best.min(t.elapsed().as_secs_f64());
                }
                n as f64 / best / 1e6
            };
            let rates: Vec<_> = levels
                .iter()
                .map(|&l| time(&mut || quantize_with(l, ty, std::hint::black_box(&x), &mut q).unwrap()))
                .map(|r| format!("{r:>8.1}"))
                .collect();
            let dr = time(&mut || dequantize(ty, std::hint::black_box(&q), &mut y).unwrap());
            eprintln!("{:<5} quantize {}   dequantize {dr:>8.1}", ty.name(), rates.join(" "));
        }
    }
}
