//! The savings dashboard: `/dashboard` (one static page embedded in the binary) and
//! `/dashboard.json`, which it polls every 2 s. Both obey `[dashboard]`: `enabled` (off:
//! the routes do not exist, 404), `loopback_only` (403 to anyone not on a loopback
//! address after `server.trusted_proxies`) and `token` (401 without it).
//!
//! Also the per-swarm figures shared with `/stats.json` and `/metrics`: the largest swarms
//! by peers, read from the counts each swarm publishes to its shard.

use std::{net::IpAddr, sync::Arc};

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::{http::report::client_address, metrics, shared::Shared, swarm::messages::ScrapeShard};

const PAGE: &str = include_str!("dashboard.html");

/// Swarms read from each shard when looking for the largest.
const SWARMS_SCANNED_PER_SHARD: usize = 10_000;
/// How long a shard may take to answer; one that does not is left out, so a stuck shard
/// cannot hold `/stats.json`, `/metrics` or the dashboard (`/readyz` reports it).
const SHARD_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// One swarm's peers.
#[derive(Debug, Clone)]
pub struct SwarmRow {
    pub info_hash_hex: String,
    /// The info_hash as text when it is printable ASCII (P2P Media Loader's are).
    pub name: Option<String>,
    pub seeders: u32,
    pub leechers: u32,
}

impl SwarmRow {
    pub fn peers(&self) -> u64 {
        u64::from(self.seeders) + u64::from(self.leechers)
    }

    fn to_json(&self) -> Value {
        json!({
            "infoHash": self.info_hash_hex,
            "name": self.name,
            "peers": self.peers(),
            "seeders": self.seeders,
            "leechers": self.leechers,
        })
    }
}

/// The `limit` largest swarms of this instance, by peers.
pub async fn largest_swarms(shared: &Shared, limit: usize) -> Vec<SwarmRow> {
    let mut rows = Vec::new();
    for (_, shard) in shared.directory.shards() {
        let scrape = shard.send(ScrapeShard {
            info_hashes: None,
            limit: SWARMS_SCANNED_PER_SHARD,
        });
        let Ok(Ok(files)) = actix_web::rt::time::timeout(SHARD_TIMEOUT, scrape).await else {
            continue;
        };
        rows.extend(files.into_iter().map(|(hash, counts)| {
            SwarmRow {
                info_hash_hex: hash.to_hex(),
                name: hash
                    .0
                    .iter()
                    .all(|byte| byte.is_ascii_graphic())
                    .then(|| hash.0.iter().map(|byte| char::from(*byte)).collect()),
                seeders: counts.complete,
                leechers: counts.incomplete,
            }
        }));
    }
    rows.sort_by(|a, b| {
        b.peers()
            .cmp(&a.peers())
            .then(a.info_hash_hex.cmp(&b.info_hash_hex))
    });
    rows.truncate(limit);
    rows
}

pub fn swarms_json(rows: &[SwarmRow]) -> Value {
    Value::Array(rows.iter().map(SwarmRow::to_json).collect())
}

/// `tracker_swarm_peers{info_hash}` lines for `/metrics` (the largest swarms only).
pub fn swarm_metrics(rows: &[SwarmRow], out: &mut String) {
    out.push_str(
        "# HELP tracker_swarm_peers Peers of the largest swarms (dashboard.max_swarms), by info_hash.\n\
         # TYPE tracker_swarm_peers gauge\n",
    );
    for row in rows {
        out.push_str(&format!(
            "tracker_swarm_peers{{info_hash=\"{}\"}} {}\n",
            row.info_hash_hex,
            row.peers()
        ));
    }
}

/// Whether the request may see the dashboard; the refusal otherwise.
fn check_access(req: &HttpRequest, shared: &Shared) -> Result<(), Box<HttpResponse>> {
    let settings = &shared.settings.dashboard;
    if settings.loopback_only {
        let peer_trusted = req.peer_addr().is_some_and(|peer| {
            shared
                .settings
                .server
                .trusted_proxies
                .iter()
                .any(|net| net.contains(&peer.ip()))
        });
        // A proxy we do not trust forwarding someone: the socket looks local, the client
        // is not.
        let forwarded_untrusted = !peer_trusted && req.headers().contains_key("x-forwarded-for");
        let local = client_address(req, shared).is_some_and(|ip| is_loopback(&ip));
        if !local || forwarded_untrusted {
            return Err(Box::new(
                HttpResponse::Forbidden()
                    .insert_header((header::CACHE_CONTROL, "no-store"))
                    .body("the dashboard is open to loopback clients only\n"),
            ));
        }
    }
    if !settings.token.is_empty() && !token_matches(req, &settings.token) {
        return Err(Box::new(
            HttpResponse::Unauthorized()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
                .body("the dashboard needs ?token=... or Authorization: Bearer ...\n"),
        ));
    }
    Ok(())
}

fn is_loopback(ip: &IpAddr) -> bool {
    ip.is_loopback()
}

fn token_matches(req: &HttpRequest, token: &str) -> bool {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let query =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|query| query.get("token").cloned());
    bearer.is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
        || query.is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// Compares without stopping at the first difference (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

pub async fn page(req: HttpRequest, shared: web::Data<Arc<Shared>>) -> HttpResponse {
    if let Err(refusal) = check_access(&req, &shared) {
        return *refusal;
    }
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
        ))
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

pub async fn data(req: HttpRequest, shared: web::Data<Arc<Shared>>) -> HttpResponse {
    if let Err(refusal) = check_access(&req, &shared) {
        return *refusal;
    }
    let metrics = &shared.metrics;
    let swarms = largest_swarms(&shared, shared.settings.dashboard.max_swarms).await;
    let body = json!({
        "uptimeSecs": shared.started_at.elapsed().as_secs_f64(),
        "tracker": {
            "peers": metrics.seeders.get().max(0) + metrics.leechers.get().max(0),
            "swarms": metrics.swarms.get().max(0),
            "connections": shared.connections.open_connections(),
        },
        "swarms": swarms_json(&swarms),
        "usage": shared.usage.snapshot(),
        // [[secondsSinceStart, originBytes, p2pBytes, httpBytes, watchSeconds], ...]
        "history": shared.usage.history_json(),
        "reportsEnabled": shared.settings.reports.enabled,
        "memory": { "rss": metrics::resident_memory_bytes() },
    });
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
