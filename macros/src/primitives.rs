//! Stage 6: the ops that simplify and grad keep whole (`softmax`, `log_softmax`) expanded into
//! the primitives the schedule fuses into loops: a maximum, exponentials, a sum.
//!
//! Kept whole until here, they print as themselves, rewrite as themselves
//! (`log(softmax(x)) -> log_softmax(x)`) and differentiate by their own rows (the fused
//! `softmax(x) - onehot(y)` of a cross-entropy); expanded, they cost no kernel kind of their
//! own.

use crate::ir::{Axis, Binary, Function, Graph, NodeId, Op, TypeError, Unary};

/// Replaces every softmax of `f`'s graph by its expansion.
pub fn expand(f: &mut Function) -> Result<(), String> {
    let old = &f.graph;
    if !old
        .ids()
        .any(|id| matches!(old.op(id), Op::Softmax(_) | Op::LogSoftmax(_)))
    {
        return Ok(());
    }
    let roots = f.roots();
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
            Op::Softmax(ax) => softmax(&mut g, args[0], ax, false, n.span),
            Op::LogSoftmax(ax) => softmax(&mut g, args[0], ax, true, n.span),
            op => Ok(g.add(op, args, n.ty.clone(), n.span)),
        }
        .map_err(|e| e.message)?;
    }
    let new_roots: Vec<NodeId> = roots.iter().map(|r| map[r.idx()]).collect();
    let (g, r) = g.extract(&new_roots);
    f.set_roots(g, &r);
    Ok(())
}

/// With d = x - max(x) along `ax` (so no exponential overflows):
/// softmax = e^d / sum(e^d), log_softmax = d - log(sum(e^d)).
fn softmax(
    g: &mut Graph,
    x: NodeId,
    ax: u8,
    log: bool,
    span: proc_macro2::Span,
) -> Result<NodeId, TypeError> {
    // A vector reduces to a scalar, which broadcasts; a matrix keeps the axis as a dim of 1.
    let rank = g.ty(x).rank();
    let axis = if rank == 1 { Axis::All } else { Axis::One(ax) };
    let keep = |g: &mut Graph, r: NodeId| -> Result<NodeId, TypeError> {
        if rank == 1 {
            Ok(r)
        } else {
            g.build(Op::ExpandDims(ax), vec![r], span)
        }
    };
    let m = g.build(Op::Max(axis), vec![x], span)?;
    let m = keep(g, m)?;
    let nm = g.build(Op::Unary(Unary::Neg), vec![m], span)?;
    let d = g.build(Op::Binary(Binary::Add), vec![x, nm], span)?;
    let e = g.build(Op::Unary(Unary::Exp), vec![d], span)?;
    let s = g.build(Op::Sum(axis), vec![e], span)?;
    let s = keep(g, s)?;
    if log {
        let l = g.build(Op::Unary(Unary::Log), vec![s], span)?;
        let nl = g.build(Op::Unary(Unary::Neg), vec![l], span)?;
        g.build(Op::Binary(Binary::Add), vec![d, nl], span)
    } else {
        g.build(Op::Binary(Binary::Div), vec![e, s], span)
    }
}
