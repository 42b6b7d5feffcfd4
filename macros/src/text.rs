//! The small, stable text forms of the IR that tests assert on and users read in the generated
//! docs: a node listing (`%3: f32[b, 784] = mul %1 %2`) and a compact infix expression.

use std::fmt::Write as _;

use crate::ir::{Axis, Binary, DType, Function, Graph, NodeId, Op, Unary};

/// Formats a constant as the user would write it, in its element type's precision.
pub fn num_str(v: f64, dtype: DType) -> String {
    match dtype {
        DType::F32 => format!("{}", v as f32),
        DType::F64 => format!("{v}"),
    }
}

/// A node's op as the graph listing shows it: `softplus`, `pow[2]`, `sum[axis=1]`.
pub fn op_text(g: &Graph, id: NodeId) -> String {
    let n = g.node(id);
    match n.op {
        Op::Var(i) => format!("{} {}", var_kind(g, i), g.vars[i as usize].name),
        Op::Const(c) => format!("const {}", num_str(c.get(), n.ty.dtype)),
        Op::DimSize(d) => format!("dim {}", g.dim_str(d)),
        Op::Unary(Unary::Pow(k)) => format!("pow[{}]", k.get()),
        Op::Unary(u) => u.name().to_string(),
        Op::Binary(b) => b.name().to_string(),
        Op::Transpose => "transpose".into(),
        Op::ExpandDims(k) => format!("expand_dims[{k}]"),
        Op::Broadcast => "broadcast".into(),
        Op::Outer => "outer".into(),
        Op::Dot => "dot".into(),
        Op::Sum(a) => format!("sum{}", axis_text(a)),
        Op::Max(a) => format!("max{}", axis_text(a)),
        Op::Grad(v) => format!("grad[{}]", g.vars[v as usize].name),
        Op::Compare(b) => crate::ir::compare_name(b).to_string(),
        Op::OneHot(k) => format!("onehot[{}]", g.dim_str(k)),
        Op::ArgMax(a) => format!("argmax{}", axis_text(a)),
        Op::Where => "where".into(),
        Op::Softmax(k) => format!("softmax[axis={k}]"),
        Op::LogSoftmax(k) => format!("log_softmax[axis={k}]"),
        Op::Random(kind, site) => format!("{}[site={site}]", kind.name()),
        Op::Reshape => "reshape".into(),
        Op::Conv2d { flip } | Op::ConvGradInput { flip } | Op::ConvGradFilter { flip } => {
            format!("{}[flip={flip}]", crate::ir::op_name(n.op))
        }
        Op::MaxPool(a, b) | Op::MaxPoolGrad(a, b) => {
            format!("{}[{a}x{b}]", crate::ir::op_name(n.op))
        }
        Op::Call(c) => format!("call {c:?}"),
    }
}

fn var_kind(g: &Graph, i: u32) -> &'static str {
    match g.vars[i as usize].kind {
        crate::ir::VarKind::Input => "input",
        crate::ir::VarKind::Param => "param",
    }
}

fn axis_text(a: Axis) -> String {
    match a {
        Axis::All => String::new(),
        Axis::One(k) => format!("[axis={k}]"),
    }
}

/// One line per live node, then `return` and update lines.
pub fn graph_text(f: &Function) -> String {
    let g = &f.graph;
    let mut roots = f.outputs.clone();
    roots.extend(f.updates.iter().map(|u| u.1));
    let live = g.reachable(&roots);
    let mut s = String::new();
    for id in g.ids() {
        if !live[id.idx()] {
            continue;
        }
        let _ = write!(
            s,
            "%{}: {} = {}",
            id.0,
            g.type_str(g.ty(id)),
            op_text(g, id)
        );
        for a in g.args(id) {
            let _ = write!(s, " %{}", a.0);
        }
        s.push('\n');
    }
    if !f.outputs.is_empty() {
        s.push_str("return");
        for o in &f.outputs {
            let _ = write!(s, " %{}", o.0);
        }
        s.push('\n');
    }
    for (p, v) in &f.updates {
        let _ = writeln!(s, "{} <- %{}", g.vars[*p as usize].name, v.0);
    }
    s
}

/// The outputs (and updates) as compact infix expressions: `v`, `0`, `dot(a, v)`.
pub fn expr_text(f: &Function) -> String {
    let g = &f.graph;
    let mut parts: Vec<String> = f.outputs.iter().map(|o| infix(g, *o)).collect();
    for (p, v) in &f.updates {
        parts.push(format!("{} <- {}", g.vars[*p as usize].name, infix(g, *v)));
    }
    parts.join("; ")
}

/// The longest infix text of one subexpression; a longer one prints as its node, `%12`, which
/// the graph listing defines. A DAG shares subexpressions, and a tree printed from it can be
/// exponentially long (`let b = a * a; let c = b * b; ...`).
pub const MAX_INFIX: usize = 2000;

/// Precedence: 1 for `+ -`, 2 for `* /`, 3 for unary minus, 4 for atoms and calls.
pub fn infix(g: &Graph, id: NodeId) -> String {
    // In topological order, each node once: linear in the graph whatever the sharing, and no
    // recursion, so a chain of thousands of ops does not overflow the compiler's stack.
    let live = g.reachable(&[id]);
    let mut done: Vec<Option<(String, u8)>> = vec![None; id.idx() + 1];
    for i in 0..=id.idx() {
        if live[i] {
            done[i] = Some(infix_node(g, NodeId(i as u32), &done));
        }
    }
    done[id.idx()].take().map(|d| d.0).unwrap_or_default()
}

/// The text of one node from its arguments' texts (precedences as in `infix`).
fn infix_node(g: &Graph, id: NodeId, done: &[Option<(String, u8)>]) -> (String, u8) {
    let n = g.node(id);
    let text = |x: NodeId| done[x.idx()].clone().unwrap_or_default();
    let a = |k: usize| text(n.args[k]);
    let wrap = |(s, p): (String, u8), min: u8| if p < min { format!("({s})") } else { s };
    let r = match n.op {
        Op::Var(i) => (g.vars[i as usize].name.clone(), 4),
        Op::Const(c) => {
            let v = c.get();
            (num_str(v, n.ty.dtype), if v < 0.0 { 3 } else { 4 })
        }
        Op::DimSize(d) => (g.dim_str(d), 4),
        Op::Unary(Unary::Neg) => (format!("-{}", wrap(a(0), 3)), 3),
        Op::Unary(Unary::Pow(k)) => (format!("pow({}, {})", a(0).0, k.get()), 4),
        Op::Unary(u) => (format!("{}({})", u.name(), a(0).0), 4),
        Op::Binary(Binary::Add) => {
            let rhs = n.args[1];
            if let Op::Unary(Unary::Neg) = g.op(rhs) {
                let inner = text(g.args(rhs)[0]);
                (format!("{} - {}", wrap(a(0), 1), wrap(inner, 2)), 1)
            } else {
                (format!("{} + {}", wrap(a(0), 1), wrap(a(1), 2)), 1)
            }
        }
        Op::Binary(Binary::Mul) => (format!("{} * {}", wrap(a(0), 2), wrap(a(1), 3)), 2),
        Op::Binary(Binary::Div) => (format!("{} / {}", wrap(a(0), 2), wrap(a(1), 3)), 2),
        Op::Binary(b) => (format!("{}({}, {})", b.name(), a(0).0, a(1).0), 4),
        Op::Transpose => (format!("{}.T", wrap(a(0), 4)), 4),
        Op::ExpandDims(k) => (format!("expand_dims({}, {k})", a(0).0), 4),
        Op::Broadcast => a(0),
        Op::Outer => (format!("outer({}, {})", a(0).0, a(1).0), 4),
        Op::Dot => (format!("dot({}, {})", a(0).0, a(1).0), 4),
        Op::Sum(Axis::All) => (format!("sum({})", a(0).0), 4),
        Op::Sum(Axis::One(k)) => (format!("sum({}, axis = {k})", a(0).0), 4),
        Op::Max(Axis::All) => (format!("max({})", a(0).0), 4),
        Op::Max(Axis::One(k)) => (format!("max({}, axis = {k})", a(0).0), 4),
        Op::Grad(v) => (format!("grad({}, {})", a(0).0, g.vars[v as usize].name), 4),
        Op::Compare(b) => (
            format!("{}({}, {})", crate::ir::compare_name(b), a(0).0, a(1).0),
            4,
        ),
        Op::OneHot(k) => (format!("onehot({}, {})", a(0).0, g.dim_str(k)), 4),
        Op::ArgMax(Axis::All) => (format!("argmax({})", a(0).0), 4),
        Op::ArgMax(Axis::One(k)) => (format!("argmax({}, axis = {k})", a(0).0), 4),
        Op::Where => (format!("where({}, {}, {})", a(0).0, a(1).0, a(2).0), 4),
        Op::Softmax(k) => (format!("softmax({}, axis = {k})", a(0).0), 4),
        Op::LogSoftmax(k) => (format!("log_softmax({}, axis = {k})", a(0).0), 4),
        Op::Reshape => {
            let dims: Vec<String> = n.ty.shape.iter().map(|d| g.dim_str(*d)).collect();
            (format!("reshape({}, [{}])", a(0).0, dims.join(", ")), 4)
        }
        Op::Conv2d { flip: true } => (format!("conv2d({}, {})", a(0).0, a(1).0), 4),
        Op::Conv2d { flip: false } => (
            format!("conv2d({}, {}, filter_flip = false)", a(0).0, a(1).0),
            4,
        ),
        Op::MaxPool(ph, pw) => (format!("max_pool({}, [{ph}, {pw}])", a(0).0), 4),
        Op::ConvGradInput { .. }
        | Op::ConvGradFilter { .. }
        | Op::MaxPoolGrad(..)
        | Op::Call(_) => {
            let args: Vec<String> = (0..n.args.len()).map(|k| a(k).0).collect();
            (
                format!("{}({})", crate::ir::op_name(n.op), args.join(", ")),
                4,
            )
        }
        // The size is the node's shape; arg 0 is the stream.
        Op::Random(kind, _) => {
            let dims: Vec<String> = n.ty.shape.iter().map(|d| g.dim_str(*d)).collect();
            let ps: Vec<String> = (1..n.args.len()).map(|k| a(k).0).collect();
            (
                format!("{}([{}], {})", kind.name(), dims.join(", "), ps.join(", ")),
                4,
            )
        }
    };
    if r.0.len() > MAX_INFIX {
        (format!("%{}", id.0), 4)
    } else {
        r
    }
}

/// `fn(a: f64[n, m], v: f64[m]) -> f64[n]`
pub fn signature_text(f: &Function) -> String {
    let g = &f.graph;
    let args: Vec<String> = f
        .inputs
        .iter()
        .map(|&i| &g.vars[i as usize])
        .filter(|v| v.name != crate::ir::STREAM_VAR)
        .map(|v| format!("{}: {}", v.name, g.type_str(&v.ty)))
        .collect();
    let outs: Vec<String> = f.outputs.iter().map(|o| g.type_str(g.ty(*o))).collect();
    let ret = match outs.len() {
        0 => String::new(),
        1 if f.ret == crate::ir::Ret::One => format!(" -> {}", outs[0]),
        _ => format!(" -> ({})", outs.join(", ")),
    };
    format!("fn {}({}){}", f.name, args.join(", "), ret)
}
