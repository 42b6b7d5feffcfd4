//! Elementwise math as PTX instruction sequences, for f32 and f64.
//!
//! Everything is branch-free straight-line code (both sides of a choice are computed and one is
//! selected with `selp`), so it can sit anywhere in a kernel, under any control flow.
//!
//! Accuracy (max. error against the correctly rounded result, for finite inputs):
//! - `exp`: f32 uses `ex2.approx` on a Cody-Waite reduced argument `r = x - n ln2` (|r| <= ln2/2)
//!   and scales by 2^n exactly: the reduction costs ~1 ulp, `ex2.approx` adds its documented
//!   2^-22 relative error: <= 3 ulp in all. f64 has no approximate instructions, so `e^r` is a
//!   degree-13 Taylor polynomial (truncation < 2^-58): <= 2 ulp. Both handle overflow to inf,
//!   underflow through subnormals to 0, and NaN.
//! - `log`: software for both dtypes, since `lg2.approx` has an *absolute* error of 2^-22 near
//!   1, where log is small (the relative error there would be unbounded). x = m 2^e with
//!   m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s), s = (m-1)/(m+1), as an odd series in s
//!   (5 terms for f32, 10 for f64; truncation below 2^-28 / 2^-55): <= 2 ulp. Subnormals are
//!   scaled first; 0 -> -inf, x < 0 -> NaN, inf -> inf.
//! - `log1p(x) = log(u) + (x - (u - 1)) / u` with u = 1 + x: the correction recovers the
//!   rounding error of u, so tiny x stay exact: <= 3 ulp.
//! - `expm1(y)`: Taylor polynomial for |y| < ln2/2 (degree 8 / 13), else `exp(y) - 1`: <= 4 ulp
//!   (f32), <= 3 ulp (f64).
//! - `tanh(x) = sign(x) e/(e + 2)`, e = expm1(2|x|) (|x| clamped at 20, where tanh is 1), and x
//!   itself for |x| < 2^-12 / 2^-27: <= 6 ulp (f32), <= 4 ulp (f64).
//! - `sigmoid(x)`: `1 / (1 + e)` for x >= 0, `e / (1 + e)` for x < 0, with e = exp(-|x|), the
//!   ops' definition (`scalar::sigmoid`): <= 4 ulp everywhere.
//! - `softplus(x) = max(x, 0) + log1p(exp(-|x|))`: <= 5 ulp.
//! - `erf`: the polynomials and regions of `scalar::erf`, evaluated with fused multiply-adds
//!   (f32 in f64 arithmetic with the f32 `exp`, as on the CPU): <= 2 ulp.
//! - `pow(x, k)`: integers by repeated squaring (the CPU's `powi`; one rounding per multiply),
//!   0.5 by `sqrt.rn`, others as `exp(k log|x|)` with `k log|x|` carried as a hi + lo pair, so
//!   that its rounding is not magnified by the exp: <= 4 ulp + ~|k| ulp (the error of log m).
//! - `sqrt`, `/`, `+`, `*` are IEEE-correct (`.rn`).
//!
//! The interpreter evaluates `ex2.approx` exactly (rounded from f64), so tests measure the
//! algorithm; the budget above includes the hardware's documented approximation error.

use crate::ir::{Binary, DType, RedKind, Unary};
use crate::ptx::{BinOp, Cmp, CvtRound, KernelBuilder, Operand, Reg, RegClass, Type, UnOp};
use crate::scalar::erf::{self, Poly};

const LOG2E: f64 = std::f64::consts::LOG2_E;

/// Emits float math of one dtype into a kernel.
pub(crate) struct Fx<'a> {
    pub k: &'a mut KernelBuilder,
    pub dt: DType,
}

impl Fx<'_> {
    pub fn new(k: &mut KernelBuilder, dt: DType) -> Fx<'_> {
        Fx { k, dt }
    }

    fn ty(&self) -> Type {
        self.dt.ptx()
    }

    /// A float immediate of the dtype.
    pub fn c(&self, v: f64) -> Operand {
        match self.dt {
            DType::F32 => Operand::F32(v as f32),
            DType::F64 => Operand::F64(v),
        }
    }

    pub fn konst(&mut self, v: f64) -> Reg {
        let ty = self.ty();
        let c = self.c(v);
        self.k.mov(ty, c)
    }

    pub fn add(&mut self, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        let ty = self.ty();
        self.k.bin(BinOp::Add, ty, a, b)
    }

    pub fn sub(&mut self, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        let ty = self.ty();
        self.k.bin(BinOp::Sub, ty, a, b)
    }

    pub fn mul(&mut self, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        let ty = self.ty();
        self.k.bin(BinOp::Mul, ty, a, b)
    }

    pub fn div(&mut self, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        let ty = self.ty();
        self.k.bin(BinOp::Div, ty, a, b)
    }

    pub fn fma(
        &mut self,
        a: impl Into<Operand>,
        b: impl Into<Operand>,
        c: impl Into<Operand>,
    ) -> Reg {
        let ty = self.ty();
        self.k.fma(ty, a, b, c)
    }

    fn min(&mut self, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        let ty = self.ty();
        self.k.bin(BinOp::Min, ty, a, b)
    }

    fn max(&mut self, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        let ty = self.ty();
        self.k.bin(BinOp::Max, ty, a, b)
    }

    fn un(&mut self, op: UnOp, a: impl Into<Operand>) -> Reg {
        let ty = self.ty();
        self.k.un(op, ty, a)
    }

    pub fn setp(&mut self, cmp: Cmp, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        let ty = self.ty();
        self.k.setp(cmp, ty, a, b)
    }

    /// `p ? a : b`.
    pub fn select(&mut self, p: Reg, a: impl Into<Operand>, b: impl Into<Operand>) -> Reg {
        let ty = self.ty();
        self.k.selp(ty, a, b, p)
    }

    /// `x` where `x` is NaN, else `r`: the range clamps below would turn NaN into a number.
    fn nan_passthrough(&mut self, x: Reg, r: Reg) -> Reg {
        let p = self.setp(Cmp::Nan, x, x);
        self.select(p, x, r)
    }

    fn horner(&mut self, x: Reg, coeffs_high_to_low: &[f64]) -> Reg {
        let mut p = self.konst(coeffs_high_to_low[0]);
        for &c in &coeffs_high_to_low[1..] {
            let c = self.c(c);
            p = self.fma(p, x, c);
        }
        p
    }

    /// 2^n for an s32 `n` inside the normal exponent range.
    fn pow2(&mut self, n: Reg) -> Reg {
        match self.dt {
            DType::F32 => {
                let b = self.k.bin(BinOp::Add, Type::S32, n, Operand::Imm(127));
                let b = self.k.bin(BinOp::Shl, Type::B32, b, Operand::Imm(23));
                self.k.bitcast(b, RegClass::F32)
            }
            DType::F64 => {
                let b = self.k.bin(BinOp::Add, Type::S32, n, Operand::Imm(1023));
                let b = self.k.cvt(CvtRound::None, Type::U64, Type::U32, b);
                let b = self.k.bin(BinOp::Shl, Type::B64, b, Operand::Imm(52));
                self.k.bitcast(b, RegClass::F64)
            }
        }
    }

    /// p * 2^n as two exact power-of-two products, so that results near the overflow and
    /// subnormal thresholds need no 2^n outside the normal range.
    fn scale2(&mut self, p: Reg, n: Reg) -> Reg {
        let n1 = self.k.bin(BinOp::Shr, Type::S32, n, Operand::Imm(1));
        let n2 = self.k.bin(BinOp::Sub, Type::S32, n, n1);
        let s1 = self.pow2(n1);
        let s2 = self.pow2(n2);
        let r = self.mul(p, s1);
        self.mul(r, s2)
    }

    pub fn exp(&mut self, x: Reg) -> Reg {
        // Clamp where e^x is already 0 or inf, so that n fits the scaling below; NaN is
        // restored at the end.
        let (lo, hi, ln2_hi, ln2_lo) = match self.dt {
            // ln2_hi has trailing zero bits, so n * ln2_hi is exact for |n| <= 2^8 (f32) / 2^11.
            DType::F32 => (
                -104.0,
                89.0,
                0.693_145_751_953_125,
                1.428_606_765_330_187e-6,
            ),
            DType::F64 => (
                -746.0,
                710.0,
                6.931_471_803_691_238e-1,
                1.908_214_929_270_587_7e-10,
            ),
        };
        let xc = self.max(x, self.c(lo));
        let xc = self.min(xc, self.c(hi));
        let t = self.mul(xc, self.c(LOG2E));
        let ty = self.ty();
        let nf = self.k.cvt(CvtRound::Rni, ty, ty, t);
        let r = self.fma(nf, self.c(-ln2_hi), xc);
        let r = self.fma(nf, self.c(-ln2_lo), r);
        let p = match self.dt {
            DType::F32 => {
                let r2 = self.mul(r, self.c(LOG2E));
                self.un(UnOp::Ex2, r2)
            }
            DType::F64 => {
                // e^r = sum r^i / i!, i <= 13: the first omitted term is < 2^-58 for |r| <= ln2/2.
                let coeffs: Vec<f64> = (0..=13u32).rev().map(|i| 1.0 / factorial(i)).collect();
                self.horner(r, &coeffs)
            }
        };
        let n = self.k.cvt(CvtRound::Rzi, Type::S32, ty, nf);
        let res = self.scale2(p, n);
        self.nan_passthrough(x, res)
    }

    pub fn expm1(&mut self, x: Reg) -> Reg {
        let degree = match self.dt {
            DType::F32 => 8,
            DType::F64 => 13,
        };
        // x + x^2 (1/2! + x/3! + ...): the leading x is exact, the tail small.
        let coeffs: Vec<f64> = (2..=degree).rev().map(|i| 1.0 / factorial(i)).collect();
        let q = self.horner(x, &coeffs);
        let x2 = self.mul(x, x);
        let small = self.fma(q, x2, x);
        let e = self.exp(x);
        let big = self.sub(e, self.c(1.0));
        let ax = self.un(UnOp::Abs, x);
        let p = self.setp(Cmp::Lt, ax, self.c(std::f64::consts::LN_2 / 2.0));
        self.select(p, small, big)
    }

    /// log(x) of a positive finite x as `e ln2 + log m`: returns (e as a float, log m), with
    /// |log m| <= ln(2)/2. Other inputs give garbage; see [`Fx::log_specials`].
    fn log_parts(&mut self, x: Reg) -> (Reg, Reg) {
        let ty = self.ty();
        let (min_normal, scale, scale_bits, terms, sqrt2) = match self.dt {
            DType::F32 => (
                f32::MIN_POSITIVE as f64,
                16_777_216.0,
                24,
                5,
                std::f32::consts::SQRT_2 as f64,
            ),
            DType::F64 => (
                f64::MIN_POSITIVE,
                18_014_398_509_481_984.0,
                54,
                10,
                std::f64::consts::SQRT_2,
            ),
        };
        // Subnormals: scale into the normal range and correct the exponent.
        let sub = self.setp(Cmp::Lt, x, self.c(min_normal));
        let xs = self.mul(x, self.c(scale));
        let xs = self.select(sub, xs, x);
        let adj = self
            .k
            .selp(Type::S32, Operand::Imm(scale_bits), Operand::Imm(0), sub);
        // x = m 2^e with m in [1, 2), from the bits.
        let (e, m) = match self.dt {
            DType::F32 => {
                let bits = self.k.bitcast(xs, RegClass::B32);
                let eb = self.k.bin(BinOp::Shr, Type::U32, bits, Operand::Imm(23));
                let e = self.k.bin(BinOp::Sub, Type::S32, eb, Operand::Imm(127));
                let mb = self
                    .k
                    .bin(BinOp::And, Type::B32, bits, Operand::Imm(0x007f_ffff));
                let mb = self
                    .k
                    .bin(BinOp::Or, Type::B32, mb, Operand::Imm(0x3f80_0000));
                (e, self.k.bitcast(mb, RegClass::F32))
            }
            DType::F64 => {
                let bits = self.k.bitcast(xs, RegClass::B64);
                let eb = self.k.bin(BinOp::Shr, Type::U64, bits, Operand::Imm(52));
                let eb = self.k.cvt(CvtRound::None, Type::U32, Type::U64, eb);
                let e = self.k.bin(BinOp::Sub, Type::S32, eb, Operand::Imm(1023));
                let mb = self.k.bin(
                    BinOp::And,
                    Type::B64,
                    bits,
                    Operand::Imm(0x000f_ffff_ffff_ffff),
                );
                let mb = self.k.bin(
                    BinOp::Or,
                    Type::B64,
                    mb,
                    Operand::Imm(0x3ff0_0000_0000_0000),
                );
                (e, self.k.bitcast(mb, RegClass::F64))
            }
        };
        let e = self.k.bin(BinOp::Sub, Type::S32, e, adj);
        // Move m into [sqrt(1/2), sqrt(2)) so that |s| <= 0.1716.
        let big = self.setp(Cmp::Gt, m, self.c(sqrt2));
        let mh = self.mul(m, self.c(0.5));
        let m = self.select(big, mh, m);
        let inc = self
            .k
            .selp(Type::S32, Operand::Imm(1), Operand::Imm(0), big);
        let e = self.k.bin(BinOp::Add, Type::S32, e, inc);
        // log m = 2 atanh(s) = 2s (1 + z/3 + z^2/5 + ...), z = s^2; m - 1 is exact (Sterbenz).
        let num = self.sub(m, self.c(1.0));
        let den = self.add(m, self.c(1.0));
        let s = self.div(num, den);
        let z = self.mul(s, s);
        let coeffs: Vec<f64> = (1..terms).rev().map(|i| 1.0 / (2 * i + 1) as f64).collect();
        let q = self.horner(z, &coeffs);
        let s2 = self.add(s, s);
        let s2z = self.mul(s2, z);
        let logm = self.fma(s2z, q, s2);
        let ef = self.k.cvt(CvtRound::Rn, ty, Type::S32, e);
        (ef, logm)
    }

    /// ln 2 split so that `e * hi` is exact for every exponent e of the dtype.
    fn ln2_parts(&self) -> (f64, f64) {
        match self.dt {
            DType::F32 => (0.693_145_751_953_125, 1.428_606_765_330_187e-6),
            DType::F64 => (6.931_471_803_691_238e-1, 1.908_214_929_270_587_7e-10),
        }
    }

    /// `res` where x is positive and finite; log's values elsewhere: inf -> inf, 0 -> -inf,
    /// negative or NaN -> NaN.
    fn log_specials(&mut self, x: Reg, res: Reg) -> Reg {
        let inf = self.setp(Cmp::Eq, x, self.c(f64::INFINITY));
        let res = self.select(inf, self.c(f64::INFINITY), res);
        let zero = self.setp(Cmp::Eq, x, self.c(0.0));
        let res = self.select(zero, self.c(f64::NEG_INFINITY), res);
        let bad = self.setp(Cmp::Ltu, x, self.c(0.0));
        self.select(bad, self.c(f64::NAN), res)
    }

    pub fn log(&mut self, x: Reg) -> Reg {
        let (ef, logm) = self.log_parts(x);
        let (hi, lo) = self.ln2_parts();
        let l = self.fma(ef, self.c(lo), logm);
        let res = self.fma(ef, self.c(hi), l);
        self.log_specials(x, res)
    }

    pub fn log1p(&mut self, x: Reg) -> Reg {
        let u = self.add(x, self.c(1.0));
        let um1 = self.sub(u, self.c(1.0));
        let c = self.sub(x, um1);
        let corr = self.div(c, u);
        // u = 0 (x = -1) and u = inf give 0/0 and inf-inf: no correction is due there.
        let ok = self.setp(Cmp::Num, corr, corr);
        let corr = self.select(ok, corr, self.c(0.0));
        let l = self.log(u);
        let r = self.add(l, corr);
        // Where 1 + x rounds to 1, log1p(x) = x - x^2/2 + ... rounds to x (and keeps -0).
        let one = self.setp(Cmp::Eq, u, self.c(1.0));
        self.select(one, x, r)
    }

    pub fn tanh(&mut self, x: Reg) -> Reg {
        let ax = self.un(UnOp::Abs, x);
        let y = self.add(ax, ax);
        let y = self.min(y, self.c(40.0));
        let e = self.expm1(y);
        let d = self.add(e, self.c(2.0));
        let t = self.div(e, d);
        let nt = self.un(UnOp::Neg, t);
        let neg = self.setp(Cmp::Lt, x, self.c(0.0));
        let r = self.select(neg, nt, t);
        // tanh x = x (1 - x^2/3 + ...) rounds to x below the threshold; this also keeps -0.
        let tiny = match self.dt {
            DType::F32 => 2f64.powi(-12),
            DType::F64 => 2f64.powi(-27),
        };
        let small = self.setp(Cmp::Lt, ax, self.c(tiny));
        let r = self.select(small, x, r);
        self.nan_passthrough(x, r)
    }

    pub fn sigmoid(&mut self, x: Reg) -> Reg {
        // With e = e^-|x| in (0, 1]: 1 / (1 + e) for x >= 0 and e / (1 + e) for x < 0. Never
        // overflows, and unlike 1 / (1 + e^-x) it keeps relative accuracy where sigmoid is tiny.
        let ax = self.un(UnOp::Abs, x);
        let nax = self.un(UnOp::Neg, ax);
        let e = self.exp(nax);
        let d = self.add(e, self.c(1.0));
        let pos = self.div(self.c(1.0), d);
        let neg = self.div(e, d);
        let p = self.setp(Cmp::Lt, x, self.c(0.0));
        self.select(p, neg, pos)
    }

    pub fn softplus(&mut self, x: Reg) -> Reg {
        // log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow for large x.
        let ax = self.un(UnOp::Abs, x);
        let nax = self.un(UnOp::Neg, ax);
        let e = self.exp(nax);
        let l = self.log1p(e);
        let m = self.max(x, self.c(0.0));
        self.add(m, l)
    }

    /// x^k for an integer k, as the CPU's `powi` computes it (compiler-rt's `__powi*f2`).
    fn powi(&mut self, x: Reg, k: i64) -> Reg {
        let mut b = k.unsigned_abs();
        let mut a = x;
        let mut r: Option<Reg> = None;
        loop {
            if b & 1 == 1 {
                r = Some(match r {
                    None => a,
                    Some(r) => self.mul(r, a),
                });
            }
            b /= 2;
            if b == 0 {
                break;
            }
            a = self.mul(a, a);
        }
        let r = match r {
            Some(r) => r,
            None => self.konst(1.0),
        };
        if k < 0 {
            self.un(UnOp::Rcp, r)
        } else {
            // A fresh register, so that the result is never the operand itself.
            let ty = self.ty();
            self.k.mov(ty, r)
        }
    }

    pub fn pow(&mut self, x: Reg, k: f64) -> Reg {
        if k == 0.5 {
            return self.un(UnOp::Sqrt, x);
        }
        if k.fract() == 0.0 && k.abs() < 2f64.powi(31) {
            return self.powi(x, k as i64);
        }
        // exp(k log|x|), NaN for finite negative x; pow(-inf, k) = pow(inf, k) for such k.
        // k log|x| is carried as hi + lo: rounding it to one float would cost |k log x| ulps
        // after the exp. log|x| = a + b with a = e ln2_hi exact and |b| <= |a| (or a = 0), so
        // Fast2Sum gives the rounding error of a + b exactly.
        let ax = self.un(UnOp::Abs, x);
        let (ef, logm) = self.log_parts(ax);
        let (ln2_hi, ln2_lo) = self.ln2_parts();
        let a = self.mul(ef, self.c(ln2_hi));
        let l_hi = self.add(a, logm);
        let d = self.sub(a, l_hi);
        let err = self.add(d, logm);
        let l_lo = self.fma(ef, self.c(ln2_lo), err);
        let l_hi = self.log_specials(ax, l_hi);
        let t_hi = self.mul(l_hi, self.c(k));
        let nt = self.un(UnOp::Neg, t_hi);
        let t_lo = self.fma(l_hi, self.c(k), nt);
        let t_lo = self.fma(l_lo, self.c(k), t_lo);
        // Infinite logs (x = 0 or inf) make the error terms NaN: there is nothing to correct.
        let ok = self.setp(Cmp::Num, t_lo, t_lo);
        let t_lo = self.select(ok, t_lo, self.c(0.0));
        // Renormalize (Fast2Sum again): t_lo holds e ln2_lo, far above t_hi's rounding error,
        // and e^t_lo ~ 1 + t_lo below needs it tiny.
        let t = self.add(t_hi, t_lo);
        let d = self.sub(t_hi, t);
        let t_lo = self.add(d, t_lo);
        let ok = self.setp(Cmp::Num, t_lo, t_lo);
        let t_lo = self.select(ok, t_lo, self.c(0.0));
        let t_hi = t;
        let e = self.exp(t_hi);
        let r = self.fma(e, t_lo, e);
        // e = inf times a zero correction is NaN; e itself is the answer then.
        let num = self.setp(Cmp::Num, r, r);
        let r = self.select(num, r, e);
        let neg = self.setp(Cmp::Lt, x, self.c(0.0));
        let fin = self.setp(Cmp::Ne, x, self.c(f64::NEG_INFINITY));
        let bad = self.k.bin(BinOp::And, Type::Pred, neg, fin);
        self.select(bad, self.c(f64::NAN), r)
    }

    /// A polynomial of `scalar::erf` at `v` (in this dtype): t = (v - c) / h, then Horner.
    fn erf_poly(&mut self, p: &Poly, v: Reg) -> Reg {
        let d = self.sub(v, self.c(p.c));
        let t = self.div(d, self.c(p.h));
        let high_to_low: Vec<f64> = p.coef.iter().rev().copied().collect();
        self.horner(t, &high_to_low)
    }

    /// erf, as `scalar::erf` computes it (same polynomials, same regions), without branches.
    /// f32 works in f64 with the f32 exponential, like the CPU.
    pub fn erf(&mut self, x: Reg) -> Reg {
        match self.dt {
            DType::F32 => {
                let xd = self.k.cvt(CvtRound::None, Type::F64, Type::F32, x);
                let mut d = Fx::new(self.k, DType::F64);
                // Small |x|: s + s R(s^2), odd in s, so the sign (and -0) come out right.
                let s = d.max(xd, d.c(-2.0));
                let s = d.min(s, d.c(2.0));
                let z = d.mul(s, s);
                let r = d.erf_poly(&erf::F32_SMALL, z);
                let small = d.fma(s, r, s);
                // Large |x|: 1 - e^(-x^2) G(1/x), with the f32 exponential.
                let a = d.un(UnOp::Abs, xd);
                let l = d.max(a, d.c(2.0));
                let l = d.min(l, d.c(4.0));
                let l2 = d.mul(l, l);
                let nl2 = d.un(UnOp::Neg, l2);
                let nl2 = d.k.cvt(CvtRound::Rn, Type::F32, Type::F64, nl2);
                let e = Fx::new(d.k, DType::F32).exp(nl2);
                let mut d = Fx::new(self.k, DType::F64);
                let e = d.k.cvt(CvtRound::None, Type::F64, Type::F32, e);
                let u = d.div(d.c(1.0), l);
                let g = d.erf_poly(&erf::F32_LARGE, u);
                let ne = d.un(UnOp::Neg, e);
                let large = d.fma(ne, g, d.c(1.0));
                let far = d.setp(Cmp::Lt, a, d.c(4.0));
                let large = d.select(far, large, d.c(1.0));
                let neg = d.setp(Cmp::Lt, xd, d.c(0.0));
                let nlarge = d.un(UnOp::Neg, large);
                let large = d.select(neg, nlarge, large);
                let near = d.setp(Cmp::Le, a, d.c(2.0));
                let y = d.select(near, small, large);
                let y = d.k.cvt(CvtRound::Rn, Type::F32, Type::F64, y);
                self.nan_passthrough(x, y)
            }
            DType::F64 => {
                let s = self.max(x, self.c(-1.0));
                let s = self.min(s, self.c(1.0));
                let z = self.mul(s, s);
                let r = self.erf_poly(&erf::F64_SMALL, z);
                let small = self.fma(s, r, s);
                // 1 < |x| < 6: 1 - e^(-x^2) G, G by x below 2 and by 1/x above.
                let a = self.un(UnOp::Abs, x);
                let t = self.max(a, self.c(1.0));
                let t = self.min(t, self.c(6.0));
                let t2 = self.mul(t, t);
                let nt2 = self.un(UnOp::Neg, t2);
                let e = self.exp(nt2);
                let mid = self.erf_poly(&erf::F64_MID, t);
                let u = self.div(self.c(1.0), t);
                let far = self.erf_poly(&erf::F64_LARGE, u);
                let two = self.setp(Cmp::Le, a, self.c(2.0));
                let g = self.select(two, mid, far);
                let ne = self.un(UnOp::Neg, e);
                let large = self.fma(ne, g, self.c(1.0));
                let six = self.setp(Cmp::Lt, a, self.c(6.0));
                let large = self.select(six, large, self.c(1.0));
                let neg = self.setp(Cmp::Lt, x, self.c(0.0));
                let nlarge = self.un(UnOp::Neg, large);
                let large = self.select(neg, nlarge, large);
                let one = self.setp(Cmp::Le, a, self.c(1.0));
                let y = self.select(one, small, large);
                self.nan_passthrough(x, y)
            }
        }
    }

    pub fn unary(&mut self, u: Unary, x: Reg) -> Reg {
        match u {
            Unary::Neg => self.un(UnOp::Neg, x),
            Unary::Exp => self.exp(x),
            Unary::Log => self.log(x),
            Unary::Log1p => self.log1p(x),
            Unary::Sqrt => self.un(UnOp::Sqrt, x),
            Unary::Tanh => self.tanh(x),
            Unary::Erf => self.erf(x),
            Unary::Sigmoid => self.sigmoid(x),
            Unary::Softplus => self.softplus(x),
            Unary::Relu => {
                // Unordered: NaN passes through, like the CPU's relu.
                let p = self.setp(Cmp::Gtu, x, self.c(0.0));
                self.select(p, x, self.c(0.0))
            }
            Unary::Abs => self.un(UnOp::Abs, x),
            Unary::Sign => {
                // x * 0 keeps the sign of zero and NaN for the "neither" case.
                let z = self.mul(x, self.c(0.0));
                let lt = self.setp(Cmp::Lt, x, self.c(0.0));
                let r = self.select(lt, self.c(-1.0), z);
                let gt = self.setp(Cmp::Gt, x, self.c(0.0));
                self.select(gt, self.c(1.0), r)
            }
            Unary::Step => {
                let p = self.setp(Cmp::Gt, x, self.c(0.0));
                self.select(p, self.c(1.0), self.c(0.0))
            }
            Unary::Pow(k) => self.pow(x, k.get()),
        }
    }

    /// `a` where `a` is NaN or `a >= b`, else `b` (`cmp` = Ge); the mirror for Le. This is the
    /// CPU's `max_nan`/`min_nan`: NaN in either operand gives NaN.
    fn pick_nan(&mut self, cmp: Cmp, a: Reg, b: Reg) -> Reg {
        let p = self.setp(cmp, a, b);
        let q = self.setp(Cmp::Nan, a, a);
        let pq = self.k.bin(BinOp::Or, Type::Pred, p, q);
        self.select(pq, a, b)
    }

    pub fn binary(&mut self, op: Binary, a: Reg, b: Reg) -> Reg {
        match op {
            Binary::Add => self.add(a, b),
            Binary::Mul => self.mul(a, b),
            Binary::Div => self.div(a, b),
            Binary::Maximum => self.pick_nan(Cmp::Ge, a, b),
            Binary::Minimum => self.pick_nan(Cmp::Le, a, b),
            Binary::Ge => {
                let p = self.setp(Cmp::Ge, a, b);
                self.select(p, self.c(1.0), self.c(0.0))
            }
            Binary::Eq => {
                let p = self.setp(Cmp::Eq, a, b);
                self.select(p, self.c(1.0), self.c(0.0))
            }
            Binary::Gt => {
                let p = self.setp(Cmp::Gt, a, b);
                self.select(p, self.c(1.0), self.c(0.0))
            }
            Binary::Lt => {
                let p = self.setp(Cmp::Lt, a, b);
                self.select(p, self.c(1.0), self.c(0.0))
            }
            Binary::Le => {
                let p = self.setp(Cmp::Le, a, b);
                self.select(p, self.c(1.0), self.c(0.0))
            }
            // Unordered: NaN differs from everything.
            Binary::Ne => {
                let p = self.setp(Cmp::Neu, a, b);
                self.select(p, self.c(1.0), self.c(0.0))
            }
        }
    }

    /// A reduction's identity: what a thread holds before it has seen any point. For argmax
    /// it is (-inf, position 0), which every point beats but a -inf at a later position: the
    /// tie goes to position 0, which holds -inf too when the maximum is -inf (and an empty
    /// range gives 0, as it should).
    pub fn identity(&mut self, kind: RedKind) -> Partial {
        match kind {
            RedKind::Sum => Partial::value(self.konst(0.0)),
            RedKind::Max => Partial::value(self.konst(f64::NEG_INFINITY)),
            RedKind::ArgMax => {
                let v = self.konst(f64::NEG_INFINITY);
                let at = self.k.mov(Type::U32, Operand::Imm(0));
                Partial { v, at: Some(at) }
            }
        }
    }

    /// Folds the point `x` at position `at` into `acc`, whose positions all come before `at`
    /// (a thread visits its points in increasing order). For argmax the later point wins only
    /// when it is greater or the first NaN: `x > best` or `x` NaN, unless `best` is NaN.
    pub fn step(&mut self, kind: RedKind, acc: Partial, x: Reg, at: Reg) -> Partial {
        match kind {
            RedKind::Sum | RedKind::Max => self.combine(kind, acc, Partial::value(x)),
            RedKind::ArgMax => {
                let best = acc.v;
                let gtu = self.setp(Cmp::Gtu, x, best);
                let num = self.setp(Cmp::Num, best, best);
                let take = self.k.bin(BinOp::And, Type::Pred, gtu, num);
                let v = self.select(take, x, best);
                let at = self.k.selp(Type::U32, at, acc.index(), take);
                Partial { v, at: Some(at) }
            }
        }
    }

    /// Folds two partials of any positions. Commutative, bit for bit (the same result whichever
    /// comes first), so butterfly shuffles leave every lane with the same bits. For argmax the
    /// order is: NaN above every number, then by value, and among equal values (all NaNs
    /// being equal) the lower position first.
    pub fn combine(&mut self, kind: RedKind, a: Partial, b: Partial) -> Partial {
        match kind {
            RedKind::Sum => Partial::value(self.add(a.v, b.v)),
            RedKind::Max => Partial::value(self.binary(Binary::Maximum, a.v, b.v)),
            RedKind::ArgMax => {
                let (ai, bi) = (a.index(), b.index());
                let na = self.setp(Cmp::Nan, a.v, a.v);
                let nb = self.setp(Cmp::Nan, b.v, b.v);
                let gt = self.setp(Cmp::Gt, b.v, a.v);
                let eq = self.setp(Cmp::Eq, b.v, a.v);
                let before = self.k.setp(Cmp::Lt, Type::U32, bi, ai);
                // b above a: b NaN and a not, or b > a.
                let num_a = self.k.un(UnOp::Not, Type::Pred, na);
                let nan_b = self.k.bin(BinOp::And, Type::Pred, nb, num_a);
                let above = self.k.bin(BinOp::Or, Type::Pred, gt, nan_b);
                // b level with a: equal numbers, or both NaN.
                let nans = self.k.bin(BinOp::And, Type::Pred, na, nb);
                let level = self.k.bin(BinOp::Or, Type::Pred, eq, nans);
                let first = self.k.bin(BinOp::And, Type::Pred, level, before);
                let take = self.k.bin(BinOp::Or, Type::Pred, above, first);
                let v = self.select(take, b.v, a.v);
                let at = self.k.selp(Type::U32, bi, ai, take);
                Partial { v, at: Some(at) }
            }
        }
    }
}

/// A reduction's partial result in registers: its value (of the dtype) and, for argmax, the
/// position (a u32 along the folded axis, or the flat index) where that value is. The position
/// stays an integer until it is stored, so indices are exact in f32 kernels too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Partial {
    pub v: Reg,
    pub at: Option<Reg>,
}

impl Partial {
    pub fn value(v: Reg) -> Partial {
        Partial { v, at: None }
    }

    /// The position register of an argmax partial.
    pub fn index(&self) -> Reg {
        self.at.expect("an argmax partial carries its position")
    }
}

fn factorial(n: u32) -> f64 {
    (1..=n).map(f64::from).product()
}
