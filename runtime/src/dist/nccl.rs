//! The NCCL engine (cargo feature `nccl`): NVIDIA's `libnccl.so.2`, loaded at run time, one
//! GPU per process, bootstrapped through the MPI engine.
//!
//! Like the CUDA driver (`gpu/cuda.rs`) and Open MPI (`mpi.rs`), the library is `dlopen`ed,
//! not linked, so an `nccl` binary starts anywhere and says "no NCCL/GPU: ..." where the
//! library or the GPU is missing. The library is `TENSOR_FN_NCCL` when that is set (a full
//! path), else `libnccl.so.2` from the loader's search path: the system package, or the
//! `nvidia-nccl-cu13` pip wheel's `nvidia/nccl/lib` directory on `LD_LIBRARY_PATH`. The eight
//! functions we call have had their current C signatures since NCCL 2.4.
//!
//! The GPU is the CUDA backend's `cuda:L`, L the process's local rank on its machine, so NCCL
//! runs in the primary context where a model's buffers live, and its collectives go to the
//! backend's stream, ordered after the kernels that computed the gradients with no host
//! round trip in between.
//!
//! Setting up is collective and every rank must get through it together: a rank that entered
//! `ncclCommInitRank` while another had failed would wait there for ever. So each rank first
//! does what can fail locally (load the library, open the GPU, and on rank 0 make the unique
//! id), then all ranks agree through MPI that every one of them succeeded, and only then is
//! the id broadcast and the communicator made.
//!
//! NCCL's own calls return once the work is enqueued. A collective is then waited for by
//! polling the stream and `ncclCommGetAsyncError` against the communicator's deadline; past
//! it, `ncclCommAbort` stops the kernels that wait for a dead rank, and the communicator is
//! unusable from then on (as after any NCCL failure).

use std::any::TypeId;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::ptr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cust::sys::CUstream;

use super::mpi::{dl_error, Mpi};
use super::CommElem;
use crate::gpu::{Backend, DevPtr};
use crate::{Device, Error};

/// An NCCL status (`ncclResult_t`): 0 is success.
type NcclResult = c_int;

const NCCL_SUCCESS: NcclResult = 0;
/// `ncclInProgress`: a non-blocking operation has not finished yet (not an error).
const NCCL_IN_PROGRESS: NcclResult = 7;

/// `ncclDataType_t` values of the two element types we reduce.
const NCCL_FLOAT32: c_int = 7;
const NCCL_FLOAT64: c_int = 8;
/// `ncclRedOp_t`'s `ncclSum`.
const NCCL_SUM: c_int = 0;

/// Bytes of an `ncclUniqueId`.
const UNIQUE_ID_BYTES: usize = 128;

/// The library's file name: the SONAME of every NCCL 2 (the system package's and the pip
/// wheel's).
const LIBNCCL: &str = "libnccl.so.2";

/// The environment variable that names the library by its full path instead.
const LIBRARY_ENV: &str = "TENSOR_FN_NCCL";

/// An opaque `ncclComm_t`.
type CommHandle = *mut c_void;

/// `ncclUniqueId`: 128 bytes that rank 0 makes and every rank passes, by value, to
/// `ncclCommInitRank`. A C struct holding a `char` array is passed like one of its size, so a
/// `repr(C)` struct of bytes has its ABI.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [u8; UNIQUE_ID_BYTES],
}

const _: () = assert!(std::mem::size_of::<UniqueId>() == UNIQUE_ID_BYTES);

/// The NCCL functions we call, resolved from the library at run time. Each field's type is
/// the C prototype of `nccl.h`, with the enums (`ncclResult_t`, `ncclDataType_t`,
/// `ncclRedOp_t`) as the `int`s they are and `cudaStream_t` as the driver's `CUstream` (one
/// type).
struct Library {
    get_version: unsafe extern "C" fn(version: *mut c_int) -> NcclResult,
    get_unique_id: unsafe extern "C" fn(id: *mut UniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(
        comm: *mut CommHandle,
        nranks: c_int,
        id: UniqueId,
        rank: c_int,
    ) -> NcclResult,
    all_reduce: unsafe extern "C" fn(
        send: *const c_void,
        recv: *mut c_void,
        count: usize,
        datatype: c_int,
        op: c_int,
        comm: CommHandle,
        stream: CUstream,
    ) -> NcclResult,
    comm_get_async_error:
        unsafe extern "C" fn(comm: CommHandle, error: *mut NcclResult) -> NcclResult,
    comm_abort: unsafe extern "C" fn(comm: CommHandle) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(comm: CommHandle) -> NcclResult,
    get_error_string: unsafe extern "C" fn(result: NcclResult) -> *const c_char,
    /// `ncclGetLastError` (NCCL 2.13 and later), for the detail behind a code; optional.
    get_last_error: Option<unsafe extern "C" fn(comm: CommHandle) -> *const c_char>,
    /// `ncclGetVersion`'s answer.
    version: c_int,
}

/// Looks up `$name` in the live `dlopen` handle `$lib` as a function of type `$ty`, or returns
/// the `dlerror` text from the enclosing function.
macro_rules! resolve {
    ($lib:expr, $name:literal, $ty:ty) => {{
        let address = symbol($lib, concat!($name, "\0"))?;
        // SAFETY: `address` is the exported function `$name` of NCCL, and `$ty` is its C
        // prototype in `nccl.h` (see `Library`), so calling through it is a plain C call. Data
        // and function pointers have one size on every target NCCL exists for.
        unsafe { std::mem::transmute::<*mut c_void, $ty>(address) }
    }};
}

impl Library {
    /// Loads the library (`TENSOR_FN_NCCL`, else `libnccl.so.2`). `Err` is the whole message
    /// of the error, "no NCCL/GPU: ..." with the loader's reason and where to get NCCL.
    fn load() -> Result<Library, String> {
        match std::env::var(LIBRARY_ENV) {
            Ok(path) if !path.is_empty() => Library::load_from(&path, true),
            _ => Library::load_from(LIBNCCL, false),
        }
    }

    /// Loads `library` (`from_env`: it came from `TENSOR_FN_NCCL`) and resolves every function.
    fn load_from(library: &str, from_env: bool) -> Result<Library, String> {
        let fail = |why: String| load_error(library, from_env, &why);
        let name = CString::new(library).map_err(|_| fail("the name has a NUL byte".into()))?;
        // SAFETY: `name` is NUL-terminated and outlives the call; loading runs NCCL's
        // initialisers, which using it requires anyway. RTLD_LOCAL keeps its symbols to us.
        let lib = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if lib.is_null() {
            return Err(fail(dl_error()));
        }
        // The handle is never closed, on success or failure: NCCL starts threads that live on,
        // and a library that failed to resolve may be another loaded copy in use elsewhere.
        let mut table = Library::resolve(lib).map_err(fail)?;
        let mut version: c_int = 0;
        // SAFETY: writes one int into `version`, a live local.
        let status = unsafe { (table.get_version)(&mut version) };
        if status != NCCL_SUCCESS {
            return Err(fail(format!(
                "ncclGetVersion failed: {}",
                table.result_text(status, ptr::null_mut())
            )));
        }
        table.version = version;
        Ok(table)
    }

    fn resolve(lib: *mut c_void) -> Result<Library, String> {
        let get_last_error =
            symbol(lib, "ncclGetLastError\0").ok().map(|address| {
                // SAFETY: as in `resolve!`: `const char* ncclGetLastError(ncclComm_t comm)`.
                unsafe {
                    std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C" fn(CommHandle) -> *const c_char,
                    >(address)
                }
            });
        Ok(Library {
            get_version: resolve!(
                lib,
                "ncclGetVersion",
                unsafe extern "C" fn(*mut c_int) -> NcclResult
            ),
            get_unique_id: resolve!(
                lib,
                "ncclGetUniqueId",
                unsafe extern "C" fn(*mut UniqueId) -> NcclResult
            ),
            comm_init_rank: resolve!(
                lib,
                "ncclCommInitRank",
                unsafe extern "C" fn(*mut CommHandle, c_int, UniqueId, c_int) -> NcclResult
            ),
            all_reduce: resolve!(
                lib,
                "ncclAllReduce",
                unsafe extern "C" fn(
                    *const c_void,
                    *mut c_void,
                    usize,
                    c_int,
                    c_int,
                    CommHandle,
                    CUstream,
                ) -> NcclResult
            ),
            comm_get_async_error: resolve!(
                lib,
                "ncclCommGetAsyncError",
                unsafe extern "C" fn(CommHandle, *mut NcclResult) -> NcclResult
            ),
            comm_abort: resolve!(
                lib,
                "ncclCommAbort",
                unsafe extern "C" fn(CommHandle) -> NcclResult
            ),
            comm_destroy: resolve!(
                lib,
                "ncclCommDestroy",
                unsafe extern "C" fn(CommHandle) -> NcclResult
            ),
            get_error_string: resolve!(
                lib,
                "ncclGetErrorString",
                unsafe extern "C" fn(NcclResult) -> *const c_char
            ),
            get_last_error,
            version: 0,
        })
    }

    /// A status as NCCL words it, `unhandled system error (run with NCCL_DEBUG=INFO for
    /// details) (NCCL error 2)`, with the communicator's last error message when there is one
    /// (`comm` may be null).
    fn result_text(&self, status: NcclResult, comm: CommHandle) -> String {
        // SAFETY: ncclGetErrorString and ncclGetLastError return null or a NUL-terminated
        // string that NCCL keeps (static text, or the communicator's own buffer); it is copied
        // right here.
        let text = |s: *const c_char| unsafe {
            (!s.is_null())
                .then(|| CStr::from_ptr(s).to_string_lossy().trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        // SAFETY: takes a plain int; any value is allowed (unknown ones get a generic text).
        let mut message = text(unsafe { (self.get_error_string)(status) })
            .unwrap_or_else(|| "unknown error".into());
        message = format!("{message} (NCCL error {status})");
        if let Some(last) = self.get_last_error {
            // SAFETY: `comm` is null or a live communicator (the caller's contract); NCCL
            // answers null for the process-wide last error.
            if let Some(detail) = text(unsafe { last(comm) }) {
                message = format!("{message}: {detail}");
            }
        }
        message
    }
}

/// The message of a library that could not be loaded.
fn load_error(library: &str, from_env: bool, why: &str) -> String {
    if from_env {
        format!(
            "no NCCL/GPU: {library} (from {LIBRARY_ENV}) could not be loaded ({why}); \
             set {LIBRARY_ENV} to the full path of a libnccl.so.2, or unset it"
        )
    } else {
        format!(
            "no NCCL/GPU: {library} could not be loaded ({why}); get NCCL from the \
             `nvidia-nccl-cu13` pip wheel (`pip install nvidia-nccl-cu13`) and put its \
             `nvidia/nccl/lib` directory on LD_LIBRARY_PATH, or install the system package \
             (libnccl2), or set {LIBRARY_ENV} to the library's full path"
        )
    }
}

/// The address of `name` (NUL-terminated) in the live `dlopen` handle `lib`; `Err` is the
/// `dlerror` text.
fn symbol(lib: *mut c_void, name: &str) -> Result<*mut c_void, String> {
    // SAFETY: `lib` is a live handle and `name` is NUL-terminated. dlerror is read first to
    // clear an older failure, so the one after dlsym is dlsym's own.
    let address = unsafe {
        libc::dlerror();
        libc::dlsym(lib, name.as_ptr().cast())
    };
    if address.is_null() {
        let why = dl_error();
        let name = name.trim_end_matches('\0');
        Err(format!("no function `{name}`: {why}"))
    } else {
        Ok(address)
    }
}

/// An NCCL version code as people write it: 23206 is 2.32.6. (Up to 2.8 the code was
/// 1000 * major + 100 * minor + patch, 2708 for 2.7.8; since 2.9, 10000 * major + ....)
fn version_text(code: c_int) -> String {
    if code >= 10000 {
        format!("{}.{}.{}", code / 10000, code % 10000 / 100, code % 100)
    } else {
        format!("{}.{}.{}", code / 1000, code % 1000 / 100, code % 100)
    }
}

/// The `ncclDataType_t` of an element type (`f64` or `f32`).
fn datatype(f64: bool) -> c_int {
    if f64 {
        NCCL_FLOAT64
    } else {
        NCCL_FLOAT32
    }
}

/// The bytes of a buffer of `f32` or `f64` and whether they are `f64`s; `None` for another
/// element type (none implements [`CommElem`] today).
fn host_bytes<T: CommElem>(buf: &mut [T]) -> Option<(&mut [u8], bool)> {
    let f64 = if TypeId::of::<T>() == TypeId::of::<f64>() {
        true
    } else if TypeId::of::<T>() == TypeId::of::<f32>() {
        false
    } else {
        return None;
    };
    let len = std::mem::size_of_val(buf);
    // SAFETY: `T` is `f32` or `f64` (checked above), plain numbers without padding, so the
    // buffer is `len` initialized bytes, and any bytes written through the view are a valid
    // value of them; the view borrows `buf` exclusively for its lifetime.
    let bytes = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), len) };
    Some((bytes, f64))
}

/// The NCCL communicator of this process, with the MPI engine it was bootstrapped through
/// (which broadcasts and aborts for it).
pub(super) struct Nccl {
    /// The MPI job that bootstrapped NCCL; none in a world of one started without a launcher.
    mpi: Option<Mpi>,
    lib: Library,
    /// The communicator; null once aborted or destroyed (every later collective fails).
    comm: CommHandle,
    rank: usize,
    size: usize,
    /// `cuda:L`, L the local rank: where the communicator's work runs.
    device: Device,
    gpu: Arc<dyn Backend>,
    /// The device buffer host all-reduces are staged through, and its size in bytes; grown on
    /// demand, kept across calls so a training step allocates nothing.
    staging: Option<(DevPtr, usize)>,
}

// SAFETY: the communicator handle is used only through `&mut self`, one call at a time, and
// NCCL lets any thread use a communicator whose device's context is current, which every call
// ensures first (`with_cuda_stream`). The MPI engine is `Send` itself; the backend is
// `Send + Sync`.
unsafe impl Send for Nccl {}

impl fmt::Debug for Nccl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nccl")
            .field("version", &version_text(self.lib.version))
            .field("rank", &self.rank)
            .field("device", &self.gpu.describe())
            .field("aborted", &self.comm.is_null())
            .finish_non_exhaustive()
    }
}

impl Nccl {
    /// Loads `libnccl.so.2`, opens the CUDA device of this process's local rank and makes the
    /// NCCL communicator over every rank of `mpi`; rank 0's unique id reaches the others by
    /// MPI broadcast. Collective: every rank of the job must call it.
    pub(super) fn init(mut mpi: Option<Mpi>) -> Result<Nccl, Error> {
        let (rank, size, local) = mpi
            .as_ref()
            .map_or((0, 1, 0), |m| (m.rank(), m.size(), m.local_rank()));
        let timeout = super::timeout_from_env();
        let comm_error = |message: String| Error::Comm {
            rank: Some(rank),
            message,
        };
        let nranks = c_int::try_from(size)
            .map_err(|_| comm_error(format!("NCCL counts ranks in an int, not {size}")))?;

        let ready = prepare(rank, local);
        if size > 1 {
            // Every rank says whether it is ready; one that is not makes all of them stop
            // here, instead of the others waiting in ncclCommInitRank for it.
            let mut failed = [f64::from(u8::from(ready.is_err()))];
            if let Some(m) = mpi.as_mut() {
                m.all_reduce_sum(&mut failed, 0, timeout)?;
            }
            if ready.is_ok() && failed[0] > 0.0 {
                return Err(comm_error(format!(
                    "no NCCL/GPU: {} of {size} ranks could not set up NCCL (their errors say why)",
                    failed[0]
                )));
            }
        }
        let (lib, device, gpu, mut id) = ready.map_err(comm_error)?;
        if size > 1 {
            if let Some(m) = mpi.as_mut() {
                m.broadcast_bytes(&mut id.internal, 0, 0, timeout)?;
            }
        }

        let mut comm: CommHandle = ptr::null_mut();
        // Made with the device's context current: NCCL takes its device from it.
        let status = device.with_cuda_stream(|_| {
            // SAFETY: `comm` is a live local NCCL writes one handle into; `id` is rank 0's
            // unique id, the same on every rank; `0 <= rank < nranks` (MPI's).
            unsafe { (lib.comm_init_rank)(&mut comm, nranks, id, rank as c_int) }
        })?;
        if status != NCCL_SUCCESS || comm.is_null() {
            return Err(comm_error(format!(
                "ncclCommInitRank on {} failed: {}",
                gpu.describe(),
                lib.result_text(status, ptr::null_mut())
            )));
        }
        Ok(Nccl {
            mpi,
            lib,
            comm,
            rank,
            size,
            device,
            gpu,
            staging: None,
        })
    }

    pub(super) fn rank(&self) -> usize {
        self.rank
    }

    pub(super) fn size(&self) -> usize {
        self.size
    }

    /// The GPU this rank reduces on.
    pub(super) fn device(&self) -> Device {
        self.device
    }

    /// The MPI engine, for broadcasts.
    pub(super) fn mpi(&mut self) -> Option<&mut Mpi> {
        self.mpi.as_mut()
    }

    /// The MPI engine, for `abort` (which needs no exclusive access).
    pub(super) fn mpi_ref(&self) -> Option<&Mpi> {
        self.mpi.as_ref()
    }

    /// Sums `buf` over all ranks, in place: uploaded into a device buffer, reduced there by
    /// NCCL on the backend's stream and downloaded, all within `timeout`.
    pub(super) fn all_reduce_sum_host<T: CommElem>(
        &mut self,
        buf: &mut [T],
        call: u64,
        timeout: Duration,
    ) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        self.live_comm(call)?;
        let len = buf.len();
        let Some((bytes, f64)) = host_bytes(buf) else {
            return Err(Error::Internal(format!(
                "NCCL all-reduce of `{}` elements: only f32 and f64 are reduced",
                std::any::type_name::<T>()
            )));
        };
        let dev = self.staging(bytes.len())?;
        // SAFETY: `staging` made `dev` an allocation of at least `bytes.len()` bytes.
        unsafe { self.gpu.upload(dev, bytes)? };
        // SAFETY: `dev` holds `len` elements of the type `f64` says (just uploaded).
        unsafe { self.all_reduce_sum_device(dev, len, f64, call, timeout)? };
        // SAFETY: as for the upload; the all-reduce finished (waited for above).
        unsafe { self.gpu.download(dev, bytes) }
    }

    /// Sums the `len` elements (`f64`s, else `f32`s) at `ptr` over all ranks, in place, on the
    /// backend's stream (after the work queued there before, such as the kernels that computed
    /// them), and waits until it finished, at most `timeout`.
    ///
    /// # Safety
    /// `ptr .. ptr + len * element size` lies inside one live allocation of the CUDA backend
    /// of this communicator's device, and no other work uses it until this returns.
    pub(crate) unsafe fn all_reduce_sum_device(
        &mut self,
        ptr: DevPtr,
        len: usize,
        f64: bool,
        call: u64,
        timeout: Duration,
    ) -> Result<(), Error> {
        if len == 0 {
            return Ok(());
        }
        let comm = self.live_comm(call)?;
        let lib = &self.lib;
        let status = self.device.with_cuda_stream(|stream| {
            // SAFETY: in place (send and receive buffers equal), `len` elements of the
            // datatype at `ptr`, valid device memory of this context (the caller's contract);
            // `comm` is live and `stream` is the backend's, with its context current.
            unsafe {
                (lib.all_reduce)(
                    ptr as *const c_void,
                    ptr as *mut c_void,
                    len,
                    datatype(f64),
                    NCCL_SUM,
                    comm,
                    stream,
                )
            }
        })?;
        if status != NCCL_SUCCESS && status != NCCL_IN_PROGRESS {
            let message = format!(
                "all-reduce #{call}: ncclAllReduce failed: {}",
                self.lib.result_text(status, comm)
            );
            self.abort_comm();
            return Err(self.error(message));
        }
        self.wait(call, timeout)
    }

    /// Waits for the backend's stream, watching NCCL for asynchronous errors, until the
    /// deadline; then aborts the communicator.
    fn wait(&mut self, call: u64, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        // Spin briefly (the other ranks are usually close), then back off to a millisecond
        // between polls so a rank waiting for a slow one leaves its core to others.
        let mut pause = Duration::from_micros(5);
        loop {
            let idle = match self.device.cuda_stream_idle() {
                Ok(idle) => idle,
                Err(e) => {
                    self.abort_comm();
                    return Err(self.error(format!("all-reduce #{call}: {e}")));
                }
            };
            let mut async_error: NcclResult = NCCL_SUCCESS;
            // SAFETY: `comm` is live (we abort it only below, and then return); NCCL writes
            // one status into `async_error`, a live local.
            let status = unsafe { (self.lib.comm_get_async_error)(self.comm, &mut async_error) };
            let failed = [status, async_error]
                .into_iter()
                .find(|&s| s != NCCL_SUCCESS && s != NCCL_IN_PROGRESS);
            if let Some(status) = failed {
                let message = format!(
                    "all-reduce #{call}: NCCL failed: {}",
                    self.lib.result_text(status, self.comm)
                );
                self.abort_comm();
                return Err(self.error(message));
            }
            if idle {
                return Ok(());
            }
            let waited = start.elapsed();
            if waited >= timeout {
                self.abort_comm();
                // Which ranks are gone: the MPI side answers liveness checks meanwhile.
                let silent = self.mpi.as_mut().map_or(Vec::new(), |m| m.silent_ranks());
                return Err(Error::CommTimeout {
                    rank: self.rank,
                    op: "all-reduce",
                    call,
                    secs: (waited.as_secs_f64() * 10.0).round() / 10.0,
                    silent,
                });
            }
            if let Some(m) = self.mpi.as_mut() {
                m.answer_pings();
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// The communicator, or the error of using one that an earlier failure aborted.
    fn live_comm(&self, call: u64) -> Result<CommHandle, Error> {
        if self.comm.is_null() {
            Err(self.error(format!(
                "all-reduce #{call}: an earlier NCCL collective failed and aborted the \
                 communicator; the job cannot go on"
            )))
        } else {
            Ok(self.comm)
        }
    }

    /// Stops the communicator's pending work (kernels waiting for a dead rank) and frees it.
    /// Its buffers may have been in use by that work, so the staging buffer is leaked.
    fn abort_comm(&mut self) {
        let comm = std::mem::replace(&mut self.comm, ptr::null_mut());
        self.staging = None;
        if comm.is_null() {
            return;
        }
        let lib = &self.lib;
        // A failure leaves nothing to undo: the communicator is gone either way.
        let _ = self.device.with_cuda_stream(|_| {
            // SAFETY: `comm` was live and is aborted once (the field is null now).
            unsafe { (lib.comm_abort)(comm) }
        });
    }

    /// A device buffer of at least `bytes` bytes for staging host all-reduces.
    fn staging(&mut self, bytes: usize) -> Result<DevPtr, Error> {
        if let Some((ptr, size)) = self.staging {
            if size >= bytes {
                return Ok(ptr);
            }
            self.staging = None;
            // SAFETY: `ptr` came from this backend's alloc and is freed once (the field was
            // cleared); every collective that used it was waited for.
            unsafe { self.gpu.free(ptr) };
        }
        let ptr = self.gpu.alloc(bytes)?;
        self.staging = Some((ptr, bytes));
        Ok(ptr)
    }

    fn error(&self, message: String) -> Error {
        Error::Comm {
            rank: Some(self.rank),
            message,
        }
    }
}

/// What a rank sets up on its own before the collective part of [`Nccl::init`]: the library,
/// its device and backend, and (rank 0) the unique id, zero on the others until the broadcast.
/// `Err` is the message of the rank's error.
fn prepare(
    rank: usize,
    local: usize,
) -> Result<(Library, Device, Arc<dyn Backend>, UniqueId), String> {
    let lib = Library::load()?;
    let ordinal = device_ordinal(local, std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref())
        .ok_or_else(|| format!("no NCCL/GPU: local rank {local} has no CUDA device number"))?;
    let device = Device::Cuda(ordinal);
    let gpu = crate::gpu::backend(device).map_err(|e| {
        format!("no NCCL/GPU: local rank {local} runs on cuda:{ordinal}, which cannot be used: {e}")
    })?;
    let mut id = UniqueId {
        internal: [0; UNIQUE_ID_BYTES],
    };
    if rank == 0 {
        // SAFETY: NCCL writes one `ncclUniqueId` (128 bytes) into `id`, a live local.
        let status = unsafe { (lib.get_unique_id)(&mut id) };
        if status != NCCL_SUCCESS {
            return Err(format!(
                "ncclGetUniqueId failed: {}",
                lib.result_text(status, ptr::null_mut())
            ));
        }
    }
    Ok((lib, device, gpu, id))
}

/// The CUDA device of local rank `local`: `cuda:local`, except where `CUDA_VISIBLE_DEVICES`
/// (`visible`) lets the process see fewer devices than that, as launchers that give each rank
/// its own GPU do (Slurm's `--gpus-per-task=1` shows every rank one device, `cuda:0`): then
/// the local rank wraps around the visible ones.
fn device_ordinal(local: usize, visible: Option<&str>) -> Option<u32> {
    let count = visible.map_or(0, |v| v.split(',').filter(|d| !d.trim().is_empty()).count());
    let ordinal = if count > 0 { local % count } else { local };
    u32::try_from(ordinal).ok()
}

impl Drop for Nccl {
    fn drop(&mut self) {
        if self.comm.is_null() {
            return;
        }
        let (comm, lib) = (self.comm, &self.lib);
        // Failures are ignored: there is no one left to tell.
        let _ = self.device.with_cuda_stream(|_| {
            // SAFETY: `comm` is live and destroyed once; every collective on it was waited
            // for, so none is pending.
            unsafe { (lib.comm_destroy)(comm) }
        });
        self.comm = ptr::null_mut();
        if let Some((ptr, _)) = self.staging.take() {
            // SAFETY: from this backend's alloc, freed once, used by no pending work.
            unsafe { self.gpu.free(ptr) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_types_map_to_nccls_datatypes() {
        assert_eq!(datatype(false), 7, "ncclFloat32");
        assert_eq!(datatype(true), 8, "ncclFloat64");
        let mut a = [1.5f32, -2.0];
        let (bytes, f64) = host_bytes(&mut a).unwrap();
        assert_eq!((bytes.len(), f64), (8, false));
        assert_eq!(bytes[..4], 1.5f32.to_ne_bytes());
        let mut b = [0.25f64; 3];
        let (bytes, f64) = host_bytes(&mut b).unwrap();
        assert_eq!((bytes.len(), f64), (24, true));
        bytes[16..].copy_from_slice(&7.0f64.to_ne_bytes());
        assert_eq!(b, [0.25, 0.25, 7.0]);
    }

    #[test]
    fn local_ranks_pick_their_gpus() {
        assert_eq!(device_ordinal(3, None), Some(3));
        assert_eq!(device_ordinal(3, Some("")), Some(3));
        assert_eq!(device_ordinal(3, Some("0,1,2,3,4,5,6,7")), Some(3));
        // One GPU shown to each rank: every rank's is cuda:0.
        assert_eq!(device_ordinal(3, Some("5")), Some(0));
        assert_eq!(device_ordinal(3, Some("GPU-8a1c,GPU-77fe")), Some(1));
    }

    #[test]
    fn versions_read_as_people_write_them() {
        assert_eq!(version_text(23206), "2.32.6");
        assert_eq!(version_text(21903), "2.19.3");
        assert_eq!(version_text(2708), "2.7.8");
    }

    #[test]
    fn a_missing_library_says_where_to_get_nccl() {
        let Err(message) = Library::load_from("libnccl-absent.so.2", false) else {
            panic!("a library that does not exist loaded");
        };
        assert!(message.starts_with("no NCCL/GPU: "), "{message}");
        assert!(
            message.contains("libnccl-absent.so.2 could not be loaded ("),
            "{message}"
        );
        assert!(
            message.contains("cannot open shared object file"),
            "{message}"
        );
        for hint in [
            "nvidia-nccl-cu13",
            "nvidia/nccl/lib",
            "LD_LIBRARY_PATH",
            LIBRARY_ENV,
        ] {
            assert!(message.contains(hint), "no `{hint}` in: {message}");
        }
        let Err(message) = Library::load_from("/nonexistent/libnccl.so.2", true) else {
            panic!("a library that does not exist loaded");
        };
        assert!(
            message.starts_with("no NCCL/GPU: /nonexistent/libnccl.so.2 (from TENSOR_FN_NCCL)"),
            "{message}"
        );
    }

    #[test]
    fn a_library_without_nccl_is_a_clear_error() {
        // libm is on every Linux machine and has none of NCCL's functions.
        let Err(message) = Library::load_from("libm.so.6", false) else {
            panic!("libm loaded as NCCL");
        };
        assert!(
            message.starts_with(
                "no NCCL/GPU: libm.so.6 could not be loaded (no function `ncclGetVersion`"
            ),
            "{message}"
        );
    }

    /// Where the real library is at hand (`TENSOR_FN_NCCL`), the table resolves and its
    /// functions answer as `nccl.h` says, no GPU needed.
    #[test]
    fn the_real_library_resolves_when_present() {
        let Ok(path) = std::env::var(LIBRARY_ENV) else {
            eprintln!("skipped: {LIBRARY_ENV} is not set");
            return;
        };
        let lib = Library::load_from(&path, true).unwrap();
        assert!(lib.version >= 20400, "NCCL {}", version_text(lib.version));
        let text = lib.result_text(4, ptr::null_mut());
        assert!(
            text.contains("invalid argument") && text.contains("(NCCL error 4)"),
            "{text}"
        );
    }
}
