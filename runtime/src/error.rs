use crate::data::DataError;

/// Every fallible operation of the runtime and of compiled functions returns this error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A symbolic dim was bound to two different sizes by the arguments of one call.
    #[error("dim `{dim}` is {first} from `{first_arg}` but {second} from `{second_arg}`")]
    DimConflict {
        dim: &'static str,
        first_arg: &'static str,
        first: usize,
        second_arg: &'static str,
        second: usize,
    },
    /// An argument disagrees with a static dim of its declared type.
    #[error(
        "argument `{arg}` has size {found} in axis {axis}, but its type `{ty}` says {expected}"
    )]
    StaticDim {
        arg: &'static str,
        ty: &'static str,
        axis: usize,
        expected: usize,
        found: usize,
    },
    /// A value given to `Shared::set_value` has another shape than the variable.
    #[error("shared variable `{name}`: new value has shape {found:?}, expected {expected:?}")]
    SharedShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// An integer argument holds a value its use cannot take: a label outside `0..classes`
    /// for `onehot` or picking (`x[arange(n), y]`), or an integer beyond what the function's
    /// float type represents exactly (2^24 for f32, 2^53 for f64), in which integers are
    /// computed.
    #[error("`{function}`: argument `{arg}` holds {value} at index {index}, {why}")]
    IntRange {
        function: &'static str,
        arg: &'static str,
        index: usize,
        value: i64,
        why: String,
    },
    /// A function compiled with `#[nan_guard]` computed a NaN or an infinity. `node` is the
    /// first graph node (in the function's `info.graph` listing) whose stored values hold one,
    /// as `%12 (softplus)`; `kernel` is its kernel in `info.plan`; `index` the first bad element
    /// of its row-major value.
    #[error(
        "`{function}`: kernel k{kernel} produced NaN or Inf in {node}, first at index {index}"
    )]
    NanGuard {
        function: &'static str,
        kernel: usize,
        node: &'static str,
        index: usize,
    },
    /// A check inside generated code failed: a bug in tensor-fn, never the caller's fault.
    #[error("internal error in tensor-fn: {0}")]
    Internal(String),
    /// A function was called on a GPU, but one of its ops runs on the CPU only (a convolution
    /// whose per-image matrices are beyond the GPU kernels' 32-bit indexing).
    #[error("`{function}`: `{op}` has no GPU kernel for these sizes, so the function cannot run on {device}; run it on the CPU")]
    CpuOnly {
        function: &'static str,
        op: &'static str,
        device: String,
    },
    /// A device that is not present or not compiled in was asked for.
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    /// A GPU operation failed: `device` as in `cuda:0`, `op` the driver call or step
    /// (`cuLaunchKernel k3`), `message` the driver's error name and text.
    #[error("{device}: {op} failed: {message}")]
    Gpu {
        device: String,
        op: String,
        message: String,
    },
    /// The device has no room for an allocation.
    #[error("{device}: out of memory allocating {bytes} bytes")]
    OutOfMemory { device: String, bytes: usize },
    /// A borrowing accessor was used on a shared variable whose value lives on a GPU.
    #[error(
        "shared variable `{name}` lives on {device}: copy it with `get_value()`, or move it with `to_device(Device::Cpu)`"
    )]
    OnDevice { name: String, device: String },
    /// Values on different devices were given to one compiled function.
    #[error("`{function}`: {what} is on {found}, but the function runs on {device}")]
    WrongDevice {
        function: &'static str,
        what: String,
        found: String,
        device: String,
    },
    /// A data-parallel job could not start or a collective failed: no MPI or NCCL library,
    /// no GPU for NCCL, an error code from the engine, a minibatch that does not split
    /// between the ranks. `rank` is this process's rank where it is known.
    #[error("{}{message}", rank_prefix(*rank))]
    Comm {
        rank: Option<usize>,
        message: String,
    },
    /// A collective did not finish within the communicator's timeout: some rank died or is
    /// stuck. `silent` are the ranks that did not answer a liveness check afterwards (empty
    /// when all answered: then they are alive but in another collective, a program bug).
    #[error(
        "rank {rank}: {op} #{call} did not finish within {secs} s; {}",
        silent_ranks(silent)
    )]
    CommTimeout {
        rank: usize,
        op: &'static str,
        call: u64,
        secs: f64,
        silent: Vec<usize>,
    },
    /// A dataset could not be read.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A file (or an item inside one, e.g. a checkpoint's tensor) does not have the expected
    /// content: a wrong magic number, an unsupported version or dtype, a truncated body, a
    /// checksum mismatch, a shape other than the one asked for. `path` names the file or item;
    /// `reason` says what is wrong, expected vs found.
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
}

fn rank_prefix(rank: Option<usize>) -> String {
    rank.map(|r| format!("rank {r}: ")).unwrap_or_default()
}

fn silent_ranks(silent: &[usize]) -> String {
    match silent {
        [] => "every other rank answered a liveness check, so they wait in a different \
               collective: the ranks called collectives in different orders"
            .into(),
        [r] => format!("rank {r} did not answer (dead or stuck)"),
        rs => {
            let list: Vec<String> = rs.iter().map(|r| r.to_string()).collect();
            format!("ranks {} did not answer (dead or stuck)", list.join(", "))
        }
    }
}
