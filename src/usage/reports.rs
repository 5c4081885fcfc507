//! Viewer reports as plain data: the JSON schema (docs/reports.md), the plausibility checks
//! and the per-address budgets. No I/O and no clock of its own (callers pass `Instant`s),
//! so all of it is unit-tested without a runtime.
//!
//! A report carries what one page received, uploaded and suffered *since its previous
//! report* (deltas, never totals), and the wall time that covers. The server therefore
//! needs no viewer identity: it adds accepted deltas to per-stream sums. What it keeps per
//! client address, in memory only and forgotten when idle, is two token buckets: one for
//! the number of reports and one for the wall time they claim, which bounds what one
//! address can add to `max_viewers_per_ip` viewers at the plausible maximum bitrate.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::Deserialize;

use crate::config::ReportsSettings;

/// The only report format version so far.
pub const VERSION: u32 = 1;
/// Longest `stream` value accepted.
pub const MAX_STREAM_CHARS: usize = 256;
/// Most peers one viewer can plausibly have at once.
pub const MAX_PEERS: u32 = 1_000;
/// Longest plausible start-up (page load to first frame).
pub const MAX_STARTUP_MS: u64 = 600_000;
/// Each report may claim this much wall time beyond its `ms` (a report sent right after
/// the previous one may carry a segment that arrived in between).
pub const GRACE_MS: u64 = 1_000;

/// Result labels of `p2p_reports_total`, in the order `/stats.json` lists them.
pub const RESULTS: [&str; 8] = [
    "accepted",
    "too_large",
    "malformed",
    "implausible",
    "unknown_stream",
    "rate_limited",
    "budget_exceeded",
    "busy",
];

/// A report as sent by a player (docs/reports.md). Unknown fields, missing fields, wrong
/// types, negative numbers and fractions are refused by the parser.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Report {
    /// Format version: 1.
    pub v: u32,
    /// The playlist URL the player opened (absolute, or a path on this server).
    pub stream: String,
    /// Wall time in milliseconds since this page's previous report (or since it loaded).
    pub ms: u64,
    /// Segment bytes received over P2P in that time.
    pub p2p: u64,
    /// Segment bytes received over HTTP in that time.
    pub http: u64,
    /// Segment bytes uploaded to peers in that time.
    pub up: u64,
    /// Stalls that started in that time (rebuffering after playback first started).
    pub stalls: u64,
    /// Milliseconds spent stalled in that time.
    pub stall_ms: u64,
    /// Page load to first frame, in milliseconds: only in the first report after playback
    /// started.
    #[serde(default)]
    pub startup_ms: Option<u64>,
    /// Peers connected at the time of the report.
    pub peers: u32,
}

/// A valid report in the units the sums keep.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub p2p_bytes: u64,
    pub http_bytes: u64,
    pub uploaded_bytes: u64,
    pub seconds: f64,
    pub peer_seconds: f64,
    pub stalls: u64,
    pub stall_seconds: f64,
    pub startup_seconds: Option<f64>,
}

/// Why a report was refused; each maps to one HTTP status and one `p2p_reports_total`
/// result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 413: the body exceeds `max_body_bytes`.
    TooLarge,
    /// 400: not the schema (bad JSON, unknown or missing field, wrong type, negative).
    Malformed(String),
    /// 422: well-formed but impossible (more bytes than the bitrate allows, ...).
    Implausible(String),
    /// 422: a stream this server never served.
    UnknownStream,
    /// 429: too many reports from this address.
    RateLimited,
    /// 429: this address claims more viewing time than `max_viewers_per_ip` viewers.
    BudgetExceeded,
    /// 503: too many addresses tracked at once.
    Busy,
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::TooLarge => 413,
            Refusal::Malformed(_) => 400,
            Refusal::Implausible(_) | Refusal::UnknownStream => 422,
            Refusal::RateLimited | Refusal::BudgetExceeded => 429,
            Refusal::Busy => 503,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Refusal::TooLarge => "too_large",
            Refusal::Malformed(_) => "malformed",
            Refusal::Implausible(_) => "implausible",
            Refusal::UnknownStream => "unknown_stream",
            Refusal::RateLimited => "rate_limited",
            Refusal::BudgetExceeded => "budget_exceeded",
            Refusal::Busy => "busy",
        }
    }

    /// The text sent back to the client.
    pub fn message(&self) -> String {
        match self {
            Refusal::TooLarge => "report too large".into(),
            Refusal::Malformed(why) => format!("malformed report: {why}"),
            Refusal::Implausible(why) => format!("implausible report: {why}"),
            Refusal::UnknownStream => "unknown stream".into(),
            Refusal::RateLimited => "too many reports from this address".into(),
            Refusal::BudgetExceeded => {
                "reports from this address cover more time than it can plausibly watch".into()
            }
            Refusal::Busy => "too many reporting addresses, try later".into(),
        }
    }
}

/// The limits of `[reports]` in the units the checks use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_interval_ms: u64,
    /// Bytes per second.
    pub max_receive_rate: u64,
    pub max_upload_rate: u64,
    pub reports_per_sec: f64,
    pub report_burst: f64,
    pub max_viewers_per_ip: f64,
    pub max_tracked_ips: usize,
}

impl From<&ReportsSettings> for Limits {
    fn from(settings: &ReportsSettings) -> Self {
        Self {
            max_body_bytes: settings.max_body_bytes,
            max_interval_ms: settings.max_interval_secs.saturating_mul(1000),
            max_receive_rate: settings.max_receive_mbps.saturating_mul(1_000_000 / 8),
            max_upload_rate: settings.max_upload_mbps.saturating_mul(1_000_000 / 8),
            reports_per_sec: f64::from(settings.per_ip_reports_per_sec),
            report_burst: f64::from(settings.per_ip_report_burst),
            max_viewers_per_ip: f64::from(settings.max_viewers_per_ip),
            max_tracked_ips: settings.max_tracked_ips,
        }
    }
}

/// Parses a body (already capped by the caller at `max_body_bytes`).
pub fn parse(body: &[u8], limits: &Limits) -> Result<Report, Refusal> {
    if body.len() > limits.max_body_bytes {
        return Err(Refusal::TooLarge);
    }
    serde_json::from_slice(body).map_err(|err| Refusal::Malformed(err.to_string()))
}

/// Checks that a report could be true of one viewer, and converts it.
pub fn check(report: &Report, limits: &Limits) -> Result<Accepted, Refusal> {
    let implausible = |why: String| Err(Refusal::Implausible(why));
    if report.v != VERSION {
        return Err(Refusal::Malformed(format!(
            "version {} (this server reads {VERSION})",
            report.v
        )));
    }
    if report.stream.is_empty() || report.stream.chars().count() > MAX_STREAM_CHARS {
        return Err(Refusal::Malformed(format!(
            "stream must be 1 to {MAX_STREAM_CHARS} characters"
        )));
    }
    if report.ms > limits.max_interval_ms {
        return implausible(format!(
            "ms {} is above the longest interval {}",
            report.ms, limits.max_interval_ms
        ));
    }
    let allowed = |rate: u64| rate.saturating_mul(report.ms + GRACE_MS) / 1000;
    let received = report.p2p.saturating_add(report.http);
    if received > allowed(limits.max_receive_rate) {
        return implausible(format!(
            "{received} bytes received in {} ms is above the plausible bitrate",
            report.ms
        ));
    }
    if report.up > allowed(limits.max_upload_rate) {
        return implausible(format!(
            "{} bytes uploaded in {} ms is above the plausible bitrate",
            report.up, report.ms
        ));
    }
    if report.stall_ms > report.ms {
        return implausible("stallMs is above ms".into());
    }
    // A stall lasts at least a frame; ten per second of interval is already absurd.
    if report.stalls > 1 + report.ms / 100 {
        return implausible("more stalls than the interval can hold".into());
    }
    if report.peers > MAX_PEERS {
        return implausible(format!("more than {MAX_PEERS} peers"));
    }
    if report.startup_ms.is_some_and(|ms| ms > MAX_STARTUP_MS) {
        return implausible(format!("startupMs above {MAX_STARTUP_MS}"));
    }
    let seconds = report.ms as f64 / 1000.0;
    Ok(Accepted {
        p2p_bytes: report.p2p,
        http_bytes: report.http,
        uploaded_bytes: report.up,
        seconds,
        peer_seconds: f64::from(report.peers) * seconds,
        stalls: report.stalls,
        stall_seconds: report.stall_ms as f64 / 1000.0,
        startup_seconds: report.startup_ms.map(|ms| ms as f64 / 1000.0),
    })
}

/// One address's two token buckets.
#[derive(Debug, Clone)]
struct Budget {
    reports: f64,
    /// Milliseconds of viewing this address may still claim.
    watch_ms: f64,
    updated: Instant,
}

/// The budgets of the client addresses that reported recently, bounded.
#[derive(Debug)]
pub struct Budgets {
    limits: Limits,
    by_ip: HashMap<IpAddr, Budget>,
    last_sweep: Option<Instant>,
}

impl Budgets {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            by_ip: HashMap::new(),
            last_sweep: None,
        }
    }

    pub fn tracked(&self) -> usize {
        self.by_ip.len()
    }

    fn watch_capacity(&self) -> f64 {
        self.limits.max_viewers_per_ip * (self.limits.max_interval_ms + GRACE_MS) as f64
    }

    fn refilled(&self, budget: &Budget, now: Instant) -> Budget {
        let elapsed = now.saturating_duration_since(budget.updated).as_secs_f64();
        Budget {
            reports: (budget.reports + elapsed * self.limits.reports_per_sec)
                .min(self.limits.report_burst),
            watch_ms: (budget.watch_ms + elapsed * 1000.0 * self.limits.max_viewers_per_ip)
                .min(self.watch_capacity()),
            updated: now,
        }
    }

    /// Takes one report token from `ip` (before the body is even read): floods of garbage
    /// are limited like floods of valid reports.
    pub fn take_report(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        if !self.by_ip.contains_key(&ip) && self.by_ip.len() >= self.limits.max_tracked_ips {
            self.sweep(now);
            if self.by_ip.len() >= self.limits.max_tracked_ips {
                return Err(Refusal::Busy);
            }
        }
        let fresh = Budget {
            reports: self.limits.report_burst,
            watch_ms: self.watch_capacity(),
            updated: now,
        };
        let mut budget = match self.by_ip.get(&ip) {
            Some(budget) => self.refilled(budget, now),
            None => fresh,
        };
        let result = if budget.reports >= 1.0 {
            budget.reports -= 1.0;
            Ok(())
        } else {
            Err(Refusal::RateLimited)
        };
        self.by_ip.insert(ip, budget);
        result
    }

    /// Charges the wall time a valid report claims to `ip`; refused (and nothing charged)
    /// when the address has no budget left for it.
    pub fn take_watch_time(&mut self, ip: IpAddr, ms: u64, now: Instant) -> Result<(), Refusal> {
        let claimed = (ms + GRACE_MS) as f64;
        let Some(budget) = self.by_ip.get(&ip) else {
            // take_report always runs first; an address swept in between starts afresh.
            return Err(Refusal::Busy);
        };
        let mut budget = self.refilled(budget, now);
        if budget.watch_ms < claimed {
            self.by_ip.insert(ip, budget);
            return Err(Refusal::BudgetExceeded);
        }
        budget.watch_ms -= claimed;
        self.by_ip.insert(ip, budget);
        Ok(())
    }

    /// Forgets addresses whose buckets are full again (nothing to remember); at most once
    /// a second, so a full table costs one pass per second, not one per request.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        let capacity = self.watch_capacity();
        let burst = self.limits.report_burst;
        let limits = self.limits;
        self.by_ip.retain(|_, budget| {
            let elapsed = now.saturating_duration_since(budget.updated).as_secs_f64();
            let reports_full = budget.reports + elapsed * limits.reports_per_sec >= burst;
            let watch_full =
                budget.watch_ms + elapsed * 1000.0 * limits.max_viewers_per_ip >= capacity;
            !(reports_full && watch_full)
        });
    }
}

/// The path part of a `stream` value below `hls_path`: `http://host/hls/v0/a.m3u8?x` and
/// `/hls/v0/a.m3u8` both give `/v0/a.m3u8`. `None` if it is not under `hls_path`.
pub fn stream_path<'a>(stream: &'a str, hls_path: &str) -> Option<&'a str> {
    let path = match stream.split_once("://") {
        Some((_, rest)) => &rest[rest.find('/')?..],
        None => stream,
    };
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let rest = path.strip_prefix(hls_path.trim_end_matches('/'))?;
    rest.starts_with('/').then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::from(&ReportsSettings::default())
    }

    fn report() -> Report {
        Report {
            v: 1,
            stream: "/hls/live.m3u8".into(),
            ms: 10_000,
            p2p: 750_000,
            http: 250_000,
            up: 500_000,
            stalls: 0,
            stall_ms: 0,
            startup_ms: Some(900),
            peers: 3,
        }
    }

    const GOOD: &str = r#"{"v":1,"stream":"/hls/live.m3u8","ms":10000,"p2p":750000,"http":250000,"up":500000,"stalls":0,"stallMs":0,"startupMs":900,"peers":3}"#;

    #[test]
    fn a_good_report_parses_and_converts() {
        let parsed = parse(GOOD.as_bytes(), &limits()).expect("parses");
        assert_eq!(parsed, report());
        let accepted = check(&parsed, &limits()).expect("plausible");
        assert_eq!(accepted.p2p_bytes, 750_000);
        assert_eq!(accepted.seconds, 10.0);
        assert_eq!(accepted.peer_seconds, 30.0);
        assert_eq!(accepted.startup_seconds, Some(0.9));
        let without_startup = GOOD.replace(r#""startupMs":900,"#, "");
        let parsed = parse(without_startup.as_bytes(), &limits()).expect("optional");
        assert_eq!(parsed.startup_ms, None);
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        let cases = [
            GOOD.replace(r#""p2p":750000"#, r#""p2p":-1"#),
            GOOD.replace(r#""p2p":750000"#, r#""p2p":1.5"#),
            GOOD.replace(r#""p2p":750000"#, r#""p2p":"750000""#),
            GOOD.replace(r#""peers":3"#, r#""peers":3,"viewerId":"abc""#),
            GOOD.replace(r#""up":500000,"#, ""),
            GOOD.replace(r#""p2p":750000"#, r#""p2p":1e30"#),
            GOOD.replace(r#""p2p":750000"#, r#""p2p":18446744073709551616"#),
            "[]".into(),
            "".into(),
            "not json".into(),
        ];
        for body in cases {
            match parse(body.as_bytes(), &limits()) {
                Err(Refusal::Malformed(_)) => {}
                other => panic!("{body}: {other:?}"),
            }
        }
        let mut versioned = report();
        versioned.v = 2;
        assert!(matches!(
            check(&versioned, &limits()),
            Err(Refusal::Malformed(_))
        ));
        let mut unnamed = report();
        unnamed.stream = String::new();
        assert!(matches!(
            check(&unnamed, &limits()),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn oversized_bodies_are_refused_before_parsing() {
        let padded = format!("{GOOD}{}", " ".repeat(600));
        assert_eq!(parse(padded.as_bytes(), &limits()), Err(Refusal::TooLarge));
    }

    #[test]
    fn absurd_numbers_are_implausible() {
        let limits = limits();
        // 50 Mbit/s over 11 s (10 s plus the grace second) is 68.75 MB.
        let mut edge = report();
        edge.p2p = 68_750_000 - edge.http;
        assert!(check(&edge, &limits).is_ok(), "exactly at the bitrate");
        type Change = fn(&mut Report);
        let changes: [(&str, Change); 7] = [
            ("received", |r| r.p2p = 68_750_001 - r.http),
            ("uploaded", |r| r.up = 275_000_001),
            ("interval", |r| r.ms = 60_001),
            ("stall time", |r| r.stall_ms = r.ms + 1),
            ("stalls", |r| r.stalls = 102),
            ("peers", |r| r.peers = MAX_PEERS + 1),
            ("startup", |r| r.startup_ms = Some(MAX_STARTUP_MS + 1)),
        ];
        for (what, change) in changes {
            let mut bad = report();
            change(&mut bad);
            assert!(
                matches!(check(&bad, &limits), Err(Refusal::Implausible(_))),
                "{what}: {:?}",
                check(&bad, &limits)
            );
        }
        let mut overflow = report();
        overflow.p2p = u64::MAX;
        overflow.http = u64::MAX;
        assert!(matches!(
            check(&overflow, &limits),
            Err(Refusal::Implausible(_))
        ));
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn the_report_bucket_limits_each_address_alone_and_refills() {
        let mut limits = limits();
        limits.report_burst = 10.0;
        limits.reports_per_sec = 2.0;
        let mut budgets = Budgets::new(limits);
        let start = Instant::now();
        for _ in 0..10 {
            budgets.take_report(ip(1), start).expect("within the burst");
        }
        assert_eq!(budgets.take_report(ip(1), start), Err(Refusal::RateLimited));
        budgets
            .take_report(ip(2), start)
            .expect("another address is not limited");
        // 2 per second: after half a second one more.
        let later = start + Duration::from_millis(500);
        budgets.take_report(ip(1), later).expect("refilled");
        assert_eq!(budgets.take_report(ip(1), later), Err(Refusal::RateLimited));
    }

    #[test]
    fn one_address_cannot_claim_more_time_than_its_viewers_can_watch() {
        let mut limits = limits();
        limits.max_viewers_per_ip = 2.0;
        limits.report_burst = 1000.0;
        let mut budgets = Budgets::new(limits);
        let start = Instant::now();
        // Capacity: 2 viewers x (60 s + 1 s) = 122 s; each report claims ms + 1 s.
        for _ in 0..2 {
            budgets.take_report(ip(1), start).expect("token");
            budgets
                .take_watch_time(ip(1), 60_000, start)
                .expect("within the budget");
        }
        budgets.take_report(ip(1), start).expect("token");
        assert_eq!(
            budgets.take_watch_time(ip(1), 0, start),
            Err(Refusal::BudgetExceeded)
        );
        // 10 s later, 2 viewers have watched 20 s more.
        let later = start + Duration::from_secs(10);
        budgets.take_report(ip(1), later).expect("token");
        budgets
            .take_watch_time(ip(1), 18_000, later)
            .expect("two viewers' 10 s");
        budgets.take_report(ip(1), later).expect("token");
        assert_eq!(
            budgets.take_watch_time(ip(1), 1_000, later),
            Err(Refusal::BudgetExceeded)
        );
    }

    #[test]
    fn the_table_of_addresses_is_bounded_and_forgets_idle_ones() {
        let mut limits = limits();
        limits.max_tracked_ips = 2;
        let mut budgets = Budgets::new(limits);
        let start = Instant::now();
        budgets.take_report(ip(1), start).expect("first");
        budgets.take_report(ip(2), start).expect("second");
        assert_eq!(budgets.take_report(ip(3), start), Err(Refusal::Busy));
        budgets
            .take_report(ip(1), start)
            .expect("known addresses go on");
        // Once their buckets are full again, the old addresses are forgotten.
        let later = start + Duration::from_secs(120);
        budgets.take_report(ip(3), later).expect("room again");
        assert_eq!(budgets.tracked(), 1);
    }

    #[test]
    fn stream_paths_below_the_hls_prefix() {
        assert_eq!(stream_path("/hls/live.m3u8", "/hls"), Some("/live.m3u8"));
        assert_eq!(
            stream_path("http://127.0.0.1:8000/hls/v0/a.m3u8?t=1", "/hls"),
            Some("/v0/a.m3u8")
        );
        assert_eq!(stream_path("https://host", "/hls"), None);
        assert_eq!(stream_path("/hlsx/live.m3u8", "/hls"), None);
        assert_eq!(stream_path("/other/live.m3u8", "/hls"), None);
    }
}
