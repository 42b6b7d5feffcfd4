//! GPU execution of compiled functions.
//!
//! `tensor_fn!` emits, next to each function's PTX module, a launch plan as `const` data
//! ([`plan::GpuPlan`]): which buffers the function needs, and for every kernel of its schedule
//! the launches with each parameter bound to a buffer, a dim or a scalar. The executor
//! ([`run`]) walks that plan on a [`Backend`]: CUDA through `cust` (feature `cuda`), or the
//! PTX interpreter ([`vm`]), which runs the same plans on the host for tests.

mod backend;
#[cfg(feature = "cuda")]
mod cuda;
mod exec;
pub mod plan;
pub mod testing;
pub mod vm;

use std::sync::{Arc, Mutex, OnceLock};

pub use backend::{Backend, DevPtr, GraphId, KernelArg, ModuleId};
pub use exec::{
    run, run_into, ArgData, Call, Element, FnCache, GpuBuf, GpuCalls, HostOut, Mode, PendingOut,
};

use crate::{Device, Error};

type Registry = Mutex<Vec<(Device, Arc<dyn Backend>)>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

/// The backend of a GPU device, opened on first use and shared afterwards.
pub fn backend(device: Device) -> Result<Arc<dyn Backend>, Error> {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, b)) = reg.iter().find(|(d, _)| *d == device) {
        return Ok(b.clone());
    }
    let b: Arc<dyn Backend> = match device {
        Device::Cpu => {
            return Err(Error::Internal(
                "the CPU has no GPU backend (a bug in tensor-fn)".into(),
            ))
        }
        Device::PtxVm => Arc::new(vm::VmBackend::new()),
        Device::Cuda(ordinal) => open_cuda(ordinal)?,
    };
    reg.push((device, b.clone()));
    Ok(b)
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: u32) -> Result<Arc<dyn Backend>, Error> {
    cuda::open(ordinal)
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: u32) -> Result<Arc<dyn Backend>, Error> {
    Err(Error::DeviceUnavailable(format!(
        "`cuda:{ordinal}`: this binary was built without the `cuda` feature of tensor-fn"
    )))
}

/// The device a model's methods run on: where its parameters live, which must be one place.
#[doc(hidden)]
pub fn model_device(function: &'static str, params: &[(&str, Device)]) -> Result<Device, Error> {
    let Some(&(first_name, first)) = params.first() else {
        return Ok(Device::Cpu);
    };
    for &(name, d) in &params[1..] {
        if d != first {
            return Err(Error::WrongDevice {
                function,
                what: format!("parameter `{name}`"),
                found: d.to_string(),
                device: format!("{first} (where `{first_name}` lives)"),
            });
        }
    }
    Ok(first)
}

/// The result of a queued call ([`Mode::Lazy`]): the outputs stay on the device until read.
pub struct Lazy<R> {
    state: LazyState<R>,
}

type Convert<R> = Box<dyn FnOnce(Vec<HostOut>) -> Result<R, Error> + Send>;

enum LazyState<R> {
    Ready(R),
    Pending(Vec<PendingOut>, Convert<R>),
}

impl<R> std::fmt::Debug for Lazy<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.state {
            LazyState::Ready(_) => f.write_str("Lazy(ready)"),
            LazyState::Pending(o, _) => write!(f, "Lazy(pending, {} outputs)", o.len()),
        }
    }
}

impl<R> Lazy<R> {
    /// A value computed already (the CPU path).
    pub fn ready(value: R) -> Lazy<R> {
        Lazy {
            state: LazyState::Ready(value),
        }
    }

    /// Outputs still to be read, and how to make the result from them.
    #[doc(hidden)]
    pub fn pending(
        outs: Vec<PendingOut>,
        convert: impl FnOnce(Vec<HostOut>) -> Result<R, Error> + Send + 'static,
    ) -> Lazy<R> {
        Lazy {
            state: LazyState::Pending(outs, Box::new(convert)),
        }
    }

    /// Whether reading the value needs no device transfer.
    pub fn is_ready(&self) -> bool {
        match &self.state {
            LazyState::Ready(_) => true,
            LazyState::Pending(o, _) => o
                .iter()
                .all(|o| matches!(o, PendingOut::Scalar(_) | PendingOut::Host(_))),
        }
    }

    /// The value: waits for the device and copies the outputs back if needed.
    pub fn get(self) -> Result<R, Error> {
        match self.state {
            LazyState::Ready(v) => Ok(v),
            LazyState::Pending(outs, convert) => {
                let host = outs
                    .into_iter()
                    .map(PendingOut::wait)
                    .collect::<Result<Vec<_>, _>>()?;
                convert(host)
            }
        }
    }
}
