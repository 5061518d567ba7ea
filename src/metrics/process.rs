//! The standard process metrics of Prometheus client libraries (`process_*`: resident and virtual
//! memory, CPU time, open and maximum file descriptors, start time), read from `/proc/self` at
//! each scrape. Linux only; elsewhere a scrape has none of them.

/// The process's resources at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// Resident memory (`process_resident_memory_bytes`).
    pub resident_memory_bytes: u64,
    /// Virtual memory (`process_virtual_memory_bytes`).
    pub virtual_memory_bytes: u64,
    /// User and system CPU time (`process_cpu_seconds_total`).
    pub cpu_seconds: f64,
    /// Open file descriptors (`process_open_fds`).
    pub open_fds: u64,
    /// The soft limit on file descriptors (`process_max_fds`), when there is one.
    pub max_fds: Option<u64>,
    /// When the process started, in unix seconds (`process_start_time_seconds`).
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads this process's figures, or `None` where `/proc` cannot tell.
    #[cfg(target_os = "linux")]
    pub fn read() -> Option<Self> {
        use procfs::process::{LimitValue, Process};
        use procfs::{CurrentSI, KernelStats, WithCurrentSystemInfo, ticks_per_second};

        let process = Process::myself().ok()?;
        let stat = process.stat().ok()?;
        let ticks = ticks_per_second() as f64;
        // Ticks after the system booted.
        let booted = KernelStats::current().ok()?.btime as f64;
        let max_fds = match process.limits().ok()?.max_open_files.soft_limit {
            LimitValue::Value(limit) => Some(limit),
            LimitValue::Unlimited => None,
        };
        Some(Self {
            resident_memory_bytes: stat.rss_bytes().get(),
            virtual_memory_bytes: stat.vsize,
            cpu_seconds: (stat.utime + stat.stime) as f64 / ticks,
            open_fds: u64::try_from(process.fd_count().ok()?).unwrap_or(u64::MAX),
            max_fds,
            start_time_seconds: booted + stat.starttime as f64 / ticks,
        })
    }

    /// Reads this process's figures: none outside Linux.
    #[cfg(not(target_os = "linux"))]
    pub fn read() -> Option<Self> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_descriptors_and_a_start() {
        let stats = ProcessStats::read().expect("/proc/self is readable");
        assert!(stats.resident_memory_bytes > 1 << 20);
        assert!(stats.virtual_memory_bytes >= stats.resident_memory_bytes);
        assert!(stats.open_fds >= 3, "stdin, stdout, stderr");
        assert!(stats.start_time_seconds > 1.7e9);
        assert!(stats.cpu_seconds >= 0.0);
    }
}
