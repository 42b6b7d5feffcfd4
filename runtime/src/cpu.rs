//! CPU kernels that generated code calls.
