//! A tiny fork-join pool for the CPU kernels: persistent workers that spin briefly between jobs,
//! so splitting a 0.1 ms GEMM across cores costs well under a microsecond, with no per-call
//! thread start-up.
//!
//! Work is handed out in chunks. Thread p first takes the chunks of its own contiguous range
//! (so the same thread touches the same columns of a weight matrix call after call, and they
//! stay in its core's cache), then steals from the others. The calling thread always works
//! too: when a worker is slow to wake (another process holds its core) the caller simply does
//! its chunks, and it never waits for a worker that has not started. So a busy machine makes a
//! call no slower than running it alone.
//!
//! `TENSOR_FN_THREADS` sets the number of threads (the caller counts as one); the default is
//! the machine's available parallelism.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The current job: the closure (lifetime erased) and its number of chunks.
#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    chunks: usize,
}

// SAFETY: the closure is `Sync`, and `run_chunks` keeps it alive until no worker is inside it.
unsafe impl Send for Job {}

/// `state` packs the job's epoch (high 32 bits), a closed flag and the number of workers
/// inside the job, so joining a job and closing it are one atomic step each.
const CLOSED: u64 = 1 << 31;
const ACTIVE: u64 = CLOSED - 1;

struct Pool {
    threads: AtomicUsize,
    state: AtomicU64,
    /// Per thread's range: how many of its chunks were handed out.
    taken: Vec<AtomicUsize>,
    job: Mutex<Option<Job>>,
    wake: Condvar,
    /// Workers blocked on `wake` (the caller only signals when some are).
    parked: AtomicUsize,
    /// Serializes jobs from several user threads.
    gate: Mutex<()>,
    /// A chunk of the current job panicked on a worker (the caller panics in turn).
    panicked: AtomicBool,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let want = std::env::var("TENSOR_FN_THREADS")
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .min(64);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            threads: AtomicUsize::new(1),
            state: AtomicU64::new(CLOSED),
            taken: (0..want).map(|_| AtomicUsize::new(0)).collect(),
            job: Mutex::new(None),
            wake: Condvar::new(),
            parked: AtomicUsize::new(0),
            gate: Mutex::new(()),
            panicked: AtomicBool::new(false),
        }));
        // Fewer threads than asked for if spawning fails; nothing ever waits on a worker.
        let mut started = 1;
        for w in 1..want {
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

/// How many threads work on a job (the caller included).
pub fn threads() -> usize {
    pool().threads.load(Ordering::Acquire)
}

fn epoch_of(state: u64) -> u64 {
    state >> 32
}

fn worker(pool: &'static Pool, me: usize) {
    let mut done_epoch = 0u64;
    loop {
        // Wait for a new open job: spin, then yield, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        let state = loop {
            let s = pool.state.load(Ordering::Acquire);
            if epoch_of(s) != done_epoch && s & CLOSED == 0 {
                break s;
            }
            // Reading the clock costs more than a spin: look at it every 256 spins.
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(256) {
                std::hint::spin_loop();
                continue;
            }
            let waited = start.elapsed();
            if waited < Duration::from_micros(50) {
                std::hint::spin_loop();
            } else if waited < Duration::from_millis(2) {
                std::thread::yield_now();
            } else {
                let mut guard = pool.job.lock().unwrap_or_else(|e| e.into_inner());
                pool.parked.fetch_add(1, Ordering::AcqRel);
                loop {
                    let s = pool.state.load(Ordering::Acquire);
                    if epoch_of(s) != done_epoch && s & CLOSED == 0 {
                        break;
                    }
                    guard = pool.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
                }
                pool.parked.fetch_sub(1, Ordering::AcqRel);
            }
        };
        done_epoch = epoch_of(state);
        // Join the job unless it closed meanwhile.
        if pool
            .state
            .compare_exchange(state, state + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            continue;
        }
        let job = *pool.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            // SAFETY: we are counted in `state`, so `run_chunks` has not returned and the
            // closure it borrowed is alive.
            let f = unsafe { &*job.f };
            // A panicking chunk must not end the worker while it is counted in `state`: the
            // caller would wait for it forever. The caller panics instead.
            if catch_unwind(AssertUnwindSafe(|| work(pool, job.chunks, me, f))).is_err() {
                pool.panicked.store(true, Ordering::Release);
            }
        }
        pool.state.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs chunks until none is left: first those of range `me`, then the others'.
fn work(pool: &Pool, chunks: usize, me: usize, f: &(dyn Fn(usize) + Sync)) {
    let threads = pool.threads.load(Ordering::Acquire);
    let per = chunks.div_ceil(threads);
    for k in 0..threads {
        let r = (me + k) % threads;
        let (start, end) = (r * per, ((r + 1) * per).min(chunks));
        loop {
            let c = start + pool.taken[r].fetch_add(1, Ordering::AcqRel);
            if c >= end {
                break;
            }
            f(c);
        }
    }
}

/// Runs `f(0)`, ..., `f(chunks - 1)` on the calling thread and whichever workers are free,
/// returning when all chunks are done. When a chunk panics, on any thread, this panics once no
/// worker is inside `f` any more.
pub fn run_chunks(chunks: usize, f: &(dyn Fn(usize) + Sync)) {
    let pool = pool();
    if chunks <= 1 || pool.threads.load(Ordering::Acquire) == 1 {
        (0..chunks).for_each(f);
        return;
    }
    let _gate = pool.gate.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: the lifetime is erased only while the job is open or a worker is inside it; we
    // close it and wait for the workers inside before returning.
    let erased: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
    {
        let mut job = pool.job.lock().unwrap_or_else(|e| e.into_inner());
        *job = Some(Job { f: erased, chunks });
        for t in &pool.taken {
            t.store(0, Ordering::Release);
        }
        let epoch = epoch_of(pool.state.load(Ordering::Acquire)) + 1;
        pool.state.store(epoch << 32, Ordering::Release);
        if pool.parked.load(Ordering::Acquire) > 0 {
            pool.wake.notify_all();
        }
    }
    // Closes the job when this function returns or unwinds from a panicking chunk, so that
    // `f` outlives every use of it on the workers.
    let close = Close(pool);
    work(pool, chunks, 0, f);
    drop(close);
}

/// Closes the current job: no worker joins after this, and the ones inside finish their chunk.
struct Close<'a>(&'a Pool);

impl Drop for Close<'_> {
    fn drop(&mut self) {
        let pool = self.0;
        pool.state.fetch_or(CLOSED, Ordering::AcqRel);
        let mut spins = 0u32;
        while pool.state.load(Ordering::Acquire) & ACTIVE != 0 {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *pool.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if pool.panicked.swap(false, Ordering::AcqRel) && !std::thread::panicking() {
            panic!("a chunk of a parallel job panicked on a worker thread (its message is above)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_chunk_runs_exactly_once() {
        for round in 0..2000 {
            let chunks = 1 + round % 17;
            let hits: Vec<AtomicU64> = (0..chunks).map(|_| AtomicU64::new(0)).collect();
            run_chunks(chunks, &|c| {
                hits[c].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "round {round}"
            );
        }
    }

    #[test]
    fn jobs_from_several_threads_do_not_mix() {
        std::thread::scope(|s| {
            for t in 0..3u64 {
                s.spawn(move || {
                    for _ in 0..300 {
                        let sum = AtomicU64::new(0);
                        run_chunks(8, &|c| {
                            sum.fetch_add(t * 100 + c as u64, Ordering::Relaxed);
                        });
                        assert_eq!(sum.load(Ordering::Relaxed), t * 800 + 28);
                    }
                });
            }
        });
    }
}

#[cfg(test)]
mod panics {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// After a job that panicked, the pool runs the next job normally.
    fn pool_still_works() {
        let hits: Vec<AtomicU64> = (0..16).map(|_| AtomicU64::new(0)).collect();
        run_chunks(16, &|c| {
            hits[c].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn a_panicking_chunk_panics_the_caller_after_the_workers_leave() {
        for _ in 0..50 {
            let inside = AtomicUsize::new(0);
            let r = catch_unwind(AssertUnwindSafe(|| {
                run_chunks(8, &|c| {
                    inside.fetch_add(1, Ordering::AcqRel);
                    std::thread::sleep(Duration::from_micros(200));
                    inside.fetch_sub(1, Ordering::AcqRel);
                    assert!(c != 0, "chunk 0 fails");
                })
            }));
            assert!(r.is_err());
            // Nobody runs the closure once run_chunks is done, returning or panicking.
            assert_eq!(inside.load(Ordering::Acquire), 0);
            pool_still_works();
        }
    }

    #[test]
    fn a_chunk_panicking_on_a_worker_panics_the_caller() {
        let caller = std::thread::current().id();
        for _ in 0..50 {
            let on_worker = AtomicBool::new(false);
            let r = catch_unwind(AssertUnwindSafe(|| {
                run_chunks(8, &|_| {
                    std::thread::sleep(Duration::from_micros(200));
                    if std::thread::current().id() != caller {
                        on_worker.store(true, Ordering::Release);
                        panic!("a chunk on a worker fails");
                    }
                })
            }));
            // The workers may all have been asleep: then the caller ran every chunk.
            assert_eq!(r.is_err(), on_worker.load(Ordering::Acquire));
            pool_still_works();
        }
    }
}

#[cfg(test)]
mod probe {
    use super::*;

    #[test]
    #[ignore]
    fn who_runs_chunks() {
        let main = std::thread::current().id();
        let mut by_worker = 0;
        let mut total = 0;
        for _ in 0..2000 {
            let counts: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
            run_chunks(8, &|c| {
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(10) {}
                if std::thread::current().id() != main {
                    counts[c].store(1, Ordering::Relaxed);
                }
            });
            by_worker += counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum::<usize>();
            total += 8;
        }
        println!(
            "threads {} worker ran {by_worker} of {total} chunks",
            threads_now()
        );
    }

    fn threads_now() -> usize {
        pool().threads.load(Ordering::Acquire)
    }
}
