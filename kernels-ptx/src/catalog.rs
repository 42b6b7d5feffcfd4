//! Every kind of kernel the crate emits, as named programs: GEMMs of every layout, epilogue and
//! dtype (static and symbolic dims), library reductions of every kind and strategy, and loop
//! kernels that use every op, index pattern and grouping. The `ptxas` test assembles all of
//! them; the interpreter tests run them.

use crate::conv::{CallOp, ConvGeom};
use crate::gemm::{gemm, Activation, Batch, Bias, GemmSpec};
use crate::ir::{
    Axis, Binary, Buffer, DType, Dim, Instr, IntTy, Ix, LoopKernel, Num, RandKind, RedKind,
    Reduction, Unary,
};
use crate::meta::Program;
use crate::reduce::reduction_kernel;

pub const DTYPES: [DType; 2] = [DType::F32, DType::F64];

/// Every unary op of the op table, with the `pow` exponents that take different code paths.
pub fn unary_ops() -> Vec<Unary> {
    let powers = [2.0, 0.5, 3.0, -2.0, 0.0, 1.5, -2.5];
    Unary::PLAIN
        .iter()
        .copied()
        .chain(powers.map(|k| Unary::Pow(Num::new(k))))
        .collect()
}

/// Every binary op of the op table.
pub fn binary_ops() -> Vec<Binary> {
    Binary::ALL.to_vec()
}

/// GEMM specs covering every layout, epilogue and dtype, with static and symbolic sizes.
pub fn gemm_specs() -> Vec<GemmSpec> {
    let mut v = Vec::new();
    for dtype in DTYPES {
        for (trans_a, trans_b) in [(false, false), (false, true), (true, false), (true, true)] {
            // The seed's shapes: hidden = sigmoid(dot(x, w) + b1), x: [20, 784], w: [784, 500].
            v.push(GemmSpec {
                dtype,
                m: Dim::Static(20),
                n: Dim::Static(500),
                k: Dim::Static(784),
                trans_a,
                trans_b,
                bias: Bias::PerColumn,
                activation: Activation::Sigmoid,
                batch: None,
            });
            v.push(GemmSpec {
                dtype,
                m: Dim::Sym(0),
                n: Dim::Sym(1),
                k: Dim::Sym(2),
                trans_a,
                trans_b,
                bias: Bias::None,
                activation: Activation::Identity,
                batch: None,
            });
            v.push(GemmSpec {
                dtype,
                m: Dim::Sym(0),
                n: Dim::Static(37),
                k: Dim::Sym(2),
                trans_a,
                trans_b,
                bias: Bias::PerRow,
                activation: Activation::Sigmoid,
                batch: None,
            });
            // Batched over grid z: a shared (stride 0) A or B, a symbolic or static count,
            // sizes that are not tile multiples (a convolution's shapes).
            v.push(GemmSpec {
                dtype,
                m: Dim::Static(20),
                n: Dim::Static(61),
                k: Dim::Static(25),
                trans_a,
                trans_b,
                bias: Bias::None,
                activation: Activation::Identity,
                batch: Some(Batch {
                    count: Dim::Sym(3),
                    a: 0,
                    b: 25 * 61,
                    c: 20 * 61,
                }),
            });
            v.push(GemmSpec {
                dtype,
                m: Dim::Sym(0),
                n: Dim::Sym(1),
                k: Dim::Sym(2),
                trans_a,
                trans_b,
                bias: Bias::PerColumn,
                activation: Activation::Sigmoid,
                batch: Some(Batch {
                    count: Dim::Static(5),
                    a: 1 << 33,
                    b: 0,
                    c: 1 << 33,
                }),
            });
            // Tile multiples: the bounds checks compile away.
            v.push(GemmSpec {
                dtype,
                m: Dim::Static(128),
                n: Dim::Static(64),
                k: Dim::Static(64),
                trans_a,
                trans_b,
                bias: Bias::None,
                activation: Activation::Identity,
                batch: None,
            });
        }
    }
    v
}

fn buf(dtype: DType, shape: &[Dim]) -> Buffer {
    Buffer {
        dtype,
        shape: shape.to_vec(),
        int: None,
    }
}

fn int_buf(dtype: DType, int: IntTy, shape: &[Dim]) -> Buffer {
    Buffer {
        dtype,
        shape: shape.to_vec(),
        int: Some(int),
    }
}

fn root(rank: usize) -> Vec<Ix> {
    match rank {
        0 => vec![],
        1 => vec![Ix::Inner],
        _ => vec![Ix::Outer, Ix::Inner],
    }
}

/// An elementwise kernel over `dims` applying every unary op to `b0` and every binary op to
/// `(b0, b1)`, each stored into its own buffer (`b2`, `b3`, ... in the order of
/// [`unary_ops`] then [`binary_ops`]).
pub fn all_ops_kernel(dtype: DType, dims: &[Dim]) -> LoopKernel {
    let ix = root(dims.len());
    let mut k = LoopKernel {
        dtype,
        dims: dims.to_vec(),
        bufs: vec![buf(dtype, dims), buf(dtype, dims)],
        instrs: vec![
            Instr::Load {
                buf: 0,
                index: ix.clone(),
            },
            Instr::Load { buf: 1, index: ix },
        ],
        stores: Vec::new(),
        reductions: Vec::new(),
    };
    for u in unary_ops() {
        k.instrs.push(Instr::Unary(u, 0));
        k.bufs.push(buf(dtype, dims));
        k.stores.push((k.instrs.len() - 1, k.bufs.len() - 1));
    }
    for b in binary_ops() {
        k.instrs.push(Instr::Binary(b, 0, 1));
        k.bufs.push(buf(dtype, dims));
        k.stores.push((k.instrs.len() - 1, k.bufs.len() - 1));
    }
    k
}

/// A rank-2 kernel `[m, n]` in the seed's style, with every reduction grouping at once:
/// `h = sigmoid(x * a0 + bias[j]) * scale[i]` stored to `b3`; `sum_j x log h` -> `b4` (rows),
/// `max_i h` -> `b5` (columns), `sum h / n` -> `b6` (all), `max (x - h)` -> `b7` (all).
/// Inputs: `b0 = x [m, n]`, `b1 = bias [n]`, `b2 = scale [m, 1]`, argument `a0`.
pub fn mixed_kernel(dtype: DType, m: Dim, n: Dim) -> LoopKernel {
    use Instr::*;
    LoopKernel {
        dtype,
        dims: vec![m, n],
        bufs: vec![
            buf(dtype, &[m, n]),
            buf(dtype, &[n]),
            buf(dtype, &[m, Dim::Static(1)]),
            buf(dtype, &[m, n]),
            buf(dtype, &[m]),
            buf(dtype, &[n]),
            buf(dtype, &[]),
            buf(dtype, &[]),
        ],
        instrs: vec![
            Load {
                buf: 0,
                index: vec![Ix::Outer, Ix::Inner],
            }, // %0 x
            Arg(0),                               // %1
            Binary(crate::ir::Binary::Mul, 0, 1), // %2
            Load {
                buf: 1,
                index: vec![Ix::Inner],
            }, // %3 bias
            Binary(crate::ir::Binary::Add, 2, 3), // %4
            Unary(crate::ir::Unary::Sigmoid, 4),  // %5
            Load {
                buf: 2,
                index: vec![Ix::Outer, Ix::Zero],
            }, // %6 scale
            Binary(crate::ir::Binary::Mul, 5, 6), // %7 h
            Unary(crate::ir::Unary::Log, 7),      // %8
            Binary(crate::ir::Binary::Mul, 0, 8), // %9
            DimSize(n),                           // %10
            Binary(crate::ir::Binary::Div, 7, 10), // %11
            Unary(crate::ir::Unary::Neg, 7),      // %12
            Binary(crate::ir::Binary::Add, 0, 12), // %13 x - h
        ],
        stores: vec![(7, 3)],
        reductions: vec![
            Reduction {
                kind: RedKind::Sum,
                axis: Axis::One(1),
                value: 9,
                out: 4,
            },
            Reduction {
                kind: RedKind::Max,
                axis: Axis::One(0),
                value: 7,
                out: 5,
            },
            Reduction {
                kind: RedKind::Sum,
                axis: Axis::All,
                value: 11,
                out: 6,
            },
            Reduction {
                kind: RedKind::Max,
                axis: Axis::All,
                value: 13,
                out: 7,
            },
        ],
    }
}

/// What a classifier's step compiles to, over scores `x [m, n]` (`b0`) and integer labels
/// `y [m]` (`b1`, i64), with every grouping: the one-hot `eq(y[i], j)` -> `b2`; the picked score
/// `sum_j x * eq(y[i], j)` -> `b3` (rows); `argmax_j x` -> `b4` (rows, i64); `where(x, j, y[i])`
/// -> `b5`; `argmax_i x` -> `b6` (columns, i32); `argmax x` -> `b7` (all, i64, flat);
/// `y[i] + j` -> `b8` (an i32 store).
pub fn classifier_kernel(dtype: DType, m: Dim, n: Dim) -> LoopKernel {
    use crate::ir::Binary as B;
    use Instr::*;
    LoopKernel {
        dtype,
        dims: vec![m, n],
        bufs: vec![
            buf(dtype, &[m, n]),
            int_buf(dtype, IntTy::I64, &[m]),
            buf(dtype, &[m, n]),
            buf(dtype, &[m]),
            int_buf(dtype, IntTy::I64, &[m]),
            buf(dtype, &[m, n]),
            int_buf(dtype, IntTy::I32, &[n]),
            int_buf(dtype, IntTy::I64, &[]),
            int_buf(dtype, IntTy::I32, &[m, n]),
        ],
        instrs: vec![
            Load {
                buf: 0,
                index: vec![Ix::Outer, Ix::Inner],
            }, // %0 x
            Load {
                buf: 1,
                index: vec![Ix::Outer],
            }, // %1 y
            Index(Ix::Inner),     // %2 j
            Binary(B::Eq, 1, 2),  // %3 one-hot
            Binary(B::Mul, 0, 3), // %4 x * one-hot
            Select(0, 2, 1),      // %5 where(x, j, y)
            Binary(B::Add, 1, 2), // %6 y + j
        ],
        stores: vec![(3, 2), (5, 5), (6, 8)],
        reductions: vec![
            Reduction {
                kind: RedKind::Sum,
                axis: Axis::One(1),
                value: 4,
                out: 3,
            },
            Reduction {
                kind: RedKind::ArgMax,
                axis: Axis::One(1),
                value: 0,
                out: 4,
            },
            Reduction {
                kind: RedKind::ArgMax,
                axis: Axis::One(0),
                value: 0,
                out: 6,
            },
            Reduction {
                kind: RedKind::ArgMax,
                axis: Axis::All,
                value: 0,
                out: 7,
            },
        ],
    }
}

/// A rank-1 kernel `[n]` over predictions and labels (`b0`, `b1`, i64) and scores `b2`: the
/// error rate `sum(ne(p, y)) / n` -> `b3`, the count `sum(eq(p, y))` -> `b4` (i64), the
/// position of the best score `argmax(s * i)`, with `i` the index value, -> `b5` (a float
/// buffer), and `where(ne(p, y), i, -1)` -> `b6` (i64).
pub fn labels_kernel(dtype: DType, n: Dim) -> LoopKernel {
    use crate::ir::Binary as B;
    use Instr::*;
    let ix = vec![Ix::Inner];
    LoopKernel {
        dtype,
        dims: vec![n],
        bufs: vec![
            int_buf(dtype, IntTy::I64, &[n]),
            int_buf(dtype, IntTy::I64, &[n]),
            buf(dtype, &[n]),
            buf(dtype, &[]),
            int_buf(dtype, IntTy::I64, &[]),
            buf(dtype, &[]),
            int_buf(dtype, IntTy::I64, &[n]),
        ],
        instrs: vec![
            Load {
                buf: 0,
                index: ix.clone(),
            }, // %0 p
            Load {
                buf: 1,
                index: ix.clone(),
            }, // %1 y
            Binary(B::Ne, 0, 1),        // %2
            DimSize(n),                 // %3
            Binary(B::Div, 2, 3),       // %4
            Binary(B::Eq, 0, 1),        // %5
            Load { buf: 2, index: ix }, // %6 s
            Index(Ix::Inner),           // %7 i
            Binary(B::Mul, 6, 7),       // %8
            Const(-1.0),                // %9
            Select(2, 7, 9),            // %10
        ],
        stores: vec![(10, 6)],
        reductions: vec![
            Reduction {
                kind: RedKind::Sum,
                axis: Axis::All,
                value: 4,
                out: 3,
            },
            Reduction {
                kind: RedKind::Sum,
                axis: Axis::All,
                value: 5,
                out: 4,
            },
            Reduction {
                kind: RedKind::ArgMax,
                axis: Axis::All,
                value: 8,
                out: 5,
            },
        ],
    }
}

/// Dropout and noise over `x [m, n]` (`b0`) from the random stream `b1`, with every
/// grouping: `mask = binomial(a0)` (site 0) -> `b2`; `u = uniform(-1, 1)` (site 1) -> `b3`;
/// `z = normal(x, a1)` (site 2) -> `b4`; `sum_j x * mask` -> `b5` (rows); `max_i z` -> `b6`
/// (columns); `sum (x * mask + u)` -> `b7` (all); `argmax z` -> `b8` (all, i64).
pub fn random_kernel(dtype: DType, m: Dim, n: Dim) -> LoopKernel {
    use crate::ir::Binary as B;
    use Instr::*;
    let draw = |kind, site, params| Random {
        kind,
        site,
        stream: 1,
        params,
    };
    LoopKernel {
        dtype,
        dims: vec![m, n],
        bufs: vec![
            buf(dtype, &[m, n]),
            Buffer::stream(dtype),
            buf(dtype, &[m, n]),
            buf(dtype, &[m, n]),
            buf(dtype, &[m, n]),
            buf(dtype, &[m]),
            buf(dtype, &[n]),
            buf(dtype, &[]),
            int_buf(dtype, IntTy::I64, &[]),
        ],
        instrs: vec![
            Load {
                buf: 0,
                index: vec![Ix::Outer, Ix::Inner],
            }, // %0 x
            Arg(0),                              // %1 p
            draw(RandKind::Binomial, 0, [1, 1]), // %2 mask
            Binary(B::Mul, 0, 2),                // %3 x * mask
            Const(-1.0),                         // %4
            Const(1.0),                          // %5
            draw(RandKind::Uniform, 1, [4, 5]),  // %6 u
            Arg(1),                              // %7 std
            draw(RandKind::Normal, 2, [0, 7]),   // %8 z
            Binary(B::Add, 3, 6),                // %9
        ],
        stores: vec![(2, 2), (6, 3), (8, 4)],
        reductions: vec![
            Reduction {
                kind: RedKind::Sum,
                axis: Axis::One(1),
                value: 3,
                out: 5,
            },
            Reduction {
                kind: RedKind::Max,
                axis: Axis::One(0),
                value: 8,
                out: 6,
            },
            Reduction {
                kind: RedKind::Sum,
                axis: Axis::All,
                value: 9,
                out: 7,
            },
            Reduction {
                kind: RedKind::ArgMax,
                axis: Axis::All,
                value: 8,
                out: 8,
            },
        ],
    }
}

/// `b2 [m, n] = b0^T + b1[i]`, reading `b0 [n, m]` transposed and `b1 [m]` by the outer index.
pub fn transpose_kernel(dtype: DType, m: Dim, n: Dim) -> LoopKernel {
    LoopKernel {
        dtype,
        dims: vec![m, n],
        bufs: vec![buf(dtype, &[n, m]), buf(dtype, &[m]), buf(dtype, &[m, n])],
        instrs: vec![
            Instr::Load {
                buf: 0,
                index: vec![Ix::Inner, Ix::Outer],
            },
            Instr::Load {
                buf: 1,
                index: vec![Ix::Outer],
            },
            Instr::Binary(Binary::Add, 0, 1),
        ],
        stores: vec![(2, 2)],
        reductions: Vec::new(),
    }
}

/// A rank-0 kernel: `b1 = b0 * a3 + 0.5 + size(d4)`, and its "sum" into `b2`.
pub fn scalar_kernel(dtype: DType) -> LoopKernel {
    LoopKernel {
        dtype,
        dims: vec![],
        bufs: vec![buf(dtype, &[]), buf(dtype, &[]), buf(dtype, &[])],
        instrs: vec![
            Instr::Load {
                buf: 0,
                index: vec![],
            },
            Instr::Arg(3),
            Instr::Binary(Binary::Mul, 0, 1),
            Instr::Const(0.5),
            Instr::Binary(Binary::Add, 2, 3),
            Instr::DimSize(Dim::Sym(4)),
            Instr::Binary(Binary::Add, 4, 5),
        ],
        stores: vec![(6, 1)],
        reductions: vec![Reduction {
            kind: RedKind::Sum,
            axis: Axis::All,
            value: 6,
            out: 2,
        }],
    }
}

/// Library reductions of every kind, axis and strategy: warp rows (static n <= 256), block
/// rows, columns, one-block and two-pass full reductions.
pub fn reduction_kernels() -> Vec<(String, LoopKernel)> {
    let mut v = Vec::new();
    let shapes: Vec<Vec<Dim>> = vec![
        vec![Dim::Sym(0)],
        vec![Dim::Static(1000)],
        vec![Dim::Static(20), Dim::Static(33)],
        vec![Dim::Sym(0), Dim::Static(1000)],
        vec![Dim::Sym(0), Dim::Sym(1)],
    ];
    for dtype in DTYPES {
        for kind in [RedKind::Sum, RedKind::Max, RedKind::ArgMax] {
            for dims in &shapes {
                let axes: &[Axis] = if dims.len() == 2 {
                    &[Axis::All, Axis::One(0), Axis::One(1)]
                } else {
                    &[Axis::All]
                };
                for &axis in axes {
                    let name = format!(
                        "reduce {kind:?} {} [{}] {axis:?}",
                        dtype.name(),
                        dims.iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    v.push((name, reduction_kernel(dtype, kind, dims, axis)));
                }
            }
        }
    }
    v
}

/// Every loop kernel of the catalog, named.
pub fn loop_kernels() -> Vec<(String, LoopKernel)> {
    let mut v = Vec::new();
    for dtype in DTYPES {
        let d = dtype.name();
        v.push((
            format!("all ops {d} [d0]"),
            all_ops_kernel(dtype, &[Dim::Sym(0)]),
        ));
        v.push((
            format!("all ops {d} [d0, 7]"),
            all_ops_kernel(dtype, &[Dim::Sym(0), Dim::Static(7)]),
        ));
        v.push((
            format!("mixed {d} [20, 784]"),
            mixed_kernel(dtype, Dim::Static(20), Dim::Static(784)),
        ));
        v.push((
            format!("mixed {d} [d0, d1]"),
            mixed_kernel(dtype, Dim::Sym(0), Dim::Sym(1)),
        ));
        v.push((
            format!("mixed {d} [d0, 33]"),
            mixed_kernel(dtype, Dim::Sym(0), Dim::Static(33)),
        ));
        v.push((
            format!("transpose {d} [d0, d1]"),
            transpose_kernel(dtype, Dim::Sym(0), Dim::Sym(1)),
        ));
        v.push((format!("scalar {d}"), scalar_kernel(dtype)));
        v.push((
            format!("classifier {d} [20, 10]"),
            classifier_kernel(dtype, Dim::Static(20), Dim::Static(10)),
        ));
        v.push((
            format!("classifier {d} [d0, d1]"),
            classifier_kernel(dtype, Dim::Sym(0), Dim::Sym(1)),
        ));
        v.push((
            format!("classifier {d} [d0, 784]"),
            classifier_kernel(dtype, Dim::Sym(0), Dim::Static(784)),
        ));
        v.push((
            format!("labels {d} [d0]"),
            labels_kernel(dtype, Dim::Sym(0)),
        ));
        v.push((
            format!("labels {d} [1000]"),
            labels_kernel(dtype, Dim::Static(1000)),
        ));
        v.push((
            format!("random {d} [20, 33]"),
            random_kernel(dtype, Dim::Static(20), Dim::Static(33)),
        ));
        v.push((
            format!("random {d} [37, 300]"),
            random_kernel(dtype, Dim::Static(37), Dim::Static(300)),
        ));
        v.push((
            format!("random {d} [d0, d1]"),
            random_kernel(dtype, Dim::Sym(0), Dim::Sym(1)),
        ));
    }
    v.extend(reduction_kernels());
    v
}

/// Library calls of every kind (convolution and its gradients with and without flip, pooling
/// and its gradient), each with the number of images: LeNet's second layer over a symbolic
/// count, odd sizes that are no tile multiple, filters and windows too wide to unroll.
/// Arguments are buffers 0 (and 1), the output buffer 2.
pub fn calls() -> Vec<(CallOp, Dim)> {
    let lenet = ConvGeom {
        c: 20,
        h: 12,
        w: 12,
        k: 50,
        fh: 5,
        fw: 5,
    };
    let odd = ConvGeom {
        c: 3,
        h: 7,
        w: 9,
        k: 4,
        fh: 3,
        fw: 2,
    };
    let wide = ConvGeom {
        c: 2,
        h: 11,
        w: 12,
        k: 3,
        fh: 10,
        fw: 9,
    };
    let mut v = Vec::new();
    for (geom, n) in [
        (lenet, Dim::Sym(0)),
        (odd, Dim::Static(5)),
        (wide, Dim::Sym(0)),
    ] {
        for flip in [true, false] {
            v.push((CallOp::Conv { flip, geom }, n));
            v.push((CallOp::ConvGradInput { flip, geom }, n));
            v.push((CallOp::ConvGradFilter { flip, geom }, n));
        }
    }
    for (planes, h, w, win) in [(20, 24, 24, (2, 2)), (3, 7, 9, (3, 2)), (2, 5, 21, (1, 10))] {
        v.push((CallOp::Pool { planes, h, w, win }, Dim::Sym(0)));
        v.push((CallOp::PoolGrad { planes, h, w, win }, Dim::Sym(0)));
    }
    v
}

/// Every program the catalog describes, named.
pub fn programs() -> Vec<(String, Program)> {
    let mut v = Vec::new();
    for s in gemm_specs() {
        let name = format!(
            "gemm {} {}{} m={} n={} k={} {:?} {:?}{}",
            s.dtype.name(),
            if s.trans_a { 't' } else { 'n' },
            if s.trans_b { 't' } else { 'n' },
            s.m,
            s.n,
            s.k,
            s.bias,
            s.activation,
            match s.batch {
                None => String::new(),
                Some(b) => format!(" x{} strides {}/{}/{}", b.count, b.a, b.b, b.c),
            }
        );
        v.push((name, gemm(&s).expect("catalog GEMMs are valid")));
    }
    for dtype in DTYPES {
        for (op, n) in calls() {
            let args = &[0, 1][..op.arity()];
            let p = crate::conv::call(dtype, op, n, args, 2).expect("catalog calls are valid");
            v.push((format!("{} {op:?} over {n} images", dtype.name()), p));
        }
    }
    for (name, k) in loop_kernels() {
        v.push((
            name,
            crate::lower::lower_loop(&k).expect("catalog kernels are valid"),
        ));
    }
    v
}

/// Every library kernel of the catalog as one PTX module (the default header).
pub fn module_ptx() -> String {
    let mut m = crate::Module::default();
    for (_, p) in programs() {
        p.add_to(&mut m);
    }
    m.to_ptx()
}
