//! The GEMM kernels on the interpreter against a plain triple loop (in f64), for every layout
//! and dtype, static and symbolic sizes, sizes that are not tile multiples, every epilogue, and
//! batches (grid z) with shared operands.

use tensor_fn_kernels::check as common;

use common::{round_to, sigmoid, unit, Rng};
use tensor_fn_kernels::catalog::DTYPES;
use tensor_fn_kernels::gemm::{gemm, Activation, Batch, Bias, GemmSpec};
use tensor_fn_kernels::ir::{DType, Dim};
use tensor_fn_kernels::meta::Role;
use tensor_fn_kernels::vm::{self, Memory, Stats, Value};

struct Case {
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    bias: Bias,
    activation: Activation,
    alpha: f64,
    beta: f64,
    symbolic: bool,
    /// A batch: (count, A shared, B shared); C is never shared.
    batch: Option<(usize, bool, bool)>,
}

fn upload(mem: &mut Memory, dtype: DType, v: &[f64]) -> u64 {
    match dtype {
        DType::F32 => mem.upload_f32(&v.iter().map(|x| *x as f32).collect::<Vec<_>>()),
        DType::F64 => mem.upload_f64(v),
    }
}

fn read(mem: &Memory, dtype: DType, p: u64, n: usize) -> Vec<f64> {
    match dtype {
        DType::F32 => mem.read_f32(p, n).into_iter().map(|x| x as f64).collect(),
        DType::F64 => mem.read_f64(p, n),
    }
}

fn check(dtype: DType, c: &Case, seed: u64) -> Stats {
    let (m, k, n) = (c.m, c.k, c.n);
    let dim = |x: usize, id: u32| {
        if c.symbolic {
            Dim::Sym(id)
        } else {
            Dim::Static(x as u64)
        }
    };
    let spec = GemmSpec {
        dtype,
        m: dim(m, 0),
        n: dim(n, 1),
        k: dim(k, 2),
        trans_a: c.trans_a,
        trans_b: c.trans_b,
        bias: c.bias,
        activation: c.activation,
        batch: c.batch.map(|(count, sa, sb)| Batch {
            count: dim(count, 3),
            a: if sa { 0 } else { (m * k) as u64 },
            b: if sb { 0 } else { (k * n) as u64 },
            c: (m * n) as u64,
        }),
    };
    let program = gemm(&spec).unwrap();
    let mut rng = Rng::new(seed);
    let r = |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(|x| round_to(dtype, x)).collect() };
    // Stored layouts: A is m x k (k x m when transposed), B is k x n (n x k when transposed);
    // a batch stores its matrices one after another, a shared operand once.
    let (count, shared_a, shared_b) = c.batch.unwrap_or((1, true, true));
    let (ca, cb) = (
        if shared_a { 1 } else { count },
        if shared_b { 1 } else { count },
    );
    let a = r(rng.vec(ca * m * k, -1.0, 1.0));
    let b = r(rng.vec(cb * k * n, -1.0, 1.0));
    let c0 = r(rng.vec(count * m * n, -1.0, 1.0));
    let bias_len = match c.bias {
        Bias::None => 0,
        Bias::PerColumn => n,
        Bias::PerRow => m,
    };
    let bias = r(rng.vec(bias_len, -1.0, 1.0));
    let (alpha, beta) = (round_to(dtype, c.alpha), round_to(dtype, c.beta));

    let mut mem = Memory::new();
    let pa = upload(&mut mem, dtype, &a);
    let pb = upload(&mut mem, dtype, &b);
    // With beta = 0, C starts as NaN (fresh interpreter memory): the kernel must not read it.
    let pc = if beta == 0.0 {
        mem.alloc(count * m * n * dtype.bytes() as usize)
    } else {
        upload(&mut mem, dtype, &c0)
    };
    let pbias = upload(&mut mem, dtype, &bias);
    let scalar = |x: f64| match dtype {
        DType::F32 => Value::F32(x as f32),
        DType::F64 => Value::F64(x),
    };
    let bind = |role: Role| -> Option<Value> {
        Some(match role {
            Role::GemmA => Value::Ptr(pa),
            Role::GemmB => Value::Ptr(pb),
            Role::GemmC => Value::Ptr(pc),
            Role::GemmBias => Value::Ptr(pbias),
            Role::Alpha => scalar(alpha),
            Role::Beta => scalar(beta),
            Role::Dim(0) => Value::U32(m as u32),
            Role::Dim(1) => Value::U32(n as u32),
            Role::Dim(2) => Value::U32(k as u32),
            Role::Dim(3) => Value::U32(count as u32),
            Role::Dim(_) | Role::Buf(_) | Role::Arg(_) | Role::Scratch(_) | Role::Const(_) => {
                return None
            }
        })
    };
    let stats = vm::run(&program, &mut mem, &bind).unwrap_or_else(|e| panic!("interpreter: {e}"));
    let got = read(&mem, dtype, pc, count * m * n);

    let u = unit(dtype);
    for z in 0..count {
        let a = &a[if shared_a { 0 } else { z * m * k }..];
        let b = &b[if shared_b { 0 } else { z * k * n }..];
        let c0 = &c0[z * m * n..];
        let got = &got[z * m * n..];
        for i in 0..m {
            for j in 0..n {
                let (mut dot, mut abs) = (0.0, 0.0);
                for p in 0..k {
                    let x = if c.trans_a {
                        a[p * m + i]
                    } else {
                        a[i * k + p]
                    };
                    let y = if c.trans_b {
                        b[j * k + p]
                    } else {
                        b[p * n + j]
                    };
                    dot += x * y;
                    abs += (x * y).abs();
                }
                let mut z = alpha * dot;
                let mut scale = alpha.abs() * abs;
                if beta != 0.0 {
                    z += beta * c0[i * n + j];
                    scale += (beta * c0[i * n + j]).abs();
                }
                match c.bias {
                    Bias::None => {}
                    Bias::PerColumn => {
                        z += bias[j];
                        scale += bias[j].abs();
                    }
                    Bias::PerRow => {
                        z += bias[i];
                        scale += bias[i].abs();
                    }
                }
                // A dot product of k terms in any order: at most (k + 3) roundings of the scale
                // (the alpha, beta and bias steps add three). sigmoid' <= 1/4, plus its own 4 ulp.
                let tol_z = (k as f64 + 3.0) * u * scale + 1e-300;
                let (want, tol) = match c.activation {
                    Activation::Identity => (z, tol_z),
                    Activation::Sigmoid => {
                        let s = sigmoid(z);
                        (s, 0.25 * tol_z + 8.0 * u * s)
                    }
                };
                let g = got[i * n + j];
                assert!(
                (g - want).abs() <= tol,
                "{} gemm {m}x{k}x{n} ta={} tb={} {:?} {:?} sym={} batch {:?}: C{z}[{i}][{j}] = {g:e}, want {want:e} (tolerance {tol:e})",
                dtype.name(),
                c.trans_a,
                c.trans_b,
                c.bias,
                c.activation,
                c.symbolic,
                c.batch
            );
            }
        }
    }
    stats
}

const LAYOUTS: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

fn plain(m: usize, k: usize, n: usize, trans_a: bool, trans_b: bool, symbolic: bool) -> Case {
    Case {
        m,
        k,
        n,
        trans_a,
        trans_b,
        bias: Bias::None,
        activation: Activation::Identity,
        alpha: 1.0,
        beta: 0.0,
        symbolic,
        batch: None,
    }
}

#[test]
fn gemm_1x1x1() {
    for dtype in DTYPES {
        for (ta, tb) in LAYOUTS {
            for sym in [false, true] {
                check(dtype, &plain(1, 1, 1, ta, tb, sym), 1);
            }
        }
    }
}

/// m x k x n = 20 x 784 x 37: the seed's minibatch against 784 inputs, with a narrow output.
#[test]
fn gemm_20x784x37() {
    for dtype in DTYPES {
        for (ta, tb) in LAYOUTS {
            for sym in [false, true] {
                check(dtype, &plain(20, 784, 37, ta, tb, sym), 2);
            }
        }
    }
}

#[test]
fn gemm_65x33x129() {
    for dtype in DTYPES {
        for (ta, tb) in LAYOUTS {
            for sym in [false, true] {
                check(dtype, &plain(65, 33, 129, ta, tb, sym), 3);
            }
        }
    }
}

/// Exact tile multiples, where static sizes drop every bounds check.
#[test]
fn gemm_tile_multiples() {
    for dtype in DTYPES {
        for (ta, tb) in LAYOUTS {
            check(dtype, &plain(128, 32, 64, ta, tb, false), 4);
        }
    }
}

/// alpha, beta (C read and scaled), a bias along either axis, and the sigmoid activation.
#[test]
fn gemm_epilogues() {
    for dtype in DTYPES {
        for (ta, tb) in LAYOUTS {
            for (bias, activation, alpha, beta) in [
                (Bias::PerColumn, Activation::Sigmoid, 1.0, 0.0),
                (Bias::PerRow, Activation::Identity, -0.5, 2.0),
                (Bias::None, Activation::Sigmoid, 0.25, -1.0),
                (Bias::PerColumn, Activation::Identity, 1.0, 1.0),
            ] {
                for sym in [false, true] {
                    let c = Case {
                        bias,
                        activation,
                        alpha,
                        beta,
                        ..plain(33, 17, 70, ta, tb, sym)
                    };
                    check(dtype, &c, 5);
                }
            }
        }
    }
}

/// Empty matrices: k = 0 leaves beta * C (+ bias); m = 0 or n = 0 writes nothing.
#[test]
fn gemm_empty_dims() {
    for dtype in DTYPES {
        let c = Case {
            beta: 0.5,
            bias: Bias::PerRow,
            ..plain(5, 0, 3, false, false, true)
        };
        check(dtype, &c, 6);
        check(dtype, &plain(0, 4, 3, false, true, true), 7);
        check(dtype, &plain(3, 4, 0, true, false, false), 8);
    }
}

/// Batches over grid z: every operand per matrix, or A or B shared by the batch (stride 0), on
/// sizes that are not tile multiples (a convolution's: 4 filters, 3 x 3 x 2 taps, 35 pixels),
/// with beta reading each matrix's own C and a bias shared by all.
#[test]
fn gemm_batched() {
    for dtype in DTYPES {
        for (ta, tb) in LAYOUTS {
            for (i, batch) in [(5, false, false), (3, true, false), (4, false, true)]
                .into_iter()
                .enumerate()
            {
                for sym in [false, true] {
                    let c = Case {
                        batch: Some(batch),
                        ..plain(4, 18, 35, ta, tb, sym)
                    };
                    check(dtype, &c, 9 + i as u64);
                }
            }
            let c = Case {
                batch: Some((3, false, true)),
                bias: Bias::PerColumn,
                activation: Activation::Sigmoid,
                alpha: -0.5,
                beta: 2.0,
                ..plain(33, 17, 70, ta, tb, true)
            };
            check(dtype, &c, 12);
            // No matrices at all: nothing is written, and nothing read.
            check(
                dtype,
                &Case {
                    batch: Some((0, false, false)),
                    ..plain(3, 4, 5, ta, tb, true)
                },
                13,
            );
        }
    }
}
