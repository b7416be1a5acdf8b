//! Keeps the kernel's per-process futex hash table in proportion to the client threads.
//!
//! Every idle writer and every parked pool thread sleeps on a futex. Since Linux 6.16 a
//! threaded process gets a futex hash table of its own, sized by the number of CPUs (16 slots
//! on a two-core machine), so with 20,000 sleeping threads each wake-up walked a chain of more
//! than a thousand waiters: measured here, the connect path spent over 40% of its time in
//! `futex_wake`. This module asks for more slots (`prctl(PR_FUTEX_HASH)`) as the number of
//! threads grows, always a power of two and at least two slots per thread.
//!
//! Owns: the slot count asked for so far. Must not: shrink the table (a quiet broker keeps what
//! its busiest moment needed; it is a few kilobytes of kernel memory per thousand slots), or
//! fail the caller: on kernels without the call (before 6.16, or other systems) it does nothing,
//! since their shared table is already sized by the machine's memory.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Threads below which the kernel's own table is good enough.
const FIRST_GROWTH: usize = 64;
/// The largest table asked for: pid_max on most systems is at most 4 million, but a process
/// with more than 32,768 sleeping threads still sees chains of a few waiters at most.
const MOST_SLOTS: usize = 1 << 16;

/// The slot count last granted (0 until the first growth; `usize::MAX` once the kernel said
/// it cannot).
static SLOTS: AtomicUsize = AtomicUsize::new(0);

/// Makes room for `threads` sleeping threads. Cheap when nothing changes: one atomic load.
pub(super) fn fit(threads: usize) {
    if threads < FIRST_GROWTH {
        return;
    }
    let wanted = threads
        .saturating_mul(2)
        .next_power_of_two()
        .min(MOST_SLOTS);
    let granted = SLOTS.load(Ordering::Acquire);
    if granted >= wanted {
        return;
    }
    // One caller grows it; the others go on (a moment with a small table is only slower).
    if SLOTS
        .compare_exchange(granted, wanted, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    if !set_slots(wanted) {
        SLOTS.store(usize::MAX, Ordering::Release);
    }
}

/// The slots the kernel's table has now, if it says (for tests and logs).
#[cfg(test)]
pub(super) fn slots() -> Option<usize> {
    imp::get_slots()
}

/// Asks for `slots` slots; false when the kernel has no such call.
fn set_slots(slots: usize) -> bool {
    match imp::set_slots(slots) {
        Ok(()) => {
            log::debug!("futex hash table: {slots} slots");
            true
        }
        Err(e) => {
            log::debug!("futex hash table left to the kernel: {e}");
            false
        }
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;

    /// `PR_FUTEX_HASH` and its operations (linux/prctl.h, 6.16 and later).
    const PR_FUTEX_HASH: libc::c_int = 78;
    const PR_FUTEX_HASH_SET_SLOTS: libc::c_ulong = 1;
    #[cfg(test)]
    const PR_FUTEX_HASH_GET_SLOTS: libc::c_ulong = 2;

    pub(super) fn set_slots(slots: usize) -> io::Result<()> {
        // SAFETY: prctl with integer arguments only; it reads and writes no memory of ours.
        let done = unsafe {
            libc::prctl(
                PR_FUTEX_HASH,
                PR_FUTEX_HASH_SET_SLOTS,
                slots as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if done == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[cfg(test)]
    pub(super) fn get_slots() -> Option<usize> {
        // SAFETY: as above.
        let slots = unsafe { libc::prctl(PR_FUTEX_HASH, PR_FUTEX_HASH_GET_SLOTS, 0, 0) };
        usize::try_from(slots).ok()
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::io;

    pub(super) fn set_slots(_slots: usize) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    #[cfg(test)]
    pub(super) fn get_slots() -> Option<usize> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a kernel with per-process tables (6.16 and later) the table grows with the threads;
    /// on older kernels the call is refused and `fit` leaves everything as it was.
    #[test]
    fn the_table_grows_with_the_threads_where_the_kernel_allows() {
        fit(10);
        let before = slots();
        fit(5_000);
        match (before, slots()) {
            (Some(_), Some(after)) if SLOTS.load(Ordering::Acquire) != usize::MAX => {
                assert!(after >= 10_000, "5,000 threads got {after} slots");
            }
            (_, after) => {
                // Refused: nothing may have been granted, and a further call stays quiet.
                assert_eq!(SLOTS.load(Ordering::Acquire), usize::MAX, "{after:?}");
                fit(20_000);
                assert_eq!(SLOTS.load(Ordering::Acquire), usize::MAX);
            }
        }
    }
}
