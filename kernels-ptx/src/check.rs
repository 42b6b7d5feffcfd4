//! Checking kernels without a GPU: deterministic random data, a straightforward CPU reference
//! of loop kernels (in f64), running programs on the interpreter through their metadata, and
//! comparisons that name the first mismatching index. The crate's tests and the compiler's
//! tests (every loop kernel the macro emits) use it.
//!
//! Random draws ([`Instr::Random`]) are the exception to "in f64": the reference makes them in
//! the kernel's dtype with [`crate::rng`], and the device must match them bit for bit. Their
//! stream buffers hold raw `u64` words, which an f64 cannot hold: in the `data` maps below a
//! stream buffer's two elements are `f64::from_bits` of the seed and of the call counter
//! ([`stream_data`]).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ir::{
    Axis, Binary, BufId, DType, Dim, Instr, IntTy, Ix, LoopKernel, RandKind, RedKind, Unary,
};
use crate::meta::{Program, Role};
use crate::rng::{self, DrawFloat};
use crate::scalar;
use crate::vm::{self, Memory, Stats, Value};

/// xorshift64*: deterministic test data without dependencies.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        let u = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        lo + (hi - lo) * u
    }

    pub fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// Rounds to the dtype (what the device buffer holds).
pub fn round_to(dtype: DType, v: f64) -> f64 {
    match dtype {
        DType::F32 => v as f32 as f64,
        DType::F64 => v,
    }
}

/// What an integer buffer holds for the float `v`: `v` rounded toward zero, saturated to the
/// type's range, NaN as 0 (PTX's `cvt.rzi`, and Rust's `as`).
pub fn to_int(t: IntTy, v: f64) -> f64 {
    match t {
        IntTy::I32 => v as i32 as f64,
        IntTy::I64 => v as i64 as f64,
    }
}

/// Unit roundoff of a dtype.
pub fn unit(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => f32::EPSILON as f64 / 2.0,
        DType::F64 => f64::EPSILON / 2.0,
    }
}

pub fn dim_value(d: Dim, syms: &HashMap<u32, u64>) -> u64 {
    match d {
        Dim::Static(n) => n,
        Dim::Sym(id) => syms[&id],
    }
}

pub fn elems(shape: &[Dim], syms: &HashMap<u32, u64>) -> usize {
    shape.iter().map(|d| dim_value(*d, syms) as usize).product()
}

/// The buffers a kernel writes.
pub fn outputs(k: &LoopKernel) -> Vec<BufId> {
    k.stores
        .iter()
        .map(|s| s.1)
        .chain(k.reductions.iter().map(|r| r.out))
        .collect()
}

/// The buffers a kernel reads (random streams included).
pub fn inputs(k: &LoopKernel) -> Vec<BufId> {
    let mut v: Vec<BufId> = k
        .instrs
        .iter()
        .filter_map(|i| match i {
            Instr::Load { buf, .. } => Some(*buf),
            Instr::Random { stream, .. } => Some(*stream),
            Instr::Arg(_)
            | Instr::Const(_)
            | Instr::DimSize(_)
            | Instr::Unary(..)
            | Instr::Binary(..)
            | Instr::Index(_)
            | Instr::Select(..) => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The stream buffers of a kernel's random draws.
pub fn streams(k: &LoopKernel) -> Vec<BufId> {
    let mut v: Vec<BufId> = k
        .instrs
        .iter()
        .filter_map(|i| match i {
            Instr::Random { stream, .. } => Some(*stream),
            Instr::Load { .. }
            | Instr::Arg(_)
            | Instr::Const(_)
            | Instr::DimSize(_)
            | Instr::Unary(..)
            | Instr::Binary(..)
            | Instr::Index(_)
            | Instr::Select(..) => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// A stream buffer's contents in a `data` map: the bits of `seed` and `call`, as f64s.
pub fn stream_data(seed: u64, call: u64) -> Vec<f64> {
    vec![f64::from_bits(seed), f64::from_bits(call)]
}

/// `(seed, call)` of a stream buffer's contents in a `data` map ([`stream_data`]).
pub fn stream_words(d: &[f64]) -> (u64, u64) {
    (d[0].to_bits(), d[1].to_bits())
}

// The reference: the ops' one definition ([`crate::scalar`]), in f64.

pub fn sigmoid(x: f64) -> f64 {
    scalar::sigmoid(x)
}

pub fn softplus(x: f64) -> f64 {
    scalar::softplus(x)
}

pub fn unary_ref(u: Unary, x: f64) -> f64 {
    scalar::unary(u, x)
}

pub fn max_nan(a: f64, b: f64) -> f64 {
    scalar::maximum(a, b)
}

pub fn min_nan(a: f64, b: f64) -> f64 {
    scalar::minimum(a, b)
}

pub fn binary_ref(b: Binary, x: f64, y: f64) -> f64 {
    scalar::binary(b, x, y)
}

/// A draw of `kind` from the words `w` in the dtype, with the parameters `a`, `b` (p and
/// unused, lo and hi, mean and std) rounded to the dtype first: what the device computes when
/// the parameters are exact in the dtype.
pub fn draw_ref(dtype: DType, kind: RandKind, w: [u32; 4], a: f64, b: f64) -> f64 {
    fn draw<T: DrawFloat>(kind: RandKind, w: [u32; 4], a: f64, b: f64) -> f64 {
        let (a, b) = (T::from_f64(a), T::from_f64(b));
        let x = match kind {
            RandKind::Binomial => rng::binomial(w, a),
            RandKind::Uniform => rng::uniform(w, a, b),
            RandKind::Normal => rng::normal(w, a, b),
        };
        x.to_f64()
    }
    match dtype {
        DType::F32 => draw::<f32>(kind, w, a, b),
        DType::F64 => draw::<f64>(kind, w, a, b),
    }
}

/// What the reference computes for one output.
pub struct RefOut {
    /// What the buffer holds: for integer buffers, the values converted as stores convert
    /// them ([`to_int`]); for argmax, the positions.
    pub values: Vec<f64>,
    /// Per element, the scale that bounds its rounding error (|value| for elementwise outputs,
    /// the sum of |terms| for sums; 0 for argmax, whose positions are exact).
    pub scale: Vec<f64>,
    /// Integer outputs: the float values before the conversion (empty for float outputs).
    pub floats: Vec<f64>,
    /// Argmax outputs: per element, the values along the folded axis in position order, for
    /// telling near ties apart (empty for other outputs).
    pub folded: Vec<Vec<f64>>,
}

/// The position of the first NaN of `xs`, else of the first maximum; 0 when empty (numpy's
/// `argmax`).
pub fn argmax_ref(xs: &[f64]) -> usize {
    if let Some(p) = xs.iter().position(|x| x.is_nan()) {
        return p;
    }
    let mut best = 0;
    for (p, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = p;
        }
    }
    best
}

/// Evaluates a loop kernel point by point in f64, reductions in sequential order. Loads see
/// what the device buffers hold: float inputs rounded to the dtype, integer inputs converted to
/// integers ([`to_int`]) and then to the dtype.
///
/// Random draws are made in the dtype ([`draw_ref`]) from the stream's words in `data`
/// ([`stream_data`]), keyed by the point's flat index. Their parameters are the reference's f64
/// values rounded to the dtype: the device's match them when they are exact in the dtype
/// (loads, arguments, constants, exact arithmetic on them); a parameter computed with
/// roundings may differ in the last place and flip a draw.
pub fn reference(
    k: &LoopKernel,
    syms: &HashMap<u32, u64>,
    args: &HashMap<u32, f64>,
    data: &HashMap<BufId, Vec<f64>>,
) -> HashMap<BufId, RefOut> {
    let dims: Vec<usize> = k
        .dims
        .iter()
        .map(|d| dim_value(*d, syms) as usize)
        .collect();
    let (outer, inner) = match dims.len() {
        0 => (1, 1),
        1 => (1, dims[0]),
        _ => (dims[0], dims[1]),
    };
    let mut out: HashMap<BufId, RefOut> = HashMap::new();
    for &(_, b) in &k.stores {
        let n = elems(&k.bufs[b].shape, syms);
        out.insert(
            b,
            RefOut {
                values: vec![f64::NAN; n],
                scale: vec![0.0; n],
                floats: Vec::new(),
                folded: Vec::new(),
            },
        );
    }
    for r in &k.reductions {
        let n = elems(&k.bufs[r.out].shape, syms).max(1);
        let (init, folded) = match r.kind {
            RedKind::Sum => (0.0, Vec::new()),
            RedKind::Max => (f64::NEG_INFINITY, Vec::new()),
            RedKind::ArgMax => (0.0, vec![Vec::new(); n]),
        };
        out.insert(
            r.out,
            RefOut {
                values: vec![init; n],
                scale: vec![0.0; n],
                floats: Vec::new(),
                folded,
            },
        );
    }
    let mut vals = vec![0.0f64; k.instrs.len()];
    for i in 0..outer {
        for j in 0..inner {
            for (v, ins) in k.instrs.iter().enumerate() {
                vals[v] = match ins {
                    Instr::Load { buf, index } => {
                        let shape = &k.bufs[*buf].shape;
                        let mut flat = 0usize;
                        for (axis, ix) in index.iter().enumerate() {
                            let x = match ix {
                                Ix::Outer => i,
                                Ix::Inner => j,
                                Ix::Zero => 0,
                            };
                            flat = flat * dim_value(shape[axis], syms) as usize + x;
                        }
                        let x = data[buf][flat];
                        match k.bufs[*buf].int {
                            Some(t) => round_to(k.dtype, to_int(t, x)),
                            None => round_to(k.dtype, x),
                        }
                    }
                    Instr::Arg(a) => args[a],
                    Instr::Const(c) => round_to(k.dtype, *c),
                    Instr::DimSize(d) => dim_value(*d, syms) as f64,
                    Instr::Unary(u, a) => unary_ref(*u, vals[*a]),
                    Instr::Binary(b, x, y) => binary_ref(*b, vals[*x], vals[*y]),
                    Instr::Index(ix) => match ix {
                        Ix::Outer => i as f64,
                        Ix::Inner => j as f64,
                        Ix::Zero => 0.0,
                    },
                    Instr::Select(c, a, b) => scalar::select(vals[*c], vals[*a], vals[*b]),
                    Instr::Random {
                        kind,
                        site,
                        stream,
                        params,
                    } => {
                        let (seed, call) = stream_words(&data[stream]);
                        // The point's flat row-major index: below 2^31 (`validate`).
                        let w = rng::bits((i * inner + j) as u32, *site, call, seed);
                        draw_ref(k.dtype, *kind, w, vals[params[0]], vals[params[1]])
                    }
                };
            }
            let flat = i * inner + j;
            for &(v, b) in &k.stores {
                let o = out.get_mut(&b).unwrap();
                o.values[flat] = vals[v];
                o.scale[flat] = vals[v].abs();
            }
            for r in &k.reductions {
                let at = match (k.dims.len(), r.axis) {
                    (2, Axis::One(0)) => j,
                    (2, Axis::One(1)) => i,
                    _ => 0,
                };
                let o = out.get_mut(&r.out).unwrap();
                let x = vals[r.value];
                match r.kind {
                    RedKind::Sum => {
                        o.values[at] += x;
                        o.scale[at] += x.abs();
                    }
                    RedKind::Max => {
                        o.values[at] = max_nan(o.values[at], x);
                        o.scale[at] = o.values[at].abs();
                    }
                    // Points arrive in position order along the folded axis (the flat order
                    // for full reductions); the position is taken at the end.
                    RedKind::ArgMax => o.folded[at].push(x),
                }
            }
        }
    }
    for r in &k.reductions {
        if r.kind == RedKind::ArgMax {
            let o = out.get_mut(&r.out).unwrap();
            for (at, xs) in o.folded.iter().enumerate() {
                o.values[at] = argmax_ref(xs) as f64;
            }
        }
    }
    for (&b, o) in out.iter_mut() {
        if let Some(t) = k.bufs[b].int {
            o.floats = o.values.clone();
            for v in o.values.iter_mut() {
                *v = to_int(t, *v);
            }
        }
    }
    out
}

/// Uploads `data`, runs `program` on the interpreter through its metadata (binding buffers by
/// id, dims and args by id), and reads back every buffer in `read`. Every buffer holds floats
/// of `dtype`; see [`run_program_typed`] for integer buffers.
pub fn run_program(
    program: &Program,
    dtype: DType,
    bufs: &[(BufId, usize)],
    data: &HashMap<BufId, Vec<f64>>,
    syms: &HashMap<u32, u64>,
    args: &HashMap<u32, f64>,
) -> (HashMap<BufId, Vec<f64>>, Stats) {
    let typed: Vec<(BufId, usize, Option<IntTy>)> =
        bufs.iter().map(|&(b, n)| (b, n, None)).collect();
    run_program_typed(program, dtype, &typed, data, syms, args)
}

/// [`run_program`] with buffers `(id, elements, integer type)`: integer buffers are uploaded
/// from `data` as [`to_int`] converts, and read back as integers (as f64).
pub fn run_program_typed(
    program: &Program,
    dtype: DType,
    bufs: &[(BufId, usize, Option<IntTy>)],
    data: &HashMap<BufId, Vec<f64>>,
    syms: &HashMap<u32, u64>,
    args: &HashMap<u32, f64>,
) -> (HashMap<BufId, Vec<f64>>, Stats) {
    let elems: Vec<(BufId, usize, Elem)> = bufs
        .iter()
        .map(|&(b, n, int)| (b, n, int.map_or(Elem::Float, Elem::Int)))
        .collect();
    run_program_elems(program, dtype, &elems, data, syms, args)
}

/// What a buffer holds in memory, and how `data` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// Floats of the dtype.
    Float,
    /// Integers, given as f64s that [`to_int`] converts.
    Int(IntTy),
    /// Raw 64-bit words (a random stream's seed and call), given and read back as
    /// `f64::from_bits` of the word ([`stream_data`]).
    Bits64,
}

impl Elem {
    /// The element of buffer `b` of kernel `k`: streams are words, whatever else reads them.
    pub fn of(k: &LoopKernel, b: BufId) -> Elem {
        if streams(k).contains(&b) {
            Elem::Bits64
        } else {
            k.bufs[b].int.map_or(Elem::Float, Elem::Int)
        }
    }

    fn bytes(self, dtype: DType) -> u32 {
        match self {
            Elem::Float => dtype.bytes(),
            Elem::Int(t) => t.bytes(),
            Elem::Bits64 => 8,
        }
    }
}

/// [`run_program`] with buffers `(id, elements, element kind)`.
pub fn run_program_elems(
    program: &Program,
    dtype: DType,
    bufs: &[(BufId, usize, Elem)],
    data: &HashMap<BufId, Vec<f64>>,
    syms: &HashMap<u32, u64>,
    args: &HashMap<u32, f64>,
) -> (HashMap<BufId, Vec<f64>>, Stats) {
    let mut mem = Memory::new();
    let mut ptrs: HashMap<BufId, u64> = HashMap::new();
    for &(b, n, elem) in bufs {
        let p = match (data.get(&b), elem, dtype) {
            (Some(d), Elem::Float, DType::F32) => {
                mem.upload_f32(&d.iter().map(|x| *x as f32).collect::<Vec<_>>())
            }
            (Some(d), Elem::Float, DType::F64) => mem.upload_f64(d),
            (Some(d), Elem::Int(IntTy::I32), _) => {
                mem.upload_i32(&d.iter().map(|x| *x as i32).collect::<Vec<_>>())
            }
            (Some(d), Elem::Int(IntTy::I64), _) => {
                mem.upload_i64(&d.iter().map(|x| *x as i64).collect::<Vec<_>>())
            }
            (Some(d), Elem::Bits64, _) => {
                mem.upload_i64(&d.iter().map(|x| x.to_bits() as i64).collect::<Vec<_>>())
            }
            (None, _, _) => mem.alloc(n * elem.bytes(dtype) as usize),
        };
        ptrs.insert(b, p);
    }
    let bind = |r: Role| -> Option<Value> {
        match r {
            Role::Buf(b) => ptrs.get(&b).map(|p| Value::Ptr(*p)),
            Role::Dim(d) => syms.get(&d).map(|x| Value::U32(*x as u32)),
            Role::Arg(a) => args.get(&a).map(|x| match dtype {
                DType::F32 => Value::F32(*x as f32),
                DType::F64 => Value::F64(*x),
            }),
            Role::Scratch(_)
            | Role::Const(_)
            | Role::GemmA
            | Role::GemmB
            | Role::GemmC
            | Role::GemmBias
            | Role::Alpha
            | Role::Beta => None,
        }
    };
    let stats = vm::run(program, &mut mem, &bind).unwrap_or_else(|e| panic!("interpreter: {e}"));
    let mut out = HashMap::new();
    for &(b, n, elem) in bufs {
        let v = match (elem, dtype) {
            (Elem::Float, DType::F32) => mem
                .read_f32(ptrs[&b], n)
                .into_iter()
                .map(|x| x as f64)
                .collect(),
            (Elem::Float, DType::F64) => mem.read_f64(ptrs[&b], n),
            (Elem::Int(IntTy::I32), _) => mem
                .read_i32(ptrs[&b], n)
                .into_iter()
                .map(|x| x as f64)
                .collect(),
            (Elem::Int(IntTy::I64), _) => mem
                .read_i64(ptrs[&b], n)
                .into_iter()
                .map(|x| x as f64)
                .collect(),
            (Elem::Bits64, _) => mem
                .read_i64(ptrs[&b], n)
                .into_iter()
                .map(|x| f64::from_bits(x as u64))
                .collect(),
        };
        out.insert(b, v);
    }
    (out, stats)
}

/// Asserts `got` matches `want` within `tol(i)`; NaN matches NaN, infinities match exactly.
pub fn assert_close(what: &str, got: &[f64], want: &[f64], tol: impl Fn(usize) -> f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for i in 0..got.len() {
        let (g, w) = (got[i], want[i]);
        let ok = if w.is_nan() || g.is_nan() {
            w.is_nan() && g.is_nan()
        } else if w.is_infinite() || g.is_infinite() {
            g == w
        } else {
            (g - w).abs() <= tol(i)
        };
        assert!(
            ok,
            "{what}: first mismatch at index {i}: got {g:e}, want {w:e} (tolerance {:e}; {} elements)",
            tol(i),
            got.len()
        );
    }
}

/// Runs a loop kernel on the interpreter with random inputs in `[lo, hi)` and compares every
/// output with the reference (see [`check_loop_data`]). Integer inputs get random integers,
/// `floor` of the same uniform draws. Random streams get random words: a seed with its top
/// bit set and a call counter above 2^32, so that both halves of both words matter.
#[allow(clippy::too_many_arguments)]
pub fn check_loop(
    name: &str,
    k: &LoopKernel,
    syms: &HashMap<u32, u64>,
    args: &HashMap<u32, f64>,
    lo: f64,
    hi: f64,
    chain: f64,
    seed: u64,
) -> Stats {
    let mut rng = Rng::new(seed);
    let mut data = HashMap::new();
    let streams = streams(k);
    for b in inputs(k) {
        if streams.contains(&b) {
            let seed = rng.next_u64() | 1 << 63;
            let call = rng.next_u64() | 1 << 32;
            data.insert(b, stream_data(seed, call));
            continue;
        }
        let n = elems(&k.bufs[b].shape, syms);
        let d: Vec<f64> = rng
            .vec(n, lo, hi)
            .into_iter()
            .map(|x| match k.bufs[b].int {
                Some(_) => x.floor(),
                None => round_to(k.dtype, x),
            })
            .collect();
        data.insert(b, d);
    }
    check_loop_data(name, k, syms, args, &data, chain)
}

/// Runs a loop kernel on the interpreter with the inputs `data` (by buffer id; floats are
/// rounded to the dtype, integer buffers converted as [`to_int`] says) and compares every
/// output with the reference. `chain` bounds the relative error of one point's computation in
/// units of the dtype's roundoff.
///
/// Float outputs match within that bound (sums: plus one unit per term, relative to the sum of
/// |terms|); integer outputs must be what the store converts a float within that bound to.
/// Argmax positions must be the reference's exactly, unless the reference's maximum and the
/// value at the position found are different numbers within `chain` units of each other: such
/// a near tie may order either way once the device rounds. Equal values never do, so ties
/// must go to the first position.
///
/// Random draws must match bit for bit: a stored draw, and the maximum of draws, have no
/// tolerance (see [`reference()`] for the parameters); values computed from draws have the
/// usual one. Stream buffers in `data` are [`stream_data`].
pub fn check_loop_data(
    name: &str,
    k: &LoopKernel,
    syms: &HashMap<u32, u64>,
    args: &HashMap<u32, f64>,
    data: &HashMap<BufId, Vec<f64>>,
    chain: f64,
) -> Stats {
    let program = crate::lower_loop(k).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut bufs = Vec::new();
    for b in inputs(k) {
        bufs.push((b, elems(&k.bufs[b].shape, syms), Elem::of(k, b)));
    }
    for b in outputs(k) {
        bufs.push((b, elems(&k.bufs[b].shape, syms).max(1), Elem::of(k, b)));
    }
    let args: HashMap<u32, f64> = args
        .iter()
        .map(|(a, v)| (*a, round_to(k.dtype, *v)))
        .collect();
    let (got, stats) = run_program_elems(&program, k.dtype, &bufs, data, syms, &args);
    let want = reference(k, syms, &args, data);
    let u = unit(k.dtype);
    let tiny = match k.dtype {
        DType::F32 => 1e-30,
        DType::F64 => 1e-300,
    };
    for b in outputs(k) {
        let w = &want[&b];
        let g = &got[&b];
        let what = format!("{name}: b{b}");
        let kind = k.reductions.iter().find(|r| r.out == b).map(|r| r.kind);
        if kind == Some(RedKind::ArgMax) {
            assert_positions(&what, g, w, |x, y| chain * u * (x.abs() + y.abs()) + tiny);
            continue;
        }
        if holds_draws(k, b) {
            assert_bits(&what, g, &w.values);
            continue;
        }
        let terms = if kind == Some(RedKind::Sum) {
            elems(&k.dims, syms) as f64
        } else {
            1.0
        };
        // A sum of n terms, each with relative error `chain`: the rounding of the sum adds at
        // most n units of roundoff (in any order), all relative to the sum of |terms|.
        let tol = |i: usize| (chain + terms) * u * w.scale[i] + tiny;
        match k.bufs[b].int {
            None => assert_close(&what, g, &w.values, tol),
            Some(t) => {
                for (i, (&gi, &f)) in g.iter().zip(&w.floats).enumerate() {
                    // NaN and infinities convert to one integer (0, or saturated).
                    let ok = if f.is_finite() {
                        to_int(t, f - tol(i)) <= gi && gi <= to_int(t, f + tol(i))
                    } else {
                        gi == w.values[i]
                    };
                    assert!(
                        ok,
                        "{what}: first mismatch at index {i}: got {gi}, want {} (from {f:e}, \
                         tolerance {:e}; {} elements)",
                        w.values[i],
                        tol(i),
                        g.len()
                    );
                }
            }
        }
    }
    stats
}

/// Whether output `b` holds random draws exactly: a store of a draw, or the maximum of one.
fn holds_draws(k: &LoopKernel, b: BufId) -> bool {
    let draw = |v: usize| matches!(k.instrs[v], Instr::Random { .. });
    k.stores.iter().any(|&(v, out)| out == b && draw(v))
        || k.reductions
            .iter()
            .any(|r| r.out == b && r.kind == RedKind::Max && draw(r.value))
}

/// Asserts `got` is `want` bit for bit (any NaN matches any NaN: the device's is canonical).
pub fn assert_bits(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
            "{what}: first mismatch at index {i}: got {g:e} ({:#018x}), want {w:e} ({:#018x}), \
             bit for bit; {} elements",
            g.to_bits(),
            w.to_bits(),
            got.len()
        );
    }
}

/// Asserts argmax positions: `got[i]` is the reference's, or a near tie of it (different
/// values within `near(max, value)`), as [`check_loop_data`] explains.
fn assert_positions(what: &str, got: &[f64], want: &RefOut, near: impl Fn(f64, f64) -> f64) {
    assert_eq!(got.len(), want.values.len(), "{what}: lengths differ");
    for (i, (&g, xs)) in got.iter().zip(&want.folded).enumerate() {
        let w = want.values[i];
        if g == w {
            continue;
        }
        let best = xs.get(w as usize).copied().unwrap_or(f64::NAN);
        let at = (g >= 0.0 && g.fract() == 0.0)
            .then(|| xs.get(g as usize))
            .flatten()
            .copied();
        let near_tie = match at {
            Some(x) => {
                !x.is_nan() && !best.is_nan() && x != best && (x - best).abs() <= near(best, x)
            }
            None => false,
        };
        assert!(
            near_tie,
            "{what}: first mismatch at index {i}: got position {g}, want {w} (values there: \
             {:?} and {best:e}; {} elements)",
            at,
            got.len()
        );
    }
}

pub fn syms(pairs: &[(u32, u64)]) -> HashMap<u32, u64> {
    pairs.iter().copied().collect()
}

// ---------------------------------------------------------------------------------------------
// ptxas: PTX validity without a GPU.

/// `ptxas`: the env var `PTXAS`, else `PATH`, else `.tools/ptxas` at the workspace root
/// (`bash scripts/fetch-ptxas.sh` puts it there).
pub fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PTXAS") {
        return Some(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("ptxas");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let local = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.tools/ptxas")).to_path_buf();
    local.is_file().then_some(local)
}

/// [`find_ptxas`], or None after a loud message; under `CI=true` a missing ptxas panics.
pub fn ptxas_or_skip() -> Option<PathBuf> {
    match find_ptxas() {
        Some(p) => Some(p),
        None => {
            let msg = "ptxas not found (env PTXAS, PATH, .tools/ptxas): the PTX validity test \
                       did NOT run; `bash scripts/fetch-ptxas.sh` fetches it";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg} (CI=true: a missing ptxas is a failure)");
            }
            // Straight to the stderr handle: libtest captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!!!!\n!!! SKIPPED: {msg}\n!!!!!!!!!!\n"
            );
            None
        }
    }
}

/// Assembles `ptx` for `arch`; returns ptxas's `-v` output. Panics on any error or warning.
pub fn assemble(ptxas: &Path, ptx: &str, arch: &str, tag: &str) -> String {
    let dir = std::env::temp_dir().join(format!(
        "tensor-fn-ptxas-{}-{tag}-{arch}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("kernels.ptx");
    std::fs::write(&src, ptx).unwrap();
    let out = Command::new(ptxas)
        .arg("-v")
        .arg(format!("-arch={arch}"))
        .arg(&src)
        .arg("-o")
        .arg(dir.join("kernels.cubin"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", ptxas.display()));
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "ptxas -arch={arch} failed on {} ({}):\n{log}",
        src.display(),
        out.status
    );
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| {
            let l = l.to_lowercase();
            l.contains("error") || l.contains("warning")
        })
        .collect();
    assert!(
        bad.is_empty(),
        "ptxas -arch={arch} complained:\n{}",
        bad.join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
    log
}

/// What `ptxas -v` reports for one function of a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FnUsage {
    pub name: String,
    /// An `.entry` (a kernel); false for a `.func` that a kernel calls.
    pub entry: bool,
    /// Registers per thread; ptxas reports them for entries only.
    pub registers: Option<u32>,
    pub stack_frame: u32,
    pub spill_stores: u32,
    pub spill_loads: u32,
}

impl FnUsage {
    pub fn spills(&self) -> bool {
        self.spill_stores != 0 || self.spill_loads != 0
    }
}

/// Reads the per-function lines of a `ptxas -v` log:
///
/// ```text
/// ptxas info    : Compiling entry function 'k' for 'sm_80'
/// ptxas info    : Function properties for k
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 30 registers, used 1 barriers, 360 bytes cmem[0]
/// ```
///
/// Functions come back in the order of the log. A log with no entry at all, an entry without
/// its properties line, or a properties line that does not read as above is an error: a change
/// of ptxas's format must not turn the spill check into one that checks nothing.
pub fn parse_ptxas_log(log: &str) -> Result<Vec<FnUsage>, String> {
    fn quoted_after<'a>(line: &'a str, key: &str) -> Option<&'a str> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.strip_prefix('\'')?.split('\'').next()
    }
    // "N bytes stack frame, N bytes spill stores, N bytes spill loads"
    fn properties(line: &str) -> Option<[u32; 3]> {
        let mut out = [0u32; 3];
        let mut parts = line.split(',');
        for (slot, what) in out
            .iter_mut()
            .zip(["stack frame", "spill stores", "spill loads"])
        {
            let part = parts.next()?.trim();
            let n = part
                .strip_suffix(what)?
                .trim()
                .strip_suffix("bytes")?
                .trim();
            *slot = n.parse().ok()?;
        }
        parts.next().is_none().then_some(out)
    }

    let mut fns: Vec<FnUsage> = Vec::new();
    let mut entries: Vec<String> = Vec::new();
    // The entry being compiled: "Used N registers" belongs to it.
    let mut compiling: Option<String> = None;
    let mut lines = log.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        if let Some(name) = quoted_after(line, "Compiling entry function ") {
            entries.push(name.to_string());
            compiling = Some(name.to_string());
        } else if let Some(at) = line.find("Function properties for ") {
            let name = line[at + "Function properties for ".len()..]
                .trim()
                .to_string();
            let next = lines.next().map(|(_, l)| l).unwrap_or("");
            let [stack_frame, spill_stores, spill_loads] = properties(next).ok_or_else(|| {
                format!(
                    "ptxas -v log, line {}: expected \"N bytes stack frame, N bytes spill \
                     stores, N bytes spill loads\" for {name}, found {next:?}",
                    i + 2
                )
            })?;
            fns.push(FnUsage {
                entry: entries.contains(&name),
                name,
                registers: None,
                stack_frame,
                spill_stores,
                spill_loads,
            });
        } else if let Some(at) = line.find("Used ") {
            let regs = line[at + "Used ".len()..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok());
            let (Some(regs), Some(name)) = (regs, compiling.take()) else {
                return Err(format!(
                    "ptxas -v log, line {}: a register count outside an entry: {line:?}",
                    i + 1
                ));
            };
            if let Some(f) = fns.iter_mut().rev().find(|f| f.name == name) {
                f.registers = Some(regs);
            }
        } else if line.contains("spill") {
            return Err(format!(
                "ptxas -v log, line {}: spill counts outside a \"Function properties\" block: \
                 {line:?}",
                i + 1
            ));
        }
    }
    if entries.is_empty() {
        return Err(format!(
            "ptxas -v log has no \"Compiling entry function\" line: cannot check spills\n{log}"
        ));
    }
    for name in &entries {
        if !fns.iter().any(|f| f.entry && &f.name == name) {
            return Err(format!(
                "ptxas -v log has no \"Function properties\" for entry {name}\n{log}"
            ));
        }
    }
    Ok(fns)
}

/// The `.entry` names of a PTX module, in order.
pub fn entry_names(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|line| {
            let code = line.split("//").next().unwrap_or("");
            let mut words = code.split_whitespace();
            words.by_ref().find(|w| *w == ".entry")?;
            let name = words.next()?.split('(').next()?;
            Some(name.to_string())
        })
        .collect()
}

/// Checks the `ptxas -v` log of `ptx`: ptxas reported every `.entry` of the module once, and no
/// function (kernel or called `.func`) spills registers, stores or loads. Returns the functions
/// for a report; the error names every function that spills.
pub fn check_no_spills(log: &str, ptx: &str) -> Result<Vec<FnUsage>, String> {
    let fns = parse_ptxas_log(log)?;
    let mut want = entry_names(ptx);
    let mut seen: Vec<String> = fns
        .iter()
        .filter(|f| f.entry)
        .map(|f| f.name.clone())
        .collect();
    want.sort();
    seen.sort();
    if want != seen {
        return Err(format!(
            "ptxas -v reported {} entries, the module has {} .entry: reported {seen:?}, \
             declared {want:?}\n{log}",
            seen.len(),
            want.len()
        ));
    }
    let spilling: Vec<String> = fns
        .iter()
        .filter(|f| f.spills())
        .map(|f| {
            format!(
                "{} ({} bytes spill stores, {} bytes spill loads)",
                f.name, f.spill_stores, f.spill_loads
            )
        })
        .collect();
    if !spilling.is_empty() {
        return Err(format!(
            "{} of {} functions spill registers: {}",
            spilling.len(),
            fns.len(),
            spilling.join(", ")
        ));
    }
    Ok(fns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTX: &str = "\
.version 7.8
.target sm_80
.address_size 64

// .entry in a comment is not an entry
.visible .entry tf_ew_1(
\t.param .u64 p0
)
{
\tret;
}
.visible .entry tf_row_2(.param .u64 p0)
{
\tret;
}
";

    // ptxas 13.0, `-v -arch=sm_80`, two entries, the second calls a `.func`.
    const CLEAN: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'tf_ew_1' for 'sm_80'
ptxas info    : Function properties for tf_ew_1
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 30 registers, used 0 barriers, 360 bytes cmem[0]
ptxas info    : Compile time = 1.429 ms
ptxas info    : Compiling entry function 'tf_row_2' for 'sm_80'
ptxas info    : Function properties for tf_row_2
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 12 registers, used 1 barriers, 360 bytes cmem[0]
ptxas info    : Compile time = 0.426 ms
ptxas info    : Function properties for helper
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
";

    #[test]
    fn reads_every_function() {
        let fns = parse_ptxas_log(CLEAN).unwrap();
        let names: Vec<(&str, bool, Option<u32>)> = fns
            .iter()
            .map(|f| (f.name.as_str(), f.entry, f.registers))
            .collect();
        assert_eq!(
            names,
            [
                ("tf_ew_1", true, Some(30)),
                ("tf_row_2", true, Some(12)),
                ("helper", false, None)
            ]
        );
        assert_eq!(check_no_spills(CLEAN, PTX).unwrap().len(), 3);
    }

    #[test]
    fn finds_entry_names_in_ptx() {
        assert_eq!(entry_names(PTX), ["tf_ew_1", "tf_row_2"]);
    }

    #[test]
    fn one_kernel_with_spill_loads_only_fails_the_module() {
        let log = CLEAN.replacen(
            "0 bytes spill stores, 0 bytes spill loads\nptxas info    : Used 12",
            "0 bytes spill stores, 8 bytes spill loads\nptxas info    : Used 12",
            1,
        );
        assert_ne!(log, CLEAN);
        let err = check_no_spills(&log, PTX).unwrap_err();
        assert!(
            err.contains("tf_row_2 (0 bytes spill stores, 8 bytes spill loads)"),
            "{err}"
        );
        assert!(!err.contains("tf_ew_1"), "{err}");
    }

    #[test]
    fn spill_stores_and_spills_in_called_functions_fail() {
        let log = CLEAN.replacen(
            "0 bytes stack frame, 0 bytes spill stores",
            "16 bytes stack frame, 16 bytes spill stores",
            1,
        );
        let err = check_no_spills(&log, PTX).unwrap_err();
        assert!(err.contains("tf_ew_1 (16 bytes spill stores"), "{err}");
        let log = CLEAN.replacen(
            "helper\n    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads",
            "helper\n    0 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads",
            1,
        );
        assert_ne!(log, CLEAN);
        let err = check_no_spills(&log, PTX).unwrap_err();
        assert!(
            err.contains("helper (4 bytes spill stores, 4 bytes spill loads)"),
            "{err}"
        );
    }

    #[test]
    fn a_log_without_kernels_is_an_error() {
        assert!(parse_ptxas_log("").is_err());
        assert!(parse_ptxas_log("ptxas info    : 0 bytes gmem\n").is_err());
        // Per-kernel lines in another format.
        let other = CLEAN.replace("Compiling entry function", "Compiling kernel");
        assert!(parse_ptxas_log(&other).is_err());
        let other = CLEAN.replace("bytes spill loads", "B spill loads");
        assert!(parse_ptxas_log(&other).is_err());
        let other = CLEAN.replace("Function properties for", "Properties of");
        assert!(parse_ptxas_log(&other).is_err());
    }

    #[test]
    fn every_entry_must_be_reported() {
        let (first, _) = CLEAN
            .split_once("ptxas info    : Compiling entry function 'tf_row_2'")
            .unwrap();
        let err = check_no_spills(first, PTX).unwrap_err();
        assert!(
            err.contains("reported 1 entries, the module has 2 .entry"),
            "{err}"
        );
        let three = format!("{PTX}.visible .entry tf_col_3(.param .u64 p0)\n{{\n\tret;\n}}\n");
        assert!(check_no_spills(CLEAN, &three).is_err());
    }
}
