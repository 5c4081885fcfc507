//! `loadtest`: an open-loop WebSocket load generator for WebTorrent trackers.
//!
//! It speaks only the tracker protocol (through `p2p_mediastream::protocol::client`), so
//! it can be pointed at any WebTorrent tracker. docs/loadtest.md explains the flags and
//! every figure of the report.

mod cli;
mod client;
mod report;
mod scenario;
mod stats;
mod sys;

use std::process::ExitCode;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;

use crate::cli::{Args, Config};
use crate::client::{Clock, Shared, Slot, WorkerCounters};
use crate::report::{HostReport, Inputs, ProcessReport};
use crate::stats::{Tally, TargetTally, WorkerOutcome};
use crate::sys::{HostTicks, ProcSample};

/// Exit codes: 0 all thresholds met, 1 a threshold failed, 2 refused to start,
/// 3 the run itself broke (a worker thread failed).
const EXIT_THRESHOLD: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_BROKEN: u8 = 3;

/// Lets the worker threads build their runtimes before the first connection is due.
const START_DELAY: Duration = Duration::from_millis(200);
/// How long after the drain we wait for workers before reporting without them.
const JOIN_GRACE: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match args.into_config() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("loadtest: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match sys::ensure_fd_limit(u64::from(config.connections)) {
        Ok(Some(note)) => eprintln!("loadtest: {note}"),
        Ok(None) => {}
        Err(err) => {
            eprintln!("loadtest: refusing to start: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    if let Some(pid) = config.server_pid {
        if sys::sample_process(pid).is_none() {
            eprintln!("loadtest: --server-pid {pid}: no such process (or /proc is unreadable)");
            return ExitCode::from(EXIT_USAGE);
        }
    }
    run(config)
}

/// A per-run value that keeps ids of consecutive runs apart.
fn run_nonce() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    scenario::mix64(nanos ^ u64::from(std::process::id()) << 40)
}

fn to_ns(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn run(config: Config) -> ExitCode {
    let shape = config.shape();
    let assignment = scenario::assign_swarms(config.connections, shape, config.seed);
    let swarm_summary = scenario::summarise(&assignment, shape, config.offers);
    let nonce = run_nonce();
    eprintln!(
        "loadtest: {} connections -> {} (ramp {}/s), {} swarms ({} hot, largest {} peers, \
         {} singletons), announce every {:.2}s = {:.0}/s, {} offers x {} B, {:.0}s with {:.0}s warm-up",
        config.connections,
        config.url,
        config.connect_rate,
        config.swarms,
        config.hot_swarms,
        swarm_summary.largest,
        swarm_summary.singletons,
        config.interval.as_secs_f64(),
        config.announce_rate,
        config.offers,
        config.sdp_bytes,
        config.duration.as_secs_f64(),
        config.warmup.as_secs_f64(),
    );

    let threads = config.threads;
    let start = to_ns(START_DELAY);
    let clock = Clock {
        base: Instant::now(),
        start,
        warmup_end: start + to_ns(config.warmup),
        send_end: start + to_ns(config.duration),
        drain_end: start + to_ns(config.duration) + to_ns(config.drain),
    };
    let shared = Arc::new(Shared {
        info_hashes: (0..config.swarms)
            .map(|swarm| scenario::info_hash(nonce, swarm))
            .collect(),
        members: (0..config.swarms).map(|_| AtomicU32::new(0)).collect(),
        workers: (0..threads)
            .map(|_| WorkerCounters::new(config.urls.len()))
            .collect(),
        run_nonce: nonce,
        clock,
        config,
    });

    let mut per_worker: Vec<Vec<Slot>> = vec![Vec::new(); threads];
    for (index, &swarm) in assignment.iter().enumerate() {
        // index < connections <= 1_000_000, so it fits in u32.
        per_worker[index % threads].push(Slot {
            index: index as u32,
            swarm,
        });
    }
    let mut handles = Vec::with_capacity(threads);
    for (index, slots) in per_worker.into_iter().enumerate() {
        let shared = shared.clone();
        let spawned = thread::Builder::new()
            .name(format!("loadtest-{index}"))
            .spawn(move || client::run_worker(shared, index, slots));
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(err) => {
                eprintln!("loadtest: cannot start worker thread {index}: {err}");
                return ExitCode::from(EXIT_BROKEN);
            }
        }
    }

    let watch = watch_run(&shared, &handles);

    let mut outcome = WorkerOutcome::default();
    let mut notes = watch.notes;
    let mut broken = false;
    for handle in handles {
        if !handle.is_finished() {
            notes.push("a worker thread did not finish in time; its figures are missing".into());
            broken = true;
            continue;
        }
        match handle.join() {
            Ok(Ok(worker)) => outcome.merge(&worker),
            Ok(Err(err)) => {
                notes.push(err);
                broken = true;
            }
            Err(_) => {
                notes.push("a worker thread panicked; its figures are missing".into());
                broken = true;
            }
        }
    }
    let (total, window) = sum_counters(&shared.workers);
    let config = &shared.config;
    let report = report::build(Inputs {
        config,
        swarms: swarm_summary,
        total,
        by_target: sum_targets(&shared.workers, config.urls.len()),
        window,
        outcome: &outcome,
        window_secs: (config.duration - config.warmup).as_secs_f64(),
        client: watch.client,
        server: watch.server,
        host: watch.host,
        notes,
    });
    if config.json {
        match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(err) => {
                eprintln!("loadtest: cannot serialise the report: {err}");
                return ExitCode::from(EXIT_BROKEN);
            }
        }
    } else {
        print!("{}", report::render_table(&report));
    }
    if broken {
        ExitCode::from(EXIT_BROKEN)
    } else if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_THRESHOLD)
    }
}

fn sum_counters(workers: &[WorkerCounters]) -> (Tally, Tally) {
    let mut total = Tally::default();
    let mut window = Tally::default();
    for worker in workers {
        total.add(&worker.total.snapshot());
        window.add(&worker.window.snapshot());
    }
    (total, window)
}

fn sum_targets(workers: &[WorkerCounters], targets: usize) -> Vec<TargetTally> {
    let mut sums = vec![TargetTally::default(); targets];
    for worker in workers {
        for (sum, counters) in sums.iter_mut().zip(&worker.by_target) {
            sum.add(&counters.snapshot());
        }
    }
    sums
}

struct Watch {
    client: ProcessReport,
    server: Option<ProcessReport>,
    host: HostReport,
    notes: Vec<String>,
}

/// Resource counters read at one instant.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: Instant,
    cpu: Duration,
    wait: Option<Duration>,
    server: Option<ProcSample>,
    server_wait: Option<Duration>,
    host: Option<HostTicks>,
}

impl Snapshot {
    fn take(server_pid: Option<u32>) -> Snapshot {
        Snapshot {
            at: Instant::now(),
            cpu: sys::own_cpu_time(),
            wait: sys::runqueue_wait(std::process::id()),
            server: server_pid.and_then(sys::sample_process),
            server_wait: server_pid.and_then(sys::runqueue_wait),
            host: sys::host_ticks(),
        }
    }
}

fn percent_of(part: Option<Duration>, earlier: Option<Duration>, wall: Duration) -> f64 {
    match (earlier, part) {
        (Some(before), Some(after)) => sys::cpu_percent(before, after, wall),
        _ => 0.0,
    }
}

/// Prints progress once per second and samples resources at the window's edges, until
/// the drain is over and the workers are done (or JOIN_GRACE has passed).
fn watch_run(
    shared: &Shared,
    handles: &[thread::JoinHandle<Result<WorkerOutcome, String>>],
) -> Watch {
    // Naps are at most NAP long, so the iteration cap below is never the real bound.
    const NAP: Duration = Duration::from_millis(100);
    let clock = shared.clock;
    let config = &shared.config;
    let pid = config.server_pid;
    let at = |ns: u64| clock.base + Duration::from_nanos(ns);
    let warmup_at = at(clock.warmup_end);
    let send_end_at = at(clock.send_end);
    let give_up_at = at(clock.drain_end) + config.connect_timeout + JOIN_GRACE;

    let mut notes = Vec::new();
    let mut last_tally = Tally::default();
    let mut last = Snapshot::take(pid);
    let mut window_start: Option<Snapshot> = None;
    let mut window_end: Option<Snapshot> = None;
    let mut server_gone = false;
    let max_iterations = (give_up_at - clock.base).as_millis() / NAP.as_millis() * 2 + 100;
    let mut next_progress = at(clock.start) + Duration::from_secs(1);
    for _ in 0..max_iterations {
        let now = Instant::now();
        if now >= give_up_at || handles.iter().all(|h| h.is_finished()) {
            break;
        }
        let mut wake = next_progress.min(give_up_at);
        if window_start.is_none() {
            wake = wake.min(warmup_at);
        } else if window_end.is_none() {
            wake = wake.min(send_end_at);
        }
        // Short naps so finished workers are noticed promptly at the end.
        thread::sleep(wake.saturating_duration_since(now).min(NAP));
        let now = Instant::now();
        if window_start.is_none() && now >= warmup_at {
            window_start = Some(Snapshot::take(pid));
        }
        if window_end.is_none() && now >= send_end_at {
            window_end = Some(Snapshot::take(pid));
        }
        if now < next_progress {
            continue;
        }
        next_progress += Duration::from_secs(1);
        let (total, _) = sum_counters(&shared.workers);
        let snap = Snapshot::take(pid);
        if pid.is_some() && snap.server.is_none() && !server_gone {
            server_gone = true;
            notes.push(format!(
                "the server process {} exited during the run",
                pid.unwrap_or_default()
            ));
        }
        if !config.quiet {
            eprintln!(
                "{}",
                progress_line(shared, &total, &last_tally, &last, &snap)
            );
        }
        last_tally = total;
        last = snap;
    }

    let start = window_start.unwrap_or(last);
    let end = window_end.unwrap_or_else(|| Snapshot::take(pid));
    let wall = end
        .at
        .saturating_duration_since(start.at)
        .max(Duration::from_millis(1));
    let mut client = report::process_report(
        std::process::id(),
        sys::cpu_percent(start.cpu, end.cpu, wall),
        sys::sample_process(std::process::id()).map_or(0, |s| s.rss_bytes),
        sys::own_peak_rss(),
        config.threads as u64,
    );
    client.runqueue_wait_percent = percent_of(end.wait, start.wait, wall);
    let server = match (pid, start.server, end.server) {
        (Some(pid), Some(before), Some(after)) => {
            let mut server = report::process_report(
                pid,
                sys::cpu_percent(before.cpu, after.cpu, wall),
                after.rss_bytes,
                after.peak_rss_bytes,
                after.threads,
            );
            server.runqueue_wait_percent = percent_of(end.server_wait, start.server_wait, wall);
            Some(server)
        }
        _ => None,
    };
    let host = HostReport {
        cpus: sys::cpu_count(),
        busy_percent: match (start.host, end.host) {
            (Some(before), Some(after)) => sys::host_busy_percent(before, after),
            _ => 0.0,
        },
    };
    Watch {
        client,
        server,
        host,
        notes,
    }
}

/// One line of per-second progress: rates since the previous line.
fn progress_line(
    shared: &Shared,
    total: &Tally,
    last_tally: &Tally,
    last: &Snapshot,
    snap: &Snapshot,
) -> String {
    let clock = shared.clock;
    let config = &shared.config;
    let delta = total.since(last_tally);
    let wall = snap.at.saturating_duration_since(last.at);
    let secs = wall.as_secs_f64().max(1e-3);
    let rate = |n: u64| n as f64 / secs;
    let now_ns = clock.now_ns();
    let elapsed = now_ns.saturating_sub(clock.start) as f64 / 1e9;
    let phase = if now_ns < clock.warmup_end {
        "warm"
    } else if now_ns < clock.send_end {
        "run "
    } else {
        "drain"
    };
    let mut line = format!(
        "[{elapsed:>5.0}s {phase}] conns {}/{} fail {} | ann {:.0}/s resp {:.0}/s | offers in {:.0}/s | answers out {:.0}/s in {:.0}/s | fail {:.0}/s | msgs {:.0}/s | cpu {:.0}% wait {:.0}%",
        total.conn_established.saturating_sub(total.conn_ended),
        config.connections,
        total.conn_failed,
        rate(delta.announces_sent),
        rate(delta.announce_responses + delta.announce_responses_unmatched),
        rate(delta.offers_received),
        rate(delta.answers_sent),
        rate(delta.answers_received),
        rate(delta.failures),
        rate(delta.msgs_in + delta.msgs_out),
        sys::cpu_percent(last.cpu, snap.cpu, wall),
        percent_of(snap.wait, last.wait, wall),
    );
    if let (Some(before), Some(after)) = (last.server, snap.server) {
        line.push_str(&format!(
            " | server cpu {:.0}% rss {:.0} MB",
            sys::cpu_percent(before.cpu, after.cpu, wall),
            after.rss_bytes as f64 / 1048576.0
        ));
    }
    if let (Some(before), Some(after)) = (last.host, snap.host) {
        line.push_str(&format!(
            " | host {:.0}%",
            sys::host_busy_percent(before, after)
        ));
    }
    line
}
