//! Stage 7: code generation from the schedule. `rust` emits the CPU code; the PTX emitter
//! consumes the same schedule.

pub mod gpu;
pub mod ptx;
pub mod rust;
