//! The convolution and pooling programs on the interpreter against their definitions (in f64):
//! both dtypes, with and without flip, odd sizes (no tile multiple), filters as large as the
//! image and filters and windows too wide to unroll, a static or symbolic number of images,
//! ties and NaNs in the pooled windows, and a grid cut to two blocks along z, so that blocks
//! loop over the images past the grid as they do past 65535 images.

use std::collections::HashMap;

use tensor_fn_kernels::catalog::DTYPES;
use tensor_fn_kernels::check::{round_to, unit, Rng};
use tensor_fn_kernels::conv::{call, CallOp, ConvGeom};
use tensor_fn_kernels::ir::{DType, Dim};
use tensor_fn_kernels::meta::{ParamTy, Program, Role};
use tensor_fn_kernels::vm::{self, Arg, Memory};

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

/// Runs a call's program on buffers 0 (and 1) into buffer 2 of `out_len` elements (fresh
/// memory: NaN), with dim 0 = `n`, like a runtime would; with `z_cap` the grid's z is cut to
/// it. Returns the output.
fn run(
    p: &Program,
    dtype: DType,
    args: &[&[f64]],
    out_len: usize,
    n: usize,
    z_cap: Option<u32>,
) -> Vec<f64> {
    let mut mem = Memory::new();
    let mut ptrs: HashMap<usize, u64> = HashMap::new();
    for (i, a) in args.iter().enumerate() {
        ptrs.insert(i, upload(&mut mem, dtype, a));
    }
    let out = mem.alloc(out_len * dtype.bytes() as usize);
    ptrs.insert(2, out);
    let dims = |id: u32| -> u64 {
        assert_eq!(id, 0, "only dim 0 is bound");
        n as u64
    };
    let scratch: Vec<u64> = p
        .scratch
        .iter()
        .map(|s| mem.alloc(s.bytes.eval(&dims) as usize))
        .collect();
    for l in &p.launches {
        let m = &l.meta;
        let args: Vec<Arg> = m
            .params
            .iter()
            .map(|prm| match (prm.role, prm.ty) {
                (Role::Buf(b), ParamTy::Ptr) => Arg::U64(ptrs[&b]),
                (Role::Scratch(i), ParamTy::Ptr) => Arg::U64(scratch[i]),
                (Role::Dim(d), ParamTy::U32) => Arg::U32(dims(d) as u32),
                (Role::Const(c), ParamTy::F32) => Arg::F32(f64::from_bits(c) as f32),
                (Role::Const(c), ParamTy::F64) => Arg::F64(f64::from_bits(c)),
                (r, t) => panic!("{}: parameter {} ({t:?}) bound to {r:?}", m.name, prm.name),
            })
            .collect();
        let mut grid = m.grid.clone().map(|s| s.eval(&dims) as u32);
        if let Some(cap) = z_cap {
            grid[2] = grid[2].min(cap);
        }
        vm::launch(&l.kernel, grid, m.block, &args, &mut mem)
            .unwrap_or_else(|e| panic!("interpreter: {e}"));
    }
    read(&mem, dtype, out, out_len)
}

/// The definition: for every image b, filter o, output pixel (i, j), channel ch and tap (u, v),
/// the term `x[b, ch, i + u, j + v] * f[o, ch, u', v']` (u', v' flipped with `flip`) adds to
/// `out[b, o, i, j]`; `visit(x index, f index, out index)` sees each term once.
fn terms(s: &ConvGeom, n: usize, flip: bool, mut visit: impl FnMut(usize, usize, usize)) {
    let (c, h, w, k, fh, fw) = (
        s.c as usize,
        s.h as usize,
        s.w as usize,
        s.k as usize,
        s.fh as usize,
        s.fw as usize,
    );
    let (oh, ow) = (h - fh + 1, w - fw + 1);
    for b in 0..n {
        for o in 0..k {
            for i in 0..oh {
                for j in 0..ow {
                    for ch in 0..c {
                        for u in 0..fh {
                            for v in 0..fw {
                                let (fu, fv) = if flip {
                                    (fh - 1 - u, fw - 1 - v)
                                } else {
                                    (u, v)
                                };
                                visit(
                                    ((b * c + ch) * h + i + u) * w + j + v,
                                    ((o * c + ch) * fh + fu) * fw + fv,
                                    ((b * k + o) * oh + i) * ow + j,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Compares with a bound of (terms + 2) roundings of the sum of the terms' magnitudes.
fn close(what: &str, dtype: DType, got: &[f64], want: &[(f64, f64, usize)]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, &(v, abs, count))) in got.iter().zip(want).enumerate() {
        let tol = (count as f64 + 2.0) * unit(dtype) * abs + 1e-300;
        assert!(
            (g - v).abs() <= tol,
            "{what}: element {i}: got {g:e}, want {v:e} (tolerance {tol:e})"
        );
    }
}

/// Accumulates `x * y` into (sum, sum of magnitudes, count).
fn add(acc: &mut (f64, f64, usize), x: f64, y: f64) {
    acc.0 += x * y;
    acc.1 += (x * y).abs();
    acc.2 += 1;
}

const GEOMS: [(ConvGeom, usize); 4] = [
    // Odd sizes: 7x9 images, 3x2 filters, 3 channels, 4 filters, 5 images.
    (
        ConvGeom {
            c: 3,
            h: 7,
            w: 9,
            k: 4,
            fh: 3,
            fw: 2,
        },
        5,
    ),
    // Filters too wide to unroll (loops over their rows and columns).
    (
        ConvGeom {
            c: 2,
            h: 11,
            w: 12,
            k: 3,
            fh: 10,
            fw: 9,
        },
        2,
    ),
    // Filters as large as the image: one output pixel.
    (
        ConvGeom {
            c: 2,
            h: 6,
            w: 5,
            k: 3,
            fh: 6,
            fw: 5,
        },
        3,
    ),
    (
        ConvGeom {
            c: 1,
            h: 1,
            w: 1,
            k: 1,
            fh: 1,
            fw: 1,
        },
        1,
    ),
];

fn conv_case(dtype: DType, geom: ConvGeom, n: usize, flip: bool, symbolic: bool, seed: u64) {
    let nd = if symbolic {
        Dim::Sym(0)
    } else {
        Dim::Static(n as u64)
    };
    let s = geom;
    let (oh, ow) = ((s.h - s.fh + 1) as usize, (s.w - s.fw + 1) as usize);
    let x_len = n * (s.c * s.h * s.w) as usize;
    let f_len = (s.k * s.c * s.fh * s.fw) as usize;
    let o_len = n * s.k as usize * oh * ow;
    let mut rng = Rng::new(seed);
    let r = |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(|x| round_to(dtype, x)).collect() };
    let (x, f, g) = (
        r(rng.vec(x_len, -1.0, 1.0)),
        r(rng.vec(f_len, -1.0, 1.0)),
        r(rng.vec(o_len, -1.0, 1.0)),
    );
    let what = |op: &str, z: Option<u32>| {
        format!(
            "{} {op} {s:?} n={n} flip={flip} sym={symbolic} z cap {z:?}",
            dtype.name()
        )
    };

    let (mut out, mut gx, mut gf) = (
        vec![(0.0, 0.0, 0); o_len],
        vec![(0.0, 0.0, 0); x_len],
        vec![(0.0, 0.0, 0); f_len],
    );
    terms(&s, n, flip, |xi, fi, oi| {
        add(&mut out[oi], x[xi], f[fi]);
        add(&mut gx[xi], g[oi], f[fi]);
        add(&mut gf[fi], g[oi], x[xi]);
    });
    for z in [None, Some(2)] {
        let p = call(dtype, CallOp::Conv { flip, geom }, nd, &[0, 1], 2).unwrap();
        close(
            &what("conv2d", z),
            dtype,
            &run(&p, dtype, &[&x, &f], o_len, n, z),
            &out,
        );
        let p = call(dtype, CallOp::ConvGradInput { flip, geom }, nd, &[0, 1], 2).unwrap();
        close(
            &what("grad input", z),
            dtype,
            &run(&p, dtype, &[&g, &f], x_len, n, z),
            &gx,
        );
        let p = call(dtype, CallOp::ConvGradFilter { flip, geom }, nd, &[0, 1], 2).unwrap();
        close(
            &what("grad filter", z),
            dtype,
            &run(&p, dtype, &[&x, &g], f_len, n, z),
            &gf,
        );
    }
}

#[test]
fn convolutions_and_their_gradients_match_the_definition() {
    for dtype in DTYPES {
        for (i, (geom, n)) in GEOMS.into_iter().enumerate() {
            for flip in [true, false] {
                for symbolic in [false, true] {
                    conv_case(dtype, geom, n, flip, symbolic, 10 + i as u64);
                }
            }
        }
    }
}

/// A true convolution against cross-correlation on known values: one 1x2 filter [a, b] over
/// [x0, x1, x2] gives b x0 + a x1 flipped, a x0 + b x1 not.
#[test]
fn flipping_is_a_true_convolution() {
    let geom = ConvGeom {
        c: 1,
        h: 1,
        w: 3,
        k: 1,
        fh: 1,
        fw: 2,
    };
    for dtype in DTYPES {
        for (flip, want) in [(true, [23.0, 230.0]), (false, [32.0, 320.0])] {
            let p = call(
                dtype,
                CallOp::Conv { flip, geom },
                Dim::Static(1),
                &[0, 1],
                2,
            )
            .unwrap();
            let got = run(&p, dtype, &[&[1.0, 10.0, 100.0], &[2.0, 3.0]], 2, 1, None);
            assert_eq!(got, want, "{} flip {flip}", dtype.name());
        }
    }
}

/// Window (i, j)'s first maximum in row-major order, a NaN winning (the first one), as a
/// position in the plane.
fn window_max(x: &[f64], w: usize, (r0, c0): (usize, usize), (ph, pw): (usize, usize)) -> usize {
    let mut best = r0 * w + c0;
    for r in r0..r0 + ph {
        for c in c0..c0 + pw {
            let v = x[r * w + c];
            if !x[best].is_nan() && (v > x[best] || v.is_nan()) {
                best = r * w + c;
            }
        }
    }
    best
}

#[test]
fn pooling_and_its_gradient_match_the_window_scan_on_ties_and_nans() {
    // (planes, h, w, window, images): odd sizes with an ignored border, a window too tall
    // and one too wide to unroll, one with no whole window at all.
    let cases = [
        (3, 7, 9, (2, 2), 5),
        (3, 7, 9, (3, 2), 4),
        (2, 5, 21, (1, 10), 2),
        (2, 20, 3, (9, 3), 2),
        (2, 3, 3, (4, 4), 2),
        (1, 1, 1, (1, 1), 3),
    ];
    for dtype in DTYPES {
        for (seed, &(planes, h, w, win, n)) in cases.iter().enumerate() {
            let (ph, pw) = (win.0 as usize, win.1 as usize);
            let (oh, ow) = (h / ph, w / pw);
            let mut rng = Rng::new(100 + seed as u64);
            // Few distinct values (many ties) and some NaNs.
            let x: Vec<f64> = (0..n * planes * h * w)
                .map(|_| match (rng.uniform(0.0, 5.0)) as i32 {
                    0 => f64::NAN,
                    k => k as f64 - 2.0,
                })
                .collect();
            let g: Vec<f64> = rng
                .vec(n * planes * oh * ow, -1.0, 1.0)
                .into_iter()
                .map(|v| round_to(dtype, v))
                .collect();
            let mut out = vec![0.0; n * planes * oh * ow];
            let mut gx = vec![0.0; n * planes * h * w];
            for pl in 0..n * planes {
                let plane = &x[pl * h * w..(pl + 1) * h * w];
                for i in 0..oh {
                    for j in 0..ow {
                        let at = window_max(plane, w, (i * ph, j * pw), (ph, pw));
                        out[(pl * oh + i) * ow + j] = plane[at];
                        gx[pl * h * w + at] = g[(pl * oh + i) * ow + j];
                    }
                }
            }
            let (planes32, h32, w32) = (planes as u32, h as u32, w as u32);
            for symbolic in [false, true] {
                let nd = if symbolic {
                    Dim::Sym(0)
                } else {
                    Dim::Static(n as u64)
                };
                for z in [None, Some(2)] {
                    let what = format!(
                        "{} {planes}x{h}x{w} window {win:?} n={n} sym={symbolic} z cap {z:?}",
                        dtype.name()
                    );
                    let p = call(
                        dtype,
                        CallOp::Pool {
                            planes: planes32,
                            h: h32,
                            w: w32,
                            win,
                        },
                        nd,
                        &[0],
                        2,
                    )
                    .unwrap();
                    let got = run(&p, dtype, &[&x], out.len(), n, z);
                    for (i, (a, b)) in got.iter().zip(&out).enumerate() {
                        assert!(
                            a == b || (a.is_nan() && b.is_nan()),
                            "max_pool {what}: element {i}: got {a}, want {b}"
                        );
                    }
                    let p = call(
                        dtype,
                        CallOp::PoolGrad {
                            planes: planes32,
                            h: h32,
                            w: w32,
                            win,
                        },
                        nd,
                        &[0, 1],
                        2,
                    )
                    .unwrap();
                    let got = run(&p, dtype, &[&x, &g], gx.len(), n, z);
                    assert_eq!(got, gx, "max_pool gradient {what}");
                }
            }
        }
    }
}

#[test]
fn invalid_calls_are_errors() {
    let geom = ConvGeom {
        c: 1,
        h: 3,
        w: 3,
        k: 1,
        fh: 4,
        fw: 1,
    };
    let e = call(
        DType::F32,
        CallOp::Conv { flip: true, geom },
        Dim::Sym(0),
        &[0, 1],
        2,
    )
    .unwrap_err();
    assert!(e.0.contains("invalid geometry"), "{}", e.0);
    let pool = CallOp::Pool {
        planes: 1,
        h: 2,
        w: 2,
        win: (0, 2),
    };
    assert!(call(DType::F64, pool, Dim::Sym(0), &[0], 1).is_err());
    let pool = CallOp::Pool {
        planes: 1,
        h: 2,
        w: 2,
        win: (2, 2),
    };
    assert!(
        call(DType::F64, pool, Dim::Sym(0), &[0, 1], 2).is_err(),
        "one argument too many"
    );
}
