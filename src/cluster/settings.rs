//! `[cluster]` settings: which NATS servers to use, how this instance names itself, how
//! fast membership is noticed and lost, and the NATS credentials/TLS passed through to the
//! client. Plain data, read once at start on the main thread; `validate` reports every
//! problem at once, in the same style as the rest of the configuration.
//!
//! Clustering is off unless `nats_urls` lists at least one server: with no `[cluster]`
//! section the process is exactly the single-process tracker, and no bus code runs.

use std::{fmt, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// How several tracker instances share their swarms over NATS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// NATS server URLs (`nats://host:4222`, `tls://host:4222`). Empty = clustering off.
    /// Several URLs name members of one NATS cluster; the client picks one and fails over.
    pub nats_urls: Vec<String>,
    /// A name for this instance in logs and in its heartbeats (a host or pod name, say).
    /// Empty = the hex form of the random id drawn at start. It is only a label: routing
    /// uses the random 64-bit id, new at every start, so a restarted instance can never
    /// receive messages meant for the sockets of its previous life.
    pub instance_id: String,
    /// The address clients should use to reach this instance directly, when it differs
    /// from the shared one (e.g. `wss://tracker-2.example.com/announce`). Informational:
    /// carried in heartbeats and shown in diagnostics; empty = none.
    pub advertise_url: String,
    /// Milliseconds between two heartbeats of this instance on the control subject.
    pub heartbeat_interval_ms: u64,
    /// Milliseconds without a heartbeat after which an instance counts as dead (its peers
    /// are dropped and its swarms move). Must exceed two heartbeat intervals, so that one
    /// lost heartbeat never kills an instance. The same bound, applied to our own
    /// heartbeats coming back, decides that the bus itself is lost.
    pub expiry_ms: u64,
    /// Longest pause, in milliseconds, between two attempts to reach a NATS server while
    /// the bus is down (attempts start at once and back off exponentially up to this).
    pub reconnect_max_delay_ms: u64,
    /// Messages that may wait for the bus task; beyond it, new ones are dropped and counted
    /// (`queue_full`), never queued without bound. A relayed offer holds its SDP (a few
    /// KB), so this also bounds the memory of a stalled bus.
    pub bus_queue: usize,
    /// First token(s) of every subject this cluster uses (`{prefix}.ctl`,
    /// `{prefix}.inbox.{id}`), so that several clusters can share one NATS.
    pub subject_prefix: String,
    /// A NATS `.creds` file (JWT + NKey seed), for NATS accounts/decentralised auth.
    pub credentials_file: Option<PathBuf>,
    /// A NATS auth token.
    pub token: Option<String>,
    /// NATS user name (with `password`).
    pub user: Option<String>,
    /// NATS password (with `user`).
    pub password: Option<String>,
    /// PEM file of the certificate authorities that sign the NATS servers' certificates.
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients (with `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to talk to a NATS server without TLS (implied by `tls://` URLs).
    pub tls_required: bool,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            nats_urls: Vec::new(),
            instance_id: String::new(),
            advertise_url: String::new(),
            heartbeat_interval_ms: 1_000,
            expiry_ms: 3_000,
            reconnect_max_delay_ms: 2_000,
            bus_queue: 65_536,
            subject_prefix: "p2pms".into(),
            credentials_file: None,
            token: None,
            user: None,
            password: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
        }
    }
}

/// Longest accepted `instance_id` and `advertise_url`, in bytes: both travel in every
/// heartbeat.
pub const MAX_LABEL_BYTES: usize = 256;

/// The settings break a rule; the text names every offending key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettingsError(pub String);

impl fmt::Display for ClusterSettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterSettingsError {}

impl ClusterSettings {
    /// Clustering is on when at least one NATS URL is given.
    pub fn enabled(&self) -> bool {
        !self.nats_urls.is_empty()
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn expiry(&self) -> Duration {
        Duration::from_millis(self.expiry_ms)
    }

    pub fn reconnect_max_delay(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_delay_ms)
    }

    /// Checks every rule and reports all broken ones in one message. Settings of a disabled
    /// cluster are checked too, so a typo shows before the day clustering is turned on.
    pub fn validate(&self) -> Result<(), ClusterSettingsError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, text: &str| {
            if !ok {
                problems.push(text.to_owned());
            }
        };
        check(
            self.nats_urls.iter().all(|url| !url.trim().is_empty()),
            "cluster.nats_urls must not contain empty entries",
        );
        check(
            self.heartbeat_interval_ms >= 10,
            "cluster.heartbeat_interval_ms must be at least 10",
        );
        check(
            self.expiry_ms > self.heartbeat_interval_ms.saturating_mul(2),
            "cluster.expiry_ms must be more than 2 x cluster.heartbeat_interval_ms \
             (one lost heartbeat must not kill an instance)",
        );
        check(
            self.reconnect_max_delay_ms >= 1,
            "cluster.reconnect_max_delay_ms must be at least 1",
        );
        check(
            self.bus_queue >= 16,
            "cluster.bus_queue must be at least 16",
        );
        check(
            valid_subject_prefix(&self.subject_prefix),
            "cluster.subject_prefix must be dot-separated tokens of letters, digits, '-' and '_' \
             (no spaces, no wildcards)",
        );
        check(
            self.instance_id.len() <= MAX_LABEL_BYTES,
            "cluster.instance_id must be at most 256 bytes",
        );
        check(
            self.advertise_url.len() <= MAX_LABEL_BYTES,
            "cluster.advertise_url must be at most 256 bytes",
        );
        check(
            self.user.is_some() == self.password.is_some(),
            "cluster.user and cluster.password go together",
        );
        check(
            self.tls_cert_file.is_some() == self.tls_key_file.is_some(),
            "cluster.tls_cert_file and cluster.tls_key_file go together",
        );
        let auth_methods = [
            self.credentials_file.is_some(),
            self.token.is_some(),
            self.user.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        check(
            auth_methods <= 1,
            "set at most one of cluster.credentials_file, cluster.token, cluster.user",
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ClusterSettingsError(problems.join("; ")))
        }
    }
}

/// NATS subjects are dot-separated tokens; `*` and `>` are wildcards and whitespace ends a
/// subject, so a prefix keeps to a conservative alphabet.
fn valid_subject_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_off() {
        let settings = ClusterSettings::default();
        assert!(!settings.enabled());
        assert_eq!(settings.validate(), Ok(()));
    }

    #[test]
    fn a_url_turns_clustering_on() {
        let settings = ClusterSettings {
            nats_urls: vec!["nats://127.0.0.1:4222".into()],
            ..ClusterSettings::default()
        };
        assert!(settings.enabled());
        assert_eq!(settings.validate(), Ok(()));
    }

    #[test]
    fn expiry_must_exceed_two_heartbeats() {
        let settings = ClusterSettings {
            heartbeat_interval_ms: 1_000,
            expiry_ms: 2_000,
            ..ClusterSettings::default()
        };
        let err = settings.validate().expect_err("2 heartbeats is not enough");
        assert!(err.0.contains("cluster.expiry_ms"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let settings = ClusterSettings {
            bus_queue: 0,
            subject_prefix: "a.*".into(),
            user: Some("u".into()),
            ..ClusterSettings::default()
        };
        let err = settings.validate().expect_err("three problems");
        for key in [
            "cluster.bus_queue",
            "cluster.subject_prefix",
            "cluster.password",
        ] {
            assert!(err.0.contains(key), "{key} missing from: {err}");
        }
    }

    #[test]
    fn subject_prefixes() {
        for good in ["p2pms", "prod.p2pms", "a-b_c.d1"] {
            assert!(valid_subject_prefix(good), "{good}");
        }
        for bad in ["", "a..b", ".a", "a.", "a b", "a.>", "a*", "é"] {
            assert!(!valid_subject_prefix(bad), "{bad}");
        }
    }

    #[test]
    fn toml_keys_are_checked() {
        let parsed: Result<ClusterSettings, _> = serde_json::from_str(r#"{"nats_url": "x"}"#);
        assert!(parsed.is_err(), "a misspelt key must be refused");
        let parsed: ClusterSettings =
            serde_json::from_str(r#"{"nats_urls": ["nats://a:4222"], "expiry_ms": 5000}"#)
                .expect("valid");
        assert_eq!(parsed.expiry_ms, 5_000);
        assert_eq!(parsed.heartbeat_interval_ms, 1_000);
    }
}
