//! Service endpoints: `/healthz` (alive), `/readyz` (shards answer), `/stats.json`
//! (wt-tracker's shape plus our counters), `/metrics` (Prometheus / OpenMetrics text) and
//! `/config.json` (what the web player needs: tracker path, ICE servers, stream URL).

use std::{sync::Arc, time::Duration};

use actix_web::{http::header, web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use crate::{
    http::dashboard::{largest_swarms, swarm_metrics, swarms_json},
    metrics,
    shared::Shared,
    swarm::messages::ScrapeShard,
};

/// How long `/readyz` waits for each shard.
const SHARD_PING_TIMEOUT: Duration = Duration::from_millis(500);

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("text/plain; charset=utf-8")
        .body("ok\n")
}

pub async fn readyz(shared: web::Data<Arc<Shared>>) -> HttpResponse {
    if !shared.directory.is_ready() {
        return HttpResponse::ServiceUnavailable()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(json!({"ready": false, "reason": "swarm shards still starting"}));
    }
    for (index, shard) in shared.directory.shards() {
        let ping = shard.send(ScrapeShard {
            info_hashes: Some(Vec::new()),
            limit: 0,
        });
        match actix_web::rt::time::timeout(SHARD_PING_TIMEOUT, ping).await {
            Ok(Ok(_)) => {}
            _ => {
                return HttpResponse::ServiceUnavailable()
                    .insert_header((header::CACHE_CONTROL, "no-store"))
                    .json(json!({"ready": false, "reason": format!("swarm shard {index} does not answer")}))
            }
        }
    }
    let mut body = json!({"ready": true});
    if let Some(cluster) = &shared.cluster {
        body["cluster"] = cluster.readiness();
    }
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

pub async fn stats(shared: web::Data<Arc<Shared>>) -> HttpResponse {
    let metrics = &shared.metrics;
    let connections = shared.connections.open_connections();
    let seeders = metrics.seeders.get().max(0);
    let leechers = metrics.leechers.get().max(0);
    let by_kind = |pairs: &mut dyn Iterator<Item = (&'static str, u64)>| -> Value {
        Value::Object(
            pairs
                .map(|(kind, count)| (kind.to_owned(), Value::from(count)))
                .collect::<Map<String, Value>>(),
        )
    };
    let mut body = json!({
        // wt-tracker's fields, so existing dashboards keep working.
        "torrentsCount": metrics.swarms.get().max(0),
        "peersCount": seeders + leechers,
        "servers": [{
            "server": shared.bound.join(","),
            "webSocketsCount": connections,
        }],
        "memory": { "rss": metrics::resident_memory_bytes() },
        // Ours.
        "seedersCount": seeders,
        "leechersCount": leechers,
        "connections": connections,
        "shards": shared.directory.len(),
        "messagesIn": by_kind(&mut metrics.messages_in_by_kind()),
        "messagesOut": by_kind(&mut metrics.messages_out_by_kind()),
        "offersRelayed": metrics.offers_relayed.get(),
        "answersRelayed": metrics.answers_relayed.get(),
        "deliveriesDropped": metrics.dropped_mailbox_full.get() + metrics.dropped_closed.get(),
        "uptimeSecs": shared.started_at.elapsed().as_secs(),
        // Origin bytes by stream and kind, and what viewers reported (docs/reports.md).
        "usage": shared.usage.snapshot(),
        "swarms": swarms_json(&largest_swarms(&shared, shared.settings.dashboard.max_swarms).await),
    });
    if let Some(cluster) = &shared.cluster {
        body["cluster"] = cluster.status();
    }
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

pub async fn prometheus(shared: web::Data<Arc<Shared>>) -> HttpResponse {
    let tracker = shared.metrics.render();
    let mut body = tracker.trim_end_matches("# EOF\n").to_owned();
    shared.usage.render_into(&mut body);
    let swarms = largest_swarms(&shared, shared.settings.dashboard.max_swarms).await;
    swarm_metrics(&swarms, &mut body);
    body.push_str("# EOF\n");
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(body)
}

/// The host name the page was loaded from, if it is a plausible one (it is echoed to the
/// player, so refuse anything but host-name characters).
fn request_host(req: &HttpRequest) -> Option<String> {
    let info = req.connection_info();
    let host = info.host();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        format!("[{}]", rest.split(']').next()?)
    } else {
        host.rsplit_once(':')
            .map_or(host, |(name, _)| name)
            .to_owned()
    };
    let plausible = !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | ':' | '[' | ']'));
    plausible.then_some(name)
}

pub async fn player_config(req: HttpRequest, shared: web::Data<Arc<Shared>>) -> HttpResponse {
    let settings = &shared.settings;
    let host = request_host(&req).unwrap_or_else(|| "localhost".into());
    let ice_urls: Vec<String> = settings
        .player
        .ice_servers
        .iter()
        // An empty entry (e.g. TRACKER__PLAYER__ICE_SERVERS= to mean "none") is no server.
        .filter(|url| !url.trim().is_empty())
        .map(|url| url.replace("{host}", &host))
        .collect();
    let ice_servers: Vec<Value> = if ice_urls.is_empty() {
        Vec::new()
    } else {
        vec![json!({ "urls": ice_urls })]
    };
    let mut body = json!({
        "announcePath": settings.ws.path.trim_end_matches('*'),
        "iceServers": ice_servers,
        "streamUrl": settings.player.stream_url,
        "announceIntervalSecs": settings.tracker.announce_interval_secs,
    });
    if settings.reports.enabled {
        body["reportPath"] = Value::from("/api/report");
    }
    if !settings.player.swarm_id.is_empty() {
        body["swarmId"] = Value::from(settings.player.swarm_id.clone());
    }
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .json(body)
}
