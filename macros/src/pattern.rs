//! The s-expression language of rewrite rules and composite functions:
//! `(neg (softplus (neg ?x)))`. An operator is an elementwise op by its name in the kernel
//! crate's op table, `pow1` (x^1), `transpose` or `dot`; `?x` is a pattern variable; anything
//! else a numeric constant. Patterns are the compiler's own tables, so a malformed one is a
//! bug (caught by the tests that parse every rule and every builtin).

use crate::ir::{Binary, Graph, NodeId, Num, Op, Unary};

#[derive(Debug, Clone)]
pub enum Pat {
    Var(String),
    Num(f64),
    Op(Op, Vec<Pat>),
}

impl Pat {
    /// Parses the tiny s-expression language of the rule table. The table is ours, so a
    /// malformed pattern is a bug caught by the unit test that parses every rule.
    pub fn parse(s: &str) -> Pat {
        let toks: Vec<String> = s
            .replace('(', " ( ")
            .replace(')', " ) ")
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let mut pos = 0;
        let p = Pat::parse_at(&toks, &mut pos);
        assert_eq!(pos, toks.len(), "trailing tokens in pattern {s}");
        p
    }

    fn parse_at(t: &[String], pos: &mut usize) -> Pat {
        let tok = &t[*pos];
        *pos += 1;
        if tok == "(" {
            let name = t[*pos].clone();
            *pos += 1;
            let mut args = Vec::new();
            while t[*pos] != ")" {
                args.push(Pat::parse_at(t, pos));
            }
            *pos += 1;
            Pat::Op(op_by_name(&name), args)
        } else if let Some(v) = tok.strip_prefix('?') {
            Pat::Var(v.to_string())
        } else {
            Pat::Num(tok.parse().expect("number in pattern"))
        }
    }

    /// Whether the graph at `id` has this form; binds `?names` in `b` (a name bound before
    /// must match the same node).
    pub fn matches(&self, g: &Graph, id: NodeId, b: &mut Vec<(String, NodeId)>) -> bool {
        match self {
            Pat::Var(v) => match b.iter().find(|(n, _)| n == v) {
                Some(&(_, bound)) => bound == id,
                None => {
                    b.push((v.clone(), id));
                    true
                }
            },
            Pat::Num(x) => g.const_value(id) == Some(*x),
            Pat::Op(op, args) => {
                g.op(id) == *op
                    && g.args(id).len() == args.len()
                    && args
                        .iter()
                        .zip(g.args(id).to_vec())
                        .all(|(p, a)| p.matches(g, a, b))
            }
        }
    }
}

/// The op a rewrite pattern names: an elementwise op by its name (the kernel crate's table),
/// `pow1` for x^1, or a structural op.
fn op_by_name(name: &str) -> Op {
    if let Some(u) = Unary::from_name(name) {
        return Op::Unary(u);
    }
    if let Some(b) = Binary::from_name(name) {
        return Op::Binary(b);
    }
    match name {
        "pow1" => Op::Unary(Unary::Pow(Num::new(1.0))),
        "transpose" => Op::Transpose,
        "dot" => Op::Dot,
        other => panic!("unknown op `{other}` in a rewrite pattern"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tensor_fn_kernels::op::{Lowering, BUILTINS};

    /// Every composite builtin is a pattern of its arguments only.
    #[test]
    fn every_composite_builtin_parses() {
        fn vars(p: &Pat, out: &mut Vec<String>) {
            match p {
                Pat::Var(v) => out.push(v.clone()),
                Pat::Num(_) => {}
                Pat::Op(_, args) => args.iter().for_each(|a| vars(a, out)),
            }
        }
        for b in BUILTINS {
            if let Lowering::Composite(text, _) = b.lowering {
                let mut used = Vec::new();
                vars(&Pat::parse(text), &mut used);
                let allowed = &["x", "y"][..b.args];
                assert!(
                    used.iter().all(|v| allowed.contains(&v.as_str())),
                    "`{}` uses {used:?}, its arguments are {allowed:?}",
                    b.name
                );
            }
        }
    }
}
