//! Property test of `grad` over random well-typed graphs: lower + simplify + grad + check.
//!
//! Random cost expressions (see `testgen`) are compiled as equations
//! `cost = ...; g_x = grad(cost, x); ...` through `expand::compile`, the same pipeline the macro
//! runs. A small f64 reference evaluator of the IR evaluates the compiled `cost` graph and each
//! compiled gradient graph at random inputs in [0.5, 1.5], with the symbolic dims bound to
//! chosen sizes, and every gradient entry is compared with central finite differences of the
//! cost graph. Samples near a kink (relu, abs, maximum/minimum, max ties) or a domain edge are
//! redrawn. The CPU emitter is checked separately, by the integration tests.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::time::Instant;

use proc_macro2::TokenStream;
use tensor_fn_kernels::scalar;

use crate::expand::compile;
use crate::ir::{Axis, Binary, Dim, Graph, NodeId, Op, Unary};
use crate::syntax;
use crate::testgen::{decl, Gen, Knobs, Rng};
use crate::text;

/// A dense row-major f64 array of rank 0 to 2.
#[derive(Clone, Debug, PartialEq)]
pub struct T {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl T {
    fn filled(shape: Vec<usize>, v: f64) -> T {
        let n = shape.iter().product();
        T {
            shape,
            data: vec![v; n],
        }
    }
    fn at(&self, ix: &[usize]) -> f64 {
        match ix.len() {
            0 => self.data[0],
            1 => self.data[ix[0]],
            _ => self.data[ix[0] * self.shape[1] + ix[1]],
        }
    }
    /// Every multi-index of `shape`, row-major.
    fn indices(shape: &[usize]) -> Vec<Vec<usize>> {
        match shape.len() {
            0 => vec![vec![]],
            1 => (0..shape[0]).map(|i| vec![i]).collect(),
            _ => (0..shape[0])
                .flat_map(|i| (0..shape[1]).map(move |j| vec![i, j]))
                .collect(),
        }
    }
    /// The value of `self` broadcast (numpy rules) to `out`, at `ix` (an index of `out`).
    fn bcast_at(&self, out: &[usize], ix: &[usize]) -> f64 {
        let off = out.len() - self.shape.len();
        let mine: Vec<usize> = (0..self.shape.len())
            .map(|k| if self.shape[k] == 1 { 0 } else { ix[k + off] })
            .collect();
        self.at(&mine)
    }
}

/// Where a sample sits relative to the non-smooth points and domain edges of the ops it
/// evaluates: the smallest such distance seen (large is safe).
pub struct Margin(pub f64);

impl Margin {
    fn see(&mut self, d: f64) {
        let d = if d.is_nan() { 0.0 } else { d.abs() };
        if d < self.0 {
            self.0 = d;
        }
    }
}

pub fn dim_size(g: &Graph, d: Dim, dims: &HashMap<String, usize>) -> usize {
    match d {
        Dim::Static(k) => k as usize,
        Dim::Sym(s) => dims[&g.syms[s as usize]],
    }
}

/// Evaluates the nodes `roots` need, in order (arguments precede users).
pub fn eval(
    g: &Graph,
    roots: &[NodeId],
    inputs: &[T],
    dims: &HashMap<String, usize>,
    margin: &mut Margin,
) -> Vec<T> {
    let live = g.reachable(roots);
    let mut vals: Vec<Option<T>> = vec![None; g.len()];
    for id in g.ids() {
        if !live[id.idx()] {
            continue;
        }
        let n = g.node(id);
        let shape: Vec<usize> = n.ty.shape.iter().map(|d| dim_size(g, *d, dims)).collect();
        let want = shape.clone();
        let arg = |k: usize| vals[n.args[k].idx()].as_ref().expect("argument evaluated");
        let v = match n.op {
            Op::Var(i) => {
                let t = inputs[i as usize].clone();
                assert_eq!(t.shape, shape, "input %{} has the wrong shape", id.0);
                t
            }
            Op::Const(c) => T::filled(shape, c.get()),
            Op::DimSize(d) => T::filled(shape, dim_size(g, d, dims) as f64),
            Op::Unary(u) => {
                let a = arg(0);
                for &x in &a.data {
                    match u {
                        Unary::Relu | Unary::Abs | Unary::Sign | Unary::Step => margin.see(x),
                        Unary::Log | Unary::Sqrt => margin.see(x.max(0.0)),
                        Unary::Log1p => margin.see((1.0 + x).max(0.0)),
                        Unary::Pow(k) if k.get().fract() != 0.0 || k.get() < 0.0 => {
                            margin.see(x.max(0.0))
                        }
                        _ => {}
                    }
                }
                T {
                    shape,
                    data: a.data.iter().map(|&x| scalar::unary(u, x)).collect(),
                }
            }
            Op::Binary(b) => {
                let (a, c) = (arg(0), arg(1));
                let data = T::indices(&shape)
                    .iter()
                    .map(|ix| {
                        let (x, y) = (a.bcast_at(&shape, ix), c.bcast_at(&shape, ix));
                        match b {
                            Binary::Maximum | Binary::Minimum | Binary::Ge => margin.see(x - y),
                            Binary::Div => margin.see(y),
                            _ => {}
                        }
                        scalar::binary(b, x, y)
                    })
                    .collect();
                T { shape, data }
            }
            Op::Transpose if shape.len() < 2 => arg(0).clone(),
            Op::Transpose => {
                let a = arg(0);
                let data = T::indices(&shape)
                    .iter()
                    .map(|ix| a.at(&[ix[1], ix[0]]))
                    .collect();
                T { shape, data }
            }
            Op::ExpandDims(_) => T {
                shape,
                data: arg(0).data.clone(),
            },
            Op::Broadcast => {
                let a = arg(0);
                let data = T::indices(&shape)
                    .iter()
                    .map(|ix| a.bcast_at(&shape, ix))
                    .collect();
                T { shape, data }
            }
            Op::Outer => {
                let (a, c) = (arg(0), arg(1));
                let data = T::indices(&shape)
                    .iter()
                    .map(|ix| a.data[ix[0]] * c.data[ix[1]])
                    .collect();
                T { shape, data }
            }
            Op::Dot => {
                let (a, c) = (arg(0), arg(1));
                // As matrices: a is [m, k] (a vector is one row), c is [k, n] (one column).
                let (m, k) = if a.shape.len() == 1 {
                    (1, a.shape[0])
                } else {
                    (a.shape[0], a.shape[1])
                };
                let nn = if c.shape.len() == 1 { 1 } else { c.shape[1] };
                let mut data = vec![0.0; m * nn];
                for i in 0..m {
                    for j in 0..nn {
                        let mut acc = 0.0;
                        for p in 0..k {
                            acc += a.data[i * k + p] * c.data[p * nn + j];
                        }
                        data[i * nn + j] = acc;
                    }
                }
                T { shape, data }
            }
            Op::Sum(axis) | Op::Max(axis) => {
                let a = arg(0);
                let is_max = matches!(n.op, Op::Max(_));
                let mut groups: BTreeMap<Vec<usize>, Vec<f64>> = BTreeMap::new();
                for ix in T::indices(&a.shape) {
                    let key = match axis {
                        Axis::All => vec![],
                        Axis::One(k) => {
                            let mut key = ix.clone();
                            key.remove(k as usize);
                            key
                        }
                    };
                    groups.entry(key).or_default().push(a.at(&ix));
                }
                let mut out = T::filled(shape.clone(), 0.0);
                for (key, xs) in groups {
                    let r = if is_max {
                        let mut sorted = xs.clone();
                        sorted.sort_by(|p, q| q.total_cmp(p));
                        if sorted.len() > 1 {
                            margin.see(sorted[0] - sorted[1]);
                        }
                        xs.iter().copied().fold(f64::NEG_INFINITY, scalar::maximum)
                    } else {
                        xs.iter().sum()
                    };
                    let pos = match key.len() {
                        0 => 0,
                        _ => key[0],
                    };
                    out.data[pos] = r;
                }
                out
            }
            Op::Compare(b) => {
                let (a, c) = (arg(0), arg(1));
                let data = T::indices(&shape)
                    .iter()
                    .map(|ix| scalar::binary(b, a.bcast_at(&shape, ix), c.bcast_at(&shape, ix)))
                    .collect();
                T { shape, data }
            }
            Op::Where => {
                let (c, a, b) = (arg(0), arg(1), arg(2));
                let data = T::indices(&shape)
                    .iter()
                    .map(|ix| {
                        let k = c.bcast_at(&shape, ix);
                        scalar::select(k, a.bcast_at(&shape, ix), b.bcast_at(&shape, ix))
                    })
                    .collect();
                T { shape, data }
            }
            Op::Reshape => T {
                shape,
                data: arg(0).data.clone(),
            },
            Op::OneHot(_)
            | Op::ArgMax(_)
            | Op::Softmax(_)
            | Op::LogSoftmax(_)
            | Op::Random(..)
            | Op::Conv2d { .. }
            | Op::ConvGradInput { .. }
            | Op::ConvGradFilter { .. }
            | Op::MaxPool(..)
            | Op::MaxPoolGrad(..)
            | Op::Call(_) => {
                panic!("random programs hold no `{}`", crate::ir::op_name(n.op))
            }
            Op::Grad(_) => panic!("`grad` left in a compiled graph at %{}", id.0),
        };
        assert_eq!(v.shape, want, "%{} evaluated to the wrong shape", id.0);
        vals[id.idx()] = Some(v);
    }
    roots
        .iter()
        .map(|r| vals[r.idx()].clone().expect("root evaluated"))
        .collect()
}

/// Counts of IR ops by name, for the coverage report.
fn count_ops(g: &Graph, roots: &[NodeId], into: &mut BTreeMap<String, usize>) {
    let live = g.reachable(roots);
    for id in g.ids() {
        if !live[id.idx()] {
            continue;
        }
        let name = match g.op(id) {
            Op::Var(_) | Op::Const(_) | Op::DimSize(_) => continue,
            Op::Unary(u) => u.name().to_string(),
            Op::Binary(b) => b.name().to_string(),
            Op::Transpose => "transpose".into(),
            Op::ExpandDims(_) => "expand_dims".into(),
            Op::Broadcast => "broadcast".into(),
            Op::Outer => "outer".into(),
            Op::Dot => {
                let r = |k: usize| g.ty(g.args(id)[k]).rank();
                format!("dot{}{}", r(0), r(1))
            }
            Op::Sum(Axis::All) => "sum".into(),
            Op::Sum(Axis::One(_)) => "sum[axis]".into(),
            Op::Max(Axis::All) => "max".into(),
            Op::Max(Axis::One(_)) => "max[axis]".into(),
            Op::Grad(_) => "grad".into(),
            op => crate::ir::op_name(op).into(),
        };
        *into.entry(name).or_default() += 1;
    }
}

/// One random program: its source, the names of its gradient equations' variables.
fn random_program(rng: &mut Rng) -> (String, Vec<String>) {
    let knobs = Knobs {
        max_depth: 1 + rng.below(4) as u32,
        nested_grad: rng.chance(0.15),
        bait: rng.chance(0.5),
    };
    let strict = rng.chance(0.2);
    let hvp = rng.chance(0.15);
    let mut g = Gen::new(rng, knobs);
    let cost = if hvp {
        // A Hessian-vector product: the cost holds the gradient of another scalar.
        let k = g.rng.below(g.vars.len());
        let shape = g.vars[k].shape.clone();
        let inner = g.nested_grad(&shape, knobs.max_depth);
        let w = g.expr(&shape, knobs.max_depth - 1, false);
        format!("sum({inner} * {w})")
    } else {
        g.expr(&[], knobs.max_depth, false)
    };
    let decls: Vec<String> = g.vars.iter().map(|v| decl(v, "f64")).collect();
    let wrt: Vec<String> = g
        .vars
        .iter()
        .filter(|v| g.used.contains(&v.name))
        .map(|v| v.name.clone())
        .collect();
    let mut src = String::new();
    if strict {
        src.push_str("#[strict] ");
    }
    src.push_str(&format!("{}; cost = {cost};", decls.join(", ")));
    for v in &wrt {
        src.push_str(&format!(" g_{v} = grad(cost, {v});"));
    }
    (src, wrt)
}

struct Stats {
    graphs: usize,
    entries: usize,
    skipped: usize,
    cost_ops: BTreeMap<String, usize>,
    grad_ops: BTreeMap<String, usize>,
}

/// Checks one program; returns the failure as text.
fn check_program(
    src: &str,
    wrt: &[String],
    rng: &mut Rng,
    stats: &mut Stats,
) -> Result<(), String> {
    let tokens = TokenStream::from_str(src).map_err(|e| format!("does not lex: {e}"))?;
    let program = syntax::parse(tokens).map_err(|e| format!("does not parse: {e}"))?;
    let fns =
        compile(&program).map_err(|d| format!("does not compile: {}", d.to_compile_errors()))?;
    assert_eq!(fns.len(), 1 + wrt.len(), "one function per equation");
    let cost = &fns[0].f;
    let g = &cost.graph;
    count_ops(g, &cost.outputs, &mut stats.cost_ops);
    // Bind symbolic dims to sizes 1 to 4 (1 exercises broadcasting edge cases too).
    let mut dims = HashMap::new();
    for s in &g.syms {
        dims.insert(s.clone(), 2 + rng.below(3));
    }
    if rng.chance(0.1) && !g.syms.is_empty() {
        dims.insert(g.syms[0].clone(), 1);
    }
    let shapes: Vec<Vec<usize>> = g
        .vars
        .iter()
        .map(|v| v.ty.shape.iter().map(|d| dim_size(g, *d, &dims)).collect())
        .collect();
    // Draw inputs away from kinks: retry a few times, else skip the program.
    let mut inputs = Vec::new();
    let mut base = None;
    for _ in 0..20 {
        inputs = shapes
            .iter()
            .map(|s| {
                let n: usize = s.iter().product();
                T {
                    shape: s.clone(),
                    data: (0..n).map(|_| 0.5 + rng.unit()).collect(),
                }
            })
            .collect();
        let mut m = Margin(f64::INFINITY);
        let c = eval(g, &cost.outputs, &inputs, &dims, &mut m)[0].data[0];
        if m.0 > 1e-3 && c.is_finite() && c.abs() < 1e8 {
            base = Some(c);
            break;
        }
    }
    let Some(c0) = base else {
        stats.skipped += 1;
        return Ok(());
    };
    stats.graphs += 1;
    let cost_at = |inputs: &[T]| -> f64 {
        let mut m = Margin(f64::INFINITY);
        eval(g, &cost.outputs, inputs, &dims, &mut m)[0].data[0]
    };
    for (k, v) in wrt.iter().enumerate() {
        let gf = &fns[1 + k].f;
        count_ops(&gf.graph, &gf.outputs, &mut stats.grad_ops);
        let vi = g.vars.iter().position(|x| &x.name == v).unwrap();
        let mut m = Margin(f64::INFINITY);
        let grad = eval(&gf.graph, &gf.outputs, &inputs, &dims, &mut m).remove(0);
        if grad.shape != inputs[vi].shape {
            return Err(format!(
                "grad wrt `{v}` has shape {:?}, `{v}` has {:?}",
                grad.shape, inputs[vi].shape
            ));
        }
        for j in 0..grad.data.len() {
            let fd = |h: f64| {
                let mut p = inputs.clone();
                p[vi].data[j] += h;
                let up = cost_at(&p);
                p[vi].data[j] -= 2.0 * h;
                let down = cost_at(&p);
                (up - down) / (2.0 * h)
            };
            let ok = |a: f64, b: f64| {
                (a - b).abs() <= 1e-5 * (1.0 + a.abs().max(b.abs())) + 1e-9 * c0.abs()
            };
            let gj = grad.data[j];
            stats.entries += 1;
            if ok(gj, fd(1e-5)) || ok(gj, fd(1e-4)) || ok(gj, fd(1e-6)) {
                continue;
            }
            return Err(format!(
                "d cost / d {v}[{j}]: compiled gradient {gj}, finite differences {} \
                 (dims {dims:?}, inputs {:?})\ncost graph:\n{}gradient graph:\n{}",
                fd(1e-5),
                inputs.iter().map(|t| &t.data).collect::<Vec<_>>(),
                text::graph_text(cost),
                text::graph_text(gf),
            ));
        }
    }
    Ok(())
}

/// The message of a caught panic.
pub fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

#[test]
fn gradients_match_finite_differences_on_random_graphs() {
    let t = Instant::now();
    let mut rng = Rng::new(0x5EED_6AAD);
    let mut stats = Stats {
        graphs: 0,
        entries: 0,
        skipped: 0,
        cost_ops: BTreeMap::new(),
        grad_ops: BTreeMap::new(),
    };
    let mut failures = Vec::new();
    let programs = 1200;
    let (mut nested, mut strict, mut symbolic) = (0, 0, 0);
    for i in 0..programs {
        let (src, wrt) = random_program(&mut rng);
        let cost_src = src.split("cost = ").nth(1).unwrap_or("");
        nested += usize::from(cost_src.split(';').next().unwrap_or("").contains("grad("));
        strict += usize::from(src.starts_with("#[strict]"));
        symbolic += usize::from(src.contains("[n") || src.contains(", n]") || src.contains("m]"));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            check_program(&src, &wrt, &mut rng, &mut stats)
        }));
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failures.push(format!("program {i}: {src}\n{e}")),
            Err(p) => failures.push(format!("program {i} panicked: {src}\n{}", panic_text(&p))),
        }
    }
    println!(
        "gradient property: {programs} programs, {} graphs checked ({} skipped near kinks), \
         {} gradient entries against finite differences, in {:.2} s",
        stats.graphs,
        stats.skipped,
        stats.entries,
        t.elapsed().as_secs_f64()
    );
    println!(
        "  {nested} programs take gradients of gradients, {strict} are #[strict], {symbolic} have symbolic dims"
    );
    println!("  ops in cost graphs: {:?}", stats.cost_ops);
    println!("  ops in gradient graphs: {:?}", stats.grad_ops);
    if !failures.is_empty() {
        panic!(
            "{} of {programs} programs have a wrong gradient or panic:\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
}
