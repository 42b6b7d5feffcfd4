use std::fmt;

/// Where values live and kernels run.
///
/// The CPU is always available. GPU devices come with the `cuda` feature of the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Device {
    /// The host: generated Rust loops and GEMM calls.
    Cpu,
}

impl Device {
    /// The host CPU.
    pub const fn cpu() -> Device {
        Device::Cpu
    }

    /// The fastest device this binary can use; the CPU when no GPU is compiled in or present.
    pub fn best() -> Device {
        Device::Cpu
    }

    /// Parses a device name as given on a command line: `cpu`, `best`.
    pub fn parse(name: &str) -> Result<Device, crate::Error> {
        match name {
            "cpu" => Ok(Device::Cpu),
            "best" => Ok(Device::best()),
            other if other.starts_with("cuda") => Err(crate::Error::DeviceUnavailable(format!(
                "`{other}`: this binary was built without the `cuda` feature"
            ))),
            other => Err(crate::Error::DeviceUnavailable(format!(
                "unknown device `{other}` (expected `cpu`, `cuda`, `cuda:N` or `best`)"
            ))),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
        }
    }
}
