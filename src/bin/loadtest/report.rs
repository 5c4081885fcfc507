//! The final report: aggregation of worker figures, thresholds, and the two renderings
//! (a table for people, JSON for CI).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::Config;
use crate::scenario::SwarmSummary;
use crate::stats::{Tally, TargetTally, TextCounts, WorkerOutcome};

/// Limits that decide the exit code; `None` means not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Thresholds {
    pub max_p99_ms: Option<f64>,
    pub max_error_rate: Option<f64>,
    pub min_delivery_ratio: Option<f64>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub samples: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// From a histogram of microseconds; `None` when it holds no sample.
    pub fn of(histogram: &Histogram<u64>) -> Option<Percentiles> {
        if histogram.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Percentiles {
            samples: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionReport {
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    pub failed_by_cause: TextCounts,
    pub closed_by_server: u64,
    pub lost: u64,
    pub churned: u64,
    pub open_at_end: u64,
    /// Close codes the server sent, or how a connection ended without one.
    pub close_codes: TextCounts,
    pub handshake_ms: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrafficReport {
    pub announces_sent: u64,
    pub announce_responses: u64,
    pub announce_responses_unmatched: u64,
    pub scrapes_sent: u64,
    pub scrape_responses: u64,
    pub offers_sent: u64,
    pub offers_expected: u64,
    pub offers_received: u64,
    /// offers_received / offers_expected.
    pub offer_delivery_ratio: Option<f64>,
    pub answers_sent: u64,
    pub answers_received: u64,
    /// answers_received / answers_sent.
    pub answer_delivery_ratio: Option<f64>,
    pub offers_to_self: u64,
    pub offers_wrong_swarm: u64,
    pub offers_foreign: u64,
    pub answers_misrouted: u64,
    pub queue_drops: u64,
}

/// The window traffic of the connections of one target (`--url`): each count is made by
/// the connection that sent or received, so a target's figures are about its own
/// connections whatever instance owns their swarms.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    pub url: String,
    #[serde(flatten)]
    pub counts: TargetTally,
    /// Answers back to this target's offerers / offers they should have had relayed: the
    /// share of their offers that made the whole offer -> answer trip.
    pub completion_ratio: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorReport {
    pub failures: u64,
    pub failure_reasons: TextCounts,
    pub unparseable: u64,
    pub unparseable_samples: TextCounts,
    pub other_messages: u64,
    pub errors: u64,
    pub requests: u64,
    pub error_rate: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub announce_rtt: Option<Percentiles>,
    pub offer_relay: Option<Percentiles>,
    pub answer_relay: Option<Percentiles>,
    pub signalling_rtt: Option<Percentiles>,
    pub scrape_rtt: Option<Percentiles>,
    pub send_lag: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    pub msgs_in: u64,
    pub msgs_out: u64,
    pub msgs_per_sec: f64,
    pub msgs_in_per_sec: f64,
    pub msgs_out_per_sec: f64,
    pub bytes_in_per_sec: f64,
    pub bytes_out_per_sec: f64,
}

/// Resource use of this process or of the server, over the measurement window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// Percent of one core (200 = two cores busy).
    pub cpu_percent: f64,
    pub rss_mb_end: f64,
    pub rss_mb_peak: f64,
    pub threads: u64,
    /// Time its threads were runnable but waited for a CPU, in percent of the window:
    /// high values mean other processes took its cores.
    pub runqueue_wait_percent: f64,
}

/// The whole machine over the window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostReport {
    pub cpus: usize,
    /// Busy share of all cores, whoever used them.
    pub busy_percent: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    pub name: String,
    pub limit: f64,
    pub value: Option<f64>,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Config,
    pub swarms: SwarmSummary,
    pub window_secs: f64,
    pub connections: ConnectionReport,
    pub traffic: TrafficReport,
    /// The traffic by target, in `--url` order (one entry per URL).
    pub by_target: Vec<TargetReport>,
    pub errors: ErrorReport,
    pub latency_ms: LatencyReport,
    pub throughput: ThroughputReport,
    pub client: ProcessReport,
    pub server: Option<ProcessReport>,
    pub host: HostReport,
    pub notes: Vec<String>,
    pub checks: Vec<Check>,
    pub passed: bool,
}

fn ratio(numerator: u64, denominator: u64) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// What the run measured, before thresholds are applied.
pub struct Inputs<'a> {
    pub config: &'a Config,
    pub swarms: SwarmSummary,
    /// Counters of the whole run (connection figures).
    pub total: Tally,
    /// Window counters by target, in `config.urls` order.
    pub by_target: Vec<TargetTally>,
    /// Counters whose event started inside the measurement window.
    pub window: Tally,
    pub outcome: &'a WorkerOutcome,
    pub window_secs: f64,
    pub client: ProcessReport,
    pub server: Option<ProcessReport>,
    pub host: HostReport,
    /// Notes from the run itself (e.g. a server that went away).
    pub notes: Vec<String>,
}

pub fn build(inputs: Inputs<'_>) -> Report {
    let Inputs {
        config,
        swarms,
        total,
        by_target,
        window,
        outcome,
        window_secs,
        client,
        server,
        host,
        mut notes,
    } = inputs;
    let per_sec = |n: u64| {
        if window_secs > 0.0 {
            n as f64 / window_secs
        } else {
            0.0
        }
    };
    let histograms = &outcome.histograms;
    let connections = ConnectionReport {
        attempted: total.conn_attempted,
        established: total.conn_established,
        failed: total.conn_failed,
        failed_by_cause: outcome.connect_failures.clone(),
        closed_by_server: total.conn_closed_by_server,
        lost: total.conn_lost,
        churned: total.conn_churned,
        open_at_end: total.conn_established.saturating_sub(total.conn_ended),
        close_codes: outcome.close_codes.clone(),
        handshake_ms: Percentiles::of(&histograms.handshake),
    };
    let traffic = TrafficReport {
        announces_sent: window.announces_sent,
        announce_responses: window.announce_responses,
        announce_responses_unmatched: window.announce_responses_unmatched,
        scrapes_sent: window.scrapes_sent,
        scrape_responses: window.scrape_responses,
        offers_sent: window.offers_sent,
        offers_expected: window.offers_expected,
        offers_received: window.offers_received,
        offer_delivery_ratio: ratio(window.offers_received, window.offers_expected),
        answers_sent: window.answers_sent,
        answers_received: window.answers_received,
        answer_delivery_ratio: ratio(window.answers_received, window.answers_sent),
        offers_to_self: window.offers_to_self,
        offers_wrong_swarm: window.offers_wrong_swarm,
        offers_foreign: window.offers_foreign,
        answers_misrouted: window.answers_misrouted,
        queue_drops: window.queue_drops,
    };
    let by_target = config
        .urls
        .iter()
        .zip(by_target)
        .map(|(url, counts)| TargetReport {
            url: url.clone(),
            counts,
            completion_ratio: ratio(counts.answers_received, counts.offers_expected),
        })
        .collect();
    let errors = ErrorReport {
        failures: window.failures,
        failure_reasons: outcome.failure_reasons.clone(),
        unparseable: window.unparseable,
        unparseable_samples: outcome.unparseable.clone(),
        other_messages: window.other_messages,
        errors: window.errors(),
        requests: window.requests(),
        error_rate: ratio(window.errors(), window.requests()),
    };
    let latency = LatencyReport {
        announce_rtt: Percentiles::of(&histograms.announce_rtt),
        offer_relay: Percentiles::of(&histograms.offer_relay),
        answer_relay: Percentiles::of(&histograms.answer_relay),
        signalling_rtt: Percentiles::of(&histograms.signalling_rtt),
        scrape_rtt: Percentiles::of(&histograms.scrape_rtt),
        send_lag: Percentiles::of(&histograms.send_lag),
    };
    let throughput = ThroughputReport {
        msgs_in: window.msgs_in,
        msgs_out: window.msgs_out,
        msgs_per_sec: per_sec(window.msgs_in + window.msgs_out),
        msgs_in_per_sec: per_sec(window.msgs_in),
        msgs_out_per_sec: per_sec(window.msgs_out),
        bytes_in_per_sec: per_sec(window.bytes_in),
        bytes_out_per_sec: per_sec(window.bytes_out),
    };

    let ramp_secs = f64::from(config.connections) / config.connect_rate;
    if ramp_secs > config.warmup.as_secs_f64() {
        notes.push(format!(
            "ramp-up takes {ramp_secs:.1} s but --warmup is {:.1} s: the window includes it",
            config.warmup.as_secs_f64()
        ));
    }
    if client.cpu_percent > 85.0 * config.threads as f64 {
        notes.push(format!(
            "the client used {:.0}% CPU with {} thread(s): it may be the bottleneck \
             (add --threads or lower the load)",
            client.cpu_percent, config.threads
        ));
    }
    if client.runqueue_wait_percent > 10.0 {
        notes.push(format!(
            "the client waited for a CPU {:.0}% of the time (other processes had its cores): \
             latencies include that wait",
            client.runqueue_wait_percent
        ));
    }
    if let Some(server) = &server {
        if server.runqueue_wait_percent > 10.0 {
            notes.push(format!(
                "the server waited for a CPU {:.0}% of the time: it was starved, not just slow",
                server.runqueue_wait_percent
            ));
        }
    }
    if host.busy_percent > 90.0 {
        notes.push(format!(
            "the machine's {} CPUs were {:.0}% busy: client, server and anything else compete",
            host.cpus, host.busy_percent
        ));
    }
    if let Some(lag) = latency.send_lag {
        if lag.p99 > 10.0 {
            notes.push(format!(
                "announce timers fired {:.1} ms late at p99: the client is behind schedule",
                lag.p99
            ));
        }
    }
    if traffic.queue_drops > 0 {
        notes.push(format!(
            "{} messages dropped on full client queues: sockets stopped draining",
            traffic.queue_drops
        ));
    }
    if traffic.announce_responses_unmatched > 0 {
        notes.push(format!(
            "{} announce responses matched no pending announce (a tracker that also answers \
             answers, like aquatic_ws); announce RTT pairs responses in order, so it is approximate",
            traffic.announce_responses_unmatched
        ));
    }
    // Churned, lost and closed sessions each may take one announce's response with them.
    let missing = traffic
        .announces_sent
        .saturating_sub(traffic.announce_responses);
    let explained = window.conn_churned + window.conn_lost + window.conn_closed_by_server;
    if errors.failures > 0 && missing > explained {
        notes.push(
            "failure reasons arrived while announce responses are missing: announce RTT pairs \
             responses with announces in order, so if some announces got a failure instead \
             of a response, the RTT reads high"
                .to_owned(),
        );
    }
    if traffic.offers_to_self > 0 {
        notes.push(format!(
            "SERVER BUG? {} offers were relayed back to the peer that sent them",
            traffic.offers_to_self
        ));
    }
    if traffic.offers_wrong_swarm > 0 || traffic.answers_misrouted > 0 {
        notes.push(format!(
            "SERVER BUG? {} offers arrived under a foreign info_hash and {} answers reached a \
             peer that did not make the offer",
            traffic.offers_wrong_swarm, traffic.answers_misrouted
        ));
    }

    let mut report = Report {
        scenario: config.clone(),
        swarms,
        window_secs,
        connections,
        traffic,
        by_target,
        errors,
        latency_ms: latency,
        throughput,
        client,
        server,
        host,
        notes,
        checks: Vec::new(),
        passed: true,
    };
    report.checks = evaluate(&report, &config.thresholds);
    report.passed = report.checks.iter().all(|check| check.passed);
    report
}

/// Applies the thresholds. A check with nothing to measure fails (an empty run must not
/// pass CI) unless the scenario makes it meaningless (no offers to deliver).
pub fn evaluate(report: &Report, thresholds: &Thresholds) -> Vec<Check> {
    let mut checks = Vec::new();
    let upper = |name: &str, limit: f64, value: Option<f64>| Check {
        name: name.to_owned(),
        limit,
        value,
        passed: value.is_some_and(|value| value <= limit),
    };
    if let Some(limit) = thresholds.max_p99_ms {
        checks.push(upper(
            "announce_rtt p99 ms",
            limit,
            report.latency_ms.announce_rtt.map(|p| p.p99),
        ));
        if report.traffic.offers_expected > 0 {
            checks.push(upper(
                "offer_relay p99 ms",
                limit,
                report.latency_ms.offer_relay.map(|p| p.p99),
            ));
        }
    }
    if let Some(limit) = thresholds.max_error_rate {
        checks.push(upper("error_rate", limit, report.errors.error_rate));
    }
    if let Some(limit) = thresholds.min_delivery_ratio {
        let lower = |name: &str, value: Option<f64>| Check {
            name: name.to_owned(),
            limit,
            value,
            passed: value.is_some_and(|value| value >= limit),
        };
        if report.traffic.offers_expected > 0 {
            checks.push(lower(
                "offer_delivery_ratio",
                report.traffic.offer_delivery_ratio,
            ));
        }
        if report.traffic.answers_sent > 0 || report.traffic.offers_expected > 0 {
            checks.push(lower(
                "answer_delivery_ratio",
                report.traffic.answer_delivery_ratio,
            ));
        }
    }
    checks
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn process_report(
    pid: u32,
    cpu_percent: f64,
    rss_end: u64,
    rss_peak: u64,
    threads: u64,
) -> ProcessReport {
    ProcessReport {
        pid,
        cpu_percent,
        rss_mb_end: mb(rss_end),
        rss_mb_peak: mb(rss_peak.max(rss_end)),
        threads,
        runqueue_wait_percent: 0.0,
    }
}

fn opt_ratio(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{:.4}", v))
}

fn counts_line(out: &mut String, label: &str, counts: &TextCounts) {
    if counts.0.is_empty() {
        return;
    }
    let _ = writeln!(out, "  {label}:");
    let mut sorted: Vec<_> = counts.0.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (text, count) in sorted {
        let _ = writeln!(out, "    {count:>10}  {text}");
    }
}

/// The human-readable table.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let c = &report.scenario;
    let s = &report.swarms;
    let _ = writeln!(out, "== scenario");
    let _ = writeln!(
        out,
        "  target {}  connections {} (ramp {}/s)  threads {}  seed {}",
        c.url, c.connections, c.connect_rate, c.threads, c.seed
    );
    let _ = writeln!(
        out,
        "  duration {:.0}s (warm-up {:.0}s, drain {:.0}s)  window {:.1}s",
        c.duration.as_secs_f64(),
        c.warmup.as_secs_f64(),
        c.drain.as_secs_f64(),
        report.window_secs
    );
    let _ = writeln!(
        out,
        "  swarms {} ({} hot with {:.0}% of peers, zipf {} for the rest): {} occupied, {} singletons, largest {}",
        c.swarms,
        c.hot_swarms,
        c.hot_share * 100.0,
        c.zipf_exponent,
        s.occupied,
        s.singletons,
        s.largest
    );
    let _ = writeln!(
        out,
        "  announce every {:.2}s per peer = {:.0}/s total, {} offers x {} B SDP, scrape ratio {}, churn {}/s",
        c.interval.as_secs_f64(),
        c.announce_rate,
        c.offers,
        c.sdp_bytes,
        c.scrape_ratio,
        c.churn_per_sec
    );

    let k = &report.connections;
    let _ = writeln!(out, "== connections (whole run)");
    let _ = writeln!(
        out,
        "  attempted {}  established {}  failed {}  closed by server {}  lost {}  churned {}  open at end {}",
        k.attempted, k.established, k.failed, k.closed_by_server, k.lost, k.churned, k.open_at_end
    );
    counts_line(&mut out, "failed by cause", &k.failed_by_cause);
    counts_line(&mut out, "close codes", &k.close_codes);

    let t = &report.traffic;
    let _ = writeln!(out, "== traffic (events that started in the window)");
    let _ = writeln!(
        out,
        "  announces sent {}  responses {}  unmatched {}  scrapes sent {}  responses {}",
        t.announces_sent,
        t.announce_responses,
        t.announce_responses_unmatched,
        t.scrapes_sent,
        t.scrape_responses
    );
    let _ = writeln!(
        out,
        "  offers sent {}  expected {}  received {}  delivery {}",
        t.offers_sent,
        t.offers_expected,
        t.offers_received,
        opt_ratio(t.offer_delivery_ratio)
    );
    let _ = writeln!(
        out,
        "  answers sent {}  received {}  delivery {}",
        t.answers_sent,
        t.answers_received,
        opt_ratio(t.answer_delivery_ratio)
    );
    let _ = writeln!(
        out,
        "  anomalies: offers to self {}  wrong swarm {}  foreign {}  misrouted answers {}  client queue drops {}",
        t.offers_to_self, t.offers_wrong_swarm, t.offers_foreign, t.answers_misrouted, t.queue_drops
    );
    if report.by_target.len() > 1 {
        let _ = writeln!(
            out,
            "  by target (each connection counts what it sent and received):"
        );
        for target in &report.by_target {
            let c = &target.counts;
            let _ = writeln!(
                out,
                "    {}  announces {}  offers expected {}  received {}  answers sent {}  \
                 back to its offerers {}  completion {}",
                target.url,
                c.announces_sent,
                c.offers_expected,
                c.offers_received,
                c.answers_sent,
                c.answers_received,
                opt_ratio(target.completion_ratio)
            );
        }
    }

    let e = &report.errors;
    let _ = writeln!(out, "== errors");
    let _ = writeln!(
        out,
        "  failure reasons {}  unparseable {}  other messages {}  error rate {} ({} / {})",
        e.failures,
        e.unparseable,
        e.other_messages,
        opt_ratio(e.error_rate),
        e.errors,
        e.requests
    );
    counts_line(&mut out, "failure reasons", &e.failure_reasons);
    counts_line(&mut out, "unparseable (samples)", &e.unparseable_samples);

    let l = &report.latency_ms;
    let _ = writeln!(out, "== latency (ms)");
    let _ = writeln!(
        out,
        "  {:<22}{:>10}{:>9}{:>9}{:>9}{:>9}{:>9}",
        "", "samples", "p50", "p90", "p99", "p99.9", "max"
    );
    for (name, value) in [
        ("announce round trip", l.announce_rtt),
        ("offer relay A->B", l.offer_relay),
        ("answer relay B->A", l.answer_relay),
        ("offer->answer (A)", l.signalling_rtt),
        ("scrape round trip", l.scrape_rtt),
        ("handshake", k.handshake_ms),
        ("client send lag", l.send_lag),
    ] {
        match value {
            Some(p) => {
                let _ = writeln!(
                    out,
                    "  {name:<22}{:>10}{:>9.2}{:>9.2}{:>9.2}{:>9.2}{:>9.2}",
                    p.samples, p.p50, p.p90, p.p99, p.p99_9, p.max
                );
            }
            None => {
                let _ = writeln!(out, "  {name:<22}{:>10}", 0);
            }
        }
    }

    let h = &report.throughput;
    let _ = writeln!(out, "== throughput (at the client)");
    let _ = writeln!(
        out,
        "  {:.0} msgs/s ({:.0} in + {:.0} out)  {:.2} MB/s in  {:.2} MB/s out",
        h.msgs_per_sec,
        h.msgs_in_per_sec,
        h.msgs_out_per_sec,
        h.bytes_in_per_sec / 1e6,
        h.bytes_out_per_sec / 1e6
    );
    let _ = writeln!(out, "== resources (window)");
    let p = &report.client;
    let _ = writeln!(
        out,
        "  client pid {}: CPU {:.0}% of a core, waited for CPU {:.0}%, peak RSS {:.0} MB",
        p.pid, p.cpu_percent, p.runqueue_wait_percent, p.rss_mb_peak
    );
    if let Some(p) = &report.server {
        let _ = writeln!(
            out,
            "  server pid {}: CPU {:.0}% of a core, waited for CPU {:.0}%, RSS {:.0} MB (peak {:.0} MB), {} threads",
            p.pid, p.cpu_percent, p.runqueue_wait_percent, p.rss_mb_end, p.rss_mb_peak, p.threads
        );
    }
    let _ = writeln!(
        out,
        "  host: {} CPUs, {:.0}% busy",
        report.host.cpus, report.host.busy_percent
    );
    if !report.notes.is_empty() {
        let _ = writeln!(out, "== notes");
        for note in &report.notes {
            let _ = writeln!(out, "  - {note}");
        }
    }
    if !report.checks.is_empty() {
        let _ = writeln!(out, "== thresholds");
        for check in &report.checks {
            let value = check
                .value
                .map_or_else(|| "no data".to_owned(), |v| format!("{v:.4}"));
            let _ = writeln!(
                out,
                "  {:<4} {:<24} {value} (limit {})",
                if check.passed { "ok" } else { "FAIL" },
                check.name,
                check.limit
            );
        }
        let _ = writeln!(out, "  => {}", if report.passed { "PASS" } else { "FAIL" });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Args;
    use crate::stats::record_ns;
    use clap::Parser;

    fn config(extra: &[&str]) -> Config {
        let mut argv = vec!["loadtest", "--url", "ws://127.0.0.1:9/"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv).into_config().expect("valid config")
    }

    /// The tally of the one URL of these tests: 4000 offers expected, 3900 delivered,
    /// 3800 of their answers back.
    fn one_target() -> Vec<TargetTally> {
        vec![TargetTally {
            announces_sent: 1000,
            offers_expected: 4000,
            offers_received: 3900,
            answers_sent: 3900,
            answers_received: 3800,
        }]
    }

    fn summary() -> SwarmSummary {
        SwarmSummary {
            occupied: 1,
            singletons: 0,
            largest: 10,
            in_hot: 10,
            deliverable_share: 1.0,
        }
    }

    fn sample_run(config: &Config) -> Report {
        let mut outcome = WorkerOutcome::default();
        for ms in 1..=100 {
            record_ns(&mut outcome.histograms.announce_rtt, ms * 1_000_000);
            record_ns(&mut outcome.histograms.offer_relay, ms * 500_000);
        }
        outcome.failure_reasons.bump("swarm full", 3);
        let window = Tally {
            conn_attempted: 10,
            announces_sent: 1000,
            announce_responses: 990,
            offers_sent: 5000,
            offers_expected: 4000,
            offers_received: 3900,
            answers_sent: 3900,
            answers_received: 3800,
            failures: 3,
            msgs_in: 8000,
            msgs_out: 5000,
            ..Tally::default()
        };
        build(Inputs {
            config,
            swarms: summary(),
            total: window,
            by_target: one_target(),
            window,
            outcome: &outcome,
            window_secs: 10.0,
            client: ProcessReport::default(),
            server: None,
            host: HostReport::default(),
            notes: Vec::new(),
        })
    }

    #[test]
    fn aggregates_ratios_and_rates() {
        let config = config(&[]);
        let report = sample_run(&config);
        assert_eq!(report.traffic.offer_delivery_ratio, Some(0.975));
        let answers = report.traffic.answer_delivery_ratio.expect("ratio");
        assert!((answers - 3800.0 / 3900.0).abs() < 1e-12);
        assert_eq!(report.errors.errors, 3);
        assert_eq!(report.errors.requests, 1000 + 3900 + 10);
        assert!((report.throughput.msgs_per_sec - 1300.0).abs() < 1e-9);
        let rtt = report.latency_ms.announce_rtt.expect("samples");
        assert_eq!(rtt.samples, 100);
        assert!((rtt.p99 - 99.0).abs() < 0.2, "{}", rtt.p99);
        assert!(report.passed, "no thresholds, nothing fails");
        let json = serde_json::to_string(&report).expect("serialises");
        assert!(json.contains("\"offer_delivery_ratio\":0.975"));
        let table = render_table(&report);
        assert!(table.contains("swarm full"));
        assert!(table.contains("announce round trip"));
    }

    #[test]
    fn thresholds_pass_and_fail() {
        let config = config(&[
            "--max-p99-ms",
            "120",
            "--max-error-rate",
            "0.001",
            "--min-delivery-ratio",
            "0.97",
        ]);
        let report = sample_run(&config);
        let names: Vec<_> = report.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "announce_rtt p99 ms",
                "offer_relay p99 ms",
                "error_rate",
                "offer_delivery_ratio",
                "answer_delivery_ratio"
            ]
        );
        assert!(
            report.checks.iter().all(|c| c.passed),
            "{:?}",
            report.checks
        );
        assert!(report.passed);

        let strict = Thresholds {
            max_p99_ms: Some(50.0),
            max_error_rate: Some(0.0001),
            min_delivery_ratio: Some(0.99),
        };
        let checks = evaluate(&report, &strict);
        let failed: Vec<_> = checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name.as_str())
            .collect();
        // Offer relay p99 is ~49.5 ms, inside 50.
        assert_eq!(
            failed,
            [
                "announce_rtt p99 ms",
                "error_rate",
                "offer_delivery_ratio",
                "answer_delivery_ratio"
            ]
        );
    }

    /// A run in which nothing was counted but `by_target`.
    fn empty_run(config: &Config, by_target: Vec<TargetTally>) -> Report {
        build(Inputs {
            config,
            swarms: summary(),
            total: Tally::default(),
            by_target,
            window: Tally::default(),
            outcome: &WorkerOutcome::default(),
            window_secs: 10.0,
            client: ProcessReport::default(),
            server: None,
            host: HostReport::default(),
            notes: Vec::new(),
        })
    }

    #[test]
    fn traffic_is_shown_by_target() {
        let mut argv = vec![
            "loadtest",
            "--url",
            "ws://127.0.0.1:9/a,ws://127.0.0.1:10/b",
        ];
        argv.push("-q");
        let config = Args::parse_from(argv).into_config().expect("valid config");
        let survivor = TargetTally {
            announces_sent: 100,
            offers_expected: 400,
            offers_received: 390,
            answers_sent: 390,
            answers_received: 396,
        };
        let report = empty_run(&config, vec![survivor, TargetTally::default()]);
        assert_eq!(report.by_target.len(), 2);
        assert_eq!(report.by_target[0].url, "ws://127.0.0.1:9/a");
        assert_eq!(report.by_target[0].completion_ratio, Some(0.99));
        assert_eq!(report.by_target[1].completion_ratio, None);
        let json = serde_json::to_string(&report).expect("serialises");
        assert!(json.contains("\"offers_expected\":400"), "{json}");
        let table = render_table(&report);
        assert!(table.contains("by target"), "{table}");
        assert!(table.contains("ws://127.0.0.1:10/b"), "{table}");
        let single = render_table(&sample_run(&self::config(&[])));
        assert!(!single.contains("by target"), "{single}");
    }

    #[test]
    fn an_empty_run_does_not_pass() {
        let config = config(&["--max-p99-ms", "1000", "--max-error-rate", "1"]);
        let report = empty_run(&config, Vec::new());
        assert!(!report.passed);
        assert!(report.checks.iter().all(|c| !c.passed && c.value.is_none()));
    }

    #[test]
    fn nothing_to_deliver_is_not_a_failure() {
        let config = config(&["--offers", "0", "--min-delivery-ratio", "0.9"]);
        let outcome = WorkerOutcome::default();
        let window = Tally {
            announces_sent: 10,
            announce_responses: 10,
            ..Tally::default()
        };
        let report = build(Inputs {
            config: &config,
            swarms: summary(),
            total: window,
            by_target: one_target(),
            window,
            outcome: &outcome,
            window_secs: 1.0,
            client: ProcessReport::default(),
            server: None,
            host: HostReport::default(),
            notes: Vec::new(),
        });
        assert!(report.checks.is_empty());
        assert!(report.passed);
    }
}
