//! Command-line flags and their validation into a [`Config`].

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::Parser;
use serde::Serialize;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::report::Thresholds;
use crate::scenario::SwarmShape;

/// Open-loop load generator for WebTorrent trackers (WebSocket signalling).
///
/// Each connection is one simulated peer in one swarm. It announces on a fixed schedule
/// whatever the server's speed, with offers of a given SDP size, answers every offer it
/// receives, and measures announce round trips, offer relay latency and the full
/// offer -> answer round trip. See docs/loadtest.md.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
pub struct Args {
    /// Tracker WebSocket URL (ws:// only). Repeat it, or list several separated by commas,
    /// to spread the connections over several trackers (instances of one cluster):
    /// connection i goes to URL i mod n, whatever its swarm.
    #[arg(
        long = "url",
        visible_alias = "urls",
        value_delimiter = ',',
        default_value = "ws://127.0.0.1:8000/announce"
    )]
    pub urls: Vec<String>,
    /// Allow a target whose host is not a loopback address.
    #[arg(long)]
    pub allow_remote: bool,

    /// Simulated peers, one WebSocket each.
    #[arg(short = 'c', long, default_value_t = 100)]
    pub connections: u32,
    /// New connections opened per second during ramp-up.
    #[arg(long, default_value_t = 500.0)]
    pub connect_rate: f64,
    /// Seconds allowed for TCP connect + WebSocket upgrade.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Spread connections over this many local source addresses 127.0.0.1, .2, ... (IPv4
    /// loopback targets only): more ephemeral ports for churn, and a way past per-IP caps.
    #[arg(long, default_value_t = 1)]
    pub source_ips: u32,
    /// Seconds to wait before reconnecting after a failed or lost connection.
    #[arg(long, default_value_t = 1.0)]
    pub reconnect_delay: f64,

    /// Seconds of sending, warm-up included.
    #[arg(short = 'd', long, default_value_t = 30.0)]
    pub duration: f64,
    /// Seconds at the start excluded from the statistics (let the ramp-up finish).
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Seconds after sending stops during which replies are still read and offers answered.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,

    /// Swarms (info_hashes), hot ones included.
    #[arg(long, default_value_t = 1000)]
    pub swarms: u32,
    /// Hot swarms (a live channel's renditions) sharing --hot-share of the peers evenly.
    #[arg(long, default_value_t = 4)]
    pub hot_swarms: u32,
    /// Fraction of the peers in the hot swarms.
    #[arg(long, default_value_t = 0.5)]
    pub hot_share: f64,
    /// The other peers choose a quiet swarm by Zipf(exponent): 0 uniform, 1 long tail.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_exponent: f64,

    /// Offers per announce (P2P Media Loader sends 5, WebTorrent up to 10).
    #[arg(long, default_value_t = 5)]
    pub offers: usize,
    /// Size of each offer and answer SDP in bytes (real ones are 1-5 KB; minimum ~130).
    #[arg(long, default_value_t = 1500)]
    pub sdp_bytes: usize,
    /// Total announces per second over all connections (overrides --interval).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds between two announces of one connection.
    #[arg(long, default_value_t = 20.0)]
    pub interval: f64,
    /// Scrapes per announce (0.1 = one scrape every 10 announces).
    #[arg(long, default_value_t = 0.0)]
    pub scrape_ratio: f64,
    /// Connections closed and reopened with a new peer_id per second (over all peers).
    #[arg(long, default_value_t = 0.0)]
    pub churn_per_sec: f64,

    /// Worker threads, each with its own single-threaded runtime.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Outbound messages queued per connection before new ones are dropped and counted.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Seed of the swarm assignment (ids change every run regardless).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Also sample this local process's CPU and RSS (the tracker under test).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(short, long)]
    pub quiet: bool,

    /// Fail (exit 1) if the p99 announce round trip or offer relay latency is above this.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Fail if errors / requests is above this (see docs/loadtest.md for both terms).
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// Fail if the offer or answer delivery ratio is below this.
    #[arg(long)]
    pub min_delivery_ratio: Option<f64>,
}

/// The validated run configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The targets, comma-separated (one URL: that URL).
    pub url: String,
    /// The targets in order: connection i goes to `urls[i % urls.len()]`.
    pub urls: Vec<String>,
    #[serde(skip)]
    pub addrs: Vec<SocketAddr>,
    pub connections: u32,
    pub connect_rate: f64,
    pub source_ips: u32,
    #[serde(serialize_with = "secs")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "secs")]
    pub reconnect_delay: Duration,
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    #[serde(serialize_with = "secs")]
    pub drain: Duration,
    pub swarms: u32,
    pub hot_swarms: u32,
    pub hot_share: f64,
    pub zipf_exponent: f64,
    pub offers: usize,
    pub sdp_bytes: usize,
    /// Per-connection announce period.
    #[serde(serialize_with = "secs")]
    pub interval: Duration,
    /// Resulting total announce rate.
    pub announce_rate: f64,
    pub scrape_ratio: f64,
    pub churn_per_sec: f64,
    pub threads: usize,
    pub queue: usize,
    pub seed: u64,
    pub server_pid: Option<u32>,
    #[serde(skip)]
    pub json: bool,
    #[serde(skip)]
    pub quiet: bool,
    #[serde(skip)]
    pub thresholds: Thresholds,
}

fn secs<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64())
}

impl Config {
    pub fn shape(&self) -> SwarmShape {
        SwarmShape {
            swarms: self.swarms,
            hot_swarms: self.hot_swarms,
            hot_share: self.hot_share,
            zipf_exponent: self.zipf_exponent,
        }
    }
}

impl Config {
    /// The target (index into `urls` and `addrs`) of connection `slot`.
    pub fn target_of(&self, slot: u32) -> usize {
        target_of(slot, self.urls.len())
    }
}

/// Connection `slot` of a run over `targets` URLs goes to URL `slot % targets`: round robin,
/// independent of the swarm assignment, so every swarm with more than one peer spans the
/// targets.
pub fn target_of(slot: u32, targets: usize) -> usize {
    slot as usize % targets.max(1)
}

/// Hard caps that keep a typo from launching something unbounded.
const MAX_CONNECTIONS: u32 = 1_000_000;
const MAX_SECONDS: f64 = 24.0 * 3600.0;
const MAX_OFFERS: usize = 100;
const MAX_SDP_BYTES: usize = 1 << 20;
/// Targets of one run (`--url` repeated).
const MAX_URLS: usize = 64;
/// 127.0.0.1 .. 127.0.255.254 without wrapping into 127.1.x.x.
const MAX_SOURCE_IPS: u32 = 65_534;

/// The local address of a connection when --source-ips spreads them.
pub fn source_ip(slot: u32, source_ips: u32) -> std::net::Ipv4Addr {
    let host = slot % source_ips.max(1) + 1;
    // host <= 65_534, so both bytes fit.
    std::net::Ipv4Addr::new(127, 0, (host >> 8) as u8, (host & 0xFF) as u8)
}

fn seconds(name: &str, value: f64, min: f64) -> Result<Duration, String> {
    if !value.is_finite() || value < min || value > MAX_SECONDS {
        return Err(format!(
            "--{name} must be between {min} and {MAX_SECONDS} s"
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

fn positive(name: &str, value: f64) -> Result<f64, String> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("--{name} must be a positive number"))
    }
}

fn non_negative(name: &str, value: f64) -> Result<f64, String> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("--{name} must be >= 0"))
    }
}

/// Per-connection announce period from either a total rate or an interval.
pub fn announce_interval(connections: u32, rate: Option<f64>, interval: f64) -> Duration {
    let secs = match rate {
        Some(rate) => f64::from(connections) / rate,
        None => interval,
    };
    // Below 1 ms the timer cannot keep up anyway; the cap keeps Duration in range.
    Duration::from_secs_f64(secs.clamp(0.001, MAX_SECONDS))
}

/// Host, port and path of a ws:// URL.
pub fn parse_ws_url(url: &str) -> Result<(String, u16), String> {
    let uri: Uri = url
        .parse()
        .map_err(|err| format!("--url {url:?} is not a URL: {err}"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => {
            return Err(
                "wss:// is not supported: point the tester at the plain ws:// listener \
                 (TLS would make the client, not the tracker, the bottleneck)"
                    .to_owned(),
            )
        }
        _ => return Err(format!("--url {url:?} must start with ws://")),
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("--url {url:?} has no host"))?;
    // Uri keeps the brackets of an IPv6 literal; the resolver wants them off.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(80)))
}

/// The `--url` values (each possibly a comma-separated list, already split by clap) less
/// blanks, checked for count; an empty list is an error.
pub fn target_urls(values: &[String]) -> Result<Vec<String>, String> {
    let urls: Vec<String> = values
        .iter()
        .map(|url| url.trim())
        .filter(|url| !url.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err("--url names no tracker".to_owned());
    }
    if urls.len() > MAX_URLS {
        return Err(format!("at most {MAX_URLS} --url targets"));
    }
    Ok(urls)
}

/// Loopback, including IPv4-mapped IPv6 loopback.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Resolves the target and applies the loopback rule.
pub fn resolve_target(host: &str, port: u16, allow_remote: bool) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|err| format!("cannot resolve {host}: {err}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| format!("{host} resolves to no address"))?;
    if !allow_remote {
        if let Some(remote) = addrs.iter().find(|addr| !is_loopback(addr.ip())) {
            return Err(format!(
                "{host} resolves to {}, which is not a loopback address; \
                 pass --allow-remote to load a remote tracker (only one you run yourself)",
                remote.ip()
            ));
        }
    }
    Ok(first)
}

impl Args {
    pub fn into_config(self) -> Result<Config, String> {
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            return Err(format!("--connections must be 1..={MAX_CONNECTIONS}"));
        }
        let duration = seconds("duration", self.duration, 0.1)?;
        let warmup = seconds("warmup", self.warmup, 0.0)?;
        if warmup >= duration {
            return Err("--warmup must be shorter than --duration".to_owned());
        }
        if self.swarms == 0 {
            return Err("--swarms must be at least 1".to_owned());
        }
        if self.hot_swarms > self.swarms {
            return Err("--hot-swarms cannot exceed --swarms".to_owned());
        }
        if !(0.0..=1.0).contains(&self.hot_share) {
            return Err("--hot-share must be between 0 and 1".to_owned());
        }
        if !(0.0..=10.0).contains(&self.zipf_exponent) {
            return Err("--zipf-exponent must be between 0 and 10".to_owned());
        }
        if self.offers > MAX_OFFERS {
            return Err(format!("--offers must be at most {MAX_OFFERS}"));
        }
        if self.sdp_bytes > MAX_SDP_BYTES {
            return Err(format!("--sdp-bytes must be at most {MAX_SDP_BYTES}"));
        }
        if !(0.0..=100.0).contains(&self.scrape_ratio) {
            return Err("--scrape-ratio must be between 0 and 100".to_owned());
        }
        if let Some(rate) = self.rate {
            positive("rate", rate)?;
        }
        if !(1..=256).contains(&self.threads) {
            return Err("--threads must be 1..=256".to_owned());
        }
        if !(1..=1_000_000).contains(&self.queue) {
            return Err("--queue must be 1..=1000000".to_owned());
        }
        let thresholds = Thresholds {
            max_p99_ms: self
                .max_p99_ms
                .map(|v| non_negative("max-p99-ms", v))
                .transpose()?,
            max_error_rate: self
                .max_error_rate
                .map(|v| non_negative("max-error-rate", v))
                .transpose()?,
            min_delivery_ratio: self
                .min_delivery_ratio
                .map(|v| non_negative("min-delivery-ratio", v))
                .transpose()?,
        };
        let urls = target_urls(&self.urls)?;
        let mut addrs = Vec::with_capacity(urls.len());
        for url in &urls {
            let (host, port) = parse_ws_url(url)?;
            addrs.push(resolve_target(&host, port, self.allow_remote)?);
        }
        if self.source_ips == 0 || self.source_ips > MAX_SOURCE_IPS {
            return Err(format!("--source-ips must be 1..={MAX_SOURCE_IPS}"));
        }
        if self.source_ips > 1
            && !addrs
                .iter()
                .all(|addr| matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback()))
        {
            return Err("--source-ips needs IPv4 loopback targets (127.x.x.x)".to_owned());
        }
        let interval = announce_interval(
            self.connections,
            self.rate,
            positive("interval", self.interval)?,
        );
        Ok(Config {
            url: urls.join(","),
            urls,
            addrs,
            connections: self.connections,
            connect_rate: positive("connect-rate", self.connect_rate)?,
            source_ips: self.source_ips,
            connect_timeout: seconds("connect-timeout", self.connect_timeout, 0.001)?,
            reconnect_delay: seconds("reconnect-delay", self.reconnect_delay, 0.0)?,
            duration,
            warmup,
            drain: seconds("drain", self.drain, 0.0)?,
            swarms: self.swarms,
            hot_swarms: self.hot_swarms,
            hot_share: self.hot_share,
            zipf_exponent: self.zipf_exponent,
            offers: self.offers,
            sdp_bytes: self.sdp_bytes,
            interval,
            announce_rate: f64::from(self.connections) / interval.as_secs_f64(),
            scrape_ratio: non_negative("scrape-ratio", self.scrape_ratio)?,
            churn_per_sec: non_negative("churn-per-sec", self.churn_per_sec)?,
            threads: self.threads,
            queue: self.queue,
            seed: self.seed,
            server_pid: self.server_pid,
            json: self.json,
            quiet: self.quiet,
            thresholds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["loadtest"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn defaults_are_valid() {
        let config = args(&[]).into_config().expect("defaults");
        assert_eq!(config.connections, 100);
        assert_eq!(config.interval, Duration::from_secs(20));
        assert!((config.announce_rate - 5.0).abs() < 1e-9);
        assert_eq!(config.addrs.len(), 1);
        assert!(config.addrs[0].ip().is_loopback());
        assert_eq!(config.url, "ws://127.0.0.1:8000/announce");
        assert_eq!(config.target_of(7), 0);
    }

    #[test]
    fn one_url_is_the_one_target() {
        let config = args(&["--url", "ws://127.0.0.1:8100/announce"])
            .into_config()
            .expect("valid");
        assert_eq!(config.urls, ["ws://127.0.0.1:8100/announce"]);
        assert_eq!(config.url, "ws://127.0.0.1:8100/announce");
        assert_eq!(config.addrs[0].port(), 8100);
    }

    #[test]
    fn several_urls_by_repeating_or_listing() {
        let repeated = args(&[
            "--url",
            "ws://127.0.0.1:8101/announce",
            "--url",
            "ws://127.0.0.1:8102/announce",
        ])
        .into_config()
        .expect("repeated");
        let listed = args(&[
            "--urls",
            "ws://127.0.0.1:8101/announce,ws://127.0.0.1:8102/announce",
        ])
        .into_config()
        .expect("listed");
        for config in [&repeated, &listed] {
            assert_eq!(
                config.urls,
                [
                    "ws://127.0.0.1:8101/announce",
                    "ws://127.0.0.1:8102/announce"
                ]
            );
            let ports: Vec<u16> = config.addrs.iter().map(SocketAddr::port).collect();
            assert_eq!(ports, [8101, 8102]);
            assert_eq!(
                config.url,
                "ws://127.0.0.1:8101/announce,ws://127.0.0.1:8102/announce"
            );
        }
        let mixed = args(&[
            "--url",
            "ws://127.0.0.1:1/a, ws://127.0.0.1:2/b",
            "--url",
            "ws://127.0.0.1:3/c",
        ])
        .into_config()
        .expect("mixed");
        assert_eq!(mixed.addrs.len(), 3);
        assert_eq!(mixed.urls[1], "ws://127.0.0.1:2/b");
    }

    #[test]
    fn every_url_is_checked() {
        assert!(args(&["--url", "ws://127.0.0.1:1/,wss://127.0.0.1:2/"])
            .into_config()
            .is_err());
        assert!(
            args(&["--url", "ws://127.0.0.1:1/", "--url", "ws://192.0.2.7:80/"])
                .into_config()
                .is_err()
        );
        assert!(args(&["--url", " , "]).into_config().is_err());
        let many = vec!["ws://127.0.0.1:1/"; MAX_URLS + 1].join(",");
        assert!(args(&["--url", &many]).into_config().is_err());
        assert!(args(&[
            "--source-ips",
            "2",
            "--url",
            "ws://127.0.0.1:1/,ws://[::1]:2/"
        ])
        .into_config()
        .is_err());
    }

    #[test]
    fn connections_go_round_robin_over_the_targets() {
        let targets: Vec<usize> = (0..6).map(|slot| target_of(slot, 2)).collect();
        assert_eq!(targets, [0, 1, 0, 1, 0, 1]);
        let targets: Vec<usize> = (0..4).map(|slot| target_of(slot, 3)).collect();
        assert_eq!(targets, [0, 1, 2, 0]);
        assert!((0..5).all(|slot| target_of(slot, 1) == 0));
    }

    #[test]
    fn rate_sets_the_per_connection_interval() {
        let config = args(&["-c", "1000", "--rate", "500"])
            .into_config()
            .expect("valid");
        assert_eq!(config.interval, Duration::from_secs(2));
        assert!((config.announce_rate - 500.0).abs() < 1e-9);
    }

    #[test]
    fn remote_targets_need_a_flag() {
        let err = resolve_target("192.0.2.1", 80, false).expect_err("refused");
        assert!(err.contains("--allow-remote"), "{err}");
        assert!(resolve_target("192.0.2.1", 80, true).is_ok());
        assert!(resolve_target("127.0.0.2", 80, false).is_ok());
        assert!(resolve_target("::1", 80, false).is_ok());
        assert!(is_loopback("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!is_loopback("10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            parse_ws_url("ws://127.0.0.1:8100/announce"),
            Ok(("127.0.0.1".to_owned(), 8100))
        );
        assert_eq!(parse_ws_url("ws://[::1]/"), Ok(("::1".to_owned(), 80)));
        assert!(parse_ws_url("wss://127.0.0.1/").is_err());
        assert!(parse_ws_url("http://127.0.0.1/").is_err());
        assert!(args(&["--url", "ws://192.0.2.7:80/"])
            .into_config()
            .is_err());
    }

    #[test]
    fn source_ips_cycle_through_loopback() {
        assert_eq!(source_ip(0, 1), std::net::Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(5, 1), std::net::Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(1, 300), std::net::Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_ip(299, 300), std::net::Ipv4Addr::new(127, 0, 1, 44));
        assert!(args(&["--source-ips", "4"]).into_config().is_ok());
        assert!(args(&["--source-ips", "4", "--url", "ws://[::1]:80/"])
            .into_config()
            .is_err());
        assert!(args(&["--source-ips", "0"]).into_config().is_err());
    }

    #[test]
    fn nonsense_is_refused() {
        assert!(args(&["--warmup", "40"]).into_config().is_err());
        assert!(args(&["--hot-swarms", "5", "--swarms", "4"])
            .into_config()
            .is_err());
        assert!(args(&["--hot-share", "1.5"]).into_config().is_err());
        assert!(args(&["--rate", "0"]).into_config().is_err());
        assert!(args(&["-c", "0"]).into_config().is_err());
        assert!(args(&["--duration", "NaN"]).into_config().is_err());
    }
}
