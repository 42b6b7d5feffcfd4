//! Data-parallel training across processes: the [`Communicator`] a `#[data_parallel]` method
//! averages its gradients through.
//!
//! A step of a data-parallel method is staged in three parts (the compiler does the split):
//! every rank computes the cost and the gradients of its own slice of the global minibatch
//! into one flat buffer, the communicator replaces that buffer by its mean over the ranks in
//! one collective call, and every rank applies the same updates to the same averaged values,
//! so the parameters stay equal on all ranks without ever being sent.
//!
//! The collective engine is an existing one, chosen by cargo feature:
//! - always: [`Communicator::single`], a world of one process (the mean is the identity);
//! - `mpi`: Open MPI's `libmpi.so.40`, loaded at run time (`mpi.rs`); start the program with
//!   `mpirun -np N`;
//! - `nccl`: NVIDIA's `libnccl.so.2`, loaded at run time, bootstrapped through MPI
//!   (`nccl.rs`).
//!
//! A collective that does not finish within the communicator's timeout (60 s unless
//! `TENSOR_FN_COMM_TIMEOUT` or [`Communicator::set_timeout`] says otherwise) fails with
//! [`Error::CommTimeout`], naming the ranks that did not answer, instead of hanging on a rank
//! that died.

use std::time::Duration;

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;

use crate::gpu::GpuBuf;
use crate::{Arg, Device, Error};

/// The default collective timeout, in seconds.
pub const DEFAULT_TIMEOUT_SECS: f64 = 60.0;

mod sealed {
    /// Only `f32` and `f64`: `read_into` treats their memory as plain bytes.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// An element type the communicator averages: `f32` or `f64`.
pub trait CommElem: sealed::Sealed + Copy + Send + 'static {
    /// `true` for `f64`.
    const F64: bool;
    /// `self / n` for the mean of `n` ranks.
    fn scale(self, inv_n: f64) -> Self;
    /// The communicator's staging buffer of this type.
    fn flat(c: &mut Communicator) -> &mut Vec<Self>;
    /// `x` in this type.
    fn from_f64(x: f64) -> Self;
}

impl CommElem for f32 {
    const F64: bool = false;
    fn scale(self, inv_n: f64) -> f32 {
        self * inv_n as f32
    }
    fn flat(c: &mut Communicator) -> &mut Vec<f32> {
        &mut c.flat32
    }
    fn from_f64(x: f64) -> f32 {
        x as f32
    }
}

impl CommElem for f64 {
    const F64: bool = true;
    fn scale(self, inv_n: f64) -> f64 {
        self * inv_n
    }
    fn flat(c: &mut Communicator) -> &mut Vec<f64> {
        &mut c.flat64
    }
    fn from_f64(x: f64) -> f64 {
        x
    }
}

/// Which collective engine a communicator runs on.
#[derive(Debug)]
enum Engine {
    Single,
    #[cfg(feature = "mpi")]
    Mpi(Box<mpi::Mpi>),
    #[cfg(feature = "nccl")]
    Nccl(Box<nccl::Nccl>),
}

/// A process's place in a data-parallel job: its rank, the world size and the engine that
/// averages buffers across the ranks. Made once per process (see [`Communicator::from_env`]).
#[derive(Debug)]
pub struct Communicator {
    engine: Engine,
    rank: usize,
    size: usize,
    timeout: Duration,
    /// Collective calls made so far, for error messages (`all-reduce #57`).
    calls: u64,
    /// The flat staging buffer of `#[data_parallel]` methods, one per element type, reused
    /// across steps so a step allocates nothing after the first.
    flat32: Vec<f32>,
    flat64: Vec<f64>,
    /// The flat buffer of a model on a GPU, on that GPU, reused across steps.
    flat_device: Option<GpuBuf>,
    /// The buffer length every rank was last seen to sum (see `check_length`).
    agreed_len: Option<usize>,
    stage_alone: bool,
    host_staging: bool,
}

impl Communicator {
    /// A world of one process: rank 0 of 1, every mean the identity. Needs no library.
    pub fn single() -> Communicator {
        Communicator::with_engine(Engine::Single, 0, 1)
    }

    fn with_engine(engine: Engine, rank: usize, size: usize) -> Communicator {
        Communicator {
            engine,
            rank,
            size,
            timeout: timeout_from_env(),
            calls: 0,
            flat32: Vec::new(),
            flat64: Vec::new(),
            flat_device: None,
            agreed_len: None,
            stage_alone: std::env::var("TENSOR_FN_STAGE_ALONE").is_ok_and(|v| v == "1"),
            host_staging: false,
        }
    }

    /// The communicator of this process as it was started: under `mpirun` (or another MPI
    /// launcher, seen in its environment variables) an MPI communicator over every process of
    /// the job, otherwise [`single`](Self::single). Launched by `mpirun` but built without the
    /// `mpi` feature is an error, not a silent world of one: N processes would each train
    /// alone.
    pub fn from_env() -> Result<Communicator, Error> {
        match launcher_world_size() {
            None => Ok(Communicator::single()),
            Some(n) => Communicator::mpi_launched(n),
        }
    }

    /// For a program with a `--data-parallel` switch: [`from_env`](Self::from_env) when it is
    /// on; when it is off, a world of one, unless an MPI launcher started this process as one
    /// of several, which is then an error (each process would train a model alone and write
    /// the same files).
    pub fn for_switch(data_parallel: bool, switch: &str) -> Result<Communicator, Error> {
        if data_parallel {
            return Communicator::from_env();
        }
        match launcher_world_size() {
            Some(n) if n > 1 => Err(Error::Comm {
                rank: None,
                message: format!(
                    "started by an MPI launcher as one of {n} processes: pass {switch} to train \
                     one model across them"
                ),
            }),
            _ => Ok(Communicator::single()),
        }
    }

    #[cfg(feature = "mpi")]
    fn mpi_launched(_n: usize) -> Result<Communicator, Error> {
        Communicator::mpi()
    }

    #[cfg(not(feature = "mpi"))]
    fn mpi_launched(n: usize) -> Result<Communicator, Error> {
        Err(Error::Comm {
            rank: None,
            message: format!(
                "this process was started by an MPI launcher as one of {n}, but this build of \
                 tensor-fn has no MPI: build with `--features mpi`"
            ),
        })
    }

    /// An MPI communicator over `MPI_COMM_WORLD` (Open MPI's `libmpi.so.40`, loaded now).
    /// Started without `mpirun`, it is a world of one.
    #[cfg(feature = "mpi")]
    pub fn mpi() -> Result<Communicator, Error> {
        let m = mpi::Mpi::init()?;
        let (rank, size) = (m.rank(), m.size());
        Ok(Communicator::with_engine(
            Engine::Mpi(Box::new(m)),
            rank,
            size,
        ))
    }

    /// An NCCL communicator over every process of an `mpirun` job, one GPU per process (the
    /// process's local rank picks the device); its unique id travels through MPI. Started
    /// without a launcher, a world of one on `cuda:0`, which needs no MPI. Where there is no
    /// `libnccl.so.2` or no GPU, `Error::Comm` says so ("no NCCL/GPU: ...").
    #[cfg(feature = "nccl")]
    pub fn nccl() -> Result<Communicator, Error> {
        let m = match launcher_world_size() {
            Some(_) => Some(mpi::Mpi::init()?),
            None => None,
        };
        let n = nccl::Nccl::init(m)?;
        let (rank, size) = (n.rank(), n.size());
        Ok(Communicator::with_engine(
            Engine::Nccl(Box::new(n)),
            rank,
            size,
        ))
    }

    /// This process's rank, `0..size()`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank 0, the one that prints and writes files.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// The GPU this rank's collectives run on (NCCL's), where a model training with this
    /// communicator should live; `None` for the CPU engines.
    pub fn device(&self) -> Option<crate::Device> {
        match &self.engine {
            #[cfg(feature = "nccl")]
            Engine::Nccl(n) => Some(n.device()),
            _ => None,
        }
    }

    /// The engine's name: `single`, `mpi` or `nccl`.
    pub fn engine(&self) -> &'static str {
        match self.engine {
            Engine::Single => "single",
            #[cfg(feature = "mpi")]
            Engine::Mpi(_) => "mpi",
            #[cfg(feature = "nccl")]
            Engine::Nccl(_) => "nccl",
        }
    }

    /// Whether `#[data_parallel]` methods run their staged parts (gradients, all-reduce,
    /// updates). In a world of one they run the fused single-process step instead, which
    /// never materializes a gradient: averaging over one rank is the identity, so the split
    /// would only cost time.
    pub fn stages(&self) -> bool {
        self.size > 1 || self.stage_alone
    }

    /// Makes a world of one run the staged parts anyway: to test them, or to measure what the
    /// split costs. (`TENSOR_FN_STAGE_ALONE=1` in the environment sets it for every
    /// communicator of the process.)
    pub fn set_stage_alone(&mut self, stage: bool) {
        self.stage_alone = stage;
    }

    /// How long one collective may wait for the other ranks before it fails.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the collective timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The rows `start..end` of a global minibatch of `global` rows that this rank computes:
    /// equal slices, in rank order. A `global` that the world size does not divide is an
    /// error: the mean of the ranks' means would no longer be the global mean.
    pub fn slice(&self, global: usize) -> Result<std::ops::Range<usize>, Error> {
        if !global.is_multiple_of(self.size) {
            return Err(Error::Comm {
                rank: None,
                message: format!(
                    "a data-parallel minibatch of {global} rows does not split equally between \
                     {} processes: the process count must divide it",
                    self.size
                ),
            });
        }
        let n = global / self.size;
        Ok(self.rank * n..(self.rank + 1) * n)
    }

    /// Replaces `buf` by its element-wise mean over all ranks. Every rank must call it with a
    /// buffer of the same length, in the same order of calls.
    pub fn all_reduce_mean<T: CommElem>(&mut self, buf: &mut [T]) -> Result<(), Error> {
        self.calls += 1;
        if self.size == 1 {
            return Ok(());
        }
        let (seq, timeout) = (self.calls, self.timeout);
        let summed: Result<(), Error> = match &mut self.engine {
            Engine::Single => Ok(()),
            #[cfg(feature = "mpi")]
            Engine::Mpi(m) => m.all_reduce_sum(buf, seq, timeout),
            #[cfg(feature = "nccl")]
            Engine::Nccl(n) => n.all_reduce_sum_host(buf, seq, timeout),
        };
        let _ = (seq, timeout);
        summed?;
        let inv = 1.0 / self.size as f64;
        for x in buf.iter_mut() {
            *x = x.scale(inv);
        }
        Ok(())
    }

    /// Replaces `buf` by its element-wise sum over all ranks, without a copy: the buffer is
    /// moved to the engine while the collective runs and given back when it completed. (After
    /// a timeout it is not given back: MPI may still write it.) `#[data_parallel]` methods
    /// sum their flat buffer with this and fold the division by the world size into their
    /// updates.
    pub fn all_reduce_sum_vec<T: CommElem>(&mut self, buf: Vec<T>) -> Result<Vec<T>, Error> {
        self.calls += 1;
        if self.size == 1 {
            return Ok(buf);
        }
        self.check_length(buf.len())?;
        let (seq, timeout) = (self.calls, self.timeout);
        let _ = (seq, timeout);
        match &mut self.engine {
            Engine::Single => Ok(buf),
            #[cfg(feature = "mpi")]
            Engine::Mpi(m) => m.all_reduce_sum_owned(buf, seq, timeout),
            #[cfg(feature = "nccl")]
            Engine::Nccl(n) => {
                let mut buf = buf;
                n.all_reduce_sum_host(&mut buf, seq, timeout)?;
                Ok(buf)
            }
        }
    }

    /// Before the first sum of a buffer of `len` elements (and whenever the length changes):
    /// checks that every rank sums as many, with a small collective of `[len, len^2]` (all
    /// equal exactly when n * sum(len^2) = sum(len)^2). Ranks that run different models (a
    /// different hidden size, a checkpoint of another model) would otherwise sum mismatched
    /// buffers: MPI's behaviour is undefined there, a hang or garbage.
    fn check_length(&mut self, len: usize) -> Result<(), Error> {
        if self.agreed_len == Some(len) {
            return Ok(());
        }
        let mut v = [len as f64, (len as f64) * (len as f64)];
        let (seq, timeout) = (self.calls, self.timeout);
        let _ = (seq, timeout, &mut v);
        let summed: Result<(), Error> = match &mut self.engine {
            Engine::Single => Ok(()),
            #[cfg(feature = "mpi")]
            Engine::Mpi(m) => m.all_reduce_sum(&mut v, seq, timeout),
            #[cfg(feature = "nccl")]
            Engine::Nccl(n) => match n.mpi() {
                Some(m) => m.all_reduce_sum(&mut v, seq, timeout),
                None => Ok(()),
            },
        };
        summed?;
        let n = self.size as f64;
        if self.size > 1 && n * v[1] != v[0] * v[0] {
            return Err(Error::Comm {
                rank: Some(self.rank),
                message: format!(
                    "the ranks sum data-parallel buffers of different lengths (this rank {len} \
                     elements, the mean over the ranks {:.1}): every rank must train the same \
                     model, with the same parameter shapes",
                    v[0] / n
                ),
            });
        }
        self.agreed_len = Some(len);
        Ok(())
    }

    /// Whether a model on `device` sums its gradients there, with no trip to the host: with
    /// NCCL on that GPU, and in a world of one (nothing to sum). Otherwise (MPI, whose buffers
    /// are host memory) the gradients come back to the host, are summed there, and the update
    /// part reads them from there.
    pub fn reduces_on(&self, device: Device) -> bool {
        if !device.is_gpu() || self.host_staging {
            return false;
        }
        match &self.engine {
            Engine::Single => true,
            #[cfg(feature = "mpi")]
            Engine::Mpi(_) => false,
            #[cfg(feature = "nccl")]
            Engine::Nccl(n) => n.device() == device,
        }
    }

    /// Makes a model on a GPU go through the host even where [`reduces_on`](Self::reduces_on)
    /// says it need not (tests of that path).
    #[doc(hidden)]
    pub fn set_host_staging(&mut self, host: bool) {
        self.host_staging = host;
    }

    /// The device flat buffer of a `#[data_parallel]` method, at least `bytes` long, on
    /// `device`; reused across steps, given back by `give_device_flat`.
    #[doc(hidden)]
    pub fn take_device_flat(&mut self, device: Device, bytes: usize) -> Result<GpuBuf, Error> {
        match self.flat_device.take() {
            Some(b) if b.device() == device && b.bytes() >= bytes => Ok(b),
            _ => GpuBuf::alloc(device, bytes.max(1)),
        }
    }

    /// Gives back a buffer taken by `take_device_flat`.
    #[doc(hidden)]
    pub fn give_device_flat(&mut self, buf: GpuBuf) {
        self.flat_device = Some(buf);
    }

    /// Sums the first `len` elements (`f64`s, else `f32`s) of `buf`, on its GPU, over all
    /// ranks, in place: NCCL on the stream the step's kernels ran on, after them; nothing in a
    /// world of one.
    #[doc(hidden)]
    pub fn all_reduce_sum_device(
        &mut self,
        buf: &GpuBuf,
        len: usize,
        f64: bool,
    ) -> Result<(), Error> {
        self.calls += 1;
        let elem = if f64 { 8 } else { 4 };
        if len.checked_mul(elem).is_none_or(|b| b > buf.bytes()) {
            return Err(Error::Internal(format!(
                "an all-reduce of {len} elements in a device buffer of {} bytes",
                buf.bytes()
            )));
        }
        if self.size == 1 {
            return Ok(());
        }
        self.check_length(len)?;
        let (seq, timeout) = (self.calls, self.timeout);
        let _ = (seq, timeout, f64);
        match &mut self.engine {
            #[cfg(feature = "nccl")]
            Engine::Nccl(n) if n.device() == buf.device() => {
                // SAFETY: `buf` is a live allocation of the CUDA backend of NCCL's device (the
                // device matched), holding at least `len` elements (checked above), and the
                // caller uses it for nothing else until this returns.
                unsafe { n.all_reduce_sum_device(buf.ptr(), len, f64, seq, timeout) }
            }
            _ => Err(Error::Comm {
                rank: Some(self.rank),
                message: format!(
                    "the {} engine does not sum buffers on {}",
                    self.engine(),
                    buf.device()
                ),
            }),
        }
    }

    /// Copies `buf` of rank `root` into `buf` of every other rank (a model's initial or
    /// resumed parameters, so every rank starts from the same values).
    pub fn broadcast<T: CommElem>(&mut self, buf: &mut [T], root: usize) -> Result<(), Error> {
        self.calls += 1;
        if root >= self.size {
            return Err(Error::Comm {
                rank: Some(self.rank),
                message: format!("broadcast from rank {root} in a world of {}", self.size),
            });
        }
        if self.size == 1 {
            return Ok(());
        }
        let (seq, timeout) = (self.calls, self.timeout);
        let _ = (seq, timeout, &buf);
        match &mut self.engine {
            Engine::Single => Ok(()),
            #[cfg(feature = "mpi")]
            Engine::Mpi(m) => m.broadcast(buf, root, seq, timeout),
            #[cfg(feature = "nccl")]
            Engine::Nccl(n) => match n.mpi() {
                Some(m) => m.broadcast(buf, root, seq, timeout),
                None => Ok(()),
            },
        }
    }

    /// Waits until every rank reached this call (within the timeout).
    pub fn barrier(&mut self) -> Result<(), Error> {
        let mut one = [0f64];
        self.all_reduce_mean(&mut one)
    }

    /// Ends the whole job after an error: with MPI, `MPI_Abort` (the launcher stops every
    /// rank); alone, the process exits. Call it after printing the error, so a rank that can
    /// no longer take part does not leave the others waiting for their timeout.
    pub fn abort(&self, code: i32) -> ! {
        match &self.engine {
            Engine::Single => {}
            #[cfg(feature = "mpi")]
            Engine::Mpi(m) => m.abort(code),
            #[cfg(feature = "nccl")]
            Engine::Nccl(n) => {
                if let Some(m) = n.mpi_ref() {
                    m.abort(code)
                }
            }
        }
        std::process::exit(code)
    }

    /// The staging buffer of a `#[data_parallel]` method, `len` elements, reused across
    /// steps. It is taken out while the method fills it (the communicator is borrowed again to
    /// average it) and given back by `give_flat`.
    #[doc(hidden)]
    pub fn take_flat<T: CommElem + Default>(&mut self, len: usize) -> Vec<T> {
        let mut v = std::mem::take(T::flat(self));
        v.resize(len, T::default());
        v
    }

    /// Gives back a buffer taken by `take_flat`.
    #[doc(hidden)]
    pub fn give_flat<T: CommElem>(&mut self, v: Vec<T>) {
        *T::flat(self) = v;
    }
}

/// A view of `data` in the shape of a parameter, for a `#[data_parallel]` method's update
/// part to read its gradient from the flat buffer without a copy.
#[doc(hidden)]
pub fn segment<'a, T, D: ndarray::Dimension>(
    data: &'a [T],
    shape: &[usize],
) -> Result<ndarray::ArrayView<'a, T, D>, Error> {
    ndarray::ArrayView::from_shape(ndarray::IxDyn(shape), data)
        .and_then(|v| v.into_dimensionality::<D>())
        .map_err(|e| Error::Internal(format!("a gradient's view of the flat buffer: {e}")))
}

/// A view of `buf`'s elements from `offset` (in elements) in the shape of a parameter, for a
/// `#[data_parallel]` method's update part to read its gradient from the device flat buffer.
#[doc(hidden)]
pub fn device_segment<'a, T: CommElem, D: ndarray::Dimension>(
    buf: &'a GpuBuf,
    offset: usize,
    shape: &[usize],
) -> Result<Arg<'a, T, D>, Error> {
    let dim = D::from_dimension(&ndarray::IxDyn(shape)).ok_or_else(|| {
        Error::Internal(format!(
            "a gradient of shape {shape:?} in the device flat buffer"
        ))
    })?;
    Ok(Arg::Device {
        buf,
        offset: offset * std::mem::size_of::<T>(),
        dim,
    })
}

/// `out.len()` elements from the start of `buf`, read back after the work queued before (a
/// data-parallel step's gradients, which an engine without device buffers sums on the host).
#[doc(hidden)]
pub fn read_into<T: CommElem>(buf: &GpuBuf, out: &mut [T]) -> Result<(), Error> {
    // SAFETY: `T` is `f32` or `f64` (the trait is sealed): plain bytes, every bit pattern a
    // valid value, and a `u8` view needs no alignment.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(out))
    };
    buf.download(0, bytes)
}

/// The first `N` elements of `buf` (a data-parallel step's scalar outputs, summed).
#[doc(hidden)]
pub fn read_head<T: CommElem, const N: usize>(buf: &GpuBuf) -> Result<[T; N], Error> {
    let mut out = [T::from_f64(0.0); N];
    read_into(buf, &mut out)?;
    Ok(out)
}

/// The world size an MPI launcher announced in the environment (Open MPI, MPICH/PMI, Slurm's
/// PMIx), if this process was started by one.
pub fn launcher_world_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
}

fn timeout_from_env() -> Duration {
    let secs = std::env::var("TENSOR_FN_COMM_TIMEOUT")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(DEFAULT_TIMEOUT_SECS);
    Duration::from_secs_f64(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_of_one_averages_to_itself() {
        let mut c = Communicator::single();
        assert_eq!((c.rank(), c.size(), c.engine()), (0, 1, "single"));
        let mut b = [1.5f32, -2.0];
        c.all_reduce_mean(&mut b).unwrap();
        assert_eq!(b, [1.5, -2.0]);
        c.broadcast(&mut b, 0).unwrap();
        assert!(c.broadcast(&mut b, 1).is_err());
        assert_eq!(c.slice(20).unwrap(), 0..20);
    }

    #[test]
    fn the_flat_buffer_is_reused() {
        let mut c = Communicator::single();
        let mut v = c.take_flat::<f64>(5);
        v[4] = 3.0;
        let p = v.as_ptr();
        c.give_flat(v);
        let v = c.take_flat::<f64>(5);
        assert_eq!((v.as_ptr(), v[4]), (p, 3.0));
        assert_eq!(c.take_flat::<f32>(3).len(), 3);
    }
}
