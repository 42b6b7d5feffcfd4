//! What the language's classifiers compile to, run on the interpreter and compared with the CPU
//! reference: integer buffers (labels in, argmax positions and counts out), index values,
//! selects, and argmax in every mapping (warp rows, block rows, columns, one-block and two-pass
//! full reductions, rank 0 and 1), with ties, NaN, -inf, signed zeros and all-equal rows, at
//! static and symbolic sizes that are not multiples of a warp or a block.

use tensor_fn_kernels::check as common;

use std::collections::HashMap;

use common::{argmax_ref, check_loop, check_loop_data, round_to, run_program_typed, syms, Rng};
use tensor_fn_kernels::catalog::{classifier_kernel, labels_kernel, DTYPES};
use tensor_fn_kernels::ir::{
    Axis, BufId, Buffer, DType, Dim, Instr, IntTy, Ix, LoopKernel, RedKind, Reduction,
};
use tensor_fn_kernels::reduce::reduction_kernel;
use tensor_fn_kernels::Binary as B;

fn no_args() -> HashMap<u32, f64> {
    HashMap::new()
}

fn buf(dtype: DType, shape: &[Dim], int: Option<IntTy>) -> Buffer {
    Buffer {
        dtype,
        shape: shape.to_vec(),
        int,
    }
}

/// One line of scores with the case `pattern` (0..9) argmax must get right; `nan` allows the
/// patterns with NaN (others take their place).
fn line(rng: &mut Rng, n: usize, pattern: usize, nan: bool) -> Vec<f64> {
    let pick = |rng: &mut Rng| (rng.next_u64() % n.max(1) as u64) as usize;
    let mut v = rng.vec(n, -1.0, 1.0);
    match pattern % 9 {
        // Random.
        0 => {}
        // All equal: the first position.
        1 => v.iter_mut().for_each(|x| *x = 0.25),
        // All -inf: the first position.
        2 => v.iter_mut().for_each(|x| *x = f64::NEG_INFINITY),
        // Many ties of the maximum.
        3 => v
            .iter_mut()
            .for_each(|x| *x = (*x * 1.5).round().clamp(-1.0, 1.0)),
        // Two NaNs: the first of them (without NaN: two equal maxima).
        4 => {
            let (a, b) = (pick(rng), pick(rng));
            let fill = if nan { f64::NAN } else { 2.0 };
            if n > 0 {
                v[a] = fill;
                v[b] = fill;
            }
        }
        // -inf sprinkled, +inf twice.
        5 => {
            for x in v.iter_mut() {
                if *x < 0.0 {
                    *x = f64::NEG_INFINITY;
                }
            }
            if n > 0 {
                let (a, b) = (pick(rng), pick(rng));
                v[a] = f64::INFINITY;
                v[b] = f64::INFINITY;
            }
        }
        // NaN last (without NaN: the maximum last).
        6 => {
            if let Some(x) = v.last_mut() {
                *x = if nan { f64::NAN } else { 5.0 };
            }
        }
        // Decreasing: the maximum at position 0, where the identity's position is too.
        7 => {
            for (p, x) in v.iter_mut().enumerate() {
                *x = -(p as f64);
            }
        }
        // Signed zeros and negatives: -0 and +0 tie, the first wins.
        _ => {
            for x in v.iter_mut() {
                *x = match (*x * 3.0) as i64 {
                    0 => -0.0,
                    1 | 2 => 0.0,
                    _ => -1.0,
                };
            }
        }
    }
    v
}

/// Scores `[m, n]` whose rows (`by_rows`) or columns follow the patterns of [`line`].
fn scores(seed: u64, m: usize, n: usize, by_rows: bool, nan: bool) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    let mut x = vec![0.0; m * n];
    if by_rows {
        for i in 0..m {
            let l = line(&mut rng, n, i + seed as usize, nan);
            x[i * n..(i + 1) * n].copy_from_slice(&l);
        }
    } else {
        for j in 0..n {
            let l = line(&mut rng, m, j + seed as usize, nan);
            for i in 0..m {
                x[i * n + j] = l[i];
            }
        }
    }
    x
}

/// Labels in `[-1, n]`: mostly classes, some matching no column.
fn labels(seed: u64, m: usize, n: usize) -> Vec<f64> {
    let mut rng = Rng::new(seed ^ 0xABCD);
    (0..m)
        .map(|_| (rng.next_u64() % (n as u64 + 2)) as f64 - 1.0)
        .collect()
}

fn data(pairs: Vec<(BufId, Vec<f64>)>) -> HashMap<BufId, Vec<f64>> {
    pairs.into_iter().collect()
}

/// Sizes around every threshold of the lowering: a warp (32), a warp row (256), a block, the
/// one-block full reduction (8192 points).
const SHAPES: [(u64, u64); 12] = [
    (1, 1),
    (3, 7),
    (20, 10),
    (8, 31),
    (5, 32),
    (9, 33),
    (4, 256),
    (3, 257),
    (2, 1000),
    (40, 257),
    (33, 1),
    (1, 300),
];

#[test]
fn argmax_ref_is_numpys() {
    let inf = f64::INFINITY;
    let nan = f64::NAN;
    assert_eq!(argmax_ref(&[]), 0);
    assert_eq!(argmax_ref(&[1.0, 3.0, 3.0, 2.0]), 1);
    assert_eq!(argmax_ref(&[1.0, nan, 5.0, nan]), 1);
    assert_eq!(argmax_ref(&[-inf, -inf]), 0);
    assert_eq!(argmax_ref(&[-inf, 0.5, inf, inf]), 2);
    assert_eq!(argmax_ref(&[-1.0, -0.0, 0.0]), 1);
    assert_eq!(argmax_ref(&[inf, nan]), 1);
}

/// One-hot, picking, row/column/full argmax into i64/i32 buffers, `where` and an integer
/// store, for both dtypes, static and symbolic dims, rows and columns of every pattern.
#[test]
fn classifier_every_mapping() {
    for dtype in DTYPES {
        for (s, (m, n)) in SHAPES.into_iter().enumerate() {
            for (by_rows, nan) in [(true, false), (true, true), (false, false), (false, true)] {
                let seed = s as u64 * 8 + by_rows as u64 * 2 + nan as u64;
                let d = data(vec![
                    (0, scores(seed, m as usize, n as usize, by_rows, nan)),
                    (1, labels(seed, m as usize, n as usize)),
                ]);
                let what = format!(
                    "classifier {} [{m}, {n}] rows={by_rows} nan={nan}",
                    dtype.name()
                );
                let k = classifier_kernel(dtype, Dim::Static(m), Dim::Static(n));
                check_loop_data(
                    &format!("{what} static"),
                    &k,
                    &syms(&[]),
                    &no_args(),
                    &d,
                    0.0,
                );
                let k = classifier_kernel(dtype, Dim::Sym(0), Dim::Sym(1));
                check_loop_data(
                    &format!("{what} symbolic"),
                    &k,
                    &syms(&[(0, m), (1, n)]),
                    &no_args(),
                    &d,
                    0.0,
                );
            }
        }
    }
}

/// A 2x3 case with known answers.
#[test]
fn classifier_known_values() {
    let dtype = DType::F32;
    let k = classifier_kernel(dtype, Dim::Static(2), Dim::Static(3));
    let program = tensor_fn_kernels::lower_loop(&k).unwrap();
    let x = vec![0.5, 2.0, 2.0, f64::NAN, 0.0, 7.0];
    let y = vec![2.0, 5.0];
    let bufs: Vec<(BufId, usize, Option<IntTy>)> = (0..k.bufs.len())
        .map(|b| {
            let n = common::elems(&k.bufs[b].shape, &syms(&[])).max(1);
            (b, n, k.bufs[b].int)
        })
        .collect();
    let (got, _) = run_program_typed(
        &program,
        dtype,
        &bufs,
        &data(vec![(0, x), (1, y)]),
        &syms(&[]),
        &no_args(),
    );
    assert_eq!(got[&2], [0.0, 0.0, 1.0, 0.0, 0.0, 0.0], "one-hot");
    // Picking by a product propagates the NaN of an entry it does not pick (NaN * 0).
    assert_eq!(got[&3][0], 2.0, "picked");
    assert!(got[&3][1].is_nan(), "picked: {:?}", got[&3]);
    assert_eq!(got[&4], [1.0, 0.0], "row argmax: first tie, first NaN");
    // where(x, j, y[i]): NaN is not 0, so it picks j.
    assert_eq!(got[&5], [0.0, 1.0, 2.0, 0.0, 5.0, 2.0], "where");
    assert_eq!(got[&6], [1.0, 0.0, 1.0], "column argmax");
    assert_eq!(got[&7], [3.0], "flat argmax: the NaN");
    assert_eq!(got[&8], [2.0, 3.0, 4.0, 5.0, 6.0, 7.0], "y + j as i32");
}

/// Rank 1: error rate and count over i64 predictions and labels, argmax of a computed value
/// into a float buffer, `where` into an i64 buffer; one-block and two-pass sizes.
#[test]
fn labels_rank_one() {
    for dtype in DTYPES {
        for n in [1u64, 31, 33, 256, 1000, 8192, 8193, 20_000] {
            for nan in [false, true] {
                let nu = n as usize;
                let mut rng = Rng::new(n);
                let p: Vec<f64> = (0..nu).map(|_| (rng.next_u64() % 10) as f64).collect();
                let y: Vec<f64> = (0..nu).map(|_| (rng.next_u64() % 10) as f64).collect();
                let s = line(&mut rng, nu, n as usize, nan);
                let d = data(vec![(0, p), (1, y), (2, s)]);
                let what = format!("labels {} [{n}] nan={nan}", dtype.name());
                let k = labels_kernel(dtype, Dim::Static(n));
                check_loop_data(
                    &format!("{what} static"),
                    &k,
                    &syms(&[]),
                    &no_args(),
                    &d,
                    1.0,
                );
                let k = labels_kernel(dtype, Dim::Sym(0));
                check_loop_data(
                    &format!("{what} symbolic"),
                    &k,
                    &syms(&[(0, n)]),
                    &no_args(),
                    &d,
                    1.0,
                );
            }
        }
    }
}

/// The library argmax over every axis and strategy, with crafted rows and columns and random
/// data.
#[test]
fn library_argmax() {
    for dtype in DTYPES {
        for n in [1u64, 31, 33, 300, 1000] {
            for dims in [vec![Dim::Static(n)], vec![Dim::Sym(0)]] {
                let k = reduction_kernel(dtype, RedKind::ArgMax, &dims, Axis::All);
                for pattern in 0..9 {
                    let mut rng = Rng::new(n + pattern as u64);
                    let d = data(vec![(0, line(&mut rng, n as usize, pattern, true))]);
                    let name =
                        format!("argmax {} [{n}] {:?} pattern {pattern}", dtype.name(), dims);
                    check_loop_data(&name, &k, &syms(&[(0, n)]), &no_args(), &d, 0.0);
                }
            }
            for (m, dims) in [
                (3u64, vec![Dim::Static(3), Dim::Static(n)]),
                (5, vec![Dim::Sym(1), Dim::Sym(0)]),
                (n, vec![Dim::Sym(0), Dim::Static(33)]),
            ] {
                let cols = if m == n { 33 } else { n };
                for axis in [Axis::All, Axis::One(0), Axis::One(1)] {
                    let k = reduction_kernel(dtype, RedKind::ArgMax, &dims, axis);
                    let name = format!("argmax {} {dims:?} (m={m}, n={n}) {axis:?}", dtype.name());
                    let sy = syms(&[(0, n), (1, m)]);
                    check_loop(&name, &k, &sy, &no_args(), -1.0, 1.0, 0.0, n + m);
                    for by_rows in [true, false] {
                        let x = scores(n + m, m as usize, cols as usize, by_rows, !by_rows);
                        let d = data(vec![(0, x)]);
                        check_loop_data(&format!("{name} crafted"), &k, &sy, &no_args(), &d, 0.0);
                    }
                }
            }
        }
    }
}

/// 300000 points: the two-pass argmax with 1024 partials, where the winning positions sit in
/// different partials than their ties.
#[test]
fn argmax_large_grid() {
    let n = 300_000usize;
    for dtype in DTYPES {
        let k = reduction_kernel(dtype, RedKind::ArgMax, &[Dim::Sym(0)], Axis::All);
        let program = tensor_fn_kernels::lower_loop(&k).unwrap();
        let run = |x: Vec<f64>| -> f64 {
            let (got, _) = run_program_typed(
                &program,
                dtype,
                &[(0, n, None), (1, 1, Some(IntTy::I64))],
                &data(vec![(0, x)]),
                &syms(&[(0, n as u64)]),
                &no_args(),
            );
            got[&1][0]
        };
        let mut rng = Rng::new(5);
        let base: Vec<f64> = rng
            .vec(n, -1.0, 1.0)
            .into_iter()
            .map(|x| round_to(dtype, x))
            .collect();
        let mut x = base.clone();
        x[290_001] = 3.0;
        x[5_000] = 3.0;
        x[170_000] = 3.0;
        assert_eq!(run(x), 5_000.0, "{dtype:?}: the first of three maxima");
        let mut x = base.clone();
        x[200_000] = f64::NAN;
        x[123_456] = f64::NAN;
        x[7] = f64::INFINITY;
        assert_eq!(run(x), 123_456.0, "{dtype:?}: the first NaN");
        // 1024 blocks stride 262144 points: block 3's partial (position 262912, from its
        // second trip) comes before block 259's (position 66304) in the second pass's thread
        // 3, so the partials must be folded by position, not in the order they are read.
        let mut x = base.clone();
        x[262_912] = 3.0;
        x[66_304] = 3.0;
        assert_eq!(run(x), 66_304.0, "{dtype:?}: ties across partials");
        let mut x = base.clone();
        x[262_912] = f64::NAN;
        x[66_304] = f64::NAN;
        assert_eq!(run(x), 66_304.0, "{dtype:?}: NaNs across partials");
        assert_eq!(run(vec![f64::NEG_INFINITY; n]), 0.0, "{dtype:?}: all -inf");
        assert_eq!(run(vec![1.5; n]), 0.0, "{dtype:?}: all equal");
        let mut x = vec![f64::NEG_INFINITY; n];
        x[n - 1] = -1e30;
        assert_eq!(run(x), (n - 1) as f64, "{dtype:?}: the last point");
        // Positions above 2^24, where an f32 position would round: stored exactly.
        let d = data(vec![(0, base)]);
        check_loop_data(
            &format!("argmax {} [{n}] random", dtype.name()),
            &k,
            &syms(&[(0, n as u64)]),
            &no_args(),
            &d,
            0.0,
        );
    }
}

/// A flat argmax position above 2^24 in an f32 kernel is exact in an i64 buffer.
#[test]
fn argmax_position_beyond_f32_mantissa() {
    let dtype = DType::F32;
    let (m, n) = (4097usize, 4097usize);
    let k = reduction_kernel(
        dtype,
        RedKind::ArgMax,
        &[Dim::Sym(0), Dim::Sym(1)],
        Axis::All,
    );
    let program = tensor_fn_kernels::lower_loop(&k).unwrap();
    let mut x = vec![0.0; m * n];
    let at = m * n - 2; // 16785407: odd, above 2^24, not an f32
    x[at] = 1.0;
    let (got, _) = run_program_typed(
        &program,
        dtype,
        &[(0, m * n, None), (1, 1, Some(IntTy::I64))],
        &data(vec![(0, x)]),
        &syms(&[(0, m as u64), (1, n as u64)]),
        &no_args(),
    );
    assert_eq!(got[&1][0], at as f64);
}

/// Argmax of a rank-0 space is 0, whatever the value (NaN included), into i64 and i32
/// buffers; other reductions of it are the value.
#[test]
fn rank_zero_argmax() {
    for dtype in DTYPES {
        let k = LoopKernel {
            dtype,
            dims: vec![],
            bufs: vec![
                buf(dtype, &[], None),
                buf(dtype, &[], Some(IntTy::I64)),
                buf(dtype, &[], None),
                buf(dtype, &[], Some(IntTy::I32)),
            ],
            instrs: vec![
                Instr::Load {
                    buf: 0,
                    index: vec![],
                },
                Instr::Unary(tensor_fn_kernels::Unary::Neg, 0),
            ],
            stores: vec![],
            reductions: vec![
                Reduction {
                    kind: RedKind::ArgMax,
                    axis: Axis::All,
                    value: 0,
                    out: 1,
                },
                Reduction {
                    kind: RedKind::Max,
                    axis: Axis::All,
                    value: 0,
                    out: 2,
                },
                Reduction {
                    kind: RedKind::ArgMax,
                    axis: Axis::All,
                    value: 1,
                    out: 3,
                },
            ],
        };
        for x in [2.5, f64::NAN, f64::NEG_INFINITY] {
            let d = data(vec![(0, vec![x])]);
            check_loop_data(
                &format!("rank 0 {} {x}", dtype.name()),
                &k,
                &syms(&[]),
                &no_args(),
                &d,
                0.0,
            );
        }
    }
}

/// Index values in every mapping: stored (elementwise), summed along rows and columns, and
/// combined into the flat index, whose sum and argmax a full reduction takes.
#[test]
fn index_values_in_every_mapping() {
    use Instr::*;
    for dtype in DTYPES {
        for (m, n) in [(1u64, 1u64), (3, 7), (9, 33), (3, 257), (40, 257)] {
            for (dm, dn) in [(Dim::Static(m), Dim::Static(n)), (Dim::Sym(0), Dim::Sym(1))] {
                let f = |shape: &[Dim]| buf(dtype, shape, None);
                let k = LoopKernel {
                    dtype,
                    dims: vec![dm, dn],
                    bufs: vec![
                        f(&[dm, dn]),
                        buf(dtype, &[dm, dn], Some(IntTy::I64)),
                        f(&[dm]),
                        f(&[dn]),
                        f(&[]),
                        buf(dtype, &[], Some(IntTy::I32)),
                        f(&[dm]),
                    ],
                    instrs: vec![
                        Index(Ix::Outer),     // %0 i
                        Index(Ix::Inner),     // %1 j
                        Index(Ix::Zero),      // %2 0
                        DimSize(dn),          // %3 n
                        Binary(B::Mul, 0, 3), // %4 i n
                        Binary(B::Add, 4, 1), // %5 i n + j
                        Binary(B::Add, 5, 2), // %6
                        Binary(B::Mul, 6, 6), // %7 (i n + j)^2
                    ],
                    stores: vec![(6, 0), (5, 1)],
                    reductions: vec![
                        Reduction {
                            kind: RedKind::Sum,
                            axis: Axis::One(1),
                            value: 1,
                            out: 2,
                        },
                        Reduction {
                            kind: RedKind::Sum,
                            axis: Axis::One(0),
                            value: 0,
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
                            value: 7,
                            out: 5,
                        },
                        Reduction {
                            kind: RedKind::Max,
                            axis: Axis::One(1),
                            value: 5,
                            out: 6,
                        },
                    ],
                };
                check_loop(
                    &format!("index {} [{m}, {n}] {dm:?}", dtype.name()),
                    &k,
                    &syms(&[(0, m), (1, n)]),
                    &no_args(),
                    0.0,
                    1.0,
                    1.0,
                    m + n,
                );
            }
        }
    }
}

/// `where` with NaN, zeros (both signs) and numbers as conditions, elementwise and inside row,
/// column and full reductions.
#[test]
fn selects() {
    use Instr::*;
    for dtype in DTYPES {
        for (m, n) in [(3u64, 7u64), (9, 300), (33, 40)] {
            let (dm, dn) = (Dim::Sym(0), Dim::Static(n));
            let f = |shape: &[Dim]| buf(dtype, shape, None);
            let k = LoopKernel {
                dtype,
                dims: vec![dm, dn],
                bufs: vec![
                    f(&[dm, dn]),
                    f(&[dn]),
                    f(&[dm, dn]),
                    f(&[dm]),
                    f(&[dn]),
                    f(&[]),
                ],
                instrs: vec![
                    Load {
                        buf: 0,
                        index: vec![Ix::Outer, Ix::Inner],
                    }, // %0 c
                    Load {
                        buf: 1,
                        index: vec![Ix::Inner],
                    }, // %1 a
                    Index(Ix::Outer),    // %2 b
                    Select(0, 1, 2),     // %3
                    Binary(B::Gt, 0, 1), // %4 c > a
                    Select(4, 0, 1),     // %5 maximum without NaN rules
                ],
                stores: vec![(3, 2)],
                reductions: vec![
                    Reduction {
                        kind: RedKind::Sum,
                        axis: Axis::One(1),
                        value: 3,
                        out: 3,
                    },
                    Reduction {
                        kind: RedKind::Max,
                        axis: Axis::One(0),
                        value: 5,
                        out: 4,
                    },
                    Reduction {
                        kind: RedKind::Sum,
                        axis: Axis::All,
                        value: 5,
                        out: 5,
                    },
                ],
            };
            let mut rng = Rng::new(m * n);
            let c: Vec<f64> = (0..m * n)
                .map(|_| match rng.next_u64() % 5 {
                    0 => 0.0,
                    1 => -0.0,
                    2 => f64::NAN,
                    _ => rng.uniform(-1.0, 1.0),
                })
                .collect();
            let nan_free: Vec<f64> = c
                .iter()
                .map(|x| if x.is_nan() { 0.5 } else { *x })
                .collect();
            let a = rng.vec(n as usize, -1.0, 1.0);
            for (what, c) in [("nan", c), ("numbers", nan_free)] {
                let d = data(vec![(0, c), (1, a.clone())]);
                check_loop_data(
                    &format!("select {} [{m}, {n}] {what}", dtype.name()),
                    &k,
                    &syms(&[(0, m)]),
                    &no_args(),
                    &d,
                    1.0,
                );
            }
        }
    }
}

/// The one-hot and picking idioms of the language (`onehot(y, k)`, `x[arange(n), y]` as
/// `sum(x * eq(y[i], j), axis = 1)`), with i64 and i32 labels, on their own kernels.
#[test]
fn one_hot_and_picking() {
    use Instr::*;
    for dtype in DTYPES {
        for int in [IntTy::I64, IntTy::I32] {
            for (m, n) in [(2u64, 3u64), (20, 10), (7, 500), (33, 1000)] {
                let (dm, dn) = (Dim::Sym(0), Dim::Sym(1));
                let onehot = LoopKernel {
                    dtype,
                    dims: vec![dm, dn],
                    bufs: vec![buf(dtype, &[dm], Some(int)), buf(dtype, &[dm, dn], None)],
                    instrs: vec![
                        Load {
                            buf: 0,
                            index: vec![Ix::Outer],
                        },
                        Index(Ix::Inner),
                        Binary(B::Eq, 0, 1),
                    ],
                    stores: vec![(2, 1)],
                    reductions: vec![],
                };
                let picking = LoopKernel {
                    dtype,
                    dims: vec![dm, dn],
                    bufs: vec![
                        buf(dtype, &[dm, dn], None),
                        buf(dtype, &[dm], Some(int)),
                        buf(dtype, &[dm], None),
                    ],
                    instrs: vec![
                        Load {
                            buf: 0,
                            index: vec![Ix::Outer, Ix::Inner],
                        },
                        Load {
                            buf: 1,
                            index: vec![Ix::Outer],
                        },
                        Index(Ix::Inner),
                        Binary(B::Eq, 1, 2),
                        Binary(B::Mul, 0, 3),
                    ],
                    stores: vec![],
                    reductions: vec![Reduction {
                        kind: RedKind::Sum,
                        axis: Axis::One(1),
                        value: 4,
                        out: 2,
                    }],
                };
                let sy = syms(&[(0, m), (1, n)]);
                let y = labels(m + n, m as usize, n as usize);
                let x = scores(m, m as usize, n as usize, true, false);
                let what = format!("{} {int:?} [{m}, {n}]", dtype.name());
                check_loop_data(
                    &format!("one-hot {what}"),
                    &onehot,
                    &sy,
                    &no_args(),
                    &data(vec![(0, y.clone())]),
                    0.0,
                );
                check_loop_data(
                    &format!("picking {what}"),
                    &picking,
                    &sy,
                    &no_args(),
                    &data(vec![(0, x.clone()), (1, y.clone())]),
                    0.0,
                );
                // The picked entries, exactly, from the inputs.
                let program = tensor_fn_kernels::lower_loop(&picking).unwrap();
                let (got, _) = run_program_typed(
                    &program,
                    dtype,
                    &[
                        (0, (m * n) as usize, None),
                        (1, m as usize, Some(int)),
                        (2, m as usize, None),
                    ],
                    &data(vec![(0, x.clone()), (1, y.clone())]),
                    &sy,
                    &no_args(),
                );
                for i in 0..m as usize {
                    let want = match y[i] {
                        c if c >= 0.0 && c < n as f64 => {
                            round_to(dtype, x[i * n as usize + c as usize])
                        }
                        _ => 0.0,
                    };
                    let got = got[&2][i];
                    // x * 0 is -0 for negative x, and -inf * 0 is NaN: compare as numbers.
                    assert!(
                        got == want
                            || (got.is_nan()
                                && x[i * n as usize..]
                                    .iter()
                                    .take(n as usize)
                                    .any(|v| v.is_infinite())),
                        "picking {what}: row {i}: got {got}, want {want}"
                    );
                }
            }
        }
    }
}

/// Argmax of computed values (f32 rounding can order near ties differently than the f64
/// reference; exact ties cannot).
#[test]
fn argmax_of_computed_values() {
    use Instr::*;
    for dtype in DTYPES {
        for (m, n) in [(5u64, 200u64), (3, 1000), (300, 40)] {
            let (dm, dn) = (Dim::Sym(0), Dim::Sym(1));
            let k = LoopKernel {
                dtype,
                dims: vec![dm, dn],
                bufs: vec![
                    buf(dtype, &[dm, dn], None),
                    buf(dtype, &[dm], Some(IntTy::I64)),
                    buf(dtype, &[dn], Some(IntTy::I64)),
                    buf(dtype, &[], None),
                ],
                instrs: vec![
                    Load {
                        buf: 0,
                        index: vec![Ix::Outer, Ix::Inner],
                    },
                    Unary(tensor_fn_kernels::Unary::Exp, 0),
                    Const(3.0),
                    Binary(B::Mul, 1, 2),
                ],
                stores: vec![],
                reductions: vec![
                    Reduction {
                        kind: RedKind::ArgMax,
                        axis: Axis::One(1),
                        value: 3,
                        out: 1,
                    },
                    Reduction {
                        kind: RedKind::ArgMax,
                        axis: Axis::One(0),
                        value: 3,
                        out: 2,
                    },
                    Reduction {
                        kind: RedKind::ArgMax,
                        axis: Axis::All,
                        value: 3,
                        out: 3,
                    },
                ],
            };
            for by_rows in [true, false] {
                let x = scores(m * n, m as usize, n as usize, by_rows, true);
                check_loop_data(
                    &format!("argmax exp {} [{m}, {n}] rows={by_rows}", dtype.name()),
                    &k,
                    &syms(&[(0, m), (1, n)]),
                    &no_args(),
                    &data(vec![(0, x)]),
                    8.0,
                );
            }
        }
    }
}

/// Integer buffers may carry any `dtype`; float buffers must have the kernel's.
#[test]
fn validation_of_integer_buffers() {
    let mut k = classifier_kernel(DType::F32, Dim::Sym(0), Dim::Sym(1));
    assert!(k.validate().is_ok());
    k.bufs[1].dtype = DType::F64;
    assert!(k.validate().is_ok(), "an i64 buffer's dtype is not used");
    k.bufs[0].dtype = DType::F64;
    assert!(k.validate().unwrap_err().0.contains("is f64"));
}

/// The launches and scratch of the classifier kernel: argmax partials carry positions.
#[test]
fn classifier_launch_plans() {
    let names = |k: &LoopKernel| -> Vec<String> {
        tensor_fn_kernels::lower_loop(k)
            .unwrap()
            .launches
            .iter()
            .map(|l| l.meta.name.split('_').take(2).collect::<Vec<_>>().join("_"))
            .collect()
    };
    for dtype in DTYPES {
        assert_eq!(
            names(&classifier_kernel(dtype, Dim::Static(20), Dim::Static(10))),
            ["tf_rowsw", "tf_cols", "tf_red"]
        );
        let k = classifier_kernel(dtype, Dim::Sym(0), Dim::Sym(1));
        assert_eq!(names(&k), ["tf_rows", "tf_cols", "tf_red1", "tf_red2"]);
        let p = tensor_fn_kernels::lower_loop(&k).unwrap();
        assert_eq!(
            p.scratch[0].bytes,
            tensor_fn_kernels::Size::Const(1024 * (dtype.bytes() as u64 + 4))
        );
        assert_eq!(
            names(&labels_kernel(dtype, Dim::Static(1000))),
            ["tf_red"],
            "one block for 1000 points"
        );
    }
}

/// Floats stored into integer buffers round toward zero, NaN becomes 0 and what does not fit
/// saturates (PTX's `cvt.rzi`): elementwise stores and reduction outputs, i32 and i64.
#[test]
fn integer_stores_round_toward_zero() {
    use Instr::*;
    for dtype in DTYPES {
        for n in [5u64, 33, 1000] {
            let d = Dim::Sym(0);
            let k = LoopKernel {
                dtype,
                dims: vec![d],
                bufs: vec![
                    buf(dtype, &[d], None),
                    buf(dtype, &[d], Some(IntTy::I32)),
                    buf(dtype, &[d], Some(IntTy::I64)),
                    buf(dtype, &[], Some(IntTy::I64)),
                    buf(dtype, &[], Some(IntTy::I32)),
                ],
                instrs: vec![
                    Load {
                        buf: 0,
                        index: vec![Ix::Inner],
                    },
                    Const(3.0),
                    Binary(B::Mul, 0, 1),
                ],
                stores: vec![(2, 1), (2, 2)],
                reductions: vec![
                    Reduction {
                        kind: RedKind::Sum,
                        axis: Axis::All,
                        value: 0,
                        out: 3,
                    },
                    Reduction {
                        kind: RedKind::Max,
                        axis: Axis::All,
                        value: 2,
                        out: 4,
                    },
                ],
            };
            let mut rng = Rng::new(n);
            let mut x = rng.vec(n as usize, -20.0, 20.0);
            x[0] = -0.9;
            x[1] = -2.5;
            x[2] = 0.5;
            x[3] = f64::NAN;
            x[4] = -1e12;
            let sy = syms(&[(0, n)]);
            let what = format!("int stores {} [{n}]", dtype.name());
            check_loop_data(&what, &k, &sy, &no_args(), &data(vec![(0, x.clone())]), 1.0);
            x[3] = 0.0;
            x[4] = 2e12;
            let program = tensor_fn_kernels::lower_loop(&k).unwrap();
            let bufs: Vec<(BufId, usize, Option<IntTy>)> = (0..5)
                .map(|b| {
                    let len = common::elems(&k.bufs[b].shape, &sy).max(1);
                    (b, len, k.bufs[b].int)
                })
                .collect();
            let (got, _) = run_program_typed(
                &program,
                dtype,
                &bufs,
                &data(vec![(0, x.clone())]),
                &sy,
                &no_args(),
            );
            // -0.9 * 3 = -2.7 -> -2; -7.5 -> -7; 1.5 -> 1; 0; 6e12 saturates in i32.
            assert_eq!(
                got[&1][..5],
                [-2.0, -7.0, 1.0, 0.0, i32::MAX as f64],
                "{what}"
            );
            assert_eq!(got[&2][..4], [-2.0, -7.0, 1.0, 0.0], "{what}");
            assert_eq!(
                got[&2][4],
                round_to(dtype, round_to(dtype, 2e12) * 3.0),
                "{what}"
            );
            assert_eq!(got[&4][0], i32::MAX as f64, "{what}: max saturates");
        }
    }
}
