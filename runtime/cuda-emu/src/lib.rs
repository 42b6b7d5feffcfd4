//! An emulated NVIDIA driver: a `libcuda.so.1` that runs on the CPU what tensor-fn's CUDA
//! backend (`runtime/src/gpu/cuda.rs`) asks of a GPU, so that backend is tested, not only
//! compiled, on machines without one.
//!
//! `scripts/cuda-emu.sh DIR` builds it and installs it as `DIR/lib64/libcuda.so.1`; the test
//! command puts that directory on `LD_LIBRARY_PATH`, where the backend's `dlopen` finds it
//! before any real driver. Nothing else ever loads it: on a machine with a GPU the backend
//! finds NVIDIA's library as always.
//!
//! What it implements, with the driver's semantics (see [`driver`] and [`stream`]):
//! - init, the driver version (13.0), one device `cuda:0` (compute capability 9.0, 8 GiB) and
//!   its primary context, current per thread;
//! - memory: allocations are the PTX interpreter's bounds-checked buffers, copies check their
//!   ranges when queued;
//! - modules: PTX text parsed back by the kernel crate's parser (it reads what tensor-fn's PTX
//!   writer prints), kernels run by its interpreter, parameters read from the launch's
//!   parameter array by their declared types;
//! - streams: queued work runs in order on a worker thread, host memory of an async copy is
//!   read or written when the copy runs, `cuStreamSynchronize` waits;
//! - events, and stream capture into graphs that are instantiated and launched: captured work
//!   does not run until its graph is launched, and what the driver forbids during a capture
//!   (waiting for the capturing stream, calls that may synchronize under global capture, ending
//!   another thread's capture) fails and invalidates the capture as on the driver.
//!
//! A fault of queued work (an out-of-bounds access, a shared-memory race, a kernel that does
//! not end) loses the context as on a GPU: the interpreter's reason is printed to stderr and
//! every later call fails with the fault's code. `TENSOR_FN_CUDA_EMU_TRACE=1` prints every
//! call with its status.
//!
//! Every exported function is checked at compile time against NVIDIA's declaration of it in
//! `cuda.h`, as cust_raw's bindings have it: [`exports_match_cuda_h`].

#![deny(unsafe_op_in_unsafe_fn)]

mod driver;
mod status;
mod stream;
#[cfg(test)]
mod tests;

use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::OnceLock;

use cust_raw::CUresult::{self, *};
use cust_raw::{
    CUcontext, CUdevice, CUdevice_attribute, CUdeviceptr, CUevent, CUfunction, CUgraph,
    CUgraphExec, CUjit_option, CUmodule, CUstream, CUstreamCaptureMode, CUstreamCaptureStatus,
};
use tensor_fn_kernels::ptx::Type;
use tensor_fn_kernels::vm::Arg;

use driver::{driver, Result};

/// Runs one entry point: its status, `CUDA_ERROR_UNKNOWN` if it panicked (a bug here; a
/// panic must not unwind into C).
fn entry(name: &str, body: impl FnOnce() -> Result) -> CUresult {
    let status = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CUDA_SUCCESS,
        Ok(Err(code)) => code,
        Err(_) => {
            eprintln!("tensor-fn CUDA emulator: {name} panicked (a bug in the emulator)");
            CUDA_ERROR_UNKNOWN
        }
    };
    if trace() {
        eprintln!("tensor-fn CUDA emulator: {name} -> {status:?}");
    }
    status
}

fn trace() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("TENSOR_FN_CUDA_EMU_TRACE").is_ok_and(|v| v == "1"))
}

/// A handle as the driver hands it out: an opaque non-null pointer.
fn handle<T>(h: u64) -> *mut T {
    ptr::without_provenance_mut(h as usize)
}

/// The handle a pointer stands for.
fn id<T>(p: *mut T) -> u64 {
    p.addr() as u64
}

/// Writes `value` to a caller's out-parameter; a null one is `CUDA_ERROR_INVALID_VALUE`.
///
/// # Safety
/// `out` is null or valid for a write of `T` (the driver's contract for out-parameters).
unsafe fn put<T>(out: *mut T, value: T) -> Result {
    if out.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null, and valid for a write by the caller's contract.
    unsafe { out.write_unaligned(value) };
    Ok(())
}

/// The type of an argument in NVIDIA's declaration: the first type, or the second where the
/// export takes the raw integer behind an enum of the bindings (a newer driver's callers may
/// pass values that CUDA 11.4's enums lack, which Rust must not receive as those enums).
macro_rules! declared {
    ($ty:ty) => {
        $ty
    };
    ($ty:ty, $cuda:ty) => {
        $cuda
    };
}

/// Defines the exported entry points, each running its body through [`entry`], and
/// [`exports_match_cuda_h`], which fails to compile unless every export has the type of its
/// declaration in the bindings.
macro_rules! exports {
    ($(
        $(#[$doc:meta])*
        fn $name:ident($($arg:ident: $ty:ty $(as $cuda:ty)?),* $(,)?) $body:block
    )*) => {
        $(
            $(#[$doc])*
            ///
            /// # Safety
            /// The driver's contract for this function in `cuda.h`: pointers are null or valid
            /// for what the function reads and writes through them.
            #[no_mangle]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> CUresult {
                entry(stringify!($name), || $body)
            }
        )*

        /// Never called: assigning each binding of `cuda.h` and each export to the same
        /// function-pointer type makes a signature that differs a compile error. Where an
        /// export takes an enum's raw integer, the two types are checked to have one layout.
        #[allow(dead_code)]
        fn exports_match_cuda_h() {
            $(
                let _: unsafe extern "C" fn($(declared!($ty $(, $cuda)?)),*) -> CUresult =
                    cust_raw::$name;
                let _: unsafe extern "C" fn($($ty),*) -> CUresult = $name;
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

/// Reads the launch's arguments by the kernel's parameter types.
///
/// # Safety
/// `params` is null or holds one pointer per parameter, each valid for a read of the
/// parameter's size (the contract of `cuLaunchKernel`'s `kernelParams`).
unsafe fn read_args(types: &[Type], params: *mut *mut c_void) -> Result<Vec<Arg>> {
    if types.is_empty() {
        return Ok(Vec::new());
    }
    if params.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let mut args = Vec::with_capacity(types.len());
    for (i, ty) in types.iter().enumerate() {
        // SAFETY: `params` holds one pointer per parameter (the caller's contract).
        let p = unsafe { params.add(i).read() };
        if p.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `p` points to the parameter's value, as many bytes as its type has (the
        // caller's contract); the value is copied now, as the driver copies it at launch.
        let arg = unsafe {
            match ty {
                Type::U32 => Arg::U32(p.cast::<u32>().read_unaligned()),
                Type::U64 => Arg::U64(p.cast::<u64>().read_unaligned()),
                Type::F32 => Arg::F32(p.cast::<f32>().read_unaligned()),
                Type::F64 => Arg::F64(p.cast::<f64>().read_unaligned()),
                // Refused when the module was loaded.
                _ => return Err(CUDA_ERROR_NOT_SUPPORTED),
            }
        };
        args.push(arg);
    }
    Ok(args)
}

/// A JIT log buffer and its size, from `cuModuleLoadDataEx`'s options.
#[derive(Default)]
struct Log {
    buffer: Option<*mut c_char>,
    size: Option<usize>,
    /// Where the size option's value is, to write back the bytes used (the driver does).
    size_slot: Option<*mut *mut c_void>,
}

impl Log {
    /// Writes `text` (truncated, NUL-terminated) into the buffer, if one was given.
    ///
    /// # Safety
    /// The buffer holds `size` writable bytes and `size_slot` is a writable option value.
    unsafe fn write(&self, text: &str) {
        let (Some(buffer), Some(size)) = (self.buffer, self.size) else {
            return;
        };
        if buffer.is_null() || size == 0 {
            return;
        }
        let n = text.len().min(size - 1);
        // SAFETY: the buffer holds `size` bytes and `n + 1 <= size`.
        unsafe {
            ptr::copy_nonoverlapping(text.as_ptr().cast::<c_char>(), buffer, n);
            buffer.add(n).write(0);
            if let Some(slot) = self.size_slot {
                slot.write(ptr::without_provenance_mut(n + 1));
            }
        }
    }
}

exports! {
    /// The name of a status code (`CUDA_ERROR_OUT_OF_MEMORY`); an unknown code is
    /// `CUDA_ERROR_INVALID_VALUE` with a null string, as on the driver.
    fn cuGetErrorName(error: c_int as CUresult, text: *mut *const c_char) {
        let name = status::name(error);
        // SAFETY: `text` is null or writable (the contract).
        unsafe { put(text, name.unwrap_or(ptr::null())) }?;
        name.map(drop).ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    /// The description of a status code (`out of memory`).
    fn cuGetErrorString(error: c_int as CUresult, text: *mut *const c_char) {
        let description = status::text(error);
        // SAFETY: as above.
        unsafe { put(text, description.unwrap_or(ptr::null())) }?;
        description.map(drop).ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    fn cuInit(flags: c_uint) {
        driver().init(flags)
    }

    /// Works before `cuInit`, as on the driver.
    fn cuDriverGetVersion(version: *mut c_int) {
        // SAFETY: null or writable.
        unsafe { put(version, driver::DRIVER_VERSION) }
    }

    fn cuDeviceGetCount(count: *mut c_int) {
        let n = driver().device_count()?;
        // SAFETY: null or writable.
        unsafe { put(count, n) }
    }

    fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) {
        let d = driver().device(ordinal)?;
        // SAFETY: null or writable.
        unsafe { put(device, d) }
    }

    fn cuDeviceGetName(name: *mut c_char, len: c_int, device: CUdevice) {
        driver().check_device(device)?;
        let len = usize::try_from(len).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        if name.is_null() || len == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let text = driver::DEVICE_NAME.as_bytes();
        let n = text.len().min(len - 1);
        // SAFETY: `name` holds `len` writable bytes (the contract) and `n + 1 <= len`.
        unsafe {
            ptr::copy_nonoverlapping(text.as_ptr().cast::<c_char>(), name, n);
            name.add(n).write(0);
        }
        Ok(())
    }

    fn cuDeviceGetAttribute(value: *mut c_int, attribute: c_int as CUdevice_attribute, device: CUdevice) {
        let v = driver().attribute(attribute, device)?;
        // SAFETY: null or writable.
        unsafe { put(value, v) }
    }

    fn cuDeviceTotalMem_v2(bytes: *mut usize, device: CUdevice) {
        let total = driver().total_memory(device)?;
        // SAFETY: null or writable.
        unsafe { put(bytes, total) }
    }

    fn cuDevicePrimaryCtxRetain(context: *mut CUcontext, device: CUdevice) {
        if context.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let ctx = driver().retain_primary(device)?;
        // SAFETY: non-null and writable.
        unsafe { put(context, handle(ctx)) }
    }

    fn cuDevicePrimaryCtxRelease_v2(device: CUdevice) {
        driver().release_primary(device)
    }

    fn cuCtxSetCurrent(context: CUcontext) {
        driver().set_current(id(context))
    }

    fn cuCtxGetCurrent(context: *mut CUcontext) {
        let ctx = driver().current()?;
        // SAFETY: null or writable.
        unsafe { put(context, handle(ctx)) }
    }

    fn cuCtxSynchronize() {
        driver().synchronize_context()
    }

    fn cuStreamCreate(stream: *mut CUstream, flags: c_uint) {
        if stream.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let s = driver().create_stream(flags)?;
        // SAFETY: non-null and writable.
        unsafe { put(stream, handle(s)) }
    }

    fn cuStreamDestroy_v2(stream: CUstream) {
        driver().destroy_stream(id(stream))
    }

    fn cuStreamSynchronize(stream: CUstream) {
        driver().synchronize_stream(id(stream))
    }

    fn cuStreamQuery(stream: CUstream) {
        driver().query_stream(id(stream))
    }

    fn cuMemAlloc_v2(pointer: *mut CUdeviceptr, bytes: usize) {
        if pointer.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let p = driver().alloc(bytes)?;
        // SAFETY: non-null and writable.
        unsafe { put(pointer, p) }
    }

    fn cuMemFree_v2(pointer: CUdeviceptr) {
        driver().free(pointer)
    }

    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) {
        let (f, t) = driver().memory_info()?;
        // SAFETY: null or writable.
        unsafe {
            put(free, f)?;
            put(total, t)
        }
    }

    /// Queues the copy; the host bytes are read when it runs.
    fn cuMemcpyHtoDAsync_v2(dst: CUdeviceptr, src: *const c_void, bytes: usize, stream: CUstream) {
        driver().copy_to_device(dst, src.addr(), bytes, id(stream))
    }

    /// Queues the copy; the host bytes are written when it runs.
    fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: CUdeviceptr, bytes: usize, stream: CUstream) {
        driver().copy_to_host(dst.addr(), src, bytes, id(stream))
    }

    fn cuMemcpyDtoDAsync_v2(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize, stream: CUstream) {
        driver().copy_on_device(dst, src, bytes, id(stream))
    }

    /// Loads PTX text; its errors go to the `CU_JIT_ERROR_LOG_BUFFER` option's buffer.
    fn cuModuleLoadDataEx(
        module: *mut CUmodule,
        image: *const c_void,
        count: c_uint,
        options: *mut c_int as *mut CUjit_option,
        values: *mut *mut c_void,
    ) {
        if module.is_null() || image.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if count > 0 && (options.is_null() || values.is_null()) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let mut log = Log::default();
        for i in 0..count as usize {
            // SAFETY: `options` and `values` hold `count` entries (the contract).
            let (option, slot) = unsafe { (options.add(i).read(), values.add(i)) };
            // SAFETY: as above.
            let value = unsafe { slot.read() };
            match option {
                o if o == CUjit_option::CU_JIT_ERROR_LOG_BUFFER as c_int => {
                    log.buffer = Some(value.cast());
                }
                o if o == CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES as c_int => {
                    // A size is passed in the pointer-sized value itself.
                    log.size = Some(value.addr());
                    log.size_slot = Some(slot);
                }
                o if (0..CUjit_option::CU_JIT_NUM_OPTIONS as c_int).contains(&o) => {}
                _ => return Err(CUDA_ERROR_INVALID_VALUE),
            }
        }
        // SAFETY: the image of a PTX module is a NUL-terminated string (the contract).
        let text = unsafe { CStr::from_ptr(image.cast::<c_char>()) };
        match driver().load_module(text.to_bytes()) {
            Ok(m) => {
                // SAFETY: the error log buffer holds its announced size (the contract).
                unsafe { log.write("") };
                // SAFETY: non-null and writable.
                unsafe { put(module, handle(m)) }
            }
            Err((code, message)) => {
                // SAFETY: as above.
                unsafe { log.write(&format!("tensor-fn CUDA emulator: {message}")) };
                Err(code)
            }
        }
    }

    fn cuModuleUnload(module: CUmodule) {
        driver().unload_module(id(module))
    }

    fn cuModuleGetFunction(function: *mut CUfunction, module: CUmodule, name: *const c_char) {
        if function.is_null() || name.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `name` is a NUL-terminated string (the contract).
        let name = unsafe { CStr::from_ptr(name) };
        let f = driver().function(id(module), name.to_bytes())?;
        // SAFETY: non-null and writable.
        unsafe { put(function, handle(f)) }
    }

    /// Queues a launch; `kernelParams` is read now, by the kernel's parameter types. `extra`
    /// (arguments packed in one buffer) is not supported.
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
    ) {
        let d = driver();
        let types = d.parameters(id(function))?;
        if !extra.is_null() {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        // SAFETY: `params` holds a pointer per parameter of the kernel (the contract).
        let args = unsafe { read_args(&types, params) }?;
        d.launch(
            id(function),
            [grid_x, grid_y, grid_z],
            [block_x, block_y, block_z],
            shared_bytes,
            id(stream),
            args,
        )
    }

    fn cuStreamBeginCapture_v2(stream: CUstream, mode: c_int as CUstreamCaptureMode) {
        driver().begin_capture(id(stream), mode)
    }

    fn cuStreamEndCapture(stream: CUstream, graph: *mut CUgraph) {
        if graph.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let ended = driver().end_capture(id(stream));
        // SAFETY: non-null and writable; an invalidated capture gives no graph.
        unsafe { put(graph, ended.map_or(ptr::null_mut(), handle)) }?;
        ended.map(drop)
    }

    fn cuStreamIsCapturing(stream: CUstream, capture: *mut c_int as *mut CUstreamCaptureStatus) {
        let s = driver().capture_status(id(stream))?;
        // SAFETY: null or writable.
        unsafe { put(capture, s) }
    }

    fn cuGraphInstantiateWithFlags(exec: *mut CUgraphExec, graph: CUgraph, flags: c_ulonglong) {
        if exec.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let e = driver().instantiate(id(graph), flags)?;
        // SAFETY: non-null and writable.
        unsafe { put(exec, handle(e)) }
    }

    fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) {
        driver().launch_graph(id(exec), id(stream))
    }

    fn cuGraphExecDestroy(exec: CUgraphExec) {
        driver().destroy_exec(id(exec))
    }

    fn cuGraphDestroy(graph: CUgraph) {
        driver().destroy_graph(id(graph))
    }

    fn cuEventCreate(event: *mut CUevent, flags: c_uint) {
        if event.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let e = driver().create_event(flags)?;
        // SAFETY: non-null and writable.
        unsafe { put(event, handle(e)) }
    }

    fn cuEventRecord(event: CUevent, stream: CUstream) {
        driver().record_event(id(event), id(stream))
    }

    fn cuEventQuery(event: CUevent) {
        driver().query_event(id(event))
    }

    fn cuEventSynchronize(event: CUevent) {
        driver().synchronize_event(id(event))
    }

    fn cuEventElapsedTime(milliseconds: *mut f32, start: CUevent, end: CUevent) {
        let ms = driver().elapsed(id(start), id(end))?;
        // SAFETY: null or writable.
        unsafe { put(milliseconds, ms) }
    }

    fn cuEventDestroy_v2(event: CUevent) {
        driver().destroy_event(id(event))
    }
}
