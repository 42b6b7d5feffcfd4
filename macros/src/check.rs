//! Stage 5: re-verify every shape after `grad` and `simplify`. A failure here is a bug in the
//! compiler, reported as an internal error with the printed IR, never a panic.

use crate::ir::{broadcast_shapes, infer, Function, Op};

pub fn check(f: &Function) -> Result<(), String> {
    let g = &f.graph;
    let dtype = f
        .outputs
        .first()
        .or(f.updates.first().map(|u| &u.1))
        .map(|n| g.ty(*n).dtype);
    for id in g.ids() {
        let n = g.node(id);
        if n.args.iter().any(|a| *a >= id) {
            return Err(format!("%{} uses a later node", id.0));
        }
        let want = match n.op {
            Op::Var(v) => Some(g.vars[v as usize].ty.clone()),
            Op::Const(_) | Op::DimSize(_) => None,
            Op::Broadcast => {
                let a = g.ty(n.args[0]);
                if a.dtype != n.ty.dtype
                    || broadcast_shapes(&a.shape, &n.ty.shape).as_ref() != Some(&n.ty.shape)
                {
                    return Err(format!("%{}: bad broadcast", id.0));
                }
                None
            }
            Op::Grad(_) => return Err(format!("%{}: `grad` left after the grad stage", id.0)),
            // The element count was checked where the reshape was written.
            Op::Reshape => {
                if g.ty(n.args[0]).dtype != n.ty.dtype {
                    return Err(format!("%{}: a reshape changes the element type", id.0));
                }
                None
            }
            Op::Call(_) => {
                return Err(format!(
                    "%{}: a library call before the flatten stage",
                    id.0
                ))
            }
            // The size is the node's own; the stream and the scalar parameters are checked.
            Op::Random(kind, _) => {
                let stream = g.ty(n.args[0]);
                let params = &n.args[1..];
                let scalars = params.iter().all(|p| {
                    g.ty(*p).rank() == 0 && g.ty(*p).int.is_none() && g.ty(*p).dtype == n.ty.dtype
                });
                if !matches!(g.op(n.args[0]), Op::Var(_))
                    || stream.int.is_none()
                    || stream.shape != [crate::ir::Dim::Static(2)]
                    || params.len() != kind.arity()
                    || !scalars
                    || n.ty.int.is_some()
                {
                    return Err(format!("%{}: malformed `{}`", id.0, kind.name()));
                }
                None
            }
            op => {
                let tys: Vec<_> = n.args.iter().map(|a| g.ty(*a)).collect();
                Some(infer(g, op, &tys).map_err(|e| format!("%{}: {}", id.0, e.message))?)
            }
        };
        if let Some(w) = want {
            if w != n.ty {
                return Err(format!(
                    "%{}: type is {} but its shape rule gives {}",
                    id.0,
                    g.type_str(&n.ty),
                    g.type_str(&w)
                ));
            }
        }
        if let Some(d) = dtype {
            if n.ty.dtype != d {
                return Err(format!("%{}: mixes element types", id.0));
            }
        }
    }
    Ok(())
}
