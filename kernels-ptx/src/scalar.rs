//! The one scalar definition of every elementwise op, for f32 and f64.
//!
//! Constant folding in the compiler, the CPU code `tensor_fn!` emits and the reference the PTX
//! interpreter's tests compare against all call these functions, so a folded constant is
//! bit for bit what the running program would have computed, NaN, infinities, signed zeros
//! and subnormals included. (The PTX kernels are different algorithms, checked against these
//! within documented ulp bounds: `math.rs`.)
//!
//! Every function is `#[inline(always)]` and branch-free where the CPU loops need it: they are
//! instantiated inside the generated loops, which LLVM vectorizes only when every call inlines
//! into straight-line code. That is why f32 `exp`, `ln` and `ln_1p` are our own ([`f32_math`])
//! rather than libm's (calls, which keep a loop scalar). f64 uses libm's, so a folded f64
//! constant equals the run-time value where the compiler's host and the target share a libm
//! (native builds).

pub(crate) mod erf;
mod f32_math;

use std::ops::{Add, Div, Mul, Neg, Sub};

pub use erf::{erf_f32, erf_f64};
pub use f32_math::{exp_f32, ln_1p_f32, ln_f32, tanh_f32};

use crate::op::{Binary, Unary};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// f32 and f64: the element types, with the primitive operations the ops are written in.
/// (Method names end in `_` where `f32`/`f64` have an inherent method of the same name that
/// may differ: `x.exp_()` is [`exp_f32`] for f32, `x.exp()` libm's.)
pub trait Float:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + sealed::Sealed
{
    const ZERO: Self;
    const ONE: Self;
    const NAN: Self;
    /// The nearest value to `v` (rounded to nearest, ties to even).
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
    fn is_nan_(self) -> bool;
    fn abs_(self) -> Self;
    /// Correctly rounded square root.
    fn sqrt_(self) -> Self;
    fn exp_(self) -> Self;
    fn ln_(self) -> Self;
    fn ln_1p_(self) -> Self;
    fn tanh_(self) -> Self;
    fn powf_(self, k: Self) -> Self;
    fn erf_(self) -> Self;
}

macro_rules! float_impl {
    ($t:ty, $exp:path, $ln:path, $ln_1p:path, $tanh:path, $erf:path) => {
        impl Float for $t {
            const ZERO: $t = 0.0;
            const ONE: $t = 1.0;
            const NAN: $t = <$t>::NAN;
            #[inline(always)]
            fn from_f64(v: f64) -> $t {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn is_nan_(self) -> bool {
                self.is_nan()
            }
            #[inline(always)]
            fn abs_(self) -> $t {
                self.abs()
            }
            #[inline(always)]
            fn sqrt_(self) -> $t {
                self.sqrt()
            }
            #[inline(always)]
            fn exp_(self) -> $t {
                $exp(self)
            }
            #[inline(always)]
            fn ln_(self) -> $t {
                $ln(self)
            }
            #[inline(always)]
            fn ln_1p_(self) -> $t {
                $ln_1p(self)
            }
            #[inline(always)]
            fn tanh_(self) -> $t {
                $tanh(self)
            }
            #[inline(always)]
            fn powf_(self, k: $t) -> $t {
                self.powf(k)
            }
            #[inline(always)]
            fn erf_(self) -> $t {
                $erf(self)
            }
        }
    };
}

float_impl!(f32, exp_f32, ln_f32, ln_1p_f32, tanh_f32, erf_f32);
float_impl!(f64, f64::exp, f64::ln, f64::ln_1p, f64::tanh, erf_f64);

// ---------------------------------------------------------------------------------------------
// Unary ops.

#[inline(always)]
pub fn neg<T: Float>(x: T) -> T {
    -x
}

#[inline(always)]
pub fn exp<T: Float>(x: T) -> T {
    x.exp_()
}

/// Natural logarithm.
#[inline(always)]
pub fn log<T: Float>(x: T) -> T {
    x.ln_()
}

/// ln(1 + x), accurate for small x.
#[inline(always)]
pub fn log1p<T: Float>(x: T) -> T {
    x.ln_1p_()
}

#[inline(always)]
pub fn sqrt<T: Float>(x: T) -> T {
    x.sqrt_()
}

#[inline(always)]
pub fn tanh<T: Float>(x: T) -> T {
    x.tanh_()
}

/// The error function, 2/sqrt(pi) times the integral of e^(-t^2) from 0 to x ([`erf_f32`],
/// [`erf_f64`]).
#[inline(always)]
pub fn erf<T: Float>(x: T) -> T {
    x.erf_()
}

/// `(sigmoid(x), softplus(x))` from one exponential, the definition of both: with
/// e = e^-|x| in (0, 1] and u = 1 + e,
///   sigmoid(x)  = 1 / u (x >= 0) or e / u (x < 0): never overflows, keeps subnormals;
///   softplus(x) = max(x, 0) + log1p(e), log1p(e) = ln(u) + (e - (u - 1)) / u.
/// A loss with the stabilized cross-entropy needs both of one pre-activation; the generated
/// code then computes them together, and gets the same bits as computing each alone.
#[inline(always)]
pub fn sigmoid_softplus<T: Float>(x: T) -> (T, T) {
    let e = (-x.abs_()).exp_();
    let u = T::ONE + e;
    let r = T::ONE / u;
    let s = if x >= T::ZERO { r } else { e * r };
    let m = if x > T::ZERO { x } else { T::ZERO };
    let sp = m + (u.ln_() + (e - (u - T::ONE)) * r);
    if x.is_nan_() {
        (x, x)
    } else {
        (s, sp)
    }
}

/// 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid<T: Float>(x: T) -> T {
    sigmoid_softplus(x).0
}

/// ln(1 + e^x), without overflow for large x.
#[inline(always)]
pub fn softplus<T: Float>(x: T) -> T {
    sigmoid_softplus(x).1
}

/// x where x > 0 or NaN, else +0.
#[inline(always)]
pub fn relu<T: Float>(x: T) -> T {
    if x > T::ZERO || x.is_nan_() {
        x
    } else {
        T::ZERO
    }
}

#[inline(always)]
pub fn abs<T: Float>(x: T) -> T {
    x.abs_()
}

/// -1, 0 or 1 (the derivative of `abs`); keeps the sign of zero, and NaN.
#[inline(always)]
pub fn sign<T: Float>(x: T) -> T {
    if x > T::ZERO {
        T::ONE
    } else if x < T::ZERO {
        -T::ONE
    } else {
        x * T::ZERO
    }
}

/// 1 where x > 0, else 0 (the derivative of `relu`; NaN gives 0).
#[inline(always)]
pub fn step<T: Float>(x: T) -> T {
    if x > T::ZERO {
        T::ONE
    } else {
        T::ZERO
    }
}

/// x^k for an integer k by repeated squaring, in the order compiler-rt's `__powi*f2` and the
/// PTX kernels (`math.rs`) multiply; a negative k divides 1 by the result.
#[inline(always)]
pub fn powi<T: Float>(x: T, k: i32) -> T {
    let mut n = k.unsigned_abs();
    let mut a = x;
    let mut r = T::ONE;
    loop {
        if n & 1 == 1 {
            r = r * a;
        }
        n >>= 1;
        if n == 0 {
            break;
        }
        a = a * a;
    }
    if k < 0 {
        T::ONE / r
    } else {
        r
    }
}

/// Whether `pow(x, k)` is [`powi`]: an integer k of at most 64 in magnitude.
#[inline(always)]
pub fn is_small_integer(k: f64) -> bool {
    k.fract() == 0.0 && k.abs() <= 64.0
}

/// x^k for a constant k: the square root for 1/2, [`powi`] for a small integer, libm's `pow`
/// otherwise. Generated code calls the case for its k directly.
#[inline(always)]
pub fn pow<T: Float>(x: T, k: f64) -> T {
    if k == 0.5 {
        x.sqrt_()
    } else if is_small_integer(k) {
        powi(x, k as i32)
    } else {
        x.powf_(T::from_f64(k))
    }
}

// ---------------------------------------------------------------------------------------------
// Binary ops.

#[inline(always)]
pub fn add<T: Float>(a: T, b: T) -> T {
    a + b
}

#[inline(always)]
pub fn mul<T: Float>(a: T, b: T) -> T {
    a * b
}

#[inline(always)]
pub fn div<T: Float>(a: T, b: T) -> T {
    a / b
}

/// numpy's `maximum`: NaN if `a` is NaN, else the larger, `a` on ties (so of +0 and -0 the
/// first); NaN if `b` is NaN.
#[inline(always)]
pub fn maximum<T: Float>(a: T, b: T) -> T {
    if a.is_nan_() || a >= b {
        a
    } else {
        b
    }
}

/// numpy's `minimum`, as [`maximum`].
#[inline(always)]
pub fn minimum<T: Float>(a: T, b: T) -> T {
    if a.is_nan_() || a <= b {
        a
    } else {
        b
    }
}

/// 1 where a >= b, else 0 (the mask of the derivatives of `maximum` and `minimum`).
#[inline(always)]
pub fn ge<T: Float>(a: T, b: T) -> T {
    if a >= b {
        T::ONE
    } else {
        T::ZERO
    }
}

/// 1 where a == b, else 0 (the mask of the derivative of `max`).
#[inline(always)]
pub fn eq<T: Float>(a: T, b: T) -> T {
    if a == b {
        T::ONE
    } else {
        T::ZERO
    }
}

/// 1 where a > b, else 0.
#[inline(always)]
pub fn gt<T: Float>(a: T, b: T) -> T {
    if a > b {
        T::ONE
    } else {
        T::ZERO
    }
}

/// 1 where a < b, else 0.
#[inline(always)]
pub fn lt<T: Float>(a: T, b: T) -> T {
    if a < b {
        T::ONE
    } else {
        T::ZERO
    }
}

/// 1 where a <= b, else 0.
#[inline(always)]
pub fn le<T: Float>(a: T, b: T) -> T {
    if a <= b {
        T::ONE
    } else {
        T::ZERO
    }
}

/// 1 where a != b (NaN is different from everything, itself included), else 0.
#[inline(always)]
pub fn ne<T: Float>(a: T, b: T) -> T {
    if a != b {
        T::ONE
    } else {
        T::ZERO
    }
}

/// `a` where `c` is not 0 (NaN is not 0), else `b`: the language's `where`.
#[inline(always)]
pub fn select<T: Float>(c: T, a: T, b: T) -> T {
    if c != T::ZERO {
        a
    } else {
        b
    }
}

/// The value of a unary op: what constant folding and the interpreter's reference compute.
#[inline]
pub fn unary<T: Float>(op: Unary, x: T) -> T {
    op.eval(x)
}

/// The value of a binary op.
#[inline]
pub fn binary<T: Float>(op: Binary, a: T, b: T) -> T {
    op.eval(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_and_softplus_alone_are_the_pair() {
        for i in -2000..=2000 {
            let x = i as f64 * 0.05;
            let (s, sp) = sigmoid_softplus(x);
            assert_eq!(
                (sigmoid(x).to_bits(), softplus(x).to_bits()),
                (s.to_bits(), sp.to_bits())
            );
            let xf = x as f32;
            let (s, sp) = sigmoid_softplus(xf);
            assert_eq!(
                (sigmoid(xf).to_bits(), softplus(xf).to_bits()),
                (s.to_bits(), sp.to_bits())
            );
        }
    }

    #[test]
    fn sigmoid_and_softplus_are_accurate_and_saturate() {
        // The reference: the textbook formulas in f64, at the input as given.
        let want = |x: f64| {
            (
                1.0 / (1.0 + (-x).exp()),
                x.max(0.0) + (-x.abs()).exp().ln_1p(),
            )
        };
        for i in -4000..=4000 {
            let x = i as f64 * 0.01;
            let (want_s, want_sp) = want(x);
            let (s, sp) = sigmoid_softplus(x);
            assert!(
                (s - want_s).abs() <= 4.0 * f64::EPSILON * want_s,
                "sigmoid({x})"
            );
            assert!(
                (sp - want_sp).abs() <= 4.0 * f64::EPSILON * want_sp,
                "softplus({x})"
            );
            let xf = x as f32;
            let (want_s, want_sp) = want(xf as f64);
            let (s, sp) = sigmoid_softplus(xf);
            let tol = 4.0 * f32::EPSILON as f64;
            assert!((s as f64 - want_s).abs() <= tol * want_s, "sigmoid({xf})");
            assert!(
                (sp as f64 - want_sp).abs() <= tol * want_sp,
                "softplus({xf})"
            );
        }
        assert_eq!(sigmoid(1000.0f32), 1.0);
        assert_eq!(sigmoid(-1000.0f32), 0.0);
        assert_eq!(softplus(1000.0f32), 1000.0);
        assert_eq!(softplus(-1000.0f32), 0.0);
        // Below e^-88.7 the sigmoid of an f32 is subnormal, not zero.
        assert!(sigmoid(-90.0f32) > 0.0);
        assert!(sigmoid(f32::NAN).is_nan() && softplus(f64::NAN).is_nan());
    }

    #[test]
    fn powers() {
        for x in [
            -3.5f64,
            -1.0,
            -0.0,
            0.0,
            0.25,
            1.0,
            2.0,
            7.0,
            f64::INFINITY,
            f64::NAN,
        ] {
            for k in [-3, -2, -1, 0, 1, 2, 3, 5, 7, 64] {
                let want = x.powi(k);
                let got = powi(x, k);
                assert!(
                    got.to_bits() == want.to_bits()
                        || (got.is_nan() && want.is_nan())
                        || (got - want).abs() <= 4.0 * f64::EPSILON * want.abs(),
                    "{x}^{k}: {got} vs {want}"
                );
            }
        }
        assert_eq!(pow(9.0f32, 0.5), 3.0);
        assert_eq!(
            pow(-0.0f64, 0.5).to_bits(),
            (-0.0f64).to_bits(),
            "sqrt keeps -0"
        );
        assert!(pow(f64::NEG_INFINITY, 0.5).is_nan());
        assert_eq!(pow(2.0f64, 10.0), 1024.0);
        assert_eq!(pow(2.0f64, -2.0), 0.25);
        assert_eq!(pow(4.0f64, 1.5), 8.0);
        assert_eq!(pow(2.0f32, 100.0), 2.0f32.powf(100.0));
    }

    #[test]
    fn nan_and_signed_zero() {
        assert!(relu(f64::NAN).is_nan());
        assert_eq!(relu(-0.0f64).to_bits(), 0.0f64.to_bits());
        assert!(sign(f32::NAN).is_nan());
        assert_eq!(sign(-0.0f32).to_bits(), (-0.0f32).to_bits());
        assert_eq!(step(f64::NAN), 0.0);
        assert!(maximum(1.0, f64::NAN).is_nan() && maximum(f64::NAN, 1.0).is_nan());
        assert!(minimum(1.0f32, f32::NAN).is_nan());
        assert_eq!(maximum(-0.0f64, 0.0).to_bits(), (-0.0f64).to_bits());
        assert_eq!(maximum(0.0f64, -0.0).to_bits(), 0.0f64.to_bits());
        assert_eq!(ge(f64::NAN, 1.0), 0.0);
        assert_eq!(eq(0.0f32, -0.0), 1.0);
    }
}
