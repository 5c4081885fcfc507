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
use crate::report::{Inputs, ProcessReport};
use crate::stats::{Tally, WorkerOutcome};
use crate::sys::ProcSample;

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
        workers: (0..threads).map(|_| WorkerCounters::default()).collect(),
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
        window,
        outcome: &outcome,
        window_secs: (config.duration - config.warmup).as_secs_f64(),
        client: watch.client,
        server: watch.server,
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

struct Watch {
    client: ProcessReport,
    server: Option<ProcessReport>,
    notes: Vec<String>,
}

/// Prints progress once per second and samples CPU at the window's edges, until the
/// drain is over and the workers are done (or JOIN_GRACE has passed).
fn watch_run(
    shared: &Shared,
    handles: &[thread::JoinHandle<Result<WorkerOutcome, String>>],
) -> Watch {
    let clock = shared.clock;
    let config = &shared.config;
    let pid = config.server_pid;
    let at = |ns: u64| clock.base + Duration::from_nanos(ns);
    let warmup_at = at(clock.warmup_end);
    let send_end_at = at(clock.send_end);
    let give_up_at = at(clock.drain_end) + config.connect_timeout + JOIN_GRACE;

    let mut notes = Vec::new();
    let mut last = Tally::default();
    let mut last_cpu = sys::own_cpu_time();
    let mut last_server = pid.and_then(sys::sample_process);
    let mut last_tick = Instant::now();
    let mut window_start: Option<(Duration, Option<ProcSample>)> = None;
    let mut window_end: Option<(Duration, Option<ProcSample>)> = None;
    let mut server_gone = false;

    // Naps are at most NAP long, so this bounds the loop well past give_up_at.
    const NAP: Duration = Duration::from_millis(100);
    let max_iterations = (give_up_at - clock.base).as_millis() / NAP.as_millis() * 2 + 100;
    let mut next_progress = clock.base + START_DELAY + Duration::from_secs(1);
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
        // Short sleeps so we notice finished workers promptly at the end.
        let nap = wake.saturating_duration_since(now).min(NAP);
        thread::sleep(nap);
        let now = Instant::now();
        if window_start.is_none() && now >= warmup_at {
            window_start = Some((sys::own_cpu_time(), pid.and_then(sys::sample_process)));
        }
        if window_end.is_none() && now >= send_end_at {
            window_end = Some((sys::own_cpu_time(), pid.and_then(sys::sample_process)));
        }
        if now < next_progress {
            continue;
        }
        next_progress += Duration::from_secs(1);
        let (total, _) = sum_counters(&shared.workers);
        let delta = total.since(&last);
        let secs = now.duration_since(last_tick).as_secs_f64().max(1e-3);
        let cpu = sys::own_cpu_time();
        let server = pid.and_then(sys::sample_process);
        if pid.is_some() && server.is_none() && !server_gone {
            server_gone = true;
            notes.push(format!(
                "the server process {} exited during the run",
                pid.unwrap_or_default()
            ));
        }
        if !config.quiet {
            let elapsed = now.saturating_duration_since(clock.base + START_DELAY);
            let phase = if now < warmup_at {
                "warm"
            } else if now < send_end_at {
                "run "
            } else {
                "drain"
            };
            let rate = |n: u64| n as f64 / secs;
            let mut line = format!(
                "[{:>5.0}s {phase}] conns {}/{} fail {} | ann {:.0}/s resp {:.0}/s | offers in {:.0}/s | answers out {:.0}/s in {:.0}/s | fail {:.0}/s | msgs {:.0}/s | cpu {:.0}%",
                elapsed.as_secs_f64(),
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
                sys::cpu_percent(last_cpu, cpu, now.duration_since(last_tick)),
            );
            if let (Some(before), Some(after)) = (last_server, server) {
                line.push_str(&format!(
                    " | server cpu {:.0}% rss {:.0} MB",
                    sys::cpu_percent(before.cpu, after.cpu, now.duration_since(last_tick)),
                    after.rss_bytes as f64 / 1048576.0
                ));
            }
            eprintln!("{line}");
        }
        last = total;
        last_cpu = cpu;
        last_server = server;
        last_tick = now;
    }

    let window = config.duration - config.warmup;
    let (cpu_start, server_start) = window_start.unwrap_or((Duration::ZERO, None));
    let (cpu_end, server_end) =
        window_end.unwrap_or_else(|| (sys::own_cpu_time(), pid.and_then(sys::sample_process)));
    let client = report::process_report(
        std::process::id(),
        sys::cpu_percent(cpu_start, cpu_end, window),
        sys::sample_process(std::process::id()).map_or(0, |s| s.rss_bytes),
        sys::own_peak_rss(),
        config.threads as u64,
    );
    let server = match (pid, server_start, server_end) {
        (Some(pid), Some(start), Some(end)) => Some(report::process_report(
            pid,
            sys::cpu_percent(start.cpu, end.cpu, window),
            end.rss_bytes,
            end.peak_rss_bytes,
            end.threads,
        )),
        _ => None,
    };
    Watch {
        client,
        server,
        notes,
    }
}
