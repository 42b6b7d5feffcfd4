//! Single-precision GEMM specialized for the shapes compiled functions meet: small minibatches
//! against wide weight matrices (20x784 by 784x500 and its transposes).
//!
//! Two AVX-512 micro-kernels cover every layout without packing:
//! - `bcast`: B and C are row-contiguous. A 6x64 tile of C lives in 24 zmm registers; each step
//!   of k loads 4 vectors of a row of B and broadcasts 6 elements of A (any strides, so A may
//!   be transposed).
//! - `dots`: rows of A and columns of B are contiguous along k (C = A B^T with B stored
//!   row-major, as in `h W^T`). A 4x4 block of dot products accumulates 16 vectors along k.
//!
//! Anything else, and machines without AVX-512, go to `matrixmultiply`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// C = alpha A B + beta C (beta = 0 never reads C). Strides in elements; lengths were checked
/// by the caller.
///
/// # Safety
/// Every index `i*rs + j*cs` of each operand must be inside its allocation, and `c` must not
/// overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if k > 0 && std::is_x86_feature_detected!("avx512f") {
            let bcast = csb == 1 && csc == 1;
            if bcast || (csa == 1 && rsb == 1) {
                let threads = super::pool::threads();
                let (a, b, c) = (Shared(a as *mut f32), Shared(b as *mut f32), Shared(c));
                if threads == 1 || m * n * k < PARALLEL_FLOPS {
                    // SAFETY: the caller's contract.
                    unsafe {
                        sgemm_serial(
                            m,
                            k,
                            n,
                            alpha,
                            a.get(),
                            rsa,
                            csa,
                            b.get(),
                            rsb,
                            csb,
                            beta,
                            c.get(),
                            rsc,
                            csc,
                        )
                    };
                    return;
                }
                if bcast && m < TALL && k >= 16 * threads {
                    // x W with a short x: split k, the rows of W, and add the partial products.
                    return split_k(threads, m, k, n, alpha, a, rsa, csa, b, rsb, beta, c, rsc);
                }
                // Tall C (rows of W) or A B^T (columns = rows of W): each thread takes its
                // share of W's rows, the same share in every GEMM of a step.
                let (tall, len) = if bcast && m >= TALL {
                    (true, m)
                } else {
                    (false, n)
                };
                let part = |t: usize| {
                    let (lo, hi) = share(len, t, threads);
                    if lo == hi {
                        return;
                    }
                    // SAFETY: parts write disjoint rows (tall) or columns of C; the caller's
                    // contract covers every index read or written.
                    unsafe {
                        if tall {
                            let (a, c) = (
                                a.get().offset(lo as isize * rsa),
                                c.get().offset(lo as isize * rsc),
                            );
                            bcast_gemm(
                                hi - lo,
                                k,
                                n,
                                alpha,
                                a,
                                rsa,
                                csa,
                                b.get(),
                                rsb,
                                beta,
                                c,
                                rsc,
                            );
                        } else {
                            let (b, c) = (
                                b.get().offset(lo as isize * csb),
                                c.get().offset(lo as isize * csc),
                            );
                            whole(
                                bcast,
                                m,
                                k,
                                hi - lo,
                                alpha,
                                a.get(),
                                rsa,
                                csa,
                                b,
                                rsb,
                                csb,
                                beta,
                                c,
                                rsc,
                                csc,
                            );
                        }
                    }
                };
                super::pool::run_chunks(threads, &part);
                return;
            }
        }
    }
    matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc);
}

/// [`sgemm`] on the calling thread alone, for callers that already split their work between
/// the pool's threads (a pool job cannot start another).
///
/// # Safety
/// As for [`sgemm`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_serial(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let bcast = csb == 1 && csc == 1;
        if k > 0 && (bcast || (csa == 1 && rsb == 1)) && std::is_x86_feature_detected!("avx512f") {
            // SAFETY: the caller's contract, and the layout checked above.
            unsafe {
                whole(
                    bcast, m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc,
                )
            };
            return;
        }
    }
    // SAFETY: the caller's contract.
    unsafe { matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) };
}

/// Below this many multiply-adds a GEMM runs on the calling thread alone.
const PARALLEL_FLOPS: usize = 1 << 16;

/// From this many rows of C on, the rows are split between threads.
const TALL: usize = 96;

/// Thread `t`'s share `[lo, hi)` of `len` rows of a weight matrix. Every GEMM that touches
/// the matrix splits it the same way, so each core keeps its share in its own cache.
fn share(len: usize, t: usize, parts: usize) -> (usize, usize) {
    let step = len.div_ceil(parts).next_multiple_of(8);
    ((t * step).min(len), ((t + 1) * step).min(len))
}

/// The whole GEMM on the calling thread, with the kernel that fits the layout.
///
/// # Safety
/// As for [`sgemm`], with `bcast` or `csa == 1 && rsb == 1` holding.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn whole(
    bcast: bool,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    if bcast {
        bcast_gemm(m, k, n, alpha, a, rsa, csa, b, rsb, beta, c, rsc);
    } else {
        dots_gemm(m, k, n, alpha, a, rsa, b, csb, beta, c, rsc, csc);
    }
}

thread_local! {
    /// Partial products of `split_k`, one m x n block per extra thread; grows, never shrinks.
    static PARTIALS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// C = alpha A B + beta C with the k dimension split between threads: thread 0 accumulates
/// into C, the others into scratch blocks that are added at the end.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn split_k(
    threads: usize,
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: Shared,
    rsa: isize,
    csa: isize,
    b: Shared,
    rsb: isize,
    beta: f32,
    c: Shared,
    rsc: isize,
) {
    PARTIALS.with(|p| {
        let mut partials = p.borrow_mut();
        let need = (threads - 1) * m * n;
        if partials.len() < need {
            partials.resize(need, 0.0);
        }
        let scratch = Shared(partials.as_mut_ptr());
        let part = |t: usize| {
            let (lo, hi) = share(k, t, threads);
            if lo == hi {
                return;
            }
            // SAFETY: thread 0 writes C, thread t > 0 its own m x n block of the scratch
            // (sized above); A and B are only read, within the caller's contract.
            unsafe {
                let a = a.get().offset(lo as isize * csa) as *const f32;
                let b = b.get().offset(lo as isize * rsb) as *const f32;
                if t == 0 {
                    bcast_gemm(
                        m,
                        hi - lo,
                        n,
                        alpha,
                        a,
                        rsa,
                        csa,
                        b,
                        rsb,
                        beta,
                        c.get(),
                        rsc,
                    );
                } else {
                    let out = scratch.get().add((t - 1) * m * n);
                    bcast_gemm(
                        m,
                        hi - lo,
                        n,
                        alpha,
                        a,
                        rsa,
                        csa,
                        b,
                        rsb,
                        0.0,
                        out,
                        n as isize,
                    );
                }
            }
        };
        super::pool::run_chunks(threads, &part);
        for t in 1..threads {
            let (lo, hi) = share(k, t, threads);
            if lo == hi {
                continue;
            }
            let block = &partials[(t - 1) * m * n..t * m * n];
            for i in 0..m {
                // SAFETY: row i of C has n elements at stride 1 (bcast layout), inside the
                // caller's contract.
                let row =
                    unsafe { std::slice::from_raw_parts_mut(c.get().offset(i as isize * rsc), n) };
                for (x, y) in row.iter_mut().zip(&block[i * n..(i + 1) * n]) {
                    *x += *y;
                }
            }
        }
    });
}

/// A pointer handed to the pool's threads.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the threads of one GEMM touch disjoint parts of C and only read A and B.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}
impl Shared {
    fn get(self) -> *mut f32 {
        self.0
    }
}

const MR: usize = 6;
const NV: usize = 4;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn bcast_gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
) {
    let mut j0 = 0;
    while j0 < n {
        let cols = (n - j0).min(NV * 16);
        let nv = cols.div_ceil(16);
        let tail = cols - (nv - 1) * 16;
        let mask: __mmask16 = if tail == 16 {
            0xffff
        } else {
            (1u16 << tail) - 1
        };
        // A panel of at most KC x 64 of B stays in L1 while every row block of A passes over
        // it; C accumulates across panels. Panels are of equal depth (no thin last panel).
        let depth = k.div_ceil(k.div_ceil(KC));
        let mut p0 = 0;
        while p0 < k {
            let kc = (k - p0).min(depth);
            let beta = if p0 == 0 { beta } else { 1.0 };
            bcast_panel(
                m,
                kc,
                alpha,
                a.offset(p0 as isize * csa),
                rsa,
                csa,
                b.offset(p0 as isize * rsb).add(j0),
                rsb,
                beta,
                c.add(j0),
                rsc,
                nv,
                mask,
            );
            p0 += kc;
        }
        j0 += cols;
    }
}

/// Most rows of B per panel: 128 rows of 64 floats are 32 KiB, two thirds of a 48 KiB L1,
/// leaving room for the rows of A and the tile of C. (192 rows, 48 KiB, spilled to L2: the
/// step's x W and g W ran at 210 GFLOP/s on two cores, 245-250 with panels that fit.)
const KC: usize = 128;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn bcast_panel(
    m: usize,
    k: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    nv: usize,
    mask: __mmask16,
) {
    {
        let mut i0 = 0;
        while i0 < m {
            let rows = (m - i0).min(MR);
            let ap = a.offset(i0 as isize * rsa);
            let bp = b;
            let cp = c.offset(i0 as isize * rsc);
            macro_rules! tile {
                ($($r:literal),*; $($v:literal),*) => {{
                    bcast_tile::<{ [$($r),*].len() }, { [$($v),*].len() }>(k, alpha, ap, rsa, csa, bp, rsb, beta, cp, rsc, mask)
                }};
            }
            match (rows, nv) {
                (6, 4) => tile!(0, 1, 2, 3, 4, 5; 0, 1, 2, 3),
                (6, 3) => tile!(0, 1, 2, 3, 4, 5; 0, 1, 2),
                (6, 2) => tile!(0, 1, 2, 3, 4, 5; 0, 1),
                (6, _) => tile!(0, 1, 2, 3, 4, 5; 0),
                (5, 4) => tile!(0, 1, 2, 3, 4; 0, 1, 2, 3),
                (5, 3) => tile!(0, 1, 2, 3, 4; 0, 1, 2),
                (5, 2) => tile!(0, 1, 2, 3, 4; 0, 1),
                (5, _) => tile!(0, 1, 2, 3, 4; 0),
                (4, 4) => tile!(0, 1, 2, 3; 0, 1, 2, 3),
                (4, 3) => tile!(0, 1, 2, 3; 0, 1, 2),
                (4, 2) => tile!(0, 1, 2, 3; 0, 1),
                (4, _) => tile!(0, 1, 2, 3; 0),
                (3, 4) => tile!(0, 1, 2; 0, 1, 2, 3),
                (3, 3) => tile!(0, 1, 2; 0, 1, 2),
                (3, 2) => tile!(0, 1, 2; 0, 1),
                (3, _) => tile!(0, 1, 2; 0),
                (2, 4) => tile!(0, 1; 0, 1, 2, 3),
                (2, 3) => tile!(0, 1; 0, 1, 2),
                (2, 2) => tile!(0, 1; 0, 1),
                (2, _) => tile!(0, 1; 0),
                (_, 4) => tile!(0; 0, 1, 2, 3),
                (_, 3) => tile!(0; 0, 1, 2),
                (_, 2) => tile!(0; 0, 1),
                (_, _) => tile!(0; 0),
            }
            i0 += rows;
        }
    }
}

/// One R x (V*16) tile of C; the last vector of each row is masked by `mask`. The one-product
/// case of [`pair_tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn bcast_tile<const R: usize, const V: usize>(
    k: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    mask: __mmask16,
) {
    let one = (k, a, rsa, csa, b, rsb);
    pair_tile::<R, V>(alpha, one, (0, a, rsa, csa, b, rsb), beta, c, rsc, mask)
}

const DI: usize = 5;
const DJ: usize = 5;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn dots_gemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    b: *const f32,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    if csc == 1 {
        // 4 x 4 tiles whose 16 sums are reduced together (see `dots_tile4`).
        let (m4, n4) = (m / 4 * 4, n / 4 * 4);
        let mut j0 = 0;
        while j0 < n4 {
            let mut i0 = 0;
            while i0 < m4 {
                dots_tile4(
                    k,
                    alpha,
                    a.offset(i0 as isize * rsa),
                    rsa,
                    b.offset(j0 as isize * csb),
                    csb,
                    beta,
                    c.offset(i0 as isize * rsc + j0 as isize),
                    rsc,
                );
                i0 += 4;
            }
            j0 += 4;
        }
        // Edges: the last rows (all columns) and the last columns (rows of full blocks).
        for i in 0..m {
            let from = if i < m4 { n4 } else { 0 };
            for j in from..n {
                dots_tile::<1, 1>(
                    k,
                    alpha,
                    a.offset(i as isize * rsa),
                    rsa,
                    b.offset(j as isize * csb),
                    csb,
                    beta,
                    c.offset(i as isize * rsc + j as isize),
                    rsc,
                    1,
                );
            }
        }
        return;
    }
    // Columns of B outer: each group of DJ rows of B^T is read from memory once, while the
    // (small) A stays in L1.
    let mut j0 = 0;
    while j0 < n {
        let rj = (n - j0).min(DJ);
        let mut i0 = 0;
        while i0 < m {
            let ri = (m - i0).min(DI);
            let ap = a.offset(i0 as isize * rsa);
            let bp = b.offset(j0 as isize * csb);
            let cp = c.offset(i0 as isize * rsc + j0 as isize * csc);
            macro_rules! tile {
                ($i:literal, $j:literal) => {
                    dots_tile::<$i, $j>(k, alpha, ap, rsa, bp, csb, beta, cp, rsc, csc)
                };
            }
            if ri == DI {
                // Full row blocks; the last column block may be narrower.
                match rj {
                    5 => tile!(5, 5),
                    4 => tile!(5, 4),
                    3 => tile!(5, 3),
                    2 => tile!(5, 2),
                    _ => tile!(5, 1),
                }
            } else {
                // Edges: one dot product at a time.
                for i in 0..ri {
                    for j in 0..rj {
                        dots_tile::<1, 1>(
                            k,
                            alpha,
                            ap.offset(i as isize * rsa),
                            rsa,
                            bp.offset(j as isize * csb),
                            csb,
                            beta,
                            cp.offset(i as isize * rsc + j as isize * csc),
                            rsc,
                            csc,
                        );
                    }
                }
            }
            i0 += ri;
        }
        j0 += rj;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn dots_tile<const I: usize, const J: usize>(
    k: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    b: *const f32,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    let mut acc = [[_mm512_setzero_ps(); J]; I];
    let mut p = 0;
    while p < k {
        let len = (k - p).min(16);
        let mask: __mmask16 = if len == 16 { 0xffff } else { (1u16 << len) - 1 };
        let mut bv = [_mm512_setzero_ps(); J];
        for j in 0..J {
            bv[j] = _mm512_maskz_loadu_ps(mask, b.offset(j as isize * csb).add(p));
        }
        for i in 0..I {
            let av = _mm512_maskz_loadu_ps(mask, a.offset(i as isize * rsa).add(p));
            for j in 0..J {
                acc[i][j] = _mm512_fmadd_ps(av, bv[j], acc[i][j]);
            }
        }
        p += 16;
    }
    for i in 0..I {
        for j in 0..J {
            let s = alpha * _mm512_reduce_add_ps(acc[i][j]);
            let cij = c.offset(i as isize * rsc + j as isize * csc);
            *cij = if beta != 0.0 { s + beta * *cij } else { s };
        }
    }
}

/// A 4 x 4 tile of dot products `C[i][j] = alpha A[i] . B[j] + beta C[i][j]` (rows of C
/// contiguous). The 16 accumulators are reduced together by a transposing tree (unpack,
/// unpack, two 128-bit lane shuffles: 30 shuffles and 15 adds) into one vector holding the 16
/// sums in row order, instead of 16 separate horizontal reductions (about 3x the shuffles,
/// which all compete for one port).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn dots_tile4(
    k: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    b: *const f32,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
) {
    let mut acc = [_mm512_setzero_ps(); 16];
    let mut p = 0;
    while p < k {
        let len = (k - p).min(16);
        let mask: __mmask16 = if len == 16 { 0xffff } else { (1u16 << len) - 1 };
        let mut bv = [_mm512_setzero_ps(); 4];
        for j in 0..4 {
            bv[j] = _mm512_maskz_loadu_ps(mask, b.offset(j as isize * csb).add(p));
        }
        for i in 0..4 {
            let av = _mm512_maskz_loadu_ps(mask, a.offset(i as isize * rsa).add(p));
            for j in 0..4 {
                acc[4 * i + j] = _mm512_fmadd_ps(av, bv[j], acc[4 * i + j]);
            }
        }
        p += 16;
    }
    // Level 1: pairs (q, q + 1); per 128-bit lane [q, q+1, q, q+1] partial sums.
    let mut t = [_mm512_setzero_ps(); 8];
    for h in 0..8 {
        let (x, y) = (acc[2 * h], acc[2 * h + 1]);
        t[h] = _mm512_add_ps(_mm512_unpacklo_ps(x, y), _mm512_unpackhi_ps(x, y));
    }
    // Level 2: quads; per 128-bit lane [q, q+1, q+2, q+3].
    let mut v = [_mm512_setzero_ps(); 4];
    for g in 0..4 {
        let (x, y) = (_mm512_castps_pd(t[2 * g]), _mm512_castps_pd(t[2 * g + 1]));
        v[g] = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)),
        );
    }
    // Levels 3 and 4: fold the four 128-bit lanes; lane g of the result holds quad g.
    let fold = |x: __m512, y: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(x, y),
            _mm512_shuffle_f32x4::<0xDD>(x, y),
        )
    };
    let s01 = fold(v[0], v[1]);
    let s23 = fold(v[2], v[3]);
    let sums = _mm512_mul_ps(fold(s01, s23), _mm512_set1_ps(alpha));
    let rows: [__m128; 4] = [
        _mm512_extractf32x4_ps::<0>(sums),
        _mm512_extractf32x4_ps::<1>(sums),
        _mm512_extractf32x4_ps::<2>(sums),
        _mm512_extractf32x4_ps::<3>(sums),
    ];
    for i in 0..4 {
        let cp = c.offset(i as isize * rsc);
        let r = if beta != 0.0 {
            _mm_fmadd_ps(_mm_loadu_ps(cp), _mm_set1_ps(beta), rows[i])
        } else {
            rows[i]
        };
        _mm_storeu_ps(cp, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: the textbook triple loop in f64.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        m: usize,
        k: usize,
        n: usize,
        alpha: f32,
        a: &[f32],
        rsa: isize,
        csa: isize,
        b: &[f32],
        rsb: isize,
        csb: isize,
        beta: f32,
        c: &mut [f32],
        rsc: isize,
        csc: isize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    s += a[(i as isize * rsa + p as isize * csa) as usize] as f64
                        * b[(p as isize * rsb + j as isize * csb) as usize] as f64;
                }
                let ci = (i as isize * rsc + j as isize * csc) as usize;
                c[ci] = (alpha as f64 * s
                    + if beta != 0.0 {
                        beta as f64 * c[ci] as f64
                    } else {
                        0.0
                    }) as f32;
            }
        }
    }

    fn fill(len: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).max(1);
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn pair_matches_two_gemms() {
        for &(m, k1, k2, n) in &[
            (1, 1, 1, 1),
            (784, 20, 20, 500),
            (13, 7, 5, 65),
            (100, 3, 30, 17),
        ] {
            let (a1, a2) = (fill(m * k1, 4), fill(m * k2, 5));
            let (b1, b2) = (fill(k1 * n, 6), fill(k2 * n, 7));
            for (alpha, beta) in [(1.0f32, 0.0f32), (-0.1, 1.0), (-0.1, 0.9998)] {
                let mut c = fill(m * n, 8);
                let mut want = c.clone();
                // A stored transposed (k x m), as the gradient GEMMs read x and g.
                unsafe {
                    sgemm_pair(
                        m,
                        n,
                        alpha,
                        (k1, a1.as_ptr(), 1, m as isize, b1.as_ptr(), n as isize),
                        (k2, a2.as_ptr(), 1, m as isize, b2.as_ptr(), n as isize),
                        beta,
                        c.as_mut_ptr(),
                        n as isize,
                    )
                };
                reference(
                    m, k1, n, alpha, &a1, 1, m as isize, &b1, n as isize, 1, beta, &mut want,
                    n as isize, 1,
                );
                reference(
                    m, k2, n, alpha, &a2, 1, m as isize, &b2, n as isize, 1, 1.0, &mut want,
                    n as isize, 1,
                );
                for (idx, (x, y)) in c.iter().zip(&want).enumerate() {
                    assert!(
                        (x - y).abs() <= 1e-4 * (1.0 + y.abs()) * (k1 + k2) as f32,
                        "{m}x{k1}+{k2}x{n}: index {idx}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_layout_matches_the_reference() {
        let shapes = [
            (1, 1, 1),
            (20, 784, 37),
            (7, 5, 65),
            (65, 33, 129),
            (20, 20, 500),
            (13, 17, 16),
        ];
        for &(m, k, n) in &shapes {
            for (ta, tb, tc) in [
                (false, false, false),
                (true, false, false),
                (false, true, false),
                (true, true, true),
                (false, false, true),
            ] {
                let a = fill(m * k, 1);
                let b = fill(k * n, 2);
                let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
                let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
                let (rsc, csc) = if tc { (1, m as isize) } else { (n as isize, 1) };
                for (alpha, beta) in [(1.0, 0.0), (-0.5, 1.0), (-0.5, 0.9998)] {
                    let mut c = fill(m * n, 3);
                    let mut want = c.clone();
                    unsafe {
                        sgemm(
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
                        )
                    };
                    reference(
                        m, k, n, alpha, &a, rsa, csa, &b, rsb, csb, beta, &mut want, rsc, csc,
                    );
                    for (idx, (x, y)) in c.iter().zip(&want).enumerate() {
                        assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()) * k as f32, "{m}x{k}x{n} ta={ta} tb={tb} tc={tc} alpha={alpha} beta={beta}: index {idx}: {x} vs {y}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod bench {
    use super::*;
    use std::time::Instant;

    /// GFLOP/s on the seed's five step shapes: `cargo test --release -p tensor-fn-runtime sgemm_shapes -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn sgemm_shapes() {
        let shapes: [(usize, usize, usize, bool, bool, &str); 5] = [
            (20, 784, 500, false, false, "x W"),
            (20, 500, 784, false, true, "h W^T"),
            (20, 784, 500, false, false, "g W"),
            (784, 20, 500, true, false, "g^T h"),
            (784, 20, 500, true, false, "x^T g"),
        ];
        for &(m, k, n, ta, tb, name) in &shapes {
            let a = vec![0.5f32; m * k];
            let b = vec![0.25f32; k * n];
            let mut c = vec![0.0f32; m * n];
            let (rsa, csa) = if ta {
                (1isize, m as isize)
            } else {
                (k as isize, 1)
            };
            let (rsb, csb) = if tb {
                (1isize, k as isize)
            } else {
                (n as isize, 1)
            };
            let reps = 2000;
            let t = Instant::now();
            for _ in 0..reps {
                unsafe {
                    sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        rsa,
                        csa,
                        b.as_ptr(),
                        rsb,
                        csb,
                        0.0,
                        c.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                };
            }
            let g = 2.0 * (m * k * n) as f64 * reps as f64 / t.elapsed().as_secs_f64() / 1e9;
            println!("gemm | {name} | {m}x{k}x{n} | {g:.0} GFLOP/s");
        }
    }
}

/// C = alpha (A1 B1 + A2 B2) + beta C, with rows of B1, B2 and C contiguous: both gradient
/// contributions of a tied weight matrix in one pass over C (`W -= lr * (x^T g1 + g2^T h)`).
/// Falls back to two GEMMs when the kernel does not apply.
///
/// # Safety
/// As for [`sgemm`], for both products; `c` overlaps none of the inputs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn sgemm_pair(
    m: usize,
    n: usize,
    alpha: f32,
    (k1, a1, rsa1, csa1, b1, rsb1): (usize, *const f32, isize, isize, *const f32, isize),
    (k2, a2, rsa2, csa2, b2, rsb2): (usize, *const f32, isize, isize, *const f32, isize),
    beta: f32,
    c: *mut f32,
    rsc: isize,
) {
    #[cfg(target_arch = "x86_64")]
    {
        if k1 + k2 <= KC && std::is_x86_feature_detected!("avx512f") {
            let threads = super::pool::threads();
            let (a1, b1, a2, b2, c) = (
                Shared(a1 as *mut f32),
                Shared(b1 as *mut f32),
                Shared(a2 as *mut f32),
                Shared(b2 as *mut f32),
                Shared(c),
            );
            let parts = if m * n * (k1 + k2) >= PARALLEL_FLOPS {
                threads
            } else {
                1
            };
            let part = |t: usize| {
                let (lo, hi) = share(m, t, parts);
                if lo == hi {
                    return;
                }
                // SAFETY: parts write disjoint rows of C; the caller's contract covers every
                // index read or written.
                unsafe {
                    pair_rows(
                        hi - lo,
                        n,
                        alpha,
                        (
                            k1,
                            a1.get().offset(lo as isize * rsa1),
                            rsa1,
                            csa1,
                            b1.get(),
                            rsb1,
                        ),
                        (
                            k2,
                            a2.get().offset(lo as isize * rsa2),
                            rsa2,
                            csa2,
                            b2.get(),
                            rsb2,
                        ),
                        beta,
                        c.get().offset(lo as isize * rsc),
                        rsc,
                    )
                };
            };
            super::pool::run_chunks(parts, &part);
            return;
        }
    }
    sgemm(
        m, k1, n, alpha, a1, rsa1, csa1, b1, rsb1, 1, beta, c, rsc, 1,
    );
    sgemm(m, k2, n, alpha, a2, rsa2, csa2, b2, rsb2, 1, 1.0, c, rsc, 1);
}

type Source = (usize, *mut f32, isize, isize, *mut f32, isize);

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn pair_rows(
    m: usize,
    n: usize,
    alpha: f32,
    s1: Source,
    s2: Source,
    beta: f32,
    c: *mut f32,
    rsc: isize,
) {
    let mut j0 = 0;
    while j0 < n {
        let cols = (n - j0).min(NV * 16);
        let nv = cols.div_ceil(16);
        let tail = cols - (nv - 1) * 16;
        let mask: __mmask16 = if tail == 16 {
            0xffff
        } else {
            (1u16 << tail) - 1
        };
        let mut i0 = 0;
        while i0 < m {
            let rows = (m - i0).min(MR);
            let at = |s: Source| {
                (
                    s.0,
                    s.1.offset(i0 as isize * s.2) as *const f32,
                    s.2,
                    s.3,
                    s.4.add(j0) as *const f32,
                    s.5,
                )
            };
            let (p1, p2) = (at(s1), at(s2));
            let cp = c.offset(i0 as isize * rsc).add(j0);
            macro_rules! tile {
                ($r:literal, $v:literal) => {
                    pair_tile::<$r, $v>(alpha, p1, p2, beta, cp, rsc, mask)
                };
            }
            match (rows, nv) {
                (6, 4) => tile!(6, 4),
                (6, 3) => tile!(6, 3),
                (6, 2) => tile!(6, 2),
                (6, _) => tile!(6, 1),
                (5, 4) => tile!(5, 4),
                (4, 4) => tile!(4, 4),
                (3, 4) => tile!(3, 4),
                (2, 4) => tile!(2, 4),
                (1, 4) => tile!(1, 4),
                (r, v) => {
                    // Corner tiles: one row at a time.
                    for rr in 0..r {
                        let one = |s: (usize, *const f32, isize, isize, *const f32, isize)| {
                            (s.0, s.1.offset(rr as isize * s.2), s.2, s.3, s.4, s.5)
                        };
                        let cr = cp.offset(rr as isize * rsc);
                        match v {
                            4 => pair_tile::<1, 4>(alpha, one(p1), one(p2), beta, cr, rsc, mask),
                            3 => pair_tile::<1, 3>(alpha, one(p1), one(p2), beta, cr, rsc, mask),
                            2 => pair_tile::<1, 2>(alpha, one(p1), one(p2), beta, cr, rsc, mask),
                            _ => pair_tile::<1, 1>(alpha, one(p1), one(p2), beta, cr, rsc, mask),
                        }
                    }
                }
            }
            i0 += rows;
        }
        j0 += cols;
    }
}

/// One R x (V*16) tile of C from both products; the last vector of each row is masked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(
    clippy::too_many_arguments,
    clippy::needless_range_loop,
    clippy::type_complexity
)]
unsafe fn pair_tile<const R: usize, const V: usize>(
    alpha: f32,
    s1: (usize, *const f32, isize, isize, *const f32, isize),
    s2: (usize, *const f32, isize, isize, *const f32, isize),
    beta: f32,
    c: *mut f32,
    rsc: isize,
    mask: __mmask16,
) {
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for (k, a, rsa, csa, b, rsb) in [s1, s2] {
        for p in 0..k {
            let brow = b.offset(p as isize * rsb);
            let mut bv = [_mm512_setzero_ps(); V];
            for v in 0..V {
                bv[v] = if v + 1 == V {
                    _mm512_maskz_loadu_ps(mask, brow.add(v * 16))
                } else {
                    _mm512_loadu_ps(brow.add(v * 16))
                };
            }
            let acol = a.offset(p as isize * csa);
            for r in 0..R {
                let av = _mm512_set1_ps(*acol.offset(r as isize * rsa));
                for v in 0..V {
                    acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
                }
            }
        }
    }
    let al = _mm512_set1_ps(alpha);
    let be = _mm512_set1_ps(beta);
    for r in 0..R {
        let crow = c.offset(r as isize * rsc);
        for v in 0..V {
            let m = if v + 1 == V { mask } else { 0xffff };
            let mut x = _mm512_mul_ps(al, acc[r][v]);
            if beta != 0.0 {
                let old = _mm512_maskz_loadu_ps(m, crow.add(v * 16));
                x = _mm512_fmadd_ps(be, old, x);
            }
            _mm512_mask_storeu_ps(crow.add(v * 16), m, x);
        }
    }
}
