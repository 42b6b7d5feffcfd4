//! The emulated driver's state and semantics: one device (`cuda:0`) with one primary context,
//! whose memory is host memory (the interpreter's, bounds-checked), whose modules are parsed
//! back from their PTX text, and whose streams run their work on worker threads.
//!
//! Everything here is safe Rust over handles and addresses; `lib.rs` turns C pointers into
//! these calls.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::Duration;

use cust_raw::CUdevice_attribute as Attr;
use cust_raw::CUresult::{self, *};
use tensor_fn_kernels::parse;
use tensor_fn_kernels::ptx::Type;
use tensor_fn_kernels::vm::{Arg, Memory};

use crate::status;
use crate::stream::{
    lock, Capture, Event, Launch, LoadedModule, Op, Stream, MODE_GLOBAL, MODE_RELAXED,
    MODE_THREAD_LOCAL,
};

pub(crate) type Result<T = ()> = std::result::Result<T, CUresult>;

/// What `cuDriverGetVersion` reports: CUDA 13.0, the newest driver our PTX header targets.
pub(crate) const DRIVER_VERSION: i32 = 13000;
/// `cuDeviceGetName`.
pub(crate) const DEVICE_NAME: &str = "tensor-fn CUDA emulator (PTX interpreter)";
/// Device memory, as `cuDeviceTotalMem` reports it; allocations beyond it are out of memory.
pub(crate) const TOTAL_MEMORY: usize = 8 << 30;
/// The compute capability: the newest `.target` a module may have is `sm_90`.
const COMPUTE_CAPABILITY: (i32, i32) = (9, 0);
const MAX_BLOCK: [u32; 3] = [1024, 1024, 64];
const MAX_THREADS_PER_BLOCK: u32 = 1024;
const MAX_GRID: [u32; 3] = [i32::MAX as u32, 65535, 65535];
const MAX_SHARED_PER_BLOCK: u32 = 48 * 1024;
/// How long queued work waits before it runs when nobody waits for it (see `stream`).
const DEFAULT_LATENCY_MS: u64 = 10;

/// The driver's kinds of handles: a handle is `kind << 48 | serial`, never null.
#[derive(Clone, Copy)]
enum Kind {
    Context = 1,
    Stream,
    Module,
    Function,
    Graph,
    GraphExec,
    Event,
}

/// The one context (the device's primary context).
pub(crate) const PRIMARY_CONTEXT: u64 = (Kind::Context as u64) << 48 | 1;

/// The first fault of queued work; once set, the context is lost and every call that needs it
/// fails with that code, as on a GPU after an illegal address.
#[derive(Debug, Default)]
pub(crate) struct Sticky(AtomicI32);

impl Sticky {
    pub(crate) fn get(&self) -> Option<CUresult> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            code => Some(status::known(code).unwrap_or(CUDA_ERROR_UNKNOWN)),
        }
    }

    pub(crate) fn set(&self, code: CUresult, why: &str) {
        if self
            .0
            .compare_exchange(0, code as i32, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            eprintln!(
                "tensor-fn CUDA emulator: {}: {why}; the context is lost",
                status::name_of(code)
            );
        }
    }

    fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }
}

/// What the primary context holds while it is retained.
#[derive(Default)]
struct State {
    refs: u32,
    /// Live allocations: start address to length.
    allocs: BTreeMap<u64, usize>,
    used: usize,
    modules: HashMap<u64, (Arc<LoadedModule>, Vec<u64>)>,
    /// Function handle to its module and kernel index.
    functions: HashMap<u64, (Arc<LoadedModule>, usize)>,
    /// Streams by handle; the legacy stream is handle 0.
    streams: HashMap<u64, Arc<Stream>>,
    /// Destroyed streams whose work may still run: waits for the context wait for them too.
    retired: Vec<Arc<Stream>>,
    graphs: HashMap<u64, Arc<Vec<Op>>>,
    execs: HashMap<u64, Arc<Vec<Op>>>,
    events: HashMap<u64, Arc<Event>>,
    serial: u64,
}

impl State {
    fn handle(&mut self, kind: Kind) -> u64 {
        self.serial += 1;
        (kind as u64) << 48 | self.serial
    }

    /// Every stream whose work a wait for the context must wait for.
    fn all_streams(&mut self) -> Vec<Arc<Stream>> {
        self.retired.retain(|s| !s.idle());
        self.streams
            .values()
            .chain(&self.retired)
            .cloned()
            .collect()
    }

    fn stream(&self, h: u64) -> Result<Arc<Stream>> {
        self.streams
            .get(&h)
            .cloned()
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    /// `ptr .. ptr + bytes` lies inside one live allocation.
    fn check_range(&self, ptr: u64, bytes: usize) -> Result {
        let inside = self
            .allocs
            .range(..=ptr)
            .next_back()
            .is_some_and(|(&start, &len)| {
                (ptr - start)
                    .checked_add(bytes as u64)
                    .is_some_and(|end| end <= len as u64)
            });
        if inside {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    }

    /// Calls that may synchronize implicitly (allocating, freeing, loading, waiting for the
    /// context) are prohibited while this thread captures in global or thread-local mode, or
    /// while another thread captures in global mode. A prohibited call fails and invalidates
    /// the captures it would have broken.
    fn forbid_during_capture(&self) -> Result {
        let me = thread::current().id();
        let mut prohibited = false;
        for stream in self.streams.values() {
            let mut q = lock(&stream.queue);
            if let Some(c) = &mut q.capture {
                let mine = c.thread == me;
                if (mine && c.mode != MODE_RELAXED) || (!mine && c.mode == MODE_GLOBAL) {
                    c.invalidated = true;
                    prohibited = true;
                }
            }
        }
        if prohibited {
            Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED)
        } else {
            Ok(())
        }
    }
}

pub(crate) struct Driver {
    initialized: AtomicBool,
    state: Mutex<State>,
    memory: Arc<Mutex<Memory>>,
    sticky: Arc<Sticky>,
    latency: Duration,
}

thread_local! {
    /// The calling thread's current context (0: none).
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

/// The process's driver.
pub(crate) fn driver() -> &'static Driver {
    static DRIVER: OnceLock<Driver> = OnceLock::new();
    DRIVER.get_or_init(|| {
        let latency = std::env::var("TENSOR_FN_CUDA_EMU_LATENCY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_LATENCY_MS);
        Driver {
            initialized: AtomicBool::new(false),
            state: Mutex::default(),
            memory: Arc::default(),
            sticky: Arc::default(),
            latency: Duration::from_millis(latency),
        }
    })
}

/// Why a module did not load: the status, and the text for the JIT error log.
pub(crate) type LoadError = (CUresult, String);

impl Driver {
    pub(crate) fn init(&self, flags: u32) -> Result {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        self.initialized.store(true, Ordering::Release);
        Ok(())
    }

    fn require_init(&self) -> Result {
        if self.initialized.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(CUDA_ERROR_NOT_INITIALIZED)
        }
    }

    pub(crate) fn device_count(&self) -> Result<i32> {
        self.require_init()?;
        Ok(1)
    }

    pub(crate) fn device(&self, ordinal: i32) -> Result<i32> {
        self.check_device(ordinal)?;
        Ok(ordinal)
    }

    pub(crate) fn check_device(&self, device: i32) -> Result {
        self.require_init()?;
        if device == 0 {
            Ok(())
        } else {
            Err(CUDA_ERROR_INVALID_DEVICE)
        }
    }

    /// `cuDeviceGetAttribute`: the attributes a program sizes launches by; others are
    /// `CUDA_ERROR_NOT_SUPPORTED` here (a real driver knows them all).
    pub(crate) fn attribute(&self, attr: i32, device: i32) -> Result<i32> {
        self.check_device(device)?;
        let is = |a: Attr| a as i32 == attr;
        let value = if is(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR) {
            COMPUTE_CAPABILITY.0
        } else if is(Attr::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR) {
            COMPUTE_CAPABILITY.1
        } else if is(Attr::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK) {
            MAX_THREADS_PER_BLOCK as i32
        } else if is(Attr::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X) {
            MAX_BLOCK[0] as i32
        } else if is(Attr::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y) {
            MAX_BLOCK[1] as i32
        } else if is(Attr::CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z) {
            MAX_BLOCK[2] as i32
        } else if is(Attr::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X) {
            MAX_GRID[0] as i32
        } else if is(Attr::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y) {
            MAX_GRID[1] as i32
        } else if is(Attr::CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z) {
            MAX_GRID[2] as i32
        } else if is(Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK) {
            MAX_SHARED_PER_BLOCK as i32
        } else if is(Attr::CU_DEVICE_ATTRIBUTE_WARP_SIZE) {
            32
        } else if is(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT) {
            1
        } else {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        };
        Ok(value)
    }

    pub(crate) fn total_memory(&self, device: i32) -> Result<usize> {
        self.check_device(device)?;
        Ok(TOTAL_MEMORY)
    }

    // -----------------------------------------------------------------------------------------
    // Contexts.

    pub(crate) fn retain_primary(&self, device: i32) -> Result<u64> {
        self.check_device(device)?;
        let mut st = lock(&self.state);
        if st.refs == 0 {
            let legacy = self.new_stream()?;
            st.streams.insert(0, legacy);
        }
        st.refs += 1;
        Ok(PRIMARY_CONTEXT)
    }

    /// The last release destroys the context: its streams (after their work), modules,
    /// graphs, events and memory; a later retain makes a fresh one, without the old fault.
    pub(crate) fn release_primary(&self, device: i32) -> Result {
        self.check_device(device)?;
        let mut st = lock(&self.state);
        match st.refs {
            0 => return Err(CUDA_ERROR_INVALID_CONTEXT),
            1 => {}
            _ => {
                st.refs -= 1;
                return Ok(());
            }
        }
        let old = std::mem::take(&mut *st);
        drop(st);
        for stream in old.streams.values().chain(&old.retired) {
            stream.drain(lock(&stream.queue));
            stream.close();
        }
        let mut memory = lock(&self.memory);
        for &start in old.allocs.keys() {
            let _ = memory.free(start);
        }
        drop(memory);
        self.sticky.clear();
        Ok(())
    }

    pub(crate) fn set_current(&self, ctx: u64) -> Result {
        self.require_init()?;
        if ctx != 0 && (ctx != PRIMARY_CONTEXT || lock(&self.state).refs == 0) {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        CURRENT.with(|c| c.set(ctx));
        Ok(())
    }

    pub(crate) fn current(&self) -> Result<u64> {
        self.require_init()?;
        Ok(CURRENT.with(Cell::get))
    }

    /// The context's state, for a call that needs a current, healthy context.
    fn ctx(&self) -> Result<MutexGuard<'_, State>> {
        self.require_init()?;
        let st = lock(&self.state);
        if CURRENT.with(Cell::get) != PRIMARY_CONTEXT || st.refs == 0 {
            return Err(CUDA_ERROR_INVALID_CONTEXT);
        }
        if let Some(code) = self.sticky.get() {
            return Err(code);
        }
        Ok(st)
    }

    /// After a wait: the fault of anything that ran, if any.
    fn healthy(&self) -> Result {
        self.sticky.get().map_or(Ok(()), Err)
    }

    pub(crate) fn synchronize_context(&self) -> Result {
        let mut st = self.ctx()?;
        st.forbid_during_capture()?;
        let streams = st.all_streams();
        drop(st);
        for s in streams {
            s.synchronize()?;
        }
        self.healthy()
    }

    // -----------------------------------------------------------------------------------------
    // Memory.

    pub(crate) fn alloc(&self, bytes: usize) -> Result<u64> {
        let mut st = self.ctx()?;
        st.forbid_during_capture()?;
        if bytes == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if st.used.checked_add(bytes).is_none_or(|u| u > TOTAL_MEMORY) {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        let ptr = lock(&self.memory).alloc(bytes);
        st.allocs.insert(ptr, bytes);
        st.used += bytes;
        Ok(ptr)
    }

    /// Frees an allocation once the work queued before has run (the driver's implicit
    /// synchronization).
    pub(crate) fn free(&self, ptr: u64) -> Result {
        let mut st = self.ctx()?;
        st.forbid_during_capture()?;
        if !st.allocs.contains_key(&ptr) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let streams = st.all_streams();
        drop(st);
        for s in &streams {
            s.drain(lock(&s.queue));
        }
        let mut st = self.ctx()?;
        let bytes = st.allocs.remove(&ptr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        st.used -= bytes;
        lock(&self.memory)
            .free(ptr)
            .map_err(|_| CUDA_ERROR_INVALID_VALUE)
    }

    pub(crate) fn memory_info(&self) -> Result<(usize, usize)> {
        let st = self.ctx()?;
        Ok((TOTAL_MEMORY - st.used, TOTAL_MEMORY))
    }

    /// Queues a copy from host address `src` (read when the copy runs).
    pub(crate) fn copy_to_device(&self, dst: u64, src: usize, bytes: usize, stream: u64) -> Result {
        let st = self.ctx()?;
        let s = st.stream(stream)?;
        if bytes == 0 {
            return Ok(());
        }
        st.check_range(dst, bytes)?;
        if src == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        drop(st);
        s.enqueue(Op::HtoD { dst, src, bytes });
        Ok(())
    }

    /// Queues a copy to host address `dst` (written when the copy runs).
    pub(crate) fn copy_to_host(&self, dst: usize, src: u64, bytes: usize, stream: u64) -> Result {
        let st = self.ctx()?;
        let s = st.stream(stream)?;
        if bytes == 0 {
            return Ok(());
        }
        st.check_range(src, bytes)?;
        if dst == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        drop(st);
        s.enqueue(Op::DtoH { dst, src, bytes });
        Ok(())
    }

    pub(crate) fn copy_on_device(&self, dst: u64, src: u64, bytes: usize, stream: u64) -> Result {
        let st = self.ctx()?;
        let s = st.stream(stream)?;
        if bytes == 0 {
            return Ok(());
        }
        st.check_range(dst, bytes)?;
        st.check_range(src, bytes)?;
        // Overlapping ranges are undefined for the copy engine: refused.
        if dst < src + bytes as u64 && src < dst + bytes as u64 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        drop(st);
        s.enqueue(Op::DtoD { dst, src, bytes });
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Modules and launches.

    /// Loads a module from its PTX text: parsed back by the kernel crate's parser, which reads
    /// exactly what tensor-fn's PTX writer prints (other PTX is `CUDA_ERROR_INVALID_PTX`, with
    /// the parser's reason in the log).
    pub(crate) fn load_module(&self, text: &[u8]) -> std::result::Result<u64, LoadError> {
        let plain = |code: CUresult| (code, String::new());
        let mut st = self.ctx().map_err(plain)?;
        st.forbid_during_capture().map_err(plain)?;
        let text = std::str::from_utf8(text).map_err(|e| {
            (
                CUDA_ERROR_INVALID_PTX,
                format!("the PTX text is not UTF-8: {e}"),
            )
        })?;
        let module = parse::parse_full_module(text)
            .map_err(|e| (CUDA_ERROR_INVALID_PTX, format!("ptx input, {e}")))?;
        let sm = COMPUTE_CAPABILITY.0 as u32 * 10 + COMPUTE_CAPABILITY.1 as u32;
        if module.header.target() > sm {
            return Err((
                CUDA_ERROR_NO_BINARY_FOR_GPU,
                format!(
                    "the module targets sm_{}, the device is sm_{sm}",
                    module.header.target()
                ),
            ));
        }
        for k in &module.kernels {
            k.check()
                .map_err(|e| (CUDA_ERROR_INVALID_PTX, format!("{}: {e}", k.name)))?;
            if let Some((name, ty)) = k
                .params
                .iter()
                .find(|(_, ty)| !matches!(ty, Type::U32 | Type::U64 | Type::F32 | Type::F64))
            {
                return Err((
                    CUDA_ERROR_NOT_SUPPORTED,
                    format!(
                        "{}: parameter `{name}` is .{}; the emulator passes .u32, .u64, .f32 and .f64",
                        k.name,
                        ty.suffix()
                    ),
                ));
            }
        }
        let loaded = Arc::new(LoadedModule {
            kernels: module.kernels,
        });
        let h = st.handle(Kind::Module);
        let functions: Vec<u64> = (0..loaded.kernels.len())
            .map(|i| {
                let f = st.handle(Kind::Function);
                st.functions.insert(f, (loaded.clone(), i));
                f
            })
            .collect();
        st.modules.insert(h, (loaded, functions));
        Ok(h)
    }

    pub(crate) fn unload_module(&self, module: u64) -> Result {
        let mut st = self.ctx()?;
        st.forbid_during_capture()?;
        let (_, functions) = st
            .modules
            .remove(&module)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        for f in functions {
            st.functions.remove(&f);
        }
        Ok(())
    }

    pub(crate) fn function(&self, module: u64, name: &[u8]) -> Result<u64> {
        let st = self.ctx()?;
        let (m, functions) = st.modules.get(&module).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        m.kernels
            .iter()
            .position(|k| k.name.as_bytes() == name)
            .map(|i| functions[i])
            .ok_or(CUDA_ERROR_NOT_FOUND)
    }

    /// The parameter types of a kernel, to read its arguments with.
    pub(crate) fn parameters(&self, function: u64) -> Result<Vec<Type>> {
        let st = self.ctx()?;
        let (m, i) = st
            .functions
            .get(&function)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        Ok(m.kernels[*i].params.iter().map(|(_, ty)| *ty).collect())
    }

    /// Queues a launch, after the checks the driver makes before it queues one.
    pub(crate) fn launch(
        &self,
        function: u64,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        stream: u64,
        args: Vec<Arg>,
    ) -> Result {
        let st = self.ctx()?;
        let (module, kernel) = st
            .functions
            .get(&function)
            .cloned()
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let s = st.stream(stream)?;
        drop(st);
        let k = &module.kernels[kernel];
        let threads = block.iter().map(|&b| b as u64).product::<u64>();
        let limits_ok = grid.iter().chain(&block).all(|&d| d > 0)
            && grid.iter().zip(MAX_GRID).all(|(&g, m)| g <= m)
            && block.iter().zip(MAX_BLOCK).all(|(&b, m)| b <= m)
            && threads <= MAX_THREADS_PER_BLOCK as u64
            && block.iter().zip(k.max_threads).all(|(&b, m)| b <= m)
            && threads <= k.max_threads.iter().map(|&m| m as u64).product::<u64>();
        if !limits_ok {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if k.shared_bytes()
            .checked_add(shared_bytes)
            .is_none_or(|b| b > MAX_SHARED_PER_BLOCK)
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if shared_bytes != 0 {
            // Our kernels declare their shared memory statically; a dynamic window would
            // have nothing to address it.
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        s.enqueue(Op::Launch(Arc::new(Launch {
            module,
            kernel,
            grid,
            block,
            args,
        })));
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Streams and capture.

    fn new_stream(&self) -> Result<Arc<Stream>> {
        Stream::start(self.memory.clone(), self.sticky.clone(), self.latency)
    }

    pub(crate) fn create_stream(&self, flags: u32) -> Result<u64> {
        let mut st = self.ctx()?;
        if flags & !1 != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let s = self.new_stream()?;
        let h = st.handle(Kind::Stream);
        st.streams.insert(h, s);
        Ok(h)
    }

    /// Destroys a stream: the call returns at once, its queued work still runs.
    pub(crate) fn destroy_stream(&self, stream: u64) -> Result {
        let mut st = self.ctx()?;
        if stream == 0 {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let s = st
            .streams
            .remove(&stream)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        s.close();
        st.retired.push(s);
        Ok(())
    }

    pub(crate) fn synchronize_stream(&self, stream: u64) -> Result {
        let s = self.ctx()?.stream(stream)?;
        s.synchronize()?;
        self.healthy()
    }

    /// `Ok` when everything queued has run, `CUDA_ERROR_NOT_READY` otherwise.
    pub(crate) fn query_stream(&self, stream: u64) -> Result {
        let s = self.ctx()?.stream(stream)?;
        let mut q = lock(&s.queue);
        if let Some(c) = &mut q.capture {
            c.invalidated = true;
            return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        }
        drop(q);
        if s.idle() {
            self.healthy()
        } else {
            Err(CUDA_ERROR_NOT_READY)
        }
    }

    /// See [`Stream::hold`].
    #[cfg(test)]
    pub(crate) fn hold_stream(&self, stream: u64, held: bool) -> Result {
        self.ctx()?.stream(stream)?.hold(held);
        Ok(())
    }

    pub(crate) fn begin_capture(&self, stream: u64, mode: i32) -> Result {
        let st = self.ctx()?;
        if stream == 0 {
            // The legacy stream synchronizes with every other: it cannot be captured.
            return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        }
        if ![MODE_GLOBAL, MODE_THREAD_LOCAL, MODE_RELAXED].contains(&mode) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let s = st.stream(stream)?;
        drop(st);
        let mut q = lock(&s.queue);
        if q.capture.is_some() {
            return Err(CUDA_ERROR_ILLEGAL_STATE);
        }
        q.capture = Some(Capture {
            mode,
            thread: thread::current().id(),
            nodes: Vec::new(),
            invalidated: false,
        });
        Ok(())
    }

    /// Ends a capture: the graph of what was recorded, or `CUDA_ERROR_STREAM_CAPTURE_INVALIDATED`
    /// (no graph) after an illegal call during it.
    pub(crate) fn end_capture(&self, stream: u64) -> Result<u64> {
        let mut st = self.ctx()?;
        let s = st.stream(stream)?;
        let mut q = lock(&s.queue);
        let Some(c) = &q.capture else {
            return Err(CUDA_ERROR_ILLEGAL_STATE);
        };
        if c.mode != MODE_RELAXED && c.thread != thread::current().id() {
            return Err(CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD);
        }
        let c = q.capture.take().ok_or(CUDA_ERROR_ILLEGAL_STATE)?;
        drop(q);
        if c.invalidated {
            return Err(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
        }
        let h = st.handle(Kind::Graph);
        st.graphs.insert(h, Arc::new(c.nodes));
        Ok(h)
    }

    /// `CU_STREAM_CAPTURE_STATUS_*`: 0 none, 1 active, 2 invalidated.
    pub(crate) fn capture_status(&self, stream: u64) -> Result<i32> {
        let s = self.ctx()?.stream(stream)?;
        let q = lock(&s.queue);
        Ok(match &q.capture {
            None => 0,
            Some(c) if c.invalidated => 2,
            Some(_) => 1,
        })
    }

    pub(crate) fn instantiate(&self, graph: u64, flags: u64) -> Result<u64> {
        let mut st = self.ctx()?;
        // CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH is the only flag of the bindings'
        // CUDA; it changes nothing for graphs without allocation nodes.
        if flags & !1 != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let nodes = st
            .graphs
            .get(&graph)
            .cloned()
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let h = st.handle(Kind::GraphExec);
        st.execs.insert(h, nodes);
        Ok(h)
    }

    pub(crate) fn launch_graph(&self, exec: u64, stream: u64) -> Result {
        let st = self.ctx()?;
        let nodes = st
            .execs
            .get(&exec)
            .cloned()
            .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        let s = st.stream(stream)?;
        drop(st);
        s.enqueue(Op::Graph(nodes));
        Ok(())
    }

    pub(crate) fn destroy_graph(&self, graph: u64) -> Result {
        let mut st = self.ctx()?;
        st.graphs
            .remove(&graph)
            .map(drop)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    /// Destroys an executable graph; a launch of it still queued runs all the same.
    pub(crate) fn destroy_exec(&self, exec: u64) -> Result {
        let mut st = self.ctx()?;
        st.execs
            .remove(&exec)
            .map(drop)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    // -----------------------------------------------------------------------------------------
    // Events.

    pub(crate) fn create_event(&self, flags: u32) -> Result<u64> {
        let mut st = self.ctx()?;
        // CU_EVENT_BLOCKING_SYNC 1, CU_EVENT_DISABLE_TIMING 2, CU_EVENT_INTERPROCESS 4.
        if flags & !3 != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let h = st.handle(Kind::Event);
        st.events.insert(
            h,
            Arc::new(Event {
                timing: flags & 2 == 0,
                ..Event::default()
            }),
        );
        Ok(h)
    }

    fn event(&self, event: u64) -> Result<Arc<Event>> {
        self.ctx()?
            .events
            .get(&event)
            .cloned()
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    pub(crate) fn destroy_event(&self, event: u64) -> Result {
        let mut st = self.ctx()?;
        st.events
            .remove(&event)
            .map(drop)
            .ok_or(CUDA_ERROR_INVALID_HANDLE)
    }

    /// Records the event in a stream; in a capturing stream it only becomes a captured event.
    pub(crate) fn record_event(&self, event: u64, stream: u64) -> Result {
        let e = self.event(event)?;
        let s = self.ctx()?.stream(stream)?;
        let q = lock(&s.queue);
        let mut es = lock(&e.state);
        if q.capture.is_some() {
            es.captured = true;
            return Ok(());
        }
        es.captured = false;
        es.pending += 1;
        es.stream = Some(Arc::downgrade(&s));
        drop(es);
        drop(q);
        s.enqueue(Op::Record(e.clone()));
        Ok(())
    }

    pub(crate) fn query_event(&self, event: u64) -> Result {
        let e = self.event(event)?;
        let es = lock(&e.state);
        if es.captured {
            return Err(CUDA_ERROR_CAPTURED_EVENT);
        }
        if es.pending > 0 {
            return Err(CUDA_ERROR_NOT_READY);
        }
        drop(es);
        self.healthy()
    }

    pub(crate) fn synchronize_event(&self, event: u64) -> Result {
        let e = self.event(event)?;
        let stream = {
            let es = lock(&e.state);
            if es.captured {
                return Err(CUDA_ERROR_CAPTURED_EVENT);
            }
            es.stream.as_ref().and_then(std::sync::Weak::upgrade)
        };
        if let Some(s) = stream {
            s.drain(lock(&s.queue));
        }
        let mut es = lock(&e.state);
        while es.pending > 0 && self.sticky.get().is_none() {
            es = e
                .done
                .wait(es)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(es);
        self.healthy()
    }

    /// Milliseconds between two completed records.
    pub(crate) fn elapsed(&self, start: u64, end: u64) -> Result<f32> {
        let (a, b) = (self.event(start)?, self.event(end)?);
        if !a.timing || !b.timing {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let (sa, sb) = (lock(&a.state), lock(&b.state));
        if sa.captured || sb.captured {
            return Err(CUDA_ERROR_CAPTURED_EVENT);
        }
        match (sa.at, sb.at) {
            (Some(ta), Some(tb)) if sa.pending == 0 && sb.pending == 0 => {
                let ms = if tb >= ta {
                    (tb - ta).as_secs_f64() * 1e3
                } else {
                    -((ta - tb).as_secs_f64() * 1e3)
                };
                Ok(ms as f32)
            }
            _ => Err(CUDA_ERROR_NOT_READY),
        }
    }
}
