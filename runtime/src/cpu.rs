//! CPU kernels that generated code calls: GEMM with strides, the scalar math of each op, and
//! small helpers for buffers. Everything here is safe to call with any input; length checks
//! happen before the one `unsafe` block.

use std::borrow::Cow;
use std::ops::Deref;

use ndarray::{Array2, ArrayBase, Data, Dimension};

use crate::{Error, FnInfo};

mod chunks;
pub mod conv;
mod pool;
mod sgemm;

pub use chunks::{loop_chunks, Disjoint};
pub use pool::{run_chunks, threads};

/// A compiled function of the closure form: call it like a function, read its `info`.
///
/// `tensor_fn!(|x: f64| ...)` evaluates to one of these; calls go straight to the generated
/// function (it derefs to it), so there is no dynamic dispatch.
#[derive(Clone, Copy)]
pub struct Compiled<F> {
    f: F,
    /// What the compiler knows about the function: graph, gradients, rewrites, plan.
    pub info: FnInfo,
}

impl<F> Compiled<F> {
    pub const fn new(f: F, info: FnInfo) -> Self {
        Compiled { f, info }
    }
}

impl<F> Deref for Compiled<F> {
    type Target = F;
    fn deref(&self) -> &F {
        &self.f
    }
}

impl<F> std::fmt::Debug for Compiled<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("info", &self.info)
            .finish()
    }
}

/// The elements of an array in row-major order: borrowed when the array is in standard
/// layout (the usual case), else copied once.
pub fn contiguous<'a, T: Clone, S: Data<Elem = T>, D: Dimension>(
    a: &'a ArrayBase<S, D>,
) -> Cow<'a, [T]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().cloned().collect()),
    }
}

/// A `rows x cols` array from a row-major vector of exactly that length.
pub fn array2<T>(v: Vec<T>, rows: usize, cols: usize) -> Array2<T> {
    let len = v.len();
    Array2::from_shape_vec((rows, cols), v).unwrap_or_else(|_| {
        unreachable!("generated code sizes outputs as {rows}x{cols}, got {len}")
    })
}

/// An array of rank 3 or 4 from a row-major vector of exactly its size.
pub fn array_nd<T, D: Dimension>(v: Vec<T>, shape: D) -> ndarray::Array<T, D> {
    let len = v.len();
    let dims = format!("{:?}", shape.slice());
    ndarray::Array::from_shape_vec(shape, v)
        .unwrap_or_else(|_| unreachable!("generated code sizes outputs as {dims}, got {len}"))
}

/// Whether this CPU runs the AVX-512 versions of generated loops (detected once, cached).
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Checks the integer argument `arg` of `function` before a call: every value within
/// `±limit` (what the function's float type holds exactly) and, when `classes` is given (it
/// is one-hot encoded or picks entries), in `0..classes`.
pub fn check_ints<T: Copy + Into<i64>>(
    function: &'static str,
    arg: &'static str,
    values: &[T],
    limit: i64,
    classes: Option<usize>,
) -> Result<(), Error> {
    for (index, &v) in values.iter().enumerate() {
        let value: i64 = v.into();
        let why = match classes {
            Some(k) if value < 0 || value as u64 >= k as u64 => {
                format!("outside the classes 0..{k} it labels")
            }
            _ if value.unsigned_abs() > limit as u64 => format!(
                "beyond {limit}, the largest integer the function's float type holds exactly"
            ),
            _ => continue,
        };
        return Err(Error::IntRange {
            function,
            arg,
            index,
            value,
            why,
        });
    }
    Ok(())
}

/// f32 and f64 as the generated code's GEMMs need them. (The elementwise ops are the kernel
/// crate's `scalar`, which generated code calls directly.)
pub trait Real:
    Copy + PartialOrd + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    /// C = alpha A B + beta C for strided matrices (`rs`/`cs`: row and column strides in
    /// elements).
    ///
    /// # Panics
    /// When an operand does not fit its slice or C's strides map two elements to one place
    /// (the checks of [`gemm`], which returns them as an error instead).
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: &[Self],
        rsa: isize,
        csa: isize,
        b: &[Self],
        rsb: isize,
        csb: isize,
        beta: Self,
        c: &mut [Self],
        rsc: isize,
        csc: isize,
    );
    /// C = alpha (A1 B1 + A2 B2) + beta C with rows of B1, B2 and C contiguous; each `p` is
    /// `(k, a, rsa, csa, b, rsb)`.
    ///
    /// # Panics
    /// As [`Real::gemm`] (the checks of [`gemm_pair`], which returns them as an error).
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn gemm_pair(
        m: usize,
        n: usize,
        alpha: Self,
        p1: (usize, &[Self], isize, isize, &[Self], isize),
        p2: (usize, &[Self], isize, isize, &[Self], isize),
        beta: Self,
        c: &mut [Self],
        rsc: isize,
    );
}

macro_rules! real_impl {
    ($t:ty, $gemm:path, $pair:path) => {
        impl Real for $t {
            fn gemm(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: &[Self],
                rsa: isize,
                csa: isize,
                b: &[Self],
                rsb: isize,
                csb: isize,
                beta: Self,
                c: &mut [Self],
                rsc: isize,
                csc: isize,
            ) {
                let lens = (a.len(), b.len(), c.len());
                if let Some(e) = gemm_misfit(m, k, n, lens, (rsa, csa, rsb, csb, rsc, csc)) {
                    panic!("{e}");
                }
                if m == 0 || n == 0 {
                    return;
                }
                // SAFETY: checked above: every index (i*rs + j*cs) of each operand is inside
                // its slice and no two elements of C share one; `c` is borrowed mutably, so it
                // aliases neither input.
                unsafe {
                    $gemm(
                        m,
                        k,
                        n,
                        alpha,
                        a.as_ptr(),
                        rsa,
                        csa,
                        b.as_ptr(),
                        rsb,
                        csb,
                        beta,
                        c.as_mut_ptr(),
                        rsc,
                        csc,
                    );
                }
            }
            fn gemm_pair(
                m: usize,
                n: usize,
                alpha: Self,
                p1: (usize, &[Self], isize, isize, &[Self], isize),
                p2: (usize, &[Self], isize, isize, &[Self], isize),
                beta: Self,
                c: &mut [Self],
                rsc: isize,
            ) {
                if let Some(e) = gemm_pair_misfit(m, n, &p1, &p2, c.len(), rsc) {
                    panic!("{e}");
                }
                if m == 0 || n == 0 {
                    return;
                }
                // SAFETY: checked above: every index of each operand is inside its slice and
                // the rows of C do not overlap; `c` is borrowed mutably, so it aliases no input.
                unsafe {
                    $pair(
                        m,
                        n,
                        alpha,
                        (p1.0, p1.1.as_ptr(), p1.2, p1.3, p1.4.as_ptr(), p1.5),
                        (p2.0, p2.1.as_ptr(), p2.2, p2.3, p2.4.as_ptr(), p2.5),
                        beta,
                        c.as_mut_ptr(),
                        rsc,
                    );
                }
            }
        }
    };
}

real_impl!(f32, sgemm::sgemm, sgemm::sgemm_pair);
real_impl!(f64, matrixmultiply::dgemm, dgemm_pair);

/// Both products of [`Real::gemm_pair`] in f64, one after the other.
///
/// # Safety
/// As for `matrixmultiply::dgemm`, for both products.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
unsafe fn dgemm_pair(
    m: usize,
    n: usize,
    alpha: f64,
    (k1, a1, rsa1, csa1, b1, rsb1): (usize, *const f64, isize, isize, *const f64, isize),
    (k2, a2, rsa2, csa2, b2, rsb2): (usize, *const f64, isize, isize, *const f64, isize),
    beta: f64,
    c: *mut f64,
    rsc: isize,
) {
    matrixmultiply::dgemm(
        m, k1, n, alpha, a1, rsa1, csa1, b1, rsb1, 1, beta, c, rsc, 1,
    );
    matrixmultiply::dgemm(m, k2, n, alpha, a2, rsa2, csa2, b2, rsb2, 1, 1.0, c, rsc, 1);
}

/// C = alpha (A1 B1 + A2 B2) + beta C (rows of B1, B2 and C contiguous), after checking every
/// operand fits its slice: one pass over C for two products that share it.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn gemm_pair<T: Real>(
    m: usize,
    n: usize,
    alpha: T,
    p1: (usize, &[T], isize, isize, &[T], isize),
    p2: (usize, &[T], isize, isize, &[T], isize),
    beta: T,
    c: &mut [T],
    rsc: isize,
) -> Result<(), Error> {
    if let Some(e) = gemm_pair_misfit(m, n, &p1, &p2, c.len(), rsc) {
        return Err(Error::Internal(e));
    }
    T::gemm_pair(m, n, alpha, p1, p2, beta, c, rsc);
    Ok(())
}

/// Why the operands of `C = alpha A B + beta C` do not fit their slices (`lens`: of a, b and
/// c; `strides`: rsa, csa, rsb, csb, rsc, csc), or None when every index `i*rs + j*cs` is
/// inside its slice and the elements of C (written, possibly by several threads) are distinct.
fn gemm_misfit(
    m: usize,
    k: usize,
    n: usize,
    (a, b, c): (usize, usize, usize),
    (rsa, csa, rsb, csb, rsc, csc): (isize, isize, isize, isize, isize, isize),
) -> Option<String> {
    let fits = |rows, cols, rs, cs, len| extent(rows, cols, rs, cs).is_some_and(|e| e <= len);
    let what = if !fits(m, k, rsa, csa, a) {
        format!("A ({m}x{k}, strides {rsa}, {csa}) does not fit a slice of {a}")
    } else if !fits(k, n, rsb, csb, b) {
        format!("B ({k}x{n}, strides {rsb}, {csb}) does not fit a slice of {b}")
    } else if !fits(m, n, rsc, csc, c) {
        format!("C ({m}x{n}, strides {rsc}, {csc}) does not fit a slice of {c}")
    } else if !distinct(m, n, rsc, csc) {
        format!("C ({m}x{n}, strides {rsc}, {csc}) has elements that overlap")
    } else {
        return None;
    };
    Some(format!("gemm: {what}"))
}

/// [`gemm_misfit`] for both products of a [`gemm_pair`] (B and C with contiguous rows).
#[allow(clippy::type_complexity)]
fn gemm_pair_misfit<T>(
    m: usize,
    n: usize,
    p1: &(usize, &[T], isize, isize, &[T], isize),
    p2: &(usize, &[T], isize, isize, &[T], isize),
    c: usize,
    rsc: isize,
) -> Option<String> {
    [p1, p2].into_iter().find_map(|&(k, a, rsa, csa, b, rsb)| {
        gemm_misfit(m, k, n, (a.len(), b.len(), c), (rsa, csa, rsb, 1, rsc, 1))
            .map(|e| e.replacen("gemm", "gemm_pair", 1))
    })
}

/// The largest element index of a `rows x cols` matrix with these strides, plus one.
fn extent(rows: usize, cols: usize, rs: isize, cs: isize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    if rs < 0 || cs < 0 {
        return None;
    }
    let last = (rows - 1)
        .checked_mul(rs as usize)?
        .checked_add((cols - 1).checked_mul(cs as usize)?)?;
    last.checked_add(1)
}

/// Whether the strides of a `rows x cols` matrix, in bounds by [`extent`] (so not negative),
/// give every element its own place: one stride covers whole rows or columns of the other.
fn distinct(rows: usize, cols: usize, rs: isize, cs: isize) -> bool {
    let (rs, cs) = (rs.unsigned_abs(), cs.unsigned_abs());
    match (rows > 1, cols > 1) {
        (false, false) => true,
        (true, false) => rs != 0,
        (false, true) => cs != 0,
        (true, true) => {
            (cs != 0 && rs >= cs.saturating_mul(cols)) || (rs != 0 && cs >= rs.saturating_mul(rows))
        }
    }
}

/// C = alpha A B + beta C for strided matrices, after checking every operand fits its slice.
/// With beta = 0, C is only written.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    alpha: T,
    a: &[T],
    rsa: isize,
    csa: isize,
    b: &[T],
    rsb: isize,
    csb: isize,
    beta: T,
    c: &mut [T],
    rsc: isize,
    csc: isize,
) -> Result<(), Error> {
    let lens = (a.len(), b.len(), c.len());
    if let Some(e) = gemm_misfit(m, k, n, lens, (rsa, csa, rsb, csb, rsc, csc)) {
        return Err(Error::Internal(e));
    }
    T::gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
    Ok(())
}

#[cfg(test)]
mod gemm_checks {
    use super::{gemm, gemm_pair, Real};

    #[test]
    fn a_2x2_product() {
        let (a, b) = ([1.0f64, 2.0, 3.0, 4.0], [1.0f64, 0.0, 1.0, 1.0]);
        let mut c = [0.0f64; 4];
        f64::gemm(2, 2, 2, 1.0, &a, 2, 1, &b, 2, 1, 0.0, &mut c, 2, 1);
        assert_eq!(c, [3.0, 2.0, 7.0, 4.0]);
        let mut c = [1.0f32; 4];
        let (a, b) = (a.map(|x| x as f32), b.map(|x| x as f32));
        gemm(2, 2, 2, 1.0f32, &a, 2, 1, &b, 2, 1, 1.0, &mut c, 2, 1).unwrap();
        assert_eq!(c, [4.0, 3.0, 8.0, 5.0]);
        // k = 0: C = beta C.
        f32::gemm(2, 0, 2, 1.0, &[], 0, 1, &[], 2, 1, 2.0, &mut c, 2, 1);
        assert_eq!(c, [8.0, 6.0, 16.0, 10.0]);
        // The pair: A1 B1 + A2 B2 with A2 = I, B2 = B.
        let mut c = [0.0f32; 4];
        let id = [1.0f32, 0.0, 0.0, 1.0];
        let p1 = (2, &a[..], 2, 1, &b[..], 2);
        let p2 = (2, &id[..], 2, 1, &b[..], 2);
        f32::gemm_pair(2, 2, 1.0, p1, p2, 0.0, &mut c, 2);
        assert_eq!(c, [4.0, 2.0, 8.0, 5.0]);
    }

    #[test]
    #[should_panic(expected = "gemm: A (2x2, strides 2, 1) does not fit a slice of 3")]
    fn a_short_a_is_refused() {
        let mut c = [0.0f32; 4];
        f32::gemm(
            2, 2, 2, 1.0, &[1.0; 3], 2, 1, &[1.0; 4], 2, 1, 0.0, &mut c, 2, 1,
        );
    }

    #[test]
    #[should_panic(expected = "gemm: B (2x2, strides 1, 2) does not fit a slice of 3")]
    fn a_short_b_is_refused() {
        let mut c = [0.0f64; 4];
        f64::gemm(
            2, 2, 2, 1.0, &[1.0; 4], 2, 1, &[1.0; 3], 1, 2, 0.0, &mut c, 2, 1,
        );
    }

    #[test]
    #[should_panic(expected = "gemm: C (2x2, strides 2, 1) does not fit a slice of 3")]
    fn a_short_c_is_refused() {
        let mut c = [0.0f32; 3];
        f32::gemm(
            2, 2, 2, 1.0, &[1.0; 4], 2, 1, &[1.0; 4], 2, 1, 0.0, &mut c, 2, 1,
        );
    }

    #[test]
    #[should_panic(expected = "has elements that overlap")]
    fn overlapping_rows_of_c_are_refused() {
        // Rows of C on top of each other: threads would write the same elements.
        let mut c = [0.0f32; 2];
        f32::gemm(
            200,
            2,
            2,
            1.0,
            &[1.0; 400],
            2,
            1,
            &[1.0; 4],
            2,
            1,
            0.0,
            &mut c,
            0,
            1,
        );
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn negative_strides_and_overflowing_extents_are_refused() {
        let mut c = [0.0f64; 4];
        f64::gemm(
            2, 2, 2, 1.0, &[1.0; 4], -2, 1, &[1.0; 4], 2, 1, 0.0, &mut c, 2, 1,
        );
    }

    #[test]
    #[should_panic(expected = "gemm_pair: B (3x2, strides 2, 1) does not fit a slice of 4")]
    fn a_short_operand_of_the_pair_is_refused() {
        let (a, b) = ([1.0f32; 6], [1.0f32; 4]);
        let mut c = [0.0f32; 4];
        f32::gemm_pair(
            2,
            2,
            1.0,
            (2, &a[..], 2, 1, &b[..], 2),
            (3, &a[..], 3, 1, &b[..], 2),
            0.0,
            &mut c,
            2,
        );
    }

    #[test]
    fn the_checked_functions_return_errors() {
        let mut c = [0.0f32; 4];
        let e = gemm(
            2,
            2,
            2,
            1.0f32,
            &[1.0; 4],
            2,
            1,
            &[1.0; 4],
            2,
            1,
            0.0,
            &mut c,
            usize::MAX as isize,
            1,
        );
        assert!(e.unwrap_err().to_string().contains("C (2x2"));
        let (a, b) = ([1.0f64; 4], [1.0f64; 4]);
        let mut c = [0.0f64; 3];
        let e = gemm_pair(
            2,
            2,
            1.0,
            (2, &a[..], 2, 1, &b[..], 2),
            (2, &a[..], 2, 1, &b[..], 2),
            0.0,
            &mut c,
            2,
        );
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("C (2x2, strides 2, 1) does not fit a slice of 3"));
        // Empty products touch nothing.
        gemm(
            0,
            5,
            7,
            1.0f64,
            &[],
            5,
            1,
            &[0.0; 35],
            7,
            1,
            0.0,
            &mut [],
            7,
            1,
        )
        .unwrap();
    }
}
