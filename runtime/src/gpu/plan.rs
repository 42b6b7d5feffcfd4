//! Launch plans as `const` data: what `tensor_fn!` emits for the GPU next to each function's
//! PTX module, and all the executor knows about the function.
//!
//! Ids are the schedule's: buffer ids index [`GpuPlan::bufs`], dim ids the function's symbolic
//! dims in declaration order, var ids the function's variables (parameters and inputs).

/// A size formula over the symbolic dims.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Size {
    Const(u64),
    /// The value of symbolic dim `id`.
    Dim(u32),
    Mul(&'static Size, &'static Size),
    /// `ceil(a / b)`.
    CeilDiv(&'static Size, u64),
    /// `min(max(a, lo), hi)`.
    Clamp(&'static Size, u64, u64),
}

impl Size {
    /// Evaluates with the dims' values (saturating: an absurd size fails its allocation or its
    /// launch check instead of wrapping around).
    pub fn eval(&self, dims: &[usize]) -> u64 {
        match *self {
            Size::Const(c) => c,
            Size::Dim(d) => dims.get(d as usize).map_or(0, |&x| x as u64),
            Size::Mul(a, b) => a.eval(dims).saturating_mul(b.eval(dims)),
            Size::CeilDiv(a, d) => a.eval(dims).div_ceil(d.max(1)),
            Size::Clamp(a, lo, hi) => a.eval(dims).clamp(lo, hi),
        }
    }
}

/// The element type of every buffer and scalar of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F64,
}

impl Dtype {
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
}

/// Where a buffer's storage comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufSrc {
    /// The array argument at this position, staged into the function's workspace.
    Input(u32),
    /// The model parameter with this var id: its device storage, read and written in place.
    Param(u32),
    /// A workspace region of the function.
    Work,
    /// The output at this position (a workspace region, copied back or handed out).
    Output(u32),
    /// The storage of an earlier buffer (never itself a view), in another shape: a reshape.
    View(u32),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Buf {
    pub src: BufSrc,
    /// Length in elements.
    pub len: Size,
    /// The integer type of an argument or output holding labels or indices (`Some(bytes)`:
    /// 4 for `i32`, 8 for `i64`); `None` for the plan's float type.
    pub int_bytes: Option<u8>,
}

impl Buf {
    /// Bytes of one element.
    pub fn elem_bytes(&self, dtype: Dtype) -> usize {
        self.int_bytes.map_or(dtype.bytes(), usize::from)
    }

    /// Bytes of the buffer for these dims.
    pub fn bytes(&self, dtype: Dtype, dims: &[usize]) -> usize {
        (self.len.eval(dims) as usize).saturating_mul(self.elem_bytes(dtype))
    }
}

/// One factor of a scalar known before any kernel runs (a GEMM's alpha).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Factor {
    /// The rank-0 argument with this var id.
    Arg(u32),
    Const(f64),
    /// The value of symbolic dim `id`.
    Dim(u32),
}

/// What a kernel parameter is bound to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bind {
    /// The device address of buffer `id`.
    Buf(u32),
    /// The device address of scratch region `id`.
    Scratch(u32),
    /// The value of symbolic dim `id`, as `u32`.
    Dim(u32),
    /// The rank-0 argument with this var id, in the plan's dtype.
    Arg(u32),
    /// `sign * product(factors)`, in the plan's dtype.
    Scalar(f64, &'static [Factor]),
    /// The sum of such products, in the plan's dtype (a GEMM's beta of `1 - lr * 2 * l2`).
    Sum(&'static [(f64, &'static [Factor])]),
}

/// The value type of a kernel parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamTy {
    Ptr,
    U32,
    F32,
    F64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Param {
    pub ty: ParamTy,
    pub bind: Bind,
}

/// One kernel launch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Launch {
    /// The schedule kernel this launch belongs to (`k3` in the plan text).
    pub step: u32,
    /// The `.entry` name in the module.
    pub kernel: &'static str,
    pub grid: [Size; 3],
    pub block: [u32; 3],
    /// Parameters in `.param` order.
    pub params: &'static [Param],
}

/// Where an output comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    Buf(u32),
    /// A rank-0 argument returned as is.
    Arg(u32),
}

/// Everything the executor needs to run one compiled function on a GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuPlan {
    /// The function's name, for messages.
    pub name: &'static str,
    /// The PTX module.
    pub ptx: &'static str,
    pub dtype: Dtype,
    /// Number of symbolic dims.
    pub dims: u32,
    pub bufs: &'static [Buf],
    /// Scratch regions, in bytes.
    pub scratch: &'static [Size],
    /// Launches in order (GEMMs, loop kernels, then the in-place parameter updates).
    pub launches: &'static [Launch],
    /// After every launch: copy buffer -> parameter (var id, buffer id), Theano's updates.
    pub commits: &'static [(u32, u32)],
    pub outputs: &'static [Out],
    /// An op of the function that has no GPU kernel: calls on a GPU fail with
    /// [`Error::CpuOnly`](crate::Error::CpuOnly) before anything runs. (`tensor_fn!` sets it
    /// for a convolution or pooling whose sizes exceed the GPU kernels' 32-bit indexing.)
    pub cpu_only: Option<&'static str>,
}
