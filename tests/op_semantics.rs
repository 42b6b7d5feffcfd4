//! The code `tensor_fn!` emits computes every elementwise op exactly as the op's one
//! definition (`tensor_fn::kernels::scalar`) does, which is also what constant folding uses
//! (the compiler's own test checks that side): bit for bit, on NaN, infinities, signed zeros,
//! subnormals and ordinary values, in f32 and f64.

use ndarray::Array1;
use tensor_fn::kernels::op::{Binary, Num, Unary};
use tensor_fn::prelude::*;

macro_rules! ops_block {
    ($t:ident) => {
        tensor_fn! {
            x: $t[n], y: $t[n];
            pub neg = -x;
            pub exp_ = exp(x);
            pub log_ = log(x);
            pub log1p_ = log1p(x);
            pub sqrt_ = sqrt(x);
            pub tanh_ = tanh(x);
            pub erf_ = erf(x);
            pub sigmoid_ = sigmoid(x);
            pub softplus_ = softplus(x);
            pub both = sigmoid(x) * 0 + softplus(x);
            pub relu_ = relu(x);
            pub abs_ = abs(x);
            // The derivatives of abs, relu, maximum and max are sign, step, ge and eq.
            pub sign_ = grad(sum(abs(x)), x);
            pub step_ = grad(sum(relu(x)), x);
            pub ge_ = grad(sum(maximum(x, y)), x);
            pub eq_ = grad(max(x), x);
            pub pow_2 = pow(x, 2);
            pub pow_half = pow(x, 0.5);
            pub pow_3 = pow(x, 3);
            pub pow_m2 = pow(x, -2);
            pub pow_0 = pow(x, 0);
            pub pow_1_5 = pow(x, 1.5);
            pub pow_m2_5 = pow(x, -2.5);
            pub pow_100 = pow(x, 100);
            pub add = x + y;
            pub mul = x * y;
            pub div = x / y;
            pub maximum_ = maximum(x, y);
            pub minimum_ = minimum(x, y);
            pub eq2 = eq(x, y);
            pub neq_ = neq(x, y);
            pub lt_ = lt(x, y);
            pub le_ = le(x, y);
            pub gt_ = gt(x, y);
            pub ge2 = ge(x, y);
            // A select on a condition that is any number: NaN and -0 included.
            pub where_ = where(x, y, x);
        }
    };
}

mod f32s {
    use super::*;
    ops_block!(f32);
}

mod f64s {
    use super::*;
    ops_block!(f64);
}

/// Every pair of special values, as two vectors.
fn pairs(specials: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let mut xs = Vec::new();
    let mut ys = Vec::new();
    for &a in specials {
        for &b in specials {
            xs.push(a);
            ys.push(b);
        }
    }
    (xs, ys)
}

fn specials(f32: bool) -> Vec<f64> {
    let mut v = vec![
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -2.5,
        3.0,
        20.0,
        -20.0,
        88.7,
        -88.7,
        -104.0,
        709.8,
        -745.0,
        1e-3,
        -1e-7,
        1.1,
        0.3,
        -1.7,
        2.6180339,
        1.0001,
        -0.999,
        7.3,
    ];
    if f32 {
        v.extend(
            [
                f32::from_bits(1),
                -f32::from_bits(3),
                f32::MIN_POSITIVE,
                f32::MAX,
            ]
            .map(f64::from),
        );
        v.iter().map(|&x| x as f32 as f64).collect()
    } else {
        v.extend([
            f64::from_bits(1),
            -f64::from_bits(3),
            f64::MIN_POSITIVE,
            f64::MAX,
        ]);
        v
    }
}

fn same(what: &str, x: &[f64], y: &[f64], got: &[f64], want: impl Fn(f64, f64) -> f64) {
    assert_eq!(got.len(), x.len(), "{what}: length");
    for i in 0..x.len() {
        let w = want(x[i], y[i]);
        let g = got[i];
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what} at x = {:e}, y = {:e}: the code gives {g:e}, the definition {w:e}",
            x[i],
            y[i]
        );
    }
}

macro_rules! check_dtype {
    ($m:ident, $t:ty, $f32:expr) => {{
        let (xs, ys) = pairs(&specials($f32));
        let x = Array1::from_iter(xs.iter().map(|&v| v as $t));
        let y = Array1::from_iter(ys.iter().map(|&v| v as $t));
        let (x, y) = (x.view(), y.view());
        let wide = |a: Array1<$t>| -> Vec<f64> { a.iter().map(|&v| v as f64).collect() };
        let un = |u: Unary| move |a: f64, _: f64| u.eval(a as $t) as f64;
        let bin = |b: Binary| move |a: f64, c: f64| b.eval(a as $t, c as $t) as f64;
        let name = stringify!($t);
        // Unary ops: each row of the op table, by the function that computes it.
        let mut seen = Vec::new();
        let mut unary = |u: Unary, got: Array1<$t>| {
            same(&format!("{u} {name}"), &xs, &ys, &wide(got), un(u));
            seen.push(u);
        };
        unary(Unary::Neg, $m::neg(x).unwrap());
        unary(Unary::Exp, $m::exp_(x).unwrap());
        unary(Unary::Log, $m::log_(x).unwrap());
        unary(Unary::Log1p, $m::log1p_(x).unwrap());
        unary(Unary::Sqrt, $m::sqrt_(x).unwrap());
        unary(Unary::Tanh, $m::tanh_(x).unwrap());
        unary(Unary::Erf, $m::erf_(x).unwrap());
        unary(Unary::Sigmoid, $m::sigmoid_(x).unwrap());
        unary(Unary::Softplus, $m::softplus_(x).unwrap());
        unary(Unary::Relu, $m::relu_(x).unwrap());
        unary(Unary::Abs, $m::abs_(x).unwrap());
        unary(Unary::Sign, $m::sign_(x).unwrap());
        unary(Unary::Step, $m::step_(x).unwrap());
        for u in Unary::PLAIN {
            assert!(seen.contains(u), "{u} has no case in this test");
        }
        // A softplus computed together with a sigmoid of the same value is the same softplus.
        same(
            &format!("softplus with sigmoid {name}"),
            &xs,
            &ys,
            &wide($m::both(x).unwrap()),
            |a, _| {
                let (s, sp) = tensor_fn::kernels::scalar::sigmoid_softplus(a as $t);
                (s * 0.0 + sp) as f64
            },
        );
        let pow = |k: f64| Unary::Pow(Num::new(k));
        for (k, got) in [
            (2.0, $m::pow_2(x).unwrap()),
            (0.5, $m::pow_half(x).unwrap()),
            (3.0, $m::pow_3(x).unwrap()),
            (-2.0, $m::pow_m2(x).unwrap()),
            (0.0, $m::pow_0(x).unwrap()),
            (1.5, $m::pow_1_5(x).unwrap()),
            (-2.5, $m::pow_m2_5(x).unwrap()),
            (100.0, $m::pow_100(x).unwrap()),
        ] {
            same(
                &format!("pow(x, {k}) {name}"),
                &xs,
                &ys,
                &wide(got),
                un(pow(k)),
            );
        }
        // Binary ops.
        let mut seen = Vec::new();
        let mut binary = |b: Binary, got: Array1<$t>| {
            same(&format!("{b} {name}"), &xs, &ys, &wide(got), bin(b));
            seen.push(b);
        };
        binary(Binary::Add, $m::add(x, y).unwrap());
        binary(Binary::Mul, $m::mul(x, y).unwrap());
        binary(Binary::Div, $m::div(x, y).unwrap());
        binary(Binary::Maximum, $m::maximum_(x, y).unwrap());
        binary(Binary::Minimum, $m::minimum_(x, y).unwrap());
        binary(Binary::Ge, $m::ge_(x, y).unwrap());
        binary(Binary::Gt, $m::gt_(x, y).unwrap());
        binary(Binary::Lt, $m::lt_(x, y).unwrap());
        binary(Binary::Le, $m::le_(x, y).unwrap());
        binary(Binary::Ne, $m::neq_(x, y).unwrap());
        // The comparison functions compute the same as the derivatives' masks.
        same(
            &format!("eq {name}"),
            &xs,
            &ys,
            &wide($m::eq2(x, y).unwrap()),
            bin(Binary::Eq),
        );
        same(
            &format!("ge {name}"),
            &xs,
            &ys,
            &wide($m::ge2(x, y).unwrap()),
            bin(Binary::Ge),
        );
        same(
            &format!("where {name}"),
            &xs,
            &ys,
            &wide($m::where_(x, y).unwrap()),
            |a, b| tensor_fn::kernels::scalar::select(a as $t, b as $t, a as $t) as f64,
        );
        // grad(max(x), x) = eq(x, max(x)): the mask of where the maximum is.
        let top = xs.iter().fold(f64::NEG_INFINITY, |m, &v| {
            Binary::Maximum.eval(m as $t, v as $t) as f64
        });
        let eq = wide($m::eq_(x).unwrap());
        same(&format!("eq {name}"), &xs, &ys, &eq, |a, _| {
            bin(Binary::Eq)(a, top)
        });
        seen.push(Binary::Eq);
        for b in Binary::ALL {
            assert!(seen.contains(b), "{b} has no case in this test");
        }
    }};
}

#[test]
fn every_op_runs_as_its_definition_in_f32() {
    check_dtype!(f32s, f32, true);
}

#[test]
fn every_op_runs_as_its_definition_in_f64() {
    check_dtype!(f64s, f64, false);
}
