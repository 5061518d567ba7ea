//! Process-level measurements: file-descriptor limit, own CPU time, and the server's CPU and RSS
//! read from `/proc`, summed over the server process and its descendants (a server may be a tree
//! of processes, like Pushpin's runner, condure, zurl, proxy, handler and backend).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// CPU seconds (user + system) this process has used so far, from `getrusage(RUSAGE_SELF)`.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the zero-initialised struct we pass it.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Clock ticks per second used by `/proc/PID/stat`.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds (utime + stime) process `pid` has used so far, from `/proc/PID/stat`.
pub fn proc_cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) may contain spaces; fields after it start after the last ')'.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("malformed {path}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); utime is field 14, stime field 15.
    let field = |n: usize| -> Result<f64> {
        fields
            .get(n - 3)
            .and_then(|value| value.parse::<f64>().ok())
            .with_context(|| format!("field {n} missing in {path}"))
    };
    Ok((field(14)? + field(15)?) / clock_ticks())
}

/// Resident set size in bytes of process `pid`, from `VmRSS` in `/proc/PID/status`.
pub fn proc_rss_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse::<u64>().ok())
        .with_context(|| format!("no VmRSS in {path}"))?;
    Ok(kib * 1024)
}

/// The parent pid of process `pid`, from `/proc/PID/stat` (field 4).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `root` and every live descendant of it (one scan of `/proc`).
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(parent) = parent_pid(pid) {
                parents.push((pid, parent));
            }
        }
    }
    let mut tree = vec![root];
    // Each pass adds the children of what is already in the tree; the depth is bounded by the
    // number of processes.
    for _ in 0..parents.len() {
        let before = tree.len();
        for &(pid, parent) in &parents {
            if tree.contains(&parent) && !tree.contains(&pid) {
                tree.push(pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree
}

/// CPU seconds used so far by `root` and its live descendants (fails if `root` is unreadable).
pub fn tree_cpu_seconds(root: u32) -> Result<f64> {
    let own = proc_cpu_seconds(root)?;
    let children: f64 = process_tree(root)
        .into_iter()
        .skip(1)
        .filter_map(|pid| proc_cpu_seconds(pid).ok())
        .sum();
    Ok(own + children)
}

/// Resident set size in bytes of `root` plus its live descendants (pages shared between them are
/// counted once per process).
pub fn tree_rss_bytes(root: u32) -> Result<u64> {
    let own = proc_rss_bytes(root)?;
    let children: u64 = process_tree(root)
        .into_iter()
        .skip(1)
        .filter_map(|pid| proc_rss_bytes(pid).ok())
        .sum();
    Ok(own + children)
}

/// CPU-time snapshot of loadgen and (optionally) the server, to measure a window.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    at: std::time::Instant,
    own: f64,
    server: Option<f64>,
}

/// CPU used over a window: seconds and fraction of one core, for loadgen and the server.
#[derive(Debug, Clone, Copy)]
pub struct CpuUsage {
    /// Wall-clock length of the window in seconds.
    pub wall_s: f64,
    /// Loadgen's CPU seconds in the window.
    pub loadgen_s: f64,
    /// The server's CPU seconds in the window, when its pid was given and readable.
    pub server_s: Option<f64>,
}

impl CpuSnapshot {
    /// Takes a snapshot now; the server part (its whole process tree) is `None` when no pid is
    /// given or it is unreadable.
    pub fn take(server_pid: Option<u32>) -> Self {
        Self {
            at: std::time::Instant::now(),
            own: self_cpu_seconds(),
            server: server_pid.and_then(|pid| tree_cpu_seconds(pid).ok()),
        }
    }

    /// CPU used between `self` and a later snapshot.
    pub fn until(&self, later: &CpuSnapshot) -> CpuUsage {
        CpuUsage {
            wall_s: later.at.duration_since(self.at).as_secs_f64(),
            loadgen_s: later.own - self.own,
            server_s: self.server.zip(later.server).map(|(a, b)| b - a),
        }
    }
}

impl CpuUsage {
    /// Loadgen's CPU as a fraction of one core over the window.
    pub fn loadgen_cores(&self) -> f64 {
        ratio(self.loadgen_s, self.wall_s)
    }

    /// The server's CPU as a fraction of one core over the window.
    pub fn server_cores(&self) -> Option<f64> {
        self.server_s.map(|s| ratio(s, self.wall_s))
    }
}

/// The largest `VmRSS` of one process, sampled on a thread of its own (so that a busy runtime
/// does not delay the samples) from [`RssPeak::start`] until [`RssPeak::finish`], the value is
/// dropped, or the time limit passes.
#[derive(Debug)]
pub struct RssPeak {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<PeakRss>>,
}

/// What an [`RssPeak`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeakRss {
    /// The largest `VmRSS` read, in bytes.
    pub bytes: u64,
    /// How many reads succeeded.
    pub samples: u64,
}

impl RssPeak {
    /// Starts reading `VmRSS` of process `pid` (only that process, not its descendants: it is
    /// read every `interval`) until stopped or `limit` has passed.
    pub fn start(pid: u32, interval: Duration, limit: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("loadgen-rss".into())
            .spawn(move || {
                let started = Instant::now();
                let mut peak = PeakRss::default();
                while !stopped.load(Ordering::Relaxed) && started.elapsed() < limit {
                    if let Ok(bytes) = proc_rss_bytes(pid) {
                        peak.bytes = peak.bytes.max(bytes);
                        peak.samples += 1;
                    }
                    std::thread::sleep(interval);
                }
                peak
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the sampling (after at most one more interval) and returns the peak.
    pub fn finish(mut self) -> PeakRss {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Bytes as MiB, rounded to three decimals (for reports).
pub fn mib(bytes: u64) -> f64 {
    crate::stats::round3(bytes as f64 / 1_048_576.0)
}

/// `after - before` bytes as MiB (negative when memory was given back), rounded to three
/// decimals.
pub fn mib_change(before: u64, after: u64) -> f64 {
    crate::stats::round3((after as f64 - before as f64) / 1_048_576.0)
}

/// `a / b`, or 0 when `b` is not positive.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(proc_rss_bytes(pid).expect("rss") > 0);
        assert!(proc_cpu_seconds(pid).expect("cpu") >= 0.0);
        assert!(self_cpu_seconds() >= 0.0);
        assert_eq!(process_tree(pid).first(), Some(&pid));
        assert!(tree_rss_bytes(pid).expect("tree rss") >= proc_rss_bytes(pid).unwrap_or(0) / 2);
    }

    #[test]
    fn samples_own_peak_rss() {
        let sampler = RssPeak::start(
            std::process::id(),
            Duration::from_millis(1),
            Duration::from_secs(5),
        )
        .expect("thread");
        std::thread::sleep(Duration::from_millis(20));
        let peak = sampler.finish();
        assert!(peak.samples >= 1 && peak.bytes > 0, "{peak:?}");
        assert_eq!(mib_change(3 * 1_048_576, 1_048_576), -2.0);
    }
}
