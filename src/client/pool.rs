//! Client threads kept after their connection ends and reused for the next one, so that a
//! reconnect storm does not pay for creating and tearing down two threads per client.
//!
//! Owns: the parked threads and handing them work. Each connection still has its own reader
//! and writer thread for as long as it lives; a thread only returns here once the reader or
//! writer function has returned and dropped everything it held. Must not: run two jobs at once
//! on a thread, keep a job's captures alive after it returns, or hold a lock while a job runs.
//!
//! Handing over: each parked thread has a slot of its own, and the pool keeps the slots on a
//! stack (the most recently parked first: its stack is still warm in cache). A spawner pops a
//! slot, puts the job in it and unparks the thread. A thread that waited `IDLE_KEEP` for
//! nothing leaves only if it can take its own slot off the stack; if a spawner popped it first,
//! a job is on its way and it waits for it. (One shared channel would do the same, but every
//! parked thread would be a waiter of that channel, and a wake-up among ten thousand waiters
//! costs a walk over all of them; channels also spin and yield before they sleep, which a
//! thread that is likely to wait long should not.)
//!
//! Spares: a thread about to run a job starts a spare thread when fewer than `SPARES` are
//! parked, so that during a storm of new connections the acceptor and the readers find a
//! thread waiting instead of creating one on their own path (a fresh broker's first 10,000
//! connections still create 20,000 threads, but on the threads that are not accepting).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// What a pooled thread runs: a reader or a writer, to its end.
pub(super) type Job = Box<dyn FnOnce() + Send + 'static>;

/// How long a parked thread waits for a new connection before it ends.
const IDLE_KEEP: Duration = Duration::from_secs(30);
/// Threads kept parked ahead of demand while connections keep arriving: a thread about to run
/// a job starts a spare when fewer are parked, so that in a storm the acceptor (and the reader
/// starting its writer) finds a thread ready instead of creating one itself.
const SPARES: usize = 2;

/// Where a spawner leaves the next job for one parked thread.
struct Slot {
    job: Mutex<Option<Job>>,
    thread: Thread,
    /// The stack the thread was started with: it only takes jobs that asked for no more.
    stack_size: usize,
}

/// Parked client threads, shared by every broker in the process.
pub(super) struct ThreadPool {
    parked: Mutex<Vec<Arc<Slot>>>,
    /// Spare threads started and not yet parked.
    starting: AtomicUsize,
    /// Threads of this pool alive now, busy or parked: the futex table is sized by it.
    alive: AtomicUsize,
    /// `SPARES`, or another number in tests.
    spares: usize,
    keep: Duration,
}

/// The process's pool.
pub(super) fn pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| ThreadPool::new(IDLE_KEEP, SPARES))
}

impl ThreadPool {
    fn new(keep: Duration, spares: usize) -> Self {
        ThreadPool {
            parked: Mutex::new(Vec::new()),
            starting: AtomicUsize::new(0),
            alive: AtomicUsize::new(0),
            spares,
            keep,
        }
    }

    /// Runs `job` on a parked thread, or on a new one (with `stack_size` bytes of stack) when
    /// none is parked. Fails only if a new thread is needed and cannot start. Threads are
    /// named `client`: one serves many connections, readers and writers, over its life (log
    /// lines name the client).
    pub(super) fn spawn(&'static self, stack_size: usize, job: Job) -> io::Result<()> {
        let parked = {
            let mut parked = self.parked.lock();
            // The most recently parked thread with a stack large enough (in a process with one
            // broker every thread has the same size, and the last one fits).
            let fits = parked
                .iter()
                .rposition(|slot| slot.stack_size >= stack_size);
            fits.map(|at| parked.swap_remove(at))
        };
        if let Some(slot) = parked {
            // Off the stack, so its thread will not leave: it waits for this job.
            *slot.job.lock() = Some(job);
            slot.thread.unpark();
            return Ok(());
        }
        self.start_thread(stack_size, Some(job))
    }

    /// Starts a pool thread that runs `first`, or parks at once as a spare.
    fn start_thread(&'static self, stack_size: usize, first: Option<Job>) -> io::Result<()> {
        let alive = self.alive.fetch_add(1, Ordering::AcqRel) + 1;
        super::futex_table::fit(alive);
        let started = super::os_thread::start(
            c"client",
            stack_size,
            Box::new(move || {
                self.work(first, stack_size);
                self.alive.fetch_sub(1, Ordering::AcqRel);
            }),
        );
        if started.is_err() {
            self.alive.fetch_sub(1, Ordering::AcqRel);
        }
        started
    }

    /// Starts a spare thread when fewer than `SPARES` are parked or starting. Best effort: a
    /// thread that cannot start now is started by `spawn` when it is needed, or refused there.
    fn top_up(&'static self, stack_size: usize) {
        let parked = self.parked.lock().len();
        if parked + self.starting.load(Ordering::Acquire) >= self.spares {
            return;
        }
        if self.starting.fetch_add(1, Ordering::AcqRel) >= self.spares {
            self.starting.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        if self.start_thread(stack_size, None).is_err() {
            self.starting.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Runs jobs until none comes for `keep`; a spare (`first` None) parks first.
    fn work(&'static self, first: Option<Job>, stack_size: usize) {
        let slot = Arc::new(Slot {
            job: Mutex::new(None),
            thread: thread::current(),
            stack_size,
        });
        let mut job = match first {
            Some(job) => job,
            None => {
                self.parked.lock().push(Arc::clone(&slot));
                self.starting.fetch_sub(1, Ordering::AcqRel);
                match self.wait(&slot) {
                    Some(job) => job,
                    None => return,
                }
            }
        };
        loop {
            self.top_up(stack_size);
            job();
            self.parked.lock().push(Arc::clone(&slot));
            job = match self.wait(&slot) {
                Some(next) => next,
                None => return,
            };
        }
    }

    /// Waits for a job in `slot`; `None` when none came for `keep` and the thread may leave.
    fn wait(&self, slot: &Arc<Slot>) -> Option<Job> {
        let deadline = Instant::now() + self.keep;
        loop {
            if let Some(job) = slot.job.lock().take() {
                return Some(job);
            }
            let now = Instant::now();
            if now >= deadline {
                let mut parked = self.parked.lock();
                if let Some(at) = parked.iter().position(|p| Arc::ptr_eq(p, slot)) {
                    // Still on the stack: nobody will give it work; leave.
                    parked.swap_remove(at);
                    return None;
                }
                // A spawner popped it: its job is coming; wait without a deadline.
                drop(parked);
                loop {
                    if let Some(job) = slot.job.lock().take() {
                        return Some(job);
                    }
                    thread::park();
                }
            }
            // Spurious wake-ups are fine: the slot is checked again.
            thread::park_timeout(deadline - now);
        }
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.parked.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant;

    fn leak(pool: ThreadPool) -> &'static ThreadPool {
        Box::leak(Box::new(pool))
    }

    fn wait_until(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "{what}");
            thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_finished_thread_runs_the_next_job() {
        let pool = leak(ThreadPool::new(Duration::from_secs(5), 0));
        let (tx, rx) = crossbeam_channel::unbounded();
        let tx1 = tx.clone();
        let job: Job = Box::new(move || tx1.send(thread::current().id()).expect("send"));
        pool.spawn(64 * 1024, job).expect("spawn");
        let first = rx.recv().expect("first job ran");
        wait_until("the thread parks", || pool.idle() == 1);
        let job: Job = Box::new(move || tx.send(thread::current().id()).expect("send"));
        pool.spawn(64 * 1024, job).expect("spawn");
        assert_eq!(rx.recv().expect("second job ran"), first);
        wait_until("parked again", || pool.idle() == 1);
    }

    #[test]
    fn a_job_never_gets_a_smaller_stack_than_it_asked_for() {
        let pool = leak(ThreadPool::new(Duration::from_secs(5), 0));
        let (tx, rx) = crossbeam_channel::unbounded();
        let tx1 = tx.clone();
        let job: Job = Box::new(move || tx1.send(thread::current().id()).expect("send"));
        pool.spawn(64 * 1024, job).expect("spawn");
        let small = rx.recv().expect("ran");
        wait_until("the thread parks", || pool.idle() == 1);
        let job: Job = Box::new(move || tx.send(thread::current().id()).expect("send"));
        pool.spawn(256 * 1024, job).expect("spawn");
        assert_ne!(rx.recv().expect("ran"), small, "a new, larger thread");
        wait_until("both park", || pool.idle() == 2);
    }

    #[test]
    fn a_spare_thread_waits_while_the_first_job_runs() {
        let pool = leak(ThreadPool::new(Duration::from_secs(5), 1));
        let gate = std::sync::Arc::new(Mutex::new(()));
        let held = gate.lock().expect("lock");
        let (tx, rx) = crossbeam_channel::unbounded();
        let job: Job = {
            let gate = std::sync::Arc::clone(&gate);
            Box::new(move || {
                tx.send(thread::current().id()).expect("send");
                drop(gate.lock().expect("lock"));
            })
        };
        pool.spawn(64 * 1024, job).expect("spawn");
        let busy = rx.recv().expect("ran");
        // Only one job was ever given, and it still runs: the parked thread is a spare.
        wait_until("a spare parks", || pool.idle() == 1);
        let (tx, rx) = crossbeam_channel::unbounded();
        let job: Job = Box::new(move || tx.send(thread::current().id()).expect("send"));
        pool.spawn(64 * 1024, job).expect("spawn");
        assert_ne!(rx.recv().expect("ran"), busy);
        drop(held);
    }

    #[test]
    fn busy_threads_are_not_shared_and_idle_ones_leave() {
        let pool = leak(ThreadPool::new(Duration::from_millis(300), 0));
        let gate = std::sync::Arc::new(Mutex::new(()));
        let held = gate.lock().expect("lock");
        let (tx, rx) = crossbeam_channel::unbounded();
        for _ in 0..4 {
            let gate = std::sync::Arc::clone(&gate);
            let tx = tx.clone();
            let job: Job = Box::new(move || {
                let _g = gate.lock().expect("lock");
                tx.send(thread::current().id()).expect("send");
            });
            pool.spawn(64 * 1024, job).expect("spawn");
        }
        drop(held);
        let mut ids: Vec<_> = (0..4).map(|_| rx.recv().expect("ran")).collect();
        ids.sort_by_key(|id| format!("{id:?}"));
        ids.dedup();
        assert_eq!(ids.len(), 4, "four jobs held at once ran on four threads");
        // All four park; with nothing to do they leave after the keep time.
        wait_until("four threads park", || pool.idle() == 4);
        wait_until("idle threads leave", || pool.idle() == 0);
    }
}
