//! Stage 1: tokens -> AST with spans.
//!
//! Three forms share one expression grammar:
//! - closure:   `|a: f64[n, m], v: f64[m]| dot(a, v)`
//! - equations: `w: f64[n, k], x: f64[k]; cost = mean(dot(w, x)); g = grad(cost, w);`
//! - model:     `struct M { w: f32[784, h] } impl M { fn train(&mut self, ...) -> f32 { ... } }`
//!
//! Math is parsed with a Pratt parser over syn's token cursor: `+ -` bind looser than `* /`,
//! unary `-` tighter than both, postfix `.T` tightest.
//!
//! `expr_source` prints an expression back as source text, for hints that quote a fix and for
//! reports like `grad(cost, w)`.

use std::fmt::Write as _;

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{braced, bracketed, parenthesized, Attribute, Ident, Token, Visibility};

use tensor_fn_kernels::op::builtin;

/// Element type of a tensor (the kernel crate's: the IR and the kernels share it).
pub use tensor_fn_kernels::ir::{DType, IntTy};

/// One dim as written: a literal size or a lower-case name.
#[derive(Debug, Clone)]
pub enum DimAst {
    Static(u64, Span),
    Sym(Ident),
}

/// A declared type: `f32`, `f64[n]`, `f32[b, 784]`.
#[derive(Debug, Clone)]
pub struct TypeAst {
    /// The float element type; for an integer type (`int`), the function's float type, which
    /// lowering fills in.
    pub dtype: DType,
    /// `i32` or `i64`: labels and indices.
    pub int: Option<IntTy>,
    pub dims: Vec<DimAst>,
    pub span: Span,
}

/// `name: type`, an input, a parameter or a struct field.
#[derive(Debug, Clone)]
pub struct Decl {
    pub name: Ident,
    pub ty: TypeAst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
}

/// A call argument: positional, or `name = value` (only `axis = k` today).
#[derive(Debug, Clone)]
pub enum Arg {
    Pos(Expr),
    Named(Ident, Expr),
}

#[derive(Debug, Clone)]
pub enum Expr {
    /// A numeric literal; `text` keeps the source spelling for messages.
    Num {
        value: f64,
        is_int: bool,
        text: String,
        span: Span,
    },
    Name(Ident),
    Neg {
        expr: Box<Expr>,
        span: Span,
    },
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
        span: Span,
    },
    Call {
        func: Ident,
        args: Vec<Arg>,
        span: Span,
    },
    /// `x.T`; `span` is the `T`.
    Transpose {
        expr: Box<Expr>,
        span: Span,
    },
    /// `(a, b)`: several outputs.
    Tuple(Vec<Expr>, Span),
    /// `true` or `false`: the value of a flag (`keepdims = true`).
    Bool(bool, Span),
    /// `x[i, j]`; `span` is the brackets. The language picks one entry per row with it:
    /// `x[arange(n), y]`.
    Index {
        base: Box<Expr>,
        items: Vec<Expr>,
        span: Span,
    },
    /// `[n, 784]`: a literal shape, the size argument of a random op.
    List(Vec<Expr>, Span),
}

impl Expr {
    /// The most specific span: the operator of a binary expression, the name of a call.
    pub fn span(&self) -> Span {
        match self {
            Expr::Num { span, .. } => *span,
            Expr::Name(i) => i.span(),
            Expr::Neg { span, .. }
            | Expr::Binary { span, .. }
            | Expr::Call { span, .. }
            | Expr::Transpose { span, .. }
            | Expr::Tuple(_, span)
            | Expr::Bool(_, span)
            | Expr::Index { span, .. }
            | Expr::List(_, span) => *span,
        }
    }

    /// The span of the whole expression, for errors about the value as a whole.
    pub fn full_span(&self) -> Span {
        match self {
            Expr::Binary { lhs, rhs, span, .. } => {
                join(join(lhs.full_span(), *span), rhs.full_span())
            }
            Expr::Neg { expr, span } => join(*span, expr.full_span()),
            Expr::Transpose { expr, span } => join(expr.full_span(), *span),
            Expr::Index { base, span, .. } => join(base.full_span(), *span),
            other => other.span(),
        }
    }
}

/// Joins two spans where the compiler allows it (nightly or same file), else the first.
pub fn join(a: Span, b: Span) -> Span {
    a.join(b).unwrap_or(a)
}

/// The source text of an expression, compactly, for reports like `grad(cost, w)`.
pub fn expr_source(e: &Expr) -> String {
    let mut s = String::new();
    write_source(e, &mut s);
    s
}

/// The source text of an expression as a whole call argument: without the outer parentheses
/// `expr_source` puts around a binary expression.
pub fn bare_source(e: &Expr) -> String {
    let s = expr_source(e);
    match e {
        Expr::Binary { .. } => s[1..s.len() - 1].to_string(),
        _ => s,
    }
}

fn write_source(e: &Expr, s: &mut String) {
    match e {
        Expr::Num { text, .. } => s.push_str(text),
        Expr::Name(i) => s.push_str(&i.to_string()),
        Expr::Neg { expr, .. } => {
            s.push('-');
            write_source(expr, s);
        }
        Expr::Binary { op, lhs, rhs, .. } => {
            s.push('(');
            write_source(lhs, s);
            let _ = write!(s, " {} ", op.symbol());
            write_source(rhs, s);
            s.push(')');
        }
        Expr::Call { func, args, .. } => {
            let _ = write!(s, "{func}(");
            for (i, a) in args.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                match a {
                    Arg::Pos(e) => write_source(e, s),
                    Arg::Named(n, e) => {
                        let _ = write!(s, "{n} = ");
                        write_source(e, s);
                    }
                }
            }
            s.push(')');
        }
        Expr::Transpose { expr, .. } => {
            write_source(expr, s);
            s.push_str(".T");
        }
        Expr::Tuple(items, _) => {
            s.push('(');
            for (i, e) in items.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                write_source(e, s);
            }
            s.push(')');
        }
        Expr::Bool(b, _) => {
            let _ = write!(s, "{b}");
        }
        Expr::Index { base, items, .. } => {
            write_source(base, s);
            write_list(items, s);
        }
        Expr::List(items, _) => write_list(items, s),
    }
}

fn write_list(items: &[Expr], s: &mut String) {
    s.push('[');
    for (i, e) in items.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        write_source(e, s);
    }
    s.push(']');
}

/// A statement of a function body.
#[derive(Debug, Clone)]
pub enum Stmt {
    /// `let name = expr;`
    Let(Ident, Expr),
    /// `param -= expr;`, `param += expr;`, `param = expr;`
    Update {
        target: Ident,
        op: UpdateOp,
        op_span: Span,
        value: Expr,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOp {
    Assign,
    Add,
    Sub,
}

/// A body: statements then an optional result expression.
#[derive(Debug, Clone)]
pub struct Body {
    pub stmts: Vec<Stmt>,
    pub result: Option<Expr>,
}

/// Options given as attributes: `#[strict]` turns off rewrites that are not IEEE-exact;
/// `#[nan_guard]` makes the CPU code check every value each kernel writes for NaN or Inf;
/// `#[data_parallel]` (model methods only) also compiles the method staged for many ranks:
/// gradients, one all-reduce, updates (`crate::data_parallel`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub strict: bool,
    pub nan_guard: bool,
    pub data_parallel: bool,
}

/// `|a: T, b: T| body`
#[derive(Debug, Clone)]
pub struct ClosureAst {
    pub options: Options,
    pub inputs: Vec<Decl>,
    pub body: Body,
    pub span: Span,
}

/// `[pub] name = expr;`
#[derive(Debug, Clone)]
pub struct Equation {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub name: Ident,
    pub expr: Expr,
}

/// `inputs; equations`
#[derive(Debug, Clone)]
pub struct EquationsAst {
    pub options: Options,
    pub inputs: Vec<Decl>,
    pub equations: Vec<Equation>,
}

/// The declared return type of a method.
#[derive(Debug, Clone)]
pub enum RetAst {
    Unit,
    One(TypeAst),
    Tuple(Vec<TypeAst>),
}

/// `fn name(&mut self, inputs) -> ret { body }`
#[derive(Debug, Clone)]
pub struct MethodAst {
    pub attrs: Vec<Attribute>,
    pub options: Options,
    pub vis: Visibility,
    pub name: Ident,
    pub mutable: bool,
    pub self_span: Span,
    pub inputs: Vec<Decl>,
    pub ret: RetAst,
    pub ret_span: Span,
    pub body: Body,
}

/// `struct Name { params } impl Name { methods }`
#[derive(Debug, Clone)]
pub struct ModelAst {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub name: Ident,
    pub params: Vec<Decl>,
    pub methods: Vec<MethodAst>,
}

#[derive(Debug, Clone)]
pub enum Program {
    Closure(ClosureAst),
    Equations(EquationsAst),
    Model(ModelAst),
}

/// Parses the macro input into one of the three forms.
pub fn parse(input: TokenStream) -> syn::Result<Program> {
    Parser::parse2(parse_program, input)
}

fn parse_program(input: ParseStream) -> syn::Result<Program> {
    let attrs = input.call(Attribute::parse_outer)?;
    if input.peek(Token![|]) {
        let options = options_outside_models(&attrs)?;
        let start = input.span();
        input.parse::<Token![|]>()?;
        let mut inputs = Vec::new();
        while !input.peek(Token![|]) {
            inputs.push(input.parse::<Decl>()?);
            if !input.peek(Token![|]) {
                input.parse::<Token![,]>()?;
            }
        }
        input.parse::<Token![|]>()?;
        let body = if input.peek(syn::token::Brace) {
            let content;
            braced!(content in input);
            parse_body(&content)?
        } else {
            Body {
                stmts: Vec::new(),
                result: Some(parse_expr(input)?),
            }
        };
        if !input.is_empty() {
            return Err(input.error("unexpected tokens after the closure body"));
        }
        return Ok(Program::Closure(ClosureAst {
            options,
            inputs,
            body,
            span: start,
        }));
    }
    let fork = input.fork();
    let _ = fork.parse::<Visibility>();
    if fork.peek(Token![struct]) {
        return parse_model(input, attrs).map(Program::Model);
    }
    let options = options_outside_models(&attrs)?;
    let mut inputs = Vec::new();
    while !input.peek(Token![;]) {
        if input.is_empty() {
            return Err(input.error(
                "expected `name: type, ...;` then equations `name = expr;`, a closure `|x: f64| ...`, or `struct`",
            ));
        }
        inputs.push(input.parse::<Decl>()?);
        if !input.peek(Token![;]) {
            input.parse::<Token![,]>()?;
        }
    }
    input.parse::<Token![;]>()?;
    let mut equations = Vec::new();
    while !input.is_empty() {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        let name: Ident = input.parse()?;
        input.parse::<Token![=]>()?;
        let expr = parse_expr(input)?;
        input.parse::<Token![;]>()?;
        equations.push(Equation {
            attrs,
            vis,
            name,
            expr,
        });
    }
    Ok(Program::Equations(EquationsAst {
        options,
        inputs,
        equations,
    }))
}

fn options_from(attrs: &[Attribute]) -> syn::Result<Options> {
    let mut o = Options::default();
    for a in attrs {
        if a.path().is_ident("strict") {
            o.strict = true;
        } else if a.path().is_ident("nan_guard") {
            o.nan_guard = true;
        } else if a.path().is_ident("data_parallel") {
            o.data_parallel = true;
        } else if !a.path().is_ident("doc") {
            let name = a
                .path()
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_else(|| "...".into());
            return Err(syn::Error::new(
                a.path().span(),
                format!(
                    "unknown attribute `#[{name}]`\n\nhelp: `tensor_fn!` understands `#[strict]`, `#[nan_guard]`, `#[data_parallel]` (on a model's methods) and doc comments"
                ),
            ));
        }
    }
    Ok(o)
}

/// The options of a closure or equations: `#[data_parallel]` needs a model's method (it
/// stages parameter updates, which only methods have).
fn options_outside_models(attrs: &[Attribute]) -> syn::Result<Options> {
    let o = options_from(attrs)?;
    if o.data_parallel {
        let a = attrs
            .iter()
            .find(|a| a.path().is_ident("data_parallel"))
            .expect("the option came from an attribute");
        return Err(syn::Error::new(
            a.path().span(),
            "`#[data_parallel]` applies to a model's methods that update parameters\n\nhelp: \
             put it on a method such as `pub fn train(&mut self, ...)` inside `struct ... impl ...`",
        ));
    }
    Ok(o)
}

fn split_attrs(attrs: Vec<Attribute>) -> syn::Result<(Vec<Attribute>, Options)> {
    let options = options_from(&attrs)?;
    let docs = attrs
        .into_iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();
    Ok((docs, options))
}

fn parse_model(input: ParseStream, attrs: Vec<Attribute>) -> syn::Result<ModelAst> {
    options_outside_models(&attrs)?;
    let (attrs, _) = split_attrs(attrs)?;
    let vis: Visibility = input.parse()?;
    input.parse::<Token![struct]>()?;
    let name: Ident = input.parse()?;
    let content;
    braced!(content in input);
    let params = content.parse_terminated(Decl::parse, Token![,])?;
    let mut methods = Vec::new();
    while !input.is_empty() {
        input.parse::<Token![impl]>()?;
        let self_ty: Ident = input.parse()?;
        if self_ty != name {
            return Err(syn::Error::new(
                self_ty.span(),
                format!("expected `impl {name}`: the block defines `{name}` only"),
            ));
        }
        let content;
        braced!(content in input);
        while !content.is_empty() {
            methods.push(parse_method(&content)?);
        }
    }
    Ok(ModelAst {
        attrs,
        vis,
        name,
        params: params.into_iter().collect(),
        methods,
    })
}

fn parse_method(input: ParseStream) -> syn::Result<MethodAst> {
    let (attrs, options) = split_attrs(input.call(Attribute::parse_outer)?)?;
    let vis: Visibility = input.parse()?;
    input.parse::<Token![fn]>()?;
    let name: Ident = input.parse()?;
    let args;
    parenthesized!(args in input);
    let amp: Token![&] = args.parse()?;
    let mutable = args.peek(Token![mut]);
    if mutable {
        args.parse::<Token![mut]>()?;
    }
    let self_tok: Token![self] = args.parse()?;
    // `&self` where spans join (nightly), else `self`: an error there reads better than on `&`.
    let self_span = amp.span.join(self_tok.span).unwrap_or(self_tok.span);
    let mut inputs = Vec::new();
    while !args.is_empty() {
        args.parse::<Token![,]>()?;
        if args.is_empty() {
            break;
        }
        inputs.push(args.parse::<Decl>()?);
    }
    let (ret, ret_span) = if input.peek(Token![->]) {
        input.parse::<Token![->]>()?;
        let span = input.span();
        if input.peek(syn::token::Paren) {
            let c;
            parenthesized!(c in input);
            let tys = c.parse_terminated(TypeAst::parse, Token![,])?;
            (RetAst::Tuple(tys.into_iter().collect()), span)
        } else {
            let t: TypeAst = input.parse()?;
            let s = t.span;
            (RetAst::One(t), s)
        }
    } else {
        (RetAst::Unit, name.span())
    };
    let content;
    braced!(content in input);
    let body = parse_body(&content)?;
    Ok(MethodAst {
        attrs,
        options,
        vis,
        name,
        mutable,
        self_span,
        inputs,
        ret,
        ret_span,
        body,
    })
}

fn parse_body(input: ParseStream) -> syn::Result<Body> {
    let mut stmts = Vec::new();
    loop {
        if input.is_empty() {
            return Ok(Body {
                stmts,
                result: None,
            });
        }
        if input.peek(Token![let]) {
            input.parse::<Token![let]>()?;
            let name: Ident = input.parse()?;
            input.parse::<Token![=]>()?;
            let e = parse_expr(input)?;
            input.parse::<Token![;]>()?;
            stmts.push(Stmt::Let(name, e));
            continue;
        }
        if input.peek(Ident) {
            let op = if input.peek2(Token![-=]) {
                Some(UpdateOp::Sub)
            } else if input.peek2(Token![+=]) {
                Some(UpdateOp::Add)
            } else if input.peek2(Token![=]) && !input.peek2(Token![==]) {
                Some(UpdateOp::Assign)
            } else {
                None
            };
            if let Some(op) = op {
                let target: Ident = input.parse()?;
                let op_span = match op {
                    UpdateOp::Sub => input.parse::<Token![-=]>()?.span(),
                    UpdateOp::Add => input.parse::<Token![+=]>()?.span(),
                    UpdateOp::Assign => input.parse::<Token![=]>()?.span,
                };
                let value = parse_expr(input)?;
                input.parse::<Token![;]>()?;
                stmts.push(Stmt::Update {
                    target,
                    op,
                    op_span,
                    value,
                });
                continue;
            }
        }
        let e = parse_expr(input)?;
        if input.is_empty() {
            return Ok(Body {
                stmts,
                result: Some(e),
            });
        }
        return Err(input.error("expected `;`: only the last expression of a body is its result"));
    }
}

impl Parse for Decl {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let name: Ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let ty: TypeAst = input.parse()?;
        Ok(Decl { name, ty })
    }
}

impl Parse for TypeAst {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let dt: Ident = input.parse()?;
        let (dtype, int) = match dt.to_string().as_str() {
            "f32" => (DType::F32, None),
            "f64" => (DType::F64, None),
            "i32" => (DType::F64, Some(IntTy::I32)),
            "i64" => (DType::F64, Some(IntTy::I64)),
            other => {
                let hint = match other {
                    "float" | "float32" | "floatX" | "fscalar" | "fvector" | "fmatrix" | "F32" => {
                        "\n\nhelp: did you mean `f32`?"
                    }
                    "double" | "float64" | "dscalar" | "dvector" | "dmatrix" | "F64" => {
                        "\n\nhelp: did you mean `f64`?"
                    }
                    "int" | "long" | "ivector" | "lvector" => "\n\nhelp: did you mean `i64`?",
                    "i8" | "i16" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" | "bool" | "f16"
                    | "bf16" => "\n\nhelp: tensors hold `f32` or `f64` numbers, or `i32` or `i64` labels; convert the data before the call",
                    _ => "",
                };
                return Err(syn::Error::new(
                    dt.span(),
                    format!("unknown element type `{other}`: expected `f32`, `f64`, `i32` or `i64`{hint}"),
                ));
            }
        };
        let mut dims = Vec::new();
        let mut span = dt.span();
        if input.peek(syn::token::Bracket) {
            let c;
            let br = bracketed!(c in input);
            span = join(dt.span(), br.span.join());
            while !c.is_empty() {
                if c.peek(syn::LitInt) {
                    let l: syn::LitInt = c.parse()?;
                    let v: u64 = l.base10_parse().map_err(|_| {
                        syn::Error::new(l.span(), "a static dim must be a non-negative integer")
                    })?;
                    dims.push(DimAst::Static(v, l.span()));
                } else if c.peek(Ident) {
                    let id: Ident = c.parse()?;
                    let s = id.to_string();
                    if !s.starts_with(|ch: char| ch.is_ascii_lowercase() || ch == '_') {
                        return Err(syn::Error::new(
                            id.span(),
                            format!(
                                "symbolic dim `{s}` must be a lower-case name, like `n` or `batch`"
                            ),
                        ));
                    }
                    dims.push(DimAst::Sym(id));
                } else {
                    return Err(c.error("expected a dim: an integer literal or a lower-case name"));
                }
                if !c.is_empty() {
                    c.parse::<Token![,]>()?;
                }
            }
            if dims.len() > 4 {
                // On the first dim past the fourth: the one to remove.
                let at = match &dims[4] {
                    DimAst::Static(_, s) => *s,
                    DimAst::Sym(id) => id.span(),
                };
                return Err(syn::Error::new(
                    at,
                    format!(
                        "tensors have rank 0 to 4, found rank {}\n\nhelp: merge axes into one, as in `f32[b, 784]` for 28 x 28 images",
                        dims.len()
                    ),
                ));
            }
            if dims.len() > 2 {
                // Rank 3 and 4 are batches of images: the batch may be a name, the image's
                // own dims are fixed (the kernels see them as one row of known length).
                if let Some(DimAst::Sym(id)) =
                    dims[1..].iter().find(|d| matches!(d, DimAst::Sym(_)))
                {
                    return Err(syn::Error::new(
                        id.span(),
                        format!(
                            "in a tensor of rank {}, only the first dim may be a name, found `{id}`\n\nhelp: give the channels and image size as integers, as in `f32[n, 1, 28, 28]`",
                            dims.len()
                        ),
                    ));
                }
            }
        }
        Ok(TypeAst {
            dtype,
            int,
            dims,
            span,
        })
    }
}

/// Parses one math expression (no trailing tokens consumed beyond it).
pub fn parse_expr(input: ParseStream) -> syn::Result<Expr> {
    parse_bp(input, 0)
}

/// How deeply an expression may nest (parentheses, calls, unary minus, `.T`). The parser and
/// the lowering recurse once per level, a few KiB each, and the compiler runs the macro on an
/// 8 MiB stack: past the limit, an error instead of a crash.
pub const MAX_NESTING: u32 = 256;

thread_local! {
    static NESTING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// One level of expression nesting, given back when dropped.
struct Nest;

impl Nest {
    fn enter(input: ParseStream) -> syn::Result<Nest> {
        let depth = NESTING.with(|n| {
            n.set(n.get() + 1);
            n.get()
        });
        let level = Nest;
        if depth > MAX_NESTING {
            return Err(nesting_error(input.span()));
        }
        Ok(level)
    }
}

impl Drop for Nest {
    fn drop(&mut self) {
        NESTING.with(|n| n.set(n.get() - 1));
    }
}

fn nesting_error(span: Span) -> syn::Error {
    syn::Error::new(
        span,
        format!(
            "expression nested more than {MAX_NESTING} levels deep\n\nhelp: name parts of it with `let`"
        ),
    )
}

fn peek_binop(input: ParseStream) -> Option<(BinOp, u8)> {
    // `-=` and `+=` end an expression; so do `==` and friends, which are not operators here.
    if input.peek(Token![+=])
        || input.peek(Token![-=])
        || input.peek(Token![*=])
        || input.peek(Token![/=])
    {
        return None;
    }
    if input.peek(Token![+]) {
        Some((BinOp::Add, 1))
    } else if input.peek(Token![-]) {
        Some((BinOp::Sub, 1))
    } else if input.peek(Token![*]) {
        Some((BinOp::Mul, 2))
    } else if input.peek(Token![/]) {
        Some((BinOp::Div, 2))
    } else {
        None
    }
}

fn parse_bp(input: ParseStream, min_bp: u8) -> syn::Result<Expr> {
    let _level = Nest::enter(input)?;
    let mut lhs = parse_unary(input)?;
    loop {
        if input.peek(Token![*]) && input.peek2(Token![*]) {
            let t: Token![*] = input.parse()?;
            input.parse::<Token![*]>()?;
            // Quote the fix when the exponent parses.
            let help = match parse_unary(input) {
                Ok(k) if is_literal(&k) => {
                    format!("write `pow({}, {})`", bare_source(&lhs), bare_source(&k))
                }
                Ok(k) => format!(
                    "`pow` takes a constant exponent; for a variable one write `exp({} * log({}))`",
                    expr_source(&k),
                    bare_source(&lhs)
                ),
                Err(_) => "write `pow(x, k)` with a constant exponent `k`".into(),
            };
            return Err(syn::Error::new(
                t.span,
                format!("`**` is not an operator here\n\nhelp: {help}"),
            ));
        }
        let Some((op, bp)) = peek_binop(input) else {
            break;
        };
        if bp <= min_bp {
            break;
        }
        let span = match op {
            BinOp::Add => input.parse::<Token![+]>()?.span,
            BinOp::Sub => input.parse::<Token![-]>()?.span,
            BinOp::Mul => input.parse::<Token![*]>()?.span,
            BinOp::Div => input.parse::<Token![/]>()?.span,
        };
        let rhs = parse_bp(input, bp)?;
        lhs = Expr::Binary {
            op,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
            span,
        };
    }
    Ok(lhs)
}

fn is_literal(e: &Expr) -> bool {
    match e {
        Expr::Num { .. } => true,
        Expr::Neg { expr, .. } => is_literal(expr),
        _ => false,
    }
}

fn parse_unary(input: ParseStream) -> syn::Result<Expr> {
    if input.peek(Token![-]) {
        let t: Token![-] = input.parse()?;
        let _level = Nest::enter(input)?;
        let e = parse_unary(input)?;
        return Ok(Expr::Neg {
            expr: Box::new(e),
            span: t.span,
        });
    }
    parse_postfix(input)
}

fn parse_postfix(input: ParseStream) -> syn::Result<Expr> {
    let mut e = parse_primary(input)?;
    let mut postfix = 0;
    while input.peek(Token![.]) || input.peek(syn::token::Bracket) {
        if input.peek(syn::token::Bracket) {
            let c;
            let br = bracketed!(c in input);
            postfix += 1;
            if postfix > MAX_NESTING {
                return Err(nesting_error(br.span.join()));
            }
            let mut items = Vec::new();
            while !c.is_empty() {
                items.push(parse_expr(&c)?);
                if !c.is_empty() {
                    c.parse::<Token![,]>()?;
                }
            }
            e = Expr::Index {
                base: Box::new(e),
                items,
                span: br.span.join(),
            };
            continue;
        }
        input.parse::<Token![.]>()?;
        let id: Ident = input.parse()?;
        postfix += 1;
        if postfix > MAX_NESTING {
            return Err(nesting_error(id.span()));
        }
        if id == "T" {
            e = Expr::Transpose {
                expr: Box::new(e),
                span: id.span(),
            };
        } else {
            let help = if id == "t" {
                "did you mean `.T`?".to_string()
            } else if builtin(&id.to_string()).is_some() {
                format!(
                    "`{id}` is a function: call it as `{id}({})`",
                    bare_source(&e)
                )
            } else {
                "`.T` (transpose) is the only member".to_string()
            };
            return Err(syn::Error::new(
                id.span(),
                format!("unknown member `.{id}`\n\nhelp: {help}"),
            ));
        }
    }
    Ok(e)
}

fn suffix_error(span: Span, digits: &str, suffix: &str) -> syn::Error {
    syn::Error::new(
        span,
        format!(
            "literal suffix `{suffix}` is not used here: a literal takes the element type of the expression around it\n\nhelp: write `{digits}`"
        ),
    )
}

fn parse_primary(input: ParseStream) -> syn::Result<Expr> {
    if input.peek(syn::LitFloat) {
        let l: syn::LitFloat = input.parse()?;
        if !l.suffix().is_empty() {
            return Err(suffix_error(l.span(), l.base10_digits(), l.suffix()));
        }
        let value: f64 = l
            .base10_parse()
            .map_err(|_| syn::Error::new(l.span(), "invalid float literal"))?;
        return Ok(Expr::Num {
            value,
            is_int: false,
            text: l.to_string(),
            span: l.span(),
        });
    }
    if input.peek(syn::LitInt) {
        let l: syn::LitInt = input.parse()?;
        if !l.suffix().is_empty() {
            return Err(suffix_error(l.span(), l.base10_digits(), l.suffix()));
        }
        let value: f64 = l
            .base10_digits()
            .parse()
            .map_err(|_| syn::Error::new(l.span(), "invalid integer literal"))?;
        return Ok(Expr::Num {
            value,
            is_int: true,
            text: l.to_string(),
            span: l.span(),
        });
    }
    if input.peek(syn::token::Paren) {
        let c;
        let p = parenthesized!(c in input);
        let first = parse_expr(&c)?;
        if c.is_empty() {
            return Ok(first);
        }
        let mut items = vec![first];
        while !c.is_empty() {
            c.parse::<Token![,]>()?;
            if c.is_empty() {
                break;
            }
            items.push(parse_expr(&c)?);
        }
        return Ok(Expr::Tuple(items, p.span.join()));
    }
    if input.peek(syn::LitBool) {
        let b: syn::LitBool = input.parse()?;
        return Ok(Expr::Bool(b.value, b.span));
    }
    if input.peek(syn::token::Bracket) {
        let c;
        let b = bracketed!(c in input);
        let mut items = Vec::new();
        while !c.is_empty() {
            items.push(parse_expr(&c)?);
            if !c.is_empty() {
                c.parse::<Token![,]>()?;
            }
        }
        return Ok(Expr::List(items, b.span.join()));
    }
    if input.peek(Ident) || input.peek(Token![where]) {
        // `where` is a Rust keyword, and the language's `where(c, a, b)`.
        let id: Ident = if input.peek(Token![where]) {
            let kw: Token![where] = input.parse()?;
            Ident::new("where", kw.span)
        } else {
            input.parse()?
        };
        if input.peek(syn::token::Paren) {
            let c;
            parenthesized!(c in input);
            let mut args = Vec::new();
            while !c.is_empty() {
                if c.peek(Ident) && c.peek2(Token![=]) && !c.peek2(Token![==]) {
                    let n: Ident = c.parse()?;
                    c.parse::<Token![=]>()?;
                    args.push(Arg::Named(n, parse_expr(&c)?));
                } else {
                    args.push(Arg::Pos(parse_expr(&c)?));
                }
                if !c.is_empty() {
                    c.parse::<Token![,]>()?;
                }
            }
            let span = id.span();
            return Ok(Expr::Call {
                func: id,
                args,
                span,
            });
        }
        return Ok(Expr::Name(id));
    }
    Err(input
        .error("expected an expression: a name, a number, a call like `dot(a, b)`, or `( ... )`"))
}
