//! Client threads kept after their connection ends and reused for the next one, so that a
//! reconnect storm does not pay for creating and tearing down two threads per client.
//!
//! Owns: the parked threads and handing them work. Each connection still has its own reader
//! and writer thread for as long as it lives; a thread only returns here once the reader or
//! writer function has returned and dropped everything it held. Must not: run two jobs at once
//! on a thread, keep a job's captures alive after it returns, or hold a lock while a job runs.
//!
//! Handing over: `idle` counts parked threads. A spawner that takes one from the count (never
//! below zero) sends its job on the shared channel, and exactly one parked thread receives it.
//! A parked thread that waited `IDLE_KEEP` for nothing leaves only if it can take itself from
//! the count; if a spawner took it first, a job is on its way and it waits on.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

/// What a pooled thread runs: a reader or a writer, to its end.
pub(super) type Job = Box<dyn FnOnce() + Send + 'static>;

/// How long a parked thread waits for a new connection before it ends.
const IDLE_KEEP: Duration = Duration::from_secs(30);

/// Parked client threads, shared by every broker in the process.
pub(super) struct ThreadPool {
    jobs: Sender<Job>,
    waiting: Receiver<Job>,
    idle: AtomicUsize,
    keep: Duration,
}

/// The process's pool.
pub(super) fn pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| ThreadPool::new(IDLE_KEEP))
}

impl ThreadPool {
    fn new(keep: Duration) -> Self {
        let (jobs, waiting) = crossbeam_channel::unbounded();
        ThreadPool {
            jobs,
            waiting,
            idle: AtomicUsize::new(0),
            keep,
        }
    }

    /// Runs `job` on a parked thread, or on a new one (named `name`, with `stack_size` bytes
    /// of stack) when none is parked. Fails only if a new thread is needed and cannot start.
    pub(super) fn spawn(
        &'static self,
        name: impl FnOnce() -> String,
        stack_size: usize,
        job: Job,
    ) -> io::Result<()> {
        if take_one(&self.idle) {
            // A parked thread is committed to receiving it; the channel never closes (the
            // pool lives as long as the process).
            let _ = self.jobs.send(job);
            return Ok(());
        }
        thread::Builder::new()
            .name(name())
            .stack_size(stack_size)
            .spawn(move || self.work(job))?;
        Ok(())
    }

    /// Runs jobs until none comes for `keep`.
    fn work(&self, first: Job) {
        first();
        loop {
            self.idle.fetch_add(1, Ordering::AcqRel);
            let job = loop {
                match self.waiting.recv_timeout(self.keep) {
                    Ok(job) => break job,
                    // Gone from the count: nobody will send to this thread; leave.
                    Err(_) if take_one(&self.idle) => return,
                    // A spawner counted on this thread: its job is coming.
                    Err(_) => continue,
                }
            };
            job();
        }
    }

    #[cfg(test)]
    fn idle(&self) -> usize {
        self.idle.load(Ordering::Acquire)
    }
}

/// Takes one from `count` unless it is zero; true if it did.
fn take_one(count: &AtomicUsize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
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
        let pool = leak(ThreadPool::new(Duration::from_secs(5)));
        let (tx, rx) = crossbeam_channel::unbounded();
        let tx1 = tx.clone();
        let job: Job = Box::new(move || tx1.send(thread::current().id()).expect("send"));
        pool.spawn(|| "pool-test".into(), 64 * 1024, job)
            .expect("spawn");
        let first = rx.recv().expect("first job ran");
        wait_until("the thread parks", || pool.idle() == 1);
        let job: Job = Box::new(move || tx.send(thread::current().id()).expect("send"));
        pool.spawn(|| "pool-test".into(), 64 * 1024, job)
            .expect("spawn");
        assert_eq!(rx.recv().expect("second job ran"), first);
        wait_until("parked again", || pool.idle() == 1);
    }

    #[test]
    fn busy_threads_are_not_shared_and_idle_ones_leave() {
        let pool = leak(ThreadPool::new(Duration::from_millis(300)));
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
            pool.spawn(|| "pool-test".into(), 64 * 1024, job)
                .expect("spawn");
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
