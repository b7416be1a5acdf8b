//! How many clients this machine lets the broker hold: each client costs two threads, and each
//! thread a few memory maps, a process id and (for the socket) a file descriptor.
//!
//! Owns: reading those limits from /proc and /proc/self and saying what they allow. Must not:
//! change any limit (raising them is the operator's choice: the README says how).

use std::fs;

/// Memory maps one client's two threads take: per thread a stack and its guard page (client
/// threads are started without the signal stack Rust's runtime gives its own threads: see
/// `client::os_thread`).
const MAPS_PER_CLIENT: u64 = 4;
/// Memory maps kept free for everything else: the allocator's arenas, large messages (each
/// allocation of 128 KiB or more is a map of its own), the executable and its libraries.
const MAPS_RESERVED: u64 = 4096;
/// File descriptors kept free for the listener, logs and the like.
const FILES_RESERVED: u64 = 64;

/// The default connection limit: what the machine allows, less reserves. Running out of memory
/// maps is the one limit that cannot be met gracefully (an allocation that finds no map aborts
/// the process, as does a thread of Rust's runtime that cannot map its signal stack), so the
/// broker refuses connections before it.
pub fn default_max_connections() -> usize {
    client_capacity().map_or(usize::MAX, |(clients, _)| {
        usize::try_from(clients).unwrap_or(usize::MAX)
    })
}

/// The most clients the machine's limits allow (after reserves), and which limit is the
/// tightest.
pub fn client_capacity() -> Option<(u64, &'static str)> {
    let mut tightest: Option<(u64, &'static str)> = None;
    let mut consider = |clients: Option<u64>, name: &'static str| {
        if let Some(clients) = clients {
            if tightest.is_none_or(|(best, _)| clients < best) {
                tightest = Some((clients, name));
            }
        }
    };
    consider(
        read_number("/proc/sys/vm/max_map_count")
            .map(|n| n.saturating_sub(MAPS_RESERVED) / MAPS_PER_CLIENT),
        "vm.max_map_count",
    );
    consider(
        read_number("/proc/sys/kernel/pid_max").map(|n| n / 2),
        "kernel.pid_max",
    );
    consider(
        read_number("/proc/sys/kernel/threads-max").map(|n| n / 2),
        "kernel.threads-max",
    );
    consider(
        open_files_limit().map(|n| n.saturating_sub(FILES_RESERVED)),
        "the open files limit (ulimit -n)",
    );
    tightest
}

/// The default budget for queued messages: a quarter of the machine's memory, at most 1 GiB.
pub fn default_queued_bytes_total() -> usize {
    const CAP: u64 = 1 << 30;
    let quarter = memory_total().map_or(CAP, |bytes| bytes / 4);
    usize::try_from(quarter.min(CAP)).unwrap_or(usize::MAX)
}

/// Physical memory, from /proc/meminfo.
fn memory_total() -> Option<u64> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn read_number(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The soft limit on open files of this process.
fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let (clients, limit) = client_capacity().expect("/proc is readable");
            assert!(clients > 0, "{limit}");
        }
    }
}
