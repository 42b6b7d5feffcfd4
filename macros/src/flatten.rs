//! Stage 7: every tensor a vector or a matrix.
//!
//! Tensors of rank 3 and 4 are batches of images: only their first dim may be a name. From here
//! on, each is seen as a matrix of rows, `[n, c * h * w]`, the same elements in the same order,
//! so the schedule and both emitters keep working on iteration spaces of rank 0 to 2:
//! - elementwise ops keep their form; an argument broadcast across images (a channel bias
//!   `reshape(b, [1, k, 1, 1])`) becomes a broadcast of a matrix, materialized first where it
//!   stretches within a row;
//! - a sum over some axes becomes sums over the rows or the columns of views of the argument;
//! - `reshape`, `flatten` and `expand_dims` become views (`Op::Reshape`), which cost nothing;
//! - `conv2d`, `max_pool` and their gradients become library kernels (`Op::Call`) that carry
//!   the image sizes they lost.
//!
//! Variables keep their declared types in `Graph::vars`, which the emitters check arguments
//! against; their nodes take the matrix type. An output of rank 3 or 4 is a view of the
//! matrix that computes it, in its declared type.

use proc_macro2::Span;

use crate::ir::{dim_product, Axis, CallOp, ConvGeom, Dim, Function, Graph, NodeId, Op, Type};

/// A type as the schedule sees it: rank 3 and 4 as `[d0, product of the others]`.
pub fn canon(t: &Type) -> Type {
    if t.rank() <= 2 {
        return t.clone();
    }
    let rest: u64 = t.shape[1..].iter().map(|d| stat(*d)).product();
    Type {
        dtype: t.dtype,
        shape: vec![t.shape[0], Dim::Static(rest)],
        int: t.int,
    }
}

/// A dim after the first of a rank-3/4 tensor: a literal (the parser and `reshape` see to it).
fn stat(d: Dim) -> u64 {
    match d {
        Dim::Static(k) => k,
        // Refused before this stage; 0 keeps a broken invariant from looking like a size.
        Dim::Sym(_) => 0,
    }
}

/// Whether a function has anything for this stage to do.
fn needed(f: &Function) -> bool {
    let g = &f.graph;
    g.ids().any(|id| {
        g.ty(id).rank() > 2
            || matches!(
                g.op(id),
                Op::Reshape
                    | Op::Conv2d { .. }
                    | Op::ConvGradInput { .. }
                    | Op::ConvGradFilter { .. }
                    | Op::MaxPool(..)
                    | Op::MaxPoolGrad(..)
            )
    })
}

/// Rewrites `f`'s graph so that no node has rank above 2 (see the module's text). An error is
/// the user's, on the op it names.
pub fn flatten(f: &mut Function) -> Result<(), (Span, String)> {
    if !needed(f) {
        return Ok(());
    }
    let old = &f.graph;
    let roots = f.roots();
    let live = old.reachable(&roots);
    let mut fl = Flattener {
        old,
        g: Graph::with_vars(old.vars.clone(), old.syms.clone()),
        map: vec![NodeId(u32::MAX); old.len()],
    };
    for id in old.ids() {
        if live[id.idx()] {
            fl.map[id.idx()] = fl.node(id)?;
        }
    }
    // Outputs of rank 3 and 4 are returned in their declared shape: a view of the matrix.
    let n_out = f.outputs.len();
    let new_roots: Vec<NodeId> = roots
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let m = fl.map[r.idx()];
            let t = old.ty(*r);
            if i < n_out && t.rank() > 2 {
                fl.g.add(Op::Reshape, vec![m], t.clone(), old.node(*r).span)
            } else {
                m
            }
        })
        .collect();
    let (g, r) = fl.g.extract(&new_roots);
    f.set_roots(g, &r);
    Ok(())
}

struct Flattener<'a> {
    old: &'a Graph,
    g: Graph,
    map: Vec<NodeId>,
}

impl Flattener<'_> {
    fn node(&mut self, id: NodeId) -> Result<NodeId, (Span, String)> {
        let old = self.old;
        let n = old.node(id);
        let (op, span) = (n.op, n.span);
        let t = &n.ty;
        let args: Vec<NodeId> = n.args.iter().map(|a| self.map[a.idx()]).collect();
        let big = t.rank() > 2 || n.args.iter().any(|a| old.ty(*a).rank() > 2);
        let geom = |x: &Type, f: &Type| -> ConvGeom {
            let s = |t: &Type, k: usize| stat(t.shape[k]) as u32;
            ConvGeom {
                c: s(x, 1),
                h: s(x, 2),
                w: s(x, 3),
                k: s(f, 0),
                fh: s(f, 2),
                fw: s(f, 3),
            }
        };
        let arg_ty = |k: usize| old.ty(n.args[k]);
        let call =
            |this: &mut Self, c: CallOp| this.g.add(Op::Call(c), args.clone(), canon(t), span);
        Ok(match op {
            Op::Reshape | Op::ExpandDims(_) => self.view(args[0], canon(t)),
            Op::Conv2d { flip } => call(
                self,
                CallOp::Conv {
                    flip,
                    geom: geom(arg_ty(0), arg_ty(1)),
                },
            ),
            Op::ConvGradInput { flip } => call(
                self,
                CallOp::ConvGradInput {
                    flip,
                    geom: geom(t, arg_ty(1)),
                },
            ),
            Op::ConvGradFilter { flip } => call(
                self,
                CallOp::ConvGradFilter {
                    flip,
                    geom: geom(arg_ty(0), t),
                },
            ),
            Op::MaxPool(ph, pw) | Op::MaxPoolGrad(ph, pw) => {
                let x = arg_ty(0);
                let (planes, h, w) = (
                    stat(x.shape[1]) as u32,
                    stat(x.shape[2]) as u32,
                    stat(x.shape[3]) as u32,
                );
                let win = (ph, pw);
                call(
                    self,
                    if matches!(op, Op::MaxPool(..)) {
                        CallOp::Pool { planes, h, w, win }
                    } else {
                        CallOp::PoolGrad { planes, h, w, win }
                    },
                )
            }
            _ if !big => self.g.add(op, args, t.clone(), span),
            Op::Var(_) | Op::Const(_) => self.g.add(op, args, canon(t), span),
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Where => {
                let mut full = Vec::with_capacity(args.len());
                for (k, &a) in n.args.iter().enumerate() {
                    let at = old.ty(a);
                    full.push(if at.rank() == 0 || at.shape == t.shape {
                        args[k]
                    } else {
                        self.expand(a, &t.shape).map_err(|e| (span, e))?
                    });
                }
                self.g.add(op, full, canon(t), span)
            }
            Op::Broadcast => self.expand(n.args[0], &t.shape).map_err(|e| (span, e))?,
            Op::Sum(Axis::All) | Op::Max(Axis::All) => self.g.add(op, args, t.clone(), span),
            Op::Sum(Axis::One(a)) | Op::Max(Axis::One(a)) => {
                let s = &arg_ty(0).shape;
                let a = a as usize;
                let before: Vec<Dim> = s[..a].to_vec();
                let after: u64 = s[a + 1..].iter().map(|d| stat(*d)).product();
                let red = |ax: u8| match op {
                    Op::Sum(_) => Op::Sum(Axis::One(ax)),
                    _ => Op::Max(Axis::One(ax)),
                };
                let (view, ax, out) = if a == 0 {
                    (vec![s[0], Dim::Static(after)], 0, Dim::Static(after))
                } else {
                    let Some(rows) = dim_product(&before) else {
                        return Err((span, unsupported(old, id)));
                    };
                    if after == 1 {
                        (vec![rows, s[a]], 1, rows)
                    } else if rows == Dim::Static(1) {
                        (vec![s[a], Dim::Static(after)], 0, Dim::Static(after))
                    } else {
                        return Err((span, unsupported(old, id)));
                    }
                };
                let dtype = t.dtype;
                let v = self.view(args[0], Type::float(dtype, view));
                let r = self
                    .g
                    .add(red(ax), vec![v], Type::float(dtype, vec![out]), span);
                self.view(r, canon(t))
            }
            _ => {
                return Err((
                    span,
                    format!(
                        "internal: `{}` of {} reached the flatten stage",
                        crate::ir::op_name(op),
                        old.type_str(t)
                    ),
                ))
            }
        })
    }

    /// `x` seen in the shape of `ty` (a view: same elements, same order).
    fn view(&mut self, x: NodeId, ty: Type) -> NodeId {
        if *self.g.ty(x) == ty {
            return x;
        }
        let span = self.g.node(x).span;
        // A view of a view is a view of the first.
        let x = if self.g.op(x) == Op::Reshape {
            self.g.args(x)[0]
        } else {
            x
        };
        if *self.g.ty(x) == ty {
            return x;
        }
        self.g.add(Op::Reshape, vec![x], ty, span)
    }

    /// Old node `x` broadcast to `target` (rank 3 or 4), as a node of `canon(target)`.
    fn expand(&mut self, x: NodeId, target: &[Dim]) -> Result<NodeId, String> {
        let old = self.old;
        let xt = old.ty(x);
        let r = target.len();
        let mut s: Vec<Dim> = vec![Dim::Static(1); r - xt.rank()];
        s.extend(xt.shape.iter().copied());
        let dtype = xt.dtype;
        let span = old.node(x).span;
        let mx = self.map[x.idx()];
        let rest: u64 = target[1..].iter().map(|d| stat(*d)).product();
        // The rows as they come: each a whole image already, or stretched within it first.
        let rows = if s[1..] == target[1..] {
            self.view(mx, Type::float(dtype, vec![s[0], Dim::Static(rest)]))
        } else {
            let mut mid = vec![s[0]];
            mid.extend_from_slice(&target[1..]);
            let Some((from, to)) = runs(&s, &mid) else {
                return Err(format!(
                    "broadcasting {} to [{}] is not supported yet",
                    old.type_str(xt),
                    target
                        .iter()
                        .map(|d| old.dim_str(*d))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            };
            let src = self.view(mx, Type::float(dtype, from));
            let b = self
                .g
                .add(Op::Broadcast, vec![src], Type::float(dtype, to), span);
            self.view(b, Type::float(dtype, vec![s[0], Dim::Static(rest)]))
        };
        if s[0] == target[0] {
            return Ok(rows);
        }
        Ok(self.g.add(
            Op::Broadcast,
            vec![rows],
            Type::float(dtype, vec![target[0], Dim::Static(rest)]),
            span,
        ))
    }
}

/// A broadcast from `s` to `t` (same rank) as one of a vector or a matrix: consecutive axes
/// that are all kept or all stretched merge into one (axes of 1 go with either). `None` when
/// more than two groups remain, or a group's size is no dim.
fn runs(s: &[Dim], t: &[Dim]) -> Option<(Vec<Dim>, Vec<Dim>)> {
    // (stretched, axes of the group)
    let mut groups: Vec<(bool, Vec<usize>)> = Vec::new();
    for a in 0..t.len() {
        if t[a] == Dim::Static(1) {
            continue;
        }
        let stretched = s[a] != t[a];
        match groups.last_mut() {
            Some((k, axes)) if *k == stretched => axes.push(a),
            _ => groups.push((stretched, vec![a])),
        }
    }
    if groups.len() > 2 {
        return None;
    }
    if groups.is_empty() {
        return Some((vec![Dim::Static(1)], vec![Dim::Static(1)]));
    }
    let mut from = Vec::new();
    let mut to = Vec::new();
    for (stretched, axes) in &groups {
        let size = dim_product(&axes.iter().map(|&a| t[a]).collect::<Vec<_>>())?;
        to.push(size);
        from.push(if *stretched { Dim::Static(1) } else { size });
    }
    Some((from, to))
}

fn unsupported(g: &Graph, id: NodeId) -> String {
    let n = g.node(id);
    format!(
        "`{}` over this axis of {} is not supported yet: sum over the first axis, or over the \
         last ones",
        crate::ir::op_name(n.op),
        g.type_str(g.ty(n.args[0]))
    )
}
