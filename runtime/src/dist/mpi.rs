//! The MPI engine (cargo feature `mpi`): Open MPI's `libmpi.so.40`, loaded at run time.
//!
//! A thin binding of our own, not the `mpi` crate: that one generates its binding with bindgen
//! (libclang) from the installed headers at build time, while we need a dozen functions and
//! want a binary that builds anywhere and says "no MPI" cleanly where Open MPI is missing.
//! The price is being specific to Open MPI's ABI: its handles (`MPI_Comm`, `MPI_Datatype`,
//! ...) are pointers, and the predefined ones are the addresses of exported structs
//! (`MPI_COMM_WORLD` is `&ompi_mpi_comm_world`), which `dlsym` returns. MPICH would need a
//! second table (its handles are integers).
//!
//! Every collective is non-blocking (`MPI_Iallreduce`, `MPI_Ibcast`) and waited for by
//! polling `MPI_Test` against a deadline, so a rank that died cannot hang the others. After a
//! timeout, a liveness check on a second communicator finds which ranks are gone: every rank
//! answers pings while it waits, so the silent ones are dead or stuck elsewhere. Errors are
//! returned, not fatal (`MPI_ERRORS_RETURN` on both communicators).
//!
//! Buffers: a collective reads and writes memory the engine owns until it completes. A
//! collective that timed out never completes, so its buffer is leaked on purpose: MPI may
//! still write it, and the caller's memory must not be reused under it.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::fmt;
use std::ptr;
use std::time::{Duration, Instant};

use super::CommElem;
use crate::Error;

type Handle = *mut c_void;

/// `MPI_THREAD_SERIALIZED`: any thread may call, one at a time (the communicator is `&mut`).
const THREAD_SERIALIZED: c_int = 2;
/// `MPI_IN_PLACE` in Open MPI.
const IN_PLACE: *mut c_void = std::ptr::without_provenance_mut(1);
const ANY_SOURCE: c_int = -1;
const MAX_ERROR_STRING: usize = 256;
/// Tags of the liveness check's messages, on its own communicator.
const PING: c_int = 1;
const PONG: c_int = 2;
/// How long the liveness check waits for answers.
const PROBE_GRACE: Duration = Duration::from_secs(3);

/// Open MPI's `MPI_Status`: three public ints, then its own count fields.
#[repr(C)]
#[derive(Default)]
struct Status {
    source: c_int,
    tag: c_int,
    error: c_int,
    cancelled: c_int,
    ucount: usize,
}

type FnInit = unsafe extern "C" fn(*mut c_int, *mut *mut *mut c_char, c_int, *mut c_int) -> c_int;
type FnFlag = unsafe extern "C" fn(*mut c_int) -> c_int;
type FnCommInt = unsafe extern "C" fn(Handle, *mut c_int) -> c_int;
type FnSetErr = unsafe extern "C" fn(Handle, Handle) -> c_int;
type FnDup = unsafe extern "C" fn(Handle, *mut Handle) -> c_int;
type FnIallreduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    c_int,
    Handle,
    Handle,
    Handle,
    *mut Handle,
) -> c_int;
type FnIbcast =
    unsafe extern "C" fn(*mut c_void, c_int, Handle, c_int, Handle, *mut Handle) -> c_int;
type FnTest = unsafe extern "C" fn(*mut Handle, *mut c_int, *mut Status) -> c_int;
type FnIsend =
    unsafe extern "C" fn(*const c_void, c_int, Handle, c_int, c_int, Handle, *mut Handle) -> c_int;
type FnIrecv =
    unsafe extern "C" fn(*mut c_void, c_int, Handle, c_int, c_int, Handle, *mut Handle) -> c_int;
type FnIprobe = unsafe extern "C" fn(c_int, c_int, Handle, *mut c_int, *mut Status) -> c_int;
type FnRecv =
    unsafe extern "C" fn(*mut c_void, c_int, Handle, c_int, c_int, Handle, *mut Status) -> c_int;
type FnReqFree = unsafe extern "C" fn(*mut Handle) -> c_int;
type FnAbort = unsafe extern "C" fn(Handle, c_int) -> c_int;
type FnErrString = unsafe extern "C" fn(c_int, *mut c_char, *mut c_int) -> c_int;
type FnFinalize = unsafe extern "C" fn() -> c_int;

/// The functions and predefined handles of `libmpi.so.40`.
struct Lib {
    init_thread: FnInit,
    initialized: FnFlag,
    comm_rank: FnCommInt,
    comm_size: FnCommInt,
    set_errhandler: FnSetErr,
    comm_dup: FnDup,
    iallreduce: FnIallreduce,
    ibcast: FnIbcast,
    test: FnTest,
    isend: FnIsend,
    irecv: FnIrecv,
    iprobe: FnIprobe,
    recv: FnRecv,
    cancel: FnReqFree,
    request_free: FnReqFree,
    abort: FnAbort,
    error_string: FnErrString,
    finalize: FnFinalize,
    comm_world: Handle,
    float: Handle,
    double: Handle,
    byte: Handle,
    sum: Handle,
    errors_return: Handle,
}

/// The library names tried, in order: Open MPI's ABI version, then the development link.
const LIBRARIES: [&str; 2] = ["libmpi.so.40", "libmpi.so"];

/// The text of the last `dl*` failure on this thread (for NCCL's loader too).
pub(crate) fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string valid until the next dl* call on
    // this thread; it is copied right here.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "no reason given".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

impl Lib {
    fn load() -> Result<Lib, Error> {
        let mut reasons = Vec::new();
        let mut handle = ptr::null_mut();
        for name in LIBRARIES {
            let c = CString::new(name).expect("no NUL in library names");
            // SAFETY: a valid C string; RTLD_GLOBAL because Open MPI's plugins resolve
            // symbols of libmpi itself when they are loaded.
            handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if !handle.is_null() {
                break;
            }
            reasons.push(dl_error());
        }
        if handle.is_null() {
            return Err(Error::Comm {
                rank: None,
                message: format!(
                    "no MPI: Open MPI's libmpi.so.40 could not be loaded ({}); install Open MPI \
                     (Debian: `apt-get install openmpi-bin`)",
                    reasons.join("; ")
                ),
            });
        }
        let sym = |name: &str| -> Result<*mut c_void, Error> {
            let c = CString::new(name).expect("no NUL in symbol names");
            // SAFETY: handle is a live dlopen handle and c a valid C string.
            let p = unsafe { libc::dlsym(handle, c.as_ptr()) };
            if p.is_null() {
                Err(Error::Comm {
                    rank: None,
                    message: format!(
                        "no MPI: the loaded libmpi lacks `{name}` (tensor-fn needs Open MPI 4 or later)"
                    ),
                })
            } else {
                Ok(p)
            }
        };
        // SAFETY: each symbol is the Open MPI function of that name, whose C prototype the
        // function type spells (checked against Open MPI 4.1's mpi.h).
        unsafe {
            Ok(Lib {
                init_thread: std::mem::transmute::<*mut c_void, FnInit>(sym("MPI_Init_thread")?),
                initialized: std::mem::transmute::<*mut c_void, FnFlag>(sym("MPI_Initialized")?),
                comm_rank: std::mem::transmute::<*mut c_void, FnCommInt>(sym("MPI_Comm_rank")?),
                comm_size: std::mem::transmute::<*mut c_void, FnCommInt>(sym("MPI_Comm_size")?),
                set_errhandler: std::mem::transmute::<*mut c_void, FnSetErr>(sym(
                    "MPI_Comm_set_errhandler",
                )?),
                comm_dup: std::mem::transmute::<*mut c_void, FnDup>(sym("MPI_Comm_dup")?),
                iallreduce: std::mem::transmute::<*mut c_void, FnIallreduce>(sym(
                    "MPI_Iallreduce",
                )?),
                ibcast: std::mem::transmute::<*mut c_void, FnIbcast>(sym("MPI_Ibcast")?),
                test: std::mem::transmute::<*mut c_void, FnTest>(sym("MPI_Test")?),
                isend: std::mem::transmute::<*mut c_void, FnIsend>(sym("MPI_Isend")?),
                irecv: std::mem::transmute::<*mut c_void, FnIrecv>(sym("MPI_Irecv")?),
                iprobe: std::mem::transmute::<*mut c_void, FnIprobe>(sym("MPI_Iprobe")?),
                recv: std::mem::transmute::<*mut c_void, FnRecv>(sym("MPI_Recv")?),
                cancel: std::mem::transmute::<*mut c_void, FnReqFree>(sym("MPI_Cancel")?),
                request_free: std::mem::transmute::<*mut c_void, FnReqFree>(sym(
                    "MPI_Request_free",
                )?),
                abort: std::mem::transmute::<*mut c_void, FnAbort>(sym("MPI_Abort")?),
                error_string: std::mem::transmute::<*mut c_void, FnErrString>(sym(
                    "MPI_Error_string",
                )?),
                finalize: std::mem::transmute::<*mut c_void, FnFinalize>(sym("MPI_Finalize")?),
                comm_world: sym("ompi_mpi_comm_world")?,
                float: sym("ompi_mpi_float")?,
                double: sym("ompi_mpi_double")?,
                byte: sym("ompi_mpi_byte")?,
                sum: sym("ompi_mpi_op_sum")?,
                errors_return: sym("ompi_mpi_errors_return")?,
            })
        }
    }
}

/// An initialized MPI with its world communicator (and a duplicate for liveness checks).
pub(crate) struct Mpi {
    lib: Lib,
    world: Handle,
    probe: Handle,
    rank: usize,
    size: usize,
    /// Set by a timeout: the job can no longer make collective progress, and `Drop` must not
    /// call `MPI_Finalize` (it would wait for the dead ranks).
    broken: bool,
}

// SAFETY: MPI was initialized with MPI_THREAD_SERIALIZED, and `&mut self` serializes calls.
unsafe impl Send for Mpi {}

impl fmt::Debug for Mpi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.rank)
            .field("size", &self.size)
            .finish()
    }
}

impl Mpi {
    /// Loads Open MPI and initializes it (once per process: a second communicator is an
    /// error, as MPI cannot be initialized twice).
    pub(crate) fn init() -> Result<Mpi, Error> {
        let lib = Lib::load()?;
        let mut flag: c_int = 0;
        // SAFETY: a valid out-pointer.
        unsafe { (lib.initialized)(&mut flag) };
        if flag != 0 {
            return Err(Error::Comm {
                rank: None,
                message: "MPI is already initialized in this process: make one Communicator \
                          and pass it around"
                    .into(),
            });
        }
        // Open MPI's non-blocking all-reduce (libnbc) picks, for two ranks, an algorithm that
        // moves the whole buffer in each of its rounds: 0.64 ms for the seed model's 1.6 MB
        // against 0.35 ms for the ring (measured: examples/allreduce_time.rs). The ring is
        // bandwidth-optimal at every process count; a choice made in the environment stays.
        const NBC_ALGORITHM: &str = "OMPI_MCA_coll_libnbc_iallreduce_algorithm";
        if std::env::var_os(NBC_ALGORITHM).is_none() {
            std::env::set_var(NBC_ALGORITHM, "1");
        }
        let mut provided: c_int = 0;
        // SAFETY: null argc/argv are allowed by MPI-2 and later.
        let rc = unsafe {
            (lib.init_thread)(
                ptr::null_mut(),
                ptr::null_mut(),
                THREAD_SERIALIZED,
                &mut provided,
            )
        };
        if rc != 0 {
            return Err(Error::Comm {
                rank: None,
                message: format!("MPI_Init_thread failed with code {rc}"),
            });
        }
        let world = lib.comm_world;
        let (mut rank, mut size): (c_int, c_int) = (0, 0);
        let mut probe: Handle = ptr::null_mut();
        // SAFETY: world is MPI_COMM_WORLD of an initialized MPI; out-pointers are valid.
        unsafe {
            (lib.set_errhandler)(world, lib.errors_return);
            (lib.comm_rank)(world, &mut rank);
            (lib.comm_size)(world, &mut size);
        }
        let mut m = Mpi {
            lib,
            world,
            probe: ptr::null_mut(),
            rank: rank as usize,
            size: size as usize,
            broken: false,
        };
        // SAFETY: as above; the duplicate is a collective over the world.
        let rc = unsafe { (m.lib.comm_dup)(world, &mut probe) };
        m.check(rc, "MPI_Comm_dup")?;
        // SAFETY: probe is a valid communicator now.
        unsafe { (m.lib.set_errhandler)(probe, m.lib.errors_return) };
        m.probe = probe;
        Ok(m)
    }

    pub(crate) fn rank(&self) -> usize {
        self.rank
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// The rank among the processes of this machine (Open MPI's launcher says it), for
    /// choosing a GPU; 0 when unknown.
    #[allow(dead_code)] // used by the NCCL engine
    pub(crate) fn local_rank(&self) -> usize {
        std::env::var("OMPI_COMM_WORLD_LOCAL_RANK")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn error_text(&self, rc: c_int) -> String {
        let mut buf = [0 as c_char; MAX_ERROR_STRING];
        let mut len: c_int = 0;
        // SAFETY: the buffer has MPI_MAX_ERROR_STRING bytes, as MPI_Error_string requires.
        let ok = unsafe { (self.lib.error_string)(rc, buf.as_mut_ptr(), &mut len) } == 0;
        if ok {
            // SAFETY: MPI wrote a NUL-terminated string into buf.
            unsafe { CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        } else {
            format!("error code {rc}")
        }
    }

    fn check(&self, rc: c_int, op: &str) -> Result<(), Error> {
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::Comm {
                rank: Some(self.rank),
                message: format!("{op} failed: {}", self.error_text(rc)),
            })
        }
    }

    fn datatype<T: CommElem>(&self) -> Handle {
        if T::F64 {
            self.lib.double
        } else {
            self.lib.float
        }
    }

    /// Sums `buf` over all ranks, in place.
    pub(crate) fn all_reduce_sum<T: CommElem>(
        &mut self,
        buf: &mut [T],
        call: u64,
        timeout: Duration,
    ) -> Result<(), Error> {
        let mut owned = buf.to_vec();
        owned = self.all_reduce_sum_owned(owned, call, timeout)?;
        buf.copy_from_slice(&owned);
        Ok(())
    }

    /// Sums `buf` over all ranks, in place, with no copy: the buffer is given back when the
    /// collective completed, and leaked if it timed out (MPI may still write it).
    pub(crate) fn all_reduce_sum_owned<T: CommElem>(
        &mut self,
        mut buf: Vec<T>,
        call: u64,
        timeout: Duration,
    ) -> Result<Vec<T>, Error> {
        let count = self.count(buf.len(), "all-reduce")?;
        let mut req: Handle = ptr::null_mut();
        // SAFETY: buf holds `count` elements of the datatype and stays alive (and unmoved)
        // until the request completes or is leaked by `wait`.
        let rc = unsafe {
            (self.lib.iallreduce)(
                IN_PLACE,
                buf.as_mut_ptr().cast(),
                count,
                self.datatype::<T>(),
                self.lib.sum,
                self.world,
                &mut req,
            )
        };
        self.check(rc, "MPI_Iallreduce")?;
        match self.wait(&mut req, "all-reduce", call, timeout) {
            Ok(()) => Ok(buf),
            Err(e) => {
                std::mem::forget(buf);
                Err(e)
            }
        }
    }

    /// Copies `buf` of rank `root` to every rank.
    pub(crate) fn broadcast<T: CommElem>(
        &mut self,
        buf: &mut [T],
        root: usize,
        call: u64,
        timeout: Duration,
    ) -> Result<(), Error> {
        let dt = self.datatype::<T>();
        let mut owned = buf.to_vec();
        owned = self.broadcast_raw(owned, dt, root, call, timeout)?;
        buf.copy_from_slice(&owned);
        Ok(())
    }

    /// Copies the bytes of rank `root` to every rank.
    #[allow(dead_code)] // used by the NCCL engine
    pub(crate) fn broadcast_bytes(
        &mut self,
        buf: &mut [u8],
        root: usize,
        call: u64,
        timeout: Duration,
    ) -> Result<(), Error> {
        let dt = self.lib.byte;
        let owned = self.broadcast_raw(buf.to_vec(), dt, root, call, timeout)?;
        buf.copy_from_slice(&owned);
        Ok(())
    }

    fn broadcast_raw<T: Copy>(
        &mut self,
        mut buf: Vec<T>,
        dt: Handle,
        root: usize,
        call: u64,
        timeout: Duration,
    ) -> Result<Vec<T>, Error> {
        let count = self.count(buf.len(), "broadcast")?;
        let mut req: Handle = ptr::null_mut();
        // SAFETY: as in all_reduce_sum_owned.
        let rc = unsafe {
            (self.lib.ibcast)(
                buf.as_mut_ptr().cast(),
                count,
                dt,
                root as c_int,
                self.world,
                &mut req,
            )
        };
        self.check(rc, "MPI_Ibcast")?;
        match self.wait(&mut req, "broadcast", call, timeout) {
            Ok(()) => Ok(buf),
            Err(e) => {
                std::mem::forget(buf);
                Err(e)
            }
        }
    }

    fn count(&self, len: usize, op: &str) -> Result<c_int, Error> {
        c_int::try_from(len).map_err(|_| Error::Comm {
            rank: Some(self.rank),
            message: format!("{op} of {len} elements: MPI counts stop at {}", c_int::MAX),
        })
    }

    /// Polls `req` until it completes, answering liveness pings meanwhile; past the deadline,
    /// finds the silent ranks and fails.
    fn wait(
        &mut self,
        req: &mut Handle,
        op: &'static str,
        call: u64,
        timeout: Duration,
    ) -> Result<(), Error> {
        if self.broken {
            return Err(Error::Comm {
                rank: Some(self.rank),
                message: format!(
                    "{op} #{call}: an earlier collective failed; the job cannot go on"
                ),
            });
        }
        let start = Instant::now();
        let mut polls: u64 = 0;
        loop {
            let mut done: c_int = 0;
            // SAFETY: req is an active request; MPI_STATUS_IGNORE is null.
            let rc = unsafe { (self.lib.test)(req, &mut done, ptr::null_mut()) };
            if rc != 0 {
                self.broken = true;
                return Err(Error::Comm {
                    rank: Some(self.rank),
                    message: format!("{op} #{call} failed: {}", self.error_text(rc)),
                });
            }
            if done != 0 {
                return Ok(());
            }
            polls += 1;
            if polls.is_multiple_of(64) {
                self.answer_pings();
                let waited = start.elapsed();
                if waited >= timeout {
                    self.broken = true;
                    let silent = self.silent_ranks();
                    return Err(Error::CommTimeout {
                        rank: self.rank,
                        op,
                        call,
                        secs: (waited.as_secs_f64() * 10.0).round() / 10.0,
                        silent,
                    });
                }
                // Spin while a partner is probably close (a step's imbalance); past that,
                // sleep a little between polls so an idle rank leaves the core to others.
                if waited > Duration::from_millis(20) {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        }
    }

    /// Answers every pending ping on the probe communicator.
    pub(crate) fn answer_pings(&mut self) {
        loop {
            let mut flag: c_int = 0;
            let mut st = Status::default();
            // SAFETY: probe is a valid communicator; out-pointers are valid.
            let rc = unsafe { (self.lib.iprobe)(ANY_SOURCE, PING, self.probe, &mut flag, &mut st) };
            if rc != 0 || flag == 0 {
                return;
            }
            let mut word: u64 = 0;
            let mut st2 = Status::default();
            // SAFETY: a matching 8-byte message is waiting (probed); we receive it into word.
            let rc = unsafe {
                (self.lib.recv)(
                    (&mut word as *mut u64).cast(),
                    8,
                    self.lib.byte,
                    st.source,
                    PING,
                    self.probe,
                    &mut st2,
                )
            };
            if rc != 0 {
                return;
            }
            self.send_word(st.source, PONG, word);
        }
    }

    /// A fire-and-forget 8-byte message (the value is boxed and leaked: the request is freed
    /// without waiting, and MPI may read the value later).
    fn send_word(&self, dest: c_int, tag: c_int, word: u64) {
        let b = Box::leak(Box::new(word));
        let mut req: Handle = ptr::null_mut();
        // SAFETY: b lives forever; freeing an active send request lets it complete alone.
        unsafe {
            if (self.lib.isend)(
                (b as *const u64).cast(),
                8,
                self.lib.byte,
                dest,
                tag,
                self.probe,
                &mut req,
            ) == 0
            {
                (self.lib.request_free)(&mut req);
            }
        }
    }

    /// After a timeout: pings every other rank and lists those that do not answer within
    /// `PROBE_GRACE` (answering others' pings meanwhile).
    pub(crate) fn silent_ranks(&mut self) -> Vec<usize> {
        let others: Vec<usize> = (0..self.size).filter(|&r| r != self.rank).collect();
        let answers: &'static mut [u64] = Box::leak(vec![0u64; self.size].into_boxed_slice());
        let mut reqs: Vec<(usize, Handle)> = Vec::new();
        for &r in &others {
            let mut req: Handle = ptr::null_mut();
            // SAFETY: answers lives forever (leaked), so an uncompleted receive is harmless.
            let rc = unsafe {
                (self.lib.irecv)(
                    (&mut answers[r] as *mut u64).cast(),
                    8,
                    self.lib.byte,
                    r as c_int,
                    PONG,
                    self.probe,
                    &mut req,
                )
            };
            if rc == 0 {
                reqs.push((r, req));
            }
            self.send_word(r as c_int, PING, self.rank as u64);
        }
        let start = Instant::now();
        let mut alive = vec![false; self.size];
        while start.elapsed() < PROBE_GRACE && reqs.iter().any(|(r, _)| !alive[*r]) {
            for (r, req) in reqs.iter_mut() {
                if alive[*r] {
                    continue;
                }
                let mut done: c_int = 0;
                // SAFETY: req is an active receive request.
                let rc = unsafe { (self.lib.test)(req, &mut done, ptr::null_mut()) };
                if rc == 0 && done != 0 {
                    alive[*r] = true;
                }
            }
            self.answer_pings();
            std::thread::sleep(Duration::from_millis(1));
        }
        for (r, req) in reqs.iter_mut() {
            if !alive[*r] {
                // SAFETY: an active receive request; its buffer is leaked above.
                unsafe {
                    (self.lib.cancel)(req);
                    (self.lib.request_free)(req);
                }
            }
        }
        others.into_iter().filter(|&r| !alive[r]).collect()
    }

    /// `MPI_Abort` on the world: the launcher stops every rank.
    pub(crate) fn abort(&self, code: i32) -> ! {
        // SAFETY: MPI is initialized.
        unsafe { (self.lib.abort)(self.world, code) };
        std::process::exit(code)
    }
}

impl Drop for Mpi {
    fn drop(&mut self) {
        if !self.broken {
            // SAFETY: MPI is initialized and no request is pending (every wait completed).
            unsafe { (self.lib.finalize)() };
        }
    }
}
