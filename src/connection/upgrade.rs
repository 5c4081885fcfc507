//! The WebSocket upgrade. actix-http hands every request that asks for `Upgrade:
//! websocket` (and every CONNECT) to this service together with the raw connection, before
//! the application's routes see it. It checks the path, the Origin, the handshake and the
//! connection caps, answers 101, and then runs a `PeerSession` straight on the socket (see
//! `io`). A plain GET on the tracker path never gets here: the routes answer it 426.

use std::{convert::Infallible, sync::Arc, time::Duration};

use actix::AsyncContext;
use actix_codec::{Framed, FramedParts};
use actix_http::{
    h1,
    header::{self, HeaderValue},
    ws::{self as ws_proto, Codec},
    ConnectionType, HttpMessage, Request, Response, StatusCode,
};
use actix_service::{fn_service, ServiceFactory};
use actix_web::{rt::net::TcpStream, HttpResponse};
use futures_util::SinkExt;
use log::debug;

use super::{
    context::SessionContext,
    io::{self as ws_io, FrameReader},
    registry::ConnSocket,
    session::PeerSession,
    ConnId,
};
use crate::{client_ip, shared::Shared};

/// The upgrade service for `HttpServiceBuilder::upgrade`.
pub fn upgrade_service(
    shared: Arc<Shared>,
) -> impl ServiceFactory<
    (Request, Framed<TcpStream, h1::Codec>),
    Config = (),
    Response = (),
    Error = Infallible,
    InitError = (),
> {
    fn_service(move |(req, framed)| upgrade(req, framed, shared.clone()))
}

async fn upgrade(
    req: Request,
    mut framed: Framed<TcpStream, h1::Codec>,
    shared: Arc<Shared>,
) -> Result<(), Infallible> {
    let settings = &shared.settings;
    let Admitted { conn, ip } = match admit(&req, &shared) {
        Ok(admitted) => admitted,
        Err(response) => {
            // The connection closes after the refusal: whatever else the client sent was
            // meant for a WebSocket.
            if let Err(err) = h1::SendResponse::new(framed, response).await {
                debug!("refusal not delivered: {err}");
            }
            return Ok(());
        }
    };

    let accept = ws_proto::handshake_response(req.head())
        .finish()
        .drop_body();
    if let Err(err) = framed
        .send(h1::Message::Item((
            accept,
            actix_http::body::BodySize::None,
        )))
        .await
    {
        debug!("conn={conn}: 101 not delivered: {err}");
        shared.connections.release(conn, ip);
        return Ok(());
    }
    drop(req);

    // Take the socket out of actix-http; its 8 KiB read and write buffers go with the
    // rest (but whatever the client sent after the request head is kept).
    let FramedParts { io, read_buf, .. } = framed.into_parts();
    let socket = ConnSocket::new(std::os::fd::AsRawFd::as_raw_fd(&io), io.peer_addr().ok());
    let (read_half, write_half) = io.into_split();
    let session = PeerSession::new(conn, ip, shared.clone());
    let frames = FrameReader::new(
        read_half,
        read_buf,
        Codec::new().max_size(settings.ws.max_frame_bytes),
    );
    let listed = shared.clone();
    let session = SessionContext::start(frames, move |ctx| {
        // Listed here rather than kept in the session until it starts: the socket's
        // details are the registry's alone (the session releases the entry when it stops).
        listed.connections.register(conn, &ctx.address(), socket);
        session
    });
    let linger = Duration::from_millis(settings.server.client_disconnect_timeout_ms);
    // A task of its own, sized for the session alone: run inside this one, it would keep
    // the HTTP dispatcher's whole state (some 3 KB) for the life of the connection. The
    // connection stays counted in `ConnectionRegistry`, which caps WebSockets and which
    // shutdown waits on (actix-server no longer counts it).
    actix_web::rt::spawn(ws_io::SessionTask::new(write_half, session, linger));
    Ok(())
}

struct Admitted {
    conn: ConnId,
    ip: Option<std::net::IpAddr>,
}

/// Decides whether `req` may become a tracker connection; `Ok` holds a connection slot
/// that the session (or the caller, if the 101 cannot be sent) gives back.
fn admit(req: &Request, shared: &Shared) -> Result<Admitted, Response<String>> {
    let settings = &shared.settings;

    if !is_tracker_path(req.path(), &settings.ws.path) {
        shared.metrics.connection_rejected("path");
        return Err(refusal(
            StatusCode::NOT_FOUND,
            "no WebSocket endpoint at this path\n",
        ));
    }

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
            return Err(refusal(StatusCode::FORBIDDEN, "origin not allowed\n"));
        }
    }

    // Method, Upgrade/Connection headers, version 13 and a Sec-WebSocket-Key that is the
    // base64 of 16 bytes (RFC 6455 4.2.1), each refused with its own status.
    if let Err(err) = ws_proto::verify_handshake(req.head()) {
        shared.metrics.connection_rejected("bad_handshake");
        debug!("upgrade refused: {err}");
        let mut response = Response::from(&err).set_body(format!("{err}\n"));
        response
            .head_mut()
            .set_connection_type(ConnectionType::Close);
        return Err(response);
    }

    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|value| value.to_str().ok());
    let ip = client_ip::resolve(req.peer_addr(), forwarded, &settings.server.trusted_proxies);

    match shared.connections.admit(ip) {
        Ok(conn) => Ok(Admitted { conn, ip }),
        Err(err) => {
            shared.metrics.connection_rejected(err.label());
            debug!("upgrade from {ip:?} refused: {}", err.label());
            let mut response = refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("connection refused: {}\n", err.label()),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
            Err(response)
        }
    }
}

/// `ws.path` is "/*" (any path, as wt-tracker's pattern), or one path; "/" always works
/// too, since clients are often configured with the bare host.
fn is_tracker_path(path: &str, tracker_path: &str) -> bool {
    tracker_path == "/*" || path == "/" || path == tracker_path
}

fn refusal(status: StatusCode, body: &str) -> Response<String> {
    let mut response = Response::with_body(status, body.to_owned());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    response
}

/// GET on the tracker path without `Upgrade: websocket`.
pub async fn upgrade_required() -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::UPGRADE_REQUIRED)
        .insert_header((header::UPGRADE, "websocket"))
        .body("this is a WebTorrent tracker: connect with a WebSocket client\n")
}

#[cfg(test)]
mod tests {
    use super::is_tracker_path;

    #[test]
    fn tracker_paths() {
        assert!(is_tracker_path("/", "/announce"));
        assert!(is_tracker_path("/announce", "/announce"));
        assert!(!is_tracker_path("/announce/", "/announce"));
        assert!(!is_tracker_path("/hls/live.m3u8", "/announce"));
        assert!(is_tracker_path("/anything/at/all", "/*"));
        assert!(is_tracker_path("/", "/"));
        assert!(!is_tracker_path("/announce", "/"));
    }
}
