//! Stage 3: rewrite rules as named data, run bottom-up to a fixpoint under explicit limits.
//!
//! Every node is normalized as it is built: the rules are tried on it in table order, and a rule
//! that fires builds its replacement through the same normalizing builder. Rules marked inexact
//! are exact only for finite values (Theano applies them too); `#[strict]` turns them off.

use std::collections::HashMap;

use proc_macro2::Span;
use tensor_fn_kernels::scalar;

use crate::pattern::Pat;

use crate::ir::{
    broadcast_shapes, Axis, Binary, DType, Dim, Function, Graph, NodeId, Op, Type, Unary,
};

/// How a rule matches and rewrites.
pub enum RuleKind {
    /// An s-expression pattern and its replacement: `(log (sigmoid ?x))`. A number matches a
    /// constant of that value (any shape); `?x` binds any node.
    Pattern(&'static str, &'static str),
    /// A rule that needs arithmetic or a look across many nodes.
    Func(fn(&mut Simplifier, NodeId) -> Option<NodeId>),
}

pub struct Rule {
    pub name: &'static str,
    /// False when the rewrite can change results for inf/NaN or by rounding.
    pub exact: bool,
    pub kind: RuleKind,
}

macro_rules! rule {
    ($name:literal, exact; $lhs:literal => $rhs:literal) => {
        Rule {
            name: $name,
            exact: true,
            kind: RuleKind::Pattern($lhs, $rhs),
        }
    };
    ($name:literal, inexact; $lhs:literal => $rhs:literal) => {
        Rule {
            name: $name,
            exact: false,
            kind: RuleKind::Pattern($lhs, $rhs),
        }
    };
    ($name:literal, exact; fn $f:path) => {
        Rule {
            name: $name,
            exact: true,
            kind: RuleKind::Func($f),
        }
    };
    ($name:literal, inexact; fn $f:path) => {
        Rule {
            name: $name,
            exact: false,
            kind: RuleKind::Func($f),
        }
    };
}

/// The rules, tried in this order on every node.
pub const RULES: &[Rule] = &[
    // Arithmetic on constants, in the element type's precision.
    rule!("const-fold", exact; fn const_fold),
    // --x = x
    rule!("neg-neg", exact; "(neg (neg ?x))" => "?x"),
    // (x.T).T = x
    rule!("transpose-transpose", exact; "(transpose (transpose ?x))" => "?x"),
    // x + 0 = x, x * 1 = x, x / 1 = x, pow(x, 1) = x
    rule!("add-zero", exact; "(add 0 ?x)" => "?x"),
    rule!("add-zero", exact; "(add ?x 0)" => "?x"),
    rule!("mul-one", exact; "(mul 1 ?x)" => "?x"),
    rule!("mul-one", exact; "(mul ?x 1)" => "?x"),
    rule!("mul-neg-one", exact; "(mul -1 ?x)" => "(neg ?x)"),
    rule!("div-one", exact; "(div ?x 1)" => "?x"),
    rule!("pow-one", exact; "(pow1 ?x)" => "?x"),
    // x * 0 = 0: wrong when x is inf or NaN.
    rule!("mul-zero", inexact; "(mul 0 ?x)" => "0"),
    rule!("mul-zero", inexact; "(mul ?x 0)" => "0"),
    // x / x = 1: wrong when x is 0, inf or NaN.
    rule!("div-self", inexact; "(div ?x ?x)" => "1"),
    // Stabilization: log(sigmoid(x)) = -softplus(-x); finite for large |x|.
    rule!("log-sigmoid", exact; "(log (sigmoid ?x))" => "(neg (softplus (neg ?x)))"),
    // log(1 - sigmoid(x)) = -softplus(x); finite for large |x|.
    rule!("log-one-minus-sigmoid", exact; "(log (add 1 (neg (sigmoid ?x))))" => "(neg (softplus ?x))"),
    // log(softmax(x)) = log_softmax(x) = x - max - log(sum(e^(x - max))): finite where the
    // softmax underflows to 0 (always on: it only removes a rounding and an overflow).
    rule!("log-softmax", exact; fn log_softmax),
    // sum(onehot(y, k), axis = 1) = 1: each row has one 1 (labels are taken to lie in 0..k,
    // as the picking idiom requires), so the gradient of a cross-entropy through
    // log_softmax is the fused softmax(z) - onehot(y).
    rule!("sum-onehot", exact; fn sum_onehot),
    // sigmoid(-x) = 1 - sigmoid(x): reuses sigmoid(x), which the forward pass computes anyway.
    rule!("sigmoid-neg", inexact; "(sigmoid (neg ?x))" => "(add 1 (neg (sigmoid ?x)))"),
    // softplus(-x) = softplus(x) - x: one softplus instead of two when both appear (the
    // stabilized cross-entropy has both).
    rule!("softplus-neg", inexact; "(softplus (neg ?x))" => "(add (softplus ?x) (neg ?x))"),
    // exp(log(x)) = x for x > 0 (NaN otherwise); log(exp(x)) = x unless exp overflows.
    rule!("exp-log", inexact; "(exp (log ?x))" => "?x"),
    rule!("log-exp", inexact; "(log (exp ?x))" => "?x"),
    // (-a) * b = -(a * b): pulls signs out so sums can cancel terms.
    rule!("mul-neg", exact; fn mul_neg),
    // c * x with the constant first, other products ordered by node: one form for a*b and b*a.
    rule!("mul-canonical", exact; fn mul_order),
    // c1 * (c2 * x) = (c1 c2) * x: reassociates, so rounding can differ.
    rule!("mul-const-const", inexact; fn mul_const_const),
    // x / c = x * (1/c) when 1/c is exact (c a power of two).
    rule!("div-const", exact; fn div_const),
    // (a b)^T = b^T a^T: the GEMM writes the transposed product directly.
    rule!("transpose-dot", exact; "(transpose (dot ?a ?b))" => "(dot (transpose ?b) (transpose ?a))"),
    // f(broadcast(x)) = broadcast(f(x)): an elementwise op on copies runs once per original.
    rule!("unary-broadcast", exact; fn unary_broadcast),
    // broadcast(x) to x's own type is x; a broadcast feeding an elementwise op is implicit.
    rule!("broadcast-noop", exact; fn broadcast_noop),
    rule!("broadcast-implicit", exact; fn broadcast_implicit),
    // sum(broadcast(x)) = sum(x) * (number of copies).
    rule!("sum-broadcast", exact; fn sum_broadcast),
    // dot with a zero operand is zero: wrong when the other operand holds inf or NaN.
    rule!("dot-zero", inexact; fn dot_zero),
    // Sums as sorted terms with coefficients: a + b and b + a are one node; reassociates.
    rule!("add-canonical", inexact; fn add_canonical),
    // x + (-x) = 0: the seed's example; wrong when x is inf or NaN.
    rule!("add-cancel", inexact; fn add_cancel_marker),
];

/// Total rewrites allowed in one function before the simplifier gives up with an error.
pub const MAX_REWRITES: usize = 200_000;

pub struct Simplifier {
    pub g: Graph,
    strict: bool,
    /// Raw node -> its normal form.
    norm: HashMap<NodeId, NodeId>,
    /// (rule name, exact, count), in first-fired order.
    pub fired: Vec<(&'static str, bool, usize)>,
    fuel: usize,
    pub limit_hit: bool,
    patterns: Vec<Option<(Pat, Pat)>>,
    /// Set by add_canonical when it removed terms that cancelled.
    cancelled: bool,
}

/// Simplifies a function's graph in place; returns false if the rewrite limit was hit.
pub fn simplify(f: &mut Function) -> Simplifier {
    let mut s = Simplifier::new(f.options.strict, f.graph.vars.clone(), f.graph.syms.clone());
    let roots = f.roots();
    let mut map = vec![NodeId(u32::MAX); f.graph.len()];
    let live = f.graph.reachable(&roots);
    for id in f.graph.ids() {
        if !live[id.idx()] {
            continue;
        }
        let n = f.graph.node(id);
        let args = n.args.iter().map(|a| map[a.idx()]).collect();
        map[id.idx()] = s.add(n.op, args, n.ty.clone(), n.span);
    }
    let new_roots: Vec<NodeId> = roots.iter().map(|r| map[r.idx()]).collect();
    let (g, r) = s.g.extract(&new_roots);
    f.set_roots(g, &r);
    s.g = Graph::default();
    s
}

impl Simplifier {
    pub fn new(strict: bool, vars: Vec<crate::ir::Var>, syms: Vec<String>) -> Self {
        Simplifier {
            g: Graph::with_vars(vars, syms),
            strict,
            norm: HashMap::new(),
            fired: Vec::new(),
            fuel: MAX_REWRITES,
            limit_hit: false,
            patterns: RULES
                .iter()
                .map(|r| match r.kind {
                    RuleKind::Pattern(l, rr) => Some((Pat::parse(l), Pat::parse(rr))),
                    RuleKind::Func(_) => None,
                })
                .collect(),
            cancelled: false,
        }
    }

    /// Builds a node and returns its normal form.
    pub fn add(&mut self, op: Op, args: Vec<NodeId>, ty: Type, span: Span) -> NodeId {
        let raw = self.g.add(op, args, ty, span);
        self.normalize(raw)
    }

    /// Builds a node whose type follows from the shape rule, normalized.
    fn build(&mut self, op: Op, args: Vec<NodeId>, span: Span) -> Option<NodeId> {
        let raw = self.g.build(op, args, span).ok()?;
        Some(self.normalize(raw))
    }

    fn normalize(&mut self, raw: NodeId) -> NodeId {
        if let Some(&n) = self.norm.get(&raw) {
            return n;
        }
        // Mark in progress: a rule rebuilding this very node gets it back unchanged.
        self.norm.insert(raw, raw);
        let mut id = raw;
        'outer: loop {
            if self.fuel == 0 {
                self.limit_hit = true;
                break;
            }
            for (ri, rule) in RULES.iter().enumerate() {
                if self.strict && !rule.exact {
                    continue;
                }
                let out = match &rule.kind {
                    RuleKind::Func(f) => f(self, id),
                    RuleKind::Pattern(..) => self.apply_pattern(ri, id),
                };
                if let Some(new) = out {
                    if new != id {
                        self.fuel -= 1;
                        let mut name = rule.name;
                        let mut exact = rule.exact;
                        if name == "add-canonical" && std::mem::take(&mut self.cancelled) {
                            name = "add-cancel";
                            exact = false;
                        }
                        self.record(name, exact);
                        id = new;
                        if let Some(&n) = self.norm.get(&id) {
                            id = n;
                        }
                        continue 'outer;
                    }
                }
                self.cancelled = false;
            }
            break;
        }
        self.norm.insert(raw, id);
        self.norm.insert(id, id);
        id
    }

    fn record(&mut self, name: &'static str, exact: bool) {
        match self.fired.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.2 += 1,
            None => self.fired.push((name, exact, 1)),
        }
    }

    fn konst(&mut self, v: f64, ty: Type, span: Span) -> NodeId {
        let v = round_to(v, ty.dtype);
        self.g.constant(v, ty, span)
    }

    /// Wraps `n` in a broadcast to `ty` when its own type is smaller; None if it can't fit.
    fn fit(&mut self, n: NodeId, ty: &Type, span: Span) -> Option<NodeId> {
        let nt = self.g.ty(n).clone();
        if &nt == ty {
            return Some(n);
        }
        if nt.dtype != ty.dtype
            || broadcast_shapes(&nt.shape, &ty.shape).as_ref() != Some(&ty.shape)
        {
            return None;
        }
        if let Some(c) = self.g.const_value(n) {
            return Some(self.konst(c, ty.clone(), span));
        }
        Some(self.add(Op::Broadcast, vec![n], ty.clone(), span))
    }

    fn apply_pattern(&mut self, ri: usize, id: NodeId) -> Option<NodeId> {
        let (lhs, rhs) = self.patterns[ri].clone()?;
        let mut b = Vec::new();
        if !lhs.matches(&self.g, id, &mut b) {
            return None;
        }
        let ty = self.g.ty(id).clone();
        let span = self.g.node(id).span;
        let out = self.instantiate(&rhs, &b, ty.dtype, span)?;
        self.fit(out, &ty, span)
    }

    fn instantiate(
        &mut self,
        p: &Pat,
        b: &[(String, NodeId)],
        dtype: DType,
        span: Span,
    ) -> Option<NodeId> {
        match p {
            Pat::Var(v) => b.iter().find(|(n, _)| n == v).map(|x| x.1),
            Pat::Num(x) => Some(self.konst(*x, Type::scalar(dtype), span)),
            Pat::Op(op, args) => {
                let mut a = Vec::new();
                for p in args {
                    a.push(self.instantiate(p, b, dtype, span)?);
                }
                self.build(*op, a, span)
            }
        }
    }
}

fn round_to(v: f64, dtype: DType) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F64 => v,
    }
}

// ---------------------------------------------------------------------------------------------
// Procedural rules.

fn is_const(g: &Graph, id: NodeId) -> bool {
    matches!(g.op(id), Op::Const(_))
}

fn const_fold(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    let n = s.g.node(id).clone();
    let c = |k: usize| s.g.const_value(n.args[k]);
    let dt = n.ty.dtype;
    let v = match n.op {
        Op::DimSize(Dim::Static(k)) => k as f64,
        // The ops' one definition, in the function's element type: the folded constant is what
        // the running code would have computed.
        Op::Unary(u) => {
            let x = c(0)?;
            match dt {
                DType::F32 => f64::from(scalar::unary(u, x as f32)),
                DType::F64 => scalar::unary(u, x),
            }
        }
        Op::Binary(b) => {
            let (x, y) = (c(0)?, c(1)?);
            match dt {
                DType::F32 => f64::from(scalar::binary(b, x as f32, y as f32)),
                DType::F64 => scalar::binary(b, x, y),
            }
        }
        Op::Transpose | Op::ExpandDims(_) | Op::Broadcast | Op::Reshape => c(0)?,
        Op::Sum(axis) => {
            let x = c(0)?;
            let at = s.g.ty(n.args[0]).clone();
            let dims: Vec<Dim> = match axis {
                Axis::All => at.shape.clone(),
                Axis::One(k) => vec![at.shape[k as usize]],
            };
            let mut count = 1.0;
            for d in dims {
                match d {
                    Dim::Static(k) => count *= k as f64,
                    Dim::Sym(_) => return None,
                }
            }
            x * count
        }
        Op::Max(_) => c(0)?,
        Op::Compare(b) => {
            let (x, y) = (c(0)?, c(1)?);
            match dt {
                DType::F32 => f64::from(scalar::binary(b, x as f32, y as f32)),
                DType::F64 => scalar::binary(b, x, y),
            }
        }
        Op::Where => {
            let (k, x, y) = (c(0)?, c(1)?, c(2)?);
            scalar::select(k, x, y)
        }
        Op::Var(_)
        | Op::Const(_)
        | Op::Conv2d { .. }
        | Op::ConvGradInput { .. }
        | Op::ConvGradFilter { .. }
        | Op::MaxPool(..)
        | Op::MaxPoolGrad(..)
        | Op::Call(_)
        | Op::DimSize(Dim::Sym(_))
        | Op::Outer
        | Op::Dot
        | Op::Grad(_)
        | Op::OneHot(_)
        | Op::ArgMax(_)
        | Op::Softmax(_)
        | Op::LogSoftmax(_)
        | Op::Random(..) => return None,
    };
    Some(s.konst(v, n.ty, n.span))
}

fn mul_neg(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    if s.g.op(id) != Op::Binary(Binary::Mul) {
        return None;
    }
    let (a, b) = (s.g.args(id)[0], s.g.args(id)[1]);
    let span = s.g.node(id).span;
    let neg = Op::Unary(Unary::Neg);
    let inner = if s.g.op(a) == neg && !is_const(&s.g, b) {
        (s.g.args(a)[0], b)
    } else if s.g.op(b) == neg && !is_const(&s.g, a) {
        (a, s.g.args(b)[0])
    } else {
        return None;
    };
    let m = s.build(Op::Binary(Binary::Mul), vec![inner.0, inner.1], span)?;
    let ty = s.g.ty(id).clone();
    let r = s.build(neg, vec![m], span)?;
    s.fit(r, &ty, span)
}

fn mul_order(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    if s.g.op(id) != Op::Binary(Binary::Mul) {
        return None;
    }
    let (a, b) = (s.g.args(id)[0], s.g.args(id)[1]);
    let swap = if is_const(&s.g, b) {
        !is_const(&s.g, a)
    } else {
        !is_const(&s.g, a) && b < a
    };
    if !swap {
        return None;
    }
    let ty = s.g.ty(id).clone();
    let span = s.g.node(id).span;
    Some(s.add(Op::Binary(Binary::Mul), vec![b, a], ty, span))
}

fn mul_const_const(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    if s.g.op(id) != Op::Binary(Binary::Mul) {
        return None;
    }
    let (a, b) = (s.g.args(id)[0], s.g.args(id)[1]);
    let c1 = s.g.const_value(a)?;
    if s.g.op(b) != Op::Binary(Binary::Mul) {
        return None;
    }
    let (b0, b1) = (s.g.args(b)[0], s.g.args(b)[1]);
    let c2 = s.g.const_value(b0)?;
    let ty = s.g.ty(id).clone();
    let span = s.g.node(id).span;
    let c = s.konst(c1 * c2, Type::scalar(ty.dtype), span);
    let m = s.build(Op::Binary(Binary::Mul), vec![c, b1], span)?;
    s.fit(m, &ty, span)
}

fn div_const(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    if s.g.op(id) != Op::Binary(Binary::Div) {
        return None;
    }
    let (a, b) = (s.g.args(id)[0], s.g.args(id)[1]);
    let c = s.g.const_value(b)?;
    let r = 1.0 / c;
    // Exact only when the reciprocal is a power of two (its mantissa is 1).
    if c == 0.0 || !r.is_finite() || r.abs().log2().fract() != 0.0 {
        return None;
    }
    let ty = s.g.ty(id).clone();
    let span = s.g.node(id).span;
    let k = s.konst(r, Type::scalar(ty.dtype), span);
    let m = s.build(Op::Binary(Binary::Mul), vec![k, a], span)?;
    s.fit(m, &ty, span)
}

fn log_softmax(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    if s.g.op(id) != Op::Unary(Unary::Log) {
        return None;
    }
    let a = s.g.args(id)[0];
    let Op::Softmax(ax) = s.g.op(a) else {
        return None;
    };
    let x = s.g.args(a)[0];
    let span = s.g.node(id).span;
    s.build(Op::LogSoftmax(ax), vec![x], span)
}

fn sum_onehot(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    if s.g.op(id) != Op::Sum(Axis::One(1)) {
        return None;
    }
    let mut a = s.g.args(id)[0];
    // sum(-x) = -sum(x): look through a sign.
    let negated = s.g.op(a) == Op::Unary(Unary::Neg);
    if negated {
        a = s.g.args(a)[0];
    }
    // sum(c * onehot, axis = 1) = c for a c constant along the row (a scalar or a column).
    let (c, oh) = match s.g.op(a) {
        Op::OneHot(_) => (None, a),
        Op::Binary(Binary::Mul) => {
            let (l, r) = (s.g.args(a)[0], s.g.args(a)[1]);
            let along_rows = |s: &Simplifier, c: NodeId| {
                let t = s.g.ty(c);
                t.rank() == 0 || (t.rank() == 2 && t.shape[1] == crate::ir::Dim::Static(1))
            };
            match (s.g.op(l), s.g.op(r)) {
                (Op::OneHot(_), _) if along_rows(s, r) => (Some(r), l),
                (_, Op::OneHot(_)) if along_rows(s, l) => (Some(l), r),
                _ => return None,
            }
        }
        _ => return None,
    };
    let _ = oh;
    let ty = s.g.ty(id).clone();
    let span = s.g.node(id).span;
    let r = match c {
        None => s.konst(1.0, ty, span),
        Some(c) if s.g.ty(c).rank() == 0 => s.fit(c, &ty, span)?,
        Some(c) => s.build(Op::Sum(Axis::One(1)), vec![c], span)?,
    };
    if negated {
        s.build(Op::Unary(Unary::Neg), vec![r], span)
    } else {
        Some(r)
    }
}

fn unary_broadcast(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    let op = s.g.op(id);
    let a = *s.g.args(id).first()?;
    if s.g.op(a) != Op::Broadcast {
        return None;
    }
    let x = s.g.args(a)[0];
    let ty = s.g.ty(id).clone();
    let span = s.g.node(id).span;
    match op {
        Op::Unary(_) => {
            let inner = s.build(op, vec![x], span)?;
            Some(s.add(Op::Broadcast, vec![inner], ty, span))
        }
        // A broadcast scalar gains a dim of 1 by broadcasting to the larger shape directly.
        Op::ExpandDims(_) if s.g.ty(x).rank() == 0 => Some(s.add(Op::Broadcast, vec![x], ty, span)),
        _ => None,
    }
}

fn broadcast_noop(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    if s.g.op(id) != Op::Broadcast {
        return None;
    }
    let a = s.g.args(id)[0];
    if s.g.ty(a) == s.g.ty(id) {
        return Some(a);
    }
    if s.g.op(a) == Op::Broadcast {
        let inner = s.g.args(a)[0];
        let ty = s.g.ty(id).clone();
        let span = s.g.node(id).span;
        return Some(s.add(Op::Broadcast, vec![inner], ty, span));
    }
    None
}

fn broadcast_implicit(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    let Op::Binary(b) = s.g.op(id) else {
        return None;
    };
    let args = s.g.args(id).to_vec();
    let ty = s.g.ty(id).clone();
    let span = s.g.node(id).span;
    let mut new = args.clone();
    for k in 0..2 {
        if s.g.op(args[k]) == Op::Broadcast {
            new[k] = s.g.args(args[k])[0];
        }
    }
    if new == args {
        return None;
    }
    // Only when implicit broadcasting of the un-broadcast arguments gives the same type.
    let shape = broadcast_shapes(&s.g.ty(new[0]).shape, &s.g.ty(new[1]).shape)?;
    if shape != ty.shape {
        return None;
    }
    Some(s.add(Op::Binary(b), new, ty, span))
}

fn sum_broadcast(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    if s.g.op(id) != Op::Sum(Axis::All) {
        return None;
    }
    let b = s.g.args(id)[0];
    let x = match s.g.op(b) {
        Op::Broadcast => s.g.args(b)[0],
        // A constant array is a broadcast scalar.
        Op::Const(_) if s.g.ty(b).rank() > 0 => {
            let c = s.g.const_value(b)?;
            let span = s.g.node(id).span;
            s.konst(c, Type::scalar(s.g.ty(b).dtype), span)
        }
        _ => return None,
    };
    let (xs, bs) = (s.g.ty(x).shape.clone(), s.g.ty(b).shape.clone());
    let ty = s.g.ty(id).clone();
    let span = s.g.node(id).span;
    // The copies: every dim of the broadcast target that x does not have (or has as 1).
    let off = bs.len() - xs.len();
    let mut factor: Option<NodeId> = None;
    for (k, d) in bs.iter().enumerate() {
        let copied = k < off || xs[k - off] != *d;
        if copied {
            let dn = s.add(Op::DimSize(*d), Vec::new(), ty.clone(), span);
            factor = Some(match factor {
                None => dn,
                Some(f) => s.build(Op::Binary(Binary::Mul), vec![f, dn], span)?,
            });
        }
    }
    let sx = if xs.is_empty() {
        x
    } else {
        s.build(Op::Sum(Axis::All), vec![x], span)?
    };
    match factor {
        None => Some(sx),
        Some(f) => s.build(Op::Binary(Binary::Mul), vec![f, sx], span),
    }
}

fn dot_zero(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    if s.g.op(id) != Op::Dot && s.g.op(id) != Op::Outer {
        return None;
    }
    let args = s.g.args(id).to_vec();
    if args.iter().any(|a| s.g.const_value(*a) == Some(0.0)) {
        let ty = s.g.ty(id).clone();
        let span = s.g.node(id).span;
        return Some(s.konst(0.0, ty, span));
    }
    None
}

/// Collects a sum into coefficient * term pairs and a constant.
/// Sums with more terms than this are left as written: canonicalizing one costs time
/// quadratic in its terms, and it is redone at every `+` of a long chain.
pub const MAX_SUM_TERMS: usize = 256;

/// Collects a sum into coefficient * term pairs and a constant; false when it has more than
/// `MAX_SUM_TERMS` terms.
fn collect_terms(
    g: &Graph,
    id: NodeId,
    coef: f64,
    terms: &mut Vec<(NodeId, f64, u32)>,
    konst: &mut f64,
    depth: u32,
) -> bool {
    if terms.len() > MAX_SUM_TERMS {
        return false;
    }
    let n = g.node(id);
    match n.op {
        Op::Binary(Binary::Add) if depth < 10_000 => {
            collect_terms(g, n.args[0], coef, terms, konst, depth + 1)
                && collect_terms(g, n.args[1], coef, terms, konst, depth + 1)
        }
        Op::Unary(Unary::Neg) if depth < 10_000 => {
            collect_terms(g, n.args[0], -coef, terms, konst, depth + 1)
        }
        Op::Binary(Binary::Mul)
            if g.const_value(n.args[0]).is_some() && g.ty(n.args[0]).rank() == 0 =>
        {
            let c = g.const_value(n.args[0]).unwrap_or(1.0);
            collect_terms(g, n.args[1], coef * c, terms, konst, depth + 1)
        }
        Op::Const(c) => {
            *konst += coef * c.get();
            true
        }
        _ => {
            match terms.iter_mut().find(|t| t.0 == id) {
                Some(t) => {
                    t.1 += coef;
                    t.2 += 1;
                }
                None => terms.push((id, coef, 1)),
            }
            true
        }
    }
}

fn add_canonical(s: &mut Simplifier, id: NodeId) -> Option<NodeId> {
    if s.g.op(id) != Op::Binary(Binary::Add) {
        return None;
    }
    let ty = s.g.ty(id).clone();
    let span = s.g.node(id).span;
    let mut terms = Vec::new();
    let mut konst = 0.0;
    if !collect_terms(&s.g, id, 1.0, &mut terms, &mut konst, 0) {
        return None;
    }
    let cancelled = terms.iter().any(|t| t.1 == 0.0 && t.2 > 1);
    terms.retain(|t| t.1 != 0.0);
    terms.sort_by_key(|t| t.0);
    let dt = ty.dtype;
    let konst = round_to(konst, dt);
    // Rebuild with raw adds: the chain is canonical by construction, and normalizing it again
    // would re-enter this rule on its own prefix.
    let mut acc: Option<NodeId> = if konst != 0.0 {
        Some(s.g.scalar_const(konst, dt, span))
    } else {
        None
    };
    for (t, c, _) in terms {
        let (term, negate) = if c == 1.0 {
            (t, false)
        } else if c == -1.0 {
            (t, true)
        } else {
            let k = s.g.scalar_const(round_to(c.abs(), dt), dt, span);
            let m = s.g.build(Op::Binary(Binary::Mul), vec![k, t], span).ok()?;
            (m, c < 0.0)
        };
        acc = Some(match acc {
            None if negate => s.g.build(Op::Unary(Unary::Neg), vec![term], span).ok()?,
            None => term,
            Some(a) if negate => {
                let nt = s.g.build(Op::Unary(Unary::Neg), vec![term], span).ok()?;
                s.g.build(Op::Binary(Binary::Add), vec![a, nt], span).ok()?
            }
            Some(a) => {
                s.g.build(Op::Binary(Binary::Add), vec![a, term], span)
                    .ok()?
            }
        });
    }
    let out = match acc {
        Some(a) => a,
        None => s.konst(0.0, ty.clone(), span),
    };
    if out == id {
        return None;
    }
    let fitted = s.fit(out, &ty, span)?;
    if fitted == id {
        return None;
    }
    s.cancelled = cancelled;
    Some(fitted)
}

/// Listed for the report: `add-canonical` reports itself under this name when terms cancelled.
fn add_cancel_marker(_: &mut Simplifier, _: NodeId) -> Option<NodeId> {
    None
}

/// The rewrite report: one line per rule that fired, with counts and exactness.
pub fn report_text(s: &Simplifier) -> String {
    let mut out = String::new();
    for (name, exact, count) in &s.fired {
        out.push_str(&format!(
            "{name} x{count}{}\n",
            if *exact {
                ""
            } else {
                " (inexact: assumes finite values)"
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Num;

    #[test]
    fn every_pattern_parses() {
        for r in RULES {
            if let RuleKind::Pattern(l, rr) = r.kind {
                Pat::parse(l);
                Pat::parse(rr);
            }
        }
    }

    /// NaN, infinities, signed zeros, subnormals, the edges of exp and log, ordinary values.
    fn specials(dtype: DType) -> Vec<f64> {
        let mut v = vec![
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            -2.5,
            3.0,
            88.7,
            -88.7,
            -104.0,
            709.8,
            -745.0,
            1e300,
            -1e-300,
        ];
        match dtype {
            DType::F32 => v.extend(
                [
                    f32::from_bits(1),
                    -f32::from_bits(1),
                    f32::from_bits(0x007f_ffff),
                    f32::MIN_POSITIVE,
                    f32::MAX,
                ]
                .map(f64::from),
            ),
            DType::F64 => v.extend([
                f64::from_bits(1),
                -f64::from_bits(1),
                f64::from_bits(0x000f_ffff_ffff_ffff),
                f64::MIN_POSITIVE,
                f64::MAX,
            ]),
        }
        // Each as the element type holds it.
        v.into_iter().map(|x| round_to(x, dtype)).collect()
    }

    fn same(a: f64, b: f64) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    /// Folding an op of constants gives, bit for bit, what the running code computes: both are
    /// the op's one definition (`tensor_fn_kernels::scalar`), in the function's element type.
    #[test]
    fn folding_agrees_with_running_on_special_values() {
        let powers = [2.0, 0.5, 3.0, -2.0, 0.0, 1.5, -2.5, 7.0, 100.0];
        let unaries = Unary::PLAIN
            .iter()
            .copied()
            .chain(powers.map(|k| Unary::Pow(Num::new(k))));
        let span = Span::call_site();
        let mut checked = 0;
        for dtype in [DType::F32, DType::F64] {
            let ty = Type::scalar(dtype);
            let xs = specials(dtype);
            let run_unary = |u: Unary, x: f64| match dtype {
                DType::F32 => f64::from(u.eval(x as f32)),
                DType::F64 => u.eval(x),
            };
            let run_binary = |b: Binary, x: f64, y: f64| match dtype {
                DType::F32 => f64::from(b.eval(x as f32, y as f32)),
                DType::F64 => b.eval(x, y),
            };
            for u in unaries.clone() {
                for &x in &xs {
                    let mut s = Simplifier::new(true, Vec::new(), Vec::new());
                    let c = s.add(Op::Const(Num::new(x)), Vec::new(), ty.clone(), span);
                    let n = s.add(Op::Unary(u), vec![c], ty.clone(), span);
                    let folded = s.g.const_value(n).expect("a unary op of a constant folds");
                    let want = run_unary(u, x);
                    assert!(
                        same(folded, want),
                        "{u} {}({x:e}): folded {folded:e}, runs {want:e}",
                        dtype.name()
                    );
                    checked += 1;
                }
            }
            for &b in Binary::ALL {
                for &x in &xs {
                    for &y in &xs {
                        let mut s = Simplifier::new(true, Vec::new(), Vec::new());
                        let cx = s.add(Op::Const(Num::new(x)), Vec::new(), ty.clone(), span);
                        let cy = s.add(Op::Const(Num::new(y)), Vec::new(), ty.clone(), span);
                        let n = s.add(Op::Binary(b), vec![cx, cy], ty.clone(), span);
                        let folded = s.g.const_value(n).expect("a binary op of constants folds");
                        let want = run_binary(b, x, y);
                        assert!(
                            same(folded, want),
                            "{b} {}({x:e}, {y:e}): folded {folded:e}, runs {want:e}",
                            dtype.name()
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 5000, "{checked}");
    }
}
