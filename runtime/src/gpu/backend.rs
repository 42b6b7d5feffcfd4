//! The interface every GPU backend implements: memory, modules, launches, one ordered queue.
//!
//! The executor (`super::exec`) only talks to a `Backend`, so the same launch plans run on a
//! CUDA device (`super::cuda`, cargo feature `cuda`) and on the PTX interpreter
//! (`super::vm`), which is how the GPU path is tested on machines without a GPU.

use std::fmt;

use crate::Error;

/// A device address: what `alloc` returned, plus a byte offset inside that allocation.
pub type DevPtr = u64;

/// A kernel argument, by value, in `.param` order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelArg {
    Ptr(DevPtr),
    U32(u32),
    F32(f32),
    F64(f64),
}

/// A loaded PTX module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModuleId(pub usize);

/// A recorded sequence of launches and copies that can be replayed (a CUDA graph).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GraphId(pub usize);

/// One GPU (or its stand-in) with one queue of work.
///
/// Ordering: every operation is ordered after all operations enqueued before it (one stream).
/// `upload` returns once `src` may be reused; `download` returns once `dst` holds the data,
/// i.e. after all work enqueued before it finished. `copy` and `launch` may return before the
/// device ran them.
///
/// Memory safety rests on the caller for the `unsafe` methods: pointers must lie inside live
/// allocations of this backend, with room for the bytes touched (the executor checks every
/// buffer length against the launch plan before it calls them).
pub trait Backend: Send + Sync + fmt::Debug {
    /// What the device is, for messages: `cuda:0 (NVIDIA H200, sm_90, 139 GiB)`.
    fn describe(&self) -> String;

    /// Allocates `bytes` bytes (at least 256-byte aligned); contents are unspecified.
    fn alloc(&self, bytes: usize) -> Result<DevPtr, Error>;

    /// Frees an allocation.
    ///
    /// # Safety
    /// `ptr` came from `alloc` of this backend, is freed once, and no queued work uses it.
    unsafe fn free(&self, ptr: DevPtr);

    /// Copies host bytes to the device.
    ///
    /// # Safety
    /// `dst .. dst + src.len()` lies inside one live allocation.
    unsafe fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<(), Error>;

    /// Copies device bytes to the host, after all queued work.
    ///
    /// # Safety
    /// `src .. src + dst.len()` lies inside one live allocation.
    unsafe fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<(), Error>;

    /// Copies `bytes` bytes between device locations, in queue order.
    ///
    /// # Safety
    /// Both ranges lie inside live allocations and do not overlap.
    unsafe fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), Error>;

    /// Loads a PTX module (once per text: loading the same text again returns the same id).
    fn load_module(&self, ptx: &str) -> Result<ModuleId, Error>;

    /// Enqueues a kernel launch with 0 bytes of dynamic shared memory.
    ///
    /// # Safety
    /// `args` match the kernel's parameters in number and type, and every pointer argument,
    /// with the kernel's index range at this grid, lies inside live allocations.
    unsafe fn launch(
        &self,
        module: ModuleId,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        args: &[KernelArg],
    ) -> Result<(), Error>;

    /// Waits for all queued work; reports any asynchronous failure.
    fn synchronize(&self) -> Result<(), Error>;

    /// Records what `record` enqueues (launches and copies) into a graph instead of running it.
    /// `Ok(None)` when the backend has no graphs (the caller then runs the work directly).
    fn capture(
        &self,
        record: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<Option<GraphId>, Error>;

    /// Enqueues a recorded graph.
    ///
    /// # Safety
    /// Every allocation the graph's work touches is still live.
    unsafe fn replay(&self, graph: GraphId) -> Result<(), Error>;

    /// Forgets a recorded graph.
    fn drop_graph(&self, graph: GraphId);

    /// The interpreter's counters; `None` for real devices.
    fn vm_stats(&self) -> Option<super::vm::VmStats> {
        None
    }
}
