//! Stage 2's data: the hash-consed DAG every later stage works on (`graph`) and the shape rule
//! of every op (`shape`). The stage itself, which builds graphs from the AST, is `crate::lower`.

mod graph;
mod shape;

pub use crate::syntax::{DType, IntTy};
pub use graph::{
    compare_name, op_name, Axis, Binary, CallOp, ConvGeom, Dim, Function, Graph, NodeId, Num, Op,
    RandKind, Ret, Type, TypeError, Unary, Var, VarKind, MAX_DEPTH, MAX_NODES, STREAM_VAR,
};
pub use shape::{
    binary_type, broadcast_shapes, compare_type, dim_product, dot_type, infer, int_error,
};
