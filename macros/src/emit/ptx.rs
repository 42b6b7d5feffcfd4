//! GPU emission: the same schedule as the CPU code, as one PTX module per compiled function.
//!
//! Loop kernels are the kernel crate's IR already (`tensor_fn_kernels::ir`: the schedule's
//! instructions, ops, dims and dtypes are its types), completed here with the buffer table;
//! GEMMs map onto the library's tiled GEMM, library calls (convolution, pooling) onto the
//! library's programs for them (`tensor_fn_kernels::conv`, whose `CallOp` the schedule uses).
//! Neither emitter re-derives what the schedule decided.

use std::fmt::Write as _;

use tensor_fn_kernels as k;

use crate::ir::{DType, Dim, Graph};
use crate::schedule::{Kernel, Schedule};

/// The PTX module text and, per schedule kernel, its launches with their parameter bindings.
pub struct Ptx {
    pub module: String,
    pub launches: String,
    /// Per schedule kernel, the program its launches come from (for the GPU launch plan).
    pub programs: Vec<k::Program>,
}

/// A loop kernel of the schedule in the kernel crate's IR: the same buffer ids, dim ids and
/// SSA values, with the whole buffer table.
pub fn loop_kernel(s: &Schedule, l: &crate::schedule::LoopKernel, dt: DType) -> k::LoopKernel {
    k::LoopKernel {
        dtype: dt,
        dims: l.dims.clone(),
        bufs: s
            .bufs
            .iter()
            .enumerate()
            .map(|(i, b)| k::Buffer {
                dtype: b.ty.dtype,
                shape: b.ty.shape.clone(),
                int: crate::emit::rust::int_storage(s, i),
            })
            .collect(),
        instrs: l.instrs.clone(),
        stores: l.stores.clone(),
        reductions: l.reductions.clone(),
    }
}

/// The program of a library call (convolution, pooling): a fused pooling's launches run
/// before (its gradient) or after (the pooling) the call's own, each with its own scratch.
fn call_program(c: &crate::schedule::CallKernel, dt: DType) -> Result<k::Program, k::IrError> {
    let own = k::conv::call(dt, c.op, c.n, &c.args, c.out)?;
    let Some(f) = c.fused.as_deref() else {
        return Ok(own);
    };
    let theirs = k::conv::call(dt, f.op, f.n, &f.args, f.out)?;
    let (first, second) = if matches!(f.op, k::conv::CallOp::PoolGrad { .. }) {
        (theirs, own)
    } else {
        (own, theirs)
    };
    let shift = first.scratch.len();
    let mut p = first;
    for mut l in second.launches {
        for prm in &mut l.meta.params {
            if let k::Role::Scratch(i) = prm.role {
                prm.role = k::Role::Scratch(i + shift);
            }
        }
        p.launches.push(l);
    }
    p.scratch.extend(second.scratch);
    Ok(p)
}

/// The programs of every kernel of the schedule, in plan order.
pub fn programs(s: &Schedule, dt: DType) -> Result<Vec<k::Program>, String> {
    let mut out = Vec::new();
    for kern in &s.kernels {
        let p = match kern {
            Kernel::Loop(l) => k::lower_loop(&loop_kernel(s, l, dt)),
            // Sizes beyond the GPU kernels' 32-bit indexing leave the call to the CPU: no
            // launches, and the plan makes a call on a GPU fail before anything runs.
            Kernel::Call(c) => Ok(call_program(c, dt).unwrap_or(k::Program {
                launches: Vec::new(),
                scratch: Vec::new(),
            })),
            Kernel::Gemm(m) => {
                let spec = |kk: Dim, a: &crate::schedule::MatView, b: &crate::schedule::MatView| {
                    k::GemmSpec {
                        dtype: dt,
                        m: m.m,
                        n: m.n,
                        k: kk,
                        trans_a: a.trans,
                        trans_b: b.trans,
                        bias: k::Bias::None,
                        activation: k::Activation::Identity,
                        batch: None,
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
                    m.alpha.factors_text(g),
                    m.beta_text(g)
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
            Kernel::Call(c) => {
                let text = |c: &crate::schedule::CallKernel| {
                    let args: Vec<String> = c.args.iter().map(|b| format!("b{b}")).collect();
                    format!(
                        "{}({}) -> b{}",
                        crate::ir::op_name(crate::ir::Op::Call(c.op)),
                        args.join(", "),
                        c.out
                    )
                };
                let calls = match c.fused.as_deref() {
                    Some(f) if matches!(f.op, k::conv::CallOp::PoolGrad { .. }) => {
                        format!("{}, then {}", text(f), text(c))
                    }
                    Some(f) => format!("{}, then {}", text(c), text(f)),
                    None => text(c),
                };
                let _ = write!(launches, "k{i}: {calls} over {} images", g.dim_str(c.n));
                match call_program(c, dt) {
                    Ok(_) => launches.push('\n'),
                    Err(e) => {
                        let _ = writeln!(launches, ": no GPU kernel ({e}), CPU only");
                    }
                }
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
