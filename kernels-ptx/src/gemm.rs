//! Tiled GEMM: `C = act(alpha * op(A) op(B) + beta * C + bias)`, row-major, for f32 and f64.
//!
//! Each block computes a `bm x bn` tile of C. Per step of `bk` along k, the block's threads copy
//! an A and a B tile from global memory into shared memory (zero-filled outside the matrices,
//! coalesced for every layout), `bar.sync`, and each thread accumulates a `tm x tn` micro-tile
//! in registers from shared memory; a second `bar.sync` guards the tiles' reuse. A thread's
//! micro-tile rows and columns are strided by 16, so the threads of a warp read consecutive
//! shared words (B) or broadcast one (A), and store consecutive columns of C.
//!
//! Tiles: f32 64x64x16 with 4x4 per thread, f64 32x32x8 with 2x2 per thread; 256 threads.
//! Shared tiles are stored k-major with one element of padding per row, so the transposing
//! stores of a row-major A tile do not all hit one bank.
//!
//! Static dims are compiled in as immediates, and bounds checks that a static size makes
//! unnecessary (a multiple of the tile) are left out. `beta == 0` never reads C (BLAS
//! semantics: C may hold garbage or NaN then).
//!
//! A batched GEMM ([`Batch`]) runs `count` such products in one launch: grid z walks the batch
//! (a block loops over `z, z + 65535, ...` past 65535 matrices), and each operand's matrix `b`
//! starts `b * stride` elements after its first (64-bit offsets; stride 0: one matrix shared by
//! the whole batch). A spec without a batch is the single product, with no batch code at all.
//!
//! Limits: every dim below 2^31, each matrix below 2^32 elements, and n at most 65535 tiles
//! (4,194,240 columns for f32).

use crate::ir::{DType, Dim, IrError, MAX_EXTENT};
use crate::math::Fx;
use crate::meta::{KernelMeta, Launch, Param, ParamTy, Program, Role, Size};
use crate::ptx::{
    Address, Axis3, BinOp, Cmp, CvtRound, Inst, KernelBuilder, Operand, Reg, Space, Special, Type,
};

/// What is added before the activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bias {
    None,
    /// A vector of length n added to every row: `C[i][j] += bias[j]` (e.g. `dot(x, w) + b`).
    PerColumn,
    /// A vector of length m added to every column: `C[i][j] += bias[i]`.
    PerRow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Activation {
    Identity,
    Sigmoid,
}

/// One GEMM kernel: `C (m x n) = act(alpha * op(A) op(B) + beta * C + bias)`, where `op(A)` is
/// `m x k` (stored `k x m` when `trans_a`), `op(B)` is `k x n` (stored `n x k` when `trans_b`).
/// All matrices are contiguous and row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemmSpec {
    pub dtype: DType,
    pub m: Dim,
    pub n: Dim,
    pub k: Dim,
    pub trans_a: bool,
    pub trans_b: bool,
    pub bias: Bias,
    pub activation: Activation,
    /// `Some`: a batch of products, one per matrix of the batch; `None`: one product.
    pub batch: Option<Batch>,
}

/// A batch of `count` products `C_b = act(alpha * op(A_b) op(B_b) + beta * C_b + bias)` in one
/// launch. Matrix `b` of an operand starts `b * stride` elements after the operand's address
/// (stride 0: every product reads the same matrix). The bias, alpha and beta are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Batch {
    pub count: Dim,
    pub a: u64,
    pub b: u64,
    pub c: u64,
}

/// A block tile and the per-thread micro-tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tile {
    pub bm: u32,
    pub bn: u32,
    pub bk: u32,
    pub tm: u32,
    pub tn: u32,
}

impl Tile {
    pub fn of(dtype: DType) -> Tile {
        match dtype {
            DType::F32 => Tile {
                bm: 64,
                bn: 64,
                bk: 16,
                tm: 4,
                tn: 4,
            },
            DType::F64 => Tile {
                bm: 32,
                bn: 32,
                bk: 8,
                tm: 2,
                tn: 2,
            },
        }
    }

    pub fn threads(&self) -> u32 {
        (self.bm / self.tm) * (self.bn / self.tn)
    }
}

const GRID_Y_CAP: u64 = 65535;

/// Generates the GEMM kernel of a spec.
pub fn gemm(spec: &GemmSpec) -> Result<Program, IrError> {
    let t = Tile::of(spec.dtype);
    let count = spec.batch.map(|b| b.count);
    for d in [spec.m, spec.n, spec.k].into_iter().chain(count) {
        if let Dim::Static(x) = d {
            if x >= MAX_EXTENT {
                return Err(IrError(format!("GEMM dim {x} is 2^31 or more")));
            }
        }
    }
    if let Some(b) = spec.batch {
        let es = spec.dtype.bytes() as u64;
        if [b.a, b.b, b.c]
            .iter()
            .any(|s| s.checked_mul(es).is_none_or(|x| x > i64::MAX as u64))
        {
            return Err(IrError(format!(
                "batched GEMM strides {b:?} are 2^63 bytes or more"
            )));
        }
    }
    if let Dim::Static(n) = spec.n {
        if n.div_ceil(t.bn as u64) > GRID_Y_CAP {
            return Err(IrError(format!(
                "GEMM with n = {n}: more than {GRID_Y_CAP} column tiles"
            )));
        }
    }
    let launch = Gen::build(spec, t);
    Ok(Program {
        launches: vec![launch],
        scratch: Vec::new(),
    })
}

struct Gen {
    k: KernelBuilder,
    params: Vec<Param>,
    dims: Vec<(u32, Reg)>,
}

impl Gen {
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
                Operand::Reg(self.dims.iter().find(|x| x.0 == id).expect("dim loaded").1)
            }
        }
    }

    /// `a && b` over optional predicates (None: statically true).
    fn and(&mut self, a: Option<Reg>, b: Option<Reg>) -> Option<Reg> {
        match (a, b) {
            (Some(a), Some(b)) => Some(self.k.bin(BinOp::And, Type::Pred, a, b)),
            (x, None) | (None, x) => x,
        }
    }

    /// `x < d`, or None where a static `d` that is a nonzero multiple of `tile` makes it true
    /// for every index a launch produces.
    fn below(&mut self, x: Reg, d: Dim, tile: u32) -> Option<Reg> {
        match d {
            Dim::Static(n) if n > 0 && n % tile as u64 == 0 => None,
            Dim::Static(_) | Dim::Sym(_) => {
                let o = self.dim(d);
                Some(self.k.setp(Cmp::Lt, Type::U32, x, o))
            }
        }
    }

    fn build(spec: &GemmSpec, t: Tile) -> Launch {
        let dt = spec.dtype;
        let ty = dt.ptx();
        let es = dt.bytes() as i64;
        let threads = t.threads();
        let tx_n = t.bn / t.tn;
        let ty_n = t.bm / t.tm;
        debug_assert!(tx_n.is_power_of_two() && t.bk.is_power_of_two() && t.bm.is_power_of_two());
        debug_assert!(
            (t.bm * t.bk).is_multiple_of(threads) && (t.bn * t.bk).is_multiple_of(threads)
        );
        let mut g = Gen {
            k: KernelBuilder::new([threads, 1, 1]),
            params: Vec::new(),
            dims: Vec::new(),
        };
        let pa = g.param("a", ParamTy::Ptr, Role::GemmA);
        let pb = g.param("b", ParamTy::Ptr, Role::GemmB);
        let pc = g.param("c", ParamTy::Ptr, Role::GemmC);
        let pbias = match spec.bias {
            Bias::None => None,
            Bias::PerColumn | Bias::PerRow => Some(g.param("bias", ParamTy::Ptr, Role::GemmBias)),
        };
        let palpha = g.param("alpha", dt.param(), Role::Alpha);
        let pbeta = g.param("beta", dt.param(), Role::Beta);
        let mut syms: Vec<u32> = [spec.m, spec.n, spec.k]
            .iter()
            .chain(spec.batch.as_ref().map(|b| &b.count))
            .filter_map(|d| match d {
                Dim::Sym(id) => Some(*id),
                Dim::Static(_) => None,
            })
            .collect();
        syms.sort_unstable();
        syms.dedup();
        let dim_params: Vec<_> = syms
            .iter()
            .map(|&id| (id, g.param(&format!("d{id}"), ParamTy::U32, Role::Dim(id))))
            .collect();
        let a = g.k.ld_ptr(pa);
        let b = g.k.ld_ptr(pb);
        let c = g.k.ld_ptr(pc);
        let bias = pbias.map(|p| g.k.ld_ptr(p));
        let alpha = g.k.ld_param(palpha);
        let beta = g.k.ld_param(pbeta);
        for (id, p) in dim_params {
            let r = g.k.ld_param(p);
            g.dims.push((id, r));
        }
        let (m, n, kd) = (g.dim(spec.m), g.dim(spec.n), g.dim(spec.k));
        // A batch: a loop over the block's matrices, each with its own operand addresses.
        let (a, b, c, batch) = match spec.batch {
            None => (a, b, c, None),
            Some(bt) => {
                let z = g.k.special(Special::Ctaid(Axis3::Z));
                let top = g.k.label();
                let end = g.k.label();
                g.k.place(top);
                let count = g.dim(bt.count);
                let past = g.k.setp(Cmp::Ge, Type::U32, z, count);
                g.k.bra_if(past, false, end);
                let z64 = g.k.cvt(CvtRound::None, Type::U64, Type::U32, z);
                let mut at = |base: Reg, stride: u64| -> Reg {
                    if stride == 0 {
                        return base;
                    }
                    let off = g.k.bin(
                        BinOp::Mul,
                        Type::U64,
                        z64,
                        Operand::Imm((stride * es as u64) as i64),
                    );
                    g.k.bin(BinOp::Add, Type::U64, base, off)
                };
                let (a, b, c) = (at(a, bt.a), at(b, bt.b), at(c, bt.c));
                (a, b, c, Some((z, top, end)))
            }
        };

        let tid = g.k.special(Special::Tid(Axis3::X));
        let bx = g.k.special(Special::Ctaid(Axis3::X));
        let by = g.k.special(Special::Ctaid(Axis3::Y));
        let tx =
            g.k.bin(BinOp::And, Type::B32, tid, Operand::Imm(tx_n as i64 - 1));
        let tyr = g.k.bin(
            BinOp::Shr,
            Type::U32,
            tid,
            Operand::Imm(tx_n.trailing_zeros() as i64),
        );
        // Rows of C along grid x (up to 2^31 - 1 blocks), columns along grid y.
        let row0 =
            g.k.bin(BinOp::Mul, Type::U32, bx, Operand::Imm(t.bm as i64));
        let col0 =
            g.k.bin(BinOp::Mul, Type::U32, by, Operand::Imm(t.bn as i64));
        let lda_a = t.bm + 1;
        let lda_b = t.bn + 1;
        let sh_a = g.k.shared(16, t.bk * lda_a * es as u32);
        let sh_b = g.k.shared(16, t.bk * lda_b * es as u32);
        let sa = g.k.mov(Type::U32, Operand::Shared(sh_a));
        let sb = g.k.mov(Type::U32, Operand::Shared(sh_b));

        // Tile-loading slots: element e = tid + s * threads of the tile, mapped so that
        // consecutive threads read consecutive global addresses.
        struct Slot {
            ptr: Reg,
            ok: Option<Reg>,
            kk: Reg,
            soff: Reg,
        }
        let split = |g: &mut Gen, e: Reg, minor: u32| {
            let major = g.k.bin(
                BinOp::Shr,
                Type::U32,
                e,
                Operand::Imm(minor.trailing_zeros() as i64),
            );
            let minor =
                g.k.bin(BinOp::And, Type::B32, e, Operand::Imm(minor as i64 - 1));
            (major, minor)
        };
        let mut a_slots = Vec::new();
        for s in 0..(t.bm * t.bk / threads) {
            let e = g.k.bin(
                BinOp::Add,
                Type::U32,
                tid,
                Operand::Imm((s * threads) as i64),
            );
            let (r, kk) = if spec.trans_a {
                let (kk, r) = split(&mut g, e, t.bm);
                (r, kk)
            } else {
                split(&mut g, e, t.bk)
            };
            let grow = g.k.bin(BinOp::Add, Type::U32, row0, r);
            let ok = g.below(grow, spec.m, t.bm);
            // A[grow][kk] at grow*k + kk, or A^T stored k x m: kk*m + grow.
            let idx = if spec.trans_a {
                g.k.fma(Type::U32, kk, m, grow)
            } else {
                g.k.fma(Type::U32, grow, kd, kk)
            };
            let ptr = g.k.mad_wide(idx, Operand::Imm(es), a);
            let so = g.k.fma(Type::U32, kk, Operand::Imm(lda_a as i64), r);
            let soff = g.k.fma(Type::U32, so, Operand::Imm(es), sa);
            a_slots.push(Slot { ptr, ok, kk, soff });
        }
        let mut b_slots = Vec::new();
        for s in 0..(t.bn * t.bk / threads) {
            let e = g.k.bin(
                BinOp::Add,
                Type::U32,
                tid,
                Operand::Imm((s * threads) as i64),
            );
            let (kk, cc) = if spec.trans_b {
                let (cc, kk) = split(&mut g, e, t.bk);
                (kk, cc)
            } else {
                split(&mut g, e, t.bn)
            };
            let gcol = g.k.bin(BinOp::Add, Type::U32, col0, cc);
            let ok = g.below(gcol, spec.n, t.bn);
            // B[kk][gcol] at kk*n + gcol, or B^T stored n x k: gcol*k + kk.
            let idx = if spec.trans_b {
                g.k.fma(Type::U32, gcol, kd, kk)
            } else {
                g.k.fma(Type::U32, kk, n, gcol)
            };
            let ptr = g.k.mad_wide(idx, Operand::Imm(es), b);
            let so = g.k.fma(Type::U32, kk, Operand::Imm(lda_b as i64), cc);
            let soff = g.k.fma(Type::U32, so, Operand::Imm(es), sb);
            b_slots.push(Slot { ptr, ok, kk, soff });
        }
        // Bytes to advance each pointer by per k step: along a row (contiguous k) or down
        // bk rows of the stored matrix.
        let step = |g: &mut Gen, contiguous: bool, rows: Dim| -> Operand {
            let per = t.bk as i64 * es;
            match (contiguous, rows) {
                (true, _) => Operand::Imm(per),
                (false, Dim::Static(x)) => Operand::Imm(per * x as i64),
                (false, d @ Dim::Sym(_)) => {
                    let o = g.dim(d);
                    Operand::Reg(g.k.bin(BinOp::MulWide, Type::U32, o, Operand::Imm(per)))
                }
            }
        };
        let step_a = step(&mut g, !spec.trans_a, spec.m);
        let step_b = step(&mut g, spec.trans_b, spec.n);

        let zero = Fx::new(&mut g.k, dt).c(0.0);
        let acc: Vec<Reg> = (0..t.tm * t.tn).map(|_| g.k.mov(ty, zero)).collect();
        let ra = g.k.fma(Type::U32, tyr, Operand::Imm(es), sa);
        let rb = g.k.fma(Type::U32, tx, Operand::Imm(es), sb);
        let k_whole = matches!(spec.k, Dim::Static(x) if x % t.bk as u64 == 0);

        let k0 = g.k.mov(Type::U32, Operand::Imm(0));
        let top = g.k.label();
        let done = g.k.label();
        g.k.place(top);
        let p = g.k.setp(Cmp::Ge, Type::U32, k0, kd);
        g.k.bra_if(p, false, done);
        for (slots, step) in [(&a_slots, step_a), (&b_slots, step_b)] {
            for s in slots.iter() {
                let kin = if k_whole {
                    None
                } else {
                    let kg = g.k.bin(BinOp::Add, Type::U32, k0, s.kk);
                    Some(g.k.setp(Cmp::Lt, Type::U32, kg, kd))
                };
                let ok = g.and(s.ok, kin);
                let v = g.k.mov(ty, zero);
                let ld = Inst::Ld {
                    space: Space::Global,
                    ty,
                    dst: v,
                    addr: Address::reg(s.ptr),
                };
                match ok {
                    Some(p) => g.k.push_if(p, false, ld),
                    None => g.k.push(ld),
                }
                g.k.st(Space::Shared, ty, Address::reg(s.soff), v);
                g.k.push(Inst::Bin {
                    op: BinOp::Add,
                    ty: Type::U64,
                    dst: s.ptr,
                    a: Operand::Reg(s.ptr),
                    b: step,
                });
            }
        }
        g.k.bar_sync();
        for kk in 0..t.bk {
            let av: Vec<Reg> = (0..t.tm)
                .map(|r| {
                    let off = (kk * lda_a + r * ty_n) as i64 * es;
                    g.k.ld(Space::Shared, ty, Address::reg_off(ra, off as i32))
                })
                .collect();
            let bv: Vec<Reg> = (0..t.tn)
                .map(|cc| {
                    let off = (kk * lda_b + cc * tx_n) as i64 * es;
                    g.k.ld(Space::Shared, ty, Address::reg_off(rb, off as i32))
                })
                .collect();
            for r in 0..t.tm as usize {
                for cc in 0..t.tn as usize {
                    let dst = acc[r * t.tn as usize + cc];
                    g.k.push(Inst::Fma {
                        ty,
                        dst,
                        a: Operand::Reg(av[r]),
                        b: Operand::Reg(bv[cc]),
                        c: Operand::Reg(dst),
                    });
                }
            }
        }
        g.k.bar_sync();
        g.k.push(Inst::Bin {
            op: BinOp::Add,
            ty: Type::U32,
            dst: k0,
            a: Operand::Reg(k0),
            b: Operand::Imm(t.bk as i64),
        });
        g.k.bra(top);
        g.k.place(done);

        // Epilogue: one element at a time, skipped outside C.
        let beta_nz = g.k.setp(Cmp::Neu, ty, beta, zero);
        for r in 0..t.tm {
            let grow =
                g.k.bin(BinOp::Add, Type::U32, row0, Operand::Imm((r * ty_n) as i64));
            let grow = g.k.bin(BinOp::Add, Type::U32, grow, tyr);
            let row_ok = g.below(grow, spec.m, t.bm);
            for cc in 0..t.tn {
                let gcol = g.k.bin(
                    BinOp::Add,
                    Type::U32,
                    col0,
                    Operand::Imm((cc * tx_n) as i64),
                );
                let gcol = g.k.bin(BinOp::Add, Type::U32, gcol, tx);
                let col_ok = g.below(gcol, spec.n, t.bn);
                let ok = g.and(row_ok, col_ok);
                let skip = g.k.label();
                if let Some(p) = ok {
                    g.k.bra_if(p, true, skip);
                }
                let idx = g.k.fma(Type::U32, grow, n, gcol);
                let addr = g.k.mad_wide(idx, Operand::Imm(es), c);
                let x = acc[(r * t.tn + cc) as usize];
                let mut fx = Fx::new(&mut g.k, dt);
                let v = fx.mul(alpha, x);
                let old = fx.k.mov(ty, zero);
                fx.k.push_if(
                    beta_nz,
                    false,
                    Inst::Ld {
                        space: Space::Global,
                        ty,
                        dst: old,
                        addr: Address::reg(addr),
                    },
                );
                let mut v = fx.fma(beta, old, v);
                let at = match spec.bias {
                    Bias::None => None,
                    Bias::PerColumn => Some(gcol),
                    Bias::PerRow => Some(grow),
                };
                if let (Some(at), Some(bias)) = (at, bias) {
                    let ba = fx.k.mad_wide(at, Operand::Imm(es), bias);
                    let bv = fx.k.ld(Space::Global, ty, Address::reg(ba));
                    v = fx.add(v, bv);
                }
                let v = match spec.activation {
                    Activation::Identity => v,
                    Activation::Sigmoid => fx.sigmoid(v),
                };
                g.k.st(Space::Global, ty, Address::reg(addr), v);
                g.k.place(skip);
            }
        }
        if let Some((z, top, end)) = batch {
            // Every thread of a block has the same z, so the barriers above stay uniform.
            let nz = g.k.special(Special::Nctaid(Axis3::Z));
            g.k.push(Inst::Bin {
                op: BinOp::Add,
                ty: Type::U32,
                dst: z,
                a: Operand::Reg(z),
                b: Operand::Reg(nz),
            });
            g.k.bra(top);
            g.k.place(end);
        }

        let layout = |tr: bool| if tr { 't' } else { 'n' };
        let prefix = format!(
            "tf_{}gemm{}_{}{}",
            match dt {
                DType::F32 => 's',
                DType::F64 => 'd',
            },
            if spec.batch.is_some() { "b" } else { "" },
            layout(spec.trans_a),
            layout(spec.trans_b)
        );
        let kernel = g.k.finish(&prefix);
        let size = |d: Dim| match d {
            Dim::Static(x) => Size::Const(x),
            Dim::Sym(id) => Size::Dim(id),
        };
        let meta = KernelMeta {
            name: kernel.name.clone(),
            params: g.params,
            grid: [
                Size::clamp(Size::ceil_div(size(spec.m), t.bm as u64), 1, (1 << 31) - 1),
                Size::clamp(Size::ceil_div(size(spec.n), t.bn as u64), 1, GRID_Y_CAP),
                match spec.batch {
                    None => Size::Const(1),
                    Some(bt) => Size::clamp(size(bt.count), 1, GRID_Y_CAP),
                },
            ],
            block: [threads, 1, 1],
            shared_bytes: kernel.shared_bytes(),
        };
        Launch { kernel, meta }
    }
}
