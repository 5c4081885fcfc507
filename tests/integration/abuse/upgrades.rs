//! Bad upgrade requests are refused with the right status and release their slot.

use p2p_mediastream::protocol::client::announce_text;

use crate::common::*;

/// Sends an upgrade request for /announce with the header lines `headers` (each ending in
/// "\r\n"); it must be refused with `status`. The server admits at most 3 sockets (the
/// honest pair plus one), so a leaked slot would refuse the final check.
async fn refused_upgrade_releases_its_slot(headers: &str, status: u16) {
    let app = spawn_app_configured(|settings| settings.server.max_connections = 3);
    let mut honest = HonestPair::join(&app).await;
    let request = format!(
        "GET /announce HTTP/1.1\r\nHost: {}\r\n{headers}\r\n",
        app.addr
    );
    for _ in 0..5 {
        let stream = tokio::net::TcpStream::connect(app.addr)
            .await
            .expect("connect");
        match RawWs::upgrade(stream, &request).await {
            Err((got, head)) => assert_eq!(got, status, "{head}"),
            Ok(_) => panic!("a bad upgrade was accepted"),
        }
    }
    assert_eq!(websockets(&app.stats().await), 2);
    let mut third = RawWs::connect(app.addr).await;
    third
        .send_text(&announce_text(info_hash(1), peer_id(1), None, None, &[]))
        .await;
    assert_eq!(third.recv_json().await["incomplete"], 1);
    honest.assert_unaffected().await;
}

#[tokio::test]
async fn upgrade_without_sec_websocket_key_is_400_and_releases_its_slot() {
    refused_upgrade_releases_its_slot(
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
        400,
    )
    .await;
}

/// RFC 6455 4.2.2: an unknown version gets 426 Upgrade Required.
#[tokio::test]
async fn upgrade_with_an_unsupported_version_is_426_and_releases_its_slot() {
    refused_upgrade_releases_its_slot(
        "Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 12\r\n",
        426,
    )
    .await;
}

#[tokio::test]
async fn upgrade_without_connection_upgrade_is_400_and_releases_its_slot() {
    refused_upgrade_releases_its_slot(
        "Upgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        400,
    )
    .await;
}

/// RFC 6455 4.2.1: the key must be base64 of 16 bytes, else 400 (4.2.2).
#[tokio::test]
async fn upgrade_with_a_malformed_sec_websocket_key_is_400_and_releases_its_slot() {
    refused_upgrade_releases_its_slot(
        "Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: not base64 at all!\r\nSec-WebSocket-Version: 13\r\n",
        400,
    )
    .await;
}
