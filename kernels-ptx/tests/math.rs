//! Accuracy of the elementwise math, measured in ulps on the interpreter against correctly
//! rounded references (f64 std math, rounded to f32 for f32; the platform's f64 libm, itself
//! within about 1 ulp, for f64), over special values, random and log-spaced inputs. The bounds
//! are the ones documented in `src/math.rs`; special values (NaN, infinities, signed zeros) must
//! match exactly.

use tensor_fn_kernels::check as common;

use std::collections::HashMap;

use common::{binary_ref, round_to, run_program, unary_ref, Rng};
use tensor_fn_kernels::catalog::{binary_ops, unary_ops, DTYPES};
use tensor_fn_kernels::ir::{Buffer, DType, Dim, Instr, Ix, LoopKernel, Unary};

fn inputs(dtype: DType) -> Vec<f64> {
    let (tiny, big, sub) = match dtype {
        DType::F32 => (1e-30, 1e30, f32::from_bits(1) as f64),
        DType::F64 => (1e-300, 1e300, f64::from_bits(1)),
    };
    let max = match dtype {
        DType::F32 => f32::MAX as f64,
        DType::F64 => f64::MAX,
    };
    let min_normal = match dtype {
        DType::F32 => f32::MIN_POSITIVE as f64,
        DType::F64 => f64::MIN_POSITIVE,
    };
    let mut v = vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    for x in [
        0.0,
        sub,
        min_normal,
        min_normal * 0.75,
        tiny,
        1e-8,
        1e-4,
        0.1,
        0.3465,
        0.3466,
        0.5,
        1.0 - 1e-7,
        1.0,
        1.0 + 1e-7,
        std::f64::consts::SQRT_2,
        2.0,
        10.0,
        20.0,
        80.0,
        88.0,
        88.8,
        89.0,
        100.0,
        700.0,
        709.9,
        710.0,
        745.0,
        750.0,
        1e10,
        big,
        max,
    ] {
        v.push(x);
        v.push(-x);
    }
    let mut rng = Rng::new(42);
    v.extend(rng.vec(1000, -10.0, 10.0));
    let span = match dtype {
        DType::F32 => 40.0,
        DType::F64 => 300.0,
    };
    for _ in 0..600 {
        let m = 2f64.powf(rng.uniform(-span, span));
        v.push(if rng.next_u64() & 1 == 0 { m } else { -m });
    }
    v.extend(rng.vec(300, 0.99, 1.01));
    v.extend(rng.vec(300, -1e-3, 1e-3));
    v.extend(rng.vec(200, -1.0, -0.9));
    v.into_iter().map(|x| round_to(dtype, x)).collect()
}

/// Distance in units in the last place of the dtype; both zeros are one point.
fn ulps(dtype: DType, a: f64, b: f64) -> f64 {
    match dtype {
        DType::F32 => {
            let key = |x: f32| -> i64 {
                let b = x.to_bits();
                if b >> 31 == 1 {
                    -((b & 0x7fff_ffff) as i64)
                } else {
                    b as i64
                }
            };
            (key(a as f32) - key(b as f32)).abs() as f64
        }
        DType::F64 => {
            let key = |x: f64| -> i128 {
                let b = x.to_bits();
                if b >> 63 == 1 {
                    -((b & 0x7fff_ffff_ffff_ffff) as i128)
                } else {
                    b as i128
                }
            };
            (key(a) - key(b)).abs() as f64
        }
    }
}

fn elementwise(dtype: DType, n: usize, instrs: Vec<Instr>, loads: usize) -> LoopKernel {
    let shape = vec![Dim::Static(n as u64)];
    let last = instrs.len() - 1;
    let mut all = Vec::new();
    for b in 0..loads {
        all.push(Instr::Load {
            buf: b,
            index: vec![Ix::Inner],
        });
    }
    all.extend(instrs);
    LoopKernel {
        dtype,
        dims: shape.clone(),
        bufs: (0..=loads)
            .map(|_| Buffer {
                dtype,
                shape: shape.clone(),
                int: None,
            })
            .collect(),
        instrs: all,
        stores: vec![(last + loads, loads)],
        reductions: vec![],
    }
}

fn run(k: &LoopKernel, data: Vec<Vec<f64>>) -> Vec<f64> {
    let n = data[0].len();
    let program = tensor_fn_kernels::lower_loop(k).unwrap();
    let nbuf = data.len();
    let d: HashMap<usize, Vec<f64>> = data.into_iter().enumerate().collect();
    let bufs: Vec<(usize, usize)> = (0..=nbuf).map(|b| (b, n)).collect();
    let (got, _) = run_program(
        &program,
        k.dtype,
        &bufs,
        &d,
        &HashMap::new(),
        &HashMap::new(),
    );
    got[&nbuf].clone()
}

/// The documented bound in ulps for `op` at `x` (`want` is the reference result).
fn bound(dtype: DType, op: Unary) -> f64 {
    let f32 = dtype == DType::F32;
    // f64 references come from libm, within about an ulp themselves.
    let slack = if f32 { 0.0 } else { 1.0 };
    slack
        + match op {
            Unary::Neg | Unary::Sqrt | Unary::Relu | Unary::Abs | Unary::Sign | Unary::Step => 0.0,
            Unary::Exp => 3.0,
            Unary::Log => 2.0,
            Unary::Log1p => 3.0,
            Unary::Tanh => {
                if f32 {
                    6.0
                } else {
                    4.0
                }
            }
            Unary::Sigmoid => 4.0,
            Unary::Softplus => 5.0,
            // The CPU's polynomials with fused multiply-adds and this crate's exponential.
            Unary::Erf => 2.0,
            Unary::Pow(k) => {
                let k = k.get();
                if k == 2.0 || k == 0.5 || k == 0.0 {
                    0.0
                } else if k.fract() == 0.0 {
                    // Repeated squaring: one rounding per multiplication, and the reciprocal.
                    2.0 * (k.abs().log2().floor() + 1.0) + 1.0
                } else {
                    // exp(k log x): the error of k log x grows with its size.
                    4.0 + k.abs()
                }
            }
        }
}

#[test]
fn unary_accuracy() {
    let mut report = String::new();
    for dtype in DTYPES {
        let xs = inputs(dtype);
        for op in unary_ops() {
            let k = elementwise(dtype, xs.len(), vec![Instr::Unary(op, 0)], 1);
            let got = run(&k, vec![xs.clone()]);
            let mut worst = (0.0f64, 0.0f64);
            for (i, &x) in xs.iter().enumerate() {
                let want = match op {
                    // Integer powers against the exactly rounded power, not the CPU's powi.
                    Unary::Pow(p) if p.get().fract() == 0.0 && p.get() != 0.0 && p.get() != 2.0 => {
                        round_to(dtype, x.powf(p.get()))
                    }
                    Unary::Neg
                    | Unary::Exp
                    | Unary::Log
                    | Unary::Log1p
                    | Unary::Sqrt
                    | Unary::Tanh
                    | Unary::Erf
                    | Unary::Sigmoid
                    | Unary::Softplus
                    | Unary::Relu
                    | Unary::Abs
                    | Unary::Sign
                    | Unary::Step
                    | Unary::Pow(_) => round_to(dtype, unary_ref(op, x)),
                };
                let g = got[i];
                let what = format!("{op} {}({x:e}): got {g:e}, want {want:e}", dtype.name());
                if want.is_nan() || g.is_nan() {
                    assert!(want.is_nan() && g.is_nan(), "{what}");
                    continue;
                }
                if want == 0.0 && g == 0.0 {
                    assert_eq!(
                        want.is_sign_negative(),
                        g.is_sign_negative(),
                        "{what}: sign of zero"
                    );
                    continue;
                }
                let u = ulps(dtype, g, want);
                let b = bound(dtype, op);
                assert!(u <= b, "{what}: {u} ulps, bound {b}");
                if u > worst.0 {
                    worst = (u, x);
                }
            }
            report.push_str(&format!(
                "{:>4} {:<10} max {:>3} ulps (at x = {:e})\n",
                dtype.name(),
                op.to_string(),
                worst.0,
                worst.1
            ));
        }
    }
    println!("{report}");
}

#[test]
fn binary_ops_exact_with_special_values() {
    let specials = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        2.5,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        1e-3,
    ];
    for dtype in DTYPES {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for &a in &specials {
            for &b in &specials {
                xs.push(round_to(dtype, a));
                ys.push(round_to(dtype, b));
            }
        }
        let mut rng = Rng::new(7);
        for _ in 0..200 {
            xs.push(round_to(dtype, rng.uniform(-4.0, 4.0)));
            ys.push(round_to(dtype, rng.uniform(-4.0, 4.0)));
        }
        for op in binary_ops() {
            let k = elementwise(dtype, xs.len(), vec![Instr::Binary(op, 0, 1)], 2);
            let got = run(&k, vec![xs.clone(), ys.clone()]);
            for i in 0..xs.len() {
                let want = round_to(dtype, binary_ref(op, xs[i], ys[i]));
                let g = got[i];
                let same = (want.is_nan() && g.is_nan())
                    || (want == g && want.is_sign_negative() == g.is_sign_negative());
                assert!(
                    same,
                    "{op} {}({:e}, {:e}): got {g:e}, want {want:e}",
                    dtype.name(),
                    xs[i],
                    ys[i]
                );
            }
        }
    }
}
