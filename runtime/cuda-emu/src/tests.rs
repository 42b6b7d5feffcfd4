//! The emulated driver through its C entry points, as a program sees it.

use std::ffi::{c_void, CStr, CString};
use std::ptr::{self, null_mut};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tensor_fn_kernels::ptx::{Header, Kernel, Module, Type};
use tensor_fn_kernels::samples::add_scalar;

use super::*;

/// Tests share the process's one driver; each runs alone, in a fresh context.
static SERIAL: Mutex<()> = Mutex::new(());

#[track_caller]
fn ok(status: CUresult) {
    assert_eq!(status, CUDA_SUCCESS);
}

/// The primary context, retained and current on this thread, with a non-blocking stream;
/// released at the end, which destroys it (and a fault with it).
struct Ctx {
    stream: CUstream,
    _serial: MutexGuard<'static, ()>,
}

impl Ctx {
    fn new() -> Ctx {
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ctx: CUcontext = null_mut();
        let mut stream: CUstream = null_mut();
        // SAFETY: out-parameters are live locals.
        unsafe {
            ok(cuInit(0));
            ok(cuDevicePrimaryCtxRetain(&mut ctx, 0));
            ok(cuCtxSetCurrent(ctx));
            ok(cuStreamCreate(&mut stream, 1));
        }
        Ctx {
            stream,
            _serial: serial,
        }
    }

    fn alloc(&self, bytes: usize) -> CUdeviceptr {
        let mut p = 0;
        // SAFETY: `p` is a live local.
        ok(unsafe { cuMemAlloc_v2(&mut p, bytes) });
        p
    }

    /// A device copy of `values`.
    fn upload(&self, values: &[f32]) -> CUdeviceptr {
        let p = self.alloc(values.len() * 4);
        // SAFETY: `values` stays alive until the synchronize below.
        unsafe {
            ok(cuMemcpyHtoDAsync_v2(
                p,
                values.as_ptr().cast(),
                values.len() * 4,
                self.stream,
            ));
            ok(cuStreamSynchronize(self.stream));
        }
        p
    }

    fn download(&self, p: CUdeviceptr, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        // SAFETY: `out` holds `n` floats and stays alive until the synchronize below.
        unsafe {
            ok(cuMemcpyDtoHAsync_v2(
                out.as_mut_ptr().cast(),
                p,
                n * 4,
                self.stream,
            ));
            ok(cuStreamSynchronize(self.stream));
        }
        out
    }

    fn load(&self, kernels: &[Kernel]) -> CUmodule {
        let mut m = Module::default();
        for k in kernels {
            m.add(k.clone());
        }
        let text = CString::new(m.to_ptx()).unwrap();
        let mut module = null_mut();
        // SAFETY: `text` is NUL-terminated; no options.
        ok(unsafe {
            cuModuleLoadDataEx(&mut module, text.as_ptr().cast(), 0, null_mut(), null_mut())
        });
        module
    }

    fn function(&self, module: CUmodule, name: &str) -> CUfunction {
        let name = CString::new(name).unwrap();
        let mut f = null_mut();
        // SAFETY: `name` is NUL-terminated.
        ok(unsafe { cuModuleGetFunction(&mut f, module, name.as_ptr()) });
        f
    }

    /// The `x[i] += a` kernel of f32s, loaded.
    fn add_f32(&self) -> CUfunction {
        let k = add_scalar(Type::F32);
        let m = self.load(std::slice::from_ref(&k));
        self.function(m, &k.name)
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: no pointers.
        unsafe {
            cuDevicePrimaryCtxRelease_v2(0);
            cuCtxSetCurrent(null_mut());
        }
    }
}

/// Launches `x[i] += a` for `i < n` on `stream`.
fn add(
    f: CUfunction,
    stream: CUstream,
    x: CUdeviceptr,
    a: f32,
    n: u32,
    grid: u32,
    block: u32,
) -> CUresult {
    let (mut x, mut a, mut n) = (x, a, n);
    let mut params: [*mut c_void; 3] = [
        (&mut x as *mut u64).cast(),
        (&mut a as *mut f32).cast(),
        (&mut n as *mut u32).cast(),
    ];
    // SAFETY: one pointer per parameter, each to a value of the parameter's type.
    unsafe {
        cuLaunchKernel(
            f,
            grid,
            1,
            1,
            block,
            1,
            1,
            0,
            stream,
            params.as_mut_ptr(),
            null_mut(),
        )
    }
}

fn error_name(code: CUresult) -> String {
    let mut text = ptr::null();
    // SAFETY: `text` is a live local; on success it points to a static string.
    unsafe {
        ok(cuGetErrorName(code as i32, &mut text));
        CStr::from_ptr(text).to_string_lossy().into_owned()
    }
}

#[test]
fn the_device_answers_like_a_driver() {
    let _ctx = Ctx::new();
    let (mut version, mut count, mut device) = (0, 0, -1);
    let mut name = [0 as c_char; 64];
    let (mut major, mut minor, mut total) = (0, 0, 0usize);
    // SAFETY: out-parameters are live locals; `name` holds 64 bytes.
    unsafe {
        ok(cuDriverGetVersion(&mut version));
        ok(cuDeviceGetCount(&mut count));
        ok(cuDeviceGet(&mut device, 0));
        assert_eq!(cuDeviceGet(&mut device, 1), CUDA_ERROR_INVALID_DEVICE);
        ok(cuDeviceGetName(name.as_mut_ptr(), 64, 0));
        let cc = CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as c_int;
        ok(cuDeviceGetAttribute(&mut major, cc, 0));
        ok(cuDeviceGetAttribute(&mut minor, cc + 1, 0));
        ok(cuDeviceTotalMem_v2(&mut total, 0));
        assert_eq!(cuInit(1), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuDriverGetVersion(null_mut()), CUDA_ERROR_INVALID_VALUE);
    }
    assert_eq!((version, count, device, major, minor), (13000, 1, 0, 9, 0));
    assert_eq!(total, 8 << 30);
    // SAFETY: the driver wrote a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) };
    assert_eq!(
        name.to_str().unwrap(),
        "tensor-fn CUDA emulator (PTX interpreter)"
    );
    // A short buffer gets a truncated, terminated name.
    let mut short = [1 as c_char; 5];
    // SAFETY: `short` holds 5 bytes.
    ok(unsafe { cuDeviceGetName(short.as_mut_ptr(), 5, 0) });
    // SAFETY: terminated within its 5 bytes.
    assert_eq!(
        unsafe { CStr::from_ptr(short.as_ptr()) }.to_str().unwrap(),
        "tens"
    );
}

#[test]
fn status_codes_are_named_as_the_driver_names_them() {
    assert_eq!(
        error_name(CUDA_ERROR_OUT_OF_MEMORY),
        "CUDA_ERROR_OUT_OF_MEMORY"
    );
    let mut text = ptr::null();
    // SAFETY: `text` is a live local.
    unsafe {
        ok(cuGetErrorString(100, &mut text));
        assert_eq!(
            CStr::from_ptr(text).to_str().unwrap(),
            "no CUDA-capable device is detected"
        );
        // A code no driver knows: refused, with a null string.
        assert_eq!(cuGetErrorName(123_456, &mut text), CUDA_ERROR_INVALID_VALUE);
        assert!(text.is_null());
        assert_eq!(cuGetErrorString(-1, &mut text), CUDA_ERROR_INVALID_VALUE);
    }
}

#[test]
fn calls_need_a_current_context() {
    let ctx = Ctx::new();
    let mut p = 0;
    // SAFETY: out-parameters are live locals.
    unsafe {
        ok(cuCtxSetCurrent(null_mut()));
        assert_eq!(cuMemAlloc_v2(&mut p, 64), CUDA_ERROR_INVALID_CONTEXT);
        assert_eq!(cuStreamSynchronize(ctx.stream), CUDA_ERROR_INVALID_CONTEXT);
        assert_eq!(cuCtxSetCurrent(handle(0xdead)), CUDA_ERROR_INVALID_CONTEXT);
        let mut current = handle(1);
        ok(cuCtxGetCurrent(&mut current));
        assert!(current.is_null());
        ok(cuCtxSetCurrent(handle(driver::PRIMARY_CONTEXT)));
        ok(cuMemAlloc_v2(&mut p, 64));
    }
    // Another thread has no current context until it sets one.
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut q = 0;
            // SAFETY: as above.
            unsafe {
                assert_eq!(cuMemAlloc_v2(&mut q, 64), CUDA_ERROR_INVALID_CONTEXT);
                ok(cuCtxSetCurrent(handle(driver::PRIMARY_CONTEXT)));
                ok(cuMemAlloc_v2(&mut q, 64));
            }
        });
    });
}

#[test]
fn memory_is_checked_and_copies_round_trip() {
    let ctx = Ctx::new();
    let values: Vec<f32> = (0..100).map(|i| i as f32).collect();
    let a = ctx.upload(&values);
    let b = ctx.alloc(400);
    let (mut free, mut total) = (0, 0);
    // SAFETY: ranges lie in the allocations above; out-parameters are live locals.
    unsafe {
        ok(cuMemcpyDtoDAsync_v2(b, a, 400, ctx.stream));
        ok(cuMemGetInfo_v2(&mut free, &mut total));
        // Out of an allocation, overlapping, or empty: refused when queued.
        assert_eq!(
            cuMemcpyDtoDAsync_v2(b, a, 404, ctx.stream),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(
            cuMemcpyDtoDAsync_v2(a + 4, a, 8, ctx.stream),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(
            cuMemcpyHtoDAsync_v2(b + 396, values.as_ptr().cast(), 8, ctx.stream),
            CUDA_ERROR_INVALID_VALUE
        );
        let mut p = 0;
        assert_eq!(cuMemAlloc_v2(&mut p, 0), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuMemAlloc_v2(&mut p, 1 << 40), CUDA_ERROR_OUT_OF_MEMORY);
        assert_eq!(cuMemFree_v2(a + 4), CUDA_ERROR_INVALID_VALUE);
    }
    assert_eq!(total, 8 << 30);
    assert_eq!(free, total - 800);
    assert_eq!(ctx.download(b, 100), values);
    assert_eq!(ctx.download(b + 40, 3), [10.0, 11.0, 12.0]);
    // SAFETY: both came from cuMemAlloc.
    unsafe {
        ok(cuMemFree_v2(a));
        assert_eq!(cuMemFree_v2(a), CUDA_ERROR_INVALID_VALUE, "freed twice");
        ok(cuMemFree_v2(b));
    }
}

#[test]
fn async_copies_touch_host_memory_when_they_run() {
    let ctx = Ctx::new();
    let p = ctx.upload(&[0.0; 4]);
    let mut host = [1.0f32, 2.0, 3.0, 4.0];
    let mut back = [0.0f32; 4];
    // Both arrays are only touched through these pointers until the stream was waited for.
    let (h, b) = (host.as_mut_ptr(), back.as_mut_ptr());
    // SAFETY: `host` and `back` outlive the synchronize below.
    unsafe {
        driver().hold_stream(id(ctx.stream), true).unwrap();
        ok(cuMemcpyHtoDAsync_v2(p, h.cast(), 16, ctx.stream));
        ok(cuMemcpyDtoHAsync_v2(b.cast(), p, 16, ctx.stream));
        // Queued, not run: the caller must not count on either copy yet.
        assert_eq!(cuStreamQuery(ctx.stream), CUDA_ERROR_NOT_READY);
        h.write(10.0);
        assert_eq!(b.read(), 0.0, "a copy ran before the stream was waited for");
        ok(cuStreamSynchronize(ctx.stream));
        ok(cuStreamQuery(ctx.stream));
    }
    driver().hold_stream(id(ctx.stream), false).unwrap();
    assert_eq!(
        back,
        [10.0, 2.0, 3.0, 4.0],
        "the host bytes are read when the copy runs"
    );
}

#[test]
fn kernels_run_in_stream_order_with_their_arguments() {
    let ctx = Ctx::new();
    let f = ctx.add_f32();
    let x = ctx.upload(&vec![1.0; 600]);
    let y = ctx.alloc(600 * 4);
    // SAFETY: x and y hold 600 floats; the kernel touches x[0..n].
    unsafe {
        ok(add(f, ctx.stream, x, 2.5, 600, 3, 256));
        ok(cuMemcpyDtoDAsync_v2(y, x, 600 * 4, ctx.stream));
        ok(add(f, ctx.stream, x, 1.0, 500, 2, 256));
    }
    let xs = ctx.download(x, 600);
    assert_eq!(&xs[..500], &[4.5; 500][..]);
    assert_eq!(&xs[500..], &[3.5; 100][..]);
    assert_eq!(
        ctx.download(y, 600),
        vec![3.5; 600],
        "the copy ran between the launches"
    );

    // An f64 kernel reads 8-byte arguments.
    let k = add_scalar(Type::F64);
    let m = ctx.load(std::slice::from_ref(&k));
    let g = ctx.function(m, &k.name);
    let z = ctx.alloc(16);
    let input = [1.5f64, -2.0];
    let mut out = [0f64; 2];
    let (mut zp, mut a, mut n) = (z, 0.25f64, 2u32);
    let mut params: [*mut c_void; 3] = [
        (&mut zp as *mut u64).cast(),
        (&mut a as *mut f64).cast(),
        (&mut n as *mut u32).cast(),
    ];
    // SAFETY: z holds 2 doubles; one pointer per parameter of matching type.
    unsafe {
        ok(cuMemcpyHtoDAsync_v2(
            z,
            input.as_ptr().cast(),
            16,
            ctx.stream,
        ));
        ok(cuLaunchKernel(
            g,
            1,
            1,
            1,
            32,
            1,
            1,
            0,
            ctx.stream,
            params.as_mut_ptr(),
            null_mut(),
        ));
        ok(cuMemcpyDtoHAsync_v2(
            out.as_mut_ptr().cast(),
            z,
            16,
            ctx.stream,
        ));
        ok(cuStreamSynchronize(ctx.stream));
    }
    assert_eq!(out, [1.75, -1.75]);
}

#[test]
fn launches_are_checked_before_they_are_queued() {
    let ctx = Ctx::new();
    let f = ctx.add_f32();
    let x = ctx.upload(&[0.0; 8]);
    // SAFETY: every launch here is refused before anything runs.
    unsafe {
        // Blocks beyond the device's limits or the kernel's .maxntid, empty grids.
        assert_eq!(
            add(f, ctx.stream, x, 1.0, 8, 1, 2048),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(
            add(f, ctx.stream, x, 1.0, 8, 1, 512),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(
            add(f, ctx.stream, x, 1.0, 8, 0, 32),
            CUDA_ERROR_INVALID_VALUE
        );
        // Missing arguments, packed arguments, unknown handles.
        let none = cuLaunchKernel(f, 1, 1, 1, 32, 1, 1, 0, ctx.stream, null_mut(), null_mut());
        assert_eq!(none, CUDA_ERROR_INVALID_VALUE);
        let mut extra = [null_mut::<c_void>(); 1];
        let packed = cuLaunchKernel(
            f,
            1,
            1,
            1,
            32,
            1,
            1,
            0,
            ctx.stream,
            null_mut(),
            extra.as_mut_ptr(),
        );
        assert_eq!(packed, CUDA_ERROR_NOT_SUPPORTED);
        assert_eq!(
            add(handle(0x77), ctx.stream, x, 1.0, 8, 1, 32),
            CUDA_ERROR_INVALID_HANDLE
        );
        assert_eq!(
            add(f, handle(0x77), x, 1.0, 8, 1, 32),
            CUDA_ERROR_INVALID_HANDLE
        );
        ok(cuStreamSynchronize(ctx.stream));
    }
    assert_eq!(ctx.download(x, 8), [0.0; 8], "nothing ran");
}

#[test]
fn modules_load_what_the_writer_prints_and_say_why_not() {
    let ctx = Ctx::new();
    let k = add_scalar(Type::F32);
    let m = ctx.load(std::slice::from_ref(&k));
    let missing = CString::new("missing").unwrap();
    let mut f = null_mut();
    // SAFETY: `missing` is NUL-terminated.
    unsafe {
        assert_eq!(
            cuModuleGetFunction(&mut f, m, missing.as_ptr()),
            CUDA_ERROR_NOT_FOUND
        );
        ok(cuModuleUnload(m));
        assert_eq!(cuModuleUnload(m), CUDA_ERROR_INVALID_HANDLE);
    }

    let load = |text: &str| {
        let text = CString::new(text).unwrap();
        let mut log = vec![0u8; 256];
        let mut options = [
            CUjit_option::CU_JIT_ERROR_LOG_BUFFER as c_int,
            CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES as c_int,
        ];
        let mut values = [
            log.as_mut_ptr().cast::<c_void>(),
            ptr::without_provenance_mut(log.len()),
        ];
        let mut module = null_mut();
        // SAFETY: two options with two values; the log buffer holds the size announced.
        let status = unsafe {
            cuModuleLoadDataEx(
                &mut module,
                text.as_ptr().cast(),
                2,
                options.as_mut_ptr(),
                values.as_mut_ptr(),
            )
        };
        let end = log.iter().position(|&b| b == 0).unwrap();
        (status, String::from_utf8_lossy(&log[..end]).into_owned())
    };
    let (status, log) = load(".version 7.8\n.target sm_80\n.address_size 64\nnonsense;\n");
    assert_eq!(status, CUDA_ERROR_INVALID_PTX);
    assert!(
        log.starts_with("tensor-fn CUDA emulator: ptx input, line "),
        "{log}"
    );
    let mut newer = Module::new(Header::new((8, 0), 100, 64).unwrap());
    newer.add(k);
    let (status, log) = load(&newer.to_ptx());
    assert_eq!(status, CUDA_ERROR_NO_BINARY_FOR_GPU, "{log}");
    assert!(log.contains("sm_100"), "{log}");
}

#[test]
fn captured_work_runs_only_when_its_graph_is_launched() {
    let ctx = Ctx::new();
    let f = ctx.add_f32();
    let x = ctx.upload(&[0.0; 64]);
    let y = ctx.alloc(256);
    let mut graph = null_mut();
    let mut exec = null_mut();
    let mut status = -1;
    let relaxed = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED as c_int;
    // SAFETY: x and y hold 64 floats.
    unsafe {
        ok(cuStreamBeginCapture_v2(ctx.stream, relaxed));
        assert_eq!(
            cuStreamBeginCapture_v2(ctx.stream, relaxed),
            CUDA_ERROR_ILLEGAL_STATE
        );
        ok(cuStreamIsCapturing(ctx.stream, &mut status));
        assert_eq!(status, 1);
        ok(add(f, ctx.stream, x, 1.0, 64, 1, 64));
        ok(cuMemcpyDtoDAsync_v2(y, x, 256, ctx.stream));
        ok(cuStreamEndCapture(ctx.stream, &mut graph));
        assert!(!graph.is_null());
        assert_eq!(
            cuStreamEndCapture(ctx.stream, &mut graph),
            CUDA_ERROR_ILLEGAL_STATE
        );
        assert!(graph.is_null());
    }
    assert_eq!(ctx.download(x, 64), vec![0.0; 64], "capturing ran the work");
    // SAFETY: the graph touches x and y, both live.
    unsafe {
        let mut g = null_mut();
        ok(cuStreamBeginCapture_v2(ctx.stream, relaxed));
        ok(add(f, ctx.stream, x, 1.0, 64, 1, 64));
        ok(cuMemcpyDtoDAsync_v2(y, x, 256, ctx.stream));
        ok(cuStreamEndCapture(ctx.stream, &mut g));
        ok(cuGraphInstantiateWithFlags(&mut exec, g, 0));
        ok(cuGraphDestroy(g));
        let mut again = null_mut();
        assert_eq!(
            cuGraphInstantiateWithFlags(&mut again, g, 0),
            CUDA_ERROR_INVALID_HANDLE
        );
        // The executable graph outlives the graph it was made from.
        ok(cuGraphLaunch(exec, ctx.stream));
        ok(cuGraphExecDestroy(exec));
    }
    assert_eq!(ctx.download(y, 64), vec![1.0; 64]);
    // SAFETY: as above.
    unsafe {
        let mut g = null_mut();
        ok(cuStreamBeginCapture_v2(ctx.stream, relaxed));
        ok(add(f, ctx.stream, x, 1.0, 64, 1, 64));
        ok(cuMemcpyDtoDAsync_v2(y, x, 256, ctx.stream));
        ok(cuStreamEndCapture(ctx.stream, &mut g));
        ok(cuGraphInstantiateWithFlags(&mut exec, g, 0));
        assert_eq!(
            cuGraphInstantiateWithFlags(&mut exec, g, 2),
            CUDA_ERROR_INVALID_VALUE
        );
        for _ in 0..3 {
            ok(cuGraphLaunch(exec, ctx.stream));
        }
        ok(cuGraphExecDestroy(exec));
        assert_eq!(cuGraphLaunch(exec, ctx.stream), CUDA_ERROR_INVALID_HANDLE);
    }
    assert_eq!(ctx.download(x, 64), vec![4.0; 64]);
    assert_eq!(ctx.download(y, 64), vec![4.0; 64]);
}

#[test]
fn what_a_capture_forbids_fails_and_invalidates_it() {
    let ctx = Ctx::new();
    let x = ctx.upload(&[0.0; 4]);
    let global = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL as c_int;
    let thread_local = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL as c_int;
    let relaxed = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED as c_int;
    let mut graph = null_mut();
    let mut status = -1;
    let mut p = 0;
    let s = ctx.stream;
    // SAFETY: out-parameters are live locals; no work touches memory.
    unsafe {
        // Waiting for (or querying) the capturing stream.
        ok(cuStreamBeginCapture_v2(s, global));
        assert_eq!(
            cuStreamSynchronize(s),
            CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
        );
        ok(cuStreamIsCapturing(s, &mut status));
        assert_eq!(status, 2, "invalidated");
        assert_eq!(
            cuStreamEndCapture(s, &mut graph),
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        );
        assert!(graph.is_null());
        ok(cuStreamBeginCapture_v2(s, relaxed));
        assert_eq!(cuStreamQuery(s), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        assert_eq!(
            cuStreamEndCapture(s, &mut graph),
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        );

        // Calls that may synchronize: refused under a global capture of this thread...
        ok(cuStreamBeginCapture_v2(s, global));
        assert_eq!(
            cuMemAlloc_v2(&mut p, 64),
            CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
        );
        assert_eq!(cuCtxSynchronize(), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        assert_eq!(
            cuStreamEndCapture(s, &mut graph),
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        );
        // ...allowed under a relaxed one.
        ok(cuStreamBeginCapture_v2(s, relaxed));
        ok(cuMemAlloc_v2(&mut p, 64));
        ok(cuStreamEndCapture(s, &mut graph));
        ok(cuGraphDestroy(graph));

        // The legacy stream cannot be captured; modes are checked.
        assert_eq!(
            cuStreamBeginCapture_v2(null_mut(), relaxed),
            CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
        );
        assert_eq!(cuStreamBeginCapture_v2(s, 7), CUDA_ERROR_INVALID_VALUE);
    }

    // Another thread: a global capture here forbids its allocations, a thread-local one
    // does not; and only a relaxed capture may be ended by another thread.
    let other = |f: &(dyn Fn() -> CUresult + Sync)| {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    // SAFETY: no pointers.
                    ok(unsafe { cuCtxSetCurrent(handle(driver::PRIMARY_CONTEXT)) });
                    f()
                })
                .join()
                .unwrap()
        })
    };
    let alloc = || {
        let mut q = 0;
        // SAFETY: `q` is a live local.
        unsafe { cuMemAlloc_v2(&mut q, 64) }
    };
    let s_id = id(s);
    let end = move || {
        let mut g = null_mut();
        // SAFETY: `g` is a live local.
        let status = unsafe { cuStreamEndCapture(handle(s_id), &mut g) };
        if !g.is_null() {
            // SAFETY: a graph just made.
            unsafe { cuGraphDestroy(g) };
        }
        status
    };
    // SAFETY: as above.
    unsafe {
        ok(cuStreamBeginCapture_v2(s, global));
        assert_eq!(other(&alloc), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        assert_eq!(other(&end), CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD);
        assert_eq!(
            cuStreamEndCapture(s, &mut graph),
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        );
        ok(cuStreamBeginCapture_v2(s, thread_local));
        ok(other(&alloc));
        ok(cuStreamEndCapture(s, &mut graph));
        ok(cuGraphDestroy(graph));
        ok(cuStreamBeginCapture_v2(s, relaxed));
        ok(other(&end));
    }
    // Nothing captured ever ran, and the stream works normally after all of it.
    assert_eq!(ctx.download(x, 4), [0.0; 4]);
}

#[test]
fn work_queued_by_another_thread_during_a_capture_lands_in_the_graph() {
    // What a backend's lock around its captures must prevent: the stream, not the thread,
    // is what is captured.
    let ctx = Ctx::new();
    let f = ctx.add_f32();
    let x = ctx.upload(&[0.0; 32]);
    let relaxed = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED as c_int;
    let (s, xf) = (id(ctx.stream), id(f));
    let mut graph = null_mut();
    // SAFETY: x holds 32 floats.
    unsafe {
        ok(cuStreamBeginCapture_v2(ctx.stream, relaxed));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                ok(cuCtxSetCurrent(handle(driver::PRIMARY_CONTEXT)));
                ok(add(handle(xf), handle(s), x, 5.0, 32, 1, 32));
                // The other thread cannot wait for its work either.
                assert_eq!(
                    cuStreamSynchronize(handle(s)),
                    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED
                );
            });
        });
        assert_eq!(
            cuStreamEndCapture(ctx.stream, &mut graph),
            CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        );
    }
    assert_eq!(
        ctx.download(x, 32),
        vec![0.0; 32],
        "the other thread's launch was captured"
    );
}

#[test]
fn events_mark_points_in_a_stream() {
    let ctx = Ctx::new();
    let (mut a, mut b, mut untimed) = (null_mut(), null_mut(), null_mut());
    let mut ms = -1.0f32;
    let mut graph = null_mut();
    let relaxed = CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED as c_int;
    // SAFETY: out-parameters are live locals.
    unsafe {
        ok(cuEventCreate(&mut a, 0));
        ok(cuEventCreate(&mut b, 0));
        ok(cuEventCreate(&mut untimed, 2));
        assert_eq!(cuEventCreate(&mut a, 64), CUDA_ERROR_INVALID_VALUE);
        driver().hold_stream(id(ctx.stream), true).unwrap();
        ok(cuEventRecord(a, ctx.stream));
        ok(cuEventRecord(b, ctx.stream));
        ok(cuEventRecord(untimed, ctx.stream));
        assert_eq!(cuEventQuery(b), CUDA_ERROR_NOT_READY);
        assert_eq!(cuEventElapsedTime(&mut ms, a, b), CUDA_ERROR_NOT_READY);
        ok(cuEventSynchronize(b));
        ok(cuEventSynchronize(untimed));
        ok(cuEventQuery(b));
        ok(cuEventElapsedTime(&mut ms, a, b));
        assert!((0.0..1000.0).contains(&ms), "{ms}");
        assert_eq!(
            cuEventElapsedTime(&mut ms, a, untimed),
            CUDA_ERROR_INVALID_HANDLE
        );
        // An event recorded in a capturing stream cannot be waited for.
        ok(cuStreamBeginCapture_v2(ctx.stream, relaxed));
        ok(cuEventRecord(a, ctx.stream));
        assert_eq!(cuEventQuery(a), CUDA_ERROR_CAPTURED_EVENT);
        assert_eq!(cuEventSynchronize(a), CUDA_ERROR_CAPTURED_EVENT);
        ok(cuStreamEndCapture(ctx.stream, &mut graph));
        ok(cuGraphDestroy(graph));
        ok(cuEventDestroy_v2(a));
        assert_eq!(cuEventQuery(a), CUDA_ERROR_INVALID_HANDLE);
    }
    driver().hold_stream(id(ctx.stream), false).unwrap();
}

#[test]
fn a_faulting_kernel_loses_the_context_until_it_is_made_anew() {
    let ctx = Ctx::new();
    let f = ctx.add_f32();
    let x = ctx.upload(&[0.0; 8]);
    let mut p = 0;
    // SAFETY: the launch reads past x on purpose: the interpreter checks every access.
    unsafe {
        ok(add(f, ctx.stream, x, 1.0, 64, 1, 64));
        assert_eq!(cuStreamSynchronize(ctx.stream), CUDA_ERROR_ILLEGAL_ADDRESS);
        assert_eq!(cuMemAlloc_v2(&mut p, 64), CUDA_ERROR_ILLEGAL_ADDRESS);
        assert_eq!(cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
    }
    drop(ctx);
    // A fresh context works.
    let ctx = Ctx::new();
    let y = ctx.upload(&[1.0, 2.0]);
    assert_eq!(ctx.download(y, 2), [1.0, 2.0]);
}

#[test]
fn destroyed_streams_finish_their_work() {
    let ctx = Ctx::new();
    let f = ctx.add_f32();
    let x = ctx.upload(&[0.0; 16]);
    let mut s = null_mut();
    // SAFETY: x holds 16 floats.
    unsafe {
        ok(cuStreamCreate(&mut s, 0));
        assert_eq!(cuStreamCreate(&mut s, 8), CUDA_ERROR_INVALID_VALUE);
        ok(cuStreamCreate(&mut s, 0));
        ok(add(f, s, x, 2.0, 16, 1, 16));
        ok(cuStreamDestroy_v2(s));
        assert_eq!(cuStreamSynchronize(s), CUDA_ERROR_INVALID_HANDLE);
        // cuCtxSynchronize waits for every stream; a freed allocation waits for its users.
        ok(cuCtxSynchronize());
    }
    assert_eq!(ctx.download(x, 16), vec![2.0; 16]);
}
