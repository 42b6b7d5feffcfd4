//! The order of the stages, one line each, with error barriers between them:
//! syntax -> lower (into the ir) -> simplify -> grad -> simplify -> check -> schedule -> emit.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote, ToTokens};

use crate::diag::Diagnostics;
use crate::emit::rust::{self as rs, Shape};
use crate::ir::{self, Function};
use crate::lower;
use crate::schedule::{self, Schedule};
use crate::syntax::{self, Program, TypeAst};
use crate::{check, data_parallel, flatten, grad, primitives, simplify, text};

/// A function through every stage, with the reports its `FnInfo` shows.
pub struct Compiled {
    pub f: Function,
    pub schedule: Schedule,
    pub ptx: crate::emit::ptx::Ptx,
    /// The GPU launch plan, a constant expression of type `tensor_fn::gpu::plan::GpuPlan`.
    pub gpu_plan: TokenStream,
    pub dtype: syntax::DType,
    pub rewrites: String,
    pub grads: String,
    /// The simplified graph and expressions, as text, before composite ops were expanded.
    pub graph: String,
    pub expr: String,
    /// For the two functions a `#[data_parallel]` method is split into, which part this is.
    pub part: Option<Part>,
}

/// One of the two functions of a `#[data_parallel]` method (`crate::data_parallel`).
#[derive(Debug, Clone)]
pub enum Part {
    /// Outputs then gradients into the flat buffer. `method` is the method's index,
    /// `grad_params` the parameter (var index) each gradient has the shape of, `scalars` the
    /// scalar arguments the other part takes.
    Grads {
        method: usize,
        grad_params: Vec<u32>,
        scalars: Vec<String>,
    },
    /// The updates, reading the summed gradients.
    Apply,
}

/// The macro's entry: tokens in, code (or errors plus stubs) out. Never panics on user input.
pub fn tensor_fn(input: TokenStream) -> TokenStream {
    let program = match syntax::parse(input) {
        Ok(p) => p,
        Err(e) => return e.to_compile_error(),
    };
    match compile(&program) {
        Ok(fns) => emit(&program, &fns),
        Err(diags) => {
            let errors = diags.to_compile_errors();
            let stub = stub(&program);
            match program {
                // In expression position the errors and the stub must form one expression.
                Program::Closure(_) => quote!({ #errors #stub }),
                _ => quote!(#errors #stub),
            }
        }
    }
}

/// Runs every stage up to the schedule. Errors are the user's (with spans) or internal.
pub fn compile(program: &Program) -> Result<Vec<Compiled>, Diagnostics> {
    let mut diags = Diagnostics::default();
    let mut fns: Vec<(Function, Option<Part>)> = lower::lower(program, &mut diags)
        .into_iter()
        .map(|f| (f, None))
        .collect();
    if !diags.is_empty() {
        return Err(diags);
    }
    // A data-parallel method also compiles as its two parts, after the methods.
    if let Program::Model(m) = program {
        for (i, meth) in m.methods.iter().enumerate() {
            if !meth.options.data_parallel {
                continue;
            }
            if let Some(sp) = data_parallel::split(&fns[i].0, meth, &mut diags) {
                let part = Part::Grads {
                    method: i,
                    grad_params: sp.grad_params,
                    scalars: sp.scalars,
                };
                fns.push((sp.grads, Some(part)));
                fns.push((sp.apply, Some(Part::Apply)));
            }
        }
        if !diags.is_empty() {
            return Err(diags);
        }
    }
    let mut out = Vec::new();
    for (mut f, part) in fns {
        check_one_dtype(&f, &mut diags);
        let s1 = simplify::simplify(&mut f);
        internal(&mut diags, &f, "simplify", limit(&s1))?;
        if too_deep(&mut diags, &f) {
            continue; // its gradient would be deeper still
        }
        grad::grad(&mut f).or_else(|e| internal(&mut diags, &f, "grad", Err(e)))?;
        let s2 = simplify::simplify(&mut f);
        internal(&mut diags, &f, "simplify", limit(&s2))?;
        check::check(&f).or_else(|e| internal(&mut diags, &f, "check", Err(e)))?;
        if too_deep(&mut diags, &f) {
            continue;
        }
        let (graph, expr) = (text::graph_text(&f), text::expr_text(&f));
        let grads = f
            .grads
            .iter()
            .map(|(t, n)| format!("{t} = {}\n", text::infix(&f.graph, *n)))
            .collect();
        primitives::expand(&mut f).or_else(|e| internal(&mut diags, &f, "primitives", Err(e)))?;
        if let Err((span, e)) = flatten::flatten(&mut f) {
            diags.error(span, e);
            continue;
        }
        let schedule = schedule::schedule(&f);
        let dtype = f
            .outputs
            .iter()
            .chain(f.updates.iter().map(|u| &u.1))
            .map(|n| f.graph.ty(*n).dtype)
            .next()
            .or(f.graph.vars.first().map(|v| v.ty.dtype))
            .unwrap_or(syntax::DType::F64);
        let ptx = match crate::emit::ptx::emit(&f.graph, &schedule, dtype) {
            Ok(p) => p,
            Err(e) => {
                internal(&mut diags, &f, "emit-ptx", Err(e))?;
                continue;
            }
        };
        let gpu_plan = match crate::emit::gpu::plan(&f, &schedule, &ptx.programs, dtype) {
            Ok(p) => p,
            Err(e) => {
                internal(&mut diags, &f, "emit-gpu-plan", Err(e))?;
                continue;
            }
        };
        let mut rewrites = simplify::report_text(&s1);
        rewrites.push_str(&simplify::report_text(&s2));
        out.push(Compiled {
            f,
            schedule,
            ptx,
            gpu_plan,
            dtype,
            rewrites: merge_report(&rewrites),
            grads,
            graph,
            expr,
            part,
        });
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok(out)
}

/// A chain of ops longer than `ir::MAX_DEPTH` is the user's error, reported on the op that
/// ends it: the scheduler walks fused chains recursively, on the compiler's 8 MiB stack.
fn too_deep(diags: &mut Diagnostics, f: &Function) -> bool {
    let (depth, deepest) = f.graph.depth(&f.roots());
    if depth <= ir::MAX_DEPTH {
        return false;
    }
    diags.error_help(
        f.graph.node(deepest).span,
        format!(
            "`{}` is too deep to compile: a chain of {depth} operations, more than {}",
            f.name,
            ir::MAX_DEPTH
        ),
        "split the computation into several functions",
    );
    true
}

fn limit(s: &simplify::Simplifier) -> Result<(), String> {
    if s.limit_hit {
        Err(format!(
            "the simplifier stopped after {} rewrites; the expression is too large to simplify",
            simplify::MAX_REWRITES
        ))
    } else {
        Ok(())
    }
}

fn internal(
    diags: &mut Diagnostics,
    f: &Function,
    stage: &str,
    r: Result<(), String>,
) -> Result<(), Diagnostics> {
    if let Err(e) = r {
        diags.error(
            Span::call_site(),
            format!(
                "internal error in tensor_fn! (stage `{stage}`) in `{}`: {e}\n{}",
                f.name,
                text::graph_text(f)
            ),
        );
        return Err(std::mem::take(diags));
    }
    Ok(())
}

fn check_one_dtype(f: &Function, diags: &mut Diagnostics) {
    let g = &f.graph;
    let mut roots = f.outputs.clone();
    roots.extend(f.updates.iter().map(|u| u.1));
    if let Some(first) = roots.first() {
        let d = g.ty(*first).dtype;
        for r in &roots {
            if g.ty(*r).dtype != d {
                diags.error(
                    g.node(*r).span,
                    format!(
                        "`{}` computes in {} and also in {}: a function uses one element type",
                        f.name,
                        d.name(),
                        g.ty(*r).dtype.name()
                    ),
                );
                return;
            }
        }
    }
}

/// Sums counts of rules that fired in both simplify passes, keeping first-fired order.
fn merge_report(text: &str) -> String {
    let mut rows: Vec<(String, String, usize)> = Vec::new();
    for line in text.lines() {
        let (head, tail) = line
            .split_once(" (")
            .map(|(h, t)| (h, format!(" ({t}")))
            .unwrap_or((line, String::new()));
        let Some((name, count)) = head.rsplit_once(" x") else {
            continue;
        };
        let count: usize = count.parse().unwrap_or(0);
        match rows.iter_mut().find(|r| r.0 == name) {
            Some(r) => r.2 += count,
            None => rows.push((name.to_string(), tail, count)),
        }
    }
    rows.iter()
        .map(|(n, t, c)| format!("{n} x{c}{t}\n"))
        .collect()
}

fn info_tokens(c: &Compiled) -> TokenStream {
    let name = &c.f.name;
    let signature = text::signature_text(&c.f);
    let graph = &c.graph;
    let expr = &c.expr;
    let grads = &c.grads;
    let rewrites = &c.rewrites;
    let plan = c.schedule.plan_text(&c.f.graph);
    let ptx = &c.ptx.module;
    let launches = &c.ptx.launches;
    quote! {
        ::tensor_fn::FnInfo {
            name: #name,
            signature: #signature,
            graph: #graph,
            expr: #expr,
            grads: #grads,
            rewrites: #rewrites,
            plan: #plan,
            ptx: #ptx,
            launches: #launches,
        }
    }
}

fn doc_tokens(c: &Compiled) -> Vec<TokenStream> {
    let mut lines = vec![
        format!(
            " Compiled by `tensor_fn!`: `{}`",
            text::signature_text(&c.f)
        ),
        String::new(),
        " Simplified graph:".into(),
        " ```text".into(),
    ];
    lines.extend(c.graph.lines().map(|l| format!(" {l}")));
    lines.push(" ```".into());
    if !c.grads.is_empty() {
        lines.push(" Gradients:".into());
        lines.push(" ```text".into());
        lines.extend(c.grads.lines().map(|l| format!(" {l}")));
        lines.push(" ```".into());
    }
    lines.push(" Kernel plan:".into());
    lines.push(" ```text".into());
    lines.extend(
        c.schedule
            .plan_text(&c.f.graph)
            .lines()
            .map(|l| format!(" {l}")),
    );
    lines.push(" ```".into());
    lines.into_iter().map(|l| quote!(#[doc = #l])).collect()
}

fn emit(program: &Program, fns: &[Compiled]) -> TokenStream {
    match program {
        Program::Closure(_) => {
            let c = &fns[0];
            let name = Ident::new("__tensor_fn", Span::call_site());
            let item = rs::emit_fn(
                &c.f,
                &c.schedule,
                Shape::Free {
                    name: &name,
                    vis: quote!(),
                },
                &doc_tokens(c),
            );
            let info = info_tokens(c);
            quote! {
                {
                    #item
                    ::tensor_fn::__private::Compiled::new(#name, #info)
                }
            }
        }
        Program::Equations(eqs) => {
            let mut out = TokenStream::new();
            for (eq, c) in eqs.equations.iter().zip(fns) {
                let vis = eq.vis.to_token_stream();
                let mut docs: Vec<TokenStream> =
                    eq.attrs.iter().map(|a| a.to_token_stream()).collect();
                docs.extend(doc_tokens(c));
                out.extend(rs::emit_fn(
                    &c.f,
                    &c.schedule,
                    Shape::Free {
                        name: &eq.name,
                        vis: vis.clone(),
                    },
                    &docs,
                ));
                let info = info_tokens(c);
                let name = &eq.name;
                let mod_doc = format!(" What `tensor_fn!` knows about `{name}`.");
                out.extend(quote! {
                    #[doc = #mod_doc]
                    #[allow(non_snake_case, dead_code)]
                    #vis mod #name {
                        /// The compiled function's graph, gradients, rewrites and kernel plan.
                        pub const INFO: ::tensor_fn::FnInfo = #info;
                    }
                });
            }
            out
        }
        Program::Model(m) => emit_model(m, Some(fns)),
    }
}

fn param_field_ty(t: &TypeAst) -> TokenStream {
    let s = rs::scalar_ty(t.dtype);
    let d = rs::ix_ty(t.dims.len());
    quote!(::tensor_fn::Shared<#s, #d>)
}

fn param_array_ty(t: &TypeAst) -> TokenStream {
    let s = rs::scalar_ty(t.dtype);
    let d = rs::ix_ty(t.dims.len());
    quote!(::tensor_fn::__private::ndarray::Array<#s, #d>)
}

fn ast_arg_ty(t: &TypeAst) -> TokenStream {
    let s = ast_elem_ty(t);
    match t.dims.len() {
        0 => s,
        r => {
            let d = rs::ix_ty(r);
            quote!(::tensor_fn::__private::ndarray::ArrayView<'_, #s, #d>)
        }
    }
}

/// The Rust element type of a declared type: an integer type, or the float type.
fn ast_elem_ty(t: &TypeAst) -> TokenStream {
    match t.int {
        Some(i) => rs::int_ty(i),
        None => rs::scalar_ty(t.dtype),
    }
}

fn ast_out_ty(t: &TypeAst) -> TokenStream {
    let s = ast_elem_ty(t);
    match t.dims.len() {
        0 => s,
        r => {
            let d = rs::ix_ty(r);
            quote!(::tensor_fn::__private::ndarray::Array<#s, #d>)
        }
    }
}

/// A model method's array argument type in a stub: what the compiled method takes.
fn model_arg_ty(t: &TypeAst, life: &syn::Lifetime) -> TokenStream {
    let s = ast_elem_ty(t);
    match t.dims.len() {
        0 => s,
        r => {
            let d = rs::ix_ty(r);
            quote!(impl ::core::convert::Into<::tensor_fn::Arg<#life, #s, #d>>)
        }
    }
}

/// The model's struct and impl; with `fns` None, a stub with the declared signatures.
fn emit_model(m: &syntax::ModelAst, fns: Option<&[Compiled]>) -> TokenStream {
    let name = &m.name;
    let vis = &m.vis;
    let attrs = &m.attrs;
    let fields: Vec<TokenStream> = unique_decls(&m.params)
        .map(|p| {
            let n = &p.name;
            let t = param_field_ty(&p.ty);
            let doc = format!(" Shared parameter `{}: {}`.", p.name, type_ast_str(&p.ty));
            quote!(#[doc = #doc] pub #n: #t)
        })
        .collect();
    let args: Vec<TokenStream> = unique_decls(&m.params)
        .map(|p| {
            let n = &p.name;
            let t = param_array_ty(&p.ty);
            quote!(#n: #t)
        })
        .collect();
    let inits: Vec<TokenStream> = unique_decls(&m.params)
        .map(|p| {
            let n = &p.name;
            let s = p.name.to_string();
            quote!(#n: ::tensor_fn::Shared::new(#s, #n))
        })
        .collect();
    let checks = param_checks(m);
    let field_idents: Vec<Ident> = unique_decls(&m.params).map(|p| p.name.clone()).collect();
    let field_strs: Vec<String> = field_idents.iter().map(|i| i.to_string()).collect();
    let name_str = name.to_string();
    let mut methods = Vec::new();
    let mut gpu_calls = Vec::new();
    for (i, meth) in m.methods.iter().enumerate() {
        let mvis = meth.vis.to_token_stream();
        let docs: Vec<TokenStream> = meth.attrs.iter().map(|a| a.to_token_stream()).collect();
        match fns {
            Some(fns) => {
                let c = &fns[i];
                let mut d = docs.clone();
                if !docs.is_empty() {
                    d.push(quote!(#[doc = ""]));
                }
                d.extend(doc_tokens(c));
                let cname = format_ident!("{}_INFO", meth.name.to_string().to_uppercase());
                let mname = meth.name.to_string();
                let cache = format_ident!("__tf_gpu_cache_{}", meth.name);
                gpu_calls.push(
                    quote!(#mname => ::core::option::Option::Some(#name::#cache().calls(device)),),
                );
                let item = MethodItem {
                    model: name,
                    fields: &field_idents,
                    name: &meth.name,
                    info: &cname,
                    vis: mvis,
                    mutable: meth.mutable,
                    flat: false,
                };
                methods.push(item.emit(c, &d));
                if meth.options.data_parallel {
                    methods.push(emit_data_parallel(m, i, fns, &field_idents));
                }
                let info = info_tokens(c);
                let cdoc = format!(" What `tensor_fn!` knows about `{}`.", meth.name);
                methods.push(quote!(#[doc = #cdoc] pub const #cname: ::tensor_fn::FnInfo = #info;));
            }
            None => {
                let mname = &meth.name;
                let recv = if meth.mutable {
                    quote!(&mut self)
                } else {
                    quote!(&self)
                };
                let MethodSig { ps, lifetimes, ret } = method_sig(meth);
                methods.push(quote! {
                    #(#docs)*
                    #[allow(unused_variables)]
                    #mvis fn #mname<#(#lifetimes),*>(#recv, #(#ps),*) -> ::core::result::Result<#ret, ::tensor_fn::Error> {
                        ::core::unreachable!("tensor_fn! could not compile this method")
                    }
                });
                if meth.options.data_parallel {
                    let dp = format_ident!("{}_data_parallel", mname);
                    methods.push(quote! {
                        #[allow(unused_variables)]
                        #mvis fn #dp<#(#lifetimes),*>(&mut self, comm: &mut ::tensor_fn::dist::Communicator, #(#ps),*) -> ::core::result::Result<#ret, ::tensor_fn::Error> {
                            ::core::unreachable!("tensor_fn! could not compile this method")
                        }
                    });
                }
            }
        }
    }
    quote! {
        #(#attrs)*
        #[derive(Debug, Clone)]
        #vis struct #name {
            #(#fields,)*
            /// The seed and position of the random stream the methods draw from.
            __tf_stream: ::tensor_fn::RandomStream,
        }

        impl #name {
            /// Makes the model from initial parameter values, checking them against the
            /// declared shapes (static dims, and symbolic dims shared between parameters).
            /// It takes one argument per parameter, in the declared order, however many.
            #[allow(clippy::too_many_arguments)]
            pub fn new(#(#args),*) -> ::core::result::Result<Self, ::tensor_fn::Error> {
                let __m = Self { #(#inits,)* __tf_stream: ::tensor_fn::RandomStream::default() };
                {
                    let __s = &__m;
                    #(#checks)*
                }
                ::core::result::Result::Ok(__m)
            }

            /// Moves every parameter to `device`; the methods run where the parameters live.
            /// On a GPU they stay in device memory across calls (read them with `get_value`).
            pub fn to_device(&mut self, device: ::tensor_fn::Device) -> ::core::result::Result<(), ::tensor_fn::Error> {
                #(self.#field_idents.to_device(device)?;)*
                ::core::result::Result::Ok(())
            }

            /// Restarts the random stream of the methods' `binomial`, `uniform` and `normal` at
            /// `seed`: the draws of the calls that follow are a function of the seed and of
            /// how many calls came before, the same on the CPU and on every GPU.
            pub fn seed(&mut self, seed: u64) {
                self.__tf_stream.reseed(seed);
            }

            /// The random stream's seed and the number of calls that drew from it so far:
            /// saved with a checkpoint, they let a resumed run continue the same stream
            /// ([`set_random_stream`](Self::set_random_stream)).
            pub fn random_stream(&self) -> (u64, u64) {
                self.__tf_stream.state()
            }

            /// Puts the random stream at `seed`, after `calls` calls (as `random_stream` read it).
            pub fn set_random_stream(&mut self, seed: u64, calls: u64) {
                self.__tf_stream.set(seed, calls);
            }

            /// Where the parameters live (an error if they were moved to different devices).
            pub fn device(&self) -> ::core::result::Result<::tensor_fn::Device, ::tensor_fn::Error> {
                ::tensor_fn::gpu::model_device(#name_str, &[#((#field_strs, self.#field_idents.device())),*])
            }

            /// How the GPU executor ran the method `method` on `device` so far, across every
            /// value of this model type: graph recordings, graph replays and direct launches
            /// (`None` for a name that is not a method of the model).
            pub fn gpu_calls(method: &str, device: ::tensor_fn::Device) -> ::core::option::Option<::tensor_fn::gpu::GpuCalls> {
                let _ = &device; // unused when no method compiled
                match method {
                    #(#gpu_calls)*
                    _ => ::core::option::Option::None,
                }
            }

            #(#methods)*
        }
    }
}

/// A method's declared signature as its public form takes it: the arguments (each array
/// borrowing for a lifetime of its own), those lifetimes, and the result type.
struct MethodSig {
    ps: Vec<TokenStream>,
    lifetimes: Vec<syn::Lifetime>,
    ret: TokenStream,
}

fn method_sig(meth: &syntax::MethodAst) -> MethodSig {
    let mut lifetimes = Vec::new();
    let ps = unique_decls(&meth.inputs)
        .map(|d| {
            let n = &d.name;
            let life = syn::Lifetime::new(&format!("'__tf{}", lifetimes.len()), Span::call_site());
            let ty = model_arg_ty(&d.ty, &life);
            if !d.ty.dims.is_empty() {
                lifetimes.push(life);
            }
            quote!(#n: #ty)
        })
        .collect();
    let ret = match &meth.ret {
        syntax::RetAst::Unit => quote!(()),
        syntax::RetAst::One(t) => ast_out_ty(t),
        syntax::RetAst::Tuple(ts) => {
            let ts: Vec<TokenStream> = ts.iter().map(ast_out_ty).collect();
            quote!((#(#ts),*))
        }
    };
    MethodSig { ps, lifetimes, ret }
}

/// One compiled method's items: its GPU cache, and the method with its GPU path.
struct MethodItem<'a> {
    model: &'a Ident,
    fields: &'a [Ident],
    name: &'a Ident,
    /// The `FnInfo` constant holding its PTX.
    info: &'a Ident,
    vis: TokenStream,
    mutable: bool,
    flat: bool,
}

impl MethodItem<'_> {
    fn emit(&self, c: &Compiled, docs: &[TokenStream]) -> TokenStream {
        let (model, info) = (self.model, self.info);
        let cache = format_ident!(
            "__tf_gpu_cache_{}",
            self.name.to_string().trim_start_matches('_')
        );
        let gpu_of = |into| {
            crate::emit::gpu::call(
                &c.f,
                &c.schedule,
                c.gpu_plan.clone(),
                quote!(#model::#info.ptx),
                quote!(#model::#cache()),
                &rs::scalar_ty(c.dtype),
                into,
            )
        };
        let (gpu, gpu_into) = if self.flat {
            (quote!(), gpu_of(Some(quote!(__into))))
        } else {
            (gpu_of(None), quote!())
        };
        let cache_fn = crate::emit::gpu::cache_fn(&cache);
        let method = rs::emit_fn(
            &c.f,
            &c.schedule,
            Shape::Method {
                name: self.name,
                vis: self.vis.clone(),
                mutable: self.mutable,
                gpu,
                fields: self.fields,
                flat: self.flat,
                gpu_into,
            },
            docs,
        );
        quote!(#cache_fn #method)
    }
}

/// The data-parallel form of method `i`, `<name>_data_parallel`, and its two parts: the
/// gradients into the communicator's flat buffer, one all-reduce, the updates.
fn emit_data_parallel(
    m: &syntax::ModelAst,
    i: usize,
    fns: &[Compiled],
    fields: &[Ident],
) -> TokenStream {
    let model = &m.name;
    let meth = &m.methods[i];
    let Some(gi) = fns
        .iter()
        .position(|c| matches!(&c.part, Some(Part::Grads { method, .. }) if *method == i))
    else {
        return quote!();
    };
    let (gc, ac) = (&fns[gi], &fns[gi + 1]);
    let Some(Part::Grads {
        grad_params,
        scalars,
        ..
    }) = &gc.part
    else {
        return quote!();
    };
    let upper = meth.name.to_string().to_uppercase();
    let (ginfo, ainfo) = (
        format_ident!("{}_GRADS_INFO", upper),
        format_ident!("{}_APPLY_INFO", upper),
    );
    let (gname, aname) = (
        format_ident!("__tf_dp_grads_{}", meth.name),
        format_ident!("__tf_dp_apply_{}", meth.name),
    );
    let hidden = [quote!(#[doc(hidden)])];
    let grads = MethodItem {
        model,
        fields,
        name: &gname,
        info: &ginfo,
        vis: quote!(),
        mutable: false,
        flat: true,
    }
    .emit(gc, &hidden);
    let apply = MethodItem {
        model,
        fields,
        name: &aname,
        info: &ainfo,
        vis: quote!(),
        mutable: true,
        flat: false,
    }
    .emit(ac, &hidden);
    let (gi_tok, ai_tok) = (info_tokens(gc), info_tokens(ac));
    let t = rs::scalar_ty(gc.dtype);
    let g = &gc.f.graph;

    // The wrapper's arguments: the method's own, as its public form takes them.
    let MethodSig { ps, lifetimes, ret } = method_sig(meth);
    let pass: Vec<&Ident> = unique_decls(&meth.inputs).map(|d| &d.name).collect();
    // The flat buffer: the scalar outputs, then each gradient in the shape of its parameter.
    let n_out = gc.f.outputs.len() - grad_params.len();
    let grad_fields: Vec<Ident> = grad_params
        .iter()
        .map(|&v| Ident::new(&g.vars[v as usize].name, Span::call_site()))
        .collect();
    let grad_dims: Vec<TokenStream> = grad_params
        .iter()
        .map(|&v| rs::ix_ty(g.vars[v as usize].ty.rank()))
        .collect();
    let seg = format_ident!("__seg");
    // Each gradient as its parameter's shape at `seg` of the flat buffer: `view(dim)` makes
    // the expression of one, given `seg`, `__n` and the parameter's shape.
    let views_by = |view: &dyn Fn(&TokenStream, &Ident) -> TokenStream| -> Vec<TokenStream> {
        grad_fields
            .iter()
            .zip(&grad_dims)
            .enumerate()
            .map(|(k, (field, dim))| {
                let v = format_ident!("__g{}", k);
                let e = view(dim, field);
                quote! {
                    let __n = self.#field.shape().iter().product::<usize>();
                    let #v = #e?;
                    #seg += __n;
                }
            })
            .collect()
    };
    let views = views_by(
        &|dim, field| quote!(::tensor_fn::dist::segment::<#t, #dim>(&__flat[#seg..#seg + __n], self.#field.shape())),
    );
    let views_dev = views_by(
        &|dim, field| quote!(::tensor_fn::dist::device_segment::<#t, #dim>(&__fd, #seg, self.#field.shape())),
    );
    let gvars: Vec<Ident> = (0..grad_fields.len())
        .map(|k| format_ident!("__g{}", k))
        .collect();
    let scalar_args: Vec<Ident> = scalars
        .iter()
        .map(|s| Ident::new(s, Span::call_site()))
        .collect();
    // The outputs, averaged, from the summed scalars in `src` (the host or device flat
    // buffer's head).
    let outs_of = |src: Ident| -> Vec<TokenStream> {
        (0..n_out)
            .map(|k| {
                let o = gc.f.outputs[k];
                match g.ty(o).int {
                    Some(it) => {
                        let e = rs::int_ty(it);
                        quote!((#src[#k] * __inv).round() as #e)
                    }
                    None => quote!(#src[#k] * __inv),
                }
            })
            .collect()
    };
    let outs = outs_of(format_ident!("__flat"));
    let outs_dev = outs_of(format_ident!("__head"));
    let gname_dev = format_ident!("{}_device", gname);
    let ret_of = |outs: &[TokenStream]| match &meth.ret {
        syntax::RetAst::Unit => quote!(()),
        syntax::RetAst::One(_) => quote!(#(#outs)*),
        syntax::RetAst::Tuple(_) => quote!((#(#outs),*)),
    };
    let (ret_expr, ret_dev) = (ret_of(&outs), ret_of(&outs_dev));
    let mvis = meth.vis.to_token_stream();
    let name = &meth.name;
    let dp = format_ident!("{}_data_parallel", meth.name);
    let doc = format!(
        " One data-parallel step of [`{name}`](Self::{name}) for this process's rank of \
         `comm`. Pass this rank's slice of the global minibatch (`comm.slice(rows)`): the \
         gradients of every rank are summed in one all-reduce over one flat buffer, then every \
         rank applies the same updates to the averaged gradients, so the parameters stay equal \
         on all ranks. Scalar outputs are averaged too. With equal slices this is `{name}` on \
         the whole minibatch. In a world of one it is `{name}` itself, fused, unless \
         `comm.set_stage_alone(true)` asks for the staged parts."
    );
    let ginfo_doc =
        format!(" What `tensor_fn!` knows about the gradient part of `{name}_data_parallel`.");
    let ainfo_doc =
        format!(" What `tensor_fn!` knows about the update part of `{name}_data_parallel`.");
    let n_out_lit = n_out;
    quote! {
        #grads
        #apply
        #[doc = #ginfo_doc]
        pub const #ginfo: ::tensor_fn::FnInfo = #gi_tok;
        #[doc = #ainfo_doc]
        pub const #ainfo: ::tensor_fn::FnInfo = #ai_tok;

        #[doc = #doc]
        #[allow(clippy::too_many_arguments)]
        #mvis fn #dp<#(#lifetimes),*>(&mut self, comm: &mut ::tensor_fn::dist::Communicator, #(#ps),*) -> ::core::result::Result<#ret, ::tensor_fn::Error> {
            if !comm.stages() {
                return self.#name(#(#pass),*);
            }
            let __len: usize = #n_out_lit #(+ self.#grad_fields.shape().iter().product::<usize>())*;
            let __inv: #t = 1.0 / (comm.size() as #t);
            let __dev = self.device()?;
            if __dev.is_gpu() {
                // On a GPU the gradient part writes into a device buffer. With NCCL (or alone)
                // it is summed there and the update part reads it there, so only the scalar
                // outputs come back; otherwise (MPI's buffers are host memory) it comes back
                // whole, is summed on the host, and the update part uploads it.
                let __fd = comm.take_device_flat(__dev, __len * ::core::mem::size_of::<#t>())?;
                let __r = self
                    .#gname_dev(&__fd, comm.rank(), #(#pass),*)
                    .and_then(|()| {
                        if comm.reduces_on(__dev) {
                            comm.all_reduce_sum_device(&__fd, __len, <#t as ::tensor_fn::dist::CommElem>::F64)?;
                            let __head = ::tensor_fn::dist::read_head::<#t, #n_out_lit>(&__fd)?;
                            let mut #seg = #n_out_lit;
                            #(#views_dev)*
                            return self.#aname(#(#scalar_args,)* #(#gvars,)* __inv).map(|()| __head);
                        }
                        let mut __flat = comm.take_flat::<#t>(__len);
                        ::tensor_fn::dist::read_into(&__fd, &mut __flat)?;
                        let __flat = comm.all_reduce_sum_vec(__flat)?;
                        let mut __head = [0.0 as #t; #n_out_lit];
                        __head.copy_from_slice(&__flat[..#n_out_lit]);
                        let __applied = (|| -> ::core::result::Result<(), ::tensor_fn::Error> {
                            let mut #seg = #n_out_lit;
                            #(#views)*
                            self.#aname(#(#scalar_args,)* #(#gvars,)* __inv)
                        })();
                        comm.give_flat(__flat);
                        __applied.map(|()| __head)
                    });
                comm.give_device_flat(__fd);
                let __head = __r?;
                return ::core::result::Result::Ok(#ret_dev);
            }
            let mut __flat = comm.take_flat::<#t>(__len);
            if let ::core::result::Result::Err(e) = self.#gname(&mut __flat, comm.rank(), #(#pass),*) {
                comm.give_flat(__flat);
                return ::core::result::Result::Err(e);
            }
            let __flat = comm.all_reduce_sum_vec(__flat)?;
            let __applied = (|| -> ::core::result::Result<(), ::tensor_fn::Error> {
                let mut #seg = #n_out_lit;
                #(#views)*
                self.#aname(#(#scalar_args,)* #(#gvars,)* __inv)
            })();
            let __ret = #ret_expr;
            comm.give_flat(__flat);
            __applied?;
            ::core::result::Result::Ok(__ret)
        }
    }
}

fn type_ast_str(t: &TypeAst) -> String {
    let mut s = t.dtype.name().to_string();
    if !t.dims.is_empty() {
        let d: Vec<String> = t
            .dims
            .iter()
            .map(|d| match d {
                syntax::DimAst::Static(n, _) => n.to_string(),
                syntax::DimAst::Sym(i) => i.to_string(),
            })
            .collect();
        s.push_str(&format!("[{}]", d.join(", ")));
    }
    s
}

/// Shape checks of a model's parameters, as in the methods: static dims match, a symbolic dim
/// has one size across parameters.
fn param_checks(m: &syntax::ModelAst) -> Vec<TokenStream> {
    let mut out = Vec::new();
    let mut seen: Vec<(String, String)> = Vec::new();
    for p in &m.params {
        let n = &p.name;
        let name = n.to_string();
        let tystr = type_ast_str(&p.ty);
        let sh = format_ident!("__sh_{}", n);
        out.push(quote!(let #sh = __s.#n.shape();));
        for (axis, d) in p.ty.dims.iter().enumerate() {
            match d {
                syntax::DimAst::Static(k, _) => {
                    let k = *k as usize;
                    out.push(quote! {
                        if #sh[#axis] != #k {
                            return ::core::result::Result::Err(::tensor_fn::Error::StaticDim {
                                arg: #name, ty: #tystr, axis: #axis, expected: #k, found: #sh[#axis],
                            });
                        }
                    });
                }
                syntax::DimAst::Sym(id) => {
                    let dn = id.to_string();
                    let v = format_ident!("__d_{}", dn);
                    match seen.iter().find(|(s, _)| *s == dn) {
                        None => {
                            seen.push((dn.clone(), name.clone()));
                            out.push(quote!(let #v: usize = #sh[#axis];));
                        }
                        Some((_, first)) => out.push(quote! {
                            if #sh[#axis] != #v {
                                return ::core::result::Result::Err(::tensor_fn::Error::DimConflict {
                                    dim: #dn, first_arg: #first, first: #v, second_arg: #name, second: #sh[#axis],
                                });
                            }
                        }),
                    }
                }
            }
        }
    }
    out
}

/// Declarations with their first occurrence only (a duplicate is reported already).
fn unique_decls(decls: &[syntax::Decl]) -> impl Iterator<Item = &syntax::Decl> {
    decls
        .iter()
        .enumerate()
        .filter(move |(i, d)| !decls[..*i].iter().any(|e| e.name == d.name))
        .map(|(_, d)| d)
}

/// `name: Type` parameters of a stub, from the declarations.
fn stub_params<'a>(decls: impl Iterator<Item = &'a syntax::Decl>) -> Vec<TokenStream> {
    decls
        .map(|d| {
            let n = &d.name;
            let t = ast_arg_ty(&d.ty);
            quote!(#n: #t)
        })
        .collect()
}

/// A stub's result type when the real one is unknown: a scalar of the first input's type.
fn stub_ret(decls: &[syntax::Decl]) -> TokenStream {
    rs::scalar_ty(
        decls
            .first()
            .map(|d| d.ty.dtype)
            .unwrap_or(syntax::DType::F64),
    )
}

/// Items with the declared signatures, so that a failed expansion shows our errors only.
fn stub(program: &Program) -> TokenStream {
    let never = quote!(::core::unreachable!(
        "tensor_fn! could not compile this function"
    ));
    match program {
        Program::Closure(c) => {
            let (ps, ret) = (stub_params(unique_decls(&c.inputs)), stub_ret(&c.inputs));
            quote! {
                {
                    #[allow(unused_variables)]
                    fn __tensor_fn(#(#ps),*) -> ::core::result::Result<#ret, ::tensor_fn::Error> { #never }
                    ::tensor_fn::__private::Compiled::new(__tensor_fn, ::tensor_fn::FnInfo::EMPTY)
                }
            }
        }
        Program::Equations(eqs) => {
            let (ps, ret) = (
                stub_params(unique_decls(&eqs.inputs)),
                stub_ret(&eqs.inputs),
            );
            let mut out = TokenStream::new();
            let mut seen: Vec<String> = Vec::new();
            for eq in &eqs.equations {
                let (name, vis) = (&eq.name, &eq.vis);
                if seen.contains(&name.to_string()) {
                    continue;
                }
                seen.push(name.to_string());
                out.extend(quote! {
                    #[allow(unused_variables, dead_code)]
                    #vis fn #name(#(#ps),*) -> ::core::result::Result<#ret, ::tensor_fn::Error> { #never }
                    #[allow(non_snake_case, dead_code)]
                    #vis mod #name { pub const INFO: ::tensor_fn::FnInfo = ::tensor_fn::FnInfo::EMPTY; }
                });
            }
            out
        }
        Program::Model(m) => emit_model(m, None),
    }
}
