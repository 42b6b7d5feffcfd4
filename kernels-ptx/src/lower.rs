//! Lowering of a [`LoopKernel`] to launches.
//!
//! A loop kernel's outputs are split into groups by how their iteration must be mapped onto
//! threads; each group is one launch that evaluates (only) the SSA values it needs:
//!
//! - **row** (rank 2, reductions over axis 1): one block per row, threads stride along the row,
//!   and a block reduction (warp `shfl.sync.bfly`, then one slot per warp in shared memory,
//!   `bar.sync`, and a final warp reduction) gives the row's value. Rows with a static length of
//!   at most 256 get one warp each instead (8 rows per block, `shfl.sync.down`, no shared
//!   memory).
//! - **column** (rank 2, reductions over axis 0): one thread per column walks down the rows.
//!   Reads are coalesced across the threads of a warp; no synchronization and no atomics. Its
//!   parallelism is the number of columns, which suits the bias gradients of a minibatch
//!   (few rows, many columns) and not tall-and-narrow inputs.
//! - **all** (full reductions, and every reduction of a rank-1 space): a grid-stride loop over
//!   the flattened space with per-thread accumulators and a block reduction into one partial per
//!   block (at most 1024 blocks), then a second launch with one block reduces the partials. The
//!   partials live in a [`Scratch`] region. When the space is statically small (at most 8192
//!   points) a single block does it all in one launch. No atomics, so results are
//!   deterministic for a given size.
//! - **elementwise** (stores only): a grid-stride loop over the flattened space.
//!
//! Stores ride along with the first group, which visits every point exactly once. A kernel with
//! reductions of several kinds recomputes its SSA values once per group (inputs are read once
//! per group): simple and correct; the schedule rarely fuses such mixes.
//!
//! Every launch uses blocks of 256 threads. Values that do not depend on a loop index are
//! computed outside that loop.
//!
//! Values are floats of the kernel's dtype, whatever they stand for:
//!
//! - an **integer buffer** is read as `ld.global.s64` (or `.s32`, with its own element size in
//!   the address) and `cvt.rn.f32.s64`, and written with `cvt.rzi.s64.f32` and `st.global.s64`;
//! - an **index value** converts the loop's u32 index register (`cvt.rn.f32.u32`); the flat
//!   mapping derives i and j from the flat index first, like its loads do;
//! - a **select** is `setp.neu` of the condition against 0 (NaN selects `a`) and `selp`.
//!
//! An **argmax** carries (value, u32 position) pairs: each thread folds its points in increasing
//! position order (a later point wins if it is greater or the first NaN), and the warp, block
//! and partials reductions fold pairs with [`Fx::combine`]: NaN above every number, then the
//! value, then the lower position. That order is total, so the result does not depend on which
//! thread holds what. Shared slots and scratch partials hold the values, then the positions.
//! Positions are the column (rows), the row (columns) or the flat index (full reductions), and
//! are stored exactly: `cvt.s64.u32` into an integer buffer, `cvt.rn` into a float one.
//!
//! A **random draw** ([`Instr::Random`]) is keyed by the point's flat row-major index, whatever
//! the mapping, so that every launch draws the same numbers for the same point (a kernel whose
//! groups recompute a draw gets it again, bit for bit). The stream buffer's two words are read
//! once per thread before the loops (`ld.global.u64` of the seed and the call counter, split
//! into 32-bit halves: [`StreamRegs::split`]); each point then runs [`rng::emit_bits`] on its
//! u32 flat index and the draw's conversion in the dtype. The flat index is the loop's own in
//! the flat mappings (elementwise, one-block and two-pass reductions: the grid-stride `t`), and
//! `i * n + j` in the row (warp and block) and column mappings, computed once per point; rank
//! 0 draws element 0. Draws depend on every loop index of the space, so they are never
//! hoisted out of a loop.

use crate::ir::{
    Axis, BufId, DType, Dim, Instr, IntTy, IrError, Ix, LoopKernel, RandKind, RedKind, ValId,
};
use crate::math::{Fx, Partial};
use crate::meta::{KernelMeta, Launch, Param, ParamTy, Program, Role, Scratch, Size};
use crate::ptx::{
    Address, Axis3, BinOp, Cmp, CvtRound, Inst, KernelBuilder, Operand, Reg, RegClass, SharedId,
    ShflMode, Space, Special, Type,
};
use crate::rng::{self, StreamRegs};

/// Threads per block of every loop-kernel launch.
pub const BLOCK: u32 = 256;
const WARPS: u32 = BLOCK / 32;
/// At most this many blocks in an elementwise grid-stride launch.
const FLAT_GRID_CAP: u64 = 4096;
/// At most this many blocks, hence partials, in the first pass of a full reduction.
pub const PARTIALS: u64 = 1024;
/// The y/z grid limit, used as a cap for the row and column mappings.
const GRID_CAP: u64 = 65535;
/// Rows of at most this many (static) elements get a warp instead of a block.
const WARP_ROW_MAX: u64 = 256;
/// Full reductions over at most this many (static) points run in one block, in one launch.
const ONE_BLOCK_MAX: u64 = 8192;

const OUTER: u8 = 1;
const INNER: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mapping {
    /// Grid-stride over the flattened space.
    Flat,
    RowBlock,
    RowWarp,
    Column,
}

struct Group {
    mapping: Mapping,
    stores: Vec<(ValId, BufId)>,
    reds: Vec<(RedKind, ValId, BufId)>,
}

/// Lowers a loop kernel to its launches (in order) and scratch regions.
pub fn lower_loop(lk: &LoopKernel) -> Result<Program, IrError> {
    lk.validate()?;
    let rank = lk.rank();
    let mut stores = lk.stores.clone();
    let (mut row, mut col, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for r in &lk.reductions {
        let item = (r.kind, r.value, r.out);
        match (rank, r.axis) {
            // Reducing a single point leaves it as it is (the sum of x is x; the NaN-propagating
            // max of -inf and x is x). Its argmax is 0: the one-point flat loop gives that.
            (0, Axis::All | Axis::One(_)) if r.kind != RedKind::ArgMax => {
                stores.push((r.value, r.out))
            }
            (2, Axis::One(1)) => row.push(item),
            (2, Axis::One(0)) => col.push(item),
            (_, Axis::All | Axis::One(_)) => all.push(item),
        }
    }
    let mut groups = Vec::new();
    if !row.is_empty() {
        let mapping = match lk.dims[1] {
            Dim::Static(n) if n <= WARP_ROW_MAX => Mapping::RowWarp,
            Dim::Static(_) | Dim::Sym(_) => Mapping::RowBlock,
        };
        groups.push(Group {
            mapping,
            stores: Vec::new(),
            reds: row,
        });
    }
    if !col.is_empty() {
        groups.push(Group {
            mapping: Mapping::Column,
            stores: Vec::new(),
            reds: col,
        });
    }
    if !all.is_empty() {
        groups.push(Group {
            mapping: Mapping::Flat,
            stores: Vec::new(),
            reds: all,
        });
    }
    if groups.is_empty() && !stores.is_empty() {
        groups.push(Group {
            mapping: Mapping::Flat,
            stores: Vec::new(),
            reds: Vec::new(),
        });
    }
    if let Some(g) = groups.first_mut() {
        g.stores = stores;
    }
    let mut prog = Program {
        launches: Vec::new(),
        scratch: Vec::new(),
    };
    for g in &groups {
        let total = total_size(&lk.dims);
        let one_block = matches!(total, Size::Const(n) if n <= ONE_BLOCK_MAX);
        if g.mapping == Mapping::Flat && !g.reds.is_empty() && !one_block {
            let first = prog.scratch.len();
            for r in &g.reds {
                prog.scratch.push(Scratch {
                    bytes: Size::Const(PARTIALS * partial_bytes(lk.dtype, r.0) as u64),
                });
            }
            prog.launches.push(Gen::new(lk).pass(g, Some(first)));
            prog.launches.push(Gen::new(lk).partials(&g.reds, first));
        } else {
            prog.launches.push(Gen::new(lk).pass(g, None));
        }
    }
    Ok(prog)
}

/// Bytes of one partial in memory: the value, and for argmax its u32 position. Partials in
/// scratch and in shared memory are laid out as all values, then all positions.
fn partial_bytes(dt: DType, kind: RedKind) -> u32 {
    match kind {
        RedKind::Sum | RedKind::Max => dt.bytes(),
        RedKind::ArgMax => dt.bytes() + 4,
    }
}

/// The number of points of an iteration space.
fn total_size(dims: &[Dim]) -> Size {
    dims.iter()
        .fold(Size::Const(1), |acc, d| Size::product(acc, dim_size(*d)))
}

fn dim_size(d: Dim) -> Size {
    match d {
        Dim::Static(n) => Size::Const(n),
        Dim::Sym(id) => Size::Dim(id),
    }
}

/// One launch under construction.
struct Gen<'a> {
    lk: &'a LoopKernel,
    k: KernelBuilder,
    params: Vec<Param>,
    ptr: Vec<Option<Reg>>,
    dims: Vec<(u32, Reg)>,
    args: Vec<(u32, Reg)>,
    vals: Vec<Option<Reg>>,
    /// Which loop indices each value depends on (OUTER | INNER bits).
    mask: Vec<u8>,
    needed: Vec<bool>,
    i: Option<Reg>,
    j: Option<Reg>,
    /// The current point's flat row-major index, once known (a flat loop's own index; in the
    /// row and column mappings computed from i and j at the first draw of a point).
    flat: Option<Reg>,
    /// The split `[seed, call]` words of each stream buffer the launch draws from.
    streams: Vec<(BufId, StreamRegs)>,
}

impl<'a> Gen<'a> {
    fn new(lk: &'a LoopKernel) -> Gen<'a> {
        // A draw is keyed by the flat index: it depends on every loop index of the space.
        let every_index = match lk.rank() {
            0 => 0,
            1 => INNER,
            _ => OUTER | INNER,
        };
        let mut mask = vec![0u8; lk.instrs.len()];
        for (v, ins) in lk.instrs.iter().enumerate() {
            mask[v] = match ins {
                Instr::Load { index, .. } => index.iter().fold(0, |m, ix| {
                    m | match ix {
                        Ix::Outer => OUTER,
                        Ix::Inner => INNER,
                        Ix::Zero => 0,
                    }
                }),
                Instr::Arg(_) | Instr::Const(_) | Instr::DimSize(_) => 0,
                Instr::Unary(_, a) => mask[*a],
                Instr::Binary(_, a, b) => mask[*a] | mask[*b],
                Instr::Index(ix) => match ix {
                    Ix::Outer => OUTER,
                    Ix::Inner => INNER,
                    Ix::Zero => 0,
                },
                Instr::Select(c, a, b) => mask[*c] | mask[*a] | mask[*b],
                Instr::Random { .. } => every_index,
            };
        }
        Gen {
            lk,
            k: KernelBuilder::new([BLOCK, 1, 1]),
            params: Vec::new(),
            ptr: vec![None; lk.bufs.len()],
            dims: Vec::new(),
            args: Vec::new(),
            vals: vec![None; lk.instrs.len()],
            mask,
            needed: vec![false; lk.instrs.len()],
            i: None,
            j: None,
            flat: None,
            streams: Vec::new(),
        }
    }

    fn ty(&self) -> Type {
        self.lk.dtype.ptx()
    }

    fn fx(&mut self) -> Fx<'_> {
        Fx::new(&mut self.k, self.lk.dtype)
    }

    fn es(&self) -> i64 {
        self.lk.dtype.bytes() as i64
    }

    /// Bytes of one element of `buf` in memory: the dtype's, or its integer type's.
    fn elem_bytes(&self, buf: BufId) -> i64 {
        match self.lk.bufs[buf].int {
            Some(t) => t.bytes() as i64,
            None => self.es(),
        }
    }

    /// The PTX type of one element of `buf` in memory.
    fn elem_ty(&self, buf: BufId) -> Type {
        match self.lk.bufs[buf].int {
            Some(t) => t.ptx(),
            None => self.ty(),
        }
    }

    /// Marks the values the outputs need and declares and loads every parameter they use:
    /// buffers, arguments, symbolic dims (in that order, each sorted by id).
    fn prologue(&mut self, roots: &[ValId], written: &[BufId], extra_dims: &[Dim]) {
        for &r in roots {
            self.needed[r] = true;
        }
        for v in (0..self.lk.instrs.len()).rev() {
            if !self.needed[v] {
                continue;
            }
            match &self.lk.instrs[v] {
                Instr::Unary(_, a) => self.needed[*a] = true,
                Instr::Binary(_, a, b) => {
                    self.needed[*a] = true;
                    self.needed[*b] = true;
                }
                Instr::Select(c, a, b) => {
                    self.needed[*c] = true;
                    self.needed[*a] = true;
                    self.needed[*b] = true;
                }
                Instr::Random { kind, params, .. } => {
                    for &p in &params[..kind.arity()] {
                        self.needed[p] = true;
                    }
                }
                Instr::Load { .. }
                | Instr::Arg(_)
                | Instr::Const(_)
                | Instr::DimSize(_)
                | Instr::Index(_) => {}
            }
        }
        let mut bufs: Vec<BufId> = written.to_vec();
        let mut streams = Vec::new();
        let mut args = Vec::new();
        let mut dims: Vec<u32> = Vec::new();
        let add_dim = |d: &Dim, dims: &mut Vec<u32>| {
            if let Dim::Sym(id) = d {
                dims.push(*id);
            }
        };
        for d in self.lk.dims.iter().chain(extra_dims) {
            add_dim(d, &mut dims);
        }
        for (v, ins) in self.lk.instrs.iter().enumerate() {
            if !self.needed[v] {
                continue;
            }
            match ins {
                Instr::Load { buf, .. } => bufs.push(*buf),
                Instr::Arg(a) => args.push(*a),
                Instr::DimSize(d) => add_dim(d, &mut dims),
                Instr::Random { stream, .. } => {
                    bufs.push(*stream);
                    streams.push(*stream);
                }
                Instr::Const(_)
                | Instr::Unary(..)
                | Instr::Binary(..)
                | Instr::Index(_)
                | Instr::Select(..) => {}
            }
        }
        bufs.sort_unstable();
        bufs.dedup();
        streams.sort_unstable();
        streams.dedup();
        for &b in &bufs {
            // Strides need every dim but the first.
            for d in self.lk.bufs[b].shape.iter().skip(1) {
                add_dim(d, &mut dims);
            }
        }
        args.sort_unstable();
        args.dedup();
        dims.sort_unstable();
        dims.dedup();
        for &b in &bufs {
            let p = self.param(&format!("b{b}"), ParamTy::Ptr, Role::Buf(b));
            self.ptr[b] = Some(self.k.ld_ptr(p));
        }
        for &b in &streams {
            // The words are bits, not numbers: read as u64, never converted.
            let base = self.ptr[b].expect("stream pointer loaded");
            let seed = self.k.ld(Space::Global, Type::U64, Address::reg(base));
            let call = self
                .k
                .ld(Space::Global, Type::U64, Address::reg_off(base, 8));
            let regs = StreamRegs::split(&mut self.k, seed, call);
            self.streams.push((b, regs));
        }
        for &a in &args {
            let p = self.param(&format!("a{a}"), self.lk.dtype.param(), Role::Arg(a));
            let r = self.k.ld_param(p);
            self.args.push((a, r));
        }
        for &d in &dims {
            let p = self.param(&format!("d{d}"), ParamTy::U32, Role::Dim(d));
            let r = self.k.ld_param(p);
            self.dims.push((d, r));
        }
    }

    fn param(&mut self, name: &str, ty: ParamTy, role: Role) -> crate::ptx::ParamId {
        self.params.push(Param {
            name: name.to_string(),
            ty,
            role,
        });
        self.k.param(name, ty.ptx())
    }

    fn dim(&self, d: Dim) -> Operand {
        match d {
            Dim::Static(n) => Operand::Imm(n as i64),
            Dim::Sym(id) => {
                let r = self
                    .dims
                    .iter()
                    .find(|(x, _)| *x == id)
                    .expect("dim loaded in the prologue");
                Operand::Reg(r.1)
            }
        }
    }

    /// The number of points of the iteration space, as a u32 operand.
    fn total(&mut self) -> Operand {
        match total_size(&self.lk.dims) {
            Size::Const(n) => Operand::Imm(n as i64),
            Size::Dim(_) | Size::Mul(..) | Size::CeilDiv(..) | Size::Clamp(..) => {
                let mut acc: Option<Operand> = None;
                for d in self.lk.dims.clone() {
                    let o = self.dim(d);
                    acc = Some(match acc {
                        None => o,
                        Some(a) => Operand::Reg(self.k.bin(BinOp::Mul, Type::U32, a, o)),
                    });
                }
                acc.unwrap_or(Operand::Imm(1))
            }
        }
    }

    /// The global address of `buf[index]`.
    fn addr(&mut self, buf: BufId, index: &[Ix]) -> Reg {
        let shape = self.lk.bufs[buf].shape.clone();
        let base = self.ptr[buf].expect("buffer loaded in the prologue");
        let mut flat: Option<Reg> = None;
        for (axis, ix) in index.iter().enumerate() {
            let Some(idx) = self.index_reg(*ix) else {
                continue;
            };
            // Row-major: the stride of an axis is the product of the dims after it (rank <= 2).
            let stride = match shape.get(axis + 1) {
                Some(d) => *d,
                None => Dim::Static(1),
            };
            flat = Some(match (flat, stride) {
                (None, Dim::Static(1)) => idx,
                (None, s) => {
                    let s = self.dim(s);
                    self.k.bin(BinOp::Mul, Type::U32, idx, s)
                }
                (Some(f), Dim::Static(1)) => self.k.bin(BinOp::Add, Type::U32, f, idx),
                (Some(f), s) => {
                    let s = self.dim(s);
                    self.k.fma(Type::U32, idx, s, f)
                }
            });
        }
        match flat {
            None => base,
            Some(f) => {
                let es = self.elem_bytes(buf);
                self.k.mad_wide(f, Operand::Imm(es), base)
            }
        }
    }

    /// The address where a store of the iteration space writes the current point.
    fn root_addr(&mut self, buf: BufId) -> Reg {
        // A store buffer has the iteration space's layout; index it as a flat row-major array.
        let index: Vec<Ix> = match self.lk.rank() {
            0 => vec![],
            1 => vec![Ix::Inner],
            _ => vec![Ix::Outer, Ix::Inner],
        };
        let shape = self.lk.dims.clone();
        let base = self.ptr[buf].expect("buffer loaded in the prologue");
        let flat = match index.len() {
            0 => None,
            1 => Some(self.j.expect("inner index")),
            _ => {
                let i = self.i.expect("outer index");
                let j = self.j.expect("inner index");
                let n = self.dim(shape[1]);
                Some(self.k.fma(Type::U32, i, n, j))
            }
        };
        match flat {
            None => base,
            Some(f) => {
                let es = self.elem_bytes(buf);
                self.k.mad_wide(f, Operand::Imm(es), base)
            }
        }
    }

    /// Reads `buf` at `a` as a value of the dtype: integers are read as such and converted
    /// (exactly, below 2^24 in f32 and 2^53 in f64).
    fn load(&mut self, buf: BufId, a: Reg) -> Reg {
        let ty = self.ty();
        let mem = self.elem_ty(buf);
        let x = self.k.ld(Space::Global, mem, Address::reg(a));
        if mem == ty {
            x
        } else {
            self.k.cvt(CvtRound::Rn, ty, mem, x)
        }
    }

    /// The current point's flat row-major index in the iteration space, as a u32 operand: the
    /// key of its draws.
    fn flat_index(&mut self) -> Operand {
        if let Some(t) = self.flat {
            return Operand::Reg(t);
        }
        let t = match self.lk.rank() {
            0 => return Operand::Imm(0),
            1 => self.j.expect("inner index in scope"),
            _ => {
                let i = self.i.expect("outer index in scope");
                let j = self.j.expect("inner index in scope");
                let n = self.dim(self.lk.dims[1]);
                self.k.fma(Type::U32, i, n, j)
            }
        };
        self.flat = Some(t);
        Operand::Reg(t)
    }

    /// A draw of `kind` for the current point.
    fn random(&mut self, kind: RandKind, site: u32, stream: BufId, params: [ValId; 2]) -> Reg {
        let regs = self
            .streams
            .iter()
            .find(|(b, _)| *b == stream)
            .expect("stream loaded in the prologue")
            .1;
        let at = self.flat_index();
        let w = rng::emit_bits(&mut self.k, &regs, at, site);
        let dt = self.lk.dtype;
        let p = |x: ValId| self.vals[x].expect("operand emitted first");
        match kind {
            RandKind::Binomial => rng::emit_binomial(&mut self.k, dt, w, p(params[0])),
            RandKind::Uniform => {
                let (lo, hi) = (p(params[0]), p(params[1]));
                rng::emit_uniform(&mut self.k, dt, w, lo, hi)
            }
            RandKind::Normal => {
                let (mean, std) = (p(params[0]), p(params[1]));
                rng::emit_normal(&mut self.k, dt, w, mean, std)
            }
        }
    }

    /// The loop index `ix` as a u32 register (`None` for `Zero`).
    fn index_reg(&self, ix: Ix) -> Option<Reg> {
        match ix {
            Ix::Outer => Some(self.i.expect("outer index in scope")),
            Ix::Inner => Some(self.j.expect("inner index in scope")),
            Ix::Zero => None,
        }
    }

    /// Emits every needed, not yet emitted value whose index dependence passes `filter`.
    fn emit_values(&mut self, filter: impl Fn(u8) -> bool) {
        for v in 0..self.lk.instrs.len() {
            if !self.needed[v] || self.vals[v].is_some() || !filter(self.mask[v]) {
                continue;
            }
            let ty = self.ty();
            let r = match self.lk.instrs[v].clone() {
                Instr::Load { buf, index } => {
                    let a = self.addr(buf, &index);
                    self.load(buf, a)
                }
                Instr::Arg(a) => {
                    self.args
                        .iter()
                        .find(|(x, _)| *x == a)
                        .expect("arg loaded")
                        .1
                }
                Instr::Const(c) => self.fx().konst(c),
                Instr::DimSize(d) => match d {
                    Dim::Static(n) => self.fx().konst(n as f64),
                    Dim::Sym(_) => {
                        let Operand::Reg(r) = self.dim(d) else {
                            unreachable!("symbolic dims are registers")
                        };
                        self.k.cvt(CvtRound::Rn, ty, Type::U32, r)
                    }
                },
                Instr::Unary(u, a) => {
                    let x = self.vals[a].expect("operand emitted first");
                    self.fx().unary(u, x)
                }
                Instr::Binary(b, x, y) => {
                    let x = self.vals[x].expect("operand emitted first");
                    let y = self.vals[y].expect("operand emitted first");
                    self.fx().binary(b, x, y)
                }
                // The index registers of every mapping: a flat loop derives i and j from the
                // flat index before any value is emitted.
                Instr::Index(ix) => match self.index_reg(ix) {
                    Some(r) => self.k.cvt(CvtRound::Rn, ty, Type::U32, r),
                    None => self.fx().konst(0.0),
                },
                Instr::Select(c, a, b) => {
                    let c = self.vals[c].expect("operand emitted first");
                    let a = self.vals[a].expect("operand emitted first");
                    let b = self.vals[b].expect("operand emitted first");
                    // Unordered: NaN is not 0, so it selects `a`.
                    let zero = self.fx().c(0.0);
                    let p = self.fx().setp(Cmp::Neu, c, zero);
                    self.fx().select(p, a, b)
                }
                Instr::Random {
                    kind,
                    site,
                    stream,
                    params,
                } => self.random(kind, site, stream, params),
            };
            self.vals[v] = Some(r);
        }
    }

    /// `for (v = start; v < end; v += step) body(v)`, with `v` a u32.
    fn range(
        &mut self,
        start: Operand,
        end: Operand,
        step: Operand,
        body: impl FnOnce(&mut Self, Reg),
    ) {
        let v = self.k.mov(Type::U32, start);
        let top = self.k.label();
        let done = self.k.label();
        self.k.place(top);
        let p = self.k.setp(Cmp::Ge, Type::U32, v, end);
        self.k.bra_if(p, false, done);
        body(self, v);
        self.k.push(Inst::Bin {
            op: BinOp::Add,
            ty: Type::U32,
            dst: v,
            a: Operand::Reg(v),
            b: step,
        });
        self.k.bra(top);
        self.k.place(done);
    }

    fn stores(&mut self, stores: &[(ValId, BufId)]) {
        for &(v, b) in stores {
            let a = self.root_addr(b);
            let x = self.vals[v].expect("stored value emitted");
            self.store(None, b, a, Out::Value(x));
        }
    }

    fn init_accs(&mut self, reds: &[(RedKind, ValId, BufId)]) -> Vec<Partial> {
        reds.iter()
            .map(|(kind, _, _)| self.fx().identity(*kind))
            .collect()
    }

    /// Folds the current point, at position `at` along the folded axes (the flat index for
    /// full reductions), into the accumulators.
    fn accumulate(&mut self, reds: &[(RedKind, ValId, BufId)], accs: &[Partial], at: Reg) {
        for (&(kind, v, _), &acc) in reds.iter().zip(accs) {
            let x = self.vals[v].expect("reduced value emitted");
            let r = self.fx().step(kind, acc, x, at);
            assign(&mut self.k, self.lk.dtype, acc, r);
        }
    }

    /// The address of element `at` of `buf`.
    fn out_addr(&mut self, buf: BufId, at: Operand) -> Reg {
        let base = self.ptr[buf].expect("output loaded");
        let es = self.elem_bytes(buf);
        match at {
            Operand::Imm(0) => base,
            at => self.k.mad_wide(at, Operand::Imm(es), base),
        }
    }

    /// Stores `x` into the element of `buf` at address `a`, only where `p` holds if given.
    /// Integer buffers get values rounded toward zero (they are integral: labels, counts), and
    /// argmax positions exactly.
    fn store(&mut self, p: Option<Reg>, buf: BufId, a: Reg, x: Out) {
        let ty = self.ty();
        let int = self.lk.bufs[buf].int;
        let (mem, src) = match (x, int) {
            (Out::Value(v), None) => (ty, v),
            (Out::Value(v), Some(t)) => (t.ptx(), self.k.cvt(CvtRound::Rzi, t.ptx(), ty, v)),
            (Out::Position(at), None) => (ty, self.k.cvt(CvtRound::Rn, ty, Type::U32, at)),
            // Positions are below 2^31: the same bits as an s32.
            (Out::Position(at), Some(IntTy::I32)) => (Type::S32, at),
            (Out::Position(at), Some(IntTy::I64)) => (
                Type::S64,
                self.k.cvt(CvtRound::None, Type::S64, Type::U32, at),
            ),
        };
        let st = Inst::St {
            space: Space::Global,
            ty: mem,
            addr: Address::reg(a),
            src: Operand::Reg(src),
        };
        match p {
            Some(p) => self.k.push_if(p, false, st),
            None => self.k.push(st),
        }
    }

    /// Stores the results of reductions: the reduction `r` of `reds` into element `at` of its
    /// output, where `p` holds.
    fn store_results(
        &mut self,
        p: Option<Reg>,
        reds: &[(RedKind, ValId, BufId)],
        res: &[Partial],
        at: Operand,
    ) {
        for (&(kind, _, buf), &x) in reds.iter().zip(res) {
            let a = self.out_addr(buf, at);
            self.store(p, buf, a, Out::result(kind, x));
        }
    }

    /// Writes partial number `at` of a two-pass reduction into its scratch region `base` (values
    /// first, then positions), where `p` holds.
    fn store_partial(&mut self, p: Reg, kind: RedKind, base: Reg, at: Reg, x: Partial) {
        let es = self.es();
        let ty = self.ty();
        let a = self.k.mad_wide(at, Operand::Imm(es), base);
        self.k.push_if(
            p,
            false,
            Inst::St {
                space: Space::Global,
                ty,
                addr: Address::reg(a),
                src: Operand::Reg(x.v),
            },
        );
        if kind == RedKind::ArgMax {
            let a = self.k.mad_wide(at, Operand::Imm(4), base);
            self.k.push_if(
                p,
                false,
                Inst::St {
                    space: Space::Global,
                    ty: Type::U32,
                    addr: Address::reg_off(a, PARTIALS as i32 * es as i32),
                    src: Operand::Reg(x.index()),
                },
            );
        }
    }

    /// Reads partial number `at` of a two-pass reduction from its scratch region `base`.
    fn load_partial(&mut self, kind: RedKind, base: Reg, at: Reg) -> Partial {
        let es = self.es();
        let ty = self.ty();
        let a = self.k.mad_wide(at, Operand::Imm(es), base);
        let v = self.k.ld(Space::Global, ty, Address::reg(a));
        match kind {
            RedKind::Sum | RedKind::Max => Partial::value(v),
            RedKind::ArgMax => {
                let a = self.k.mad_wide(at, Operand::Imm(4), base);
                let off = PARTIALS as i32 * es as i32;
                let i = self
                    .k
                    .ld(Space::Global, Type::U32, Address::reg_off(a, off));
                Partial { v, at: Some(i) }
            }
        }
    }

    /// One launch for a group. `scratch` is the first scratch region of a two-pass full
    /// reduction (partials are written there instead of the outputs).
    fn pass(mut self, g: &Group, scratch: Option<usize>) -> Launch {
        let lk = self.lk;
        let roots: Vec<ValId> = g
            .stores
            .iter()
            .map(|s| s.0)
            .chain(g.reds.iter().map(|r| r.1))
            .collect();
        let mut written: Vec<BufId> = g.stores.iter().map(|s| s.1).collect();
        if scratch.is_none() {
            written.extend(g.reds.iter().map(|r| r.2));
        }
        self.prologue(&roots, &written, &[]);
        let scratch_ptrs: Vec<Reg> = match scratch {
            Some(first) => (0..g.reds.len())
                .map(|r| {
                    let p = self.param(
                        &format!("s{}", first + r),
                        ParamTy::Ptr,
                        Role::Scratch(first + r),
                    );
                    self.k.ld_ptr(p)
                })
                .collect(),
            None => Vec::new(),
        };
        let tid = self.k.special(Special::Tid(Axis3::X));
        let cta = self.k.special(Special::Ctaid(Axis3::X));
        let ncta = self.k.special(Special::Nctaid(Axis3::X));
        let kinds: Vec<RedKind> = g.reds.iter().map(|r| r.0).collect();
        let smem =
            if g.reds.is_empty() || g.mapping == Mapping::RowWarp || g.mapping == Mapping::Column {
                None
            } else {
                Some(self.k.shared(8, slots_bytes(lk.dtype, &kinds)))
            };
        self.emit_values(|m| m == 0);
        let total = total_size(&lk.dims);
        let grid = match g.mapping {
            Mapping::Flat => {
                let accs = self.init_accs(&g.reds);
                let one_block = !g.reds.is_empty() && scratch.is_none();
                let (start, stride) = if one_block {
                    (Operand::Reg(tid), Operand::Imm(BLOCK as i64))
                } else {
                    let s = self.k.fma(Type::U32, cta, Operand::Imm(BLOCK as i64), tid);
                    let st = self
                        .k
                        .bin(BinOp::Mul, Type::U32, ncta, Operand::Imm(BLOCK as i64));
                    (Operand::Reg(s), Operand::Reg(st))
                };
                let n = self.total();
                self.range(start, n, stride, |s, t| {
                    match lk.rank() {
                        0 => {}
                        1 => s.j = Some(t),
                        _ => {
                            let inner = s.dim(lk.dims[1]);
                            let i = s.k.bin(BinOp::Div, Type::U32, t, inner);
                            let ij = s.k.bin(BinOp::Mul, Type::U32, i, inner);
                            s.j = Some(s.k.bin(BinOp::Sub, Type::U32, t, ij));
                            s.i = Some(i);
                        }
                    }
                    // The loop's index is the point's flat index (rank 0: the one point, 0).
                    s.flat = Some(t);
                    s.emit_values(|m| m != 0);
                    s.stores(&g.stores);
                    // Positions of full reductions are flat row-major indices (numpy's).
                    s.accumulate(&g.reds, &accs, t);
                });
                if !g.reds.is_empty() {
                    let res = block_reduce(
                        &mut self.k,
                        lk.dtype,
                        &kinds,
                        &accs,
                        smem.expect("shared slots"),
                        tid,
                    );
                    let p0 = self.k.setp(Cmp::Eq, Type::U32, tid, Operand::Imm(0));
                    match scratch {
                        Some(_) => {
                            for (r, &x) in res.iter().enumerate() {
                                self.store_partial(p0, kinds[r], scratch_ptrs[r], cta, x);
                            }
                        }
                        None => self.store_results(Some(p0), &g.reds, &res, Operand::Imm(0)),
                    }
                }
                if one_block {
                    [Size::Const(1), Size::Const(1), Size::Const(1)]
                } else {
                    let cap = if g.reds.is_empty() {
                        FLAT_GRID_CAP
                    } else {
                        PARTIALS
                    };
                    [
                        Size::clamp(Size::ceil_div(total, BLOCK as u64), 1, cap),
                        Size::Const(1),
                        Size::Const(1),
                    ]
                }
            }
            Mapping::RowBlock => {
                let m = self.dim(lk.dims[0]);
                let n = self.dim(lk.dims[1]);
                self.range(Operand::Reg(cta), m, Operand::Reg(ncta), |s, row| {
                    s.i = Some(row);
                    s.emit_values(|m| m == OUTER);
                    let accs = s.init_accs(&g.reds);
                    s.range(
                        Operand::Reg(tid),
                        n,
                        Operand::Imm(BLOCK as i64),
                        |s, col| {
                            s.j = Some(col);
                            s.flat = None;
                            s.emit_values(|m| m & INNER != 0);
                            s.stores(&g.stores);
                            s.accumulate(&g.reds, &accs, col);
                        },
                    );
                    let res = block_reduce(
                        &mut s.k,
                        lk.dtype,
                        &kinds,
                        &accs,
                        smem.expect("shared slots"),
                        tid,
                    );
                    let p0 = s.k.setp(Cmp::Eq, Type::U32, tid, Operand::Imm(0));
                    s.store_results(Some(p0), &g.reds, &res, Operand::Reg(row));
                });
                [
                    Size::clamp(dim_size(lk.dims[0]), 1, GRID_CAP),
                    Size::Const(1),
                    Size::Const(1),
                ]
            }
            Mapping::RowWarp => {
                let m = self.dim(lk.dims[0]);
                let n = self.dim(lk.dims[1]);
                let warp = self.k.bin(BinOp::Shr, Type::U32, tid, Operand::Imm(5));
                let lane = self.k.bin(BinOp::And, Type::B32, tid, Operand::Imm(31));
                let start = self.k.fma(Type::U32, cta, Operand::Imm(WARPS as i64), warp);
                let step = self
                    .k
                    .bin(BinOp::Mul, Type::U32, ncta, Operand::Imm(WARPS as i64));
                // The row is the same for all lanes of a warp, so the shuffles below always
                // have all 32 lanes.
                self.range(Operand::Reg(start), m, Operand::Reg(step), |s, row| {
                    s.i = Some(row);
                    s.emit_values(|m| m == OUTER);
                    let accs = s.init_accs(&g.reds);
                    s.range(Operand::Reg(lane), n, Operand::Imm(32), |s, col| {
                        s.j = Some(col);
                        s.flat = None;
                        s.emit_values(|m| m & INNER != 0);
                        s.stores(&g.stores);
                        s.accumulate(&g.reds, &accs, col);
                    });
                    let p0 = s.k.setp(Cmp::Eq, Type::U32, lane, Operand::Imm(0));
                    let res: Vec<Partial> = kinds
                        .iter()
                        .zip(&accs)
                        .map(|(&kind, &acc)| {
                            warp_reduce(&mut s.k, lk.dtype, kind, acc, ShflMode::Down)
                        })
                        .collect();
                    s.store_results(Some(p0), &g.reds, &res, Operand::Reg(row));
                });
                [
                    Size::clamp(
                        Size::ceil_div(dim_size(lk.dims[0]), WARPS as u64),
                        1,
                        GRID_CAP,
                    ),
                    Size::Const(1),
                    Size::Const(1),
                ]
            }
            Mapping::Column => {
                let m = self.dim(lk.dims[0]);
                let n = self.dim(lk.dims[1]);
                let start = self.k.fma(Type::U32, cta, Operand::Imm(BLOCK as i64), tid);
                let stride = self
                    .k
                    .bin(BinOp::Mul, Type::U32, ncta, Operand::Imm(BLOCK as i64));
                self.range(Operand::Reg(start), n, Operand::Reg(stride), |s, col| {
                    s.j = Some(col);
                    s.emit_values(|m| m == INNER);
                    let accs = s.init_accs(&g.reds);
                    s.range(Operand::Imm(0), m, Operand::Imm(1), |s, row| {
                        s.i = Some(row);
                        s.flat = None;
                        s.emit_values(|m| m & OUTER != 0);
                        s.stores(&g.stores);
                        s.accumulate(&g.reds, &accs, row);
                    });
                    s.store_results(None, &g.reds, &accs, Operand::Reg(col));
                });
                [
                    Size::clamp(
                        Size::ceil_div(dim_size(lk.dims[1]), BLOCK as u64),
                        1,
                        GRID_CAP,
                    ),
                    Size::Const(1),
                    Size::Const(1),
                ]
            }
        };
        let prefix = match (g.mapping, g.reds.is_empty(), scratch.is_some()) {
            (Mapping::Flat, true, _) => "tf_ew",
            (Mapping::Flat, false, false) => "tf_red",
            (Mapping::Flat, false, true) => "tf_red1",
            (Mapping::RowBlock, _, _) => "tf_rows",
            (Mapping::RowWarp, _, _) => "tf_rowsw",
            (Mapping::Column, _, _) => "tf_cols",
        };
        finish(self.k, self.params, prefix, grid)
    }

    /// The second pass of a full reduction: one block folds the partials of the first.
    fn partials(mut self, reds: &[(RedKind, ValId, BufId)], first: usize) -> Launch {
        let lk = self.lk;
        let outs: Vec<BufId> = reds.iter().map(|r| r.2).collect();
        // Only the sizes are needed, to know how many partials the first pass wrote.
        self.prologue(&[], &outs, &[]);
        let scratch: Vec<Reg> = (0..reds.len())
            .map(|r| {
                let p = self.param(
                    &format!("s{}", first + r),
                    ParamTy::Ptr,
                    Role::Scratch(first + r),
                );
                self.k.ld_ptr(p)
            })
            .collect();
        let tid = self.k.special(Special::Tid(Axis3::X));
        let kinds: Vec<RedKind> = reds.iter().map(|r| r.0).collect();
        let smem = self.k.shared(8, slots_bytes(lk.dtype, &kinds));
        // The first pass's grid: clamp(ceil(n / 256), 1, PARTIALS).
        let count = match Size::clamp(
            Size::ceil_div(total_size(&lk.dims), BLOCK as u64),
            1,
            PARTIALS,
        ) {
            Size::Const(c) => Operand::Imm(c as i64),
            Size::Dim(_) | Size::Mul(..) | Size::CeilDiv(..) | Size::Clamp(..) => {
                let n = self.total();
                let c = self
                    .k
                    .bin(BinOp::Add, Type::U32, n, Operand::Imm(BLOCK as i64 - 1));
                let c = self
                    .k
                    .bin(BinOp::Div, Type::U32, c, Operand::Imm(BLOCK as i64));
                let c = self.k.bin(BinOp::Max, Type::U32, c, Operand::Imm(1));
                Operand::Reg(
                    self.k
                        .bin(BinOp::Min, Type::U32, c, Operand::Imm(PARTIALS as i64)),
                )
            }
        };
        let accs = self.init_accs(reds);
        self.range(
            Operand::Reg(tid),
            count,
            Operand::Imm(BLOCK as i64),
            |s, t| {
                for (r, &acc) in accs.iter().enumerate() {
                    // Partials hold positions of any order: the general combine.
                    let x = s.load_partial(kinds[r], scratch[r], t);
                    let c = s.fx().combine(kinds[r], acc, x);
                    assign(&mut s.k, lk.dtype, acc, c);
                }
            },
        );
        let res = block_reduce(&mut self.k, lk.dtype, &kinds, &accs, smem, tid);
        let p0 = self.k.setp(Cmp::Eq, Type::U32, tid, Operand::Imm(0));
        self.store_results(Some(p0), reds, &res, Operand::Imm(0));
        finish(
            self.k,
            self.params,
            "tf_red2",
            [Size::Const(1), Size::Const(1), Size::Const(1)],
        )
    }
}

/// What a launch stores: a value of the dtype, or an argmax position (a u32).
#[derive(Debug, Clone, Copy)]
enum Out {
    Value(Reg),
    Position(Reg),
}

impl Out {
    /// The result of a reduction of `kind` held in `x`.
    fn result(kind: RedKind, x: Partial) -> Out {
        match kind {
            RedKind::Sum | RedKind::Max => Out::Value(x.v),
            RedKind::ArgMax => Out::Position(x.index()),
        }
    }
}

/// `dst = src` for the registers of two partials of one reduction.
fn assign(k: &mut KernelBuilder, dt: DType, dst: Partial, src: Partial) {
    k.push(Inst::Mov {
        ty: dt.ptx(),
        dst: dst.v,
        src: Operand::Reg(src.v),
    });
    if let (Some(d), Some(s)) = (dst.at, src.at) {
        k.push(Inst::Mov {
            ty: Type::U32,
            dst: d,
            src: Operand::Reg(s),
        });
    }
}

fn finish(k: KernelBuilder, params: Vec<Param>, prefix: &str, grid: [Size; 3]) -> Launch {
    let kernel = k.finish(prefix);
    let meta = KernelMeta {
        name: kernel.name.clone(),
        params,
        grid,
        block: kernel.max_threads,
        shared_bytes: kernel.shared_bytes(),
    };
    Launch { kernel, meta }
}

/// `shfl.sync` of a float register with full mask; f64 moves as two 32-bit halves.
pub(crate) fn shfl(k: &mut KernelBuilder, mode: ShflMode, v: Reg, lane: u32) -> Reg {
    let one = |k: &mut KernelBuilder, src: Reg| {
        let dst = k.reg_of(src.class);
        k.push(Inst::Shfl {
            mode,
            dst,
            src,
            lane: Operand::Imm(lane as i64),
            clamp: 31,
            mask: u32::MAX,
        });
        dst
    };
    match v.class {
        RegClass::F64 | RegClass::B64 => {
            let lo = k.reg_of(RegClass::B32);
            let hi = k.reg_of(RegClass::B32);
            k.push(Inst::Unpack64 { lo, hi, src: v });
            let lo2 = one(k, lo);
            let hi2 = one(k, hi);
            let dst = k.reg_of(v.class);
            k.push(Inst::Pack64 {
                dst,
                lo: lo2,
                hi: hi2,
            });
            dst
        }
        RegClass::F32 | RegClass::B32 | RegClass::Pred => one(k, v),
    }
}

/// Folds a partial across the 32 lanes of a warp. With `Bfly` every lane gets the result (the
/// same bits in every lane: each step combines the same two partials, in either order, and
/// [`Fx::combine`] is commutative bit for bit); with `Down` only lane 0 does.
pub(crate) fn warp_reduce(
    k: &mut KernelBuilder,
    dt: DType,
    kind: RedKind,
    x: Partial,
    mode: ShflMode,
) -> Partial {
    let mut acc = x;
    for off in [16, 8, 4, 2, 1] {
        let o = Partial {
            v: shfl(k, mode, acc.v, off),
            at: acc.at.map(|i| shfl(k, mode, i, off)),
        };
        acc = Fx::new(k, dt).combine(kind, acc, o);
    }
    acc
}

/// Bytes of the shared slots of a block reduction: per reduction, one value per warp, then
/// (argmax) one u32 position per warp. Every region is a multiple of 8 bytes, so f64 slots
/// stay aligned.
fn slots_bytes(dt: DType, kinds: &[RedKind]) -> u32 {
    kinds.iter().map(|&k| WARPS * partial_bytes(dt, k)).sum()
}

/// Folds per-thread partials across a block of [`BLOCK`] threads; every thread gets the
/// results. Warps reduce with shuffles, lane 0 of each writes its warp's partial to `smem` (one
/// slot per warp and reduction, laid out as [`slots_bytes`] says), and after a barrier every
/// warp folds the slots again, so no thread waits on a branch. A second barrier lets the caller
/// reuse `smem` (e.g. for the next row).
pub(crate) fn block_reduce(
    k: &mut KernelBuilder,
    dt: DType,
    kinds: &[RedKind],
    accs: &[Partial],
    smem: SharedId,
    tid: Reg,
) -> Vec<Partial> {
    let es = dt.bytes() as i64;
    let ty = dt.ptx();
    let lane = k.bin(BinOp::And, Type::B32, tid, Operand::Imm(31));
    let warp = k.bin(BinOp::Shr, Type::U32, tid, Operand::Imm(5));
    let warped: Vec<Partial> = kinds
        .iter()
        .zip(accs)
        .map(|(&kind, &x)| warp_reduce(k, dt, kind, x, ShflMode::Bfly))
        .collect();
    // Region offsets: the values of reduction r, then its positions.
    let mut regions = Vec::new();
    let mut at = 0i64;
    for &kind in kinds {
        let pos = at + WARPS as i64 * es;
        regions.push((at as i32, pos as i32));
        at += (WARPS * partial_bytes(dt, kind)) as i64;
    }
    let base = k.mov(Type::U32, Operand::Shared(smem));
    let wval = k.fma(Type::U32, warp, Operand::Imm(es), base);
    let wpos = k.fma(Type::U32, warp, Operand::Imm(4), base);
    let lane0 = k.setp(Cmp::Eq, Type::U32, lane, Operand::Imm(0));
    for (r, w) in warped.iter().enumerate() {
        let (vo, po) = regions[r];
        k.push_if(
            lane0,
            false,
            Inst::St {
                space: Space::Shared,
                ty,
                addr: Address::reg_off(wval, vo),
                src: Operand::Reg(w.v),
            },
        );
        if let Some(i) = w.at {
            k.push_if(
                lane0,
                false,
                Inst::St {
                    space: Space::Shared,
                    ty: Type::U32,
                    addr: Address::reg_off(wpos, po),
                    src: Operand::Reg(i),
                },
            );
        }
    }
    k.bar_sync();
    let lval = k.fma(Type::U32, lane, Operand::Imm(es), base);
    let lpos = k.fma(Type::U32, lane, Operand::Imm(4), base);
    let has = k.setp(Cmp::Lt, Type::U32, lane, Operand::Imm(WARPS as i64));
    let mut out = Vec::new();
    for (r, &kind) in kinds.iter().enumerate() {
        let (vo, po) = regions[r];
        // Lanes past the last warp hold the identity.
        let x = Fx::new(k, dt).identity(kind);
        k.push_if(
            has,
            false,
            Inst::Ld {
                space: Space::Shared,
                ty,
                dst: x.v,
                addr: Address::reg_off(lval, vo),
            },
        );
        if let Some(i) = x.at {
            k.push_if(
                has,
                false,
                Inst::Ld {
                    space: Space::Shared,
                    ty: Type::U32,
                    dst: i,
                    addr: Address::reg_off(lpos, po),
                },
            );
        }
        out.push(warp_reduce(k, dt, kind, x, ShflMode::Bfly));
    }
    k.bar_sync();
    out
}
