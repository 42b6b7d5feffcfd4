//! A tiny fork-join pool for the CPU kernels: persistent workers that spin briefly between jobs,
//! so splitting a 0.1 ms GEMM across cores costs well under a microsecond, with no per-call
//! thread start-up.
//!
//! `TENSOR_FN_THREADS` sets the number of threads (the caller counts as one); the default is
//! the machine's available parallelism.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A job as seen by the workers: the closure (lifetime erased) and how many parts it has.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
}

// SAFETY: the closure is `Sync`, and `run` keeps it alive until every worker reported back.
unsafe impl Send for Job {}

struct Pool {
    threads: AtomicUsize,
    /// Bumped by each `run`; workers wait for it to change.
    epoch: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    job: Mutex<Option<Job>>,
    wake: Condvar,
    /// Serializes `run` calls from several user threads.
    gate: Mutex<()>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::env::var("TENSOR_FN_THREADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .min(64);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            threads: AtomicUsize::new(1),
            epoch: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            gate: Mutex::new(()),
        }));
        // Fewer threads than asked for if spawning fails: `run` only waits on workers that exist.
        let mut started = 1;
        for w in 1..threads {
            let spawned = std::thread::Builder::new()
                .name(format!("tensor-fn-{w}"))
                .spawn(move || worker(pool, w));
            if spawned.is_err() {
                break;
            }
            started += 1;
        }
        pool.threads.store(started, Ordering::Release);
        pool
    })
}

/// How many parts `run` splits work into.
pub fn threads() -> usize {
    pool().threads.load(Ordering::Acquire)
}

fn worker(pool: &'static Pool, index: usize) {
    let mut seen = 0usize;
    loop {
        // Spin for a while: jobs come every few microseconds while a model trains.
        let start = Instant::now();
        let mut epoch = pool.epoch.load(Ordering::Acquire);
        while epoch == seen && start.elapsed() < Duration::from_millis(2) {
            std::hint::spin_loop();
            epoch = pool.epoch.load(Ordering::Acquire);
        }
        if epoch == seen {
            let mut guard = pool.job.lock().unwrap_or_else(|e| e.into_inner());
            while pool.epoch.load(Ordering::Acquire) == seen {
                guard = pool.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            drop(guard);
            epoch = pool.epoch.load(Ordering::Acquire);
        }
        seen = epoch;
        let job = *pool.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            // SAFETY: `run` does not return (so the closure stays alive) until `pending`
            // reaches zero, which happens only after this call.
            let f = unsafe { &*job.f };
            f(index);
        }
        pool.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs `f(0)`, ..., `f(threads() - 1)` in parallel (part 0 on the calling thread) and returns
/// when all are done. A panic in a part is not caught: kernels don't panic.
pub fn run(f: &(dyn Fn(usize) + Sync)) {
    let pool = pool();
    let threads = pool.threads.load(Ordering::Acquire);
    if threads == 1 {
        f(0);
        return;
    }
    let _gate = pool.gate.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the lifetime is erased only for the duration of this call; see `worker`.
    let erased: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
    {
        let mut job = pool.job.lock().unwrap_or_else(|e| e.into_inner());
        *job = Some(Job { f: erased });
        pool.pending.store(threads - 1, Ordering::Release);
        pool.epoch.fetch_add(1, Ordering::AcqRel);
        pool.wake.notify_all();
    }
    f(0);
    while pool.pending.load(Ordering::Acquire) != 0 {
        std::hint::spin_loop();
    }
    *pool.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_part_runs_once_per_call() {
        for _ in 0..1000 {
            let hits = AtomicU64::new(0);
            run(&|part| {
                hits.fetch_add(1 << (part * 8), Ordering::Relaxed);
            });
            let want: u64 = (0..threads()).map(|p| 1u64 << (p * 8)).sum();
            assert_eq!(hits.load(Ordering::Relaxed), want);
        }
    }
}
