//! Counter-based random numbers for the random ops (Theano's `RandomStreams`: `binomial`,
//! `uniform`, `normal`), defined twice, as plain Rust for the CPU code and as PTX sequences
//! for the kernels, with bit-identical results in f32 and f64.
//!
//! # Generator
//!
//! Philox4x32-10 (J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw, "Parallel random
//! numbers: as easy as 1, 2, 3", SC 2011; the generator behind cuRAND's `Philox4_32_10`): a
//! keyed bijection of 128-bit counters, 10 rounds of two 32 x 32 -> 64-bit products
//! (multipliers `0xD2511F53`, `0xCD9E8D57`) and xors, with the 64-bit key advanced by the Weyl
//! increments `0x9E3779B9`, `0xBB67AE85` between rounds. A draw is a pure function of its
//! key and counter: no state to carry, no ordering between elements, the same bits on every
//! thread layout, and a stream resumes anywhere from its counter.
//!
//! # Keying
//!
//! Element `i` of random op `site` in the `call`-th call of a compiled function, for a model
//! whose seed is `seed`, is made of the four words
//!
//! ```text
//! philox4x32_10(counter = [i, site, call_lo, call_hi], key = [seed_lo, seed_hi])
//! ```
//!
//! - `i`: the element's flat (row-major) index in the op's output, as a `u32`;
//! - `site`: the number of the random op within the compiled function (`u32`), so that two
//!   ops of one call draw independent streams;
//! - `call`: the function's 64-bit call counter, advanced once per call;
//! - `seed`: the model's 64-bit seed, as `[lo, hi]`.
//!
//! One Philox call per element ([`bits`]); its 4 words are the element's random bits.
//!
//! # Conversions
//!
//! Each a pure function of the 4 words `w` (and the op's parameters):
//!
//! - uniform in [0, 1) ([`uniform01`]): f32 `(w[0] >> 8) * 2^-24` (the top 24 bits of word 0);
//!   f64 `k * 2^-53` with `k = w[0] << 21 | w[1] >> 11` (word 0, then the top 21 bits of
//!   word 1: the f32 uniform is the f64 one truncated to 24 bits). Exact, every value of the
//!   grid equally likely.
//! - `binomial(p)` (one trial): `1` if `u < p` else `0`, with `u` the uniform of the dtype: p = 0
//!   never gives 1, p = 1 always; NaN gives 0.
//! - `uniform(lo, hi)`: `d = hi - lo; m = d * u; r = lo + m`, three roundings in this order (no
//!   fused multiply-add). Rounding may give `hi` itself (f32 `uniform(1, 2)` at u = 1 - 2^-24).
//! - `normal(mean, std)`: Box-Muller, `mean + std * z` (`s = std * z; r = mean + s`) with
//!   `z = sqrt(-2 ln u1) cos(2 pi u2)`, `u1 = 1 - u` in (0, 1] from the first uniform (f32: word
//!   0; f64: words 0 and 1) and `u2` from a second one (f32: the top 24 bits of word 1; f64:
//!   words 2 and 3, as above). |z| <= sqrt(2 * 24 ln 2) = 5.77 (f32), 8.57 (f64).
//!
//! # Why the bits agree
//!
//! The conversions use only operations that IEEE 754 defines exactly: `+ - * /` and `sqrt`
//! rounded to nearest, integer and bit operations, exact int -> float conversions. `ln` and
//! `cos` are our own sequences of those, evaluated in the same order on both sides, without
//! branches (selections only). Rust never contracts `a * b + c` into a fused multiply-add; the
//! PTX writer prints every float add and multiply with `.rn`, which `ptxas` never contracts.
//! Nothing calls libm, `ex2.approx` or `lg2.approx`. Subnormals do not arise inside (the
//! smallest `u1` is 2^-24 / 2^-53) and IEEE handles them in `mean + std * z` on both sides.
//! The one difference: a NaN parameter gives NaN on both sides, but the GPU's is its canonical
//! NaN while the CPU keeps the operand's payload.
//!
//! - `ln u1` ([`DrawFloat::ln_positive`]): `u1 = (1 + f) 2^e` with 1 + f in [sqrt(1/2),
//!   sqrt(2)) from the bits (f exact), `ln(1 + f) = f - (h - s (h + r))` with `s = f / (2 + f)`,
//!   `h = f^2 / 2`, `r = z (2/3 + 2z/5 + ...)`, `z = s^2` (4 terms for f32, 10 for f64:
//!   truncation below 3e-9 and 7e-19 relative), then `e ln2_hi - (... - e ln2_lo ...)` with
//!   `e ln2_hi` exact: f exact and the rest a small correction keep it within an ulp.
//! - `cos(2 pi u2)` ([`DrawFloat::cos_2pi`]) is reduced exactly on the integer `k` of `u2`:
//!   `q = round(4 u2)` (ties up), `t = u2 - q/4` in [-1/8, 1/8), then `cos(2 pi t)` or
//!   `sin(2 pi t)` by their Taylor series in `t` (coefficients `(2 pi)^n / n!` rounded to the
//!   dtype, through `t^10` / `t^9` for f32, `t^16` / `t^17` for f64: truncation below 2e-9
//!   and 2e-18 relative; the leading `2 pi t` as the exact `6t` plus `(2 pi - 6) t`) and the
//!   quadrant's sign.
//!
//! Accuracy, measured by `tests/rng.rs` (`draw_accuracy`): f32 against f64 references, `ln`
//! on all 2^24 values of `u1`: 0.86 ulp; `cos` on all 2^24 values of `u2`: 1.24 ulp; `z` on
//! 10^6 draws: 2.6 ulp. f64 against the f64 std functions (whose own rounding is included,
//! so the errors come in whole ulps), 10^6 draws each: `ln` 1 ulp, `cos` 2 ulp, `z` 3 ulp.
//!
//! # API
//!
//! CPU code, per element: `let w = rng::bits(i, site, call, seed);` then
//! [`uniform01`], [`binomial`], [`uniform`] or [`normal`] of `w` and the parameters, generic
//! over [`DrawFloat`] (f32, f64). All `#[inline(always)]` and branch-free, for generated loops.
//!
//! Kernels: load the seed and the call counter (`.u64` parameters), split them once with
//! [`StreamRegs::split`], then per element [`emit_bits`] (the element's index register and the
//! op's site as an immediate) and [`emit_uniform01`], [`emit_binomial`], [`emit_uniform`] or
//! [`emit_normal`] with the dtype and the parameters (registers or immediates of the dtype).
//! Each returns a fresh register holding exactly what the Rust function of the same name
//! returns.
//!
//! Cost per draw, in PTX instructions: Philox 98 (20 `mul.wide.u32`, 40 `xor`, 18 key adds,
//! 20 register splits that are free in SASS); then binomial 5 (f32) / 6 (f64), uniform 6 / 7,
//! normal 79 / 109 (one `div.rn`, one `sqrt.rn`, the rest adds, multiplies, selections and bit
//! operations). In SASS for sm_80, on the path taken: Philox about 65 instructions, the normal
//! about 90 (f32) / 150 (f64) more, with the rare slow paths of `div.rn`/`sqrt.rn` out of line.

use crate::ir::DType;
use crate::ptx::{BinOp, Cmp, CvtRound, Inst, KernelBuilder, Operand, Reg, RegClass, Type, UnOp};
use crate::scalar::Float;

// ---------------------------------------------------------------------------------------------
// Philox4x32-10.

/// Multipliers of the two products of a round.
const M: [u32; 2] = [0xD251_1F53, 0xCD9E_8D57];
/// Weyl increments of the key between rounds (golden ratio, sqrt(3) - 1).
const W: [u32; 2] = [0x9E37_79B9, 0xBB67_AE85];
const ROUNDS: usize = 10;

/// One round: two 32 x 32 -> 64-bit products; their high halves xor-ed with the other two
/// words and the key.
#[inline(always)]
fn philox_round(c: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let p0 = M[0] as u64 * c[0] as u64;
    let p1 = M[1] as u64 * c[2] as u64;
    let (lo0, hi0) = (p0 as u32, (p0 >> 32) as u32);
    let (lo1, hi1) = (p1 as u32, (p1 >> 32) as u32);
    [hi1 ^ c[1] ^ key[0], lo1, hi0 ^ c[3] ^ key[1], lo0]
}

/// Philox4x32-10 of a counter under a key (Random123's `philox4x32(ctr, key)`, cuRAND's
/// `Philox4_32_10`).
#[inline(always)]
pub fn philox4x32_10(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let mut c = philox_round(ctr, key);
    let mut k = key;
    for _ in 1..ROUNDS {
        k = [k[0].wrapping_add(W[0]), k[1].wrapping_add(W[1])];
        c = philox_round(c, k);
    }
    c
}

/// The random bits of element `i` of random op `site` in call `call` under `seed`: Philox of
/// counter `[i, site, call_lo, call_hi]` and key `[seed_lo, seed_hi]`.
#[inline(always)]
pub fn bits(i: u32, site: u32, call: u64, seed: u64) -> [u32; 4] {
    philox4x32_10(
        [i, site, call as u32, (call >> 32) as u32],
        [seed as u32, (seed >> 32) as u32],
    )
}

// ---------------------------------------------------------------------------------------------
// Constants shared by both definitions (the PTX side reads them through `Tables`).

/// ln 2 = LN2_HI + LN2_LO, with LN2_HI short enough that `e * LN2_HI` is exact for every
/// exponent e of the type.
const LN2_HI_F32: f32 = 0.693_145_75; // 0x3F317200
const LN2_LO_F32: f32 = 1.428_606_8e-6;
const LN2_HI_F64: f64 = 0.693_147_180_369_123_8; // 0x3FE62E42FEE00000
const LN2_LO_F64: f64 = 1.908_214_929_270_587_7e-10;

/// atanh series: ln m = 2 atanh(s) = 2s + s z (2/3 + 2z/5 + ...), z = s^2; these are the
/// 2/(2i+1), i >= 1.
const LN_F32: [f32; 4] = [2.0 / 3.0, 2.0 / 5.0, 2.0 / 7.0, 2.0 / 9.0];
const LN_F64: [f64; 10] = [
    2.0 / 3.0,
    2.0 / 5.0,
    2.0 / 7.0,
    2.0 / 9.0,
    2.0 / 11.0,
    2.0 / 13.0,
    2.0 / 15.0,
    2.0 / 17.0,
    2.0 / 19.0,
    2.0 / 21.0,
];

/// cos(2 pi t) = sum_i COS[i] t^(2i), COS[i] = (-1)^i (2 pi)^(2i) / (2i)!, rounded to nearest.
const COS_F32: [f32; 6] = [
    1.0,
    -19.739_208,
    64.939_39,
    -85.456_82,
    60.244_64,
    -26.426_256,
];
/// sin(2 pi t) = 6t + t sum_i SIN[i] t^(2i), SIN[i] = (-1)^i (2 pi)^(2i+1) / (2i+1)! except
/// SIN[0] = 2 pi - 6: 6t is exact, and 2 pi rounded would cost half an ulp on every value.
const SIN_F32: [f32; 5] = [0.283_185_3, -41.341_7, 81.605_25, -76.705_86, 42.058_693];
const COS_F64: [f64; 9] = [
    1.0,
    -19.739_208_802_178_716,
    64.939_394_022_668_3,
    -85.456_817_206_693_73,
    60.244_641_371_876_66,
    -26.426_256_783_374_4,
    7.903_536_371_318_469,
    -1.714_390_711_088_672,
    0.282_005_968_455_791_23,
];
const SIN_F64: [f64; 9] = [
    0.283_185_307_179_586_45,
    -41.341_702_240_399_76,
    81.605_249_276_075_06,
    -76.705_859_753_061_39,
    42.058_693_944_897_655,
    -15.094_642_576_822_99,
    3.819_952_584_848_282,
    -0.718_122_301_778_500_6,
    0.104_229_162_208_139_84,
];

/// 2^-24 and 2^-53: the spacing of the uniforms' grids.
const UNIT_F32: f32 = 1.0 / 16_777_216.0;
const UNIT_F64: f64 = 1.0 / 9_007_199_254_740_992.0;

// ---------------------------------------------------------------------------------------------
// The Rust definition.

/// The float types draws are made in (f32 and f64), with the building blocks of the draws.
/// Every method is the exact counterpart of a PTX sequence emitted by this module.
pub trait DrawFloat: Float {
    /// Random bits in one uniform: 24 (f32), 53 (f64).
    const UNIT_BITS: u32;
    /// The uniform in [0, 1) of an element's words (see the module doc).
    fn unit(w: [u32; 4]) -> Self;
    /// The standard normal `z` of an element's words (Box-Muller).
    fn std_normal(w: [u32; 4]) -> Self;
    /// ln x for a positive, normal, finite x (others give garbage): the `ln` of [`normal`],
    /// public so that its accuracy can be measured.
    fn ln_positive(x: Self) -> Self;
    /// cos(2 pi k 2^-UNIT_BITS) for k < 2^UNIT_BITS: the `cos` of [`normal`].
    fn cos_2pi(k: u64) -> Self;
}

/// The per-type parts of the sequences.
trait Repr: Float + 'static {
    const SQRT2: Self;
    const LN2_HI: Self;
    const LN2_LO: Self;
    const LN: &'static [Self];
    const COS: &'static [Self];
    const SIN: &'static [Self];
    /// x = m 2^e with m in [1, 2), for a positive normal finite x, from the bits.
    fn split_exponent(self) -> (Self, i32);
    fn from_i32(e: i32) -> Self;
    /// `(t, q)` of `k 2^-UNIT_BITS`: q = round(4 k 2^-UNIT_BITS) (ties up, in 0..=4) and
    /// t = k 2^-UNIT_BITS - q/4 in [-1/8, 1/8), both exact.
    fn reduce(k: u64) -> (Self, u32);
    /// The integer of the second uniform of a normal (the one of `cos`).
    fn second_unit(w: [u32; 4]) -> u64;
}

/// `c[0] + x (c[1] + x (c[2] + ...))`, one multiply and one add per step.
#[inline(always)]
fn horner<T: Float>(x: T, c: &[T]) -> T {
    let mut p = c[c.len() - 1];
    for &ci in c[..c.len() - 1].iter().rev() {
        p = p * x + ci;
    }
    p
}

#[inline(always)]
fn ln_positive<T: Repr>(x: T) -> T {
    let (m, e) = x.split_exponent();
    // m in [sqrt(1/2), sqrt(2)), so that |s| <= 0.1716.
    let big = m > T::SQRT2;
    let m = if big { m * T::from_f64(0.5) } else { m };
    let e = e + big as i32;
    // f = m - 1 is exact (Sterbenz). ln(1 + f) = 2s + s r = f - (h - s (h + r)) with
    // s = f / (2 + f), h = f^2 / 2 and r = z (2/3 + 2z/5 + ...), z = s^2: f is exact and the
    // rest a small correction, so the result is within an ulp.
    let f = m - T::ONE;
    let s = f / (m + T::ONE);
    let z = s * s;
    let r = z * horner(z, T::LN);
    let h = T::from_f64(0.5) * f * f;
    let ef = T::from_i32(e);
    ef * T::LN2_HI - ((h - (s * (h + r) + ef * T::LN2_LO)) - f)
}

/// cos(2 pi (t + q/4)) for a reduced `(t, q)`: by quadrant q mod 4, cos, -sin, -cos or sin of
/// 2 pi t.
#[inline(always)]
fn cos_reduced<T: Repr>(t: T, q: u32) -> T {
    let x = t * t;
    let c = horner(x, T::COS);
    let s = t * T::from_f64(6.0) + t * horner(x, T::SIN);
    let v = if q & 1 != 0 { s } else { c };
    if (q + 1) & 2 != 0 {
        -v
    } else {
        v
    }
}

#[inline(always)]
fn std_normal<T: Repr + DrawFloat>(w: [u32; 4]) -> T {
    let u1 = T::ONE - T::unit(w);
    let r = (ln_positive(u1) * T::from_f64(-2.0)).sqrt_();
    let (t, q) = T::reduce(T::second_unit(w));
    r * cos_reduced(t, q)
}

/// The 53-bit integer of two words: `hi << 21 | lo >> 11`.
#[inline(always)]
fn unit53(hi: u32, lo: u32) -> u64 {
    ((hi as u64) << 32 | lo as u64) >> 11
}

impl Repr for f32 {
    const SQRT2: f32 = std::f32::consts::SQRT_2;
    const LN2_HI: f32 = LN2_HI_F32;
    const LN2_LO: f32 = LN2_LO_F32;
    const LN: &'static [f32] = &LN_F32;
    const COS: &'static [f32] = &COS_F32;
    const SIN: &'static [f32] = &SIN_F32;

    #[inline(always)]
    fn split_exponent(self) -> (f32, i32) {
        let b = self.to_bits();
        let m = f32::from_bits((b & 0x007f_ffff) | 0x3f80_0000);
        (m, (b >> 23) as i32 - 127)
    }

    #[inline(always)]
    fn from_i32(e: i32) -> f32 {
        e as f32
    }

    #[inline(always)]
    fn reduce(k: u64) -> (f32, u32) {
        let k = k as u32;
        let q = k.wrapping_add(1 << 21) >> 22;
        let j = k.wrapping_sub(q << 22) as i32;
        (j as f32 * UNIT_F32, q)
    }

    #[inline(always)]
    fn second_unit(w: [u32; 4]) -> u64 {
        (w[1] >> 8) as u64
    }
}

impl Repr for f64 {
    const SQRT2: f64 = std::f64::consts::SQRT_2;
    const LN2_HI: f64 = LN2_HI_F64;
    const LN2_LO: f64 = LN2_LO_F64;
    const LN: &'static [f64] = &LN_F64;
    const COS: &'static [f64] = &COS_F64;
    const SIN: &'static [f64] = &SIN_F64;

    #[inline(always)]
    fn split_exponent(self) -> (f64, i32) {
        let b = self.to_bits();
        let m = f64::from_bits((b & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
        (m, (b >> 52) as i32 - 1023)
    }

    #[inline(always)]
    fn from_i32(e: i32) -> f64 {
        e as f64
    }

    #[inline(always)]
    fn reduce(k: u64) -> (f64, u32) {
        let q = k.wrapping_add(1 << 50) >> 51;
        let j = k.wrapping_sub(q << 51) as i64;
        (j as f64 * UNIT_F64, q as u32)
    }

    #[inline(always)]
    fn second_unit(w: [u32; 4]) -> u64 {
        unit53(w[2], w[3])
    }
}

impl DrawFloat for f32 {
    const UNIT_BITS: u32 = 24;

    #[inline(always)]
    fn unit(w: [u32; 4]) -> f32 {
        (w[0] >> 8) as f32 * UNIT_F32
    }

    #[inline(always)]
    fn std_normal(w: [u32; 4]) -> f32 {
        std_normal::<f32>(w)
    }

    #[inline(always)]
    fn ln_positive(x: f32) -> f32 {
        ln_positive(x)
    }

    #[inline(always)]
    fn cos_2pi(k: u64) -> f32 {
        let (t, q) = <f32 as Repr>::reduce(k);
        cos_reduced(t, q)
    }
}

impl DrawFloat for f64 {
    const UNIT_BITS: u32 = 53;

    #[inline(always)]
    fn unit(w: [u32; 4]) -> f64 {
        unit53(w[0], w[1]) as f64 * UNIT_F64
    }

    #[inline(always)]
    fn std_normal(w: [u32; 4]) -> f64 {
        std_normal::<f64>(w)
    }

    #[inline(always)]
    fn ln_positive(x: f64) -> f64 {
        ln_positive(x)
    }

    #[inline(always)]
    fn cos_2pi(k: u64) -> f64 {
        let (t, q) = <f64 as Repr>::reduce(k);
        cos_reduced(t, q)
    }
}

/// The uniform in [0, 1) of an element's words: 24 (f32) or 53 (f64) random bits, exactly.
#[inline(always)]
pub fn uniform01<T: DrawFloat>(w: [u32; 4]) -> T {
    T::unit(w)
}

/// One Bernoulli trial (Theano's `binomial` with n = 1): 1 with probability `p`, else 0.
#[inline(always)]
pub fn binomial<T: DrawFloat>(w: [u32; 4], p: T) -> T {
    if T::unit(w) < p {
        T::ONE
    } else {
        T::ZERO
    }
}

/// Uniform in [lo, hi): `lo + (hi - lo) * u`, rounded after each operation (which may give
/// `hi` itself).
#[inline(always)]
pub fn uniform<T: DrawFloat>(w: [u32; 4], lo: T, hi: T) -> T {
    let d = hi - lo;
    let m = d * T::unit(w);
    lo + m
}

/// Normal with mean `mean` and standard deviation `std`: `mean + std * z`.
#[inline(always)]
pub fn normal<T: DrawFloat>(w: [u32; 4], mean: T, std: T) -> T {
    let s = std * T::std_normal(w);
    mean + s
}

// ---------------------------------------------------------------------------------------------
// The PTX definition.

/// A kernel's registers for the draws' key: the seed and the call counter, as 32-bit halves
/// `[lo, hi]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRegs {
    pub seed: [Reg; 2],
    pub call: [Reg; 2],
}

impl StreamRegs {
    /// Splits two 64-bit registers (e.g. `.u64` parameters loaded with `ld_param`); once per
    /// kernel.
    pub fn split(k: &mut KernelBuilder, seed: Reg, call: Reg) -> StreamRegs {
        StreamRegs {
            seed: unpack(k, seed),
            call: unpack(k, call),
        }
    }
}

/// `[lo, hi]` of a 64-bit register.
fn unpack(k: &mut KernelBuilder, src: Reg) -> [Reg; 2] {
    let lo = k.reg(Type::B32);
    let hi = k.reg(Type::B32);
    k.push(Inst::Unpack64 { lo, hi, src });
    [lo, hi]
}

/// Philox4x32-10 of a counter (32-bit registers or immediates) under a key (32-bit
/// registers), as [`philox4x32_10`]: 98 instructions.
pub fn emit_philox4x32_10(k: &mut KernelBuilder, ctr: [Operand; 4], key: [Reg; 2]) -> [Reg; 4] {
    // The words that are multiplied go in registers: `mul.wide` takes one immediate at most.
    let in_reg = |k: &mut KernelBuilder, o: Operand| match o {
        Operand::Reg(_) => o,
        _ => Operand::Reg(k.mov(Type::U32, o)),
    };
    let mut c = [in_reg(k, ctr[0]), ctr[1], in_reg(k, ctr[2]), ctr[3]];
    let mut key = key;
    for round in 0..ROUNDS {
        if round > 0 {
            key = [
                k.bin(BinOp::Add, Type::U32, key[0], Operand::Imm(W[0] as i64)),
                k.bin(BinOp::Add, Type::U32, key[1], Operand::Imm(W[1] as i64)),
            ];
        }
        let p0 = k.bin(BinOp::MulWide, Type::U32, c[0], Operand::Imm(M[0] as i64));
        let p1 = k.bin(BinOp::MulWide, Type::U32, c[2], Operand::Imm(M[1] as i64));
        let [lo0, hi0] = unpack(k, p0);
        let [lo1, hi1] = unpack(k, p1);
        let a = k.bin(BinOp::Xor, Type::B32, hi1, c[1]);
        let a = k.bin(BinOp::Xor, Type::B32, a, key[0]);
        let b = k.bin(BinOp::Xor, Type::B32, hi0, c[3]);
        let b = k.bin(BinOp::Xor, Type::B32, b, key[1]);
        c = [a.into(), lo1.into(), b.into(), lo0.into()];
    }
    c.map(|o| match o {
        Operand::Reg(r) => r,
        _ => unreachable!("every word is a register after the first round"),
    })
}

/// The random bits of element `i` (a 32-bit register or immediate) of random op `site`, as
/// [`bits`].
pub fn emit_bits(
    k: &mut KernelBuilder,
    stream: &StreamRegs,
    i: impl Into<Operand>,
    site: u32,
) -> [Reg; 4] {
    let ctr = [
        i.into(),
        Operand::Imm(site as i64),
        stream.call[0].into(),
        stream.call[1].into(),
    ];
    emit_philox4x32_10(k, ctr, stream.seed)
}

/// The uniform in [0, 1) of the dtype, as [`uniform01`].
pub fn emit_uniform01(k: &mut KernelBuilder, dt: DType, w: [Reg; 4]) -> Reg {
    Emit::new(k, dt).unit(w)
}

/// One Bernoulli trial, as [`binomial`]; `p` a register or immediate of the dtype.
pub fn emit_binomial(k: &mut KernelBuilder, dt: DType, w: [Reg; 4], p: impl Into<Operand>) -> Reg {
    let mut e = Emit::new(k, dt);
    let u = e.unit(w);
    let ty = e.ty();
    let below = e.k.setp(Cmp::Lt, ty, u, p);
    let (one, zero) = (e.c(1.0), e.c(0.0));
    e.k.selp(ty, one, zero, below)
}

/// Uniform in [lo, hi), as [`uniform`].
pub fn emit_uniform(
    k: &mut KernelBuilder,
    dt: DType,
    w: [Reg; 4],
    lo: impl Into<Operand>,
    hi: impl Into<Operand>,
) -> Reg {
    let mut e = Emit::new(k, dt);
    let lo = lo.into();
    let u = e.unit(w);
    let d = e.bin(BinOp::Sub, hi, lo);
    let m = e.bin(BinOp::Mul, d, u);
    e.bin(BinOp::Add, lo, m)
}

/// Normal with mean `mean` and standard deviation `std`, as [`normal`].
pub fn emit_normal(
    k: &mut KernelBuilder,
    dt: DType,
    w: [Reg; 4],
    mean: impl Into<Operand>,
    std: impl Into<Operand>,
) -> Reg {
    let mut e = Emit::new(k, dt);
    let z = e.std_normal(w);
    let s = e.bin(BinOp::Mul, std, z);
    e.bin(BinOp::Add, mean, s)
}

/// The constants of one dtype, as f64 (f32 values convert back exactly).
struct Tables {
    sqrt2: f64,
    ln2_hi: f64,
    ln2_lo: f64,
    ln: Vec<f64>,
    cos: Vec<f64>,
    sin: Vec<f64>,
}

impl Tables {
    fn of<T: Repr>() -> Tables {
        let v = |c: &[T]| c.iter().map(|x| x.to_f64()).collect();
        Tables {
            sqrt2: T::SQRT2.to_f64(),
            ln2_hi: T::LN2_HI.to_f64(),
            ln2_lo: T::LN2_LO.to_f64(),
            ln: v(T::LN),
            cos: v(T::COS),
            sin: v(T::SIN),
        }
    }
}

/// Emits the Rust definition's sequences, step for step, in one dtype.
struct Emit<'a> {
    k: &'a mut KernelBuilder,
    dt: DType,
    t: Tables,
}

impl Emit<'_> {
    fn new(k: &mut KernelBuilder, dt: DType) -> Emit<'_> {
        let t = match dt {
            DType::F32 => Tables::of::<f32>(),
            DType::F64 => Tables::of::<f64>(),
        };
        Emit { k, dt, t }
    }

    fn ty(&self) -> Type {
        self.dt.ptx()
    }

    /// A float immediate of the dtype.
    fn c(&self, v: f64) -> Operand {
        match self.dt {
            DType::F32 => Operand::F32(v as f32),
            DType::F64 => Operand::F64(v),
        }
    }

    /// A float operation of the dtype (`add.rn`, `sub.rn`, `mul.rn`, `div.rn`).
    fn bin(&mut self, op: BinOp, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        let ty = self.ty();
        self.k.bin(op, ty, a, b)
    }

    /// [`horner`].
    fn horner(&mut self, x: Reg, c: &[f64]) -> Reg {
        let n = c.len();
        assert!(n >= 2, "a polynomial of degree >= 1");
        let mut p = self.bin(BinOp::Mul, x, self.c(c[n - 1]));
        p = self.bin(BinOp::Add, p, self.c(c[n - 2]));
        for &ci in c[..n - 2].iter().rev() {
            let px = self.bin(BinOp::Mul, p, x);
            p = self.bin(BinOp::Add, px, self.c(ci));
        }
        p
    }

    /// [`DrawFloat::unit`].
    fn unit(&mut self, w: [Reg; 4]) -> Reg {
        match self.dt {
            DType::F32 => {
                let kk = self.k.bin(BinOp::Shr, Type::U32, w[0], Operand::Imm(8));
                let f = self.k.cvt(CvtRound::Rn, Type::F32, Type::U32, kk);
                self.bin(BinOp::Mul, f, self.c(UNIT_F32 as f64))
            }
            DType::F64 => {
                let kk = self.unit53(w[0], w[1]);
                let f = self.k.cvt(CvtRound::Rn, Type::F64, Type::U64, kk);
                self.bin(BinOp::Mul, f, self.c(UNIT_F64))
            }
        }
    }

    /// [`unit53`].
    fn unit53(&mut self, hi: Reg, lo: Reg) -> Reg {
        let both = self.k.reg(Type::B64);
        self.k.push(Inst::Pack64 { dst: both, lo, hi });
        self.k.bin(BinOp::Shr, Type::U64, both, Operand::Imm(11))
    }

    /// [`Repr::split_exponent`]: (m, e) with e an s32 register.
    fn split_exponent(&mut self, x: Reg) -> (Reg, Reg) {
        match self.dt {
            DType::F32 => {
                let b = self.k.bitcast(x, RegClass::B32);
                let mb = self
                    .k
                    .bin(BinOp::And, Type::B32, b, Operand::Imm(0x007f_ffff));
                let mb = self
                    .k
                    .bin(BinOp::Or, Type::B32, mb, Operand::Imm(0x3f80_0000));
                let m = self.k.bitcast(mb, RegClass::F32);
                let eb = self.k.bin(BinOp::Shr, Type::U32, b, Operand::Imm(23));
                let e = self.k.bin(BinOp::Sub, Type::S32, eb, Operand::Imm(127));
                (m, e)
            }
            DType::F64 => {
                let b = self.k.bitcast(x, RegClass::B64);
                let mb = self.k.bin(
                    BinOp::And,
                    Type::B64,
                    b,
                    Operand::Imm(0x000f_ffff_ffff_ffff),
                );
                let mb = self.k.bin(
                    BinOp::Or,
                    Type::B64,
                    mb,
                    Operand::Imm(0x3ff0_0000_0000_0000),
                );
                let m = self.k.bitcast(mb, RegClass::F64);
                let eb = self.k.bin(BinOp::Shr, Type::U64, b, Operand::Imm(52));
                let eb = self.k.cvt(CvtRound::None, Type::U32, Type::U64, eb);
                let e = self.k.bin(BinOp::Sub, Type::S32, eb, Operand::Imm(1023));
                (m, e)
            }
        }
    }

    /// [`ln_positive`].
    fn ln_positive(&mut self, x: Reg) -> Reg {
        let ty = self.ty();
        let (m, e) = self.split_exponent(x);
        let big = self.k.setp(Cmp::Gt, ty, m, self.c(self.t.sqrt2));
        let mh = self.bin(BinOp::Mul, m, self.c(0.5));
        let m = self.k.selp(ty, mh, m, big);
        let inc = self
            .k
            .selp(Type::S32, Operand::Imm(1), Operand::Imm(0), big);
        let e = self.k.bin(BinOp::Add, Type::S32, e, inc);
        let f = self.bin(BinOp::Sub, m, self.c(1.0));
        let d = self.bin(BinOp::Add, m, self.c(1.0));
        let s = self.bin(BinOp::Div, f, d);
        let z = self.bin(BinOp::Mul, s, s);
        let q = self.horner(z, &self.t.ln.clone());
        let r = self.bin(BinOp::Mul, z, q);
        let hf = self.bin(BinOp::Mul, self.c(0.5), f);
        let h = self.bin(BinOp::Mul, hf, f);
        let ef = self.k.cvt(CvtRound::Rn, ty, Type::S32, e);
        let hr = self.bin(BinOp::Add, h, r);
        let shr = self.bin(BinOp::Mul, s, hr);
        let elo = self.bin(BinOp::Mul, ef, self.c(self.t.ln2_lo));
        let a = self.bin(BinOp::Add, shr, elo);
        let b = self.bin(BinOp::Sub, h, a);
        let g = self.bin(BinOp::Sub, b, f);
        let ehi = self.bin(BinOp::Mul, ef, self.c(self.t.ln2_hi));
        self.bin(BinOp::Sub, ehi, g)
    }

    /// [`Repr::reduce`] of the second uniform's integer: (t, q) with q a u32 register.
    fn reduce_second(&mut self, w: [Reg; 4]) -> (Reg, Reg) {
        match self.dt {
            DType::F32 => {
                let kk = self.k.bin(BinOp::Shr, Type::U32, w[1], Operand::Imm(8));
                let kq = self.k.bin(BinOp::Add, Type::U32, kk, Operand::Imm(1 << 21));
                let q = self.k.bin(BinOp::Shr, Type::U32, kq, Operand::Imm(22));
                let qs = self.k.bin(BinOp::Shl, Type::B32, q, Operand::Imm(22));
                let j = self.k.bin(BinOp::Sub, Type::S32, kk, qs);
                let jf = self.k.cvt(CvtRound::Rn, Type::F32, Type::S32, j);
                let t = self.bin(BinOp::Mul, jf, self.c(UNIT_F32 as f64));
                (t, q)
            }
            DType::F64 => {
                let kk = self.unit53(w[2], w[3]);
                let kq = self.k.bin(BinOp::Add, Type::U64, kk, Operand::Imm(1 << 50));
                let q = self.k.bin(BinOp::Shr, Type::U64, kq, Operand::Imm(51));
                let qs = self.k.bin(BinOp::Shl, Type::B64, q, Operand::Imm(51));
                let j = self.k.bin(BinOp::Sub, Type::S64, kk, qs);
                let jf = self.k.cvt(CvtRound::Rn, Type::F64, Type::S64, j);
                let t = self.bin(BinOp::Mul, jf, self.c(UNIT_F64));
                let q = self.k.cvt(CvtRound::None, Type::U32, Type::U64, q);
                (t, q)
            }
        }
    }

    /// [`cos_reduced`].
    fn cos_reduced(&mut self, t: Reg, q: Reg) -> Reg {
        let ty = self.ty();
        let x = self.bin(BinOp::Mul, t, t);
        let c = self.horner(x, &self.t.cos.clone());
        let sp = self.horner(x, &self.t.sin.clone());
        let t6 = self.bin(BinOp::Mul, t, self.c(6.0));
        let tp = self.bin(BinOp::Mul, t, sp);
        let s = self.bin(BinOp::Add, t6, tp);
        let odd = self.k.bin(BinOp::And, Type::B32, q, Operand::Imm(1));
        let odd = self.k.setp(Cmp::Ne, Type::U32, odd, Operand::Imm(0));
        let v = self.k.selp(ty, s, c, odd);
        let q1 = self.k.bin(BinOp::Add, Type::U32, q, Operand::Imm(1));
        let neg = self.k.bin(BinOp::And, Type::B32, q1, Operand::Imm(2));
        let neg = self.k.setp(Cmp::Ne, Type::U32, neg, Operand::Imm(0));
        let nv = self.k.un(UnOp::Neg, ty, v);
        self.k.selp(ty, nv, v, neg)
    }

    /// [`std_normal`].
    fn std_normal(&mut self, w: [Reg; 4]) -> Reg {
        let ty = self.ty();
        let u = self.unit(w);
        let u1 = self.bin(BinOp::Sub, self.c(1.0), u);
        let l = self.ln_positive(u1);
        let l2 = self.bin(BinOp::Mul, l, self.c(-2.0));
        let r = self.k.un(UnOp::Sqrt, ty, l2);
        let (t, q) = self.reduce_second(w);
        let c = self.cos_reduced(t, q);
        self.bin(BinOp::Mul, r, c)
    }
}
