//! Settings: embedded defaults <- one file (`--config`: our TOML or wt-tracker's
//! `config.json`) <- `TRACKER__SECTION__KEY` environment variables, then `validate()`.
//!
//! Every section is `deny_unknown_fields`, so a typo is an error at start rather than a
//! silently ignored limit. `config/default.toml` documents every key and must equal
//! `Settings::default()` (a test checks it).

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use config::{Config, Environment, File, FileFormat};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    cluster::settings::ClusterSettings,
    protocol::ParseLimits,
    swarm::{actor::SwarmConfig, state::SwarmLimits},
};

/// All settings of one tracker process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub ws: WsSettings,
    pub tracker: TrackerSettings,
    pub swarm: SwarmSettings,
    pub http: HttpSettings,
    pub player: PlayerSettings,
    pub access: AccessSettings,
    /// Several instances sharing their swarms over NATS; off unless `nats_urls` is set.
    pub cluster: ClusterSettings,
    /// Viewer reports (`POST /api/report`): what players received over P2P and HTTP.
    pub reports: ReportsSettings,
    /// The savings dashboard (`/dashboard`, `/dashboard.json`).
    pub dashboard: DashboardSettings,
}

/// Listening socket, process-wide limits, proxies, shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to bind.
    pub host: String,
    /// Port to bind; 0 lets the OS choose (the log says which).
    pub port: u16,
    /// More `host:port` addresses to listen on as well (wt-tracker's `servers[]`).
    pub extra_binds: Vec<String>,
    /// HTTP worker threads; each runs WebSocket sessions and a swarm shard. 0 = one per core.
    pub workers: usize,
    /// Open WebSocket connections allowed in the whole process.
    pub max_connections: usize,
    /// Open WebSocket connections allowed from one client IP (0 = no limit). Behind a
    /// reverse proxy, list it in `trusted_proxies` or every client shares the proxy's IP.
    pub max_connections_per_ip: usize,
    /// Proxies whose `X-Forwarded-For` is believed (CIDRs, e.g. "127.0.0.1/32").
    pub trusted_proxies: Vec<IpNet>,
    /// Seconds to let WebSocket sessions close on SIGTERM (and then plain HTTP requests
    /// finish) before the process exits.
    pub shutdown_timeout_secs: u64,
    /// Seconds a client has to send the request head of a plain HTTP request.
    pub client_request_timeout_secs: u64,
    /// Milliseconds a closing connection waits for the client to finish: after our
    /// WebSocket close frame, for the client's close frame; after an HTTP response that
    /// closes the connection, for the client to hang up.
    pub client_disconnect_timeout_ms: u64,
    /// Seconds between returns of freed heap memory to the OS (glibc's `malloc_trim`);
    /// 0 = never. Without it, a burst of traffic leaves its peak in the RSS for good.
    pub memory_trim_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            host: "0.0.0.0".into(),
            port: 8000,
            extra_binds: Vec::new(),
            workers: 0,
            max_connections: 19_000,
            max_connections_per_ip: 1_000,
            trusted_proxies: Vec::new(),
            shutdown_timeout_secs: 5,
            client_request_timeout_secs: 5,
            client_disconnect_timeout_ms: 1_000,
            memory_trim_secs: 30,
        }
    }
}

/// The WebSocket transport.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsSettings {
    /// Path of the tracker endpoint; upgrades are also accepted at "/". "/*" accepts
    /// upgrades on every path (wt-tracker's default).
    pub path: String,
    /// Largest single frame, in bytes; bigger ones close the socket with 1009.
    pub max_frame_bytes: usize,
    /// Largest message, fragments included, in bytes; bigger ones close with 1009.
    pub max_message_bytes: usize,
    /// Seconds between server pings.
    pub ping_interval_secs: u64,
    /// Seconds without any frame from the client before the socket is closed.
    pub idle_timeout_secs: u64,
    /// Messages that may wait for one session (relayed offers/answers); beyond it they are
    /// dropped and counted, never queued without bound.
    pub session_mailbox: usize,
    /// Allowed `Origin` values for upgrades (exact match); empty = every origin.
    pub allowed_origins: Vec<String>,
    /// Swarms one connection may be in at once.
    pub max_swarms_per_connection: usize,
    /// Peer ids one connection may register in one swarm (P2P Media Loader uses one).
    pub max_peer_ids_per_swarm: usize,
    /// Messages per second one connection may send, sustained (pings count too).
    pub max_messages_per_sec: u32,
    /// Messages one connection may send in a burst above the sustained rate.
    pub message_burst: u32,
    /// Messages refused for the rate limit after which the socket is closed (1008).
    pub max_rate_limited_messages: u32,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            path: "/announce".into(),
            max_frame_bytes: 64 * 1024,
            max_message_bytes: 64 * 1024,
            ping_interval_secs: 20,
            idle_timeout_secs: 60,
            session_mailbox: 64,
            allowed_origins: Vec::new(),
            max_swarms_per_connection: 100,
            max_peer_ids_per_swarm: 4,
            max_messages_per_sec: 20,
            message_burst: 100,
            max_rate_limited_messages: 200,
        }
    }
}

/// Protocol behaviour and limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerSettings {
    /// `interval` sent to clients, in seconds: how often they re-announce.
    pub announce_interval_secs: u32,
    /// Seconds after its last announce that a peer is removed (about 2 x interval; P2P
    /// Media Loader never sends `stopped`).
    pub peer_ttl_secs: u64,
    /// Seconds a relayed offer waits for its answer (the client gives up after 50).
    pub offer_ttl_secs: u64,
    /// Most offers relayed per announce.
    pub max_offers: usize,
    /// Largest SDP body accepted, in bytes as sent (JSON-escaped).
    pub max_sdp_bytes: usize,
    /// Most peers in one swarm; further joiners get a failure reason.
    pub max_peers_per_swarm: usize,
    /// Most info_hashes in one scrape request.
    pub max_scrape_hashes: usize,
    /// Answer a scrape without info_hash with every swarm (capped at `max_scrape_hashes`).
    pub full_scrape: bool,
    /// Seconds between sweeps of expired peers and offers.
    pub sweep_interval_secs: u64,
}

impl Default for TrackerSettings {
    fn default() -> Self {
        Self {
            announce_interval_secs: 120,
            peer_ttl_secs: 240,
            offer_ttl_secs: 120,
            max_offers: 10,
            max_sdp_bytes: 16 * 1024,
            max_peers_per_swarm: 20_000,
            max_scrape_hashes: 255,
            full_scrape: false,
            sweep_interval_secs: 30,
        }
    }
}

/// Swarm limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwarmSettings {
    /// Requests that may queue for one swarm before senders wait.
    pub mailbox: usize,
    /// Consecutive relays a peer's session could not take before the peer is removed from
    /// the swarm (a client that stopped reading).
    pub max_dropped_deliveries: u32,
}

impl Default for SwarmSettings {
    fn default() -> Self {
        Self {
            mailbox: 1024,
            max_dropped_deliveries: 64,
        }
    }
}

/// Static files and service endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Directory served at "/" (the web player).
    pub public_dir: PathBuf,
    /// Directory of the live HLS stream.
    pub hls_dir: PathBuf,
    /// URL prefix of the HLS stream.
    pub hls_path: String,
    /// `Access-Control-Allow-Origin` for the HLS stream ("" = no CORS headers).
    pub hls_cors_origin: String,
    /// Serve `/stats.json`.
    pub stats: bool,
    /// Serve `/metrics` (Prometheus). Keep it off the public proxy.
    pub metrics: bool,
    /// Streams (top-level directories of the HLS tree) counted apart in the `/hls` byte
    /// counters and viewer reports; more are folded into the stream "other".
    pub hls_max_streams: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            public_dir: PathBuf::from("public"),
            hls_dir: PathBuf::from("hls"),
            hls_path: "/hls".into(),
            hls_cors_origin: "*".into(),
            stats: true,
            metrics: true,
            hls_max_streams: 32,
        }
    }
}

/// What `/config.json` tells the web player.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlayerSettings {
    /// STUN/TURN URLs for the player's ICE servers; `{host}` becomes the host name the
    /// page was loaded from.
    pub ice_servers: Vec<String>,
    /// The stream the player opens.
    pub stream_url: String,
    /// P2P Media Loader `swarmId` (all viewers with the same id share); "" = derived from
    /// the stream URL.
    pub swarm_id: String,
}

impl Default for PlayerSettings {
    fn default() -> Self {
        Self {
            ice_servers: vec!["stun:{host}:3478".into()],
            stream_url: "/hls/live.m3u8".into(),
            swarm_id: String::new(),
        }
    }
}

/// Viewer reports: validation limits and the per-address budgets (see docs/reports.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReportsSettings {
    /// Accept reports at `POST /api/report` (off: the path answers 404).
    pub enabled: bool,
    /// Largest report body in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Longest interval one report may cover, in seconds.
    pub max_interval_secs: u64,
    /// Most a viewer can plausibly receive (P2P + HTTP), in megabits per second of the
    /// interval a report covers (plus one second of grace per report).
    pub max_receive_mbps: u64,
    /// Most a viewer can plausibly upload to its peers, in megabits per second.
    pub max_upload_mbps: u64,
    /// Reports per second one client address may send, sustained (429 above it).
    pub per_ip_reports_per_sec: u32,
    /// Reports one client address may send at once above the sustained rate.
    pub per_ip_report_burst: u32,
    /// Viewers one client address may speak for: the wall time its reports cover together
    /// may grow at most this many times as fast as the clock (429 above it).
    pub max_viewers_per_ip: u32,
    /// Client addresses whose budgets are kept (in memory only, forgotten when idle); new
    /// addresses are refused with 503 while the table is full.
    pub max_tracked_ips: usize,
}

impl Default for ReportsSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_body_bytes: 512,
            max_interval_secs: 60,
            max_receive_mbps: 50,
            max_upload_mbps: 200,
            per_ip_reports_per_sec: 10,
            per_ip_report_burst: 20,
            max_viewers_per_ip: 50,
            max_tracked_ips: 100_000,
        }
    }
}

/// Who may open the savings dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DashboardSettings {
    /// Serve `/dashboard` and `/dashboard.json` (off: 404).
    pub enabled: bool,
    /// Only clients on a loopback address (after `server.trusted_proxies`) may open it;
    /// others get 403.
    pub loopback_only: bool,
    /// A shared secret: when set, the dashboard needs `?token=...` or
    /// `Authorization: Bearer ...` (401 otherwise). "" = no token.
    pub token: String,
    /// Swarms listed on the dashboard (and in `tracker_swarm_peers`), largest first.
    pub max_swarms: usize,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            loopback_only: false,
            token: String::new(),
            max_swarms: 20,
        }
    }
}

/// Which info_hashes the tracker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessMode {
    /// Every info_hash.
    #[default]
    Off,
    /// Only those listed.
    Allow,
    /// All but those listed.
    Deny,
}

/// An info_hash allow or deny list, re-read while running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessSettings {
    pub mode: AccessMode,
    /// File with one info_hash per line: 40 hex digits, or the 20-character text form
    /// P2P Media Loader uses; `#` starts a comment.
    pub list_path: PathBuf,
    /// Seconds between checks of the file for changes (SIGHUP reloads at once).
    pub reload_interval_secs: u64,
}

impl Default for AccessSettings {
    fn default() -> Self {
        Self {
            mode: AccessMode::Off,
            list_path: PathBuf::new(),
            reload_interval_secs: 10,
        }
    }
}

/// A configuration problem, reported to the operator before anything starts.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Keys whose environment values are comma-separated lists.
const LIST_KEYS: [&str; 5] = [
    "server.trusted_proxies",
    "server.extra_binds",
    "ws.allowed_origins",
    "player.ice_servers",
    "cluster.nats_urls",
];

impl Settings {
    /// Loads settings from the optional file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars()
            .filter(|(key, _)| key.starts_with("TRACKER__"))
            .collect();
        Self::load_from(file, env)
    }

    /// As `load`, with the environment given (tests must not race on the process env).
    pub fn load_from(
        file: Option<&Path>,
        env: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let base = match file {
            Some(path) if is_json(path) => wt_tracker::load(path)?,
            _ => Settings::default(),
        };
        let mut builder = Config::builder().add_source(
            Config::try_from(&base)
                .map_err(|err| ConfigError(format!("internal: defaults: {err}")))?,
        );
        if let Some(path) = file.filter(|path| !is_json(path)) {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        let mut environment = Environment::with_prefix("TRACKER")
            .separator("__")
            .prefix_separator("__")
            .try_parsing(true)
            .list_separator(",")
            .source(Some(env));
        for key in LIST_KEYS {
            environment = environment.with_list_parse_key(key);
        }
        let settings: Settings = builder
            .add_source(environment)
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|err| ConfigError(format!("invalid configuration: {err}")))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Cross-field checks and ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, text: &str| {
            if !ok {
                problems.push(text.to_owned());
            }
        };
        check(
            self.server.host.parse::<IpAddr>().is_ok() || !self.server.host.is_empty(),
            "server.host must not be empty",
        );
        for bind in &self.server.extra_binds {
            check(
                bind.rsplit_once(':')
                    .is_some_and(|(_, port)| port.parse::<u16>().is_ok()),
                "server.extra_binds entries must be host:port",
            );
        }
        check(
            self.server.max_connections > 0,
            "server.max_connections must be at least 1",
        );
        check(
            self.server.client_disconnect_timeout_ms <= 60_000,
            "server.client_disconnect_timeout_ms must be at most 60000",
        );
        check(
            self.server.memory_trim_secs <= 86_400,
            "server.memory_trim_secs must be at most 86400 (0 turns it off)",
        );
        check(self.ws.path.starts_with('/'), "ws.path must start with '/'");
        check(
            self.ws.max_frame_bytes >= 1024,
            "ws.max_frame_bytes must be at least 1024",
        );
        check(
            self.ws.max_message_bytes >= self.ws.max_frame_bytes,
            "ws.max_message_bytes must be at least ws.max_frame_bytes",
        );
        check(
            self.ws.ping_interval_secs > 0,
            "ws.ping_interval_secs must be at least 1",
        );
        check(
            self.ws.idle_timeout_secs > self.ws.ping_interval_secs,
            "ws.idle_timeout_secs must be greater than ws.ping_interval_secs",
        );
        check(
            self.ws.session_mailbox >= 4,
            "ws.session_mailbox must be at least 4",
        );
        check(
            self.ws.max_swarms_per_connection > 0,
            "ws.max_swarms_per_connection must be at least 1",
        );
        check(
            self.ws.max_peer_ids_per_swarm > 0,
            "ws.max_peer_ids_per_swarm must be at least 1",
        );
        check(
            self.tracker.announce_interval_secs > 0,
            "tracker.announce_interval_secs must be at least 1",
        );
        check(
            self.tracker.peer_ttl_secs > u64::from(self.tracker.announce_interval_secs),
            "tracker.peer_ttl_secs must be greater than tracker.announce_interval_secs",
        );
        check(
            self.tracker.offer_ttl_secs >= 50,
            "tracker.offer_ttl_secs must be at least 50 (clients wait 50 s for an answer)",
        );
        check(
            (1..=100).contains(&self.tracker.max_offers),
            "tracker.max_offers must be between 1 and 100",
        );
        check(
            self.tracker.max_sdp_bytes >= 256,
            "tracker.max_sdp_bytes must be at least 256",
        );
        check(
            self.tracker.max_peers_per_swarm >= 2,
            "tracker.max_peers_per_swarm must be at least 2",
        );
        check(
            self.tracker.sweep_interval_secs > 0,
            "tracker.sweep_interval_secs must be at least 1",
        );
        check(
            self.swarm.mailbox >= 16,
            "swarm.mailbox must be at least 16",
        );
        check(
            self.swarm.max_dropped_deliveries > 0,
            "swarm.max_dropped_deliveries must be at least 1",
        );
        check(
            self.http.hls_path.starts_with('/') && self.http.hls_path.len() > 1,
            "http.hls_path must start with '/' and not be '/'",
        );
        check(
            self.http.hls_max_streams >= 1,
            "http.hls_max_streams must be at least 1",
        );
        check(
            (64..=65_536).contains(&self.reports.max_body_bytes),
            "reports.max_body_bytes must be between 64 and 65536",
        );
        check(
            (1..=3_600).contains(&self.reports.max_interval_secs),
            "reports.max_interval_secs must be between 1 and 3600",
        );
        check(
            self.reports.max_receive_mbps >= 1 && self.reports.max_upload_mbps >= 1,
            "reports.max_receive_mbps and reports.max_upload_mbps must be at least 1",
        );
        check(
            self.reports.per_ip_reports_per_sec >= 1 && self.reports.per_ip_report_burst >= 1,
            "reports.per_ip_reports_per_sec and reports.per_ip_report_burst must be at least 1",
        );
        check(
            self.reports.max_viewers_per_ip >= 1,
            "reports.max_viewers_per_ip must be at least 1",
        );
        check(
            self.reports.max_tracked_ips >= 1,
            "reports.max_tracked_ips must be at least 1",
        );
        check(
            self.dashboard.token.chars().all(|ch| ch.is_ascii_graphic()),
            "dashboard.token must be printable ASCII without spaces",
        );
        if let Err(err) = self.cluster.validate() {
            problems.push(err.to_string());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(format!(
                "invalid configuration: {}",
                problems.join("; ")
            )))
        }
    }

    /// Every address to listen on.
    pub fn bind_addresses(&self) -> Vec<String> {
        let mut binds = vec![format_bind(&self.server.host, self.server.port)];
        binds.extend(self.server.extra_binds.iter().cloned());
        binds
    }

    /// Resolved HTTP worker count, which is also the swarm shard count.
    pub fn worker_count(&self) -> usize {
        if self.server.workers == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            self.server.workers
        }
    }
}

// What the settings mean to each layer. The limits structs of the protocol and swarm
// layers are built here and nowhere else, and their `Default` is the embedded defaults', so
// that each default is written once (in the `Default` impls of the sections above).

impl From<&TrackerSettings> for ParseLimits {
    fn from(tracker: &TrackerSettings) -> Self {
        Self {
            max_sdp_bytes: tracker.max_sdp_bytes,
            max_scrape_hashes: tracker.max_scrape_hashes,
            max_offers: tracker.max_offers,
        }
    }
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self::from(&TrackerSettings::default())
    }
}

impl From<&TrackerSettings> for SwarmLimits {
    fn from(tracker: &TrackerSettings) -> Self {
        Self {
            max_offers: tracker.max_offers,
            max_peers: tracker.max_peers_per_swarm,
            peer_ttl: Duration::from_secs(tracker.peer_ttl_secs),
            offer_ttl: Duration::from_secs(tracker.offer_ttl_secs),
            // A full swarm whose every peer announces once per offer TTL leaves
            // max_peers x max_offers offers pending; twice that gives the peers that
            // announce faster room before the oldest are forgotten, and the floor keeps
            // small swarms (a low max_peers in tests) from forgetting offers under a
            // burst of re-announces.
            max_pending_offers: tracker
                .max_peers_per_swarm
                .saturating_mul(tracker.max_offers)
                .saturating_mul(2)
                .max(1024),
        }
    }
}

impl Default for SwarmLimits {
    fn default() -> Self {
        Self::from(&TrackerSettings::default())
    }
}

impl From<&Settings> for SwarmConfig {
    fn from(settings: &Settings) -> Self {
        Self {
            limits: SwarmLimits::from(&settings.tracker),
            mailbox: settings.swarm.mailbox,
            max_dropped_deliveries: settings.swarm.max_dropped_deliveries,
            sweep_interval: Duration::from_secs(settings.tracker.sweep_interval_secs),
        }
    }
}

fn format_bind(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
}

/// wt-tracker's `config.json`, accepted unchanged so its users can switch with their file.
mod wt_tracker {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WtConfig {
        #[serde(default)]
        servers: Vec<WtServer>,
        #[serde(default)]
        tracker: Option<WtTracker>,
        #[serde(default, rename = "websocketsAccess")]
        websockets_access: Option<WtAccess>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WtServer {
        #[serde(default)]
        server: Option<WtListen>,
        #[serde(default)]
        websockets: Option<WtWebsockets>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct WtListen {
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        host: Option<String>,
        // TLS keys of uWebSockets' SSL app; refused below with a clear message.
        #[serde(default, rename = "key_file_name")]
        key_file_name: Option<String>,
        #[serde(default, rename = "cert_file_name")]
        cert_file_name: Option<String>,
        #[serde(default)]
        passphrase: Option<String>,
        #[serde(default, rename = "dh_params_file_name")]
        dh_params_file_name: Option<String>,
        #[serde(default, rename = "ssl_prefer_low_memory_usage")]
        ssl_prefer_low_memory_usage: Option<bool>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct WtWebsockets {
        #[serde(default)]
        path: Option<String>,
        #[serde(default)]
        max_payload_length: Option<usize>,
        #[serde(default)]
        idle_timeout: Option<u64>,
        /// uWS compression mode; actix-http has no permessage-deflate, so it is accepted
        /// and logged as ignored (signalling JSON is small and latency-bound anyway).
        #[serde(default)]
        compression: Option<u32>,
        #[serde(default)]
        max_connections: Option<usize>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct WtTracker {
        #[serde(default)]
        max_offers: Option<usize>,
        #[serde(default)]
        announce_interval: Option<u32>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct WtAccess {
        #[serde(default)]
        allow_origins: Option<Vec<String>>,
        #[serde(default)]
        deny_origins: Option<Vec<String>>,
        #[serde(default)]
        deny_empty_origin: Option<bool>,
    }

    pub(super) fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| ConfigError(format!("cannot read {}: {err}", path.display())))?;
        let wt: WtConfig = serde_json::from_str(&text).map_err(|err| {
            ConfigError(format!(
                "{} is not a wt-tracker config.json: {err}",
                path.display()
            ))
        })?;
        let mut settings = Settings::default();
        let mut websockets_seen: Option<(Option<String>, Option<usize>, Option<u64>)> = None;
        for (index, server) in wt.servers.iter().enumerate() {
            if let Some(listen) = &server.server {
                if listen.key_file_name.is_some()
                    || listen.cert_file_name.is_some()
                    || listen.passphrase.is_some()
                    || listen.dh_params_file_name.is_some()
                    || listen.ssl_prefer_low_memory_usage.is_some()
                {
                    return Err(ConfigError(format!(
                        "{}: servers[{index}] configures TLS; p2p-mediastream serves plain \
                         ws:// and expects TLS at a reverse proxy (see deploy/nginx)",
                        path.display()
                    )));
                }
                let host = listen.host.clone().unwrap_or_else(|| "0.0.0.0".into());
                let port = listen.port.unwrap_or(8000);
                if index == 0 {
                    settings.server.host = host;
                    settings.server.port = port;
                } else {
                    settings.server.extra_binds.push(format_bind(&host, port));
                }
            }
            if let Some(ws) = &server.websockets {
                let these = (ws.path.clone(), ws.max_payload_length, ws.idle_timeout);
                match &websockets_seen {
                    Some(seen) if *seen != these => {
                        return Err(ConfigError(format!(
                            "{}: servers[{index}].websockets differs from servers[0]; \
                             one process has one set of WebSocket limits",
                            path.display()
                        )))
                    }
                    _ => websockets_seen = Some(these),
                }
                if let Some(path) = &ws.path {
                    // uWS patterns: "/*" is any path; otherwise a literal path.
                    settings.ws.path = path.clone();
                }
                if let Some(max) = ws.max_payload_length {
                    settings.ws.max_frame_bytes = max;
                    settings.ws.max_message_bytes = max;
                }
                if let Some(idle) = ws.idle_timeout {
                    settings.ws.idle_timeout_secs = idle;
                    // uWS pings automatically before the idle timeout; keep that shape.
                    settings.ws.ping_interval_secs = (idle / 3).max(1);
                }
                if ws.compression.unwrap_or(0) != 0 {
                    log::warn!(
                        "wt-tracker websockets.compression is ignored: this server does not \
                         negotiate permessage-deflate"
                    );
                }
                // wt-tracker treats 0 as "no limit".
                if let Some(max) = ws.max_connections.filter(|max| *max > 0) {
                    settings.server.max_connections = max;
                }
            }
        }
        if let Some(tracker) = wt.tracker {
            if let Some(max) = tracker.max_offers {
                settings.tracker.max_offers = max;
            }
            if let Some(interval) = tracker.announce_interval {
                settings.tracker.announce_interval_secs = interval;
                settings.tracker.peer_ttl_secs = u64::from(interval) * 2;
            }
        }
        if let Some(access) = wt.websockets_access {
            if access.deny_origins.is_some() || access.deny_empty_origin == Some(true) {
                return Err(ConfigError(format!(
                    "{}: websocketsAccess.denyOrigins / denyEmptyOrigin are not supported; \
                     use allowOrigins",
                    path.display()
                )));
            }
            if let Some(allow) = access.allow_origins {
                settings.ws.allowed_origins = allow;
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_default_toml_is_documented() {
        let text = include_str!("../config/default.toml");
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            let is_key = !line.starts_with('#') && !line.starts_with('[') && line.contains(" = ");
            if is_key {
                assert!(
                    index > 0 && lines[index - 1].starts_with('#'),
                    "key without a comment above it: {line}"
                );
            }
        }
    }

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().expect("defaults validate");
    }
}
