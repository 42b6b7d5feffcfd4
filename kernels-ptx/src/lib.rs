//! PTX writer and library kernels (GEMM, reductions) with their launch metadata.
//!
//! The GPU half of tensor-fn's code generation, in plain std Rust:
//!
//! - [`ptx`]: a typed PTX writer (module header, entries, typed virtual registers, labels and a
//!   table-printed instruction set).
//! - [`ir`] and [`lower`]: the kernel IR of fused loop kernels (the schedule's `LoopKernel`) and
//!   its lowering to launches: grid-stride elementwise loops, row reductions by block or warp,
//!   column reductions, two-pass full reductions.
//! - [`mod@gemm`]: tiled SGEMM/DGEMM with layouts, alpha/beta and a bias + activation epilogue,
//!   single or batched over grid z.
//! - [`conv`]: convolution (im2col and the batched GEMM) and max-pooling, with their gradients:
//!   the programs of the schedule's library calls ([`conv::CallOp`]).
//! - [`reduce`]: library sum/max/argmax reductions.
//! - [`rng`]: counter-based random numbers (Philox4x32-10), bit-identical in Rust and in PTX.
//! - [`meta`]: launch metadata as data ([`meta::KernelMeta`], [`meta::Program`]).
//! - [`vm`]: an interpreter of the emitted instruction lists with GPU semantics (blocks,
//!   barriers, warp shuffles, shared memory with race checks), for tests without a GPU.
//! - [`parse`]: reads PTX text printed by [`Module::to_ptx`] back into kernels, so that a
//!   runtime holding only the text can run them on the interpreter.
//! - [`catalog`]: every kind of kernel the crate emits, for validity tests with `ptxas`.
//! - [`samples`]: small kernels for tests of GPU backends.
//!
//! Kernel names are content hashes, so generating twice gives identical bytes.
//!
//! # How the macro uses it
//!
//! For each schedule kernel, in plan order:
//!
//! - a loop kernel becomes an [`ir::LoopKernel`]: its dtype, its `dims`, the buffer table (dtype,
//!   shape and integer type of every schedule buffer, indexed by the schedule's `BufId`), and its
//!   `instrs`, `stores` and `reductions` one to one (the op enums are shared with the macro:
//!   [`op`]; symbolic dims keep their ids). [`lower_loop`] gives a [`Program`]. Integer buffers
//!   (labels, argmax positions) hold `i32`/`i64` elements; the kernel computes them as floats.
//!   A random draw ([`Instr::Random`]) reads a stream buffer ([`Buffer::stream`]: the seed and
//!   the call counter as two raw 64-bit words), which the runtime fills before the launch and
//!   whose call counter it advances once per call of the compiled function;
//! - a GEMM becomes a [`GemmSpec`] (`m`, `n`, `k`, the two `trans` flags, and an epilogue when
//!   the schedule absorbed one; plain products use `Bias::None`, `Activation::Identity`, and
//!   are launched with alpha = 1, beta = 0). [`gemm()`] gives a [`Program`];
//! - a library call (convolution, pooling) is a [`conv::CallOp`] (the macro's own enum: it is
//!   defined here) over the schedule's buffer ids; [`conv::call`] gives a [`Program`] whose
//!   launches bind those buffers, its scratch regions and constants ([`Role::Const`]).
//!
//! Every program's kernels go into one [`Module`] per compiled function ([`Program::add_to`]
//! skips duplicates), printed once with [`Module::to_ptx`]; the [`KernelMeta`] of each launch
//! is emitted as data next to it. At run time, for each launch in order, the runtime passes the
//! parameters by [`Role`] (buffer addresses, symbolic dim values as `u32`, rank-0 arguments,
//! alpha/beta and constants by value, its scratch regions), evaluates the [`Size`] formulas of the grid
//! with the dims' values, uses `block` as given and 0 bytes of dynamic shared memory.
//! [`vm::run`] does exactly that on the interpreter.
//!
//! Limits: every dim, and the number of points of a loop kernel, below 2^31 (32-bit indexing);
//! a GEMM's n at most 65535 tiles.

pub mod catalog;
pub mod check;
pub mod conv;
pub mod gemm;
pub mod ir;
pub mod lower;
mod math;
pub mod meta;
pub mod op;
pub mod parse;
pub mod ptx;
pub mod reduce;
pub mod rng;
pub mod samples;
pub mod scalar;
pub mod vm;

pub use gemm::{gemm, Activation, Batch, Bias, GemmSpec};
pub use ir::{
    Axis, Binary, Buffer, DType, Dim, Instr, IntTy, IrError, Ix, LoopKernel, Num, RandKind,
    RedKind, Reduction, Unary,
};
pub use lower::lower_loop;
pub use meta::{KernelMeta, Launch, Param, ParamTy, Program, Role, Scratch, Size};
pub use ptx::{Header, Module};

/// 64-bit FNV-1a: a small, stable content hash for kernel names (the same on every platform and
/// every run, unlike `std`'s randomly seeded hashers).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv1a_known_values() {
        // Reference values of the 64-bit FNV-1a test suite.
        assert_eq!(super::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
