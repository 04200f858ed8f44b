//! The process collector: CPU time, resident memory, open files and start time of this
//! process, read from `/proc/self` on each scrape (Linux; elsewhere nothing is reported).
//! `prometheus-client` has no process collector of its own; these are the standard names of
//! the Prometheus client libraries (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! …), so the usual dashboards work.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reports the process's CPU, memory, open files and start time on each scrape.
#[derive(Debug)]
pub struct ProcessCollector;

/// What `/proc/self` says, in base units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: f64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: f64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: f64,
}

/// Clock ticks per second of `/proc/*/stat` (USER_HZ, 100 on every Linux platform).
const TICKS_PER_SECOND: f64 = 100.0;
/// Page size (4 KiB on the platforms citystream runs on).
const PAGE_BYTES: f64 = 4096.0;

/// Reads this process's statistics; `None` where `/proc` is not available.
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces, so split after its ')').
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field numbers of proc(5), minus the 3 before `rest` (pid, comm) and `state` at f[0].
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    let (utime, stime, start_ticks, vsize, rss) = (field(14)?, field(15)?, field(22)?, field(23)?, field(24)?);
    let boot = std::fs::read_to_string("/proc/stat").ok()?.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as f64).unwrap_or(0.0);
    Some(ProcessStats {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        resident_bytes: rss * PAGE_BYTES,
        virtual_bytes: vsize,
        start_time_seconds: boot + start_ticks / TICKS_PER_SECOND,
        open_fds,
    })
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = read() else { return Ok(()) };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor("process_cpu_seconds", "Total user and system CPU time spent in seconds", None, cpu.metric_type())?)?;
        for (name, help, value) in [
            ("process_resident_memory_bytes", "Resident memory size in bytes", s.resident_bytes),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", s.virtual_bytes),
            ("process_start_time_seconds", "Start time of the process since the Unix epoch in seconds", s.start_time_seconds),
            ("process_open_fds", "Number of open file descriptors", s.open_fds),
        ] {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_uses_cpu_and_memory() {
        let s = super::read().expect("/proc is available on Linux");
        assert!(s.resident_bytes > 1e6 && s.virtual_bytes >= s.resident_bytes, "{s:?}");
        assert!(s.cpu_seconds >= 0.0 && s.open_fds >= 3.0, "{s:?}");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!(s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86_400.0 * 365.0, "{s:?}");
    }
}
