//! Launch metadata as data: what each parameter is, how big the grid is, how many threads a
//! block has and how much shared memory it uses. A runtime binds parameters by [`Role`] and
//! evaluates [`Size`] formulas; it never guesses.

use std::fmt;

use crate::ptx;

/// The value type of a kernel parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamTy {
    /// A device pointer (`.u64`).
    Ptr,
    U32,
    F32,
    F64,
}

impl ParamTy {
    pub fn ptx(self) -> ptx::Type {
        match self {
            ParamTy::Ptr => ptx::Type::U64,
            ParamTy::U32 => ptx::Type::U32,
            ParamTy::F32 => ptx::Type::F32,
            ParamTy::F64 => ptx::Type::F64,
        }
    }
}

/// What the runtime passes for a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The device address of buffer `id` of the loop kernel (ids as in [`crate::ir::LoopKernel::bufs`]).
    Buf(usize),
    /// The value of symbolic dim `id` (a `u32`; static dims are compiled in).
    Dim(u32),
    /// The rank-0 argument `id`, by value, in the kernel's dtype.
    Arg(u32),
    /// The device address of scratch region `index` of the [`Program`].
    Scratch(usize),
    /// A constant, by value in the parameter's float type: the bits of an `f64` (alpha = 1 and
    /// beta = 0 of a GEMM inside a library program, which has no schedule scale to bind).
    Const(u64),
    /// GEMM operands: `C = act(alpha * op(A) op(B) + beta * C + bias)`.
    GemmA,
    GemmB,
    GemmC,
    GemmBias,
    /// GEMM scale factors, by value in the GEMM's dtype.
    Alpha,
    Beta,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The `.param` name in the PTX.
    pub name: String,
    pub ty: ParamTy,
    pub role: Role,
}

/// A launch-size formula over the symbolic dims. Built with [`Size::ceil_div`] etc., which fold
/// constants, so a kernel with only static dims has constant sizes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Size {
    Const(u64),
    /// The value of symbolic dim `id`.
    Dim(u32),
    Mul(Box<Size>, Box<Size>),
    /// `ceil(a / b)`.
    CeilDiv(Box<Size>, u64),
    /// `min(max(a, lo), hi)`: grids are never empty and never above a cap.
    Clamp(Box<Size>, u64, u64),
}

impl Size {
    pub fn product(a: Size, b: Size) -> Size {
        match (a, b) {
            (Size::Const(x), Size::Const(y)) => Size::Const(x * y),
            (Size::Const(1), s) | (s, Size::Const(1)) => s,
            (a, b) => Size::Mul(Box::new(a), Box::new(b)),
        }
    }

    pub fn ceil_div(a: Size, d: u64) -> Size {
        match a {
            Size::Const(x) => Size::Const(x.div_ceil(d)),
            a if d == 1 => a,
            a => Size::CeilDiv(Box::new(a), d),
        }
    }

    pub fn clamp(a: Size, lo: u64, hi: u64) -> Size {
        match a {
            Size::Const(x) => Size::Const(x.clamp(lo, hi)),
            a => Size::Clamp(Box::new(a), lo, hi),
        }
    }

    /// Evaluates with the values of the symbolic dims.
    pub fn eval(&self, dim: &dyn Fn(u32) -> u64) -> u64 {
        match self {
            Size::Const(c) => *c,
            Size::Dim(d) => dim(*d),
            Size::Mul(a, b) => a.eval(dim) * b.eval(dim),
            Size::CeilDiv(a, d) => a.eval(dim).div_ceil(*d),
            Size::Clamp(a, lo, hi) => a.eval(dim).clamp(*lo, *hi),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Const(c) => write!(f, "{c}"),
            Size::Dim(d) => write!(f, "d{d}"),
            Size::Mul(a, b) => write!(f, "{a}*{b}"),
            Size::CeilDiv(a, d) => write!(f, "ceil({a}/{d})"),
            Size::Clamp(a, lo, hi) => write!(f, "clamp({a}, {lo}, {hi})"),
        }
    }
}

/// Everything needed to launch one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelMeta {
    /// The `.entry` name (a content hash: the same kernel always has the same name).
    pub name: String,
    /// In `.param` order.
    pub params: Vec<Param>,
    /// Blocks per grid, x/y/z.
    pub grid: [Size; 3],
    /// Threads per block, x/y/z.
    pub block: [u32; 3],
    /// Static `.shared` bytes declared by the kernel; launches pass 0 dynamic shared bytes.
    pub shared_bytes: u32,
}

impl fmt::Display for KernelMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} grid=({}, {}, {}) block=({}, {}, {}) shared={}B (",
            self.name,
            self.grid[0],
            self.grid[1],
            self.grid[2],
            self.block[0],
            self.block[1],
            self.block[2],
            self.shared_bytes
        )?;
        for (i, p) in self.params.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match p.role {
                Role::Const(bits) => {
                    write!(f, "{}: {:?} = {:?}", p.name, p.ty, f64::from_bits(bits))?
                }
                r => write!(f, "{}: {:?} = {:?}", p.name, p.ty, r)?,
            }
        }
        f.write_str(")")
    }
}

/// One kernel to launch: its PTX (as typed instructions) and how to launch it.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub kernel: ptx::Kernel,
    pub meta: KernelMeta,
}

/// A device workspace a [`Program`] needs between its launches (e.g. per-block partial sums).
/// Its contents need no initialization and are dead after the program ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scratch {
    pub bytes: Size,
}

/// What one schedule kernel (a GEMM or a loop kernel) becomes: launches to run in order on one
/// stream, and the scratch regions they share.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub launches: Vec<Launch>,
    pub scratch: Vec<Scratch>,
}

impl Program {
    /// Adds every kernel to a module (kernels with equal names are added once).
    pub fn add_to(&self, m: &mut ptx::Module) {
        for l in &self.launches {
            m.add(l.kernel.clone());
        }
    }

    /// One line per launch, for docs and tests.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for l in &self.launches {
            s.push_str(&l.meta.to_string());
            s.push('\n');
        }
        for (i, sc) in self.scratch.iter().enumerate() {
            s.push_str(&format!("scratch {i}: {} bytes\n", sc.bytes));
        }
        s
    }
}
