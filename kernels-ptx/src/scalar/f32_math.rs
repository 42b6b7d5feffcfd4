//! Branch-free f32 `exp`, `ln`, `ln_1p` and `tanh` that LLVM vectorizes inside the generated loops
//! (libm's versions are calls, which keep every loop scalar). Each is within a few ulp of the
//! correctly rounded result over its whole domain and keeps IEEE behaviour at the edges:
//! exp overflows to inf and underflows to 0, ln(0) = -inf, ln(x < 0) = NaN, NaN propagates.

const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// e^x.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    // x = n ln2 + r with |r| <= ln2 / 2; e^x = 2^n e^r.
    let xc = x.clamp(-104.0, 89.0);
    // Round to nearest by adding 1.5 * 2^23 (exact for |n| < 2^22): a plain add, where
    // `round` would be a libm call on baseline x86-64 and stop the loop from vectorizing.
    const SHIFT: f32 = 12_582_912.0;
    let n = (xc * std::f32::consts::LOG2_E + SHIFT) - SHIFT;
    let r = xc - n * LN2_HI - n * LN2_LO;
    // e^r by its Taylor polynomial to degree 7 (error < 2e-9 on |r| <= 0.35).
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = p * r + 1.0;
    let p = p * r + 1.0;
    // 2^n as two factors, so n down to -150 (subnormal results) and up to 128 (inf) work.
    let n = n as i32;
    let h = n / 2;
    let s1 = f32::from_bits(((h + 127) as u32) << 23);
    let s2 = f32::from_bits(((n - h + 127) as u32) << 23);
    let y = p * s1 * s2;
    if x.is_nan() {
        x
    } else {
        y
    }
}

/// Natural logarithm.
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    // Subnormals: scale into the normal range first.
    let sub = x < f32::MIN_POSITIVE;
    let xs = if sub { x * 16_777_216.0 } else { x };
    let bits = xs.to_bits();
    // x = m 2^e with m in [sqrt(1/2), sqrt(2)).
    let e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    let e = (e + i32::from(big)) as f32 - if sub { 24.0 } else { 0.0 };
    // ln(m) = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716.
    let s = (m - 1.0) / (m + 1.0);
    let z = s * s;
    let p = 2.0 / 9.0;
    let p = p * z + 2.0 / 7.0;
    let p = p * z + 2.0 / 5.0;
    let p = p * z + 2.0 / 3.0;
    let p = p * z + 2.0;
    let y = e * LN2_HI + (s * p + e * LN2_LO);
    if x == 0.0 {
        f32::NEG_INFINITY
    } else if x < 0.0 || x.is_nan() {
        f32::NAN
    } else if x == f32::INFINITY {
        x
    } else {
        y
    }
}

/// ln(1 + x), accurate for small x.
#[inline(always)]
pub fn ln_1p_f32(x: f32) -> f32 {
    let u = 1.0 + x;
    let l = ln_f32(u);
    // ln(u) is off by the rounding of 1 + x; (x - (u - 1)) / u corrects it to first order.
    let c = (x - (u - 1.0)) / u;
    if u == 1.0 {
        x
    } else if u > 0.0 && u < f32::INFINITY {
        l + c
    } else {
        // 0 -> -inf, inf -> inf, negative or NaN -> NaN: what ln(u) says.
        l
    }
}

/// Hyperbolic tangent.
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let a = x.abs();
    // |x| >= 0.625: 1 - 2 / (e^(2|x|) + 1), where the quotient is below 0.43, so the
    // subtraction loses no accuracy; e^(2|x|) overflows to inf for |x| > 44, giving exactly 1.
    let big = 1.0 - 2.0 / (exp_f32(2.0 * a) + 1.0);
    // |x| < 0.625: the Taylor series x (1 + x^2 P(x^2)) through x^19 (the first term left out
    // is below 1e-8 relative at 0.625).
    let z = a * a;
    let p = -443_861_162.0 / 1_856_156_927_625.0; // x^19
    let p = p * z + 6_404_582.0 / 10_854_718_875.0;
    let p = p * z - 929_569.0 / 638_512_875.0;
    let p = p * z + 21_844.0 / 6_081_075.0;
    let p = p * z - 1_382.0 / 155_925.0;
    let p = p * z + 62.0 / 2_835.0;
    let p = p * z - 17.0 / 315.0;
    let p = p * z + 2.0 / 15.0;
    let p = p * z - 1.0 / 3.0;
    let small = a + a * (z * p);
    let t = if a < 0.625 { small } else { big };
    // The sign of x (so -0 stays -0); NaN propagates through both branches.
    f32::copysign(t, x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f64) -> f64 {
        if b == 0.0 {
            return (a as f64).abs() / f32::MIN_POSITIVE as f64;
        }
        let ulp = (b.abs() as f32).to_bits();
        let step = f32::from_bits(ulp + 1) as f64 - f32::from_bits(ulp) as f64;
        (a as f64 - b).abs() / step
    }

    fn sweep(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f32 / n as f32)
    }

    #[test]
    fn exp_is_within_3_ulp() {
        let mut worst = 0.0f64;
        for x in sweep(-87.0, 88.0, 400_000).chain(sweep(-1.0, 1.0, 100_000)) {
            worst = worst.max(ulps(exp_f32(x), (x as f64).exp()));
        }
        assert!(worst <= 3.0, "worst {worst} ulp");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        // Subnormal results: within one subnormal step of the rounded true value.
        let sub = exp_f32(-100.0);
        assert!((sub - (-100.0f64).exp() as f32).abs() <= 1.5e-45, "{sub}");
    }

    #[test]
    fn ln_is_within_3_ulp() {
        let mut worst = 0.0f64;
        for x in sweep(1e-6, 10.0, 400_000)
            .chain(sweep(0.5, 2.0, 100_000))
            .chain([1e-30, 3e38, 1e-40])
        {
            worst = worst.max(ulps(ln_f32(x), (x as f64).ln()));
        }
        assert!(worst <= 3.0, "worst {worst} ulp");
        assert_eq!(ln_f32(1.0), 0.0);
        assert_eq!(ln_f32(0.0), f32::NEG_INFINITY);
        assert!(ln_f32(-1.0).is_nan());
        assert!(ln_f32(f32::NAN).is_nan());
        assert_eq!(ln_f32(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn tanh_is_within_3_ulp() {
        let mut worst = 0.0f64;
        for x in sweep(-12.0, 12.0, 400_000)
            .chain(sweep(-0.7, 0.7, 200_000))
            .chain(sweep(0.6, 0.65, 100_000))
            .chain([1e-30, -1e-40, 1e-3, 40.0, -50.0, 3e38])
        {
            worst = worst.max(ulps(tanh_f32(x), (x as f64).tanh()));
        }
        assert!(worst <= 3.0, "worst {worst} ulp");
        assert_eq!(tanh_f32(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(tanh_f32(-0.0).to_bits(), (-0.0f32).to_bits());
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh_f32(100.0), 1.0);
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    #[test]
    fn ln_1p_is_within_3_ulp() {
        let mut worst = 0.0f64;
        for x in sweep(-0.99, 10.0, 400_000)
            .chain(sweep(-1e-3, 1e-3, 100_000))
            .chain([1e-20, 3e38])
        {
            worst = worst.max(ulps(ln_1p_f32(x), (x as f64).ln_1p()));
        }
        assert!(worst <= 3.0, "worst {worst} ulp");
        assert_eq!(ln_1p_f32(-1.0), f32::NEG_INFINITY);
        assert!(ln_1p_f32(-2.0).is_nan());
        assert_eq!(ln_1p_f32(f32::INFINITY), f32::INFINITY);
    }
}
