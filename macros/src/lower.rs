//! Stage 2: lowers the AST into one `Function` per compiled function, each with its own graph:
//! names resolved, sugar lowered (`a - b` to `a + (-b)`, `mean` to a scaled `sum`), literals
//! typed by their context, shapes inferred, and user errors collected with spans.

use proc_macro2::Span;
use tensor_fn_kernels::op::{builtin, Builtin, Lowering, Reduce, BUILTINS};
use tensor_fn_kernels::scalar;

use crate::diag::{closest, Diagnostics};
use crate::ir::{
    binary_type, dot_type, Axis, Binary, DType, Dim, Function, Graph, NodeId, Num, Op, RandKind,
    Ret, Type, TypeError, Unary, Var, VarKind, MAX_NODES,
};
use crate::pattern::Pat;
use crate::syntax::{
    self, bare_source, expr_source, Arg, BinOp, Body, Decl, DimAst, Expr, Options, Stmt, TypeAst,
    UpdateOp,
};

/// A value during lowering: a node, or a literal whose element type the context decides.
#[derive(Debug, Clone, Copy)]
enum Val {
    Node(NodeId),
    Lit(f64, Span),
}

struct Lowerer<'d> {
    g: Graph,
    /// Names in scope; `None` for a name whose definition failed (already reported), so that
    /// its uses report nothing more.
    env: Vec<(String, Option<Val>)>,
    diags: &'d mut Diagnostics,
    /// Source text of each grad call, by node.
    grads: Vec<(String, NodeId)>,
    default_dtype: DType,
    /// Lowering a model method: the only place random ops may be drawn.
    in_model: bool,
    /// The random stream's var node, once a random op asked for it.
    stream: Option<NodeId>,
    /// Random ops lowered so far (the next one's site).
    random_sites: u32,
}

/// `a`, `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Lowers a parsed program into one `Function` per compiled function.
pub fn lower(program: &syntax::Program, diags: &mut Diagnostics) -> Vec<Function> {
    let fns = lower_all(program, diags);
    for f in &fns {
        check_dims_bound(f, diags);
    }
    fns
}

/// Every symbolic dim a function computes with must be the size of one of its arguments (or,
/// in a model, of a parameter): `onehot(y, k)` alone takes its `k` from nowhere.
fn check_dims_bound(f: &Function, diags: &mut Diagnostics) {
    let g = &f.graph;
    let mut bound = std::collections::HashSet::new();
    for (i, v) in g.vars.iter().enumerate() {
        if v.kind == VarKind::Param || f.inputs.contains(&(i as u32)) {
            bound.extend(v.ty.shape.iter().copied());
        }
    }
    for id in g.ids() {
        let unbound = g
            .ty(id)
            .shape
            .iter()
            .find(|d| matches!(d, Dim::Sym(_)) && !bound.contains(*d));
        if let Some(&d) = unbound {
            let name = g.dim_str(d);
            diags.error_help(
                g.node(id).span,
                format!(
                    "`{}` computes with the size `{name}`, which none of its arguments has",
                    f.name
                ),
                format!(
                    "use an argument of size `{name}` in `{}`, or write the size as a number",
                    f.name
                ),
            );
            return;
        }
    }
}

fn lower_all(program: &syntax::Program, diags: &mut Diagnostics) -> Vec<Function> {
    match program {
        syntax::Program::Closure(c) => {
            let mut l = Lowerer::new(diags, &c.inputs);
            let inputs = l.declare_all(&c.inputs, VarKind::Input);
            let (outputs, ret, updates) = l.lower_body(&c.body, None, c.span);
            if !updates.is_empty() {
                l.diags.error(c.span, "internal: updates in a closure");
            }
            vec![l.finish("<closure>", inputs, outputs, ret, Vec::new(), c.options)]
        }
        syntax::Program::Equations(eqs) => {
            let mut l = Lowerer::new(diags, &eqs.inputs);
            let inputs = l.declare_all(&eqs.inputs, VarKind::Input);
            let mut roots = Vec::new();
            for eq in &eqs.equations {
                if l.env.iter().any(|(n, _)| eq.name == n.as_str()) {
                    l.diags.error(
                        eq.name.span(),
                        format!("`{}` is defined twice in this block", eq.name),
                    );
                }
                let v = l.lower_expr(&eq.expr);
                let node = v.map(|v| l.materialize(v));
                l.env.push((eq.name.to_string(), node.map(Val::Node)));
                roots.push(node);
            }
            let mut fns = Vec::new();
            for (eq, root) in eqs.equations.iter().zip(roots) {
                let Some(root) = root else { continue };
                let grads: Vec<_> = l
                    .grads
                    .iter()
                    .filter(|(_, gnode)| l.g.depends_on(root, *gnode))
                    .cloned()
                    .collect();
                let mut all = vec![root];
                all.extend(grads.iter().map(|g| g.1));
                // The function takes the declared inputs its equation uses, in declared order.
                let live = l.g.reachable(&[root]);
                let used: Vec<u32> = inputs
                    .iter()
                    .copied()
                    .filter(|v| {
                        l.g.ids()
                            .any(|id| live[id.idx()] && l.g.op(id) == Op::Var(*v))
                    })
                    .collect();
                let (g, r) = l.g.extract(&all);
                fns.push(Function {
                    name: eq.name.to_string(),
                    graph: g,
                    inputs: used,
                    outputs: vec![r[0]],
                    ret: Ret::One,
                    updates: Vec::new(),
                    grads: grads
                        .iter()
                        .zip(&r[1..])
                        .map(|((t, _), n)| (t.clone(), *n))
                        .collect(),
                    options: eqs.options,
                });
            }
            fns
        }
        syntax::Program::Model(m) => {
            let mut fns = Vec::new();
            for meth in &m.methods {
                let mut all_decls = m.params.clone();
                all_decls.extend(meth.inputs.iter().cloned());
                let mut l = Lowerer::new(diags, &all_decls);
                l.in_model = true;
                l.declare_all(&m.params, VarKind::Param);
                let mut inputs = l.declare_all(&meth.inputs, VarKind::Input);
                let (outputs, ret, updates) =
                    l.lower_body(&meth.body, Some(meth), meth.name.span());
                // A method that draws takes its stream as a last, hidden argument.
                if let Some(s) = l.stream {
                    let Op::Var(v) = l.g.op(s) else {
                        unreachable!("the stream is a var")
                    };
                    inputs.push(v);
                }
                fns.push(l.finish(
                    &meth.name.to_string(),
                    inputs,
                    outputs,
                    ret,
                    updates,
                    meth.options,
                ));
            }
            fns
        }
    }
}

impl<'d> Lowerer<'d> {
    fn new(diags: &'d mut Diagnostics, decls: &[Decl]) -> Self {
        Lowerer {
            g: Graph::default(),
            env: Vec::new(),
            diags,
            grads: Vec::new(),
            default_dtype: decls
                .iter()
                .find(|d| d.ty.int.is_none())
                .map(|d| d.ty.dtype)
                .unwrap_or(DType::F64),
            in_model: false,
            stream: None,
            random_sites: 0,
        }
    }

    fn finish(
        mut self,
        name: &str,
        inputs: Vec<u32>,
        outputs: Vec<NodeId>,
        ret: Ret,
        updates: Vec<(u32, NodeId)>,
        options: Options,
    ) -> Function {
        let grads = std::mem::take(&mut self.grads);
        let mut f = Function {
            name: name.to_string(),
            graph: Graph::default(),
            inputs,
            outputs,
            ret,
            updates,
            grads,
            options,
        };
        let (g, r) = self.g.extract(&f.roots());
        f.set_roots(g, &r);
        f
    }

    fn lower_type(&mut self, t: &TypeAst) -> Type {
        let shape = t
            .dims
            .iter()
            .map(|d| match d {
                DimAst::Static(n, _) => Dim::Static(*n),
                DimAst::Sym(id) => self.g.sym(&id.to_string()),
            })
            .collect();
        Type {
            // Integers are computed in the function's float type.
            dtype: if t.int.is_some() {
                self.default_dtype
            } else {
                t.dtype
            },
            shape,
            int: t.int,
        }
    }

    /// Declares variables; checks names are unique and that a symbolic dim isn't also used
    /// where a static size is expected (the same name is the same dim everywhere).
    fn declare_all(&mut self, decls: &[Decl], kind: VarKind) -> Vec<u32> {
        let mut ids = Vec::new();
        for d in decls {
            let name = d.name.to_string();
            if self.env.iter().any(|(n, _)| *n == name) {
                self.diags
                    .error(d.name.span(), format!("`{name}` is declared twice"));
                continue;
            }
            let ty = self.lower_type(&d.ty);
            let idx = self.g.vars.len() as u32;
            self.g.vars.push(Var {
                name: name.clone(),
                kind,
                ty: ty.clone(),
                span: d.name.span(),
            });
            let node = self.g.add(Op::Var(idx), Vec::new(), ty, d.name.span());
            self.env.push((name, Some(Val::Node(node))));
            ids.push(idx);
        }
        ids
    }

    /// The binding of a name: `None` if unknown, `Some(None)` if its definition failed.
    fn lookup(&self, name: &str) -> Option<Option<Val>> {
        self.env
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    fn materialize(&mut self, v: Val) -> NodeId {
        match v {
            Val::Node(n) => n,
            Val::Lit(x, span) => {
                let dt = self.default_dtype;
                self.lit_node(x, dt, span)
            }
        }
    }

    fn lit_node(&mut self, x: f64, dtype: DType, span: Span) -> NodeId {
        if dtype == DType::F32 && x.is_finite() && (x as f32).is_infinite() {
            self.diags.error_help(
                span,
                format!("literal `{x:e}` does not fit in f32: the largest f32 is about 3.4e38"),
                "use a smaller constant, or declare the inputs as `f64`",
            );
        }
        self.g.scalar_const(x, dtype, span)
    }

    fn node_of(&mut self, v: Val, like: Option<NodeId>) -> NodeId {
        match v {
            Val::Node(n) => n,
            Val::Lit(x, span) => {
                let dt = like
                    .map(|n| self.g.ty(n).dtype)
                    .unwrap_or(self.default_dtype);
                match like.and_then(|n| self.g.ty(n).int) {
                    // Beside an integer, a literal is an integer (`eq(y, 3)`).
                    Some(int) => {
                        let ty = Type {
                            dtype: dt,
                            shape: Vec::new(),
                            int: Some(int),
                        };
                        self.g.constant(x, ty, span)
                    }
                    None => self.lit_node(x, dt, span),
                }
            }
        }
    }

    fn build(&mut self, op: Op, args: Vec<NodeId>, span: Span) -> Option<NodeId> {
        if self.g.len() >= MAX_NODES {
            self.diags.error(
                span,
                format!("this function is too large: more than {MAX_NODES} graph nodes"),
            );
            return None;
        }
        match self.g.build(op, args, span) {
            Ok(n) => Some(n),
            Err(e) => {
                self.report(span, e);
                None
            }
        }
    }

    fn report(&mut self, span: Span, e: TypeError) {
        match e.help {
            Some(h) => self.diags.error_help(span, e.message, h),
            None => self.diags.error(span, e.message),
        }
    }

    /// Lowers a body; returns (outputs, return kind, updates).
    fn lower_body(
        &mut self,
        body: &Body,
        method: Option<&syntax::MethodAst>,
        span: Span,
    ) -> (Vec<NodeId>, Ret, Vec<(u32, NodeId)>) {
        let mut updates: Vec<(u32, NodeId, Span)> = Vec::new();
        for s in &body.stmts {
            match s {
                Stmt::Let(name, e) => {
                    // A failed definition stays known, so later uses don't pile up follow-on errors.
                    let v = self.lower_expr(e);
                    self.env.push((name.to_string(), v));
                }
                Stmt::Update {
                    target,
                    op,
                    op_span,
                    value,
                } => self.lower_update(target, *op, *op_span, value, method, &mut updates),
            }
        }
        let mut outputs = Vec::new();
        let ret = match &body.result {
            None => Ret::Unit,
            Some(Expr::Tuple(items, _)) => {
                for e in items {
                    if let Some(v) = self.lower_expr(e) {
                        outputs.push(self.materialize(v));
                    }
                }
                Ret::Tuple(items.len())
            }
            Some(e) => {
                if let Some(v) = self.lower_expr(e) {
                    outputs.push(self.materialize(v));
                }
                Ret::One
            }
        };
        if let Some(m) = method {
            self.check_ret(m, &outputs, &ret, body);
        }
        let _ = span;
        (
            outputs,
            ret,
            updates.into_iter().map(|(p, n, _)| (p, n)).collect(),
        )
    }

    fn check_ret(&mut self, m: &syntax::MethodAst, outputs: &[NodeId], ret: &Ret, body: &Body) {
        let declared: Vec<&TypeAst> = match &m.ret {
            syntax::RetAst::Unit => Vec::new(),
            syntax::RetAst::One(t) => vec![t],
            syntax::RetAst::Tuple(ts) => ts.iter().collect(),
        };
        let result_span = body
            .result
            .as_ref()
            .map(|e| e.full_span())
            .unwrap_or(m.ret_span);
        let found_n = match ret {
            Ret::Unit => 0,
            Ret::One => 1,
            Ret::Tuple(n) => *n,
        };
        if declared.len() != found_n
            || (matches!(m.ret, syntax::RetAst::Tuple(..)) != matches!(ret, Ret::Tuple(_))
                && found_n != 0)
        {
            let count = |n: usize| match n {
                0 => "no result".to_string(),
                1 => "1 result".to_string(),
                n => format!("{n} results"),
            };
            let msg = format!(
                "`{}` declares {}, but its body gives {}",
                m.name,
                count(declared.len()),
                count(found_n)
            );
            let help = match (declared.len(), found_n) {
                (0, _) => "declare the result type after the arguments, as `-> f32`".to_string(),
                (_, 0) => "end the body with the result, without a `;`".to_string(),
                (1, _) => "end the body with one value, not a tuple".to_string(),
                (n, _) => format!("end the body with a tuple of {n} values, as `(a, b)`"),
            };
            self.diags.error_help(result_span, msg, help);
            return;
        }
        if outputs.len() != declared.len() {
            return; // an error inside the result was reported already
        }
        for (t, &o) in declared.iter().zip(outputs) {
            let want = self.lower_type(t);
            let got = self.g.ty(o).clone();
            if want != got {
                self.diags.error(
                    t.span,
                    format!(
                        "`{}` declares its result as {}, but the body computes {}",
                        m.name,
                        self.g.type_str(&want),
                        self.g.type_str(&got)
                    ),
                );
            }
        }
    }

    fn lower_update(
        &mut self,
        target: &syn::Ident,
        op: UpdateOp,
        op_span: Span,
        value: &Expr,
        method: Option<&syntax::MethodAst>,
        updates: &mut Vec<(u32, NodeId, Span)>,
    ) {
        let name = target.to_string();
        let binding = self.lookup(&name);
        let var = binding.flatten().and_then(|v| match v {
            Val::Node(n) => match self.g.op(n) {
                Op::Var(i) => Some((i, n)),
                _ => None,
            },
            Val::Lit(..) => None,
        });
        let rhs = self.lower_expr(value);
        if matches!(binding, Some(None)) {
            return; // its definition failed, and that was reported
        }
        let Some((vi, vnode)) = var else {
            if binding.is_some() {
                self.diags.error_help(
                    target.span(),
                    format!("cannot update `{name}`: it is a value computed in this function, not a parameter"),
                    "only the model's parameters (fields of its struct) can be updated",
                );
                return;
            }
            let params: Vec<String> = self
                .g
                .vars
                .iter()
                .filter(|v| v.kind == VarKind::Param)
                .map(|v| v.name.clone())
                .collect();
            let help = closest(&name, params.iter().map(|s| s.as_str()))
                .map(|c| format!("did you mean `{c}`?"));
            let msg = format!("cannot update `{name}`: it is not a parameter of the model");
            match help {
                Some(h) => self.diags.error_help(target.span(), msg, h),
                None => self.diags.error(target.span(), msg),
            }
            return;
        };
        let var_kind = self.g.vars[vi as usize].kind;
        if var_kind == VarKind::Input {
            self.diags.error_help(
                target.span(),
                format!("cannot update `{name}`: it is an input of this function, not a parameter"),
                "only the model's parameters (fields of its struct) can be updated",
            );
            return;
        }
        if let Some(m) = method {
            if !m.mutable {
                // One error per method, naming its first update.
                let first = m.body.stmts.iter().find_map(|s| match s {
                    Stmt::Update { target, .. } => Some(target.to_string()),
                    Stmt::Let(..) => None,
                });
                self.diags.error_help(
                    m.self_span,
                    format!(
                        "`{}` takes `&self`, but it updates `{}`",
                        m.name,
                        first.unwrap_or_else(|| name.clone())
                    ),
                    "take `&mut self` to update parameters",
                );
                return;
            }
        }
        if updates.iter().any(|u| u.0 == vi) {
            self.diags.error_help(
                target.span(),
                format!("`{name}` is updated twice in one function"),
                "updates are simultaneous: combine them into one expression",
            );
            return;
        }
        let Some(rhs) = rhs else { return };
        let rhs = self.node_of(rhs, Some(vnode));
        if op != UpdateOp::Assign {
            let sym = if op == UpdateOp::Add { "+=" } else { "-=" };
            let src = expr_source(value);
            let (pt, vt) = (self.g.ty(vnode).clone(), self.g.ty(rhs).clone());
            if let Err(e) = binary_type(&self.g, sym, &pt, &vt, Some((&name, &src))) {
                self.report(op_span, e);
                return;
            }
        }
        let new = match op {
            UpdateOp::Assign => Some(rhs),
            UpdateOp::Add => self.build(Op::Binary(Binary::Add), vec![vnode, rhs], op_span),
            UpdateOp::Sub => {
                let neg = self.build(Op::Unary(Unary::Neg), vec![rhs], op_span);
                neg.and_then(|n| self.build(Op::Binary(Binary::Add), vec![vnode, n], op_span))
            }
        };
        let Some(new) = new else { return };
        let want = self.g.ty(vnode).clone();
        let got = self.g.ty(new).clone();
        if want != got {
            let span = match op {
                UpdateOp::Assign => value.full_span(),
                _ => op_span,
            };
            self.diags.error_help(
                span,
                format!(
                    "the update changes the type of `{name}`: `{name}` is {}, the new value is {}",
                    self.g.type_str(&want),
                    self.g.type_str(&got)
                ),
                format!(
                    "a parameter keeps its type: the right side must be {} (or broadcast to it)",
                    self.g.type_str(&want)
                ),
            );
            return;
        }
        updates.push((vi, new, op_span));
    }

    fn lower_expr(&mut self, e: &Expr) -> Option<Val> {
        match e {
            Expr::Num {
                value, span, text, ..
            } => {
                if !value.is_finite() {
                    self.diags
                        .error(*span, format!("literal `{text}` is out of range for f64"));
                    return None;
                }
                Some(Val::Lit(*value, *span))
            }
            Expr::Name(id) => {
                let name = id.to_string();
                match self.lookup(&name) {
                    Some(v) => v,
                    None => {
                        let names: Vec<String> = self.env.iter().map(|(n, _)| n.clone()).collect();
                        let msg = format!("unknown name `{name}`");
                        let help = if builtin(&name).is_some() {
                            Some(format!(
                                "`{name}` is a function: call it, as in `{name}(...)`"
                            ))
                        } else if self.g.syms.contains(&name) {
                            Some(format!("`{name}` is a symbolic dim of a type, not a value"))
                        } else {
                            closest(&name, names.iter().map(|s| s.as_str()))
                                .map(|c| format!("did you mean `{c}`?"))
                        };
                        match help {
                            Some(h) => self.diags.error_help(id.span(), msg, h),
                            None => self.diags.error(id.span(), msg),
                        }
                        None
                    }
                }
            }
            Expr::Neg { expr, span } => {
                let v = self.lower_expr(expr)?;
                match v {
                    Val::Lit(x, _) => Some(Val::Lit(-x, *span)),
                    Val::Node(n) => self
                        .build(Op::Unary(Unary::Neg), vec![n], *span)
                        .map(Val::Node),
                }
            }
            Expr::Binary { .. } => {
                // A left-leaning chain (`a + b + c + ...`, the parser's output for a long sum)
                // is lowered in a loop, not one recursion per term: the compiler runs the macro
                // on an 8 MiB stack.
                let mut spine = Vec::new();
                let mut cur = e;
                while let Expr::Binary { lhs, .. } = cur {
                    spine.push(cur);
                    cur = lhs;
                }
                let mut acc = self.lower_expr(cur);
                for link in spine.into_iter().rev() {
                    let Expr::Binary { op, lhs, rhs, span } = link else {
                        unreachable!("the spine holds binary expressions")
                    };
                    let b = self.lower_expr(rhs);
                    acc = self.lower_binary(*op, acc, b, lhs, rhs, *span);
                }
                acc
            }
            Expr::Transpose { expr, span } => {
                let v = self.lower_expr(expr)?;
                match v {
                    Val::Lit(..) => Some(v),
                    Val::Node(n) if self.g.ty(n).rank() < 2 => Some(v), // numpy: .T of a vector is itself
                    Val::Node(n) => self.build(Op::Transpose, vec![n], *span).map(Val::Node),
                }
            }
            Expr::Tuple(_, span) => {
                self.diags.error(
                    *span,
                    "a tuple is only allowed as the whole result of a function",
                );
                None
            }
            Expr::Call { func, args, span } => self.lower_call(func, args, *span),
            Expr::Bool(b, span) => {
                self.diags.error_help(
                    *span,
                    format!("`{b}` is not a value"),
                    "a flag of a function, as in `sum(x, axis = 1, keepdims = true)`",
                );
                None
            }
            Expr::Index { base, items, span } => self.lower_pick(base, items, *span),
            Expr::List(_, span) => {
                self.diags.error_help(
                    *span,
                    "a list `[..]` is only the size of a random draw",
                    "as in `binomial([n, 784], p)`: a shape of dim names and integers",
                );
                None
            }
        }
    }

    /// `a op b` with both sides lowered (None where their errors were reported).
    fn lower_binary(
        &mut self,
        op: BinOp,
        a: Option<Val>,
        b: Option<Val>,
        lhs: &Expr,
        rhs: &Expr,
        span: Span,
    ) -> Option<Val> {
        let (a, b) = (a?, b?);
        if let (Val::Lit(x, _), Val::Lit(y, _)) = (a, b) {
            let v = match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div => x / y,
            };
            return Some(Val::Lit(v, span));
        }
        let like = match (a, b) {
            (Val::Node(n), _) | (_, Val::Node(n)) => Some(n),
            _ => None,
        };
        let a = self.node_of(a, like);
        let b = self.node_of(b, like);
        // Check here, where the operator is the user's (`-` lowers to `+` and `neg`). The
        // source text for the hint is built only on error: in a long chain, building it at
        // every link would be quadratic.
        let (ta, tb) = (self.g.ty(a).clone(), self.g.ty(b).clone());
        if binary_type(&self.g, op.symbol(), &ta, &tb, None).is_err() {
            let (l, r) = (expr_source(lhs), expr_source(rhs));
            if let Err(e) = binary_type(&self.g, op.symbol(), &ta, &tb, Some((&l, &r))) {
                self.report(span, e);
            }
            return None;
        }
        let n = match op {
            BinOp::Add => self.build(Op::Binary(Binary::Add), vec![a, b], span),
            // a - b is a + (-b): one canonical form, so `x + (-x)` and `x - x` simplify alike.
            BinOp::Sub => {
                if self.g.ty(a).dtype != self.g.ty(b).dtype {
                    self.build(Op::Binary(Binary::Add), vec![a, b], span)
                } else {
                    let nb = self.build(Op::Unary(Unary::Neg), vec![b], span)?;
                    self.build(Op::Binary(Binary::Add), vec![a, nb], span)
                }
            }
            BinOp::Mul => self.build(Op::Binary(Binary::Mul), vec![a, b], span),
            BinOp::Div => self.build(Op::Binary(Binary::Div), vec![a, b], span),
        };
        n.map(Val::Node)
    }

    /// A call of a builtin function: its row of the table says what it takes and how it
    /// lowers (`tensor_fn_kernels::op::BUILTINS`).
    fn lower_call(&mut self, func: &syn::Ident, args: &[Arg], span: Span) -> Option<Val> {
        let fname = func.to_string();
        if fname == "shape" {
            self.diags.error_help(
                span,
                "`shape(x)` is only the size of a random draw",
                "as in `binomial(shape(x), p)`, `uniform(shape(x), lo, hi)` or `normal(shape(x), mean, std)`",
            );
            return None;
        }
        let Some(b) = builtin(&fname) else {
            return self.unknown_function(func, args);
        };
        let takes_axis = b.keywords.contains(&"axis");
        let mut pos = Vec::new();
        // (value, span of the value, span of the `axis` name)
        let mut axis: Option<(i64, Span, Span)> = None;
        let mut keepdims = false;
        let mut filter_flip = true;
        let mut bad = false;
        for a in args {
            match a {
                Arg::Pos(e) => pos.push(e),
                Arg::Named(n, e) if n == "keepdims" && b.keywords.contains(&"keepdims") => {
                    match e {
                        Expr::Bool(v, _) => keepdims = *v,
                        _ => {
                            self.diags.error(
                                e.full_span(),
                                format!(
                                    "`keepdims` is `true` or `false`, found `{}`",
                                    expr_source(e)
                                ),
                            );
                            bad = true;
                        }
                    }
                }
                Arg::Named(n, e) if n == "filter_flip" && b.keywords.contains(&"filter_flip") => {
                    match e {
                        Expr::Bool(v, _) => filter_flip = *v,
                        _ => {
                            self.diags.error(
                                e.full_span(),
                                format!(
                                    "`filter_flip` is `true` or `false`, found `{}`",
                                    expr_source(e)
                                ),
                            );
                            bad = true;
                        }
                    }
                }
                Arg::Named(n, e) if n == "axis" => match literal_int(e) {
                    Some(k) => axis = Some((k, e.full_span(), n.span())),
                    None => {
                        self.diags.error(
                            e.full_span(),
                            format!(
                                "`axis` must be an integer literal, found `{}`",
                                expr_source(e)
                            ),
                        );
                        bad = true;
                    }
                },
                Arg::Named(n, _) => {
                    let msg = format!("unknown argument `{n}` of `{fname}`");
                    let close = closest(&n.to_string(), b.keywords.iter().copied());
                    if let Some(k) = close {
                        self.diags
                            .error_help(n.span(), msg, format!("did you mean `{k}`?"));
                    } else if takes_axis {
                        self.diags.error_help(
                            n.span(),
                            msg,
                            format!("`{fname}` takes one tensor and an optional `axis = k`"),
                        );
                    } else {
                        self.diags.error(n.span(), msg);
                    }
                    bad = true;
                }
            }
        }
        let expect = |this: &mut Self, n: usize| -> bool {
            if pos.len() != n {
                // Too many: on the first extra argument; too few: on the function's name.
                let at = pos.get(n).map(|e| e.full_span()).unwrap_or(span);
                this.diags.error(
                    at,
                    format!(
                        "`{fname}` takes {n} argument{}, found {}",
                        if n == 1 { "" } else { "s" },
                        pos.len()
                    ),
                );
                return false;
            }
            true
        };
        if let (Some(ax), false) = (axis, takes_axis) {
            let along: Vec<String> = BUILTINS
                .iter()
                .filter(|b| b.keywords.contains(&"axis"))
                .map(|b| format!("`{}`", b.name))
                .collect();
            self.diags.error_help(
                ax.2,
                format!("`{fname}` takes no `axis`: it applies to each element"),
                format!("only {} work along an axis (`axis = k`)", and_list(&along)),
            );
            return None;
        }
        if b.lowering != Lowering::Grad && (!expect(self, b.args) || bad) {
            return None;
        }
        match b.lowering {
            Lowering::Unary(u) => match self.lower_expr(pos[0])? {
                Val::Lit(x, s) => Some(Val::Lit(scalar::unary(u, x), s)),
                Val::Node(n) => self.build(Op::Unary(u), vec![n], span).map(Val::Node),
            },
            Lowering::Pow => self.lower_pow(&pos, span),
            Lowering::Binary(op) => self.lower_pair(b, Op::Binary(op), &pos, span),
            Lowering::Dot => self.lower_pair(b, Op::Dot, &pos, span),
            Lowering::Reduce(r) => self.lower_reduce(r, pos[0], axis, keepdims, span),
            Lowering::Grad => self.lower_grad(&pos, span).map(Val::Node),
            Lowering::Composite(pattern, _) => self.lower_composite(pattern, &pos, span),
            Lowering::Softmax { log } => self.lower_softmax(log, pos[0], axis, span),
            Lowering::ArgMax => self.lower_argmax(pos[0], axis, span),
            Lowering::Compare(cmp) => self.lower_compare(&fname, cmp, &pos, span),
            Lowering::Where => self.lower_where(&pos, span),
            Lowering::OneHot => self.lower_onehot(&pos, span),
            Lowering::Random(kind) => self.lower_random(kind, &fname, &pos, span),
            Lowering::Reshape => self.lower_reshape(&pos, span),
            Lowering::Flatten => self.lower_flatten(&pos, span),
            Lowering::Conv2d => {
                let (x, w) = (self.lower_expr(pos[0]), self.lower_expr(pos[1]));
                let (x, w) = (
                    self.tensor("conv2d", pos[0], x?)?,
                    self.tensor("conv2d", pos[1], w?)?,
                );
                self.build(Op::Conv2d { flip: filter_flip }, vec![x, w], span)
                    .map(Val::Node)
            }
            Lowering::MaxPool => self.lower_max_pool(&pos, span),
            Lowering::Arange => {
                self.diags.error_help(
                    span,
                    "`arange(n)` only picks one entry per row",
                    "index with it: `x[arange(n), y]`, with `y` the integer labels",
                );
                None
            }
        }
    }

    /// The axis a function of one tensor of `rank` works along: `axis = k` (negative counts
    /// from the end) or, with none, `default`.
    fn axis_of(
        &mut self,
        x: NodeId,
        axis: Option<(i64, Span, Span)>,
        default: Option<u8>,
    ) -> Option<Axis> {
        let rank = self.g.ty(x).rank() as i64;
        match axis {
            None => Some(default.map_or(Axis::All, Axis::One)),
            Some((k, s, _)) => {
                let kk = if k < 0 { k + rank } else { k };
                if kk < 0 || kk >= rank {
                    let help = match rank {
                        0 => "a scalar has no axes: drop `axis = ...`".to_string(),
                        1 => "the only axis is 0 (or -1)".to_string(),
                        2 => {
                            "the axes are 0 and 1 (or -2 and -1, counting from the end)".to_string()
                        }
                        r => format!(
                            "the axes are 0 to {} (or -{r} to -1, counting from the end)",
                            r - 1
                        ),
                    };
                    self.diags.error_help(
                        s,
                        format!(
                            "axis {k} is out of range for {}, which has rank {rank}",
                            self.g.type_str(self.g.ty(x))
                        ),
                        help,
                    );
                    return None;
                }
                Some(Axis::One(kk as u8))
            }
        }
    }

    /// `softmax(x)` or `log_softmax(x)` along the last axis (or `axis = k`).
    fn lower_softmax(
        &mut self,
        log: bool,
        arg: &Expr,
        axis: Option<(i64, Span, Span)>,
        span: Span,
    ) -> Option<Val> {
        let v = self.lower_expr(arg)?;
        let x = self.node_of(v, None);
        let rank = self.g.ty(x).rank();
        let name = if log { "log_softmax" } else { "softmax" };
        if rank == 0 {
            self.diags.error_help(
                span,
                format!(
                    "`{name}` of a scalar: {} has no axis to normalize over",
                    self.g.type_str(self.g.ty(x))
                ),
                "softmax turns a vector of scores (or each row of a matrix) into probabilities",
            );
            return None;
        }
        let Axis::One(ax) = self.axis_of(x, axis, Some(rank as u8 - 1))? else {
            unreachable!("a default axis is given")
        };
        let op = if log {
            Op::LogSoftmax(ax)
        } else {
            Op::Softmax(ax)
        };
        self.build(op, vec![x], span).map(Val::Node)
    }

    /// `argmax(x, axis = k)`: a vector needs no axis; a matrix does.
    fn lower_argmax(
        &mut self,
        arg: &Expr,
        axis: Option<(i64, Span, Span)>,
        span: Span,
    ) -> Option<Val> {
        let v = self.lower_expr(arg)?;
        let x = self.node_of(v, None);
        let t = self.g.ty(x).clone();
        if let Some(int) = t.int {
            let e = crate::ir::int_error(&self.g, "argmax", &t);
            let _ = int;
            self.report(span, e);
            return None;
        }
        match t.rank() {
            0 => {
                // The only entry of a scalar.
                let ty = Type {
                    dtype: t.dtype,
                    shape: Vec::new(),
                    int: Some(crate::ir::IntTy::I64),
                };
                Some(Val::Node(self.g.constant(0.0, ty, span)))
            }
            1 => {
                self.axis_of(x, axis, None)?;
                self.build(Op::ArgMax(Axis::All), vec![x], span)
                    .map(Val::Node)
            }
            _ => match self.axis_of(x, axis, None)? {
                Axis::All => {
                    self.diags.error_help(
                        span,
                        format!("`argmax` of a matrix needs an axis: {}", self.g.type_str(&t)),
                        "`argmax(x, axis = 1)` gives each row's index, as for a classifier's scores",
                    );
                    None
                }
                Axis::One(1) => self
                    .build(Op::ArgMax(Axis::One(1)), vec![x], span)
                    .map(Val::Node),
                Axis::One(_) => {
                    // Down the columns: the rows of the transpose.
                    let xt = self.build(Op::Transpose, vec![x], span)?;
                    self.build(Op::ArgMax(Axis::One(1)), vec![xt], span)
                        .map(Val::Node)
                }
            },
        }
    }

    /// `eq(a, b)`, `neq`, `lt`, `le`, `gt`, `ge`.
    fn lower_compare(&mut self, name: &str, cmp: Binary, pos: &[&Expr], span: Span) -> Option<Val> {
        let x = self.lower_expr(pos[0]);
        let y = self.lower_expr(pos[1]);
        let (x, y) = (x?, y?);
        if let (Val::Lit(u, s), Val::Lit(v, _)) = (x, y) {
            return Some(Val::Lit(scalar::binary(cmp, u, v), s));
        }
        let like = match (x, y) {
            (Val::Node(n), _) | (_, Val::Node(n)) => Some(n),
            _ => None,
        };
        let a = self.node_of(x, like);
        let b = self.node_of(y, like);
        let (ta, tb) = (self.g.ty(a).clone(), self.g.ty(b).clone());
        if let Err(e) = crate::ir::compare_type(&self.g, name, &ta, &tb) {
            self.report(span, e);
            return None;
        }
        self.build(Op::Compare(cmp), vec![a, b], span)
            .map(Val::Node)
    }

    /// `where(c, a, b)`.
    fn lower_where(&mut self, pos: &[&Expr], span: Span) -> Option<Val> {
        let mut vals = Vec::new();
        for p in pos {
            vals.push(self.lower_expr(p));
        }
        let vals: Vec<Val> = vals.into_iter().collect::<Option<_>>()?;
        if let [Val::Lit(c, _), a, b] = vals[..] {
            // A constant condition picks its side at compile time.
            return Some(if scalar::select(c, 1.0, 0.0) != 0.0 {
                a
            } else {
                b
            });
        }
        let like = vals.iter().rev().find_map(|v| match v {
            Val::Node(n) => Some(*n),
            Val::Lit(..) => None,
        });
        let args: Vec<NodeId> = vals.into_iter().map(|v| self.node_of(v, like)).collect();
        self.build(Op::Where, args, span).map(Val::Node)
    }

    /// `onehot(y, k)`: `k` an integer literal or a dim name.
    fn lower_onehot(&mut self, pos: &[&Expr], span: Span) -> Option<Val> {
        let y = self.lower_expr(pos[0]);
        let k = match pos[1] {
            Expr::Num {
                value,
                is_int: true,
                ..
            } if *value >= 1.0 => Some(Dim::Static(*value as u64)),
            Expr::Name(id) if self.g.syms.contains(&id.to_string()) => {
                Some(self.g.sym(&id.to_string()))
            }
            other => {
                self.diags.error_help(
                    other.full_span(),
                    format!("the number of classes of `onehot` must be a dim, found `{}`", expr_source(other)),
                    "a positive integer literal, or a dim name of the declared types, as in `onehot(y, 10)`",
                );
                None
            }
        };
        let (y, k) = (y?, k?);
        let Val::Node(y) = y else {
            self.diags.error(
                pos[0].full_span(),
                "`onehot` takes a vector of integer labels, found a number",
            );
            return None;
        };
        self.build(Op::OneHot(k), vec![y], span).map(Val::Node)
    }

    /// A tensor argument of `fname`: a number is an error on it.
    fn tensor(&mut self, fname: &str, e: &Expr, v: Val) -> Option<NodeId> {
        match v {
            Val::Node(n) => Some(n),
            Val::Lit(..) => {
                self.diags.error(
                    e.full_span(),
                    format!("`{fname}` takes a tensor here, found a number"),
                );
                None
            }
        }
    }

    /// A list of dims, as in `[n, 1, 28, 28]`: dim names and positive integers.
    fn dim_list(&mut self, fname: &str, items: &[Expr], help: &str) -> Option<Vec<Dim>> {
        let mut shape = Vec::new();
        for it in items {
            match it {
                Expr::Num {
                    value,
                    is_int: true,
                    ..
                } if *value >= 1.0 => shape.push(Dim::Static(*value as u64)),
                Expr::Name(id) if self.g.syms.contains(&id.to_string()) => {
                    shape.push(self.g.sym(&id.to_string()))
                }
                other => {
                    self.diags.error_help(
                        other.full_span(),
                        format!(
                            "a dim of the size of `{fname}` is a dim name or a positive integer, found `{}`",
                            expr_source(other)
                        ),
                        help,
                    );
                    return None;
                }
            }
        }
        Some(shape)
    }

    /// `reshape(x, [d, ...])`.
    fn lower_reshape(&mut self, pos: &[&Expr], span: Span) -> Option<Val> {
        let help = "the new shape is a list of dim names and integers, as in `[n, 1, 28, 28]`";
        let x = self.lower_expr(pos[0]);
        let shape = match pos[1] {
            Expr::List(items, _) => self.dim_list("reshape", items, help),
            other => {
                self.diags.error_help(
                    other.full_span(),
                    format!(
                        "the second argument of `reshape` is a shape, found `{}`",
                        expr_source(other)
                    ),
                    help,
                );
                None
            }
        };
        let x = self.tensor("reshape", pos[0], x?)?;
        self.reshape_to(x, shape?, pos[1].full_span(), span)
    }

    /// `flatten(x, k)`: the first `k - 1` axes kept, the others merged into one.
    fn lower_flatten(&mut self, pos: &[&Expr], span: Span) -> Option<Val> {
        let x = self.lower_expr(pos[0]);
        let k = literal_int(pos[1]);
        let x = self.tensor("flatten", pos[0], x?)?;
        let t = self.g.ty(x).clone();
        let rank = t.rank() as i64;
        let Some(k) = k.filter(|k| (1..=rank.max(1)).contains(k)) else {
            self.diags.error_help(
                pos[1].full_span(),
                format!(
                    "`flatten` keeps the rank it is given, from 1 to {}, found `{}`",
                    rank.max(1),
                    expr_source(pos[1])
                ),
                "`flatten(h, 2)` keeps the first axis and merges the others, as Theano's `h.flatten(2)`",
            );
            return None;
        };
        let k = k as usize;
        let mut shape: Vec<Dim> = t.shape[..k - 1].to_vec();
        let Some(merged) = crate::ir::dim_product(&t.shape[k - 1..]) else {
            self.diags.error(
                pos[0].full_span(),
                format!(
                    "`flatten` would merge the axes of {} into one whose size is no dim: only one of them may be a name, and then the others are 1",
                    self.g.type_str(&t)
                ),
            );
            return None;
        };
        shape.push(merged);
        self.reshape_to(x, shape, span, span)
    }

    /// `x` viewed in `shape`: same element count, provably at compile time.
    fn reshape_to(&mut self, x: NodeId, shape: Vec<Dim>, at: Span, span: Span) -> Option<Val> {
        let t = self.g.ty(x).clone();
        if t.int.is_some() {
            let e = crate::ir::int_error(&self.g, "reshape", &t);
            self.report(span, e);
            return None;
        }
        if shape.len() > 4 {
            self.diags.error(
                at,
                format!(
                    "tensors have rank 0 to 4, this shape has {} dims",
                    shape.len()
                ),
            );
            return None;
        }
        if shape.len() > 2 && shape[1..].iter().any(|d| matches!(d, Dim::Sym(_))) {
            self.diags.error_help(
                at,
                format!(
                    "in a tensor of rank {}, only the first dim may be a name",
                    shape.len()
                ),
                "give the channels and image size as integers, as in `[n, 1, 28, 28]`",
            );
            return None;
        }
        let size = |dims: &[Dim]| -> (u64, Vec<u32>) {
            let mut syms: Vec<u32> = dims
                .iter()
                .filter_map(|d| match d {
                    Dim::Sym(s) => Some(*s),
                    Dim::Static(_) => None,
                })
                .collect();
            syms.sort_unstable();
            let stat = dims
                .iter()
                .map(|d| match d {
                    Dim::Static(v) => *v,
                    Dim::Sym(_) => 1,
                })
                .product();
            (stat, syms)
        };
        let new = Type::float(t.dtype, shape);
        if size(&t.shape) != size(&new.shape) {
            let count = |dims: &[Dim]| -> String {
                let (stat, syms) = size(dims);
                let mut parts: Vec<String> = syms
                    .iter()
                    .map(|s| self.g.syms[*s as usize].clone())
                    .collect();
                if stat != 1 || parts.is_empty() {
                    parts.push(stat.to_string());
                }
                parts.join(" * ")
            };
            self.diags.error_help(
                at,
                format!(
                    "`reshape` changes the number of elements: {} has {}, {} has {}",
                    self.g.type_str(&t),
                    count(&t.shape),
                    self.g.type_str(&new),
                    count(&new.shape)
                ),
                "a reshape keeps every element: the products of the dims must be equal, with the same dim names on both sides",
            );
            return None;
        }
        if new == t {
            return Some(Val::Node(x));
        }
        Some(Val::Node(self.g.add(Op::Reshape, vec![x], new, span)))
    }

    /// `max_pool(x, [ph, pw])`.
    fn lower_max_pool(&mut self, pos: &[&Expr], span: Span) -> Option<Val> {
        let x = self.lower_expr(pos[0]);
        let win = match pos[1] {
            Expr::List(items, _) if items.len() == 2 => {
                let a = literal_int(&items[0]).filter(|v| (1..=255).contains(v));
                let b = literal_int(&items[1]).filter(|v| (1..=255).contains(v));
                a.zip(b)
            }
            _ => None,
        };
        let Some((ph, pw)) = win else {
            self.diags.error_help(
                pos[1].full_span(),
                format!(
                    "the window of `max_pool` is two integers from 1 to 255, found `{}`",
                    expr_source(pos[1])
                ),
                "as in `max_pool(h, [2, 2])`: rows, then columns",
            );
            return None;
        };
        let x = self.tensor("max_pool", pos[0], x?)?;
        self.build(Op::MaxPool(ph as u8, pw as u8), vec![x], span)
            .map(Val::Node)
    }

    /// `binomial(size, p)`, `uniform(size, lo, hi)`, `normal(size, mean, std)`: a draw of
    /// `size` (`shape(x)` or `[n, 784]`) with scalar parameters, from the model's stream.
    fn lower_random(
        &mut self,
        kind: RandKind,
        fname: &str,
        pos: &[&Expr],
        span: Span,
    ) -> Option<Val> {
        if !self.in_model {
            self.diags.error_help(
                span,
                format!("`{fname}` draws random numbers, which only a model method can"),
                "a model keeps the seed and the position of its random stream: declare one \
                 (`struct M { .. } impl M { pub fn f(&mut self, ..) { .. } }`), draw inside a \
                 method and seed it with `m.seed(k)`",
            );
            return None;
        }
        let size = self.random_size(fname, pos[0]);
        let mut params = Vec::new();
        for e in &pos[1..] {
            params.push(self.lower_expr(e));
        }
        let (shape, dtype) = size?;
        let mut args = Vec::new();
        for (e, p) in pos[1..].iter().zip(params) {
            let n = match p? {
                Val::Lit(x, s) => self.lit_node(x, dtype, s),
                Val::Node(n) => {
                    let t = self.g.ty(n);
                    if t.rank() != 0 || t.int.is_some() || t.dtype != dtype {
                        let found = self.g.type_str(t);
                        self.diags.error_help(
                            e.full_span(),
                            format!("the parameters of `{fname}` are {} numbers, found {found}", dtype.name()),
                            "one value for every element, as in `binomial(shape(x), 1 - level)` with `level` a scalar",
                        );
                        return None;
                    }
                    n
                }
            };
            args.push(n);
        }
        let stream = self.stream_var(dtype);
        args.insert(0, stream);
        let site = self.random_sites;
        self.random_sites += 1;
        let ty = Type {
            dtype,
            shape,
            int: None,
        };
        Some(Val::Node(self.g.add(
            Op::Random(kind, site),
            args,
            ty,
            span,
        )))
    }

    /// The size argument of a random op: its shape and the float type of the draw.
    fn random_size(&mut self, fname: &str, e: &Expr) -> Option<(Vec<Dim>, DType)> {
        let help = "the size is `shape(x)` of a tensor `x` in scope, or a list of dims and \
                    integers such as `[n, 784]`";
        let (shape, dtype) = match e {
            Expr::Call { func, args, span } if func == "shape" => {
                let [Arg::Pos(x)] = args.as_slice() else {
                    self.diags
                        .error_help(*span, "`shape` takes one tensor", help);
                    return None;
                };
                match self.lower_expr(x)? {
                    Val::Lit(..) => (Vec::new(), self.default_dtype),
                    Val::Node(n) => {
                        let t = self.g.ty(n);
                        let dt = if t.int.is_some() {
                            self.default_dtype
                        } else {
                            t.dtype
                        };
                        (t.shape.clone(), dt)
                    }
                }
            }
            Expr::List(items, _) => (self.dim_list(fname, items, help)?, self.default_dtype),
            other => {
                self.diags.error_help(
                    other.full_span(),
                    format!(
                        "the first argument of `{fname}` is the size of the draw, found `{}`",
                        expr_source(other)
                    ),
                    help,
                );
                return None;
            }
        };
        if shape.len() > 2 {
            self.diags.error(
                e.full_span(),
                format!(
                    "`{fname}` draws scalars, vectors or matrices: this size has {} dims",
                    shape.len()
                ),
            );
            return None;
        }
        Some((shape, dtype))
    }

    /// The function's random stream, declared as a hidden `i64[2]` input (`[seed, call]`) the
    /// first time a random op asks for it, in the float type of that op (the function's).
    fn stream_var(&mut self, dtype: DType) -> NodeId {
        if let Some(s) = self.stream {
            return s;
        }
        let ty = Type {
            dtype,
            shape: vec![Dim::Static(2)],
            int: Some(crate::ir::IntTy::I64),
        };
        let idx = self.g.vars.len() as u32;
        let span = Span::call_site();
        self.g.vars.push(Var {
            name: crate::ir::STREAM_VAR.to_string(),
            kind: VarKind::Input,
            ty: ty.clone(),
            span,
        });
        let node = self.g.add(Op::Var(idx), Vec::new(), ty, span);
        self.stream = Some(node);
        node
    }

    /// Theano's picking idiom, `x[arange(n), y]`: entry `y[i]` of each row `i` of `x`, as
    /// `sum(x * onehot(y, m), axis = 1)` (so its gradient scatters into the picked entries).
    fn lower_pick(&mut self, base: &Expr, items: &[Expr], span: Span) -> Option<Val> {
        let help = "index a matrix as `x[arange(n), y]`: `n` its first dim, `y` integer labels";
        let x = self.lower_expr(base);
        let (rows, labels) = match items {
            [Expr::Call { func, args, .. }, y] if func == "arange" && args.len() == 1 => {
                let Arg::Pos(n) = &args[0] else {
                    self.diags.error_help(span, "`arange` takes one dim", help);
                    return None;
                };
                (n, y)
            }
            _ => {
                self.diags
                    .error_help(span, "the only indexing is picking one entry per row", help);
                return None;
            }
        };
        let y = self.lower_expr(labels);
        let Val::Node(x) = x? else {
            self.diags
                .error_help(base.full_span(), "a number cannot be indexed", help);
            return None;
        };
        let xt = self.g.ty(x).clone();
        if xt.rank() != 2 || xt.int.is_some() {
            self.diags.error_help(
                base.full_span(),
                format!(
                    "picking takes one entry per row of a matrix of numbers, found {}",
                    self.g.type_str(&xt)
                ),
                help,
            );
            return None;
        }
        let n = match rows {
            Expr::Num {
                value,
                is_int: true,
                ..
            } => Dim::Static(*value as u64),
            Expr::Name(id) if self.g.syms.contains(&id.to_string()) => self.g.sym(&id.to_string()),
            other => {
                self.diags.error_help(
                    other.full_span(),
                    format!("`arange` takes a dim, found `{}`", expr_source(other)),
                    help,
                );
                return None;
            }
        };
        if n != xt.shape[0] {
            self.diags.error_help(
                rows.full_span(),
                format!(
                    "`arange({})` does not count the rows of {}: picking runs over the first dim",
                    expr_source(rows),
                    self.g.type_str(&xt)
                ),
                format!("write `arange({})`", self.g.dim_str(xt.shape[0])),
            );
            return None;
        }
        let Val::Node(y) = y? else {
            self.diags.error_help(
                labels.full_span(),
                "the labels must be a vector of integers, found a number",
                help,
            );
            return None;
        };
        let yt = self.g.ty(y).clone();
        if yt.int.is_none() || yt.shape != [xt.shape[0]] {
            let dims = self.g.dim_str(xt.shape[0]);
            self.diags.error_help(
                labels.full_span(),
                format!(
                    "picking needs integer labels, one per row: `i64[{dims}]`, found {}",
                    self.g.type_str(&yt)
                ),
                format!("declare the labels as `i64[{dims}]` (a float label vector cannot index)"),
            );
            return None;
        }
        let oh = self.build(Op::OneHot(xt.shape[1]), vec![y], span)?;
        let prod = self.build(Op::Binary(Binary::Mul), vec![x, oh], span)?;
        self.build(Op::Sum(Axis::One(1)), vec![prod], span)
            .map(Val::Node)
    }

    /// A name that is not a builtin: the closest one, or the list.
    fn unknown_function(&mut self, func: &syn::Ident, args: &[Arg]) -> Option<Val> {
        let fname = func.to_string();
        let msg = format!("unknown function `{fname}`");
        let names = BUILTINS.iter().map(|b| b.name);
        match closest(&fname, names.clone()) {
            Some(c) => self
                .diags
                .error_help(func.span(), msg, format!("did you mean `{c}`?")),
            None => self.diags.error_help(
                func.span(),
                msg,
                format!(
                    "the functions are: {}",
                    names.collect::<Vec<_>>().join(", ")
                ),
            ),
        }
        // Still look inside, so errors in the arguments are reported in the same run.
        for a in args {
            let (Arg::Pos(e) | Arg::Named(_, e)) = a;
            let _ = self.lower_expr(e);
        }
        None
    }

    /// `pow(x, k)` with a numeric literal k.
    fn lower_pow(&mut self, pos: &[&Expr], span: Span) -> Option<Val> {
        let base = self.lower_expr(pos[0]);
        let Some(k) = literal_num(pos[1]) else {
            self.diags.error_help(
                pos[1].full_span(),
                "the exponent of `pow` must be a numeric literal",
                format!(
                    "for a variable exponent write `exp({} * log({}))`",
                    expr_source(pos[1]),
                    bare_source(pos[0])
                ),
            );
            return None;
        };
        if !k.is_finite() {
            self.diags.error(
                pos[1].full_span(),
                format!("literal `{}` is out of range for f64", expr_source(pos[1])),
            );
            return None;
        }
        match base? {
            Val::Lit(x, s) => Some(Val::Lit(scalar::pow(x, k), s)),
            Val::Node(n) => self
                .build(Op::Unary(Unary::Pow(Num::new(k))), vec![n], span)
                .map(Val::Node),
        }
    }

    /// A function of two tensors: an elementwise op with broadcasting, or `dot`.
    fn lower_pair(&mut self, b: &Builtin, op: Op, pos: &[&Expr], span: Span) -> Option<Val> {
        let x = self.lower_expr(pos[0]);
        let y = self.lower_expr(pos[1]);
        let (x, y) = (x?, y?);
        if let (Op::Binary(bin), Val::Lit(u, s), Val::Lit(v, _)) = (op, x, y) {
            return Some(Val::Lit(scalar::binary(bin, u, v), s));
        }
        let like = match (x, y) {
            (Val::Node(n), _) | (_, Val::Node(n)) => Some(n),
            _ => None,
        };
        let x = self.node_of(x, like);
        let y = self.node_of(y, like);
        // Check here, where the arguments' source is known, so a hint can quote the fix.
        let (l, r) = (expr_source(pos[0]), expr_source(pos[1]));
        let (tx, ty) = (self.g.ty(x).clone(), self.g.ty(y).clone());
        let checked = match op {
            Op::Dot => dot_type(&self.g, &tx, &ty, Some((&l, &r))),
            _ => binary_type(&self.g, b.name, &tx, &ty, Some((&l, &r))),
        };
        if let Err(e) = checked {
            self.report(span, e);
            return None;
        }
        self.build(op, vec![x, y], span).map(Val::Node)
    }

    /// `sum`, `mean` or `max`, over everything or `axis = k`.
    fn lower_reduce(
        &mut self,
        r: Reduce,
        arg: &Expr,
        axis: Option<(i64, Span, Span)>,
        keepdims: bool,
        span: Span,
    ) -> Option<Val> {
        let v = self.lower_reduce_dims(r, arg, axis, span)?;
        let Val::Node(n) = v else { return Some(v) };
        if !keepdims {
            return Some(v);
        }
        // The folded axis stays as a dim of 1, so the result broadcasts against the argument.
        let Some(Val::Node(x)) = self.lower_expr(arg) else {
            return Some(v);
        };
        let rank = self.g.ty(x).rank();
        match axis {
            None => {
                let mut n = n;
                for _ in 0..rank {
                    n = self.build(Op::ExpandDims(0), vec![n], span)?;
                }
                Some(Val::Node(n))
            }
            Some((k, _, _)) => {
                let k = if k < 0 { k + rank as i64 } else { k } as u8;
                self.build(Op::ExpandDims(k), vec![n], span).map(Val::Node)
            }
        }
    }

    fn lower_reduce_dims(
        &mut self,
        r: Reduce,
        arg: &Expr,
        axis: Option<(i64, Span, Span)>,
        span: Span,
    ) -> Option<Val> {
        let v = self.lower_expr(arg)?;
        let x = self.node_of(v, None);
        let rank = self.g.ty(x).rank();
        let ax = self.axis_of(x, axis, None)?;
        if rank == 0 {
            return Some(Val::Node(x)); // reducing a scalar is the scalar
        }
        let op = match r {
            Reduce::Max => Op::Max(ax),
            Reduce::Sum | Reduce::Mean => Op::Sum(ax),
        };
        let total = self.build(op, vec![x], span)?;
        if r != Reduce::Mean {
            return Some(Val::Node(total));
        }
        // mean = sum * (1 / count); count is a product of dims, symbolic ones bound at run time.
        let t = self.g.ty(x).clone();
        let dims: Vec<Dim> = match ax {
            Axis::All => t.shape.clone(),
            Axis::One(k) => vec![t.shape[k as usize]],
        };
        let st = Type::scalar(t.dtype);
        let mut count = None;
        for d in dims {
            let dn = self.g.add(Op::DimSize(d), Vec::new(), st.clone(), span);
            count = Some(match count {
                None => dn,
                Some(c) => self.build(Op::Binary(Binary::Mul), vec![c, dn], span)?,
            });
        }
        let one = self.g.scalar_const(1.0, t.dtype, span);
        let inv = self.build(Op::Binary(Binary::Div), vec![one, count?], span)?;
        self.build(Op::Binary(Binary::Mul), vec![total, inv], span)
            .map(Val::Node)
    }

    /// A composite builtin: its pattern, with `?x` and `?y` the arguments. Constants take the
    /// element type of the first argument, and broadcast as literals do.
    fn lower_composite(&mut self, pattern: &str, pos: &[&Expr], span: Span) -> Option<Val> {
        let mut vals = Vec::new();
        for p in pos {
            vals.push(self.lower_expr(p));
        }
        let vals: Vec<Val> = vals.into_iter().collect::<Option<_>>()?;
        let like = vals.iter().find_map(|v| match v {
            Val::Node(n) => Some(*n),
            Val::Lit(..) => None,
        });
        let args: Vec<NodeId> = vals.into_iter().map(|v| self.node_of(v, like)).collect();
        let dtype = self.g.ty(args[0]).dtype;
        let p = Pat::parse(pattern);
        self.instantiate(&p, &args, dtype, span).map(Val::Node)
    }

    fn instantiate(
        &mut self,
        p: &Pat,
        args: &[NodeId],
        dtype: DType,
        span: Span,
    ) -> Option<NodeId> {
        match p {
            Pat::Var(v) => {
                let i = ["x", "y"].iter().position(|n| n == v);
                Some(args[i.expect("a composite uses ?x and ?y")])
            }
            Pat::Num(c) => Some(self.g.scalar_const(*c, dtype, span)),
            Pat::Op(op, ps) => {
                let mut a = Vec::with_capacity(ps.len());
                for q in ps {
                    a.push(self.instantiate(q, args, dtype, span)?);
                }
                self.build(*op, a, span)
            }
        }
    }

    /// The variables a node is computed from, for hints: "`w` and `x`".
    fn vars_of(&self, n: NodeId) -> String {
        let live = self.g.reachable(&[n]);
        let names: Vec<String> = self
            .g
            .ids()
            .filter(|id| live[id.idx()])
            .filter_map(|id| match self.g.op(id) {
                Op::Var(i) => Some(format!("`{}`", self.g.vars[i as usize].name)),
                _ => None,
            })
            .collect();
        match names.split_last() {
            None => "constants only".into(),
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        }
    }

    fn lower_grad(&mut self, pos: &[&Expr], span: Span) -> Option<NodeId> {
        if pos.len() != 2 {
            let at = pos.get(2).map(|e| e.full_span()).unwrap_or(span);
            self.diags.error(
                at,
                format!(
                    "`grad` takes 2 arguments (cost, variable), found {}",
                    pos.len()
                ),
            );
            return None;
        }
        let cost = self.lower_expr(pos[0]);
        let Expr::Name(wrt) = pos[1] else {
            self.diags.error(
                pos[1].full_span(),
                format!(
                    "the second argument of `grad` must name an input or a parameter, found `{}`",
                    bare_source(pos[1])
                ),
            );
            return None;
        };
        let wrt_val = self.lower_expr(pos[1]);
        let cost = cost?;
        let wrt_node = match wrt_val? {
            Val::Node(n) if matches!(self.g.op(n), Op::Var(_)) => n,
            v => {
                let help = match v {
                    Val::Node(n) => format!(
                        "take the gradient with respect to what `{wrt}` is computed from: {}",
                        self.vars_of(n)
                    ),
                    Val::Lit(..) => format!("`{wrt}` is a constant: it has no gradient"),
                };
                self.diags.error_help(
                    wrt.span(),
                    format!("`grad` needs an input or a parameter as its variable, found `{wrt}`, an intermediate value"),
                    help,
                );
                return None;
            }
        };
        let Op::Var(vi) = self.g.op(wrt_node) else {
            unreachable!()
        };
        let cost = match cost {
            Val::Node(n) => n,
            Val::Lit(..) => {
                self.diags.error(
                    pos[0].full_span(),
                    format!("the cost does not depend on `{wrt}`: it is a constant"),
                );
                return None;
            }
        };
        let ct = self.g.ty(cost).clone();
        if ct.rank() != 0 {
            let src = bare_source(pos[0]);
            self.diags.error_help(
                pos[0].full_span(),
                format!("`grad` needs a scalar cost, found {}", self.g.type_str(&ct)),
                format!("reduce it first, e.g. `mean({src})` or `sum({src})`"),
            );
            return None;
        }
        if !self.g.depends_on(cost, wrt_node) {
            self.diags.error_help(
                wrt.span(),
                format!("the cost does not depend on `{wrt}`, so its gradient is not defined"),
                format!("the cost is computed from {}", self.vars_of(cost)),
            );
            return None;
        }
        if ct.dtype != self.g.ty(wrt_node).dtype {
            self.diags.error(
                wrt.span(),
                format!(
                    "element types differ in `grad`: the cost is {}, `{wrt}` is {}",
                    self.g.type_str(&ct),
                    self.g.type_str(self.g.ty(wrt_node))
                ),
            );
            return None;
        }
        if let Some(int) = self.g.ty(wrt_node).int {
            self.diags.error_help(
                wrt.span(),
                format!("`grad` with respect to `{wrt}`, an {} tensor", int.name()),
                "integers are labels or indices: nothing varies continuously, so there is no gradient",
            );
            return None;
        }
        // Comparisons and argmax are piecewise constant: they pass no gradient. A cost that
        // reaches `wrt` only through them has a gradient of zero wherever it exists, almost
        // surely not what the cost meant; one that also reaches it smoothly (`x * gt(x, 0)`)
        // is differentiated along the smooth paths.
        let blocks = |id: NodeId| matches!(self.g.op(id), Op::Compare(_) | Op::ArgMax(_));
        if self.g.depends_on(cost, wrt_node) && !self.g.depends_on_avoiding(cost, wrt_node, blocks)
        {
            let first = self.g.ids().find(|&id| {
                id > wrt_node
                    && id <= cost
                    && blocks(id)
                    && self.g.depends_on(id, wrt_node)
                    && self.g.depends_on(cost, id)
            });
            if let Some(id) = first {
                let what = crate::ir::op_name(self.g.op(id));
                self.diags.error_help(
                    self.g.node(id).span,
                    format!(
                        "`{what}` has no gradient, and `grad(..., {wrt})` reaches `{wrt}` only through it"
                    ),
                    "compute it outside the cost (a metric such as the error rate), or use a smooth function of the scores",
                );
                return None;
            }
        }
        let ty = self.g.ty(wrt_node).clone();
        let node = self.g.add(Op::Grad(vi), vec![cost], ty, span);
        let text = format!("grad({}, {wrt})", expr_source(pos[0]));
        if !self.grads.iter().any(|(_, n)| *n == node) {
            self.grads.push((text, node));
        }
        Some(node)
    }
}

fn literal_num(e: &Expr) -> Option<f64> {
    match e {
        Expr::Num { value, .. } => Some(*value),
        Expr::Neg { expr, .. } => literal_num(expr).map(|v| -v),
        _ => None,
    }
}

fn literal_int(e: &Expr) -> Option<i64> {
    match e {
        Expr::Num {
            value,
            is_int: true,
            ..
        } => Some(*value as i64),
        Expr::Neg { expr, .. } => literal_int(expr).map(|v| -v),
        _ => None,
    }
}
