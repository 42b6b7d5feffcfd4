use std::fmt;

/// Where values live and kernels run.
///
/// - `Cpu`: the host, always there: generated Rust loops and GEMM calls.
/// - `Cuda(n)`: NVIDIA GPU number `n`, running the PTX each compiled function carries. Needs the
///   runtime's cargo feature `cuda`; without it, or without a GPU, asking for one is a clear
///   [`Error::DeviceUnavailable`](crate::Error::DeviceUnavailable).
/// - `PtxVm`: the same PTX, launch plans and device-memory handling as `Cuda`, run by
///   tensor-fn's PTX interpreter on the host. Slow (an interpreter); it exists so the GPU path
///   of a program can be tested on any machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Device {
    Cpu,
    Cuda(u32),
    PtxVm,
}

impl Device {
    /// The host CPU.
    pub const fn cpu() -> Device {
        Device::Cpu
    }

    /// GPU number `ordinal`, checked: an error when the binary has no CUDA support, when no
    /// GPU answers, or when the driver is too old. The device's context is made on first use.
    pub fn cuda(ordinal: u32) -> Result<Device, crate::Error> {
        let d = Device::Cuda(ordinal);
        crate::gpu::backend(d)?;
        Ok(d)
    }

    /// The fastest device this binary can use: the first CUDA GPU when compiled in and one
    /// answers, else the CPU. [`Device::best_with_reason`] also says why.
    pub fn best() -> Device {
        Device::best_with_reason().0
    }

    /// [`Device::best`], with the reason when it is the CPU (`"this binary was built without
    /// the cuda feature"`, `"no CUDA device: ..."`).
    pub fn best_with_reason() -> (Device, Option<String>) {
        match Device::cuda(0) {
            Ok(d) => (d, None),
            Err(e) => (Device::Cpu, Some(e.to_string())),
        }
    }

    /// Whether values on this device live in GPU memory (CUDA or the interpreter).
    pub fn is_gpu(self) -> bool {
        !matches!(self, Device::Cpu)
    }

    /// Parses a device name as given on a command line: `cpu`, `cuda`, `cuda:N`, `ptx-vm`,
    /// `best`. A GPU name is checked: it must be present.
    pub fn parse(name: &str) -> Result<Device, crate::Error> {
        match name {
            "cpu" => Ok(Device::Cpu),
            "best" => Ok(Device::best()),
            "ptx-vm" => Ok(Device::PtxVm),
            "cuda" => Device::cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse::<u32>) {
                Some(Ok(n)) => Device::cuda(n),
                _ => Err(crate::Error::DeviceUnavailable(format!(
                    "unknown device `{other}` (expected `cpu`, `cuda`, `cuda:N`, `ptx-vm` or `best`)"
                ))),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
            Device::PtxVm => f.write_str("ptx-vm"),
        }
    }
}
