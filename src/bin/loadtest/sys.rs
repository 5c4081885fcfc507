//! Process-level facts: file descriptor limit, our own CPU time, and the CPU/RSS of a
//! local server process read from /proc. Linux-only by nature.

use std::time::Duration;

/// Descriptors we need beyond one per connection: stdio, the runtime's epoll/eventfd,
/// churned sockets still closing, /proc files.
pub const FD_SLACK: u64 = 64;

/// Makes sure `connections` sockets fit under RLIMIT_NOFILE, raising the soft limit up
/// to the hard one if needed (as `ulimit -n` would). Returns a note when it raised it.
pub fn ensure_fd_limit(connections: u64) -> Result<Option<String>, String> {
    let need = connections + FD_SLACK;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(format!(
            "cannot read RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        ));
    }
    if limit.rlim_cur >= need {
        return Ok(None);
    }
    let how = format!(
        "{connections} connections need about {need} file descriptors, but RLIMIT_NOFILE is {} \
         (hard limit {}). Raise it before starting, e.g. `ulimit -n {need}` in this shell \
         (the hard limit needs root: `prlimit --nofile={need}:{need} --pid $$`, \
         LimitNOFILE= in a systemd unit, or `docker run --ulimit nofile={need}:{need}`)",
        limit.rlim_cur, limit.rlim_max
    );
    if limit.rlim_max < need {
        return Err(how);
    }
    let raised = libc::rlimit {
        rlim_cur: need,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(format!(
            "{how}; raising the soft limit failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(Some(format!(
        "raised the soft RLIMIT_NOFILE from {} to {need}",
        limit.rlim_cur
    )))
}

/// User + system CPU time this process has used.
pub fn own_cpu_time() -> Duration {
    // SAFETY: an all-zero rusage is a valid value; getrusage fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let to_duration = |tv: libc::timeval| {
        Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(tv.tv_usec).unwrap_or(0))
    };
    to_duration(usage.ru_utime) + to_duration(usage.ru_stime)
}

/// Peak resident set size of this process, in bytes.
pub fn own_peak_rss() -> u64 {
    // SAFETY: as in own_cpu_time.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage we own.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    // Linux reports ru_maxrss in KiB.
    u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// One reading of another process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcSample {
    pub cpu: Duration,
    pub rss_bytes: u64,
    /// VmHWM: the peak RSS since the process started.
    pub peak_rss_bytes: u64,
    pub threads: u64,
}

/// Reads /proc/PID/stat (CPU) and /proc/PID/status (RSS); `None` once the process is gone.
pub fn sample_process(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_proc(&stat, &status, clock_ticks_per_sec())
}

/// The parsing half of [`sample_process`], separate so it can be tested on fixed text.
pub fn parse_proc(stat: &str, status: &str, ticks_per_sec: u64) -> Option<ProcSample> {
    // The command name (field 2) is in parentheses and may contain spaces or ')', so
    // count fields from the last ')'. Fields 14 and 15 are utime and stime in ticks.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    let cpu = Duration::from_secs(ticks / ticks_per_sec)
        + Duration::from_nanos((ticks % ticks_per_sec) * 1_000_000_000 / ticks_per_sec);
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|line| line.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(ProcSample {
        cpu,
        rss_bytes: field("VmRSS:").unwrap_or(0) * 1024,
        peak_rss_bytes: field("VmHWM:").unwrap_or(0) * 1024,
        threads: field("Threads:").unwrap_or(0),
    })
}

/// Time the threads of `pid` spent runnable but waiting for a CPU (field 2 of
/// /proc/PID/task/*/schedstat). It is the direct sign that a process was starved by
/// others on the machine rather than slow itself.
pub fn runqueue_wait(pid: u32) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    // Bounded by the process's thread count.
    for task in tasks.flatten() {
        let path = task.path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += parse_schedstat_wait(&text).unwrap_or(0);
        }
    }
    Some(Duration::from_nanos(total))
}

/// The run-queue wait in ns from one schedstat line: "on_cpu_ns wait_ns timeslices".
pub fn parse_schedstat_wait(text: &str) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse().ok()
}

/// Busy and total jiffies of the whole machine, from the first line of /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HostTicks {
    pub busy: u64,
    pub total: u64,
}

pub fn host_ticks() -> Option<HostTicks> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_host_ticks(stat.lines().next()?)
}

pub fn parse_host_ticks(line: &str) -> Option<HostTicks> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.map_while(|field| field.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some(HostTicks {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// Machine-wide CPU busy share between two readings, in percent of all cores.
pub fn host_busy_percent(before: HostTicks, after: HostTicks) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    after.busy.saturating_sub(before.busy) as f64 / total as f64 * 100.0
}

/// Online CPUs of the machine (not of our affinity mask: /proc/stat covers them all).
pub fn cpu_count() -> usize {
    // SAFETY: sysconf has no memory effects.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(online).ok().filter(|&n| n > 0).unwrap_or(1)
}

/// CPU use between two readings, in percent of one core.
pub fn cpu_percent(cpu_before: Duration, cpu_after: Duration, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    cpu_after.saturating_sub(cpu_before).as_secs_f64() / wall.as_secs_f64() * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_a_tricky_name() {
        let stat = "4242 (p2p) media(x)) S 1 4242 4242 0 -1 4194560 2000 0 0 0 \
                    250 50 0 0 20 0 9 0 12345 1000000 3000 18446744073709551615";
        let status = "Name:\tp2p\nVmHWM:\t  9000 kB\nVmRSS:\t  8000 kB\nThreads:\t9\n";
        let sample = parse_proc(stat, status, 100).expect("parses");
        assert_eq!(sample.cpu, Duration::from_secs(3));
        assert_eq!(sample.rss_bytes, 8000 * 1024);
        assert_eq!(sample.peak_rss_bytes, 9000 * 1024);
        assert_eq!(sample.threads, 9);
        assert_eq!(parse_proc("garbage", status, 100), None);
    }

    #[test]
    fn reads_our_own_process() {
        let sample = sample_process(std::process::id()).expect("/proc/self exists");
        assert!(sample.rss_bytes > 0);
        assert!(sample.threads >= 1);
    }

    #[test]
    fn parses_schedstat_and_proc_stat() {
        assert_eq!(parse_schedstat_wait("123 456 7\n"), Some(456));
        assert_eq!(parse_schedstat_wait("123"), None);
        let ticks = parse_host_ticks("cpu  100 0 50 800 50 0 0 0 0 0").expect("cpu line");
        assert_eq!(
            ticks,
            HostTicks {
                busy: 150,
                total: 1000
            }
        );
        assert_eq!(parse_host_ticks("cpu0 1 2 3"), None);
        let later = HostTicks {
            busy: 250,
            total: 1200,
        };
        assert!((host_busy_percent(ticks, later) - 50.0).abs() < 1e-9);
        assert!(runqueue_wait(std::process::id()).is_some());
    }

    #[test]
    fn cpu_percent_of_one_core() {
        let pct = cpu_percent(
            Duration::from_millis(100),
            Duration::from_millis(600),
            Duration::from_secs(1),
        );
        assert!((pct - 50.0).abs() < 1e-9);
        assert_eq!(
            cpu_percent(Duration::ZERO, Duration::ZERO, Duration::ZERO),
            0.0
        );
    }
}
