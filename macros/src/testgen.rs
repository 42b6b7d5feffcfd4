//! Test-only: a tiny seeded RNG and a generator of random well-typed `tensor_fn!` programs, as
//! source text, shared by the expansion fuzz test and the gradient property test.
//!
//! Expressions are generated for a target shape, so every program type-checks by construction:
//! a leaf is an input of that shape or one derived from an input (`.T`, a reduction, a `dot`),
//! an inner node is a unary op, a broadcasting binary op with a partner of a shape that
//! broadcasts to the target, a `dot` in any rank combination, a transpose, a reduction over all
//! or one axis, or (optionally) a `grad` of a scalar expression. `pos` asks for a value that is
//! positive whenever the inputs lie in [0.5, 1.5], so `log`, `sqrt`, fractional `pow` and
//! denominators stay in their domains.

use std::collections::BTreeSet;

use tensor_fn_kernels::op::{Domain, BUILTINS};

/// The builtin functions of one tensor defined on `domains`, in the table's order.
fn unary_builtins(domains: &[Domain]) -> Vec<&'static str> {
    BUILTINS
        .iter()
        .filter(|b| b.domain().is_some_and(|d| domains.contains(&d)))
        .map(|b| b.name)
        .collect()
}

/// splitmix64: deterministic and dependency-free.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// A shape as written in a type: dims are lower-case names or integer literals.
pub type Shape = Vec<&'static str>;

/// A name in scope for expressions: an input, a parameter or a `let`.
#[derive(Clone, Debug)]
pub struct Var {
    pub name: String,
    pub shape: Shape,
    /// An input or a parameter (something `grad` can take a derivative with respect to).
    pub input: bool,
}

/// What the generator may use, for a program family.
#[derive(Clone, Copy)]
pub struct Knobs {
    pub max_depth: u32,
    /// Allow `grad(...)` inside expressions (second derivatives).
    pub nested_grad: bool,
    /// Allow rewrite bait: `e - e`, `e * 0`, `e / e`, `log(sigmoid(e))`, ...
    pub bait: bool,
}

pub struct Gen<'r> {
    pub rng: &'r mut Rng,
    pub vars: Vec<Var>,
    /// The two dims every derived shape is built from: `dims[0]`, `dims[1]`.
    pub dims: [&'static str; 2],
    pub knobs: Knobs,
    /// Names of the vars the expressions generated so far read.
    pub used: BTreeSet<String>,
}

fn ty(dtype: &str, shape: &[&str]) -> String {
    if shape.is_empty() {
        dtype.to_string()
    } else {
        format!("{dtype}[{}]", shape.join(", "))
    }
}

/// `name: f64[n, 3]`
pub fn decl(v: &Var, dtype: &str) -> String {
    format!("{}: {}", v.name, ty(dtype, &v.shape))
}

const LITERALS: &[&str] = &["2", "0.5", "1", "3", "0.25", "1.5", "2.0"];
const POW_ANY: &[&str] = &["2", "3", "1", "2.0"];
const POW_POS: &[&str] = &["0.5", "1.5", "-1", "-0.5", "2", "3", "0", "1", "-2", "2.5"];

impl<'r> Gen<'r> {
    /// A generator over fresh random inputs: always a matrix over both dims (every shape the
    /// generator asks for is derivable from it), plus a few more of random shapes.
    pub fn new(rng: &'r mut Rng, knobs: Knobs) -> Gen<'r> {
        let dims: [&'static str; 2] = *rng.pick(&[
            ["n", "3"],
            ["n", "m"],
            ["2", "3"],
            ["n", "4"],
            ["b", "n"],
            ["3", "n"],
        ]);
        let mut g = Gen {
            rng,
            vars: Vec::new(),
            dims,
            knobs,
            used: BTreeSet::new(),
        };
        let [a, b] = dims;
        let mut shapes: Vec<Shape> = vec![vec![a, b]];
        let pool: Vec<Shape> = vec![
            vec![],
            vec![a],
            vec![b],
            vec![a, b],
            vec![b, a],
            vec![a, "1"],
            vec!["1", b],
            vec![a, a],
            vec![b, b],
        ];
        let extra = 1 + g.rng.below(3);
        for _ in 0..extra {
            shapes.push(g.rng.pick(&pool).clone());
        }
        // Shuffle so the base matrix is not always first.
        for i in (1..shapes.len()).rev() {
            let j = g.rng.below(i + 1);
            shapes.swap(i, j);
        }
        let names = ["x", "y", "w", "s", "u", "v"];
        g.vars = shapes
            .into_iter()
            .enumerate()
            .map(|(i, shape)| Var {
                name: names[i].to_string(),
                shape,
                input: true,
            })
            .collect();
        g
    }

    fn vars_of(&self, shape: &[&str]) -> Vec<String> {
        self.vars
            .iter()
            .filter(|v| v.shape == shape)
            .map(|v| v.name.clone())
            .collect()
    }

    fn use_var(&mut self, name: String) -> String {
        self.used.insert(name.clone());
        name
    }

    fn other_dim(&mut self) -> &'static str {
        let i = self.rng.below(2);
        self.dims[i]
    }

    /// A shape over the generator's dims (rank 0 to 2), for operands of reductions and dots.
    fn any_shape(&mut self) -> Shape {
        let [a, b] = self.dims;
        self.rng
            .pick(&[vec![], vec![a], vec![b], vec![a, b], vec![b, a], vec![a, b]])
            .clone()
    }

    /// Shapes that broadcast to `shape` (numpy rules) and that this generator can produce.
    fn partners(&self, shape: &[&'static str]) -> Vec<Shape> {
        let mut out: Vec<Shape> = vec![shape.to_vec(), vec![]];
        if shape.len() == 2 {
            out.push(vec![shape[1]]);
            for s in [vec![shape[0], "1"], vec!["1", shape[1]]] {
                if !self.vars_of(&s).is_empty() {
                    out.push(s);
                }
            }
        }
        out
    }

    /// A leaf of exactly `shape`: an input, or one derived from the inputs.
    fn leaf(&mut self, shape: &[&'static str], _pos: bool) -> String {
        let direct = self.vars_of(shape);
        if !direct.is_empty() && (self.rng.chance(0.7) || shape.contains(&"1")) {
            let v = self.rng.pick(&direct).clone();
            return self.use_var(v);
        }
        if shape.contains(&"1") {
            // Only inputs have a static 1 here; this is reached only when one exists.
            let v = self.rng.pick(&direct).clone();
            return self.use_var(v);
        }
        // Derive from another var. Positive inputs stay positive through .T, sum, mean, max
        // and dot.
        let cands: Vec<Var> = self.vars.clone();
        for _ in 0..8 {
            let v = self.rng.pick(&cands).clone();
            let r = self.rng.below(3);
            let red = *self.rng.pick(&["sum", "mean", "max"]);
            let s = &v.shape;
            let got = match (shape.len(), s.len()) {
                (0, 0) => Some(v.name.clone()),
                (0, _) => Some(format!("{red}({})", v.name)),
                (1, 1) if s[0] == shape[0] => Some(v.name.clone()),
                (1, 2) if s[0] == shape[0] && !s.contains(&"1") && r < 2 => {
                    let ax = *self.rng.pick(&["1", "-1"]);
                    Some(format!("{red}({}, axis = {ax})", v.name))
                }
                (1, 2) if s[1] == shape[0] && !s.contains(&"1") && r < 2 => {
                    let ax = *self.rng.pick(&["0", "-2"]);
                    Some(format!("{red}({}, axis = {ax})", v.name))
                }
                (1, 2) if s[0] == shape[0] && s[1] != "1" => {
                    // dot(A[a, k], v[k]) needs a vector of dim k: derive it from A itself.
                    Some(format!("dot({}, sum({}, axis = 0))", v.name, v.name))
                }
                (2, 2) if s[0] == shape[1] && s[1] == shape[0] => Some(format!("{}.T", v.name)),
                (2, 2) if s[0] == shape[0] && s[0] == shape[1] && s[1] != "1" => {
                    Some(format!("dot({}, {}.T)", v.name, v.name))
                }
                (2, 2) if s[1] == shape[0] && s[1] == shape[1] && s[0] != "1" => {
                    Some(format!("dot({}.T, {})", v.name, v.name))
                }
                _ => None,
            };
            if let Some(e) = got {
                self.used.insert(v.name.clone());
                return e;
            }
        }
        // The base matrix over both dims makes every shape derivable.
        let [a, b] = self.dims;
        let base = self
            .vars
            .iter()
            .find(|v| v.shape == [a, b])
            .map(|v| v.name.clone())
            .expect("the base matrix");
        let m = self.use_var(base);
        match shape {
            [] => format!("sum({m})"),
            [x] if *x == a => format!("sum({m}, axis = 1)"),
            [_] => format!("mean({m}, axis = 0)"),
            [x, y] if *x == a && *y == b => m,
            [x, y] if *x == b && *y == a => format!("{m}.T"),
            [x, _] if *x == a => format!("dot({m}, {m}.T)"),
            _ => format!("dot({m}.T, {m})"),
        }
    }

    /// A random expression of exactly `shape`; positive on positive inputs if `pos`.
    pub fn expr(&mut self, shape: &[&'static str], depth: u32, pos: bool) -> String {
        if depth == 0 || self.rng.chance(0.2) {
            return self.leaf(shape, pos);
        }
        if shape.contains(&"1") {
            // Keep shapes with a static 1 simple: unary ops and scalar partners.
            let a = self.expr(shape, depth - 1, pos);
            return match self.rng.below(3) {
                0 => format!("sigmoid({a})"),
                1 => format!("({a} * {})", self.rng.pick(LITERALS)),
                _ => format!("({a} + {})", self.leaf(&[], true)),
            };
        }
        let d = depth - 1;
        if pos {
            return self.pos_expr(shape, d);
        }
        let choice = self.rng.below(if self.knobs.bait { 15 } else { 12 });
        match choice {
            0 => {
                // A function defined on every real number (the op table says which), or `-`.
                let mut fs = unary_builtins(&[Domain::All, Domain::KinkAtZero]);
                fs.push("-");
                let u = *self.rng.pick(&fs);
                let a = self.expr(shape, d, false);
                if u == "-" {
                    format!("-{a}")
                } else {
                    format!("{u}({a})")
                }
            }
            1 => {
                let u = *self
                    .rng
                    .pick(&unary_builtins(&[Domain::Positive, Domain::AboveMinusOne]));
                let a = self.expr(shape, d, true);
                format!("{u}({a})")
            }
            2 => {
                let k = *self.rng.pick(POW_ANY);
                format!("pow({}, {k})", self.expr(shape, d, false))
            }
            3 => {
                let k = *self.rng.pick(POW_POS);
                format!("pow({}, {k})", self.expr(shape, d, true))
            }
            4 | 5 => self.binary(shape, d),
            6 => {
                let f = *self.rng.pick(&["maximum", "minimum"]);
                let (a, b) = self.pair(shape, d, false);
                format!("{f}({a}, {b})")
            }
            7 => self.dot(shape, d, false),
            8 if shape.len() == 2 => {
                let t = vec![shape[1], shape[0]];
                format!("({}).T", self.expr(&t, d, false))
            }
            8 | 9 => self.reduce(shape, d, false),
            10 => {
                // One that overflows: of a bounded value.
                let u = *self.rng.pick(&unary_builtins(&[Domain::Bounded]));
                format!("{u}(tanh({}))", self.expr(shape, d, false))
            }
            11 if self.knobs.nested_grad => self.nested_grad(shape, d),
            11 => format!(
                "({} / {})",
                self.expr(shape, d, false),
                self.expr(shape, d, true)
            ),
            _ => self.bait(shape, d),
        }
    }

    fn pos_expr(&mut self, shape: &[&'static str], d: u32) -> String {
        match self.rng.below(12) {
            0 => format!("exp(tanh({}))", self.expr(shape, d, false)),
            1 => format!("sigmoid({})", self.expr(shape, d, false)),
            2 => format!("softplus({})", self.expr(shape, d, false)),
            3 => format!("sqrt({})", self.expr(shape, d, true)),
            4 => {
                let k = *self.rng.pick(POW_POS);
                format!("pow({}, {k})", self.expr(shape, d, true))
            }
            5 => format!("log1p({})", self.expr(shape, d, true)),
            6 => {
                let op = *self.rng.pick(&["+", "*", "/"]);
                let (a, b) = self.pair(shape, d, true);
                format!("({a} {op} {b})")
            }
            7 => format!("(1 + abs({}))", self.expr(shape, d, false)),
            8 => {
                let (a, b) = self.pair(shape, d, true);
                format!("minimum({a}, {b})")
            }
            9 => {
                let a = self.expr(shape, d, true);
                let shp = self.rng.pick(&self.partners(shape)).clone();
                let b = self.expr(&shp, d, false);
                if self.rng.chance(0.5) {
                    format!("maximum({a}, {b})")
                } else {
                    format!("maximum({b}, {a})")
                }
            }
            10 => self.dot(shape, d, true),
            _ if shape.len() == 2 && self.rng.chance(0.5) => {
                let t = vec![shape[1], shape[0]];
                format!("{}.T", self.paren(&t, d, true))
            }
            _ => self.reduce(shape, d, true),
        }
    }

    /// An expression wrapped in parentheses unless it is a plain name or call.
    fn paren(&mut self, shape: &[&'static str], d: u32, pos: bool) -> String {
        let e = self.expr(shape, d, pos);
        if e.chars().all(|c| c.is_alphanumeric() || c == '_') || e.ends_with(')') {
            e
        } else {
            format!("({e})")
        }
    }

    /// Two operands whose shapes broadcast to `shape`, in random order (at least one full).
    fn pair(&mut self, shape: &[&'static str], d: u32, pos: bool) -> (String, String) {
        let a = self.expr(shape, d, pos);
        let b = if self.rng.chance(0.25) {
            self.rng.pick(LITERALS).to_string()
        } else {
            let shp = self.rng.pick(&self.partners(shape)).clone();
            self.expr(&shp, d, pos)
        };
        if self.rng.chance(0.5) {
            (a, b)
        } else {
            (b, a)
        }
    }

    fn binary(&mut self, shape: &[&'static str], d: u32) -> String {
        // Two operands that are both smaller than the result: [a, 1] + [b] -> [a, b].
        if shape.len() == 2 && self.rng.chance(0.2) {
            let col = vec![shape[0], "1"];
            if !self.vars_of(&col).is_empty() {
                let a = self.expr(&col, d, false);
                let b = self.expr(&[shape[1]], d, false);
                let op = *self.rng.pick(&["+", "*", "-"]);
                return format!("({a} {op} {b})");
            }
        }
        match self.rng.below(4) {
            0 | 1 => {
                let op = *self.rng.pick(&["+", "-", "*"]);
                let (a, b) = self.pair(shape, d, false);
                format!("({a} {op} {b})")
            }
            2 => {
                let a = self.expr(shape, d, false);
                let shp = self.rng.pick(&self.partners(shape)).clone();
                let b = self.expr(&shp, d, true);
                format!("({a} / {b})")
            }
            _ => {
                let shp = self.rng.pick(&self.partners(shape)).clone();
                let a = self.expr(&shp, d, false);
                let b = self.expr(shape, d, true);
                format!("({a} / {b})")
            }
        }
    }

    /// `dot` producing `shape`, over a random inner dim.
    fn dot(&mut self, shape: &[&'static str], d: u32, pos: bool) -> String {
        let k = self.other_dim();
        match shape {
            [] => {
                let a = self.expr(&[k], d, pos);
                let b = self.expr(&[k], d, pos);
                format!("dot({a}, {b})")
            }
            [x] => {
                if self.rng.chance(0.5) {
                    let a = self.expr(&[x, k], d, pos);
                    let b = self.expr(&[k], d, pos);
                    format!("dot({a}, {b})")
                } else {
                    let a = self.expr(&[k], d, pos);
                    let b = self.expr(&[k, x], d, pos);
                    format!("dot({a}, {b})")
                }
            }
            [x, y] => {
                let a = self.expr(&[x, k], d, pos);
                let b = self.expr(&[k, y], d, pos);
                format!("dot({a}, {b})")
            }
            _ => unreachable!("rank <= 2"),
        }
    }

    /// A reduction producing `shape` (rank 0 or 1).
    fn reduce(&mut self, shape: &[&'static str], d: u32, pos: bool) -> String {
        let f = *self.rng.pick(&["sum", "mean", "max"]);
        match shape {
            [] => {
                let s = self.any_shape();
                format!("{f}({})", self.expr(&s, d, pos))
            }
            [x] => {
                let k = self.other_dim();
                if self.rng.chance(0.5) {
                    let ax = *self.rng.pick(&["1", "-1"]);
                    format!("{f}({}, axis = {ax})", self.expr(&[x, k], d, pos))
                } else {
                    let ax = *self.rng.pick(&["0", "-2"]);
                    format!("{f}({}, axis = {ax})", self.expr(&[k, x], d, pos))
                }
            }
            _ => self.expr(shape, d, pos),
        }
    }

    /// Patterns the simplifier rewrites.
    fn bait(&mut self, shape: &[&'static str], d: u32) -> String {
        match self.rng.below(12) {
            3 => {
                let p = self.expr(shape, d, true);
                return format!("({p} / {p})");
            }
            6 => {
                let p = self.expr(shape, d, true);
                return format!("exp(log({p}))");
            }
            _ => {}
        }
        let a = self.expr(shape, d, false);
        match self.rng.below(11) {
            0 => format!("({a} - {a})"),
            1 => format!("({a} + (-{a}))"),
            2 => format!("({a} * 0)"),
            3 => format!("log(sigmoid({a}))"),
            4 => format!("log(1 - sigmoid({a}))"),
            5 => format!("sigmoid(-{a})"),
            6 => format!("softplus(-{a})"),
            7 => format!("(2 * (3 * {a}) + {a} / 4)"),
            8 if shape.len() == 2 => format!("(({a}).T).T"),
            8 => format!("({a} + {a} - 2 * {a} + 1 * {a})"),
            9 => format!("log(exp({a}))"),
            _ => format!("-(-{a})"),
        }
    }

    /// `grad(c, v)` for a var `v` of `shape` that the scalar `c` reads.
    pub fn nested_grad(&mut self, shape: &[&'static str], d: u32) -> String {
        let cands: Vec<String> = self
            .vars
            .iter()
            .filter(|v| v.shape == shape && v.input)
            .map(|v| v.name.clone())
            .collect();
        if cands.is_empty() {
            return self.expr(shape, d, false);
        }
        let v = self.rng.pick(&cands).clone();
        let outer = std::mem::take(&mut self.used);
        let mut c = self.expr(&[], d.max(1), false);
        if !self.used.contains(&v) {
            c = format!("{c} + sum({v} * {v} * {v})");
            self.used.insert(v.clone());
        }
        let inner = std::mem::replace(&mut self.used, outer);
        self.used.extend(inner);
        format!("grad({c}, {v})")
    }
}

/// A random well-formed program in one of the three forms, for the expansion fuzz test.
pub fn program(rng: &mut Rng) -> String {
    let knobs = Knobs {
        max_depth: 1 + rng.below(4) as u32,
        nested_grad: rng.chance(0.3),
        bait: rng.chance(0.5),
    };
    let dtype = if rng.chance(0.3) { "f32" } else { "f64" };
    let attr = match rng.below(6) {
        0 => "#[strict] ",
        1 => "#[nan_guard] ",
        2 => "#[strict] #[nan_guard] ",
        _ => "",
    };
    let form = rng.below(3);
    let mut g = Gen::new(rng, knobs);
    let depth = knobs.max_depth;
    let decls: Vec<String> = g.vars.iter().map(|v| decl(v, dtype)).collect();
    match form {
        // closure, with an expression body or a block of `let`s and a tuple result
        0 => {
            if g.rng.chance(0.5) {
                let s = g.any_shape();
                let e = g.expr(&s, depth, false);
                format!("{attr}|{}| {e}", decls.join(", "))
            } else {
                let mut body = String::new();
                let n = 1 + g.rng.below(3);
                let mut results = Vec::new();
                for i in 0..n {
                    let s = g.any_shape();
                    let e = g.expr(&s, depth, false);
                    let name = format!("t{i}");
                    body.push_str(&format!("let {name} = {e}; "));
                    g.vars.push(Var {
                        name: name.clone(),
                        shape: s,
                        input: false,
                    });
                    results.push(name);
                }
                let s = g.any_shape();
                results.push(g.expr(&s, depth, false));
                format!(
                    "{attr}|{}| {{ {body}({}) }}",
                    decls.join(", "),
                    results.join(", ")
                )
            }
        }
        // equations: a cost, its gradients, and an equation reading an earlier one
        1 => {
            let cost = g.expr(&[], depth, false);
            let used: Vec<String> = g.used.iter().cloned().collect();
            let mut eqs = format!("cost = {cost}; ");
            for v in &used {
                eqs.push_str(&format!("pub g_{v} = grad(cost, {v}); "));
            }
            let s = g.any_shape();
            g.vars.push(Var {
                name: "cost".into(),
                shape: vec![],
                input: false,
            });
            let e = g.expr(&s, depth, false);
            eqs.push_str(&format!("other = {e};"));
            format!("{attr}{}; {eqs}", decls.join(", "))
        }
        // a model: parameters, a training method with updates, a read-only method
        _ => {
            let params: Vec<Var> = g.vars.clone();
            let fields: Vec<String> = params.iter().map(|v| decl(v, dtype)).collect();
            let x = Var {
                name: "inp".into(),
                shape: vec![g.dims[0]],
                input: true,
            };
            g.vars.push(x.clone());
            g.used.clear();
            let cost = g.expr(&[], depth, false);
            let mut body = format!("let cost = {cost}; ");
            for p in &params {
                if g.used.contains(&p.name) {
                    body.push_str(&format!("{} -= lr * grad(cost, {}); ", p.name, p.name));
                }
            }
            let s = g.any_shape();
            let out = g.expr(&s, depth, false);
            format!(
                "pub struct M {{ {} }} impl M {{ {attr}pub fn train(&mut self, {}, lr: {dtype}) -> {dtype} {{ {body}cost }} pub fn look(&self, {}) -> {} {{ {out} }} }}",
                fields.join(", "),
                decl(&x, dtype),
                decl(&x, dtype),
                ty(dtype, &s)
            )
        }
    }
}
