//! Library reductions: sum, max or argmax of a rank 1-2 buffer over all of it or one axis.
//!
//! These are loop kernels with one load and one reduction, lowered like every other loop
//! kernel (see [`crate::lower`] for the block, warp and two-pass strategies), so the fused and
//! the library reductions are one implementation.

use crate::ir::{
    Axis, Buffer, DType, Dim, Instr, IntTy, IrError, Ix, LoopKernel, RedKind, Reduction,
};
use crate::meta::Program;

/// The buffer ids of [`reduce`]'s parameters (`Role::Buf`).
pub const INPUT: usize = 0;
pub const OUTPUT: usize = 1;

/// The loop kernel reducing buffer [`INPUT`] (shaped `dims`) into buffer [`OUTPUT`]: floats of
/// `dtype`, or i64 positions for argmax (flat row-major ones for `Axis::All`).
pub fn reduction_kernel(dtype: DType, kind: RedKind, dims: &[Dim], axis: Axis) -> LoopKernel {
    let index = match dims.len() {
        0 => vec![],
        1 => vec![Ix::Inner],
        _ => vec![Ix::Outer, Ix::Inner],
    };
    let mut k = LoopKernel {
        dtype,
        dims: dims.to_vec(),
        bufs: vec![
            Buffer {
                dtype,
                shape: dims.to_vec(),
                int: None,
            },
            Buffer {
                dtype,
                shape: Vec::new(),
                int: match kind {
                    RedKind::Sum | RedKind::Max => None,
                    RedKind::ArgMax => Some(IntTy::I64),
                },
            },
        ],
        instrs: vec![Instr::Load { buf: INPUT, index }],
        stores: Vec::new(),
        reductions: vec![Reduction {
            kind,
            axis,
            value: 0,
            out: OUTPUT,
        }],
    };
    k.bufs[OUTPUT].shape = k.reduced_shape(axis);
    k
}

/// Launches reducing buffer [`INPUT`] (shaped `dims`, rank 1 or 2) into buffer [`OUTPUT`].
pub fn reduce(dtype: DType, kind: RedKind, dims: &[Dim], axis: Axis) -> Result<Program, IrError> {
    crate::lower::lower_loop(&reduction_kernel(dtype, kind, dims, axis))
}
