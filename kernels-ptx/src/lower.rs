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

use crate::ir::{Axis, BufId, DType, Dim, Instr, IrError, Ix, LoopKernel, RedKind, ValId};
use crate::math::Fx;
use crate::meta::{KernelMeta, Launch, Param, ParamTy, Program, Role, Scratch, Size};
use crate::ptx::{
    Address, Axis3, BinOp, Cmp, CvtRound, Inst, KernelBuilder, Operand, Reg, RegClass, SharedId,
    ShflMode, Space, Special, Type,
};

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
            // max of -inf and x is x).
            (0, Axis::All | Axis::One(_)) => stores.push((r.value, r.out)),
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
            for _ in &g.reds {
                prog.scratch.push(Scratch {
                    bytes: Size::Const(PARTIALS * lk.dtype.bytes() as u64),
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
}

impl<'a> Gen<'a> {
    fn new(lk: &'a LoopKernel) -> Gen<'a> {
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
                Instr::Load { .. } | Instr::Arg(_) | Instr::Const(_) | Instr::DimSize(_) => {}
            }
        }
        let mut bufs: Vec<BufId> = written.to_vec();
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
                Instr::Const(_) | Instr::Unary(..) | Instr::Binary(..) => {}
            }
        }
        bufs.sort_unstable();
        bufs.dedup();
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
            let idx = match ix {
                Ix::Outer => self.i.expect("outer index in scope"),
                Ix::Inner => self.j.expect("inner index in scope"),
                Ix::Zero => continue,
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
                let es = self.es();
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
                let es = self.es();
                self.k.mad_wide(f, Operand::Imm(es), base)
            }
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
                    self.k.ld(Space::Global, ty, Address::reg(a))
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
            let ty = self.ty();
            self.k.st(Space::Global, ty, Address::reg(a), x);
        }
    }

    fn init_accs(&mut self, reds: &[(RedKind, ValId, BufId)]) -> Vec<Reg> {
        let ty = self.ty();
        reds.iter()
            .map(|(kind, _, _)| {
                let id = self.fx().identity(*kind);
                self.k.mov(ty, id)
            })
            .collect()
    }

    fn accumulate(&mut self, reds: &[(RedKind, ValId, BufId)], accs: &[Reg]) {
        let ty = self.ty();
        for (&(kind, v, _), &acc) in reds.iter().zip(accs) {
            let x = self.vals[v].expect("reduced value emitted");
            let r = self.fx().combine(kind, acc, x);
            self.k.push(Inst::Mov {
                ty,
                dst: acc,
                src: Operand::Reg(r),
            });
        }
    }

    /// Stores `x` at `buf[at]` (an element index), only where `p` holds if given.
    fn store_at(&mut self, p: Option<Reg>, buf_base: Reg, at: Operand, x: Reg) {
        let es = self.es();
        let a = match at {
            Operand::Imm(0) => buf_base,
            at => self.k.mad_wide(at, Operand::Imm(es), buf_base),
        };
        let ty = self.ty();
        let st = Inst::St {
            space: Space::Global,
            ty,
            addr: Address::reg(a),
            src: Operand::Reg(x),
        };
        match p {
            Some(p) => self.k.push_if(p, false, st),
            None => self.k.push(st),
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
        let smem =
            if g.reds.is_empty() || g.mapping == Mapping::RowWarp || g.mapping == Mapping::Column {
                None
            } else {
                Some(
                    self.k
                        .shared(8, g.reds.len() as u32 * WARPS * lk.dtype.bytes()),
                )
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
                    s.emit_values(|m| m != 0);
                    s.stores(&g.stores);
                    s.accumulate(&g.reds, &accs);
                });
                if !g.reds.is_empty() {
                    let kinds: Vec<(RedKind, Reg)> = g.reds.iter().map(|r| r.0).zip(accs).collect();
                    let res = block_reduce(
                        &mut self.k,
                        lk.dtype,
                        &kinds,
                        smem.expect("shared slots"),
                        tid,
                    );
                    let p0 = self.k.setp(Cmp::Eq, Type::U32, tid, Operand::Imm(0));
                    for (r, x) in res.into_iter().enumerate() {
                        match scratch {
                            Some(_) => {
                                self.store_at(Some(p0), scratch_ptrs[r], Operand::Reg(cta), x)
                            }
                            None => {
                                let base = self.ptr[g.reds[r].2].expect("output loaded");
                                self.store_at(Some(p0), base, Operand::Imm(0), x)
                            }
                        }
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
                            s.emit_values(|m| m & INNER != 0);
                            s.stores(&g.stores);
                            s.accumulate(&g.reds, &accs);
                        },
                    );
                    let kinds: Vec<(RedKind, Reg)> = g.reds.iter().map(|r| r.0).zip(accs).collect();
                    let res =
                        block_reduce(&mut s.k, lk.dtype, &kinds, smem.expect("shared slots"), tid);
                    let p0 = s.k.setp(Cmp::Eq, Type::U32, tid, Operand::Imm(0));
                    for (r, x) in res.into_iter().enumerate() {
                        let base = s.ptr[g.reds[r].2].expect("output loaded");
                        s.store_at(Some(p0), base, Operand::Reg(row), x);
                    }
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
                        s.emit_values(|m| m & INNER != 0);
                        s.stores(&g.stores);
                        s.accumulate(&g.reds, &accs);
                    });
                    let p0 = s.k.setp(Cmp::Eq, Type::U32, lane, Operand::Imm(0));
                    for (r, &acc) in accs.iter().enumerate() {
                        let x = warp_reduce(&mut s.k, lk.dtype, g.reds[r].0, acc, ShflMode::Down);
                        let base = s.ptr[g.reds[r].2].expect("output loaded");
                        s.store_at(Some(p0), base, Operand::Reg(row), x);
                    }
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
                        s.emit_values(|m| m & OUTER != 0);
                        s.stores(&g.stores);
                        s.accumulate(&g.reds, &accs);
                    });
                    for (r, &acc) in accs.iter().enumerate() {
                        let base = s.ptr[g.reds[r].2].expect("output loaded");
                        s.store_at(None, base, Operand::Reg(col), acc);
                    }
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
        let smem = self
            .k
            .shared(8, reds.len() as u32 * WARPS * lk.dtype.bytes());
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
        let reds_acc: Vec<(RedKind, ValId, BufId)> = reds.to_vec();
        let accs = self.init_accs(&reds_acc);
        let ty = self.ty();
        let es = self.es();
        self.range(
            Operand::Reg(tid),
            count,
            Operand::Imm(BLOCK as i64),
            |s, t| {
                for (r, &acc) in accs.iter().enumerate() {
                    let a = s.k.mad_wide(t, Operand::Imm(es), scratch[r]);
                    let x = s.k.ld(Space::Global, ty, Address::reg(a));
                    let c = s.fx().combine(reds[r].0, acc, x);
                    s.k.push(Inst::Mov {
                        ty,
                        dst: acc,
                        src: Operand::Reg(c),
                    });
                }
            },
        );
        let kinds: Vec<(RedKind, Reg)> = reds.iter().map(|r| r.0).zip(accs).collect();
        let res = block_reduce(&mut self.k, lk.dtype, &kinds, smem, tid);
        let p0 = self.k.setp(Cmp::Eq, Type::U32, tid, Operand::Imm(0));
        for (r, x) in res.into_iter().enumerate() {
            let base = self.ptr[reds[r].2].expect("output loaded");
            self.store_at(Some(p0), base, Operand::Imm(0), x);
        }
        finish(
            self.k,
            self.params,
            "tf_red2",
            [Size::Const(1), Size::Const(1), Size::Const(1)],
        )
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

/// Folds a value across the 32 lanes of a warp. With `Bfly` every lane gets the result (the
/// same bits in every lane: each step combines the same two values, in either order, and sum
/// and max are commutative); with `Down` only lane 0 does.
pub(crate) fn warp_reduce(
    k: &mut KernelBuilder,
    dt: DType,
    kind: RedKind,
    v: Reg,
    mode: ShflMode,
) -> Reg {
    let mut acc = v;
    for off in [16, 8, 4, 2, 1] {
        let o = shfl(k, mode, acc, off);
        acc = Fx::new(k, dt).combine(kind, acc, o);
    }
    acc
}

/// Folds per-thread values across a block of [`BLOCK`] threads; every thread gets the results.
/// Warps reduce with shuffles, lane 0 of each writes its warp's value to `smem` (one slot per
/// warp and reduction), and after a barrier every warp folds the slots again, so no thread waits
/// on a branch. A second barrier lets the caller reuse `smem` (e.g. for the next row).
pub(crate) fn block_reduce(
    k: &mut KernelBuilder,
    dt: DType,
    accs: &[(RedKind, Reg)],
    smem: SharedId,
    tid: Reg,
) -> Vec<Reg> {
    let es = dt.bytes() as i64;
    let ty = dt.ptx();
    let lane = k.bin(BinOp::And, Type::B32, tid, Operand::Imm(31));
    let warp = k.bin(BinOp::Shr, Type::U32, tid, Operand::Imm(5));
    let warped: Vec<Reg> = accs
        .iter()
        .map(|&(kind, v)| warp_reduce(k, dt, kind, v, ShflMode::Bfly))
        .collect();
    let base = k.mov(Type::U32, Operand::Shared(smem));
    let waddr = k.fma(Type::U32, warp, Operand::Imm(es), base);
    let lane0 = k.setp(Cmp::Eq, Type::U32, lane, Operand::Imm(0));
    for (r, &w) in warped.iter().enumerate() {
        k.push_if(
            lane0,
            false,
            Inst::St {
                space: Space::Shared,
                ty,
                addr: Address::reg_off(waddr, (r as i64 * WARPS as i64 * es) as i32),
                src: Operand::Reg(w),
            },
        );
    }
    k.bar_sync();
    let laddr = k.fma(Type::U32, lane, Operand::Imm(es), base);
    let has = k.setp(Cmp::Lt, Type::U32, lane, Operand::Imm(WARPS as i64));
    let mut out = Vec::new();
    for (r, &(kind, _)) in accs.iter().enumerate() {
        let id = Fx::new(k, dt).identity(kind);
        let v = k.mov(ty, id);
        k.push_if(
            has,
            false,
            Inst::Ld {
                space: Space::Shared,
                ty,
                dst: v,
                addr: Address::reg_off(laddr, (r as i64 * WARPS as i64 * es) as i32),
            },
        );
        out.push(warp_reduce(k, dt, kind, v, ShflMode::Bfly));
    }
    k.bar_sync();
    out
}
