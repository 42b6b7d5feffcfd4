//! The kernel IR of fused loop kernels: the GPU-side mirror of the schedule's `LoopKernel`.
//!
//! A loop kernel evaluates an SSA instruction list at every point of a rank 0-2 iteration space
//! `dims` (`[outer, inner]` for rank 2, `[inner]` for rank 1), stores some values at the
//! identity index and reduces others over an axis. [`crate::lower::lower_loop`] turns it into
//! launches; [`LoopKernel::validate`] is the contract between the macro and the lowering.
//!
//! Buffers are contiguous and row-major. Sizes (every dim and the product of the iteration
//! space) must stay below 2^31: the kernels index with 32-bit integers.

use std::fmt;

pub type BufId = usize;
pub type ValId = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F32,
    F64,
}

impl DType {
    pub fn bytes(self) -> u32 {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }

    pub fn ptx(self) -> crate::ptx::Type {
        match self {
            DType::F32 => crate::ptx::Type::F32,
            DType::F64 => crate::ptx::Type::F64,
        }
    }

    pub fn param(self) -> crate::meta::ParamTy {
        match self {
            DType::F32 => crate::meta::ParamTy::F32,
            DType::F64 => crate::meta::ParamTy::F64,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }
}

/// A dimension: compiled in, or a `u32` kernel parameter named `d{id}` (the macro's symbolic
/// dim ids pass through unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    Static(u64),
    Sym(u32),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Static(n) => write!(f, "{n}"),
            Dim::Sym(d) => write!(f, "d{d}"),
        }
    }
}

/// An integer element type. Integer tensors (labels, indices) are computed as floats of the
/// kernel's dtype, exactly (their values stay below 2^24 in f32, 2^53 in f64); only their
/// buffers hold integers: a load converts, a store rounds toward zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IntTy {
    I32,
    I64,
}

impl IntTy {
    pub fn bytes(self) -> u32 {
        match self {
            IntTy::I32 => 4,
            IntTy::I64 => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IntTy::I32 => "i32",
            IntTy::I64 => "i64",
        }
    }

    /// The PTX type of an element in memory.
    pub fn ptx(self) -> crate::ptx::Type {
        match self {
            IntTy::I32 => crate::ptx::Type::S32,
            IntTy::I64 => crate::ptx::Type::S64,
        }
    }
}

/// A contiguous row-major buffer: of the kernel's float dtype, or of an integer type
/// (`int`), whose elements loads convert to that dtype and stores convert from it (rounding
/// toward zero; NaN becomes 0, out-of-range values saturate, as PTX's `cvt.rzi` does). For an
/// integer buffer `dtype` is not used.
///
/// A random stream ([`Buffer::stream`], read by [`Instr::Random`]) is an `i64` buffer of shape
/// `[2]` whose elements are not numbers but the raw bits of two `u64` words: the seed, then the
/// call counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffer {
    pub dtype: DType,
    pub shape: Vec<Dim>,
    pub int: Option<IntTy>,
}

impl Buffer {
    /// The buffer of a random stream: `[seed, call]` as the bits of two `u64`s in an `i64[2]`.
    pub fn stream(dtype: DType) -> Buffer {
        Buffer {
            dtype,
            shape: vec![Dim::Static(2)],
            int: Some(IntTy::I64),
        }
    }

    /// Whether the buffer has the form of a random stream ([`Buffer::stream`]).
    pub fn is_stream(&self) -> bool {
        self.int == Some(IntTy::I64) && self.shape == [Dim::Static(2)]
    }
}

/// A loop index: rank-2 spaces have an outer and an inner index, rank-1 spaces only the inner
/// one; `Zero` reads a broadcast (size-1) dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ix {
    Outer,
    Inner,
    Zero,
}

pub use crate::op::{Binary, Num, Unary};

/// The distribution of a random draw (Theano's RandomStreams ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RandKind {
    Binomial,
    Uniform,
    Normal,
}

impl RandKind {
    pub const ALL: [RandKind; 3] = [RandKind::Binomial, RandKind::Uniform, RandKind::Normal];

    pub fn name(self) -> &'static str {
        match self {
            RandKind::Binomial => "binomial",
            RandKind::Uniform => "uniform",
            RandKind::Normal => "normal",
        }
    }

    /// How many of the two parameters the draw reads: binomial's `p` only.
    pub fn arity(self) -> usize {
        match self {
            RandKind::Binomial => 1,
            RandKind::Uniform | RandKind::Normal => 2,
        }
    }
}

/// One SSA instruction, evaluated at every point of the iteration space. Operands are earlier
/// values.
#[derive(Debug, Clone, PartialEq)]
pub enum Instr {
    /// Reads `buf` at `index` (one entry per buffer dim).
    Load {
        buf: BufId,
        index: Vec<Ix>,
    },
    /// The rank-0 argument `id`, passed by value (a kernel parameter `a{id}`).
    Arg(u32),
    Const(f64),
    /// The size of a dim as a float.
    DimSize(Dim),
    Unary(Unary, ValId),
    Binary(Binary, ValId, ValId),
    /// The value of a loop index, as a float (`Outer` the row, `Inner` the column or element).
    Index(Ix),
    /// `a` where the condition `c` is not 0 (NaN counts as not 0), else `b`.
    Select(ValId, ValId, ValId),
    /// A random draw for the current point: `Binomial` (one trial, `params[0]` = p; `params[1]`
    /// is ignored), `Uniform` (lo, hi), `Normal` (mean, std), from the Philox stream of
    /// [`crate::rng`]'s keying with element index = the point's flat row-major index in the
    /// iteration space (rank 2: `outer * dims[1] + inner`; rank 1: `inner`; rank 0: 0), `site`,
    /// and the stream buffer's `[seed, call]` words ([`Buffer::stream`]).
    ///
    /// The draw is made in the kernel's dtype, bit for bit as [`crate::rng::binomial`],
    /// [`crate::rng::uniform`] and [`crate::rng::normal`] of that type compute it from the
    /// parameters' values in that type.
    Random {
        kind: RandKind,
        site: u32,
        stream: BufId,
        params: [ValId; 2],
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedKind {
    Sum,
    /// NaN-propagating; the maximum of nothing is -inf.
    Max,
    /// The index of the first maximum along the folded axis, as a float (the first NaN, if
    /// any: numpy's `argmax`); 0 for nothing.
    ArgMax,
}

/// Which axes of the iteration space a reduction folds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Axis {
    All,
    One(u8),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reduction {
    pub kind: RedKind,
    pub axis: Axis,
    pub value: ValId,
    /// Shape: the iteration space without the folded axis (`[]` for `All`).
    pub out: BufId,
}

/// A fused loop kernel.
///
/// Invariant (checked by [`LoopKernel::validate`]): every operand of instruction `v` is below
/// `v`; every float buffer the kernel touches has the kernel's dtype (integer buffers may have
/// any `dtype`: their elements are `int`, and the kernel computes them as its own dtype); the
/// stream of every random draw has the form of [`Buffer::stream`]; stores write buffers shaped
/// like the iteration space; no buffer is both written and read.
///
/// Integer values are exact only while they fit the dtype's mantissa (2^24 in f32, 2^53 in
/// f64); so are [`Instr::Index`] values. Argmax positions are carried as integers and stored
/// exactly into integer buffers, whatever the dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopKernel {
    pub dtype: DType,
    /// The iteration space, rank 0 to 2.
    pub dims: Vec<Dim>,
    /// The buffer table, indexed by [`BufId`]. It may be the whole schedule's table: only the
    /// buffers the kernel touches become parameters.
    pub bufs: Vec<Buffer>,
    pub instrs: Vec<Instr>,
    pub stores: Vec<(ValId, BufId)>,
    pub reductions: Vec<Reduction>,
}

/// A malformed kernel: a bug in whoever built it (the macro's schedule), never a user error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrError(pub String);

impl fmt::Display for IrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed loop kernel: {}", self.0)
    }
}

impl std::error::Error for IrError {}

/// Indices into 32-bit integers: every size stays below this.
pub const MAX_EXTENT: u64 = 1 << 31;

/// The shape with static 1s dropped: two shapes with the same normal form have the same
/// row-major layout.
fn normal(shape: &[Dim]) -> Vec<Dim> {
    shape
        .iter()
        .copied()
        .filter(|d| *d != Dim::Static(1))
        .collect()
}

impl LoopKernel {
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// The shape a reduction's output buffer must have.
    pub fn reduced_shape(&self, axis: Axis) -> Vec<Dim> {
        match (self.dims.len(), axis) {
            (2, Axis::One(0)) => vec![self.dims[1]],
            (2, Axis::One(1)) => vec![self.dims[0]],
            // Rank 0 and 1 spaces, and axes `validate` rejects, reduce to a scalar.
            (_, Axis::All | Axis::One(_)) => vec![],
        }
    }

    pub fn validate(&self) -> Result<(), IrError> {
        let err = |m: String| Err(IrError(m));
        let rank = self.dims.len();
        if rank > 2 {
            return err(format!("iteration space of rank {rank}"));
        }
        let dim_ok = |d: &Dim| match d {
            Dim::Static(n) => *n < MAX_EXTENT,
            Dim::Sym(_) => true,
        };
        if !self.dims.iter().all(dim_ok) {
            return err("a static dim is 2^31 or more".into());
        }
        let stat: u64 = self
            .dims
            .iter()
            .map(|d| match d {
                Dim::Static(n) => *n,
                Dim::Sym(_) => 1,
            })
            .product();
        if stat >= MAX_EXTENT {
            return err("the iteration space has 2^31 points or more".into());
        }
        let buf = |b: BufId| -> Result<&Buffer, IrError> {
            let x = self
                .bufs
                .get(b)
                .ok_or_else(|| IrError(format!("buffer b{b} is not in the table")))?;
            // An integer buffer's elements are `int`, computed as the kernel's dtype: its
            // `dtype` says nothing about them.
            if x.int.is_none() && x.dtype != self.dtype {
                return Err(IrError(format!(
                    "buffer b{b} is {}, the kernel is {}",
                    x.dtype.name(),
                    self.dtype.name()
                )));
            }
            if x.shape.len() > 2 || !x.shape.iter().all(dim_ok) {
                return Err(IrError(format!("buffer b{b} has an unsupported shape")));
            }
            Ok(x)
        };
        let mut read = Vec::new();
        for (v, ins) in self.instrs.iter().enumerate() {
            let operand = |a: ValId| {
                if a < v {
                    Ok(())
                } else {
                    Err(IrError(format!(
                        "%{v} uses %{a}, which is not defined before it"
                    )))
                }
            };
            match ins {
                Instr::Load { buf: b, index } => {
                    let x = buf(*b)?;
                    if index.len() != x.shape.len() {
                        return err(format!(
                            "%{v} reads b{b} (rank {}) with {} indices",
                            x.shape.len(),
                            index.len()
                        ));
                    }
                    for ix in index {
                        let ok = match ix {
                            Ix::Outer => rank == 2,
                            Ix::Inner => rank >= 1,
                            Ix::Zero => true,
                        };
                        if !ok {
                            return err(format!("%{v} uses {ix:?} in a rank-{rank} space"));
                        }
                    }
                    read.push(*b);
                }
                Instr::Arg(_) | Instr::Const(_) => {}
                Instr::DimSize(d) => {
                    if !dim_ok(d) {
                        return err(format!("%{v}: dim too large"));
                    }
                }
                Instr::Unary(_, a) => operand(*a)?,
                Instr::Binary(_, a, b) => {
                    operand(*a)?;
                    operand(*b)?;
                }
                Instr::Index(ix) => {
                    let ok = match ix {
                        Ix::Outer => rank == 2,
                        Ix::Inner => rank >= 1,
                        Ix::Zero => true,
                    };
                    if !ok {
                        return err(format!("%{v} uses {ix:?} in a rank-{rank} space"));
                    }
                }
                Instr::Select(c, a, b) => {
                    operand(*c)?;
                    operand(*a)?;
                    operand(*b)?;
                }
                Instr::Random { stream, params, .. } => {
                    operand(params[0])?;
                    operand(params[1])?;
                    let x = buf(*stream)?;
                    if !x.is_stream() {
                        let ty = x.int.map_or(x.dtype.name(), |t| t.name());
                        let dims: Vec<String> = x.shape.iter().map(|d| d.to_string()).collect();
                        return err(format!(
                            "%{v} draws from b{stream}, which is {ty}[{}], not a stream \
                             (i64[2]: seed, call)",
                            dims.join(", ")
                        ));
                    }
                    read.push(*stream);
                }
            }
        }
        let value = |x: ValId| {
            if x < self.instrs.len() {
                Ok(())
            } else {
                Err(IrError(format!("%{x} is not defined")))
            }
        };
        let mut written = Vec::new();
        for (v, b) in &self.stores {
            value(*v)?;
            let x = buf(*b)?;
            if normal(&x.shape) != normal(&self.dims) {
                return err(format!(
                    "store into b{b}, whose shape is not the iteration space's"
                ));
            }
            written.push(*b);
        }
        for r in &self.reductions {
            value(r.value)?;
            let ok = match (rank, r.axis) {
                (_, Axis::All) => true,
                (1, Axis::One(0)) => true,
                (2, Axis::One(0 | 1)) => true,
                (_, Axis::One(_)) => false,
            };
            if !ok {
                return err(format!(
                    "reduction over {:?} of a rank-{rank} space",
                    r.axis
                ));
            }
            let x = buf(r.out)?;
            if normal(&x.shape) != normal(&self.reduced_shape(r.axis)) {
                return err(format!(
                    "reduction into b{}, whose shape does not fit",
                    r.out
                ));
            }
            written.push(r.out);
        }
        // A buffer may be read and written only in place, element by element: a store (not a
        // reduction, and the kernel has none, so it is one launch visiting every point once)
        // whose every load of it is at the point being written. Each point then reads its old
        // value before writing the new one, and no point reads another's (an update loop that
        // writes its parameter directly).
        let root: &[Ix] = match rank {
            0 => &[],
            1 => &[Ix::Inner],
            _ => &[Ix::Outer, Ix::Inner],
        };
        let in_place = |b: BufId| {
            self.reductions.is_empty()
                && self.stores.iter().any(|(_, x)| *x == b)
                && self.instrs.iter().all(|ins| match ins {
                    Instr::Load { buf, index } if *buf == b => index.as_slice() == root,
                    Instr::Random { stream, .. } => *stream != b,
                    _ => true,
                })
        };
        for (i, b) in written.iter().enumerate() {
            if read.contains(b) && !in_place(*b) {
                return err(format!("b{b} is both read and written"));
            }
            if written[..i].contains(b) {
                return err(format!("b{b} is written twice"));
            }
        }
        Ok(())
    }
}

/// The text form: `loop f32[d0, 784]`, then one line per instruction, store and reduction
/// (a draw: `%4 = uniform %2 %3 site=1 stream=b5`).
impl fmt::Display for LoopKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        writeln!(f, "loop {}[{}]", self.dtype.name(), dims.join(", "))?;
        for (v, ins) in self.instrs.iter().enumerate() {
            match ins {
                Instr::Load { buf, index } => {
                    let ix: Vec<&str> = index
                        .iter()
                        .map(|i| match i {
                            Ix::Outer => "i",
                            Ix::Inner => "j",
                            Ix::Zero => "0",
                        })
                        .collect();
                    writeln!(f, "%{v} = b{buf}[{}]", ix.join(", "))?;
                }
                Instr::Arg(a) => writeln!(f, "%{v} = arg a{a}")?,
                Instr::Const(c) => writeln!(f, "%{v} = {c:?}")?,
                Instr::DimSize(d) => writeln!(f, "%{v} = size {d}")?,
                Instr::Unary(u, a) => writeln!(f, "%{v} = {u} %{a}")?,
                Instr::Binary(b, x, y) => writeln!(f, "%{v} = {b} %{x} %{y}")?,
                Instr::Index(ix) => writeln!(f, "%{v} = index {ix:?}")?,
                Instr::Select(c, a, b) => writeln!(f, "%{v} = select %{c} %{a} %{b}")?,
                Instr::Random {
                    kind,
                    site,
                    stream,
                    params,
                } => {
                    write!(f, "%{v} = {}", kind.name())?;
                    for p in &params[..kind.arity()] {
                        write!(f, " %{p}")?;
                    }
                    writeln!(f, " site={site} stream=b{stream}")?;
                }
            }
        }
        for (v, b) in &self.stores {
            writeln!(f, "store %{v} -> b{b}")?;
        }
        for r in &self.reductions {
            let k = match r.kind {
                RedKind::Sum => "sum",
                RedKind::Max => "max",
                RedKind::ArgMax => "argmax",
            };
            match r.axis {
                Axis::All => writeln!(f, "{k} %{} -> b{}", r.value, r.out)?,
                Axis::One(a) => writeln!(f, "{k}[axis={a}] %{} -> b{}", r.value, r.out)?,
            }
        }
        Ok(())
    }
}
