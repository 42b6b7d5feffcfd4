//! # tensor-fn
//!
//! Theano's promise, kept at Rust compile time: write tensor math once inside [`tensor_fn!`];
//! the compiler simplifies it, differentiates it, checks every shape and generates specialized
//! code. A wrong shape or an impossible gradient is a compile error on your own token.
//!
//! ```
//! use tensor_fn::prelude::*;
//!
//! let f = tensor_fn!(|a: f64[n, m], v: f64[m]| dot(a, v));
//! let av = f(ndarray::Array2::ones((2, 2)).view(), ndarray::arr1(&[1.0, 2.0]).view()).unwrap();
//! assert_eq!(av, ndarray::arr1(&[3.0, 3.0]));
//!
//! // x + (-x) is constantly zero: the compiled function does no arithmetic.
//! let h = tensor_fn!(|x: f64| x + (-x));
//! assert_eq!(h.info.expr, "0");
//! ```

/// The PTX writer, the library GPU kernels with their launch metadata, and the interpreter
/// that checks kernels without a GPU.
pub use tensor_fn_kernels as kernels;
pub use tensor_fn_macros::tensor_fn;
pub use tensor_fn_runtime::{
    data, dist, gpu, io, Arg, Device, Error, FnInfo, RandomStream, Shared,
};

/// The names most programs need: the macro, the runtime types and ndarray.
pub mod prelude {
    pub use crate::dist::Communicator;
    pub use crate::{tensor_fn, Arg, Device, Error, FnInfo, Shared};
    pub use ndarray;
}

/// The README's examples, compiled and run by `cargo test --doc`.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// What generated code calls. Not a public API: it changes with the compiler.
#[doc(hidden)]
pub mod __private {
    pub use ndarray;
    /// The random draws' one definition (Philox4x32-10), which the generated loops call.
    pub use tensor_fn_kernels::rng;
    /// Every elementwise op's one definition, which the generated loops call.
    pub use tensor_fn_kernels::scalar;
    pub use tensor_fn_runtime::cpu::{
        array2, array_nd, check_ints, contiguous, conv, gemm, gemm_pair, has_avx512, loop_chunks,
        run_chunks, Compiled, Disjoint, Real,
    };
}
