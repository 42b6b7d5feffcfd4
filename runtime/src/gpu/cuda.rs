//! The CUDA backend (cargo feature `cuda`): the [`Backend`] of one NVIDIA GPU, on the CUDA
//! driver API.
//!
//! One context per device (the device's primary context, which CUDA runtime users such as
//! PyTorch in the same process share) and one non-blocking stream: every launch and copy goes
//! to that stream, so the backend's single-queue ordering is the stream's. Every call makes the
//! context current on the calling thread first, so any thread may use the backend.
//!
//! The driver functions are declared here, not taken from `cust::sys` (cust_raw 0.11, whose
//! types we do use): cust_raw returns `CUresult` as a Rust enum that knows CUDA 11.4's codes,
//! and a newer driver returns codes it lacks (CUDA 13 drivers have dozens more), which would
//! be undefined behaviour to receive as that enum. Here a status is a plain `c_int`. The
//! symbols are the driver's ABI names (`cuMemAlloc_v2`, ...), all present since CUDA 11.4 and
//! kept by every later driver. Each declaration is still checked against cust_raw's binding at
//! compile time (`declarations_match_cuda_h`): a wrong argument type or count does not build.
//!
//! The driver is loaded at run time, not linked: the first [`open`] `dlopen`s `libcuda.so.1`
//! and resolves every function into a [`Driver`] table, once per process. So a `cuda` binary
//! does not need the driver to start (it has no `NEEDED libcuda.so.1`; `scripts/package-gpu.sh`
//! checks that), and where there is none, opening a device is
//! `Error::DeviceUnavailable("no CUDA driver: libcuda.so.1 could not be loaded (...)")` with
//! the loader's reason. Building still needs a libcuda for cust's build script to find (CUDA,
//! or the stub of `scripts/cuda-stub.sh`); the `-lcuda` it adds links nothing, as no symbol of
//! ours or of the parts of cust we use refers to the driver, and the linker drops it
//! (`--as-needed`).
//!
//! Stream capture: while a thread records a graph, no other thread's work may reach the stream
//! (it would end up in the graph), so every stream operation passes the [`Gate`], a lock that
//! the capturing thread re-enters from inside its `record` closure.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::thread::{self, ThreadId};

use cust::sys::{
    CUcontext, CUdevice, CUdevice_attribute, CUdeviceptr, CUfunction, CUgraph, CUgraphExec,
    CUjit_option, CUmodule, CUstream, CUstreamCaptureMode,
};

use super::backend::{Backend, DevPtr, GraphId, KernelArg, ModuleId};
use crate::{Device, Error};

/// A driver status: 0 is success, anything else an error code (see [`error_text`]).
type Status = c_int;

const CUDA_SUCCESS: Status = 0;
const CUDA_ERROR_OUT_OF_MEMORY: Status = 2;
/// `cuStreamQuery`'s answer while work is still queued.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))] // NCCL's waits poll the stream
const CUDA_ERROR_NOT_READY: Status = 600;

/// `CU_STREAM_NON_BLOCKING`: our stream does not wait for the legacy default stream.
const STREAM_NON_BLOCKING: c_uint = 1;

/// The oldest driver that loads our PTX (`.version 7.8`): CUDA 11.8, as `cuDriverGetVersion`
/// reports it (1000 * major + 10 * minor).
const MIN_DRIVER_VERSION: c_int = 11080;

/// Bytes of the buffer the PTX JIT compiler writes its error log into.
const JIT_LOG_BYTES: usize = 16 * 1024;

/// The file name of the driver library: the SONAME every NVIDIA driver installs (and the stub
/// of `scripts/cuda-stub.sh` has).
const LIBCUDA: &str = "libcuda.so.1";

/// Declares [`Driver`], the table of driver entry points, from their C prototypes: one field
/// per function, named and typed as the driver's ABI has it, and [`Driver::resolve`], which
/// looks each one up by that name.
macro_rules! driver_api {
    ($(fn $name:ident($($arg:ident: $ty:ty $(as $cuda:ty)?),* $(,)?) -> Status;)*) => {
        /// The driver functions we call, resolved once from `libcuda.so.1` at run time
        /// ([`driver`]). A field is called as `(driver.cuInit)(0)`.
        // (cuStreamQuery is read by NCCL's waits only.)
        #[allow(non_snake_case)]
        #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
        struct Driver {
            $($name: unsafe extern "C" fn($($arg: $ty),*) -> Status,)*
        }

        impl Driver {
            /// Every entry point of the library `lib` (a live handle from `dlopen`), or the
            /// `dlerror` text of the first one it lacks.
            fn resolve(lib: *mut c_void) -> Result<Driver, String> {
                Ok(Driver {
                    $($name: {
                        let address = symbol(lib, concat!(stringify!($name), "\0"))?;
                        // SAFETY: `address` is the driver function the field is named after
                        // (looked up by that ABI name), and the field's type is its C signature
                        // in the driver's ABI (`cuda.h`, where the `_v2` names are the variants
                        // with 64-bit sizes), so calling through it is a plain C call. A data
                        // pointer and a function pointer have the same size on every target the
                        // driver exists for.
                        unsafe {
                            std::mem::transmute::<
                                *mut c_void,
                                unsafe extern "C" fn($($arg: $ty),*) -> Status,
                            >(address)
                        }
                    },)*
                })
            }
        }

        /// Never called: each entry point's type, with the status as `CUresult`, must be the
        /// type of its declaration in NVIDIA's `cuda.h` as cust_raw's bindings have it, so a
        /// wrong argument type or count is a compile error here. Where we take a plain integer
        /// for one of the bindings' enums (`as`), the two are checked to have one layout.
        #[allow(dead_code)]
        fn declarations_match_cuda_h() {
            $(
                let _: unsafe extern "C" fn($(declared!($ty $(, $cuda)?)),*) -> cust::sys::CUresult =
                    cust::sys::$name;
                $($(
                    const _: () = assert!(
                        std::mem::size_of::<$ty>() == std::mem::size_of::<$cuda>()
                            && std::mem::align_of::<$ty>() == std::mem::align_of::<$cuda>()
                    );
                )?)*
            )*
        }
    };
}

/// An argument's type in the bindings: the first type, or the second where they differ.
macro_rules! declared {
    ($ty:ty) => {
        $ty
    };
    ($ty:ty, $cuda:ty) => {
        $cuda
    };
}

// A status is the bindings' `CUresult` as a plain integer (see the module docs).
const _: () = assert!(
    std::mem::size_of::<Status>() == std::mem::size_of::<cust::sys::CUresult>()
        && std::mem::align_of::<Status>() == std::mem::align_of::<cust::sys::CUresult>()
);

driver_api! {
    fn cuGetErrorName(error: Status as cust::sys::CUresult, name: *mut *const c_char) -> Status;
    fn cuGetErrorString(error: Status as cust::sys::CUresult, text: *mut *const c_char) -> Status;
    fn cuInit(flags: c_uint) -> Status;
    fn cuDriverGetVersion(version: *mut c_int) -> Status;
    fn cuDeviceGetCount(count: *mut c_int) -> Status;
    fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> Status;
    fn cuDeviceGetName(name: *mut c_char, len: c_int, device: CUdevice) -> Status;
    fn cuDeviceGetAttribute(value: *mut c_int, attr: CUdevice_attribute, dev: CUdevice) -> Status;
    fn cuDeviceTotalMem_v2(bytes: *mut usize, device: CUdevice) -> Status;
    fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, device: CUdevice) -> Status;
    fn cuDevicePrimaryCtxRelease_v2(device: CUdevice) -> Status;
    fn cuCtxSetCurrent(ctx: CUcontext) -> Status;
    fn cuStreamCreate(stream: *mut CUstream, flags: c_uint) -> Status;
    fn cuStreamDestroy_v2(stream: CUstream) -> Status;
    fn cuStreamSynchronize(stream: CUstream) -> Status;
    fn cuStreamQuery(stream: CUstream) -> Status;
    fn cuMemAlloc_v2(ptr: *mut CUdeviceptr, bytes: usize) -> Status;
    fn cuMemFree_v2(ptr: CUdeviceptr) -> Status;
    fn cuMemcpyHtoDAsync_v2(
        dst: CUdeviceptr,
        src: *const c_void,
        bytes: usize,
        stream: CUstream,
    ) -> Status;
    fn cuMemcpyDtoHAsync_v2(
        dst: *mut c_void,
        src: CUdeviceptr,
        bytes: usize,
        stream: CUstream,
    ) -> Status;
    fn cuMemcpyDtoDAsync_v2(
        dst: CUdeviceptr,
        src: CUdeviceptr,
        bytes: usize,
        stream: CUstream,
    ) -> Status;
    fn cuModuleLoadDataEx(
        module: *mut CUmodule,
        image: *const c_void,
        num_options: c_uint,
        options: *mut CUjit_option,
        values: *mut *mut c_void,
    ) -> Status;
    fn cuModuleUnload(module: CUmodule) -> Status;
    fn cuModuleGetFunction(
        function: *mut CUfunction,
        module: CUmodule,
        name: *const c_char,
    ) -> Status;
    fn cuLaunchKernel(
        function: CUfunction,
        grid_x: c_uint,
        grid_y: c_uint,
        grid_z: c_uint,
        block_x: c_uint,
        block_y: c_uint,
        block_z: c_uint,
        shared_bytes: c_uint,
        stream: CUstream,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
    ) -> Status;
    fn cuStreamBeginCapture_v2(stream: CUstream, mode: CUstreamCaptureMode) -> Status;
    fn cuStreamEndCapture(stream: CUstream, graph: *mut CUgraph) -> Status;
    fn cuGraphInstantiateWithFlags(exec: *mut CUgraphExec, graph: CUgraph, flags: u64) -> Status;
    fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) -> Status;
    fn cuGraphExecDestroy(exec: CUgraphExec) -> Status;
    fn cuGraphDestroy(graph: CUgraph) -> Status;
}

impl Driver {
    /// Loads the driver library `library` and resolves every entry point. `Err` is the message
    /// of the [`Error::DeviceUnavailable`] that [`driver`] returns:
    /// `no CUDA driver: libcuda.so.1 could not be loaded (<dlerror text>)`.
    fn load(library: &str) -> Result<Driver, String> {
        let fail = |why: String| format!("no CUDA driver: {library} could not be loaded ({why})");
        let name = CString::new(library).map_err(|_| fail("the name has a NUL byte".into()))?;
        // SAFETY: `name` is NUL-terminated and outlives the call. Loading runs the library's
        // initialisers, which using the driver requires anyway. RTLD_LOCAL keeps its symbols
        // out of the global namespace; a CUDA runtime in the process (PyTorch's) dlopens the
        // same library and shares the loaded copy.
        let lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if lib.is_null() {
            return Err(fail(dl_error()));
        }
        // On success the handle is never closed: the table's pointers point into the library
        // for the rest of the process.
        Driver::resolve(lib).map_err(|why| {
            // SAFETY: `lib` came from dlopen above and nothing resolved from it is kept.
            unsafe { libc::dlclose(lib) };
            fail(why)
        })
    }
}

/// The driver's entry points, loaded on first use; `Err` when there is no driver to load.
fn driver() -> Result<&'static Driver, Error> {
    static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();
    DRIVER
        .get_or_init(|| Driver::load(LIBCUDA))
        .as_ref()
        .map_err(|message| Error::DeviceUnavailable(message.clone()))
}

/// The address of the symbol `name` (NUL-terminated) in the library `lib`, a live handle from
/// `dlopen`; `Err` is the `dlerror` text.
fn symbol(lib: *mut c_void, name: &str) -> Result<*mut c_void, String> {
    debug_assert!(name.ends_with('\0'), "{name:?} is not NUL-terminated");
    // SAFETY: `lib` is a live handle (the caller's contract) and `name` is NUL-terminated.
    // dlerror is read first to clear an older failure, so the one after dlsym is dlsym's own.
    let address = unsafe {
        libc::dlerror();
        libc::dlsym(lib, name.as_ptr().cast())
    };
    if address.is_null() {
        let name = name.trim_end_matches('\0');
        Err(dl_error_or(|| {
            format!("symbol `{name}` has a null address")
        }))
    } else {
        Ok(address)
    }
}

/// The text of the last `dl*` failure on this thread.
fn dl_error() -> String {
    dl_error_or(|| "no reason given".into())
}

fn dl_error_or(otherwise: impl FnOnce() -> String) -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string that stays valid until the next
    // dl* call on this thread; it is copied right here.
    unsafe {
        let text = libc::dlerror();
        if text.is_null() {
            otherwise()
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    }
}

/// Opens GPU `ordinal`: checks the driver, retains the device's primary context and creates
/// the backend's stream.
pub(crate) fn open(ordinal: u32) -> Result<Arc<dyn Backend>, Error> {
    let backend = Arc::new(CudaBackend::open(ordinal)?);
    lock(opened()).push((ordinal, Arc::downgrade(&backend)));
    Ok(backend)
}

/// The backends [`open`] made, by ordinal: `gpu::backend` hands them out as `dyn Backend`,
/// and this is how [`Device::with_cuda_stream`] finds the one behind a device again.
type Opened = Mutex<Vec<(u32, Weak<CudaBackend>)>>;

fn opened() -> &'static Opened {
    static OPENED: OnceLock<Opened> = OnceLock::new();
    OPENED.get_or_init(Mutex::default)
}

/// Raw access to a device's stream, for NCCL (`crate::dist`), whose collectives must run on
/// the stream that a compiled function's kernels run on, in the primary context its buffers
/// live in. The methods are on [`Device`] because this module is private to `gpu` and
/// `Device` is a type every module can name.
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
impl Device {
    /// Runs `f` with the raw stream of the backend `gpu::backend(self)` hands out (opening it
    /// if needed), with its context current on this thread and its gate held, so that what `f`
    /// puts on the stream is ordered after every launch and copy before it and never lands in
    /// another thread's graph capture. Other threads' GPU work waits meanwhile, so `f` should
    /// enqueue, not wait (NCCL's communicator setup, once per process, is the exception).
    pub(crate) fn with_cuda_stream<R>(self, f: impl FnOnce(CUstream) -> R) -> Result<R, Error> {
        let backend = CudaBackend::of(self)?;
        let _gate = backend.gate.enter();
        backend.make_current()?;
        Ok(f(backend.stream))
    }

    /// Whether every operation enqueued on the stream so far has finished (`cuStreamQuery`,
    /// which does not block): how a wait with a deadline polls. A failure of queued work is
    /// its error.
    pub(crate) fn cuda_stream_idle(self) -> Result<bool, Error> {
        let backend = CudaBackend::of(self)?;
        let _gate = backend.gate.enter();
        backend.make_current()?;
        // SAFETY: `stream` was created in `open` and lives until `drop`.
        match unsafe { (backend.driver.cuStreamQuery)(backend.stream) } {
            CUDA_SUCCESS => Ok(true),
            CUDA_ERROR_NOT_READY => Ok(false),
            status => {
                Err(backend.gpu_error("cuStreamQuery".into(), error_text(backend.driver, status)))
            }
        }
    }
}

/// `NAME: text` of a driver status, as `CUDA_ERROR_NO_DEVICE: no CUDA-capable device is
/// detected`; `CUDA error N` for a code the driver cannot name.
fn error_text(driver: &Driver, status: Status) -> String {
    let lookup = |f: unsafe extern "C" fn(Status, *mut *const c_char) -> Status| {
        let mut text: *const c_char = ptr::null();
        // SAFETY: cuGetErrorName/cuGetErrorString write one pointer into `text`, a live local;
        // on success it points to a static NUL-terminated string, read once right here.
        unsafe {
            if f(status, &mut text) == CUDA_SUCCESS && !text.is_null() {
                Some(CStr::from_ptr(text).to_string_lossy().into_owned())
            } else {
                None
            }
        }
    };
    match (
        lookup(driver.cuGetErrorName),
        lookup(driver.cuGetErrorString),
    ) {
        (Some(name), Some(text)) => format!("{name}: {text}"),
        (Some(name), None) => name,
        _ => format!("CUDA error {status}"),
    }
}

/// A driver version as `cuDriverGetVersion` reports it (12040), as people write it (12.4).
fn version_text(version: c_int) -> String {
    format!("{}.{}", version / 1000, version % 1000 / 10)
}

/// The error of a failed step of opening a device: the device is not usable.
fn unavailable(driver: &Driver, device: &str, op: &str, status: Status) -> Error {
    Error::DeviceUnavailable(format!(
        "{device}: {op} failed: {}",
        error_text(driver, status)
    ))
}

/// A kernel parameter's value in an 8-byte slot: the driver reads as many bytes from the
/// slot's start as the parameter's PTX type has (8 for `.u64`/`.f64`, 4 for `.u32`/`.f32`).
fn param_slot(arg: &KernelArg) -> u64 {
    fn low_half(bytes: [u8; 4]) -> u64 {
        let mut slot = [0u8; 8];
        slot[..4].copy_from_slice(&bytes);
        u64::from_ne_bytes(slot)
    }
    match *arg {
        KernelArg::Ptr(p) => p,
        KernelArg::U32(v) => low_half(v.to_ne_bytes()),
        KernelArg::F32(v) => low_half(v.to_ne_bytes()),
        KernelArg::F64(v) => u64::from_ne_bytes(v.to_ne_bytes()),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A re-entrant lock on the stream: held by one thread at a time, any number of times.
///
/// Invariant: `owner` is `Some((thread, depth))` with `depth >= 1` exactly while `thread`
/// holds the gate.
#[derive(Default)]
struct Gate {
    owner: Mutex<Option<(ThreadId, usize)>>,
    released: Condvar,
    /// Threads waiting to enter (for tests).
    waiting: AtomicUsize,
}

struct GateGuard<'a>(&'a Gate);

impl Gate {
    fn enter(&self) -> GateGuard<'_> {
        let me = thread::current().id();
        let mut owner = lock(&self.owner);
        if matches!(*owner, Some((t, _)) if t != me) {
            self.waiting.fetch_add(1, Ordering::Relaxed);
            while matches!(*owner, Some((t, _)) if t != me) {
                owner = self
                    .released
                    .wait(owner)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        match owner.as_mut() {
            Some((_, depth)) => *depth += 1,
            None => *owner = Some((me, 1)),
        }
        GateGuard(self)
    }
}

impl Drop for GateGuard<'_> {
    fn drop(&mut self) {
        let mut owner = lock(&self.0.owner);
        if let Some((_, depth)) = owner.as_mut() {
            *depth -= 1;
            if *depth == 0 {
                *owner = None;
                self.0.released.notify_one();
            }
        }
    }
}

/// A module loaded into the context, with the kernels looked up in it so far.
struct Module {
    raw: CUmodule,
    functions: HashMap<String, CUfunction>,
}

/// What the backend loaded and recorded; the driver handles in it belong to `CudaBackend::ctx`.
#[derive(Default)]
struct State {
    modules: Vec<Module>,
    /// Module index by PTX text: loading the same text again returns the same module.
    by_text: HashMap<String, ModuleId>,
    graphs: HashMap<usize, CUgraphExec>,
    next_graph: usize,
}

/// One CUDA device: its primary context and our stream in it.
pub(crate) struct CudaBackend {
    driver: &'static Driver,
    /// `cuda:N`, for errors.
    name: String,
    /// `cuda:N (model, sm_XY, M GiB)`.
    description: String,
    device: CUdevice,
    /// The retained primary context; null only while `open` has not retained it yet.
    ctx: CUcontext,
    /// Our stream; null only while `open` has not created it yet.
    stream: CUstream,
    gate: Gate,
    state: Mutex<State>,
}

// SAFETY: the driver handles in `CudaBackend` (context, stream, modules, functions, graphs)
// are opaque identifiers that the driver API lets any thread use once the context is current
// on it, which every method ensures first; the driver API itself is thread-safe. Our own
// mutable data is behind `state`'s mutex, and stream order behind `gate`.
unsafe impl Send for CudaBackend {}
// SAFETY: as for `Send`: shared access only reaches driver calls and mutex-guarded data.
unsafe impl Sync for CudaBackend {}

impl fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.description)
            .finish_non_exhaustive()
    }
}

impl CudaBackend {
    /// The backend `gpu::backend(device)` hands out, as this type.
    #[cfg_attr(not(feature = "nccl"), allow(dead_code))]
    fn of(device: Device) -> Result<Arc<CudaBackend>, Error> {
        let Device::Cuda(ordinal) = device else {
            return Err(Error::Internal(format!(
                "{device} has no CUDA stream (a bug in tensor-fn)"
            )));
        };
        super::backend(device)?;
        lock(opened())
            .iter()
            .find(|(o, _)| *o == ordinal)
            .and_then(|(_, b)| b.upgrade())
            .ok_or_else(|| {
                Error::Internal(format!(
                    "cuda:{ordinal} is open but not among the CUDA backends (a bug in tensor-fn)"
                ))
            })
    }

    fn open(ordinal: u32) -> Result<CudaBackend, Error> {
        let driver = driver()?;
        let no_device = |status| {
            Error::DeviceUnavailable(format!("no CUDA device: {}", error_text(driver, status)))
        };
        // SAFETY: cuInit takes a flags word (0 is the only valid value) and no pointers.
        let status = unsafe { (driver.cuInit)(0) };
        if status != CUDA_SUCCESS {
            return Err(no_device(status));
        }
        let mut version: c_int = 0;
        // SAFETY: writes one c_int into `version`, a live local.
        let status = unsafe { (driver.cuDriverGetVersion)(&mut version) };
        if status != CUDA_SUCCESS {
            return Err(no_device(status));
        }
        if version < MIN_DRIVER_VERSION {
            return Err(Error::DeviceUnavailable(format!(
                "CUDA driver too old: found {}, need {} (for PTX .version 7.8)",
                version_text(version),
                version_text(MIN_DRIVER_VERSION)
            )));
        }
        let mut count: c_int = 0;
        // SAFETY: writes one c_int into `count`, a live local.
        let status = unsafe { (driver.cuDeviceGetCount)(&mut count) };
        if status != CUDA_SUCCESS {
            return Err(no_device(status));
        }
        let count = u32::try_from(count).unwrap_or(0);
        if count == 0 {
            return Err(Error::DeviceUnavailable(
                "no CUDA device: the driver reports 0 devices".into(),
            ));
        }
        if ordinal >= count {
            let present = match count {
                1 => "1 device (cuda:0)".to_owned(),
                n => format!("{n} devices (cuda:0 to cuda:{})", n - 1),
            };
            return Err(Error::DeviceUnavailable(format!(
                "no CUDA device `cuda:{ordinal}`: the driver reports {present}"
            )));
        }

        let name = format!("cuda:{ordinal}");
        let fail = |op: &str, status| unavailable(driver, &name, op, status);
        let mut device: CUdevice = 0;
        // SAFETY: writes one CUdevice into `device`; `ordinal < count` was checked above, so it
        // fits in a c_int.
        let status = unsafe { (driver.cuDeviceGet)(&mut device, ordinal as c_int) };
        if status != CUDA_SUCCESS {
            return Err(fail("cuDeviceGet", status));
        }
        let description = describe_device(driver, &name, device).map_err(|(op, s)| fail(op, s))?;

        let mut backend = CudaBackend {
            driver,
            name: name.clone(),
            description,
            device,
            ctx: ptr::null_mut(),
            stream: ptr::null_mut(),
            gate: Gate::default(),
            state: Mutex::default(),
        };
        // From here on, dropping `backend` releases whatever was made (see `Drop`).
        let mut ctx: CUcontext = ptr::null_mut();
        // SAFETY: writes one context handle into `ctx`; `device` came from cuDeviceGet.
        let status = unsafe { (driver.cuDevicePrimaryCtxRetain)(&mut ctx, device) };
        if status != CUDA_SUCCESS {
            return Err(fail("cuDevicePrimaryCtxRetain", status));
        }
        backend.ctx = ctx;
        // SAFETY: `ctx` was just retained.
        let status = unsafe { (driver.cuCtxSetCurrent)(ctx) };
        if status != CUDA_SUCCESS {
            return Err(fail("cuCtxSetCurrent", status));
        }
        let mut stream: CUstream = ptr::null_mut();
        // SAFETY: writes one stream handle into `stream`; the context is current (above).
        let status = unsafe { (driver.cuStreamCreate)(&mut stream, STREAM_NON_BLOCKING) };
        if status != CUDA_SUCCESS {
            return Err(fail("cuStreamCreate", status));
        }
        backend.stream = stream;
        Ok(backend)
    }

    /// Makes our context current on the calling thread (every driver call needs it).
    fn make_current(&self) -> Result<(), Error> {
        // SAFETY: `ctx` is the primary context retained in `open` and released only in `drop`.
        let status = unsafe { (self.driver.cuCtxSetCurrent)(self.ctx) };
        self.check(status, || "cuCtxSetCurrent".into())
    }

    /// `Ok` for success, else the error of driver call `op` (a closure: names are built only on
    /// failure, launches stay allocation-free).
    fn check(&self, status: Status, op: impl FnOnce() -> String) -> Result<(), Error> {
        if status == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(self.gpu_error(op(), error_text(self.driver, status)))
        }
    }

    fn gpu_error(&self, op: String, message: String) -> Error {
        Error::Gpu {
            device: self.name.clone(),
            op,
            message,
        }
    }

    /// Waits for the stream (the gate must be held and the context current).
    fn wait(&self, after: &str) -> Result<(), Error> {
        // SAFETY: `stream` was created in `open` and lives until `drop`.
        let status = unsafe { (self.driver.cuStreamSynchronize)(self.stream) };
        self.check(status, || format!("cuStreamSynchronize ({after})"))
    }

    /// The kernel `name` of a loaded module, looked up once.
    fn function(&self, module: ModuleId, name: &str) -> Result<CUfunction, Error> {
        let mut state = lock(&self.state);
        let Some(m) = state.modules.get_mut(module.0) else {
            return Err(Error::Internal(format!(
                "{}: launch of `{name}` in module {} that was never loaded",
                self.name, module.0
            )));
        };
        if let Some(&f) = m.functions.get(name) {
            return Ok(f);
        }
        let cname = CString::new(name).map_err(|_| {
            self.gpu_error(
                format!("cuModuleGetFunction {name:?}"),
                "the kernel name contains a NUL byte".into(),
            )
        })?;
        let mut f: CUfunction = ptr::null_mut();
        // SAFETY: `m.raw` is a module loaded into our context (current: callers enter it
        // first); `cname` is NUL-terminated and outlives the call; one handle is written to `f`.
        let status = unsafe { (self.driver.cuModuleGetFunction)(&mut f, m.raw, cname.as_ptr()) };
        self.check(status, || format!("cuModuleGetFunction {name}"))?;
        m.functions.insert(name.to_owned(), f);
        Ok(f)
    }
}

/// The names of the kernels (`.entry NAME(`) a PTX text defines, in order.
fn entry_names(ptx: &str) -> impl Iterator<Item = &str> {
    ptx.match_indices(".entry").filter_map(move |(at, _)| {
        let rest = ptx[at + ".entry".len()..].trim_start();
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
            .unwrap_or(rest.len());
        (end > 0).then(|| &rest[..end])
    })
}

/// `cuda:N (model, sm_XY, M GiB)`, or the failing driver call.
fn describe_device(
    driver: &Driver,
    name: &str,
    device: CUdevice,
) -> Result<String, (&'static str, Status)> {
    let mut model = [0 as c_char; 256];
    // SAFETY: the driver writes at most `model.len()` bytes, NUL-terminated, into `model`.
    let status =
        unsafe { (driver.cuDeviceGetName)(model.as_mut_ptr(), model.len() as c_int, device) };
    if status != CUDA_SUCCESS {
        return Err(("cuDeviceGetName", status));
    }
    // Keep the last byte NUL even if the driver filled the buffer.
    model[model.len() - 1] = 0;
    // SAFETY: `model` is NUL-terminated (just ensured) and lives across the call.
    let model = unsafe { CStr::from_ptr(model.as_ptr()) }.to_string_lossy();
    let attribute = |attr| {
        let mut value: c_int = 0;
        // SAFETY: writes one c_int into `value`, a live local.
        let status = unsafe { (driver.cuDeviceGetAttribute)(&mut value, attr, device) };
        if status == CUDA_SUCCESS {
            Ok(value)
        } else {
            Err(("cuDeviceGetAttribute", status))
        }
    };
    let major = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    let mut bytes: usize = 0;
    // SAFETY: writes one usize into `bytes`, a live local.
    let status = unsafe { (driver.cuDeviceTotalMem_v2)(&mut bytes, device) };
    if status != CUDA_SUCCESS {
        return Err(("cuDeviceTotalMem", status));
    }
    let gib = bytes as f64 / (1u64 << 30) as f64;
    Ok(format!("{name} ({model}, sm_{major}{minor}, {gib:.0} GiB)"))
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        if self.ctx.is_null() {
            return;
        }
        let state = std::mem::take(&mut *lock(&self.state));
        // Failures are ignored: there is no one left to tell, and the driver frees everything
        // of a context when its last user releases it.
        // SAFETY: `ctx`, `stream`, the graphs and the modules were made by this backend, are
        // used by no one else (we are being dropped), and each is destroyed once. Waiting for
        // the stream first means no queued work still uses them.
        unsafe {
            if (self.driver.cuCtxSetCurrent)(self.ctx) == CUDA_SUCCESS {
                if !self.stream.is_null() {
                    (self.driver.cuStreamSynchronize)(self.stream);
                }
                for (_, exec) in state.graphs {
                    (self.driver.cuGraphExecDestroy)(exec);
                }
                for module in state.modules {
                    (self.driver.cuModuleUnload)(module.raw);
                }
                if !self.stream.is_null() {
                    (self.driver.cuStreamDestroy_v2)(self.stream);
                }
            }
            (self.driver.cuDevicePrimaryCtxRelease_v2)(self.device);
        }
    }
}

/// Ends a stream capture that `record` left open (an early return or a panic), so the stream
/// is usable again; `finish` ends it normally and hands out the graph.
struct Capture {
    driver: &'static Driver,
    stream: CUstream,
    open: bool,
}

impl Capture {
    fn finish(mut self) -> (Status, CUgraph) {
        self.open = false;
        let mut graph: CUgraph = ptr::null_mut();
        // SAFETY: the stream is capturing (begun by `capture`); one handle is written to `graph`.
        let status = unsafe { (self.driver.cuStreamEndCapture)(self.stream, &mut graph) };
        (status, graph)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.open {
            let mut graph: CUgraph = ptr::null_mut();
            // SAFETY: as in `finish`; the partial graph, if any, is ours to destroy, once.
            unsafe {
                (self.driver.cuStreamEndCapture)(self.stream, &mut graph);
                if !graph.is_null() {
                    (self.driver.cuGraphDestroy)(graph);
                }
            }
        }
    }
}

impl Backend for CudaBackend {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr, Error> {
        let _gate = self.gate.enter();
        self.make_current()?;
        let mut ptr: CUdeviceptr = 0;
        // SAFETY: writes one device address into `ptr`, a live local. cuMemAlloc rejects 0
        // bytes, so an empty buffer gets 1 byte (its address must still be unique to free).
        let status = unsafe { (self.driver.cuMemAlloc_v2)(&mut ptr, bytes.max(1)) };
        match status {
            CUDA_SUCCESS => Ok(ptr),
            CUDA_ERROR_OUT_OF_MEMORY => Err(Error::OutOfMemory {
                device: self.name.clone(),
                bytes,
            }),
            _ => Err(self.gpu_error(
                format!("cuMemAlloc {bytes} bytes"),
                error_text(self.driver, status),
            )),
        }
    }

    unsafe fn free(&self, ptr: DevPtr) {
        let _gate = self.gate.enter();
        if self.make_current().is_ok() {
            // SAFETY: the caller guarantees `ptr` came from our `alloc`, is freed once and no
            // queued work uses it. A failure (e.g. a sticky error) leaves nothing to undo.
            unsafe { (self.driver.cuMemFree_v2)(ptr) };
        }
    }

    unsafe fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<(), Error> {
        if src.is_empty() {
            return Ok(());
        }
        let _gate = self.gate.enter();
        self.make_current()?;
        // SAFETY: the caller guarantees `dst .. dst + src.len()` lies in one live allocation;
        // `src` is a live slice of `src.len()` bytes, and we wait for the stream below before
        // returning, so the driver no longer reads `src` once the caller may reuse it.
        let status = unsafe {
            (self.driver.cuMemcpyHtoDAsync_v2)(dst, src.as_ptr().cast(), src.len(), self.stream)
        };
        self.check(status, || format!("cuMemcpyHtoDAsync {} bytes", src.len()))?;
        self.wait("after an upload")
    }

    unsafe fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<(), Error> {
        let _gate = self.gate.enter();
        self.make_current()?;
        if !dst.is_empty() {
            // SAFETY: the caller guarantees `src .. src + dst.len()` lies in one live
            // allocation; `dst` is a live, exclusively borrowed slice of `dst.len()` bytes, and
            // we wait for the stream below, so the driver is done writing it when we return.
            let status = unsafe {
                (self.driver.cuMemcpyDtoHAsync_v2)(
                    dst.as_mut_ptr().cast(),
                    src,
                    dst.len(),
                    self.stream,
                )
            };
            self.check(status, || format!("cuMemcpyDtoHAsync {} bytes", dst.len()))?;
        }
        self.wait("for a download")
    }

    unsafe fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), Error> {
        if bytes == 0 {
            return Ok(());
        }
        let _gate = self.gate.enter();
        self.make_current()?;
        // SAFETY: the caller guarantees both ranges lie in live allocations and do not overlap;
        // the copy is device-to-device, so no host memory is involved.
        let status = unsafe { (self.driver.cuMemcpyDtoDAsync_v2)(dst, src, bytes, self.stream) };
        self.check(status, || format!("cuMemcpyDtoDAsync {bytes} bytes"))
    }

    fn load_module(&self, ptx: &str) -> Result<ModuleId, Error> {
        let _gate = self.gate.enter();
        let mut state = lock(&self.state);
        if let Some(&id) = state.by_text.get(ptx) {
            return Ok(id);
        }
        let image = CString::new(ptx).map_err(|e| {
            self.gpu_error(
                "cuModuleLoadData".into(),
                format!("the PTX text has a NUL byte at offset {}", e.nul_position()),
            )
        })?;
        self.make_current()?;
        let mut log = vec![0u8; JIT_LOG_BYTES];
        let mut options = [
            CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
            CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        ];
        // The driver takes option values as pointer-sized words; a size is passed by value.
        let mut values = [
            log.as_mut_ptr().cast::<c_void>(),
            JIT_LOG_BYTES as *mut c_void,
        ];
        let mut module: CUmodule = ptr::null_mut();
        // SAFETY: `image` is NUL-terminated PTX that outlives the call; `options` and `values`
        // hold 2 entries each, as announced; the log buffer has the announced size and lives
        // across the call; one module handle is written to `module`.
        let status = unsafe {
            (self.driver.cuModuleLoadDataEx)(
                &mut module,
                image.as_ptr().cast(),
                options.len() as c_uint,
                options.as_mut_ptr(),
                values.as_mut_ptr(),
            )
        };
        if status != CUDA_SUCCESS {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..end]);
            let mut message = error_text(self.driver, status);
            if !log.trim().is_empty() {
                message = format!("{message}; JIT log:\n{}", log.trim_end());
            }
            return Err(self.gpu_error("cuModuleLoadData".into(), message));
        }
        let id = ModuleId(state.modules.len());
        state.modules.push(Module {
            raw: module,
            functions: HashMap::new(),
        });
        state.by_text.insert(ptx.to_owned(), id);
        drop(state);
        // Look every kernel up now: with lazy loading (the default since CUDA 12.2) the lookup
        // is what loads a kernel onto the device, which must not first happen inside a stream
        // capture. A name that is not a kernel after all (`.entry` in a comment) is skipped.
        for name in entry_names(ptx) {
            let _ = self.function(id, name);
        }
        Ok(id)
    }

    unsafe fn launch(
        &self,
        module: ModuleId,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        args: &[KernelArg],
    ) -> Result<(), Error> {
        let _gate = self.gate.enter();
        self.make_current()?;
        let function = self.function(module, kernel)?;
        let mut slots: Vec<u64> = args.iter().map(param_slot).collect();
        let mut params: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|slot| (slot as *mut u64).cast())
            .collect();
        // SAFETY: `function` belongs to a module of our (current) context; `params` holds one
        // pointer per argument, each to an 8-byte slot that outlives the call (the driver copies
        // the values before returning) and starts with the argument's bytes. The caller
        // guarantees the arguments match the kernel's parameters and that every pointer, over
        // the kernel's index range at this grid, lies inside live allocations.
        let status = unsafe {
            (self.driver.cuLaunchKernel)(
                function,
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
                0,
                self.stream,
                params.as_mut_ptr(),
                ptr::null_mut(),
            )
        };
        self.check(status, || format!("cuLaunchKernel {kernel}"))
    }

    fn synchronize(&self) -> Result<(), Error> {
        let _gate = self.gate.enter();
        self.make_current()?;
        self.wait("synchronize")
    }

    fn capture(
        &self,
        record: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<Option<GraphId>, Error> {
        // The gate is held for the whole recording: no other thread's work can land in the
        // graph, while this thread's launches and copies (inside `record`) re-enter it. So
        // `record` must call the backend from this thread only (another would wait forever).
        let _gate = self.gate.enter();
        self.make_current()?;
        // Relaxed mode: the capture forbids nothing beyond what any capture forbids (e.g. an
        // allocation inside `record` is fine; a stream wait still fails, and so ends it).
        // SAFETY: `stream` is ours and not capturing (the gate keeps captures apart).
        let status = unsafe {
            (self.driver.cuStreamBeginCapture_v2)(
                self.stream,
                CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED,
            )
        };
        self.check(status, || "cuStreamBeginCapture".into())?;
        let capture = Capture {
            driver: self.driver,
            stream: self.stream,
            open: true,
        };
        let recorded = record();
        let (status, graph) = capture.finish();
        let destroy = |graph: CUgraph| {
            if !graph.is_null() {
                // SAFETY: `graph` came from cuStreamEndCapture and is destroyed once, here.
                unsafe { (self.driver.cuGraphDestroy)(graph) };
            }
        };
        if let Err(e) = recorded {
            destroy(graph);
            return Err(e);
        }
        if let Err(e) = self.check(status, || "cuStreamEndCapture".into()) {
            destroy(graph);
            return Err(e);
        }
        let mut exec: CUgraphExec = ptr::null_mut();
        // SAFETY: `graph` is the valid graph just captured; one handle is written to `exec`.
        let status = unsafe { (self.driver.cuGraphInstantiateWithFlags)(&mut exec, graph, 0) };
        // The executable graph is independent of the graph it was made from.
        destroy(graph);
        self.check(status, || "cuGraphInstantiate".into())?;
        let mut state = lock(&self.state);
        let id = state.next_graph;
        state.next_graph += 1;
        state.graphs.insert(id, exec);
        Ok(Some(GraphId(id)))
    }

    unsafe fn replay(&self, graph: GraphId) -> Result<(), Error> {
        let _gate = self.gate.enter();
        self.make_current()?;
        let Some(exec) = lock(&self.state).graphs.get(&graph.0).copied() else {
            return Err(Error::Internal(format!(
                "{}: replay of graph {} that was never recorded or was dropped",
                self.name, graph.0
            )));
        };
        // SAFETY: `exec` was instantiated in our context and is not destroyed while the gate
        // is held (drop_graph takes it too); the caller guarantees every allocation the
        // graph's work touches is still live.
        let status = unsafe { (self.driver.cuGraphLaunch)(exec, self.stream) };
        self.check(status, || "cuGraphLaunch".into())
    }

    fn drop_graph(&self, graph: GraphId) {
        let _gate = self.gate.enter();
        let Some(exec) = lock(&self.state).graphs.remove(&graph.0) else {
            return;
        };
        if self.make_current().is_ok() {
            // SAFETY: `exec` was removed from the table, so it is destroyed once; the driver
            // frees a graph still running when it completes.
            unsafe { (self.driver.cuGraphExecDestroy)(exec) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::testing::require_or_skip;
    use crate::Device;

    use tensor_fn_kernels::ptx::{Module as PtxModule, Type};
    use tensor_fn_kernels::samples::add_scalar;

    /// A module of two kernels, `x[i] += a` over f32 and over f64 (`(x: .u64, a, n: .u32)`),
    /// and their names.
    fn add_module() -> (String, String, String) {
        let (f32k, f64k) = (add_scalar(Type::F32), add_scalar(Type::F64));
        let (f32n, f64n) = (f32k.name.clone(), f64k.name.clone());
        let mut m = PtxModule::default();
        m.add(f32k);
        m.add(f64k);
        (m.to_ptx(), f32n, f64n)
    }

    fn gpu() -> Option<Arc<dyn Backend>> {
        let device = require_or_skip(Device::cuda(0))?;
        Some(crate::gpu::backend(device).expect("an opened device has a backend"))
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }

    fn f32_values(b: &[u8]) -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// A buffer of `n` floats holding `values`.
    fn upload_f32(gpu: &dyn Backend, values: &[f32]) -> DevPtr {
        let p = gpu.alloc(values.len() * 4).unwrap();
        // SAFETY: `p` was just allocated with room for all of `values`.
        unsafe { gpu.upload(p, &f32_bytes(values)).unwrap() };
        p
    }

    fn download_f32(gpu: &dyn Backend, p: DevPtr, n: usize) -> Vec<f32> {
        let mut bytes = vec![0u8; n * 4];
        // SAFETY: callers pass a live allocation of at least `n` floats.
        unsafe { gpu.download(p, &mut bytes).unwrap() };
        f32_values(&bytes)
    }

    #[test]
    fn cuda0_is_a_device_or_a_clear_error() {
        // On the stub libcuda (scripts/test.sh) this is the "no CUDA device" path, without any
        // libcuda.so.1 the "no CUDA driver" one; on a GPU machine the description. Either way:
        // no panic, the right error variant.
        match Device::cuda(0) {
            Ok(d) => {
                let b = crate::gpu::backend(d).unwrap();
                let text = b.describe();
                assert!(
                    text.starts_with("cuda:0 (") && text.contains(", sm_"),
                    "{text}"
                );
            }
            Err(Error::DeviceUnavailable(m)) => {
                assert!(
                    m.starts_with("no CUDA device: ")
                        || m.starts_with("no CUDA driver: libcuda.so.1 could not be loaded (")
                        || m.starts_with("CUDA driver too old"),
                    "{m}"
                );
                let shown = Error::DeviceUnavailable(m.clone()).to_string();
                assert_eq!(shown, format!("device unavailable: {m}"));
                // Fails here under TENSOR_FN_REQUIRE_GPU=1, as GPU runs must not skip.
                require_or_skip(Err(Error::DeviceUnavailable(m)));
            }
            Err(e) => panic!("expected DeviceUnavailable, found {e:?}"),
        }
        // `best` falls back to the CPU, with the reason.
        let (best, reason) = Device::best_with_reason();
        assert_eq!(best == Device::Cpu, reason.is_some(), "{best} {reason:?}");
    }

    #[test]
    fn a_missing_ordinal_is_a_clear_error() {
        match Device::cuda(4096) {
            Err(Error::DeviceUnavailable(m)) => {
                let no_driver = m.starts_with("no CUDA driver: ");
                assert!(
                    m.starts_with("no CUDA device")
                        || no_driver
                        || m.starts_with("CUDA driver too old"),
                    "{m}"
                );
                if !m.contains("CUDA_ERROR") && !m.contains("too old") && !no_driver {
                    // A driver that answered names the devices it has.
                    assert!(m.contains("`cuda:4096`") && m.contains("reports"), "{m}");
                }
            }
            other => panic!("expected DeviceUnavailable, found {other:?}"),
        }
    }

    #[test]
    fn driver_errors_are_named_by_the_driver() {
        // Needs a libcuda.so.1 (the stub will do), not a GPU.
        let driver = match driver() {
            Ok(driver) => driver,
            Err(e) => {
                require_or_skip(Err(e));
                return;
            }
        };
        // The stub and every real driver name CUDA_ERROR_NO_DEVICE the same way.
        assert_eq!(
            error_text(driver, 100),
            "CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected"
        );
        assert_eq!(
            error_text(driver, 2),
            "CUDA_ERROR_OUT_OF_MEMORY: out of memory"
        );
        // A code no driver knows: the driver refuses to name it; we still say something.
        assert_eq!(error_text(driver, 123_456), "CUDA error 123456");
    }

    #[test]
    fn a_missing_driver_library_is_a_clear_error() {
        // What `open` says on a machine without the NVIDIA driver, whatever this one has.
        let library = "libtensor-fn-no-such-driver.so.1";
        let Err(m) = Driver::load(library) else {
            panic!("{library} loaded");
        };
        let reason = m
            .strip_prefix("no CUDA driver: libtensor-fn-no-such-driver.so.1 could not be loaded (")
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("{m}"));
        // The loader's own words (glibc: "NAME: cannot open shared object file: ...").
        assert!(reason.contains(library), "{m}");
    }

    #[test]
    #[cfg(target_env = "gnu")]
    fn a_library_without_the_driver_functions_is_a_clear_error() {
        // glibc's libc.so.6 loads, but has none of the driver's functions.
        let Err(m) = Driver::load("libc.so.6") else {
            panic!("libc.so.6 passed for a CUDA driver");
        };
        assert!(
            m.starts_with("no CUDA driver: libc.so.6 could not be loaded (")
                && m.ends_with("undefined symbol: cuGetErrorName)"),
            "{m}"
        );
    }

    #[test]
    fn kernel_names_come_from_entry_directives() {
        let (ptx, f32n, f64n) = add_module();
        let names: Vec<&str> = entry_names(&ptx).collect();
        assert_eq!(names, [f32n, f64n]);
        let text = ".visible .entry add_f32(\n\t.param .u64 x\n)\n\n.entry scale_f64(\n";
        assert_eq!(
            entry_names(text).collect::<Vec<_>>(),
            ["add_f32", "scale_f64"]
        );
        assert_eq!(entry_names(".entry").count(), 0);
        assert_eq!(
            entry_names(".visible .entry k_3f$a(\n").collect::<Vec<_>>(),
            ["k_3f$a"]
        );
    }

    #[test]
    fn driver_versions_read_as_major_minor() {
        assert_eq!(version_text(11080), "11.8");
        assert_eq!(version_text(12040), "12.4");
        assert_eq!(version_text(13000), "13.0");
        assert_eq!(version_text(11040), "11.4");
    }

    #[test]
    fn kernel_args_start_their_param_slots() {
        let bytes = |a: KernelArg| param_slot(&a).to_ne_bytes();
        assert_eq!(
            bytes(KernelArg::Ptr(0x1234_5678_9abc)),
            0x1234_5678_9abc_u64.to_ne_bytes()
        );
        assert_eq!(bytes(KernelArg::U32(7))[..4], 7u32.to_ne_bytes());
        assert_eq!(bytes(KernelArg::F32(1.5))[..4], 1.5f32.to_ne_bytes());
        assert_eq!(bytes(KernelArg::F64(-2.25)), (-2.25f64).to_ne_bytes());
    }

    #[test]
    fn the_gate_is_reentrant_and_exclusive() {
        let gate = Arc::new(Gate::default());
        let outer = gate.enter();
        let inner = gate.enter();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = {
            let gate = gate.clone();
            thread::spawn(move || {
                let _g = gate.enter();
                tx.send(()).unwrap();
            })
        };
        drop(inner);
        // Still held once by this thread: the other one must wait.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(50))
            .is_err());
        drop(outer);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the gate was released");
        other.join().unwrap();
    }

    // The tests below need a GPU: they skip without one, and fail under
    // TENSOR_FN_REQUIRE_GPU=1. The test command runs them on the emulated driver of
    // runtime/cuda-emu (the driver API on our PTX interpreter), a GPU machine on its GPU.

    #[test]
    fn gpu_streams_are_lent_through_their_device() {
        // Only a CUDA device has a stream to lend.
        let e = Device::PtxVm.cuda_stream_idle().unwrap_err();
        assert!(matches!(e, Error::Internal(_)), "{e:?}");
        let Some(gpu) = gpu() else { return };
        let (ptx, f32k, _) = add_module();
        let module = gpu.load_module(&ptx).unwrap();
        let p = upload_f32(&*gpu, &[1.0; 300]);
        let stream = Device::Cuda(0).with_cuda_stream(|s| s as usize).unwrap();
        assert_ne!(stream, 0);
        let args = [KernelArg::Ptr(p), KernelArg::F32(2.0), KernelArg::U32(300)];
        // SAFETY: the kernel takes (x, a, n) and touches x[0..300), all allocated.
        unsafe { gpu.launch(module, &f32k, [3, 1, 1], [128, 1, 1], &args) }.unwrap();
        // Polled, as a wait with a deadline does, until the launch finished.
        let start = std::time::Instant::now();
        while !Device::Cuda(0).cuda_stream_idle().unwrap() {
            assert!(start.elapsed().as_secs() < 60, "the stream never went idle");
            thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(download_f32(&*gpu, p, 300), vec![3.0; 300]);
        // SAFETY: from alloc, freed once, after the download waited for all work.
        unsafe { gpu.free(p) };
    }

    #[test]
    fn gpu_memory_round_trips() {
        let Some(gpu) = gpu() else { return };
        let values: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
        let a = upload_f32(&*gpu, &values);
        let b = gpu.alloc(4000).unwrap();
        // SAFETY: both allocations hold 4000 bytes and are distinct.
        unsafe { gpu.copy(b, a, 4000).unwrap() };
        assert_eq!(download_f32(&*gpu, b, 1000), values);
        // A download at an offset inside an allocation.
        assert_eq!(download_f32(&*gpu, a + 400, 10), &values[100..110]);
        gpu.synchronize().unwrap();
        // SAFETY: both came from alloc, are freed once, and the downloads waited for all work.
        unsafe {
            gpu.free(a);
            gpu.free(b);
        }
    }

    #[test]
    fn gpu_kernels_launch_with_every_arg_kind() {
        let Some(gpu) = gpu() else { return };
        let (ptx, add_f32, add_f64) = add_module();
        let m = gpu.load_module(&ptx).unwrap();
        assert_eq!(gpu.load_module(&ptx).unwrap(), m, "one module per PTX text");
        let n = 1000u32;
        let x = upload_f32(&*gpu, &vec![1.0; n as usize]);
        let args = [KernelArg::Ptr(x), KernelArg::F32(2.5), KernelArg::U32(n)];
        // SAFETY: the f32 kernel takes (u64, f32, u32) and touches x[0..n], all allocated.
        unsafe {
            gpu.launch(m, &add_f32, [4, 1, 1], [256, 1, 1], &args)
                .unwrap()
        };
        assert_eq!(download_f32(&*gpu, x, n as usize), vec![3.5; n as usize]);

        let y = gpu.alloc(8 * 3).unwrap();
        let input: Vec<u8> = [1.0f64, -2.0, 0.5]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let args = [KernelArg::Ptr(y), KernelArg::F64(3.0), KernelArg::U32(3)];
        let mut out = vec![0u8; 24];
        // SAFETY: y holds 3 doubles; the f64 kernel takes (u64, f64, u32) and touches y[0..3].
        unsafe {
            gpu.upload(y, &input).unwrap();
            gpu.launch(m, &add_f64, [1, 1, 1], [32, 1, 1], &args)
                .unwrap();
            gpu.download(y, &mut out).unwrap();
        }
        let out: Vec<f64> = out
            .chunks_exact(8)
            .map(|c| f64::from_ne_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(out, [4.0, 1.0, 3.5]);
        // SAFETY: allocated above, freed once, no work pending (the downloads waited).
        unsafe {
            gpu.free(x);
            gpu.free(y);
        }
    }

    #[test]
    fn gpu_graphs_replay_recorded_work() {
        let Some(gpu) = gpu() else { return };
        let (ptx, add_f32, _) = add_module();
        let m = gpu.load_module(&ptx).unwrap();
        let x = upload_f32(&*gpu, &[0.0; 64]);
        let y = gpu.alloc(64 * 4).unwrap();
        let args = [KernelArg::Ptr(x), KernelArg::F32(1.0), KernelArg::U32(64)];
        let mut record = || {
            // SAFETY: x and y hold 64 floats; the kernel takes (u64, f32, u32).
            unsafe {
                gpu.launch(m, &add_f32, [1, 1, 1], [64, 1, 1], &args)?;
                gpu.copy(y, x, 64 * 4)
            }
        };
        let graph = gpu.capture(&mut record).unwrap().expect("CUDA has graphs");
        // Recording ran nothing.
        assert_eq!(download_f32(&*gpu, x, 64), vec![0.0; 64]);
        for _ in 0..3 {
            // SAFETY: x and y are live.
            unsafe { gpu.replay(graph).unwrap() };
        }
        assert_eq!(download_f32(&*gpu, x, 64), vec![3.0; 64]);
        assert_eq!(download_f32(&*gpu, y, 64), vec![3.0; 64]);
        gpu.drop_graph(graph);
        // SAFETY: the graph is gone and the downloads waited for its work.
        let replayed = unsafe { gpu.replay(graph) };
        assert!(matches!(replayed, Err(Error::Internal(_))), "{replayed:?}");

        // A failing record ends the capture and leaves the stream usable.
        let mut failing = || -> Result<(), Error> {
            // SAFETY: as above.
            unsafe { gpu.launch(m, "no_such_kernel", [1, 1, 1], [1, 1, 1], &args) }
        };
        let e = gpu.capture(&mut failing).unwrap_err();
        assert!(e.to_string().contains("no_such_kernel"), "{e}");
        gpu.synchronize().unwrap();
        // SAFETY: allocated above, freed once, nothing pending.
        unsafe {
            gpu.free(x);
            gpu.free(y);
        }
    }

    #[test]
    fn gpu_captures_keep_other_threads_work_out() {
        // While one thread records a graph, another thread's upload, launch and download on
        // the same backend must wait for the recording to end: on the stream they would be
        // captured instead of run, and the upload's wait would fail the capture.
        if gpu().is_none() {
            return;
        }
        let b = CudaBackend::open(0).expect("a second backend on the device");
        let (ptx, add_f32, _) = add_module();
        let m = b.load_module(&ptx).unwrap();
        let x = upload_f32(&b, &[0.0; 64]);
        let z = b.alloc(64 * 4).unwrap();
        let mine = [KernelArg::Ptr(x), KernelArg::F32(1.0), KernelArg::U32(64)];
        let theirs = [KernelArg::Ptr(z), KernelArg::F32(1.0), KernelArg::U32(64)];
        let (b, add_f32) = (&b, add_f32.as_str());
        let (started, start) = std::sync::mpsc::channel();
        let (graph, other) = thread::scope(|scope| {
            let other = scope.spawn(move || -> Result<Vec<f32>, Error> {
                start.recv().expect("the capture began");
                let values: Vec<f32> = (0..64).map(|i| i as f32).collect();
                // SAFETY: z holds 64 floats; the kernel takes (u64, f32, u32).
                unsafe {
                    b.upload(z, &f32_bytes(&values))?;
                    b.launch(m, add_f32, [1, 1, 1], [64, 1, 1], &theirs)?;
                }
                let mut out = vec![0u8; 64 * 4];
                // SAFETY: z holds 64 floats.
                unsafe { b.download(z, &mut out)? };
                Ok(f32_values(&out))
            });
            let mut record = || {
                // SAFETY: x holds 64 floats; the kernel takes (u64, f32, u32).
                unsafe { b.launch(m, add_f32, [1, 1, 1], [64, 1, 1], &mine)? };
                started.send(()).expect("the other thread waits");
                // Until the other thread waits at the gate (or, were there no gate, is done).
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                while b.gate.waiting.load(Ordering::Relaxed) == 0
                    && !other.is_finished()
                    && std::time::Instant::now() < deadline
                {
                    thread::sleep(std::time::Duration::from_millis(1));
                }
                Ok(())
            };
            let graph = b.capture(&mut record);
            (graph, other.join().expect("no panic"))
        });
        let want: Vec<f32> = (0..64).map(|i| i as f32 + 1.0).collect();
        assert_eq!(other.expect("the other thread's work ran"), want);
        let graph = graph.expect("the capture held").expect("CUDA has graphs");
        assert_eq!(
            download_f32(b, x, 64),
            vec![0.0; 64],
            "recording ran nothing"
        );
        // SAFETY: x and z are live.
        unsafe { b.replay(graph).unwrap() };
        assert_eq!(download_f32(b, x, 64), vec![1.0; 64]);
        assert_eq!(
            download_f32(b, z, 64),
            want,
            "the graph holds only the recorded launch"
        );
        b.drop_graph(graph);
        // SAFETY: allocated above, freed once, nothing pending (the downloads waited).
        unsafe {
            b.free(x);
            b.free(z);
        }
    }

    #[test]
    fn gpu_failures_are_errors_not_panics() {
        let Some(gpu) = gpu() else { return };
        // 1 TiB: more than any GPU has.
        match gpu.alloc(1 << 40) {
            Err(Error::OutOfMemory { device, bytes }) => {
                assert_eq!((device.as_str(), bytes), ("cuda:0", 1 << 40));
            }
            other => panic!("expected OutOfMemory, found {other:?}"),
        }
        let e = gpu.load_module(".version 7.8\n.target sm_80\n.address_size 64\nnonsense;\n");
        match e {
            Err(Error::Gpu {
                device,
                op,
                message,
            }) => {
                assert_eq!(
                    (device.as_str(), op.as_str()),
                    ("cuda:0", "cuModuleLoadData")
                );
                assert!(message.starts_with("CUDA_ERROR_"), "{message}");
            }
            other => panic!("expected a Gpu error, found {other:?}"),
        }
        let (ptx, add_f32, _) = add_module();
        let m = gpu.load_module(&ptx).unwrap();
        // SAFETY: the kernel does not exist, so nothing runs.
        let e = unsafe { gpu.launch(m, "missing", [1, 1, 1], [1, 1, 1], &[]) }.unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cuda:0: cuModuleGetFunction missing failed: CUDA_ERROR_NOT_FOUND"),
            "{e}"
        );
        // A block larger than any GPU allows fails at launch, and the context stays usable.
        // SAFETY: the launch is rejected before anything runs.
        let e = unsafe {
            gpu.launch(
                m,
                &add_f32,
                [1, 1, 1],
                [4096, 1, 1],
                &[KernelArg::Ptr(0), KernelArg::F32(0.0), KernelArg::U32(0)],
            )
        }
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("cuLaunchKernel {add_f32} failed: CUDA_ERROR_")),
            "{e}"
        );
        gpu.synchronize().unwrap();
    }
}
