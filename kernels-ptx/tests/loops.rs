//! Fused loop kernels and library reductions, run on the interpreter and compared with the CPU
//! reference: every grouping (elementwise, warp rows, block rows, columns, one-block and
//! two-pass full reductions), static and symbolic dims, sizes that are not multiples of a warp
//! or a block, broadcasting and transposed loads, arguments and dim sizes.

use tensor_fn_kernels::check as common;

use std::collections::HashMap;

use common::{check_loop, syms};
use tensor_fn_kernels::catalog::{
    all_ops_kernel, mixed_kernel, scalar_kernel, transpose_kernel, DTYPES,
};
use tensor_fn_kernels::ir::{Axis, Binary, Buffer, DType, Dim, Instr, Ix, LoopKernel, RedKind};
use tensor_fn_kernels::reduce::reduction_kernel;

fn no_args() -> HashMap<u32, f64> {
    HashMap::new()
}

/// Every op, elementwise, over rank 1 and rank 2 spaces of awkward sizes.
#[test]
fn all_ops_elementwise() {
    for dtype in DTYPES {
        for n in [1u64, 31, 33, 1000] {
            let k = all_ops_kernel(dtype, &[Dim::Sym(0)]);
            check_loop(
                &format!("ops {} [{n}] sym", dtype.name()),
                &k,
                &syms(&[(0, n)]),
                &no_args(),
                -3.0,
                3.0,
                24.0,
                n,
            );
            let k = all_ops_kernel(dtype, &[Dim::Static(n)]);
            check_loop(
                &format!("ops {} [{n}] static", dtype.name()),
                &k,
                &syms(&[]),
                &no_args(),
                0.0,
                4.0,
                24.0,
                n + 7,
            );
        }
        let k = all_ops_kernel(dtype, &[Dim::Sym(0), Dim::Static(7)]);
        check_loop(
            &format!("ops {} [5, 7]", dtype.name()),
            &k,
            &syms(&[(0, 5)]),
            &no_args(),
            -3.0,
            3.0,
            24.0,
            3,
        );
    }
}

/// Stores, row sums, column maxima and two full reductions in one kernel.
#[test]
fn mixed_groups() {
    let shapes: [(u64, u64); 6] = [(1, 1), (3, 31), (20, 33), (5, 1000), (20, 784), (33, 257)];
    for dtype in DTYPES {
        for (m, n) in shapes {
            let args: HashMap<u32, f64> = [(0, 0.75)].into_iter().collect();
            let k = mixed_kernel(dtype, Dim::Static(m), Dim::Static(n));
            let name = format!("mixed {} [{m}, {n}] static", dtype.name());
            check_loop(&name, &k, &syms(&[]), &args, 0.1, 2.0, 64.0, m * 1000 + n);
            let k = mixed_kernel(dtype, Dim::Sym(0), Dim::Sym(1));
            let name = format!("mixed {} [{m}, {n}] symbolic", dtype.name());
            check_loop(
                &name,
                &k,
                &syms(&[(0, m), (1, n)]),
                &args,
                0.1,
                2.0,
                64.0,
                m * 1000 + n + 1,
            );
        }
    }
}

#[test]
fn transposed_and_broadcast_loads() {
    for dtype in DTYPES {
        for (m, n) in [(1u64, 1u64), (3, 31), (33, 20)] {
            let k = transpose_kernel(dtype, Dim::Sym(0), Dim::Sym(1));
            check_loop(
                &format!("transpose {} [{m}, {n}]", dtype.name()),
                &k,
                &syms(&[(0, m), (1, n)]),
                &no_args(),
                -1.0,
                1.0,
                2.0,
                m + n,
            );
        }
    }
}

#[test]
fn rank_zero_with_args_and_dim_sizes() {
    for dtype in DTYPES {
        let args: HashMap<u32, f64> = [(3, -1.25)].into_iter().collect();
        check_loop(
            &format!("scalar {}", dtype.name()),
            &scalar_kernel(dtype),
            &syms(&[(4, 1000)]),
            &args,
            -1.0,
            1.0,
            4.0,
            1,
        );
    }
}

/// Library reductions over 1, 31, 33 and 1000 elements, each strategy.
#[test]
fn library_reductions() {
    for dtype in DTYPES {
        for kind in [RedKind::Sum, RedKind::Max] {
            for n in [1u64, 31, 33, 1000] {
                for dims in [vec![Dim::Static(n)], vec![Dim::Sym(0)]] {
                    let k = reduction_kernel(dtype, kind, &dims, Axis::All);
                    let name = format!("{kind:?} {} [{n}] {:?}", dtype.name(), dims[0]);
                    check_loop(&name, &k, &syms(&[(0, n)]), &no_args(), -1.0, 1.0, 1.0, n);
                }
                for (m, dims) in [
                    (3u64, vec![Dim::Static(3), Dim::Static(n)]),
                    (5, vec![Dim::Sym(1), Dim::Sym(0)]),
                    (n, vec![Dim::Sym(0), Dim::Static(33)]),
                ] {
                    for axis in [Axis::All, Axis::One(0), Axis::One(1)] {
                        let k = reduction_kernel(dtype, kind, &dims, axis);
                        let name =
                            format!("{kind:?} {} {dims:?} (m={m}, n={n}) {axis:?}", dtype.name());
                        check_loop(
                            &name,
                            &k,
                            &syms(&[(0, n), (1, m)]),
                            &no_args(),
                            -1.0,
                            1.0,
                            1.0,
                            n + m,
                        );
                    }
                }
            }
        }
    }
}

/// Big enough for many blocks: the two-pass reduction with 1024 partials and threads that
/// loop more than once, and an elementwise grid at its cap.
#[test]
fn large_grids() {
    let dtype = DType::F32;
    let n = 300_000u64;
    let k = reduction_kernel(dtype, RedKind::Sum, &[Dim::Sym(0)], Axis::All);
    let stats = check_loop(
        "sum f32 [300000]",
        &k,
        &syms(&[(0, n)]),
        &no_args(),
        -1.0,
        1.0,
        1.0,
        9,
    );
    assert!(
        stats.barriers >= 1024,
        "expected one block per partial: {stats:?}"
    );
    let k = reduction_kernel(DType::F64, RedKind::Max, &[Dim::Sym(0)], Axis::All);
    check_loop(
        "max f64 [300000]",
        &k,
        &syms(&[(0, n)]),
        &no_args(),
        -1.0,
        1.0,
        1.0,
        10,
    );

    // 4096 blocks of 256 threads, then a second trip for the last elements.
    let n = 4096 * 256 + 1000;
    let k = LoopKernel {
        dtype,
        dims: vec![Dim::Sym(0)],
        bufs: vec![
            Buffer {
                dtype,
                shape: vec![Dim::Sym(0)],
                int: None,
            },
            Buffer {
                dtype,
                shape: vec![Dim::Sym(0)],
                int: None,
            },
        ],
        instrs: vec![
            Instr::Load {
                buf: 0,
                index: vec![Ix::Inner],
            },
            Instr::Binary(Binary::Add, 0, 0),
        ],
        stores: vec![(1, 1)],
        reductions: vec![],
    };
    check_loop(
        "x + x [1049576]",
        &k,
        &syms(&[(0, n)]),
        &no_args(),
        -1.0,
        1.0,
        1.0,
        11,
    );
}

/// NaN propagates through max reductions, sums and elementwise maxima as on the CPU.
#[test]
fn nan_propagates() {
    let dtype = DType::F32;
    for n in [31u64, 1000] {
        let k = reduction_kernel(
            dtype,
            RedKind::Max,
            &[Dim::Static(3), Dim::Static(n)],
            Axis::One(1),
        );
        let program = tensor_fn_kernels::lower_loop(&k).unwrap();
        let mut data: Vec<f64> = (0..3 * n).map(|i| i as f64).collect();
        data[n as usize + 5] = f64::NAN;
        let d: HashMap<usize, Vec<f64>> = [(0, data)].into_iter().collect();
        let (got, _) = common::run_program(
            &program,
            dtype,
            &[(0, 3 * n as usize), (1, 3)],
            &d,
            &syms(&[]),
            &no_args(),
        );
        let out = &got[&1];
        assert_eq!(out[0], (n - 1) as f64);
        assert!(out[1].is_nan(), "row with a NaN: {out:?}");
        assert_eq!(out[2], (3 * n - 1) as f64);
    }
}

/// Validation rejects malformed kernels with a message instead of generating wrong code.
#[test]
fn malformed_kernels_are_rejected() {
    let dtype = DType::F32;
    let good = all_ops_kernel(dtype, &[Dim::Sym(0)]);
    assert!(good.validate().is_ok());
    let mut k = good.clone();
    k.instrs
        .push(Instr::Unary(tensor_fn_kernels::Unary::Exp, 1000));
    assert!(k.validate().unwrap_err().0.contains("not defined before"));
    let mut k = good.clone();
    k.instrs[0] = Instr::Load {
        buf: 0,
        index: vec![Ix::Outer],
    };
    assert!(k.validate().unwrap_err().0.contains("Outer"));
    let mut k = good.clone();
    k.bufs[0].dtype = DType::F64;
    assert!(k.validate().unwrap_err().0.contains("is f64"));
    // Reading and writing one buffer is allowed in place only (every load of it at the point
    // written, no reductions): an update loop writing its parameter.
    let mut k = good.clone();
    k.stores.push((0, 0));
    let in_place = k.validate();
    k.instrs.push(Instr::Load {
        buf: 0,
        index: vec![Ix::Zero],
    });
    assert!(k
        .validate()
        .unwrap_err()
        .0
        .contains("both read and written"));
    if good.reductions.is_empty() {
        assert!(in_place.is_ok(), "{in_place:?}");
    } else {
        assert!(in_place.unwrap_err().0.contains("both read and written"));
    }
    let mut k = mixed_kernel(dtype, Dim::Sym(0), Dim::Sym(1));
    k.reductions[0].axis = Axis::One(2);
    assert!(tensor_fn_kernels::lower_loop(&k).is_err());
}

/// The grouping the lowering picks for each kind of output, as launch names.
#[test]
fn launch_plans() {
    let names = |k: &LoopKernel| -> Vec<String> {
        tensor_fn_kernels::lower_loop(k)
            .unwrap()
            .launches
            .iter()
            .map(|l| l.meta.name.split('_').take(2).collect::<Vec<_>>().join("_"))
            .collect()
    };
    let f = DType::F32;
    assert_eq!(names(&all_ops_kernel(f, &[Dim::Sym(0)])), ["tf_ew"]);
    assert_eq!(
        names(&mixed_kernel(f, Dim::Static(20), Dim::Static(33))),
        ["tf_rowsw", "tf_cols", "tf_red"]
    );
    assert_eq!(
        names(&mixed_kernel(f, Dim::Sym(0), Dim::Sym(1))),
        ["tf_rows", "tf_cols", "tf_red1", "tf_red2"]
    );
    assert_eq!(names(&scalar_kernel(f)), ["tf_ew"]);
    let p = tensor_fn_kernels::lower_loop(&mixed_kernel(f, Dim::Sym(0), Dim::Sym(1))).unwrap();
    assert_eq!(p.scratch.len(), 2, "one partials region per full reduction");
}
