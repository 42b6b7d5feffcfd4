//! Stage 2: the hash-consed DAG every later stage works on, its shape rules, and the lowering of
//! the AST into it (names resolved, sugar lowered, shapes inferred, user errors collected).

use std::collections::HashMap;
use std::fmt::Write as _;

use proc_macro2::Span;

use crate::diag::Diagnostics;
pub use crate::syntax::DType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    pub fn idx(self) -> usize {
        self.0 as usize
    }
}

/// One dim of a type. Symbolic dims are indices into `Graph::syms`; two different symbols are
/// different dims (they never broadcast against each other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Static(u64),
    Sym(u32),
}

/// Element type and shape. Rank 0 to 2.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Type {
    pub dtype: DType,
    pub shape: Vec<Dim>,
}

impl Type {
    pub fn scalar(dtype: DType) -> Type {
        Type {
            dtype,
            shape: Vec::new(),
        }
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

/// A float constant, hashable by its bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Num(pub u64);

impl Num {
    pub fn new(v: f64) -> Num {
        // One zero: -0.0 and 0.0 are the same constant for hash-consing.
        Num(if v == 0.0 { 0.0f64 } else { v }.to_bits())
    }
    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

/// Which axes a reduction folds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Axis {
    All,
    One(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unary {
    Neg,
    Exp,
    Log,
    Log1p,
    Sqrt,
    Tanh,
    Sigmoid,
    Softplus,
    Relu,
    Abs,
    /// -1, 0 or 1 (the derivative of `abs`).
    Sign,
    /// 1 where x > 0, else 0 (the derivative of `relu`).
    Step,
    /// x^k for a constant k.
    Pow(Num),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Binary {
    Add,
    Mul,
    Div,
    Maximum,
    Minimum,
    /// 1 where a >= b, else 0 (masks for the derivatives of maximum/minimum).
    Ge,
    /// 1 where a == b, else 0 (the mask for the derivative of `max`).
    Eq,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// An input or parameter: an index into `Graph::vars`.
    Var(u32),
    /// A constant filling the node's type.
    Const(Num),
    /// The size of a dim as a scalar of the node's dtype (bound at run time if symbolic).
    DimSize(Dim),
    Unary(Unary),
    Binary(Binary),
    /// Matrix transpose (rank 2 only).
    Transpose,
    /// Inserts a dim of size 1 at the given position.
    ExpandDims(u8),
    /// Numpy broadcast of the argument to the node's type.
    Broadcast,
    /// Outer product of two vectors.
    Outer,
    /// Vector/matrix products as numpy's `dot` for ranks 1 and 2.
    Dot,
    Sum(Axis),
    Max(Axis),
    /// `grad(cost, var)`: replaced by the `grad` stage; arg 0 is the cost.
    Grad(u32),
}

/// Inputs are function arguments; params are shared variables of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VarKind {
    Input,
    Param,
}

#[derive(Debug, Clone)]
pub struct Var {
    pub name: String,
    pub kind: VarKind,
    pub ty: Type,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub op: Op,
    pub args: Vec<NodeId>,
    pub ty: Type,
    /// The user's token this node came from (kept by rewrites and by `grad`).
    pub span: Span,
}

/// A hash-consed DAG in topological order.
///
/// Invariant: every child NodeId is smaller than its parent's, and no two nodes have the same
/// (op, args, type): building a node that exists returns the old id, which is CSE for free.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    memo: HashMap<(Op, Vec<NodeId>, Type), NodeId>,
    pub vars: Vec<Var>,
    pub syms: Vec<String>,
}

/// A shape or type error of one op: message and optional hint.
#[derive(Debug, Clone)]
pub struct TypeError {
    pub message: String,
    pub help: Option<String>,
}

impl TypeError {
    fn new(message: String) -> Self {
        TypeError {
            message,
            help: None,
        }
    }
}

/// How many nodes a graph may hold: pathological inputs stop with an error, not a hung build.
pub const MAX_NODES: usize = 200_000;

/// How long a chain of ops (the depth of the graph) may be when it is scheduled: the scheduler
/// walks a fused chain recursively, on the compiler's 8 MiB stack. A pathological input stops
/// with an error, not a crash.
pub const MAX_DEPTH: usize = 4000;

impl Graph {
    /// An empty graph over these variables and symbolic dims.
    pub fn with_vars(vars: Vec<Var>, syms: Vec<String>) -> Graph {
        Graph {
            vars,
            syms,
            ..Graph::default()
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.idx()]
    }

    pub fn ty(&self, id: NodeId) -> &Type {
        &self.nodes[id.idx()].ty
    }

    pub fn op(&self, id: NodeId) -> Op {
        self.nodes[id.idx()].op
    }

    pub fn args(&self, id: NodeId) -> &[NodeId] {
        &self.nodes[id.idx()].args
    }

    pub fn ids(&self) -> impl Iterator<Item = NodeId> {
        (0..self.nodes.len() as u32).map(NodeId)
    }

    /// Adds (or finds) a node whose type is already known.
    pub fn add(&mut self, op: Op, args: Vec<NodeId>, ty: Type, span: Span) -> NodeId {
        let key = (op, args, ty);
        if let Some(&id) = self.memo.get(&key) {
            return id;
        }
        let (op, args, ty) = key;
        debug_assert!(args.iter().all(|a| a.idx() < self.nodes.len()));
        let id = NodeId(self.nodes.len() as u32);
        self.nodes.push(Node {
            op,
            args: args.clone(),
            ty: ty.clone(),
            span,
        });
        self.memo.insert((op, args, ty), id);
        id
    }

    /// Adds a node, inferring its type from the op's shape rule.
    pub fn build(&mut self, op: Op, args: Vec<NodeId>, span: Span) -> Result<NodeId, TypeError> {
        let tys: Vec<&Type> = args.iter().map(|a| self.ty(*a)).collect();
        let ty = infer(self, op, &tys)?;
        Ok(self.add(op, args, ty, span))
    }

    pub fn constant(&mut self, v: f64, ty: Type, span: Span) -> NodeId {
        self.add(Op::Const(Num::new(v)), Vec::new(), ty, span)
    }

    pub fn scalar_const(&mut self, v: f64, dtype: DType, span: Span) -> NodeId {
        self.constant(v, Type::scalar(dtype), span)
    }

    pub fn const_value(&self, id: NodeId) -> Option<f64> {
        match self.op(id) {
            Op::Const(c) => Some(c.get()),
            _ => None,
        }
    }

    pub fn sym(&mut self, name: &str) -> Dim {
        if let Some(i) = self.syms.iter().position(|s| s == name) {
            return Dim::Sym(i as u32);
        }
        self.syms.push(name.to_string());
        Dim::Sym(self.syms.len() as u32 - 1)
    }

    pub fn dim_str(&self, d: Dim) -> String {
        match d {
            Dim::Static(n) => n.to_string(),
            Dim::Sym(s) => self.syms[s as usize].clone(),
        }
    }

    /// `f32[b, 784]`, or `f32` for a scalar.
    pub fn type_str(&self, t: &Type) -> String {
        let mut s = t.dtype.name().to_string();
        if !t.shape.is_empty() {
            s.push('[');
            for (i, d) in t.shape.iter().enumerate() {
                if i > 0 {
                    s.push_str(", ");
                }
                s.push_str(&self.dim_str(*d));
            }
            s.push(']');
        }
        s
    }

    /// Whether `root` depends on node `target` (structurally).
    pub fn depends_on(&self, root: NodeId, target: NodeId) -> bool {
        if root < target {
            return false;
        }
        let mut seen = vec![false; root.idx() + 1];
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            if n == target {
                return true;
            }
            if std::mem::replace(&mut seen[n.idx()], true) {
                continue;
            }
            for &a in self.args(n) {
                if a >= target {
                    stack.push(a);
                }
            }
        }
        false
    }

    /// The length of the longest chain of ops below `roots`, and the node that ends it.
    pub fn depth(&self, roots: &[NodeId]) -> (usize, NodeId) {
        let live = self.reachable(roots);
        let mut depth = vec![0usize; self.nodes.len()];
        let mut deepest = (0, NodeId(0));
        for (i, n) in self.nodes.iter().enumerate() {
            if live[i] {
                depth[i] = 1 + n.args.iter().map(|a| depth[a.idx()]).max().unwrap_or(0);
                if depth[i] > deepest.0 {
                    deepest = (depth[i], NodeId(i as u32));
                }
            }
        }
        deepest
    }

    /// The nodes reachable from `roots`, as a mask indexed by node.
    pub fn reachable(&self, roots: &[NodeId]) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        for r in roots {
            live[r.idx()] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if live[i] {
                for a in &self.nodes[i].args {
                    live[a.idx()] = true;
                }
            }
        }
        live
    }

    /// A compact copy holding only what `roots` need, in the same order; returns the new roots.
    pub fn extract(&self, roots: &[NodeId]) -> (Graph, Vec<NodeId>) {
        let live = self.reachable(roots);
        let mut g = Graph {
            vars: self.vars.clone(),
            syms: self.syms.clone(),
            ..Graph::default()
        };
        let mut map = vec![NodeId(u32::MAX); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            if live[i] {
                let args = n.args.iter().map(|a| map[a.idx()]).collect();
                map[i] = g.add(n.op, args, n.ty.clone(), n.span);
            }
        }
        let roots = roots.iter().map(|r| map[r.idx()]).collect();
        (g, roots)
    }

    /// How many nodes use each node as an argument (counting repeats), among `live` nodes.
    pub fn use_counts(&self, live: &[bool]) -> Vec<u32> {
        let mut uses = vec![0u32; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            if live[i] {
                for a in &n.args {
                    uses[a.idx()] += 1;
                }
            }
        }
        uses
    }
}

/// Numpy broadcasting of two shapes (aligned on the right; a static 1 stretches).
pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = (i + a.len()).checked_sub(n).map(|k| a[k]);
        let db = (i + b.len()).checked_sub(n).map(|k| b[k]);
        out.push(match (da, db) {
            (Some(x), None) | (None, Some(x)) => x,
            (Some(x), Some(y)) if x == y => x,
            (Some(Dim::Static(1)), Some(y)) => y,
            (Some(x), Some(Dim::Static(1))) => x,
            _ => return None,
        });
    }
    Some(out)
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Var(_) => "input",
        Op::Const(_) => "const",
        Op::DimSize(_) => "dim",
        Op::Unary(u) => unary_name(u),
        Op::Binary(b) => binary_name(b),
        Op::Transpose => "transpose",
        Op::ExpandDims(_) => "expand_dims",
        Op::Broadcast => "broadcast",
        Op::Outer => "outer",
        Op::Dot => "dot",
        Op::Sum(_) => "sum",
        Op::Max(_) => "max",
        Op::Grad(_) => "grad",
    }
}

pub fn unary_name(u: Unary) -> &'static str {
    match u {
        Unary::Neg => "neg",
        Unary::Exp => "exp",
        Unary::Log => "log",
        Unary::Log1p => "log1p",
        Unary::Sqrt => "sqrt",
        Unary::Tanh => "tanh",
        Unary::Sigmoid => "sigmoid",
        Unary::Softplus => "softplus",
        Unary::Relu => "relu",
        Unary::Abs => "abs",
        Unary::Sign => "sign",
        Unary::Step => "step",
        Unary::Pow(_) => "pow",
    }
}

pub fn binary_name(b: Binary) -> &'static str {
    match b {
        Binary::Add => "add",
        Binary::Mul => "mul",
        Binary::Div => "div",
        Binary::Maximum => "maximum",
        Binary::Minimum => "minimum",
        Binary::Ge => "ge",
        Binary::Eq => "eq",
    }
}

/// The user-facing name of an op in error messages (`+` rather than `add`).
fn op_symbol(op: Op) -> &'static str {
    match op {
        Op::Binary(Binary::Add) => "+",
        Op::Binary(Binary::Mul) => "*",
        Op::Binary(Binary::Div) => "/",
        other => op_name(other),
    }
}

/// The shape rule of every op: the type of `op` applied to arguments of types `args`.
pub fn infer(g: &Graph, op: Op, args: &[&Type]) -> Result<Type, TypeError> {
    let same_dtype = |what: &str| -> Result<DType, TypeError> {
        let d = args[0].dtype;
        if let Some(other) = args.iter().find(|t| t.dtype != d) {
            return Err(dtype_error(g, what, args[0], other));
        }
        Ok(d)
    };
    let arity = |n: usize| -> Result<(), TypeError> {
        if args.len() == n {
            Ok(())
        } else {
            Err(TypeError::new(format!(
                "internal: `{}` takes {n} arguments, got {}",
                op_name(op),
                args.len()
            )))
        }
    };
    match op {
        Op::Var(_) | Op::Const(_) | Op::DimSize(_) | Op::Broadcast | Op::Grad(_) => Err(
            TypeError::new(format!("internal: `{}` has no shape rule", op_name(op))),
        ),
        Op::Unary(_) => {
            arity(1)?;
            Ok(args[0].clone())
        }
        Op::Binary(_) => {
            arity(2)?;
            binary_type(g, op_symbol(op), args[0], args[1], None)
        }
        Op::Transpose => {
            arity(1)?;
            let mut t = args[0].clone();
            t.shape.reverse();
            Ok(t)
        }
        Op::ExpandDims(k) => {
            arity(1)?;
            let mut t = args[0].clone();
            if k as usize > t.shape.len() || t.shape.len() >= 2 {
                return Err(TypeError::new("internal: expand_dims out of range".into()));
            }
            t.shape.insert(k as usize, Dim::Static(1));
            Ok(t)
        }
        Op::Outer => {
            arity(2)?;
            let dtype = same_dtype("outer")?;
            if args[0].rank() != 1 || args[1].rank() != 1 {
                return Err(TypeError::new("internal: outer takes two vectors".into()));
            }
            Ok(Type {
                dtype,
                shape: vec![args[0].shape[0], args[1].shape[0]],
            })
        }
        Op::Dot => {
            arity(2)?;
            dot_type(g, args[0], args[1], None)
        }
        Op::Sum(axis) | Op::Max(axis) => {
            arity(1)?;
            let mut t = args[0].clone();
            match axis {
                Axis::All => t.shape.clear(),
                Axis::One(k) => {
                    if k as usize >= t.shape.len() {
                        return Err(TypeError::new(format!(
                            "axis {k} is out of range for {} (rank {})",
                            g.type_str(args[0]),
                            t.shape.len()
                        )));
                    }
                    t.shape.remove(k as usize);
                }
            }
            Ok(t)
        }
    }
}

fn dtype_error(g: &Graph, what: &str, a: &Type, b: &Type) -> TypeError {
    TypeError {
        message: format!(
            "element types differ in `{what}`: left is {}, right is {}",
            g.type_str(a),
            g.type_str(b)
        ),
        help: Some(
            "tensor_fn! never converts implicitly: declare both as `f32` or both as `f64`".into(),
        ),
    }
}

/// The shape rule of an elementwise binary op, shown to the user as `sym` (`+`, `-`,
/// `maximum`): one element type, numpy-broadcast shapes. `src` is the source text of both
/// sides, when known, so that a hint can quote the fix.
pub fn binary_type(
    g: &Graph,
    sym: &str,
    a: &Type,
    b: &Type,
    src: Option<(&str, &str)>,
) -> Result<Type, TypeError> {
    if a.dtype != b.dtype {
        return Err(dtype_error(g, sym, a, b));
    }
    match broadcast_shapes(&a.shape, &b.shape) {
        Some(shape) => Ok(Type {
            dtype: a.dtype,
            shape,
        }),
        None => Err(TypeError {
            message: format!(
                "shapes do not broadcast in `{sym}`: left is {}, right is {}",
                g.type_str(a),
                g.type_str(b)
            ),
            help: Some(broadcast_help(g, sym, a, b, src)),
        }),
    }
}

/// The shape rule of `dot` (numpy's, for ranks 1 and 2); `src` as in `binary_type`.
pub fn dot_type(
    g: &Graph,
    ta: &Type,
    tb: &Type,
    src: Option<(&str, &str)>,
) -> Result<Type, TypeError> {
    if ta.dtype != tb.dtype {
        return Err(dtype_error(g, "dot", ta, tb));
    }
    let (a, b) = (&ta.shape, &tb.shape);
    if a.is_empty() || b.is_empty() {
        return Err(TypeError {
            message: format!(
                "`dot` needs vectors or matrices: left is {}, right is {}",
                g.type_str(ta),
                g.type_str(tb)
            ),
            help: Some("multiply by a scalar with `*`".into()),
        });
    }
    if a[a.len() - 1] != b[0] {
        return Err(TypeError {
            message: format!(
                "shape mismatch in `dot`: left is {}, right is {}",
                g.type_str(ta),
                g.type_str(tb)
            ),
            help: Some(dot_help(g, a, b, src)),
        });
    }
    let mut shape = Vec::new();
    if a.len() == 2 {
        shape.push(a[0]);
    }
    if b.len() == 2 {
        shape.push(b[1]);
    }
    Ok(Type {
        dtype: ta.dtype,
        shape,
    })
}

fn rev(s: &[Dim]) -> Vec<Dim> {
    s.iter().rev().copied().collect()
}

fn dot_help(g: &Graph, a: &[Dim], b: &[Dim], src: Option<(&str, &str)>) -> String {
    let fits = |a: &[Dim], b: &[Dim]| a[a.len() - 1] == b[0];
    if b.len() == 2 && fits(a, &rev(b)) {
        return match src {
            Some((l, r)) => format!("did you mean `dot({l}, {r}.T)`?"),
            None => "did you mean to transpose the right side (`.T`)?".into(),
        };
    }
    if a.len() == 2 && fits(&rev(a), b) {
        return match src {
            Some((l, r)) => format!("did you mean `dot({l}.T, {r})`?"),
            None => "did you mean to transpose the left side (`.T`)?".into(),
        };
    }
    format!(
        "`dot` needs the last dim of the left side ({}) to equal the first dim of the right side ({})",
        g.dim_str(a[a.len() - 1]),
        g.dim_str(b[0])
    )
}

/// Why two dims that must be equal are not, when symbolic dims are involved.
fn dims_hint(g: &Graph, x: Dim, y: Dim) -> Option<String> {
    match (x, y) {
        (Dim::Sym(_), Dim::Static(_)) | (Dim::Static(_), Dim::Sym(_)) => {
            let (s, k) = if matches!(x, Dim::Sym(_)) { (x, y) } else { (y, x) };
            Some(format!(
                "`{}` is a symbolic dim, so it is never known to be {}: declare both with `{}`, or both with {}",
                g.dim_str(s),
                g.dim_str(k),
                g.dim_str(s),
                g.dim_str(k)
            ))
        }
        (Dim::Sym(_), Dim::Sym(_)) => Some(format!(
            "`{}` and `{}` are different symbolic dims: if they are the same size, use one name for both",
            g.dim_str(x),
            g.dim_str(y)
        )),
        (Dim::Static(_), Dim::Static(_)) => None,
    }
}

fn broadcast_help(g: &Graph, sym: &str, a: &Type, b: &Type, src: Option<(&str, &str)>) -> String {
    let quote = |l: &str, r: &str| {
        if sym.starts_with(|c: char| c.is_ascii_alphabetic()) {
            format!("`{sym}({l}, {r})`")
        } else {
            format!("`{l} {sym} {r}`")
        }
    };
    // An update (`w -= v`) cannot transpose its left side.
    let is_update = sym.ends_with('=');
    if a.rank() == 2 && !is_update && broadcast_shapes(&rev(&a.shape), &b.shape).is_some() {
        return match src {
            Some((l, r)) => format!(
                "the shapes fit if the left side is transposed: {}",
                quote(&format!("{l}.T"), r)
            ),
            None => "the shapes fit if the left side is transposed (`.T`)".into(),
        };
    }
    if b.rank() == 2 && broadcast_shapes(&a.shape, &rev(&b.shape)).is_some() {
        return match src {
            Some((l, r)) => format!(
                "the shapes fit if the right side is transposed: {}",
                quote(l, &format!("{r}.T"))
            ),
            None => "the shapes fit if the right side is transposed (`.T`)".into(),
        };
    }
    // The first pair of dims (aligned on the right) that does not broadcast.
    let clash = a
        .shape
        .iter()
        .rev()
        .zip(b.shape.iter().rev())
        .find(|(x, y)| x != y && **x != Dim::Static(1) && **y != Dim::Static(1));
    if let Some(h) = clash.and_then(|(x, y)| dims_hint(g, *x, *y)) {
        return h;
    }
    "numpy broadcasting aligns shapes on the right; each pair of dims must be equal or a static 1"
        .into()
}

// ---------------------------------------------------------------------------------------------
// Lowering: AST -> Graph.

use crate::syntax::{self, Arg, BinOp, Body, Decl, DimAst, Expr, Options, Stmt, TypeAst, UpdateOp};

/// What a function returns, as declared or inferred.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ret {
    Unit,
    One,
    Tuple(usize),
}

/// One compiled function, after lowering: its own graph, inputs, outputs and updates.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub graph: Graph,
    /// Var indices of the inputs, in argument order.
    pub inputs: Vec<u32>,
    pub outputs: Vec<NodeId>,
    pub ret: Ret,
    /// (param var index, new value), in source order.
    pub updates: Vec<(u32, NodeId)>,
    /// (source text like `grad(cost, w)`, the Grad node), for the gradient report.
    pub grads: Vec<(String, NodeId)>,
    pub options: Options,
}

impl Function {
    /// All roots: outputs, then update values, then the reported gradients.
    pub fn roots(&self) -> Vec<NodeId> {
        let mut r = self.outputs.clone();
        r.extend(self.updates.iter().map(|u| u.1));
        r.extend(self.grads.iter().map(|g| g.1));
        r
    }

    /// Replaces the graph and remaps every root through `new_roots` (same order as `roots()`).
    pub fn set_roots(&mut self, graph: Graph, new_roots: &[NodeId]) {
        let mut it = new_roots.iter().copied();
        for o in &mut self.outputs {
            *o = it.next().unwrap();
        }
        for u in &mut self.updates {
            u.1 = it.next().unwrap();
        }
        for gr in &mut self.grads {
            gr.1 = it.next().unwrap();
        }
        self.graph = graph;
    }
}

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
}

const UNARY_FUNCS: &[(&str, Unary)] = &[
    ("exp", Unary::Exp),
    ("log", Unary::Log),
    ("log1p", Unary::Log1p),
    ("sqrt", Unary::Sqrt),
    ("tanh", Unary::Tanh),
    ("sigmoid", Unary::Sigmoid),
    ("softplus", Unary::Softplus),
    ("relu", Unary::Relu),
    ("abs", Unary::Abs),
];

pub const ALL_FUNCS: &[&str] = &[
    "exp", "log", "log1p", "sqrt", "tanh", "sigmoid", "softplus", "relu", "abs", "pow", "maximum",
    "minimum", "dot", "sum", "mean", "max", "grad",
];

/// Lowers a parsed program into one `Function` per compiled function.
pub fn lower(program: &syntax::Program, diags: &mut Diagnostics) -> Vec<Function> {
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
                l.declare_all(&m.params, VarKind::Param);
                let inputs = l.declare_all(&meth.inputs, VarKind::Input);
                let (outputs, ret, updates) =
                    l.lower_body(&meth.body, Some(meth), meth.name.span());
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
            default_dtype: decls.first().map(|d| d.ty.dtype).unwrap_or(DType::F64),
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
            dtype: t.dtype,
            shape,
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
                self.lit_node(x, dt, span)
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
                        let help = if ALL_FUNCS.contains(&name.as_str()) {
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

    fn lower_call(&mut self, func: &syn::Ident, args: &[Arg], span: Span) -> Option<Val> {
        let fname = func.to_string();
        let mut pos = Vec::new();
        // (value, span of the value, span of the `axis` name)
        let mut axis: Option<(i64, Span, Span)> = None;
        let mut bad = false;
        for a in args {
            match a {
                Arg::Pos(e) => pos.push(e),
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
                    let reduces = matches!(fname.as_str(), "sum" | "mean" | "max");
                    if reduces && closest(&n.to_string(), ["axis"].into_iter()).is_some() {
                        self.diags.error_help(n.span(), msg, "did you mean `axis`?");
                    } else if reduces {
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
        if let (Some(ax), false) = (axis, matches!(fname.as_str(), "sum" | "mean" | "max")) {
            self.diags.error_help(
                ax.2,
                format!("`{fname}` takes no `axis`"),
                "only the reductions `sum`, `mean` and `max` take `axis = k`",
            );
            return None;
        }
        if let Some(&(_, u)) = UNARY_FUNCS.iter().find(|(n, _)| *n == fname) {
            if !expect(self, 1) || bad {
                return None;
            }
            let v = self.lower_expr(pos[0])?;
            return match v {
                Val::Lit(x, s) => Some(Val::Lit(eval_unary(u, x), s)),
                Val::Node(n) => self.build(Op::Unary(u), vec![n], span).map(Val::Node),
            };
        }
        match fname.as_str() {
            "pow" => {
                if !expect(self, 2) {
                    return None;
                }
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
                    Val::Lit(x, s) => Some(Val::Lit(x.powf(k), s)),
                    Val::Node(n) => self
                        .build(Op::Unary(Unary::Pow(Num::new(k))), vec![n], span)
                        .map(Val::Node),
                }
            }
            "maximum" | "minimum" | "dot" => {
                if !expect(self, 2) {
                    return None;
                }
                let a = self.lower_expr(pos[0]);
                let b = self.lower_expr(pos[1]);
                let (a, b) = (a?, b?);
                let op = match fname.as_str() {
                    "maximum" => Op::Binary(Binary::Maximum),
                    "minimum" => Op::Binary(Binary::Minimum),
                    _ => Op::Dot,
                };
                if let (Val::Lit(x, s), Val::Lit(y, _)) = (a, b) {
                    if op != Op::Dot {
                        let v = if fname == "maximum" {
                            x.max(y)
                        } else {
                            x.min(y)
                        };
                        return Some(Val::Lit(v, s));
                    }
                }
                let like = match (a, b) {
                    (Val::Node(n), _) | (_, Val::Node(n)) => Some(n),
                    _ => None,
                };
                let a = self.node_of(a, like);
                let b = self.node_of(b, like);
                // Check here, where the arguments' source is known, so a hint can quote the fix.
                let (l, r) = (expr_source(pos[0]), expr_source(pos[1]));
                let (ta, tb) = (self.g.ty(a).clone(), self.g.ty(b).clone());
                let checked = match op {
                    Op::Dot => dot_type(&self.g, &ta, &tb, Some((&l, &r))),
                    _ => binary_type(&self.g, &fname, &ta, &tb, Some((&l, &r))),
                };
                if let Err(e) = checked {
                    self.report(span, e);
                    return None;
                }
                self.build(op, vec![a, b], span).map(Val::Node)
            }
            "sum" | "mean" | "max" => {
                if !expect(self, 1) || bad {
                    return None;
                }
                let v = self.lower_expr(pos[0])?;
                let x = self.node_of(v, None);
                let rank = self.g.ty(x).rank() as i64;
                let ax = match axis {
                    None => Axis::All,
                    Some((k, s, _)) => {
                        let kk = if k < 0 { k + rank } else { k };
                        if kk < 0 || kk >= rank {
                            let help = match rank {
                                0 => "a scalar has no axes: drop `axis = ...`".to_string(),
                                1 => "the only axis is 0 (or -1)".to_string(),
                                _ => "the axes are 0 and 1 (or -2 and -1, counting from the end)"
                                    .to_string(),
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
                        Axis::One(kk as u8)
                    }
                };
                if rank == 0 {
                    return Some(Val::Node(x)); // reducing a scalar is the scalar
                }
                let op = if fname == "max" {
                    Op::Max(ax)
                } else {
                    Op::Sum(ax)
                };
                let r = self.build(op, vec![x], span)?;
                if fname != "mean" {
                    return Some(Val::Node(r));
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
                self.build(Op::Binary(Binary::Mul), vec![r, inv], span)
                    .map(Val::Node)
            }
            "grad" => self.lower_grad(&pos, span).map(Val::Node),
            _ => {
                let msg = format!("unknown function `{fname}`");
                match closest(&fname, ALL_FUNCS.iter().copied()) {
                    Some(c) => {
                        self.diags
                            .error_help(func.span(), msg, format!("did you mean `{c}`?"))
                    }
                    None => self.diags.error_help(
                        func.span(),
                        msg,
                        format!("the functions are: {}", ALL_FUNCS.join(", ")),
                    ),
                }
                // Still look inside, so errors in the arguments are reported in the same run.
                for p in pos {
                    let _ = self.lower_expr(p);
                }
                None
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

/// Scalar semantics of each unary op in f64 (constant folding of literals).
pub fn eval_unary(u: Unary, x: f64) -> f64 {
    match u {
        Unary::Neg => -x,
        Unary::Exp => x.exp(),
        Unary::Log => x.ln(),
        Unary::Log1p => x.ln_1p(),
        Unary::Sqrt => x.sqrt(),
        Unary::Tanh => x.tanh(),
        Unary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Unary::Softplus => x.max(0.0) + (-x.abs()).exp().ln_1p(),
        Unary::Relu => x.max(0.0),
        Unary::Abs => x.abs(),
        Unary::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        Unary::Step => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
        Unary::Pow(k) => x.powf(k.get()),
    }
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
    }
}

/// The candidate closest to `name` by edit distance, if close enough to be a likely typo.
pub fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(name, c);
        let limit = (name.len().max(c.len()) / 3).max(1);
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|b| b.1)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let sub = prev[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            cur[j] = sub.min(prev[j] + 1).min(cur[j - 1] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
