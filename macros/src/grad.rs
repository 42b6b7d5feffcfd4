//! Stage 4: reverse-mode differentiation over the DAG, one VJP row per op.
//!
//! Every `Grad(var)` node is replaced by the derivative of its cost with respect to `var`, built
//! in the same graph (so forward nodes are reused, e.g. `sigmoid` in its own derivative). Inner
//! `grad`s come first in topological order, so `grad` of an expression holding `grad` works.

use proc_macro2::Span;

use crate::ir::{Axis, Binary, Dim, Function, Graph, NodeId, Op, Type, TypeError, Unary, VarKind};

/// Replaces every `Grad` node of `f`. Errors are internal (the shapes were checked already).
pub fn grad(f: &mut Function) -> Result<(), String> {
    let roots = f.roots();
    let old = &f.graph;
    let mut g = Graph::with_vars(old.vars.clone(), old.syms.clone());
    let mut map = vec![NodeId(u32::MAX); old.len()];
    let live = old.reachable(&roots);
    for id in old.ids() {
        if !live[id.idx()] {
            continue;
        }
        let n = old.node(id);
        let args: Vec<NodeId> = n.args.iter().map(|a| map[a.idx()]).collect();
        map[id.idx()] = match n.op {
            Op::Grad(v) => {
                let var = g.add(
                    Op::Var(v),
                    Vec::new(),
                    g.vars[v as usize].ty.clone(),
                    g.vars[v as usize].span,
                );
                backprop(&mut g, args[0], var).map_err(|e| e.message)?
            }
            op => g.add(op, args, n.ty.clone(), n.span),
        };
    }
    let new_roots: Vec<NodeId> = roots.iter().map(|r| map[r.idx()]).collect();
    let (g, r) = g.extract(&new_roots);
    f.set_roots(g, &r);
    let _ = VarKind::Input;
    Ok(())
}

/// d cost / d x, for a scalar `cost`.
pub fn backprop(g: &mut Graph, cost: NodeId, x: NodeId) -> Result<NodeId, TypeError> {
    // Arguments precede their users, so a var numbered after the cost is not an argument of it:
    // the cost does not depend on x (e.g. `0 * sum(x)` simplified away) and d cost / d x = 0.
    if x.idx() > cost.idx() {
        let ty = g.ty(x).clone();
        let span = g.node(cost).span;
        return Ok(g.constant(0.0, ty, span));
    }
    // Only nodes on a path from x to cost that passes gradients carry one.
    let n = cost.idx() + 1;
    let mut reaches_x = vec![false; n];
    for i in x.idx()..n {
        let id = NodeId(i as u32);
        let op = g.op(id);
        reaches_x[i] = id == x
            || g.args(id)
                .iter()
                .enumerate()
                .any(|(k, a)| a.idx() >= x.idx() && reaches_x[a.idx()] && passes_gradient(op, k));
    }
    let mut adj: Vec<Vec<NodeId>> = vec![Vec::new(); n];
    let dt = g.ty(cost).dtype;
    let span = g.node(cost).span;
    adj[cost.idx()].push(g.scalar_const(1.0, dt, span));
    for i in (x.idx()..n).rev() {
        if !reaches_x[i] || adj[i].is_empty() || i == x.idx() {
            continue;
        }
        let id = NodeId(i as u32);
        let gout = sum_all(g, std::mem::take(&mut adj[i]))?;
        let args = g.args(id).to_vec();
        for (k, a) in args.iter().enumerate() {
            if a.idx() >= x.idx() && reaches_x[a.idx()] && passes_gradient(g.op(id), k) {
                let contrib = vjp(g, id, k, gout)?;
                adj[a.idx()].push(contrib);
            }
        }
    }
    let parts = std::mem::take(&mut adj[x.idx()]);
    if parts.is_empty() {
        let ty = g.ty(x).clone();
        return Ok(g.constant(0.0, ty, span));
    }
    sum_all(g, parts)
}

/// Whether `op` passes a gradient to its argument `k`. Comparisons, argmax and one-hot are
/// piecewise constant (their derivative is zero wherever it exists), and so is the condition
/// of a `where`: no gradient flows into them, as in Theano. Lowering refuses a `grad` that
/// reaches its variable only through them.
fn passes_gradient(op: Op, k: usize) -> bool {
    match op {
        Op::Compare(_) | Op::ArgMax(_) | Op::OneHot(_) | Op::Random(..) => false,
        Op::Where => k != 0,
        // Which element of a window is its maximum does not change under a small step.
        Op::MaxPoolGrad(..) => k != 0,
        _ => true,
    }
}

fn sum_all(g: &mut Graph, parts: Vec<NodeId>) -> Result<NodeId, TypeError> {
    let mut it = parts.into_iter();
    let mut acc = it.next().expect("at least one gradient contribution");
    for p in it {
        let span = g.node(p).span;
        acc = g.build(Op::Binary(Binary::Add), vec![acc, p], span)?;
    }
    Ok(acc)
}

/// Builds nodes with the span of the forward node they differentiate.
struct B<'g> {
    g: &'g mut Graph,
    span: Span,
}

impl B<'_> {
    fn op(&mut self, op: Op, args: Vec<NodeId>) -> Result<NodeId, TypeError> {
        self.g.build(op, args, self.span)
    }
    fn un(&mut self, u: Unary, a: NodeId) -> Result<NodeId, TypeError> {
        self.op(Op::Unary(u), vec![a])
    }
    fn bin(&mut self, b: Binary, x: NodeId, y: NodeId) -> Result<NodeId, TypeError> {
        self.op(Op::Binary(b), vec![x, y])
    }
    fn mul(&mut self, x: NodeId, y: NodeId) -> Result<NodeId, TypeError> {
        self.bin(Binary::Mul, x, y)
    }
    fn konst(&mut self, v: f64, like: NodeId) -> NodeId {
        let dt = self.g.ty(like).dtype;
        self.g.scalar_const(v, dt, self.span)
    }
    fn zeros_like(&mut self, x: NodeId) -> NodeId {
        let ty = self.g.ty(x).clone();
        self.g.constant(0.0, ty, self.span)
    }
    fn transpose(&mut self, x: NodeId) -> Result<NodeId, TypeError> {
        if self.g.ty(x).rank() < 2 {
            return Ok(x);
        }
        self.op(Op::Transpose, vec![x])
    }
    /// Numpy broadcast of `x` to `ty` (explicit, so later stages know the target).
    fn broadcast(&mut self, x: NodeId, ty: &Type) -> NodeId {
        if self.g.ty(x) == ty {
            return x;
        }
        self.g.add(Op::Broadcast, vec![x], ty.clone(), self.span)
    }
    /// The adjoint of an implicit broadcast: sums `x` down to `ty`.
    ///
    /// The leading axes go first, then the others from the last to the first, and only then
    /// the summed axes come back as dims of 1: for images `[n, k, h, w]` summed to a channel
    /// bias `[1, k, 1, 1]` every sum is then over the first or the last axis of what is left,
    /// which the flatten stage keeps as sums over the rows or columns of a matrix.
    fn sum_to(&mut self, x: NodeId, ty: &Type) -> Result<NodeId, TypeError> {
        let mut x = x;
        while self.g.ty(x).rank() > ty.rank() {
            x = self.op(Op::Sum(Axis::One(0)), vec![x])?;
        }
        if ty.rank() <= 2 {
            for k in 0..ty.rank() {
                let have = self.g.ty(x).shape[k];
                if ty.shape[k] == Dim::Static(1) && have != Dim::Static(1) {
                    let s = self.op(Op::Sum(Axis::One(k as u8)), vec![x])?;
                    x = self.op(Op::ExpandDims(k as u8), vec![s])?;
                }
            }
            return self.same_type(x, ty);
        }
        let summed: Vec<usize> = (0..ty.rank())
            .filter(|&k| ty.shape[k] == Dim::Static(1) && self.g.ty(x).shape[k] != Dim::Static(1))
            .collect();
        let first = summed.first() == Some(&0);
        if first {
            x = self.op(Op::Sum(Axis::One(0)), vec![x])?;
        }
        // Axis k of the input is axis k - 1 once axis 0 is gone.
        let shift = usize::from(first);
        for &k in summed.iter().skip(shift).rev() {
            x = self.op(Op::Sum(Axis::One((k - shift) as u8)), vec![x])?;
        }
        for &k in &summed {
            x = self.op(Op::ExpandDims(k as u8), vec![x])?;
        }
        self.same_type(x, ty)
    }

    /// `x`, checked to have type `ty`.
    fn same_type(&mut self, x: NodeId, ty: &Type) -> Result<NodeId, TypeError> {
        if self.g.ty(x) != ty {
            return Err(TypeError {
                message: format!(
                    "internal: cannot sum {} down to {}",
                    self.g.type_str(self.g.ty(x)),
                    self.g.type_str(ty)
                ),
                help: None,
            });
        }
        Ok(x)
    }
}

/// The vector-Jacobian product of node `id` for its argument `k`, given the output gradient `gout`.
fn vjp(g: &mut Graph, id: NodeId, k: usize, gout: NodeId) -> Result<NodeId, TypeError> {
    let node = g.node(id).clone();
    let args = node.args.clone();
    let arg_ty = g.ty(args[k]).clone();
    let mut b = B { g, span: node.span };
    let x = args[0];
    let r = match node.op {
        Op::Var(_) | Op::Const(_) | Op::DimSize(_) | Op::Grad(_) => {
            return Err(TypeError {
                message: "internal: vjp of a node without differentiable arguments".into(),
                help: None,
            })
        }
        Op::Unary(u) => match u {
            // d(-x) = -g
            Unary::Neg => b.un(Unary::Neg, gout)?,
            // d exp(x) = g * exp(x); reuse the forward node
            Unary::Exp => b.mul(gout, id)?,
            // d log(x) = g / x
            Unary::Log => b.bin(Binary::Div, gout, x)?,
            // d log1p(x) = g / (1 + x)
            Unary::Log1p => {
                let one = b.konst(1.0, x);
                let d = b.bin(Binary::Add, one, x)?;
                b.bin(Binary::Div, gout, d)?
            }
            // d sqrt(x) = g / (2 sqrt(x)); reuse the forward node
            Unary::Sqrt => {
                let two = b.konst(2.0, x);
                let d = b.mul(two, id)?;
                b.bin(Binary::Div, gout, d)?
            }
            // d tanh(x) = g * (1 - t^2) with t the forward node
            Unary::Tanh => {
                let t2 = b.mul(id, id)?;
                let nt2 = b.un(Unary::Neg, t2)?;
                let one = b.konst(1.0, x);
                let d = b.bin(Binary::Add, one, nt2)?;
                b.mul(gout, d)?
            }
            // d erf(x) = g * 2/sqrt(pi) * e^(-x^2)
            Unary::Erf => {
                let x2 = b.mul(x, x)?;
                let nx2 = b.un(Unary::Neg, x2)?;
                let e = b.un(Unary::Exp, nx2)?;
                let c = b.konst(std::f64::consts::FRAC_2_SQRT_PI, x);
                let d = b.mul(c, e)?;
                b.mul(gout, d)?
            }
            // d sigmoid(x) = g * s * (1 - s) with s the forward node
            Unary::Sigmoid => {
                let ns = b.un(Unary::Neg, id)?;
                let one = b.konst(1.0, x);
                let om = b.bin(Binary::Add, one, ns)?;
                let d = b.mul(id, om)?;
                b.mul(gout, d)?
            }
            // d softplus(x) = g * sigmoid(x)
            Unary::Softplus => {
                let s = b.un(Unary::Sigmoid, x)?;
                b.mul(gout, s)?
            }
            // d relu(x) = g * [x > 0]
            Unary::Relu => {
                let s = b.un(Unary::Step, x)?;
                b.mul(gout, s)?
            }
            // d |x| = g * sign(x)
            Unary::Abs => {
                let s = b.un(Unary::Sign, x)?;
                b.mul(gout, s)?
            }
            // piecewise constant: zero almost everywhere
            Unary::Sign | Unary::Step => b.zeros_like(x),
            // d x^0 = 0: x^0 = 1 everywhere (powf(0, 0) = 1), while 0 * x^-1 is NaN at x = 0
            // once `#[strict]` keeps `mul-zero` from folding it.
            Unary::Pow(kk) if kk.get() == 0.0 => b.zeros_like(x),
            // d x^k = g * k x^(k-1)
            Unary::Pow(kk) => {
                let kv = kk.get();
                let c = b.konst(kv, x);
                let d = if kv - 1.0 == 0.0 {
                    c
                } else {
                    let p = b.un(Unary::Pow(crate::ir::Num::new(kv - 1.0)), x)?;
                    b.mul(c, p)?
                };
                b.mul(gout, d)?
            }
        },
        Op::Binary(op) => {
            let (a, bb) = (args[0], args[1]);
            let full = match (op, k) {
                // d(a + b) = g, g
                (Binary::Add, _) => gout,
                // d(a * b) = g b, g a
                (Binary::Mul, 0) => b.mul(gout, bb)?,
                (Binary::Mul, _) => b.mul(gout, a)?,
                // d(a / b) = g / b, -g (a / b) / b; reuse the forward node
                (Binary::Div, 0) => b.bin(Binary::Div, gout, bb)?,
                (Binary::Div, _) => {
                    let t = b.mul(gout, id)?;
                    let q = b.bin(Binary::Div, t, bb)?;
                    b.un(Unary::Neg, q)?
                }
                // maximum routes g to the larger argument (ties to the left)
                (Binary::Maximum, _) | (Binary::Minimum, _) => {
                    let (l, r) = if op == Binary::Maximum {
                        (a, bb)
                    } else {
                        (bb, a)
                    };
                    let m = b.bin(Binary::Ge, l, r)?;
                    let mask = if k == 0 {
                        m
                    } else {
                        let nm = b.un(Unary::Neg, m)?;
                        let one = b.konst(1.0, a);
                        b.bin(Binary::Add, one, nm)?
                    };
                    b.mul(gout, mask)?
                }
                // the masks `grad` builds are piecewise constant (and so are the comparisons,
                // which the user writes as `Op::Compare`: lowering refuses a grad through those)
                (
                    Binary::Ge | Binary::Eq | Binary::Gt | Binary::Lt | Binary::Le | Binary::Ne,
                    _,
                ) => b.zeros_like(id),
            };
            b.sum_to(full, &arg_ty)?
        }
        // d x.T = g.T
        Op::Transpose => b.op(Op::Transpose, vec![gout])?,
        // expand_dims adds a dim of 1: remove it again
        Op::ExpandDims(ax) => b.op(Op::Sum(Axis::One(ax)), vec![gout])?,
        // a broadcast copies: sum the copies
        Op::Broadcast => b.sum_to(gout, &arg_ty)?,
        // outer(u, v) = u v^T: du = g v, dv = g^T u
        Op::Outer => {
            if k == 0 {
                b.op(Op::Dot, vec![gout, args[1]])?
            } else {
                b.op(Op::Dot, vec![args[0], gout])?
            }
        }
        Op::Dot => {
            let (a, bb) = (args[0], args[1]);
            let (ra, rb) = (b.g.ty(a).rank(), b.g.ty(bb).rank());
            match (ra, rb, k) {
                // v . w: dv = g w, dw = g v (g scalar)
                (1, 1, 0) => b.mul(gout, bb)?,
                (1, 1, _) => b.mul(gout, a)?,
                // A v: dA = outer(g, v), dv = g A  (= A^T g)
                (2, 1, 0) => b.op(Op::Outer, vec![gout, bb])?,
                (2, 1, _) => b.op(Op::Dot, vec![gout, a])?,
                // v B: dv = B g, dB = outer(v, g)
                (1, 2, 0) => b.op(Op::Dot, vec![bb, gout])?,
                (1, 2, _) => b.op(Op::Outer, vec![a, gout])?,
                // A B: dA = g B^T, dB = A^T g
                (_, _, 0) => {
                    let bt = b.transpose(bb)?;
                    b.op(Op::Dot, vec![gout, bt])?
                }
                _ => {
                    let at = b.transpose(a)?;
                    b.op(Op::Dot, vec![at, gout])?
                }
            }
        }
        // d sum(x) = g copied to every element summed
        Op::Sum(axis) => {
            let ge = match axis {
                Axis::All => gout,
                Axis::One(ax) => b.op(Op::ExpandDims(ax), vec![gout])?,
            };
            b.broadcast(ge, &arg_ty)
        }
        // d max(x) = g where x equals the max (every tie gets it, as in Theano)
        Op::Max(axis) => {
            let (ge, me) = match axis {
                Axis::All => (gout, id),
                Axis::One(ax) => (
                    b.op(Op::ExpandDims(ax), vec![gout])?,
                    b.op(Op::ExpandDims(ax), vec![id])?,
                ),
            };
            let gb = b.broadcast(ge, &arg_ty);
            let mb = b.broadcast(me, &arg_ty);
            let mask = b.bin(Binary::Eq, x, mb)?;
            b.mul(gb, mask)?
        }
        // where(c, a, b): g goes to a where c holds, to b elsewhere (the condition passes none)
        Op::Where => match k {
            1 | 2 => {
                let zero = b.konst(0.0, gout);
                let routed = if k == 1 {
                    b.op(Op::Where, vec![args[0], gout, zero])?
                } else {
                    b.op(Op::Where, vec![args[0], zero, gout])?
                };
                b.sum_to(routed, &arg_ty)?
            }
            _ => return Err(TypeError::new("internal: where has three arguments".into())),
        },
        // d softmax(x) = s (g - sum(g s)) along the axis, s the forward node
        Op::Softmax(ax) => {
            let gs = b.mul(gout, id)?;
            let t = b.op(Op::Sum(Axis::One(ax)), vec![gs])?;
            let t = b.op(Op::ExpandDims(ax), vec![t])?;
            let nt = b.un(Unary::Neg, t)?;
            let d = b.bin(Binary::Add, gout, nt)?;
            b.mul(id, d)?
        }
        // d log_softmax(x) = g - softmax(x) sum(g) along the axis, softmax(x) = e^(forward
        // node): with g = -onehot / n of a cross-entropy, this is (softmax(x) - onehot) / n
        Op::LogSoftmax(ax) => {
            let t = b.op(Op::Sum(Axis::One(ax)), vec![gout])?;
            let t = b.op(Op::ExpandDims(ax), vec![t])?;
            let s = b.un(Unary::Exp, id)?;
            let st = b.mul(s, t)?;
            let nst = b.un(Unary::Neg, st)?;
            b.bin(Binary::Add, gout, nst)?
        }
        // A view: the gradient is the same elements in the argument's shape.
        Op::Reshape => b.g.add(Op::Reshape, vec![gout], arg_ty.clone(), node.span),
        // conv2d(x, w): dx is the gradient's "full" correlation with the filters, dw the
        // correlation of the images with the gradient.
        Op::Conv2d { flip } => {
            if k == 0 {
                b.op(Op::ConvGradInput { flip }, vec![gout, args[1]])?
            } else {
                b.op(Op::ConvGradFilter { flip }, vec![args[0], gout])?
            }
        }
        // Each window's gradient goes to the window's (first) maximum.
        Op::MaxPool(ph, pw) => b.op(Op::MaxPoolGrad(ph, pw), vec![x, gout])?,
        Op::ConvGradInput { .. } | Op::ConvGradFilter { .. } | Op::MaxPoolGrad(..) => {
            return Err(TypeError::new(format!(
                "a second derivative through `{}` is not supported",
                crate::ir::op_name(node.op)
            )))
        }
        Op::Call(_) => {
            return Err(TypeError::new(
                "internal: grad after the flatten stage".into(),
            ))
        }
        // Pass no gradient (`passes_gradient`).
        Op::Compare(_) | Op::ArgMax(_) | Op::OneHot(_) | Op::Random(..) => {
            return Err(TypeError::new(format!(
                "internal: a gradient through `{}`",
                crate::ir::op_name(node.op)
            )))
        }
    };
    Ok(r)
}
