//! The graph every stage after parsing works on: a hash-consed DAG of typed ops in topological
//! order (`Graph`, `NodeId`, `Op`), the types of its nodes (`Type`, `Dim`), and a lowered function
//! (`Function`: one graph with its inputs, outputs, updates and reported gradients). The
//! elementwise ops (`Unary`, `Binary`, the constant `Num`), their names and their scalar
//! semantics (`eval_unary`) form the last section.

use std::collections::HashMap;

use proc_macro2::Span;
pub use tensor_fn_kernels::op::{Binary, Num, Unary};

use super::shape::infer;
use crate::syntax::{DType, IntTy, Options};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

impl NodeId {
    pub fn idx(self) -> usize {
        self.0 as usize
    }
}

pub use tensor_fn_kernels::ir::Dim;

/// Element type and shape. Rank 0 to 4 (rank 3 and 4 only until the `flatten` stage).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Type {
    /// The float type values are computed in: for an integer tensor, the function's float type,
    /// which holds its values exactly (labels and indices stay below 2^24).
    pub dtype: DType,
    pub shape: Vec<Dim>,
    /// Integer tensors (labels, indices): only compared, one-hot encoded, used to pick entries
    /// or returned; never arithmetic.
    pub int: Option<IntTy>,
}

impl Type {
    pub fn scalar(dtype: DType) -> Type {
        Type {
            dtype,
            shape: Vec::new(),
            int: None,
        }
    }

    /// A float tensor of this shape.
    pub fn float(dtype: DType, shape: Vec<Dim>) -> Type {
        Type {
            dtype,
            shape,
            int: None,
        }
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
}

pub use tensor_fn_kernels::ir::{Axis, RandKind};

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
    /// A comparison the user wrote (`eq`, `neq`, `lt`, `le`, `gt`, `ge`): 1 or 0 as a float.
    /// Unlike the masks `grad` builds from `Binary::Ge`/`Eq`, it has no gradient: a `grad`
    /// through it is an error.
    Compare(Binary),
    /// One-hot rows of an integer vector `y`: `[n, k]`, 1 at `(i, y_i)`, else 0.
    OneHot(Dim),
    /// The index of the first maximum along an axis (numpy's `argmax`), an `i64` tensor.
    ArgMax(Axis),
    /// `where(c, a, b)`: `a` where `c` is not 0, else `b`.
    Where,
    /// softmax along an axis: e^(x - m) / sum(e^(x - m)), m the maximum along it. The
    /// schedule expands it (and `LogSoftmax`) into exps, sums and maxima.
    Softmax(u8),
    /// log(softmax(x)) = x - m - log(sum(e^(x - m))): finite for any finite logits.
    LogSoftmax(u8),
    /// `grad(cost, var)`: replaced by the `grad` stage; arg 0 is the cost.
    Grad(u32),
    /// A random draw of the node's type: the `site`-th random op of its function. Arg 0 is
    /// the function's stream (`[seed, call]`), the others the draw's scalar parameters. No
    /// two sites are one node, and a draw is a constant to `grad`.
    Random(RandKind, u32),
    /// The same elements in another shape of the same size (the node's type): a view, no copy.
    Reshape,
    /// `conv2d(x, w)`: x `[n, c, h, w]`, filters `[k, c, fh, fw]`, valid, stride 1, out
    /// `[n, k, h - fh + 1, w - fw + 1]`; `flip`: a true convolution (Theano's), else a
    /// cross-correlation.
    Conv2d {
        flip: bool,
    },
    /// The gradient of a `conv2d` with respect to its images: args (output gradient, filters),
    /// the node's type that of the images.
    ConvGradInput {
        flip: bool,
    },
    /// The gradient of a `conv2d` with respect to its filters: args (images, output gradient),
    /// the node's type that of the filters.
    ConvGradFilter {
        flip: bool,
    },
    /// Non-overlapping max-pooling of the last two axes of a rank-4 tensor by (rows, cols),
    /// ignoring the border that does not fill a window.
    MaxPool(u8, u8),
    /// Its gradient: args (pooled input, output gradient); each window's gradient goes to the
    /// first maximum of the window.
    MaxPoolGrad(u8, u8),
    /// A library kernel over buffers, with the sizes it needs: what the `flatten` stage makes of
    /// the ops above once every tensor is a matrix of rows.
    Call(CallOp),
}

/// The library calls (convolution, pooling) and their sizes live with their GPU kernels, in the
/// kernel crate: one definition for the macro and the kernels.
pub use tensor_fn_kernels::conv::{CallOp, ConvGeom};

/// The name of the hidden input of a model method that draws random numbers: its stream,
/// `[seed, call]` as an `i64[2]` (the bits of two `u64`s), passed by the method itself.
pub const STREAM_VAR: &str = "__stream";

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
    pub fn new(message: String) -> Self {
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
        let mut s = match t.int {
            Some(i) => i.name().to_string(),
            None => t.dtype.name().to_string(),
        };
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
        self.depends_on_avoiding(root, target, |_| false)
    }

    /// Whether `root` depends on `target` along a path that crosses no node for which `cut`
    /// holds (`root` and `target` themselves are not tested).
    pub fn depends_on_avoiding(
        &self,
        root: NodeId,
        target: NodeId,
        cut: impl Fn(NodeId) -> bool,
    ) -> bool {
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
                if a == target || (a > target && !cut(a)) {
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

pub fn op_name(op: Op) -> &'static str {
    match op {
        Op::Var(_) => "input",
        Op::Const(_) => "const",
        Op::DimSize(_) => "dim",
        Op::Unary(u) => u.name(),
        Op::Binary(b) => b.name(),
        Op::Transpose => "transpose",
        Op::ExpandDims(_) => "expand_dims",
        Op::Broadcast => "broadcast",
        Op::Outer => "outer",
        Op::Dot => "dot",
        Op::Sum(_) => "sum",
        Op::Max(_) => "max",
        Op::Grad(_) => "grad",
        Op::Random(kind, _) => kind.name(),
        Op::Compare(b) => compare_name(b),
        Op::OneHot(_) => "onehot",
        Op::ArgMax(_) => "argmax",
        Op::Where => "where",
        Op::Softmax(_) => "softmax",
        Op::LogSoftmax(_) => "log_softmax",
        Op::Reshape => "reshape",
        Op::Conv2d { .. } => "conv2d",
        Op::ConvGradInput { .. } => "conv2d_grad_input",
        Op::ConvGradFilter { .. } => "conv2d_grad_filter",
        Op::MaxPool(..) => "max_pool",
        Op::MaxPoolGrad(..) => "max_pool_grad",
        Op::Call(c) => match c {
            CallOp::Conv { .. } => "conv2d",
            CallOp::ConvGradInput { .. } => "conv2d_grad_input",
            CallOp::ConvGradFilter { .. } => "conv2d_grad_filter",
            CallOp::Pool { .. } => "max_pool",
            CallOp::PoolGrad { .. } => "max_pool_grad",
        },
    }
}

/// The name users write for a comparison (Theano's: `neq` for `!=`).
pub fn compare_name(b: Binary) -> &'static str {
    match b {
        Binary::Ne => "neq",
        other => other.name(),
    }
}

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
