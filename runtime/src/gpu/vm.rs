//! The PTX interpreter as a [`Backend`]: device memory is host memory with bounds checks,
//! modules are parsed back from their text, launches run on `tensor_fn_kernels::vm`, and
//! graphs record the queued operations and replay them.
//!
//! It runs the exact launch plans, workspaces, staging copies and graph caching a CUDA device
//! runs, so the GPU path of a program is tested on any machine (slowly: an interpreter).

use std::sync::Mutex;

use tensor_fn_kernels::ptx::Kernel;
use tensor_fn_kernels::vm::{self, Arg, Memory};

use super::{Backend, DevPtr, GraphId, KernelArg, ModuleId};
use crate::Error;

#[derive(Debug, Clone)]
enum Op {
    Launch {
        module: ModuleId,
        kernel: String,
        grid: [u32; 3],
        block: [u32; 3],
        args: Vec<KernelArg>,
    },
    Copy {
        dst: DevPtr,
        src: DevPtr,
        bytes: usize,
    },
}

#[derive(Debug, Default)]
struct State {
    mem: Memory,
    modules: Vec<(String, Vec<Kernel>)>,
    /// While capturing: the capturing thread and the operations it recorded instead of
    /// running them. Other threads' operations run as usual meanwhile (a CUDA capture must
    /// not swallow them either).
    recording: Option<(std::thread::ThreadId, Vec<Op>)>,
    graphs: Vec<Option<Vec<Op>>>,
    /// Operations run (launches and copies), for tests.
    launches: u64,
    replays: u64,
}

/// The interpreter device (`Device::PtxVm`).
#[derive(Debug, Default)]
pub struct VmBackend {
    state: Mutex<State>,
}

/// Counters of what the interpreter device ran: kernel launches and graph replays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmStats {
    pub launches: u64,
    pub replays: u64,
}

fn gpu_err(op: &str, e: impl std::fmt::Display) -> Error {
    Error::Gpu {
        device: "ptx-vm".into(),
        op: op.into(),
        message: e.to_string(),
    }
}

impl VmBackend {
    pub fn new() -> VmBackend {
        VmBackend::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What ran so far.
    pub fn stats(&self) -> VmStats {
        let s = self.lock();
        VmStats {
            launches: s.launches,
            replays: s.replays,
        }
    }
}

/// What the interpreter device ran so far (zeros before its first use).
pub fn stats() -> VmStats {
    match super::backend(crate::Device::PtxVm) {
        Ok(b) => b.vm_stats().unwrap_or_default(),
        Err(_) => VmStats::default(),
    }
}

fn exec(s: &mut State, op: &Op) -> Result<(), Error> {
    match op {
        Op::Copy { dst, src, bytes } => s
            .mem
            .copy(*dst, *src, *bytes)
            .map_err(|e| gpu_err("copy", e)),
        Op::Launch {
            module,
            kernel,
            grid,
            block,
            args,
        } => {
            let State { mem, modules, .. } = s;
            let k = modules
                .get(module.0)
                .and_then(|(_, ks)| ks.iter().find(|k| k.name == *kernel))
                .ok_or_else(|| gpu_err("launch", format!("no kernel `{kernel}` in the module")))?;
            let args: Vec<Arg> = args
                .iter()
                .map(|a| match *a {
                    KernelArg::Ptr(p) => Arg::U64(p),
                    KernelArg::U32(x) => Arg::U32(x),
                    KernelArg::F32(x) => Arg::F32(x),
                    KernelArg::F64(x) => Arg::F64(x),
                })
                .collect();
            vm::launch(k, *grid, *block, &args, mem)
                .map_err(|e| gpu_err(&format!("launch {kernel}"), e))?;
            s.launches += 1;
            Ok(())
        }
    }
}

fn submit(s: &mut State, op: Op) -> Result<(), Error> {
    match &mut s.recording {
        Some((t, r)) if *t == std::thread::current().id() => {
            r.push(op);
            Ok(())
        }
        _ => exec(s, &op),
    }
}

impl Backend for VmBackend {
    fn describe(&self) -> String {
        "ptx-vm (tensor-fn's PTX interpreter)".into()
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr, Error> {
        Ok(self.lock().mem.alloc(bytes))
    }

    unsafe fn free(&self, ptr: DevPtr) {
        let _ = self.lock().mem.free(ptr);
    }

    unsafe fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<(), Error> {
        self.lock()
            .mem
            .write_bytes(dst, src)
            .map_err(|e| gpu_err("upload", e))
    }

    unsafe fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<(), Error> {
        self.lock()
            .mem
            .read_bytes(src, dst)
            .map_err(|e| gpu_err("download", e))
    }

    unsafe fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<(), Error> {
        submit(&mut self.lock(), Op::Copy { dst, src, bytes })
    }

    fn load_module(&self, ptx: &str) -> Result<ModuleId, Error> {
        let mut s = self.lock();
        if let Some(i) = s.modules.iter().position(|(t, _)| t == ptx) {
            return Ok(ModuleId(i));
        }
        let kernels =
            tensor_fn_kernels::parse::parse_module(ptx).map_err(|e| gpu_err("load module", e))?;
        s.modules.push((ptx.to_string(), kernels));
        Ok(ModuleId(s.modules.len() - 1))
    }

    unsafe fn launch(
        &self,
        module: ModuleId,
        kernel: &str,
        grid: [u32; 3],
        block: [u32; 3],
        args: &[KernelArg],
    ) -> Result<(), Error> {
        let op = Op::Launch {
            module,
            kernel: kernel.to_string(),
            grid,
            block,
            args: args.to_vec(),
        };
        submit(&mut self.lock(), op)
    }

    fn synchronize(&self) -> Result<(), Error> {
        Ok(())
    }

    fn capture(
        &self,
        record: &mut dyn FnMut() -> Result<(), Error>,
    ) -> Result<Option<GraphId>, Error> {
        // One capture at a time: another thread's waits until it ended (as on CUDA).
        loop {
            let mut s = self.lock();
            match &s.recording {
                Some((t, _)) if *t == std::thread::current().id() => {
                    return Err(gpu_err("capture", "capture inside a capture"));
                }
                Some(_) => {}
                None => {
                    s.recording = Some((std::thread::current().id(), Vec::new()));
                    break;
                }
            }
            drop(s);
            std::thread::yield_now();
        }
        let r = record();
        let mut s = self.lock();
        let ops = s.recording.take().map(|(_, ops)| ops).unwrap_or_default();
        r?;
        s.graphs.push(Some(ops));
        Ok(Some(GraphId(s.graphs.len() - 1)))
    }

    unsafe fn replay(&self, graph: GraphId) -> Result<(), Error> {
        let mut s = self.lock();
        let ops = s
            .graphs
            .get(graph.0)
            .and_then(|g| g.clone())
            .ok_or_else(|| gpu_err("replay", format!("no graph {}", graph.0)))?;
        s.replays += 1;
        for op in &ops {
            exec(&mut s, op)?;
        }
        Ok(())
    }

    fn drop_graph(&self, graph: GraphId) {
        if let Some(g) = self.lock().graphs.get_mut(graph.0) {
            *g = None;
        }
    }

    fn vm_stats(&self) -> Option<VmStats> {
        Some(self.stats())
    }
}
