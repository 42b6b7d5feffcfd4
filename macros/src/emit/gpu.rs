//! The GPU side of a compiled model method: its launch plan as a `static` and the code that
//! hands a call to the runtime's executor.
//!
//! The plan is the schedule once more, with every kernel parameter bound: buffer ids are the
//! schedule's, GEMM operands resolve to their buffers, alphas to products of arguments,
//! constants and dims, scratch regions are numbered across the function. Library calls
//! (convolution, pooling) are programs like loop kernels: their launches bind schedule buffers,
//! their own scratch regions and constants. The launches come from the same
//! `tensor_fn_kernels` programs the PTX module was printed from.

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{format_ident, quote};
use tensor_fn_kernels as k;

use crate::ir::{DType, Dim, Function, Graph, Op, VarKind};
use crate::schedule::{BufKind, Gemm, Instr, Kernel, OutSrc, Scale, Schedule};

fn size(s: &k::Size) -> TokenStream {
    match s {
        k::Size::Const(c) => quote!(__gp::Size::Const(#c)),
        k::Size::Dim(d) => quote!(__gp::Size::Dim(#d)),
        k::Size::Mul(a, b) => {
            let (a, b) = (size(a), size(b));
            quote!(__gp::Size::Mul(&#a, &#b))
        }
        k::Size::CeilDiv(a, d) => {
            let a = size(a);
            quote!(__gp::Size::CeilDiv(&#a, #d))
        }
        k::Size::Clamp(a, lo, hi) => {
            let a = size(a);
            quote!(__gp::Size::Clamp(&#a, #lo, #hi))
        }
    }
}

/// The number of elements of a shape, as a size formula.
fn len(shape: &[Dim]) -> k::Size {
    shape.iter().fold(k::Size::Const(1), |acc, d| {
        let d = match d {
            Dim::Static(n) => k::Size::Const(*n),
            Dim::Sym(s) => k::Size::Dim(*s),
        };
        k::Size::product(acc, d)
    })
}

fn scalar(sign: f64, factors: &[TokenStream]) -> TokenStream {
    quote!(__gp::Bind::Scalar(#sign, &[#(#factors),*]))
}

fn factors(s: &Scale) -> Result<Vec<TokenStream>, String> {
    s.factors
        .iter()
        .map(|f| match f {
            Instr::Arg(v) => Ok(quote!(__gp::Factor::Arg(#v))),
            Instr::Const(c) => Ok(quote!(__gp::Factor::Const(#c))),
            Instr::DimSize(Dim::Static(n)) => {
                let c = *n as f64;
                Ok(quote!(__gp::Factor::Const(#c)))
            }
            Instr::DimSize(Dim::Sym(d)) => Ok(quote!(__gp::Factor::Dim(#d))),
            other => Err(format!("GEMM scale factor {other:?}")),
        })
        .collect()
}

fn scale(s: &Scale) -> Result<TokenStream, String> {
    Ok(scalar(s.sign, &factors(s)?))
}

/// A GEMM's beta: a constant, or a constant plus scales (weight decay).
fn beta(m: &Gemm) -> Result<TokenStream, String> {
    if m.beta_terms.is_empty() {
        return Ok(scalar(m.beta, &[]));
    }
    let c = m.beta;
    let mut terms = vec![quote!((#c, &[]))];
    for t in &m.beta_terms {
        let (sign, f) = (t.sign, factors(t)?);
        terms.push(quote!((#sign, &[#(#f),*])));
    }
    Ok(quote!(__gp::Bind::Sum(&[#(#terms),*])))
}

/// GEMM operands of one product.
struct GemmBinds {
    a: usize,
    b: usize,
    c: usize,
    alpha: TokenStream,
    beta: TokenStream,
}

/// The launches of one program with their parameters bound. `scratch0` numbers its scratch
/// regions after those of earlier programs.
fn launches(
    step: usize,
    p: &k::Program,
    gemm: Option<&GemmBinds>,
    scratch0: usize,
) -> Result<Vec<TokenStream>, String> {
    let mut out = Vec::new();
    for l in &p.launches {
        let m = &l.meta;
        let mut params = Vec::new();
        for prm in &m.params {
            let ty = match prm.ty {
                k::ParamTy::Ptr => quote!(Ptr),
                k::ParamTy::U32 => quote!(U32),
                k::ParamTy::F32 => quote!(F32),
                k::ParamTy::F64 => quote!(F64),
            };
            let buf = |b: usize| {
                let b = b as u32;
                quote!(__gp::Bind::Buf(#b))
            };
            let need = || format!("k{step} {}: {:?} outside a GEMM", m.name, prm.role);
            let bind = match prm.role {
                k::Role::Buf(b) => buf(b),
                k::Role::Dim(d) => quote!(__gp::Bind::Dim(#d)),
                k::Role::Arg(v) => quote!(__gp::Bind::Arg(#v)),
                k::Role::Scratch(i) => {
                    let i = (scratch0 + i) as u32;
                    quote!(__gp::Bind::Scratch(#i))
                }
                k::Role::Const(bits) => scalar(f64::from_bits(bits), &[]),
                k::Role::GemmA => buf(gemm.ok_or_else(need)?.a),
                k::Role::GemmB => buf(gemm.ok_or_else(need)?.b),
                k::Role::GemmC => buf(gemm.ok_or_else(need)?.c),
                k::Role::Alpha => gemm.ok_or_else(need)?.alpha.clone(),
                k::Role::Beta => gemm.ok_or_else(need)?.beta.clone(),
                k::Role::GemmBias => return Err(format!("k{step}: a GEMM bias is not bound")),
            };
            params.push(quote!(__gp::Param {
                ty: __gp::ParamTy::#ty,
                bind: #bind,
            }));
        }
        let name = &m.name;
        let grid: Vec<TokenStream> = m.grid.iter().map(size).collect();
        let [bx, by, bz] = m.block;
        let step = step as u32;
        out.push(quote!(__gp::Launch {
            step: #step,
            kernel: #name,
            grid: [#(#grid),*],
            block: [#bx, #by, #bz],
            params: &[#(#params),*],
        }));
    }
    Ok(out)
}

/// The `GpuPlan` of a scheduled function, as a constant expression. Its module text is read
/// from the constant `__PTX` that [`call`] defines (and names its types through `__gp`, the
/// runtime's `gpu::plan` module, which `call` imports) (the function's `FnInfo::ptx`), so the
/// text is in the expansion once, not twice.
pub fn plan(
    f: &Function,
    s: &Schedule,
    programs: &[k::Program],
    dt: DType,
) -> Result<TokenStream, String> {
    let g = &f.graph;
    let bufs: Vec<TokenStream> = s
        .bufs
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let src = match b.kind {
                BufKind::Input(p) => {
                    let p = p as u32;
                    quote!(Input(#p))
                }
                BufKind::Param(v) => quote!(Param(#v)),
                BufKind::Work => quote!(Work),
                BufKind::Output(p) => {
                    let p = p as u32;
                    quote!(Output(#p))
                }
                BufKind::View(base) => {
                    let base = base as u32;
                    quote!(View(#base))
                }
            };
            let l = size(&len(&b.ty.shape));
            let int = match crate::emit::rust::int_storage(s, i) {
                Some(t) => {
                    let n = t.bytes() as u8;
                    quote!(::core::option::Option::Some(#n))
                }
                None => quote!(::core::option::Option::None),
            };
            quote!(__gp::Buf { src: __gp::BufSrc::#src, len: #l, int_bytes: #int })
        })
        .collect();
    let mut all = Vec::new();
    let mut scratch = Vec::new();
    let mut cpu_only = None;
    for (step, (p, kern)) in programs.iter().zip(&s.kernels).enumerate() {
        match kern {
            // A call without launches has no GPU kernel (its sizes are beyond the kernels'
            // 32-bit indexing): the plan says so, and a call on a GPU fails before anything runs.
            Kernel::Call(c) if p.launches.is_empty() => {
                cpu_only.get_or_insert(crate::ir::op_name(Op::Call(c.op)));
            }
            Kernel::Loop(_) | Kernel::Call(_) => {
                all.extend(launches(step, p, None, scratch.len())?);
                scratch.extend(p.scratch.iter().map(|sc| size(&sc.bytes)));
            }
            Kernel::Gemm(m) => {
                // The program holds the first product's launches, then the second's (beta 1).
                let first = GemmBinds {
                    a: m.a.buf,
                    b: m.b.buf,
                    c: m.c.buf,
                    alpha: scale(&m.alpha)?,
                    beta: beta(m)?,
                };
                let n_first = match m.also.as_deref() {
                    None => p.launches.len(),
                    Some(_) => p.launches.len() / 2,
                };
                let head = k::Program {
                    launches: p.launches[..n_first].to_vec(),
                    scratch: Vec::new(),
                };
                all.extend(launches(step, &head, Some(&first), scratch.len())?);
                if let Some((a2, b2, _, _)) = m.also.as_deref() {
                    let second = GemmBinds {
                        a: a2.buf,
                        b: b2.buf,
                        c: m.c.buf,
                        alpha: first.alpha.clone(),
                        beta: scalar(1.0, &[]),
                    };
                    let tail = k::Program {
                        launches: p.launches[n_first..].to_vec(),
                        scratch: Vec::new(),
                    };
                    all.extend(launches(step, &tail, Some(&second), scratch.len())?);
                }
                if !p.scratch.is_empty() {
                    return Err(format!("k{step}: GEMM with scratch regions"));
                }
            }
        }
    }
    let commits: Vec<TokenStream> = s
        .commits
        .iter()
        .map(|(v, b)| {
            let b = *b as u32;
            quote!((#v, #b))
        })
        .collect();
    let outputs: Vec<TokenStream> = s
        .outputs
        .iter()
        .map(|o| match *o {
            OutSrc::Buf(b) => {
                let b = b as u32;
                quote!(__gp::Out::Buf(#b))
            }
            OutSrc::Arg(v) => quote!(__gp::Out::Arg(#v)),
        })
        .collect();
    let name = &f.name;
    let dtype = match dt {
        DType::F32 => quote!(F32),
        DType::F64 => quote!(F64),
    };
    let dims = g.syms.len() as u32;
    let cpu_only = match cpu_only {
        Some(op) => quote!(::core::option::Option::Some(#op)),
        None => quote!(::core::option::Option::None),
    };
    Ok(quote!(__gp::GpuPlan {
        name: #name,
        ptx: __PTX,
        dtype: __gp::Dtype::#dtype,
        dims: #dims,
        bufs: &[#(#bufs),*],
        scratch: &[#(#scratch),*],
        launches: &[#(#all),*],
        commits: &[#(#commits),*],
        outputs: &[#(#outputs),*],
        cpu_only: #cpu_only,
    }))
}

/// The syms bound by the generated dim checks: those in the shape of a parameter or an input.
fn bound_syms(f: &Function) -> Vec<bool> {
    let g = &f.graph;
    let mut bound = vec![false; g.syms.len()];
    for (i, v) in g.vars.iter().enumerate() {
        if v.kind == VarKind::Param || f.inputs.contains(&(i as u32)) {
            for d in &v.ty.shape {
                if let Dim::Sym(s) = d {
                    bound[*s as usize] = true;
                }
            }
        }
    }
    bound
}

fn dim_value(g: &Graph, bound: &[bool], d: Dim) -> TokenStream {
    match d {
        Dim::Static(n) => {
            let l = Literal::usize_unsuffixed(n as usize);
            quote!(#l)
        }
        Dim::Sym(s) if bound[s as usize] => {
            let id = format_ident!("__d_{}", g.syms[s as usize]);
            quote!(#id)
        }
        Dim::Sym(_) => quote!(0usize),
    }
}

/// The code of a method's GPU path: it runs the plan on `__dev` and returns a
/// `Lazy` of the method's result. Expects the dim checks' `__d_*` bindings, the inputs as
/// `Arg`s under their names, and `__mode`; `ptx` is a constant expression of the module text,
/// `cache` an expression of the method's `&'static FnCache` ([`cache_fn`]).
///
/// With `into` (an expression of type `&tensor_fn::gpu::GpuBuf`), the outputs stay on the
/// device, copied one after the other into that buffer, and the code returns `Ok(())`.
pub fn call(
    f: &Function,
    s: &Schedule,
    plan: TokenStream,
    ptx: TokenStream,
    cache: TokenStream,
    t: &TokenStream,
    into: Option<TokenStream>,
) -> TokenStream {
    let g = &f.graph;
    let bound = bound_syms(f);
    let dims: Vec<TokenStream> = (0..g.syms.len())
        .map(|i| dim_value(g, &bound, Dim::Sym(i as u32)))
        .collect();
    let mut staged = Vec::new();
    let mut inputs = Vec::new();
    let mut scalars = Vec::new();
    for (pos, &v) in f.inputs.iter().enumerate() {
        let var = &g.vars[v as usize];
        let name = Ident::new(&var.name, var.span);
        let name_str = &var.name;
        let host = if var.ty.rank() == 0 {
            quote!(#name)
        } else {
            quote!(__host)
        };
        if let Some(check) = crate::emit::rust::int_checks(f, v, host, |d| dim_value(g, &bound, d))
        {
            // Labels already on the device are the caller's to keep in range (an
            // out-of-range one picks nothing, which is no memory hazard).
            staged.push(if var.ty.rank() == 0 {
                check
            } else {
                quote!(if let ::tensor_fn::Arg::Host(__host) = &#name { #check })
            });
        }
        if var.ty.rank() == 0 {
            scalars.push(quote!((#v, #name as f64)));
        } else if s.bufs.iter().any(|b| b.kind == BufKind::Input(pos)) {
            let st = format_ident!("__staged{}", pos);
            let pos = pos as u32;
            staged.push(quote!(let #st = #name.staged();));
            inputs.push(quote!((#pos, #name_str, #st.data())));
        }
    }
    let mut params = Vec::new();
    let mut seen = Vec::new();
    let used = s
        .bufs
        .iter()
        .filter_map(|b| match b.kind {
            BufKind::Param(v) => Some(v),
            _ => None,
        })
        .chain(s.commits.iter().map(|(v, _)| *v));
    for v in used {
        if seen.contains(&v) {
            continue;
        }
        seen.push(v);
        let name_str = &g.vars[v as usize].name;
        let field = Ident::new(name_str, Span::call_site());
        params.push(quote!((#v, #name_str, self.#field.gpu_buf().ok_or_else(|| {
            ::tensor_fn::Error::Internal(::std::format!("`{}` has no device storage", #name_str))
        })?)));
    }
    let mut convert = Vec::new();
    let mut results = Vec::new();
    for (i, o) in f.outputs.iter().enumerate() {
        let ty = g.ty(*o);
        let id = format_ident!("__o{}", i);
        convert.push(quote! {
            let #id = __it.next().ok_or_else(|| ::tensor_fn::Error::Internal("missing GPU output".into()))?;
        });
        // Array outputs of an integer type hold integers on the device too; a scalar one
        // lives in the workspace as a float, exactly integral.
        let e = crate::emit::rust::elem_ty(ty);
        results.push(match ty.rank() {
            0 if ty.int.is_some() => quote!(#id.scalar::<#t>() as #e),
            0 => quote!(#id.scalar::<#t>()),
            1 => quote!(::tensor_fn::__private::ndarray::Array1::from_vec(#id.elems::<#e>())),
            r => {
                let ds = ty.shape.iter().map(|d| dim_value(g, &bound, *d));
                let ix = crate::emit::rust::ix_ty(r);
                quote!(::tensor_fn::__private::ndarray::Array::from_shape_vec(#ix(#(#ds),*), #id.elems::<#e>())
                    .map_err(|e| ::tensor_fn::Error::Internal(e.to_string()))?)
            }
        });
    }
    let ret = match f.ret {
        crate::ir::Ret::Unit => quote!(()),
        crate::ir::Ret::One if results.len() == 1 => results[0].clone(),
        _ => quote!((#(#results),*)),
    };
    let call = quote! {
        &::tensor_fn::gpu::Call {
            dims: &[#(#dims),*],
            scalars: &[#(#scalars),*],
            inputs: &[#(#inputs),*],
            params: &[#(#params),*],
        }
    };
    if let Some(into) = into {
        return quote! {
            use ::tensor_fn::gpu::plan as __gp;
            const __PTX: &str = #ptx;
            static __PLAN: __gp::GpuPlan = #plan;
            #(#staged)*
            // SAFETY: `__PLAN` and its module were emitted together, by this expansion, from
            // the method's schedule.
            unsafe { ::tensor_fn::gpu::run_into(&__PLAN, #cache, __dev, #call, #into) }?;
            return ::core::result::Result::Ok(());
        };
    }
    quote! {
        use ::tensor_fn::gpu::plan as __gp;
        const __PTX: &str = #ptx;
        static __PLAN: __gp::GpuPlan = #plan;
        #(#staged)*
        // SAFETY: `__PLAN` and its module were emitted together, by this expansion, from the
        // method's schedule.
        let __outs = unsafe {
            ::tensor_fn::gpu::run(
                &__PLAN,
                #cache,
                __dev,
                #call,
                __mode,
            )
        }?;
        return ::core::result::Result::Ok(::tensor_fn::gpu::Lazy::pending(__outs, move |__h| {
            let mut __it = __h.into_iter();
            #(#convert)*
            ::core::result::Result::Ok(#ret)
        }));
    }
}

/// The associated function `name` that owns a method's executor state (loaded module,
/// workspace, recorded graphs, call counts) in a `static`; the method and the model's
/// `gpu_calls` reach it through that function.
pub fn cache_fn(name: &Ident) -> TokenStream {
    quote! {
        #[doc(hidden)]
        fn #name() -> &'static ::tensor_fn::gpu::FnCache {
            static __CACHE: ::tensor_fn::gpu::FnCache = ::tensor_fn::gpu::FnCache::new();
            &__CACHE
        }
    }
}
