//! What /proc says about a process: the broker's memory and threads, and this process's own
//! open-file limit.
//!
//! Owns: reading and parsing /proc files. Must not: fail loudly: a process that has gone or a
//! field that is missing reads as `None`, and the report leaves the figure out.

use std::fs;

/// From /proc/PID/status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// VmRSS: resident memory now, KiB.
    pub rss_kb: u64,
    /// VmHWM: the most resident memory the process ever had, KiB.
    pub hwm_kb: u64,
    pub threads: u64,
}

pub fn status(pid: u32) -> Option<Status> {
    parse_status(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_status(text: &str) -> Option<Status> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Status {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
        threads: field("Threads:")?,
    })
}

/// The soft limit on open files of this process, from /proc/self/limits.
pub fn open_files_limit() -> Option<u64> {
    let text = fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Keeps the highest RSS and thread count seen across samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peak {
    pub rss_kb: u64,
    pub threads: u64,
    pub samples: u64,
}

impl Peak {
    pub fn sample(&mut self, pid: Option<u32>) {
        if let Some(status) = pid.and_then(status) {
            self.rss_kb = self.rss_kb.max(status.rss_kb);
            self.threads = self.threads.max(status.threads);
            self.samples += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_it_needs() {
        let text = "Name:\tmosquitto\nVmHWM:\t    6120 kB\nVmRSS:\t    5980 kB\nThreads:\t1\n";
        assert_eq!(
            parse_status(text),
            Some(Status {
                rss_kb: 5980,
                hwm_kb: 6120,
                threads: 1
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = status(std::process::id()).expect("own status");
        assert!(me.rss_kb > 0 && me.threads >= 1);
        assert!(open_files_limit().is_some());
    }
}
