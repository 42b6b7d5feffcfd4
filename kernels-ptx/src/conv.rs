//! Convolution and max-pooling on the GPU: the programs of the schedule's library calls
//! ([`CallOp`]), for f32 and f64, with the semantics of the runtime's CPU kernels
//! (`tensor_fn::__private::conv`): NCHW, "valid" convolution with stride 1, `flip` for a true
//! convolution (Theano's), non-overlapping max-pooling that ignores the border.
//!
//! Only the number of images `n` is symbolic; every other size is compiled in. Images are
//! walked by grid z (a block loops over `z, z + 65535, ...`), so no launch multiplies `n` by
//! anything, and every per-image index is a `u32`. Per-image sizes below: `c` channels of
//! `h x w`, `k` filters of `fh x fw`, `oh = h - fh + 1`, `ow = w - fw + 1`, `p = oh ow` output
//! pixels, `ckk = c fh fw` entries of a patch.
//!
//! - **conv2d** (x, f): im2col (`cols_b [ckk, p]`, one thread per entry, a gather), then one
//!   batched GEMM `out_b [k, p] = F' cols_b`, where `F' [k, ckk]` is the filter buffer itself,
//!   or with `flip` its copy with both spatial axes reversed (a small kernel).
//! - **its input gradient** (g, f): `dcols_b [ckk, p] = F'^T g_b` (batched GEMM), then col2im as
//!   a gather: one thread per input element sums the patch entries that came from it (no
//!   atomics, so results are deterministic).
//! - **its filter gradient** (x, g): im2col of x, `partial_b [k, ckk] = g_b cols_b^T` (batched
//!   GEMM), then one thread per filter entry sums the partials over the images in order and
//!   undoes the flip.
//! - **max_pool** (x): one thread per output element scans its window.
//! - **its gradient** (x, g): one thread per input element scans its window (if it is in one)
//!   and takes the window's gradient if it is the window's first maximum, else 0.
//!
//! A window's maximum is its first maximum in row-major order, and a NaN wins (the first one):
//! the scan takes a later element when it is greater or NaN, unless the best so far is NaN.
//!
//! Intermediates live in the program's scratch regions. Parameters bind the schedule's buffer
//! ids directly ([`Role::Buf`]), the GEMMs' alpha = 1 and beta = 0 as [`Role::Const`].

use crate::gemm::{gemm, Activation, Batch, Bias, GemmSpec};
use crate::ir::{BufId, DType, Dim, IrError, MAX_EXTENT};
use crate::meta::{KernelMeta, Launch, Param, ParamTy, Program, Role, Scratch, Size};
use crate::ptx::{
    Address, Axis3, BinOp, Cmp, CvtRound, Inst, KernelBuilder, Operand, Reg, Space, Special, Type,
};

/// The sizes of a 2-D convolution other than the number of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConvGeom {
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub k: u32,
    pub fh: u32,
    pub fw: u32,
}

impl ConvGeom {
    /// Output rows (the geometry must be valid: `fh <= h`).
    pub fn oh(&self) -> u64 {
        u64::from(self.h) + 1 - u64::from(self.fh)
    }

    pub fn ow(&self) -> u64 {
        u64::from(self.w) + 1 - u64::from(self.fw)
    }

    /// Output pixels of one filter on one image.
    pub fn pixels(&self) -> u64 {
        self.oh() * self.ow()
    }

    /// Filter taps of one channel.
    pub fn taps(&self) -> u64 {
        u64::from(self.fh) * u64::from(self.fw)
    }

    /// Entries of one patch (a row of the filter matrix).
    pub fn patch(&self) -> u64 {
        u64::from(self.c) * self.taps()
    }

    /// Elements of one input image.
    pub fn image(&self) -> u64 {
        u64::from(self.c) * u64::from(self.h) * u64::from(self.w)
    }

    fn validate(&self) -> Result<(), IrError> {
        let g = self;
        if [g.c, g.h, g.w, g.k, g.fh, g.fw].contains(&0) || g.fh > g.h || g.fw > g.w {
            return Err(IrError(format!("conv2d: invalid geometry {g:?}")));
        }
        let k = u64::from(g.k);
        for len in [
            g.image(),
            k * g.pixels(),
            g.patch() * g.pixels(),
            k * g.patch(),
        ] {
            if len >= MAX_EXTENT {
                return Err(IrError(format!(
                    "conv2d {g:?}: a per-image matrix of {len} elements (2^31 or more)"
                )));
            }
        }
        Ok(())
    }
}

/// A library kernel of the schedule. Its buffers are rows of whole images: the number of
/// images is the first dim of the first argument's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallOp {
    /// args (images, filters).
    Conv { flip: bool, geom: ConvGeom },
    /// args (output gradient, filters).
    ConvGradInput { flip: bool, geom: ConvGeom },
    /// args (images, output gradient).
    ConvGradFilter { flip: bool, geom: ConvGeom },
    /// args (images): `planes` = channels of `h` x `w`, pooled by `win`.
    Pool {
        planes: u32,
        h: u32,
        w: u32,
        win: (u8, u8),
    },
    /// args (images, output gradient).
    PoolGrad {
        planes: u32,
        h: u32,
        w: u32,
        win: (u8, u8),
    },
}

impl CallOp {
    /// How many buffers the call reads.
    pub fn arity(&self) -> usize {
        match self {
            CallOp::Pool { .. } => 1,
            CallOp::Conv { .. }
            | CallOp::ConvGradInput { .. }
            | CallOp::ConvGradFilter { .. }
            | CallOp::PoolGrad { .. } => 2,
        }
    }
}

/// Threads per block of the gather kernels.
const BLOCK: u32 = 256;
/// The grid's z limit: images beyond it are looped over.
const GRID_Z_CAP: u64 = 65535;
/// Filter and window widths up to this are unrolled; wider ones are loops.
const UNROLL: u64 = 8;

/// The program of one library call over `n` images, for the function's `dtype`: `args` and
/// `out` are the schedule's buffer ids, bound as [`Role::Buf`].
pub fn call(
    dtype: DType,
    op: CallOp,
    n: Dim,
    args: &[BufId],
    out: BufId,
) -> Result<Program, IrError> {
    if args.len() != op.arity() {
        return Err(IrError(format!(
            "{op:?}: {} arguments, expected {}",
            args.len(),
            op.arity()
        )));
    }
    if let Dim::Static(x) = n {
        if x >= MAX_EXTENT {
            return Err(IrError(format!("{op:?}: {x} images (2^31 or more)")));
        }
    }
    let es = u64::from(dtype.bytes());
    let mut p = Program {
        launches: Vec::new(),
        scratch: Vec::new(),
    };
    // A scratch region of `elems` elements per image.
    let per_image = |p: &mut Program, elems: u64| {
        p.scratch.push(Scratch {
            bytes: Size::product(dim_size(n), Size::Const(elems * es)),
        });
        Role::Scratch(p.scratch.len() - 1)
    };
    let (a0, a1, out) = (
        Role::Buf(args[0]),
        args.get(1).map(|&b| Role::Buf(b)),
        Role::Buf(out),
    );
    let a1 = || a1.expect("arity checked");
    match op {
        CallOp::Conv { flip, geom } => {
            geom.validate()?;
            let (k, ckk, px) = (u64::from(geom.k), geom.patch(), geom.pixels());
            let fm = filter_matrix(&mut p, dtype, &geom, flip, a1());
            let cols = per_image(&mut p, ckk * px);
            p.launches.push(im2col(dtype, &geom, n, a0, cols));
            // out_b [k, p] = F' [k, ckk] cols_b [ckk, p]
            let spec = batched(
                dtype,
                (k, px, ckk),
                (false, false),
                n,
                (0, ckk * px, k * px),
            );
            p.launches.push(gemm_launch(&spec, fm, cols, out)?);
        }
        CallOp::ConvGradInput { flip, geom } => {
            geom.validate()?;
            let (k, ckk, px) = (u64::from(geom.k), geom.patch(), geom.pixels());
            let fm = filter_matrix(&mut p, dtype, &geom, flip, a1());
            let dcols = per_image(&mut p, ckk * px);
            // dcols_b [ckk, p] = F'^T g_b [k, p]
            let spec = batched(dtype, (ckk, px, k), (true, false), n, (0, k * px, ckk * px));
            p.launches.push(gemm_launch(&spec, fm, a0, dcols)?);
            p.launches.push(col2im(dtype, &geom, n, dcols, out));
        }
        CallOp::ConvGradFilter { flip, geom } => {
            geom.validate()?;
            let (k, ckk, px) = (u64::from(geom.k), geom.patch(), geom.pixels());
            let cols = per_image(&mut p, ckk * px);
            let partial = per_image(&mut p, k * ckk);
            p.launches.push(im2col(dtype, &geom, n, a0, cols));
            // partial_b [k, ckk] = g_b [k, p] cols_b^T
            let spec = batched(
                dtype,
                (k, ckk, px),
                (false, true),
                n,
                (k * px, ckk * px, k * ckk),
            );
            p.launches.push(gemm_launch(&spec, a1(), cols, partial)?);
            p.launches
                .push(sum_partials(dtype, &geom, flip, n, partial, out));
        }
        CallOp::Pool { planes, h, w, win } => {
            let pool = Pool::new(planes, h, w, win)?;
            p.launches.push(pool.forward(dtype, n, a0, out));
        }
        CallOp::PoolGrad { planes, h, w, win } => {
            let pool = Pool::new(planes, h, w, win)?;
            p.launches.push(pool.backward(dtype, n, a0, a1(), out));
        }
    }
    Ok(p)
}

fn dim_size(d: Dim) -> Size {
    match d {
        Dim::Static(x) => Size::Const(x),
        Dim::Sym(id) => Size::Dim(id),
    }
}

/// The filter matrix `F' [k, ckk]` in patch order: the filter buffer itself, or with `flip`
/// a flipped copy in a new scratch region (one launch).
fn filter_matrix(p: &mut Program, dt: DType, geom: &ConvGeom, flip: bool, f: Role) -> Role {
    if !flip {
        return f;
    }
    let len = u64::from(geom.k) * geom.patch();
    p.scratch.push(Scratch {
        bytes: Size::Const(len * u64::from(dt.bytes())),
    });
    let fm = Role::Scratch(p.scratch.len() - 1);
    let mut g = Gen::new(dt);
    let src = g.ptr("f", f);
    let dst = g.ptr("fm", fm);
    let taps = geom.taps();
    let grid = g.each(Dim::Static(1), len, |g, _, e| {
        let from = flipped(g, e, taps);
        let a = g.at(src, from);
        let v = g.load(a);
        let a = g.at(dst, e);
        g.store(a, v);
    });
    p.launches.push(g.finish("tf_convflip", grid));
    fm
}

/// The index that entry `e` of a filter matrix (or of filters `[k, c, fh, fw]`) comes from when
/// both spatial axes are reversed: tap `uv = u fw + v` of its channel goes to
/// `(fh-1-u) fw + (fw-1-v) = taps - 1 - uv`. An involution.
fn flipped(g: &mut Gen, e: Reg, taps: u64) -> Reg {
    let uv = g.k.bin(BinOp::Rem, Type::U32, e, imm(taps));
    let top = g.k.bin(BinOp::Add, Type::U32, e, imm(taps - 1));
    let twice = g.k.bin(BinOp::Shl, Type::B32, uv, Operand::Imm(1));
    g.k.bin(BinOp::Sub, Type::U32, top, twice)
}

/// `cols_b [(ch, u, v), (i, j)] = x_b [ch, i + u, j + v]`: one thread per entry.
fn im2col(dt: DType, geom: &ConvGeom, n: Dim, x: Role, cols: Role) -> Launch {
    let mut g = Gen::new(dt);
    let xp = g.ptr("x", x);
    let cp = g.ptr("cols", cols);
    let (px, ow, taps) = (geom.pixels(), geom.ow(), geom.taps());
    let (h, w, fw) = (u64::from(geom.h), u64::from(geom.w), u64::from(geom.fw));
    let (img, per) = (geom.image(), geom.patch() * px);
    let grid = g.each(n, per, |g, b, e| {
        let xi = g.image(xp, b, img);
        let ci = g.image(cp, b, per);
        let k = &mut g.k;
        let row = k.bin(BinOp::Div, Type::U32, e, imm(px));
        let q = k.bin(BinOp::Rem, Type::U32, e, imm(px));
        let i = k.bin(BinOp::Div, Type::U32, q, imm(ow));
        let j = k.bin(BinOp::Rem, Type::U32, q, imm(ow));
        let ch = k.bin(BinOp::Div, Type::U32, row, imm(taps));
        let uv = k.bin(BinOp::Rem, Type::U32, row, imm(taps));
        let u = k.bin(BinOp::Div, Type::U32, uv, imm(fw));
        let v = k.bin(BinOp::Rem, Type::U32, uv, imm(fw));
        let y = k.bin(BinOp::Add, Type::U32, i, u);
        let xx = k.bin(BinOp::Add, Type::U32, j, v);
        let yx = k.fma(Type::U32, y, imm(w), xx);
        let src = k.fma(Type::U32, ch, imm(h * w), yx);
        let a = g.at(xi, src);
        let val = g.load(a);
        let a = g.at(ci, e);
        g.store(a, val);
    });
    g.finish("tf_im2col", grid)
}

/// The adjoint of [`im2col`] as a gather: `gx_b [ch, y, x]` is the sum, over the taps `(u, v)`
/// with `(y - u, x - v)` inside the output, of `dcols_b [(ch, u, v), (y - u, x - v)]`, added
/// in `(u, v)` order from 0 (the CPU's order). One thread per input element.
fn col2im(dt: DType, geom: &ConvGeom, n: Dim, dcols: Role, out: Role) -> Launch {
    let mut g = Gen::new(dt);
    let dp = g.ptr("dcols", dcols);
    let op = g.ptr("gx", out);
    let (px, oh, ow, taps) = (geom.pixels(), geom.oh(), geom.ow(), geom.taps());
    let (h, w, fh, fw) = (
        u64::from(geom.h),
        u64::from(geom.w),
        u64::from(geom.fh),
        u64::from(geom.fw),
    );
    let (img, cols) = (geom.image(), geom.patch() * px);
    let grid = g.each(n, img, |g, b, e| {
        let di = g.image(dp, b, cols);
        let oi = g.image(op, b, img);
        let ch = g.k.bin(BinOp::Div, Type::U32, e, imm(h * w));
        let yx = g.k.bin(BinOp::Rem, Type::U32, e, imm(h * w));
        let y = g.k.bin(BinOp::Div, Type::U32, yx, imm(w));
        let x = g.k.bin(BinOp::Rem, Type::U32, yx, imm(w));
        let acc = g.zero();
        let row0 = g.k.bin(BinOp::Mul, Type::U32, ch, imm(taps));
        g.taps(fh, |g, u| {
            // Unsigned: y - u wraps around when u > y, and fails the test too.
            let i = g.sub(y, u);
            let i_in = g.k.setp(Cmp::Lt, Type::U32, i, imm(oh));
            // Entry (row (ch fh + u) fw + v, column (y - u) ow + x - v) is at
            // base + v (p - 1), with base = (ch fh + u) fw p + (y - u) ow + x.
            let fu = g.scale(u, fw);
            let row = g.add(row0, fu);
            let col = g.k.fma(Type::U32, i, imm(ow), x);
            let base = g.k.fma(Type::U32, row, imm(px), col);
            g.taps(fw, |g, v| {
                let j = g.sub(x, v);
                let j_in = g.k.setp(Cmp::Lt, Type::U32, j, imm(ow));
                let ok = g.k.bin(BinOp::And, Type::Pred, i_in, j_in);
                let step = g.scale(v, px - 1);
                let idx = g.add(base, step);
                let a = g.at(di, idx);
                let t = g.k.reg(g.dt.ptx());
                g.k.push_if(
                    ok,
                    false,
                    Inst::Ld {
                        space: Space::Global,
                        ty: g.dt.ptx(),
                        dst: t,
                        addr: Address::reg(a),
                    },
                );
                g.k.push_if(
                    ok,
                    false,
                    Inst::Bin {
                        op: BinOp::Add,
                        ty: g.dt.ptx(),
                        dst: acc,
                        a: Operand::Reg(acc),
                        b: Operand::Reg(t),
                    },
                );
            });
        });
        let a = g.at(oi, e);
        g.store(a, acc);
    });
    g.finish("tf_col2im", grid)
}

/// The filter gradient from the per-image partials `[n][k, ckk]`: each entry summed over the
/// images in order, stored at its place in `[k, c, fh, fw]` (flipped back with `flip`).
fn sum_partials(
    dt: DType,
    geom: &ConvGeom,
    flip: bool,
    n: Dim,
    partial: Role,
    out: Role,
) -> Launch {
    let mut g = Gen::new(dt);
    let pp = g.ptr("partial", partial);
    let op = g.ptr("gf", out);
    let count = g.dim(n);
    let (len, taps) = (u64::from(geom.k) * geom.patch(), geom.taps());
    let es = g.es;
    let grid = g.each(Dim::Static(1), len, |g, _, e| {
        let acc = g.zero();
        let at = g.at(pp, e);
        g.range(Operand::Imm(0), count, Operand::Imm(1), |g, _| {
            let v = g.load(at);
            let ty = g.dt.ptx();
            g.k.push(Inst::Bin {
                op: BinOp::Add,
                ty,
                dst: acc,
                a: Operand::Reg(acc),
                b: Operand::Reg(v),
            });
            g.k.push(Inst::Bin {
                op: BinOp::Add,
                ty: Type::U64,
                dst: at,
                a: Operand::Reg(at),
                b: imm(len * es),
            });
        });
        let to = if flip { flipped(g, e, taps) } else { e };
        let a = g.at(op, to);
        g.store(a, acc);
    });
    g.finish("tf_convgf", grid)
}

/// The sizes of a max-pooling: `planes` of `h x w` per image, windows of `ph x pw`, and the
/// `oh x ow` windows that fit.
struct Pool {
    planes: u64,
    h: u64,
    w: u64,
    ph: u64,
    pw: u64,
    oh: u64,
    ow: u64,
}

impl Pool {
    fn new(planes: u32, h: u32, w: u32, (ph, pw): (u8, u8)) -> Result<Pool, IrError> {
        if ph == 0 || pw == 0 {
            return Err(IrError(format!("max_pool: window {ph}x{pw}")));
        }
        let (planes, h, w, ph, pw) = (
            u64::from(planes),
            u64::from(h),
            u64::from(w),
            u64::from(ph),
            u64::from(pw),
        );
        if planes * h * w >= MAX_EXTENT {
            return Err(IrError(format!(
                "max_pool: images of {planes}x{h}x{w} elements (2^31 or more)"
            )));
        }
        Ok(Pool {
            planes,
            h,
            w,
            ph,
            pw,
            oh: h / ph,
            ow: w / pw,
        })
    }

    /// The index of window (i, j)'s top-left element in plane `pl`.
    fn corner(&self, g: &mut Gen, pl: Reg, i: Reg, j: Reg) -> Reg {
        let jj = g.k.bin(BinOp::Mul, Type::U32, j, imm(self.pw));
        let ij = g.k.fma(Type::U32, i, imm(self.ph * self.w), jj);
        g.k.fma(Type::U32, pl, imm(self.h * self.w), ij)
    }

    /// The first maximum of the window at `corner` of an image and its position `r pw + c`
    /// in the window: a later element wins when it is greater or NaN, unless the best so far
    /// is NaN.
    fn window_max(&self, g: &mut Gen, img: Reg, corner: Reg) -> (Reg, Reg) {
        let a = g.at(img, corner);
        let best = g.load(a);
        let at = g.k.mov(Type::U32, Operand::Imm(0));
        let ty = g.dt.ptx();
        let (w, pw) = (self.w, self.pw);
        g.taps(self.ph, |g, r| {
            let rw = g.scale(r, w);
            let row = g.add(corner, rw);
            let rp = g.scale(r, pw);
            g.taps(pw, |g, c| {
                if let (Operand::Imm(0), Operand::Imm(0)) = (r, c) {
                    return;
                }
                let idx = g.add(row, c);
                let a = g.at(img, idx);
                let v = g.load(a);
                let gtu = g.k.setp(Cmp::Gtu, ty, v, best);
                let num = g.k.setp(Cmp::Num, ty, best, best);
                let take = g.k.bin(BinOp::And, Type::Pred, gtu, num);
                let pos = g.add_op(rp, c);
                g.k.push_if(
                    take,
                    false,
                    Inst::Mov {
                        ty,
                        dst: best,
                        src: Operand::Reg(v),
                    },
                );
                g.k.push_if(
                    take,
                    false,
                    Inst::Mov {
                        ty: Type::U32,
                        dst: at,
                        src: pos,
                    },
                );
            });
        });
        (best, at)
    }

    /// `out_b [pl, i, j]`: the maximum of window (i, j). One thread per output element.
    fn forward(&self, dt: DType, n: Dim, x: Role, out: Role) -> Launch {
        let mut g = Gen::new(dt);
        let xp = g.ptr("x", x);
        let op = g.ptr("out", out);
        let (img, windows) = (self.planes * self.h * self.w, self.oh * self.ow);
        let per = self.planes * windows;
        let grid = g.each(n, per, |g, b, e| {
            let xi = g.image(xp, b, img);
            let oi = g.image(op, b, per);
            let pl = g.k.bin(BinOp::Div, Type::U32, e, imm(windows.max(1)));
            let ij = g.k.bin(BinOp::Rem, Type::U32, e, imm(windows.max(1)));
            let i = g.k.bin(BinOp::Div, Type::U32, ij, imm(self.ow.max(1)));
            let j = g.k.bin(BinOp::Rem, Type::U32, ij, imm(self.ow.max(1)));
            let corner = self.corner(g, pl, i, j);
            let (best, _) = self.window_max(g, xi, corner);
            let a = g.at(oi, e);
            g.store(a, best);
        });
        g.finish("tf_maxpool", grid)
    }

    /// `gx_b [pl, y, x]`: the gradient of its window if it is the window's first maximum, else
    /// 0 (and 0 on the border outside every window). One thread per input element.
    fn backward(&self, dt: DType, n: Dim, x: Role, gy: Role, out: Role) -> Launch {
        let mut g = Gen::new(dt);
        let xp = g.ptr("x", x);
        let gp = g.ptr("g", gy);
        let op = g.ptr("gx", out);
        let img = self.planes * self.h * self.w;
        let windows = self.oh * self.ow;
        let grid = g.each(n, img, |g, b, e| {
            let xi = g.image(xp, b, img);
            let gi = g.image(gp, b, self.planes * windows);
            let oi = g.image(op, b, img);
            let pl = g.k.bin(BinOp::Div, Type::U32, e, imm(self.h * self.w));
            let yx = g.k.bin(BinOp::Rem, Type::U32, e, imm(self.h * self.w));
            let y = g.k.bin(BinOp::Div, Type::U32, yx, imm(self.w));
            let x = g.k.bin(BinOp::Rem, Type::U32, yx, imm(self.w));
            let i = g.k.bin(BinOp::Div, Type::U32, y, imm(self.ph));
            let j = g.k.bin(BinOp::Div, Type::U32, x, imm(self.pw));
            let res = g.zero();
            let skip = g.k.label();
            // Rows and columns past the last whole window belong to none.
            for (at, whole, all) in [
                (y, self.oh * self.ph, self.h),
                (x, self.ow * self.pw, self.w),
            ] {
                if whole < all {
                    let inside = g.k.setp(Cmp::Lt, Type::U32, at, imm(whole));
                    g.k.bra_if(inside, true, skip);
                }
            }
            let corner = self.corner(g, pl, i, j);
            let (_, first) = self.window_max(g, xi, corner);
            // This element's position in its window: (y - i ph) pw + (x - j pw).
            let iy = g.k.bin(BinOp::Mul, Type::U32, i, imm(self.ph));
            let r = g.k.bin(BinOp::Sub, Type::U32, y, iy);
            let jx = g.k.bin(BinOp::Mul, Type::U32, j, imm(self.pw));
            let c = g.k.bin(BinOp::Sub, Type::U32, x, jx);
            let mine = g.k.fma(Type::U32, r, imm(self.pw), c);
            let hit = g.k.setp(Cmp::Eq, Type::U32, first, mine);
            let ij = g.k.fma(Type::U32, i, imm(self.ow), j);
            let gidx = g.k.fma(Type::U32, pl, imm(windows), ij);
            let a = g.at(gi, gidx);
            let ty = g.dt.ptx();
            let gv = g.k.reg(ty);
            g.k.push_if(
                hit,
                false,
                Inst::Ld {
                    space: Space::Global,
                    ty,
                    dst: gv,
                    addr: Address::reg(a),
                },
            );
            // 0 + g, as the CPU accumulates it into a zeroed gradient.
            g.k.push_if(
                hit,
                false,
                Inst::Bin {
                    op: BinOp::Add,
                    ty,
                    dst: res,
                    a: Operand::Reg(res),
                    b: Operand::Reg(gv),
                },
            );
            g.k.place(skip);
            let a = g.at(oi, e);
            g.store(a, res);
        });
        g.finish("tf_maxpoolgrad", grid)
    }
}

/// A batched plain product (`alpha = 1`, `beta = 0`, no epilogue) of `(m, n, k)` over the
/// images, with per-image strides `(a, b, c)` in elements.
fn batched(
    dtype: DType,
    (m, n, k): (u64, u64, u64),
    (trans_a, trans_b): (bool, bool),
    count: Dim,
    (a, b, c): (u64, u64, u64),
) -> GemmSpec {
    GemmSpec {
        dtype,
        m: Dim::Static(m),
        n: Dim::Static(n),
        k: Dim::Static(k),
        trans_a,
        trans_b,
        bias: Bias::None,
        activation: Activation::Identity,
        batch: Some(Batch { count, a, b, c }),
    }
}

/// The GEMM of `spec` with its operands bound to `a`, `b`, `c`, alpha = 1 and beta = 0.
fn gemm_launch(spec: &GemmSpec, a: Role, b: Role, c: Role) -> Result<Launch, IrError> {
    let mut p = gemm(spec)?;
    let mut l = p.launches.remove(0);
    for prm in &mut l.meta.params {
        prm.role = match prm.role {
            Role::GemmA => a,
            Role::GemmB => b,
            Role::GemmC => c,
            Role::Alpha => Role::Const(1f64.to_bits()),
            Role::Beta => Role::Const(0f64.to_bits()),
            r @ (Role::Buf(_)
            | Role::Dim(_)
            | Role::Arg(_)
            | Role::Scratch(_)
            | Role::Const(_)
            | Role::GemmBias) => r,
        };
    }
    Ok(l)
}

fn imm(x: u64) -> Operand {
    Operand::Imm(x as i64)
}

/// One gather kernel being built: 256 threads a block, parameters with their roles.
struct Gen {
    k: KernelBuilder,
    params: Vec<Param>,
    dt: DType,
    /// Bytes of an element.
    es: u64,
}

impl Gen {
    fn new(dt: DType) -> Gen {
        Gen {
            k: KernelBuilder::new([BLOCK, 1, 1]),
            params: Vec::new(),
            dt,
            es: u64::from(dt.bytes()),
        }
    }

    /// A pointer parameter bound to `role`, as a global address.
    fn ptr(&mut self, name: &str, role: Role) -> Reg {
        self.params.push(Param {
            name: name.to_string(),
            ty: ParamTy::Ptr,
            role,
        });
        let p = self.k.param(name, ParamTy::Ptr.ptx());
        self.k.ld_ptr(p)
    }

    /// A dim: an immediate, or a `u32` parameter.
    fn dim(&mut self, d: Dim) -> Operand {
        match d {
            Dim::Static(x) => imm(x),
            Dim::Sym(id) => {
                let name = format!("d{id}");
                self.params.push(Param {
                    name: name.clone(),
                    ty: ParamTy::U32,
                    role: Role::Dim(id),
                });
                let p = self.k.param(&name, ParamTy::U32.ptx());
                Operand::Reg(self.k.ld_param(p))
            }
        }
    }

    /// A float register holding 0, to accumulate into.
    fn zero(&mut self) -> Reg {
        let z = match self.dt {
            DType::F32 => Operand::F32(0.0),
            DType::F64 => Operand::F64(0.0),
        };
        self.k.mov(self.dt.ptx(), z)
    }

    /// `for i in (start..end).step_by(step) { body(i) }` in `u32`.
    fn range(
        &mut self,
        start: Operand,
        end: Operand,
        step: Operand,
        body: impl FnOnce(&mut Gen, Reg),
    ) {
        let i = self.k.mov(Type::U32, start);
        let top = self.k.label();
        let done = self.k.label();
        self.k.place(top);
        let past = self.k.setp(Cmp::Ge, Type::U32, i, end);
        self.k.bra_if(past, false, done);
        body(self, i);
        self.k.push(Inst::Bin {
            op: BinOp::Add,
            ty: Type::U32,
            dst: i,
            a: Operand::Reg(i),
            b: step,
        });
        self.k.bra(top);
        self.k.place(done);
    }

    /// `body(t)` for `t` in `0..count`: unrolled (`t` an immediate) up to [`UNROLL`], else a
    /// loop (`t` a register).
    fn taps(&mut self, count: u64, mut body: impl FnMut(&mut Gen, Operand)) {
        if count <= UNROLL {
            for t in 0..count {
                body(self, imm(t));
            }
        } else {
            self.range(Operand::Imm(0), imm(count), Operand::Imm(1), |g, t| {
                body(g, Operand::Reg(t))
            });
        }
    }

    /// `t * c`, folded when `t` is an immediate.
    fn scale(&mut self, t: Operand, c: u64) -> Operand {
        match t {
            Operand::Imm(x) => Operand::Imm(x * c as i64),
            r => Operand::Reg(self.k.bin(BinOp::Mul, Type::U32, r, imm(c))),
        }
    }

    /// `a + t` for a register `a`.
    fn add(&mut self, a: Reg, t: Operand) -> Reg {
        match t {
            Operand::Imm(0) => a,
            t => self.k.bin(BinOp::Add, Type::U32, a, t),
        }
    }

    /// `a + b`, folded when both are immediates.
    fn add_op(&mut self, a: Operand, b: Operand) -> Operand {
        match (a, b) {
            (Operand::Imm(x), Operand::Imm(y)) => Operand::Imm(x + y),
            (Operand::Reg(r), t) | (t, Operand::Reg(r)) => Operand::Reg(self.add(r, t)),
            (a, b) => Operand::Reg(self.k.bin(BinOp::Add, Type::U32, a, b)),
        }
    }

    /// `a - t` for a register `a`.
    fn sub(&mut self, a: Reg, t: Operand) -> Reg {
        match t {
            Operand::Imm(0) => a,
            t => self.k.bin(BinOp::Sub, Type::U32, a, t),
        }
    }

    /// Runs `body(b, e)` on one thread for every image `b < images` (grid z, looping past the
    /// grid's limit) and element `e < per` of it (a grid-stride loop over grid x); the grid.
    fn each(&mut self, images: Dim, per: u64, body: impl FnOnce(&mut Gen, Reg, Reg)) -> [Size; 3] {
        let count = self.dim(images);
        let tid = self.k.special(Special::Tid(Axis3::X));
        let cta = self.k.special(Special::Ctaid(Axis3::X));
        let ncta = self.k.special(Special::Nctaid(Axis3::X));
        let z = self.k.special(Special::Ctaid(Axis3::Z));
        let nz = self.k.special(Special::Nctaid(Axis3::Z));
        let start = self.k.fma(Type::U32, cta, Operand::Imm(BLOCK as i64), tid);
        let stride = self
            .k
            .bin(BinOp::Mul, Type::U32, ncta, Operand::Imm(BLOCK as i64));
        self.range(Operand::Reg(z), count, Operand::Reg(nz), |g, b| {
            g.range(
                Operand::Reg(start),
                imm(per),
                Operand::Reg(stride),
                |g, e| body(g, b, e),
            );
        });
        [
            Size::Const(per.div_ceil(u64::from(BLOCK)).max(1)),
            Size::Const(1),
            Size::clamp(dim_size(images), 1, GRID_Z_CAP),
        ]
    }

    /// The address of element 0 of image `b`, images being `len` elements apart.
    fn image(&mut self, base: Reg, b: Reg, len: u64) -> Reg {
        let bytes = len * self.es;
        if bytes <= u64::from(u32::MAX) {
            self.k.mad_wide(b, imm(bytes), base)
        } else {
            let b = self.k.cvt(CvtRound::None, Type::U64, Type::U32, b);
            let off = self.k.bin(BinOp::Mul, Type::U64, b, imm(bytes));
            self.k.bin(BinOp::Add, Type::U64, base, off)
        }
    }

    /// The address of element `i` after `base`.
    fn at(&mut self, base: Reg, i: Reg) -> Reg {
        self.k.mad_wide(i, imm(self.es), base)
    }

    fn load(&mut self, addr: Reg) -> Reg {
        self.k.ld(Space::Global, self.dt.ptx(), Address::reg(addr))
    }

    fn store(&mut self, addr: Reg, v: Reg) {
        self.k
            .st(Space::Global, self.dt.ptx(), Address::reg(addr), v);
    }

    fn finish(self, prefix: &str, grid: [Size; 3]) -> Launch {
        let kernel = self.k.finish(prefix);
        let meta = KernelMeta {
            name: kernel.name.clone(),
            params: self.params,
            grid,
            block: kernel.max_threads,
            shared_bytes: kernel.shared_bytes(),
        };
        Launch { kernel, meta }
    }
}
