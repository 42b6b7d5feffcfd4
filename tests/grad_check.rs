//! Finite-difference checks of every gradient `tensor_fn!` derives.
//!
//! Each test compiles a scalar cost in equation form (`cost = ...; g = grad(cost, x);`), evaluates
//! it at small seeded random inputs and compares the compiled gradient with central differences
//! of the compiled cost, in f64. A mismatch panics with the op, the variable, the FIRST
//! mismatching index and both values.
//!
//! Covered: `+ - * /` (both sides, literals on either side), unary `-`, `pow` (integer, fractional,
//! negative, 1 and 0 exponents), `exp log log1p sqrt tanh erf sigmoid softplus relu abs gelu`,
//! `maximum minimum` (incl. broadcast and literal operands), `dot` for vv/mv/vm/mm (both operands,
//! shared and transposed operands), `.T`, `sum/mean/max` over all and over `axis = 0`/`axis = 1`,
//! numpy broadcasting (vector rows, static `[1, m]` and `[3, 1]`, scalars, literals), square
//! `x`/`x.T` mixes, scalar inputs, a cost that simplifies to not depending on `x`, a 2-layer net
//! with a cross-entropy, the seed's tied-weights autoencoder loss (gradients, the derived text
//! holds no `log`/`div`, finite values at pre-activations of +-100, the same in f32, and the model
//! form's `p -= lr * grad(cost, p)` step), `#[strict]` programs, second derivatives (`grad` of
//! an expression holding `grad`: Hessian-vector and mixed products), the classifier functions
//! (`softmax`, `log_softmax`, picking `x[arange(n), y]`, `onehot`, masks from comparisons and
//! `argmax`, `where`, `keepdims`), random draws as constants under a fixed stream, and the
//! tutorial models' losses (the MLP with its L2 penalty, the denoising autoencoder).
//! `coverage` prints the count.
//!
//! Costs are weighted by fixed random arrays `c`, so a gradient with swapped or transposed
//! entries does not pass by symmetry; non-smooth ops are sampled away from kinks and ties.

use ndarray::{Array2, ArrayView1, ArrayView2, Ix1, Ix2};
use tensor_fn::prelude::*;

use fd::{check, Dyn, In, Rng};

/// The finite-difference checker and the seeded inputs it runs on.
mod fd {
    use ndarray::{Array, ArrayD, Dimension, IxDyn};

    /// Every input of a cost, as a dynamic-rank array (a scalar is rank 0).
    pub type In = ArrayD<f64>;

    /// Absolute and relative tolerance: `|a - b| <= ABS + REL * max(|a|, |b|)`.
    pub const ABS: f64 = 1e-6;
    pub const REL: f64 = 1e-5;

    /// A compiled gradient as a dynamic-rank array, whatever rank it was returned with.
    pub trait Dyn {
        fn dy(self) -> In;
    }
    impl Dyn for f64 {
        fn dy(self) -> In {
            ndarray::arr0(self).into_dyn()
        }
    }
    impl<D: Dimension> Dyn for Array<f64, D> {
        fn dy(self) -> In {
            self.into_dyn()
        }
    }

    /// xorshift64*: deterministic, dependency-free inputs.
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x2545_F491_4F6C_DD1D | 1)
        }
        /// Uniform in [0, 1).
        pub fn unit(&mut self) -> f64 {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn fill(&mut self, shape: &[usize], mut f: impl FnMut(&mut Self) -> f64) -> In {
            let n = shape.iter().product();
            let v: Vec<f64> = (0..n).map(|_| f(self)).collect();
            ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
        }
        /// Uniform in [lo, hi).
        pub fn uniform(&mut self, shape: &[usize], lo: f64, hi: f64) -> In {
            self.fill(shape, |r| lo + (hi - lo) * r.unit())
        }
        /// `|x|` uniform in [lo, hi) with a random sign: away from a kink at 0.
        pub fn signed(&mut self, shape: &[usize], lo: f64, hi: f64) -> In {
            self.fill(shape, |r| {
                let m = lo + (hi - lo) * r.unit();
                if r.unit() < 0.5 {
                    -m
                } else {
                    m
                }
            })
        }
        /// Distinct values at least `gap` apart in random order (no ties for `max`), centred on 0.
        pub fn distinct(&mut self, shape: &[usize], gap: f64) -> In {
            let n: usize = shape.iter().product();
            let mut v: Vec<f64> = (0..n)
                .map(|i| (i as f64 - n as f64 / 2.0) * gap + 0.3 * gap * self.unit())
                .collect();
            for i in (1..n).rev() {
                let j = (self.unit() * (i + 1) as f64) as usize;
                v.swap(i, j.min(i));
            }
            ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()
        }
        /// `base` plus an offset of at least `gap` in magnitude with a random sign (no ties).
        pub fn apart(&mut self, base: &In, gap: f64) -> In {
            let off = self.signed(base.shape(), gap, 3.0 * gap);
            base + &off
        }
    }

    /// The central difference of `f` in input `k` at flat position `idx`.
    fn central(f: &dyn Fn(&[In]) -> f64, xs: &mut [In], k: usize, idx: &IxDyn) -> f64 {
        let x0 = xs[k][idx];
        let h = 1e-6 * x0.abs().max(1.0);
        xs[k][idx] = x0 + h;
        let fp = f(xs);
        xs[k][idx] = x0 - h;
        let fm = f(xs);
        xs[k][idx] = x0;
        // The step actually taken, after rounding x0 +- h.
        let step = (x0 + h) - (x0 - h);
        (fp - fm) / step
    }

    pub fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= ABS + REL * a.abs().max(b.abs())
    }

    /// Compares each compiled gradient `(name, input index, value)` with central differences of
    /// the scalar `f` over `inputs`. Panics at the first mismatching index with both values.
    pub fn check(op: &str, inputs: &[In], f: impl Fn(&[In]) -> f64, grads: &[(&str, usize, In)]) {
        let f0 = f(inputs);
        assert!(
            f0.is_finite(),
            "{op}: the cost is not finite at the test point: {f0}"
        );
        let mut xs = inputs.to_vec();
        for (name, k, g) in grads {
            assert_eq!(
                g.shape(),
                inputs[*k].shape(),
                "{op}: d cost / d {name} has shape {:?}, the input has {:?}",
                g.shape(),
                inputs[*k].shape()
            );
            let mut first: Option<(IxDyn, f64, f64)> = None;
            let mut bad = 0;
            for (idx, &a) in g.indexed_iter() {
                let n = central(&f, &mut xs, *k, &idx);
                if !(a.is_finite() && close(a, n)) {
                    bad += 1;
                    if first.is_none() {
                        first = Some((idx.clone(), a, n));
                    }
                }
            }
            if let Some((idx, a, n)) = first {
                panic!(
                    "{op}: d cost / d {name} is wrong; first mismatch at {name}{:?}: \
                     compiled {a:e} vs finite difference {n:e} (|diff| {:e}, tol {:e}); \
                     {bad} of {} entries mismatch",
                    idx.slice(),
                    (a - n).abs(),
                    ABS + REL * a.abs().max(n.abs()),
                    g.len()
                );
            }
        }
    }
}

fn v1(a: &In) -> ArrayView1<'_, f64> {
    a.view().into_dimensionality::<Ix1>().unwrap()
}
fn v2(a: &In) -> ArrayView2<'_, f64> {
    a.view().into_dimensionality::<Ix2>().unwrap()
}
fn s0(a: &In) -> f64 {
    *a.first().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Arithmetic

mod add {
    use super::*;
    tensor_fn! {
        x: f64[n, m], y: f64[n, m], c: f64[n, m];
        cost = sum(exp(x + y) * c) + sum(tanh(x + 0.5) * c);
        gx = grad(cost, x);
        gy = grad(cost, y);
    }
    #[test]
    fn both_sides() {
        let mut r = Rng::new(11);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1]), v2(&a[2])).unwrap();
        let (x, y, c) = (v2(&ins[0]), v2(&ins[1]), v2(&ins[2]));
        check(
            "add",
            &ins,
            f,
            &[
                ("x", 0, gx(x, y, c).unwrap().dy()),
                ("y", 1, gy(x, y, c).unwrap().dy()),
            ],
        );
    }
}

mod sub {
    use super::*;
    tensor_fn! {
        x: f64[n, m], y: f64[n, m], c: f64[n, m];
        cost = sum(tanh(x - y) * c) + sum(pow(1 - x, 2) * c) - sum(y * c);
        gx = grad(cost, x);
        gy = grad(cost, y);
    }
    #[test]
    fn both_sides() {
        let mut r = Rng::new(12);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1]), v2(&a[2])).unwrap();
        let (x, y, c) = (v2(&ins[0]), v2(&ins[1]), v2(&ins[2]));
        check(
            "sub",
            &ins,
            f,
            &[
                ("x", 0, gx(x, y, c).unwrap().dy()),
                ("y", 1, gy(x, y, c).unwrap().dy()),
            ],
        );
    }
}

mod mul {
    use super::*;
    tensor_fn! {
        x: f64[n, m], y: f64[n, m], c: f64[n, m];
        cost = sum(tanh(x * y) * c) + sum(3 * x * c);
        gx = grad(cost, x);
        gy = grad(cost, y);
        same = sum(x * x * c);
        gsame = grad(same, x);
    }
    #[test]
    fn both_sides() {
        let mut r = Rng::new(13);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1]), v2(&a[2])).unwrap();
        let (x, y, c) = (v2(&ins[0]), v2(&ins[1]), v2(&ins[2]));
        check(
            "mul",
            &ins,
            f,
            &[
                ("x", 0, gx(x, y, c).unwrap().dy()),
                ("y", 1, gy(x, y, c).unwrap().dy()),
            ],
        );
    }
    #[test]
    fn same_operand() {
        let mut r = Rng::new(14);
        let ins = [r.uniform(&[3, 4], -1., 1.), r.uniform(&[3, 4], -1., 1.)];
        let f = |a: &[In]| same(v2(&a[0]), v2(&a[1])).unwrap();
        check(
            "mul x*x",
            &ins,
            f,
            &[("x", 0, gsame(v2(&ins[0]), v2(&ins[1])).unwrap().dy())],
        );
    }
}

mod div {
    use super::*;
    tensor_fn! {
        x: f64[n, m], y: f64[n, m], c: f64[n, m];
        cost = sum(tanh(x / y) * c);
        gx = grad(cost, x);
        gy = grad(cost, y);
        lit = sum((2 / y + x / 3) * c);
        glx = grad(lit, x);
        gly = grad(lit, y);
    }
    #[test]
    fn both_sides() {
        let mut r = Rng::new(15);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.signed(&[3, 4], 0.5, 2.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1]), v2(&a[2])).unwrap();
        let (x, y, c) = (v2(&ins[0]), v2(&ins[1]), v2(&ins[2]));
        check(
            "div",
            &ins,
            f,
            &[
                ("x", 0, gx(x, y, c).unwrap().dy()),
                ("y", 1, gy(x, y, c).unwrap().dy()),
            ],
        );
    }
    #[test]
    fn literal_sides() {
        let mut r = Rng::new(16);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.signed(&[3, 4], 0.5, 2.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| lit(v2(&a[0]), v2(&a[1]), v2(&a[2])).unwrap();
        let (x, y, c) = (v2(&ins[0]), v2(&ins[1]), v2(&ins[2]));
        check(
            "div literal",
            &ins,
            f,
            &[
                ("x", 0, glx(x, y, c).unwrap().dy()),
                ("y", 1, gly(x, y, c).unwrap().dy()),
            ],
        );
    }
}

mod neg {
    use super::*;
    tensor_fn! {
        x: f64[n, m], c: f64[n, m];
        cost = sum(exp(-x) * c) + sum(-(x * c));
        g = grad(cost, x);
    }
    #[test]
    fn unary_minus() {
        let mut r = Rng::new(17);
        let ins = [r.uniform(&[3, 4], -1., 1.), r.uniform(&[3, 4], -1., 1.)];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1])).unwrap();
        check(
            "neg",
            &ins,
            f,
            &[("x", 0, g(v2(&ins[0]), v2(&ins[1])).unwrap().dy())],
        );
    }
}

mod pow {
    use super::*;
    tensor_fn! {
        x: f64[n, m], c: f64[n, m];
        c3 = sum(pow(x, 3) * c);
        g3 = grad(c3, x);
        c2 = sum(pow(x, 2) * c);
        g2 = grad(c2, x);
        c1 = sum(pow(x, 1) * c);
        g1 = grad(c1, x);
        c0 = sum(pow(x, 0) * c);
        g0 = grad(c0, x);
        cm1 = sum(pow(x, -1) * c);
        gm1 = grad(cm1, x);
        chalf = sum(pow(x, 0.5) * c);
        ghalf = grad(chalf, x);
        cm25 = sum(pow(x, -2.5) * c);
        gm25 = grad(cm25, x);
        c15 = sum(pow(tanh(x) + 2, 1.5) * c);
        g15 = grad(c15, x);
    }
    type Cost = fn(ArrayView2<f64>, ArrayView2<f64>) -> Result<f64, Error>;
    type Grad = fn(ArrayView2<f64>, ArrayView2<f64>) -> Result<Array2<f64>, Error>;
    fn run(op: &str, cost: Cost, grad: Grad, positive: bool, seed: u64) {
        let mut r = Rng::new(seed);
        let x = if positive {
            r.uniform(&[3, 4], 0.3, 2.)
        } else {
            r.signed(&[3, 4], 0.3, 1.5)
        };
        let ins = [x, r.uniform(&[3, 4], -1., 1.)];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1])).unwrap();
        check(
            op,
            &ins,
            f,
            &[("x", 0, grad(v2(&ins[0]), v2(&ins[1])).unwrap().dy())],
        );
    }
    #[test]
    fn k3() {
        run("pow(x, 3)", c3, g3, false, 21);
    }
    #[test]
    fn k2() {
        run("pow(x, 2)", c2, g2, false, 22);
    }
    #[test]
    fn k1() {
        run("pow(x, 1)", c1, g1, false, 23);
    }
    #[test]
    fn k0() {
        run("pow(x, 0)", c0, g0, false, 24);
    }
    #[test]
    fn k_neg1() {
        run("pow(x, -1)", cm1, gm1, false, 25);
    }
    #[test]
    fn k_half() {
        run("pow(x, 0.5)", chalf, ghalf, true, 26);
    }
    #[test]
    fn k_neg_2_5() {
        run("pow(x, -2.5)", cm25, gm25, true, 27);
    }
    #[test]
    fn k_1_5_of_expr() {
        run("pow(tanh(x) + 2, 1.5)", c15, g15, false, 28);
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise functions: one block, one test each, on a domain where the op is smooth.

mod unary {
    use super::*;
    tensor_fn! {
        x: f64[n, m], c: f64[n, m];
        c_exp = sum(exp(x) * c);
        g_exp = grad(c_exp, x);
        c_log = sum(log(x) * c);
        g_log = grad(c_log, x);
        c_log1p = sum(log1p(x) * c);
        g_log1p = grad(c_log1p, x);
        c_sqrt = sum(sqrt(x) * c);
        g_sqrt = grad(c_sqrt, x);
        c_tanh = sum(tanh(x) * c);
        g_tanh = grad(c_tanh, x);
        c_sigmoid = sum(sigmoid(x) * c);
        g_sigmoid = grad(c_sigmoid, x);
        c_softplus = sum(softplus(x) * c);
        g_softplus = grad(c_softplus, x);
        c_relu = sum(relu(x) * c) + sum(pow(relu(x), 2) * c);
        g_relu = grad(c_relu, x);
        c_abs = sum(abs(x) * c) + sum(pow(abs(x), 3) * c);
        g_abs = grad(c_abs, x);
        c_erf = sum(erf(x) * c);
        g_erf = grad(c_erf, x);
        c_gelu = sum(gelu(x) * c);
        g_gelu = grad(c_gelu, x);
        c_chain = sum(exp(tanh(sigmoid(x))) * c);
        g_chain = grad(c_chain, x);
    }
    type Cost = fn(ArrayView2<f64>, ArrayView2<f64>) -> Result<f64, Error>;
    type Grad = fn(ArrayView2<f64>, ArrayView2<f64>) -> Result<Array2<f64>, Error>;
    fn run(op: &str, cost: Cost, grad: Grad, x: impl Fn(&mut Rng) -> In, seed: u64) {
        let mut r = Rng::new(seed);
        let ins = [x(&mut r), r.uniform(&[3, 4], -1., 1.)];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1])).unwrap();
        check(
            op,
            &ins,
            f,
            &[("x", 0, grad(v2(&ins[0]), v2(&ins[1])).unwrap().dy())],
        );
    }
    #[test]
    fn exp() {
        run("exp", c_exp, g_exp, |r| r.uniform(&[3, 4], -2., 2.), 31);
    }
    #[test]
    fn log() {
        run("log", c_log, g_log, |r| r.uniform(&[3, 4], 0.2, 3.), 32);
    }
    #[test]
    fn log1p() {
        run(
            "log1p",
            c_log1p,
            g_log1p,
            |r| r.uniform(&[3, 4], -0.6, 2.),
            33,
        );
    }
    #[test]
    fn sqrt() {
        run("sqrt", c_sqrt, g_sqrt, |r| r.uniform(&[3, 4], 0.2, 3.), 34);
    }
    #[test]
    fn tanh() {
        run(
            "tanh",
            c_tanh,
            g_tanh,
            |r| r.uniform(&[3, 4], -2.5, 2.5),
            35,
        );
    }
    #[test]
    fn sigmoid() {
        run(
            "sigmoid",
            c_sigmoid,
            g_sigmoid,
            |r| r.uniform(&[3, 4], -4., 4.),
            36,
        );
    }
    #[test]
    fn softplus() {
        run(
            "softplus",
            c_softplus,
            g_softplus,
            |r| r.uniform(&[3, 4], -4., 4.),
            37,
        );
    }
    #[test]
    fn relu() {
        run("relu", c_relu, g_relu, |r| r.signed(&[3, 4], 0.2, 2.), 38);
    }
    #[test]
    fn abs() {
        run("abs", c_abs, g_abs, |r| r.signed(&[3, 4], 0.2, 2.), 39);
    }
    #[test]
    fn erf() {
        run("erf", c_erf, g_erf, |r| r.uniform(&[3, 4], -3., 3.), 41);
    }
    #[test]
    fn gelu() {
        run("gelu", c_gelu, g_gelu, |r| r.uniform(&[3, 4], -4., 4.), 42);
    }
    #[test]
    fn chain() {
        run(
            "exp(tanh(sigmoid(x)))",
            c_chain,
            g_chain,
            |r| r.uniform(&[3, 4], -2., 2.),
            40,
        );
    }
}

mod maximum {
    use super::*;
    tensor_fn! {
        x: f64[n, m], y: f64[n, m], b: f64[m], c: f64[n, m];
        cost = sum(tanh(maximum(x, y)) * c);
        gx = grad(cost, x);
        gy = grad(cost, y);
        bc = sum(maximum(b, x) * c) + sum(maximum(x, 0.1) * c);
        gbx = grad(bc, x);
        gbb = grad(bc, b);
        tie = sum(maximum(x, x) * c) + sum(minimum(x, x) * c * c);
        gtie = grad(tie, x);
    }
    #[test]
    fn tie_with_itself() {
        // maximum(x, x) = minimum(x, x) = x is smooth: the tie must route g to one side only.
        let mut r = Rng::new(45);
        let ins = [r.uniform(&[3, 4], -1., 1.), r.uniform(&[3, 4], -1., 1.)];
        let f = |a: &[In]| tie(v2(&a[0]), v2(&a[1])).unwrap();
        check(
            "maximum(x, x)",
            &ins,
            f,
            &[("x", 0, gtie(v2(&ins[0]), v2(&ins[1])).unwrap().dy())],
        );
    }
    #[test]
    fn both_sides() {
        let mut r = Rng::new(41);
        let x = r.uniform(&[3, 4], -1., 1.);
        let y = r.apart(&x, 0.1);
        let ins = [x, y, r.uniform(&[3, 4], -1., 1.)];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1]), v2(&a[2])).unwrap();
        let (x, y, c) = (v2(&ins[0]), v2(&ins[1]), v2(&ins[2]));
        check(
            "maximum",
            &ins,
            f,
            &[
                ("x", 0, gx(x, y, c).unwrap().dy()),
                ("y", 1, gy(x, y, c).unwrap().dy()),
            ],
        );
    }
    #[test]
    fn broadcast_and_literal() {
        let mut r = Rng::new(42);
        // x is -+(0.2..0.8) + 0.1 away from the literal 0.1; b is a row away from every x.
        let x = r.signed(&[3, 4], 0.2, 0.8).mapv(|v| v + 0.1);
        let b = ndarray::arr1(&[-0.05, 0.15, 0.95, -0.95]).into_dyn();
        let ins = [x, b, r.uniform(&[3, 4], -1., 1.)];
        let f = |a: &[In]| bc(v2(&a[0]), v1(&a[1]), v2(&a[2])).unwrap();
        let (x, b, c) = (v2(&ins[0]), v1(&ins[1]), v2(&ins[2]));
        let ok = ins[0]
            .iter()
            .all(|&xv| ins[1].iter().all(|&bv| (xv - bv).abs() > 1e-3));
        assert!(ok, "test inputs tie");
        check(
            "maximum broadcast",
            &ins,
            f,
            &[
                ("x", 0, gbx(x, b, c).unwrap().dy()),
                ("b", 1, gbb(x, b, c).unwrap().dy()),
            ],
        );
    }
}

mod minimum {
    use super::*;
    tensor_fn! {
        x: f64[n, m], y: f64[n, m], b: f64[m], c: f64[n, m];
        cost = sum(tanh(minimum(x, y)) * c);
        gx = grad(cost, x);
        gy = grad(cost, y);
        bc = sum(minimum(b, x) * c) + sum(minimum(x, 0.1) * c);
        gbx = grad(bc, x);
        gbb = grad(bc, b);
    }
    #[test]
    fn both_sides() {
        let mut r = Rng::new(43);
        let x = r.uniform(&[3, 4], -1., 1.);
        let y = r.apart(&x, 0.1);
        let ins = [x, y, r.uniform(&[3, 4], -1., 1.)];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1]), v2(&a[2])).unwrap();
        let (x, y, c) = (v2(&ins[0]), v2(&ins[1]), v2(&ins[2]));
        check(
            "minimum",
            &ins,
            f,
            &[
                ("x", 0, gx(x, y, c).unwrap().dy()),
                ("y", 1, gy(x, y, c).unwrap().dy()),
            ],
        );
    }
    #[test]
    fn broadcast_and_literal() {
        let mut r = Rng::new(44);
        let x = r.signed(&[3, 4], 0.2, 0.8).mapv(|v| v + 0.1);
        let b = ndarray::arr1(&[-0.05, 0.15, 0.95, -0.95]).into_dyn();
        let ins = [x, b, r.uniform(&[3, 4], -1., 1.)];
        let f = |a: &[In]| bc(v2(&a[0]), v1(&a[1]), v2(&a[2])).unwrap();
        let (x, b, c) = (v2(&ins[0]), v1(&ins[1]), v2(&ins[2]));
        let ok = ins[0]
            .iter()
            .all(|&xv| ins[1].iter().all(|&bv| (xv - bv).abs() > 1e-3));
        assert!(ok, "test inputs tie");
        check(
            "minimum broadcast",
            &ins,
            f,
            &[
                ("x", 0, gbx(x, b, c).unwrap().dy()),
                ("b", 1, gbb(x, b, c).unwrap().dy()),
            ],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Products and transposes: shapes are all different (3, 4, 2) so a swapped axis cannot pass.

mod dot {
    use super::*;
    tensor_fn! {
        u: f64[k], v: f64[k], a: f64[n, k], b: f64[k, m], cn: f64[n], cm: f64[m], cnm: f64[n, m];
        c_vv = pow(dot(u, v), 3) + dot(u, v);
        vv_u = grad(c_vv, u);
        vv_v = grad(c_vv, v);
        c_mv = sum(tanh(dot(a, v)) * cn);
        mv_a = grad(c_mv, a);
        mv_v = grad(c_mv, v);
        c_vm = sum(tanh(dot(v, b)) * cm);
        vm_v = grad(c_vm, v);
        vm_b = grad(c_vm, b);
        c_mm = sum(tanh(dot(a, b)) * cnm);
        mm_a = grad(c_mm, a);
        mm_b = grad(c_mm, b);
    }
    #[test]
    fn vv() {
        let mut r = Rng::new(51);
        let ins = [r.uniform(&[4], -1., 1.), r.uniform(&[4], -1., 1.)];
        let f = |x: &[In]| c_vv(v1(&x[0]), v1(&x[1])).unwrap();
        let (u, v) = (v1(&ins[0]), v1(&ins[1]));
        check(
            "dot vv",
            &ins,
            f,
            &[
                ("u", 0, vv_u(u, v).unwrap().dy()),
                ("v", 1, vv_v(u, v).unwrap().dy()),
            ],
        );
    }
    #[test]
    fn mv() {
        let mut r = Rng::new(52);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[4], -1., 1.),
            r.uniform(&[3], -1., 1.),
        ];
        let f = |x: &[In]| c_mv(v1(&x[1]), v2(&x[0]), v1(&x[2])).unwrap();
        let (a, v, c) = (v2(&ins[0]), v1(&ins[1]), v1(&ins[2]));
        check(
            "dot mv",
            &ins,
            f,
            &[
                ("a", 0, mv_a(v, a, c).unwrap().dy()),
                ("v", 1, mv_v(v, a, c).unwrap().dy()),
            ],
        );
    }
    #[test]
    fn vm() {
        let mut r = Rng::new(53);
        let ins = [
            r.uniform(&[4], -1., 1.),
            r.uniform(&[4, 2], -1., 1.),
            r.uniform(&[2], -1., 1.),
        ];
        let f = |x: &[In]| c_vm(v1(&x[0]), v2(&x[1]), v1(&x[2])).unwrap();
        let (v, b, c) = (v1(&ins[0]), v2(&ins[1]), v1(&ins[2]));
        check(
            "dot vm",
            &ins,
            f,
            &[
                ("v", 0, vm_v(v, b, c).unwrap().dy()),
                ("b", 1, vm_b(v, b, c).unwrap().dy()),
            ],
        );
    }
    #[test]
    fn strided_views() {
        // The same gradients from non-contiguous inputs: a transposed view and a column slice.
        let mut r = Rng::new(58);
        let a = r.uniform(&[4, 3], -1., 1.);
        let b = r.uniform(&[4, 4], -1., 1.);
        let c = r.uniform(&[3, 2], -1., 1.);
        let (at, bs) = (
            v2(&a).reversed_axes(),
            v2(&b).slice_move(ndarray::s![.., 1..;2]),
        );
        let (a0, b0) = (at.to_owned(), bs.to_owned());
        assert!(!at.is_standard_layout() && !bs.is_standard_layout());
        assert_eq!(
            mm_a(at, bs, v2(&c)).unwrap(),
            mm_a(a0.view(), b0.view(), v2(&c)).unwrap()
        );
        assert_eq!(
            mm_b(at, bs, v2(&c)).unwrap(),
            mm_b(a0.view(), b0.view(), v2(&c)).unwrap()
        );
    }
    #[test]
    fn mm() {
        let mut r = Rng::new(54);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[4, 2], -1., 1.),
            r.uniform(&[3, 2], -1., 1.),
        ];
        let f = |x: &[In]| c_mm(v2(&x[0]), v2(&x[1]), v2(&x[2])).unwrap();
        let (a, b, c) = (v2(&ins[0]), v2(&ins[1]), v2(&ins[2]));
        check(
            "dot mm",
            &ins,
            f,
            &[
                ("a", 0, mm_a(a, b, c).unwrap().dy()),
                ("b", 1, mm_b(a, b, c).unwrap().dy()),
            ],
        );
    }
}

mod dot_shared {
    use super::*;
    tensor_fn! {
        a: f64[n, k], b: f64[n, m], v: f64[n], c: f64[n, n], cm: f64[k, m];
        aat = sum(tanh(dot(a, a.T)) * c) + pow(dot(v, v), 2);
        aat_a = grad(aat, a);
        aat_v = grad(aat, v);
        atb = sum(tanh(dot(a.T, b)) * cm) + sum(dot(dot(v, a), a.T) * v);
        atb_a = grad(atb, a);
        atb_b = grad(atb, b);
        atb_v = grad(atb, v);
    }
    #[test]
    fn same_operand() {
        let mut r = Rng::new(55);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3], -1., 1.),
            r.uniform(&[3, 3], -1., 1.),
        ];
        let f = |x: &[In]| aat(v2(&x[0]), v1(&x[1]), v2(&x[2])).unwrap();
        let (a, v, c) = (v2(&ins[0]), v1(&ins[1]), v2(&ins[2]));
        check(
            "dot(a, a.T)",
            &ins,
            f,
            &[
                ("a", 0, aat_a(a, v, c).unwrap().dy()),
                ("v", 1, aat_v(a, v, c).unwrap().dy()),
            ],
        );
    }
    #[test]
    fn transposed_operand() {
        let mut r = Rng::new(56);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3, 2], -1., 1.),
            r.uniform(&[3], -1., 1.),
            r.uniform(&[4, 2], -1., 1.),
        ];
        let f = |x: &[In]| atb(v2(&x[0]), v2(&x[1]), v1(&x[2]), v2(&x[3])).unwrap();
        let (a, b, v, c) = (v2(&ins[0]), v2(&ins[1]), v1(&ins[2]), v2(&ins[3]));
        check(
            "dot(a.T, b)",
            &ins,
            f,
            &[
                ("a", 0, atb_a(a, b, v, c).unwrap().dy()),
                ("b", 1, atb_b(a, b, v, c).unwrap().dy()),
                ("v", 2, atb_v(a, b, v, c).unwrap().dy()),
            ],
        );
    }
}

mod transpose {
    use super::*;
    tensor_fn! {
        a: f64[n, m], b: f64[m, n], c: f64[m, n];
        cost = sum(tanh(a.T) * c) + sum(exp(a.T * b) * c) + sum(a.T.T * b.T);
        ga = grad(cost, a);
        gb = grad(cost, b);
    }
    #[test]
    fn dot_t() {
        let mut r = Rng::new(57);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[4, 3], -1., 1.),
            r.uniform(&[4, 3], -1., 1.),
        ];
        let f = |x: &[In]| cost(v2(&x[0]), v2(&x[1]), v2(&x[2])).unwrap();
        let (a, b, c) = (v2(&ins[0]), v2(&ins[1]), v2(&ins[2]));
        check(
            ".T",
            &ins,
            f,
            &[
                ("a", 0, ga(a, b, c).unwrap().dy()),
                ("b", 1, gb(a, b, c).unwrap().dy()),
            ],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Reductions

mod sum {
    use super::*;
    tensor_fn! {
        x: f64[n, m], v: f64[m], cn: f64[n], cm: f64[m], c: f64[n, m];
        all = tanh(sum(x * c)) + pow(sum(x), 2);
        g_all = grad(all, x);
        ax0 = sum(tanh(sum(x * c, axis = 0)) * cm);
        g_ax0 = grad(ax0, x);
        ax1 = sum(tanh(sum(x * c, axis = 1)) * cn);
        g_ax1 = grad(ax1, x);
        vec0 = tanh(sum(v * cm, axis = 0)) + pow(sum(v, axis = -1), 2);
        g_vec0 = grad(vec0, v);
    }
    #[test]
    fn over_all() {
        let mut r = Rng::new(61);
        let ins = [r.uniform(&[3, 4], -1., 1.), r.uniform(&[3, 4], -1., 1.)];
        let f = |a: &[In]| all(v2(&a[0]), v2(&a[1])).unwrap();
        check(
            "sum",
            &ins,
            f,
            &[("x", 0, g_all(v2(&ins[0]), v2(&ins[1])).unwrap().dy())],
        );
    }
    #[test]
    fn axis0() {
        let mut r = Rng::new(62);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| ax0(v2(&a[0]), v1(&a[1]), v2(&a[2])).unwrap();
        let (x, cm, c) = (v2(&ins[0]), v1(&ins[1]), v2(&ins[2]));
        check(
            "sum axis=0",
            &ins,
            f,
            &[("x", 0, g_ax0(x, cm, c).unwrap().dy())],
        );
    }
    #[test]
    fn axis1() {
        let mut r = Rng::new(63);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| ax1(v2(&a[0]), v1(&a[1]), v2(&a[2])).unwrap();
        let (x, cn, c) = (v2(&ins[0]), v1(&ins[1]), v2(&ins[2]));
        check(
            "sum axis=1",
            &ins,
            f,
            &[("x", 0, g_ax1(x, cn, c).unwrap().dy())],
        );
    }
    #[test]
    fn vector_axis0() {
        let mut r = Rng::new(64);
        let ins = [r.uniform(&[4], -1., 1.), r.uniform(&[4], -1., 1.)];
        let f = |a: &[In]| vec0(v1(&a[0]), v1(&a[1])).unwrap();
        check(
            "sum vector axis=0",
            &ins,
            f,
            &[("v", 0, g_vec0(v1(&ins[0]), v1(&ins[1])).unwrap().dy())],
        );
    }
}

mod mean {
    use super::*;
    tensor_fn! {
        x: f64[n, m], cn: f64[n], cm: f64[m], c: f64[n, m];
        all = tanh(mean(x * c)) + pow(mean(x), 2);
        g_all = grad(all, x);
        ax0 = sum(tanh(mean(x * c, axis = 0)) * cm);
        g_ax0 = grad(ax0, x);
        ax1 = sum(tanh(mean(x * c, axis = 1)) * cn) + mean(mean(x, axis = 1) * cn);
        g_ax1 = grad(ax1, x);
    }
    #[test]
    fn over_all() {
        let mut r = Rng::new(65);
        let ins = [r.uniform(&[3, 4], -1., 1.), r.uniform(&[3, 4], -1., 1.)];
        let f = |a: &[In]| all(v2(&a[0]), v2(&a[1])).unwrap();
        check(
            "mean",
            &ins,
            f,
            &[("x", 0, g_all(v2(&ins[0]), v2(&ins[1])).unwrap().dy())],
        );
    }
    #[test]
    fn axis0() {
        let mut r = Rng::new(66);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| ax0(v2(&a[0]), v1(&a[1]), v2(&a[2])).unwrap();
        let (x, cm, c) = (v2(&ins[0]), v1(&ins[1]), v2(&ins[2]));
        check(
            "mean axis=0",
            &ins,
            f,
            &[("x", 0, g_ax0(x, cm, c).unwrap().dy())],
        );
    }
    #[test]
    fn axis1() {
        let mut r = Rng::new(67);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| ax1(v2(&a[0]), v1(&a[1]), v2(&a[2])).unwrap();
        let (x, cn, c) = (v2(&ins[0]), v1(&ins[1]), v2(&ins[2]));
        check(
            "mean axis=1",
            &ins,
            f,
            &[("x", 0, g_ax1(x, cn, c).unwrap().dy())],
        );
    }
}

mod max {
    use super::*;
    tensor_fn! {
        x: f64[n, m], v: f64[m], cn: f64[n], cm: f64[m], c: f64[n, m];
        all = pow(max(x), 2) + tanh(max(x * 2));
        g_all = grad(all, x);
        ax0 = sum(tanh(max(x, axis = 0)) * cm);
        g_ax0 = grad(ax0, x);
        ax1 = sum(tanh(max(x, axis = 1)) * cn) + sum(x * c);
        g_ax1 = grad(ax1, x);
        vec0 = pow(max(v, axis = 0), 3);
        g_vec0 = grad(vec0, v);
    }
    #[test]
    fn over_all() {
        let mut r = Rng::new(71);
        let ins = [r.distinct(&[3, 4], 0.1)];
        let f = |a: &[In]| all(v2(&a[0])).unwrap();
        check(
            "max",
            &ins,
            f,
            &[("x", 0, g_all(v2(&ins[0])).unwrap().dy())],
        );
    }
    #[test]
    fn axis0() {
        let mut r = Rng::new(72);
        let ins = [r.distinct(&[3, 4], 0.1), r.uniform(&[4], -1., 1.)];
        let f = |a: &[In]| ax0(v2(&a[0]), v1(&a[1])).unwrap();
        check(
            "max axis=0",
            &ins,
            f,
            &[("x", 0, g_ax0(v2(&ins[0]), v1(&ins[1])).unwrap().dy())],
        );
    }
    #[test]
    fn axis1() {
        let mut r = Rng::new(73);
        let ins = [
            r.distinct(&[3, 4], 0.1),
            r.uniform(&[3], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| ax1(v2(&a[0]), v1(&a[1]), v2(&a[2])).unwrap();
        let (x, cn, c) = (v2(&ins[0]), v1(&ins[1]), v2(&ins[2]));
        check(
            "max axis=1",
            &ins,
            f,
            &[("x", 0, g_ax1(x, cn, c).unwrap().dy())],
        );
    }
    #[test]
    fn vector_axis0() {
        let mut r = Rng::new(74);
        let ins = [r.distinct(&[5], 0.1)];
        let f = |a: &[In]| vec0(v1(&a[0])).unwrap();
        check(
            "max vector axis=0",
            &ins,
            f,
            &[("v", 0, g_vec0(v1(&ins[0])).unwrap().dy())],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Broadcasting and scalars: the adjoint of a broadcast sums the copies back.

mod broadcast {
    use super::*;
    tensor_fn! {
        x: f64[n, m], b: f64[m], c: f64[n, m];
        rows = sum(tanh(x + b) * c) + sum(exp(b * x) * c) + sum(x / (2 + b) * c) + sum((b - x) * c);
        rows_x = grad(rows, x);
        rows_b = grad(rows, b);
    }
    #[test]
    fn vector_rows() {
        let mut r = Rng::new(81);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| rows(v2(&a[0]), v1(&a[1]), v2(&a[2])).unwrap();
        let (x, b, c) = (v2(&ins[0]), v1(&ins[1]), v2(&ins[2]));
        check(
            "broadcast [m] to [n, m]",
            &ins,
            f,
            &[
                ("x", 0, rows_x(x, b, c).unwrap().dy()),
                ("b", 1, rows_b(x, b, c).unwrap().dy()),
            ],
        );
    }
}

mod broadcast_static1 {
    use super::*;
    tensor_fn! {
        x: f64[n, m], r1: f64[1, m], c: f64[n, m];
        cost = sum(tanh(x * r1 + r1) * c);
        gx = grad(cost, x);
        gr = grad(cost, r1);
    }
    #[test]
    fn static_one_row() {
        let mut r = Rng::new(82);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[1, 4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1]), v2(&a[2])).unwrap();
        let (x, r1, c) = (v2(&ins[0]), v2(&ins[1]), v2(&ins[2]));
        check(
            "broadcast [1, m] to [n, m]",
            &ins,
            f,
            &[
                ("x", 0, gx(x, r1, c).unwrap().dy()),
                ("r1", 1, gr(x, r1, c).unwrap().dy()),
            ],
        );
    }
}

mod broadcast_column {
    use super::*;
    // A static [3, 1] column and a [1, m] row broadcast against each other and against [3, m].
    tensor_fn! {
        x: f64[3, m], k: f64[3, 1], r1: f64[1, m], c: f64[3, m];
        cost = sum(tanh(x * k + r1) * c) + sum(exp(k + r1) * c) + sum(k / (2 + r1 * r1) * c);
        gx = grad(cost, x);
        gk = grad(cost, k);
        gr = grad(cost, r1);
    }
    #[test]
    fn column_and_row() {
        let mut r = Rng::new(84);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3, 1], -1., 1.),
            r.uniform(&[1, 4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1]), v2(&a[2]), v2(&a[3])).unwrap();
        let (x, k, r1, c) = (v2(&ins[0]), v2(&ins[1]), v2(&ins[2]), v2(&ins[3]));
        check(
            "broadcast [3, 1] with [1, m]",
            &ins,
            f,
            &[
                ("x", 0, gx(x, k, r1, c).unwrap().dy()),
                ("k", 1, gk(x, k, r1, c).unwrap().dy()),
                ("r1", 2, gr(x, k, r1, c).unwrap().dy()),
            ],
        );
    }
}

mod square {
    use super::*;
    // n x n: x and x.T have the same type, so a missing or extra transpose in a gradient would
    // still type-check; only the values tell.
    tensor_fn! {
        x: f64[n, n], c: f64[n, n];
        cost = sum(tanh(x + x.T) * c) + sum(dot(x, x) * c) + sum(x * x.T * c) + sum(dot(x.T, c) * x);
        g = grad(cost, x);
    }
    #[test]
    fn x_and_x_t() {
        let mut r = Rng::new(85);
        let ins = [r.uniform(&[3, 3], -1., 1.), r.uniform(&[3, 3], -1., 1.)];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1])).unwrap();
        check(
            "square x, x.T",
            &ins,
            f,
            &[("x", 0, g(v2(&ins[0]), v2(&ins[1])).unwrap().dy())],
        );
    }
}

mod disconnected {
    use super::*;
    // After simplification the cost no longer depends on x: the gradient is zero. This used to
    // panic in the macro (index out of bounds in grad.rs `backprop`).
    tensor_fn! {
        x: f64[n, m], y: f64[n, m], c: f64[n, m], v: f64[n, m];
        cost = sum(y * c) + 0 * sum(x);
        g = grad(cost, x);
        lin = grad(sum(x * c), x);
        h = grad(sum(grad(sum(x * c), x) * v), x);
    }
    #[test]
    fn simplified_away() {
        let mut r = Rng::new(86);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| cost(v2(&a[0]), v2(&a[1]), v2(&a[2])).unwrap();
        let gx = g(v2(&ins[0]), v2(&ins[1]), v2(&ins[2])).unwrap();
        assert!(gx.iter().all(|&v| v == 0.0), "{gx}");
        check("0 * sum(x)", &ins, f, &[("x", 0, gx.dy())]);
    }
    #[test]
    fn hessian_of_linear() {
        let mut r = Rng::new(87);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| (lin(v2(&a[0]), v2(&a[1])).unwrap() * v2(&a[2])).sum();
        let hv = h(v2(&ins[0]), v2(&ins[1]), v2(&ins[2])).unwrap();
        assert_eq!(h::INFO.expr, "0");
        check("hvp of sum(x * c)", &ins, f, &[("x", 0, hv.dy())]);
    }
}

mod scalar {
    use super::*;
    tensor_fn! {
        s: f64, x: f64[n, m], v: f64[m], c: f64[n, m];
        bc = sum(tanh(s * x + s) * c) + sum(s / (2 + x) * c) + sum(exp(v - s) * v);
        bc_s = grad(bc, s);
        bc_x = grad(bc, x);
        bc_v = grad(bc, v);
    }
    tensor_fn! {
        p: f64, q: f64;
        only = p * exp(q) / (1 + p * p) - pow(q, 3) + sqrt(p * p + 1) * tanh(p - q);
        only_p = grad(only, p);
        only_q = grad(only, q);
    }
    #[test]
    fn broadcast_scalar() {
        let mut r = Rng::new(83);
        let ins = [
            r.uniform(&[], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[4], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| bc(s0(&a[0]), v2(&a[1]), v1(&a[2]), v2(&a[3])).unwrap();
        let (s, x, v, c) = (s0(&ins[0]), v2(&ins[1]), v1(&ins[2]), v2(&ins[3]));
        check(
            "broadcast scalar",
            &ins,
            f,
            &[
                ("s", 0, bc_s(s, x, v, c).unwrap().dy()),
                ("x", 1, bc_x(s, x, v, c).unwrap().dy()),
                ("v", 2, bc_v(s, x, v, c).unwrap().dy()),
            ],
        );
    }
    #[test]
    fn scalar_inputs() {
        let ins = [
            ndarray::arr0(0.7).into_dyn(),
            ndarray::arr0(-0.4).into_dyn(),
        ];
        let f = |a: &[In]| only(s0(&a[0]), s0(&a[1])).unwrap();
        let (p, q) = (s0(&ins[0]), s0(&ins[1]));
        check(
            "scalar",
            &ins,
            f,
            &[
                ("p", 0, only_p(p, q).unwrap().dy()),
                ("q", 1, only_q(p, q).unwrap().dy()),
            ],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Whole programs

mod composite {
    use super::*;
    // A 2-layer net: tanh hidden layer (mm), sigmoid output (mv), binary cross-entropy, L2 decay,
    // and a vm product feeding an extra term.
    tensor_fn! {
        x: f64[b, d], y: f64[b], w1: f64[d, h], b1: f64[h], w2: f64[h], b2: f64, u: f64[d];
        cost = mean(-(y * log(sigmoid(dot(tanh(dot(x, w1) + b1), w2) + b2))
                    + (1 - y) * log(1 - sigmoid(dot(tanh(dot(x, w1) + b1), w2) + b2))))
             + 0.01 * sum(w1 * w1) + 0.1 * sum(softplus(dot(u, w1)) * b1);
        g_w1 = grad(cost, w1);
        g_b1 = grad(cost, b1);
        g_w2 = grad(cost, w2);
        g_b2 = grad(cost, b2);
        g_u = grad(cost, u);
        g_x = grad(cost, x);
    }
    #[test]
    fn two_layer_net() {
        let mut r = Rng::new(91);
        let y = r
            .uniform(&[5], 0., 1.)
            .mapv(|v| if v < 0.5 { 0.0 } else { 1.0 });
        let ins = [
            r.uniform(&[5, 4], -1., 1.),
            y,
            r.uniform(&[4, 3], -1., 1.),
            r.uniform(&[3], -0.5, 0.5),
            r.uniform(&[3], -1., 1.),
            ndarray::arr0(0.2).into_dyn(),
            r.uniform(&[4], -1., 1.),
        ];
        let f = |a: &[In]| {
            cost(
                v2(&a[0]),
                v1(&a[1]),
                v2(&a[2]),
                v1(&a[3]),
                v1(&a[4]),
                s0(&a[5]),
                v1(&a[6]),
            )
            .unwrap()
        };
        let (x, y, w1, b1, w2, b2, u) = (
            v2(&ins[0]),
            v1(&ins[1]),
            v2(&ins[2]),
            v1(&ins[3]),
            v1(&ins[4]),
            s0(&ins[5]),
            v1(&ins[6]),
        );
        check(
            "2-layer net",
            &ins,
            f,
            &[
                ("x", 0, g_x(x, y, w1, b1, w2, b2, u).unwrap().dy()),
                ("w1", 2, g_w1(x, y, w1, b1, w2, b2, u).unwrap().dy()),
                ("b1", 3, g_b1(x, y, w1, b1, w2, b2, u).unwrap().dy()),
                ("w2", 4, g_w2(x, y, w1, b1, w2, b2, u).unwrap().dy()),
                ("b2", 5, g_b2(x, y, w1, b1, w2, b2, u).unwrap().dy()),
                ("u", 6, g_u(x, y, w1, b1, w2, b2, u).unwrap().dy()),
            ],
        );
    }
}

mod autoencoder {
    use super::*;
    // The seed's tied-weights autoencoder loss, in f64 and with static sizes.
    tensor_fn! {
        w: f64[6, 4], b1: f64[4], b2: f64[6], x: f64[3, 6];
        pub cost = mean(-sum(x * log(sigmoid(dot(sigmoid(dot(x, w) + b1), w.T) + b2))
                             + (1 - x) * log(1 - sigmoid(dot(sigmoid(dot(x, w) + b1), w.T) + b2)), axis = 1));
        pub gw = grad(cost, w);
        pub gb1 = grad(cost, b1);
        pub gb2 = grad(cost, b2);
    }

    fn inputs(seed: u64, scale: f64) -> [In; 4] {
        let mut r = Rng::new(seed);
        [
            r.uniform(&[6, 4], -1., 1.).mapv(|v| v * scale),
            r.uniform(&[4], -0.5, 0.5),
            r.uniform(&[6], -0.5, 0.5),
            r.uniform(&[3, 6], 0.05, 0.95),
        ]
    }

    fn f(a: &[In]) -> f64 {
        cost(v2(&a[0]), v1(&a[1]), v1(&a[2]), v2(&a[3])).unwrap()
    }

    fn grads(ins: &[In]) -> [(&'static str, usize, In); 3] {
        let (w, b1, b2, x) = (v2(&ins[0]), v1(&ins[1]), v1(&ins[2]), v2(&ins[3]));
        [
            ("w", 0, gw(w, b1, b2, x).unwrap().dy()),
            ("b1", 1, gb1(w, b1, b2, x).unwrap().dy()),
            ("b2", 2, gb2(w, b1, b2, x).unwrap().dy()),
        ]
    }

    /// The loss written out by hand, stably: -log s(z) = softplus(-z), -log(1 - s(z)) = softplus(z).
    fn reference(a: &[In]) -> f64 {
        let sp = |z: f64| z.max(0.0) + (-z.abs()).exp().ln_1p();
        let sg = |z: f64| 1.0 / (1.0 + (-z).exp());
        let (w, b1, b2, x) = (v2(&a[0]), v1(&a[1]), v1(&a[2]), v2(&a[3]));
        let h = (x.dot(&w) + b1).mapv(sg);
        let z = h.dot(&w.t()) + b2;
        let per = ndarray::Zip::from(&x)
            .and(&z)
            .map_collect(|&x, &z| x * sp(-z) + (1.0 - x) * sp(z));
        per.sum_axis(ndarray::Axis(1)).mean().unwrap()
    }

    #[test]
    fn grads_w_b1_b2() {
        let ins = inputs(101, 1.0);
        let c = f(&ins);
        assert!(
            (c - reference(&ins)).abs() <= 1e-12 * c.abs().max(1.0),
            "cost {c} vs {}",
            reference(&ins)
        );
        check("autoencoder", &ins, f, &grads(&ins));
    }

    #[test]
    fn grad_text_has_no_log_or_div() {
        for (name, graph) in [
            ("gw", gw::INFO.graph),
            ("gb1", gb1::INFO.graph),
            ("gb2", gb2::INFO.graph),
        ] {
            for line in graph.lines() {
                let op = line
                    .split(" = ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap_or("");
                assert!(
                    !op.starts_with("log") && op != "div",
                    "{name} still computes `{op}`:\n{line}\n\n{graph}"
                );
            }
            assert!(
                !graph.contains("log") && !graph.contains("div"),
                "{name}:\n{graph}"
            );
        }
    }

    #[test]
    fn finite_at_saturation() {
        // |w| up to 40 with x in (0, 1): |dot(x, w)| and |dot(h, w.T)| reach about 100, where
        // sigmoid rounds to 0 or 1 and a literal log(1 - sigmoid(z)) would be -inf.
        let ins = inputs(102, 40.0);
        let z = {
            let (w, b1, b2, x) = (v2(&ins[0]), v1(&ins[1]), v1(&ins[2]), v2(&ins[3]));
            let h = (x.dot(&w) + b1).mapv(|z| 1.0 / (1.0 + (-z).exp()));
            h.dot(&w.t()) + b2
        };
        let zmax = z.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(zmax > 60.0, "inputs do not saturate: max |z| = {zmax}");
        let c = f(&ins);
        assert!(c.is_finite(), "cost {c}");
        assert!(
            (c - reference(&ins)).abs() <= 1e-10 * c.abs().max(1.0),
            "cost {c} vs {}",
            reference(&ins)
        );
        let gs = grads(&ins);
        for (name, _, g) in &gs {
            assert!(
                g.iter().all(|v| v.is_finite()),
                "d cost / d {name} is not finite: {g}"
            );
        }
        check("autoencoder at +-100", &ins, f, &gs);
    }
}

mod f32_autoencoder {
    use super::*;
    // The same loss in f32, as the seed trains it: its gradients must agree with the f64 ones
    // (checked by finite differences above) to f32 precision.
    tensor_fn! {
        w: f32[6, 4], b1: f32[4], b2: f32[6], x: f32[3, 6];
        cost = mean(-sum(x * log(sigmoid(dot(sigmoid(dot(x, w) + b1), w.T) + b2))
                         + (1 - x) * log(1 - sigmoid(dot(sigmoid(dot(x, w) + b1), w.T) + b2)), axis = 1));
        gw = grad(cost, w);
        gb1 = grad(cost, b1);
        gb2 = grad(cost, b2);
    }
    #[test]
    fn matches_f64() {
        let mut r = Rng::new(104);
        // Inputs representable in f32, so both precisions see the same point.
        let to32 = |a: In| a.mapv(|v| v as f32 as f64);
        let ins = [
            to32(r.uniform(&[6, 4], -1., 1.)),
            to32(r.uniform(&[4], -0.5, 0.5)),
            to32(r.uniform(&[6], -0.5, 0.5)),
            to32(r.uniform(&[3, 6], 0.05, 0.95)),
        ];
        let n = |a: &In| a.mapv(|v| v as f32);
        let (w, b1, b2, x) = (n(&ins[0]), n(&ins[1]), n(&ins[2]), n(&ins[3]));
        let w = w.into_dimensionality::<Ix2>().unwrap();
        let (b1, b2) = (
            b1.into_dimensionality::<Ix1>().unwrap(),
            b2.into_dimensionality::<Ix1>().unwrap(),
        );
        let x = x.into_dimensionality::<Ix2>().unwrap();
        let (w, b1, b2, x) = (w.view(), b1.view(), b2.view(), x.view());
        let c32 = cost(w, b1, b2, x).unwrap() as f64;
        let c64 =
            super::autoencoder::cost(v2(&ins[0]), v1(&ins[1]), v1(&ins[2]), v2(&ins[3])).unwrap();
        assert!(
            (c32 - c64).abs() <= 1e-5 * c64.abs(),
            "cost f32 {c32} vs f64 {c64}"
        );
        let g32 = [
            ("w", gw(w, b1, b2, x).unwrap().mapv(f64::from).into_dyn()),
            ("b1", gb1(w, b1, b2, x).unwrap().mapv(f64::from).into_dyn()),
            ("b2", gb2(w, b1, b2, x).unwrap().mapv(f64::from).into_dyn()),
        ];
        let (w, b1, b2, x) = (v2(&ins[0]), v1(&ins[1]), v1(&ins[2]), v2(&ins[3]));
        use super::autoencoder as a;
        let g64 = [
            a::gw(w, b1, b2, x).unwrap().into_dyn(),
            a::gb1(w, b1, b2, x).unwrap().into_dyn(),
            a::gb2(w, b1, b2, x).unwrap().into_dyn(),
        ];
        for ((name, g32), g64) in g32.iter().zip(&g64) {
            let scale = g64.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for ((idx, &a), &b) in g32.indexed_iter().zip(g64.iter()) {
                assert!(
                    (a - b).abs() <= 1e-5 * scale + 1e-7,
                    "f32 d cost / d {name}{:?}: {a:e} vs f64 {b:e}",
                    ndarray::Dimension::slice(&idx)
                );
            }
        }
    }
}

mod model_form {
    use super::*;
    // The seed's model form, in f64: `p -= lr * grad(cost, p)` for three shared parameters. With
    // lr = 1 the step is the gradient; all three are taken at the old parameters (Theano's
    // simultaneous updates), so each must match finite differences of `loss` at the old values.
    tensor_fn! {
        pub struct Ae { w: f64[6, 4], b1: f64[4], b2: f64[6] }

        impl Ae {
            pub fn train(&mut self, x: f64[b, 6], lr: f64) -> f64 {
                let hidden = sigmoid(dot(x, w) + b1);
                let output = sigmoid(dot(hidden, w.T) + b2);
                let cost = mean(-sum(x * log(output) + (1 - x) * log(1 - output), axis = 1));
                w -= lr * grad(cost, w);
                b1 -= lr * grad(cost, b1);
                b2 -= lr * grad(cost, b2);
                cost
            }
            pub fn loss(&self, x: f64[b, 6]) -> f64 {
                let hidden = sigmoid(dot(x, w) + b1);
                let output = sigmoid(dot(hidden, w.T) + b2);
                mean(-sum(x * log(output) + (1 - x) * log(1 - output), axis = 1))
            }
        }
    }
    fn model(a: &[In]) -> Ae {
        Ae::new(
            v2(&a[0]).to_owned(),
            v1(&a[1]).to_owned(),
            v1(&a[2]).to_owned(),
        )
        .unwrap()
    }
    #[test]
    fn train_step_is_the_gradient() {
        let mut r = Rng::new(103);
        let ins = [
            r.uniform(&[6, 4], -1., 1.),
            r.uniform(&[4], -0.5, 0.5),
            r.uniform(&[6], -0.5, 0.5),
        ];
        let x = r.uniform(&[5, 6], 0.05, 0.95);
        let f = |a: &[In]| model(a).loss(v2(&x)).unwrap();
        let mut m = model(&ins);
        let c = m.train(v2(&x), 1.0).unwrap();
        assert_eq!(c, f(&ins), "train returns the cost before the step");
        let step = |k: usize, new: In| &ins[k] - &new;
        let gs = [
            ("w", 0, step(0, m.w.get_value().unwrap().into_dyn())),
            ("b1", 1, step(1, m.b1.get_value().unwrap().into_dyn())),
            ("b2", 2, step(2, m.b2.get_value().unwrap().into_dyn())),
        ];
        check("model train step", &ins, f, &gs);
    }
}

// ---------------------------------------------------------------------------------------------
// `#[strict]`: without the inexact rewrites (mul-zero, add-canonical, ...) the derived graphs
// keep more nodes, and must still be right.

mod strict {
    use super::*;
    tensor_fn! {
        #[strict]
        x: f64[n, m], y: f64[n, m], b: f64[m], c: f64[n, m];
        mix = sum((exp(x) + log(y) + sqrt(y) + log1p(y) + tanh(x) + sigmoid(x) + softplus(x) + x / y
                   + pow(x, 3) + pow(y, -1.5) + maximum(x, y) + minimum(x, b) + relu(x) + abs(x) - x * b) * c)
              + mean(max(x, axis = 1) * sum(y, axis = 1)) + sum(dot(dot(x, b), y) * b);
        gx = grad(mix, x);
        gy = grad(mix, y);
        gb = grad(mix, b);
        p0 = sum(pow(x, 0) * c) + sum(x * c);
        gp0 = grad(p0, x);
    }
    tensor_fn! {
        #[strict]
        w: f64[6, 4], b1: f64[4], b2: f64[6], xs: f64[3, 6];
        ae = mean(-sum(xs * log(sigmoid(dot(sigmoid(dot(xs, w) + b1), w.T) + b2))
                       + (1 - xs) * log(1 - sigmoid(dot(sigmoid(dot(xs, w) + b1), w.T) + b2)), axis = 1));
        ae_w = grad(ae, w);
        ae_b1 = grad(ae, b1);
        ae_b2 = grad(ae, b2);
    }
    #[test]
    fn op_mix() {
        let mut r = Rng::new(121);
        let x = r.signed(&[3, 4], 0.2, 1.5);
        let y = r.apart(&x, 0.1).mapv(f64::abs).mapv(|v| v.max(0.3));
        let bv = ndarray::arr1(&[-0.05, 0.15, 0.95, -0.95]).into_dyn();
        let ok = x.iter().zip(&y).all(|(a, b)| (a - b).abs() > 0.01)
            && x.iter()
                .all(|&xv| bv.iter().all(|&b| (xv - b).abs() > 1e-3));
        let ins = [x, y, bv, r.uniform(&[3, 4], -1., 1.)];
        assert!(ok, "test inputs tie");
        let f = |a: &[In]| mix(v2(&a[0]), v2(&a[1]), v1(&a[2]), v2(&a[3])).unwrap();
        let (x, y, b, c) = (v2(&ins[0]), v2(&ins[1]), v1(&ins[2]), v2(&ins[3]));
        check(
            "strict op mix",
            &ins,
            f,
            &[
                ("x", 0, gx(x, y, b, c).unwrap().dy()),
                ("y", 1, gy(x, y, b, c).unwrap().dy()),
                ("b", 2, gb(x, y, b, c).unwrap().dy()),
            ],
        );
    }
    #[test]
    fn pow0_at_zero() {
        // x^0 = 1 everywhere, so d/dx is 0 at x = 0 too (0 * x^-1 would be NaN there).
        let mut x = Rng::new(122).uniform(&[3, 4], -1., 1.);
        x[[1, 2]] = 0.0;
        let c = Rng::new(123).uniform(&[3, 4], -1., 1.);
        let g = gp0(v2(&x), v2(&c)).unwrap();
        assert_eq!(g, v2(&c), "{}", gp0::INFO.expr);
        check(
            "strict pow(x, 0)",
            &[x.clone(), c.clone()],
            |a: &[In]| p0(v2(&a[0]), v2(&a[1])).unwrap(),
            &[("x", 0, g.dy())],
        );
    }
    #[test]
    fn autoencoder() {
        let mut r = Rng::new(124);
        let ins = [
            r.uniform(&[6, 4], -1., 1.),
            r.uniform(&[4], -0.5, 0.5),
            r.uniform(&[6], -0.5, 0.5),
            r.uniform(&[3, 6], 0.05, 0.95),
        ];
        let f = |a: &[In]| ae(v2(&a[0]), v1(&a[1]), v1(&a[2]), v2(&a[3])).unwrap();
        let (w, b1, b2, xs) = (v2(&ins[0]), v1(&ins[1]), v1(&ins[2]), v2(&ins[3]));
        check(
            "strict autoencoder",
            &ins,
            f,
            &[
                ("w", 0, ae_w(w, b1, b2, xs).unwrap().dy()),
                ("b1", 1, ae_b1(w, b1, b2, xs).unwrap().dy()),
                ("b2", 2, ae_b2(w, b1, b2, xs).unwrap().dy()),
            ],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Second derivatives: `grad` of an expression holding `grad`, against central differences of the
// compiled first gradient. For a scalar F, grad(sum(grad(F, x) * v), y) is the gradient of
// y -> sum(grad(F, x)(y) * v), so the same checker applies.

mod second {
    use super::*;
    tensor_fn! {
        x: f64[n], c: f64[n], v: f64[n];
        g1 = grad(sum(pow(x, 3) * c), x);
        hvp = grad(sum(grad(sum(pow(x, 3) * c), x) * v), x);
    }
    #[test]
    fn hessian_vector_pow() {
        let mut r = Rng::new(111);
        let ins = [
            r.uniform(&[5], -1., 1.),
            r.uniform(&[5], -1., 1.),
            r.uniform(&[5], -1., 1.),
        ];
        let f = |a: &[In]| g1(v1(&a[0]), v1(&a[1])).unwrap().dot(&v1(&a[2]));
        let (x, c, v) = (v1(&ins[0]), v1(&ins[1]), v1(&ins[2]));
        check(
            "hvp pow(x, 3)",
            &ins,
            f,
            &[("x", 0, hvp(x, c, v).unwrap().dy())],
        );
    }
}

mod second_mv {
    use super::*;
    tensor_fn! {
        w: f64[n, m], x: f64[m], c: f64[n], v: f64[m];
        gx = grad(sum(tanh(dot(w, x)) * c), x);
        hxx = grad(sum(gx * v), x);
        hxw = grad(sum(gx * v), w);
    }
    #[test]
    fn hessian_vector_and_mixed() {
        let mut r = Rng::new(112);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[4], -1., 1.),
            r.uniform(&[3], -1., 1.),
            r.uniform(&[4], -1., 1.),
        ];
        let f = |a: &[In]| gx(v2(&a[0]), v1(&a[1]), v1(&a[2])).unwrap().dot(&v1(&a[3]));
        let (w, x, c, v) = (v2(&ins[0]), v1(&ins[1]), v1(&ins[2]), v1(&ins[3]));
        check(
            "hvp tanh(dot(w, x))",
            &ins,
            f,
            &[
                ("x", 1, hxx(w, x, c, v).unwrap().dy()),
                ("w", 0, hxw(w, x, c, v).unwrap().dy()),
            ],
        );
    }
}

mod second_mm {
    use super::*;
    tensor_fn! {
        a: f64[n, k], b: f64[k, n], c: f64[n, n], v: f64[n, k];
        ga = grad(sum(sigmoid(dot(a, b)) * c) + sum(softplus(a.T) * b), a);
        haa = grad(sum(ga * v), a);
        hab = grad(sum(ga * v), b);
    }
    #[test]
    fn hessian_vector_and_mixed() {
        let mut r = Rng::new(113);
        let ins = [
            r.uniform(&[3, 4], -1., 1.),
            r.uniform(&[4, 3], -1., 1.),
            r.uniform(&[3, 3], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |x: &[In]| (ga(v2(&x[0]), v2(&x[1]), v2(&x[2])).unwrap() * v2(&x[3])).sum();
        let (a, b, c, v) = (v2(&ins[0]), v2(&ins[1]), v2(&ins[2]), v2(&ins[3]));
        check(
            "hvp sigmoid(dot(a, b)), softplus(a.T)",
            &ins,
            f,
            &[
                ("a", 0, haa(a, b, c, v).unwrap().dy()),
                ("b", 1, hab(a, b, c, v).unwrap().dy()),
            ],
        );
    }
}

mod second_unary {
    use super::*;
    tensor_fn! {
        x: f64[n], y: f64[n], c: f64[n], v: f64[n];
        gx = grad(sum((exp(x) * log(y) + sqrt(y) * tanh(x) + x / y + log1p(y) * pow(x, -1)
                       + relu(x) * x + abs(x) * y + maximum(x, y) * x) * c), x);
        hxx = grad(sum(gx * v), x);
        hxy = grad(sum(gx * v), y);
    }
    #[test]
    fn hessian_vector_and_mixed() {
        let mut r = Rng::new(114);
        let x = r.signed(&[6], 0.3, 1.5);
        let y = r.uniform(&[6], 0.3, 2.);
        let ok = x.iter().zip(&y).all(|(a, b)| (a - b).abs() > 0.05);
        let ins = [x, y, r.uniform(&[6], -1., 1.), r.uniform(&[6], -1., 1.)];
        assert!(ok, "test inputs tie");
        let f = |a: &[In]| gx(v1(&a[0]), v1(&a[1]), v1(&a[2])).unwrap().dot(&v1(&a[3]));
        let (x, y, c, v) = (v1(&ins[0]), v1(&ins[1]), v1(&ins[2]), v1(&ins[3]));
        check(
            "hvp exp/log/sqrt/tanh/div/log1p/pow/relu/abs/maximum",
            &ins,
            f,
            &[
                ("x", 0, hxx(x, y, c, v).unwrap().dy()),
                ("y", 1, hxy(x, y, c, v).unwrap().dy()),
            ],
        );
    }
}

mod second_reduce {
    use super::*;
    tensor_fn! {
        x: f64[n, m], b: f64[m], cn: f64[n], v: f64[n, m];
        gx = grad(sum(pow(max(x, axis = 1), 2) * cn) + sum(pow(mean(tanh(x + b), axis = 0), 2) * b)
                  + sum(pow(sum(x, axis = 1), 3) * cn), x);
        hxx = grad(sum(gx * v), x);
        hxb = grad(sum(gx * v), b);
    }
    #[test]
    fn hessian_vector_and_mixed() {
        let mut r = Rng::new(115);
        let ins = [
            r.distinct(&[3, 4], 0.1),
            r.uniform(&[4], -1., 1.),
            r.uniform(&[3], -1., 1.),
            r.uniform(&[3, 4], -1., 1.),
        ];
        let f = |a: &[In]| (gx(v2(&a[0]), v1(&a[1]), v1(&a[2])).unwrap() * v2(&a[3])).sum();
        let (x, b, cn, v) = (v2(&ins[0]), v1(&ins[1]), v1(&ins[2]), v2(&ins[3]));
        check(
            "hvp max/mean/sum axis, broadcast",
            &ins,
            f,
            &[
                ("x", 0, hxx(x, b, cn, v).unwrap().dy()),
                ("b", 1, hxb(x, b, cn, v).unwrap().dy()),
            ],
        );
    }
}

mod second_autoencoder {
    use super::*;
    tensor_fn! {
        w: f64[6, 4], b1: f64[4], b2: f64[6], x: f64[3, 6], v: f64[6, 4];
        gw = grad(mean(-sum(x * log(sigmoid(dot(sigmoid(dot(x, w) + b1), w.T) + b2))
                            + (1 - x) * log(1 - sigmoid(dot(sigmoid(dot(x, w) + b1), w.T) + b2)), axis = 1)), w);
        hww = grad(sum(gw * v), w);
        hwb1 = grad(sum(gw * v), b1);
    }
    #[test]
    fn hessian_vector() {
        let mut r = Rng::new(116);
        let ins = [
            r.uniform(&[6, 4], -1., 1.),
            r.uniform(&[4], -0.5, 0.5),
            r.uniform(&[6], -0.5, 0.5),
            r.uniform(&[3, 6], 0.05, 0.95),
            r.uniform(&[6, 4], -1., 1.),
        ];
        let f =
            |a: &[In]| (gw(v2(&a[0]), v1(&a[1]), v1(&a[2]), v2(&a[3])).unwrap() * v2(&a[4])).sum();
        let (w, b1, b2, x, v) = (
            v2(&ins[0]),
            v1(&ins[1]),
            v1(&ins[2]),
            v2(&ins[3]),
            v2(&ins[4]),
        );
        check(
            "hvp autoencoder",
            &ins,
            f,
            &[
                ("w", 0, hww(w, b1, b2, x, v).unwrap().dy()),
                ("b1", 1, hwb1(w, b1, b2, x, v).unwrap().dy()),
            ],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The checker itself, and the count.

// ---------------------------------------------------------------------------------------------
// Classifier functions: softmax, log_softmax, picking, one-hot, comparisons, argmax, where.

fn labels(r: &mut Rng, n: usize, k: usize) -> ndarray::Array1<i64> {
    (0..n).map(|_| (r.unit() * k as f64) as i64).collect()
}

mod softmax {
    use super::*;
    tensor_fn! {
        x: f64[n, m], v: f64[m], c: f64[n, m], cm: f64[m];
        rows = sum(softmax(x) * c);
        g_rows = grad(rows, x);
        cols = sum(softmax(x, axis = 0) * c);
        g_cols = grad(cols, x);
        vec = sum(softmax(v) * cm);
        g_vec = grad(vec, v);
    }
    #[test]
    fn over_rows_columns_and_a_vector() {
        let mut r = Rng::new(301);
        let ins = [r.uniform(&[3, 4], -2., 2.), r.uniform(&[3, 4], -1., 1.)];
        let (x, c) = (v2(&ins[0]), v2(&ins[1]));
        check(
            "softmax",
            &ins,
            |a: &[In]| rows(v2(&a[0]), v2(&a[1])).unwrap(),
            &[("x", 0, g_rows(x, c).unwrap().dy())],
        );
        check(
            "softmax axis=0",
            &ins,
            |a: &[In]| cols(v2(&a[0]), v2(&a[1])).unwrap(),
            &[("x", 0, g_cols(x, c).unwrap().dy())],
        );
        let ins = [r.uniform(&[5], -2., 2.), r.uniform(&[5], -1., 1.)];
        check(
            "softmax vector",
            &ins,
            |a: &[In]| vec(v1(&a[0]), v1(&a[1])).unwrap(),
            &[("v", 0, g_vec(v1(&ins[0]), v1(&ins[1])).unwrap().dy())],
        );
    }
}

mod log_softmax {
    use super::*;
    tensor_fn! {
        x: f64[n, m], v: f64[m], c: f64[n, m], cm: f64[m];
        rows = sum(log_softmax(x) * c);
        g_rows = grad(rows, x);
        cols = sum(tanh(log_softmax(x, axis = 0)) * c);
        g_cols = grad(cols, x);
        vec = sum(log_softmax(v) * cm);
        g_vec = grad(vec, v);
        // Written out by hand: the compiler rewrites it to log_softmax.
        by_hand = sum(log(softmax(x)) * c);
        g_by_hand = grad(by_hand, x);
    }
    #[test]
    fn over_rows_columns_and_a_vector() {
        let mut r = Rng::new(311);
        let ins = [r.uniform(&[3, 4], -2., 2.), r.uniform(&[3, 4], -1., 1.)];
        let (x, c) = (v2(&ins[0]), v2(&ins[1]));
        check(
            "log_softmax",
            &ins,
            |a: &[In]| rows(v2(&a[0]), v2(&a[1])).unwrap(),
            &[("x", 0, g_rows(x, c).unwrap().dy())],
        );
        check(
            "log_softmax axis=0",
            &ins,
            |a: &[In]| cols(v2(&a[0]), v2(&a[1])).unwrap(),
            &[("x", 0, g_cols(x, c).unwrap().dy())],
        );
        check(
            "log(softmax)",
            &ins,
            |a: &[In]| by_hand(v2(&a[0]), v2(&a[1])).unwrap(),
            &[("x", 0, g_by_hand(x, c).unwrap().dy())],
        );
        let ins = [r.uniform(&[5], -2., 2.), r.uniform(&[5], -1., 1.)];
        check(
            "log_softmax vector",
            &ins,
            |a: &[In]| vec(v1(&a[0]), v1(&a[1])).unwrap(),
            &[("v", 0, g_vec(v1(&ins[0]), v1(&ins[1])).unwrap().dy())],
        );
    }
}

/// The tutorials' negative log-likelihood, `-mean(log_softmax(z)[arange(n), y])`, through a
/// linear layer: gradients in the weights and the bias.
mod arange {
    use super::*;
    tensor_fn! {
        x: f64[n, m], w: f64[m, k], b: f64[k], y: i64[n];
        nll = -mean(log_softmax(dot(x, w) + b)[arange(n), y]);
        gw = grad(nll, w);
        gb = grad(nll, b);
        // The same picked from probabilities, as the tutorials first write it.
        nll_p = -mean(log(softmax(dot(x, w) + b))[arange(n), y]);
        gw_p = grad(nll_p, w);
    }
    #[test]
    fn picking_loss() {
        let mut r = Rng::new(321);
        let y = labels(&mut r, 6, 3);
        let ins = [
            r.uniform(&[6, 4], -1., 1.),
            r.uniform(&[4, 3], -1., 1.),
            r.uniform(&[3], -1., 1.),
        ];
        let (x, w, b) = (v2(&ins[0]), v2(&ins[1]), v1(&ins[2]));
        check(
            "x[arange(n), y]",
            &ins,
            |a: &[In]| nll(v2(&a[0]), v2(&a[1]), v1(&a[2]), y.view()).unwrap(),
            &[
                ("w", 1, gw(x, w, b, y.view()).unwrap().dy()),
                ("b", 2, gb(x, w, b, y.view()).unwrap().dy()),
            ],
        );
        check(
            "log(softmax)[arange(n), y]",
            &ins,
            |a: &[In]| nll_p(v2(&a[0]), v2(&a[1]), v1(&a[2]), y.view()).unwrap(),
            &[("w", 1, gw_p(x, w, b, y.view()).unwrap().dy())],
        );
    }
}

mod onehot {
    use super::*;
    tensor_fn! {
        z: f64[n, k], y: i64[n], c: f64[n, k];
        xent = -sum(onehot(y, k) * log_softmax(z) * c);
        g = grad(xent, z);
    }
    #[test]
    fn weighted_cross_entropy() {
        let mut r = Rng::new(331);
        let y = labels(&mut r, 5, 4);
        let ins = [r.uniform(&[5, 4], -2., 2.), r.uniform(&[5, 4], 0.5, 1.5)];
        let (z, c) = (v2(&ins[0]), v2(&ins[1]));
        check(
            "onehot",
            &ins,
            |a: &[In]| xent(v2(&a[0]), y.view(), v2(&a[1])).unwrap(),
            &[("z", 0, g(z, y.view(), c).unwrap().dy())],
        );
    }
}

/// A mask from a comparison passes no gradient itself; the smooth factor beside it does.
mod comparisons {
    use super::*;
    tensor_fn! {
        x: f64[n], y: f64[n], c: f64[n];
        c_eq = sum(x * eq(x, y) * c + x * c);
        g_eq = grad(c_eq, x);
        c_neq = sum(tanh(x) * neq(x, y) * c);
        g_neq = grad(c_neq, x);
        c_lt = sum(x * x * lt(x, y) * c);
        g_lt = grad(c_lt, x);
        c_le = sum(exp(x) * le(x, y) * c);
        g_le = grad(c_le, x);
        c_gt = sum(x * gt(y, x) * c);
        g_gt = grad(c_gt, x);
        c_ge = sum(sigmoid(x) * ge(y, x) * c);
        g_ge = grad(c_ge, x);
    }
    type V<'a> = ArrayView1<'a, f64>;
    type Cost = fn(V, V, V) -> Result<f64, tensor_fn::Error>;
    type Grad = fn(V, V, V) -> Result<ndarray::Array1<f64>, tensor_fn::Error>;
    fn run(name: &str, seed: u64, cost: Cost, grad: Grad) {
        let mut r = Rng::new(seed);
        // Away from y, so no difference step crosses a comparison; for `eq`, y equals x at
        // every third entry so the mask has ones.
        let x = r.signed(&[9], 0.2, 1.0);
        let mut y = r.apart(&x, 0.05);
        if name == "eq" {
            for i in (0..9).step_by(3) {
                y[[i]] = x[[i]];
            }
        }
        let ins = [x, y, r.uniform(&[9], -1., 1.)];
        let (xv, yv, cv) = (v1(&ins[0]), v1(&ins[1]), v1(&ins[2]));
        let g = grad(xv, yv, cv).unwrap().dy();
        if name == "eq" {
            // x moves off y under a difference step, so eq is checked from its value.
            let want = ndarray::Zip::from(&ins[0])
                .and(&ins[1])
                .and(&ins[2])
                .map_collect(|&x, &y, &c| if x == y { 2.0 * c } else { c });
            assert_eq!(g, want.into_dyn(), "eq");
            return;
        }
        check(
            name,
            &ins,
            |a: &[In]| cost(v1(&a[0]), v1(&a[1]), v1(&a[2])).unwrap(),
            &[("x", 0, g)],
        );
    }
    #[test]
    fn eq() {
        run("eq", 341, c_eq, g_eq);
    }
    #[test]
    fn neq() {
        run("neq", 342, c_neq, g_neq);
    }
    #[test]
    fn lt() {
        run("lt", 343, c_lt, g_lt);
    }
    #[test]
    fn le() {
        run("le", 344, c_le, g_le);
    }
    #[test]
    fn gt() {
        run("gt", 345, c_gt, g_gt);
    }
    #[test]
    fn ge() {
        run("ge", 346, c_ge, g_ge);
    }
}

/// `sum(x * onehot(argmax(x)))` is the row maximum: its gradient is the one-hot of the argmax.
mod argmax {
    use super::*;
    tensor_fn! {
        x: f64[n, k], c: f64[n];
        top = sum(sum(x * onehot(argmax(x, axis = 1), k), axis = 1) * c);
        g = grad(top, x);
    }
    #[test]
    fn picks_the_maximum() {
        let mut r = Rng::new(351);
        let ins = [r.distinct(&[4, 5], 0.1), r.uniform(&[4], -1., 1.)];
        let (x, c) = (v2(&ins[0]), v1(&ins[1]));
        check(
            "argmax",
            &ins,
            |a: &[In]| top(v2(&a[0]), v1(&a[1])).unwrap(),
            &[("x", 0, g(x, c).unwrap().dy())],
        );
    }
}

mod r#where {
    use super::*;
    tensor_fn! {
        x: f64[n], y: f64[n], c: f64[n];
        // A hand-written relu, and a select between two smooth branches.
        relu_ = sum(where(gt(x, 0), x, 0) * c);
        g_relu = grad(relu_, x);
        both = sum(where(lt(x, y), tanh(x), x * y) * c);
        g_x = grad(both, x);
        g_y = grad(both, y);
    }
    #[test]
    fn both_branches() {
        let mut r = Rng::new(361);
        let x = r.signed(&[8], 0.2, 1.0);
        let y = r.apart(&x, 0.1);
        let ins = [x, y, r.uniform(&[8], -1., 1.)];
        let (x, y, c) = (v1(&ins[0]), v1(&ins[1]), v1(&ins[2]));
        check(
            "where relu",
            &ins,
            |a: &[In]| relu_(v1(&a[0]), v1(&a[2])).unwrap(),
            &[("x", 0, g_relu(x, c).unwrap().dy())],
        );
        check(
            "where",
            &ins,
            |a: &[In]| both(v1(&a[0]), v1(&a[1]), v1(&a[2])).unwrap(),
            &[
                ("x", 0, g_x(x, y, c).unwrap().dy()),
                ("y", 1, g_y(x, y, c).unwrap().dy()),
            ],
        );
    }
}

/// `keepdims = true` keeps the reduced axis as 1, so the result broadcasts back.
mod keepdims {
    use super::*;
    tensor_fn! {
        x: f64[n, m], c: f64[n, m];
        centred = sum(tanh(x - mean(x, axis = 1, keepdims = true)) * c);
        g_centred = grad(centred, x);
        shifted = sum(exp(x - max(x, axis = 0, keepdims = true)) * c)
            + sum(x / sum(x * x, axis = 1, keepdims = true) * c);
        g_shifted = grad(shifted, x);
    }
    #[test]
    fn broadcast_back() {
        let mut r = Rng::new(371);
        let ins = [r.distinct(&[3, 4], 0.2), r.uniform(&[3, 4], -1., 1.)];
        let (x, c) = (v2(&ins[0]), v2(&ins[1]));
        check(
            "mean keepdims",
            &ins,
            |a: &[In]| centred(v2(&a[0]), v2(&a[1])).unwrap(),
            &[("x", 0, g_centred(x, c).unwrap().dy())],
        );
        check(
            "max/sum keepdims",
            &ins,
            |a: &[In]| shifted(v2(&a[0]), v2(&a[1])).unwrap(),
            &[("x", 0, g_shifted(x, c).unwrap().dy())],
        );
    }
}

/// Random draws are constants to `grad`: with the model's stream put back before every
/// evaluation, the cost is a smooth function of the weights under one fixed draw.
mod random_ops {
    use super::*;
    tensor_fn! {
        pub struct Noise { w: f64[m] }
        impl Noise {
            pub fn c_bin(&self, x: f64[n, m]) -> f64 {
                sum(tanh(x * w * binomial(shape(x), 0.6)))
            }
            pub fn g_bin(&self, x: f64[n, m]) -> f64[m] {
                grad(sum(tanh(x * w * binomial(shape(x), 0.6))), w)
            }
            pub fn c_uni(&self, x: f64[n, m]) -> f64 {
                sum(sigmoid(x * (w + uniform(shape(x), -0.5, 0.5))) * uniform([m], 0, 2))
            }
            pub fn g_uni(&self, x: f64[n, m]) -> f64[m] {
                grad(sum(sigmoid(x * (w + uniform(shape(x), -0.5, 0.5))) * uniform([m], 0, 2)), w)
            }
            pub fn c_nor(&self, x: f64[n, m]) -> f64 {
                sum(pow(x * w + normal(shape(x), 0, 0.3), 2))
            }
            pub fn g_nor(&self, x: f64[n, m]) -> f64[m] {
                grad(sum(pow(x * w + normal(shape(x), 0, 0.3), 2)), w)
            }
        }
    }
    type Cost = fn(&Noise, ArrayView2<f64>) -> Result<f64, tensor_fn::Error>;
    type Grad = fn(&Noise, ArrayView2<f64>) -> Result<ndarray::Array1<f64>, tensor_fn::Error>;
    fn run(name: &str, seed: u64, cost: Cost, grad: Grad) {
        let mut r = Rng::new(seed);
        let ins = [r.uniform(&[4], -1., 1.), r.uniform(&[3, 4], -1., 1.)];
        let at = |a: &[In]| {
            let mut m = Noise::new(v1(&a[0]).to_owned()).unwrap();
            m.set_random_stream(seed, 3);
            m
        };
        let g = grad(&at(&ins), v2(&ins[1])).unwrap().dy();
        check(
            name,
            &ins,
            |a: &[In]| cost(&at(a), v2(&a[1])).unwrap(),
            &[("w", 0, g)],
        );
    }
    #[test]
    fn binomial() {
        run(
            "binomial",
            381,
            |m: &Noise, x: ArrayView2<f64>| m.c_bin(x),
            |m: &Noise, x: ArrayView2<f64>| m.g_bin(x),
        );
    }
    #[test]
    fn uniform() {
        run(
            "uniform",
            382,
            |m: &Noise, x: ArrayView2<f64>| m.c_uni(x),
            |m: &Noise, x: ArrayView2<f64>| m.g_uni(x),
        );
    }
    #[test]
    fn normal() {
        run(
            "normal",
            383,
            |m: &Noise, x: ArrayView2<f64>| m.c_nor(x),
            |m: &Noise, x: ArrayView2<f64>| m.g_nor(x),
        );
    }
}

/// The tutorial models' losses, as their examples write them (in f64, small sizes): the MLP's
/// NLL with an L2 penalty, and the denoising autoencoder's cross-entropy under a fixed mask.
mod tutorial_losses {
    use super::*;
    tensor_fn! {
        pub struct Mlp { w1: f64[m, h], b1: f64[h], w2: f64[h, k], b2: f64[k] }
        impl Mlp {
            pub fn cost(&self, x: f64[n, m], y: i64[n]) -> f64 {
                let hidden = tanh(dot(x, w1) + b1);
                -mean(log_softmax(dot(hidden, w2) + b2)[arange(n), y]) + 0.01 * (sum(w1 * w1) + sum(w2 * w2))
            }
            pub fn grads(&self, x: f64[n, m], y: i64[n]) -> (f64[m, h], f64[h], f64[h, k], f64[k]) {
                let hidden = tanh(dot(x, w1) + b1);
                let cost = -mean(log_softmax(dot(hidden, w2) + b2)[arange(n), y]) + 0.01 * (sum(w1 * w1) + sum(w2 * w2));
                (grad(cost, w1), grad(cost, b1), grad(cost, w2), grad(cost, b2))
            }
        }
    }
    tensor_fn! {
        pub struct Da { w: f64[m, h], b: f64[h], c: f64[m] }
        impl Da {
            pub fn cost(&self, x: f64[n, m]) -> f64 {
                let y = sigmoid(dot(binomial(shape(x), 0.7) * x, w) + b);
                let z = sigmoid(dot(y, w.T) + c);
                mean(-sum(x * log(z) + (1 - x) * log(1 - z), axis = 1))
            }
            pub fn grads(&self, x: f64[n, m]) -> (f64[m, h], f64[h], f64[m]) {
                let y = sigmoid(dot(binomial(shape(x), 0.7) * x, w) + b);
                let z = sigmoid(dot(y, w.T) + c);
                let cost = mean(-sum(x * log(z) + (1 - x) * log(1 - z), axis = 1));
                (grad(cost, w), grad(cost, b), grad(cost, c))
            }
        }
    }
    #[test]
    fn mlp() {
        let mut r = Rng::new(391);
        let y = labels(&mut r, 5, 3);
        let ins = [
            r.uniform(&[6, 4], -1., 1.),
            r.uniform(&[4], -0.5, 0.5),
            r.uniform(&[4, 3], -1., 1.),
            r.uniform(&[3], -0.5, 0.5),
            r.uniform(&[5, 6], 0., 1.),
        ];
        let net = |a: &[In]| {
            Mlp::new(
                v2(&a[0]).to_owned(),
                v1(&a[1]).to_owned(),
                v2(&a[2]).to_owned(),
                v1(&a[3]).to_owned(),
            )
            .unwrap()
        };
        let (g1, gb1, g2, gb2) = net(&ins).grads(v2(&ins[4]), y.view()).unwrap();
        check(
            "mlp loss",
            &ins,
            |a: &[In]| net(a).cost(v2(&a[4]), y.view()).unwrap(),
            &[
                ("w1", 0, g1.dy()),
                ("b1", 1, gb1.dy()),
                ("w2", 2, g2.dy()),
                ("b2", 3, gb2.dy()),
            ],
        );
    }
    #[test]
    fn da() {
        let mut r = Rng::new(392);
        let ins = [
            r.uniform(&[6, 4], -1., 1.),
            r.uniform(&[4], -0.5, 0.5),
            r.uniform(&[6], -0.5, 0.5),
            r.uniform(&[5, 6], 0.05, 0.95),
        ];
        let da = |a: &[In]| {
            let mut d = Da::new(
                v2(&a[0]).to_owned(),
                v1(&a[1]).to_owned(),
                v1(&a[2]).to_owned(),
            )
            .unwrap();
            d.set_random_stream(392, 0);
            d
        };
        let (gw, gb, gc) = da(&ins).grads(v2(&ins[3])).unwrap();
        check(
            "dA loss",
            &ins,
            |a: &[In]| da(a).cost(v2(&a[3])).unwrap(),
            &[("w", 0, gw.dy()), ("b", 1, gb.dy()), ("c", 2, gc.dy())],
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Images: rank-4 tensors, views, convolution and pooling, on odd sizes (7x9 images, 3x2
// filters, 3 channels).

fn v4(a: &In) -> ndarray::ArrayView4<'_, f64> {
    a.view().into_dimensionality::<ndarray::Ix4>().unwrap()
}

mod conv2d {
    use super::*;
    tensor_fn! {
        pub struct Conv { w: f64[2, 3, 3, 2], b: f64[2] }
        impl Conv {
            pub fn cost(&self, x: f64[n, 3, 7, 9], c: f64[n, 2, 5, 8]) -> f64 {
                sum(tanh(conv2d(x, w) + reshape(b, [1, 2, 1, 1])) * c)
            }
            pub fn grads(&self, x: f64[n, 3, 7, 9], c: f64[n, 2, 5, 8]) -> (f64[n, 3, 7, 9], f64[2, 3, 3, 2], f64[2]) {
                let cost = sum(tanh(conv2d(x, w) + reshape(b, [1, 2, 1, 1])) * c);
                (grad(cost, x), grad(cost, w), grad(cost, b))
            }
            pub fn cost_xcorr(&self, x: f64[n, 3, 7, 9], c: f64[n, 2, 5, 8]) -> f64 {
                sum(tanh(conv2d(x, w, filter_flip = false)) * c)
            }
            pub fn grads_xcorr(&self, x: f64[n, 3, 7, 9], c: f64[n, 2, 5, 8]) -> (f64[n, 3, 7, 9], f64[2, 3, 3, 2]) {
                let cost = sum(tanh(conv2d(x, w, filter_flip = false)) * c);
                (grad(cost, x), grad(cost, w))
            }
        }
    }
    fn inputs(seed: u64) -> [In; 4] {
        let mut r = Rng::new(seed);
        [
            r.uniform(&[2, 3, 3, 2], -0.5, 0.5),
            r.uniform(&[2], -0.5, 0.5),
            r.uniform(&[2, 3, 7, 9], -1., 1.),
            r.uniform(&[2, 2, 5, 8], -1., 1.),
        ]
    }
    fn net(a: &[In]) -> Conv {
        Conv::new(v4(&a[0]).to_owned(), v1(&a[1]).to_owned()).unwrap()
    }
    #[test]
    fn flipped() {
        let ins = inputs(401);
        let (gx, gw, gb) = net(&ins).grads(v4(&ins[2]), v4(&ins[3])).unwrap();
        check(
            "conv2d",
            &ins,
            |a: &[In]| net(a).cost(v4(&a[2]), v4(&a[3])).unwrap(),
            &[("w", 0, gw.dy()), ("b", 1, gb.dy()), ("x", 2, gx.dy())],
        );
    }
    #[test]
    fn cross_correlation() {
        let ins = inputs(402);
        let (gx, gw) = net(&ins).grads_xcorr(v4(&ins[2]), v4(&ins[3])).unwrap();
        check(
            "conv2d filter_flip = false",
            &ins,
            |a: &[In]| net(a).cost_xcorr(v4(&a[2]), v4(&a[3])).unwrap(),
            &[("w", 0, gw.dy()), ("x", 2, gx.dy())],
        );
    }
}

mod max_pool {
    use super::*;
    tensor_fn! {
        x: f64[n, 3, 7, 9], c: f64[n, 3, 3, 4], c32: f64[n, 3, 2, 4];
        p22 = sum(tanh(max_pool(x, [2, 2])) * c);
        g22 = grad(p22, x);
        p32 = sum(max_pool(x * x, [3, 2]) * c32);
        g32 = grad(p32, x);
    }
    #[test]
    fn windows_2x2_ignoring_the_border() {
        let mut r = Rng::new(411);
        let ins = [
            r.distinct(&[2, 3, 7, 9], 0.01),
            r.uniform(&[2, 3, 3, 4], -1., 1.),
        ];
        let g = g22(v4(&ins[0]), v4(&ins[1])).unwrap();
        // The last row and column fill no window: no gradient reaches them.
        assert!(g
            .slice(ndarray::s![.., .., 6, ..])
            .iter()
            .all(|v| *v == 0.0));
        assert!(g
            .slice(ndarray::s![.., .., .., 8])
            .iter()
            .all(|v| *v == 0.0));
        check(
            "max_pool [2, 2]",
            &ins,
            |a: &[In]| p22(v4(&a[0]), v4(&a[1])).unwrap(),
            &[("x", 0, g.dy())],
        );
    }
    #[test]
    fn windows_3x2() {
        let mut r = Rng::new(412);
        let ins = [
            r.distinct(&[2, 3, 7, 9], 0.01),
            r.uniform(&[2, 3, 2, 4], -1., 1.),
        ];
        let g = g32(v4(&ins[0]), v4(&ins[1])).unwrap();
        check(
            "max_pool [3, 2]",
            &ins,
            |a: &[In]| p32(v4(&a[0]), v4(&a[1])).unwrap(),
            &[("x", 0, g.dy())],
        );
    }
}

mod reshape {
    use super::*;
    tensor_fn! {
        x: f64[n, 12], c: f64[n, 3, 2, 2];
        imgs = sum(tanh(reshape(x, [n, 3, 2, 2])) * c) + sum(pow(sum(reshape(x, [n, 3, 2, 2]), axis = 0), 2));
        g_imgs = grad(imgs, x);
    }
    tensor_fn! {
        m: f64[4, 6], cm: f64[3, 8];
        mat = sum(tanh(reshape(m, [3, 8])) * cm);
        g_mat = grad(mat, m);
    }
    tensor_fn! {
        x: f64[n, 12], c: f64[n, 3, 2, 2], ck: f64[3];
        bias = sum(sum(sum(tanh(reshape(x, [n, 3, 2, 2]) * c), axis = 0), axis = 2) * reshape(ck, [3, 1]));
        g_bias = grad(bias, x);
    }
    #[test]
    fn images() {
        let mut r = Rng::new(421);
        let ins = [
            r.uniform(&[2, 12], -1., 1.),
            r.uniform(&[2, 3, 2, 2], -1., 1.),
        ];
        let g = g_imgs(v2(&ins[0]), v4(&ins[1])).unwrap();
        check(
            "reshape to images",
            &ins,
            |a: &[In]| imgs(v2(&a[0]), v4(&a[1])).unwrap(),
            &[("x", 0, g.dy())],
        );
    }
    #[test]
    fn matrices() {
        let mut r = Rng::new(422);
        let ins = [r.uniform(&[4, 6], -1., 1.), r.uniform(&[3, 8], -1., 1.)];
        let g = g_mat(v2(&ins[0]), v2(&ins[1])).unwrap();
        check(
            "reshape of a matrix",
            &ins,
            |a: &[In]| mat(v2(&a[0]), v2(&a[1])).unwrap(),
            &[("m", 0, g.dy())],
        );
    }
    #[test]
    fn sums_over_image_axes() {
        let mut r = Rng::new(423);
        let ins = [
            r.uniform(&[2, 12], -1., 1.),
            r.uniform(&[2, 3, 2, 2], -1., 1.),
            r.uniform(&[3], -1., 1.),
        ];
        let g = g_bias(v2(&ins[0]), v4(&ins[1]), v1(&ins[2])).unwrap();
        check(
            "sums over image axes",
            &ins,
            |a: &[In]| bias(v2(&a[0]), v4(&a[1]), v1(&a[2])).unwrap(),
            &[("x", 0, g.dy())],
        );
    }
}

mod flatten {
    use super::*;
    tensor_fn! {
        x: f64[n, 3, 2, 2], w: f64[12, 5], c: f64[n, 5];
        cost = sum(tanh(dot(flatten(x, 2), w)) * c);
        gx = grad(cost, x);
        gw = grad(cost, w);
    }
    tensor_fn! {
        v: f64[2, 3, 4];
        rank3 = sum(pow(flatten(v, 1), 3));
        gv = grad(rank3, v);
    }
    #[test]
    fn into_rows() {
        let mut r = Rng::new(431);
        let ins = [
            r.uniform(&[2, 3, 2, 2], -1., 1.),
            r.uniform(&[12, 5], -1., 1.),
            r.uniform(&[2, 5], -1., 1.),
        ];
        let (x, w, c) = (v4(&ins[0]), v2(&ins[1]), v2(&ins[2]));
        check(
            "flatten(x, 2)",
            &ins,
            |a: &[In]| cost(v4(&a[0]), v2(&a[1]), v2(&a[2])).unwrap(),
            &[
                ("x", 0, gx(x, w, c).unwrap().dy()),
                ("w", 1, gw(x, w, c).unwrap().dy()),
            ],
        );
    }
    #[test]
    fn into_one_vector() {
        let mut r = Rng::new(432);
        let ins = [r.uniform(&[2, 3, 4], -1., 1.)];
        let v = ins[0].view().into_dimensionality::<ndarray::Ix3>().unwrap();
        check(
            "flatten(v, 1)",
            &ins,
            |a: &[In]| rank3(a[0].view().into_dimensionality::<ndarray::Ix3>().unwrap()).unwrap(),
            &[("v", 0, gv(v).unwrap().dy())],
        );
    }
}

/// LeNet's loss in small: two conv/pool/tanh layers with channel biases, a hidden layer and a
/// softmax output, every parameter's gradient.
mod lenet_loss {
    use super::*;
    tensor_fn! {
        pub struct LeNet {
            w0: f64[3, 1, 3, 2], b0: f64[3], w1: f64[4, 3, 1, 2], b1: f64[4],
            w2: f64[4, 5], b2: f64[5], w3: f64[5, 3], b3: f64[3]
        }
        impl LeNet {
            pub fn cost(&self, x: f64[n, 63], y: i64[n]) -> f64 {
                let h0 = tanh(max_pool(conv2d(reshape(x, [n, 1, 7, 9]), w0), [2, 2]) + reshape(b0, [1, 3, 1, 1]));
                let h1 = tanh(max_pool(conv2d(h0, w1), [2, 2]) + reshape(b1, [1, 4, 1, 1]));
                let h2 = tanh(dot(flatten(h1, 2), w2) + b2);
                -mean(log_softmax(dot(h2, w3) + b3)[arange(n), y])
            }
            pub fn grads(&self, x: f64[n, 63], y: i64[n]) -> (f64[3, 1, 3, 2], f64[3], f64[4, 3, 1, 2], f64[4], f64[4, 5], f64[5], f64[5, 3], f64[3]) {
                let h0 = tanh(max_pool(conv2d(reshape(x, [n, 1, 7, 9]), w0), [2, 2]) + reshape(b0, [1, 3, 1, 1]));
                let h1 = tanh(max_pool(conv2d(h0, w1), [2, 2]) + reshape(b1, [1, 4, 1, 1]));
                let h2 = tanh(dot(flatten(h1, 2), w2) + b2);
                let cost = -mean(log_softmax(dot(h2, w3) + b3)[arange(n), y]);
                (grad(cost, w0), grad(cost, b0), grad(cost, w1), grad(cost, b1), grad(cost, w2), grad(cost, b2), grad(cost, w3), grad(cost, b3))
            }
        }
    }
    #[test]
    fn every_parameter() {
        let mut r = Rng::new(441);
        let y = labels(&mut r, 4, 3);
        let ins = [
            r.uniform(&[3, 1, 3, 2], -1., 1.),
            r.uniform(&[3], -0.5, 0.5),
            r.uniform(&[4, 3, 1, 2], -1., 1.),
            r.uniform(&[4], -0.5, 0.5),
            r.uniform(&[4, 5], -1., 1.),
            r.uniform(&[5], -0.5, 0.5),
            r.uniform(&[5, 3], -1., 1.),
            r.uniform(&[3], -0.5, 0.5),
            r.distinct(&[4, 63], 0.01),
        ];
        let net = |a: &[In]| {
            LeNet::new(
                v4(&a[0]).to_owned(),
                v1(&a[1]).to_owned(),
                v4(&a[2]).to_owned(),
                v1(&a[3]).to_owned(),
                v2(&a[4]).to_owned(),
                v1(&a[5]).to_owned(),
                v2(&a[6]).to_owned(),
                v1(&a[7]).to_owned(),
            )
            .unwrap()
        };
        let g = net(&ins).grads(v2(&ins[8]), y.view()).unwrap();
        check(
            "LeNet loss",
            &ins,
            |a: &[In]| net(a).cost(v2(&a[8]), y.view()).unwrap(),
            &[
                ("w0", 0, g.0.dy()),
                ("b0", 1, g.1.dy()),
                ("w1", 2, g.2.dy()),
                ("b1", 3, g.3.dy()),
                ("w2", 4, g.4.dy()),
                ("b2", 5, g.5.dy()),
                ("w3", 6, g.6.dy()),
                ("b3", 7, g.7.dy()),
            ],
        );
    }
}

#[test]
fn checker_reports_first_mismatch() {
    let ins = [ndarray::arr1(&[1.0, 2.0, 3.0]).into_dyn()];
    // d/dx sum(x^2) = 2x; entries 1 and 2 are wrong.
    let wrong = ndarray::arr1(&[2.0, 5.0, 7.0]).into_dyn();
    let r = std::panic::catch_unwind(|| {
        check(
            "square",
            &ins,
            |a: &[In]| a[0].mapv(|v| v * v).sum(),
            &[("x", 0, wrong.clone())],
        );
    });
    let msg = *r
        .expect_err("a wrong gradient passed")
        .downcast::<String>()
        .unwrap();
    assert!(msg.starts_with("square: d cost / d x is wrong; first mismatch at x[1]: compiled 5e0 vs finite difference 4"), "{msg}");
    assert!(msg.contains("2 of 3 entries mismatch"), "{msg}");
    check(
        "square",
        &ins,
        |a: &[In]| a[0].mapv(|v| v * v).sum(),
        &[("x", 0, ins[0].mapv(|v| 2.0 * v))],
    );
}

/// The forms this file covers besides the builtin functions; `coverage` checks that each, and
/// every function of the language's table, has a module or test above.
const FORMS: &[&str] = &[
    "add",
    "sub",
    "mul",
    "div",
    "neg",
    "transpose",
    "broadcast",
    "broadcast_column",
    "square",
    "disconnected",
    "scalar",
    "composite",
    "autoencoder",
    "f32_autoencoder",
    "model_form",
    "strict",
    "second",
    "keepdims",
    "tutorial_losses",
];

#[test]
fn coverage() {
    let src = include_str!("grad_check.rs");
    let has = |o: &str| {
        src.contains(&format!("mod {o} {{"))
            || src.contains(&format!("mod r#{o} {{"))
            || src.contains(&format!("fn {o}() {{"))
    };
    // Every function of the language (`grad` is what every test here calls).
    let covered: Vec<&str> = FORMS
        .iter()
        .copied()
        .chain(tensor_fn::kernels::op::BUILTINS.iter().map(|b| b.name))
        .filter(|&name| name != "grad")
        .collect();
    let missing: Vec<&&str> = covered.iter().filter(|o| !has(o)).collect();
    assert!(missing.is_empty(), "no test for {missing:?}");
    // Minus the literals on these two lines.
    let tests = src.matches("#[test]").count() - 1;
    let ignored = src.matches("#[ignore").count() - 1;
    println!(
        "grad_check: {} ops/forms ({}), {} tests ({} ignored)",
        covered.len(),
        covered.join(" "),
        tests,
        ignored
    );
}
