//! GPU emission: the same schedule as the CPU code, as one PTX module per compiled function.
//!
//! Loop kernels are the kernel crate's IR already (`tensor_fn_kernels::ir`: the schedule's
//! instructions, ops, dims and dtypes are its types), completed here with the buffer table;
//! GEMMs map onto the library's tiled GEMM. Neither emitter re-derives what the schedule
//! decided.

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

/// The programs of every kernel of the schedule, in plan order.
pub fn programs(s: &Schedule, dt: DType) -> Result<Vec<k::Program>, String> {
    let mut out = Vec::new();
    for kern in &s.kernels {
        let p = match kern {
            Kernel::Loop(l) => k::lower_loop(&loop_kernel(s, l, dt)),
            // No GPU kernel yet: the plan says so, and a call on a GPU fails before it runs.
            Kernel::Call(_) => Ok(k::Program {
                launches: Vec::new(),
                scratch: Vec::new(),
            }),
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
                let _ = writeln!(
                    launches,
                    "k{i}: {} (no GPU kernel yet)",
                    crate::ir::op_name(crate::ir::Op::Call(c.op))
                );
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
