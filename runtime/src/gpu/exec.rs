//! The executor: runs a [`GpuPlan`] on a device's [`Backend`].
//!
//! Per compiled function and device it keeps a [`FnState`]: the loaded module and one
//! workspace allocation holding every work, output and staged input buffer and every scratch
//! region, sized for the dims of the last call (reallocated only when they change). Inputs
//! are always staged into the workspace, so the pointers a call passes to its kernels depend
//! only on the dims and the parameters' storage; with the scalar arguments that makes the
//! key under which a call's launches are recorded once as a graph and replayed afterwards.

use std::sync::{Arc, Mutex, OnceLock};

use super::plan::{Bind, Buf, BufSrc, Dtype, Factor, GpuPlan, Out, ParamTy};
use super::{backend, Backend, DevPtr, GraphId, KernelArg, ModuleId};
use crate::{Device, Error};

/// Workspace regions start at multiples of this (coalesced access, vector loads).
const ALIGN: usize = 256;
/// Graphs kept per function and device; beyond it the oldest are dropped.
const MAX_GRAPHS: usize = 8;
/// Kernels index with 32 bits.
const MAX_DIM: usize = i32::MAX as usize;

/// An owned device allocation, freed on drop after the queued work that may use it.
pub struct GpuBuf {
    backend: Arc<dyn Backend>,
    device: Device,
    ptr: DevPtr,
    bytes: usize,
}

impl std::fmt::Debug for GpuBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuf({} bytes on {})", self.bytes, self.device)
    }
}

impl GpuBuf {
    /// `bytes` bytes of uninitialized device memory (at least one word, as drivers refuse
    /// empty allocations).
    pub fn alloc(device: Device, bytes: usize) -> Result<GpuBuf, Error> {
        let backend = backend(device)?;
        let ptr = backend.alloc(bytes.max(8))?;
        Ok(GpuBuf {
            backend,
            device,
            ptr,
            bytes,
        })
    }

    /// A device copy of `data`.
    pub fn from_host(device: Device, data: &[u8]) -> Result<GpuBuf, Error> {
        let b = GpuBuf::alloc(device, data.len())?;
        b.upload(0, data)?;
        Ok(b)
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn ptr(&self) -> DevPtr {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), Error> {
        match offset.checked_add(len) {
            Some(end) if end <= self.bytes => Ok(()),
            _ => Err(Error::Internal(format!(
                "device access of bytes {offset}..+{len} in a {}-byte buffer",
                self.bytes
            ))),
        }
    }

    /// Writes host bytes at `offset`.
    pub fn upload(&self, offset: usize, data: &[u8]) -> Result<(), Error> {
        self.check(offset, data.len())?;
        // SAFETY: the range was checked against this live allocation.
        unsafe { self.backend.upload(self.ptr + offset as u64, data) }
    }

    /// Reads bytes at `offset` into `out`, after all queued work.
    pub fn download(&self, offset: usize, out: &mut [u8]) -> Result<(), Error> {
        self.check(offset, out.len())?;
        // SAFETY: the range was checked against this live allocation.
        unsafe { self.backend.download(self.ptr + offset as u64, out) }
    }

    /// Enqueues a copy of `len` bytes from `src` at `src_offset` to `self` at `offset`.
    pub fn copy_from(
        &self,
        offset: usize,
        src: &GpuBuf,
        src_offset: usize,
        len: usize,
    ) -> Result<(), Error> {
        if src.device != self.device {
            return Err(Error::Internal(format!(
                "device copy from {} to {}",
                src.device, self.device
            )));
        }
        self.check(offset, len)?;
        src.check(src_offset, len)?;
        if std::ptr::eq(self, src) && offset < src_offset + len && src_offset < offset + len {
            return Err(Error::Internal("overlapping device copy".into()));
        }
        // SAFETY: both ranges were checked against live allocations and do not overlap
        // (distinct allocations, or disjoint ranges of one).
        unsafe {
            self.backend
                .copy(self.ptr + offset as u64, src.ptr + src_offset as u64, len)
        }
    }

    /// An independent device copy.
    pub fn duplicate(&self) -> Result<GpuBuf, Error> {
        let b = GpuBuf::alloc(self.device, self.bytes)?;
        b.copy_from(0, self, 0, self.bytes)?;
        Ok(b)
    }
}

impl Drop for GpuBuf {
    fn drop(&mut self) {
        // Queued kernels may still read or write the allocation; a failed wait leaves the
        // context broken anyway, so the memory is freed regardless.
        let _ = self.backend.synchronize();
        // SAFETY: `ptr` came from this backend's `alloc`, is freed only here, and the wait
        // above drained the queue.
        unsafe { self.backend.free(self.ptr) }
    }
}

/// An array argument of a call: host data to upload, or a range of device memory.
#[derive(Debug, Clone, Copy)]
pub enum ArgData<'a> {
    Host(&'a [u8]),
    Device {
        buf: &'a GpuBuf,
        offset: usize,
        bytes: usize,
    },
}

/// One call of a compiled function: the values the generated code bound and checked.
#[derive(Debug)]
pub struct Call<'a> {
    /// The values of the symbolic dims, by id.
    pub dims: &'a [usize],
    /// Rank-0 arguments: (var id, value).
    pub scalars: &'a [(u32, f64)],
    /// Array arguments by position: (position, name, data).
    pub inputs: &'a [(u32, &'static str, ArgData<'a>)],
    /// Parameter storage: (var id, name, buffer).
    pub params: &'a [(u32, &'static str, &'a GpuBuf)],
}

/// An output of a finished call, on the host.
#[derive(Debug, Clone, PartialEq)]
pub enum HostOut {
    /// A rank-0 argument returned as is.
    Scalar(f64),
    /// The elements of an output buffer, in the plan's dtype, little-endian bytes.
    Bytes(Vec<u8>),
}

impl HostOut {
    /// The value of a rank-0 output.
    pub fn scalar<T: Element>(&self) -> T {
        match self {
            HostOut::Scalar(v) => T::from_f64(*v),
            HostOut::Bytes(b) => T::read(b).first().copied().unwrap_or(T::from_f64(f64::NAN)),
        }
    }

    /// The elements of an array output.
    pub fn elems<T: Element>(&self) -> Vec<T> {
        match self {
            HostOut::Scalar(v) => vec![T::from_f64(*v)],
            HostOut::Bytes(b) => T::read(b),
        }
    }
}

/// A scalar type a plan computes in.
pub trait Element: Copy + Send + Sync + 'static {
    fn from_f64(v: f64) -> Self;
    /// The elements' bytes, without a copy.
    fn as_bytes(values: &[Self]) -> &[u8];
    fn read(bytes: &[u8]) -> Vec<Self>;
    fn write(values: &[Self]) -> Vec<u8>;
}

macro_rules! element {
    ($($t:ty: $n:literal),*) => {$(
        impl Element for $t {
            fn from_f64(v: f64) -> $t {
                v as $t
            }
            fn as_bytes(values: &[$t]) -> &[u8] {
                // SAFETY: the element type has no padding and no invalid bit patterns as
                // bytes; the length and lifetime are the slice's.
                unsafe {
                    std::slice::from_raw_parts(values.as_ptr().cast(), std::mem::size_of_val(values))
                }
            }
            fn read(bytes: &[u8]) -> Vec<$t> {
                bytes
                    .chunks_exact($n)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunks of the element's size")))
                    .collect()
            }
            fn write(values: &[$t]) -> Vec<u8> {
                values.iter().flat_map(|v| v.to_le_bytes()).collect()
            }
        }
    )*};
}

// Floats, and the integers of labels and indices.
element!(f32: 4, f64: 8, i32: 4, i64: 8);

/// Slots of a scalar ring: the rank-0 outputs of queued calls land in consecutive slots of one
/// device buffer, so reading a whole epoch of costs is one transfer.
const RING_SLOTS: usize = 4096;

/// A device buffer of scalar slots, filled in order; a full ring is replaced by a fresh one
/// and lives on while unread values point into it.
#[derive(Debug)]
pub struct Ring {
    buf: GpuBuf,
    elem: usize,
    /// Slots handed out so far.
    next: Mutex<usize>,
    /// Host copy of the first `.0` slots.
    cache: Mutex<(usize, Vec<u8>)>,
}

impl Ring {
    fn new(device: Device, elem: usize) -> Result<Ring, Error> {
        Ok(Ring {
            buf: GpuBuf::alloc(device, RING_SLOTS * elem)?,
            elem,
            next: Mutex::new(0),
            cache: Mutex::new((0, Vec::new())),
        })
    }

    /// Takes the next slot, if any is left.
    fn take(&self) -> Option<usize> {
        let mut n = self.next.lock().unwrap_or_else(|p| p.into_inner());
        (*n < RING_SLOTS).then(|| {
            *n += 1;
            *n - 1
        })
    }

    /// The bytes of `slot`, downloading every slot written so far when it is not cached.
    fn read(&self, slot: usize) -> Result<Vec<u8>, Error> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if slot >= c.0 {
            let upto = *self.next.lock().unwrap_or_else(|p| p.into_inner());
            let mut host = vec![0u8; upto * self.elem];
            self.buf.download(0, &mut host)?;
            *c = (upto, host);
        }
        Ok(c.1[slot * self.elem..(slot + 1) * self.elem].to_vec())
    }
}

/// An output still on the device: read it with [`PendingOut::wait`].
#[derive(Debug)]
pub enum PendingOut {
    Scalar(f64),
    /// Already on the host.
    Host(Vec<u8>),
    Device(GpuBuf),
    /// A rank-0 output in a slot of a ring.
    Slot(Arc<Ring>, usize),
}

impl PendingOut {
    /// Waits for the device and copies the value to the host.
    pub fn wait(self) -> Result<HostOut, Error> {
        match self {
            PendingOut::Scalar(v) => Ok(HostOut::Scalar(v)),
            PendingOut::Host(b) => Ok(HostOut::Bytes(b)),
            PendingOut::Slot(ring, i) => Ok(HostOut::Bytes(ring.read(i)?)),
            PendingOut::Device(b) => {
                let mut out = vec![0u8; b.bytes()];
                b.download(0, &mut out)?;
                Ok(HostOut::Bytes(out))
            }
        }
    }
}

/// Per function and device: what stays loaded and allocated between calls.
struct FnState {
    device: Device,
    module: ModuleId,
    /// The dims the workspace is laid out for.
    dims: Vec<usize>,
    arena: Option<GpuBuf>,
    /// Byte offset in the workspace of every non-parameter buffer.
    buf_offs: Vec<usize>,
    scratch_offs: Vec<usize>,
    graphs: Vec<(Vec<u64>, GraphId)>,
    /// A capture failed once: this function launches without graphs.
    no_graphs: bool,
    ring: Option<Arc<Ring>>,
    calls: GpuCalls,
}

/// How the executor ran one compiled function on one device so far (a model method's
/// `gpu_calls`): every call is exactly one of a graph recording, a replay of a graph recorded
/// before, or direct launches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuCalls {
    /// Calls that recorded their work as a graph (and then launched it).
    pub recorded: u64,
    /// Calls that launched a graph recorded by an earlier call with the same dims, scalar
    /// arguments and buffers.
    pub replayed: u64,
    /// Calls that launched their kernels one by one: graphs off (`TENSOR_FN_CUDA_GRAPHS=0`),
    /// refused by the device, or nothing to launch.
    pub direct: u64,
}

impl GpuCalls {
    /// All calls that ran.
    pub fn total(&self) -> u64 {
        self.recorded + self.replayed + self.direct
    }
}

impl Drop for FnState {
    fn drop(&mut self) {
        if let Some(a) = &self.arena {
            for (_, g) in self.graphs.drain(..) {
                a.backend().drop_graph(g);
            }
        }
    }
}

/// The executor's state of one compiled function: generated code keeps one in a `static`.
pub struct FnCache {
    states: Mutex<Vec<FnState>>,
}

impl Default for FnCache {
    fn default() -> Self {
        FnCache::new()
    }
}

impl FnCache {
    pub const fn new() -> FnCache {
        FnCache {
            states: Mutex::new(Vec::new()),
        }
    }

    /// How the function ran on `device` so far (all zeros before its first call there).
    pub fn calls(&self, device: Device) -> GpuCalls {
        let states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        states
            .iter()
            .find(|s| s.device == device)
            .map_or_else(GpuCalls::default, |s| s.calls)
    }
}

/// Whether calls are recorded as graphs and replayed (`TENSOR_FN_CUDA_GRAPHS=0` turns it off).
fn graphs_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("TENSOR_FN_CUDA_GRAPHS").map_or(true, |v| v != "0"))
}

/// How outputs come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Copied to the host before `run` returns.
    Wait,
    /// Copied into fresh device buffers; read later.
    Lazy,
}

/// Runs `plan` on `device` for one call. With [`Mode::Wait`] the outputs are on the host when
/// it returns; with [`Mode::Lazy`] they are copies on the device, read when asked.
///
/// Buffer lengths, argument ranges and grids are checked against the plan; what the kernels
/// then access is the plan's promise.
///
/// # Safety
/// `plan` is a plan `tensor_fn!` emitted, unchanged: its PTX module and its launches were made
/// together from one schedule, so every kernel, at the grid the plan gives it, accesses only
/// the buffers and scratch regions the plan binds to its parameters, within the lengths the
/// plan gives them. (A CUDA device does not check the accesses; a hand-made plan could write
/// anywhere in device memory.)
pub unsafe fn run(
    plan: &GpuPlan,
    cache: &FnCache,
    device: Device,
    call: &Call<'_>,
    mode: Mode,
) -> Result<Vec<PendingOut>, Error> {
    // SAFETY: the caller's promise, passed on.
    unsafe { run_to(plan, cache, device, call, Sink::Back(mode)) }
}

/// [`run`], with the outputs left on the device: copied one after the other, in the element
/// type of the plan, into `dst` from its start (a data-parallel method's gradients, summed
/// there across ranks by NCCL with no trip to the host). The copies are queued behind the
/// call's kernels; nothing waits.
///
/// # Safety
/// As for [`run`].
pub unsafe fn run_into(
    plan: &GpuPlan,
    cache: &FnCache,
    device: Device,
    call: &Call<'_>,
    dst: &GpuBuf,
) -> Result<(), Error> {
    // SAFETY: the caller's promise, passed on.
    unsafe { run_to(plan, cache, device, call, Sink::Into(dst)) }.map(|_| ())
}

/// Where a call's outputs go.
#[derive(Clone, Copy)]
enum Sink<'a> {
    /// Back to the caller, as the mode says.
    Back(Mode),
    /// Into this device buffer, one after the other.
    Into(&'a GpuBuf),
}

/// [`run`] with its outputs going to `sink`.
///
/// # Safety
/// As for [`run`].
unsafe fn run_to(
    plan: &GpuPlan,
    cache: &FnCache,
    device: Device,
    call: &Call<'_>,
    sink: Sink<'_>,
) -> Result<Vec<PendingOut>, Error> {
    if let Some(op) = plan.cpu_only {
        return Err(Error::CpuOnly {
            function: plan.name,
            op,
            device: device.to_string(),
        });
    }
    let backend = backend(device)?;
    let mut states = cache.states.lock().unwrap_or_else(|p| p.into_inner());
    let idx = match states.iter().position(|s| s.device == device) {
        Some(i) => i,
        None => {
            let module = backend.load_module(plan.ptx)?;
            states.push(FnState {
                device,
                module,
                dims: Vec::new(),
                arena: None,
                buf_offs: Vec::new(),
                scratch_offs: Vec::new(),
                graphs: Vec::new(),
                no_graphs: false,
                ring: None,
                calls: GpuCalls::default(),
            });
            states.len() - 1
        }
    };
    let st = &mut states[idx];
    if st.arena.is_none() || st.dims != call.dims {
        // Sizes depend on the dims only: checked once per change of dims.
        check_dims(plan, call)?;
        layout(plan, st, device, call.dims)?;
    }
    let arena = st
        .arena
        .as_ref()
        .ok_or_else(|| internal(plan, "no workspace".into()))?;

    let nothing = plan.launches.is_empty() && plan.commits.is_empty();
    let graphs_on = !nothing && graphs_enabled() && !st.no_graphs;

    // Every buffer's device address, its length checked against the plan.
    let mut ptrs: Vec<DevPtr> = Vec::with_capacity(plan.bufs.len());
    for (b, buf) in plan.bufs.iter().enumerate() {
        let bytes = buf.bytes(plan.dtype, call.dims);
        let p = match buf.src {
            BufSrc::Param(v) => {
                let (_, name, pb) = call
                    .params
                    .iter()
                    .find(|(id, _, _)| *id == v)
                    .ok_or_else(|| internal(plan, format!("parameter var {v} not passed")))?;
                if pb.device() != device {
                    return Err(Error::WrongDevice {
                        function: plan.name,
                        what: format!("parameter `{name}`"),
                        found: pb.device().to_string(),
                        device: device.to_string(),
                    });
                }
                if pb.bytes() < bytes {
                    return Err(internal(
                        plan,
                        format!("parameter `{name}` has {} bytes, needs {bytes}", pb.bytes()),
                    ));
                }
                pb.ptr()
            }
            BufSrc::Input(pos) => {
                let off = st.buf_offs[b];
                let (_, name, data) = call
                    .inputs
                    .iter()
                    .find(|(p, _, _)| *p == pos)
                    .ok_or_else(|| internal(plan, format!("input {pos} not passed")))?;
                stage(
                    plan, arena, off, name, data, bytes, device, !graphs_on, call,
                )?
            }
            BufSrc::Work | BufSrc::Output(_) => arena.ptr() + st.buf_offs[b] as u64,
            BufSrc::View(base) => *ptrs
                .get(base as usize)
                .ok_or_else(|| internal(plan, format!("view b{b} of a later buffer")))?,
        };
        ptrs.push(p);
    }

    let mut commits = Vec::with_capacity(plan.commits.len());
    for &(v, b) in plan.commits {
        let bytes = plan.bufs[b as usize].bytes(plan.dtype, call.dims);
        let dst = plan
            .bufs
            .iter()
            .position(|x| x.src == BufSrc::Param(v))
            .map(|i| ptrs[i])
            .or_else(|| {
                call.params
                    .iter()
                    .find(|(id, _, _)| *id == v)
                    .map(|(_, _, pb)| pb.ptr())
            })
            .ok_or_else(|| internal(plan, format!("update of var {v} has no storage")))?;
        if let Some((_, name, pb)) = call.params.iter().find(|(id, _, _)| *id == v) {
            if pb.bytes() < bytes || pb.device() != device {
                return Err(internal(plan, format!("update of `{name}`: bad storage")));
            }
        }
        commits.push((dst, ptrs[b as usize], bytes));
    }

    // A call like one recorded before replays its graph: nothing else to prepare.
    if graphs_on {
        let found = st
            .graphs
            .iter()
            .find(|(k, _)| key_is(k, call, &ptrs))
            .map(|(_, g)| *g);
        if let Some(g) = found {
            // SAFETY: the graph was recorded with exactly these pointers, dims and scalars
            // (its key), and every allocation it touches is alive: the workspace is kept
            // while its graphs exist, parameters are borrowed by this call.
            unsafe { backend.replay(g)? };
            st.calls.replayed += 1;
            return outputs(plan, call, device, sink, arena, &st.buf_offs, &mut st.ring);
        }
    }

    // Kernel arguments and grids, all checked before anything is enqueued.
    let mut launches = Vec::with_capacity(plan.launches.len());
    for l in plan.launches {
        let mut args = Vec::with_capacity(l.params.len());
        for p in l.params {
            args.push(arg(
                plan,
                p.ty,
                p.bind,
                &ptrs,
                &st.scratch_offs,
                arena,
                call,
            )?);
        }
        let grid = l.grid.map(|s| s.eval(call.dims));
        if grid.contains(&0) || grid[0] > MAX_DIM as u64 || grid[1] > 65535 || grid[2] > 65535 {
            return Err(internal(
                plan,
                format!(
                    "kernel k{} {}: grid {grid:?} out of range",
                    l.step, l.kernel
                ),
            ));
        }
        launches.push((l, grid.map(|g| g as u32), args));
    }
    let module = st.module;
    let enqueue = || -> Result<(), Error> {
        for (l, grid, args) in &launches {
            // SAFETY: every argument was built from the plan: pointers are workspace regions
            // (sized for these dims by `layout`), parameter buffers whose lengths were checked
            // against the plan above, and argument ranges checked to lie inside their buffers
            // (`stage`); dims and scalars are values, and the grid was checked against the
            // hardware's limits.
            unsafe { backend.launch(module, l.kernel, *grid, l.block, args)? };
        }
        for &(dst, src, bytes) in &commits {
            // SAFETY: `dst` is a parameter buffer checked to hold `bytes`, `src` a workspace
            // region of that length; they are distinct allocations.
            unsafe { backend.copy(dst, src, bytes)? };
        }
        Ok(())
    };
    if graphs_on {
        let mut record = enqueue;
        // A capture the driver refuses (an old driver, a capture-unsafe call) falls back to
        // plain launches for this function from then on; a real failure of the work itself
        // shows again when it runs unrecorded below.
        let g = match backend.capture(&mut record) {
            Ok(g) => g,
            Err(_) => {
                st.no_graphs = true;
                None
            }
        };
        match g {
            Some(g) => {
                if st.graphs.len() >= MAX_GRAPHS {
                    let (_, old) = st.graphs.remove(0);
                    backend.drop_graph(old);
                }
                st.graphs.push((graph_key(call, &ptrs), g));
                // SAFETY: just recorded with these pointers; every allocation it touches is
                // alive (the workspace, and the parameters this call borrows).
                unsafe { backend.replay(g)? };
                st.calls.recorded += 1;
            }
            None => {
                enqueue()?;
                st.calls.direct += 1;
            }
        }
    } else {
        if !nothing {
            enqueue()?;
        }
        st.calls.direct += 1;
    }
    outputs(plan, call, device, sink, arena, &st.buf_offs, &mut st.ring)
}

/// The outputs of a call whose work is enqueued: copied to the host ([`Mode::Wait`]) or to
/// device buffers read later (scalars into slots of the function's ring).
fn outputs(
    plan: &GpuPlan,
    call: &Call<'_>,
    device: Device,
    sink: Sink<'_>,
    arena: &GpuBuf,
    buf_offs: &[usize],
    ring_slot: &mut Option<Arc<Ring>>,
) -> Result<Vec<PendingOut>, Error> {
    let elem = plan.dtype.bytes();
    let mode = match sink {
        Sink::Back(mode) => mode,
        Sink::Into(dst) => {
            let mut at = 0;
            for o in plan.outputs {
                match *o {
                    Out::Arg(v) => {
                        let x = scalar(plan, call, v)?;
                        match plan.dtype {
                            Dtype::F32 => dst.upload(at, &(x as f32).to_le_bytes())?,
                            Dtype::F64 => dst.upload(at, &x.to_le_bytes())?,
                        }
                        at += elem;
                    }
                    Out::Buf(b) => {
                        let bytes = plan.bufs[b as usize].bytes(plan.dtype, call.dims);
                        let off = match plan.bufs[b as usize].src {
                            BufSrc::Param(_) | BufSrc::View(_) => {
                                return Err(internal(
                                    plan,
                                    "a parameter or a view as an output".into(),
                                ))
                            }
                            _ => buf_offs[b as usize],
                        };
                        dst.copy_from(at, arena, off, bytes)?;
                        at += bytes;
                    }
                }
            }
            return Ok(Vec::new());
        }
    };
    // Outputs.
    let mut outs = Vec::with_capacity(plan.outputs.len());
    for o in plan.outputs {
        match *o {
            Out::Arg(v) => outs.push(PendingOut::Scalar(scalar(plan, call, v)?)),
            Out::Buf(b) => {
                let bytes = plan.bufs[b as usize].bytes(plan.dtype, call.dims);
                let off = match plan.bufs[b as usize].src {
                    BufSrc::Param(_) | BufSrc::View(_) => {
                        return Err(internal(plan, "a parameter or a view as an output".into()))
                    }
                    _ => buf_offs[b as usize],
                };
                match mode {
                    Mode::Wait => {
                        let mut host = vec![0u8; bytes];
                        arena.download(off, &mut host)?;
                        outs.push(PendingOut::Host(host));
                    }
                    Mode::Lazy if bytes == elem => {
                        let slot = ring_slot
                            .as_ref()
                            .and_then(|r| r.take().map(|i| (r.clone(), i)));
                        let (ring, i) = match slot {
                            Some(s) => s,
                            None => {
                                let r = Arc::new(Ring::new(device, elem)?);
                                let i = r
                                    .take()
                                    .ok_or_else(|| internal(plan, "empty ring".into()))?;
                                *ring_slot = Some(r.clone());
                                (r, i)
                            }
                        };
                        ring.buf.copy_from(i * elem, arena, off, bytes)?;
                        outs.push(PendingOut::Slot(ring, i));
                    }
                    Mode::Lazy => {
                        let copy = GpuBuf::alloc(device, bytes)?;
                        copy.copy_from(0, arena, off, bytes)?;
                        outs.push(PendingOut::Device(copy));
                    }
                }
            }
        }
    }
    Ok(outs)
}

fn internal(plan: &GpuPlan, what: String) -> Error {
    Error::Internal(format!("`{}` on a GPU: {what}", plan.name))
}

fn check_dims(plan: &GpuPlan, call: &Call<'_>) -> Result<(), Error> {
    if call.dims.len() != plan.dims as usize {
        return Err(internal(
            plan,
            format!(
                "{} dims passed, the plan has {}",
                call.dims.len(),
                plan.dims
            ),
        ));
    }
    // Kernels index with 32 bits: every dim, and every buffer, must stay below 2^31 elements.
    for b in plan.bufs {
        let n = b.len.eval(call.dims);
        if n > MAX_DIM as u64 {
            return Err(Error::DeviceUnavailable(format!(
                "`{}`: a buffer of {n} elements is beyond the GPU kernels' 32-bit indexing",
                plan.name
            )));
        }
    }
    Ok(())
}

/// Lays out the workspace for `dims`: every non-parameter buffer and scratch region at an
/// aligned offset of one allocation. Graphs recorded for the old workspace are dropped.
fn layout(plan: &GpuPlan, st: &mut FnState, device: Device, dims: &[usize]) -> Result<(), Error> {
    let mut total = 0usize;
    let mut place = |bytes: usize| {
        let off = total;
        total += bytes.div_ceil(ALIGN) * ALIGN;
        off
    };
    let buf_offs: Vec<usize> = plan
        .bufs
        .iter()
        .map(|b: &Buf| match b.src {
            BufSrc::Param(_) | BufSrc::View(_) => 0,
            _ => place(b.bytes(plan.dtype, dims)),
        })
        .collect();
    let scratch_offs: Vec<usize> = plan
        .scratch
        .iter()
        .map(|s| place(s.eval(dims) as usize))
        .collect();
    if let Some(a) = &st.arena {
        for (_, g) in st.graphs.drain(..) {
            a.backend().drop_graph(g);
        }
    }
    st.arena = None;
    st.arena = Some(GpuBuf::alloc(device, total)?);
    st.buf_offs = buf_offs;
    st.scratch_offs = scratch_offs;
    st.dims = dims.to_vec();
    Ok(())
}

/// Where the kernels read an array argument: its workspace region, after copying it there,
/// or, with `direct` (no graph records the call), device memory in place: no copy at all, as
/// long as the call does not also update that allocation as a parameter.
#[allow(clippy::too_many_arguments)]
fn stage(
    plan: &GpuPlan,
    arena: &GpuBuf,
    off: usize,
    name: &str,
    data: &ArgData<'_>,
    bytes: usize,
    device: Device,
    direct: bool,
    call: &Call<'_>,
) -> Result<DevPtr, Error> {
    match *data {
        ArgData::Host(h) => {
            if h.len() != bytes {
                return Err(internal(
                    plan,
                    format!("argument `{name}` has {} bytes, needs {bytes}", h.len()),
                ));
            }
            arena.upload(off, h)?;
            Ok(arena.ptr() + off as u64)
        }
        ArgData::Device {
            buf,
            offset,
            bytes: n,
        } => {
            if buf.device() != device {
                return Err(Error::WrongDevice {
                    function: plan.name,
                    what: format!("argument `{name}`"),
                    found: buf.device().to_string(),
                    device: device.to_string(),
                });
            }
            if n != bytes || !matches!(offset.checked_add(n), Some(end) if end <= buf.bytes()) {
                return Err(internal(
                    plan,
                    format!(
                        "argument `{name}`: bytes {offset}..+{n} of a {}-byte buffer, needs {bytes}",
                        buf.bytes()
                    ),
                ));
            }
            let updated = call.params.iter().any(|(_, _, p)| p.ptr() == buf.ptr());
            if direct && !updated {
                return Ok(buf.ptr() + offset as u64);
            }
            arena.copy_from(off, buf, offset, bytes)?;
            Ok(arena.ptr() + off as u64)
        }
    }
}

fn scalar(plan: &GpuPlan, call: &Call<'_>, var: u32) -> Result<f64, Error> {
    call.scalars
        .iter()
        .find(|(v, _)| *v == var)
        .map(|(_, x)| *x)
        .ok_or_else(|| internal(plan, format!("scalar var {var} not passed")))
}

/// A kernel argument from its binding.
fn arg(
    plan: &GpuPlan,
    ty: ParamTy,
    bind: Bind,
    ptrs: &[DevPtr],
    scratch_offs: &[usize],
    arena: &GpuBuf,
    call: &Call<'_>,
) -> Result<KernelArg, Error> {
    let value = |x: f64| match plan.dtype {
        Dtype::F32 => KernelArg::F32(x as f32),
        Dtype::F64 => KernelArg::F64(x),
    };
    let a = match bind {
        Bind::Buf(b) => KernelArg::Ptr(
            *ptrs
                .get(b as usize)
                .ok_or_else(|| internal(plan, format!("buffer {b} out of range")))?,
        ),
        Bind::Scratch(i) => KernelArg::Ptr(
            arena.ptr()
                + *scratch_offs
                    .get(i as usize)
                    .ok_or_else(|| internal(plan, format!("scratch {i} out of range")))?
                    as u64,
        ),
        Bind::Dim(d) => KernelArg::U32(
            *call
                .dims
                .get(d as usize)
                .ok_or_else(|| internal(plan, format!("dim {d} out of range")))? as u32,
        ),
        Bind::Arg(v) => value(scalar(plan, call, v)?),
        Bind::Scalar(sign, factors) => value(product(plan, call, sign, factors)?),
        Bind::Sum(terms) => {
            let mut x = 0.0;
            for &(sign, factors) in terms {
                x += product(plan, call, sign, factors)?;
            }
            value(x)
        }
    };
    let ok = matches!(
        (ty, a),
        (ParamTy::Ptr, KernelArg::Ptr(_))
            | (ParamTy::U32, KernelArg::U32(_))
            | (ParamTy::F32, KernelArg::F32(_))
            | (ParamTy::F64, KernelArg::F64(_))
    );
    if !ok {
        return Err(internal(plan, format!("parameter {ty:?} bound to {a:?}")));
    }
    Ok(a)
}

/// `sign * product(factors)` for this call.
fn product(plan: &GpuPlan, call: &Call<'_>, sign: f64, factors: &[Factor]) -> Result<f64, Error> {
    let mut x = sign;
    for f in factors {
        x *= match *f {
            Factor::Arg(v) => scalar(plan, call, v)?,
            Factor::Const(c) => c,
            Factor::Dim(d) => call.dims.get(d as usize).copied().unwrap_or(0) as f64,
        };
    }
    Ok(x)
}

/// Whether `key` is [`graph_key`] of this call, without building it.
fn key_is(key: &[u64], call: &Call<'_>, ptrs: &[DevPtr]) -> bool {
    let n = call.dims.len() + 2 * call.scalars.len() + ptrs.len();
    key.len() == n
        && call
            .dims
            .iter()
            .map(|&d| d as u64)
            .chain(
                call.scalars
                    .iter()
                    .flat_map(|(v, x)| [*v as u64, x.to_bits()]),
            )
            .chain(ptrs.iter().copied())
            .zip(key)
            .all(|(a, b)| a == *b)
}

/// What a recorded graph depends on besides the workspace: the dims, the scalar arguments
/// (kernels take them by value) and the parameters' addresses.
fn graph_key(call: &Call<'_>, ptrs: &[DevPtr]) -> Vec<u64> {
    let mut k: Vec<u64> = call.dims.iter().map(|&d| d as u64).collect();
    k.extend(
        call.scalars
            .iter()
            .flat_map(|(v, x)| [*v as u64, x.to_bits()]),
    );
    k.extend_from_slice(ptrs);
    k
}
