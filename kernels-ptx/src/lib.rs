//! PTX writer and library kernels (GEMM, reductions) with their launch metadata.
