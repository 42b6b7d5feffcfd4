//! The random draws (`rng`): Philox4x32-10's published known answers, the PTX sequences run on
//! the interpreter against the Rust definition bit for bit (f32 and f64, every draw, several
//! seeds, sites, calls and element ranges, and edge words), `ptxas` validity, the accuracy of
//! the `ln`/`cos` sequences and of the normal draw against f64 std functions, and statistics
//! on fixed keys (deterministic, with tolerances of 6 standard deviations or more).
//!
//! Run with `--nocapture` for the measured accuracy and the instruction counts.

use tensor_fn_kernels::check::{assemble, check_no_spills, ptxas_or_skip};
use tensor_fn_kernels::ptx::{
    Address, Axis3, Kernel, KernelBuilder, Module, Operand, Reg, Space, Special, Stmt, Type,
};
use tensor_fn_kernels::rng::{self, DrawFloat, StreamRegs};
use tensor_fn_kernels::scalar::erf_f64;
use tensor_fn_kernels::vm::{self, Arg, Memory};
use tensor_fn_kernels::DType;

// ---------------------------------------------------------------------------------------------
// Philox.

/// Random123's `kat_vectors`, the three `philox4x32 10` lines: counter, key, expected output.
const KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
    (
        [0, 0, 0, 0],
        [0, 0],
        [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8],
    ),
    (
        [u32::MAX; 4],
        [u32::MAX; 2],
        [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd],
    ),
    (
        [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
        [0xa409_3822, 0x299f_31d0],
        [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1],
    ),
];

#[test]
fn philox_known_answers() {
    for (ctr, key, want) in KAT {
        assert_eq!(rng::philox4x32_10(ctr, key), want, "counter {ctr:08x?}");
    }
}

#[test]
fn philox_known_answers_in_ptx() {
    // One thread per vector; counter and key from memory.
    let mut k = KernelBuilder::new([32, 1, 1]);
    let pin = k.param("in", Type::U64);
    let pout = k.param("out", Type::U64);
    let inp = k.ld_ptr(pin);
    let out = k.ld_ptr(pout);
    let t = k.special(Special::Tid(Axis3::X));
    let a = k.mad_wide(t, Operand::Imm(24), inp);
    let w: Vec<Reg> = (0..6)
        .map(|j| k.ld(Space::Global, Type::U32, Address::reg_off(a, 4 * j)))
        .collect();
    let ctr = [w[0].into(), w[1].into(), w[2].into(), w[3].into()];
    let r = rng::emit_philox4x32_10(&mut k, ctr, [w[4], w[5]]);
    let o = k.mad_wide(t, Operand::Imm(16), out);
    for (j, r) in r.iter().enumerate() {
        k.st(
            Space::Global,
            Type::U32,
            Address::reg_off(o, 4 * j as i32),
            *r,
        );
    }
    let kernel = k.finish("philox_kat");
    let mut mem = Memory::new();
    let words: Vec<u32> = KAT
        .iter()
        .flat_map(|(c, key, _)| c.iter().chain(key.iter()).copied())
        .collect();
    let pi = upload_u32(&mut mem, &words);
    let po = mem.alloc(KAT.len() * 16);
    vm::launch(
        &kernel,
        [1, 1, 1],
        [KAT.len() as u32, 1, 1],
        &[Arg::U64(pi), Arg::U64(po)],
        &mut mem,
    )
    .unwrap();
    let got = read_u32(&mem, po, KAT.len() * 4);
    for (v, (_, _, want)) in KAT.iter().enumerate() {
        assert_eq!(&got[4 * v..4 * v + 4], want, "vector {v}");
    }
}

#[test]
fn bits_is_philox_of_the_documented_counter_and_key() {
    let (i, site, call, seed) = (
        17u32,
        3u32,
        0x0123_4567_89ab_cdefu64,
        0xfedc_ba98_7654_3210u64,
    );
    assert_eq!(
        rng::bits(i, site, call, seed),
        rng::philox4x32_10(
            [17, 3, 0x89ab_cdef, 0x0123_4567],
            [0x7654_3210, 0xfedc_ba98]
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Test kernels.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Draw {
    Binomial,
    Uniform,
    Normal,
}

const DRAWS: [Draw; 3] = [Draw::Binomial, Draw::Uniform, Draw::Normal];

/// The Rust definition: `a`, `b` are (p, unused), (lo, hi) or (mean, std).
fn draw_rust<T: DrawFloat>(d: Draw, w: [u32; 4], a: T, b: T) -> T {
    match d {
        Draw::Binomial => rng::binomial(w, a),
        Draw::Uniform => rng::uniform(w, a, b),
        Draw::Normal => rng::normal(w, a, b),
    }
}

fn draw_ptx(k: &mut KernelBuilder, dt: DType, d: Draw, w: [Reg; 4], a: Operand, b: Operand) -> Reg {
    match d {
        Draw::Binomial => rng::emit_binomial(k, dt, w, a),
        Draw::Uniform => rng::emit_uniform(k, dt, w, a, b),
        Draw::Normal => rng::emit_normal(k, dt, w, a, b),
    }
}

/// Draws (or, for `None`, the 4 words) of elements `base + idx`, idx < grid * block, of random
/// op `site`: parameters `out`, `base` (u32), `seed`, `call` (u64), `a`, `b` (dtype).
fn stream_kernel(dt: DType, draw: Option<Draw>, site: u32) -> Kernel {
    let mut k = KernelBuilder::new([BLOCK, 1, 1]);
    let pout = k.param("out", Type::U64);
    let pbase = k.param("base", Type::U32);
    let pseed = k.param("seed", Type::U64);
    let pcall = k.param("call", Type::U64);
    let pa = k.param("a", dt.ptx());
    let pb = k.param("b", dt.ptx());
    let out = k.ld_ptr(pout);
    let base = k.ld_param(pbase);
    let seed = k.ld_param(pseed);
    let call = k.ld_param(pcall);
    let a = k.ld_param(pa);
    let b = k.ld_param(pb);
    let stream = StreamRegs::split(&mut k, seed, call);
    let idx = global_index(&mut k);
    let i = k.bin(tensor_fn_kernels::ptx::BinOp::Add, Type::U32, base, idx);
    let w = rng::emit_bits(&mut k, &stream, i, site);
    store_result(&mut k, dt, draw, w, a.into(), b.into(), out, idx);
    k.finish("rng_stream")
}

/// Draws from given words: parameters `words` (4 u32 per element), `out`, `a`, `b`.
/// With `imm`, `a` and `b` are these immediates instead of parameters.
fn words_kernel(dt: DType, draw: Option<Draw>, imm: Option<(f64, f64)>) -> Kernel {
    let mut k = KernelBuilder::new([BLOCK, 1, 1]);
    let pw = k.param("words", Type::U64);
    let pout = k.param("out", Type::U64);
    let (a, b) = match imm {
        Some((a, b)) => (float_imm(dt, a), float_imm(dt, b)),
        None => {
            let pa = k.param("a", dt.ptx());
            let pb = k.param("b", dt.ptx());
            (k.ld_param(pa).into(), k.ld_param(pb).into())
        }
    };
    let words = k.ld_ptr(pw);
    let out = k.ld_ptr(pout);
    let idx = global_index(&mut k);
    let at = k.mad_wide(idx, Operand::Imm(16), words);
    let w = [0, 1, 2, 3].map(|j| k.ld(Space::Global, Type::U32, Address::reg_off(at, 4 * j)));
    store_result(&mut k, dt, draw, w, a, b, out, idx);
    k.finish("rng_words")
}

const BLOCK: u32 = 128;

fn float_imm(dt: DType, v: f64) -> Operand {
    match dt {
        DType::F32 => Operand::F32(v as f32),
        DType::F64 => Operand::F64(v),
    }
}

fn global_index(k: &mut KernelBuilder) -> Reg {
    let tid = k.special(Special::Tid(Axis3::X));
    let ctaid = k.special(Special::Ctaid(Axis3::X));
    let ntid = k.special(Special::Ntid(Axis3::X));
    k.fma(Type::U32, ctaid, ntid, tid)
}

#[allow(clippy::too_many_arguments)]
fn store_result(
    k: &mut KernelBuilder,
    dt: DType,
    draw: Option<Draw>,
    w: [Reg; 4],
    a: Operand,
    b: Operand,
    out: Reg,
    idx: Reg,
) {
    match draw {
        None => {
            let o = k.mad_wide(idx, Operand::Imm(16), out);
            for (j, r) in w.iter().enumerate() {
                k.st(
                    Space::Global,
                    Type::U32,
                    Address::reg_off(o, 4 * j as i32),
                    *r,
                );
            }
        }
        Some(d) => {
            let v = draw_ptx(k, dt, d, w, a, b);
            let o = k.mad_wide(idx, Operand::Imm(dt.bytes() as i64), out);
            k.st(Space::Global, dt.ptx(), Address::reg(o), v);
        }
    }
}

fn upload_u32(mem: &mut Memory, data: &[u32]) -> u64 {
    let p = mem.alloc(data.len() * 4);
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    mem.write_bytes(p, &bytes).unwrap();
    p
}

fn read_u32(mem: &Memory, p: u64, n: usize) -> Vec<u32> {
    let mut bytes = vec![0u8; n * 4];
    mem.read_bytes(p, &mut bytes).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// The bits of `n` results of the dtype.
fn read_bits(mem: &Memory, dt: DType, p: u64, n: usize) -> Vec<u64> {
    match dt {
        DType::F32 => mem
            .read_f32(p, n)
            .iter()
            .map(|x| x.to_bits() as u64)
            .collect(),
        DType::F64 => mem.read_f64(p, n).iter().map(|x| x.to_bits()).collect(),
    }
}

fn arg(dt: DType, v: f64) -> Arg {
    match dt {
        DType::F32 => Arg::F32(v as f32),
        DType::F64 => Arg::F64(v),
    }
}

/// The Rust definition's bits for the dtype.
fn rust_bits(dt: DType, d: Draw, w: [u32; 4], a: f64, b: f64) -> u64 {
    match dt {
        DType::F32 => draw_rust::<f32>(d, w, a as f32, b as f32).to_bits() as u64,
        DType::F64 => draw_rust::<f64>(d, w, a, b).to_bits(),
    }
}

/// Parameters of each draw for the stream test.
fn params(d: Draw) -> (f64, f64) {
    match d {
        Draw::Binomial => (0.3, 0.0),
        Draw::Uniform => (-1.5, 2.25),
        Draw::Normal => (0.5, 2.0),
    }
}

fn first_mismatch(got: &[u64], want: &[u64]) -> Option<(usize, u64, u64)> {
    got.iter()
        .zip(want)
        .enumerate()
        .find(|(_, (g, w))| g != w)
        .map(|(i, (g, w))| (i, *g, *w))
}

// ---------------------------------------------------------------------------------------------
// PTX = Rust, bit for bit.

/// (seed, call, site, base): zero and all-ones keys, a carry into the call's high word, the
/// top of the element range.
const STREAMS: [(u64, u64, u32, u32); 4] = [
    (0, 0, 0, 0),
    (0x0123_4567_89ab_cdef, 1, 5, 1000),
    (u64::MAX, 0xffff_ffff, u32::MAX, 77),
    (42, u64::MAX - 1, 1, u32::MAX - (GRID * BLOCK - 1)),
];
const GRID: u32 = 80;

#[test]
fn ptx_streams_match_rust_bit_for_bit() {
    let n = (GRID * BLOCK) as usize;
    for dt in [DType::F32, DType::F64] {
        for draw in [
            None,
            Some(Draw::Binomial),
            Some(Draw::Uniform),
            Some(Draw::Normal),
        ] {
            for &(seed, call, site, base) in &STREAMS {
                let kernel = stream_kernel(dt, draw, site);
                let (a, b) = draw.map_or((0.0, 0.0), params);
                let mut mem = Memory::new();
                let out = mem.alloc(n * 16);
                vm::launch(
                    &kernel,
                    [GRID, 1, 1],
                    [BLOCK, 1, 1],
                    &[
                        Arg::U64(out),
                        Arg::U32(base),
                        Arg::U64(seed),
                        Arg::U64(call),
                        arg(dt, a),
                        arg(dt, b),
                    ],
                    &mut mem,
                )
                .unwrap();
                let words = |idx: usize| rng::bits(base.wrapping_add(idx as u32), site, call, seed);
                let (got, want): (Vec<u64>, Vec<u64>) = match draw {
                    None => (
                        read_u32(&mem, out, 4 * n)
                            .iter()
                            .map(|&x| x as u64)
                            .collect(),
                        (0..n)
                            .flat_map(|idx| words(idx).map(|x| x as u64))
                            .collect(),
                    ),
                    Some(d) => (
                        read_bits(&mem, dt, out, n),
                        (0..n)
                            .map(|idx| rust_bits(dt, d, words(idx), a, b))
                            .collect(),
                    ),
                };
                if let Some((idx, g, w)) = first_mismatch(&got, &want) {
                    panic!(
                        "{dt:?} {draw:?} seed {seed:#x} call {call:#x} site {site} base {base}: \
                         first mismatch at {idx}: ptx {g:#x}, rust {w:#x}"
                    );
                }
            }
        }
    }
}

/// splitmix64: test inputs only.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Words at the edges of the conversions (smallest and largest uniforms; the integers of the
/// second uniform next to every quadrant boundary, for both dtypes), then random words.
fn edge_words() -> Vec<[u32; 4]> {
    let w0 = [
        0,
        0xff,
        0x100,
        0x1ff,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ff00,
        u32::MAX,
    ];
    let w1 = [0, 0x7ff, 0x800, 0xffff_ffff];
    // f32: k = w1 >> 8 at m 2^21 + {-1, 0, 1}, m = 0..=8.
    let mut second32 = Vec::new();
    for m in 0u64..=8 {
        for dk in [-1i64, 0, 1] {
            let kk = (m as i64 * (1 << 21) + dk).clamp(0, (1 << 24) - 1) as u32;
            second32.push(kk << 8 | 0x5a);
        }
    }
    // f64: k = w2 << 21 | w3 >> 11 at m 2^50 + {-1, 0, 1}.
    let mut second64 = Vec::new();
    for m in 0u64..=8 {
        for dk in [-1i64, 0, 1] {
            let kk = (m as i128 * (1 << 50) + dk as i128).clamp(0, (1 << 53) - 1) as u64;
            let x = kk << 11 | 0x3a5;
            second64.push([(x >> 32) as u32, x as u32]);
        }
    }
    let mut out = Vec::new();
    for &a in &w0 {
        for &b in &w1 {
            out.push([a, b, 0, 0]);
        }
        for &b in &second32 {
            out.push([a, b, 0x1234_5678, 0x9abc_def0]);
        }
        for &[c, d] in &second64 {
            out.push([a, 0x4000_0000, c, d]);
        }
    }
    out.push([0; 4]);
    out.push([u32::MAX; 4]);
    let mut g = SplitMix(7);
    while out.len() % BLOCK as usize != 0 || out.len() < 8192 {
        let (x, y) = (g.next(), g.next());
        out.push([x as u32, (x >> 32) as u32, y as u32, (y >> 32) as u32]);
    }
    out
}

#[test]
fn ptx_draws_from_edge_words_match_rust() {
    let words = edge_words();
    let n = words.len();
    let flat: Vec<u32> = words.iter().flatten().copied().collect();
    let cases: [(Draw, &[(f64, f64)]); 3] = [
        (
            Draw::Binomial,
            &[
                (0.0, 0.0),
                (1.0, 0.0),
                (0.3, 0.0),
                (1e-30, 0.0),
                (f64::NAN, 0.0),
            ],
        ),
        (
            Draw::Uniform,
            &[
                (0.0, 1.0),
                (1.0, 2.0),
                (-1.5, 2.25),
                (3.0, -7.0),
                (-1e30, 1e30),
            ],
        ),
        (
            Draw::Normal,
            &[
                (0.0, 1.0),
                (0.5, 2.0),
                (-3.0, 1e-3),
                (1e30, 1e30),
                (0.0, -1.0),
            ],
        ),
    ];
    for dt in [DType::F32, DType::F64] {
        for (draw, ps) in cases {
            let kernel = words_kernel(dt, Some(draw), None);
            for &(a, b) in ps {
                let mut mem = Memory::new();
                let pw = upload_u32(&mut mem, &flat);
                let out = mem.alloc(n * 8);
                vm::launch(
                    &kernel,
                    [n as u32 / BLOCK, 1, 1],
                    [BLOCK, 1, 1],
                    &[Arg::U64(pw), Arg::U64(out), arg(dt, a), arg(dt, b)],
                    &mut mem,
                )
                .unwrap();
                let got = read_bits(&mem, dt, out, n);
                let want: Vec<u64> = words
                    .iter()
                    .map(|&w| rust_bits(dt, draw, w, a, b))
                    .collect();
                if let Some((idx, g, w)) = first_mismatch(&got, &want) {
                    panic!(
                        "{dt:?} {draw:?} ({a}, {b}): first mismatch at words {:08x?}: \
                         ptx {g:#x}, rust {w:#x}",
                        words[idx]
                    );
                }
            }
        }
    }
}

/// Parameters given as immediates (constants the compiler folded) give the same bits.
#[test]
fn ptx_draws_with_immediate_parameters_match_rust() {
    let words = edge_words();
    let n = words.len();
    let flat: Vec<u32> = words.iter().flatten().copied().collect();
    for dt in [DType::F32, DType::F64] {
        for draw in DRAWS {
            let (a, b) = params(draw);
            let kernel = words_kernel(dt, Some(draw), Some((a, b)));
            let mut mem = Memory::new();
            let pw = upload_u32(&mut mem, &flat);
            let out = mem.alloc(n * 8);
            vm::launch(
                &kernel,
                [n as u32 / BLOCK, 1, 1],
                [BLOCK, 1, 1],
                &[Arg::U64(pw), Arg::U64(out)],
                &mut mem,
            )
            .unwrap();
            let got = read_bits(&mem, dt, out, n);
            let want: Vec<u64> = words
                .iter()
                .map(|&w| rust_bits(dt, draw, w, a, b))
                .collect();
            assert_eq!(first_mismatch(&got, &want), None, "{dt:?} {draw:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ptxas.

fn all_kernels() -> Vec<Kernel> {
    let mut ks = Vec::new();
    for dt in [DType::F32, DType::F64] {
        ks.push(stream_kernel(dt, None, 0));
        for d in DRAWS {
            ks.push(stream_kernel(dt, Some(d), 3));
            ks.push(words_kernel(dt, Some(d), None));
            ks.push(words_kernel(dt, Some(d), Some(params(d))));
        }
    }
    ks
}

#[test]
fn rng_kernels_assemble_without_spills() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let mut m = Module::default();
    for k in all_kernels() {
        m.add(k);
    }
    let ptx = m.to_ptx();
    for arch in ["sm_80", "sm_90"] {
        let log = assemble(&ptxas, &ptx, arch, "rng");
        let used = check_no_spills(&log, &ptx).unwrap_or_else(|e| panic!("{arch}: {e}"));
        for f in used.iter().filter(|f| f.entry) {
            println!(
                "{arch}: {:>3} regs {:>4} stack  {}",
                f.registers.unwrap_or(0),
                f.stack_frame,
                f.name
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cost.

/// Instructions one emitter adds to a kernel.
fn count(emit: impl FnOnce(&mut KernelBuilder)) -> usize {
    let mut k = KernelBuilder::new([32, 1, 1]);
    emit(&mut k);
    k.finish("count")
        .body
        .iter()
        .filter(|s| matches!(s, Stmt::Inst { .. }))
        .count()
        - 1
}

#[test]
fn instructions_per_draw() {
    let philox = count(|k| {
        let r: Vec<Reg> = (0..5).map(|_| k.reg(Type::U32)).collect();
        let s = StreamRegs {
            seed: [r[0], r[1]],
            call: [r[2], r[3]],
        };
        rng::emit_bits(k, &s, r[4], 0);
    });
    println!("philox4x32-10: {philox} PTX instructions");
    assert_eq!(philox, 98);
    for dt in [DType::F32, DType::F64] {
        for d in DRAWS {
            let n = count(|k| {
                let w = [0; 4].map(|_| k.reg(Type::U32));
                let a = k.reg(dt.ptx());
                let b = k.reg(dt.ptx());
                draw_ptx(k, dt, d, w, a.into(), b.into());
            });
            println!("{dt:?} {d:?}: {n} PTX instructions after the bits");
            let bound = match (dt, d) {
                (DType::F32, Draw::Binomial) => 5,
                (DType::F64, Draw::Binomial) => 6,
                (DType::F32, Draw::Uniform) => 6,
                (DType::F64, Draw::Uniform) => 7,
                (DType::F32, Draw::Normal) => 79,
                (DType::F64, Draw::Normal) => 109,
            };
            assert!(
                n <= bound,
                "{dt:?} {d:?}: {n} instructions, documented {bound}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Conversions: exact by definition.

#[test]
fn uniforms_are_the_documented_grids() {
    let mut g = SplitMix(11);
    for _ in 0..100_000 {
        let (x, y) = (g.next(), g.next());
        let w = [x as u32, (x >> 32) as u32, y as u32, (y >> 32) as u32];
        let u32_ = rng::uniform01::<f32>(w);
        let u64_ = rng::uniform01::<f64>(w);
        assert_eq!(u32_ as f64, (w[0] >> 8) as f64 / 16_777_216.0);
        let k = (w[0] as u64) << 21 | (w[1] >> 11) as u64;
        assert_eq!(u64_, k as f64 / 9_007_199_254_740_992.0);
        // The f32 uniform is the f64 one truncated to 24 bits.
        assert_eq!((u64_ * 16_777_216.0).floor(), u32_ as f64 * 16_777_216.0);
    }
    let (lo, hi) = ([0u32; 4], [u32::MAX; 4]);
    assert_eq!(rng::uniform01::<f32>(lo), 0.0);
    assert_eq!(rng::uniform01::<f32>(hi), 1.0 - 2f32.powi(-24));
    assert_eq!(rng::uniform01::<f64>(hi), 1.0 - 2f64.powi(-53));
    // p = 0 never, p = 1 always; the extremes of u.
    assert_eq!(rng::binomial::<f32>(lo, 0.0), 0.0);
    assert_eq!(rng::binomial::<f32>(hi, 1.0), 1.0);
    assert_eq!(rng::binomial::<f64>(lo, 0.0), 0.0);
    assert_eq!(rng::binomial::<f64>(hi, 1.0), 1.0);
    assert_eq!(rng::binomial::<f64>(lo, 1e-300), 1.0);
    // u1 = 1 gives z = 0; the largest |z| at u1 = 2^-24 / 2^-53.
    assert_eq!(rng::normal::<f32>(lo, 3.0, 2.0), 3.0);
    let zmax32 = rng::normal::<f32>([u32::MAX, 0, 0, 0], 0.0, 1.0) as f64;
    assert!(
        (zmax32 - (48f64 * 2f64.ln()).sqrt()).abs() < 1e-5,
        "{zmax32}"
    );
    let zmax64 = rng::normal::<f64>([u32::MAX, u32::MAX, 0, 0], 0.0, 1.0);
    assert!(
        (zmax64 - (106f64 * 2f64.ln()).sqrt()).abs() < 1e-13,
        "{zmax64}"
    );
}

// ---------------------------------------------------------------------------------------------
// Accuracy against f64 std functions.

/// |got - want| in units in the last place of `want` at `mant` mantissa bits (23 or 52).
fn ulps(got: f64, want: f64, mant: i32) -> f64 {
    if got == want {
        return 0.0;
    }
    let e = ((want.abs().to_bits() >> 52) as i32 - 1023).max(-1022);
    (got - want).abs() / 2f64.powi(e - mant)
}

/// cos(2 pi k 2^-bits): reduced exactly to t in [-1/8, 1/8], then the f64 std sin/cos of
/// 2 pi t, corrected for the rounding of 2 pi t to first order (so the reference errs by about
/// what the std functions do).
fn cos_ref(k: u64, bits: u32) -> f64 {
    let q = (k + (1 << (bits - 3))) >> (bits - 2);
    let t = (k as i64 - (q << (bits - 2)) as i64) as f64 * 2f64.powi(-(bits as i32));
    // 2 pi = TAU + TAU_LO; th + d = 2 pi t to about 2^-106 relative.
    const TAU_LO: f64 = 2.449_293_598_294_706_4e-16;
    let th = std::f64::consts::TAU * t;
    let d = std::f64::consts::TAU.mul_add(t, -th) + TAU_LO * t;
    let (s, c) = th.sin_cos();
    let (sin, cos) = (s + c * d, c - s * d);
    match q & 3 {
        0 => cos,
        1 => -sin,
        2 => -cos,
        _ => sin,
    }
}

#[test]
fn draw_accuracy() {
    // f32 ln and cos: every value they are used on.
    let mut ln32 = 0f64;
    let mut cos32 = 0f64;
    for k in 0u32..1 << 24 {
        let u1 = 1.0 - k as f32 * 2f32.powi(-24);
        let l = <f32 as DrawFloat>::ln_positive(u1) as f64;
        ln32 = ln32.max(ulps(l, (u1 as f64).ln(), 23));
        let c = <f32 as DrawFloat>::cos_2pi(k as u64) as f64;
        cos32 = cos32.max(ulps(c, cos_ref(k as u64, 24), 23));
    }
    // f64 ln and cos, and both normals, on random words.
    let (mut ln64, mut cos64, mut z32, mut z64) = (0f64, 0f64, 0f64, 0f64);
    let mut g = SplitMix(3);
    for _ in 0..1_000_000 {
        let (x, y) = (g.next(), g.next());
        let w = [x as u32, (x >> 32) as u32, y as u32, (y >> 32) as u32];
        let u1 = 1.0 - rng::uniform01::<f64>(w);
        ln64 = ln64.max(ulps(<f64 as DrawFloat>::ln_positive(u1), u1.ln(), 52));
        let k2 = (w[2] as u64) << 21 | (w[3] >> 11) as u64;
        cos64 = cos64.max(ulps(<f64 as DrawFloat>::cos_2pi(k2), cos_ref(k2, 53), 52));
        let want64 = (-2.0 * u1.ln()).sqrt() * cos_ref(k2, 53);
        z64 = z64.max(ulps(rng::normal::<f64>(w, 0.0, 1.0), want64, 52));
        let u1_32 = 1.0 - rng::uniform01::<f32>(w) as f64;
        let want32 = (-2.0 * u1_32.ln()).sqrt() * cos_ref((w[1] >> 8) as u64, 24);
        z32 = z32.max(ulps(rng::normal::<f32>(w, 0.0, 1.0) as f64, want32, 23));
    }
    // Next to 1, where ln is tiny and relative accuracy matters most.
    for j in 1..100_000u64 {
        let u1 = 1.0 - j as f64 * 2f64.powi(-53);
        ln64 = ln64.max(ulps(<f64 as DrawFloat>::ln_positive(u1), u1.ln(), 52));
    }
    println!(
        "max error in ulp: f32 ln {ln32:.3}, cos {cos32:.3}, z {z32:.3}; \
         f64 ln {ln64:.3}, cos {cos64:.3}, z {z64:.3}"
    );
    // f32 against f64 references (errors in fractions of an ulp); f64 against f64 std
    // functions (whole ulps, the reference's own rounding included).
    assert!(ln32 <= 1.0, "f32 ln: {ln32} ulp");
    assert!(cos32 <= 1.5, "f32 cos: {cos32} ulp");
    assert!(z32 <= 3.0, "f32 z: {z32} ulp");
    assert!(ln64 <= 1.0, "f64 ln: {ln64} ulp");
    assert!(cos64 <= 2.0, "f64 cos: {cos64} ulp");
    assert!(z64 <= 3.0, "f64 z: {z64} ulp");
}

// ---------------------------------------------------------------------------------------------
// Statistics on fixed keys. Tolerances are 6 standard deviations or more: deterministic, and
// far from what a correct generator shows.

const N: usize = 1_000_000;
const SEED: u64 = 0x5eed_0000_0000_0001;

fn mean_var(xs: impl Iterator<Item = f64>) -> (f64, f64, usize) {
    let (mut n, mut s, mut s2) = (0usize, 0f64, 0f64);
    for x in xs {
        n += 1;
        s += x;
        s2 += x * x;
    }
    let m = s / n as f64;
    (m, s2 / n as f64 - m * m, n)
}

#[test]
fn uniform_statistics() {
    let sd_mean = (1.0 / 12.0 / N as f64).sqrt();
    let sd_var = ((1.0 / 80.0 - 1.0 / 144.0) / N as f64).sqrt();
    let w = |i: usize| rng::bits(i as u32, 0, 9, SEED);
    let (m, v, _) = mean_var((0..N).map(|i| rng::uniform01::<f32>(w(i)) as f64));
    assert!((m - 0.5).abs() < 6.0 * sd_mean, "f32 mean {m}");
    assert!((v - 1.0 / 12.0).abs() < 6.0 * sd_var, "f32 variance {v}");
    let (m, v, _) = mean_var((0..N).map(|i| rng::uniform01::<f64>(w(i))));
    assert!((m - 0.5).abs() < 6.0 * sd_mean, "f64 mean {m}");
    assert!((v - 1.0 / 12.0).abs() < 6.0 * sd_var, "f64 variance {v}");
    // uniform(lo, hi): inside [lo, hi] (rounding may reach hi), scaled moments.
    let (lo, hi) = (-2.0f32, 5.0f32);
    let xs: Vec<f64> = (0..N)
        .map(|i| rng::uniform::<f32>(w(i), lo, hi) as f64)
        .collect();
    assert!(xs.iter().all(|&x| (lo as f64..=hi as f64).contains(&x)));
    let (m, v, _) = mean_var(xs.into_iter());
    assert!(
        (m - 1.5).abs() < 6.0 * 7.0 * sd_mean,
        "uniform(-2, 5) mean {m}"
    );
    assert!(
        (v - 49.0 / 12.0).abs() < 6.0 * 49.0 * sd_var,
        "variance {v}"
    );
    // Ten equal bins, each within 6 sd of N/10.
    let mut bins = [0usize; 10];
    for i in 0..N {
        bins[(rng::uniform01::<f64>(w(i)) * 10.0) as usize] += 1;
    }
    let sd = (N as f64 * 0.1 * 0.9).sqrt();
    for (b, &c) in bins.iter().enumerate() {
        assert!(
            (c as f64 - N as f64 / 10.0).abs() < 6.0 * sd,
            "bin {b}: {c}"
        );
    }
}

#[test]
fn binomial_statistics() {
    let p = 0.3;
    let sd = (p * (1.0 - p) / N as f64).sqrt();
    let w = |i: usize| rng::bits(i as u32, 2, 0, SEED);
    let f32_ones: f64 = (0..N)
        .map(|i| rng::binomial::<f32>(w(i), p as f32) as f64)
        .sum();
    let f64_ones: f64 = (0..N).map(|i| rng::binomial::<f64>(w(i), p)).sum();
    let (f32_freq, f64_freq) = (f32_ones / N as f64, f64_ones / N as f64);
    assert!((f32_freq - p).abs() < 6.0 * sd, "f32 frequency {f32_freq}");
    assert!((f64_freq - p).abs() < 6.0 * sd, "f64 frequency {f64_freq}");
    for i in 0..10_000 {
        let v = rng::binomial::<f64>(w(i), 0.3);
        assert!(v == 0.0 || v == 1.0);
        assert_eq!(rng::binomial::<f32>(w(i), 0.0), 0.0);
        assert_eq!(rng::binomial::<f32>(w(i), 1.0), 1.0);
        assert_eq!(rng::binomial::<f64>(w(i), 0.0), 0.0);
        assert_eq!(rng::binomial::<f64>(w(i), 1.0), 1.0);
    }
}

fn phi(x: f64) -> f64 {
    0.5 * (1.0 + erf_f64(x / std::f64::consts::SQRT_2))
}

fn check_normal(what: &str, zs: &[f64]) {
    let n = zs.len() as f64;
    let (m, v, _) = mean_var(zs.iter().copied());
    assert!(m.abs() < 6.0 / n.sqrt(), "{what}: mean {m}");
    assert!(
        (v - 1.0).abs() < 6.0 * (2.0 / n).sqrt(),
        "{what}: variance {v}"
    );
    // Bins of width 1/2 over [-4, 4] and the two tails, against the Gaussian's mass.
    let edges: Vec<f64> = (0..=16).map(|j| -4.0 + 0.5 * j as f64).collect();
    let mut counts = vec![0usize; edges.len() + 1];
    for &z in zs {
        counts[edges.partition_point(|&e| e <= z)] += 1;
    }
    let mut chi2 = 0.0;
    for (b, &c) in counts.iter().enumerate() {
        let lo = if b == 0 {
            f64::NEG_INFINITY
        } else {
            edges[b - 1]
        };
        let hi = if b == edges.len() {
            f64::INFINITY
        } else {
            edges[b]
        };
        let p = phi(hi) - phi(lo);
        let want = n * p;
        let sd = (n * p * (1.0 - p)).sqrt();
        assert!(
            (c as f64 - want).abs() < 6.0 * sd + 1.0,
            "{what}: bin [{lo}, {hi}): {c}, expected {want:.1}"
        );
        chi2 += (c as f64 - want).powi(2) / want;
    }
    // 17 degrees of freedom: chi2 > 60 has probability below 1e-6.
    assert!(chi2 < 60.0, "{what}: chi2 {chi2}");
    println!("{what}: mean {m:.5}, variance {v:.5}, chi2 {chi2:.1} (17 dof)");
}

#[test]
fn normal_statistics() {
    let w = |i: usize| rng::bits(i as u32, 1, 3, SEED);
    let z32: Vec<f64> = (0..N)
        .map(|i| rng::normal::<f32>(w(i), 0.0, 1.0) as f64)
        .collect();
    check_normal("f32 normal", &z32);
    assert!(z32.iter().all(|z| z.abs() <= 5.8));
    let z64: Vec<f64> = (0..N).map(|i| rng::normal::<f64>(w(i), 0.0, 1.0)).collect();
    check_normal("f64 normal", &z64);
    // mean and std.
    let (m, v, _) = mean_var((0..N).map(|i| rng::normal::<f64>(w(i), 3.0, 2.0)));
    assert!(
        (m - 3.0).abs() < 6.0 * 2.0 / (N as f64).sqrt(),
        "normal(3, 2) mean {m}"
    );
    assert!(
        (v - 4.0).abs() < 6.0 * 4.0 * (2.0 / N as f64).sqrt(),
        "variance {v}"
    );
}

/// Pearson correlation of two sequences.
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma) * (x - ma);
        sbb += (y - mb) * (y - mb);
    }
    sab / (saa * sbb).sqrt()
}

#[test]
fn streams_are_independent() {
    let n = 100_000;
    let unif = |site: u32, call: u64, seed: u64, shift: u32, word: usize| -> Vec<f64> {
        (0..n as u32)
            .map(|i| rng::bits(i + shift, site, call, seed)[word] as f64)
            .collect()
    };
    let base = unif(0, 0, SEED, 0, 0);
    let others = [
        ("site 1", unif(1, 0, SEED, 0, 0)),
        ("call 1", unif(0, 1, SEED, 0, 0)),
        ("call 2^32", unif(0, 1 << 32, SEED, 0, 0)),
        ("seed + 1", unif(0, 0, SEED + 1, 0, 0)),
        ("seed + 2^32", unif(0, 0, SEED ^ (1 << 32), 0, 0)),
        ("element + 1", unif(0, 0, SEED, 1, 0)),
        ("word 1", unif(0, 0, SEED, 0, 1)),
        ("word 2", unif(0, 0, SEED, 0, 2)),
        ("word 3", unif(0, 0, SEED, 0, 3)),
    ];
    let bound = 6.0 / (n as f64).sqrt();
    for (what, o) in &others {
        let r = correlation(&base, o);
        assert!(r.abs() < bound, "{what}: correlation {r}");
        let same = base.iter().zip(o).filter(|(a, b)| a == b).count();
        assert!(same < 5, "{what}: {same} equal words");
    }
    // Every bit of every word is 1 half of the time.
    let sd = 0.5 / (n as f64).sqrt();
    for word in 0..4 {
        let mut ones = [0usize; 32];
        for i in 0..n as u32 {
            let x = rng::bits(i, 0, 0, SEED)[word];
            for (b, c) in ones.iter_mut().enumerate() {
                *c += (x >> b & 1) as usize;
            }
        }
        for (b, &c) in ones.iter().enumerate() {
            let f = c as f64 / n as f64;
            assert!((f - 0.5).abs() < 6.0 * sd, "word {word} bit {b}: {f}");
        }
    }
}
