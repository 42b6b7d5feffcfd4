//! Stage 6: the kernel plan both emitters consume.
//!
//! The checked graph is cut into GEMMs (transposes absorbed as layout flags) and loop kernels:
//! fused elementwise chains that store some nodes and reduce others, all over one iteration
//! space. Which nodes get a buffer is decided once here; the emitters never re-derive it.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::ir::{Axis, Binary, CallOp, Dim, Function, Graph, NodeId, Op, Type, Unary, VarKind};

pub type BufId = usize;
pub type ValId = usize;

/// Where a buffer's storage comes from. All buffers are contiguous and row-major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufKind {
    /// The argument at this position (rank >= 1).
    Input(usize),
    /// The model parameter with this var index.
    Param(u32),
    /// A workspace region owned by the compiled function.
    Work,
    /// The output at this position, returned to the caller.
    Output(usize),
    /// The storage of another buffer (never itself a view), seen in this buffer's shape: a
    /// `reshape`, which copies nothing.
    View(BufId),
}

#[derive(Debug, Clone)]
pub struct Buf {
    pub kind: BufKind,
    pub ty: Type,
}

pub use tensor_fn_kernels::ir::{Instr, Ix, RedKind, Reduction};

#[derive(Debug, Clone)]
pub struct LoopKernel {
    /// The iteration space, rank 0 to 2.
    pub dims: Vec<Dim>,
    pub instrs: Vec<Instr>,
    pub stores: Vec<(ValId, BufId)>,
    pub reductions: Vec<Reduction>,
    /// The graph nodes computed here, for the plan text.
    pub nodes: Vec<NodeId>,
    /// The buffer each of `nodes` is written to (a store or a reduction), for `#[nan_guard]`.
    pub written: Vec<BufId>,
}

/// A GEMM operand: a buffer seen as a `rows x cols` matrix, transposed if `trans`.
#[derive(Debug, Clone, Copy)]
pub struct MatView {
    pub buf: BufId,
    pub rows: Dim,
    pub cols: Dim,
    /// The stored layout is `cols x rows` (the logical matrix is its transpose).
    pub trans: bool,
}

/// A scalar known before any kernel runs: sign times a product of arguments, constants and
/// dims (GEMM alphas).
#[derive(Debug, Clone, PartialEq)]
pub struct Scale {
    pub sign: f64,
    pub factors: Vec<Instr>,
}

impl Scale {
    pub fn one() -> Scale {
        Scale {
            sign: 1.0,
            factors: Vec::new(),
        }
    }

    /// `lr * 2 * l2`, without the sign (`1` for no factors).
    pub fn factors_text(&self, g: &Graph) -> String {
        if self.factors.is_empty() {
            return "1".into();
        }
        self.factors
            .iter()
            .map(|f| match f {
                Instr::Arg(v) => g.vars[*v as usize].name.clone(),
                Instr::Const(c) => c.to_string(),
                Instr::DimSize(d) => g.dim_str(*d),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
            .join(" * ")
    }
}

impl Gemm {
    /// Beta as text: `0`, `1`, or `1 - lr * 2 * l2`.
    pub fn beta_text(&self, g: &Graph) -> String {
        let mut t = self.beta.to_string();
        for s in &self.beta_terms {
            let op = if s.sign < 0.0 { '-' } else { '+' };
            t.push_str(&format!(" {op} {}", s.factors_text(g)));
        }
        t
    }
}

/// C = alpha A B + beta C, with C `m x n`, A `m x k`, B `k x n`.
#[derive(Debug, Clone)]
pub struct Gemm {
    pub a: MatView,
    pub b: MatView,
    pub c: MatView,
    pub m: Dim,
    pub k: Dim,
    pub n: Dim,
    pub alpha: Scale,
    /// 0 (C is only written) or 1 (accumulate into C), plus the sum of `beta_terms`.
    pub beta: f64,
    /// Scales of C's own terms in an in-place update: `w - lr * (dot + 2 l2 w)` is one GEMM
    /// with beta = 1 - 2 lr l2 (weight decay), not a product and a pass over `w`.
    pub beta_terms: Vec<Scale>,
    pub node: NodeId,
    /// A second product with the same C, m, n and alpha, summed in the same pass over C:
    /// (A2, B2, k2, its dot node). Both gradient contributions of a tied weight matrix.
    pub also: Option<Box<(MatView, MatView, Dim, NodeId)>>,
}

/// A library kernel (convolution, pooling) over whole buffers: `out = op(args)`.
#[derive(Debug, Clone)]
pub struct CallKernel {
    pub op: CallOp,
    pub args: Vec<BufId>,
    pub out: BufId,
    /// The number of images: the first dim of the first argument.
    pub n: Dim,
    pub node: NodeId,
    /// A pooling call run with this one, image by image, while the maps are in cache: after a
    /// `Conv`, the `Pool` of its output; before a `ConvGradFilter`, the `PoolGrad` that makes
    /// its output gradient (and that nothing else reads), which the CPU then never stores.
    pub fused: Option<Box<CallKernel>>,
}

#[derive(Debug, Clone)]
pub enum Kernel {
    Gemm(Gemm),
    Loop(LoopKernel),
    Call(CallKernel),
}

#[derive(Debug, Clone)]
pub struct Schedule {
    pub bufs: Vec<Buf>,
    pub kernels: Vec<Kernel>,
    /// Outputs: the buffer holding each, or a rank-0 argument returned as is.
    pub outputs: Vec<OutSrc>,
    /// Updates: copy buffer -> parameter after every kernel ran (simultaneous semantics).
    pub commits: Vec<(u32, BufId)>,
    /// Kernels from this index on write parameters in place (`w -= lr * dot(...)` as a GEMM
    /// accumulating into `w`); they run after every kernel that reads the old values.
    pub inplace_from: usize,
}

#[derive(Debug, Clone, Copy)]
pub enum OutSrc {
    Buf(BufId),
    Arg(u32),
}

struct Task {
    node: NodeId,
    kind: TaskKind,
}

enum TaskKind {
    /// Computes the node into the buffer.
    Store(BufId),
    /// Copies an already available value (an argument, a constant, another buffer).
    Copy(BufId),
    Reduce(RedKind, Axis, BufId),
    Gemm,
    /// A sum of scaled products, as GEMMs into the node's buffer.
    GemmSum,
    /// A library kernel into the node's buffer.
    Call(BufId),
}

/// An update `p <- (1 + sum_j own_j) p + sum_k alpha_k dot_k` done as GEMMs accumulating
/// into `p`.
struct InPlace {
    param: u32,
    terms: Vec<(Scale, NodeId)>,
    own: Vec<Scale>,
}

/// The split of an update's value that [`linear_terms`] collects.
#[derive(Default)]
struct Split {
    /// `scale * dot` terms.
    terms: Vec<(Scale, NodeId)>,
    /// Scales of the parameter's own terms, other than its one plain `p`.
    own: Vec<Scale>,
    /// Whether the plain `p` was seen.
    base: bool,
    /// The nodes the split absorbs.
    absorbed: Vec<NodeId>,
}

/// Appends to `out` the factors of a scalar known before any kernel runs, a product of
/// arguments, constants and dims (`lr`, `2 * l2`); false (and `out` of no use) for anything
/// else.
fn scalar_factors(g: &Graph, a: NodeId, out: &mut Vec<Instr>) -> bool {
    if g.ty(a).rank() != 0 {
        return false;
    }
    match g.op(a) {
        Op::Var(v) if g.vars[v as usize].kind == VarKind::Input => out.push(Instr::Arg(v)),
        Op::Const(c) => out.push(Instr::Const(c.get())),
        Op::DimSize(d) => out.push(Instr::DimSize(d)),
        Op::Binary(Binary::Mul) => {
            let [x, y] = [g.args(a)[0], g.args(a)[1]];
            return scalar_factors(g, x, out) && scalar_factors(g, y, out);
        }
        _ => return false,
    }
    true
}

/// Where [`linear_terms`]'s products go: into the parameter `p`, or (`fresh`) into a buffer
/// of their own of type `ty`.
#[derive(Clone, Copy)]
struct Dest<'a> {
    p: NodeId,
    ty: &'a Type,
    fresh: bool,
}

/// Splits `node` into `p + sum_j own_j p + sum_k scale_k * dot_k` when every node on the way
/// is used only there, every dot has the destination's type, and (unless the destination is
/// `fresh`) no dot reads a parameter (they all must see the old values).
fn linear_terms(
    g: &Graph,
    node: NodeId,
    dest: &Dest,
    scale: Scale,
    uses: &[u32],
    split: &mut Split,
) -> bool {
    let Dest { p, ty, fresh } = *dest;
    if node == p {
        if !split.base && scale == Scale::one() {
            split.base = true;
        } else {
            split.own.push(scale);
        }
        return true;
    }
    if uses[node.idx()] != 1 {
        return false;
    }
    let n = g.node(node);
    let scalar_src = |a: NodeId| -> Option<Vec<Instr>> {
        let mut f = Vec::new();
        scalar_factors(g, a, &mut f).then_some(f)
    };
    match n.op {
        Op::Binary(Binary::Add) => {
            split.absorbed.push(node);
            linear_terms(g, n.args[0], dest, scale.clone(), uses, split)
                && linear_terms(g, n.args[1], dest, scale, uses, split)
        }
        Op::Unary(Unary::Neg) => {
            split.absorbed.push(node);
            let s = Scale {
                sign: -scale.sign,
                factors: scale.factors,
            };
            linear_terms(g, n.args[0], dest, s, uses, split)
        }
        Op::Binary(Binary::Mul) => {
            let (src, rest) = match (scalar_src(n.args[0]), scalar_src(n.args[1])) {
                (Some(s), _) => (s, n.args[1]),
                (None, Some(s)) => (s, n.args[0]),
                _ => return false,
            };
            split.absorbed.push(node);
            let mut s = scale;
            s.factors.extend(src);
            linear_terms(g, rest, dest, s, uses, split)
        }
        Op::Dot if g.ty(node) == ty => {
            let reads_param = n.args.iter().any(|&a| {
                let base = if g.op(a) == Op::Transpose {
                    g.args(a)[0]
                } else {
                    a
                };
                matches!(g.op(base), Op::Var(v) if g.vars[v as usize].kind == VarKind::Param)
            });
            if reads_param && !fresh {
                return false;
            }
            split.absorbed.push(node);
            split.terms.push((scale, node));
            true
        }
        _ => false,
    }
}

/// Builds the kernel plan of a checked function.
pub fn schedule(f: &Function) -> Schedule {
    let g = &f.graph;
    let mut roots = f.outputs.clone();
    roots.extend(f.updates.iter().map(|u| u.1));
    let live = g.reachable(&roots);
    let mut uses = g.use_counts(&live);
    for r in &roots {
        uses[r.idx()] += 1;
    }
    // In-place updates: the value node and everything it absorbs get no buffer of their own.
    let mut absorbed = vec![false; g.len()];
    let mut inplace: Vec<InPlace> = Vec::new();
    for &(p, v) in &f.updates {
        let Some(pnode) = g.ids().find(|&id| g.op(id) == Op::Var(p)) else {
            continue;
        };
        if g.ty(pnode).rank() != 2 {
            continue;
        }
        let mut split = Split::default();
        let dest = Dest {
            p: pnode,
            ty: g.ty(pnode),
            fresh: false,
        };
        if linear_terms(g, v, &dest, Scale::one(), &uses, &mut split)
            && split.base
            && !split.terms.is_empty()
        {
            for n in split.absorbed {
                absorbed[n.idx()] = true;
            }
            inplace.push(InPlace {
                param: p,
                terms: split.terms,
                own: split.own,
            });
        }
    }
    // Sums of products (`dot(a, b) + dot(c, d)`, scaled: the two gradient contributions of a
    // tied weight matrix, when the gradient itself is wanted) are GEMMs accumulating into the
    // sum's buffer, not products in buffers of their own and a pass adding them. Outermost
    // sums first, so a sum inside another joins the outer one.
    let mut sums: HashMap<NodeId, Vec<(Scale, NodeId)>> = HashMap::new();
    for id in g.ids().collect::<Vec<_>>().into_iter().rev() {
        if !live[id.idx()]
            || absorbed[id.idx()]
            || g.op(id) != Op::Binary(Binary::Add)
            || g.ty(id).rank() != 2
        {
            continue;
        }
        let mut split = Split::default();
        let dest = Dest {
            p: NodeId(u32::MAX),
            ty: g.ty(id),
            fresh: true,
        };
        let ok = g
            .args(id)
            .iter()
            .all(|&a| linear_terms(g, a, &dest, Scale::one(), &uses, &mut split));
        if ok && split.terms.len() >= 2 && split.own.is_empty() && !split.base {
            for n in split.absorbed {
                absorbed[n.idx()] = true;
            }
            sums.insert(id, split.terms);
        }
    }
    // Scalars computed from constants, dims and scalar arguments only (`1 / b`): recomputed
    // where used (hoisted out of loops by the emitters) rather than a kernel of their own,
    // which would also cut the loop kernels around it in two.
    let mut inv = vec![false; g.len()];
    for id in g.ids() {
        let n = g.node(id);
        inv[id.idx()] = n.ty.rank() == 0
            && match n.op {
                Op::Const(_) | Op::DimSize(_) => true,
                Op::Var(v) => g.vars[v as usize].kind == VarKind::Input,
                Op::Unary(_) | Op::Binary(_) => n.args.iter().all(|a| inv[a.idx()]),
                _ => false,
            };
    }
    // Inlining a cheap or invariant value into a loop of higher rank costs nothing worth a
    // pass of its own; nor does a column ([n, 1]) inlined into rows: it is computed once per
    // row there (the emitters hoist what does not depend on the inner index).
    let column = |a: NodeId| {
        let t = g.ty(a);
        t.rank() == 2 && t.shape[1] == Dim::Static(1)
    };
    let inline_ok = |a: NodeId| cheap(g, a) || inv[a.idx()] || column(a);
    let mut need = vec![false; g.len()];
    for id in g.ids() {
        if !live[id.idx()] {
            continue;
        }
        let n = g.node(id);
        match n.op {
            Op::Dot => {
                for &a in &n.args {
                    let t = if g.op(a) == Op::Transpose {
                        g.args(a)[0]
                    } else {
                        a
                    };
                    need[t.idx()] = true;
                }
            }
            Op::Sum(_) | Op::Max(_) | Op::ArgMax(_) => {}
            // Library kernels and views read whole buffers.
            Op::Call(_) | Op::Reshape => {
                for &a in &n.args {
                    need[a.idx()] = true;
                }
            }
            // The labels are read at the row index only: stored, never recomputed per column.
            Op::OneHot(_) => need[n.args[0].idx()] = true,
            _ if is_elementwise(n.op) => {
                for &a in &n.args {
                    if is_elementwise(g.op(a)) && g.ty(a).shape != n.ty.shape && !inline_ok(a) {
                        need[a.idx()] = true;
                    }
                }
            }
            _ => {}
        }
    }
    let mut mat = vec![false; g.len()];
    for id in g.ids() {
        if !live[id.idx()] {
            continue;
        }
        let op = g.op(id);
        mat[id.idx()] = match op {
            _ if absorbed[id.idx()] => false,
            _ if sums.contains_key(&id) => true,
            Op::Var(v) => g.vars[v as usize].kind == VarKind::Param || g.ty(id).rank() > 0,
            // A constant is inlined, except as a GEMM operand (`grad` of `sum(dot(a, b))` has
            // `dot(ones, b)`): that one is stored once, so the GEMM has a buffer to read.
            Op::Const(_) => need[id.idx()],
            Op::DimSize(_) => false,
            Op::Dot | Op::Sum(_) | Op::Max(_) | Op::ArgMax(_) | Op::Call(_) | Op::Reshape => true,
            // A draw is keyed by its element's flat index in its own shape: it is computed
            // by a loop of that shape and read back from memory wherever it is used.
            Op::Random(..) => true,
            Op::Grad(_) => false,
            _ => need[id.idx()] || (uses[id.idx()] >= 2 && !inline_ok(id)),
        };
    }

    let mut s = Schedule {
        bufs: Vec::new(),
        kernels: Vec::new(),
        outputs: Vec::new(),
        commits: Vec::new(),
        inplace_from: 0,
    };
    let mut buf_of: HashMap<NodeId, BufId> = HashMap::new();
    let mut arg_pos: HashMap<u32, usize> = HashMap::new();
    for (pos, &v) in f.inputs.iter().enumerate() {
        arg_pos.insert(v, pos);
    }
    for id in g.ids() {
        if let (true, Op::Var(v)) = (mat[id.idx()], g.op(id)) {
            let kind = match g.vars[v as usize].kind {
                VarKind::Input => BufKind::Input(arg_pos[&v]),
                VarKind::Param => BufKind::Param(v),
            };
            buf_of.insert(id, s.add_buf(kind, g.ty(id).clone()));
        }
    }
    // Outputs claim their node's buffer when the node is computed here; else a copy task fills
    // a fresh output buffer.
    let mut tasks: Vec<Task> = Vec::new();
    let mut copies: Vec<Task> = Vec::new();
    for (pos, &o) in f.outputs.iter().enumerate() {
        // An output of rank 3 or 4 is a view of the matrix that computes it: that matrix fills
        // the output buffer, in the view's order.
        let o = if g.op(o) == Op::Reshape && g.ty(o).rank() > 2 {
            g.args(o)[0]
        } else {
            o
        };
        if let Op::Var(v) = g.op(o) {
            if !mat[o.idx()] {
                s.outputs.push(OutSrc::Arg(v));
                continue;
            }
        }
        let buf = s.add_buf(BufKind::Output(pos), g.ty(o).clone());
        let computed_here = mat[o.idx()] && !matches!(g.op(o), Op::Var(_) | Op::Reshape);
        if computed_here && !buf_of.contains_key(&o) {
            buf_of.insert(o, buf);
        } else {
            copies.push(Task {
                node: o,
                kind: TaskKind::Copy(buf),
            });
        }
        s.outputs.push(OutSrc::Buf(buf));
    }
    for &(p, v) in &f.updates {
        if inplace.iter().any(|ip| ip.param == p) {
            continue;
        }
        let buf = if !buf_of.contains_key(&v)
            && mat[v.idx()]
            && !matches!(g.op(v), Op::Var(_) | Op::Reshape)
        {
            let b = s.add_buf(BufKind::Work, g.ty(v).clone());
            buf_of.insert(v, b);
            b
        } else {
            let b = s.add_buf(BufKind::Work, g.ty(v).clone());
            copies.push(Task {
                node: v,
                kind: TaskKind::Copy(b),
            });
            b
        };
        s.commits.push((p, buf));
    }
    for id in g.ids() {
        if !mat[id.idx()] || matches!(g.op(id), Op::Var(_)) {
            continue;
        }
        if g.op(id) == Op::Reshape {
            let base = s.base(buf_of[&g.args(id)[0]]);
            let v = s.add_buf(BufKind::View(base), g.ty(id).clone());
            buf_of.insert(id, v);
            continue;
        }
        let buf = *buf_of.entry(id).or_insert_with(|| s.bufs.len());
        if buf == s.bufs.len() {
            s.bufs.push(Buf {
                kind: BufKind::Work,
                ty: g.ty(id).clone(),
            });
        }
        let kind = match g.op(id) {
            Op::Dot => TaskKind::Gemm,
            _ if sums.contains_key(&id) => TaskKind::GemmSum,
            Op::Call(_) => TaskKind::Call(buf),
            Op::Sum(a) => TaskKind::Reduce(RedKind::Sum, a, buf),
            Op::Max(a) => TaskKind::Reduce(RedKind::Max, a, buf),
            Op::ArgMax(a) => TaskKind::Reduce(RedKind::ArgMax, a, buf),
            _ => TaskKind::Store(buf),
        };
        tasks.push(Task { node: id, kind });
    }
    tasks.extend(copies);
    defer_reductions(g, &mut tasks);

    let mut builder = LoopBuilder {
        g,
        mat: &mat,
        buf_of: &buf_of,
        cur: None,
    };
    // List scheduling: the next task is the first pending one that can join the current loop
    // kernel (same iteration space, every value it reads at hand); when none can, the kernel
    // ends and the first pending task starts the next one. Tasks are in topological order, so
    // after a kernel ends the first pending task is always ready. This fuses passes over one
    // iteration space that the node order interleaves with others (the loss and the output
    // gradient of an autoencoder, around the scalar cost).
    let mut done: Vec<bool> = vec![false; s.bufs.len()];
    for (b, buf) in s.bufs.iter().enumerate() {
        done[b] = matches!(buf.kind, BufKind::Input(_) | BufKind::Param(_));
    }
    s.sync_views(&mut done);
    let mut pending = tasks;
    while !pending.is_empty() {
        let pick = pending
            .iter()
            .position(|t| builder.joins(t, &done))
            .unwrap_or(0);
        let t = pending.remove(pick);
        if pick == 0 && !builder.joins(&t, &done) {
            builder.flush_marking(&mut s, &mut done);
        }
        match t.kind {
            TaskKind::Gemm => {
                let gm = gemm_of(g, t.node, &buf_of, buf_of[&t.node]);
                done[gm.c.buf] = true;
                s.kernels.push(Kernel::Gemm(gm));
            }
            TaskKind::GemmSum => {
                let out = buf_of[&t.node];
                let mut terms = sums[&t.node].iter().cloned().peekable();
                let mut beta = 0.0;
                while let Some((scale, dot)) = terms.next() {
                    let mut gm = gemm_of(g, dot, &buf_of, out);
                    gm.alpha = scale;
                    // The first product writes the sum; the others add to it.
                    gm.beta = std::mem::replace(&mut beta, 1.0);
                    if let Some((_, d2)) = terms.next_if(|(s2, _)| *s2 == gm.alpha) {
                        let g2 = gemm_of(g, d2, &buf_of, out);
                        gm.also = Some(Box::new((g2.a, g2.b, g2.k, d2)));
                    }
                    s.kernels.push(Kernel::Gemm(gm));
                }
                done[out] = true;
            }
            TaskKind::Call(out) => {
                let Op::Call(op) = g.op(t.node) else {
                    unreachable!("call tasks are made for calls")
                };
                let args = g.args(t.node);
                s.kernels.push(Kernel::Call(CallKernel {
                    op,
                    args: args.iter().map(|a| buf_of[a]).collect(),
                    out,
                    n: g.ty(args[0]).shape[0],
                    node: t.node,
                    fused: None,
                }));
                done[out] = true;
            }
            TaskKind::Store(buf) => {
                let dims = g.ty(t.node).shape.clone();
                builder.add(&mut s, dims, t.node, None, buf, true);
            }
            TaskKind::Copy(buf) => {
                let dims = g.ty(t.node).shape.clone();
                builder.add(&mut s, dims, t.node, None, buf, false);
            }
            TaskKind::Reduce(kind, axis, buf) => {
                let arg = g.args(t.node)[0];
                let dims = g.ty(arg).shape.clone();
                builder.add(&mut s, dims, arg, Some((kind, axis, t.node)), buf, false);
            }
        }
        s.sync_views(&mut done);
    }
    builder.flush(&mut s);
    s.inplace_from = s.kernels.len();
    for ip in inplace {
        let pnode = g
            .ids()
            .find(|&id| g.op(id) == Op::Var(ip.param))
            .expect("param is live");
        let pbuf = buf_of[&pnode];
        let mut terms = ip.terms.into_iter().peekable();
        // The first GEMM scales the old value by beta; the others add to what it wrote.
        let mut own = ip.own;
        while let Some((scale, dot)) = terms.next() {
            let mut gm = gemm_of(g, dot, &buf_of, pbuf);
            gm.alpha = scale;
            gm.beta = 1.0;
            gm.beta_terms = std::mem::take(&mut own);
            // Two products with one scale: one pass over the parameter instead of two.
            if let Some((s2, d2)) = terms.next_if(|(s2, _)| *s2 == gm.alpha) {
                let _ = s2;
                let g2 = gemm_of(g, d2, &buf_of, pbuf);
                gm.also = Some(Box::new((g2.a, g2.b, g2.k, d2)));
            }
            s.kernels.push(Kernel::Gemm(gm));
        }
    }
    fuse_calls(&mut s);
    if !f.options.nan_guard {
        drop_dead_stores(&mut s);
        update_loops_in_place(&mut s);
    }
    s
}

/// An update computed by a loop of its own (`b -= lr * g`, where no GEMM accumulates) writes
/// its parameter directly instead of a buffer copied into the parameter afterwards, where
/// that is safe: the loop stores only the new value, reads the parameter only at the element
/// it writes, nothing else reads the new value, and no in-place kernel reads the parameter.
/// It then runs first among the in-place kernels, after every kernel that reads old values
/// (the in-place GEMMs read no parameter), and the copy is gone: a pass that wrote the new
/// value and one that read it back, per step.
fn update_loops_in_place(s: &mut Schedule) {
    let mut i = 0;
    while i < s.commits.len() {
        let (p, b) = s.commits[i];
        match in_place_loop(s, p, b) {
            Some((k, pbuf)) => {
                let mut kern = s.kernels.remove(k);
                if let Kernel::Loop(l) = &mut kern {
                    l.stores[0].1 = pbuf;
                    for w in &mut l.written {
                        if *w == b {
                            *w = pbuf;
                        }
                    }
                }
                s.inplace_from -= 1;
                s.kernels.insert(s.inplace_from, kern);
                s.commits.remove(i);
            }
            None => i += 1,
        }
    }
}

/// The loop kernel that can update parameter `p` in place of committing buffer `b`, and the
/// parameter's buffer (see [`update_loops_in_place`]).
fn in_place_loop(s: &Schedule, p: u32, b: BufId) -> Option<(usize, BufId)> {
    let pbuf = s.bufs.iter().position(|x| x.kind == BufKind::Param(p))?;
    let rank = s.bufs[pbuf].ty.rank();
    if rank == 0 || s.bufs[b].ty.shape != s.bufs[pbuf].ty.shape {
        return None;
    }
    let viewed = |x: BufId| s.bufs.iter().any(|v| v.kind == BufKind::View(x));
    if viewed(b) || viewed(pbuf) {
        return None;
    }
    let writers: Vec<usize> = (0..s.inplace_from)
        .filter(
            |&k| matches!(&s.kernels[k], Kernel::Loop(l) if l.stores.iter().any(|(_, x)| *x == b)),
        )
        .collect();
    let [k] = writers[..] else {
        return None;
    };
    let Kernel::Loop(l) = &s.kernels[k] else {
        return None;
    };
    if l.stores.len() != 1 || !l.reductions.is_empty() || l.dims != s.bufs[pbuf].ty.shape {
        return None;
    }
    let root = root_index(rank);
    let loads_ok = l.instrs.iter().all(|ins| match ins {
        Instr::Load { buf, index } if *buf == pbuf => *index == root,
        Instr::Load { buf, .. } => *buf != b,
        _ => true,
    });
    // Kernels before the in-place section read the old value before the loop runs; one in
    // the section (an update loop moved there before) would run after it.
    let read_elsewhere = s.kernels.iter().enumerate().any(|(j, kk)| {
        j != k
            && reads(kk)
                .iter()
                .any(|&r| r == b || (r == pbuf && j >= s.inplace_from))
    });
    let output = s
        .outputs
        .iter()
        .any(|o| matches!(o, OutSrc::Buf(x) if *x == b || *x == pbuf));
    let committed_twice = s.commits.iter().filter(|(_, x)| *x == b).count() > 1;
    (loads_ok && !read_elsewhere && !output && !committed_twice).then_some((k, pbuf))
}

/// The buffers a kernel reads (views as themselves).
fn reads(k: &Kernel) -> Vec<BufId> {
    match k {
        Kernel::Loop(l) => l
            .instrs
            .iter()
            .filter_map(|i| match i {
                Instr::Load { buf, .. } => Some(*buf),
                _ => None,
            })
            .collect(),
        Kernel::Gemm(m) => {
            let mut v = vec![m.a.buf, m.b.buf, m.c.buf];
            if let Some((a2, b2, _, _)) = m.also.as_deref() {
                v.extend([a2.buf, b2.buf]);
            }
            v
        }
        Kernel::Call(c) => {
            let mut v = c.args.clone();
            if let Some(f) = &c.fused {
                v.extend(f.args.iter().copied());
            }
            v
        }
    }
}

/// Runs each pooling with the convolution next to it (see [`CallKernel::fused`]): a `Pool` of
/// a `Conv`'s maps moves up into it, and a `PoolGrad` read only by a `ConvGradFilter` moves
/// down into that. Both read buffers written once, before either position, so moving them
/// changes no value.
fn fuse_calls(s: &mut Schedule) {
    let pool_of = |c: &CallKernel| match c.op {
        CallOp::Pool { planes, h, w, win } | CallOp::PoolGrad { planes, h, w, win } => {
            Some((planes, h, w, win))
        }
        _ => None,
    };
    let maps_of = |c: &CallKernel| match c.op {
        CallOp::Conv { geom, .. } | CallOp::ConvGradFilter { geom, .. } => {
            let (oh, ow) = (geom.h + 1 - geom.fh, geom.w + 1 - geom.fw);
            Some((geom.k, oh, ow))
        }
        _ => None,
    };
    // Forward: a convolution's maps pooled right after it.
    let mut i = 0;
    while i < s.inplace_from {
        let Kernel::Call(c) = &s.kernels[i] else {
            i += 1;
            continue;
        };
        if !matches!(c.op, CallOp::Conv { .. }) || c.fused.is_some() {
            i += 1;
            continue;
        }
        let (out, maps) = (c.out, maps_of(c));
        let j = (i + 1..s.inplace_from).find(|&j| match &s.kernels[j] {
            Kernel::Call(p) => {
                matches!(p.op, CallOp::Pool { .. })
                    && p.args[0] == out
                    && pool_of(p).map(|(k, h, w, _)| (k, h, w)) == maps
            }
            _ => false,
        });
        if let Some(j) = j {
            let Kernel::Call(p) = s.kernels.remove(j) else {
                unreachable!("found as a call")
            };
            s.inplace_from -= 1;
            if let Kernel::Call(c) = &mut s.kernels[i] {
                c.fused = Some(Box::new(p));
            }
        }
        i += 1;
    }
    // Backward: a pooling's gradient made where the filter gradient reads it.
    let mut j = 0;
    while j < s.inplace_from {
        let Kernel::Call(p) = &s.kernels[j] else {
            j += 1;
            continue;
        };
        if !matches!(p.op, CallOp::PoolGrad { .. }) {
            j += 1;
            continue;
        }
        let (gout, shape) = (p.out, pool_of(p).map(|(k, h, w, _)| (k, h, w)));
        let readers: Vec<usize> = (0..s.kernels.len())
            .filter(|&m| reads(&s.kernels[m]).iter().any(|&b| s.base(b) == gout))
            .collect();
        let elsewhere = s.commits.iter().any(|&(_, b)| s.base(b) == gout)
            || s.outputs
                .iter()
                .any(|o| matches!(*o, OutSrc::Buf(b) if s.base(b) == gout));
        let target = match readers.as_slice() {
            [m] if *m > j && *m < s.inplace_from && !elsewhere => match &s.kernels[*m] {
                Kernel::Call(c)
                    if matches!(c.op, CallOp::ConvGradFilter { .. })
                        && c.fused.is_none()
                        && c.args[1] == gout
                        && maps_of(c) == shape =>
                {
                    Some(*m)
                }
                _ => None,
            },
            _ => None,
        };
        let Some(m) = target else {
            j += 1;
            continue;
        };
        let Kernel::Call(p) = s.kernels.remove(j) else {
            unreachable!("found as a call")
        };
        s.inplace_from -= 1;
        if let Kernel::Call(c) = &mut s.kernels[m - 1] {
            c.fused = Some(Box::new(p));
        }
    }
}

/// The iteration space of a loop task (None for a GEMM).
fn task_dims(g: &Graph, t: &Task) -> Option<Vec<Dim>> {
    match t.kind {
        TaskKind::Gemm | TaskKind::GemmSum | TaskKind::Call(_) => None,
        TaskKind::Store(_) | TaskKind::Copy(_) => Some(g.ty(t.node).shape.clone()),
        TaskKind::Reduce(..) => Some(g.ty(g.args(t.node)[0]).shape.clone()),
    }
}

/// Moves a reduction that would be a pass of its own to just after a later loop task over the
/// same iteration space, with the tasks that wait for it, so the two share one pass: the
/// squared-weights penalty of a loss (`sum(w * w)`) is then summed in the pass that updates
/// `w`, which reads `w` anyway. A reduction moves only past tasks that do not need it, and
/// only next to a task that needs none of what moves. A reduction that moved and the task it
/// joined stay put from then on, so no later move takes them apart, and each reduction moves
/// at most once.
fn defer_reductions(g: &Graph, tasks: &mut Vec<Task>) {
    let mut pinned = vec![false; tasks.len()];
    let mut i = 0;
    while i < tasks.len() {
        let dims = match (&tasks[i].kind, task_dims(g, &tasks[i])) {
            (TaskKind::Reduce(..), Some(d)) if !pinned[i] && !d.is_empty() => d,
            _ => {
                i += 1;
                continue;
            }
        };
        // Already next to a task of its space: it joins that one's kernel as things are.
        let beside = |k: usize| task_dims(g, &tasks[k]).as_ref() == Some(&dims);
        if (i > 0 && beside(i - 1)) || (i + 1 < tasks.len() && beside(i + 1)) {
            i += 1;
            continue;
        }
        // The tasks after it that need it, and the first later task of its space that needs
        // none of them.
        let mut moving = vec![i];
        let mut target = None;
        for j in i + 1..tasks.len() {
            let u = tasks[j].node;
            let needs = |m: &usize| g.depends_on(u, tasks[*m].node);
            if moving.iter().any(needs) {
                moving.push(j);
            } else if beside(j) {
                target = Some(j);
                break;
            }
        }
        let Some(j) = target.filter(|_| !moving.iter().any(|&m| pinned[m])) else {
            i += 1;
            continue;
        };
        pinned[j] = true;
        let mut moved = Vec::new();
        for &m in moving.iter().rev() {
            moved.push(tasks.remove(m));
            pinned.remove(m);
        }
        moved.reverse();
        // `j` shifted left by the tasks removed before it.
        let at = j - moving.len() + 1;
        for (k, task) in moved.into_iter().enumerate() {
            tasks.insert(at + k, task);
            pinned.insert(at + k, k == 0);
        }
        // The task now at `i` was after the reduction: look at it next.
    }
}

/// Removes stores into workspace buffers that nothing reads: after fusion, a value that its own
/// kernel consumes from a register needs no copy in memory. (`#[nan_guard]` keeps them: it
/// checks every stored value.)
fn drop_dead_stores(s: &mut Schedule) {
    let mut read = vec![false; s.bufs.len()];
    for k in &s.kernels {
        for b in reads(k) {
            read[b] = true;
        }
    }
    for &(_, b) in &s.commits {
        read[b] = true;
    }
    for o in &s.outputs {
        if let OutSrc::Buf(b) = *o {
            read[b] = true;
        }
    }
    // A read of a view reads its base.
    for b in 0..s.bufs.len() {
        if read[b] {
            let base = s.base(b);
            read[base] = true;
        }
    }
    let dead = |b: BufId| s.bufs[b].kind == BufKind::Work && !read[b];
    let dead: Vec<bool> = (0..s.bufs.len()).map(dead).collect();
    for k in &mut s.kernels {
        if let Kernel::Loop(l) = k {
            let stored: Vec<BufId> = l.stores.iter().map(|(_, b)| *b).collect();
            l.stores.retain(|(_, b)| !dead[*b]);
            let keep: Vec<bool> = l
                .written
                .iter()
                .map(|b| !(dead[*b] && stored.contains(b)))
                .collect();
            let mut it = keep.iter();
            l.nodes.retain(|_| *it.next().unwrap_or(&true));
            let mut it = keep.iter();
            l.written.retain(|_| *it.next().unwrap_or(&true));
        }
    }
}

impl Schedule {
    fn add_buf(&mut self, kind: BufKind, ty: Type) -> BufId {
        self.bufs.push(Buf { kind, ty });
        self.bufs.len() - 1
    }

    /// Buffers the CPU never touches: the pooling gradients made inside a filter gradient
    /// (`CallKernel::fused`), which only the GPU stores. The CPU workspace leaves them out.
    pub fn gpu_only_bufs(&self) -> Vec<BufId> {
        self.kernels
            .iter()
            .filter_map(|k| match k {
                Kernel::Call(c) => c
                    .fused
                    .as_deref()
                    .filter(|f| matches!(f.op, CallOp::PoolGrad { .. }))
                    .map(|f| f.out),
                _ => None,
            })
            .collect()
    }

    /// The buffer whose storage `b` is: itself, or the one it views.
    pub fn base(&self, b: BufId) -> BufId {
        match self.bufs[b].kind {
            BufKind::View(base) => base,
            _ => b,
        }
    }

    /// A view is ready when its base is.
    fn sync_views(&self, done: &mut [bool]) {
        for b in 0..self.bufs.len() {
            done[b] = done[self.base(b)];
        }
    }

    /// One line per kernel, for the generated docs and for tests.
    pub fn plan_text(&self, g: &Graph) -> String {
        let mut out = String::new();
        let dims = |d: &[Dim]| {
            d.iter()
                .map(|x| g.dim_str(*x))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (i, k) in self.kernels.iter().enumerate() {
            match k {
                Kernel::Gemm(m) => {
                    let acc = if m.beta != 0.0 || !m.beta_terms.is_empty() {
                        "+"
                    } else {
                        ""
                    };
                    let mut alpha = if m.alpha.sign < 0.0 {
                        "-".to_string()
                    } else {
                        String::new()
                    };
                    for f in &m.alpha.factors {
                        alpha.push_str(&match f {
                            Instr::Arg(v) => format!("{} ", g.vars[*v as usize].name),
                            Instr::Const(c) => format!("{c} "),
                            Instr::DimSize(d) => format!("{} ", g.dim_str(*d)),
                            _ => "? ".into(),
                        });
                    }
                    let t = |v: &MatView| if v.trans { ".T" } else { "" };
                    let _ = write!(
                        out,
                        "k{i} gemm %{}: b{} [{}, {}] {acc}= {alpha}b{}{} x b{}{} (k = {})",
                        m.node.0,
                        m.c.buf,
                        g.dim_str(m.m),
                        g.dim_str(m.n),
                        m.a.buf,
                        t(&m.a),
                        m.b.buf,
                        t(&m.b),
                        g.dim_str(m.k)
                    );
                    if let Some((a2, b2, k2, n2)) = m.also.as_deref() {
                        let _ = write!(
                            out,
                            " + %{}: b{}{} x b{}{} (k = {})",
                            n2.0,
                            a2.buf,
                            t(a2),
                            b2.buf,
                            t(b2),
                            g.dim_str(*k2)
                        );
                    }
                    if !m.beta_terms.is_empty() {
                        let _ = write!(out, ", beta = {}", m.beta_text(g));
                    }
                    out.push('\n');
                }
                Kernel::Call(c) => {
                    let call = |c: &CallKernel| {
                        let args: Vec<String> = c.args.iter().map(|b| format!("b{b}")).collect();
                        format!(
                            "%{}: b{} = {}({})",
                            c.node.0,
                            c.out,
                            crate::ir::op_name(Op::Call(c.op)),
                            args.join(", ")
                        )
                    };
                    let fused = match c.fused.as_deref() {
                        Some(f) if matches!(f.op, CallOp::PoolGrad { .. }) => {
                            format!(" from {} (not stored)", call(f))
                        }
                        Some(f) => format!(", then {}", call(f)),
                        None => String::new(),
                    };
                    let _ = writeln!(
                        out,
                        "k{i} call {}{fused} over {} images",
                        call(c),
                        g.dim_str(c.n)
                    );
                }
                Kernel::Loop(l) => {
                    let stores: Vec<String> =
                        l.stores.iter().map(|(_, b)| format!("b{b}")).collect();
                    let reds: Vec<String> = l
                        .reductions
                        .iter()
                        .map(|r| {
                            let op = match r.kind {
                                RedKind::Sum => "sum",
                                RedKind::Max => "max",
                                RedKind::ArgMax => "argmax",
                            };
                            match r.axis {
                                Axis::All => format!("{op} -> b{}", r.out),
                                Axis::One(a) => format!("{op}[axis={a}] -> b{}", r.out),
                            }
                        })
                        .collect();
                    let _ = write!(out, "k{i} loop [{}]: {} ops", dims(&l.dims), l.instrs.len());
                    if !stores.is_empty() {
                        let _ = write!(out, ", store {}", stores.join(" "));
                    }
                    if !reds.is_empty() {
                        let _ = write!(out, ", {}", reds.join(", "));
                    }
                    out.push('\n');
                }
            }
        }
        for (p, b) in &self.commits {
            let _ = writeln!(out, "update {} <- b{b}", g.vars[*p as usize].name);
        }
        out
    }
}

fn is_elementwise(op: Op) -> bool {
    match op {
        Op::Unary(_)
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Where
        | Op::OneHot(_)
        | Op::Random(..)
        | Op::Transpose
        | Op::ExpandDims(_)
        | Op::Broadcast
        | Op::Outer => true,
        Op::Var(_)
        | Op::Const(_)
        | Op::DimSize(_)
        | Op::Dot
        | Op::Sum(_)
        | Op::Max(_)
        | Op::ArgMax(_)
        | Op::Grad(_)
        | Op::Reshape
        | Op::Call(_) => false,
        Op::Softmax(_) | Op::LogSoftmax(_) => {
            unreachable!("softmax is expanded before scheduling")
        }
        Op::Conv2d { .. }
        | Op::ConvGradInput { .. }
        | Op::ConvGradFilter { .. }
        | Op::MaxPool(..)
        | Op::MaxPoolGrad(..) => unreachable!("image ops are library calls after flatten"),
    }
}

/// Cheap enough to recompute at each use instead of storing: a sign flip or a re-indexing of
/// something that is already in memory.
fn cheap(g: &Graph, id: NodeId) -> bool {
    let leafish = |a: NodeId| {
        matches!(
            g.op(a),
            Op::Var(_) | Op::Const(_) | Op::DimSize(_) | Op::Dot | Op::Sum(_) | Op::Max(_)
        )
    };
    match g.op(id) {
        Op::Unary(Unary::Neg) | Op::Transpose | Op::ExpandDims(_) | Op::Broadcast => {
            leafish(g.args(id)[0])
        }
        _ => false,
    }
}

fn gemm_of(g: &Graph, id: NodeId, buf_of: &HashMap<NodeId, BufId>, out: BufId) -> Gemm {
    let (a, b) = (g.args(id)[0], g.args(id)[1]);
    let view = |x: NodeId, left: bool| -> MatView {
        let (base, trans) = if g.op(x) == Op::Transpose {
            (g.args(x)[0], true)
        } else {
            (x, false)
        };
        let s = &g.ty(x).shape;
        let (rows, cols) = match (s.len(), left) {
            (1, true) => (Dim::Static(1), s[0]),
            (1, false) => (s[0], Dim::Static(1)),
            _ => (s[0], s[1]),
        };
        MatView {
            buf: buf_of[&base],
            rows,
            cols,
            trans,
        }
    };
    let av = view(a, true);
    let bv = view(b, false);
    let c = MatView {
        buf: out,
        rows: av.rows,
        cols: bv.cols,
        trans: false,
    };
    Gemm {
        m: av.rows,
        k: av.cols,
        n: bv.cols,
        a: av,
        b: bv,
        c,
        alpha: Scale::one(),
        beta: 0.0,
        beta_terms: Vec::new(),
        node: id,
        also: None,
    }
}

struct LoopBuilder<'a> {
    g: &'a Graph,
    mat: &'a [bool],
    buf_of: &'a HashMap<NodeId, BufId>,
    cur: Option<Cur>,
}

struct Cur {
    k: LoopKernel,
    memo: HashMap<(NodeId, Vec<Ix>), ValId>,
    /// Buffers written by this kernel's reductions (not readable until it ends).
    reduced: Vec<BufId>,
    /// Buffers stored by this kernel, readable only at the identity index.
    stored: Vec<BufId>,
}

fn root_index(rank: usize) -> Vec<Ix> {
    match rank {
        0 => vec![],
        1 => vec![Ix::Inner],
        _ => vec![Ix::Outer, Ix::Inner],
    }
}

impl LoopBuilder<'_> {
    fn flush(&mut self, s: &mut Schedule) {
        if let Some(c) = self.cur.take() {
            s.kernels.push(Kernel::Loop(c.k));
        }
    }

    /// Ends the current kernel; what it wrote becomes readable.
    fn flush_marking(&mut self, s: &mut Schedule, done: &mut [bool]) {
        if let Some(c) = &self.cur {
            for &b in &c.k.written {
                done[b] = true;
            }
        }
        self.flush(s);
    }

    /// Whether `t` can be added to the current loop kernel now: a loop task over the same
    /// iteration space whose loads are all written by finished kernels, or stored by this one
    /// at the same index.
    fn joins(&self, t: &Task, done: &[bool]) -> bool {
        let g = self.g;
        let Some(c) = &self.cur else {
            return false;
        };
        let (node, dims, compute) = match t.kind {
            TaskKind::Gemm | TaskKind::GemmSum | TaskKind::Call(_) => return false,
            TaskKind::Store(_) => (t.node, &g.ty(t.node).shape, true),
            TaskKind::Copy(_) => (t.node, &g.ty(t.node).shape, false),
            TaskKind::Reduce(..) => {
                let arg = g.args(t.node)[0];
                (arg, &g.ty(arg).shape, false)
            }
        };
        if c.k.dims != *dims {
            return false;
        }
        let idx = root_index(dims.len());
        let mut ok = true;
        self.visit_loads(node, &idx, compute, &mut |buf, at| {
            let here = c.stored.contains(&buf) && at == root_index(at.len()).as_slice();
            if !(done[buf] || here) || c.reduced.contains(&buf) {
                ok = false;
            }
        });
        ok
    }

    /// Adds a store (`red` None) or a reduction of `node` over `dims`, joining the current
    /// kernel when it has the same iteration space and none of the values needed are ones this
    /// kernel cannot provide yet.
    fn add(
        &mut self,
        s: &mut Schedule,
        dims: Vec<Dim>,
        node: NodeId,
        red: Option<(RedKind, Axis, NodeId)>,
        out: BufId,
        compute: bool,
    ) {
        let idx = root_index(dims.len());
        let joinable = match &self.cur {
            Some(c) => c.k.dims == dims && self.can_join(c, node, &idx, compute),
            None => false,
        };
        if !joinable {
            self.flush(s);
            self.cur = Some(Cur {
                k: LoopKernel {
                    dims,
                    instrs: Vec::new(),
                    stores: Vec::new(),
                    reductions: Vec::new(),
                    nodes: Vec::new(),
                    written: Vec::new(),
                },
                memo: HashMap::new(),
                reduced: Vec::new(),
                stored: Vec::new(),
            });
        }
        let v = self.value(node, &idx, compute);
        let c = self.cur.as_mut().unwrap();
        match red {
            None => {
                c.k.stores.push((v, out));
                c.stored.push(out);
                c.k.nodes.push(node);
                c.k.written.push(out);
            }
            Some((kind, axis, rnode)) => {
                c.k.reductions.push(Reduction {
                    kind,
                    axis,
                    value: v,
                    out,
                });
                c.reduced.push(out);
                c.k.nodes.push(rnode);
                c.k.written.push(out);
            }
        }
    }

    /// Whether every buffer `node` reads at `idx` is either produced before this kernel or
    /// stored by it at the same index (so the value is at hand in registers).
    fn can_join(&self, c: &Cur, node: NodeId, idx: &[Ix], compute: bool) -> bool {
        let mut ok = true;
        self.visit_loads(node, idx, compute, &mut |buf, at| {
            if c.reduced.contains(&buf) {
                ok = false;
            }
            if c.stored.contains(&buf) && at != root_index(at.len()).as_slice() {
                ok = false;
            }
        });
        ok
    }

    fn visit_loads(&self, node: NodeId, idx: &[Ix], root: bool, f: &mut dyn FnMut(BufId, &[Ix])) {
        let g = self.g;
        if (!root || matches!(g.op(node), Op::Var(_))) && self.mat[node.idx()] {
            if let Some(&b) = self.buf_of.get(&node) {
                f(b, idx);
            }
            return;
        }
        let n = g.node(node);
        for (k, &a) in n.args.iter().enumerate() {
            let ai = arg_index(g, node, k, idx);
            self.visit_loads(a, &ai, false, f);
        }
    }

    fn push(&mut self, key: (NodeId, Vec<Ix>), instr: Instr) -> ValId {
        let c = self.cur.as_mut().unwrap();
        if let Some(pos) = c.k.instrs.iter().position(|i| *i == instr) {
            c.memo.insert(key, pos);
            return pos;
        }
        c.k.instrs.push(instr);
        let v = c.k.instrs.len() - 1;
        c.memo.insert(key, v);
        v
    }

    /// The SSA value of `node` at `idx`, computing inlined ancestors and loading stored ones.
    fn value(&mut self, node: NodeId, idx: &[Ix], is_root: bool) -> ValId {
        let key = (node, idx.to_vec());
        if let Some(&v) = self.cur.as_ref().unwrap().memo.get(&key) {
            return v;
        }
        let g = self.g;
        let n = g.node(node);
        if (!is_root || matches!(n.op, Op::Var(_))) && self.mat[node.idx()] {
            let buf = self.buf_of[&node];
            return self.push(
                key,
                Instr::Load {
                    buf,
                    index: idx.to_vec(),
                },
            );
        }
        let instr = match n.op {
            Op::Var(v) => Instr::Arg(v),
            Op::Const(c) => Instr::Const(c.get()),
            Op::DimSize(d) => Instr::DimSize(d),
            Op::Unary(u) => {
                let a = self.value(n.args[0], &arg_index(g, node, 0, idx), false);
                Instr::Unary(u, a)
            }
            Op::Binary(b) => {
                let a = self.value(n.args[0], &arg_index(g, node, 0, idx), false);
                let c = self.value(n.args[1], &arg_index(g, node, 1, idx), false);
                Instr::Binary(b, a, c)
            }
            Op::Outer => {
                let a = self.value(n.args[0], &arg_index(g, node, 0, idx), false);
                let c = self.value(n.args[1], &arg_index(g, node, 1, idx), false);
                Instr::Binary(Binary::Mul, a, c)
            }
            Op::Transpose | Op::ExpandDims(_) | Op::Broadcast => {
                let v = self.value(n.args[0], &arg_index(g, node, 0, idx), false);
                self.cur.as_mut().unwrap().memo.insert(key, v);
                return v;
            }
            Op::Compare(b) => {
                let a = self.value(n.args[0], &arg_index(g, node, 0, idx), false);
                let c = self.value(n.args[1], &arg_index(g, node, 1, idx), false);
                Instr::Binary(b, a, c)
            }
            Op::Where => {
                let c = self.value(n.args[0], &arg_index(g, node, 0, idx), false);
                let a = self.value(n.args[1], &arg_index(g, node, 1, idx), false);
                let b = self.value(n.args[2], &arg_index(g, node, 2, idx), false);
                Instr::Select(c, a, b)
            }
            // onehot(y, k)[i, j] = (y[i] == j)
            Op::OneHot(_) => {
                let y = self.value(n.args[0], &arg_index(g, node, 0, idx), false);
                let j = self.push((node, vec![idx[1], Ix::Zero]), Instr::Index(idx[1]));
                Instr::Binary(Binary::Eq, y, j)
            }
            // Stored by a loop of its own shape: `idx` is that loop's point.
            Op::Random(kind, site) => {
                let stream = self.buf_of[&n.args[0]];
                let p0 = self.value(n.args[1], &[], false);
                let p1 = match n.args.get(2) {
                    Some(&a) => self.value(a, &[], false),
                    None => p0,
                };
                Instr::Random {
                    kind,
                    site,
                    stream,
                    params: [p0, p1],
                }
            }
            Op::Dot
            | Op::Sum(_)
            | Op::Max(_)
            | Op::ArgMax(_)
            | Op::Grad(_)
            | Op::Reshape
            | Op::Call(_) => {
                unreachable!("materialized ops are loaded, never inlined")
            }
            Op::Conv2d { .. }
            | Op::ConvGradInput { .. }
            | Op::ConvGradFilter { .. }
            | Op::MaxPool(..)
            | Op::MaxPoolGrad(..) => unreachable!("image ops are library calls after flatten"),
            Op::Softmax(_) | Op::LogSoftmax(_) => {
                unreachable!("softmax is expanded before scheduling")
            }
        };
        self.push(key, instr)
    }
}

/// The index at which argument `k` of `node` is read when `node` is evaluated at `idx`.
fn arg_index(g: &Graph, node: NodeId, k: usize, idx: &[Ix]) -> Vec<Ix> {
    let n = g.node(node);
    let a = n.args[k];
    match n.op {
        Op::Transpose => idx.iter().rev().copied().collect(),
        Op::ExpandDims(ax) => {
            let mut v = idx.to_vec();
            v.remove(ax as usize);
            v
        }
        Op::Outer => vec![idx[k]],
        Op::OneHot(_) => vec![idx[0]],
        Op::Sum(_) | Op::Max(_) | Op::ArgMax(_) => idx.to_vec(),
        _ => {
            // Elementwise with numpy broadcasting: align on the right; static 1 reads index 0.
            let rs = &n.ty.shape;
            let as_ = &g.ty(a).shape;
            let off = rs.len() - as_.len();
            (0..as_.len())
                .map(|i| {
                    if as_[i] == Dim::Static(1) && rs[i + off] != Dim::Static(1) {
                        Ix::Zero
                    } else {
                        idx[i + off]
                    }
                })
                .collect()
        }
    }
}
