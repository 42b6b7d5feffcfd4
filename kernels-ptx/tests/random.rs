//! Random draws in loop kernels (`Instr::Random`): every mapping (elementwise over rank 0, 1
//! and 2, warp and block rows, columns, one-block and two-pass full reductions), static and
//! symbolic dims, sizes that are not multiples of a warp or a block, each distribution in f32
//! and f64, run on the interpreter against the reference with the draws matching bit for bit;
//! the keying against `rng` directly; independence of sites and calls; `ptxas` validity.
//!
//! Run with `--nocapture` for the register table.

use std::collections::HashMap;

use tensor_fn_kernels::catalog::{random_kernel, DTYPES};
use tensor_fn_kernels::check::{
    self as common, assemble, check_loop, check_loop_data, check_no_spills, ptxas_or_skip,
    run_program_elems, stream_data, syms, Elem, Rng,
};
use tensor_fn_kernels::ir::{
    Axis, Binary as B, BufId, Buffer, DType, Dim, Instr, Ix, LoopKernel, RandKind, RedKind,
    Reduction,
};
use tensor_fn_kernels::rng::{self, DrawFloat};
use tensor_fn_kernels::Module;

fn buf(dtype: DType, shape: &[Dim]) -> Buffer {
    Buffer {
        dtype,
        shape: shape.to_vec(),
        int: None,
    }
}

fn root(rank: usize) -> Vec<Ix> {
    match rank {
        0 => vec![],
        1 => vec![Ix::Inner],
        _ => vec![Ix::Outer, Ix::Inner],
    }
}

/// The site of [`draw_kernel`]'s draw.
const SITE: u32 = 3;
/// [`draw_kernel`]'s argument `a0` (the normal's mean).
const MEAN: f64 = 0.25;

/// A kernel over `dims` with one draw of `kind` (site [`SITE`]) from the stream `b1`, its
/// parameters from a load, an argument and constants: `binomial(x)`, `uniform(-2, x)`,
/// `normal(a0, 1.5)`, with `x = b0` (inputs in [0, 1)). The draw is stored into `b2`; for each
/// axis of `axes`, `sum(x * draw)` and `max(draw)` go into the next two buffers.
fn draw_kernel(dtype: DType, dims: &[Dim], kind: RandKind, axes: &[Axis]) -> LoopKernel {
    use Instr::*;
    let params = match kind {
        RandKind::Binomial => [0, 0],
        RandKind::Uniform => [2, 0],
        RandKind::Normal => [1, 3],
    };
    let mut k = LoopKernel {
        dtype,
        dims: dims.to_vec(),
        bufs: vec![buf(dtype, dims), Buffer::stream(dtype), buf(dtype, dims)],
        instrs: vec![
            Load {
                buf: 0,
                index: root(dims.len()),
            }, // %0 x
            Arg(0),      // %1
            Const(-2.0), // %2
            Const(1.5),  // %3
            Random {
                kind,
                site: SITE,
                stream: 1,
                params,
            }, // %4
            Binary(B::Mul, 0, 4), // %5
        ],
        stores: vec![(4, 2)],
        reductions: Vec::new(),
    };
    for &axis in axes {
        let shape = k.reduced_shape(axis);
        for (kind, value) in [(RedKind::Sum, 5), (RedKind::Max, 4)] {
            k.bufs.push(buf(dtype, &shape));
            k.reductions.push(Reduction {
                kind,
                axis,
                value,
                out: k.bufs.len() - 1,
            });
        }
    }
    k
}

/// The launches' kinds (`tf_ew`, `tf_rowsw`, ...), in order.
fn plan(k: &LoopKernel) -> Vec<String> {
    tensor_fn_kernels::lower_loop(k)
        .unwrap()
        .launches
        .iter()
        .map(|l| l.meta.name.split('_').take(2).collect::<Vec<_>>().join("_"))
        .collect()
}

/// One shape of the mapping test: dims, symbolic values, reduced axes and the launches that
/// must result.
struct Case {
    dims: Vec<Dim>,
    syms: Vec<(u32, u64)>,
    axes: Vec<Axis>,
    plan: &'static [&'static str],
}

fn case(dims: &[Dim], syms: &[(u32, u64)], axes: &[Axis], plan: &'static [&'static str]) -> Case {
    Case {
        dims: dims.to_vec(),
        syms: syms.to_vec(),
        axes: axes.to_vec(),
        plan,
    }
}

/// Every mapping, at awkward sizes, static and symbolic.
fn cases() -> Vec<Case> {
    use Dim::{Static as S, Sym};
    let all = [Axis::All];
    let rows = [Axis::One(1)];
    let cols = [Axis::One(0)];
    vec![
        // Elementwise.
        case(&[], &[], &[], &["tf_ew"]),
        case(&[S(1000)], &[], &[], &["tf_ew"]),
        case(&[Sym(0)], &[(0, 1000)], &[], &["tf_ew"]),
        case(&[S(37), S(300)], &[], &[], &["tf_ew"]),
        case(&[Sym(0), Sym(1)], &[(0, 37), (1, 300)], &[], &["tf_ew"]),
        // Rank 0: its reductions are stores.
        case(&[], &[], &all, &["tf_ew"]),
        // Warp rows.
        case(&[S(5), S(7)], &[], &rows, &["tf_rowsw"]),
        case(&[Sym(0), S(7)], &[(0, 5)], &rows, &["tf_rowsw"]),
        case(&[S(37), S(200)], &[], &rows, &["tf_rowsw"]),
        // Block rows.
        case(&[S(37), S(300)], &[], &rows, &["tf_rows"]),
        case(&[Sym(0), Sym(1)], &[(0, 37), (1, 300)], &rows, &["tf_rows"]),
        case(&[Sym(0), Sym(1)], &[(0, 5), (1, 7)], &rows, &["tf_rows"]),
        // Columns.
        case(&[S(37), S(300)], &[], &cols, &["tf_cols"]),
        case(&[S(5), S(7)], &[], &cols, &["tf_cols"]),
        case(&[Sym(0), Sym(1)], &[(0, 37), (1, 300)], &cols, &["tf_cols"]),
        // One-block full reductions.
        case(&[S(1000)], &[], &all, &["tf_red"]),
        case(&[S(37), S(33)], &[], &all, &["tf_red"]),
        // Two-pass full reductions.
        case(&[Sym(0)], &[(0, 1000)], &all, &["tf_red1", "tf_red2"]),
        case(&[S(37), S(300)], &[], &all, &["tf_red1", "tf_red2"]),
        case(
            &[Sym(0), Sym(1)],
            &[(0, 37), (1, 300)],
            &all,
            &["tf_red1", "tf_red2"],
        ),
        // Every grouping at once: rows carry the stores, then columns, then all.
        case(
            &[S(37), S(300)],
            &[],
            &[Axis::One(1), Axis::One(0), Axis::All],
            &["tf_rows", "tf_cols", "tf_red1", "tf_red2"],
        ),
        case(
            &[S(5), S(7)],
            &[],
            &[Axis::One(0), Axis::One(1), Axis::All],
            &["tf_rowsw", "tf_cols", "tf_red"],
        ),
    ]
}

fn args() -> HashMap<u32, f64> {
    [(0, MEAN)].into_iter().collect()
}

fn dims_text(dims: &[Dim], sy: &[(u32, u64)]) -> String {
    let s: Vec<String> = dims
        .iter()
        .map(|d| match d {
            Dim::Static(n) => n.to_string(),
            Dim::Sym(id) => format!("d{id}={}", sy.iter().find(|s| s.0 == *id).unwrap().1),
        })
        .collect();
    format!("[{}]", s.join(", "))
}

/// Every distribution in every mapping and dtype: draws bit for bit, sums of `x * draw` within
/// the usual tolerance, maxima of draws bit for bit.
#[test]
fn draws_in_every_mapping_match_the_reference() {
    let mut seed = 1;
    for c in cases() {
        for dtype in DTYPES {
            for kind in RandKind::ALL {
                let k = draw_kernel(dtype, &c.dims, kind, &c.axes);
                let name = format!(
                    "{} {} {} reduced over {:?}",
                    kind.name(),
                    dtype.name(),
                    dims_text(&c.dims, &c.syms),
                    c.axes
                );
                assert_eq!(plan(&k), c.plan, "{name}: launches");
                seed += 1;
                check_loop(&name, &k, &syms(&c.syms), &args(), 0.0, 1.0, 2.0, seed);
            }
        }
    }
}

/// A two-pass reduction whose threads loop more than once (1024 blocks of 256 threads for
/// 300000 points), static and symbolic.
#[test]
fn draws_in_a_large_two_pass_reduction() {
    let n = 300_000;
    for (dtype, kind) in DTYPES
        .into_iter()
        .flat_map(|d| RandKind::ALL.map(|k| (d, k)))
    {
        for (dims, sy) in [
            (vec![Dim::Static(n)], vec![]),
            (vec![Dim::Sym(0)], vec![(0, n)]),
        ] {
            let k = draw_kernel(dtype, &dims, kind, &[Axis::All]);
            assert_eq!(plan(&k), ["tf_red1", "tf_red2"]);
            let name = format!("{} {} [{n}]", kind.name(), dtype.name());
            let stats = check_loop(&name, &k, &syms(&sy), &args(), 0.0, 1.0, 2.0, n);
            assert!(stats.barriers >= 1024, "{name}: {stats:?}");
        }
    }
}

/// The catalog's kernel (all three distributions, stores and every grouping).
#[test]
fn catalog_random_kernel_matches_the_reference() {
    let a: HashMap<u32, f64> = [(0, 0.3), (1, 2.0)].into_iter().collect();
    for dtype in DTYPES {
        for (m, n) in [(20u64, 33u64), (37, 300), (1, 1), (3, 257)] {
            let k = random_kernel(dtype, Dim::Static(m), Dim::Static(n));
            let name = format!("random {} [{m}, {n}]", dtype.name());
            check_loop(&name, &k, &syms(&[]), &a, -1.0, 1.0, 2.0, m * 1000 + n);
            let k = random_kernel(dtype, Dim::Sym(0), Dim::Sym(1));
            let name = format!("random {} [d0={m}, d1={n}]", dtype.name());
            check_loop(
                &name,
                &k,
                &syms(&[(0, m), (1, n)]),
                &a,
                -1.0,
                1.0,
                2.0,
                m + n,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The keying, against `rng` directly.

/// Runs `k` (inputs `b0` = `x`, stream `b1`, argument `a0`) on the interpreter and returns
/// every output buffer.
fn run(
    k: &LoopKernel,
    sy: &HashMap<u32, u64>,
    x: &[f64],
    (seed, call): (u64, u64),
) -> HashMap<BufId, Vec<f64>> {
    let program = tensor_fn_kernels::lower_loop(k).unwrap();
    let data: HashMap<BufId, Vec<f64>> = [(0, x.to_vec()), (1, stream_data(seed, call))]
        .into_iter()
        .collect();
    let mut bufs = vec![(0, x.len(), Elem::Float), (1, 2, Elem::Bits64)];
    for b in common::outputs(k) {
        bufs.push((b, common::elems(&k.bufs[b].shape, sy).max(1), Elem::Float));
    }
    let a: HashMap<u32, f64> = [(0, common::round_to(k.dtype, MEAN))].into_iter().collect();
    let (got, _) = run_program_elems(&program, k.dtype, &bufs, &data, sy, &a);
    got
}

/// What `rng` gives for element `at` of [`draw_kernel`]'s draw, with `x` its input there.
fn direct<T: DrawFloat>(kind: RandKind, at: u32, x: f64, (seed, call): (u64, u64)) -> f64 {
    let w = rng::bits(at, SITE, call, seed);
    let x = T::from_f64(x);
    match kind {
        RandKind::Binomial => rng::binomial(w, x),
        RandKind::Uniform => rng::uniform(w, T::from_f64(-2.0), x),
        RandKind::Normal => rng::normal(w, T::from_f64(MEAN), T::from_f64(1.5)),
    }
    .to_f64()
}

/// Element (i, j) of a stored draw is `rng`'s draw of element `i * n + j` (of `j` in rank 1, of
/// 0 in rank 0), with the kernel's site and the stream's call and seed: in the flat mapping
/// over rank 0, 1 and 2, and in the row (warp and block) and column mappings, which carry the
/// stores when the kernel has their reductions.
#[test]
fn draws_are_keyed_by_the_flat_index() {
    use Dim::{Static as S, Sym};
    let stream = (0x8badf00d_deadbeef_u64, 0x1_0000_0007_u64);
    let rows = [Axis::One(1)];
    // The first launch carries the stores.
    let shapes = [
        case(&[], &[], &[], &["tf_ew"]),
        case(&[S(1000)], &[], &[], &["tf_ew"]),
        case(&[S(37), S(300)], &[], &[], &["tf_ew"]),
        case(&[S(5), S(7)], &[], &rows, &["tf_rowsw"]),
        case(&[S(37), S(300)], &[], &rows, &["tf_rows"]),
        case(&[Sym(0), Sym(1)], &[(0, 5), (1, 7)], &rows, &["tf_rows"]),
        case(&[S(37), S(300)], &[], &[Axis::One(0)], &["tf_cols"]),
        case(&[S(1000)], &[], &[Axis::All], &["tf_red"]),
        case(
            &[Sym(0), Sym(1)],
            &[(0, 37), (1, 300)],
            &[Axis::All],
            &["tf_red1", "tf_red2"],
        ),
    ];
    let mut data = Rng::new(5);
    for Case {
        dims,
        syms: sy,
        axes,
        plan: launches,
    } in shapes
    {
        let sy = syms(&sy);
        let n = common::elems(&dims, &sy);
        let inner = match dims.last() {
            Some(d) => common::dim_value(*d, &sy) as usize,
            None => 1,
        };
        for dtype in DTYPES {
            let x: Vec<f64> = data
                .vec(n, 0.0, 1.0)
                .into_iter()
                .map(|v| common::round_to(dtype, v))
                .collect();
            for kind in RandKind::ALL {
                let k = draw_kernel(dtype, &dims, kind, &axes);
                assert_eq!(plan(&k), launches);
                let got = run(&k, &sy, &x, stream);
                for (at, &g) in got[&2].iter().enumerate() {
                    let (i, j) = (at / inner, at % inner);
                    // The documented key: i * n + j.
                    let flat = (i * inner + j) as u32;
                    let want = match dtype {
                        DType::F32 => direct::<f32>(kind, flat, x[at], stream),
                        DType::F64 => direct::<f64>(kind, flat, x[at], stream),
                    };
                    assert!(
                        g.to_bits() == want.to_bits(),
                        "{} {} {dims:?} {axes:?}: element ({i}, {j}) is {g:e}, rng gives {want:e}",
                        kind.name(),
                        dtype.name()
                    );
                }
            }
        }
    }
    // A known answer: binomial(p = 1/2) is the top bit of word 0.
    let k = draw_kernel(DType::F64, &[S(4), S(9)], RandKind::Binomial, &[]);
    let got = run(&k, &syms(&[]), &[0.5; 36], stream);
    for (at, &g) in got[&2].iter().enumerate() {
        let w = rng::bits(at as u32, SITE, stream.1, stream.0);
        assert_eq!(g, (w[0] >> 31 == 0) as u32 as f64, "element {at}");
    }
}

/// Two sites in one kernel draw different streams; a different call (or seed) draws different
/// numbers, and the same one the same numbers.
#[test]
fn sites_and_calls_give_independent_draws() {
    let dims = [Dim::Static(37), Dim::Static(300)];
    for dtype in DTYPES {
        for kind in RandKind::ALL {
            // Two draws of one kind from one stream, sites 3 and 4, with the same parameters.
            let mut k = draw_kernel(dtype, &dims, kind, &[]);
            let Instr::Random { params, .. } = k.instrs[4] else {
                unreachable!()
            };
            k.instrs.push(Instr::Random {
                kind,
                site: SITE + 1,
                stream: 1,
                params,
            });
            k.bufs.push(buf(dtype, &dims));
            k.stores.push((k.instrs.len() - 1, k.bufs.len() - 1));
            let x = vec![0.5; 37 * 300];
            let what = format!("{} {}", kind.name(), dtype.name());
            let base = run(&k, &syms(&[]), &x, (7, 100));
            let (a, b) = (&base[&2], &base[&3]);
            // Binomials agree half of the time by chance; continuous draws never do.
            let same = |u: &[f64], v: &[f64]| u.iter().zip(v).filter(|(p, q)| p == q).count();
            let limit = match kind {
                RandKind::Binomial => a.len() * 6 / 10,
                RandKind::Uniform | RandKind::Normal => 0,
            };
            assert!(
                same(a, b) <= limit,
                "{what}: sites 3 and 4 agree on {} of {}",
                same(a, b),
                a.len()
            );
            let again = run(&k, &syms(&[]), &x, (7, 100));
            assert_eq!(
                base[&2], again[&2],
                "{what}: the same call draws the same numbers"
            );
            for other in [
                (7, 101),
                (7, 100 + (1 << 32)),
                (8, 100),
                (7 + (1 << 32), 100),
            ] {
                let next = run(&k, &syms(&[]), &x, other);
                for b in [2, 3] {
                    let n = same(&base[&b], &next[&b]);
                    assert!(
                        n <= limit,
                        "{what}: (seed, call) {other:?} agrees with (7, 100) on {n} of {}",
                        a.len()
                    );
                }
            }
        }
    }
}

/// The comparison is not vacuous: the kernel's draws match its reference, and differ from the
/// reference of the same kernel with another site.
#[test]
fn a_wrong_site_does_not_match() {
    let dims = [Dim::Static(5), Dim::Static(7)];
    let k = draw_kernel(DType::F32, &dims, RandKind::Uniform, &[Axis::One(1)]);
    let mut shifted = k.clone();
    let Instr::Random { site, .. } = &mut shifted.instrs[4] else {
        unreachable!()
    };
    *site += 1;
    let data: HashMap<BufId, Vec<f64>> = [(0, vec![0.5; 35]), (1, stream_data(1, 2))]
        .into_iter()
        .collect();
    check_loop_data("uniform", &k, &syms(&[]), &args(), &data, 2.0);
    // Same program, reference of another site: the lowering must key the draw by its site.
    let program = tensor_fn_kernels::lower_loop(&k).unwrap();
    let want = common::reference(&shifted, &syms(&[]), &args(), &data);
    let bufs = vec![
        (0, 35, Elem::Float),
        (1, 2, Elem::Bits64),
        (2, 35, Elem::Float),
        (3, 5, Elem::Float),
        (4, 5, Elem::Float),
    ];
    let a: HashMap<u32, f64> = [(0, MEAN)].into_iter().collect();
    let (got, _) = run_program_elems(&program, DType::F32, &bufs, &data, &syms(&[]), &a);
    let differ = got[&2]
        .iter()
        .zip(&want[&2].values)
        .filter(|(g, w)| g.to_bits() != w.to_bits())
        .count();
    assert!(
        differ > 30,
        "draws of another site: only {differ} of 35 differ"
    );
}

/// Validation: the stream must be an i64[2] buffer, parameters earlier values, and the stream
/// is read (never written).
#[test]
fn malformed_draws_are_rejected() {
    let good = draw_kernel(DType::F32, &[Dim::Sym(0)], RandKind::Normal, &[]);
    assert!(good.validate().is_ok());
    let err = |k: &LoopKernel| k.validate().unwrap_err().0;
    let mut k = good.clone();
    k.bufs[1].shape = vec![Dim::Static(3)];
    assert!(err(&k).contains("not a stream"), "{}", err(&k));
    let mut k = good.clone();
    k.bufs[1].int = Some(tensor_fn_kernels::IntTy::I32);
    assert!(err(&k).contains("i32[2], not a stream"), "{}", err(&k));
    let mut k = good.clone();
    k.bufs[1] = buf(DType::F32, &[Dim::Static(2)]);
    assert!(err(&k).contains("f32[2], not a stream"), "{}", err(&k));
    let mut k = good.clone();
    let Instr::Random { params, .. } = &mut k.instrs[4] else {
        unreachable!()
    };
    params[1] = 4;
    assert!(err(&k).contains("not defined before"), "{}", err(&k));
    let mut k = draw_kernel(DType::F32, &[Dim::Static(2)], RandKind::Normal, &[]);
    k.stores.push((0, 1));
    assert!(
        err(&k).contains("b1 is both read and written"),
        "{}",
        err(&k)
    );
    let mut k = good.clone();
    let Instr::Random { stream, .. } = &mut k.instrs[4] else {
        unreachable!()
    };
    *stream = 99;
    assert!(err(&k).contains("not in the table"), "{}", err(&k));
    // Binomial ignores its second parameter, but it must still be a value.
    let k = draw_kernel(DType::F64, &[Dim::Sym(0)], RandKind::Binomial, &[]);
    assert!(k.validate().is_ok());
    assert!(
        k.to_string().contains("%4 = binomial %0 site=3 stream=b1"),
        "{k}"
    );
    let k = draw_kernel(DType::F64, &[Dim::Sym(0)], RandKind::Uniform, &[]);
    assert!(
        k.to_string()
            .contains("%4 = uniform %2 %0 site=3 stream=b1"),
        "{k}"
    );
}

/// The stream is read once per thread, before the loops, as two u64 words.
#[test]
fn streams_are_loaded_once_before_the_loops() {
    for axes in [
        vec![],
        vec![Axis::One(1)],
        vec![Axis::One(0)],
        vec![Axis::All],
    ] {
        let k = draw_kernel(
            DType::F32,
            &[Dim::Sym(0), Dim::Sym(1)],
            RandKind::Normal,
            &axes,
        );
        let p = tensor_fn_kernels::lower_loop(&k).unwrap();
        let mut m = Module::default();
        p.add_to(&mut m);
        let ptx = m.to_ptx();
        let first = &p.launches[0].kernel.name;
        let body: String = ptx
            .split(".entry ")
            .find(|e| e.starts_with(first.as_str()))
            .unwrap()
            .to_string();
        let loads: Vec<usize> = body
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains("ld.global.u64"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(loads.len(), 2, "{axes:?}: {body}");
        let first_branch = body.lines().position(|l| l.contains("bra")).unwrap();
        assert!(
            loads[1] < first_branch,
            "{axes:?}: stream loaded inside a loop\n{body}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// ptxas.

/// Every kernel of this file and the catalog's random kernels assemble for sm_80 and sm_90
/// without spills.
#[test]
fn random_kernels_assemble_without_spills() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let mut module = Module::default();
    let mut what: HashMap<String, String> = HashMap::new();
    let mut add = |name: String, k: &LoopKernel| {
        let p = tensor_fn_kernels::lower_loop(k).unwrap();
        p.add_to(&mut module);
        for l in &p.launches {
            what.entry(l.kernel.name.clone())
                .or_insert_with(|| name.clone());
        }
    };
    for (name, k) in tensor_fn_kernels::catalog::loop_kernels() {
        if name.starts_with("random") {
            add(name, &k);
        }
    }
    for c in cases() {
        for dtype in DTYPES {
            for kind in RandKind::ALL {
                let k = draw_kernel(dtype, &c.dims, kind, &c.axes);
                let name = format!("{} {} {:?} {:?}", kind.name(), dtype.name(), c.dims, c.axes);
                add(name, &k);
            }
        }
    }
    let ptx = module.to_ptx();
    let mut table = String::new();
    for arch in ["sm_80", "sm_90"] {
        let log = assemble(&ptxas, &ptx, arch, "random");
        let used = check_no_spills(&log, &ptx).unwrap_or_else(|e| panic!("{arch}: {e}"));
        let mut rows: Vec<_> = used
            .iter()
            .filter(|f| f.entry && what[&f.name].starts_with("random"))
            .collect();
        rows.sort_by(|a, b| what[&a.name].cmp(&what[&b.name]).then(a.name.cmp(&b.name)));
        table.push_str(&format!("\n{arch}: registers / stack frame bytes\n"));
        for f in rows {
            table.push_str(&format!(
                "  {:>3} regs {:>4} stack  {:<32} {}\n",
                f.registers.unwrap_or(0),
                f.stack_frame,
                f.name,
                what[&f.name]
            ));
        }
    }
    println!("{table}");
}
