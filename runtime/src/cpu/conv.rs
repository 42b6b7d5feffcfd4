//! 2-D convolution and max-pooling on the CPU, for `f32` (and `f64`) tensors in NCHW layout: the kernels a
//! compiled `conv2d` / `max_pool` will call. Convolution is "valid" with stride 1:
//! `x [n, c, h, w]`, filters `[k, c, fh, fw]`, output `[n, k, h - fh + 1, w - fw + 1]`.
//! With `flip` the filters are flipped in both spatial axes (a true convolution, Theano's
//! `conv2d`); without, it is PyTorch's cross-correlation.
//!
//! Two algorithms, both measured by `conv_shapes` (an ignored test that prints GFLOP/s):
//! - [`conv2d_im2col`]: per image, the patches as the columns of a matrix (`c fh fw` x
//!   `oh ow`), times the filters as a `k` x `c fh fw` matrix, with our SGEMM. Its gradients
//!   reuse the same patch matrix ([`conv2d_backward_im2col`]).
//! - [`conv2d_direct`]: every output row accumulated from input rows, one filter tap at a time,
//!   vectorized along the row.
//!
//! Images are split between the pool's threads, each part with its own patch matrix in the
//! calling thread's scratch, which grows once and is then reused. These functions start a
//! pool job, so they are not to be called from inside one.

use std::cell::RefCell;

use super::pool::{run_chunks, threads};
use super::sgemm::sgemm_serial;

/// The sizes of a valid, stride-1 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Images.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Filters (output channels).
    pub k: usize,
    pub fh: usize,
    pub fw: usize,
}

impl ConvShape {
    pub fn oh(&self) -> usize {
        self.h + 1 - self.fh
    }
    pub fn ow(&self) -> usize {
        self.w + 1 - self.fw
    }
    pub fn x_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn f_len(&self) -> usize {
        self.k * self.c * self.fh * self.fw
    }
    pub fn out_len(&self) -> usize {
        self.n * self.k * self.oh() * self.ow()
    }
    /// Multiply-adds of the forward pass.
    pub fn macs(&self) -> usize {
        self.out_len() * self.c * self.fh * self.fw
    }

    /// Panics unless the sizes make a convolution and the slices have their lengths: a
    /// broken call is a bug of the caller, caught before any unchecked access.
    fn check(&self, x: usize, f: usize, out: usize) {
        assert!(
            self.fh >= 1 && self.fw >= 1 && self.fh <= self.h && self.fw <= self.w,
            "conv2d: filters {}x{} do not fit images {}x{}",
            self.fh,
            self.fw,
            self.h,
            self.w
        );
        assert_eq!(x, self.x_len(), "conv2d: input length for {self:?}");
        assert_eq!(f, self.f_len(), "conv2d: filter length for {self:?}");
        assert_eq!(out, self.out_len(), "conv2d: output length for {self:?}");
    }

    /// Writes the filters as a `k` x `c fh fw` matrix in patch order, flipped if asked.
    fn filter_matrix<T: Elem>(&self, f: &[T], flip: bool, m: &mut [T]) {
        let (fh, fw) = (self.fh, self.fw);
        for (o, block) in m.chunks_mut(self.c * fh * fw).enumerate() {
            for ch in 0..self.c {
                for u in 0..fh {
                    for v in 0..fw {
                        let (su, sv) = if flip {
                            (fh - 1 - u, fw - 1 - v)
                        } else {
                            (u, v)
                        };
                        block[(ch * fh + u) * fw + v] = f[((o * self.c + ch) * fh + su) * fw + sv];
                    }
                }
            }
        }
    }
}

thread_local! {
    /// The calling thread's scratch: the filter matrix, and for each part of the images the
    /// patch matrix (and the filter gradient) its pool thread works on, through pointers.
    /// It grows, never shrinks, and only on the calling thread: once it has grown to a call's
    /// sizes, calls allocate nothing, whichever pool thread takes which part. One per element
    /// type.
    static CALLER32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static CALLER64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// The element types of the convolution kernels: `f32` (our SGEMM) and `f64` (for gradient
/// checks against finite differences; matrixmultiply's DGEMM).
pub trait Elem:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
    + std::iter::Sum
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    fn is_nan(self) -> bool;
    /// The calling thread's scratch of this type, at least `len` long.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
    /// C = alpha A B + beta C on the calling thread, strided (`rs`/`cs` in elements).
    ///
    /// # Safety
    /// Every element each operand's strides reach is inside its allocation, and C's strides
    /// map no two elements to one place.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_serial(
        m: usize,
        k: usize,
        n: usize,
        alpha: Self,
        a: *const Self,
        rsa: isize,
        csa: isize,
        b: *const Self,
        rsb: isize,
        csb: isize,
        beta: Self,
        c: *mut Self,
        rsc: isize,
        csc: isize,
    );
}

macro_rules! elem_impl {
    ($t:ty, $cell:ident, $gemm:path) => {
        impl Elem for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
            fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                $cell.with(|s| {
                    let mut s = s.borrow_mut();
                    if s.len() < len {
                        s.resize(len, 0.0);
                    }
                    f(&mut s[..len])
                })
            }
            unsafe fn gemm_serial(
                m: usize,
                k: usize,
                n: usize,
                alpha: Self,
                a: *const Self,
                rsa: isize,
                csa: isize,
                b: *const Self,
                rsb: isize,
                csb: isize,
                beta: Self,
                c: *mut Self,
                rsc: isize,
                csc: isize,
            ) {
                // SAFETY: the caller's contract, which is the callee's.
                unsafe { $gemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc) }
            }
        }
    };
}

elem_impl!(f32, CALLER32, sgemm_serial);
elem_impl!(f64, CALLER64, matrixmultiply::dgemm);

/// How many parts the images are split into.
fn parts(n: usize) -> usize {
    threads().min(n).max(1)
}

/// Runs `f` on the calling thread's scratch, at least `len` long.
fn with_caller_scratch<T: Elem, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    T::with_scratch(len, f)
}

/// Image `b`'s patches: row `(ch, u, v)`, column `(i, j)` holds `x[b, ch, i + u, j + v]`.
fn im2col<T: Elem>(s: &ConvShape, img: &[T], cols: &mut [T]) {
    im2col_strided(s, img, cols, s.oh() * s.ow());
}

/// [`im2col`] into the first `oh ow` columns of a matrix whose rows are `stride` long (the
/// patches of several images side by side).
fn im2col_strided<T: Elem>(s: &ConvShape, img: &[T], cols: &mut [T], stride: usize) {
    let (oh, ow) = (s.oh(), s.ow());
    for ch in 0..s.c {
        let plane = &img[ch * s.h * s.w..(ch + 1) * s.h * s.w];
        for u in 0..s.fh {
            // Rows (ch, u, v) for every v read the same image rows, shifted by v: each image
            // row is read once for all of them.
            let first = (ch * s.fh + u) * s.fw;
            for i in 0..oh {
                let src = &plane[(i + u) * s.w..(i + u + 1) * s.w];
                for v in 0..s.fw {
                    let row = &mut cols[(first + v) * stride + i * ow..][..ow];
                    copy_short(row, &src[v..v + ow]);
                }
            }
        }
    }
}

/// `dst = src` for the short rows of a patch matrix (8 or 24 values on LeNet's layers): in
/// blocks of 8 moved as arrays, where `copy_from_slice` would call `memmove` for each row.
#[inline(always)]
fn copy_short<T: Elem>(dst: &mut [T], src: &[T]) {
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (a, b) in (&mut d).zip(&mut s) {
        let b: &[T; 8] = b.try_into().expect("chunks of 8");
        let a: &mut [T; 8] = a.try_into().expect("chunks of 8");
        *a = *b;
    }
    for (a, b) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *a = *b;
    }
}

/// The adjoint of [`im2col`]: adds each patch entry back into the image position it came from.
fn col2im_add<T: Elem>(s: &ConvShape, cols: &[T], img: &mut [T]) {
    let (oh, ow) = (s.oh(), s.ow());
    for ch in 0..s.c {
        let plane = &mut img[ch * s.h * s.w..(ch + 1) * s.h * s.w];
        for u in 0..s.fh {
            for v in 0..s.fw {
                let row = &cols[((ch * s.fh + u) * s.fw + v) * oh * ow..][..oh * ow];
                for i in 0..oh {
                    let dst = &mut plane[(i + u) * s.w + v..][..ow];
                    for (d, x) in dst.iter_mut().zip(&row[i * ow..(i + 1) * ow]) {
                        *d += *x;
                    }
                }
            }
        }
    }
}

/// Runs `f(part, first, last)` over the [`parts`] of the images, on the pool's threads.
fn by_images(n: usize, f: &(dyn Fn(usize, usize, usize) + Sync)) {
    let parts = parts(n);
    run_chunks(parts, &|t| {
        let (lo, hi) = (n * t / parts, n * (t + 1) / parts);
        if lo < hi {
            f(t, lo, hi);
        }
    });
}

/// A pointer to disjoint per-image parts of one output, handed to the pool's threads.
struct Out<T>(*mut T);
impl<T> Clone for Out<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Out<T> {}
// SAFETY: each thread writes only the images it was given.
unsafe impl<T> Sync for Out<T> {}
unsafe impl<T> Send for Out<T> {}
impl<T> Out<T> {
    /// Image `b`'s `len` elements.
    ///
    /// # Safety
    /// `b * len + len` is within the allocation, and no other thread uses image `b`.
    unsafe fn image<'a>(self, b: usize, len: usize) -> &'a mut [T] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(b * len), len) }
    }
}

/// Forward convolution by im2col and SGEMM: `out = conv2d(x, f)`.
pub fn conv2d_im2col<T: Elem>(s: &ConvShape, x: &[T], f: &[T], flip: bool, out: &mut [T]) {
    forward(s, x, f, flip, out, None);
}

/// [`conv2d_im2col`] followed by [`max_pool`] of its output by `win` into `pooled`, each image
/// pooled right after its product, while its feature maps are in cache. `out` is written too
/// (the pooling's gradient reads it).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_im2col_pool<T: Elem>(
    s: &ConvShape,
    x: &[T],
    f: &[T],
    flip: bool,
    out: &mut [T],
    win: (usize, usize),
    pooled: &mut [T],
) {
    assert!(win.0 >= 1 && win.1 >= 1, "max_pool: window {win:?}");
    let (oh, ow) = (s.oh() / win.0, s.ow() / win.1);
    assert_eq!(pooled.len(), s.n * s.k * oh * ow, "max_pool: output length");
    forward(s, x, f, flip, out, Some((win, pooled)));
}

fn forward<T: Elem>(
    s: &ConvShape,
    x: &[T],
    f: &[T],
    flip: bool,
    out: &mut [T],
    pool: Option<((usize, usize), &mut [T])>,
) {
    s.check(x.len(), f.len(), out.len());
    let patch = s.c * s.fh * s.fw * s.oh() * s.ow();
    with_caller_scratch(s.f_len() + parts(s.n) * patch, |scratch| {
        let (fm, patches) = scratch.split_at_mut(s.f_len());
        s.filter_matrix(f, flip, fm);
        im2col_forward(s, x, fm, patches, out, pool);
    });
}

fn im2col_forward<T: Elem>(
    s: &ConvShape,
    x: &[T],
    fm: &[T],
    patches: &mut [T],
    out: &mut [T],
    pool: Option<((usize, usize), &mut [T])>,
) {
    let (ckk, p) = (s.c * s.fh * s.fw, s.oh() * s.ow());
    let (img_len, out_len) = (s.c * s.h * s.w, s.k * p);
    let (o, pa) = (Out(out.as_mut_ptr()), Out(patches.as_mut_ptr()));
    let pool = pool.map(|(win, pooled)| (win, Out(pooled.as_mut_ptr())));
    by_images(s.n, &|t, lo, hi| {
        {
            // SAFETY: part t's patch matrix is this thread's alone.
            let cols = unsafe { pa.image(t, ckk * p) };
            for b in lo..hi {
                im2col(s, &x[b * img_len..(b + 1) * img_len], cols);
                // SAFETY: image b of `out` is this thread's alone; the GEMM's operands are
                // k x ckk (fm), ckk x p (cols) and k x p, all row-major within their slices.
                unsafe {
                    let dst = o.image(b, out_len);
                    T::gemm_serial(
                        s.k,
                        ckk,
                        p,
                        T::ONE,
                        fm.as_ptr(),
                        ckk as isize,
                        1,
                        cols.as_ptr(),
                        p as isize,
                        1,
                        T::ZERO,
                        dst.as_mut_ptr(),
                        p as isize,
                        1,
                    );
                    if let Some(((ph, pw), po)) = pool {
                        let pooled_len = (s.oh() / ph) * (s.ow() / pw);
                        // SAFETY: image b of the pooled output is this thread's alone.
                        let pdst = po.image(b, s.k * pooled_len);
                        for (plane, pd) in
                            dst.chunks_exact(p).zip(pdst.chunks_exact_mut(pooled_len))
                        {
                            pool_plane(plane, s.oh(), s.ow(), (ph, pw), pd);
                        }
                    }
                }
            }
        }
    });
}

/// Forward convolution computed directly: for each output row, each input channel and each
/// filter tap, `out[i, ..] += f * x[i + u, v ..]`, a multiply-add along the row.
pub fn conv2d_direct(s: &ConvShape, x: &[f32], f: &[f32], flip: bool, out: &mut [f32]) {
    s.check(x.len(), f.len(), out.len());
    with_caller_scratch(s.f_len(), |fm| {
        s.filter_matrix(f, flip, fm);
        direct_forward(s, x, fm, out);
    });
}

fn direct_forward(s: &ConvShape, x: &[f32], fm: &[f32], out: &mut [f32]) {
    let (img_len, out_len) = (s.c * s.h * s.w, s.k * s.oh() * s.ow());
    let o = Out(out.as_mut_ptr());
    by_images(s.n, &|_, lo, hi| {
        for b in lo..hi {
            let img = &x[b * img_len..(b + 1) * img_len];
            // SAFETY: image b of `out` is this thread's alone.
            let dst = unsafe { o.image(b, out_len) };
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has the features the function is compiled for.
                unsafe { direct_image_avx512(s, img, fm, dst) };
                continue;
            }
            direct_image(s, img, fm, dst);
        }
    });
}

/// [`direct_image`] compiled for AVX-512, so the row loops use 16-lane multiply-adds.
///
/// # Safety
/// The CPU must have AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn direct_image_avx512(s: &ConvShape, img: &[f32], fm: &[f32], dst: &mut [f32]) {
    direct_image(s, img, fm, dst)
}

/// One image of [`conv2d_direct`]; `fm` is the filter matrix in patch order.
#[inline(always)]
fn direct_image(s: &ConvShape, img: &[f32], fm: &[f32], dst: &mut [f32]) {
    let (oh, ow) = (s.oh(), s.ow());
    dst.fill(0.0);
    for (oc, plane_out) in dst.chunks_mut(oh * ow).enumerate() {
        let taps = &fm[oc * s.c * s.fh * s.fw..(oc + 1) * s.c * s.fh * s.fw];
        for ch in 0..s.c {
            let plane = &img[ch * s.h * s.w..(ch + 1) * s.h * s.w];
            for i in 0..oh {
                let row = &mut plane_out[i * ow..(i + 1) * ow];
                for u in 0..s.fh {
                    let src = &plane[(i + u) * s.w..(i + u + 1) * s.w];
                    for v in 0..s.fw {
                        let t = taps[(ch * s.fh + u) * s.fw + v];
                        for (r, xv) in row.iter_mut().zip(&src[v..v + ow]) {
                            *r += t * *xv;
                        }
                    }
                }
            }
        }
    }
}

/// The gradients of [`conv2d_im2col`]'s output with respect to its input and its filters, given
/// `gout`, the gradient of the output: `gx` (overwritten) and `gf` (overwritten), both by
/// im2col: `gf = sum over images of gout_b cols_b^T`, and `gx_b = col2im(F^T gout_b)`.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward_im2col<T: Elem>(
    s: &ConvShape,
    x: &[T],
    f: &[T],
    flip: bool,
    gout: &[T],
    gx: &mut [T],
    gf: &mut [T],
) {
    s.check(x.len(), f.len(), gout.len());
    assert_eq!(gx.len(), x.len(), "conv2d: input gradient length for {s:?}");
    backward(s, Some(x), f, flip, gout, Some(gx), Some(gf));
}

/// The gradient of [`conv2d_im2col`]'s output with respect to its input alone: `gx`
/// (overwritten) `= col2im(F^T gout_b)` per image. The input itself is not needed.
pub fn conv2d_grad_input<T: Elem>(s: &ConvShape, f: &[T], flip: bool, gout: &[T], gx: &mut [T]) {
    s.check(gx.len(), f.len(), gout.len());
    backward(s, None, f, flip, gout, Some(gx), None);
}

/// The gradient of [`conv2d_im2col`]'s output with respect to its filters alone: `gf`
/// (overwritten) `= sum over images of gout_b cols_b^T`.
pub fn conv2d_grad_filter<T: Elem>(s: &ConvShape, x: &[T], flip: bool, gout: &[T], gf: &mut [T]) {
    s.check(x.len(), gf.len(), gout.len());
    backward(s, Some(x), &[], flip, gout, None, Some(gf));
}

/// [`conv2d_grad_filter`] of the gradient that [`max_pool_backward`] makes of `pooled_g` (the
/// gradient of the pooled maps) and `conv_out` (the maps), without storing it: each image's
/// share is made where the filter gradient reads it.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_grad_filter_pooled<T: Elem>(
    s: &ConvShape,
    x: &[T],
    flip: bool,
    conv_out: &[T],
    win: (usize, usize),
    pooled_g: &[T],
    gf: &mut [T],
) {
    assert!(win.0 >= 1 && win.1 >= 1, "max_pool: window {win:?}");
    let pooled_len = s.k * (s.oh() / win.0) * (s.ow() / win.1);
    s.check(x.len(), gf.len(), conv_out.len());
    assert_eq!(
        pooled_g.len(),
        s.n * pooled_len,
        "max_pool: output gradient length"
    );
    let src = GradSrc::Pooled {
        conv_out,
        win,
        pooled_g,
    };
    backward_from(s, Some(x), &[], flip, src, None, Some(gf));
}

/// Where the filter gradient's output gradient comes from: stored, or made per image by the
/// pooling's gradient.
#[derive(Clone, Copy)]
enum GradSrc<'a, T> {
    Dense(&'a [T]),
    Pooled {
        conv_out: &'a [T],
        win: (usize, usize),
        pooled_g: &'a [T],
    },
}

impl<T: Elem> GradSrc<'_, T> {
    /// Image `b`'s output gradient (`k p` values): a slice of the stored one, or written into
    /// `tmp` and returned from there.
    fn image<'s>(&'s self, s: &ConvShape, b: usize, tmp: &'s mut [T]) -> &'s [T] {
        let (oh, ow) = (s.oh(), s.ow());
        let len = s.k * oh * ow;
        match *self {
            GradSrc::Dense(g) => &g[b * len..(b + 1) * len],
            GradSrc::Pooled {
                conv_out,
                win,
                pooled_g,
            } => {
                let pl = (oh / win.0) * (ow / win.1);
                let maps = &conv_out[b * len..(b + 1) * len];
                let gp = &pooled_g[b * s.k * pl..(b + 1) * s.k * pl];
                for ((m, g), d) in maps
                    .chunks_exact(oh * ow)
                    .zip(gp.chunks_exact(pl))
                    .zip(tmp.chunks_exact_mut(oh * ow))
                {
                    pool_grad_plane(m, g, oh, ow, win, d);
                }
                &tmp[..len]
            }
        }
    }
}

/// The shared body of the gradients: `x` is needed for `gf`, `f` for `gx`.
#[allow(clippy::too_many_arguments)]
fn backward<T: Elem>(
    s: &ConvShape,
    x: Option<&[T]>,
    f: &[T],
    flip: bool,
    gout: &[T],
    gx: Option<&mut [T]>,
    gf: Option<&mut [T]>,
) {
    backward_from(s, x, f, flip, GradSrc::Dense(gout), gx, gf);
}

fn backward_from<T: Elem>(
    s: &ConvShape,
    x: Option<&[T]>,
    f: &[T],
    flip: bool,
    gout: GradSrc<'_, T>,
    gx: Option<&mut [T]>,
    gf: Option<&mut [T]>,
) {
    if let Some(gf) = &gf {
        assert_eq!(
            gf.len(),
            s.f_len(),
            "conv2d: filter gradient length for {s:?}"
        );
    }
    let parts = parts(s.n);
    let (ckk, p) = (s.c * s.fh * s.fw, s.oh() * s.ow());
    let group = group(s);
    // Per part: the patches of a group of images side by side, their output gradients side by
    // side, one image's patch gradient, and one image's output gradient when it is made here.
    let per_part = ckk * group * p + s.k * group * p + ckk * p + s.k * p;
    // The filter matrix; each part's share of the filter gradient (patch order); each part's
    // workspace.
    with_caller_scratch((1 + parts) * s.f_len() + parts * per_part, |scratch| {
        let (fm, rest) = scratch.split_at_mut(s.f_len());
        let (partial, work) = rest.split_at_mut(parts * s.f_len());
        if gx.is_some() {
            s.filter_matrix(f, flip, fm);
        }
        partial.fill(T::ZERO);
        im2col_backward(s, x, fm, flip, gout, (gx, gf), parts, partial, work);
    });
}

/// How many images one GEMM of the filter gradient covers: enough output pixels side by side
/// (about 512) that its inner dimension is long, where one image's (64 on LeNet's second
/// layer) would leave the GEMM re-reading its accumulator for little work.
fn group(s: &ConvShape) -> usize {
    (512 / (s.oh() * s.ow()).max(1)).clamp(1, 16)
}

/// Whether the filter gradient is accumulated transposed (see [`im2col_backward`]).
fn transposed(s: &ConvShape) -> bool {
    s.c * s.fh * s.fw >= 128
}

#[allow(clippy::too_many_arguments)]
fn im2col_backward<T: Elem>(
    s: &ConvShape,
    x: Option<&[T]>,
    fm: &[T],
    flip: bool,
    gout: GradSrc<'_, T>,
    (gx, gf): (Option<&mut [T]>, Option<&mut [T]>),
    parts: usize,
    partial: &mut [T],
    work: &mut [T],
) {
    let (ckk, p) = (s.c * s.fh * s.fw, s.oh() * s.ow());
    let img_len = s.c * s.h * s.w;
    let group = group(s);
    let per_part = ckk * group * p + s.k * group * p + ckk * p + s.k * p;
    let gxo = gx.map(|g| Out(g.as_mut_ptr()));
    let po = Out(partial.as_mut_ptr());
    let wo = Out(work.as_mut_ptr());
    let want_gf = gf.is_some();
    run_chunks(parts, &|t| {
        let (lo, hi) = (s.n * t / parts, s.n * (t + 1) / parts);
        // SAFETY: part t's workspace is this thread's alone.
        let mine = unsafe { wo.image(t, per_part) };
        let (cols, rest) = mine.split_at_mut(ckk * group * p);
        let (gcols, rest) = rest.split_at_mut(s.k * group * p);
        let (dcols, gtmp) = rest.split_at_mut(ckk * p);
        // SAFETY: block t of the partials is this thread's alone.
        let gfm = unsafe { po.image(t, s.k * ckk) };
        let mut b0 = lo;
        while b0 < hi {
            let nb = group.min(hi - b0);
            let wide = nb * p;
            if let (true, Some(x)) = (want_gf, x) {
                // Images b0.. side by side: patches [ckk, nb p] and output gradients. Long
                // patches (LeNet's second layer: 500) take the filter gradient's transpose,
                // [ckk, k] += patches x gradients^T, a GEMM of two row-major operands; short
                // ones (the first layer: 25) the gradient itself, [k, ckk] += gradients x
                // patches^T, whose output rows are longer.
                for j in 0..nb {
                    let b = b0 + j;
                    im2col_strided(
                        s,
                        &x[b * img_len..(b + 1) * img_len],
                        &mut cols[j * p..],
                        wide,
                    );
                    let g = gout.image(s, b, gtmp);
                    if transposed(s) {
                        let gt = &mut gcols[j * p * s.k..(j + 1) * p * s.k];
                        for (o, go) in g.chunks_exact(p).enumerate() {
                            for (q, v) in go.iter().enumerate() {
                                gt[q * s.k + o] = *v;
                            }
                        }
                    } else {
                        for (o, go) in g.chunks_exact(p).enumerate() {
                            gcols[o * wide + j * p..][..p].copy_from_slice(go);
                        }
                    }
                }
                // SAFETY: cols is ckk x wide; gcols wide x k (transposed) or k x wide; gfm
                // ckk x k (transposed) or k x ckk; all row-major within their slices.
                unsafe {
                    if transposed(s) {
                        T::gemm_serial(
                            ckk,
                            wide,
                            s.k,
                            T::ONE,
                            cols.as_ptr(),
                            wide as isize,
                            1,
                            gcols.as_ptr(),
                            s.k as isize,
                            1,
                            T::ONE,
                            gfm.as_mut_ptr(),
                            s.k as isize,
                            1,
                        );
                    } else {
                        T::gemm_serial(
                            s.k,
                            wide,
                            ckk,
                            T::ONE,
                            gcols.as_ptr(),
                            wide as isize,
                            1,
                            cols.as_ptr(),
                            1,
                            wide as isize,
                            T::ONE,
                            gfm.as_mut_ptr(),
                            ckk as isize,
                            1,
                        );
                    }
                }
            }
            if let Some(gxo) = gxo {
                for b in b0..b0 + nb {
                    let g = gout.image(s, b, gtmp);
                    // SAFETY: fm is k x ckk read transposed, g k x p, dcols ckk x p.
                    unsafe {
                        T::gemm_serial(
                            ckk,
                            s.k,
                            p,
                            T::ONE,
                            fm.as_ptr(),
                            1,
                            ckk as isize,
                            g.as_ptr(),
                            p as isize,
                            1,
                            T::ZERO,
                            dcols.as_mut_ptr(),
                            p as isize,
                            1,
                        );
                    }
                    // SAFETY: image b of gx is this thread's alone.
                    let gimg = unsafe { gxo.image(b, img_len) };
                    gimg.fill(T::ZERO);
                    col2im_add(s, dcols, gimg);
                }
            }
            b0 += nb;
        }
    });
    let Some(gf) = gf else {
        return;
    };
    // Sum the threads' parts, and undo the flip: gf[o, ch, su, sv] for patch entry (u, v).
    let (fh, fw) = (s.fh, s.fw);
    for o in 0..s.k {
        for ch in 0..s.c {
            for u in 0..fh {
                for v in 0..fw {
                    let e = (ch * fh + u) * fw + v;
                    let at = if transposed(s) {
                        e * s.k + o
                    } else {
                        o * ckk + e
                    };
                    let sum: T = (0..parts).map(|t| partial[t * s.k * ckk + at]).sum();
                    let (su, sv) = if flip {
                        (fh - 1 - u, fw - 1 - v)
                    } else {
                        (u, v)
                    };
                    gf[((o * s.c + ch) * fh + su) * fw + sv] = sum;
                }
            }
        }
    }
}

/// Non-overlapping `ph` x `pw` max-pooling of `x [planes, h, w]` (planes = images x
/// channels), ignoring the border rows and columns that do not fill a window (Theano's
/// `ignore_border = True`): `out [planes, h / ph, w / pw]`. A NaN in a window is its maximum.
/// Planes are split between the pool's threads.
pub fn max_pool<T: Elem>(
    planes: usize,
    h: usize,
    w: usize,
    (ph, pw): (usize, usize),
    x: &[T],
    out: &mut [T],
) {
    assert!(ph >= 1 && pw >= 1, "max_pool: window {ph}x{pw}");
    let (oh, ow) = (h / ph, w / pw);
    assert_eq!(x.len(), planes * h * w, "max_pool: input length");
    assert_eq!(out.len(), planes * oh * ow, "max_pool: output length");
    let o = Out(out.as_mut_ptr());
    by_planes(planes, &|lo, hi| {
        for pl in lo..hi {
            let src = &x[pl * h * w..(pl + 1) * h * w];
            // SAFETY: plane pl of `out` is this thread's alone.
            let dst = unsafe { o.image(pl, oh * ow) };
            pool_plane(src, h, w, (ph, pw), dst);
        }
    });
}

/// One `h` x `w` plane of [`max_pool`].
fn pool_plane<T: Elem>(src: &[T], h: usize, w: usize, (ph, pw): (usize, usize), dst: &mut [T]) {
    let (oh, ow) = (h / ph, w / pw);
    if (ph, pw) == (2, 2) {
        pool_plane_2x2(src, w, oh, ow, dst);
        return;
    }
    for i in 0..oh {
        for j in 0..ow {
            dst[i * ow + j] = window_max(src, w, (i * ph, j * pw), (ph, pw)).0;
        }
    }
}

/// The larger of two values, or the NaN if either is one (`a` first): a compare and a blend.
#[inline(always)]
fn max_nan<T: Elem>(a: T, b: T) -> T {
    if b > a || b.is_nan() {
        b
    } else {
        a
    }
}

/// One plane of 2x2 pooling: the maximum of each row pair (contiguous, vectorized), then of
/// each column pair, in blocks of 32 columns.
#[inline]
fn pool_plane_2x2<T: Elem>(src: &[T], w: usize, oh: usize, ow: usize, dst: &mut [T]) {
    const B: usize = 32;
    let mut rows = [T::ZERO; 2 * B];
    for i in 0..oh {
        let r0 = &src[2 * i * w..][..2 * ow];
        let r1 = &src[(2 * i + 1) * w..][..2 * ow];
        let d = &mut dst[i * ow..(i + 1) * ow];
        for (jb, out) in d.chunks_mut(B).enumerate() {
            let cols = 2 * out.len();
            let (a, b) = (&r0[2 * B * jb..][..cols], &r1[2 * B * jb..][..cols]);
            for ((m, x), y) in rows[..cols].iter_mut().zip(a).zip(b) {
                *m = max_nan(*x, *y);
            }
            for (j, o) in out.iter_mut().enumerate() {
                *o = max_nan(rows[2 * j], rows[2 * j + 1]);
            }
        }
    }
}

/// Runs `f(first, last)` over parts of `planes` on the pool's threads.
fn by_planes(planes: usize, f: &(dyn Fn(usize, usize) + Sync)) {
    let parts = threads().min(planes).max(1);
    run_chunks(parts, &|t| {
        let (lo, hi) = (planes * t / parts, planes * (t + 1) / parts);
        if lo < hi {
            f(lo, hi);
        }
    });
}

/// The maximum of one window and its position: the first maximum in row-major order within
/// the window, and a NaN wins (it is the maximum a NaN-propagating max reports).
fn window_max<T: Elem>(
    src: &[T],
    w: usize,
    (r0, c0): (usize, usize),
    (ph, pw): (usize, usize),
) -> (T, usize) {
    let mut best = (src[r0 * w + c0], r0 * w + c0);
    for r in r0..r0 + ph {
        for c in c0..c0 + pw {
            let v = src[r * w + c];
            if !best.0.is_nan() && (v > best.0 || v.is_nan()) {
                best = (v, r * w + c);
            }
        }
    }
    best
}

/// The gradient of [`max_pool`]: each window's output gradient goes to the window's maximum
/// (the first one, row-major, on ties; the first NaN if there is one); every other input, and
/// the ignored border, gets 0.
#[allow(clippy::too_many_arguments)]
pub fn max_pool_backward<T: Elem>(
    planes: usize,
    h: usize,
    w: usize,
    (ph, pw): (usize, usize),
    x: &[T],
    gout: &[T],
    gx: &mut [T],
) {
    assert!(ph >= 1 && pw >= 1, "max_pool: window {ph}x{pw}");
    let (oh, ow) = (h / ph, w / pw);
    assert_eq!(x.len(), planes * h * w, "max_pool: input length");
    assert_eq!(gx.len(), x.len(), "max_pool: input gradient length");
    assert_eq!(
        gout.len(),
        planes * oh * ow,
        "max_pool: output gradient length"
    );
    let o = Out(gx.as_mut_ptr());
    by_planes(planes, &|lo, hi| {
        for pl in lo..hi {
            let src = &x[pl * h * w..(pl + 1) * h * w];
            let g = &gout[pl * oh * ow..(pl + 1) * oh * ow];
            // SAFETY: plane pl of `gx` is this thread's alone.
            let dst = unsafe { o.image(pl, h * w) };
            pool_grad_plane(src, g, h, w, (ph, pw), dst);
        }
    });
}

/// One `h` x `w` plane of [`max_pool_backward`].
fn pool_grad_plane<T: Elem>(
    src: &[T],
    g: &[T],
    h: usize,
    w: usize,
    (ph, pw): (usize, usize),
    dst: &mut [T],
) {
    let (oh, ow) = (h / ph, w / pw);
    if (ph, pw) == (2, 2) {
        pool_grad_plane_2x2(src, g, w, (oh, ow), dst);
        return;
    }
    dst.fill(T::ZERO);
    for i in 0..oh {
        for j in 0..ow {
            let at = window_max(src, w, (i * ph, j * pw), (ph, pw)).1;
            dst[at] += g[i * ow + j];
        }
    }
}

/// One plane of the 2x2 pooling gradient, each element written once: a window's gradient to
/// its first maximum and 0 to its other three elements, 0 to the border no window covers.
fn pool_grad_plane_2x2<T: Elem>(
    src: &[T],
    g: &[T],
    w: usize,
    (oh, ow): (usize, usize),
    dst: &mut [T],
) {
    for i in 0..oh {
        let (r0, r1) = (2 * i * w, (2 * i + 1) * w);
        for j in 0..ow {
            let c = 2 * j;
            let at = first_max_2x2(src, w, 2 * i, c);
            let gv = g[i * ow + j];
            for e in [r0 + c, r0 + c + 1, r1 + c, r1 + c + 1] {
                dst[e] = if e == at { gv } else { T::ZERO };
            }
        }
        dst[r0 + 2 * ow..r0 + w].fill(T::ZERO);
        dst[r1 + 2 * ow..r1 + w].fill(T::ZERO);
    }
    dst[2 * oh * w..].fill(T::ZERO);
}

/// [`window_max`]'s position for a 2x2 window, unrolled.
#[inline(always)]
fn first_max_2x2<T: Elem>(src: &[T], w: usize, r: usize, c: usize) -> usize {
    let (i0, i1, i2, i3) = (
        r * w + c,
        r * w + c + 1,
        (r + 1) * w + c,
        (r + 1) * w + c + 1,
    );
    let mut best = (src[i0], i0);
    for at in [i1, i2, i3] {
        let v = src[at];
        if !best.0.is_nan() && (v > best.0 || v.is_nan()) {
            best = (v, at);
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let v = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503));
                (v >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    /// The definition, in f64: out[b, o, i, j] = sum x[b, ch, i + u, j + v] f'[o, ch, u, v].
    fn naive(s: &ConvShape, x: &[f32], f: &[f32], flip: bool) -> Vec<f64> {
        let (oh, ow) = (s.oh(), s.ow());
        let mut out = vec![0.0; s.out_len()];
        for b in 0..s.n {
            for o in 0..s.k {
                for i in 0..oh {
                    for j in 0..ow {
                        let mut acc = 0.0f64;
                        for ch in 0..s.c {
                            for u in 0..s.fh {
                                for v in 0..s.fw {
                                    let (fu, fv) = if flip {
                                        (s.fh - 1 - u, s.fw - 1 - v)
                                    } else {
                                        (u, v)
                                    };
                                    let xv = x[((b * s.c + ch) * s.h + i + u) * s.w + j + v];
                                    let fval = f[((o * s.c + ch) * s.fh + fu) * s.fw + fv];
                                    acc += xv as f64 * fval as f64;
                                }
                            }
                        }
                        out[((b * s.k + o) * oh + i) * ow + j] = acc;
                    }
                }
            }
        }
        out
    }

    const SHAPES: [ConvShape; 4] = [
        // Odd sizes: 7x9 images, 3x2 filters, 3 channels.
        ConvShape {
            n: 5,
            c: 3,
            h: 7,
            w: 9,
            k: 4,
            fh: 3,
            fw: 2,
        },
        ConvShape {
            n: 1,
            c: 1,
            h: 1,
            w: 1,
            k: 1,
            fh: 1,
            fw: 1,
        },
        ConvShape {
            n: 3,
            c: 2,
            h: 6,
            w: 5,
            k: 3,
            fh: 6,
            fw: 5,
        },
        // LeNet's second layer, two images.
        ConvShape {
            n: 2,
            c: 20,
            h: 12,
            w: 12,
            k: 50,
            fh: 5,
            fw: 5,
        },
    ];

    fn close(what: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs {w}"
            );
        }
    }

    #[test]
    fn both_algorithms_match_the_definition_with_and_without_flip() {
        for s in SHAPES {
            let (x, f) = (fill(s.x_len(), 1), fill(s.f_len(), 2));
            for flip in [true, false] {
                let want = naive(&s, &x, &f, flip);
                let mut out = vec![f32::NAN; s.out_len()];
                conv2d_im2col(&s, &x, &f, flip, &mut out);
                close(&format!("im2col {s:?} flip {flip}"), &out, &want, 1e-5);
                let mut out = vec![f32::NAN; s.out_len()];
                conv2d_direct(&s, &x, &f, flip, &mut out);
                close(&format!("direct {s:?} flip {flip}"), &out, &want, 1e-5);
            }
        }
    }

    #[test]
    fn flipping_is_a_true_convolution() {
        // One channel, one 1x2 filter [a, b] over [x0, x1, x2]: a true convolution gives
        // b x0 + a x1, cross-correlation a x0 + b x1.
        let s = ConvShape {
            n: 1,
            c: 1,
            h: 1,
            w: 3,
            k: 1,
            fh: 1,
            fw: 2,
        };
        let (x, f) = ([1.0, 10.0, 100.0], [2.0, 3.0]);
        let mut out = [0.0; 2];
        conv2d_im2col(&s, &x, &f, true, &mut out);
        assert_eq!(out, [3.0 * 1.0 + 2.0 * 10.0, 3.0 * 10.0 + 2.0 * 100.0]);
        conv2d_direct(&s, &x, &f, false, &mut out);
        assert_eq!(out, [2.0 * 1.0 + 3.0 * 10.0, 2.0 * 10.0 + 3.0 * 100.0]);
    }

    #[test]
    fn gradients_are_the_adjoints_of_the_definition() {
        for s in SHAPES {
            let (x, f, g) = (fill(s.x_len(), 3), fill(s.f_len(), 4), fill(s.out_len(), 5));
            let (oh, ow) = (s.oh(), s.ow());
            for flip in [true, false] {
                // By the definition: each output term x * f' sends g to both factors.
                let mut wx = vec![0.0f64; s.x_len()];
                let mut wf = vec![0.0f64; s.f_len()];
                for b in 0..s.n {
                    for o in 0..s.k {
                        for i in 0..oh {
                            for j in 0..ow {
                                let gv = g[((b * s.k + o) * oh + i) * ow + j] as f64;
                                for ch in 0..s.c {
                                    for u in 0..s.fh {
                                        for v in 0..s.fw {
                                            let (fu, fv) = if flip {
                                                (s.fh - 1 - u, s.fw - 1 - v)
                                            } else {
                                                (u, v)
                                            };
                                            let xi = ((b * s.c + ch) * s.h + i + u) * s.w + j + v;
                                            let fi = ((o * s.c + ch) * s.fh + fu) * s.fw + fv;
                                            wx[xi] += gv * f[fi] as f64;
                                            wf[fi] += gv * x[xi] as f64;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                let (mut gx, mut gf) = (vec![f32::NAN; s.x_len()], vec![f32::NAN; s.f_len()]);
                conv2d_backward_im2col(&s, &x, &f, flip, &g, &mut gx, &mut gf);
                close(&format!("gx {s:?} flip {flip}"), &gx, &wx, 1e-5);
                close(&format!("gf {s:?} flip {flip}"), &gf, &wf, 1e-5);
                // Each gradient alone, as a compiled function asks for them.
                let (mut gx1, mut gf1) = (vec![f32::NAN; s.x_len()], vec![f32::NAN; s.f_len()]);
                conv2d_grad_input(&s, &f, flip, &g, &mut gx1);
                conv2d_grad_filter(&s, &x, flip, &g, &mut gf1);
                assert_eq!(gx1, gx, "gx alone {s:?}");
                assert_eq!(gf1, gf, "gf alone {s:?}");
                // And in f64, to the definition's precision.
                let d = |v: &[f32]| v.iter().map(|&e| f64::from(e)).collect::<Vec<f64>>();
                let (mut gx2, mut gf2) = (vec![f64::NAN; s.x_len()], vec![f64::NAN; s.f_len()]);
                conv2d_grad_input(&s, &d(&f), flip, &d(&g), &mut gx2);
                conv2d_grad_filter(&s, &d(&x), flip, &d(&g), &mut gf2);
                for (a, b) in gx2.iter().zip(&wx).chain(gf2.iter().zip(&wf)) {
                    assert!(
                        (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                        "f64 {s:?}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn pooling_inside_the_convolution_and_its_gradient_change_nothing() {
        for s in SHAPES {
            for win in [(2, 2), (1, 2), (3, 1)] {
                if win.0 > s.oh() || win.1 > s.ow() {
                    continue;
                }
                let (x, f) = (fill(s.x_len(), 11), fill(s.f_len(), 12));
                let (ph, pw) = (s.oh() / win.0, s.ow() / win.1);
                let pooled_len = s.n * s.k * ph * pw;
                // Forward: the same maps and the same pooled values, bit for bit.
                let (mut out, mut pooled) = (vec![0.0f32; s.out_len()], vec![0.0f32; pooled_len]);
                conv2d_im2col(&s, &x, &f, true, &mut out);
                max_pool(s.n * s.k, s.oh(), s.ow(), win, &out, &mut pooled);
                let (mut out2, mut pooled2) =
                    (vec![f32::NAN; s.out_len()], vec![f32::NAN; pooled_len]);
                conv2d_im2col_pool(&s, &x, &f, true, &mut out2, win, &mut pooled2);
                assert_eq!(out, out2, "{s:?} {win:?}");
                assert_eq!(pooled, pooled2, "{s:?} {win:?}");
                // Backward: the filter gradient of the pooling's gradient, stored or not.
                let g = fill(pooled_len, 13);
                let mut gmaps = vec![0.0f32; s.out_len()];
                max_pool_backward(s.n * s.k, s.oh(), s.ow(), win, &out, &g, &mut gmaps);
                let (mut gf, mut gf2) = (vec![0.0f32; s.f_len()], vec![f32::NAN; s.f_len()]);
                conv2d_grad_filter(&s, &x, true, &gmaps, &mut gf);
                conv2d_grad_filter_pooled(&s, &x, true, &out, win, &g, &mut gf2);
                assert_eq!(gf, gf2, "{s:?} {win:?}");
            }
        }
    }

    #[test]
    fn pooling_matches_the_window_scan_on_ties_and_nans() {
        // Few distinct values (many ties) and some NaNs, in several planes split between
        // threads: the unrolled 2x2 path and the general one agree with a plain window scan.
        let (planes, h, w) = (7, 7, 9);
        let x: Vec<f32> = fill(planes * h * w, 7)
            .iter()
            .map(|v| match (v.abs() * 10.0) as i32 % 5 {
                0 => f32::NAN,
                k => k as f32,
            })
            .collect();
        for win in [(2, 2), (3, 2), (1, 4)] {
            let (oh, ow) = (h / win.0, w / win.1);
            let g = fill(planes * oh * ow, 8);
            let mut out = vec![0.0f32; planes * oh * ow];
            let mut gx = vec![f32::NAN; planes * h * w];
            max_pool(planes, h, w, win, &x, &mut out);
            max_pool_backward(planes, h, w, win, &x, &g, &mut gx);
            let mut want = vec![0.0f32; planes * h * w];
            for pl in 0..planes {
                let src = &x[pl * h * w..(pl + 1) * h * w];
                for i in 0..oh {
                    for j in 0..ow {
                        let (v, at) = window_max(src, w, (i * win.0, j * win.1), win);
                        let o = out[(pl * oh + i) * ow + j];
                        assert!(o == v || (o.is_nan() && v.is_nan()), "{win:?} {pl} {i} {j}");
                        want[pl * h * w + at] += g[(pl * oh + i) * ow + j];
                    }
                }
            }
            assert_eq!(gx, want, "{win:?}");
        }
    }

    #[test]
    fn max_pool_ignores_the_border_and_sends_the_gradient_to_the_first_maximum() {
        // One 3x5 plane, 2x2 windows: rows 0-1, columns 0-1 and 2-3; row 2 and column 4 are
        // ignored.
        let x = [
            1.0,
            5.0,
            2.0,
            2.0,
            9.0, //
            5.0,
            0.0,
            2.0,
            f32::NAN,
            9.0, //
            9.0,
            9.0,
            9.0,
            9.0,
            9.0,
        ];
        let mut out = [0.0f32; 2];
        max_pool(1, 3, 5, (2, 2), &x, &mut out);
        assert_eq!(out[0], 5.0);
        assert!(out[1].is_nan(), "a NaN wins its window");
        let mut gx = [f32::NAN; 15];
        max_pool_backward(1, 3, 5, (2, 2), &x, &[10.0, 20.0], &mut gx);
        // The first 5 (row 0, column 1) gets it, not the tied 5 below; the NaN's window sends
        // its gradient to the NaN.
        let mut want = [0.0f32; 15];
        want[1] = 10.0;
        want[8] = 20.0;
        assert_eq!(gx, want);
    }

    /// GFLOP/s of both algorithms on LeNet's convolutions (minibatch 500), forward, and of the
    /// im2col gradients: `cargo test --release -p tensor-fn-runtime conv_shapes -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn conv_shapes() {
        let shapes = [
            (
                "layer 1",
                ConvShape {
                    n: 500,
                    c: 1,
                    h: 28,
                    w: 28,
                    k: 20,
                    fh: 5,
                    fw: 5,
                },
            ),
            (
                "layer 2",
                ConvShape {
                    n: 500,
                    c: 20,
                    h: 12,
                    w: 12,
                    k: 50,
                    fh: 5,
                    fw: 5,
                },
            ),
        ];
        for (name, s) in shapes {
            let (x, f) = (fill(s.x_len(), 1), fill(s.f_len(), 2));
            let mut out = vec![0.0; s.out_len()];
            let (mut gx, mut gf) = (vec![0.0; s.x_len()], vec![0.0; s.f_len()]);
            let gflops = |secs: f64, reps: usize| 2.0 * s.macs() as f64 * reps as f64 / secs / 1e9;
            let time = |f: &mut dyn FnMut()| {
                f();
                let reps = 5;
                let t = std::time::Instant::now();
                for _ in 0..reps {
                    f();
                }
                gflops(t.elapsed().as_secs_f64(), reps)
            };
            let im2col = time(&mut || conv2d_im2col(&s, &x, &f, true, &mut out));
            let direct = time(&mut || conv2d_direct(&s, &x, &f, true, &mut out));
            let backward =
                time(&mut || conv2d_backward_im2col(&s, &x, &f, true, &out, &mut gx, &mut gf));
            let grad_input = time(&mut || conv2d_grad_input(&s, &f, true, &out, &mut gx));
            let grad_filter = time(&mut || conv2d_grad_filter(&s, &x, true, &out, &mut gf));
            // The backward pass is two products of the forward's size; each gradient one.
            println!(
                "conv | {name} | {s:?} | im2col {im2col:.1} GFLOP/s | direct {direct:.1} GFLOP/s | backward (im2col) {:.1} GFLOP/s: input gradient {grad_input:.1}, filter gradient {grad_filter:.1}",
                2.0 * backward
            );
        }
        // The machine's SGEMM rate on a large square product, in the same run.
        let n = 1024;
        let (a, b) = (fill(n * n, 3), fill(n * n, 4));
        let mut c = vec![0.0f32; n * n];
        let mut run = || {
            // SAFETY: three n x n row-major matrices.
            unsafe {
                super::super::sgemm::sgemm(
                    n,
                    n,
                    n,
                    1.0,
                    a.as_ptr(),
                    n as isize,
                    1,
                    b.as_ptr(),
                    n as isize,
                    1,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                )
            }
        };
        run();
        let t = std::time::Instant::now();
        for _ in 0..5 {
            run();
        }
        let rate = 2.0 * (n * n * n) as f64 * 5.0 / t.elapsed().as_secs_f64() / 1e9;
        println!(
            "sgemm | {n}x{n}x{n} | {rate:.1} GFLOP/s on {} threads",
            threads()
        );
    }
}
