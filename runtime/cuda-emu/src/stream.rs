//! Streams: queues of work that a worker thread runs in order, and stream capture.
//!
//! A stream's worker starts an operation only once it has been queued for the driver's
//! latency (or earlier, when someone waits for the stream). Correct code never notices: it
//! waits before it reads. Code that reads a result, or reuses a host buffer, without waiting
//! sees the stale value deterministically instead of winning a race now and then.
//!
//! While a stream captures, what is queued on it is recorded into the capture instead, from
//! any thread (a stream belongs to no thread), and runs only when the graph made from it is
//! launched.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use cust_raw::CUresult::{self, *};
use tensor_fn_kernels::ptx::Kernel;
use tensor_fn_kernels::vm::{self, Arg, Memory};

use crate::driver::{Result, Sticky};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The kernels of one loaded module; launches hold it, so unloading a module never pulls a
/// kernel from under queued work.
#[derive(Debug)]
pub(crate) struct LoadedModule {
    pub(crate) kernels: Vec<Kernel>,
}

/// One kernel launch, its parameters copied at launch time (as the driver copies them).
#[derive(Debug)]
pub(crate) struct Launch {
    pub(crate) module: Arc<LoadedModule>,
    pub(crate) kernel: usize,
    pub(crate) grid: [u32; 3],
    pub(crate) block: [u32; 3],
    pub(crate) args: Vec<Arg>,
}

/// Work a stream runs, or a capture records (a graph is a list of these).
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Host to device: `src` is a host address, read when the copy runs.
    HtoD {
        dst: u64,
        src: usize,
        bytes: usize,
    },
    /// Device to host: `dst` is a host address, written when the copy runs.
    DtoH {
        dst: usize,
        src: u64,
        bytes: usize,
    },
    DtoD {
        dst: u64,
        src: u64,
        bytes: usize,
    },
    Launch(Arc<Launch>),
    /// A launched graph: its nodes in order.
    Graph(Arc<Vec<Op>>),
    Record(Arc<Event>),
}

/// `CU_STREAM_CAPTURE_MODE_*`.
pub(crate) const MODE_GLOBAL: i32 = 0;
pub(crate) const MODE_THREAD_LOCAL: i32 = 1;
pub(crate) const MODE_RELAXED: i32 = 2;

/// A capture in progress on a stream.
#[derive(Debug)]
pub(crate) struct Capture {
    pub(crate) mode: i32,
    pub(crate) thread: ThreadId,
    pub(crate) nodes: Vec<Op>,
    /// An illegal call ended its usefulness: ending it fails.
    pub(crate) invalidated: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Queue {
    ops: VecDeque<(Instant, Op)>,
    /// The worker is running an operation it took off `ops`.
    busy: bool,
    /// Threads waiting for the stream: the worker runs without the latency meanwhile.
    waiters: usize,
    /// The stream was destroyed: the worker runs what is left and ends.
    closing: bool,
    /// Tests hold the worker back (until someone waits), to see queued work not run yet.
    held: bool,
    pub(crate) capture: Option<Capture>,
}

#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) queue: Mutex<Queue>,
    changed: Condvar,
}

impl Stream {
    /// A stream and its worker thread.
    pub(crate) fn start(
        memory: Arc<Mutex<Memory>>,
        sticky: Arc<Sticky>,
        latency: Duration,
    ) -> Result<Arc<Stream>> {
        let stream = Arc::new(Stream {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let worker = stream.clone();
        std::thread::Builder::new()
            .name("cuda-emu stream".into())
            .spawn(move || worker.work(&memory, &sticky, latency))
            .map_err(|_| CUDA_ERROR_OUT_OF_MEMORY)?;
        Ok(stream)
    }

    fn work(&self, memory: &Mutex<Memory>, sticky: &Sticky, latency: Duration) {
        loop {
            let op = {
                let mut q = lock(&self.queue);
                loop {
                    if let Some(&(queued, _)) = q.ops.front() {
                        let due = queued + latency;
                        let now = Instant::now();
                        if q.waiters > 0 || q.closing || (!q.held && now >= due) {
                            break;
                        }
                        if q.held {
                            q = self.changed.wait(q).unwrap_or_else(PoisonError::into_inner);
                            continue;
                        }
                        q = self
                            .changed
                            .wait_timeout(q, due - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    } else if q.closing {
                        return;
                    } else {
                        q = self.changed.wait(q).unwrap_or_else(PoisonError::into_inner);
                    }
                }
                q.busy = true;
                q.ops.pop_front().map(|(_, op)| op)
            };
            if let Some(op) = op {
                // After a fault the context is lost: queued work is dropped, as a GPU drops it
                // (events still complete, so that waiting for one returns the fault).
                if sticky.get().is_none() || matches!(op, Op::Record(_)) {
                    if let Err((code, why)) = run(&op, memory) {
                        sticky.set(code, &why);
                    }
                }
            }
            let mut q = lock(&self.queue);
            q.busy = false;
            self.changed.notify_all();
        }
    }

    /// Queues `op`, or records it while the stream captures.
    pub(crate) fn enqueue(&self, op: Op) {
        let mut q = lock(&self.queue);
        match &mut q.capture {
            Some(c) => c.nodes.push(op),
            None => {
                q.ops.push_back((Instant::now(), op));
                self.changed.notify_all();
            }
        }
    }

    /// Whether everything queued so far has run.
    pub(crate) fn idle(&self) -> bool {
        let q = lock(&self.queue);
        q.ops.is_empty() && !q.busy
    }

    /// Waits until everything queued so far has run. A capturing stream cannot be waited for:
    /// the capture is invalidated and the wait fails, as on the driver.
    pub(crate) fn synchronize(&self) -> Result {
        let mut q = lock(&self.queue);
        if let Some(c) = &mut q.capture {
            c.invalidated = true;
            return Err(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
        }
        self.drain(q);
        Ok(())
    }

    /// Waits until the queue is empty and the worker idle (work queued meanwhile included).
    pub(crate) fn drain(&self, mut q: MutexGuard<'_, Queue>) {
        q.waiters += 1;
        self.changed.notify_all();
        while !q.ops.is_empty() || q.busy {
            q = self.changed.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
        q.waiters -= 1;
    }

    /// Holds queued work back until someone waits for the stream (`true`), or lets it run.
    #[cfg(test)]
    pub(crate) fn hold(&self, held: bool) {
        lock(&self.queue).held = held;
        self.changed.notify_all();
    }

    /// Ends the worker once what is queued has run; a capture in progress is dropped.
    pub(crate) fn close(&self) {
        let mut q = lock(&self.queue);
        q.closing = true;
        q.capture = None;
        self.changed.notify_all();
    }
}

/// A recorded point in a stream.
#[derive(Debug, Default)]
pub(crate) struct Event {
    pub(crate) timing: bool,
    pub(crate) state: Mutex<EventState>,
    pub(crate) done: Condvar,
}

#[derive(Debug, Default)]
pub(crate) struct EventState {
    /// Records queued and not yet run.
    pub(crate) pending: u64,
    /// When the last record ran.
    pub(crate) at: Option<Instant>,
    /// Last recorded into a capturing stream: it cannot be waited for or queried.
    pub(crate) captured: bool,
    /// The stream of the last record, to run it when someone waits for the event.
    pub(crate) stream: Option<std::sync::Weak<Stream>>,
}

/// Runs one operation on device memory; `Err` is the fault and what the interpreter said.
fn run(op: &Op, memory: &Mutex<Memory>) -> std::result::Result<(), (CUresult, String)> {
    let fault = |e: vm::VmError| {
        let code = if e.0.contains("misaligned") {
            CUDA_ERROR_MISALIGNED_ADDRESS
        } else if e.0.contains("global access") || e.0.contains("not the start of a buffer") {
            CUDA_ERROR_ILLEGAL_ADDRESS
        } else {
            CUDA_ERROR_LAUNCH_FAILED
        };
        (code, e.0)
    };
    match op {
        &Op::HtoD { dst, src, bytes } => {
            // SAFETY: the driver's contract for an async copy: the caller keeps the `bytes`
            // bytes at host address `src` readable until the copy has run (it waits for the
            // stream before reusing them). They are read now, when the copy runs.
            let data = unsafe { std::slice::from_raw_parts(src as *const u8, bytes) };
            lock(memory).write_bytes(dst, data).map_err(fault)
        }
        &Op::DtoH { dst, src, bytes } => {
            // SAFETY: as above: the `bytes` bytes at host address `dst` stay writable, and
            // unused by the caller, until the copy has run.
            let out = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, bytes) };
            lock(memory).read_bytes(src, out).map_err(fault)
        }
        &Op::DtoD { dst, src, bytes } => lock(memory).copy(dst, src, bytes).map_err(fault),
        Op::Launch(l) => {
            let kernel = &l.module.kernels[l.kernel];
            vm::launch(kernel, l.grid, l.block, &l.args, &mut lock(memory))
                .map(drop)
                .map_err(fault)
        }
        Op::Graph(nodes) => nodes.iter().try_for_each(|n| run(n, memory)),
        Op::Record(event) => {
            let mut s = lock(&event.state);
            s.pending = s.pending.saturating_sub(1);
            s.at = Some(Instant::now());
            event.done.notify_all();
            Ok(())
        }
    }
}
