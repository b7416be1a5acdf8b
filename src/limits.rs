//! How many clients this machine lets the broker hold: each client costs two threads, and each
//! thread a few memory maps, a process id and (for the socket) a file descriptor.
//!
//! Owns: reading those limits from /proc and /proc/self and saying what they allow. Must not:
//! change any limit (raising them is the operator's choice: the README says how).

use std::fs;

/// Memory maps one client's two threads take: per thread a stack and its guard page, and the
/// signal stack and its guard page that Rust's runtime gives every thread.
const MAPS_PER_CLIENT: u64 = 8;

/// The most clients the machine's limits allow, and which limit is the tightest.
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
        read_number("/proc/sys/vm/max_map_count").map(|n| n / MAPS_PER_CLIENT),
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
    consider(open_files_limit(), "the open files limit (ulimit -n)");
    tightest
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
