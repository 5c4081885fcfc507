//! The WebSocket upgrade: Origin check, admission (connection caps by client IP), then a
//! `PeerSession` with the configured frame cap. A plain GET on the tracker path gets 426.

use std::sync::Arc;

use actix_web::{
    http::header::{self, HeaderValue},
    web, HttpRequest, HttpResponse,
};
use actix_web_actors::ws;
use log::debug;

use crate::{app::Shared, client_ip, connections::ConnSocket, session::PeerSession};

/// Resource guard: only real upgrade requests reach the tracker, so the same path can
/// serve the player page to a browser.
pub fn is_upgrade(ctx: &actix_web::guard::GuardContext<'_>) -> bool {
    ctx.head()
        .headers()
        .get(header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("websocket"))
}

pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    shared: web::Data<Arc<Shared>>,
) -> HttpResponse {
    let shared = shared.get_ref().clone();
    let settings = &shared.settings;

    if !settings.ws.allowed_origins.is_empty() {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        if !settings
            .ws
            .allowed_origins
            .iter()
            .any(|allowed| allowed == origin)
        {
            shared.metrics.connection_rejected("origin");
            debug!("upgrade refused: origin {origin:?} not allowed");
            return HttpResponse::Forbidden().body("origin not allowed\n");
        }
    }

    if !has_valid_key(&req) {
        shared.metrics.connection_rejected("bad_handshake");
        return HttpResponse::BadRequest().body("Sec-WebSocket-Key must be base64 of 16 bytes\n");
    }

    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|value| value.to_str().ok());
    let ip = client_ip::resolve(req.peer_addr(), forwarded, &settings.server.trusted_proxies);

    let conn = match shared.connections.admit(ip) {
        Ok(conn) => conn,
        Err(err) => {
            shared.metrics.connection_rejected(err.label());
            debug!("upgrade from {ip:?} refused: {}", err.label());
            let mut response = HttpResponse::ServiceUnavailable();
            response.insert_header((header::RETRY_AFTER, HeaderValue::from_static("30")));
            return response.body(format!("connection refused: {}\n", err.label()));
        }
    };

    let socket = req.conn_data::<ConnSocket>().copied();
    let session = PeerSession::new(conn, ip, socket, shared.clone());
    match ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(settings.ws.max_frame_bytes)
        .start()
    {
        Ok(response) => response,
        Err(err) => {
            // The handshake failed, so the session never started: give the slot back.
            shared.connections.release(conn, ip);
            shared.metrics.connection_rejected("bad_handshake");
            err.error_response()
        }
    }
}

/// RFC 6455 4.2.1: the key is the base64 encoding of 16 random bytes; a server must refuse
/// anything else (actix only hashes whatever it gets).
fn has_valid_key(req: &HttpRequest) -> bool {
    use base64::Engine;
    req.headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|value| value.to_str().ok())
        .and_then(|key| {
            base64::engine::general_purpose::STANDARD
                .decode(key.trim())
                .ok()
        })
        .is_some_and(|bytes| bytes.len() == 16)
}

/// GET on the tracker path without `Upgrade: websocket`.
pub async fn upgrade_required() -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::UPGRADE_REQUIRED)
        .insert_header((header::UPGRADE, "websocket"))
        .body("this is a WebTorrent tracker: connect with a WebSocket client\n")
}
