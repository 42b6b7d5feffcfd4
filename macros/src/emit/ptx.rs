//! GPU emission: the same schedule as the CPU code, as one PTX module per compiled function.
//!
//! Loop kernels map one to one onto `tensor_fn_kernels::ir::LoopKernel` (same buffer ids, dim
//! ids and SSA values) and GEMMs onto the library's tiled GEMM; this module only translates
//! types, so neither emitter re-derives what the schedule decided.

use std::fmt::Write as _;

use tensor_fn_kernels as k;

use crate::ir::{Axis, Binary, DType, Dim, Graph, Unary};
use crate::schedule::{Instr, Ix, Kernel, RedKind, Schedule};

/// The PTX module text and, per schedule kernel, its launches with their parameter bindings.
pub struct Ptx {
    pub module: String,
    pub launches: String,
    /// Per schedule kernel, the program its launches come from (for the GPU launch plan).
    pub programs: Vec<k::Program>,
}

fn dtype(d: DType) -> k::DType {
    match d {
        DType::F32 => k::DType::F32,
        DType::F64 => k::DType::F64,
    }
}

fn dim(d: Dim) -> k::Dim {
    match d {
        Dim::Static(n) => k::Dim::Static(n),
        Dim::Sym(s) => k::Dim::Sym(s),
    }
}

fn ix(i: Ix) -> k::Ix {
    match i {
        Ix::Outer => k::Ix::Outer,
        Ix::Inner => k::Ix::Inner,
        Ix::Zero => k::Ix::Zero,
    }
}

fn unary(u: Unary) -> k::Unary {
    match u {
        Unary::Neg => k::Unary::Neg,
        Unary::Exp => k::Unary::Exp,
        Unary::Log => k::Unary::Log,
        Unary::Log1p => k::Unary::Log1p,
        Unary::Sqrt => k::Unary::Sqrt,
        Unary::Tanh => k::Unary::Tanh,
        Unary::Sigmoid => k::Unary::Sigmoid,
        Unary::Softplus => k::Unary::Softplus,
        Unary::Relu => k::Unary::Relu,
        Unary::Abs => k::Unary::Abs,
        Unary::Sign => k::Unary::Sign,
        Unary::Step => k::Unary::Step,
        Unary::Pow(p) => k::Unary::Pow(k::Num::new(p.get())),
    }
}

fn binary(b: Binary) -> k::Binary {
    match b {
        Binary::Add => k::Binary::Add,
        Binary::Mul => k::Binary::Mul,
        Binary::Div => k::Binary::Div,
        Binary::Maximum => k::Binary::Maximum,
        Binary::Minimum => k::Binary::Minimum,
        Binary::Ge => k::Binary::Ge,
        Binary::Eq => k::Binary::Eq,
    }
}

fn instr(i: &Instr) -> k::Instr {
    match i {
        Instr::Load { buf, index } => k::Instr::Load {
            buf: *buf,
            index: index.iter().map(|x| ix(*x)).collect(),
        },
        Instr::Arg(a) => k::Instr::Arg(*a),
        Instr::Const(c) => k::Instr::Const(*c),
        Instr::DimSize(d) => k::Instr::DimSize(dim(*d)),
        Instr::Unary(u, a) => k::Instr::Unary(unary(*u), *a),
        Instr::Binary(b, x, y) => k::Instr::Binary(binary(*b), *x, *y),
    }
}

/// A loop kernel of the schedule in the kernel crate's IR: the same buffer ids, dim ids and
/// SSA values, with the whole buffer table.
pub fn loop_kernel(s: &Schedule, l: &crate::schedule::LoopKernel, dt: DType) -> k::LoopKernel {
    k::LoopKernel {
        dtype: dtype(dt),
        dims: l.dims.iter().map(|d| dim(*d)).collect(),
        bufs: s
            .bufs
            .iter()
            .map(|b| k::Buffer {
                dtype: dtype(b.ty.dtype),
                shape: b.ty.shape.iter().map(|d| dim(*d)).collect(),
            })
            .collect(),
        instrs: l.instrs.iter().map(instr).collect(),
        stores: l.stores.clone(),
        reductions: l
            .reductions
            .iter()
            .map(|r| k::Reduction {
                kind: match r.kind {
                    RedKind::Sum => k::RedKind::Sum,
                    RedKind::Max => k::RedKind::Max,
                },
                axis: match r.axis {
                    Axis::All => k::Axis::All,
                    Axis::One(a) => k::Axis::One(a),
                },
                value: r.value,
                out: r.out,
            })
            .collect(),
    }
}

/// The programs of every kernel of the schedule, in plan order.
pub fn programs(s: &Schedule, dt: DType) -> Result<Vec<k::Program>, String> {
    let mut out = Vec::new();
    for kern in &s.kernels {
        let p = match kern {
            Kernel::Loop(l) => k::lower_loop(&loop_kernel(s, l, dt)),
            Kernel::Gemm(m) => {
                let spec = |kk: Dim, a: &crate::schedule::MatView, b: &crate::schedule::MatView| {
                    k::GemmSpec {
                        dtype: dtype(dt),
                        m: dim(m.m),
                        n: dim(m.n),
                        k: dim(kk),
                        trans_a: a.trans,
                        trans_b: b.trans,
                        bias: k::Bias::None,
                        activation: k::Activation::Identity,
                    }
                };
                // A second product into the same C is a second launch with beta = 1.
                k::gemm(&spec(m.k, &m.a, &m.b)).and_then(|mut p| {
                    if let Some((a2, b2, k2, _)) = m.also.as_deref() {
                        let q = k::gemm(&spec(*k2, a2, b2))?;
                        p.launches.extend(q.launches);
                    }
                    Ok(p)
                })
            }
        };
        out.push(p.map_err(|e| e.0)?);
    }
    Ok(out)
}

/// The module and the launch list of a scheduled function.
pub fn emit(g: &Graph, s: &Schedule, dt: DType) -> Result<Ptx, String> {
    let programs = programs(s, dt)?;
    let mut module = k::Module::new(k::Header::default());
    let mut launches = String::new();
    if !g.syms.is_empty() {
        let dims: Vec<String> = g
            .syms
            .iter()
            .enumerate()
            .map(|(i, n)| format!("d{i} = {n}"))
            .collect();
        let _ = writeln!(launches, "dims: {}", dims.join(", "));
    }
    for (i, (p, kern)) in programs.iter().zip(&s.kernels).enumerate() {
        p.add_to(&mut module);
        match kern {
            Kernel::Gemm(m) => {
                let _ = writeln!(
                    launches,
                    "k{i}: gemm A = b{}{}, B = b{}{}, C = b{}, alpha = {}{}, beta = {}",
                    m.a.buf,
                    if m.a.trans { " (transposed)" } else { "" },
                    m.b.buf,
                    if m.b.trans { " (transposed)" } else { "" },
                    m.c.buf,
                    if m.alpha.sign < 0.0 { "-" } else { "" },
                    scale_text(g, &m.alpha),
                    m.beta
                );
                if let Some((a2, b2, _, _)) = m.also.as_deref() {
                    let _ = writeln!(
                        launches,
                        "k{i}: then gemm A = b{}{}, B = b{}{}, C = b{}, same alpha, beta = 1",
                        a2.buf,
                        if a2.trans { " (transposed)" } else { "" },
                        b2.buf,
                        if b2.trans { " (transposed)" } else { "" },
                        m.c.buf,
                    );
                }
            }
            Kernel::Loop(_) => {
                let _ = writeln!(launches, "k{i}: loop");
            }
        }
        for line in p.describe().lines() {
            let _ = writeln!(launches, "  {line}");
        }
    }
    Ok(Ptx {
        module: module.to_ptx(),
        launches,
        programs,
    })
}

fn scale_text(g: &Graph, s: &crate::schedule::Scale) -> String {
    if s.factors.is_empty() {
        return "1".into();
    }
    s.factors
        .iter()
        .map(|f| match f {
            Instr::Arg(v) => g.vars[*v as usize].name.clone(),
            Instr::Const(c) => c.to_string(),
            Instr::DimSize(d) => g.dim_str(*d),
            other => format!("{other:?}"),
        })
        .collect::<Vec<_>>()
        .join(" * ")
}
