//! Stage 2b (model methods marked `#[data_parallel]`): the method split for many ranks.
//!
//! A data-parallel step is three parts: every rank computes its outputs and the gradients its
//! updates read, on its own slice of the minibatch (`grads`); the runtime sums them across the
//! ranks in one collective over one flat buffer; every rank applies the same updates to the
//! averaged gradients (`apply`). This stage makes the two functions from the lowered method,
//! before anything is simplified or differentiated, so each goes through the pipeline as a
//! function of its own: `grads` has no updates, and `apply` no gradients (the `grad(...)` of
//! its updates became inputs, times `1 / ranks`, so the division is folded into the update
//! arithmetic rather than made in a pass over the buffer).
//!
//! The method itself still compiles as before for one process, with updates that never
//! materialize a gradient.
//!
//! What the split must refuse, as the user's error: an update reading anything else that is
//! different on each rank (an array argument, which is the rank's own slice, or a random
//! draw), since the ranks would then update their parameters differently; an array output
//! (only scalars are averaged); and a method with no update.

use crate::diag::Diagnostics;
use crate::ir::{Binary, Function, Graph, NodeId, Op, Ret, Type, Var, VarKind};
use crate::syntax::MethodAst;

/// The two functions of a data-parallel method, and the flat buffer's layout.
pub struct Split {
    /// Outputs: the method's (scalar) outputs, then one gradient per entry of `grads`.
    pub grads: Function,
    /// Inputs: the scalar arguments its updates read (`scalars`), the summed gradients, then
    /// `1 / ranks`. No outputs.
    pub apply: Function,
    /// The parameter each summed gradient has the shape of, in flat-buffer order.
    pub grad_params: Vec<u32>,
    /// Names of the method's scalar arguments that `apply` takes, in its order.
    pub scalars: Vec<String>,
}

/// The name of `apply`'s input holding `1 / ranks`.
pub const INV_RANKS: &str = "__inv_ranks";

/// Splits `f` (lowered, with `grad` nodes still unresolved). Errors go to `diags`.
pub fn split(f: &Function, m: &MethodAst, diags: &mut Diagnostics) -> Option<Split> {
    let g = &f.graph;
    if f.updates.is_empty() {
        diags.error_help(
            m.name.span(),
            format!(
                "`#[data_parallel]` method `{}` updates no parameter: there is nothing to average",
                m.name
            ),
            "a data-parallel method averages the gradients of its updates across ranks, as in \
             `w -= lr * grad(cost, w);`",
        );
        return None;
    }
    if let Some(o) = f.outputs.iter().find(|o| g.ty(**o).rank() > 0) {
        diags.error_help(
            m.ret_span,
            format!(
                "`#[data_parallel]` method `{}` returns {}: only scalars are averaged across ranks",
                m.name,
                g.type_str(g.ty(*o))
            ),
            "return scalars such as the cost; compute per-example arrays with a method that is \
             not data-parallel",
        );
        return None;
    }
    // The gradients the updates read, in order of first use, and what else they read.
    let mut grad_nodes: Vec<NodeId> = Vec::new();
    let mut ok = true;
    for &(p, new) in &f.updates {
        let mut stack = vec![new];
        let mut seen = vec![false; g.len()];
        while let Some(id) = stack.pop() {
            if std::mem::replace(&mut seen[id.idx()], true) {
                continue;
            }
            let why = match g.op(id) {
                Op::Grad(_) => {
                    if !grad_nodes.contains(&id) {
                        grad_nodes.push(id);
                    }
                    continue;
                }
                Op::Var(v) => {
                    let var = &g.vars[v as usize];
                    if var.kind == VarKind::Input && var.ty.rank() > 0 {
                        Some(format!(
                            "reads `{}`, which is each rank's own slice of the minibatch",
                            var.name
                        ))
                    } else {
                        None
                    }
                }
                Op::Random(kind, _) => Some(format!(
                    "draws `{}`, which differs between ranks",
                    kind.name()
                )),
                _ => None,
            };
            if let Some(why) = why {
                let name = &g.vars[p as usize].name;
                diags.error_help(
                    g.node(new).span,
                    format!(
                        "in `#[data_parallel]` method `{}`, the update of `{name}` {why}, so the \
                         ranks would update `{name}` differently",
                        m.name
                    ),
                    "an update may read parameters, scalar arguments and `grad(...)`, which is \
                     averaged across ranks; move the rest inside the cost",
                );
                ok = false;
                break;
            }
            stack.extend(g.args(id).iter().copied());
        }
    }
    if !ok {
        return None;
    }
    let grad_params: Vec<u32> = grad_nodes
        .iter()
        .map(|&n| match g.op(n) {
            Op::Grad(v) => v,
            _ => unreachable!("collected from grad nodes"),
        })
        .collect();

    let mut grads = f.clone();
    grads.outputs.extend(grad_nodes.iter().copied());
    grads.ret = Ret::Tuple(grads.outputs.len());
    grads.updates.clear();
    let (gg, r) = grads.graph.extract(&grads.roots());
    grads.set_roots(gg, &r);

    let (apply, scalars) = apply_fn(f, &grad_nodes);
    Some(Split {
        grads,
        apply,
        grad_params,
        scalars,
    })
}

/// `f`'s updates with each of `grad_nodes` replaced by a new input times `1 / ranks`.
fn apply_fn(f: &Function, grad_nodes: &[NodeId]) -> (Function, Vec<String>) {
    let old = &f.graph;
    let mut vars = old.vars.clone();
    let dtype = old.ty(f.updates[0].1).dtype;
    let first_new = vars.len() as u32;
    for (k, &n) in grad_nodes.iter().enumerate() {
        vars.push(Var {
            name: format!("__grad{k}"),
            kind: VarKind::Input,
            ty: old.ty(n).clone(),
            span: old.node(n).span,
        });
    }
    let inv_var = vars.len() as u32;
    vars.push(Var {
        name: INV_RANKS.into(),
        kind: VarKind::Input,
        ty: Type::scalar(dtype),
        span: old.node(f.updates[0].1).span,
    });
    let mut g = Graph::with_vars(vars, old.syms.clone());
    let span = old.node(f.updates[0].1).span;
    let inv = g.add(Op::Var(inv_var), Vec::new(), Type::scalar(dtype), span);
    let roots: Vec<NodeId> = f.updates.iter().map(|u| u.1).collect();
    let live = old.reachable(&roots);
    let mut map = vec![NodeId(u32::MAX); old.len()];
    for id in old.ids() {
        if !live[id.idx()] {
            continue;
        }
        let n = old.node(id);
        map[id.idx()] = match grad_nodes.iter().position(|&gn| gn == id) {
            Some(k) => {
                let v = first_new + k as u32;
                let var = g.add(Op::Var(v), Vec::new(), n.ty.clone(), n.span);
                g.add(
                    Op::Binary(Binary::Mul),
                    vec![var, inv],
                    n.ty.clone(),
                    n.span,
                )
            }
            None => {
                let args = n.args.iter().map(|a| map[a.idx()]).collect();
                g.add(n.op, args, n.ty.clone(), n.span)
            }
        };
    }
    // Inputs: the method's scalar arguments the updates read, then the gradients, then 1/ranks.
    let reads_var = |v: u32| {
        old.ids()
            .any(|id| live[id.idx()] && old.op(id) == Op::Var(v))
    };
    let scalar_inputs: Vec<u32> = f
        .inputs
        .iter()
        .copied()
        .filter(|&v| old.vars[v as usize].ty.rank() == 0 && reads_var(v))
        .collect();
    let scalars = scalar_inputs
        .iter()
        .map(|&v| old.vars[v as usize].name.clone())
        .collect();
    let mut inputs = scalar_inputs;
    inputs.extend((0..grad_nodes.len() as u32).map(|k| first_new + k));
    inputs.push(inv_var);
    let mut apply = Function {
        name: f.name.clone(),
        graph: Graph::default(),
        inputs,
        outputs: Vec::new(),
        ret: Ret::Unit,
        updates: f
            .updates
            .iter()
            .map(|&(p, new)| (p, map[new.idx()]))
            .collect(),
        grads: Vec::new(),
        options: f.options,
    };
    let (gg, r) = g.extract(&apply.roots());
    apply.set_roots(gg, &r);
    (apply, scalars)
}
