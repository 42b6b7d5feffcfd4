//! CPU emission: specialized Rust from the schedule, via `quote!`.
//!
//! Every buffer is a contiguous row-major slice. Loop kernels become one loop nest each, with
//! loads of full rows hoisted into bounds-checked-once slices, values that don't depend on the
//! inner index computed outside it, and reductions accumulated in registers; rank-2 nests split
//! their rows across the runtime's threads where that pays. GEMMs call the runtime's `gemm`
//! with strides, so transposes cost nothing.

use proc_macro2::{Ident, Literal, Span, TokenStream};
use quote::{format_ident, quote};

use tensor_fn_kernels::op::PowCall;

use crate::ir::{
    Axis, Binary, CallOp, ConvGeom, DType, Dim, Function, Graph, IntTy, RandKind, Ret, Unary,
    VarKind,
};
use crate::schedule::{
    BufKind, CallKernel, Gemm, Instr, Ix, Kernel, LoopKernel, MatView, OutSrc, RedKind, Scale,
    Schedule, ValId,
};

/// How the function is declared around its body.
pub enum Shape<'a> {
    /// A free function (closure and equation forms).
    Free { name: &'a Ident, vis: TokenStream },
    /// A method of a model; `mutable` says `&mut self`. `gpu` is its GPU path
    /// (`emit::gpu::call`); `fields` are all the model's parameters (they decide the device).
    /// With `flat`, the method writes its outputs one after the other into a caller's slice
    /// instead of returning them (a data-parallel method's gradients, summed in place across
    /// ranks); it takes the slice and the process's rank before its arguments. That is its CPU
    /// form: a model on a GPU calls `<name>_device`, whose outputs go into a device buffer by
    /// `gpu_into` (`emit::gpu::call` with a destination); `gpu` is then unused.
    Method {
        name: &'a Ident,
        vis: TokenStream,
        mutable: bool,
        gpu: TokenStream,
        fields: &'a [Ident],
        flat: bool,
        gpu_into: TokenStream,
    },
}

pub fn scalar_ty(dt: DType) -> TokenStream {
    match dt {
        DType::F32 => quote!(f32),
        DType::F64 => quote!(f64),
    }
}

/// The Rust type of an integer element.
pub fn int_ty(i: IntTy) -> TokenStream {
    match i {
        IntTy::I32 => quote!(i32),
        IntTy::I64 => quote!(i64),
    }
}

/// The Rust element type of a value of this type as the caller sees it: an integer type, or
/// the float type.
pub fn elem_ty(ty: &crate::ir::Type) -> TokenStream {
    match ty.int {
        Some(i) => int_ty(i),
        None => scalar_ty(ty.dtype),
    }
}

/// The integer type of a buffer's storage: arguments and outputs of integer types hold
/// integers; every other buffer (the workspace) holds the function's floats.
pub fn int_storage(s: &Schedule, b: usize) -> Option<IntTy> {
    let buf = &s.bufs[b];
    match buf.kind {
        // Scalar outputs live in the workspace, with the other floats.
        BufKind::Input(_) => buf.ty.int,
        BufKind::Output(_) if buf.ty.rank() > 0 => buf.ty.int,
        BufKind::Output(_) | BufKind::Param(_) | BufKind::Work => None,
        BufKind::View(base) => int_storage(s, base),
    }
}

/// The Rust element type of buffer `b`'s storage (`t` the function's float type).
fn buf_elem(s: &Schedule, b: usize, t: &TokenStream) -> TokenStream {
    match int_storage(s, b) {
        Some(i) => int_ty(i),
        None => t.clone(),
    }
}

/// The checks of integer argument `v` before a call, given an expression of its host values
/// (a view, or a scalar): every value exactly representable in the function's float type, and
/// within the classes of the `onehot` (or picking) it feeds. `dim` spells a dim's value.
pub fn int_checks(
    f: &Function,
    v: u32,
    values: TokenStream,
    dim: impl Fn(Dim) -> TokenStream,
) -> Option<TokenStream> {
    let g = &f.graph;
    let var = &g.vars[v as usize];
    var.ty.int?;
    // The stream holds a seed and a counter's bits, not labels.
    if var.name == crate::ir::STREAM_VAR {
        return None;
    }
    let limit: i64 = match var.ty.dtype {
        DType::F32 => 1 << 24,
        DType::F64 => 1 << 53,
    };
    let classes: Vec<TokenStream> = g
        .ids()
        .filter_map(|id| match g.op(id) {
            crate::ir::Op::OneHot(k) if g.op(g.args(id)[0]) == crate::ir::Op::Var(v) => {
                Some(dim(k))
            }
            _ => None,
        })
        .collect();
    let classes = match classes.first() {
        Some(k) => quote!(::core::option::Option::Some(#k)),
        None => quote!(::core::option::Option::None),
    };
    let (fname, vname) = (&f.name, &var.name);
    let values = if var.ty.rank() == 0 {
        quote!(&[#values])
    } else {
        quote!(&::tensor_fn::__private::contiguous(&#values))
    };
    Some(quote! {
        ::tensor_fn::__private::check_ints(#fname, #vname, #values, #limit, #classes)?;
    })
}

/// ndarray's dimension type for a rank (`Ix0` to `Ix4`).
pub fn ix_ty(rank: usize) -> TokenStream {
    let ix = format_ident!("Ix{}", rank.min(4));
    quote!(::tensor_fn::__private::ndarray::#ix)
}

/// The Rust type of an argument of this type: a scalar by value, arrays as views.
pub fn arg_ty(g: &Graph, ty: &crate::ir::Type) -> TokenStream {
    let t = elem_ty(ty);
    let _ = g;
    match ty.rank() {
        0 => t,
        r => {
            let d = ix_ty(r);
            quote!(::tensor_fn::__private::ndarray::ArrayView<'_, #t, #d>)
        }
    }
}

/// The Rust type of a returned value.
pub fn out_ty(ty: &crate::ir::Type) -> TokenStream {
    let t = elem_ty(ty);
    match ty.rank() {
        0 => t,
        r => {
            let d = ix_ty(r);
            quote!(::tensor_fn::__private::ndarray::Array<#t, #d>)
        }
    }
}

/// The return type of the whole function.
pub fn ret_ty(f: &Function) -> TokenStream {
    let g = &f.graph;
    let tys: Vec<TokenStream> = f.outputs.iter().map(|o| out_ty(g.ty(*o))).collect();
    match f.ret {
        Ret::Unit => quote!(()),
        Ret::One if tys.len() == 1 => tys[0].clone(),
        _ => quote!((#(#tys),*)),
    }
}

/// The parameter list (without `self`).
pub fn params(f: &Function) -> Vec<TokenStream> {
    let g = &f.graph;
    f.inputs
        .iter()
        .map(|&v| {
            let var = &g.vars[v as usize];
            let name = Ident::new(&var.name, var.span);
            let t = arg_ty(g, &var.ty);
            quote!(#name: #t)
        })
        .collect()
}

/// The array type of a model method's argument: a host view or device memory.
fn model_arg_ty(ty: &crate::ir::Type) -> TokenStream {
    model_arg_ty_at(ty, quote!('_))
}

/// [`model_arg_ty`] with the view's lifetime.
fn model_arg_ty_at(ty: &crate::ir::Type, life: TokenStream) -> TokenStream {
    let t = elem_ty(ty);
    let d = ix_ty(ty.rank());
    quote!(::tensor_fn::Arg<#life, #t, #d>)
}

/// A model method's parameters: (public form taking anything that converts to an `Arg`,
/// the inner form taking the `Arg`, the conversions between them).
/// Each array argument borrows for a lifetime of its own (`lifetimes`, the public forms'
/// generic parameters), so views of different lifetimes can be passed together.
struct MethodParams {
    outer: Vec<TokenStream>,
    inner: Vec<TokenStream>,
    pass: Vec<TokenStream>,
    lifetimes: Vec<TokenStream>,
}

fn method_params(f: &Function) -> MethodParams {
    let g = &f.graph;
    let (mut outer, mut inner, mut pass) = (Vec::new(), Vec::new(), Vec::new());
    let mut lifetimes = Vec::new();
    for &v in &f.inputs {
        let var = &g.vars[v as usize];
        let name = Ident::new(&var.name, var.span);
        if var.name == crate::ir::STREAM_VAR {
            // Not the caller's: the method passes its model's stream, advanced by one call.
            let a = model_arg_ty(&var.ty);
            inner.push(quote!(#name: #a));
            pass.push(quote!(::tensor_fn::__private::ndarray::ArrayView1::from(
                &__stream_words[..]
            )
            .into()));
            continue;
        }
        if var.ty.rank() == 0 {
            let t = elem_ty(&var.ty);
            outer.push(quote!(#name: #t));
            inner.push(quote!(#name: #t));
            pass.push(quote!(#name));
        } else {
            let life = syn::Lifetime::new(&format!("'__tf{}", lifetimes.len()), Span::call_site());
            let a = model_arg_ty_at(&var.ty, quote!(#life));
            lifetimes.push(quote!(#life));
            outer.push(quote!(#name: impl ::core::convert::Into<#a>));
            let a = model_arg_ty(&var.ty);
            inner.push(quote!(#name: #a));
            pass.push(quote!(#name.into()));
        }
    }
    MethodParams {
        outer,
        inner,
        pass,
        lifetimes,
    }
}

fn dim_expr(g: &Graph, d: Dim) -> TokenStream {
    match d {
        Dim::Static(k) => {
            let l = Literal::usize_unsuffixed(k as usize);
            quote!(#l)
        }
        Dim::Sym(s) => {
            let id = format_ident!("__d_{}", g.syms[s as usize]);
            quote!(#id)
        }
    }
}

fn len_expr(g: &Graph, dims: &[Dim]) -> TokenStream {
    if dims.is_empty() {
        return quote!(1usize);
    }
    let parts: Vec<TokenStream> = dims.iter().map(|d| dim_expr(g, *d)).collect();
    let mut it = parts.into_iter();
    let first = it.next().unwrap();
    it.fold(quote!(#first), |acc, p| quote!(#acc * #p))
}

fn num_lit(v: f64, dt: DType) -> TokenStream {
    // Folding can make a constant that is not finite (`0 / 0`, `log(0)`, an f32 overflow), which
    // a `Literal` cannot spell.
    let t = scalar_ty(dt);
    let rounded = match dt {
        DType::F32 => v as f32 as f64,
        DType::F64 => v,
    };
    if rounded.is_nan() {
        return quote!(#t::NAN);
    }
    if rounded.is_infinite() {
        return if rounded > 0.0 {
            quote!(#t::INFINITY)
        } else {
            quote!(#t::NEG_INFINITY)
        };
    }
    match dt {
        DType::F32 => {
            let l = Literal::f32_suffixed(v as f32);
            quote!(#l)
        }
        DType::F64 => {
            let l = Literal::f64_suffixed(v);
            quote!(#l)
        }
    }
}

fn buf_ident(s: &Schedule, b: usize) -> Ident {
    match s.bufs[b].kind {
        BufKind::Input(p) => format_ident!("__in{}", p),
        BufKind::Param(v) => format_ident!("__p{}", v),
        BufKind::Work => format_ident!("__b{}", b),
        BufKind::Output(p) => format_ident!("__out{}", p),
        BufKind::View(base) => buf_ident(s, base),
    }
}

/// Emits the whole function item.
pub fn emit_fn(f: &Function, s: &Schedule, shape: Shape, docs: &[TokenStream]) -> TokenStream {
    let g = &f.graph;
    let dtype = f
        .outputs
        .first()
        .map(|o| g.ty(*o).dtype)
        .or_else(|| g.vars.first().map(|v| v.ty.dtype))
        .unwrap_or(DType::F64);
    let t = scalar_ty(dtype);
    let ps = params(f);
    let ret = ret_ty(f);
    let fname_str = &f.name;

    // Bind and check dims: params first, then arguments, each axis once.
    let mut seen: Vec<(u32, String)> = Vec::new();
    let mut checks = Vec::new();
    let mut order: Vec<u32> = g
        .vars
        .iter()
        .enumerate()
        .filter(|(_, v)| v.kind == VarKind::Param)
        .map(|(i, _)| i as u32)
        .collect();
    order.extend(f.inputs.iter().copied());
    for &v in &order {
        let var = &g.vars[v as usize];
        if var.ty.rank() == 0 {
            continue;
        }
        let name = &var.name;
        let shape_expr = match var.kind {
            VarKind::Param => {
                let id = Ident::new(name, Span::call_site());
                quote!(self.#id.shape())
            }
            VarKind::Input => {
                let id = Ident::new(name, var.span);
                quote!(#id.shape())
            }
        };
        let sh = format_ident!("__sh_{}", name);
        checks.push(quote!(let #sh = #shape_expr;));
        let tystr = g.type_str(&var.ty);
        for (axis, d) in var.ty.shape.iter().enumerate() {
            match d {
                Dim::Static(k) => {
                    let k = *k as usize;
                    checks.push(quote! {
                        if #sh[#axis] != #k {
                            return ::core::result::Result::Err(::tensor_fn::Error::StaticDim {
                                arg: #name, ty: #tystr, axis: #axis, expected: #k, found: #sh[#axis],
                            });
                        }
                    });
                }
                Dim::Sym(sid) => {
                    let dn = &g.syms[*sid as usize];
                    let id = format_ident!("__d_{}", dn);
                    match seen.iter().find(|(s, _)| s == sid) {
                        None => {
                            seen.push((*sid, name.clone()));
                            checks.push(quote!(let #id: usize = #sh[#axis];));
                        }
                        Some((_, first)) => checks.push(quote! {
                            if #sh[#axis] != #id {
                                return ::core::result::Result::Err(::tensor_fn::Error::DimConflict {
                                    dim: #dn, first_arg: #first, first: #id, second_arg: #name, second: #sh[#axis],
                                });
                            }
                        }),
                    }
                }
            }
        }
    }

    // Array arguments as contiguous slices (a copy only for non-standard layouts).
    let mut prologue = Vec::new();
    let is_method = matches!(shape, Shape::Method { .. });
    for (pos, &v) in f.inputs.iter().enumerate() {
        let var = &g.vars[v as usize];
        let name = Ident::new(&var.name, var.span);
        let a = format_ident!("__a{}", v);
        if is_method && var.ty.rank() > 0 {
            // A method's array arguments may live on a GPU; the CPU path takes host views.
            let fname = &f.name;
            let vname = &var.name;
            prologue.push(quote!(let #name = #name.host(#fname, #vname)?;));
        }
        if let Some(check) = int_checks(f, v, quote!(#name), |d| dim_expr(g, d)) {
            prologue.push(check);
        }
        if var.ty.rank() == 0 {
            // An integer scalar is computed as a float of the function's type.
            prologue.push(quote!(let #a: #t = #name as #t;));
        } else if let Some(b) = s.bufs.iter().position(|b| b.kind == BufKind::Input(pos)) {
            let cow = format_ident!("__cow{}", pos);
            let sl = format_ident!("__in{}", pos);
            let e = buf_elem(s, b, &t);
            prologue.push(quote! {
                let #cow = ::tensor_fn::__private::contiguous(&#name);
                let #sl: &[#e] = &#cow;
            });
        }
    }

    // Output arrays (rank >= 1) are allocated per call: they are returned to the caller. With
    // flat outputs, each output is the next piece of the caller's slice instead.
    let flat = matches!(shape, Shape::Method { flat: true, .. });
    let mut out_allocs = Vec::new();
    let flat_ids: Vec<Ident> = (0..f.outputs.len())
        .map(|i| format_ident!("__fo{}", i))
        .collect();
    if flat {
        let lens: Vec<TokenStream> = f
            .outputs
            .iter()
            .map(|o| len_expr(g, &g.ty(*o).shape))
            .collect();
        out_allocs.push(quote! {
            let __flat_len: usize = 0usize #(+ #lens)*;
            if __flat.len() != __flat_len {
                return ::core::result::Result::Err(::tensor_fn::Error::Internal(::std::format!(
                    "`{}`: a flat buffer of {} elements for outputs of {}", #fname_str, __flat.len(), __flat_len
                )));
            }
            let __fr: &mut [#t] = __flat;
            #(let (#flat_ids, __fr) = __fr.split_at_mut(#lens);)*
            let _ = __fr;
        });
    }
    let mut ws_bufs = Vec::new();
    let gpu_only = s.gpu_only_bufs();
    for (b, buf) in s.bufs.iter().enumerate() {
        match buf.kind {
            BufKind::Work if gpu_only.contains(&b) => {}
            BufKind::Output(p) if flat && buf.ty.rank() > 0 => {
                let id = buf_ident(s, b);
                let fo = &flat_ids[p];
                out_allocs.push(quote!(let #id: &mut [#t] = #fo;));
            }
            BufKind::Output(_) if buf.ty.rank() > 0 => {
                let id = buf_ident(s, b);
                let len = len_expr(g, &buf.ty.shape);
                let e = buf_elem(s, b, &t);
                out_allocs.push(quote!(let mut #id: ::std::vec::Vec<#e> = ::std::vec![Default::default(); #len];));
            }
            BufKind::Output(_) | BufKind::Work => ws_bufs.push(b),
            BufKind::Input(_) | BufKind::Param(_) | BufKind::View(_) => {}
        }
    }
    let lens: Vec<TokenStream> = ws_bufs
        .iter()
        .map(|b| len_expr(g, &s.bufs[*b].ty.shape))
        .collect();
    let splits: Vec<TokenStream> = ws_bufs
        .iter()
        .zip(&lens)
        .map(|(b, l)| {
            let id = buf_ident(s, *b);
            quote!(let (#id, __rest) = __rest.split_at_mut(#l);)
        })
        .collect();

    let param_binds: Vec<TokenStream> = s
        .bufs
        .iter()
        .filter_map(|b| match b.kind {
            BufKind::Param(v) => {
                let id = format_ident!("__p{}", v);
                let field = Ident::new(&g.vars[v as usize].name, Span::call_site());
                Some(quote!(let #id: &[#t] = self.#field.data()?;))
            }
            _ => None,
        })
        .collect();

    let kernels: Vec<TokenStream> = s.kernels[..s.inplace_from]
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let code = match k {
                Kernel::Gemm(m) => emit_gemm(g, s, m, i, dtype),
                Kernel::Loop(l) => emit_loop(g, s, l, dtype, i),
                Kernel::Call(c) => emit_call(g, s, c, i),
            };
            let guard = nan_guard(f, s, k, i);
            quote!(#code #guard)
        })
        .collect();
    // In-place kernels write parameters: they run after every read of the old values, with
    // the parameter borrowed mutably.
    let inplace: Vec<TokenStream> = s.kernels[s.inplace_from..]
        .iter()
        .enumerate()
        .map(|(i, k)| match k {
            Kernel::Gemm(m) => {
                let BufKind::Param(v) = s.bufs[m.c.buf].kind else {
                    unreachable!("in-place GEMMs write parameters")
                };
                let id = format_ident!("__p{}", v);
                let field = Ident::new(&g.vars[v as usize].name, Span::call_site());
                let call = emit_gemm(g, s, m, s.inplace_from + i, dtype);
                let guard = nan_guard(f, s, k, s.inplace_from + i);
                quote! {
                    {
                        let #id: &mut [#t] = self.#field.data_mut()?;
                        #call
                        #guard
                    }
                }
            }
            Kernel::Loop(l) => {
                // An update loop writing its parameter (`schedule::update_loops_in_place`).
                let Some(BufKind::Param(v)) = l.stores.first().map(|(_, b)| s.bufs[*b].kind) else {
                    unreachable!("in-place loops store into their parameter")
                };
                let id = format_ident!("__p{}", v);
                let field = Ident::new(&g.vars[v as usize].name, Span::call_site());
                let code = emit_loop(g, s, l, dtype, s.inplace_from + i);
                // The other parameters it reads (another update's old value), borrowed alongside.
                let mut others: Vec<u32> = Vec::new();
                for ins in &l.instrs {
                    if let Instr::Load { buf, .. } = ins {
                        if let BufKind::Param(u) = s.bufs[*buf].kind {
                            if u != v && !others.contains(&u) {
                                others.push(u);
                            }
                        }
                    }
                }
                let reads = others.iter().map(|u| {
                    let id = format_ident!("__p{}", u);
                    let field = Ident::new(&g.vars[*u as usize].name, Span::call_site());
                    quote!(let #id: &[#t] = self.#field.data()?;)
                });
                quote! {
                    {
                        #(#reads)*
                        let #id: &mut [#t] = self.#field.data_mut()?;
                        #code
                    }
                }
            }
            Kernel::Call(_) => unreachable!("only GEMMs and update loops run in place"),
        })
        .collect();

    let commits: Vec<TokenStream> = s
        .commits
        .iter()
        .map(|(p, b)| {
            let field = Ident::new(&g.vars[*p as usize].name, Span::call_site());
            let src = buf_ident(s, *b);
            quote!(self.#field.data_mut()?.copy_from_slice(&#src[..]);)
        })
        .collect();

    let results: Vec<TokenStream> = s
        .outputs
        .iter()
        .zip(&f.outputs)
        .map(|(src, node)| {
            let ty = g.ty(*node);
            match *src {
                OutSrc::Arg(v) => {
                    let a = format_ident!("__a{}", v);
                    quote!(#a)
                }
                OutSrc::Buf(b) => {
                    let id = buf_ident(s, b);
                    match ty.rank() {
                        0 => quote!(#id[0]),
                        1 => quote!(::tensor_fn::__private::ndarray::Array1::from_vec(#id)),
                        2 => {
                            let (d0, d1) = (dim_expr(g, ty.shape[0]), dim_expr(g, ty.shape[1]));
                            quote!(::tensor_fn::__private::array2(#id, #d0, #d1))
                        }
                        r => {
                            let ds = ty.shape.iter().map(|d| dim_expr(g, *d));
                            let ix = ix_ty(r);
                            quote!(::tensor_fn::__private::array_nd(#id, #ix(#(#ds),*)))
                        }
                    }
                }
            }
        })
        .collect();
    // Scalars are read inside the workspace borrow; arrays move out after it.
    let (scalar_reads, ret_expr) = {
        let mut reads = Vec::new();
        let mut exprs = Vec::new();
        for (i, (r, node)) in results.iter().zip(&f.outputs).enumerate() {
            if g.ty(*node).rank() == 0 {
                let id = format_ident!("__r{}", i);
                let e = elem_ty(g.ty(*node));
                // A scalar integer output was computed as a float: exactly integral.
                let r = match g.ty(*node).int {
                    Some(_) => quote!((#r as #e)),
                    None => quote!(#r),
                };
                reads.push(quote!(let #id: #e = #r;));
                exprs.push(quote!(#id));
            } else {
                exprs.push(r.clone());
            }
        }
        let e = match f.ret {
            _ if flat => {
                // Scalars into their one-element pieces (arrays were written in place).
                let sets = f.outputs.iter().enumerate().filter_map(|(i, o)| {
                    let fo = &flat_ids[i];
                    let r = format_ident!("__r{}", i);
                    (g.ty(*o).rank() == 0).then(|| quote!(#fo[0] = #r as #t;))
                });
                quote!({ #(#sets)* })
            }
            Ret::Unit => quote!(()),
            Ret::One if exprs.len() == 1 => exprs[0].clone(),
            _ => quote!((#(#exprs),*)),
        };
        (reads, e)
    };
    let scalar_ids: Vec<Ident> = f
        .outputs
        .iter()
        .enumerate()
        .filter(|(_, o)| g.ty(**o).rank() == 0)
        .map(|(i, _)| format_ident!("__r{}", i))
        .collect();

    let body = quote! {
        #(#prologue)*
        #(#out_allocs)*
        ::std::thread_local! {
            static __WS: ::core::cell::RefCell<::std::vec::Vec<#t>> =
                const { ::core::cell::RefCell::new(::std::vec::Vec::new()) };
        }
        let (#(#scalar_ids,)*) = __WS.with(|__ws| -> ::core::result::Result<_, ::tensor_fn::Error> {
            let mut __ws = __ws.borrow_mut();
            let __need: usize = 0usize #(+ #lens)*;
            if __ws.len() < __need {
                __ws.resize(__need, 0.0);
            }
            let __rest: &mut [#t] = &mut __ws[..];
            #(#splits)*
            let _ = __rest;
            {
                #(#param_binds)*
                #(#kernels)*
            }
            #(#inplace)*
            #(#commits)*
            #(#scalar_reads)*
            ::core::result::Result::Ok((#(#scalar_ids,)*))
        })?;
        ::core::result::Result::Ok(#ret_expr)
    };
    let attrs = quote! {
        #(#docs)*
        #[allow(unused_variables, unused_mut, unused_parens, non_snake_case, clippy::all)]
    };
    match shape {
        Shape::Free { name, vis } => quote! {
            #attrs
            #vis fn #name(#(#ps),*) -> ::core::result::Result<#ret, ::tensor_fn::Error> {
                #(#checks)*
                #body
            }
        },
        Shape::Method {
            name,
            vis,
            mutable,
            gpu,
            fields,
            flat,
            gpu_into,
        } => {
            let recv = if mutable {
                quote!(&mut self)
            } else {
                quote!(&self)
            };
            let MethodParams {
                outer,
                inner,
                pass,
                lifetimes,
            } = method_params(f);
            // A method that draws takes the next call of its model's stream (each rank its own
            // numbers, when the method is one rank's part of a data-parallel step).
            let draws = f
                .inputs
                .iter()
                .any(|&v| g.vars[v as usize].name == crate::ir::STREAM_VAR);
            let draw = match (draws, flat) {
                (false, _) => quote!(),
                (true, false) => {
                    quote!(let __stream_words: [i64; 2] = self.__tf_stream.next_call();)
                }
                (true, true) => quote! {
                    let __stream_words: [i64; 2] = self.__tf_stream.next_call_of_rank(__rank);
                },
            };
            let lazy = format_ident!("{}_lazy", name);
            let imp = format_ident!("__tensor_fn_{}", name);
            let fname = &f.name;
            let field_strs: Vec<String> = fields.iter().map(|i| i.to_string()).collect();
            if flat {
                // The kernels write the outputs into the slice on the CPU; a model on a GPU
                // writes them into a device buffer through `<name>_device`.
                let (name_dev, imp_dev) = (
                    format_ident!("{}_device", name),
                    format_ident!("{}_device", imp),
                );
                return quote! {
                    #[doc(hidden)]
                    #[allow(unused_variables, unused_mut, unused_parens, non_snake_case, clippy::all)]
                    #vis fn #name_dev<#(#lifetimes),*>(#recv, __into: &::tensor_fn::gpu::GpuBuf, __rank: usize, #(#outer),*) -> ::core::result::Result<(), ::tensor_fn::Error> {
                        #draw
                        self.#imp_dev(__into, #(#pass,)*)
                    }

                    #[doc(hidden)]
                    #[allow(unused_variables, unused_mut, unused_parens, non_snake_case, clippy::all)]
                    fn #imp_dev(#recv, __into: &::tensor_fn::gpu::GpuBuf, #(#inner,)*) -> ::core::result::Result<(), ::tensor_fn::Error> {
                        let __dev = ::tensor_fn::gpu::model_device(#fname, &[#((#field_strs, self.#fields.device())),*])?;
                        #(#checks)*
                        if !__dev.is_gpu() || __into.device() != __dev {
                            return ::core::result::Result::Err(::tensor_fn::Error::Internal(::std::format!(
                                "`{}`: outputs for {} into a buffer on {}", #fname, __dev, __into.device()
                            )));
                        }
                        #gpu_into
                    }

                    #[doc(hidden)]
                    #[allow(unused_variables, unused_mut, unused_parens, non_snake_case, clippy::all)]
                    #vis fn #name<#(#lifetimes),*>(#recv, __flat: &mut [#t], __rank: usize, #(#outer),*) -> ::core::result::Result<(), ::tensor_fn::Error> {
                        #draw
                        self.#imp(__flat, #(#pass,)*)
                    }

                    #[doc(hidden)]
                    #[allow(unused_variables, unused_mut, unused_parens, non_snake_case, clippy::all)]
                    fn #imp(#recv, __flat: &mut [#t], #(#inner,)*) -> ::core::result::Result<(), ::tensor_fn::Error> {
                        let __dev = ::tensor_fn::gpu::model_device(#fname, &[#((#field_strs, self.#fields.device())),*])?;
                        #(#checks)*
                        if __dev.is_gpu() {
                            return ::core::result::Result::Err(::tensor_fn::Error::Internal(::std::format!(
                                "`{}` on {}: a model on a GPU writes its outputs to the device", #fname, __dev
                            )));
                        }
                        #body
                    }
                };
            }
            let lazy_doc = format!(
                " [`{name}`](Self::{name}) without waiting: on a GPU it returns once the work \
                 is queued, and the outputs are copied back when the returned `Lazy` is read \
                 (on the CPU it runs to the end). Queue many steps, read their costs later."
            );
            quote! {
                #attrs
                #vis fn #name<#(#lifetimes),*>(#recv, #(#outer),*) -> ::core::result::Result<#ret, ::tensor_fn::Error> {
                    #draw
                    self.#imp(#(#pass,)* ::tensor_fn::gpu::Mode::Wait)?.get()
                }

                #[doc = #lazy_doc]
                #[allow(clippy::all)]
                #vis fn #lazy<#(#lifetimes),*>(#recv, #(#outer),*) -> ::core::result::Result<::tensor_fn::gpu::Lazy<#ret>, ::tensor_fn::Error> {
                    #draw
                    self.#imp(#(#pass,)* ::tensor_fn::gpu::Mode::Lazy)
                }

                #[doc(hidden)]
                #[allow(unused_variables, unused_mut, unused_parens, non_snake_case, clippy::all)]
                fn #imp(#recv, #(#inner,)* __mode: ::tensor_fn::gpu::Mode) -> ::core::result::Result<::tensor_fn::gpu::Lazy<#ret>, ::tensor_fn::Error> {
                    let __dev = ::tensor_fn::gpu::model_device(#fname, &[#((#field_strs, self.#fields.device())),*])?;
                    #(#checks)*
                    if __dev.is_gpu() {
                        #gpu
                    }
                    let __v: ::core::result::Result<#ret, ::tensor_fn::Error> = { #body };
                    ::core::result::Result::Ok(::tensor_fn::gpu::Lazy::ready(__v?))
                }
            }
        }
    }
}

/// With `#[nan_guard]`, the checks after kernel `ki`: every buffer it wrote, in the order of
/// the nodes it computed, is scanned for NaN or Inf, and the first hit returns
/// `Error::NanGuard` naming the node (`%12 (softplus)`). Without the attribute, nothing.
fn nan_guard(f: &Function, s: &Schedule, k: &Kernel, ki: usize) -> TokenStream {
    if !f.options.nan_guard {
        return TokenStream::new();
    }
    let writes: Vec<(usize, crate::ir::NodeId)> = match k {
        Kernel::Gemm(m) => vec![(m.c.buf, m.node)],
        // A fused pooling after a convolution is written too; a fused pooling gradient is not.
        Kernel::Call(c) => match c.fused.as_deref() {
            Some(f) if matches!(f.op, CallOp::Pool { .. }) => {
                vec![(c.out, c.node), (f.out, f.node)]
            }
            _ => vec![(c.out, c.node)],
        },
        Kernel::Loop(l) => l
            .written
            .iter()
            .copied()
            .zip(l.nodes.iter().copied())
            .collect(),
    };
    let function = &f.name;
    let checks = writes.iter().map(|(b, node)| {
        let id = buf_ident(s, *b);
        let node = format!("%{} ({})", node.0, crate::text::op_text(&f.graph, *node));
        quote! {
            if let ::core::option::Option::Some(__ix) = #id[..].iter().position(|__x| !__x.is_finite()) {
                return ::core::result::Result::Err(::tensor_fn::Error::NanGuard {
                    function: #function, kernel: #ki, node: #node, index: __ix,
                });
            }
        }
    });
    quote!(#(#checks)*)
}

fn strides(g: &Graph, v: &MatView) -> (TokenStream, TokenStream) {
    if v.trans {
        let rows = dim_expr(g, v.rows);
        (quote!(1isize), quote!((#rows) as isize))
    } else {
        let cols = dim_expr(g, v.cols);
        (quote!((#cols) as isize), quote!(1isize))
    }
}

/// A GEMM scale as an expression of the function's scalars: `-1.0 * __a3 * 2.0`.
fn scale_expr(g: &Graph, scale: &Scale, dt: DType) -> TokenStream {
    let t = scalar_ty(dt);
    let mut e = num_lit(scale.sign, dt);
    for f in &scale.factors {
        let x = match f {
            Instr::Arg(v) => {
                let a = format_ident!("__a{}", v);
                quote!(#a)
            }
            Instr::Const(c) => num_lit(*c, dt),
            Instr::DimSize(d) => {
                let de = dim_expr(g, *d);
                quote!((#de as #t))
            }
            other => unreachable!("GEMM scales are arguments, constants and dims: {other:?}"),
        };
        e = quote!(#e * #x);
    }
    e
}

fn emit_gemm(g: &Graph, s: &Schedule, m: &Gemm, i: usize, dt: DType) -> TokenStream {
    let (a, b, c) = (
        buf_ident(s, m.a.buf),
        buf_ident(s, m.b.buf),
        buf_ident(s, m.c.buf),
    );
    let alpha = scale_expr(g, &m.alpha, dt);
    let mut beta = num_lit(m.beta, dt);
    for term in &m.beta_terms {
        let x = scale_expr(g, term, dt);
        beta = quote!(#beta + #x);
    }
    let (rsa, csa) = strides(g, &m.a);
    let (rsb, csb) = strides(g, &m.b);
    let (rsc, csc) = strides(g, &m.c);
    let (mm, kk, nn) = (dim_expr(g, m.m), dim_expr(g, m.k), dim_expr(g, m.n));
    let note = format!("k{i}: gemm");
    let Some((a2v, b2v, k2, _)) = m.also.as_deref() else {
        return quote! {
            let _ = #note;
            ::tensor_fn::__private::gemm(#mm, #kk, #nn, #alpha, &#a[..], #rsa, #csa, &#b[..], #rsb, #csb, #beta, &mut #c[..], #rsc, #csc)?;
        };
    };
    let (a2, b2) = (buf_ident(s, a2v.buf), buf_ident(s, b2v.buf));
    let (rsa2, csa2) = strides(g, a2v);
    let (rsb2, csb2) = strides(g, b2v);
    let k2 = dim_expr(g, *k2);
    if m.b.trans || b2v.trans || m.c.trans {
        // Not the layout of the one-pass kernel: the two products one after the other.
        return quote! {
            let _ = #note;
            ::tensor_fn::__private::gemm(#mm, #kk, #nn, #alpha, &#a[..], #rsa, #csa, &#b[..], #rsb, #csb, #beta, &mut #c[..], #rsc, #csc)?;
            ::tensor_fn::__private::gemm(#mm, #k2, #nn, #alpha, &#a2[..], #rsa2, #csa2, &#b2[..], #rsb2, #csb2, 1.0, &mut #c[..], #rsc, #csc)?;
        };
    }
    quote! {
        let _ = #note;
        ::tensor_fn::__private::gemm_pair(
            #mm, #nn, #alpha,
            (#kk, &#a[..], #rsa, #csa, &#b[..], #rsb),
            (#k2, &#a2[..], #rsa2, #csa2, &#b2[..], #rsb2),
            #beta, &mut #c[..], #rsc,
        )?;
    }
}

/// A library kernel: convolution and pooling from the runtime, for the function's float type.
fn emit_call(g: &Graph, s: &Schedule, c: &CallKernel, i: usize) -> TokenStream {
    let n = dim_expr(g, c.n);
    let a: Vec<Ident> = c.args.iter().map(|b| buf_ident(s, *b)).collect();
    let out = buf_ident(s, c.out);
    let note = format!("k{i}: {}", crate::ir::op_name(crate::ir::Op::Call(c.op)));
    let shape = |geom: &ConvGeom| {
        let [cc, h, w, k, fh, fw] = [geom.c, geom.h, geom.w, geom.k, geom.fh, geom.fw]
            .map(|v| Literal::usize_unsuffixed(v as usize));
        quote!(::tensor_fn::__private::conv::ConvShape { n: #n, c: #cc, h: #h, w: #w, k: #k, fh: #fh, fw: #fw })
    };
    let win = |w: (u8, u8)| {
        let (ph, pw) = (
            Literal::usize_unsuffixed(w.0 as usize),
            Literal::usize_unsuffixed(w.1 as usize),
        );
        quote!((#ph, #pw))
    };
    let call = match (c.op, c.fused.as_deref()) {
        (CallOp::Conv { flip, geom }, Some(p)) => {
            let CallOp::Pool { win: w, .. } = p.op else {
                unreachable!("a convolution fuses its pooling")
            };
            let sh = shape(&geom);
            let (x, f) = (&a[0], &a[1]);
            let (wn, pooled) = (win(w), buf_ident(s, p.out));
            quote!(::tensor_fn::__private::conv::conv2d_im2col_pool(&#sh, &#x[..], &#f[..], #flip, &mut #out[..], #wn, &mut #pooled[..]);)
        }
        (CallOp::ConvGradFilter { flip, geom }, Some(p)) => {
            let CallOp::PoolGrad { win: w, .. } = p.op else {
                unreachable!("a filter gradient fuses a pooling gradient")
            };
            let sh = shape(&geom);
            let x = &a[0];
            let (maps, gp) = (buf_ident(s, p.args[0]), buf_ident(s, p.args[1]));
            let wn = win(w);
            quote!(::tensor_fn::__private::conv::conv2d_grad_filter_pooled(&#sh, &#x[..], #flip, &#maps[..], #wn, &#gp[..], &mut #out[..]);)
        }
        (_, Some(_)) => unreachable!("only convolutions fuse poolings"),
        (CallOp::Conv { flip, geom }, None) => {
            let sh = shape(&geom);
            let (x, f) = (&a[0], &a[1]);
            quote!(::tensor_fn::__private::conv::conv2d_im2col(&#sh, &#x[..], &#f[..], #flip, &mut #out[..]);)
        }
        (CallOp::ConvGradInput { flip, geom }, None) => {
            let sh = shape(&geom);
            let (gy, f) = (&a[0], &a[1]);
            quote!(::tensor_fn::__private::conv::conv2d_grad_input(&#sh, &#f[..], #flip, &#gy[..], &mut #out[..]);)
        }
        (CallOp::ConvGradFilter { flip, geom }, None) => {
            let sh = shape(&geom);
            let (x, gy) = (&a[0], &a[1]);
            quote!(::tensor_fn::__private::conv::conv2d_grad_filter(&#sh, &#x[..], #flip, &#gy[..], &mut #out[..]);)
        }
        (CallOp::Pool { planes, h, w, win }, None)
        | (CallOp::PoolGrad { planes, h, w, win }, None) => {
            let [planes, h, w] = [planes, h, w].map(|v| Literal::usize_unsuffixed(v as usize));
            let (ph, pw) = (
                Literal::usize_unsuffixed(win.0 as usize),
                Literal::usize_unsuffixed(win.1 as usize),
            );
            let x = &a[0];
            if matches!(c.op, CallOp::Pool { .. }) {
                quote!(::tensor_fn::__private::conv::max_pool(#n * #planes, #h, #w, (#ph, #pw), &#x[..], &mut #out[..]);)
            } else {
                let gy = &a[1];
                quote!(::tensor_fn::__private::conv::max_pool_backward(#n * #planes, #h, #w, (#ph, #pw), &#x[..], &#gy[..], &mut #out[..]);)
            }
        }
    };
    quote! {
        let _ = #note;
        #call
    }
}

/// The CPU cost of one draw in `split_saving`'s units: a Philox block (about 10 multiplies
/// and 30 other integer ops) plus the conversion (Box-Muller's log, cosine and square root).
fn random_cost(kind: RandKind) -> usize {
    match kind {
        RandKind::Binomial | RandKind::Uniform => 40,
        RandKind::Normal => 120,
    }
}

/// Loop nest levels: 0 = invariant, 1 = depends on the outer index, 2 = on the inner one.
fn levels(l: &LoopKernel) -> Vec<u8> {
    let mut lv = Vec::with_capacity(l.instrs.len());
    for ins in &l.instrs {
        let v = match ins {
            Instr::Load { index, .. } => index
                .iter()
                .map(|i| match i {
                    Ix::Outer => 1,
                    Ix::Inner => 2,
                    Ix::Zero => 0,
                })
                .max()
                .unwrap_or(0),
            Instr::Arg(_) | Instr::Const(_) | Instr::DimSize(_) => 0,
            Instr::Unary(_, a) => lv[*a],
            Instr::Binary(_, a, b) => std::cmp::max(lv[*a], lv[*b]),
            Instr::Index(ix) => match ix {
                Ix::Outer => 1,
                Ix::Inner => 2,
                Ix::Zero => 0,
            },
            Instr::Select(c, a, b) => lv[*c].max(lv[*a]).max(lv[*b]),
            // Keyed by the point's flat index: at the innermost level of any loop.
            Instr::Random { .. } => {
                if l.dims.is_empty() {
                    0
                } else {
                    2
                }
            }
        };
        lv.push(v);
    }
    lv
}

/// The length of a loop kernel's inner loop (1 for a rank-0 kernel).
fn inner_len_expr(g: &Graph, l: &LoopKernel) -> TokenStream {
    l.dims
        .last()
        .map(|d| dim_expr(g, *d))
        .unwrap_or(quote!(1usize))
}

/// (sigmoid, softplus) instruction pairs of one value: emitted as one call that shares the
/// exponential.
fn sigmoid_softplus_pairs(l: &LoopKernel) -> Vec<(ValId, ValId)> {
    let mut out = Vec::new();
    for (si, ins) in l.instrs.iter().enumerate() {
        let Instr::Unary(Unary::Sigmoid, a) = ins else {
            continue;
        };
        let twin = l
            .instrs
            .iter()
            .position(|x| *x == Instr::Unary(Unary::Softplus, *a));
        if let Some(pi) = twin {
            out.push((si, pi));
        }
    }
    out
}

fn ix_expr(i: Ix) -> TokenStream {
    match i {
        Ix::Outer => quote!(__i),
        Ix::Inner => quote!(__j),
        Ix::Zero => quote!(0usize),
    }
}

/// How a rank-2 loop kernel's chunk sees a buffer it writes.
enum Part {
    /// Rows of `len` elements each (stores: the inner length; row reductions: 1): the chunk
    /// gets its own rows.
    Rows(TokenStream),
    /// A whole reduction result of `len` elements (column reductions: the inner length;
    /// reductions over everything: 1): chunk 0 writes the output, the others a partial in
    /// scratch that the caller folds in afterwards.
    Partial { len: TokenStream, kind: RedKind },
}

/// A loop kernel as two functions, one compiled for AVX-512 and one for the baseline CPU,
/// picked at run time: the transcendental math in the body then runs 16 lanes wide where the
/// machine allows, whatever target the user's crate is built for.
///
/// Rank-2 kernels also take a row range `__lo..__hi` and split their rows across the runtime's
/// thread pool when that pays (`split_saving`, `loop_chunks`); in one chunk they run exactly
/// as they did before splitting existed.
fn emit_loop(g: &Graph, s: &Schedule, l: &LoopKernel, dt: DType, ki: usize) -> TokenStream {
    let t = scalar_ty(dt);
    let body = loop_body(g, s, l, dt, ki);
    let rank = l.dims.len();
    let inner_len = inner_len_expr(g, l);
    // Everything the body names becomes a parameter: buffers, dims and scalar arguments.
    let mut reads: Vec<usize> = Vec::new();
    let mut writes: Vec<(usize, Part)> = Vec::new();
    let mut args: Vec<u32> = Vec::new();
    let mut dims: Vec<Dim> = l.dims.clone();
    for ins in &l.instrs {
        match ins {
            Instr::Load { buf, .. } if !reads.contains(buf) => reads.push(*buf),
            Instr::Random { stream, .. } if !reads.contains(stream) => reads.push(*stream),
            Instr::Arg(v) if !args.contains(v) => args.push(*v),
            Instr::DimSize(d) => dims.push(*d),
            _ => {}
        }
    }
    for (_, b) in &l.stores {
        writes.push((*b, Part::Rows(inner_len.clone())));
    }
    // An update loop that writes its parameter in place reads it through its store row.
    reads.retain(|b| !l.stores.iter().any(|(_, x)| x == b));
    for r in &l.reductions {
        // Mirrors `loop_body`: with rank 2, axis 0 folds the rows, axis 1 each row.
        let part = match r.axis {
            Axis::One(0) => Part::Partial {
                len: inner_len.clone(),
                kind: r.kind,
            },
            Axis::One(1) => Part::Rows(quote!(1usize)),
            Axis::One(_) | Axis::All => Part::Partial {
                len: quote!(1usize),
                kind: r.kind,
            },
        };
        writes.push((r.out, part));
    }
    for b in reads.iter().chain(writes.iter().map(|(b, _)| b)) {
        dims.extend(s.bufs[*b].ty.shape.iter().copied());
    }
    let mut syms: Vec<u32> = dims
        .iter()
        .filter_map(|d| match d {
            Dim::Sym(x) => Some(*x),
            Dim::Static(_) => None,
        })
        .collect();
    syms.sort_unstable();
    syms.dedup();
    let mut params = Vec::new();
    let mut call = Vec::new();
    // The call inside a chunk: written buffers are the chunk's parts, bound to the same names.
    let mut chunk_call = Vec::new();
    let mut names = Vec::new();
    for b in &reads {
        let id = buf_ident(s, *b);
        let e = buf_elem(s, *b, &t);
        names.push(id.clone());
        params.push(quote!(#id: &[#e]));
        call.push(quote!(&#id[..]));
        chunk_call.push(quote!(&#id[..]));
    }
    for (b, _) in &writes {
        let id = buf_ident(s, *b);
        let e = buf_elem(s, *b, &t);
        names.push(id.clone());
        params.push(quote!(#id: &mut [#e]));
        call.push(quote!(&mut #id[..]));
        chunk_call.push(quote!(#id));
    }
    for v in &args {
        let id = format_ident!("__a{}", v);
        names.push(id.clone());
        params.push(quote!(#id: #t));
        call.push(quote!(#id));
        chunk_call.push(quote!(#id));
    }
    for sym in &syms {
        let id = format_ident!("__d_{}", g.syms[*sym as usize]);
        names.push(id.clone());
        params.push(quote!(#id: usize));
        call.push(quote!(#id));
        chunk_call.push(quote!(#id));
    }
    let fast = format_ident!("__k{}_avx512", ki);
    let base = format_ident!("__k{}_base", ki);
    if rank != 2 {
        return quote! {
            {
                #[allow(unused_variables, unused_mut, unused_parens, non_snake_case, clippy::all)]
                #[cfg(target_arch = "x86_64")]
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
                unsafe fn #fast(#(#params),*) #body
                #[allow(unused_variables, unused_mut, unused_parens, non_snake_case, clippy::all)]
                #[inline(always)]
                fn #base(#(#params),*) #body
                #[cfg(target_arch = "x86_64")]
                {
                    if ::tensor_fn::__private::has_avx512() {
                        // SAFETY: the CPU has every feature the function was compiled for.
                        unsafe { #fast(#(#call),*) }
                    } else {
                        #base(#(#call),*)
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                #base(#(#call),*)
            }
        };
    }
    // Rank 2: a third function picks the version, called once or once per chunk.
    let kernel = format_ident!("__k{}", ki);
    let rows = dim_expr(g, l.dims[0]);
    let saving = split_saving(s, l);
    let run = if saving == 0 {
        quote!(#kernel(#(#call,)* 0usize, #rows);)
    } else {
        let saving = Literal::usize_unsuffixed(saving);
        let chunked = chunked_call(s, &writes, &chunk_call, &kernel, dt);
        quote! {
            let __rows: usize = #rows;
            let __saving = (__rows * #inner_len).saturating_mul(#saving);
            let __t: usize = ::tensor_fn::__private::loop_chunks(__rows, __saving);
            if __t == 1 {
                #kernel(#(#call,)* 0usize, __rows);
            } else {
                #chunked
            }
        }
    };
    quote! {
        {
            #[allow(unused_variables, unused_mut, unused_parens, non_snake_case, clippy::all)]
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
            unsafe fn #fast(#(#params,)* __lo: usize, __hi: usize) #body
            #[allow(unused_variables, unused_mut, unused_parens, non_snake_case, clippy::all)]
            #[inline(always)]
            fn #base(#(#params,)* __lo: usize, __hi: usize) #body
            #[allow(unused_variables, unused_mut, unused_parens, non_snake_case, clippy::all)]
            fn #kernel(#(#params,)* __lo: usize, __hi: usize) {
                #[cfg(target_arch = "x86_64")]
                {
                    if ::tensor_fn::__private::has_avx512() {
                        // SAFETY: the CPU has every feature the function was compiled for.
                        unsafe { #fast(#(#names,)* __lo, __hi) }
                    } else {
                        #base(#(#names,)* __lo, __hi)
                    }
                }
                #[cfg(not(target_arch = "x86_64"))]
                #base(#(#names,)* __lo, __hi)
            }
            #run
        }
    }
}

/// What splitting a loop kernel's rows across two threads saves per point of its iteration
/// space, in units of about 0.025 ns (one vector add per point on the machine measured): half
/// its compute, less what a store into a returned array costs. Those arrays were just zeroed
/// by the calling thread, so the rows another thread writes first move between the cores'
/// caches; a kernel of light arithmetic into one (`a * b + a`) ran 3x slower split. Stores
/// into the workspace count nothing: its rows are already spread over the cores by the split
/// GEMMs around the kernel. `loop_chunks` splits a kernel when the saving covers the
/// fork-join's fixed cost; 0 means never, and the emitter then leaves the split out.
/// Measured single-threaded: a load costs about 2 units, an op what its row in the op table
/// says (`Unary::cpu_cost`: an add 1, a division 4, `exp` 20, `tanh` 300), a store into a
/// fresh array 15.
fn split_saving(s: &Schedule, l: &LoopKernel) -> usize {
    let lv = levels(l);
    let cost = |ins: &Instr| -> usize {
        match ins {
            Instr::Load { .. } => 2,
            Instr::Arg(_) | Instr::Const(_) | Instr::DimSize(_) => 0,
            Instr::Unary(u, _) => u.cpu_cost(),
            Instr::Binary(b, ..) => b.cpu_cost(),
            Instr::Index(_) | Instr::Select(..) => 1,
            Instr::Random { kind, .. } => random_cost(*kind),
        }
    };
    // An argmax over the rows or over everything has no partials to fold: never split.
    if l.reductions
        .iter()
        .any(|r| r.kind == RedKind::ArgMax && r.axis != Axis::One(1))
    {
        return 0;
    }
    // Only what runs at every point counts: values of one row are computed once per row.
    let compute: usize = l
        .instrs
        .iter()
        .zip(&lv)
        .filter(|(_, &level)| level == 2)
        .map(|(ins, _)| cost(ins))
        .sum::<usize>()
        + l.reductions.len();
    let fresh = l
        .stores
        .iter()
        .filter(|(_, b)| matches!(s.bufs[*b].kind, BufKind::Output(_)))
        .count();
    (compute / 2).saturating_sub(15 * fresh)
}

/// A rank-2 loop kernel run as `__t` chunks on the thread pool: chunk `c` computes rows
/// `[c * __rows / __t, (c + 1) * __rows / __t)` into its rows of each row-split buffer and
/// into its own partial of each column or whole reduction; the caller then folds the partials
/// into the outputs in chunk order, so results depend on the thread count, not on scheduling.
fn chunked_call(
    s: &Schedule,
    writes: &[(usize, Part)],
    call: &[TokenStream],
    kernel: &Ident,
    dt: DType,
) -> TokenStream {
    let t = scalar_ty(dt);
    // Each chunk after the first keeps its partials in scratch: `__per` elements, one slot per
    // partial at these offsets.
    let mut offset = quote!(0usize);
    let mut wrap = Vec::new();
    let mut take = Vec::new();
    let mut folds = Vec::new();
    for (k, (b, part)) in writes.iter().enumerate() {
        let id = buf_ident(s, *b);
        let w = format_ident!("__w{}", k);
        wrap.push(quote!(let #w = ::tensor_fn::__private::Disjoint::new(&mut #id[..]);));
        match part {
            Part::Rows(len) => {
                let e = buf_elem(s, *b, &t);
                take.push(quote! {
                    // SAFETY: chunks get disjoint row ranges of this buffer, which stays
                    // borrowed mutably by the `Disjoint` until `run_chunks` has returned.
                    let #id: &mut [#e] = unsafe { #w.range(__lo * #len, __hi * #len) };
                })
            }
            Part::Partial { len, kind } => {
                take.push(quote! {
                    let #id: &mut [#t] = if __c == 0 {
                        // SAFETY: only chunk 0 writes this output while the chunks run.
                        unsafe { #w.range(0, #len) }
                    } else {
                        let __at = (__c - 1) * __per + #offset;
                        // SAFETY: chunk `__c` alone owns scratch slot `__c - 1`, and the
                        // partials' offsets within a slot do not overlap.
                        unsafe { __scratch.range(__at, __at + #len) }
                    };
                });
                let combine = match kind {
                    RedKind::Sum => quote!(*__o += *__p;),
                    RedKind::Max => {
                        quote!(*__o = ::tensor_fn::__private::scalar::maximum(*__o, *__p);)
                    }
                    RedKind::ArgMax => {
                        unreachable!("an argmax kernel with partials is never split")
                    }
                };
                folds.push(quote! {
                    let __at = (__c - 1) * __per + #offset;
                    for (__o, __p) in #id[..#len].iter_mut().zip(&__scr[__at..][..#len]) {
                        #combine
                    }
                });
                offset = quote!(#offset + #len);
            }
        }
    }
    let run = quote! {
        #(#wrap)*
        ::tensor_fn::__private::run_chunks(__t, &|__c: usize| {
            let (__lo, __hi) = (__c * __rows / __t, (__c + 1) * __rows / __t);
            #(#take)*
            #kernel(#(#call,)* __lo, __hi);
        });
    };
    if folds.is_empty() {
        return run;
    }
    // Scratch of its own per kernel, kept per thread: it grows on the first call and is reused.
    quote! {
        ::std::thread_local! {
            static __SCRATCH: ::core::cell::RefCell<::std::vec::Vec<#t>> =
                const { ::core::cell::RefCell::new(::std::vec::Vec::new()) };
        }
        __SCRATCH.with_borrow_mut(|__scr| {
            let __per: usize = #offset;
            let __need = __per * (__t - 1);
            if __scr.len() < __need {
                __scr.resize(__need, 0.0);
            }
            {
                let __scratch = ::tensor_fn::__private::Disjoint::new(&mut __scr[..__need]);
                #run
            }
            for __c in 1..__t {
                #(#folds)*
            }
        });
    }
}

/// The body of a loop kernel. Rank 2 iterates rows `__lo..__hi`: reads index whole buffers,
/// while written buffers hold only those rows (row `__i` is `__i - __lo`) or, for column and
/// whole reductions, a result of the chunk's rows alone.
fn loop_body(g: &Graph, s: &Schedule, l: &LoopKernel, dt: DType, ki: usize) -> TokenStream {
    let t = scalar_ty(dt);
    let lv = levels(l);
    let rank = l.dims.len();
    let inner_len = inner_len_expr(g, l);
    let pairs = sigmoid_softplus_pairs(l);
    let mut pre = [Vec::new(), Vec::new(), Vec::new()];
    let mut row_slices = [Vec::new(), Vec::new(), Vec::new()];
    for (vi, ins) in l.instrs.iter().enumerate() {
        let v = format_ident!("__v{}", vi);
        let e = match ins {
            // A parameter its update loop writes in place: read at the element being written,
            // through the store's row, before the store (`schedule::update_loops_in_place`).
            Instr::Load { buf, .. } if l.stores.iter().any(|(_, x)| x == buf) => {
                let k = l
                    .stores
                    .iter()
                    .position(|(_, x)| x == buf)
                    .expect("found above");
                let row = format_ident!("__st{}", k);
                pre[2].push(quote!(let #v: #t = #row[__j];));
                continue;
            }
            Instr::Load { buf, index } => {
                let id = buf_ident(s, *buf);
                let shape = &s.bufs[*buf].ty.shape;
                // Contiguous along the inner index: hoist a row slice of exactly the inner length.
                let inner_pos = index.iter().position(|x| *x == Ix::Inner);
                let stride_of = |k: usize| -> TokenStream {
                    let rest: Vec<TokenStream> =
                        shape[k + 1..].iter().map(|d| dim_expr(g, *d)).collect();
                    quote!((1usize #(* #rest)*))
                };
                let offset = |skip_inner: bool| -> TokenStream {
                    let terms: Vec<TokenStream> = index
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| !(skip_inner && **x == Ix::Inner) && **x != Ix::Zero)
                        .map(|(k, x)| {
                            let ix = ix_expr(*x);
                            let st = stride_of(k);
                            quote!(#ix * #st)
                        })
                        .collect();
                    quote!(0usize #(+ #terms)*)
                };
                let e = buf_elem(s, *buf, &t);
                let read = match inner_pos {
                    Some(p) if p + 1 == shape.len() => {
                        let rs = format_ident!("__row{}", vi);
                        let base = offset(true);
                        let lvl = if index.contains(&Ix::Outer) { 1 } else { 0 };
                        row_slices[lvl].push(quote!(let #rs: &[#e] = &#id[#base..][..#inner_len];));
                        quote!(#rs[__j])
                    }
                    _ => {
                        let off = offset(false);
                        quote!(#id[#off])
                    }
                };
                // Integers (labels, indices) are computed as floats of the function's type.
                match int_storage(s, *buf) {
                    Some(_) => quote!((#read as #t)),
                    None => read,
                }
            }
            Instr::Arg(a) => {
                let a = format_ident!("__a{}", a);
                quote!(#a)
            }
            Instr::Const(c) => num_lit(*c, dt),
            Instr::DimSize(d) => {
                let de = dim_expr(g, *d);
                quote!((#de as #t))
            }
            Instr::Unary(u, a) => unary_expr(*u, format_ident!("__v{}", a)),
            Instr::Binary(b, x, y) => {
                binary_expr(*b, format_ident!("__v{}", x), format_ident!("__v{}", y))
            }
            Instr::Index(ix) => {
                let i = ix_expr(*ix);
                quote!((#i as #t))
            }
            Instr::Select(c, a, b) => {
                let (c, a, b) = (
                    format_ident!("__v{}", c),
                    format_ident!("__v{}", a),
                    format_ident!("__v{}", b),
                );
                quote!(::tensor_fn::__private::scalar::select(#c, #a, #b))
            }
            // The draw of the point's flat index in the loop (the node's own shape).
            Instr::Random {
                kind,
                site,
                stream,
                params,
            } => {
                let id = buf_ident(s, *stream);
                let flat = match rank {
                    0 => quote!(0usize),
                    1 => quote!(__j),
                    _ => quote!((__i * #inner_len + __j)),
                };
                let (p0, p1) = (
                    format_ident!("__v{}", params[0]),
                    format_ident!("__v{}", params[1]),
                );
                let rng = quote!(::tensor_fn::__private::rng);
                let w = quote!(#rng::bits(#flat as u32, #site, #id[1] as u64, #id[0] as u64));
                match kind {
                    RandKind::Binomial => quote!(#rng::binomial::<#t>(#w, #p0)),
                    RandKind::Uniform => quote!(#rng::uniform::<#t>(#w, #p0, #p1)),
                    RandKind::Normal => quote!(#rng::normal::<#t>(#w, #p0, #p1)),
                }
            }
        };
        let e = match pairs.iter().find(|(s, p)| *s == vi || *p == vi) {
            // The first of a sigmoid/softplus pair of one value computes both.
            Some(&(sv, pv)) if vi == sv.min(pv) => {
                let (sid, pid) = (format_ident!("__v{}", sv), format_ident!("__v{}", pv));
                let Instr::Unary(_, a) = l.instrs[vi] else {
                    unreachable!("pairs are unary instructions")
                };
                let a = format_ident!("__v{}", a);
                pre[lv[vi] as usize].push(quote! {
                    let (#sid, #pid): (#t, #t) = ::tensor_fn::__private::scalar::sigmoid_softplus(#a);
                });
                continue;
            }
            Some(_) => continue,
            None => e,
        };
        pre[lv[vi] as usize].push(quote!(let #v: #t = #e;));
    }
    // Stores and reductions.
    let mut store_rows = Vec::new();
    let mut inner_stmts = Vec::new();
    let mut before = Vec::new();
    let mut outer_init = Vec::new();
    let mut outer_fini = Vec::new();
    let mut after = Vec::new();
    // Row sums: (statement in the 16-lane loop, statement in the tail loop).
    let mut row_sums: Vec<(TokenStream, TokenStream)> = Vec::new();
    for (k, (v, b)) in l.stores.iter().enumerate() {
        let id = buf_ident(s, *b);
        let val = format_ident!("__v{}", v);
        let row = format_ident!("__st{}", k);
        let e = buf_elem(s, *b, &t);
        if rank == 2 {
            // Written buffers hold the chunk's rows only: row `__i` is `__i - __lo` there.
            store_rows.push(
                quote!(let #row: &mut [#e] = &mut #id[(__i - __lo) * #inner_len..][..#inner_len];),
            );
        } else {
            before.push(quote!(let #row: &mut [#e] = &mut #id[..#inner_len];));
        }
        // An integer output holds integral values: the conversion is exact.
        let val = match int_storage(s, *b) {
            Some(_) => quote!(#val as #e),
            None => quote!(#val),
        };
        inner_stmts.push(quote!(#row[__j] = #val;));
    }
    for (k, r) in l.reductions.iter().enumerate() {
        let id = buf_ident(s, r.out);
        let val = format_ident!("__v{}", r.value);
        let acc = format_ident!("__acc{}", k);
        if r.kind == RedKind::ArgMax {
            // The first maximum's index; the first NaN wins (numpy's argmax).
            let best = format_ident!("__best{}", k);
            let at = format_ident!("__at{}", k);
            let e = buf_elem(s, r.out, &t);
            // The position along the reduced axis is the inner loop's index in every shape.
            let step = quote! {
                if __j == 0 || (!#best.is_nan() && (#val > #best || #val.is_nan())) {
                    #best = #val;
                    #at = __j;
                }
            };
            let init = quote! {
                let mut #best: #t = #t::NEG_INFINITY;
                let mut #at: usize = 0;
            };
            match (rank, r.axis) {
                (2, Axis::One(1)) => {
                    outer_init.push(init);
                    inner_stmts.push(step);
                    outer_fini.push(quote!(#id[__i - __lo] = #at as #e;));
                }
                (0 | 1, _) => {
                    before.push(init);
                    inner_stmts.push(step);
                    after.push(quote!(#id[0] = #at as #e;));
                }
                _ => unreachable!(
                    "an argmax over the rows of a matrix is lowered as one of its transpose"
                ),
            }
            continue;
        }
        let init = match r.kind {
            RedKind::Sum => num_lit(0.0, dt),
            RedKind::Max => quote!(#t::NEG_INFINITY),
            RedKind::ArgMax => unreachable!("argmax is emitted above"),
        };
        let combine = |target: TokenStream| match r.kind {
            RedKind::Sum => quote!(#target += #val;),
            RedKind::Max => {
                quote!(#target = ::tensor_fn::__private::scalar::maximum(#target, #val);)
            }
            RedKind::ArgMax => unreachable!("argmax is emitted above"),
        };
        // Which iteration axis is folded: with rank 2, axis 0 = outer, 1 = inner; rank 1: inner.
        let folds_outer_only = rank == 2 && r.axis == Axis::One(0);
        let folds_inner_only = rank == 2 && r.axis == Axis::One(1);
        if folds_outer_only {
            let red = format_ident!("__red{}", k);
            before.push(quote! {
                let #red: &mut [#t] = &mut #id[..#inner_len];
                for __x in #red.iter_mut() { *__x = #init; }
            });
            inner_stmts.push(combine(quote!(#red[__j])));
        } else if folds_inner_only && r.kind == RedKind::Sum {
            // Row sums in 16 lanes, so the inner loop vectorizes (a single accumulator is a
            // chain of dependent adds); the lanes are added when the row ends.
            let lanes = format_ident!("__lanes{}", k);
            let val = format_ident!("__v{}", r.value);
            outer_init.push(quote!(let mut #lanes: [#t; 16] = [#init; 16];));
            row_sums.push((quote!(#lanes[__l] += #val;), quote!(#lanes[0] += #val;)));
            outer_fini
                .push(quote!(#id[__i - __lo] = #lanes.iter().fold(#init, |__s, __x| __s + *__x);));
        } else if folds_inner_only {
            outer_init.push(quote!(let mut #acc: #t = #init;));
            inner_stmts.push(combine(quote!(#acc)));
            outer_fini.push(quote!(#id[__i - __lo] = #acc;));
        } else if rank == 2 && r.kind == RedKind::Sum {
            // The sum of a whole matrix (a weight penalty): each row in 16 lanes as above, the
            // rows' sums added in turn.
            let lanes = format_ident!("__lanes{}", k);
            before.push(quote!(let mut #acc: #t = #init;));
            outer_init.push(quote!(let mut #lanes: [#t; 16] = [#init; 16];));
            row_sums.push((quote!(#lanes[__l] += #val;), quote!(#lanes[0] += #val;)));
            outer_fini.push(quote!(#acc += #lanes.iter().fold(#init, |__s, __x| __s + *__x);));
            after.push(quote!(#id[0] = #acc;));
        } else {
            before.push(quote!(let mut #acc: #t = #init;));
            inner_stmts.push(combine(quote!(#acc)));
            after.push(quote!(#id[0] = #acc;));
        }
    }
    let [p0, p1, p2] = pre;
    let [r0, r1, _] = row_slices;
    let inner_loop = if row_sums.is_empty() || rank != 2 {
        quote! {
            for __j in 0..#inner_len {
                #(#p2)*
                #(#inner_stmts)*
            }
        }
    } else {
        let (main, tail): (Vec<_>, Vec<_>) = row_sums.into_iter().unzip();
        quote! {
            let __n16 = #inner_len / 16 * 16;
            let mut __jj = 0usize;
            while __jj < __n16 {
                for __l in 0..16usize {
                    let __j = __jj + __l;
                    #(#p2)*
                    #(#inner_stmts)*
                    #(#main)*
                }
                __jj += 16;
            }
            for __j in __n16..#inner_len {
                #(#p2)*
                #(#inner_stmts)*
                #(#tail)*
            }
        }
    };
    let note = format!("k{ki}: loop");
    match rank {
        0 => quote! {
            {
                let _ = #note;
                let __j = 0usize;
                #(#r0)*
                #(#before)*
                #(#p0)* #(#p1)* #(#p2)*
                #(#inner_stmts)*
                #(#after)*
            }
        },
        1 => quote! {
            {
                let _ = #note;
                #(#r0)*
                #(#before)*
                #(#p0)*
                for __j in 0..#inner_len {
                    #(#p1)*
                    #(#p2)*
                    #(#inner_stmts)*
                }
                #(#after)*
            }
        },
        _ => quote! {
            {
                let _ = #note;
                #(#r0)*
                #(#before)*
                #(#p0)*
                for __i in __lo..__hi {
                    #(#r1)*
                    #(#store_rows)*
                    #(#p1)*
                    #(#outer_init)*
                    #inner_loop
                    #(#outer_fini)*
                }
                #(#after)*
            }
        },
    }
}

/// The Rust of a unary op: a call of its one definition in the kernel crate's `scalar`
/// (inlined into the loop), a power by the case of its exponent.
fn unary_expr(u: Unary, a: Ident) -> TokenStream {
    let s = quote!(::tensor_fn::__private::scalar);
    match u.pow_call() {
        Some(PowCall::Sqrt) => quote!(#s::sqrt(#a)),
        Some(PowCall::Integer(k)) => {
            let k = Literal::i32_unsuffixed(k);
            quote!(#s::powi(#a, #k))
        }
        Some(PowCall::Float(k)) => {
            let k = num_lit(k, DType::F64);
            quote!(#s::pow(#a, #k))
        }
        None => {
            let f = Ident::new(u.scalar_fn(), Span::call_site());
            quote!(#s::#f(#a))
        }
    }
}

/// The Rust of a binary op: the arithmetic operators, or a call of its definition.
fn binary_expr(b: Binary, x: Ident, y: Ident) -> TokenStream {
    match b {
        Binary::Add => quote!(#x + #y),
        Binary::Mul => quote!(#x * #y),
        Binary::Div => quote!(#x / #y),
        Binary::Maximum
        | Binary::Minimum
        | Binary::Ge
        | Binary::Eq
        | Binary::Gt
        | Binary::Lt
        | Binary::Le
        | Binary::Ne => {
            let f = Ident::new(b.scalar_fn(), Span::call_site());
            quote!(::tensor_fn::__private::scalar::#f(#x, #y))
        }
    }
}
